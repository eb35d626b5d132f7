"""Latency of one POST /predict/digit at a time against a real uvicorn server on loopback.

    .venv/bin/python bench/digit_latency.py [--requests 200]

Starts the service on the committed weights on a free loopback port, sends a 280x280
canvas-style PNG sequentially (concurrency 1) to each model, and prints p50/p95/mean.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import httpx

from testkit import drawn_digit, png_bytes, running_service


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    env = {"RNNLAB_DEVICE": "cpu", "RNNLAB_LOG_LEVEL": "warning"}
    with running_service(env, ["--log-level", "warning"]) as service:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            png = png_bytes(drawn_digit(7))
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


if __name__ == "__main__":
    main()
