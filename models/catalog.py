"""Every servable network in one explicit table: (task, variant) -> config class, network class
and the task's prepare function (upload -> network input, by the manifest's input contract).

A new model is a config, a network, a prepare function and a row here. This module imports
the networks; none of them imports it back (tests/test_layout.py checks there is no cycle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from models.autoencoder import AutoencoderConfig, ConvAutoencoder
from models.captcha_ctc import CaptchaCTC, CaptchaCTCConfig
from models.captcha_seq2seq import CaptchaSeq2Seq, CaptchaSeq2SeqConfig
from models.digits import DigitRNN, DigitRNNConfig
from models.manifest import Manifest
from models.number import NumberReader, NumberReaderConfig
from models.preprocess import prepare_captcha, prepare_digit, prepare_number


@dataclass(frozen=True)
class ModelSpec:
    task: str
    variant: str
    config: type  # a dataclass; the manifest's `architecture` holds its fields
    network: type[nn.Module]  # network(config)
    prepare: Callable[[Any, dict], Any]  # (PIL image, manifest.input) -> network input
    # Manifest metrics (higher is better) that pick a task's default variant: the one whose worst
    # of them is best (`ranking_score`); a metric a manifest lacks counts as 0.
    ranking_metrics: tuple[str, ...] = ()

    def ranking_score(self, metrics: dict) -> float:
        return min((float(metrics.get(name, 0.0)) for name in self.ranking_metrics), default=0.0)


_DIGITS = dict(config=DigitRNNConfig, network=DigitRNN, prepare=prepare_digit, ranking_metrics=("mnist_test_accuracy",))
# The default captcha reader reads the seed generator's captchas of any length (issue #12): ranked
# on its worst of 4, 5 and 6 characters. A reader of 4 characters only has no 5/6 figure, and one
# fine-tuned on your own captchas has held-out figures of its own style only: neither takes it.
_CAPTCHA = dict(prepare=prepare_captcha, ranking_metrics=(
    "full_string_accuracy", "full_string_accuracy_5_chars", "full_string_accuracy_6_chars"))

CATALOG: dict[tuple[str, str], ModelSpec] = {
    ("digits", "rnn"): ModelSpec("digits", "rnn", **_DIGITS),
    ("digits", "lstm"): ModelSpec("digits", "lstm", **_DIGITS),
    ("digits", "gru"): ModelSpec("digits", "gru", **_DIGITS),
    ("captcha", "ctc"): ModelSpec("captcha", "ctc", CaptchaCTCConfig, CaptchaCTC, **_CAPTCHA),
    ("captcha", "seq2seq"): ModelSpec("captcha", "seq2seq", CaptchaSeq2SeqConfig, CaptchaSeq2Seq, **_CAPTCHA),
    ("number", "ctc"): ModelSpec("number", "ctc", NumberReaderConfig, NumberReader, prepare_number,
                                 ranking_metrics=("mnist_lines_number_accuracy",)),
    ("autoencoder", "conv"): ModelSpec("autoencoder", "conv", AutoencoderConfig, ConvAutoencoder, prepare_digit),
}


def spec_for(task: str, variant: str) -> ModelSpec:
    spec = CATALOG.get((task, variant))
    if spec is None:
        known = ", ".join(f"{t}/{v}" for t, v in CATALOG)
        raise ValueError(f"no network in the catalog for {task}/{variant}; known: {known}")
    return spec


def config_for(manifest: Manifest):
    """The manifest's architecture as its variant's config dataclass (checked against the variant)."""
    spec = spec_for(manifest.task, manifest.variant)
    config = spec.config(**manifest.architecture)
    for key in ("cell", "variant"):  # configs that name their variant must agree with the manifest
        if getattr(config, key, manifest.variant) != manifest.variant:
            raise ValueError(f"manifest variant {manifest.variant!r} but architecture {key} "
                             f"{getattr(config, key)!r}")
    return config


def build(manifest: Manifest) -> nn.Module:
    """A fresh (untrained) network of the manifest's task, variant and architecture."""
    return spec_for(manifest.task, manifest.variant).network(config_for(manifest))
