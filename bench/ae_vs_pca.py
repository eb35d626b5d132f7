"""The bar the autoencoder has to clear: PCA with the same (and twice the) code size.

    python bench/ae_vs_pca.py            # committed models/weights/autoencoder.json
    python bench/ae_vs_pca.py --weights /tmp/run/autoencoder.json

Fits PCA on the 60,000 MNIST training digits (exact, from the 784x784 covariance in float64),
reconstructs the 10,000 test digits with 32 and 64 components, runs the committed
autoencoder on the same test digits, and prints one markdown table. Pixels are in [0, 1];
MSE is per pixel, averaged over all test digits; PSNR = 10 log10(1 / MSE). PCA's
reconstruction can leave [0, 1]; the "clipped" rows clip it there first, as the
autoencoder's sigmoid output is by construction (issue 4's 0.0152 / 0.0078 are those rows).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from models.autoencoder import per_image_mse, psnr
from models.checkpoint import load_checkpoint
from models.preprocess import to_autoencoder_tensor
from training.common import default_data_root, load_mnist

REPO_ROOT = Path(__file__).resolve().parent.parent


def pca_mse(train: torch.Tensor, test: torch.Tensor, components: list[int]) -> dict[int, tuple[float, float]]:
    """{k: (MSE, MSE with the reconstruction clipped to [0, 1])} for PCA with k components."""
    xtr = train.reshape(len(train), -1).double()  # (60000, 784)
    xte = test.reshape(len(test), -1).double()  # (10000, 784)
    mean = xtr.mean(0)
    centred = xtr - mean
    cov = centred.T @ centred / len(xtr)  # (784, 784)
    _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    vectors = vectors.flip(1)  # (784, 784), principal directions first
    out = {}
    for k in components:
        basis = vectors[:, :k]  # (784, k)
        recon = (xte - mean) @ basis @ basis.T + mean  # (10000, 784)
        out[k] = (((recon - xte) ** 2).mean().item(), ((recon.clamp(0, 1) - xte) ** 2).mean().item())
    return out


@torch.inference_mode()
def autoencoder_mse(json_path: Path, test: torch.Tensor) -> tuple[float, dict]:
    model, manifest = load_checkpoint(json_path, "cpu")
    errors = torch.cat([per_image_mse(model(x := to_autoencoder_tensor(test[i:i + 1000])), x)
                        for i in range(0, len(test), 1000)])
    return errors.mean().item(), manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=REPO_ROOT / "models" / "weights" / "autoencoder.json")
    parser.add_argument("--data-root", default=default_data_root())
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    train, _ = load_mnist(args.data_root, train=True)
    test, _ = load_mnist(args.data_root, train=False)
    pca = pca_mse(train, test, [32, 64])
    ae, manifest = autoencoder_mse(args.weights, test)

    code = manifest.architecture["code_size"]
    print(f"MNIST test set, {len(test):,} digits, pixels in [0, 1]; PCA fit on {len(train):,} training digits; "
          f"autoencoder {args.weights.name} ({manifest.parameters:,} parameters, "
          f"{manifest.training['epochs']} epochs); torch {torch.__version__}\n")
    print("| method | code size | test MSE | PSNR (dB) | MSE / autoencoder's |")
    print("|---|---:|---:|---:|---:|")
    for k, (mse, clipped) in pca.items():
        print(f"| PCA | {k} | {mse:.5f} | {psnr(mse):.2f} | {mse / ae:.1f}x |")
        print(f"| PCA, output clipped to [0, 1] | {k} | {clipped:.5f} | {psnr(clipped):.2f} | {clipped / ae:.1f}x |")
    print(f"| conv autoencoder (this repo) | {code} | {ae:.5f} | {psnr(ae):.2f} | 1.0x |")


if __name__ == "__main__":
    main()
