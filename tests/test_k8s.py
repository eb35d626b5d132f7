"""deploy/k8s: every manifest validates against the Kubernetes API schema (kubernetes-validate,
offline), and the Deployments agree with the image and docker-compose.yml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
VERSION = "1.33.0"  # a version every supported cluster release line still has schemas for


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_every_manifest_validates_strictly():
    docs = _documents()
    assert {d["kind"] for _, d in docs} == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for name, doc in docs:
        kubernetes_validate.validate(doc, VERSION, strict=True)  # raises on unknown or mistyped fields


def test_the_validator_refuses_a_broken_manifest():
    """Guard for the test above: a misspelt field and a wrong type are caught."""
    _, deployment = next((n, d) for n, d in _documents() if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = broken["spec"]["template"]["spec"][
        "containers"][0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def _container(name: str) -> tuple[dict, dict]:
    deployment = next(d for n, d in _documents() if n == name)
    pod = deployment["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


@pytest.mark.parametrize("name", ["deployment.yaml", "deployment-gpu.yaml"])
def test_deployments_probe_the_service_as_the_image_runs_it(name):
    pod, container = _container(name)
    dockerfile = (ROOT / "Dockerfile").read_text()
    uid = int(re.search(r"ARG RNNLAB_UID=(\d+)", dockerfile).group(1))
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == uid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["UVICORN_PORT"]) == container["ports"][0]["containerPort"]
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    assert pod["terminationGracePeriodSeconds"] > 20  # the server's graceful shutdown


def test_cpu_deployment_matches_compose_and_gpu_asks_for_a_gpu():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    _, cpu = _container("deployment.yaml")
    limits = compose["api"]["deploy"]["resources"]["limits"]
    assert cpu["resources"]["limits"]["cpu"] == limits["cpus"]
    assert cpu["resources"]["limits"]["memory"] == limits["memory"].replace("g", "Gi")
    env = {e["name"]: e["value"] for e in cpu["env"]}
    assert env["WEB_CONCURRENCY"] == compose["api"]["environment"]["WEB_CONCURRENCY"].split(":-")[-1].rstrip("}")
    _, gpu = _container("deployment-gpu.yaml")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {e["name"]: e["value"] for e in gpu["env"]}["RNNLAB_DEVICE"] == "cuda"
