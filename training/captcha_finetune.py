"""Fine-tune a shipped captcha reader on your own labelled captchas and export it for serving.

    python -m training.captcha finetune --folder DIR --name NAME [--minutes M] [--out DIR]

DIR holds images named `<label>_<anything>.<ext>` (or `<label>.<ext>`): any length, the charset
taken from the labels unless --charset is given; case is folded (the readers read
case-insensitively). 20% are held out (by a seeded shuffle) and the reader's full-string
accuracy on them is printed and written to the manifest. The result is
<out>/captcha_NAME.safetensors + .json; a running service serves it as `model=NAME` within a few
seconds (it watches its models folder), a restarted one from the start.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.captcha_common import CHARSET, Constraints, score_texts, with_answers
from models.captcha_ctc import CaptchaCTC
from models.ctc import padded_ctc_loss
from models.checkpoint import load_checkpoint
from models.device import resolve_device
from models.preprocess import captcha_pixels, to_captcha_tensor
from training.captcha_data import IMAGE_EXTS, label_from_filename
from training.captcha_lib import pixel_batches, random_shift
from training.common import REPO_ROOT, precise_bn, seed_everything
from training.export import build_manifest, export, training_section
from training.loop import PRECISIONS, Budget, FitSettings, OneCycle, Shuffled, ShuffledSource, fit

MIN_LABELLED = 50
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class FolderError(ValueError):
    """The folder cannot be trained on; the message names the files and what to fix."""


def _names(paths: list[str], limit: int = 8) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def scan_folder(folder: Path, charset: str | None, max_length: int) -> list[tuple[Path, str]]:
    """(path, lower-case label) for every image in `folder`, sorted by name. Raises FolderError
    naming the files when any is unreadable or badly labelled, or when there are too few."""
    if not folder.is_dir():
        raise FolderError(f"no such folder: {folder}")
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not candidates:
        raise FolderError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    allowed = set(charset if charset is not None else CHARSET)
    empty, outside, too_long, unreadable, items = [], [], [], [], []
    for path in candidates:
        label = label_from_filename(path)
        if not label:
            empty.append(path.name)
            continue
        if any(c not in allowed for c in label):
            outside.append(f"{path.name} ({''.join(sorted(set(label) - allowed))})")
            continue
        if len(label) > max_length:
            too_long.append(path.name)
            continue
        try:
            with Image.open(path) as img:
                img.load()
        except Exception as exc:
            unreadable.append(f"{path.name} ({type(exc).__name__})")
            continue
        items.append((path, label))
    problems = []
    if empty:
        problems.append(f"{len(empty)} file(s) have an empty label (the name must start with the label, then '_'): "
                        f"{_names(empty)}")
    if outside:
        what = f"--charset {charset!r}" if charset is not None else "0-9a-z (case is folded)"
        problems.append(f"{len(outside)} file(s) have characters outside {what}: {_names(outside)}")
    if too_long:
        problems.append(f"{len(too_long)} file(s) have labels longer than {max_length} characters, the most this "
                        f"reader can read: {_names(too_long)}")
    if unreadable:
        problems.append(f"{len(unreadable)} file(s) could not be read as images: {_names(unreadable)}")
    if problems:
        raise FolderError(f"{folder}: " + "; ".join(problems) + ". Fix or remove them and run again.")
    if len(items) < MIN_LABELLED:
        raise FolderError(f"{folder} has {len(items)} labelled image(s); fine-tuning needs at least {MIN_LABELLED} "
                          "(20% are held out to measure the result)")
    return items


def encode(labels: list[str]) -> np.ndarray:
    """Labels -> int64 (N, L) class indices, padded with -1."""
    out = np.full((len(labels), max(map(len, labels))), -1, np.int64)
    for i, label in enumerate(labels):
        out[i, :len(label)] = [CHARSET.index(c) for c in label]
    return out


def ctc_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """logits (B, T, 37); targets (B, L) class indices padded with -1: labels of any length."""
    return padded_ctc_loss(logits, torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long), targets)


class FolderBatches(ShuffledSource):
    """Shuffled batches of the training images, shifted and scaled a little each time."""

    def __init__(self, pixels: np.ndarray, targets: np.ndarray, batch_size: int, gen: torch.Generator,
                 device: torch.device):
        self.pixels, self.targets, self.gen, self.device = pixels, targets, gen, device
        self.order = Shuffled(len(pixels), min(batch_size, len(pixels)), gen, drop_last=True)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order.next().numpy()
        x = random_shift(to_captcha_tensor(self.pixels[idx]), self.gen)
        return x.to(self.device), torch.from_numpy(self.targets[idx]).to(self.device)


@torch.inference_mode()
def read_texts(model: CaptchaCTC, pixels: np.ndarray, device, answers: str | None = None,
               batch_size: int = 256) -> list[str]:
    """What the service answers for these images (uint8 (N, H, W) reader pixels) when a request
    names no constraints: decoded under the reader's `answers` charset, as the route does."""
    model.eval()
    constraints = with_answers(Constraints(), answers)
    texts = []
    for i in range(0, len(pixels), batch_size):
        x = to_captcha_tensor(pixels[i:i + batch_size]).to(device)
        texts += [r.text for r in model.read(x, constraints=None if constraints.free else constraints)]
    return texts


