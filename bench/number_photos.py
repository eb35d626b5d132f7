"""A photographed line on paper against the same line as a PNG: the MNIST-test lines (the
manifest's seed) uploaded as a PNG and as phone photos (testkit.photo: grey paper, sensor noise,
JPEG), evenly lit, under a broad soft shadow, small on a large sheet, on ruled and on squared paper; read by
the number reader through the service's preprocessing, as served and without its photo steps
(paper lighting evened out, printed rules and specks far from the writing dropped:
models/preprocess.py).

    .venv/bin/python -m bench.number_photos [--lines 500] [--save bench/results/number_photos.json]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import models.preprocess as preprocess
from models.checkpoint import load_checkpoint
from training.common import default_data_root, load_mnist
from training.number import as_upload, read_lines, score
from training.number_data import test_lines
from testkit import phone_photo

WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights"
SEED = 2027  # the photos' own randomness (where on the sheet, the shadow, the noise)

# name -> what to make of a line's ink (h, w) with a generator: a PNG, or phone_photo's arguments
DRESSES = {
    "png": "black on white PNG, the line as composed (the manifest's upload figure)",
    "photo_even": "photo, evenly lit: the line 4x larger on a sheet 3x its height and 1.8x its width",
    "photo_shadow": "photo, a broad soft shadow (light down by 20-45% at its middle) and a +-10% gradient",
    "photo_small": "photo, evenly lit, the line 2x larger on a sheet 12x its height and 4x its width",
    "photo_ruled": "photo, ruled paper (a line every 1.2 writing heights, one under it), a soft shadow",
    "photo_squared": "photo, squared paper (lines across and down every half writing height), a soft shadow",
}


def dress(ink: np.ndarray, name: str, rng: np.random.Generator) -> Image.Image:
    if name == "png":
        return as_upload(ink, "white_png")
    kw = {"photo_even": dict(shadow=0.0), "photo_shadow": dict(shadow=float(rng.uniform(0.2, 0.45))),
          "photo_small": dict(shadow=0.0, scale=2.0, sheet=(12.0, 4.0)),
          "photo_ruled": dict(shadow=float(rng.uniform(0.2, 0.45)), rules=1.2),
          "photo_squared": dict(shadow=float(rng.uniform(0.2, 0.45)), rules=0.5, squared=True)}[name]
    return Image.open(io.BytesIO(phone_photo(ink, rng, **kw)))


@contextmanager
def without_photo_steps():
    """The preprocessing as it was before those steps: one paper colour, every rule and speck kept."""
    steps = {name: getattr(preprocess, name) for name in ("paper_shading", "_without_rules", "_without_specks")}
    preprocess.paper_shading = lambda rgb: None
    preprocess._without_rules = preprocess._without_specks = lambda ink: ink
    try:
        yield
    finally:
        for name, step in steps.items():
            setattr(preprocess, name, step)


def prepared(images: list[Image.Image], contract: dict) -> tuple[list, list[int]]:
    """Uploads -> their NumberLines, and the indices of those with no ink found (read as "")."""
    lines, blank = [], []
    for i, image in enumerate(images):
        try:
            lines.append(preprocess.prepare_number(image, contract))
        except preprocess.NoDigitError:
            blank.append(i)
    return lines, blank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=500)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--save", metavar="JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, manifest = load_checkpoint(WEIGHTS / "number_ctc.json")
    test_x, test_y = load_mnist(args.data_root or default_data_root(), train=False)
    inks, texts = test_lines(test_x, test_y, count=args.lines)
    results = {"lines": args.lines, "lines_seed": manifest.metrics["mnist_test_lines_seed"], "photo_seed": SEED,
               "manifest": "number_ctc.json", "dresses": {}}
    for name, about in DRESSES.items():
        rng = np.random.default_rng(SEED)
        images = [dress(ink, name, rng) for ink in inks]
        row = {"about": about, "size": f"{images[-1].width}x{images[-1].height} (the last line's)"}
        for steps, context in (("as_served", nullcontext), ("without_photo_steps", without_photo_steps)):
            started = time.perf_counter()
            with context():
                lines, blank = prepared(images, manifest.input)
            ms = (time.perf_counter() - started) / len(images) * 1000
            read, blank = iter(read_lines(model, lines, "cpu")), set(blank)
            predicted = ["" if i in blank else next(read) for i in range(len(images))]
            row[steps] = {**score(predicted, texts), "no_ink_found": len(blank), "preprocess_ms": round(ms, 1)}
        results["dresses"][name] = row
        print(f"{name:13s} as served {row['as_served']['number_accuracy']:.2%} | without the photo steps "
              f"{row['without_photo_steps']['number_accuracy']:.2%} | {about}", flush=True)
    if args.save:
        Path(args.save).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
