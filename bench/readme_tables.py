"""Render the README's model table from the committed manifests, so its figures are never
typed by hand.

    .venv/bin/python bench/readme_tables.py           # print the table
    .venv/bin/python bench/readme_tables.py --write   # replace it in README.md

tests/test_readme.py fails when README.md and the manifests disagree.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "models" / "weights"
START, END = "<!-- model-table:start -->", "<!-- model-table:end -->"


def _fmt_pct(v):
    return f"{v:.2%}" if isinstance(v, (int, float)) else "-"


def _row(m: dict) -> str:
    t, metrics = m.get("training", {}), m.get("metrics", {})
    task, variant = m["task"], m.get("variant") or m.get("cell")
    arch = m["architecture"]
    if task == "digits":
        desc = f"{arch['cell'].upper()} {arch['num_layers']}x{arch['hidden_size']}, 28 rows x 28 px"
        metric = (f"MNIST test {_fmt_pct(metrics.get('mnist_test_accuracy'))} "
                  f"(via upload pipeline {_fmt_pct(metrics.get('mnist_test_accuracy_upload_pipeline'))})")
    elif task == "captcha":
        desc = m.get("description", variant)
        full = next((v for k, v in metrics.items() if "full" in k and "acc" in k), None)
        char = next((v for k, v in metrics.items() if "char" in k and "acc" in k), None)
        metric = f"full string {_fmt_pct(full)}, per char {_fmt_pct(char)}"
    elif task == "autoencoder":
        desc = m.get("description", f"conv encoder -> {arch.get('latent_dim', arch.get('code_size', '?'))}-d -> ConvTranspose2d decoder")
        mse = metrics.get("mnist_test_mse")
        psnr = metrics.get("mnist_test_psnr")
        metric = f"MNIST test MSE {mse:.4f}, PSNR {psnr:.1f} dB" if mse is not None and psnr is not None else "-"
    else:
        desc, metric = variant, "-"
    size_kb = (WEIGHTS / m["weights"]).stat().st_size / 1024
    return (f"| {task} | {variant} | {desc} | {m.get('parameters', 0):,} | {metric} | {t.get('epochs', '-')} | "
            f"{t.get('seconds', 0) / 60:.0f} min | {size_kb:,.0f} KB |")


def render() -> str:
    manifests = [json.loads(p.read_text()) for p in sorted(WEIGHTS.glob("*.json"))]
    order = {"digits": 0, "captcha": 1, "autoencoder": 2}
    manifests.sort(key=lambda m: (order.get(m["task"], 9), m["name"]))
    lines = ["| task | model | architecture | parameters | test metrics | epochs | training time | weights |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [_row(m) for m in manifests]
    return "\n".join(lines)


def replace_block(text: str, table: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {START} ... {END} block")
    return pattern.sub(f"{START}\n{table}\n{END}", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update README.md in place")
    args = parser.parse_args()
    table = render()
    if args.write:
        readme = ROOT / "README.md"
        readme.write_text(replace_block(readme.read_text(), table))
    print(table)


if __name__ == "__main__":
    main()
