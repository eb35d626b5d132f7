"""The FastAPI app: `uvicorn app.main:app`. Models load in `lifespan`, once per process."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.batching import BatchingPool, default_torch_threads
from app.errors import install_error_handlers
from app.observability import configure_logging, install_observability
from app.inference import Services
from app.memory import trim_after_activity
from app.registry import ModelRegistry, watch
from app.routers import captcha, digits, health, number, reconstruct
from app.settings import Settings, get_settings
from models.device import resolve_device

log = logging.getLogger("rnnlab")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Here and not only in the lifespan: `uvicorn app.main:app` imports the app before it logs
    # `Started server process`, so its lines are JSON too.
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging(settings.log_level, settings.log_format)
        # Why: torch defaults to one thread per core; the forward passes would then fight the
        # threads decoding uploads. Default: half the CPUs the container really has (app/batching.py).
        torch.set_num_threads(settings.torch_threads or default_torch_threads())
        registry = ModelRegistry(device=resolve_device(settings.device))
        registry.load_dir(settings.models_dir)
        # Per-model micro-batching + admission control (app/batching.py), made in this event loop.
        batching = BatchingPool(settings, observe=app.state.metrics.observe_batch)
        # Handlers get these through FastAPI dependencies (app/inference.py); registry and
        # batching stay on app.state too for /metrics' collector and for tests.
        app.state.services = Services(settings, registry, batching)
        app.state.registry, app.state.batching = registry, batching
        log.info("ready=%s models=%s errors=%s", registry.ready,
                 {t: sorted(v) for t, v in registry.models.items()}, registry.errors)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(trim_after_activity(settings.malloc_trim_interval_s, batching.items_done),
                                  name="malloc-trim")]
        if settings.models_watch_s > 0:  # a reader trained while the service runs is served without a restart
            tasks.append(loop.create_task(watch(registry, settings.models_dir, settings.models_watch_s,
                                                on_change=batching.retire_all), name="models-watch"))
        yield
        for task in tasks:
            task.cancel()
        await batching.close()

    app = FastAPI(
        title="rnnlab",
        version="0.1.0",
        description="Recurrent neural networks you can use: digits read row by row by RNN/LSTM/GRU, "
                    "handwritten numbers and captchas read by CNN-to-sequence readers. "
                    "Every error is a 4xx with `{\"error\": {\"code\", \"message\"}}`.",
        lifespan=lifespan,
        docs_url=None,  # served below from local assets: the page and /docs work offline
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    install_observability(app, settings)  # X-Request-ID, JSON access log, GET /metrics
    app.include_router(health.router)
    app.include_router(digits.router)
    app.include_router(reconstruct.router)
    app.include_router(captcha.router)
    app.include_router(number.router)

    index = settings.static_dir / "index.html"

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(index)

    if settings.static_dir.is_dir():
        app.mount("/static", StaticFiles(directory=settings.static_dir), name="static")
    install_offline_docs(app)
    return app


def install_offline_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the swagger-ui-bundle-v2 wheel instead of FastAPI's default
    CDN, which an offline deployment cannot reach."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon-32x32.png")


app = create_app()
