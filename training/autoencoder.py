"""Train the convolutional autoencoder (32-number code) on MNIST and export it to models/weights.

    python -m training.autoencoder --epochs 24
    python -m training.autoencoder --limit 2048 --epochs 1 --out /tmp/smoke   # smoke run

Writes <out>/autoencoder.safetensors, .json (manifest) and _curve.png, plus a sheet of test
digits beside their reconstructions: docs/autoencoder_sheet.png when --out is the default
weights folder, else <out>/autoencoder_sheet.png (so smoke runs leave docs/ alone).
"""

from __future__ import annotations

import argparse
import math
import platform
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.autoencoder import AutoencoderConfig, ConvAutoencoder, per_image_mse, psnr
from models.checkpoint import save_checkpoint
from models.device import resolve_device
from models.preprocess import NoDigitError, canvas_to_image, digit_canvas, to_autoencoder_tensor
from training.common import REPO_ROOT, Timer, add_common_args, load_mnist, progress, save_curve, seed_everything

DEFAULT_OUT = REPO_ROOT / "models" / "weights"
QUANTILE_LEVELS = 101  # error quantiles at 0%, 1%, ..., 100%: the typicality reference


@torch.inference_mode()
def reconstruction_errors(model: ConvAutoencoder, images: torch.Tensor, device, batch_size: int = 1000) -> torch.Tensor:
    """Per-image MSE (N,) of images (N, 28, 28) in [0, 1]."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = to_autoencoder_tensor(images[i:i + batch_size]).to(device)  # (b, 1, 28, 28)
        out.append(per_image_mse(model(x), x).cpu())
    return torch.cat(out)


def upload_pipeline_canvases(images: torch.Tensor) -> torch.Tensor:
    """Each test digit as the service sees it: 8-bit image -> crop, fit, centre
    (`digit_canvas`). (N, 28, 28) -> (N, 28, 28); blank results stay blank."""
    canvases = []
    for img in images:
        pil = Image.fromarray((img.numpy() * 255).round().astype(np.uint8), "L")
        try:
            canvases.append(digit_canvas(pil))
        except NoDigitError:
            canvases.append(np.zeros((28, 28), np.float32))
    return torch.from_numpy(np.stack(canvases))


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


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code-size", type=int, default=32)
    parser.add_argument("--channels", default="32,64,64", help="conv widths at 28x28, 14x14, 7x7")
    parser.add_argument("--loss", choices=("mse", "bce"), default="mse",
                        help="mse optimises the reported metric directly; bce is the classic choice")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--name", default="autoencoder")
    parser.add_argument("--sheet", help="reconstruction sheet PNG (default: see above)")
    add_common_args(parser, epochs=24, lr=3e-3, batch_size=128)
    args = parser.parse_args(argv)

    seed_everything(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = AutoencoderConfig(code_size=args.code_size, channels=[int(c) for c in args.channels.split(",")])
    model = ConvAutoencoder(config).to(device)

    train_x, _ = load_mnist(args.data_root, train=True, download=args.download, limit=args.limit)
    test_x, test_y = load_mnist(args.data_root, train=False, download=args.download, limit=args.limit)
    print(f"{args.name}: {config} | {model.num_parameters():,} parameters | device {device} | loss {args.loss} | "
          f"train {len(train_x):,} test {len(test_x):,}", flush=True)

    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(args.seed)
    timer = Timer()
    history = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(train_x), generator=gen)
        loss_sum, mse_sum, seen = 0.0, 0.0, 0
        bar = progress(range(steps_per_epoch), total=steps_per_epoch, desc=f"epoch {epoch}/{args.epochs}",
                       disable=args.no_progress)
        for step in bar:
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            x = to_autoencoder_tensor(train_x[idx]).to(device)  # (b, 1, 28, 28) in [0, 1]
            logits = model.decode_logits(model.encode(x))  # (b, 1, 28, 28)
            recon = torch.sigmoid(logits)
            mse = F.mse_loss(recon, x)
            loss = mse if args.loss == "mse" else F.binary_cross_entropy_with_logits(logits, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            mse_sum += mse.item() * len(idx)
            seen += len(idx)
            if step % 20 == 0:
                bar.set_postfix(mse=f"{mse_sum / seen:.5f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        test_mse = reconstruction_errors(model, test_x, device).mean().item()
        history.append({"epoch": epoch, "train_loss": round(loss_sum / seen, 6), "train_mse": round(mse_sum / seen, 6),
                        "test_mse": round(test_mse, 6), "test_psnr_db": round(psnr(test_mse), 3),
                        "seconds": timer.seconds()})
        print(f"epoch {epoch:2d}/{args.epochs} train_mse {mse_sum / seen:.5f} test_mse {test_mse:.5f} "
              f"test_psnr {psnr(test_mse):.2f} dB [{timer.seconds():.0f}s]", flush=True)

    train_seconds = timer.seconds()
    test_errors = reconstruction_errors(model, test_x, device)  # (N,)
    test_mse = test_errors.mean().item()
    # The service compares an upload's error against digits that went through the same
    # upload preprocessing, so the typicality reference is measured that way too.
    pipeline_errors = reconstruction_errors(model, upload_pipeline_canvases(test_x), device)
    quantiles = torch.quantile(pipeline_errors.double(), torch.linspace(0, 1, QUANTILE_LEVELS, dtype=torch.float64))
    print(f"final test_mse {test_mse:.5f} ({psnr(test_mse):.2f} dB) | through the upload pipeline "
          f"{pipeline_errors.mean().item():.5f} | median {quantiles[50].item():.5f} p99 {quantiles[99].item():.5f}",
          flush=True)

    manifest = {
        "task": "autoencoder",
        "variant": "conv",
        "description": f"conv encoder -> {config.code_size}-d code -> ConvTranspose2d decoder",
        "architecture": config.to_dict(),
        "parameters": model.num_parameters(),
        "input": {
            "height": 28, "width": 28, "channels": 1,
            "ink": "white on black, [0, 1]; crop to ink, fit 20x20 keeping aspect, centre of mass at (14, 14)",
            "normalize": None,
            "note": "raw [0, 1] pixels, no mean/std: the sigmoid output is on the same scale",
        },
        "output": {"height": 28, "width": 28, "range": [0, 1], "code_size": config.code_size},
        "metrics": {
            "mnist_test_mse": round(test_mse, 6),
            "mnist_test_psnr": round(psnr(test_mse), 3),  # dB, 10 log10(1 / mean MSE)
            "mnist_test_samples": len(test_x),
            "mnist_test_mse_upload_pipeline": round(pipeline_errors.mean().item(), 6),
        },
        "typicality": {
            "reference": f"per-image reconstruction MSE of the {len(test_x):,} MNIST test digits through the "
                         "upload pipeline (digit_canvas)",
            "mse_quantiles": [round(q, 7) for q in quantiles.tolist()],  # at 0%, 1%, ..., 100%
        },
        "training": {
            "epochs": args.epochs, "seconds": train_seconds, "seed": args.seed, "batch_size": args.batch_size,
            "loss": args.loss, "optimizer": f"AdamW(wd={args.weight_decay}) + OneCycle(max_lr={args.lr})",
            "augmentation": None, "train_samples": len(train_x), "samples_seen": args.epochs * len(train_x),
            "device": str(device), "threads": torch.get_num_threads(), "machine": platform.machine(),
            "history": history,
        },
        "torch_version": torch.__version__,
    }
    json_path = save_checkpoint(model, manifest, args.out, args.name)
    save_curve(history, Path(args.out) / f"{args.name}_curve.png", f"{args.name} on MNIST",
               [("test_mse", "test MSE"), ("test_psnr_db", "test PSNR (dB)")])
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
