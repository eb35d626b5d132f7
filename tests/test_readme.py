"""The README's model figures are the manifests' figures (bench/readme_tables.py writes them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_model_table_matches_manifests():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "bench" / "readme_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    readme = (ROOT / "README.md").read_text()
    assert mod.render_all(readme) == readme, \
        "README model table or captcha results are stale: run .venv/bin/python bench/readme_tables.py --write"


def test_readme_has_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    first_screen = readme[:3000]
    assert "make run" in first_screen and "make test" in first_screen
    assert "curl -F file=@" in first_screen and "docker compose up" in first_screen
