"""The seq2seq captcha reader's second look at o and 0: data, training and export.

    # captchas rich in o / O / 0, kept at the generator's full 160x60 resolution
    python -m training.captcha_o0 data --count 240000 --seed 5000 --out data/captcha_o0/train --workers 2
    python -m training.captcha_o0 data --count 20000 --seed 5100 --out data/captcha_o0/val
    # train the glyph net on windows cut where the committed reader looks, then export
    # models/weights/captcha_seq2seq.* with the glyph net inside (the reader's weights unchanged)
    python -m training.captcha_o0 train --data data/captcha_o0/train --val data/captcha_o0/val --epochs 6 --threads 2
    # a reader of every length: its own glyph net, on captchas of 4-8 characters, windows on its CTC runs
    python -m training.captcha_o0 data --count 80000 --seed 5200 --lengths 4-8 --out data/captcha_o0/train48
    python -m training.captcha_o0 data --count 10000 --seed 5300 --lengths 4-8 --out data/captcha_o0/val48
    python -m training.captcha_o0 train --reader models/weights/captcha_ctc.json --data data/captcha_o0/train48 \
        --val data/captcha_o0/val48 --epochs 4
    # go on training a glyph net (its weights as the start, the mix fitted again) on fresh captchas
    python -m training.captcha_o0 train --reader models/weights/captcha_ctc.json --init RUN/captcha_ctc.json \
        --data data/captcha_o0/train48b --val data/captcha_o0/val48 --epochs 6 --lr 1e-3
    # the general reader's own: o/0-rich captchas of its mix's training families in turn; exported
    # under the reader's name with its figures per family (training.captcha_general.served_figures).
    # Tried once (stop 49): validation mix mean 78.42% -> 78.33%, so the served reader has none.
    python -m training.captcha_o0 data --family mix --count 120000 --seed 5600 --lengths 3-8 --out data/captcha_o0/mix
    python -m training.captcha_o0 data --family mix --count 12000 --seed 5700 --lengths 3-8 --out data/captcha_o0/mixval
    python -m training.captcha_o0 train --reader models/weights/captcha_general.json \
        --init models/weights/captcha_ctc.json --data data/captcha_o0/mix --val data/captcha_o0/mixval --minutes 30

Why: most of the reader's misreads are o read as 0 or 0 as o. The generator crops each glyph
to its ink and stretches it to its font's full box, so o, O and 0 come out as ovals of the same
size; what tells them apart is stroke thickness and shape, which the reader's 96x32 input
(0.6 x 0.53 of the drawn image) blurs. The glyph net (models/captcha_o0.py) looks at a 48 px
window of the full-resolution image around each character the reader read as o or 0.

The data: captchas drawn by the same seeded generator as the reader's training, but each
position is o, O or 0 with probability `--o0-share` (the rest from all 62 symbols), so most
captchas carry several of the glyphs in realistic surroundings. Windows are cut where the
reader's attention centres (exactly as at serving), so the net learns the positions it will be
shown, misplaced ones included.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.captcha_common import CAPTCHA_LENGTH, CHARSET, DRAWN_ALPHABET, decode_label, encode_label, score_texts
from models.captcha_o0 import (INDEX_O, INDEX_ZERO, O0GlyphConfig, O0GlyphNet, attention_centres, cut_windows,
                               standardise_windows)
from models.captcha_ctc import CaptchaCTC
from models.ctc import greedy_runs
from models.captcha_seq2seq import END, CaptchaSeq2Seq
from models.checkpoint import load_checkpoint
from models.device import resolve_device
from models.manifest import Manifest
from models.preprocess import CAPTCHA_FULL_HEIGHT, CAPTCHA_FULL_WIDTH, captcha_pixels, to_captcha_tensor
from training.captcha_data import CaptchaGenerator, fill_in_chunks, generate_arrays
from training.captcha_lengths import EVAL, any_length_description, eval_sets, served_and_alone
from training.captcha_lib import TEST_SEED, VAL_SEED
from training.captcha_mix import FAMILIES, TRAIN_FAMILIES
from training.common import REPO_ROOT
from training.export import export, training_section
from training.loop import Shuffled, ShuffledSource, add_fit_args, fit, settings_from_args

WEIGHTS = REPO_ROOT / "models" / "weights"

O0_DRAWN = "oO0"
GENERATOR = "generator"  # the seed's generator (captcha 0.7 ImageCaptcha(), 160x60)
O0_SOURCES = (GENERATOR, "mix") + TRAIN_FAMILIES  # what `data` draws from


def o0_rich_text(rng: random.Random, share: float, length: int = CAPTCHA_LENGTH) -> str:
    """Each position o, O or 0 (equally likely, as in real captchas) with probability `share`,
    else any of the 62 drawn symbols."""
    return "".join(rng.choice(O0_DRAWN) if rng.random() < share else rng.choice(DRAWN_ALPHABET)
                   for _ in range(length))


def _chunk(args: tuple[int, int, float, tuple[int, ...], str]) -> tuple[np.ndarray, np.ndarray]:
    seed, count, share, lengths, family = args
    torch.set_num_threads(1)
    if family == GENERATOR:
        gen = CaptchaGenerator(seed)
        rng, draws = gen.rng, [gen.image]
    else:  # the general reader's mix (training/captcha_mix.py): one family, or its training families in turn
        rng = random.Random(f"o0/{family}/{seed}")
        random.seed(f"o0/{family}/{seed}/global")  # wheezy and others draw from `random` too
        draws = [FAMILIES[name](rng) for name in (TRAIN_FAMILIES if family == "mix" else (family,))]
    full = np.empty((count, CAPTCHA_FULL_HEIGHT, CAPTCHA_FULL_WIDTH), np.uint8)
    labels = np.full((count, max(lengths)), -1, np.int64)  # padded with -1 after a shorter label
    for i in range(count):
        # One length: no draw, so the 4-character sets stay as they were drawn before lengths.
        length = lengths[0] if len(lengths) == 1 else rng.choice(lengths)
        text = o0_rich_text(rng, share, length)
        full[i] = captcha_pixels(draws[i % len(draws)](text), CAPTCHA_FULL_HEIGHT, CAPTCHA_FULL_WIDTH)
        labels[i, :length] = encode_label(text)
    return full, labels


def write_o0_set(out: str | Path, count: int, seed: int, share: float = 0.4, workers: int = 1,
                 chunk: int = 5000, lengths: tuple[int, ...] = (CAPTCHA_LENGTH,), family: str = GENERATOR) -> Path:
    """<out>/full.npy (uint8 (N, 60, 160) grey, as drawn, resized to 160x60 as the service
    prepares the glyph net's full-resolution input), labels.npy (int64 (N, max length), padded
    with -1), meta.json. Each captcha's length is drawn evenly from `lengths`. Chunk k is drawn
    from seed * 100000 + k (the same set whatever the worker count). `family`: the seed's
    generator, one family of the general reader's mix, or "mix" (its training families in turn)."""
    if family not in O0_SOURCES:
        raise ValueError(f"family must be one of {', '.join(O0_SOURCES)}, not {family!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    full = np.lib.format.open_memmap(out / "full.npy", mode="w+", dtype=np.uint8,
                                     shape=(count, CAPTCHA_FULL_HEIGHT, CAPTCHA_FULL_WIDTH))
    labels = np.lib.format.open_memmap(out / "labels.npy", mode="w+", dtype=np.int64, shape=(count, max(lengths)))
    jobs = [(seed * 100000 + k, min(chunk, count - k * chunk), share, tuple(lengths), family)
            for k in range(math.ceil(count / chunk))]
    fill_in_chunks(_chunk, jobs, (full, labels), chunk, workers, "o0 set")
    (out / "meta.json").write_text(json.dumps({"count": count, "seed": seed, "o0_share": share, "chunk": chunk,
                                               "lengths": list(lengths), "family": family, "height": CAPTCHA_FULL_HEIGHT,
                                               "width": CAPTCHA_FULL_WIDTH, "charset": CHARSET}, indent=2) + "\n")
    return out


