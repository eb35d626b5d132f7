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


def _module_imports(path: Path) -> tuple[set[str], list[int]]:
    """The models.* modules a file imports, and the line numbers of imports inside functions or
    classes (anything not at module level)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    found, nested = set(), []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if id(node) not in top_level:
                nested.append(node.lineno)
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("models.")}
            elif node.module == "models":
                found |= {f"models.{a.name}" for a in node.names}
            elif node.module and node.module.startswith("models."):
                found.add(node.module)
    return found, nested


def test_models_has_no_import_cycle_and_no_imports_inside_functions():
    modules = {f"models.{p.stem}": p for p in (ROOT / "models").glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name, path in modules.items():
        imports, nested = _module_imports(path)
        assert not nested, f"{path.relative_to(ROOT)} imports inside a function or class (lines {nested})"
        graph[name] = imports & set(modules)

    state: dict[str, str] = {}  # depth-first search: "open" while on the stack, "done" after

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                pytest.fail(f"import cycle in models/: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert "models.catalog" in graph and graph["models.checkpoint"] >= {"models.catalog"}


def test_the_cycle_check_sees_a_cycle(tmp_path):
    """Guard for the test above: its import reader sees nested imports and module edges."""
    (tmp_path / "a.py").write_text("from models.b import x\n\ndef f():\n    import models.c\n")
    imports, nested = _module_imports(tmp_path / "a.py")
    assert imports == {"models.b", "models.c"} and nested == [4]


def test_routers_are_thin_and_independent():
    """No router imports another, and handlers get shared objects through dependencies
    (app/inference.py), not by reaching into app.state."""
    routers = sorted((ROOT / "app" / "routers").glob("*.py"))
    names = {p.stem for p in routers} - {"__init__"}
    for path in routers:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = {node.module} | {f"{node.module}.{a.name}" for a in node.names}
                assert not {f"app.routers.{n}" for n in names} & imported, \
                    f"{path.relative_to(ROOT)} imports another router ({node.module})"
            if isinstance(node, ast.Attribute) and node.attr == "state":
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} reads app.state; take a dependency instead")


def test_committed_weights_have_manifests_and_fit_the_budget():
    weights = sorted((ROOT / "models" / "weights").glob("*.safetensors"))
    assert weights, "no committed weights under models/weights"
    for w in weights:
        assert w.with_suffix(".json").is_file(), f"{w.name} has no manifest"
    assert not list((ROOT / "models").rglob("*.pt")) and not list((ROOT / "models").rglob("*.pth"))
    total = sum(p.stat().st_size for p in (ROOT / "models").rglob("*") if p.is_file())
    assert total < 20 * 1024 * 1024, f"models/ holds {total / 2**20:.1f} MiB; the budget is 20 MB"
