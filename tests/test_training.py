"""A training smoke run on a small MNIST subset writes a checkpoint the service can load."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from conftest import require_mnist
from models.checkpoint import load_checkpoint
from models.digits import DigitRNN, DigitRNNConfig


def test_smoke_run_writes_loadable_checkpoint(tmp_path):
    from training.digits import main

    root = require_mnist()
    json_path = main(["--cell", "gru", "--hidden-size", "32", "--limit", "256", "--epochs", "2", "--batch-size", "64",
                      "--data-root", str(root), "--out", str(tmp_path), "--no-progress", "--threads", "1"])
    manifest = json.loads(json_path.read_text())
    assert manifest["task"] == "digits" and manifest["cell"] == "gru"
    assert manifest["architecture"]["hidden_size"] == 32
    assert manifest["training"]["epochs"] == 2 and len(manifest["training"]["history"]) == 2
    assert manifest["training"]["seed"] == 0 and manifest["torch_version"] == torch.__version__
    assert 0 <= manifest["metrics"]["mnist_test_accuracy"] <= 1
    assert manifest["metrics"]["mnist_test_samples"] == 256
    assert manifest["parameters"] == DigitRNN(DigitRNNConfig(**manifest["architecture"])).num_parameters()
    model, _ = load_checkpoint(json_path)
    assert model(torch.zeros(2, 28, 28)).shape == (2, 10)
    curve = Image.open(tmp_path / "digits_gru_curve.png")
    assert curve.width > 100 and curve.height > 100


def test_missing_dataset_says_how_to_get_it(tmp_path):
    from training.digits import main

    with pytest.raises(SystemExit, match="--download"):
        main(["--data-root", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "out"), "--no-progress"])
