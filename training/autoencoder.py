"""Train the convolutional autoencoder (32-number code) on MNIST and export it to models/weights.

    python -m training.autoencoder --epochs 24
    python -m training.autoencoder --limit 2048 --epochs 1 --out /tmp/smoke   # smoke run
    python -m training.autoencoder --reevaluate models/weights/autoencoder.json  # refresh metrics only

Writes <out>/autoencoder.safetensors, .json (manifest) and _curve.png, plus a sheet of test
digits beside their reconstructions: docs/autoencoder_sheet.png when --out is the default
weights folder, else <out>/autoencoder_sheet.png (so smoke runs leave docs/ alone).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from models.autoencoder import AutoencoderConfig, ConvAutoencoder, psnr
from models.checkpoint import load_checkpoint
from models.device import resolve_device
from models.preprocess import canvas_to_image, to_autoencoder_tensor
from training.common import REPO_ROOT, add_common_args, load_mnist, seed_everything
from training.evaluation import autoencoder_metrics, reconstruction_errors
from training.export import build_manifest, export, training_section
from training.loop import Shuffled, ShuffledSource, fit, settings_from_args

DEFAULT_OUT = REPO_ROOT / "models" / "weights"
INPUT = {
    "height": 28, "width": 28, "channels": 1,
    "ink": "white on black, [0, 1]; crop to ink, fit 20x20 keeping aspect, centre of mass at (14, 14)",
    "normalize": None,
    "note": "raw [0, 1] pixels, no mean/std: the sigmoid output is on the same scale",
}


class ImageBatches(ShuffledSource):
    """Shuffled MNIST images as (inputs, targets) = (x, x), (B, 1, 28, 28) in [0, 1] on `device`."""

    def __init__(self, images: torch.Tensor, batch_size: int, gen: torch.Generator, device: torch.device):
        self.images, self.device = images, device
        self.order = Shuffled(len(images), batch_size, gen)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_autoencoder_tensor(self.images[self.order.next()]).to(self.device)
        return x, x


@torch.inference_mode()
def save_sheet(model: ConvAutoencoder, images: torch.Tensor, labels: torch.Tensor, device, path: Path,
               per_class: int = 2, scale: int = 2) -> None:
    """A PNG of test digits (the first `per_class` of each class, 0..9 across) with each row of
    originals followed by its row of reconstructions."""
    model.eval()
    bands = []
    for k in range(per_class):
        picks = [int(idx[k]) for d in range(10) if len(idx := (labels == d).nonzero().flatten()) > k]
        if not picks:
            continue
        x = images[picks]  # (n, 28, 28)
        recon = model(to_autoencoder_tensor(x).to(device))[:, 0].cpu()  # (n, 28, 28)
        bands += [torch.cat(list(x), dim=1), torch.cat(list(recon), dim=1)]  # (28, n * 28) each
    width = max(b.shape[1] for b in bands)
    bands = [F.pad(b, (0, width - b.shape[1])) for b in bands]
    sheet = torch.cat(bands, dim=0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas_to_image(sheet, scale=scale).save(path, optimize=True)


def reevaluate(json_path: Path, args) -> Path:
    """Recompute an exported autoencoder's test figures and typicality reference and update its
    manifest in place."""
    device = resolve_device(args.device)
    model, manifest = load_checkpoint(json_path, device)
    test_x, _ = load_mnist(args.data_root, train=False, download=args.download, limit=args.limit)
    metrics, manifest.typicality = autoencoder_metrics(model, test_x, device, label=json_path.name)
    manifest.metrics.update(metrics)
    manifest.write(json_path)
    print(f"updated {json_path}", flush=True)
    return json_path


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code-size", type=int, default=32)
    parser.add_argument("--channels", default="32,64,64", help="conv widths at 28x28, 14x14, 7x7")
    parser.add_argument("--loss", choices=("mse", "bce"), default="mse",
                        help="mse optimises the reported metric directly; bce is the classic choice")
    parser.add_argument("--name", default="autoencoder")
    parser.add_argument("--sheet", help="reconstruction sheet PNG (default: see above)")
    parser.add_argument("--reevaluate", metavar="MANIFEST",
                        help="no training: recompute an exported autoencoder's test metrics and typicality "
                             "reference and update its manifest in place")
    add_common_args(parser, epochs=24, lr=3e-3, batch_size=128, weight_decay=1e-4, clip=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reevaluate:
        return reevaluate(Path(args.reevaluate), args)

    seed_everything(args.seed)
    device = resolve_device(args.device)
    config = AutoencoderConfig(code_size=args.code_size, channels=[int(c) for c in args.channels.split(",")])
    model = ConvAutoencoder(config).to(device)

    train_x, _ = load_mnist(args.data_root, train=True, download=args.download, limit=args.limit)
    test_x, test_y = load_mnist(args.data_root, train=False, download=args.download, limit=args.limit)
    print(f"{args.name}: {config} | {model.num_parameters():,} parameters | device {device} | loss {args.loss} | "
          f"train {len(train_x):,} test {len(test_x):,}", flush=True)

    gen = torch.Generator().manual_seed(args.seed)
    source = ImageBatches(train_x, args.batch_size, gen, device)
    settings = settings_from_args(args, math.ceil(len(train_x) / args.batch_size), args.out)

    def loss_fn(logits: torch.Tensor, x: torch.Tensor):
        mse = F.mse_loss(torch.sigmoid(logits), x)
        return (mse if args.loss == "mse" else F.binary_cross_entropy_with_logits(logits, x)), {"mse": mse}

    def evaluate() -> dict:
        test_mse = reconstruction_errors(model, test_x, device).mean().item()
        return {"test_mse": round(test_mse, 6), "test_psnr_db": round(psnr(test_mse), 3)}

    result = fit(model, source, loss_fn, forward=lambda x: model.decode_logits(model.encode(x)), settings=settings,
                 evaluate=evaluate)

    metrics, typicality = autoencoder_metrics(model, test_x, device)
    manifest = build_manifest(
        model, task="autoencoder", variant="conv", input=INPUT, metrics=metrics, typicality=typicality,
        description=f"conv encoder -> {config.code_size}-d code -> ConvTranspose2d decoder",
        output={"height": 28, "width": 28, "range": [0, 1], "code_size": config.code_size},
        training=training_section(result, settings, seed=args.seed, batch_size=args.batch_size, device=device,
                                  loss=args.loss, augmentation=None, train_samples=len(train_x)))
    json_path = export(model, manifest, args.out, args.name,
                       curve=(f"{args.name} on MNIST", [("test_mse", "test MSE"), ("test_psnr_db", "test PSNR (dB)")]))
    if args.sheet:
        sheet = Path(args.sheet)
    elif Path(args.out).resolve() == DEFAULT_OUT.resolve():
        sheet = REPO_ROOT / "docs" / f"{args.name}_sheet.png"
    else:
        sheet = Path(args.out) / f"{args.name}_sheet.png"
    save_sheet(model, test_x, test_y, device, sheet)
    print(f"wrote {json_path} and {sheet}", flush=True)
    return json_path


if __name__ == "__main__":
    main()
