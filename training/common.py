"""Pieces the trainers share: the data root, MNIST tensors, seeding, and the MNIST trainers' flags."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from training.loop import add_fit_args

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_ROOT_ENV = "RNNLAB_DATA_ROOT"


def default_data_root() -> str:
    """$RNNLAB_DATA_ROOT, else ../shared/datasets beside the checkout if present, else ./data."""
    if os.environ.get(DATA_ROOT_ENV):
        return os.environ[DATA_ROOT_ENV]
    shared = REPO_ROOT.parent / "shared" / "datasets"
    if (shared / "MNIST" / "raw").is_dir():
        return str(shared)
    return str(REPO_ROOT / "data")


def add_common_args(parser, *, epochs: int, lr: float, batch_size: int, weight_decay: float,
                    clip: float | None) -> None:
    """The MNIST trainers' flags: data, seed, device, output, and the training loop's."""
    parser.add_argument("--data-root", default=default_data_root(),
                        help=f"folder holding MNIST/raw (default: ${DATA_ROOT_ENV}, ../shared/datasets or ./data)")
    parser.add_argument("--download", action="store_true",
                        help="let torchvision download MNIST into --data-root if it is missing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0,
                        help="use only the first N training and N test images (smoke runs)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default=str(REPO_ROOT / "models" / "weights"), help="output folder")
    add_fit_args(parser, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, clip=clip)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_mnist(root: str, train: bool, download: bool = False, limit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST as tensors: images (N, 28, 28) float in [0, 1] (white ink), labels (N,) long."""
    from torchvision.datasets import MNIST

    try:
        ds = MNIST(root=root, train=train, download=download)
    except RuntimeError as exc:  # torchvision says "Dataset not found"
        raise SystemExit(
            f"MNIST not found under {root!r}/MNIST/raw. Point --data-root (or ${DATA_ROOT_ENV}) at it, "
            f"or add --download to fetch it from the internet. ({exc})"
        ) from None
    images = ds.data.float().div_(255.0)
    labels = ds.targets.long()
    if limit:
        images, labels = images[:limit], labels[:limit]
    return images, labels


@torch.no_grad()
def precise_bn(model: torch.nn.Module, batches: Iterable[Any]) -> None:
    """Replace the running statistics of every BatchNorm the batches go through by their plain
    mean over the batches (feed batches of one size: each weighs the same), each run in train
    mode as `model(batch)`. Training leaves a moving average over its last,
    augmented, batches instead. BatchNorms the forward pass never reaches (a glyph net that reads
    apart) keep theirs; the model ends in eval mode with its momenta as they were."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [({k: b.clone() for k, b in m.named_buffers()}, m.momentum) for m in norms]
    reached: set[int] = set()
    hooks = [m.register_forward_pre_hook(lambda m, args: reached.add(id(m))) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches, not a moving one
    model.train()
    try:
        for batch in batches:
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
        for m, (buffers, momentum) in zip(norms, saved):
            m.momentum = momentum
            if id(m) not in reached:
                for k, b in m.named_buffers():
                    b.copy_(buffers[k])
        model.eval()
