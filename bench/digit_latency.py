"""Latency of one POST /predict/digit at a time against a real uvicorn server on loopback.

    .venv/bin/python bench/digit_latency.py [--requests 200]

Starts the service on the committed weights on a free loopback port, sends a 280x280
canvas-style PNG sequentially (concurrency 1) to each model, and prints p50/p95/mean.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from digit_strokes import drawn_digit  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                               "--port", str(port), "--log-level", "warning"], cwd=ROOT,
                              env={**os.environ, "RNNLAB_DEVICE": "cpu", "RNNLAB_LOG_LEVEL": "warning"},
                              stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            for _ in range(300):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            else:
                raise SystemExit("service did not become ready")
            buf = io.BytesIO()
            drawn_digit(7).save(buf, format="PNG")
            png = buf.getvalue()
            print(f"{args.requests} sequential requests per model, {len(png):,}-byte 280x280 PNG, "
                  f"{os.cpu_count()} CPUs\n")
            print("| model | p50 ms | p95 ms | mean ms |")
            print("|---|---|---|---|")
            for model in ("rnn", "lstm", "gru"):
                times = []
                for i in range(args.requests + 10):
                    t = time.perf_counter()
                    r = client.post(f"/predict/digit?model={model}", files={"file": ("d.png", png, "image/png")})
                    dt = (time.perf_counter() - t) * 1000
                    assert r.status_code == 200, r.text
                    if i >= 10:  # warm-up excluded
                        times.append(dt)
                times.sort()
                print(f"| {model} | {statistics.median(times):.1f} | {times[int(0.95 * len(times)) - 1]:.1f} "
                      f"| {statistics.mean(times):.1f} |")
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
