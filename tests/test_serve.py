"""app/serve.py: worker processes on their own SO_REUSEPORT sockets share the connections, a
worker that dies is replaced, and SIGTERM stops them all."""

from __future__ import annotations

import http.client
import os
import re
import signal
import time
from pathlib import Path

import pytest

from testkit import running_service


def _worker_pids(supervisor: int) -> set[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker), from /proc."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == supervisor and b"spawn_main" in cmdline:
            pids.add(int(stat.parent.name))
    return pids


def _requests_counted(port: int) -> float:
    """What one worker's /metrics says about its own /healthz requests (each worker counts its own)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    found = re.search(r'rnnlab_http_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)', text)
    return float(found.group(1)) if found else 0.0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_two_workers_share_new_connections_and_are_replaced_and_stopped(tmp_path):
    with running_service({"RNNLAB_DEVICE": "cpu", "RNNLAB_LOG_LEVEL": "warning"}, ["--workers", "2"],
                         log_path=tmp_path / "serve.log", ready_timeout=180) as service:
        supervisor = service.process.pid
        workers = _worker_pids(supervisor)
        assert len(workers) == 2
        # 24 connections opened at once (as a proxy's pool or a burst of clients does), then one
        # /healthz on each: the kernel hashes each connection to one worker's own socket.
        conns = [http.client.HTTPConnection("127.0.0.1", service.port, timeout=10) for _ in range(24)]
        for conn in conns:
            conn.connect()
        for conn in conns:
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
            conn.close()
        # Each /metrics answer is one worker's own count (40 queries reach both but with odds of 2^-39);
        # two equal counts show up as one value.
        counts = {_requests_counted(service.port) for _ in range(40)}
        assert sum(counts) == 24 or counts == {12.0}, counts
        assert min(counts) >= 3, f"connections went unevenly to the workers: {sorted(counts)} of 24"

        # A worker that dies is started again, and the service answers meanwhile.
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = _worker_pids(supervisor)
            if len(now) == 2 and victim not in now:
                break
            time.sleep(0.5)
        assert len(now) == 2 and victim not in now
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200

        # SIGTERM to the supervisor alone stops the workers too.
        os.kill(supervisor, signal.SIGTERM)
        assert service.process.wait(timeout=60) == 0
        for pid in now:
            with pytest.raises(ProcessLookupError):
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.1)


def test_workers_must_be_positive():
    from app.serve import main

    with pytest.raises(SystemExit):
        main(["--workers", "0"])
