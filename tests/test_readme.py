"""The README's model figures are the manifests' figures (bench/readme_tables.py writes them)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tables():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "bench" / "readme_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_model_table_matches_manifests():
    mod = _tables()
    readme = (ROOT / "README.md").read_text()
    assert mod.render_all(readme) == readme, \
        "README model table, captcha results or load summary are stale: run .venv/bin/python bench/readme_tables.py --write"


def test_serving_doc_load_tables_match_the_saved_bench():
    mod = _tables()
    doc = (ROOT / "docs" / "serving.md").read_text()
    assert mod.render_all(doc, mod.DOCS_BLOCKS) == doc, \
        "docs/serving.md load tables are stale: run .venv/bin/python bench/readme_tables.py --write"
    results = mod._load_results()
    median = mod.ceiling_round(results)
    assert median is not None and f"**{median['ratio']:.2f}x**" in (ROOT / "README.md").read_text()


def test_readme_has_the_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    first_screen = readme[:3000]
    assert "make run" in first_screen and "make test" in first_screen
    assert "curl -F file=@" in first_screen and "docker compose up" in first_screen


def test_finetune_table_says_when_a_start_reader_has_changed_since_the_bench(tmp_path, monkeypatch):
    mod = _tables()
    results = json.loads(mod.FINETUNE_RESULTS.read_text())
    served = {start: json.loads((mod.WEIGHTS / f"captcha_{start}.json").read_text())["training"]
              for start in ("ctc", "general")}
    for start, training in served.items():  # the bench as if run on today's weights: no note
        results[f"{start}_samples_seen"] = training.get("total_samples_seen", training.get("samples_seen"))
    path = tmp_path / "captcha_finetune.json"
    path.write_text(json.dumps(results))
    monkeypatch.setattr(mod, "FINETUNE_RESULTS", path)
    assert "than the one served now" not in mod.render_finetune()

    results["general_samples_seen"] -= 1  # fine-tuned from an earlier general
    path.write_text(json.dumps(results))
    table = mod.render_finetune()
    assert "fine-tuned from `captcha_general` started from an earlier `general`" in table
    assert "fine-tuned from `captcha_ctc` started from" not in table