def choose_statistics(model: CaptchaCTC, train_pixels: np.ndarray, held_pixels: np.ndarray, truth: list[str],
                      device, answers: str | None) -> tuple[dict, list[str]]:
    """Re-estimate the BatchNorm statistics as a plain mean over the training images, un-augmented
    (training.common.precise_bn), and keep them unless the held-out images (one view) read
    worse; training's moving averages saw only its last, shifted and scaled, batches. Returns the
    note for the manifest and the held-out texts as the model now reads them (one view)."""
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    old_texts = read_texts(model, held_pixels, device, answers)
    old = accuracy(old_texts, truth)["full_string_accuracy"]
    precise_bn(model, pixel_batches(train_pixels, min(64, len(train_pixels)), next(model.parameters()).device))
    new_texts = read_texts(model, held_pixels, device, answers)
    new = accuracy(new_texts, truth)["full_string_accuracy"]
    keep = new >= old
    if not keep:
        model.load_state_dict(trained)
    note = {"kept": keep, "images": len(train_pixels), "holdout_full_string_accuracy_before": old,
            "holdout_full_string_accuracy_after": new,
            "note": f"{'re-estimated' if keep else 'as trained'} (held out, one view: {old:.2%} as trained, "
                    f"{new:.2%} re-estimated on the {len(train_pixels)} training images)"}
    return note, (new_texts if keep else old_texts)


def choose_views(model: CaptchaCTC, pixels: np.ndarray, truth: list[str], device, answers: str | None,
                 start_shifts: list[list[int]], mode: str = "auto", one_texts: list[str] | None = None,
                 ) -> tuple[list[str], dict, dict | None]:
    """Read the held-out images (uint8 (N, H, W)) with one view and, when the start reader had
    test-time shifts, with those too; leave `model.config.test_time_shifts` as chosen: in "auto"
    the shifts are kept unless they read fewer held-out captchas right (V views cost V forward
    passes per image), "start" keeps them, "none" drops them. Returns (texts, figures, a note
    for the manifest or None when there was nothing to choose). `one_texts`: the one-view reading
    when the caller has it already."""
    model.config.test_time_shifts = []
    one_texts = one_texts if one_texts is not None else read_texts(model, pixels, device, answers)
    one = accuracy(one_texts, truth)
    if not start_shifts or mode == "none":
        return one_texts, one, ({"chosen": [], "mode": mode, "note": "one view (--views none)"}
                                if start_shifts else None)
    model.config.test_time_shifts = [list(s) for s in start_shifts]
    many_texts = read_texts(model, pixels, device, answers)
    many = accuracy(many_texts, truth)
    keep = mode == "start" or many["full_string_accuracy"] >= one["full_string_accuracy"]
    if not keep:
        model.config.test_time_shifts = []
    note = (f"{len(start_shifts)} shifted views {many['full_string_accuracy']:.2%} vs one view "
            f"{one['full_string_accuracy']:.2%} on the held-out captchas: "
            f"{'kept the views' if keep else 'one view'} ({mode})")
    figures = {"chosen": model.config.test_time_shifts, "mode": mode, "note": note,
               "one_view_full_string_accuracy": one["full_string_accuracy"],
               "views_full_string_accuracy": many["full_string_accuracy"]}
    return (many_texts, many, figures) if keep else (one_texts, one, figures)


