"""`make docker-test`: the container as deployed, end to end, against a real Docker engine.

Builds the image (unless --no-build), brings up docker-compose.yml, waits for the healthcheck,
then checks: the service runs as uid 10001 on a read-only root, /readyz, the demo page, a drawn 7,
a captcha from /captcha/new, JSON-only logs with exactly one access line per request sent. Then
a mixed load on every route inside the compose memory limit (fails on an OOM kill, a restart or
memory above 85% of the limit), then the scale-out recipe (docker-compose.yml +
deploy/compose.scale.yml, 3 replicas behind nginx) with a steady load through nginx while it
scales down to 1 twice: any failed request fails the test. `docker compose down` at the end, always.

Skips (exit 0, with a message) where no Docker engine or no Compose v2 is reachable.

  .venv/bin/python deploy/docker_test.py                  # build, then every step
  .venv/bin/python deploy/docker_test.py --no-build --load-seconds 30 --scale-seconds 60
  RNNLAB_DOCKER_BUILD_ARGS="--build-arg TORCH_INDEX=https://pypi.org/simple" make docker-test

Build arguments come from RNNLAB_DOCKER_BUILD_ARGS (default: none, the Dockerfile's defaults).
"""
from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IMAGE = "rnnlab:cpu"
BASE = ["-f", "docker-compose.yml"]
SCALED = ["-f", "docker-compose.yml", "-f", "deploy/compose.scale.yml"]
MEMORY_SHARE = 0.85


class Failed(Exception):
    pass


def log(msg: str) -> None:
    print(f"[docker-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*cmd: str, check: bool = True, timeout: float = 600, capture: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=ROOT, text=True, timeout=timeout,
                       stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None)
    if check and r.returncode != 0:
        raise Failed(f"{shlex.join(cmd)} exited {r.returncode}:\n{(r.stdout or '')[-3000:]}")
    return r


