"""Load generator for the service: starts it (uvicorn on a free loopback port), then measures
req/s and p50/p95/p99 latency per endpoint at several client concurrencies, next to a bare
endpoint that does no work (GET /bench/noop, enabled by RNNLAB_BENCH_ROUTES for this run), and
the in-process model throughput (forward passes alone, no HTTP).

    .venv/bin/python -m bench.load                       # 1, 8, 32 clients, <= 5 s per cell
    .venv/bin/python -m bench.load --duration 3 --max-requests 2000 --markdown /tmp/table.md

Bounded: every (endpoint, concurrency) cell stops at --duration seconds or --max-requests
requests, whichever comes first, and only 127.0.0.1 is ever contacted. The client is a minimal
keep-alive HTTP/1.1 client on asyncio streams, one connection per simulated client: on a small
machine the client shares the CPUs with the server, and a heavier client would measure itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.request import urlopen

from bench.readme_tables import load_markdown
from testkit import free_port, png_bytes, running_service

REPO_ROOT = Path(__file__).resolve().parent.parent


# -- requests ----------------------------------------------------------------------------------
@dataclass
class Endpoint:
    name: str
    method: str
    path: str
    body: bytes = b""
    content_type: str | None = None
    check: object = None  # callable(status, body) -> None, raises on a wrong answer

    def request_bytes(self, port: int) -> bytes:
        head = [f"{self.method} {self.path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: keep-alive"]
        if self.body or self.method == "POST":
            head.append(f"Content-Length: {len(self.body)}")
        if self.content_type:
            head.append(f"Content-Type: {self.content_type}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + self.body


def multipart(field_name: str, filename: str, data: bytes, ctype: str) -> tuple[bytes, str]:
    boundary = "rnnlabbench7MA4YWxkTrZu0gW"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field_name}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {ctype}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def build_endpoints(models: dict[str, list[str]]) -> list[Endpoint]:
    from testkit import drawn_digit, drawn_number

    def expect_json(key, value=None):
        def check(status, body):
            if status != 200:
                raise AssertionError(f"status {status}: {body[:200]!r}")
            got = json.loads(body)[key]
            if value is not None and got != value:
                raise AssertionError(f"{key}={got!r}, expected {value!r}")
        return check

    def expect_200(status, body):
        if status != 200:
            raise AssertionError(f"status {status}: {body[:200]!r}")

    # What the demo page sends: a 280x280 canvas export, dark ink on transparent paper.
    digit = png_bytes(drawn_digit(7))
    out = [Endpoint("bare GET /bench/noop", "GET", "/bench/noop", check=expect_200),
           Endpoint("GET /healthz", "GET", "/healthz", check=expect_200)]
    if "digits" in models:
        body, ctype = multipart("file", "digit.png", digit, "image/png")
        out.append(Endpoint("POST /predict/digit", "POST", "/predict/digit", body, ctype, expect_json("digit")))
    if "captcha" in models:
        from captcha.image import ImageCaptcha  # the generator the captcha model was trained on

        image = ImageCaptcha().generate_image("3fk9")
        body, ctype = multipart("file", "captcha.png", png_bytes(image), "image/png")
        out.append(Endpoint("POST /predict/captcha", "POST", "/predict/captcha", body, ctype, expect_json("text")))
        if "general" in models["captcha"]:
            out.append(Endpoint("POST /predict/captcha?model=general", "POST", "/predict/captcha?model=general",
                                body, ctype, expect_json("text")))
    if "number" in models:
        # A drawn 4-digit line, as the number panel sends it.
        body, ctype = multipart("file", "number.png", png_bytes(drawn_number("2048", seed=3)), "image/png")
        out.append(Endpoint("POST /predict/number", "POST", "/predict/number", body, ctype, expect_json("text")))
    if "autoencoder" in models:
        body, ctype = multipart("file", "digit.png", digit, "image/png")
        out.append(Endpoint("POST /predict/reconstruct", "POST", "/predict/reconstruct", body, ctype,
                            expect_json("mse")))
    return out


# -- the client --------------------------------------------------------------------------------
async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        elif name.strip().lower() == "transfer-encoding":
            raise RuntimeError("chunked responses are not expected from this service")
    body = await reader.readexactly(length) if length else b""
    return status, body


@dataclass
class Cell:
    endpoint: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run_cell(port: int, ep: Endpoint, concurrency: int, duration: float, max_requests: int) -> Cell:
    cell = Cell(ep.name, concurrency)
    raw = ep.request_bytes(port)
    budget = [max_requests]
    start = time.perf_counter()
    deadline = start + duration

    async def client():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while budget[0] > 0 and time.perf_counter() < deadline:
                budget[0] -= 1
                t0 = time.perf_counter()
                writer.write(raw)
                await writer.drain()
                status, body = await _read_response(reader)
                cell.latencies.append(time.perf_counter() - t0)
                cell.statuses[status] = cell.statuses.get(status, 0) + 1
                if ep.check and len(cell.errors) < 3:
                    try:
                        ep.check(status, body)
                    except AssertionError as exc:
                        cell.errors.append(str(exc))
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    cell.seconds = time.perf_counter() - start
    return cell


# -- the server --------------------------------------------------------------------------------
def parse_cpus(text: str | None) -> set[int] | None:
    """'0,1' or '0-3' or '0-1,4' -> {0, 1, ...}; None/'' -> None (no pinning)."""
    if not text:
        return None
    cpus = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def fetch_json(port: int, path: str) -> dict:
    with urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


# -- in-process model throughput ---------------------------------------------------------------
def in_process(models_dir: Path, threads: int, device: str = "cpu", batches=(1, 8, 32), seconds: float = 1.5) -> list[tuple]:
    """(model, batch size, images/s, ms per batch) for the forward passes alone, plus the upload
    preprocessing (PNG decode + digit_canvas) per image."""
    import torch

    from app.imaging import decode_image
    from app.registry import ModelRegistry
    from models.preprocess import digit_canvas, to_digit_tensor
    from testkit import drawn_digit

    torch.set_num_threads(threads)
    registry = ModelRegistry(device=torch.device(device))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    registry.load_dir(models_dir)
    rows = []
    data = png_bytes(drawn_digit(7))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        to_digit_tensor(digit_canvas(decode_image(data, 40_000_000)))
        n += 1
    dt = (time.perf_counter() - t0) / n
    rows.append(("preprocess: PNG decode + digit_canvas", 1, 1 / dt, dt * 1000))
    for variant, entry in sorted(registry.variants("digits").items()):
        for b in batches:
            x = torch.randn(b, 28, 28)
            with torch.inference_mode():
                entry.model(x.to(device), return_steps=True)
                sync()
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    # As the service does it: from a CPU tensor to the probabilities back on the CPU.
                    logits, steps = entry.model(x.to(device), return_steps=True)
                    logits.softmax(-1).cpu(), steps.softmax(-1).cpu()
                    n += 1
                sync()
            dt = (time.perf_counter() - t0) / n
            rows.append((f"digits/{variant} forward", b, b / dt, dt * 1000))
    return rows


def digit_ceiling(models_dir: Path, threads: int = 2, batch: int = 32, seconds: float = 4.0) -> dict:
    """The served work of one default /predict/digit request, done in-process with no HTTP: the
    route's own prepare step (PNG decode, crop/centre by the manifest's input contract) and its
    own batch function (the default digit net with its per-row answers and the autoencoder's
    typicality), in batches of `batch`, on `threads` worker threads of 1 torch thread each.
    The ceiling the served req/s is compared against (run it on the server's CPUs)."""
    import threading

    import torch

    from app.inference import prepare_upload
    from app.registry import ModelRegistry
    from app.routers.digits import DigitItem, DigitReader, digit_batch
    from testkit import drawn_digit

    torch.set_num_threads(1)
    registry = ModelRegistry(device=torch.device("cpu"))
    registry.load_dir(models_dir)
    entry = registry.pick("digits", None)
    reader = DigitReader(entry, registry.pick("autoencoder", None) if registry.variants("autoencoder") else None)
    data = png_bytes(drawn_digit(7))
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def work(k: int) -> None:
        with torch.inference_mode():
            while time.perf_counter() < stop:
                # What a default request (no steps, no echo) puts in the batch.
                items = [DigitItem(*prepare_upload(entry, data, 40_000_000), steps=False) for _ in range(batch)]
                digit_batch(reader, items)
                counts[k] += batch

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    return {"images_per_s": sum(counts) / elapsed, "threads": threads, "batch": batch,
            "model": entry.variant, "typicality": reader.autoencoder is not None}


# -- report ------------------------------------------------------------------------------------
def server_stack() -> str:
    """What uvicorn picks by itself: httptools and uvloop when installed, else h11 and asyncio."""
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"{http}, {loop}"


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


last_ceiling: list[dict] = [{}]


def measure_ceiling(models_dir: Path, server_cpus: set[int] | None, client_cpus: set[int] | None,
                    seconds: float) -> dict:
    """digit_ceiling on the server's CPUs (then back to the client's)."""
    if server_cpus:
        os.sched_setaffinity(0, server_cpus)
    try:
        last_ceiling[0] = digit_ceiling(models_dir, seconds=seconds)
    finally:
        if server_cpus:
            os.sched_setaffinity(0, client_cpus or set(range(os.cpu_count() or 1)))
    return last_ceiling[0]


def summarise(cells: list[Cell], inproc: list[tuple], conditions: dict, ceiling: dict | None) -> dict:
    """Everything a report needs, as plain JSON (what --save writes and bench/readme_tables.py renders)."""
    rows = [{"endpoint": c.endpoint, "clients": c.concurrency, "requests": len(c.latencies), "rps": round(c.rps, 1),
             "p50_ms": round(c.pct(0.50), 2), "p95_ms": round(c.pct(0.95), 2), "p99_ms": round(c.pct(0.99), 2),
             "non_200": sum(v for k, v in c.statuses.items() if k != 200), "wrong": c.errors} for c in cells]
    return {"cells": rows, "ceiling": ceiling,
            "in_process": [{"what": n, "batch": b, "images_per_s": round(ips, 1), "ms": round(ms, 3)}
                           for n, b, ips, ms in inproc],
            "conditions": conditions}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models" / "weights")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per (endpoint, concurrency), at most")
    p.add_argument("--max-requests", type=int, default=5000, help="requests per (endpoint, concurrency), at most")
    p.add_argument("--warmup", type=int, default=50, help="requests per endpoint before measuring")
    p.add_argument("--only", default="", help="comma-separated substrings: measure only matching endpoints")
    p.add_argument("--torch-threads", type=int, default=None, help="RNNLAB_TORCH_THREADS for the server")
    p.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for the server (repeatable)")
    p.add_argument("--server-cpus", help="pin the server to these CPUs, e.g. 0,1 (a container's CPU limit)")
    p.add_argument("--client-cpus", help="pin this process (the client) to these CPUs, e.g. 2,3")
    p.add_argument("--markdown", type=Path, help="also write the tables here")
    p.add_argument("--save", type=Path, help="also write the results as JSON (bench/results/load.json is what the "
                                             "README and docs/serving.md are rendered from)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (python -m app.serve --workers; "
                                                             "default $WEB_CONCURRENCY or 1)")
    p.add_argument("--no-inprocess", action="store_true")
    p.add_argument("--no-ceiling", action="store_true", help="skip the in-process ceiling of /predict/digit")
    p.add_argument("--rounds", type=int, default=3, help="rounds of (served /predict/digit at the top concurrency, "
                                                         "in-process ceiling), alternately; the median is reported")
    args = p.parse_args(argv)

    levels = [int(c) for c in args.concurrency.split(",")]
    # The server runs as deployed (JSON access log on, to a file here), with bench routes added.
    env = {"RNNLAB_MODELS_DIR": str(args.models_dir)}
    if args.torch_threads is not None:
        env["RNNLAB_TORCH_THREADS"] = str(args.torch_threads)
    env.update(kv.split("=", 1) for kv in args.env)
    server_cpus, client_cpus = parse_cpus(args.server_cpus), parse_cpus(args.client_cpus)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    port = free_port()
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"rnnlab-bench-{port}.log"
    load_before = loadavg()
    cells: list[Cell] = []
    # Pinning the server to a few CPUs stands for a container's CPU limit (docker-compose.yml).
    server_args = ["--workers", str(args.workers)] if args.workers else []
    with running_service({"RNNLAB_BENCH_ROUTES": "true", **env}, server_args, cpus=server_cpus, port=port,
                         log_path=log_path) as server:
        ready = fetch_json(port, "/readyz")
        endpoints = build_endpoints(ready["models"])
        if args.only:
            wanted = args.only.split(",")
            endpoints = [e for e in endpoints if any(w in e.name for w in wanted)]
        print(f"server pid {server.process.pid} on 127.0.0.1:{port}; models {ready['models']}", flush=True)
        for ep in endpoints:
            asyncio.run(run_cell(port, ep, 4, 30.0, args.warmup))
            for level in levels:
                cell = asyncio.run(run_cell(port, ep, level, args.duration, args.max_requests))
                cells.append(cell)
                bad = {k: v for k, v in cell.statuses.items() if k != 200}
                print(f"{ep.name:28s} c={level:3d}  {cell.rps:8.0f} req/s  p50 {cell.pct(.5):7.1f}  "
                      f"p95 {cell.pct(.95):7.1f}  p99 {cell.pct(.99):7.1f} ms  n={len(cell.latencies)}"
                      + (f"  non-200 {bad}" if bad else "") + (f"  WRONG {cell.errors}" if cell.errors else ""),
                      flush=True)
        rounds = []
        digit = next((e for e in endpoints if e.name == "POST /predict/digit"), None)
        if digit is not None and not args.no_ceiling and args.rounds:
            # Served and ceiling alternately, so that both see the same machine; the server idles
            # while the ceiling runs (on the server's CPUs), the bench client idles meanwhile.
            for r in range(args.rounds):
                cell = asyncio.run(run_cell(port, digit, max(levels), args.duration, 10**9))
                ceiling = measure_ceiling(args.models_dir, server_cpus, client_cpus, args.duration)
                rounds.append({"served_rps": round(cell.rps, 1), "p50_ms": round(cell.pct(0.5), 2),
                               "p99_ms": round(cell.pct(0.99), 2), "non_200": sum(v for k, v in cell.statuses.items()
                                                                                  if k != 200),
                               "ceiling_images_per_s": round(ceiling["images_per_s"], 1),
                               "ratio": round(cell.rps / ceiling["images_per_s"], 3)})
                print(f"round {r + 1}: served {cell.rps:.0f} req/s (p50 {cell.pct(.5):.1f}, p99 {cell.pct(.99):.1f} ms), "
                      f"ceiling {ceiling['images_per_s']:.0f} images/s: {cell.rps / ceiling['images_per_s']:.2f}",
                      flush=True)
        metrics = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        settings_seen = {k: v for k, v in env.items() if k != "RNNLAB_MODELS_DIR"}
    batch_lines = [ln for ln in metrics.splitlines() if ln.startswith(("rnnlab_batch_size_sum", "rnnlab_batch_size_count"))]
    sums = {}
    for ln in batch_lines:
        name, value = ln.rsplit(" ", 1)
        sums[name] = float(value)
    mean_batches = {k.split("{")[1].rstrip("}"): round(sums[k] / sums[k.replace("_sum", "_count")], 2)
                    for k in sums if k.startswith("rnnlab_batch_size_sum") and sums.get(k.replace("_sum", "_count"))}

    import torch  # after the HTTP runs: the bench process's own import must not compete with them

    threads = args.torch_threads if args.torch_threads is not None else int(os.environ.get("RNNLAB_TORCH_THREADS", 0) or 0)
    device = env.get("RNNLAB_DEVICE", "cpu")
    device = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    inproc = [] if args.no_inprocess else in_process(args.models_dir, threads or 1, device)
    ceiling = None
    if rounds:
        median = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
        ceiling = {**last_ceiling[0], "images_per_s": median["ceiling_images_per_s"], "rounds": rounds,
                   "median_round": rounds.index(median) + 1}
    workers = args.workers or int(os.environ.get("WEB_CONCURRENCY", 1) or 1)
    conditions = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "CPUs": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "torch": torch.__version__,
        "server": f"python -m app.serve, {workers} uvicorn worker process{'es' if workers > 1 else ''} "
                  f"({server_stack()})",
        "server env": settings_seen or "defaults", "in-process torch threads": threads or 1,
        "server CPUs": args.server_cpus or f"all {os.cpu_count()}", "client CPUs": args.client_cpus or "all",
        "in-process device": device + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""),
        "mean batch size over the run": mean_batches or "n/a",
        "load average before / after": f"{load_before} / {loadavg()}",
        "per cell": f"<= {args.duration:g} s or <= {args.max_requests} requests",
    }
    results = summarise(cells, inproc, conditions, ceiling)
    text = load_markdown(results)
    print()
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    if args.save:  # bench/readme_tables.py renders the README's and docs/serving.md's tables from it
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(results, indent=1) + "\n")
    wrong = [c for c in cells if c.errors]
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
