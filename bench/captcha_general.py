"""The general captcha reader vs the seed-style reader vs ddddocr, per style, in one run.

    .venv/bin/python bench/captcha_general.py [--count 1000] [--threads 1] [--save bench/results/captcha_general.json]

Styles: the seed's generator (4 characters, the manifests' test seed), the generator mix's
training families drawn from seeds of their own (4-6 characters), the three foreign styles of
the fine-tuning bench (training/captcha_styles.py), and the mix's held-out families, never
trained on (zero-shot). Every captcha is encoded as PNG once and each reader answers each PNG
one at a time through the served path (bytes -> decode -> preprocess -> forward -> text).
Per reader and style: full string, per character (1 - edit distance / length), mean latency
per image, and, for rnnlab's readers, the share of answers with confidence >= 0.9, their
accuracy, and the share of all answers that are wrong at >= 0.9. Case is ignored for everyone.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.captcha_vs_ddddocr import ddddocr_reader  # noqa: E402
from models.captcha_common import score_texts  # noqa: E402
from models.checkpoint import load_checkpoint  # noqa: E402
from models.preprocess import prepare_captcha  # noqa: E402
from testkit import png_bytes  # noqa: E402
from training.captcha import TEST_SEED  # noqa: E402
from training.captcha_data import CaptchaGenerator  # noqa: E402
from training.captcha_mix import HELD_OUT_FAMILIES, TRAIN_FAMILIES, samples  # noqa: E402
from training.captcha_styles import samples as style_samples  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH_SEED = 800_000  # mix family k draws from BENCH_SEED + k: never training's, validation's or calibration's
SURE = 0.9


def styles(count: int) -> dict[str, dict]:
    """name -> {"kind": seed | mix | foreign | zero-shot, "pngs", "labels", "about"}."""
    out = {}

    def take(it, n):
        pngs, labels = [], []
        for _, (text, image) in zip(range(n), it):
            pngs.append(png_bytes(image))
            labels.append(text.lower())
        return pngs, labels

    gen = CaptchaGenerator(TEST_SEED)
    out["seed"] = dict(kind="seed", about=f"captcha.image.ImageCaptcha(), 4 characters, seed {TEST_SEED}",
                       **dict(zip(("pngs", "labels"), take(iter(gen.sample, None), count))))
    for k, family in enumerate(f for f in TRAIN_FAMILIES if f != "seed"):
        out[family] = dict(kind="mix", about=f"mix family, 4-6 characters, seed {BENCH_SEED + k}",
                           **dict(zip(("pngs", "labels"), take(samples(family, BENCH_SEED + k, (4, 6)), count))))
    out["seed_5_6"] = dict(kind="mix", about=f"the seed's generator, 5-6 characters, seed {BENCH_SEED + 9}",
                           **dict(zip(("pngs", "labels"), take(samples("seed", BENCH_SEED + 9, (5, 6)), count))))
    for k, style in enumerate(("fonts", "wheezy", "lines")):
        out[f"ft_{style}"] = dict(kind="foreign", about=f"training/captcha_styles.py {style}, 4-6 characters, "
                                                        f"seed {BENCH_SEED + 20 + k}",
                                  **dict(zip(("pngs", "labels"), take(style_samples(style, BENCH_SEED + 20 + k), count))))
    for k, family in enumerate(HELD_OUT_FAMILIES):
        out[family] = dict(kind="zero-shot", about=f"held out of training, seed {BENCH_SEED + 30 + k}",
                           **dict(zip(("pngs", "labels"), take(samples(family, BENCH_SEED + 30 + k, (4, 6)), count))))
    return out


def rnnlab_reader(json_path: Path):
    model, manifest = load_checkpoint(json_path, "cpu")

    def read(png: bytes) -> tuple[str, float]:
        with Image.open(io.BytesIO(png)) as img:
            x, full = prepare_captcha(img, manifest.input)
        reading = model.read(x, full=full)[0]
        return reading.text, reading.confidence

    return read, manifest


def run(read, pngs: list[bytes], labels: list[str]) -> dict:
    for png in pngs[:5]:  # warm-up
        read(png)
    answers, start = [], time.perf_counter()
    for png in pngs:
        answers.append(read(png))
    seconds = time.perf_counter() - start
    texts = [a[0].lower() if isinstance(a, tuple) else a.lower() for a in answers]
    r = {k: round(v, 5) for k, v in score_texts(texts, labels).items()}
    r["ms_per_image"] = round(seconds / len(pngs) * 1000, 2)
    if isinstance(answers[0], tuple):
        ok = np.array([t == y for t, y in zip(texts, labels)])
        sure = np.array([a[1] >= SURE for a in answers])
        r["sure_share"] = round(float(sure.mean()), 5)
        r["sure_accuracy"] = round(float(ok[sure].mean()), 5) if sure.any() else None
        r["wrong_and_sure"] = round(float((sure & ~ok).mean()), 5)
    r["errors"] = [f"{y}->{t}" for t, y in zip(texts, labels) if t != y][:20]
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and onnxruntime")
    parser.add_argument("--weights", default=str(ROOT / "models" / "weights"))
    parser.add_argument("--general", help="the general reader's manifest (default <weights>/captcha_general.json)")
    parser.add_argument("--save", help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    readers = {}
    for key, path in (("general", Path(args.general or Path(args.weights) / "captcha_general.json")),
                      ("ctc", Path(args.weights) / "captcha_ctc.json")):
        if path.is_file():
            read, manifest = rnnlab_reader(path)
            readers[key] = (read, {"manifest": manifest.name, "parameters": manifest.parameters,
                                   "temperature": manifest.architecture.get("temperature", 1.0)})
    try:
        read, version = ddddocr_reader(args.threads)
        readers["ddddocr"] = (read, {"version": version})
    except ImportError as exc:
        print(f"ddddocr not installed ({exc}); `pip install ddddocr` to compare", file=sys.stderr)

    started = time.perf_counter()
    sets = styles(args.count)
    print(f"{len(sets)} styles x {args.count} captchas drawn in {time.perf_counter() - started:.0f} s; "
          f"{args.threads} CPU thread(s), {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}\n", flush=True)
    print("| style | kind | " + " | ".join(f"{k} full / char / ms / >=0.9 / wrong&>=0.9" for k in readers) + " |")
    results = {}
    for name, s in sets.items():
        results[name] = {"kind": s["kind"], "about": s["about"], "count": len(s["labels"]), "readers": {}}
        cells = []
        for key, (read, _) in readers.items():
            r = run(read, s["pngs"], s["labels"])
            results[name]["readers"][key] = r
            sure = (f"{r['sure_share']:.1%} / {r['wrong_and_sure']:.1%}" if "sure_share" in r else "- / -")
            cells.append(f"{r['full_string_accuracy']:.2%} / {r['char_accuracy']:.2%} / {r['ms_per_image']:.1f} / {sure}")
        print(f"| {name} | {s['kind']} | " + " | ".join(cells) + " |", flush=True)
    if args.save:
        out = {"count": args.count, "threads": args.threads, "cpus": os.cpu_count(), "torch": torch.__version__,
               "bench_seed": BENCH_SEED, "sure": SURE, "readers": {k: v[1] for k, v in readers.items()},
               "styles": results}
        Path(args.save).write_text(json.dumps(out, indent=1) + "\n")
        print(f"\nwrote {args.save}")


if __name__ == "__main__":
    main()
