"""Teach the CTC captcha reader every length: go on training it on fresh captchas of 1-8
characters from the seed's generator (4 still the most common), its o/0 glyph net kept as it is.

    python -m training.captcha_lengths --init models/weights/captcha_ctc.json --minutes 40 --out /tmp/lengths
    python -m training.captcha_lengths --evaluate models/weights/captcha_ctc.json   # the figures only

The figures: 2,000 4-character captchas from the test seed (as the shipped manifest's), and
1,000 each of 5 and 6 characters from seeds of their own, read as the service reads them (with
the o/0 glyph net on the full-resolution image).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Iterator

import torch

from models.captcha_common import CHARSET
from models.checkpoint import load_checkpoint
from models.device import resolve_device
from models.preprocess import prepare_captcha
from training.captcha_data import CaptchaGenerator
from training.captcha_finetune import accuracy, ctc_loss
from training.captcha_lib import TEST_SEED, random_shift
from training.common import REPO_ROOT, seed_everything
from training.export import export, training_section
from training.loop import Budget, FitSettings, OneCycle, fit

MAX_LENGTH = 8
LENGTH_WEIGHTS = {1: 0.04, 2: 0.05, 3: 0.08, 4: 0.3, 5: 0.2, 6: 0.17, 7: 0.09, 8: 0.07}
EVAL = {4: (2_000, TEST_SEED), 5: (1_000, TEST_SEED + 5), 6: (1_000, TEST_SEED + 6)}


class MixedLengths(torch.utils.data.IterableDataset):
    """Endless (uint8 reader pixels (H, W), int64 labels (8,) padded with -1) of 1-8 characters."""

    def __init__(self, seed: int, contract: dict):
        self.seed, self.contract = seed, contract

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        torch.set_num_threads(1)
        gen = CaptchaGenerator(self.seed * 1000 + (info.id if info else 0))
        rng = random.Random(self.seed)
        lengths, weights = zip(*LENGTH_WEIGHTS.items())
        while True:
            gen.length = rng.choices(lengths, weights)[0]
            text, image = gen.sample()
            x, _ = prepare_captcha(image, {k: v for k, v in self.contract.items() if k != "full_resolution"})
            label = torch.full((MAX_LENGTH,), -1, dtype=torch.long)
            label[:len(text)] = torch.tensor([CHARSET.index(c) for c in text.lower()])
            yield x[0], label


class Batches:
    def __init__(self, seed: int, contract: dict, batch_size: int, workers: int, gen: torch.Generator, device):
        self.loader = iter(torch.utils.data.DataLoader(MixedLengths(seed, contract), batch_size=batch_size,
                                                       num_workers=workers, prefetch_factor=8 if workers else None))
        self.gen, self.device = gen, device

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.loader)  # (B, 1, H, W) standardised, (B, 8)
        return random_shift(x, self.gen).to(self.device), y.to(self.device)


def eval_sets(contract: dict) -> dict[int, tuple[torch.Tensor, torch.Tensor | None, list[str]]]:
    """Per length: (reader inputs (N, 1, H, W), full-resolution pixels or None, texts), as served."""
    sets = {}
    for length, (count, seed) in EVAL.items():
        gen = CaptchaGenerator(seed, length=length)
        xs, fulls, texts = [], [], []
        for _ in range(count):
            text, image = gen.sample()
            x, full = prepare_captcha(image, contract)
            xs.append(x)
            fulls.append(full)
            texts.append(text.lower())
        sets[length] = (torch.cat(xs), torch.cat(fulls) if fulls[0] is not None else None, texts)
    return sets


@torch.inference_mode()
def read_all(model, x: torch.Tensor, full: torch.Tensor | None, device, batch_size: int = 500) -> list[str]:
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        f = full[i:i + batch_size].to(device) if full is not None else None
        out += [r.text for r in model.read(x[i:i + batch_size].to(device), full=f)]
    return out


def length_metrics(model, sets, device) -> dict:
    metrics = {}
    for length, (x, full, texts) in sets.items():
        figures = accuracy(read_all(model, x, full, device), texts)
        suffix = "" if length == 4 else f"_{length}_chars"
        metrics[f"full_string_accuracy{suffix}"] = figures["full_string_accuracy"]
        metrics[f"char_accuracy{suffix}"] = figures["char_accuracy"]
        metrics[f"test_samples{suffix}"] = len(texts)
        metrics[f"test_seed{suffix}"] = EVAL[length][1]
        print(f"{length} characters: {figures['full_string_accuracy']:.2%} full string ({len(texts)})", flush=True)
    return metrics


def main(argv: list[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", default=str(REPO_ROOT / "models" / "weights" / "captcha_ctc.json"))
    parser.add_argument("--evaluate", metavar="MANIFEST", help="only print a reader's figures per length")
    parser.add_argument("--merge", metavar="RUN_MANIFEST", help="put a finished run's weights and figures onto "
                                                                "--init's manifest in --out (no training)")
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="generator processes")
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(REPO_ROOT / "models" / "weights"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    if args.merge:
        return merge(Path(args.merge), Path(args.init), Path(args.out), device)
    model, manifest = load_checkpoint(args.evaluate or args.init, device)
    sets = eval_sets(manifest.input)
    if args.evaluate:
        length_metrics(model, sets, device)
        return None

    for p in (model.o0.parameters() if model.o0 is not None else []):
        p.requires_grad_(False)  # the glyph net stays as fitted
    gen = torch.Generator().manual_seed(args.seed)
    source = Batches(args.seed, manifest.input, args.batch_size, args.workers, gen, device)
    settings = FitSettings(budget=Budget(1_000, 200, minutes=args.minutes),
                           schedule=OneCycle(args.lr, warmup=0.05, final_div_factor=100.0, momentum=None),
                           weight_decay=1e-2, clip=5.0, progress=not args.no_progress)
    val_x, val_full, val_texts = sets[5]

    def evaluate() -> dict:
        return {"val_5_chars": accuracy(read_all(model, val_x[:300], val_full[:300] if val_full is not None else None,
                                                 device), val_texts[:300])["full_string_accuracy"]}

    result = fit(model, source, ctc_loss, settings=settings, forward=lambda x: model(x), evaluate=evaluate)
    chunk = training_section(result, settings, seed=args.seed, batch_size=args.batch_size, device=device,
                             lengths=LENGTH_WEIGHTS)
    return finish(model, manifest, chunk, sets, device, Path(args.out))


def finish(model, manifest, chunk: dict, sets, device, out: Path) -> Path:
    """The reader's manifest as it was (provenance, o/0 glyph net, figures) plus this chunk under
    `training.lengths`, the totals counting it, and its figures per length."""
    metrics = length_metrics(model, sets, device)
    x, full, texts = sets[4]
    errors = [f"{t}->{p}" for t, p in zip(texts, read_all(model, x, full, device)) if t != p]
    manifest.metrics.update(metrics, test_errors=errors[:50])
    training = manifest.training
    training["lengths"] = chunk
    training["samples_seen"] = training.get("samples_seen", 0) + chunk["samples_seen"]
    training["seconds"] = round(training.get("seconds", 0) + chunk["seconds"], 1)
    manifest.length = None
    if "reads 1-8 characters" not in (manifest.description or ""):
        manifest.description = (manifest.description or "") + "; reads 1-8 characters"
    json_path = export(model, manifest, out, manifest.name)
    print(f"wrote {json_path}", flush=True)
    return json_path


def merge(run_json: Path, init: Path, out: Path, device) -> Path:
    """A finished run's weights and chunk onto --init's manifest (for runs written before `finish`)."""
    model, run_manifest = load_checkpoint(run_json, device)
    _, manifest = load_checkpoint(init, device)
    t = run_manifest.training
    chunk = t["lengths"] if "samples_seen" in t.get("lengths", {}) else {
        k: v for k, v in t.items() if k not in ("chunks", "init")}
    last = (t.get("chunks") or [{}])[-1]
    chunk["samples_seen"], chunk["seconds"] = last.get("samples_seen", chunk["samples_seen"]), last.get(
        "seconds", chunk["seconds"])
    return finish(model, manifest, chunk, eval_sets(manifest.input), device, out)


if __name__ == "__main__":
    main()
