"""Liveness, readiness and the loaded models' manifests."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.errors import ErrorResponse
from app.inference import Services, ServicesDep, services_if_loaded

router = APIRouter(tags=["service"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    models: dict[str, list[str]]
    errors: dict[str, str] = {}


class ModelsList(BaseModel):
    device: str
    defaults: dict[str, str | None]
    models: list[dict[str, Any]]
    errors: dict[str, str] = {}  # manifest file -> why it could not be loaded


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness,
            summary="200 once models are loaded (status `degraded` when some manifest failed: the others serve), "
                    "else 503",
            responses={503: {"model": Readiness, "description": "models still loading, or none could be loaded"}})
def readyz(services: Annotated[Services | None, Depends(services_if_loaded)]):
    if services is None:
        return JSONResponse({"status": "loading", "models": {}, "errors": {}}, status_code=503)
    registry = services.registry
    # A broken manifest is reported, but leaves the others serving: the instance stays in rotation.
    status = "ready" if registry.ready else "degraded" if registry.serving else "not_ready"
    body = Readiness(status=status, models={task: sorted(v) for task, v in registry.models.items()},
                     errors=registry.errors)
    return JSONResponse(body.model_dump(), status_code=200 if registry.serving else 503)


@router.get("/models", response_model=ModelsList, summary="Every loaded model's manifest: task, variant, metrics, device",
            responses={503: {"model": ErrorResponse}})
def list_models(services: ServicesDep) -> ModelsList:
    registry = services.registry
    return ModelsList(
        device=str(registry.device),
        defaults={task: registry.default_variant(task) for task in registry.models},
        models=[m.describe() for variants in registry.models.values() for m in variants.values()],
        errors=registry.errors,
    )