class Compose:
    def __init__(self, project: str, port: int):
        self.project, self.port = project, port
        self.env = {**os.environ, "RNNLAB_PORT": str(port)}

    def __call__(self, files: list[str], *args: str, check: bool = True, timeout: float = 600):
        cmd = ["docker", "compose", "-p", self.project, *files, *args]
        r = subprocess.run(cmd, cwd=ROOT, env=self.env, text=True, timeout=timeout,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if check and r.returncode != 0:
            raise Failed(f"{shlex.join(cmd)} exited {r.returncode}:\n{r.stdout[-3000:]}")
        return r.stdout

    def ids(self, files: list[str], service: str) -> list[str]:
        return self(files, "ps", "-q", service).split()


# -- HTTP -------------------------------------------------------------------------------------
def request(port: int, method: str, path: str, body: dict | None = None, rid: str | None = None,
            timeout: float = 60) -> tuple[int, bytes, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if rid:
        req.add_header("X-Request-ID", rid)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def payloads() -> dict[str, dict]:
    from testkit.drawing import drawn_digit, png_bytes
    seven = data_url(png_bytes(drawn_digit(7)))
    three = data_url(png_bytes(drawn_digit(3)))
    return {"seven": {"image": seven}, "pair": {"a": seven, "b": three}}


def mixed_routes(p: dict[str, dict]) -> list[tuple[str, str, dict | None]]:
    """Every route: the four predictions, the captcha generator, the page and the service routes."""
    return [("POST", "/predict/digit", p["seven"]), ("POST", "/predict/digit?explain=true&steps=true", p["seven"]),
            ("POST", "/predict/reconstruct", p["seven"]), ("POST", "/predict/interpolate", p["pair"]),
            ("POST", "/predict/captcha", p["captcha"]), ("POST", "/predict/captcha?explain=true", p["captcha"]),
            ("GET", "/captcha/new", None), ("GET", "/", None), ("GET", "/readyz", None),
            ("GET", "/healthz", None), ("GET", "/models", None), ("GET", "/metrics", None)]


class Load:
    """`clients` threads sending `routes` round-robin until stopped; every outcome is counted."""

    def __init__(self, port: int, routes, clients: int, prefix: str, pause: float = 0.0, slow: float = 10.0):
        self.port, self.routes, self.clients, self.prefix = port, routes, clients, prefix
        self.pause, self.slow = pause, slow  # seconds between one client's requests; slower = failed
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.sent = 0
        self.statuses: collections.Counter = collections.Counter()
        self.failures: list[str] = []
        self.answered: list[str] = []  # request ids the service answered (any HTTP status)
        self.slowest = 0.0
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, i: int) -> None:
        n = i
        while not self.stop_event.is_set():
            method, path, body = self.routes[n % len(self.routes)]
            n += 1
            rid = f"{self.prefix}-{uuid.uuid4().hex[:12]}"
            t0 = time.perf_counter()
            try:
                status, _, _ = request(self.port, method, path, body, rid)
                outcome = str(status)
            except Exception as e:  # refused, reset, timed out: a failed request all the same
                status, outcome = None, type(e).__name__
            dt = time.perf_counter() - t0
            if status == 200 and dt > self.slow:  # the service's own time-out is 10 s
                outcome = f"200 after more than {self.slow:.0f} s"
            with self.lock:
                self.sent += 1
                self.statuses[outcome] += 1
                self.slowest = max(self.slowest, dt)
                if status is not None:
                    self.answered.append(rid)
            if self.pause:
                self.stop_event.wait(self.pause)
                if outcome != "200":
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {method} {path}: {outcome} after {dt:.1f}s")

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join(90)

    @property
    def failed(self) -> int:
        return sum(v for k, v in self.statuses.items() if k != "200")


# -- container state --------------------------------------------------------------------------
def inspect(cid: str, fmt: str) -> str:
    return sh("docker", "inspect", "-f", fmt, cid).stdout.strip()


def wait_healthy(ids: list[str], timeout: float = 120) -> float:
    t0 = time.perf_counter()
    while True:
        states = [inspect(c, "{{.State.Health.Status}}") for c in ids]
        if all(s == "healthy" for s in states):
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise Failed(f"not healthy after {timeout:.0f} s: {states}")
        time.sleep(0.5)


def wait_ready(port: int, timeout: float = 120) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if request(port, "GET", "/readyz", timeout=2)[0] == 200:
                return time.perf_counter() - t0
        except Exception:
            pass
        time.sleep(0.1)
    raise Failed(f"/readyz not 200 after {timeout:.0f} s")


def memory_usage(cid: str) -> int:
    """What `docker stats` shows (the cgroup's usage less inactive file cache), in bytes."""
    out = sh("docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", cid).stdout.strip()
    used = out.split("/")[0].strip()
    units = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    for unit in sorted(units, key=len, reverse=True):
        if used.endswith(unit):
            return int(float(used[: -len(unit)]) * units[unit])
    raise Failed(f"cannot read docker stats: {out!r}")


# -- the steps --------------------------------------------------------------------------------
def check_container(compose: Compose, port: int, p: dict, sent_ids: list[str]) -> None:
    (cid,) = compose.ids(BASE, "api")
    uid = sh("docker", "exec", cid, "id", "-u").stdout.strip()
    if uid != "10001":
        raise Failed(f"the service runs as uid {uid}, not 10001")
    log(f"ok: uid {uid}")
    for target in ("/srv/rnnlab/probe", "/probe"):
        r = sh("docker", "exec", cid, "python", "-c", f"open({target!r}, 'w')", check=False)
        if r.returncode == 0 or "Read-only file system" not in r.stdout:
            raise Failed(f"writing {target} did not fail with a read-only file system: {r.stdout[-300:]}")
    if inspect(cid, "{{.HostConfig.ReadonlyRootfs}}") != "true":
        raise Failed("ReadonlyRootfs is not set")
    log("ok: read-only root (a write fails with EROFS)")

    def get(method, path, body=None):
        rid = f"check-{uuid.uuid4().hex[:12]}"
        sent_ids.append(rid)
        status, data, headers = request(port, method, path, body, rid)
        if headers.get("X-Request-ID", headers.get("x-request-id")) != rid:
            raise Failed(f"{path}: request id not echoed ({headers})")
        return status, data

    status, data = get("GET", "/readyz")
    if status != 200:
        raise Failed(f"/readyz {status}: {data[:300]!r}")
    log(f"ok: /readyz 200, models {sorted(json.loads(data).get('models', {}))}")
    status, data = get("GET", "/")
    if status != 200 or b"<html" not in data.lower():
        raise Failed(f"GET / {status}: {data[:200]!r}")
    log(f"ok: GET / 200, {len(data)} bytes of HTML")
    status, data = get("POST", "/predict/digit", p["seven"])
    if status != 200 or json.loads(data)["digit"] != 7:
        raise Failed(f"a drawn 7: {status} {data[:300]!r}")
    log(f"ok: a drawn 7 -> {json.loads(data)['digit']}")
    read = []
    for _ in range(5):
        status, data = get("GET", "/captcha/new")
        new = json.loads(data)
        status, data = get("POST", "/predict/captcha", {"image": new["image"]})
        if status != 200:
            raise Failed(f"/predict/captcha {status}: {data[:300]!r}")
        read.append((new["text"], json.loads(data)["text"]))
        if read[-1][0] == read[-1][1]:
            p["captcha"] = {"image": new["image"]}
            break
    else:
        raise Failed(f"no captcha of 5 read correctly: {read}")
    log(f"ok: captcha {read[-1][0]!r} read as {read[-1][1]!r} ({len(read)} tried)")


def check_logs(compose: Compose, sent_ids: list[str], load_ids_prefix: str | None = None) -> None:
    out = compose(BASE, "logs", "--no-color", "--no-log-prefix", "api")
    lines = [l for l in out.splitlines() if l.strip()]
    access = collections.Counter()
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            raise Failed(f"a log line that is not JSON: {line[:300]!r}")
        if entry.get("logger") == "rnnlab.access" and entry.get("request_id"):
            access[entry["request_id"]] += 1
    wrong = {rid: access.get(rid, 0) for rid in sent_ids if access.get(rid, 0) != 1}
    if wrong:
        raise Failed(f"access lines per request id, expected exactly 1: {dict(list(wrong.items())[:10])}")
    dup = {rid: n for rid, n in access.items() if n > 1}
    if dup:
        raise Failed(f"request ids with more than one access line: {dict(list(dup.items())[:10])}")
    log(f"ok: {len(lines)} log lines, all JSON; exactly one access line for each of the {len(sent_ids)} "
        f"requests sent ({sum(access.values())} access lines in all, none duplicated)")


def memory_load(compose: Compose, port: int, p: dict, seconds: float, clients: int) -> dict:
    (cid,) = compose.ids(BASE, "api")
    limit = int(inspect(cid, "{{.HostConfig.Memory}}"))
    if limit <= 0:
        raise Failed("the api container has no memory limit")
    restarts0 = int(inspect(cid, "{{.RestartCount}}"))
    start = memory_usage(cid)
    peak, t0 = start, time.perf_counter()
    with Load(port, mixed_routes(p), clients, "mem") as load:
        while time.perf_counter() - t0 < seconds:
            peak = max(peak, memory_usage(cid))
            if peak > MEMORY_SHARE * limit:
                break
            time.sleep(1)
    end = memory_usage(cid)
    oom, restarts = inspect(cid, "{{.State.OOMKilled}}"), int(inspect(cid, "{{.RestartCount}}"))
    figures = {"seconds": round(time.perf_counter() - t0, 1), "clients": clients, "requests": load.sent,
               "statuses": dict(load.statuses), "start_mib": start >> 20, "peak_mib": peak >> 20,
               "end_mib": end >> 20, "limit_mib": limit >> 20, "peak_share": round(peak / limit, 3),
               "oom_killed": oom, "restarts": restarts - restarts0}
    log(f"memory load: {json.dumps(figures)}")
    if oom != "false" or restarts != restarts0:
        raise Failed(f"OOM kill or restart under load: OOMKilled={oom}, RestartCount {restarts0} -> {restarts}")
    if peak > MEMORY_SHARE * limit:
        raise Failed(f"memory {peak >> 20} MiB above {MEMORY_SHARE:.0%} of the {limit >> 20} MiB limit")
    if load.failed:
        raise Failed(f"{load.failed} failed requests under the mixed load: {load.failures[:5]}")
    figures["_answered"] = load.answered
    log(f"ok: peak {peak >> 20} MiB = {peak / limit:.0%} of the {limit >> 20} MiB limit, no OOM kill, no restart")
    return figures


def scale_out(compose: Compose, port: int, p: dict, seconds: float, clients: int, pause: float) -> dict:
    t_up = time.perf_counter()
    compose(SCALED, "up", "-d", "--no-build", "--scale", "api=3", "--wait", timeout=300)
    ids = compose.ids(SCALED, "api")
    if len(ids) != 3:
        raise Failed(f"{len(ids)} api replicas, expected 3")
    wait_healthy(ids)
    wait_ready(port)
    log(f"ok: 3 replicas healthy behind nginx in {time.perf_counter() - t_up:.1f} s")
    routes = [("POST", "/predict/digit", p["seven"]), ("POST", "/predict/captcha", p["captcha"]),
              ("GET", "/readyz", None)]
    events = []
    t0 = time.perf_counter()
    # Two scale-downs under the load: 3 -> 1 at 15% of the time, back to 3 at 40%, 3 -> 1 at 70%.
    plan = [(0.15, 1), (0.40, 3), (0.70, 1)]
    # A steady, modest load (a few requests a second per client): under a flood every removed
    # replica fails fast while it stops and nginx marks it down; at this rate requests also reach
    # its address after it is gone, which is where requests hung or failed (502).
    with Load(port, routes, clients, "scale", pause) as load:
        for share, n in plan:
            while time.perf_counter() - t0 < share * seconds:
                time.sleep(0.2)
            ts = time.perf_counter()
            compose(SCALED, "up", "-d", "--no-build", "--no-recreate", "--scale", f"api={n}", timeout=300)
            if n > 1:
                wait_healthy(compose.ids(SCALED, "api"))
            events.append(f"api={n} at {ts - t0:.0f}s took {time.perf_counter() - ts:.1f}s, "
                          f"{load.sent} requests sent so far")
            log(f"scaled to {events[-1]}")
        while time.perf_counter() - t0 < seconds:
            time.sleep(0.2)
    figures = {"seconds": round(time.perf_counter() - t0, 1), "clients": clients, "pause_s": pause,
               "requests": load.sent, "failed": load.failed, "statuses": dict(load.statuses), "slowest_s": round(load.slowest, 2),
               "events": events, "failures": load.failures[:20]}
    log(f"scale-down under load: {json.dumps(figures)}")
    if load.failed:
        raise Failed(f"{load.failed} of {load.sent} requests failed while scaling down")
    log(f"ok: {load.sent} requests through nginx, 2 scale-downs 3 -> 1, none failed (slowest {load.slowest:.1f} s)")
    return figures


def engine_reachable() -> str | None:
    """None if a Docker engine and Compose v2 answer, else why not."""
    for cmd in (["docker", "info", "--format", "{{.ServerVersion}}"], ["docker", "compose", "version"]):
        try:
            r = subprocess.run(cmd, text=True, capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"`{shlex.join(cmd)}`: {e}"
        if r.returncode != 0:
            return f"`{shlex.join(cmd)}`: {(r.stderr or r.stdout).strip()[-300:]}"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-build", action="store_true", help=f"use the existing {IMAGE} image")
    ap.add_argument("--port", type=int, default=int(os.environ.get("RNNLAB_PORT", 8000)))
    ap.add_argument("--project", default="rnnlab-docker-test", help="compose project name")
    ap.add_argument("--load-seconds", type=float, default=120, help="mixed load inside the memory limit")
    ap.add_argument("--load-clients", type=int, default=16)
    ap.add_argument("--scale-seconds", type=float, default=150, help="steady load through nginx while scaling")
    ap.add_argument("--scale-clients", type=int, default=4)
    ap.add_argument("--scale-pause", type=float, default=0.2, help="seconds between one client's requests")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--save", type=Path, help="also write the figures as JSON")
    args = ap.parse_args(argv)

    why = engine_reachable()
    if why:
        print(f"SKIP docker-test: no Docker engine with Compose v2 reachable ({why})", flush=True)
        return 0
    compose = Compose(args.project, args.port)
    figures: dict = {}
    t_all = time.perf_counter()
    try:
        if not args.no_build:
            extra = shlex.split(os.environ.get("RNNLAB_DOCKER_BUILD_ARGS", ""))
            log(f"docker build {shlex.join(extra)} -t {IMAGE} .")
            t0 = time.perf_counter()
            sh("docker", "build", *extra, "-t", IMAGE, ".", timeout=3600, capture=False)
            figures["build_s"] = round(time.perf_counter() - t0, 1)
        figures["image_gb"] = round(int(inspect(IMAGE, "{{.Size}}")) / 1e9, 2)
        compose(SCALED, "down", "--remove-orphans", "--timeout", "5", check=False)
        t0 = time.perf_counter()
        compose(BASE, "up", "-d", "--no-build")
        figures["compose_up_s"] = round(time.perf_counter() - t0, 1)
        figures["ready_s"] = round(wait_ready(args.port), 1)
        figures["healthy_s"] = round(wait_healthy(compose.ids(BASE, "api")), 1)
        log(f"up: compose up {figures['compose_up_s']} s, /readyz 200 after {figures['ready_s']} s more, "
            f"healthy after {figures['healthy_s']} s more")
        p = payloads()
        sent: list[str] = []
        check_container(compose, args.port, p, sent)
        check_logs(compose, sent)
        if args.load_seconds > 0:
            figures["memory"] = memory_load(compose, args.port, p, args.load_seconds, args.load_clients)
            check_logs(compose, sent + figures["memory"].pop("_answered"))  # every load request logged once too
        if not args.skip_scale:
            figures["scale"] = scale_out(compose, args.port, p, args.scale_seconds, args.scale_clients,
                                        args.scale_pause)
        figures["total_s"] = round(time.perf_counter() - t_all, 1)
        log(f"PASS {json.dumps(figures)}")
        return 0
    except Failed as e:
        figures["total_s"] = round(time.perf_counter() - t_all, 1)
        log(f"FAIL: {e}")
        log(f"figures so far: {json.dumps(figures)}")
        return 1
    finally:
        if args.save:
            args.save.write_text(json.dumps(figures, indent=2) + "\n")
        compose(SCALED, "down", "--remove-orphans", "--timeout", "10", check=False)
        log("compose down")


if __name__ == "__main__":
    sys.exit(main())
