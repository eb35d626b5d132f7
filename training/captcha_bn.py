"""Re-estimate the general captcha reader's BatchNorm statistics on un-augmented training
captchas ("precise BN") and keep them when its validation reads better.

    python -m training.captcha_bn models/weights/captcha_general.json --shards DIR            # figures only
    python -m training.captcha_bn models/weights/captcha_general.json --shards DIR --write    # and store them

Training leaves each BatchNorm's running mean and variance as a moving average (momentum 0.1)
over its last few dozen batches: shifted and scaled by the augmentation, a few families each.
Recomputed as a plain mean over many un-augmented shard images, they describe the images the
service reads. The manifest's validation (`metrics.validation_per_family`, its count) is read
before and after, as the service answers (test-time shifts included, the weights rounded to the
manifest's storage); `--write` stores the new statistics only when the mix mean is higher and
records both figures under `training.precise_bn`. Calibrate after (training/captcha_calibrate.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_checkpoint, stored_state
from training.captcha_general import VAL_PER_FAMILY, family_figures, mix_mean, validation_sets
from training.captcha_lib import pixel_batches
from training.captcha_mix import load_shards
from training.common import precise_bn
from training.export import export


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", help="the general reader's manifest (a CTC reader at its input size)")
    parser.add_argument("--shards", required=True, help="training shards (training.captcha_mix shards) to draw from")
    parser.add_argument("--images", type=int, default=9_600, help="shard images the statistics are averaged over")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="which shard images")
    parser.add_argument("--val-dir", default="data/captcha_general_val", help="where validation captchas are cached")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="store the statistics if validation reads better")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = Path(args.manifest)
    model, manifest = load_checkpoint(path)
    count = manifest.metrics.get("validation_per_family_count", VAL_PER_FAMILY)
    sets = validation_sets(Path(args.val_dir), count)
    before = family_figures(model, sets, torch.device("cpu"))

    x, _, _ = load_shards(Path(args.shards))
    rng = np.random.default_rng(args.seed)
    pixels = x[np.sort(rng.choice(len(x), min(args.images, len(x)), replace=False))]
    precise_bn(model, pixel_batches(pixels, args.batch_size))
    model.load_state_dict(stored_state(model, manifest.storage))  # rounded as written (float16 loads as float32)
    after = family_figures(model, sets, torch.device("cpu"))

    means = {name: mix_mean({f: v["full_string_accuracy"] for f, v in figures.items()})
             for name, figures in (("before", before), ("after", after))}
    for family in before:
        print(f"{family:14s} {before[family]['full_string_accuracy']:.2%} -> {after[family]['full_string_accuracy']:.2%}")
    print(f"validation ({count} per family, as served) mix mean: {means['before']:.2%} -> {means['after']:.2%}", flush=True)
    kept = means["after"] > means["before"]
    if args.write and kept:
        manifest.metrics["validation_per_family"] = after
        manifest.metrics["mix_full_string_accuracy"] = means["after"]
        manifest.training["precise_bn"] = {
            "images": len(pixels), "batch_size": args.batch_size, "seed": args.seed, "shards": Path(args.shards).name,
            "per_family_count": count, "mix_full_string_accuracy_before": means["before"],
            "mix_full_string_accuracy_after": means["after"]}
        export(model, manifest, path.parent, path.stem, storage=manifest.storage or "float32")
        print(f"wrote {path} (recalibrate its temperature next: training/captcha_calibrate.py)")
    elif args.write:
        print(f"left {path} as it was: the new statistics read no better")
    return {"before": before, "after": after, "means": means, "kept": kept}


if __name__ == "__main__":
    main()
