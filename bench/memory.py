"""Memory of the running service under load: starts it (python -m app.serve on a free loopback
port), sends a mixed load for a while to every POST route of the loaded models (bench/load.py's
build_endpoints), and reports the process tree's PSS and private memory at start, at the end of
the load and after a few idle seconds (when app/memory.py has handed freed heap back), from
/proc/<pid>/smaps_rollup (Linux).

    .venv/bin/python -m bench.memory --workers 2 --seconds 60
    .venv/bin/python -m bench.memory --workers 1 --env RNNLAB_MALLOC_TRIM_INTERVAL_S=0   # no trimming
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from bench.load import build_endpoints, fetch_json, run_cell
from testkit import running_service


def process_tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def memory_mb(root: int) -> dict[str, int]:
    """Summed Pss and Private_Dirty (MB) of the process tree: Pss shares shared pages out fairly,
    so the sum is what the processes really hold together (about what a cgroup is charged)."""
    total = {"pss_mb": 0, "private_mb": 0}
    for pid in process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                if key == "Pss":
                    total["pss_mb"] += int(value.split()[0]) // 1024
                elif key == "Private_Dirty":
                    total["private_mb"] += int(value.split()[0]) // 1024
        except OSError:
            continue
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seconds", type=float, default=60, help="length of the mixed load")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--idle", type=float, default=4, help="seconds of quiet before the last reading")
    p.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for the server (repeatable)")
    p.add_argument("--save", type=Path, help="also write the readings as JSON")
    args = p.parse_args(argv)
    env = {"RNNLAB_DEVICE": "cpu", **dict(kv.split("=", 1) for kv in args.env)}
    with running_service(env, ["--workers", str(args.workers)]) as service:
        pid = service.process.pid
        start = memory_mb(pid)
        endpoints = [e for e in build_endpoints(fetch_json(service.port, "/readyz")["models"])
                     if e.method == "POST"]
        peak, requests, t0 = dict(start), 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            for ep in endpoints:  # every route in turn, 5 s each, until the time is up
                cell = asyncio.run(run_cell(service.port, ep, args.clients, 5.0, 10**9))
                requests += len(cell.latencies)
                now = memory_mb(pid)
                peak = {k: max(peak[k], now[k]) for k in peak}
        end = memory_mb(pid)
        time.sleep(args.idle)
        idle = memory_mb(pid)
    result = {"workers": args.workers, "env": args.env, "load_seconds": round(time.perf_counter() - t0 - args.idle, 1),
              "requests": requests, "routes": [e.name for e in endpoints], "start": start, "peak": peak,
              "end_of_load": end, "after_idle": idle}
    print(json.dumps(result, indent=1))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
