"""Train a row-reading digit classifier on MNIST and export it to models/weights.

    python -m training.digits --cell gru --epochs 20
    python -m training.digits --cell rnn --limit 512 --epochs 1 --out /tmp/smoke   # smoke run
    python -m training.digits --reevaluate models/weights/digits_gru.json  # refresh metrics only
    python -m training.digits --cell gru --snapshot --out /tmp/run     # snapshot every epoch ...
    python -m training.digits --cell gru --resume /tmp/run/snapshots --out /tmp/run   # ... and go on

Writes <out>/digits_<cell>.safetensors, .json (manifest) and _curve.png.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from models.checkpoint import load_checkpoint
from models.device import resolve_device
from models.digits import DigitRNN, DigitRNNConfig
from models.preprocess import MNIST_MEAN, MNIST_STD, to_digit_tensor
from training.augment import augment_digits
from training.common import add_common_args, load_mnist, seed_everything
from training.evaluation import classify, digit_metrics
from training.export import build_manifest, export, training_section
from training.loop import Shuffled, ShuffledSource, fit, settings_from_args

# Defaults per cell: the reference 7x64 RNN, and gated cells sized to reach >= 99.3%
# while staying cheap to serve on a CPU.
CELL_DEFAULTS = {
    "rnn": dict(hidden_size=64, num_layers=7, dropout=0.0),
    "lstm": dict(hidden_size=256, num_layers=2, dropout=0.1),
    "gru": dict(hidden_size=256, num_layers=2, dropout=0.1),
}
INPUT = {
    "height": 28, "width": 28, "layout": "rows are time steps (28 steps x 28 features)",
    "ink": "white on black, [0, 1]; crop to ink, fit 20x20 keeping aspect, centre of mass at (14, 14)",
    "normalize": {"mean": MNIST_MEAN, "std": MNIST_STD},
}
AUGMENTATION = "affine (rot 15deg, scale, aspect, shear, shift 2px), stroke width, blur"


class MnistBatches(ShuffledSource):
    """Shuffled MNIST batches, augmented on the fly (one generator for the order and the
    augmentation): (normalised images (B, 28, 28), labels (B,)) on `device`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, gen: torch.Generator,
                 device: torch.device, augment: bool):
        self.images, self.labels, self.gen, self.device, self.augment = images, labels, gen, device, augment
        self.order = Shuffled(len(images), batch_size, gen)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order.next()
        x = self.images[idx]
        if self.augment:
            x = augment_digits(x, self.gen)
        return to_digit_tensor(x).to(self.device), self.labels[idx].to(self.device)


def reevaluate(json_path: Path, args) -> Path:
    """Recompute an exported model's test figures and update its manifest in place."""
    device = resolve_device(args.device)
    model, manifest = load_checkpoint(json_path, device)
    test_x, test_y = load_mnist(args.data_root, train=False, download=args.download, limit=args.limit)
    manifest.metrics.update(digit_metrics(model, test_x, test_y, device, label=json_path.name))
    manifest.write(json_path)
    print(f"updated {json_path}", flush=True)
    return json_path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", choices=sorted(CELL_DEFAULTS), default="gru")
    parser.add_argument("--hidden-size", type=int)
    parser.add_argument("--num-layers", type=int)
    parser.add_argument("--dropout", type=float)
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--name", help="output name (default digits_<cell>)")
    parser.add_argument("--reevaluate", metavar="MANIFEST",
                        help="no training: recompute an exported model's test metrics (e.g. after a "
                             "preprocessing change) and update its manifest in place")
    add_common_args(parser, epochs=20, lr=2e-3, batch_size=128, weight_decay=1e-4, clip=1.0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reevaluate:
        return reevaluate(Path(args.reevaluate), args)

    seed_everything(args.seed)
    device = resolve_device(args.device)
    arch = dict(CELL_DEFAULTS[args.cell])
    for key in ("hidden_size", "num_layers", "dropout"):
        if getattr(args, key) is not None:
            arch[key] = getattr(args, key)
    config = DigitRNNConfig(cell=args.cell, **arch)
    model = DigitRNN(config).to(device)
    name = args.name or f"digits_{args.cell}"

    train_x, train_y = load_mnist(args.data_root, train=True, download=args.download, limit=args.limit)
    test_x, test_y = load_mnist(args.data_root, train=False, download=args.download, limit=args.limit)
    print(f"{name}: {config} | {model.num_parameters():,} parameters | device {device} | "
          f"train {len(train_x):,} test {len(test_x):,}", flush=True)

    gen = torch.Generator().manual_seed(args.seed)
    source = MnistBatches(train_x, train_y, args.batch_size, gen, device, augment=not args.no_augment)
    settings = settings_from_args(args, math.ceil(len(train_x) / args.batch_size), args.out)

    def evaluate() -> dict:
        test = classify(model, test_x, test_y, device)
        return {"test_loss": round(test["loss"], 5), "test_accuracy": round(test["accuracy"], 5)}

    result = fit(model, source, lambda logits, y: F.cross_entropy(logits, y), settings=settings, evaluate=evaluate)

    manifest = build_manifest(
        model, task="digits", variant=args.cell, input=INPUT, classes=[str(i) for i in range(10)],
        metrics=digit_metrics(model, test_x, test_y, device),
        training=training_section(result, settings, seed=args.seed, batch_size=args.batch_size, device=device,
                                  augmentation=None if args.no_augment else AUGMENTATION,
                                  train_samples=len(train_x)))
    json_path = export(model, manifest, args.out, name,
                       curve=(f"{name} on MNIST", [("train_loss", "train loss"), ("test_accuracy", "test accuracy")]))
    print(f"wrote {json_path}", flush=True)
    return json_path


if __name__ == "__main__":
    main()