def load_o0_set(folder: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    folder = Path(folder)
    return (np.load(folder / "full.npy", mmap_mode="r"), np.load(folder / "labels.npy", mmap_mode="r"),
            json.loads((folder / "meta.json").read_text()))


def reader_pixels(full: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, 60, 160) full-resolution grey -> (N, height, width) the reader's input, through the
    one preprocessing function (resizing the grey image = resizing the colour one, then grey)."""
    return np.stack([captcha_pixels(Image.fromarray(np.asarray(f)), height, width) for f in full])


@torch.inference_mode()
def locate(reader: CaptchaSeq2Seq, full: np.ndarray, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the reader (with its test-time shifts, if any) -> (its log-probs (N, S, C), each
    step's attention centre (N, S) in full-resolution x pixels)."""
    lps, centres = [], []
    h, w = reader.config.height, reader.config.width
    for i in range(0, len(full), batch):
        x = to_captcha_tensor(reader_pixels(full[i:i + batch], h, w))
        lp, attention = reader.log_probs(x, return_attention=True)
        lps.append(lp)
        centres.append(attention_centres(attention, w, full.shape[-1]))
    return torch.cat(lps), torch.cat(centres)


def o0_windows(full: np.ndarray, labels: np.ndarray, centres: torch.Tensor, width: int,
               batch: int = 2000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows (uint8 (M, 1, 60, width), grey as drawn) at every position whose true character
    is o or 0 (labels (N, L), -1 = no character), their targets (M,) 1.0 = 0, and which
    (captcha, position) each came from (M, 2)."""
    wins, targets, where = [], [], []
    labels_t = torch.from_numpy(np.array(labels))  # a copy: the sets are read-only memory maps
    for i in range(0, len(full), batch):
        lab = labels_t[i:i + batch]
        keep = ((lab == INDEX_O) | (lab == INDEX_ZERO)).flatten()
        w = cut_windows(torch.from_numpy(np.array(full[i:i + batch])), centres[i:i + batch], width, standardise=False)
        wins.append(w[keep].round().to(torch.uint8))
        targets.append((lab.flatten()[keep] == INDEX_ZERO).float())
        idx = torch.nonzero(keep).squeeze(1)
        where.append(torch.stack([idx // lab.shape[1] + i, idx % lab.shape[1]], 1))
    return torch.cat(wins), torch.cat(targets), torch.cat(where)


@torch.inference_mode()
def glyph_logits(net: O0GlyphNet, windows: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """The glyph net's log-odds of 0 against o (M,), on the CPU, for uint8 windows (M, 1, 60, w)."""
    net.eval()
    device = next(net.parameters()).device
    return torch.cat([net(standardise_windows(windows[i:i + batch].to(device))
                          .contiguous(memory_format=torch.channels_last)).float().cpu()
                      for i in range(0, len(windows), batch)])


class WindowBatches(ShuffledSource):
    """Training windows in shuffled full batches (torch's global generator), each batch cropped
    to `width` at one random offset within the window's 2 * margin spare columns:
    (standardised windows (B, 1, 60, width) channels-last, targets (B,) 1.0 = 0) on `device`."""

    def __init__(self, windows: torch.Tensor, targets: torch.Tensor, batch_size: int, width: int, margin: int,
                 device: torch.device):
        self.windows, self.targets, self.width, self.margin, self.device = windows, targets, width, margin, device
        self.order = Shuffled(len(windows), batch_size, drop_last=True)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order.next()
        dx = int(torch.randint(0, 2 * self.margin + 1, ()))
        x = standardise_windows(self.windows[idx, :, :, dx:dx + self.width])
        return x.to(self.device).contiguous(memory_format=torch.channels_last), self.targets[idx].to(self.device)


def fit_mix(glyph: torch.Tensor, reader: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Logistic regression without intercept: target ~ sigmoid(a * glyph + b * reader) -> [a, b]."""
    ab = torch.tensor([1.0, 0.0], requires_grad=True)
    opt = torch.optim.LBFGS([ab], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(ab[0] * glyph + ab[1] * reader, target)
        loss.backward()
        return loss
    opt.step(closure)
    return [round(float(v), 4) for v in ab.detach()]


@torch.inference_mode()
def locate_ctc(reader: CaptchaCTC, full: np.ndarray, labels: np.ndarray | None = None, batch: int = 500,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the ctc reader -> per captcha and character position: its answer (N, L) (-1 for
    every position of a captcha not read at its label's length: its positions do not line up
    with the label), log p(0) - log p(o) at the run's best column (N, L), and the run's centre
    (N, L) in full-resolution x pixels, as `CaptchaCTC.o0_candidates` computes it. `labels`
    (N, L) padded with -1 give each captcha's length (None: 4 characters each)."""
    h, w = reader.config.height, reader.config.width
    width = CAPTCHA_LENGTH if labels is None else labels.shape[1]
    answers, logodds, centres = [], [], []
    for i in range(0, len(full), batch):
        lp = reader(to_captcha_tensor(reader_pixels(full[i:i + batch], h, w))).float().log_softmax(-1)  # (B, T, 37)
        a, r, c = torch.full((len(lp), width), -1), torch.zeros(len(lp), width), torch.zeros(len(lp), width)
        lengths = ([CAPTCHA_LENGTH] * len(lp) if labels is None
                   else (np.asarray(labels[i:i + batch]) >= 0).sum(1).tolist())
        for b, row in enumerate(lp.argmax(-1).tolist()):
            runs = greedy_runs(row)
            if len(runs) != lengths[b]:
                continue
            for j, (k, cols) in enumerate(runs):
                best = max(cols, key=lambda t: float(lp[b, t, k + 1]))
                a[b, j], r[b, j] = k, lp[b, best, INDEX_ZERO + 1] - lp[b, best, INDEX_O + 1]
                c[b, j] = (4 * sum(cols) / len(cols) + 2) * full.shape[-1] / w
        answers.append(a)
        logodds.append(r)
        centres.append(c)
    return torch.cat(answers), torch.cat(logodds), torch.cat(centres)


def seq2seq_positions(reader: CaptchaSeq2Seq, full: np.ndarray, labels: np.ndarray,
                      ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """`locate` cut to the labels' L positions -> (log-probs (N, L, C), attention centres (N, L),
    the labels kept only where the reading lines up with them, else -1). An end-token reader's
    steps line up with a label when it ends right after the label's last character."""
    lp, centres = locate(reader, full)  # (N, S, C), (N, S)
    labels = np.asarray(labels)
    width = labels.shape[1]
    if reader.config.end_token:
        best = lp.argmax(-1)  # (N, S)
        ended = torch.where((best == END).any(1), (best == END).int().argmax(1), torch.tensor(best.shape[1]))
        lined = ended.numpy() == (labels >= 0).sum(1)
        labels = np.where(lined[:, None], labels, -1)
    return lp[:, :width], centres[:, :width], labels


def ctc_positions(reader: CaptchaCTC, full: np.ndarray, labels: np.ndarray,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """`locate_ctc`, plus the labels kept only where the reading lines up with them (else -1)."""
    answers, logodds, centres = locate_ctc(reader, full, labels)
    return answers, logodds, centres, np.where(answers.numpy() >= 0, np.asarray(labels), -1)


def mix_on_validation(glyph: torch.Tensor, reader_logodds: torch.Tensor, answered: torch.Tensor,
                      target: torch.Tensor) -> tuple[list[float], dict]:
    """Fit how to weigh the glyph net against the reader where it will be used (the reader
    answered o or 0) -> (mix, errors there of the reader, the glyph net and the mix)."""
    used = (answered == INDEX_O) | (answered == INDEX_ZERO)
    mix = fit_mix(glyph[used], reader_logodds[used], target[used])
    errors = {name: int((((z > 0).float() != target) & used).sum()) for name, z in
              (("reader", reader_logodds), ("glyph", glyph), ("mix", mix[0] * glyph + mix[1] * reader_logodds))}
    errors["characters"] = int(used.sum())
    print(f"o/0 characters the reader answered o or 0: {errors['characters']:,}; wrong: reader {errors['reader']}, "
          f"glyph net {errors['glyph']}, mixed {mix} {errors['mix']}", flush=True)
    return mix, errors


def without_o0(reader):
    """A reader checkpoint that may carry a glyph net -> the reader alone."""
    if reader.config.o0 is None:
        return reader
    plain = type(reader)(replace(reader.config, o0=None))
    plain.load_state_dict({k: v for k, v in reader.state_dict().items() if not k.startswith("o0.")})
    return plain.eval()


def with_o0(reader, net: O0GlyphNet):
    combined = type(reader)(replace(reader.config, o0=net.config.to_dict()))
    combined.load_state_dict({**reader.state_dict(), **{f"o0.{k}": v for k, v in net.state_dict().items()}})
    return combined.eval()


def is_general(manifest: Manifest) -> bool:
    """A reader chosen on the general mix (training/captcha_general.py): its figures are per family."""
    return "mix_full_string_accuracy" in manifest.metrics


def score_alone_and_with(reader, combined, val_samples: int, test_samples: int) -> dict:
    """The reader alone and with its glyph net, as they serve, on ordinary (not o/0-rich)
    captchas: the validation seed and the manifests' held-out test seed."""
    results = {}
    for name, seed, count in (("validation", VAL_SEED, val_samples), ("test", TEST_SEED, test_samples)):
        full, labels, _ = generate_arrays(count, seed, CAPTCHA_FULL_HEIGHT, CAPTCHA_FULL_WIDTH)
        truth = [decode_label(row) for row in labels]
        alone, both = read_strings(reader, full), read_strings(combined, full)
        results[name] = {"count": count, "alone": score_texts(alone, truth), "with_o0": score_texts(both, truth),
                         "errors": [f"{t}->{p}" for t, p in zip(truth, both) if t != p],
                         "errors_alone": [f"{t}->{p}" for t, p in zip(truth, alone) if t != p]}
        print(f"{name} ({count:,} captchas, seed {seed}): reader alone full "
              f"{results[name]['alone']['full_string_accuracy']:.2%} char {results[name]['alone']['char_accuracy']:.3%}"
              f" | with the glyph net full {results[name]['with_o0']['full_string_accuracy']:.2%} char "
              f"{results[name]['with_o0']['char_accuracy']:.3%}", flush=True)
    return results


def score_general(reader, combined, manifest: Manifest, centred_by: str) -> dict:
    """A general reader alone and with its glyph net, as they serve, on its validation captchas
    per family (training.captcha_general.served_figures)."""
    from training.captcha_general import mix_mean, served_figures

    contract = full_resolution_input(manifest.input, combined, centred_by)  # the reader alone ignores the full pixels
    results = {name: {"validation_per_family": figures,
                      "mix_full_string_accuracy": mix_mean({f: v["full_string_accuracy"] for f, v in figures.items()})}
               for name, figures in served_figures({"alone": reader, "with_o0": combined}, contract).items()}
    print("validation per family, full string, alone -> with the glyph net: " + ", ".join(
        f"{f} {results['alone']['validation_per_family'][f]['full_string_accuracy']:.1%} -> "
        f"{v['full_string_accuracy']:.1%}" for f, v in results["with_o0"]["validation_per_family"].items()) +
        f" | mix {results['alone']['mix_full_string_accuracy']:.2%} -> {results['with_o0']['mix_full_string_accuracy']:.2%}",
        flush=True)
    return results


def score_reader(reader, combined, manifest: Manifest, args, centred_by: str) -> dict:
    """The figures `export_with_o0` writes: per family for a general reader, else on the seed's generator."""
    if is_general(manifest):
        return score_general(reader, combined, manifest, centred_by)
    return score_alone_and_with(reader, combined, args.val_samples, args.test_samples)


def full_resolution_input(contract: dict, combined, centred_by: str) -> dict:
    """The reader's input contract plus the full-resolution pixels its glyph net reads."""
    return {**contract, "full_resolution": {
        "height": CAPTCHA_FULL_HEIGHT, "width": CAPTCHA_FULL_WIDTH,
        "for": "the o/0 glyph net: the same preprocessing (grey, PIL bilinear) to the generator's 160x60; "
               f"{combined.o0.config.width} px windows centred on {centred_by}, each standardised"}}


def measure_longer(combined, metrics: dict, contract: dict) -> None:
    """Put the reader's figures on the longer test sets (training.captcha_lengths' 5 and 6
    characters), with its glyph net and alone, into `metrics` (its `reader_alone` included)."""
    sets = eval_sets(contract, {n: plan for n, plan in EVAL.items() if n != CAPTCHA_LENGTH})
    served, alone = served_and_alone(combined, sets, torch.device("cpu"))
    metrics.update(served)
    metrics.setdefault("reader_alone", {}).update(alone or {})


def export_with_o0(combined, manifest: Manifest, results: dict, o0_info: dict, out_dir: str | Path,
                   centred_by: str) -> Path:
    """Write the reader with its glyph net, under the reader's own name: the reader's manifest
    with the new architecture, the full-resolution input, the figures with and without
    (`score_reader`'s), and how the net was made."""
    out = replace(manifest, architecture=combined.config.to_dict(), description=combined.describe(),
                  parameters=combined.num_parameters())
    out.input = full_resolution_input(manifest.input, combined, centred_by)
    if is_general(manifest):
        # Per family, as the general reader's own training reports (never `full_string_accuracy`,
        # which would rank it among the seed-style readers: app.registry).
        out.metrics = {**manifest.metrics, **results["with_o0"], "reader_alone": results["alone"]}
        out.training = {**manifest.training, "o0": {**o0_info, "validation": {
            k: results[k]["mix_full_string_accuracy"] for k in ("alone", "with_o0")}}}
        return export(combined, out, out_dir, manifest.name)
    test, val = results["test"], results["validation"]
    out.metrics = {**manifest.metrics,
                   "full_string_accuracy": round(test["with_o0"]["full_string_accuracy"], 5),
                   "char_accuracy": round(test["with_o0"]["char_accuracy"], 5),
                   "test_samples": test["count"],
                   "test_errors": test["errors"][:50],
                   "reader_alone": {"full_string_accuracy": round(test["alone"]["full_string_accuracy"], 5),
                                    "char_accuracy": round(test["alone"]["char_accuracy"], 5),
                                    "test_errors": test["errors_alone"][:50]}}
    if "full_string_accuracy_5_chars" in manifest.metrics:
        # A reader of every length: it still says so, and its 5- and 6-character figures are
        # measured again, else they would be the old glyph net's (4 characters: the figures above).
        out.description = any_length_description(out.description)
        measure_longer(combined, out.metrics, manifest.input)
    out.training = {**manifest.training, "o0": {
        **o0_info, "validation": {"alone": round(val["alone"]["full_string_accuracy"], 5),
                                  "with_o0": round(val["with_o0"]["full_string_accuracy"], 5)}}}
    return export(combined, out, out_dir, manifest.name)


@torch.inference_mode()
def read_strings(reader, full: np.ndarray, batch: int = 500) -> list[str]:
    """Full-resolution captchas -> the reader's answers (with its glyph net, if it has one)."""
    h, w = reader.config.height, reader.config.width
    texts = []
    for i in range(0, len(full), batch):
        x = to_captcha_tensor(reader_pixels(full[i:i + batch], h, w))
        texts += [r.text for r in reader.read(x, full=torch.from_numpy(np.array(full[i:i + batch])))]
    return texts


def init_info(path: str, manifest: Manifest) -> dict:
    """Where a glyph net that went on training came from (`path`, read as `manifest`), and what it had seen."""
    previous = manifest.training.get("o0", {})
    return {"from": str(path), **{k: previous[k] for k in ("samples_seen", "seconds", "windows", "data", "init")
                                  if k in previous}}


def train(args) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    reader, manifest = load_checkpoint(args.reader)
    reader = without_o0(reader)  # start from the reader alone
    config = O0GlyphConfig(width=args.window)
    init_net = init = None
    if args.init:
        # Go on training another checkpoint's glyph net (its shape; the mix is fitted again).
        init_model, init_manifest = load_checkpoint(args.init)
        init_net = init_model.o0
        if init_net is None:
            raise SystemExit(f"{args.init} carries no o/0 glyph net to go on from")
        config = replace(init_net.config, mix=[1.0, 0.0])
        init = init_info(args.init, init_manifest)
    margin = args.jitter  # windows are cut wider and cropped at random: +-jitter px of placement noise
    start = time.perf_counter()

    train_full, train_labels, train_meta = load_o0_set(args.data)
    val_full, val_labels, val_meta = load_o0_set(args.val)
    if isinstance(reader, CaptchaCTC):
        # Windows centred on the reader's own runs, as it serves; captchas it read at another
        # length than their label's are left out (their runs do not line up with the label).
        _, _, train_centres, train_labels = ctc_positions(reader, train_full, train_labels)
        val_answers, val_logodds, val_centres, val_labels = ctc_positions(reader, val_full, val_labels)
        centred_by = "the columns of the character's CTC run"
    else:
        most = reader.config.length if reader.config.end_token else reader.config.steps
        if train_labels.shape[1] > most or (not reader.config.end_token and train_labels.shape[1] != most):
            raise SystemExit(f"{args.reader}: this seq2seq reader writes {'up to ' if reader.config.end_token else ''}"
                             f"{most} characters; its glyph net trains on captchas it can read")
        single_view = CaptchaSeq2Seq(replace(reader.config, test_time_shifts=[]))
        single_view.load_state_dict(reader.state_dict())
        single_view.eval()
        # Attention does not depend on the test-time shifts (it is taken on the unshifted view), so
        # the training windows come from one view; validation uses the reader as it serves.
        _, train_centres, train_labels = seq2seq_positions(single_view, train_full, train_labels)
        val_lp, val_centres, val_labels = seq2seq_positions(reader, val_full, val_labels)
        centred_by = "the reader's attention for the character"
    xtr, ytr, _ = o0_windows(train_full, train_labels, train_centres, config.width + 2 * margin)
    xva, yva, where_va = o0_windows(val_full, val_labels, val_centres, config.width)
    print(f"{len(xtr):,} training windows ({int(ytr.sum()):,} zeros), {len(xva):,} validation windows "
          f"[{time.perf_counter() - start:.0f}s]", flush=True)

    net = (O0GlyphNet(config) if init_net is None else init_net).to(device, memory_format=torch.channels_last)
    settings = settings_from_args(args, len(xtr) // args.batch_size, args.out)
    settings.bar_every = 200

    def validate() -> dict:
        g = glyph_logits(net, xva)
        return {"val_window_error": round(float(((g > 0).float() != yva).float().mean()), 5)}

    result = fit(net, WindowBatches(xtr, ytr, args.batch_size, config.width, margin, device),
                 lambda logits, y: F.binary_cross_entropy_with_logits(logits, y), settings=settings, evaluate=validate)

    net = net.cpu()
    g = glyph_logits(net, xva)
    if isinstance(reader, CaptchaCTC):
        at = (where_va[:, 0], where_va[:, 1])
        mix, errors = mix_on_validation(g, val_logodds[at], val_answers[at], yva)
    else:
        lp = val_lp[where_va[:, 0], where_va[:, 1]]  # (M, 36)
        mix, errors = mix_on_validation(g, lp[:, INDEX_ZERO] - lp[:, INDEX_O], lp.argmax(-1), yva)
    net.config = replace(config, mix=mix)
    combined = with_o0(reader, net)
    results = score_reader(reader, combined, manifest, args, centred_by)
    seconds = round(time.perf_counter() - start, 1)
    json_path = export_with_o0(combined, manifest, results, training_section(
        result, settings, seed=args.seed, batch_size=args.batch_size, device=device,
        how="the reader's weights unchanged; a glyph CNN trained on windows of o/0-rich full-resolution captchas "
            f"cut where {centred_by} centres, its weight against the reader fitted on validation windows",
        data={"train": train_meta, "validation": val_meta}, parameters=sum(p.numel() for p in net.parameters()),
        windows=len(xtr), lr=args.lr, jitter_px=margin, seconds=seconds, mix=mix, validation_window_errors=errors,
        val_samples=args.val_samples, **({"init": init} if init else {})), args.out, centred_by)
    print(f"wrote {json_path} [{seconds:.0f}s]")


def attach(args) -> None:
    """The glyph net trained for the seq2seq reader, attached to the ctc reader: windows centred
    on the ctc runs' columns, its weight against the ctc reader fitted on validation windows."""
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    reader, manifest = load_checkpoint(args.reader)
    if not isinstance(reader, CaptchaCTC):
        raise SystemExit(f"{args.reader} is not a ctc reader")
    reader = without_o0(reader)
    source, source_manifest = load_checkpoint(args.glyph)
    if source.o0 is None:
        raise SystemExit(f"{args.glyph} carries no o/0 glyph net (train one with the `train` command)")
    net = source.o0.eval()

    val_full, val_labels, val_meta = load_o0_set(args.val)
    answers, logodds, centres = locate_ctc(reader, val_full, val_labels)
    labels = torch.from_numpy(np.array(val_labels))
    keep = ((labels == INDEX_O) | (labels == INDEX_ZERO)) & (answers >= 0)  # (N, L) o/0 truths, lined up
    if not bool(((answers[keep] == INDEX_O) | (answers[keep] == INDEX_ZERO)).any()):
        raise SystemExit(f"{args.reader} read no o or 0 at an o/0 position of {args.val}: nothing to fit the mix on")
    rows = keep.any(1).nonzero().squeeze(1)
    windows = cut_windows(torch.from_numpy(np.array(val_full[rows.numpy()])), centres[rows], net.config.width,
                          standardise=False)[keep[rows].flatten()]
    g = glyph_logits(net, windows)
    mix, errors = mix_on_validation(g, logodds[keep], answers[keep], (labels[keep] == INDEX_ZERO).float())
    net.config = replace(net.config, mix=mix)
    combined = with_o0(reader, net)
    centred_by = "the columns of the character's CTC run"
    results = score_reader(reader, combined, manifest, args, centred_by)
    seconds = round(time.perf_counter() - start, 1)
    glyph_info = source_manifest.training["o0"]
    json_path = export_with_o0(combined, manifest, results, {
        "how": f"the reader's weights unchanged; the glyph CNN of {Path(args.glyph).name} (trained on windows centred "
               "by the seq2seq reader's attention) used as it is, its windows centred on this reader's CTC runs and "
               "its weight against this reader fitted on validation windows",
        "glyph_from": Path(args.glyph).name, "data": {"validation": val_meta},
        "parameters": sum(p.numel() for p in net.parameters()),
        **{k: glyph_info[k] for k in ("windows", "epochs", "samples_seen", "seconds") if k in glyph_info},
        "attach_seconds": seconds, "mix": mix, "validation_window_errors": errors, "val_samples": args.val_samples},
        args.out, centred_by)
    print(f"wrote {json_path} [{seconds:.0f}s]")


def parse_lengths(text: str) -> tuple[int, ...]:
    """"4" -> (4,), "4-8" -> (4, ..., 8), "4,6" -> (4, 6)."""
    if "-" in text:
        lo, hi = (int(v) for v in text.split("-"))
        return tuple(range(lo, hi + 1))
    return tuple(int(v) for v in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="write an o/0-rich set of full-resolution captchas")
    d.add_argument("--count", type=int, required=True)
    d.add_argument("--seed", type=int, required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--o0-share", type=float, default=0.4)
    d.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    d.add_argument("--lengths", default=str(CAPTCHA_LENGTH),
                   help="captcha lengths, drawn evenly: one (4) or a range (4-8) or a list (4,6,8)")
    d.add_argument("--family", choices=O0_SOURCES, default=GENERATOR,
                   help="the seed's generator (default), a family of the general reader's mix, or mix: its "
                        "training families in turn")
    t = sub.add_parser("train", help="train the glyph net and export the reader with it")
    t.add_argument("--data", required=True, help="an o/0-rich set (the `data` command) to train on")
    t.add_argument("--val", required=True, help="another one to validate on")
    t.add_argument("--reader", default=str(WEIGHTS / "captcha_seq2seq.json"),
                   help="a seq2seq reader (windows where its attention centres) or a ctc reader (on its runs)")
    t.add_argument("--out", default=str(WEIGHTS))
    add_fit_args(t, epochs=6, lr=3e-3, batch_size=128, weight_decay=0.05, clip=None, precision="bf16")
    t.add_argument("--init", metavar="MANIFEST",
                   help="go on training the glyph net this checkpoint carries (its shape: --window is ignored)")
    t.add_argument("--window", type=int, default=48)
    t.add_argument("--jitter", type=int, default=3)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--device", default="auto", help="auto | cpu | cuda (the glyph net's training)")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--val-samples", type=int, default=6000)
    t.add_argument("--test-samples", type=int, default=2000)
    a = sub.add_parser("attach", help="attach the seq2seq reader's glyph net to the ctc reader")
    a.add_argument("--val", required=True, help="an o/0-rich set to fit the mix on")
    a.add_argument("--reader", default=str(WEIGHTS / "captcha_ctc.json"))
    a.add_argument("--glyph", default=str(WEIGHTS / "captcha_seq2seq.json"),
                   help="a seq2seq checkpoint with a glyph net")
    a.add_argument("--out", default=str(WEIGHTS))
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--val-samples", type=int, default=6000)
    a.add_argument("--test-samples", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.command == "train":
        train(args)
    elif args.command == "attach":
        attach(args)
    elif args.command == "data":
        out = write_o0_set(args.out, args.count, args.seed, args.o0_share, args.workers,
                           lengths=parse_lengths(args.lengths), family=args.family)
        print(f"wrote {args.count} captchas to {out}")


if __name__ == "__main__":
    main()
