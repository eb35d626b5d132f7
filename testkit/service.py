"""The real service in a subprocess on a free loopback port, for the browser tests and the benches.

    with running_service({"RNNLAB_DEVICE": "cpu"}, ["--workers", "2"]) as service:
        urlopen(service.url + "/readyz")

Imports neither app/ nor torch: a bench starts the server before its own heavy imports.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import urlopen

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    url: str  # http://127.0.0.1:PORT
    port: int
    process: subprocess.Popen
    log_path: Path  # uvicorn's stdout and stderr


class ServiceFailed(RuntimeError):
    """The service exited or did not get ready in time; the message ends with its log's tail."""


@contextmanager
def running_service(env: Mapping[str, str] | None = None, args: Sequence[str] = (), *, cpus: set[int] | None = None,
                    port: int | None = None, log_path: Path | None = None,
                    ready_timeout: float = 120.0) -> Iterator[Service]:
    """`python -m app.serve` (what `make run` and the image start) on 127.0.0.1 (a free port unless
    `port`), with os.environ plus `env`, extra `args` (`--workers N`, `--log-level L`), pinned to `cpus` if given (a container's CPU limit). Yields
    once GET /readyz answers 200; raises ServiceFailed with the log's tail if the process exits
    first or `ready_timeout` seconds pass. Terminated (then killed) on leaving. Without `log_path`
    the log goes to a temporary file, removed afterwards."""
    port = port or free_port()
    own_log = log_path is None
    if own_log:
        fd, name = tempfile.mkstemp(prefix=f"rnnlab-service-{port}-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "app.serve", "--host", "127.0.0.1",
                                 "--port", str(port), *args], cwd=REPO_ROOT, env={**os.environ, **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin, start_new_session=True)
    service = Service(f"http://127.0.0.1:{port}", port, proc, log_path)
    workers = int(args[list(args).index("--workers") + 1]) if "--workers" in args else 1
    try:
        _wait_ready(service, ready_timeout, workers)
        yield service
    finally:
        # The whole process group: with --workers, uvicorn's worker processes too.
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        _signal_group(proc, signal.SIGKILL)  # workers that outlived their master
    if own_log:
        log_path.unlink(missing_ok=True)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def listening_sockets(port: int) -> int | None:
    """How many sockets listen on this TCP port (each app.serve worker has its own), from
    /proc/net/tcp; None where there is no such file (not Linux)."""
    found, tables = 0, [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        return None
    for table in tables:
        if table.exists():
            for line in table.read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    found += 1
    return found


def _wait_ready(service: Service, timeout: float, workers: int = 1) -> None:
    """/readyz answers 200 and, where /proc tells, every worker listens (each joins the port's
    SO_REUSEPORT group once its models are loaded; until then the others take every connection)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if service.process.poll() is not None:
            raise ServiceFailed(f"the service exited with code {service.process.returncode} before it was ready"
                                + _log_tail(service.log_path))
        try:
            with urlopen(service.url + "/readyz", timeout=2) as resp:
                listening = listening_sockets(service.port)
                if resp.status == 200 and (listening is None or listening >= workers):
                    return
                last = f"{resp.status}, {listening} of {workers} workers listening"
        except HTTPError as exc:  # 503 while the models load
            last = f"{exc.code} {exc.read()[:300]!r}"
        except OSError as exc:  # not listening yet
            last = str(exc)
        if time.monotonic() > deadline:
            raise ServiceFailed(f"the service was not ready within {timeout:g} s (last /readyz: {last})"
                                + _log_tail(service.log_path))
        time.sleep(0.2)


def _log_tail(path: Path, chars: int = 3000) -> str:
    text = path.read_text(errors="replace") if path.is_file() else ""
    return f"; the end of {path}:\n{text[-chars:]}"
