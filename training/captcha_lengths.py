"""Teach the seed-style captcha readers every length: go on training one on fresh captchas of
1-8 characters from the seed's generator (4 still the most common), its o/0 glyph net kept as it
is. A fixed-length seq2seq reader first gets an end token (one more decoder step and class);
`--width` widens the input so that 6-8 characters stay apart (the weights keep their shapes).

    python -m training.captcha_lengths --init models/weights/captcha_ctc.json --width 128 --minutes 100 \
        --precision bf16 --out /tmp/lengths_ctc
    python -m training.captcha_lengths --init models/weights/captcha_seq2seq.json --width 128 --minutes 95 \
        --lr 1e-3 --precision bf16 --out /tmp/lengths_seq2seq
    python -m training.captcha_lengths --evaluate models/weights/captcha_ctc.json   # the figures only

The figures: 2,000 4-character captchas from the test seed (as the shipped manifest's), and
1,000 each of 5 and 6 characters from seeds of their own, read as the service reads them (with
the o/0 glyph net on the full-resolution image) and by the reader alone. Each epoch validates
on 300 captchas of 4, 5 and 6 characters from other seeds.
"""
from __future__ import annotations

import argparse
import random
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from models.captcha_common import CHARSET, NUM_CHARS
from models.captcha_seq2seq import END, CaptchaSeq2Seq
from models.checkpoint import load_checkpoint
from models.device import resolve_device
from models.preprocess import prepare_captcha
from training.captcha_data import CaptchaGenerator
from training.captcha_finetune import accuracy, ctc_loss
from training.captcha_lib import TEST_SEED, VAL_SEED, random_shift
from training.common import REPO_ROOT, seed_everything
from training.export import export, training_section
from training.loop import PRECISIONS, Budget, FitSettings, OneCycle, fit

MAX_LENGTH = 8
LENGTH_WEIGHTS = {1: 0.04, 2: 0.05, 3: 0.08, 4: 0.3, 5: 0.2, 6: 0.17, 7: 0.09, 8: 0.07}
EVAL = {4: (2_000, TEST_SEED), 5: (1_000, TEST_SEED + 5), 6: (1_000, TEST_SEED + 6)}
# Per-epoch validation (and the choice of the chunk to keep): seeds of their own, never the test's.
VALIDATION = {4: (300, VAL_SEED + 4), 5: (300, VAL_SEED + 5), 6: (300, VAL_SEED + 6)}


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


def eval_sets(contract: dict, plan: dict[int, tuple[int, int]] = EVAL,
              ) -> dict[int, tuple[torch.Tensor, torch.Tensor | None, list[str]]]:
    """Per length in `plan` ({length: (count, seed)}): (reader inputs (N, 1, H, W), full-resolution
    pixels or None, texts), as served."""
    sets = {}
    for length, (count, seed) in plan.items():
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


def length_metrics(model, sets, device, alone: bool = False) -> dict:
    """Full string and per char for each length's test set, as served (`alone`: without the o/0
    glyph net, i.e. without the full-resolution image)."""
    metrics = {}
    for length, (x, full, texts) in sets.items():
        answers = read_all(model, x, None if alone else full, device)
        figures = accuracy(answers, texts)
        suffix = "" if length == 4 else f"_{length}_chars"
        metrics[f"full_string_accuracy{suffix}"] = figures["full_string_accuracy"]
        metrics[f"char_accuracy{suffix}"] = figures["char_accuracy"]
        metrics[f"test_samples{suffix}"] = len(texts)
        metrics[f"test_seed{suffix}"] = EVAL[length][1]
        if length == 4:
            metrics["test_errors"] = [f"{t}->{p}" for t, p in zip(texts, answers) if t != p][:50]
        print(f"{length} characters{' (reader alone)' if alone else ''}: {figures['full_string_accuracy']:.2%} full "
              f"string ({len(texts)})", flush=True)
    return metrics


