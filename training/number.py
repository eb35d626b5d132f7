"""Train the number reader (models/number.py) on composed lines of handwritten digits and export
it to models/weights.

    python -m training.number --minutes 60 --threads 2 --snapshot --out /tmp/number
    python -m training.number --resume /tmp/number/snapshots --minutes 60 --out /tmp/number  # go on
    python -m training.number --init models/weights/number_ctc.json --minutes 20 --out /tmp/more
    python -m training.number --limit 2000 --epochs 1 --steps 5 --out /tmp/smoke   # smoke run
    python -m training.number --reevaluate models/weights/number_ctc.json   # refresh the figures only
    python -m training.number --reevaluate models/weights/number_ctc.json --val-lines 10000 \
        --reread-below 0.9 --reread-scales 0.8 0.9 1.1 1.2   # read unsure lines again at other sizes

Training lines come from MNIST training digits 0..53,999 (and drawn lines); validation lines
from digits 54,000..59,999; the figures from 10,000 lines of MNIST *test* digits (seed 2026,
1-8 digits) and from drawn numbers (a seed training never uses), uploaded as PNG.
Writes <out>/number_ctc.safetensors, .json (manifest) and _curve.png.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.captcha_common import edit_distance
from models.checkpoint import load_checkpoint
from models.device import resolve_device
from models.number import NumberReader, NumberReaderConfig, NumberReading
from models.preprocess import number_line, prepare_number
from training.common import add_common_args, load_mnist, seed_everything
from training.export import build_manifest, export, training_section
from training.loop import fit, settings_from_args
from training.number_data import (CANVAS_TEST_SEED, CONTRACT, TEST_SEED, LineSource, canvas_test_numbers, collate,
                                  test_lines, validation_lines)

TRAIN_DIGITS = 54_000  # MNIST training digits 0..53,999 train; the rest compose the validation lines
AUGMENTATION = ("per digit: the digit trainer's (affine, stroke width, blur); per line: digit size 0.8-1.2, "
                "baseline slope and wobble, gaps from -4 (overlap) to 22 px; 20% of lines drawn like the page's pad")


@torch.inference_mode()
def read_all(model: NumberReader, lines, device, batch_size: int = 256, reread: bool = True) -> list[NumberReading]:
    """NumberLines -> the reader's readings, in batches of lines of similar width (`reread`: unsure
    lines read again, as the config says)."""
    model.eval()
    order = sorted(range(len(lines)), key=lambda i: lines[i].width)
    readings: list[NumberReading | None] = [None] * len(lines)
    for k in range(0, len(order), batch_size):
        chunk = order[k:k + batch_size]
        chunk_lines = [lines[i] for i in chunk]
        batch = collate(chunk_lines, ["0"] * len(chunk))
        for i, reading in zip(chunk, model.read(batch.x.to(device), batch.widths, lines=chunk_lines, reread=reread)):
            readings[i] = reading
    return readings


def read_lines(model: NumberReader, lines, device, batch_size: int = 256) -> list[str]:
    """NumberLines -> the reader's texts, as served."""
    return [r.text for r in read_all(model, lines, device, batch_size)]


def score(predicted: list[str], truth: list[str]) -> dict:
    """Whole-number accuracy, and per-digit accuracy as 1 - edit distance / digits."""
    whole = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    errors = sum(edit_distance(p, t) for p, t in zip(predicted, truth))
    return {"number_accuracy": round(whole, 5), "digit_accuracy": round(1 - errors / sum(map(len, truth)), 5)}


def as_upload(ink: np.ndarray, kind: str) -> Image.Image:
    """A line's ink as a user's file: black on white PNG, or transparent PNG (a canvas export)."""
    grey = (ink * 255).round().astype(np.uint8)
    if kind == "transparent_png":
        rgba = np.zeros(ink.shape + (4,), np.uint8)
        rgba[..., 3] = grey
        image = Image.fromarray(rgba, "RGBA")
    else:
        image = Image.fromarray(255 - grey, "L")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Image.open(io.BytesIO(buf.getvalue()))


def upload_lines(inks: list[np.ndarray]) -> list:
    """Each line through the service's preprocessing, as PNG files of both kinds."""
    kinds = ["white_png", "transparent_png"]
    return [prepare_number(as_upload(ink, kinds[i % 2]), CONTRACT) for i, ink in enumerate(inks)]