def accuracy(predicted: list[str], truth: list[str]) -> dict:
    """Full string, and per character as 1 - edit distance / length (models.captcha_common.score_texts)."""
    return {k: round(v, 5) for k, v in score_texts(predicted, truth).items()}


def write_atomically(model, manifest, out: Path, name: str) -> Path:
    """Export into a scratch folder beside `out`, then move the weights and then the manifest in:
    a watching service never sees half a reader, and a failure leaves `out` as it was."""
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        export(model, manifest, scratch, name)
        os.replace(scratch / f"{name}.safetensors", out / f"{name}.safetensors")
        os.replace(scratch / f"{name}.json", out / f"{name}.json")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out / f"{name}.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.captcha finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", required=True, help="labelled captchas: <label>_<anything>.<ext>")
    parser.add_argument("--name", required=True, help="served as model=NAME; written as captcha_NAME.*")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget for training")
    parser.add_argument("--out", default=str(REPO_ROOT / "models" / "weights"), help="output folder")
    parser.add_argument("--init", default=str(REPO_ROOT / "models" / "weights" / "captcha_ctc.json"),
                        help="the reader to start from (a CTC reader's manifest)")
    parser.add_argument("--scratch", action="store_true",
                        help="start from random weights of --init's architecture instead (for comparison)")
    parser.add_argument("--charset", help="the characters labels may use (default: those the labels use)")
    parser.add_argument("--holdout", type=float, default=0.2, help="share of the images held out")
    parser.add_argument("--views", choices=["auto", "start", "none"], default="auto",
                        help="the start reader's test-time shifted views: keep them unless they read the held-out "
                             "captchas worse (auto), always (start) or never (none)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (one-cycle)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="bf16: autocast the forward pass (more samples per minute on CPUs with AVX-512 BF16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if not NAME.match(args.name):
        parser.error(f"--name {args.name!r}: use 1-40 of a-z, 0-9, '_' and '-', starting with a letter or digit")
    if args.charset is not None:
        args.charset = "".join(sorted(set(args.charset.lower())))
        if not args.charset or any(c not in CHARSET for c in args.charset):
            parser.error(f"--charset {args.charset!r}: use characters of 0-9a-z (case is folded)")
    if not 0 < args.holdout < 1:
        parser.error("--holdout must be between 0 and 1")
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    init_model, init_manifest = load_checkpoint(args.init, device)
    if init_manifest.task != "captcha" or init_manifest.variant != "ctc":
        raise SystemExit(f"--init {args.init}: fine-tuning starts from a CTC captcha reader, not "
                         f"{init_manifest.task}/{init_manifest.variant}")
    # The o/0 glyph net is fitted to the seed's generator: a fine-tuned reader goes without it.
    # Test-time shifts were chosen on the start reader's validation, not on this style: training
    # and its per-epoch figures read one view; choose_views decides at the end.
    start_shifts = [list(s) for s in init_model.config.test_time_shifts]
    config = replace(init_model.config, o0=None, test_time_shifts=[])
    model = CaptchaCTC(config).to(device)
    if not args.scratch:
        model.load_state_dict({k: v for k, v in init_model.state_dict().items() if not k.startswith("o0.")})
    columns = config.width // 4
    try:
        items = scan_folder(Path(args.folder), args.charset, max_length=columns // 2)
    except FolderError as exc:
        raise SystemExit(f"error: {exc}") from None
    labels = [label for _, label in items]
    charset = args.charset or "".join(sorted(set("".join(labels))))
    pixels = np.stack([captcha_pixels(Image.open(path), config.height, config.width) for path, _ in items])
    order = np.random.default_rng(args.seed).permutation(len(items))
    n_test = max(1, round(len(items) * args.holdout))
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
    targets = encode(labels)
    lengths = sorted({len(label) for label in labels})
    print(f"{len(items)} labelled captchas in {args.folder} (lengths {lengths[0]}-{lengths[-1]}, charset {charset}): "
          f"training on {len(train_idx)}, holding out {len(test_idx)}; starting from "
          f"{'random weights' if args.scratch else init_manifest.name}", flush=True)

    test_truth = [labels[i] for i in test_idx]
    answers = None if charset == CHARSET else charset
    before = accuracy(read_texts(model, pixels[test_idx], device, answers), test_truth)
    print(f"held out, before fine-tuning: {before['full_string_accuracy']:.2%} full string", flush=True)

    gen = torch.Generator().manual_seed(args.seed)
    source = FolderBatches(pixels[train_idx], targets[train_idx], args.batch_size, gen, device)
    steps = max(1, len(train_idx) // source.order.batch_size)
    settings = FitSettings(budget=Budget(10_000, steps, minutes=args.minutes),
                           schedule=OneCycle(args.lr, warmup=0.1, final_div_factor=100.0, momentum=None),
                           weight_decay=1e-2, clip=5.0, precision=args.precision, progress=not args.no_progress,
                           bar_every=5)

    def evaluate() -> dict:
        figures = accuracy(read_texts(model, pixels[test_idx], device, answers), test_truth)
        return {"holdout_full_string_accuracy": figures["full_string_accuracy"]}

    started = time.perf_counter()
    result = fit(model, source, ctc_loss, settings=settings, evaluate=evaluate, log=lambda line: print(line, flush=True))
    statistics, one_view = choose_statistics(model, pixels[train_idx], pixels[test_idx], test_truth, device, answers)
    print(f"BatchNorm statistics: {statistics['note']}", flush=True)
    predicted, after, views = choose_views(model, pixels[test_idx], test_truth, device, answers, start_shifts,
                                           args.views, one_texts=one_view)
    minutes = (time.perf_counter() - started) / 60
    print(f"held out, after {minutes:.1f} min: {after['full_string_accuracy']:.2%} full string, "
          f"{after['char_accuracy']:.2%} per character ({len(test_idx)} captchas)", flush=True)
    if views:
        print(f"test-time views: {views['note']}", flush=True)

    name = f"captcha_{args.name}"
    input_contract = {k: v for k, v in init_manifest.input.items() if k != "full_resolution"}
    metrics = {**after, "holdout_samples": len(test_idx), "holdout_before_full_string_accuracy":
               before["full_string_accuracy"],
               "holdout_errors": [f"{t}->{p}" for t, p in zip(test_truth, predicted) if t != p][:50],
               "precise_bn": statistics, **({"test_time_shifts": views} if views else {})}
    training = training_section(result, settings, seed=args.seed, batch_size=source.order.batch_size, device=device,
                                folder=str(Path(args.folder).resolve().name), train_samples=len(train_idx),
                                label_lengths=lengths,
                                init="random weights" if args.scratch else {
                                    "from": init_manifest.name, "samples_seen": init_manifest.training.get("samples_seen"),
                                    "seconds": init_manifest.training.get("seconds")})
    manifest = build_manifest(model, task="captcha", variant="ctc", input=input_contract, metrics=metrics,
                              training=training, charset=CHARSET, answers=answers, case_insensitive=True,
                              outputs=init_manifest.outputs,
                              generator=f"your own labelled captchas ({Path(args.folder).name})",
                              description=f"{'a new reader trained' if args.scratch else init_manifest.name + ' fine-tuned'} on {len(train_idx)} labelled captchas of "
                                          f"{lengths[0]}-{lengths[-1]} characters: " + model.describe())
    json_path = write_atomically(model, manifest, Path(args.out), name)
    print(f"wrote {json_path} (served as model={args.name})", flush=True)
    return json_path