def served_and_alone(model, sets, device) -> tuple[dict, dict | None]:
    """`length_metrics` as served, and of the reader without its o/0 glyph net (None without one;
    the sets' sizes and seeds only once, in the first)."""
    alone = None if model.o0 is None else {k: v for k, v in length_metrics(model, sets, device, alone=True).items()
                                           if not k.startswith("test_s")}
    return length_metrics(model, sets, device), alone


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
    parser.add_argument("--width", type=int, default=0,
                        help="reader input width (a multiple of 4; 0: --init's). Wider keeps 6-8 characters apart; "
                             "every weight keeps its shape, only the number of columns changes")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--out", default=str(REPO_ROOT / "models" / "weights"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    if args.merge:
        return merge(Path(args.merge), Path(args.init), Path(args.out), device)
    model, manifest = load_checkpoint(args.evaluate or args.init, device)
    if args.width and args.width != model.config.width:
        model, manifest = widen(model, manifest, args.width, device)
    if not args.evaluate and isinstance(model, CaptchaSeq2Seq) and not model.config.end_token:
        model, manifest = with_end_token(model, manifest, MAX_LENGTH, device)
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
                           weight_decay=1e-2, clip=5.0, precision=args.precision, progress=not args.no_progress)
    validation = eval_sets(manifest.input, VALIDATION)

    def evaluate() -> dict:
        return {f"val_{n}_chars": accuracy(read_all(model, x, full, device), texts)["full_string_accuracy"]
                for n, (x, full, texts) in validation.items()}

    loss = seq2seq_loss if isinstance(model, CaptchaSeq2Seq) else ctc_loss
    result = fit(model, source, loss, settings=settings, forward=lambda x: model(x), evaluate=evaluate)
    chunk = training_section(result, settings, seed=args.seed, batch_size=args.batch_size, device=device,
                             length_weights=LENGTH_WEIGHTS, width=model.config.width, lr=args.lr,
                             end_token=getattr(model.config, "end_token", False))
    return finish(model, manifest, chunk, sets, device, Path(args.out))


def seq2seq_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (B, S, 37) of an end-token reader; labels (B, L <= S - 1) class indices padded with -1
    -> cross-entropy over each character and the end token after it (later steps not scored)."""
    b, steps = logits.shape[:2]
    targets = torch.full((b, steps), -100, dtype=torch.long, device=labels.device)
    targets[:, :labels.shape[1]] = labels.masked_fill(labels < 0, -100)
    targets[torch.arange(b, device=labels.device), (labels >= 0).sum(1)] = END
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def with_end_token(model: CaptchaSeq2Seq, manifest, length: int, device):
    """A fixed-length seq2seq reader -> one that writes up to `length` characters and an end token.
    Everything carries over; the new steps' position vectors start as random as the first ones
    did, and the end token's row of the head starts at zero."""
    config = replace(model.config, end_token=True, length=length)
    new = CaptchaSeq2Seq(config).to(device)
    state = model.state_dict()
    with torch.no_grad():
        old = state.pop("position")
        new.position[:len(old)] = old
        head_w, head_b = state.pop("head.weight"), state.pop("head.bias")
        new.head.weight.zero_()
        new.head.bias.zero_()
        new.head.weight[:NUM_CHARS], new.head.bias[:NUM_CHARS] = head_w, head_b
    missing, unexpected = new.load_state_dict(state, strict=False)
    assert set(missing) == {"position", "head.weight", "head.bias"} and not unexpected, (missing, unexpected)
    manifest.architecture = config.to_dict()
    manifest.outputs = (f"{config.steps} steps x 37: charset[k] for k < 36, 36 = end; greedy: argmax per step up to "
                        "the first end")
    manifest.description = new.describe()
    return new, manifest