def number_metrics(model: NumberReader, test_x: torch.Tensor, test_y: torch.Tensor, device, *,
                   lines: int = 10_000, drawn: int = 500, uploads: int = 2_000) -> dict:
    """The manifest's figures: the MNIST-test lines as composed and (the first `uploads`) through
    the upload pipeline, and drawn numbers uploaded as PNG."""
    inks, texts = test_lines(test_x, test_y, count=lines)
    predicted = read_lines(model, [number_line(ink, CONTRACT) for ink in inks], device)
    direct = score(predicted, texts)
    piped = score(read_lines(model, upload_lines(inks[:uploads]), device), texts[:uploads])
    drawn_inks, drawn_texts = canvas_test_numbers(drawn)
    canvas = score(read_lines(model, upload_lines(drawn_inks), device), drawn_texts)
    lengths = [len(t) for t in texts]
    by_length = {}
    for n in sorted(set(lengths)):
        pairs = [(p, t) for p, t in zip(predicted, texts) if len(t) == n]
        by_length[str(n)] = round(sum(p == t for p, t in pairs) / len(pairs), 5)
    metrics = {
        "mnist_test_lines": lines, "mnist_test_lines_seed": TEST_SEED, "mnist_test_lines_digits": "1-8",
        "mnist_lines_number_accuracy": direct["number_accuracy"],
        "mnist_lines_digit_accuracy": direct["digit_accuracy"],
        "mnist_lines_number_accuracy_by_length": by_length,
        "upload_pipeline_lines": uploads,
        "upload_pipeline_number_accuracy": piped["number_accuracy"],
        "drawn_numbers": drawn, "drawn_numbers_seed": CANVAS_TEST_SEED,
        "drawn_number_accuracy": canvas["number_accuracy"], "drawn_digit_accuracy": canvas["digit_accuracy"],
    }
    print(f"MNIST-test lines: {direct['number_accuracy']:.2%} whole, {direct['digit_accuracy']:.3%} per digit | "
          f"upload pipeline {piped['number_accuracy']:.2%} | drawn {canvas['number_accuracy']:.2%}", flush=True)
    return metrics


def reread_config(args) -> dict | None:
    """--reread-below/--reread-scales -> the config's `reread` (models/number.py), or None."""
    if args.reread_below is None:
        return None
    if not 0 < args.reread_below <= 1 or not args.reread_scales or any(s <= 0 for s in args.reread_scales):
        raise SystemExit("--reread-below takes a probability in (0, 1] and --reread-scales positive scales")
    return {"below": args.reread_below, "scales": list(args.reread_scales)}


