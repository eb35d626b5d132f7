"""Loads every exported model (<name>.json + .safetensors) from the models folder onto the
configured device, hands them to routes by task and served name, and picks up manifests that
appear, change or go while the service runs (`watch`)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.errors import ApiError
from models.catalog import ModelSpec, spec_for
from models.checkpoint import load_checkpoint
from models.manifest import Manifest

log = logging.getLogger("rnnlab")

@dataclass(eq=False)
class LoadedModel:
    name: str
    variant: str  # what it is served as: `model=<variant>` (Manifest.served_name)
    model: nn.Module
    manifest: Manifest
    device: torch.device
    spec: ModelSpec  # the catalog row: config, network, prepare function

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": self.name, "task": m.task, "variant": self.variant, "network": m.variant,
            "description": m.description, "architecture": m.architecture,
            **({"answers": m.answers} if m.answers else {}),
            "parameters": m.parameters, "metrics": m.metrics, "input": m.input,
            "training": {k: v for k, v in m.training.items() if k != "history"},
            "torch_version": m.torch_version, "device": str(self.device),
        }



def folder_state(folder: Path) -> dict[str, tuple]:
    """What a change to the models folder is measured by: per manifest, its and its weights' mtime and size."""
    state = {}
    for path in sorted(Path(folder).glob("*.json")):
        try:
            stats = [path.stat()]
            weights = path.with_suffix(".safetensors")
            if weights.exists():
                stats.append(weights.stat())
            state[path.name] = tuple((st.st_mtime_ns, st.st_size) for st in stats)
        except FileNotFoundError:  # removed while we looked
            continue
    return state


@dataclass
class ModelRegistry:
    device: torch.device
    models: dict[str, dict[str, LoadedModel]] = field(default_factory=dict)  # task -> served name -> model
    errors: dict[str, str] = field(default_factory=dict)  # manifest file -> why it failed
    files: dict[str, tuple] = field(default_factory=dict)  # manifest file -> folder_state() when loaded
    by_file: dict[str, LoadedModel] = field(default_factory=dict)

    def _load(self, path: Path) -> LoadedModel | str:
        try:
            model, manifest = load_checkpoint(path, self.device)
            return LoadedModel(manifest.name, manifest.served_name(), model, manifest, self.device,
                               spec_for(manifest.task, manifest.variant))
        except Exception as exc:  # a broken file must not take the others down
            return f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)

    def load_dir(self, folder: Path) -> None:
        self.apply(folder, self.load_changes(folder))

    def load_changes(self, folder: Path) -> tuple[dict[str, tuple], dict[str, LoadedModel | str]]:
        """Load what is new or changed in `folder` since the last `apply` (slow: run it off the
        event loop) -> (the folder's state, per changed file its model or why it failed)."""
        state = folder_state(folder)
        changed = {name: self._load(Path(folder) / name) for name, sig in state.items() if self.files.get(name) != sig}
        return state, changed

    def apply(self, folder: Path, changes: tuple[dict[str, tuple], dict[str, LoadedModel | str]]) -> bool:
        """Swap in what `load_changes` found (fast, on the event loop); drop removed files.
        Returns whether anything changed."""
        state, changed = changes
        removed = set(self.files) - set(state)
        if not changed and not removed:
            return False
        by_file = {name: m for name, m in self.by_file.items() if name in state and name not in changed}
        errors = {name: e for name, e in self.errors.items() if name in state and name not in changed}
        for name, loaded in changed.items():
            if isinstance(loaded, str):
                log.error("could not load %s: %s", name, loaded)
                errors[name] = loaded
            else:
                by_file[name] = loaded
                log.info("loaded %s (%s/%s, served as %s) on %s", loaded.name, loaded.manifest.task,
                         loaded.manifest.variant, loaded.variant, self.device)
        for name in removed:
            log.info("%s was removed: no longer served", name)
        models: dict[str, dict[str, LoadedModel]] = {}
        for name in sorted(by_file):
            m = by_file[name]
            models.setdefault(m.manifest.task, {})[m.variant] = m
        if not state:
            errors[str(folder)] = "no model manifests (*.json) found"
        self.models, self.errors, self.files, self.by_file = models, errors, state, by_file
        return True

    @property
    def ready(self) -> bool:
        """Every manifest in the folder loaded."""
        return bool(self.models) and not self.errors

    @property
    def serving(self) -> bool:
        """At least one model loaded (a broken manifest leaves the others serving)."""
        return bool(self.models)

    def variants(self, task: str) -> dict[str, LoadedModel]:
        return self.models.get(task, {})

    def default_variant(self, task: str) -> str | None:
        variants = self.variants(task)
        if not variants:
            return None
        # The catalog names the manifest metrics that rank a task's variants (higher is better).
        return max(variants, key=lambda v: variants[v].spec.ranking_score(variants[v].manifest.metrics))

    def pick(self, task: str, variant: str | None) -> LoadedModel:
        variants = self.variants(task)
        if not variants:
            raise ApiError(503, "model_unavailable", f"no {task} model is loaded on this server",
                           headers={"Retry-After": "30"})
        if variant is None or variant == "":
            variant = self.default_variant(task)
        if variant not in variants:
            raise ApiError(422, "unknown_model",
                           f"model {variant!r} is not available for {task}; choose one of {', '.join(sorted(variants))}")
        return variants[variant]


async def watch(registry: ModelRegistry, folder: Path, interval_s: float, on_change) -> None:
    """Every `interval_s`, load what changed in `folder` (in a thread: the event loop keeps
    serving) and swap it in; then `on_change()`. A new reader is served within about one interval."""
    while True:
        await asyncio.sleep(interval_s)
        if folder_state(folder) == registry.files:
            continue
        try:
            changes = await asyncio.to_thread(registry.load_changes, folder)
        except Exception:  # the folder itself unreadable for a moment: try again next time
            log.exception("could not scan %s", folder)
            continue
        if registry.apply(folder, changes):
            on_change()
