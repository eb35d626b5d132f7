"""Fine-tuning on your own captchas: for each foreign style (training/captcha_styles.py), 1,000
labelled captchas -> `python -m training.captcha finetune` from the shipped CTC reader, the same
from random weights, and ddddocr, all read on 1,000 fresh held-out captchas of that style.

    .venv/bin/python -m bench.captcha_finetune [--minutes 10] [--styles fonts wheezy lines]
        [--save bench/results/captcha_finetune.json] [--work data/finetune_bench]
        [--starts ctc general] [--no-scratch] [--merge]

Runs --parallel trainings at a time (default 2), one CPU thread each. The minutes
reported are each run's own wall clock (its manifest's `training.seconds`, evaluation included).
Each style's row also gives the best a perfect case-insensitive reader can expect on its test
texts (training/captcha_styles.best_possible: I and l in a sans font are the same bar) and,
per reader, how many of the I and l characters it read right.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from models.checkpoint import load_checkpoint
from models.manifest import Manifest
from models.preprocess import captcha_pixels
from training.captcha_finetune import accuracy, read_texts
from training.loop import PRECISIONS
from training.captcha_styles import best_possible, i_and_l_right, samples, write_folder

ROOT = Path(__file__).resolve().parent.parent
TRAIN_SEED, TEST_SEED = 1_000, 2_000  # + the style's index


def run_finetune(folder: Path, out: Path, name: str, minutes: float, scratch: bool,
                 init: str | None = None, precision: str = "fp32") -> tuple[Path, float]:
    cmd = [sys.executable, "-m", "training.captcha", "finetune", "--folder", str(folder), "--name", name,
           "--minutes", str(minutes), "--out", str(out), "--threads", "1", "--no-progress", "--precision", precision]
    if scratch:
        cmd += ["--scratch", "--lr", "3e-3"]
    if init:
        cmd += ["--init", init]
    started = time.perf_counter()
    log = out / f"{name}.log"
    with open(log, "w") as f:
        done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log}")
    return out / f"captcha_{name}.json", time.perf_counter() - started


def ddddocr_texts(images: list[Image.Image]) -> tuple[list[str], float]:
    import ddddocr

    ocr = ddddocr.DdddOcr(show_ad=False)
    texts, started = [], time.perf_counter()
    for image in images:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        texts.append(ocr.classification(buf.getvalue()).lower())
    return texts, (time.perf_counter() - started) / len(images) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", nargs="+", default=["fonts", "wheezy", "lines"])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--train", type=int, default=1_000)
    parser.add_argument("--test", type=int, default=1_000)
    parser.add_argument("--work", default=str(ROOT / "data" / "finetune_bench"))
    parser.add_argument("--parallel", type=int, default=2, help="trainings at a time (one CPU thread each)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="of this run's trainings")
    parser.add_argument("--save", help="write the figures as JSON (for bench/readme_tables.py)")
    parser.add_argument("--starts", nargs="+", default=["ctc"], choices=["ctc", "general"],
                        help="shipped readers to fine-tune from (general: models/weights/captcha_general.json)")
    parser.add_argument("--no-scratch", action="store_true", help="skip the from-scratch runs")
    parser.add_argument("--merge", action="store_true",
                        help="keep the runs of an earlier --save file (same budget) that this run does not redo")
    args = parser.parse_args()
    earlier = json.loads(Path(args.save).read_text()) if args.merge and args.save and Path(args.save).is_file() else None
    if earlier is not None and (earlier["minutes_budget"], earlier["train"], earlier["test"]) != (args.minutes, args.train, args.test):
        raise SystemExit(f"--merge: {args.save} was measured with {earlier['minutes_budget']:g} minutes, "
                         f"{earlier['train']} train, {earlier['test']} test; rerun with those")

    work = Path(args.work)
    jobs, tests = [], {}
    for k, style in enumerate(args.styles):
        folder = work / style / "train"
        if len(list(folder.glob("*.png"))) != args.train:
            write_folder(folder, style, args.train, TRAIN_SEED + k)
        test = [s for _, s in zip(range(args.test), samples(style, TEST_SEED + k))]
        tests[style] = ([t for t, _ in test], [img for _, img in test])  # texts in mixed case, as drawn
        for start in args.starts:  # row "finetuned" (from ctc) or "finetuned_from_general"
            key = "finetuned" if start == "ctc" else f"finetuned_from_{start}"
            init = str(ROOT / "models" / "weights" / f"captcha_{start}.json")
            jobs.append((style, folder, work / style, f"{style}_{key}", False, init, key))
        if not args.no_scratch:
            jobs.append((style, folder, work / style, f"{style}_scratch", True, None, "scratch"))
    print(f"{len(jobs)} trainings of {args.minutes:g} min, {args.parallel} at a time", flush=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        trained = list(pool.map(lambda j: (j, run_finetune(j[1], j[2], j[3], args.minutes, j[4], j[5], args.precision)), jobs))

    shipped = {name: load_checkpoint(path)[0] for name in ("ctc", "general")
               if (path := ROOT / "models" / "weights" / f"captcha_{name}.json").is_file()}
    started_from = [f"captcha_{s}" for s in args.starts]
    if earlier is not None:
        before = earlier.get("started_from") or []
        before = [before] if isinstance(before, str) else before  # results written before there were several
        started_from = sorted(set(started_from) | set(before))
    results = {"minutes_budget": args.minutes, "train": args.train, "test": args.test, "cpus": os.cpu_count(),
               "parallel": args.parallel, "started_from": started_from, "styles": {},
               # which ctc / general the fine-tunes started from (the README says so when the served one has
               # changed): its samples seen, over all its chunks
               **{f"{start}_samples_seen": Manifest.read(ROOT / "models" / "weights" / f"captcha_{start}.json")
                  .samples_seen_in_all() if start in args.starts
                  else (earlier or {}).get(f"{start}_samples_seen") for start in ("ctc", "general")}}
    for style in args.styles:
        mixed_case, images = tests[style]
        truth = [t.lower() for t in mixed_case]
        row: dict = dict(earlier["styles"].get(style, {})) if earlier is not None else {}
        row["samples"] = len(truth)
        row["best_possible"] = round(best_possible(style, mixed_case), 5)

        def with_i_and_l(figures: dict, predicted: list[str]) -> dict:
            right, total = i_and_l_right(predicted, mixed_case)
            return {**figures, "i_and_l_right": round(right / max(total, 1), 4), "i_and_l": total}
        at_size: dict[tuple[int, int], np.ndarray] = {}  # (H, W) -> uint8 (N, H, W), each size resized once

        def pixels(size: tuple[int, int]) -> np.ndarray:
            if size not in at_size:
                at_size[size] = np.stack([captcha_pixels(img, *size) for img in images])
            return at_size[size]

        for name, model in shipped.items():  # the shipped readers as they are, no fine-tuning
            predicted = read_texts(model, pixels((model.config.height, model.config.width)), "cpu")
            row[f"shipped_{name}"] = with_i_and_l(accuracy(predicted, truth), predicted)
        for (s, _, _, name, scratch, _, key), (json_path, seconds) in trained:
            if s != style:
                continue
            model, manifest = load_checkpoint(json_path)
            own = pixels((manifest.input["height"], manifest.input["width"]))
            predicted = read_texts(model, own, "cpu", manifest.answers)
            figures = with_i_and_l(accuracy(predicted, truth), predicted)
            figures["minutes"] = round(manifest.training["seconds"] / 60, 2)
            figures["wall_minutes"] = round(seconds / 60, 2)
            figures["samples_seen"] = manifest.training["samples_seen"]
            figures["precision"] = manifest.training["precision"]
            figures["views"] = len(model.config.test_time_shifts) or 1  # chosen on its own held-out 20%
            row[key] = figures
        texts, ms = ddddocr_texts(images)
        row["ddddocr"] = {**with_i_and_l(accuracy(texts, truth), texts), "ms_per_image": round(ms, 1)}
        results["styles"][style] = row
        print(f"{style}: best possible {row['best_possible']:.1%} | " + " | ".join(f"{k} {v['full_string_accuracy']:.1%}" + (f" ({v['minutes']:.1f} min)" if "minutes" in v else "")
                                        for k, v in row.items() if isinstance(v, dict)), flush=True)
    if args.save:
        Path(args.save).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.save}")


if __name__ == "__main__":
    main()
