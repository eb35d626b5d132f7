"""Metrics (Prometheus, GET /metrics), JSON logs and a request id on every request.

* `ObservabilityMiddleware` (pure ASGI, so it adds no task or body copy per request): takes the
  caller's `X-Request-ID` when it is a sane token, else makes one; echoes it on the response;
  counts requests by route template and status; times them; writes one JSON access-log line.
* The request id lives in a context variable, so log lines written while serving a request --
  including from the threadpool, which copies the context -- carry it.
* Model-side metrics (batch sizes, inference time, queue depth, rejections) come from
  app/batching.py: histograms are observed per forward pass, gauges are read at scrape time.

Each app gets its own CollectorRegistry: tests build several apps in one process, and the
process-global default registry would refuse the second set of metric names.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
import uuid
from contextvars import ContextVar
from datetime import datetime, timezone

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.datastructures import MutableHeaders

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
access_log = logging.getLogger("rnnlab.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # what we accept from a caller or proxy

# Latency buckets: a predict is ~1-20 ms idle, up to the request time-out when overloaded.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_INFER_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


# -- logging ---------------------------------------------------------------------------------
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            entry["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key != "color_message" and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class _RequestIdText(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = request_id_var.get()
        return f"{line} request_id={rid}" if rid else line


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route our logs and uvicorn's through one stderr handler, JSON or text. Idempotent."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_rnnlab", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._rnnlab = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         _RequestIdText("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn installs its own handlers; send its records through ours so every line has one shape.
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # Not uvicorn's access lines: ObservabilityMiddleware writes one per request already (with the
    # request id and route), so uvicorn's would be a second line for every request.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False


# -- metrics ---------------------------------------------------------------------------------
class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("rnnlab_http_requests", "HTTP requests by method, route template and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("rnnlab_http_request_duration_seconds", "HTTP request latency, first byte in to "
                                 "last byte out", ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("rnnlab_http_requests_in_flight", "HTTP requests being served now", registry=r)
        self.batch_size = Histogram("rnnlab_batch_size", "requests per forward pass", ["model"],
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.inference = Histogram("rnnlab_inference_seconds", "time of one batched forward pass", ["model"],
                                   buckets=_INFER_BUCKETS, registry=r)
        self.app: FastAPI | None = None
        r.register(_ModelStateCollector(self))

    def observe_batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(size)
        self.inference.labels(model).observe(seconds)


class _ModelStateCollector:
    """Gauges read from the live batchers and registry when Prometheus scrapes."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        return []  # dynamic: nothing to check at registration

    def collect(self):
        app = self.metrics.app
        state = getattr(app, "state", None)
        queued = GaugeMetricFamily("rnnlab_queue_depth", "requests waiting for a forward pass", labels=["model"])
        admitted = GaugeMetricFamily("rnnlab_requests_admitted", "requests in flight per model: preprocessing, "
                                     "queued or in the forward pass", labels=["model"])
        limit = GaugeMetricFamily("rnnlab_queue_limit", "requests in flight allowed per model before 503",
                                  labels=["model"])
        rejected = CounterMetricFamily("rnnlab_rejected", "requests refused with 503, by reason",
                                       labels=["model", "reason"])
        pool = getattr(state, "batching", None)
        for batcher in getattr(pool, "batchers", {}).values():
            queued.add_metric([batcher.name], batcher.queued)
            admitted.add_metric([batcher.name], batcher.admitted)
            limit.add_metric([batcher.name], batcher.queue_size)
            for reason, count in batcher.stats.rejected.items():
                rejected.add_metric([batcher.name, reason], count)
        loaded = GaugeMetricFamily("rnnlab_models_loaded", "models loaded, by task", labels=["task"])
        registry = getattr(state, "registry", None)
        for task, variants in getattr(registry, "models", {}).items():
            loaded.add_metric([task], len(variants))
        yield from (queued, admitted, limit, rejected, loaded)


# Request ids made here: a random per-process prefix and a counter, 32 hex digits like a uuid4's
# hex. Unique across replicas and restarts without an os.urandom syscall per request (uuid4 was
# ~3% of a digit request's CPU); ids are for correlating logs, not secrets.
_id_prefix, _id_counter = "", itertools.count()


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    _id_prefix, _id_counter = uuid.uuid4().hex[:20], itertools.count()


_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)  # forked workers must not share a prefix


def _new_request_id() -> str:
    return f"{_id_prefix}{next(_id_counter) & 0xFFFFFFFFFFFF:012x}"


def _route_label(scope) -> str:
    """The route template (/predict/digit), never the raw path: bounded label cardinality."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    if scope.get("path", "").startswith("/static/"):
        return "/static"
    return "unmatched"


class ObservabilityMiddleware:
    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        rid = incoming if incoming and _SAFE_ID.match(incoming) else _new_request_id()
        request_id_var.set(rid)  # the request runs in its own task: no reset needed
        status = 500
        started = time.perf_counter()

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", rid)
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.in_flight.dec()
            route, method = _route_label(scope), scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(seconds)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info("%s %s %d", method, scope.get("path", ""), status, extra={
                    "method": method, "path": scope.get("path", ""), "route": route, "status": status,
                    "duration_ms": round(seconds * 1000, 3), "client": client[0] if client else None})


def install_observability(app: FastAPI, settings) -> Metrics:
    """Middleware, GET /metrics and (when settings.bench_routes) GET /bench/noop."""
    metrics = Metrics()
    metrics.app = app
    app.state.metrics = metrics
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)

    if settings.metrics:
        @app.get("/metrics", tags=["service"], summary="Prometheus metrics (text exposition format)",
                 response_class=Response,
                 responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}},
                                  "description": "requests by route and status, latency histograms, batch sizes, "
                                                 "queue depth, inference time"}})
        def metrics_endpoint() -> Response:
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if settings.bench_routes:
        @app.get("/bench/noop", include_in_schema=False)
        async def bench_noop() -> dict:
            # The bare endpoint for bench/load.py: the same server, middleware and JSON
            # response path as a real route, and no work.
            return {"ok": True}

    return metrics