def widen(model, manifest, width: int, device):
    """The same reader on a `width` px wide input: conv, GRU and head keep their shapes (the
    columns are 4 px each, so there are width/4 of them); the input contract says so."""
    config = replace(model.config, width=width)
    wide = type(model)(config).to(device)
    wide.load_state_dict(model.state_dict())
    manifest.architecture = config.to_dict()
    manifest.input = {**manifest.input, "width": width,
                      "resize": f"PIL bilinear (antialiased) from any size to {width}x{config.height}",
                      "layout": f"read column by column: {width // 4} columns of 4 px"}
    manifest.description = wide.describe()
    return wide, manifest


def any_length_description(description: str | None) -> str:
    """A reader's description that says it reads every length (an end-token seq2seq's says so already)."""
    description = description or ""
    if "reads 1-8 characters" in description or "end token" in description:
        return description
    return description + "; reads 1-8 characters"


def finish(model, manifest, chunk: dict, sets, device, out: Path) -> Path:
    """The reader's manifest as it was (provenance, o/0 glyph net, figures) plus this chunk under
    `training.lengths`, the totals counting it, and its figures per length."""
    served, alone = served_and_alone(model, sets, device)
    manifest.metrics.update(served)
    if alone is not None:
        manifest.metrics["reader_alone"] = alone
    record_chunk(manifest.training, chunk)
    manifest.length = None
    manifest.description = any_length_description(manifest.description)
    json_path = export(model, manifest, out, manifest.name)
    print(f"wrote {json_path}", flush=True)
    return json_path


def record_chunk(training: dict, chunk: dict) -> None:
    """This chunk under `training["lengths"]`. A reader --init'ed from an earlier chunk keeps it (and
    its own earlier ones) in `earlier_chunks`, oldest first; the totals add this chunk only, as the
    earlier ones are counted in them already."""
    earlier = training.get("lengths")
    if isinstance(earlier, dict) and "samples_seen" in earlier:
        own = {k: v for k, v in earlier.items() if k != "earlier_chunks"}
        chunk = {**chunk, "earlier_chunks": [*earlier.get("earlier_chunks", []), own]}
    training["lengths"] = chunk
    add_to_totals(training, chunk)


def add_to_totals(training: dict, chunk: dict) -> None:
    training["samples_seen"] = training.get("samples_seen", 0) + chunk["samples_seen"]
    training["seconds"] = round(training.get("seconds", 0) + chunk["seconds"], 1)


def merge(run_json: Path, init: Path, out: Path, device) -> Path:
    """A finished run's weights and chunk onto --init's manifest (for runs written before `finish`)."""
    model, run_manifest = load_checkpoint(run_json, device)
    _, manifest = load_checkpoint(init, device)
    if "samples_seen" in (manifest.training.get("lengths") or {}):  # its chunks would count twice
        raise SystemExit(f"{init} has learned every length already: --init must be the manifest the run began from")
    t = run_manifest.training
    chunk = t["lengths"] if "samples_seen" in t.get("lengths", {}) else {
        k: v for k, v in t.items() if k not in ("chunks", "init")}
    last = (t.get("chunks") or [{}])[-1]
    chunk["samples_seen"], chunk["seconds"] = last.get("samples_seen", chunk["samples_seen"]), last.get(
        "seconds", chunk["seconds"])
    if "lengths" in chunk:  # runs before the key's rename
        chunk["length_weights"] = chunk.pop("lengths")
    chunk.setdefault("width", model.config.width)
    chunk.setdefault("end_token", getattr(model.config, "end_token", False))
    # The run's network (widened, with an end token) and its input contract; the rest from --init.
    for key in ("architecture", "input", "outputs", "description", "parameters"):
        setattr(manifest, key, getattr(run_manifest, key))
    if run_manifest.training.get("o0") != manifest.training.get("o0"):  # a glyph net trained for the run's reader
        manifest.training["o0"] = run_manifest.training["o0"]
    for earlier in chunk.get("earlier_chunks", []):  # --init's totals never counted the run's earlier chunks
        add_to_totals(manifest.training, earlier)
    return finish(model, manifest, chunk, eval_sets(manifest.input), device, out)


if __name__ == "__main__":
    main()
