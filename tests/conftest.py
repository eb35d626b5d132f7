"""Shared fixtures: the MNIST data root, the app on the committed weights, MNIST images.
Drawn digits, PNG bytes and the service in a subprocess are in testkit/."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = REPO_ROOT / "models" / "weights"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def mnist_root() -> Path:
    env = os.environ.get("RNNLAB_DATA_ROOT")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "datasets"


def require_mnist() -> Path:
    root = mnist_root()
    if not (root / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        msg = (f"MNIST not found under {root}/MNIST/raw (set RNNLAB_DATA_ROOT to the folder holding MNIST/raw, "
               "or run `python -m training.digits --download` once to fetch it)")
        if IN_CI:
            pytest.fail(msg + " -- required under CI=true")
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def mnist_test():
    """(images (10000, 28, 28) float [0, 1], labels (10000,)) from the real MNIST test set."""
    from training.common import load_mnist

    return load_mnist(str(require_mnist()), train=False)


@pytest.fixture(scope="session")
def client():
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(models_dir=WEIGHTS_DIR, device="cpu"))
    with TestClient(app) as c:
        yield c


def mnist_image(digit_array, scale: int = 1) -> Image.Image:
    """A (28, 28) [0, 1] MNIST digit as an 8-bit white-on-black image, optionally enlarged."""
    arr = np.asarray(digit_array, dtype=np.float32)
    img = Image.fromarray((arr * 255).round().astype(np.uint8), "L")
    if scale > 1:
        img = img.resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    return img
