"""The committed weights do what their manifests say, on real MNIST test digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import WEIGHTS_DIR, mnist_image
from models.checkpoint import load_checkpoint
from models.preprocess import digit_canvas, to_digit_tensor

MANIFESTS = sorted(WEIGHTS_DIR.glob("digits_*.json"))
SAMPLE = 2000  # random test digits per model: a 3-sigma band of about +-0.6 points at 99%


def allowed_shortfall(p: float, n: int) -> float:
    return 3 * math.sqrt(p * (1 - p) / n) + 0.002


def test_all_three_cells_are_committed():
    assert sorted(p.stem for p in MANIFESTS) == ["digits_gru", "digits_lstm", "digits_rnn"]


@pytest.mark.parametrize("manifest_path", MANIFESTS, ids=lambda p: p.stem)
def test_committed_weights_reach_manifest_accuracy(manifest_path, mnist_test):
    images, labels = mnist_test
    model, manifest = load_checkpoint(manifest_path)
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(1234))[:SAMPLE]
    with torch.inference_mode():
        pred = model(to_digit_tensor(images[idx])).argmax(1)
    acc = (pred == labels[idx]).float().mean().item()
    claimed = manifest.metrics["mnist_test_accuracy"]
    assert acc >= claimed - allowed_shortfall(claimed, SAMPLE), f"{acc:.4f} on {SAMPLE} vs manifest {claimed:.4f}"
    floor = 0.975 if manifest.variant == "rnn" else 0.993  # the targets
    assert claimed >= floor


@pytest.mark.parametrize("manifest_path", MANIFESTS, ids=lambda p: p.stem)
def test_upload_pipeline_keeps_the_accuracy(manifest_path, mnist_test):
    """Test digits sent as enlarged black-on-white images go through the whole serving
    preprocessing and still get read at the manifest's accuracy."""
    images, labels = mnist_test
    model, manifest = load_checkpoint(manifest_path)
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(99))[:400]
    canvases = []
    for i in idx:
        big = mnist_image(images[i], scale=4)
        canvases.append(digit_canvas(big.point(lambda v: 255 - v)))
    with torch.inference_mode():
        pred = model(to_digit_tensor(np.stack(canvases))).argmax(1)
    acc = (pred == labels[idx]).float().mean().item()
    claimed = manifest.metrics["mnist_test_accuracy_upload_pipeline"]
    assert acc >= claimed - allowed_shortfall(claimed, len(idx)) - 0.005, f"{acc:.4f} vs {claimed:.4f}"
