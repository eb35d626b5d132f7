"""Latency of one handwritten 4-digit number through POST /predict/number against one digit
through POST /predict/digit, in the same run, one request at a time.

    .venv/bin/python -m bench.number_latency [--requests 300] [--save bench/results/number_latency.json]

Starts the service (`python -m app.serve`, one worker) on the committed weights on a free
loopback port. The uploads are what the page sends: a 280x280 canvas PNG of a drawn 7, and a
840x240 canvas PNG of a drawn 2026. Requests alternate between the two routes (so both see the
same machine state), after a warm-up; p50/p95/mean per route and the ratio of the medians.

The drawn 2026 is read confidently, so it is read once. An unsure line is read again at the
reader's other sizes (`reread` in its manifest): what that adds is timed in this process on the
same 4-digit line, once read once and once with every line counted as unsure, and added to the
number route's p50 for the unsure case's ratio.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from models.checkpoint import load_checkpoint
from models.number import pad_lines
from models.preprocess import prepare_number
from testkit import drawn_digit, drawn_number, png_bytes, render_canvas, running_service

WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights"


def number_png(text: str = "2026", width: int = 840, height: int = 240, seed: int = 1) -> bytes:
    """The page's wide pad (width x height, transparent) with `text` written on it."""
    drawing = drawn_number(text, seed=seed, height=height)
    pad = render_canvas([], (width, height))
    pad.alpha_composite(drawing, ((width - drawing.width) // 2, 0))
    return png_bytes(pad)


def reread_cost_ms(data: bytes, repeats: int) -> dict | None:
    """p50 ms of the number reader on one upload's line read once, and read again at its other
    sizes as an unsure line is (None when the shipped reader does not read lines again)."""
    model, manifest = load_checkpoint(WEIGHTS / "number_ctc.json")
    if model.config.reread is None:
        return None
    line = prepare_number(Image.open(io.BytesIO(data)), manifest.input)
    x, widths = pad_lines([line.x])
    times = {"once": [], "again": []}
    with torch.inference_mode():
        for i in range(repeats + 10):
            for name, below in (("once", 0.0), ("again", 1.01)):  # 1.01: every reading counts as unsure
                model.config.reread = dict(model.config.reread, below=below)
                t = time.perf_counter()
                model.read(x, widths, spans=True, lines=[line])
                if i >= 10:
                    times[name].append((time.perf_counter() - t) * 1000)
    return {k: round(float(np.median(v)), 2) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="per route")
    parser.add_argument("--save", help="write the figures as JSON (for bench/readme_tables.py)")
    args = parser.parse_args()

    uploads = {"digit": ("/predict/digit", png_bytes(drawn_digit(7))), "number": ("/predict/number", number_png())}
    times: dict[str, list[float]] = {k: [] for k in uploads}
    env = {"RNNLAB_DEVICE": "cpu", "RNNLAB_LOG_LEVEL": "warning", "WEB_CONCURRENCY": "1"}
    with running_service(env, ["--log-level", "warning"]) as service, \
            httpx.Client(base_url=service.url, timeout=30) as client:
        for i in range(args.requests + 20):
            for name, (path, data) in uploads.items():
                t = time.perf_counter()
                r = client.post(path, files={"file": ("x.png", data, "image/png")})
                dt = (time.perf_counter() - t) * 1000
                assert r.status_code == 200, r.text
                if name == "number":
                    assert r.json()["text"] == "2026", r.json()
                if i >= 20:  # warm-up excluded
                    times[name].append(dt)

    summary = {}
    print(f"{args.requests} sequential requests per route, alternating, {os.cpu_count()} CPUs\n")
    print("| route | upload | p50 ms | p95 ms | mean ms |")
    print("|---|---|---:|---:|---:|")
    for name, (path, data) in uploads.items():
        t = sorted(times[name])
        summary[name] = {"route": path, "upload_bytes": len(data), "p50_ms": round(statistics.median(t), 2),
                         "p95_ms": round(t[int(0.95 * len(t)) - 1], 2), "mean_ms": round(statistics.mean(t), 2)}
        s = summary[name]
        print(f"| `{path}` | {len(data):,} B | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['mean_ms']:.1f} |")
    ratio = summary["number"]["p50_ms"] / summary["digit"]["p50_ms"]
    print(f"\nnumber / digit, p50: {ratio:.2f}x (goal: <= 2x)")
    reread = reread_cost_ms(uploads["number"][1], args.requests)
    if reread is not None:
        extra = reread["again"] - reread["once"]
        reread["unsure_p50_ratio"] = round((summary["number"]["p50_ms"] + extra) / summary["digit"]["p50_ms"], 3)
        print(f"in process: the line read once {reread['once']:.1f} ms, read again as an unsure line "
              f"{reread['again']:.1f} ms (+{extra:.1f} ms); an unsure number / digit, p50: "
              f"{reread['unsure_p50_ratio']:.2f}x")
    if args.save:
        result = {"requests": args.requests, "cpus": os.cpu_count(), "routes": summary,
                  "p50_ratio": round(ratio, 3), "reread_ms": reread,
                  "uploads": {"digit": "280x280 canvas PNG, a drawn 7", "number": "840x240 canvas PNG, a drawn 2026"}}
        Path(args.save).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.save}")


if __name__ == "__main__":
    main()