@torch.inference_mode()
def reread_figures(model: NumberReader, lines, texts: list[str], device, batch_size: int = 256) -> dict:
    """The validation lines read with and without the config's `reread`, and the share of them
    read again (their first reading's text less probable than `below`): how it was chosen. The
    lines are read once; only the unsure ones are read again (as `read` does when serving)."""
    below, scales = model.config.reread["below"], model.config.reread["scales"]
    once = read_all(model, lines, device, batch_size, reread=False)
    again = list(once)
    unsure = sorted((i for i, r in enumerate(once) if r.confidence < below), key=lambda i: lines[i].width)
    per_batch = max(1, batch_size // len(scales))  # each unsure line comes back once per scale
    for k in range(0, len(unsure), per_batch):
        chunk = unsure[k:k + per_batch]
        readings = [once[i] for i in chunk]
        model.reread_unsure(readings, [lines[i] for i in chunk], device)  # replaces the entries of `readings`
        for i, reading in zip(chunk, readings):
            again[i] = reading
    return {"validation_lines": len(lines), "reread_share": round(len(unsure) / len(once), 4),
            "read_once": score([r.text for r in once], texts), "with_rereads": score([r.text for r in again], texts)}


def reevaluate(json_path: Path, args) -> Path:
    reread = reread_config(args)
    device = resolve_device(args.device)
    model, manifest = load_checkpoint(json_path, device)
    if reread is not None:
        model.config.reread = reread
        manifest.architecture = model.config.to_dict()
        train_x, train_y = load_mnist(args.data_root, train=True)
        val_inks, val_texts = validation_lines(train_x[TRAIN_DIGITS:], train_y[TRAIN_DIGITS:], args.val_lines)
        figures = reread_figures(model, [number_line(ink, CONTRACT) for ink in val_inks], val_texts, device)
        print(f"validation lines: {figures}", flush=True)
        manifest.metrics["reread"] = figures
    test_x, test_y = load_mnist(args.data_root, train=False)
    manifest.metrics.update(number_metrics(model, test_x, test_y, device))
    manifest.write(json_path)
    print(f"updated {json_path}", flush=True)
    return json_path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="number_ctc")
    parser.add_argument("--init", metavar="MANIFEST", help="start from an exported reader's weights")
    parser.add_argument("--steps", type=int, default=0, help="steps per epoch (default: one pass over the digits)")
    parser.add_argument("--val-lines", type=int, default=2_000)
    parser.add_argument("--test-lines", type=int, default=10_000)
    parser.add_argument("--reevaluate", metavar="MANIFEST", help="no training: recompute an exported reader's figures")
    parser.add_argument("--reread-below", type=float, metavar="P",
                        help="read lines whose text is less probable than P again at other sizes (models/number.py)")
    parser.add_argument("--reread-scales", type=float, nargs="+", default=[0.8, 0.9, 1.1, 1.2], metavar="S",
                        help="those sizes, as scales of the line's ink height (default: 0.8 0.9 1.1 1.2)")
    add_common_args(parser, epochs=30, lr=2e-3, batch_size=64, weight_decay=1e-4, clip=5.0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reevaluate:
        return reevaluate(Path(args.reevaluate), args)

    seed_everything(args.seed)
    device = resolve_device(args.device)
    if args.init:
        model, init_manifest = load_checkpoint(args.init, device)
        if model.glyph is not None:  # its mix was fitted for these weights: fit it again after (number_glyph)
            print(f"{args.init}: training the reader alone; its glyph net is left out", flush=True)
            model = model.without_glyph()
        config = model.config
    else:
        config = NumberReaderConfig()
        model = NumberReader(config).to(device)
    if args.reread_below is not None:  # (an --init reader keeps its own otherwise)
        config.reread = reread_config(args)
    train_x, train_y = load_mnist(args.data_root, train=True, limit=args.limit)
    test_x, test_y = load_mnist(args.data_root, train=False, limit=args.limit)
    split = min(TRAIN_DIGITS, int(len(train_x) * 0.9))
    val_inks, val_texts = validation_lines(train_x[split:], train_y[split:], args.val_lines)
    val_lines = [number_line(ink, CONTRACT) for ink in val_inks]
    print(f"{args.name}: {model.describe()} | {model.num_parameters():,} parameters | device {device}", flush=True)

    gen = torch.Generator().manual_seed(args.seed)
    source = LineSource(train_x[:split], train_y[:split], args.batch_size, gen, device)
    # An epoch: as many lines as one pass over the training digits makes (5.5 digits a line).
    steps = args.steps or max(1, round(split / 5.5 / args.batch_size))
    settings = settings_from_args(args, steps, args.out)

    def evaluate() -> dict:
        figures = score(read_lines(model, val_lines, device), val_texts)
        return {"val_number_accuracy": figures["number_accuracy"], "val_digit_accuracy": figures["digit_accuracy"]}

    result = fit(model, source, model.loss, settings=settings, forward=lambda inputs: model(*inputs),
                 evaluate=evaluate)
    metrics = number_metrics(model, test_x, test_y, device, lines=min(args.test_lines, 10_000),
                             drawn=500 if not args.limit else 50, uploads=2_000 if not args.limit else 100)
    metrics.update({f"final_{k}": v for k, v in evaluate().items()})
    training = training_section(result, settings, seed=args.seed, batch_size=args.batch_size, device=device,
                                augmentation=AUGMENTATION, train_digits=split, line_digits="1-10")
    if args.init:
        training["init"] = {"from": init_manifest.name, "samples_seen": init_manifest.training.get("samples_seen"),
                            "seconds": init_manifest.training.get("seconds")}
        chunks = list(init_manifest.training.get("chunks", [])) or [
            {k: init_manifest.training.get(k) for k in ("samples_seen", "seconds")}]
        training["chunks"] = chunks + [{"samples_seen": result.samples, "seconds": result.seconds}]
        training["total_seconds"] = round(sum(c.get("seconds") or 0 for c in training["chunks"]), 1)
    manifest = build_manifest(model, task="number", variant="ctc", input=CONTRACT, classes=[str(i) for i in range(10)],
                              metrics=metrics, training=training, description=model.describe())
    json_path = export(model, manifest, args.out, args.name,
                       curve=(f"{args.name}: lines of MNIST digits",
                              [("train_loss", "train CTC loss"), ("val_number_accuracy", "validation, whole number")]))
    print(f"wrote {json_path}", flush=True)
    return json_path


if __name__ == "__main__":
    main()
