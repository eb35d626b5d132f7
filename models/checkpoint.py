"""The weight format: `<name>.safetensors` (a plain state_dict) beside `<name>.json` (manifest).

The manifest holds everything inference needs: which network (`task`), its config
(`architecture`), the input contract (`input`), plus the provenance and metrics the README
and `/models` quote. Loading never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

# task -> builder taking the manifest's `architecture` dict. Each network module registers
# itself here by name so this file stays free of per-model knowledge.
_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {}


def register(task: str, builder: Callable[[dict], nn.Module]) -> None:
    _BUILDERS[task] = builder


def build(task: str, architecture: dict) -> nn.Module:
    _import_known_networks()
    if task not in _BUILDERS:
        raise ValueError(f"no network registered for task {task!r}; known: {sorted(_BUILDERS)}")
    return _BUILDERS[task](architecture)


def _import_known_networks() -> None:
    # Importing a network module runs its `register(...)` call.
    from models import digits  # noqa: F401
    from models import captcha_ctc, captcha_seq2seq  # noqa: F401
    from models import autoencoder  # noqa: F401


def save_checkpoint(model: nn.Module, manifest: dict[str, Any], out_dir: str | Path, name: str) -> Path:
    """Write `<out_dir>/<name>.safetensors` and `<out_dir>/<name>.json`; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / f"{name}.safetensors"))
    manifest = {"name": name, "weights": f"{name}.safetensors", **manifest}
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return json_path


def load_manifest(json_path: str | Path) -> dict[str, Any]:
    return json.loads(Path(json_path).read_text())


def load_checkpoint(json_path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the network the manifest describes, load its weights strictly, move it to
    `device` and put it in eval mode."""
    json_path = Path(json_path)
    manifest = load_manifest(json_path)
    model = build(manifest["task"], manifest["architecture"])
    state = load_file(str(json_path.parent / manifest["weights"]), device="cpu")
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return model, manifest
