"""rnnlab's captcha readers vs ddddocr on the same captchas.

    .venv/bin/python bench/captcha_vs_ddddocr.py [--count 2000] [--seed 424242] [--threads 1]

Draws `count` captchas from the seeded generator (the default seed is the manifests' held-out
test seed, never trained on), encodes each as PNG once, and has every reader answer each PNG
one at a time: bytes -> decode -> preprocess -> forward -> text (the served path, the
seq2seq reader's o/0 glyph net included). Prints a markdown table of
full-string accuracy, per-character accuracy (1 - edit distance / 4) and mean latency per
image. Case is ignored for everyone (ddddocr answers in mixed case). Both runtimes get the
same number of CPU threads (--threads). ddddocr is optional (`pip install ddddocr`, the dev
extra); it runs offline, its ONNX model ships inside the wheel.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from models.captcha_common import score_texts
from models.checkpoint import load_checkpoint
from models.preprocess import prepare_captcha
from testkit import png_bytes
from training.captcha import TEST_SEED
from training.captcha_data import CaptchaGenerator

ROOT = Path(__file__).resolve().parent.parent


def rnnlab_reader(json_path: Path):
    model, manifest = load_checkpoint(json_path, "cpu")

    def read(png: bytes) -> str:
        # The served prepare step: the reader's input and, for the o/0 glyph net, the full resolution.
        with Image.open(io.BytesIO(png)) as img:
            x, full = prepare_captcha(img, manifest.input)
        return model.read(x, full=full)[0].text

    return read, manifest


def ddddocr_reader(threads: int):
    import ddddocr
    import onnxruntime

    # ddddocr builds its onnxruntime session without options (all cores); give it the same
    # thread count as torch so the latencies compare like for like.
    original = onnxruntime.InferenceSession

    def session(path, sess_options=None, providers=None, **kw):
        options = sess_options or onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        return original(path, sess_options=options, providers=providers, **kw)

    onnxruntime.InferenceSession = session
    try:
        try:
            ocr = ddddocr.DdddOcr(show_ad=False)
        except TypeError:
            ocr = ddddocr.DdddOcr()
    finally:
        onnxruntime.InferenceSession = original
    from importlib.metadata import version

    return (lambda png: ocr.classification(png)), version("ddddocr")


def run(read, pngs: list[bytes], labels: list[str]) -> dict:
    for png in pngs[:10]:  # warm-up (lazy init, allocator)
        read(png)
    preds, start = [], time.perf_counter()
    for png in pngs:
        preds.append(read(png).lower())
    seconds = time.perf_counter() - start
    scores = score_texts(preds, labels)
    scores["ms_per_image"] = seconds / len(pngs) * 1000
    scores["errors"] = [(t, p) for t, p in zip(labels, preds) if t != p]
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=TEST_SEED)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch and onnxruntime")
    parser.add_argument("--weights", default=str(ROOT / "models" / "weights"))
    parser.add_argument("--show-errors", type=int, default=0, help="print the first N misreads per reader")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    gen = CaptchaGenerator(args.seed)
    pngs, labels = [], []
    for _ in range(args.count):
        text, img = gen.sample()
        pngs.append(png_bytes(img))
        labels.append(text.lower())

    readers = []
    for variant in ("ctc", "seq2seq"):
        path = Path(args.weights) / f"captcha_{variant}.json"
        if path.is_file():
            read, manifest = rnnlab_reader(path)
            views = len(manifest.architecture.get("test_time_shifts") or [])
            readers.append((f"rnnlab {variant} ({manifest.parameters / 1e6:.2f}M params"
                            f"{f', {views} shifted views' if views else ''}"
                            f"{', o/0 glyph net' if manifest.architecture.get('o0') else ''})", read))
    try:
        read, version = ddddocr_reader(args.threads)
        readers.append((f"ddddocr {version} (default model)", read))
    except ImportError as exc:
        print(f"ddddocr not installed ({exc}); `pip install ddddocr` to compare", file=sys.stderr)

    print(f"{args.count} captchas from captcha.image.ImageCaptcha() (seed {args.seed}), read one at a time from PNG "
          f"bytes; {args.threads} CPU thread(s), {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}\n")
    print("| reader | full-string accuracy | per-char accuracy | mean latency / image |")
    print("|---|---:|---:|---:|")
    results = []
    for name, read in readers:
        r = run(read, pngs, labels)
        results.append((name, r))
        print(f"| {name} | {r['full_string_accuracy']:.2%} | {r['char_accuracy']:.2%} | "
              f"{r['ms_per_image']:.2f} ms |", flush=True)
    for name, r in results if args.show_errors else []:
        print(f"\n{name}: {len(r['errors'])} misreads, first {args.show_errors} (truth -> read): "
              + ", ".join(f"{t}->{p}" for t, p in r["errors"][:args.show_errors]))


if __name__ == "__main__":
    main()
