"""Accuracy of the committed digit models on canvas-style drawings, through the serving
preprocessing: what the demo page sends, not what MNIST looks like.

    .venv/bin/python bench/digits_canvas.py [--per-digit 50] [--seed 7]

The drawings come from testkit/drawing.py (hand-designed pen paths per digit, several
variants) with random slant, aspect, size, position, wobble and pen width (14-30 px on a
280 px canvas), exported as transparent PNG, black-on-white PNG, or black-on-white JPEG.
"""

from __future__ import annotations

import argparse
import io
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.checkpoint import load_checkpoint
from models.preprocess import digit_canvas, to_digit_tensor
from testkit import STROKES, drawn_digit, png_bytes

ROOT = Path(__file__).resolve().parent.parent


def as_upload(img: Image.Image, kind: str) -> Image.Image:
    if kind == "transparent_png":
        data, fmt = img, "PNG"
    else:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        white.alpha_composite(img)
        data, fmt = white.convert("RGB"), ("PNG" if kind == "white_png" else "JPEG")
    return Image.open(io.BytesIO(png_bytes(data, fmt, **({"quality": 75} if fmt == "JPEG" else {}))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-digit", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--weights", default=str(ROOT / "models" / "weights"))
    args = parser.parse_args()

    rng = random.Random(args.seed)
    kinds = ["transparent_png", "white_png", "white_jpeg"]
    canvases, labels = [], []
    for digit in range(10):
        for k in range(args.per_digit):
            img = drawn_digit(digit, variant=k % len(STROKES[digit]), seed=rng.randrange(1 << 30))
            canvases.append(digit_canvas(as_upload(img, kinds[k % len(kinds)])))
            labels.append(digit)
    x, y = to_digit_tensor(np.stack(canvases)), torch.tensor(labels)

    print(f"{len(labels)} canvas-style drawings ({args.per_digit} per digit, seed {args.seed}), "
          f"uploads as {', '.join(kinds)}\n")
    print("| model | accuracy | worst digit | MNIST test (manifest) |")
    print("|---|---|---|---|")
    for path in sorted(Path(args.weights).glob("digits_*.json")):
        model, manifest = load_checkpoint(path)
        with torch.inference_mode():
            pred = model(x).argmax(1)
        per_digit = [(pred[y == d] == d).float().mean().item() for d in range(10)]
        worst = int(np.argmin(per_digit))
        print(f"| {manifest.variant} | {(pred == y).float().mean().item():.1%} | {worst} ({per_digit[worst]:.0%}) "
              f"| {manifest.metrics['mnist_test_accuracy']:.2%} |")


if __name__ == "__main__":
    main()
