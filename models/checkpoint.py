"""The weight format: `<name>.safetensors` (a plain state_dict) beside `<name>.json`, its
manifest (models/manifest.py). Loading builds the network the catalog names for the manifest's
task and variant, and never unpickles anything. Weights may be stored in float16 (manifest
`storage`) to halve the file; they are loaded into the network's float32 parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.catalog import build
from models.manifest import Manifest


STORAGE = {"float32": None, "float16": torch.float16}  # manifest `storage` -> dtype of floating tensors


def stored_state(model: nn.Module, storage: str | None) -> dict[str, torch.Tensor]:
    """The model's state as a manifest's `storage` keeps it: floating tensors in its dtype."""
    dtype = STORAGE[storage or "float32"]
    return {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in model.state_dict().items()}


def save_checkpoint(model: nn.Module, manifest: Manifest | dict[str, Any], out_dir: str | Path, name: str,
                    storage: str = "float32") -> Path:
    """Write `<out_dir>/<name>.safetensors` and `<out_dir>/<name>.json`; returns the JSON path.
    A dict manifest is validated against the schema first. storage="float16" writes floating
    tensors in half precision (and says so in the manifest)."""
    if storage not in STORAGE:
        raise ValueError(f"storage must be one of {sorted(STORAGE)}, not {storage!r}")
    if isinstance(manifest, dict):
        manifest = Manifest.from_dict({k: v for k, v in manifest.items() if k not in ("name", "weights")})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in stored_state(model, storage).items()}
    save_file(state, str(out / f"{name}.safetensors"))
    manifest.name, manifest.weights = name, f"{name}.safetensors"
    manifest.storage = None if storage == "float32" else storage
    return manifest.write(out / f"{name}.json")


def load_manifest(json_path: str | Path) -> Manifest:
    return Manifest.read(json_path)


def load_checkpoint(json_path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Manifest]:
    """Build the network the manifest describes, load its weights strictly, move it to
    `device` and put it in eval mode."""
    json_path = Path(json_path)
    manifest = load_manifest(json_path)
    model = build(manifest)
    state = load_file(str(json_path.parent / (manifest.weights or f"{json_path.stem}.safetensors")), device="cpu")
    # A float16 file (manifest `storage`) loads into float32 parameters: copy_ converts.
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return model, manifest
