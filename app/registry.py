"""Loads every exported model (<name>.json + .safetensors) from the models folder once, at
start-up, onto the configured device, and hands them to routes by task and variant."""

from __future__ import annotations

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

@dataclass
class LoadedModel:
    name: str
    variant: str
    model: nn.Module
    manifest: Manifest
    device: torch.device
    spec: ModelSpec  # the catalog row: config, network, prepare function

    def describe(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": self.name, "task": m.task, "variant": self.variant, "architecture": m.architecture,
            "parameters": m.parameters, "metrics": m.metrics, "input": m.input,
            "training": {k: v for k, v in m.training.items() if k != "history"},
            "torch_version": m.torch_version, "device": str(self.device),
        }


@dataclass
class ModelRegistry:
    device: torch.device
    models: dict[str, dict[str, LoadedModel]] = field(default_factory=dict)  # task -> variant -> model
    errors: dict[str, str] = field(default_factory=dict)  # manifest file -> why it failed

    def load_dir(self, folder: Path) -> None:
        manifests = sorted(Path(folder).glob("*.json"))
        if not manifests:
            self.errors[str(folder)] = "no model manifests (*.json) found"
        for path in manifests:
            try:
                model, manifest = load_checkpoint(path, self.device)
            except Exception as exc:  # a broken file must not take the others down
                log.error("could not load %s: %s", path, exc)
                self.errors[path.name] = str(exc)
                continue
            self.models.setdefault(manifest.task, {})[manifest.variant] = LoadedModel(
                manifest.name, manifest.variant, model, manifest, self.device, spec_for(manifest.task, manifest.variant))
            log.info("loaded %s (%s/%s) on %s", manifest.name, manifest.task, manifest.variant, self.device)

    @property
    def ready(self) -> bool:
        return bool(self.models) and not self.errors

    def variants(self, task: str) -> dict[str, LoadedModel]:
        return self.models.get(task, {})

    def default_variant(self, task: str) -> str | None:
        variants = self.variants(task)
        if not variants:
            return None
        # The catalog names the manifest metric that ranks a task's variants (higher is better).
        return max(variants, key=lambda v: variants[v].manifest.metrics.get(variants[v].spec.ranking_metric, 0.0))

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
