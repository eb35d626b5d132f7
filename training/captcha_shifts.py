"""Choose a CTC captcha reader's test-time shifts on validation: read the general reader's
validation captchas (training/captcha_general.validation_sets, `--count` per family) once per
candidate set of (dx, dy) pixel shifts, the views' log-probabilities averaged per column as the
service does (models/captcha_ctc.py), and print each set's full string per family.

    python -m training.captcha_shifts models/weights/captcha_general.json --count 1000            # figures only
    python -m training.captcha_shifts models/weights/captcha_general.json --count 1000 --write    # and store it

`--write` stores the set with the best mean over the mix's training families (the held-out ones
are never used to choose; of the sets within `--margin` of the best, the one with the fewest
views) as `architecture.test_time_shifts`, every candidate's figures under
`metrics.test_time_shifts`, and reads the manifest's own validation figures
(`metrics.validation_per_family`, its count) again as the reader now answers. Calibrate after
(training/captcha_calibrate.py): the averaged views are surer than one view.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from models.captcha_common import score_texts, shifted_views
from models.checkpoint import load_checkpoint
from models.preprocess import to_captcha_tensor
from training.captcha_general import family_figures, mix_mean, validation_sets

# Compared on the general reader's 1,000 validation captchas per family (2026-12-07): a 2 px
# move is half of a 4 px column and blurs the averaged columns; 1 px moves and vertical ones help.
CANDIDATES = {
    "none": [[0, 0]],
    "x1": [[0, 0], [-1, 0], [1, 0]],
    "y1": [[0, 0], [0, -1], [0, 1]],
    "x1y1": [[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]],
    "y2": [[0, 0], [0, -1], [0, 1], [0, -2], [0, 2]],
    "x1y2": [[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1], [0, -2], [0, 2]],
    "x2y1": [[0, 0], [-2, 0], [2, 0], [0, -1], [0, 1]],
}


@torch.inference_mode()
def candidate_figures(model, sets: dict, candidates: dict[str, list[list[int]]],
                      batch_size: int = 200) -> dict[str, dict[str, float]]:
    """Per candidate, per family: full-string accuracy when the candidate's views are averaged.
    Each distinct view is read once; candidates average the views they name."""
    views = sorted({tuple(v) for shifts in candidates.values() for v in shifts})
    out: dict[str, dict[str, float]] = {name: {} for name in candidates}
    for family, (pixels, truth) in sets.items():
        parts: list[torch.Tensor] = []
        for i in range(0, len(pixels), batch_size):
            x = to_captcha_tensor(pixels[i:i + batch_size])  # (b, 1, H, W)
            lp = model(shifted_views(x, views)).float().log_softmax(-1)  # (V*b, T, 37), view-major
            parts.append(lp.view(len(views), len(x), *lp.shape[1:]))
        per_view = torch.cat(parts, 1)  # (V, N, T, 37)
        for name, shifts in candidates.items():
            mean = per_view[[views.index(tuple(v)) for v in shifts]].mean(0)  # (N, T, 37)
            out[name][family] = round(score_texts(model.decode(mean), truth)["full_string_accuracy"], 5)
    return out


def parse_sets(text: str) -> dict[str, list[list[int]]]:
    """'0,0;0,-1;0,1|0,0;1,0' -> candidates named by their text."""
    return {s: [[int(v) for v in pair.split(",")] for pair in s.split(";")] for s in text.split("|")}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", help="a CTC reader's manifest at the general reader's input size")
    parser.add_argument("--count", type=int, default=1000, help="validation captchas per family")
    parser.add_argument("--val-dir", default="data/captcha_general_val", help="where validation captchas are cached")
    parser.add_argument("--candidates", type=parse_sets, default=CANDIDATES, metavar="DX,DY;...|...",
                        help="the shift sets to compare (default: the module's CANDIDATES)")
    parser.add_argument("--margin", type=float, default=0.002,
                        help="take the set with the fewest views whose mix mean is within this of the best")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="store the best set in the manifest")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, manifest = load_checkpoint(args.manifest, torch.device("cpu"))
    model.eval()
    figures = candidate_figures(model, validation_sets(Path(args.val_dir), args.count), args.candidates)
    means = {name: mix_mean(f) for name, f in figures.items()}
    for name, f in figures.items():
        print(f"{name:10s} mix {means[name]:.2%} | " + " ".join(f"{k} {v:.1%}" for k, v in f.items()), flush=True)
    # The fewest views within --margin of the best mean: each view costs a forward pass per request.
    top = max(means.values())
    best = min((n for n in means if means[n] >= top - args.margin), key=lambda n: (len(args.candidates[n]), -means[n]))
    print(f"best: {best} {args.candidates[best]}")
    if args.write:
        path = Path(args.manifest)
        data = json.loads(path.read_text())
        shifts = [] if args.candidates[best] == [[0, 0]] else args.candidates[best]
        data["architecture"]["test_time_shifts"] = shifts
        before = model.describe()
        model.config.test_time_shifts = shifts
        data["description"] = data["description"].replace(before, model.describe())
        metrics = data["metrics"]
        metrics["test_time_shifts"] = {"chosen": best, "shifts": shifts, "per_family_count": args.count,
                                       "candidates": {n: {"shifts": args.candidates[n], "mix_full_string_accuracy": means[n],
                                                          "per_family": figures[n]} for n in figures}}
        if "validation_per_family" in metrics:  # the manifest's own validation, read as served now
            count = metrics.get("validation_per_family_count", args.count)
            again = family_figures(model, validation_sets(Path(args.val_dir), count), torch.device("cpu"))
            metrics["validation_per_family"] = again
            metrics["mix_full_string_accuracy"] = mix_mean({f: v["full_string_accuracy"] for f, v in again.items()})
            print(f"validation ({count} per family) as served: mix {metrics['mix_full_string_accuracy']:.2%}")
        path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {path}")
    return {"figures": figures, "means": means, "best": best}


if __name__ == "__main__":
    main()
