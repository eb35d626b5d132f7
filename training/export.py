"""The one export every trainer uses: the manifest (models/manifest.py) built the same way for
every network, written beside its safetensors, and the training curve.

    manifest = build_manifest(model, task="digits", variant="gru", input=..., metrics=...,
                              training=training_section(result, settings, seed=0, batch_size=128, device=device))
    export(model, manifest, out_dir, "digits_gru", curve=("digits_gru on MNIST", [("train_loss", "train loss")]))

Re-store an exported checkpoint's weights in half precision (half the file; loads as float32):

    python -m training.export models/weights/captcha_general.json --storage float16
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import STORAGE, load_checkpoint, save_checkpoint
from models.manifest import Manifest
from training.loop import FitResult, FitSettings


def training_section(result: FitResult, settings: FitSettings, *, seed: int, batch_size: int,
                     device: torch.device | str, **extra: Any) -> dict[str, Any]:
    """The manifest's `training` for a run of the shared loop: epochs, seconds, samples seen,
    seed, batch size, optimizer and schedule, clipping, precision, a sample or clock budget, the
    trainer's `extra` keys (which may override these), the epoch whose weights were kept
    (keep_best), the snapshot it resumed from, device, threads, machine and the per-epoch history."""
    section = {
        "epochs": result.epochs, "seconds": result.seconds, "samples_seen": result.samples, "seed": seed,
        "batch_size": batch_size, "optimizer": settings.describe_optimizer(), "grad_clip": settings.clip,
        "precision": settings.describe_precision(),
    }
    if settings.budget.minutes:
        section["minutes_budget"] = settings.budget.minutes
    if settings.budget.samples:
        section["samples_budget"] = settings.budget.samples
    section.update(extra)
    if result.best_epoch is not None:
        section["weights_from_epoch"] = result.best_epoch  # keep_best: not necessarily the last
    if result.resumed_from:
        section["resumed_from"] = result.resumed_from
    section.update({"device": str(device), "threads": torch.get_num_threads(), "machine": platform.machine(),
                    "history": result.history})
    return section


def build_manifest(model: nn.Module, *, task: str, variant: str, input: dict[str, Any], metrics: dict[str, Any],
                   training: dict[str, Any], description: str | None = None, **sections: Any) -> Manifest:
    """A network's manifest: its config as `architecture`, its parameter count, the input
    contract, the test figures, the training provenance, the torch version, and any
    task-specific sections (classes, charset, typicality, ...)."""
    return Manifest(task=task, variant=variant, architecture=model.config.to_dict(), input=input,
                    description=description, parameters=sum(p.numel() for p in model.parameters()),
                    metrics=metrics, training=training, torch_version=torch.__version__, **sections)


def export(model: nn.Module, manifest: Manifest | dict[str, Any], out_dir: str | Path, name: str, *,
           curve: tuple[str, list[tuple[str, str]]] | None = None, storage: str = "float32") -> Path:
    """Write <out_dir>/<name>.safetensors and .json and, given (title, [(history key, label)])
    and a history, <name>_curve.png. Returns the JSON path."""
    json_path = save_checkpoint(model, manifest, out_dir, name, storage=storage)
    os.chmod(json_path.with_suffix(".safetensors"), 0o644)  # safetensors writes 0600
    history = (manifest.training if isinstance(manifest, Manifest) else manifest.get("training", {})).get("history")
    if curve is not None and history:
        save_curve(history, Path(out_dir) / f"{name}_curve.png", *curve)
    return json_path


def save_curve(history: list[dict], path: Path, title: str, metrics: list[tuple[str, str]]) -> None:
    """Plot per-epoch metrics: `metrics` is [(key, label)], first on the left axis, the
    rest on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    key, label = metrics[0]
    ax.plot(epochs, [h[key] for h in history], "o-", color="tab:blue", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(label, color="tab:blue")
    if len(metrics) > 1:
        ax2 = ax.twinx()
        for (k, lab), colour in zip(metrics[1:], ["tab:red", "tab:green", "tab:purple"]):
            ax2.plot(epochs, [h[k] for h in history], "s-", color=colour, label=lab)
        ax2.set_ylabel(" / ".join(lab for _, lab in metrics[1:]), color="tab:red")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def restore(json_path: str | Path, storage: str) -> Path:
    """Rewrite an exported checkpoint in place with its weights stored as `storage`."""
    json_path = Path(json_path)
    model, manifest = load_checkpoint(json_path)
    return export(model, manifest, json_path.parent, json_path.stem, storage=storage)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", help="an exported <name>.json")
    parser.add_argument("--storage", choices=sorted(STORAGE), required=True)
    args = parser.parse_args(argv)
    path = restore(args.manifest, args.storage)
    print(f"wrote {path.with_suffix('.safetensors')} ({path.with_suffix('.safetensors').stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
