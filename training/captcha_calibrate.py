"""Calibrate a CTC captcha reader's confidence: fit the temperature its answers' probabilities are
computed at, so that a confidence of 0.9 means about nine in ten such answers are right, on its
own style and on styles it reads badly alike (the answer itself does not change).

    python -m training.captcha_calibrate models/weights/captcha_ctc.json            # figures only
    python -m training.captcha_calibrate models/weights/captcha_ctc.json --write    # and store it

The calibration captchas: `--count` per family of the generator mix's training families
(training/captcha_mix.py, seeds of their own: CALIBRATION_SEED + k, never the bench's or the
validation's), 4-6 characters, read as the service reads them. The held-out families are never
used, so the bench's zero-shot rows also test the calibration. The fit minimises the negative
log-likelihood of "the answer is right" under the answer's confidence (a grid over T). On styles
it never saw a reader is surer than it should be (its figures on its own families do not show
it), so `--cap` then raises T until each family's wrong-and-sure share is at most the cap.
`--write` sets `architecture.temperature` and `metrics.calibration` in the manifest.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.captcha_common import CHARSET, NO_CONSTRAINTS
from models.checkpoint import load_checkpoint
from models.preprocess import prepare_captcha
from training.captcha_mix import TRAIN_FAMILIES, samples

CALIBRATION_SEED = 700_000
GRID = np.round(np.exp(np.linspace(np.log(0.5), np.log(8.0), 57)), 3)
SURE = 0.9  # what a caller takes as a reading rather than a guess


def calibration_set(model, manifest, count: int, lengths=(4, 6)) -> dict[str, tuple[torch.Tensor, list, list[bool]]]:
    """Per family: (log-probabilities (N, T, 37) the answers were decided on, the answers' class
    indices, whether each answer is right)."""
    sets = {}
    for k, family in enumerate(TRAIN_FAMILIES):
        xs, fulls, truth = [], [], []
        for _, (text, image) in zip(range(count), samples(family, CALIBRATION_SEED + k, lengths=lengths)):
            x, full = prepare_captcha(image, manifest.input)
            xs.append(x)
            fulls.append(full)
            truth.append(text.lower())
        x = torch.cat(xs)
        full = torch.cat(fulls) if fulls[0] is not None else None
        log_probs, runs = [], []
        for i in range(0, len(x), 250):  # in batches: a reader with test-time shifts reads each image V times
            part = slice(i, i + 250)
            lp, r = model.answer(x[part], None if full is None else full[part], [NO_CONSTRAINTS] * len(x[part]))
            log_probs.append(lp)
            runs += r
        log_probs = torch.cat(log_probs)
        answers = [[k for k, _ in item] for item in runs]
        right = ["".join(CHARSET[i] for i in a) == t for a, t in zip(answers, truth)]
        sets[family] = (log_probs, answers, right)
    return sets


def confidences(log_probs: torch.Tensor, answers: list[list[int]], temperature: float) -> np.ndarray:
    """The CTC probability of each answer (summed over its alignments) at `temperature`: (N,)."""
    lp = (log_probs.float() / temperature).log_softmax(-1).transpose(0, 1)  # (T, N, 37)
    n, t = log_probs.shape[0], log_probs.shape[1]
    # an empty answer has target length 0: ctc_loss gives it the all-blank path's NLL
    targets = torch.tensor([k + 1 for a in answers for k in a], dtype=torch.long)
    lengths = torch.tensor([len(a) for a in answers])
    nll = F.ctc_loss(lp, targets, torch.full((n,), t), lengths, blank=0, reduction="none", zero_infinity=True)
    return torch.exp(-nll).numpy()


def figures(sets: dict, temperature: float) -> dict[str, dict]:
    out = {}
    for family, (log_probs, answers, right) in sets.items():
        c = confidences(log_probs, answers, temperature)
        ok = np.array(right)
        sure = c >= SURE
        out[family] = {"accuracy": round(float(ok.mean()), 4), "sure_share": round(float(sure.mean()), 4),
                       "sure_accuracy": round(float(ok[sure].mean()), 4) if sure.any() else None,
                       "wrong_and_sure": round(float((sure & ~ok).mean()), 4)}
    return out


def fit_temperature(sets: dict, cap: float | None = None) -> tuple[float, list[tuple[float, float]]]:
    """The grid temperature with the least mean binary NLL of right/wrong under the confidence,
    each family weighing the same; with `cap`, raised if need be to the least grid temperature
    at which no family has more than `cap` of its answers wrong at confidence >= SURE."""
    curve, worst = [], {}  # worst: per grid temperature, the largest share of a family's answers wrong and sure
    for t in GRID:
        losses, worst_here = [], 0.0
        for log_probs, answers, right in sets.values():
            c = confidences(log_probs, answers, float(t))
            ok = np.array(right, dtype=np.float64)
            clipped = np.clip(c, 1e-6, 1 - 1e-6)
            losses.append(float(-(ok * np.log(clipped) + (1 - ok) * np.log(1 - clipped)).mean()))
            worst_here = max(worst_here, float(((c >= SURE) & (ok == 0)).mean()))
        curve.append((float(t), float(np.mean(losses))))
        worst[float(t)] = worst_here
    best = min(curve, key=lambda p: p[1])[0]
    if cap is not None:
        best = next((t for t, _ in curve if t >= best and worst[t] <= cap), float(GRID[-1]))
    return best, curve


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest")
    parser.add_argument("--count", type=int, default=300, help="calibration captchas per family")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cap", type=float, default=None,
                        help="at most this share of each family's answers wrong at confidence >= 0.9 (e.g. 0.0025): "
                             "a margin for styles the reader never saw, where it is surer than it should be")
    parser.add_argument("--write", action="store_true", help="store the temperature in the manifest")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = Path(args.manifest)
    model, manifest = load_checkpoint(path, "cpu")
    if manifest.variant != "ctc":
        raise SystemExit(f"{path}: calibration is for the CTC readers, not {manifest.variant}")
    sets = calibration_set(model, manifest, args.count)
    before = figures(sets, 1.0)
    temperature, _ = fit_temperature(sets, args.cap)
    after = figures(sets, temperature)
    print(f"{manifest.name}: temperature {temperature} (was {model.config.temperature})")
    print(f"| family | accuracy | >= {SURE} before | wrong & >= {SURE} before | >= {SURE} after | wrong & >= {SURE} after |")
    print("|---|---:|---:|---:|---:|---:|")
    for family in sets:
        b, a = before[family], after[family]
        print(f"| {family} | {b['accuracy']:.2%} | {b['sure_share']:.2%} | {b['wrong_and_sure']:.2%} | "
              f"{a['sure_share']:.2%} | {a['wrong_and_sure']:.2%} |")
    result = {"temperature": temperature, "families": list(sets), "per_family": args.count,
              "seed": CALIBRATION_SEED, "lengths": "4-6", "objective": "binary NLL of right/wrong, families equal" + (
                  f"; raised until wrong & >= {SURE} <= {args.cap:.2%} on every family" if args.cap is not None else ""),
              "after": after, "before": before}
    if args.write:
        data = json.loads(path.read_text())
        data["architecture"]["temperature"] = temperature
        data["metrics"]["calibration"] = result
        path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote the temperature into {path}")
    return result


if __name__ == "__main__":
    main()
