"""The manifest: one JSON schema, for every task, beside each `<name>.safetensors`.

It is the contract between training and serving: which network (`task`, `variant`), its config
(`architecture`), the input contract (`input`, read by the task's prepare function), and the
provenance and figures the README and `/models` quote. Task-specific sections (`classes`,
`charset`, `typicality`, ...) are optional fields of the same schema.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class Manifest:
    task: str  # digits | captcha | number | autoencoder (models/catalog.py)
    variant: str  # rnn | lstm | gru, ctc | seq2seq, ctc, conv
    architecture: dict[str, Any]  # the variant's config dataclass as a dict
    input: dict[str, Any] = field(default_factory=dict)  # the input contract the prepare function reads
    name: str = ""  # <name>.json / <name>.safetensors
    weights: str = ""
    storage: str | None = None  # "float16": the safetensors hold half-precision weights (None: float32)
    description: str | None = None
    parameters: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    torch_version: str | None = None
    # Task-specific sections (None where a task has none).
    classes: list[str] | None = None  # digits, number: class index -> label
    charset: str | None = None  # captcha: class index -> character
    length: int | None = None  # captcha: characters per answer (None: any)
    answers: str | None = None  # captcha: the characters answers are restricted to (None: all of charset)
    case_insensitive: bool | None = None
    outputs: str | None = None  # captcha: how the network's outputs decode
    generator: str | None = None  # captcha: what drew the training and test captchas
    output: dict[str, Any] | None = None  # autoencoder: the decoded image and code size
    typicality: dict[str, Any] | None = None  # autoencoder: error quantiles of the reference digits

    # The order keys are written in (the committed files' order).
    _ORDER = ("name", "weights", "storage", "task", "variant", "description", "architecture", "parameters", "input",
              "classes", "charset", "answers", "length", "case_insensitive", "outputs", "generator", "output", "metrics",
              "typicality", "training", "torch_version")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        """Validate and read a manifest dict. Manifests written before the schema was shared
        name a digit network's variant `cell`; they load as `variant`."""
        data = dict(data)
        if "variant" not in data and "cell" in data:
            data["variant"] = data.pop("cell")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"manifest has unknown keys {unknown}; the schema is models/manifest.py")
        missing = [k for k in ("task", "variant", "architecture") if k not in data]
        if missing:
            raise ValueError(f"manifest lacks {missing}")
        if not isinstance(data["architecture"], dict):
            raise ValueError("manifest 'architecture' must be an object (the network's config)")
        return cls(**data)

    def served_name(self) -> str:
        """The `model=` this network is served as: its name after the task's prefix (captcha_ctc ->
        ctc, digits_gru -> gru, a fine-tuned captcha_myshop -> myshop), else its variant
        (autoencoder -> conv)."""
        prefix = f"{self.task}_"
        if self.name.startswith(prefix) and len(self.name) > len(prefix):
            return self.name[len(prefix):]
        return self.variant

    def samples_seen_in_all(self) -> int | None:
        """Training samples over all of its chunks (`training.total_samples_seen`, written by
        trainers that go on from a checkpoint), else its one run's."""
        return self.training.get("total_samples_seen", self.training.get("samples_seen"))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every set field, in the committed files' key order; unset task
        sections are left out."""
        values = asdict(self)
        return {k: values[k] for k in self._ORDER if values[k] is not None}

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> "Manifest":
        return cls.from_dict(json.loads(Path(path).read_text()))
