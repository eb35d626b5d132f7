"""MNIST test figures for the digit classifiers and the autoencoder, measured once here for
training, `--reevaluate` and the manifests: on the test tensors as they are, and through the
upload pipeline (each digit as an 8-bit image, preprocessed the way the service does)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.autoencoder import per_image_mse, psnr
from models.preprocess import NoDigitError, digit_canvas, to_autoencoder_tensor, to_digit_tensor

QUANTILE_LEVELS = 101  # autoencoder error quantiles at 0%, 1%, ..., 100%: the typicality reference


def upload_canvases(images: torch.Tensor) -> torch.Tensor:
    """Each digit as the service sees it: 8-bit image -> crop, fit, centre (`digit_canvas`).
    (N, 28, 28) in [0, 1] -> (N, 28, 28); a digit the preprocessing finds no ink in stays blank."""
    canvases = []
    for img in images:
        pil = Image.fromarray((img.numpy() * 255).round().astype(np.uint8), "L")
        try:
            canvases.append(digit_canvas(pil))
        except NoDigitError:
            canvases.append(np.zeros((28, 28), np.float32))
    return torch.from_numpy(np.stack(canvases))


@torch.inference_mode()
def classify(model, images: torch.Tensor, labels: torch.Tensor, device, batch_size: int = 1000) -> dict:
    """A digit classifier on canvases (N, 28, 28) in [0, 1] -> {"accuracy", "loss"}."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(images), batch_size):
        x = to_digit_tensor(images[i:i + batch_size]).to(device)
        y = labels[i:i + batch_size].to(device)
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return {"accuracy": correct / len(images), "loss": loss_sum / len(images)}


def digit_metrics(model, images: torch.Tensor, labels: torch.Tensor, device, label: str = "final") -> dict:
    """The digit manifest's `metrics`: MNIST test accuracy and loss, and the accuracy through
    the upload pipeline (does the service's preprocessing agree with what the net learnt?)."""
    test = classify(model, images, labels, device)
    pipeline = classify(model, upload_canvases(images), labels, device)
    print(f"{label} test_acc {test['accuracy']:.4%} | through the upload pipeline {pipeline['accuracy']:.4%}",
          flush=True)
    return {"mnist_test_accuracy": round(test["accuracy"], 5), "mnist_test_loss": round(test["loss"], 5),
            "mnist_test_samples": len(images), "mnist_test_accuracy_upload_pipeline": round(pipeline["accuracy"], 5)}


@torch.inference_mode()
def reconstruction_errors(model, images: torch.Tensor, device, batch_size: int = 1000) -> torch.Tensor:
    """An autoencoder's per-image MSE (N,) on canvases (N, 28, 28) in [0, 1]."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = to_autoencoder_tensor(images[i:i + batch_size]).to(device)  # (b, 1, 28, 28)
        out.append(per_image_mse(model(x).float(), x).cpu())
    return torch.cat(out)


def autoencoder_metrics(model, images: torch.Tensor, device, label: str = "final") -> tuple[dict, dict]:
    """The autoencoder manifest's `metrics` (test MSE and PSNR, and the MSE through the upload
    pipeline) and its `typicality` reference: the error quantiles of the test digits through the
    upload pipeline, which is how the service measures an upload's error."""
    test_mse = reconstruction_errors(model, images, device).mean().item()
    pipeline = reconstruction_errors(model, upload_canvases(images), device)
    quantiles = torch.quantile(pipeline.double(), torch.linspace(0, 1, QUANTILE_LEVELS, dtype=torch.float64))
    print(f"{label} test_mse {test_mse:.5f} ({psnr(test_mse):.2f} dB) | through the upload pipeline "
          f"{pipeline.mean().item():.5f} | median {quantiles[50].item():.5f} p99 {quantiles[99].item():.5f}",
          flush=True)
    metrics = {"mnist_test_mse": round(test_mse, 6), "mnist_test_psnr": round(psnr(test_mse), 3),  # dB
               "mnist_test_samples": len(images), "mnist_test_mse_upload_pipeline": round(pipeline.mean().item(), 6)}
    typicality = {"reference": f"per-image reconstruction MSE of the {len(images):,} MNIST test digits through the "
                               "upload pipeline (digit_canvas)",
                  "mse_quantiles": [round(q, 7) for q in quantiles.tolist()]}  # at 0%, 1%, ..., 100%
    return metrics, typicality
