"""`python -m app.serve`: the service in N uvicorn worker processes, each accepting on its own
SO_REUSEPORT socket, so the kernel spreads new connections evenly over the workers.

Why not `uvicorn --workers N`: its workers share one listening socket, and the first to wake up
accepts the whole backlog. Measured here with 2 workers and 32 keep-alive clients: in one trial
of four every connection went to the same worker, and /predict/digit fell from ~540 to ~420 req/s.

    python -m app.serve --host 0.0.0.0 --port 8000 --workers 2

Defaults from the environment: UVICORN_HOST (127.0.0.1), UVICORN_PORT (8000), WEB_CONCURRENCY
(workers, 1), UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN (20 s), RNNLAB_LOG_LEVEL (info). uvicorn's own access log stays off:
the app writes one JSON access line per request (app/observability.py). A worker that dies is
started again; SIGTERM or SIGINT stops them all gracefully.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import socket
import threading
from typing import Sequence

import uvicorn

from app.observability import configure_logging
from app.settings import get_settings

log = logging.getLogger("rnnlab")
APP = "app.main:app"


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound with SO_REUSEPORT (each worker binds its own to the same address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def run_worker(host: str, port: int, graceful_s: float, log_level: str = "info") -> None:
    """One uvicorn server on its own socket (in this process). Logging is set up before uvicorn
    starts (log_config=None: uvicorn adds no handlers of its own), so its first lines
    (`Started server process`, ...) are JSON like every other."""
    settings = get_settings()
    configure_logging(log_level or settings.log_level, settings.log_format)
    config = uvicorn.Config(APP, host=host, port=port, access_log=False, timeout_graceful_shutdown=graceful_s,
                            log_level=log_level, log_config=None)
    uvicorn.Server(config).run(sockets=[listening_socket(host, port)])


def supervise(workers: int, host: str, port: int, graceful_s: float, log_level: str = "info") -> int:
    """Start `workers` processes, start a dead one again, stop them all on SIGTERM/SIGINT."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no torch state forked
    stop = threading.Event()

    def start() -> multiprocessing.process.BaseProcess:
        proc = context.Process(target=run_worker, args=(host, port, graceful_s, log_level),
                                name="rnnlab-worker")
        proc.start()
        log.info("started worker process %s on %s:%d", proc.pid, host, port)
        return proc

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    procs = [start() for _ in range(workers)]
    while not stop.wait(0.5):
        for k, proc in enumerate(procs):
            if not proc.is_alive():
                log.error("worker process %s exited with %s; starting another", proc.pid, proc.exitcode)
                procs[k] = start()
    for proc in procs:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)  # uvicorn's graceful shutdown: in-flight requests finish
    for proc in procs:
        proc.join(graceful_s + 5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=env.get("UVICORN_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("UVICORN_PORT", "8000")))
    parser.add_argument("--workers", type=int, default=int(env.get("WEB_CONCURRENCY", "1") or 1))
    parser.add_argument("--graceful-shutdown", type=float,
                        default=float(env.get("UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN", "20")))
    parser.add_argument("--log-level", default=env.get("RNNLAB_LOG_LEVEL", "info").lower())
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.workers == 1:
        run_worker(args.host, args.port, args.graceful_shutdown, args.log_level)
        return 0
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)  # the supervisor's lines: JSON like the rest
    return supervise(args.workers, args.host, args.port, args.graceful_shutdown, args.log_level)


if __name__ == "__main__":
    raise SystemExit(main())
