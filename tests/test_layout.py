"""The dependency rule: app/ and training/ import models/; models/ imports neither, and
app/ never imports training/ (the service loads exported weights, it never trains)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {"models": {"app", "training"}, "app": {"training"}}


def imported_top_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    for path in files:
        bad = imported_top_packages(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_committed_weights_have_manifests_and_fit_the_budget():
    weights = sorted((ROOT / "models" / "weights").glob("*.safetensors"))
    assert weights, "no committed weights under models/weights"
    for w in weights:
        assert w.with_suffix(".json").is_file(), f"{w.name} has no manifest"
    assert not list((ROOT / "models").rglob("*.pt")) and not list((ROOT / "models").rglob("*.pth"))
    total = sum(p.stat().st_size for p in (ROOT / "models").rglob("*") if p.is_file())
    assert total < 20 * 1024 * 1024, f"models/ holds {total / 2**20:.1f} MiB; the budget is 20 MB"
