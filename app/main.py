"""The FastAPI app: `uvicorn app.main:app`. Models load in `lifespan`, once per process."""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.errors import install_error_handlers
from app.registry import ModelRegistry
from app.routers import digits, health
from app.settings import Settings, get_settings
from models.device import resolve_device

log = logging.getLogger("rnnlab")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
        # Why: torch defaults to one thread per core; several concurrent requests then
        # oversubscribe the CPU. A few threads per forward pass is the sweet spot for these nets.
        torch.set_num_threads(settings.torch_threads or max(1, min(4, os.cpu_count() or 1)))
        registry = ModelRegistry(device=resolve_device(settings.device))
        registry.load_dir(settings.models_dir)
        app.state.registry = registry
        log.info("ready=%s models=%s errors=%s", registry.ready,
                 {t: sorted(v) for t, v in registry.models.items()}, registry.errors)
        yield

    app = FastAPI(
        title="rnnlab",
        version="0.1.0",
        description="Recurrent neural networks you can use: digits read row by row by RNN/LSTM/GRU. "
                    "Every error is a 4xx with `{\"error\": {\"code\", \"message\"}}`.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(digits.router)

    index = settings.static_dir / "index.html"

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(index)

    if settings.static_dir.is_dir():
        app.mount("/static", StaticFiles(directory=settings.static_dir), name="static")
    return app


app = create_app()
