"""Train the general captcha reader (served as model=general): the CTC reader of
models/captcha_ctc.py at 48x160 on the generator mix of training/captcha_mix.py, 1-8
characters, read case-insensitively. Trains from pre-rendered shards, in resumable chunks.

    python -m training.captcha_mix shards --out /work/runs/general/shards --count 300000 --seed 100 --workers 2
    python -m training.captcha_general --shards /work/runs/general/shards --minutes 90 --threads 2 \\
        --snapshot --out /work/runs/general
    python -m training.captcha_general --shards ... --resume /work/runs/general/snapshots --minutes 60 --out ...
    python -m training.captcha_general --shards ... --init models/weights/captcha_general.json --minutes 60 ...

Validation: 400 captchas per family from seeds training never uses (the held-out families are
reported as zero-shot, never used to pick weights). Writes <out>/captcha_general.* ; every
chunk's samples and seconds go into the manifest's `training.chunks`.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from models.captcha_common import CHARSET, score_texts
from models.captcha_ctc import CaptchaCTC, CaptchaCTCConfig
from models.checkpoint import load_checkpoint
from models.device import resolve_device
from models.preprocess import prepare_captcha
from training.captcha_finetune import ctc_loss, read_texts
from training.captcha_lib import ArraySource, ReaderBatches
from training.captcha_mix import (FAMILIES, HEIGHT, HELD_OUT_FAMILIES, MAX_LENGTH, TRAIN_FAMILIES, WIDTH,
                                  load_shards, render_shard, samples)
from training.common import add_common_args, seed_everything
from training.export import build_manifest, export, training_section
from training.loop import fit, settings_from_args

NAME = "captcha_general"
VAL_SEED = 900_000  # validation captchas: FAMILIES[k] from VAL_SEED + k (shards use 100..)
VAL_PER_FAMILY = 400
CONTRACT = {
    "height": HEIGHT, "width": WIDTH, "channels": 1, "mode": "grayscale (PIL 'L'); transparent pixels composited on white",
    "resize": f"PIL bilinear (antialiased) from any size to {WIDTH}x{HEIGHT}",
    "normalize": "per image: (x - mean) / max(std, 1) over its 0..255 grey levels",
    "layout": f"read column by column: {WIDTH // 4} columns of 4 px",
}


def default_config() -> CaptchaCTCConfig:
    return CaptchaCTCConfig(height=HEIGHT, width=WIDTH, channels=[32, 64, 128, 160], hidden_size=160, num_layers=2,
                            dropout=0.1)


def validation_seed(family: str) -> int:
    """The seed a family's validation captchas are drawn from."""
    return VAL_SEED + list(FAMILIES).index(family)


def validation_sets(folder: Path, per_family: int = VAL_PER_FAMILY) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per family (training and held-out): (uint8 pixels (N, H, W), lower-case texts), rendered
    once into `folder` and read from there after."""
    folder.mkdir(parents=True, exist_ok=True)
    sets = {}
    for family in TRAIN_FAMILIES + HELD_OUT_FAMILIES:
        path = folder / f"val_{family}_{per_family}.npz"
        if not path.exists():  # seeded by the family's place in FAMILIES, which new families never change
            render_shard(path, {family: per_family}, validation_seed(family))
        data = np.load(path)
        texts = ["".join(CHARSET[int(c)] for c in row if c >= 0) for row in data["y"]]
        sets[family] = (data["x"], texts)
    return sets


def mix_mean(full_strings: dict[str, float]) -> float:
    """Mean full string over the training mix's families (family -> accuracy); the held-out
    families never count: the general reader is chosen on this."""
    return round(float(np.mean([full_strings[f] for f in TRAIN_FAMILIES])), 5)


def family_figures(model: CaptchaCTC, sets: dict, device) -> dict[str, dict]:
    figures = {}
    for family, (pixels, truth) in sets.items():
        predicted = read_texts(model, pixels, device)  # as the service answers them
        figures[family] = {k: round(v, 5) for k, v in score_texts(predicted, truth).items()}
    return figures


@torch.inference_mode()
def served_figures(models: dict[str, CaptchaCTC], contract: dict, per_family: int | None = None, batch: int = 200
                   ) -> dict[str, dict[str, dict]]:
    """`family_figures` of each of `models` (name -> reader) on the same validation captchas drawn
    again from their sources, each drawn and prepared once from its image as the service prepares
    an upload (with the full-resolution pixels a reader with an o/0 glyph net needs, which the
    cached 48x160 sets do not keep; a reader without one reads only the reader input)."""
    figures, per_family = {name: {} for name in models}, per_family or VAL_PER_FAMILY
    for family in TRAIN_FAMILIES + HELD_OUT_FAMILIES:
        drawn = list(itertools.islice(samples(family, validation_seed(family)), per_family))
        prepared = [prepare_captcha(image, contract) for _, image in drawn]
        truth = [t.lower() for t, _ in drawn]
        for name, model in models.items():
            predicted = []
            for i in range(0, len(prepared), batch):
                chunk = prepared[i:i + batch]
                full = None if chunk[0][1] is None else torch.cat([p[1] for p in chunk])
                predicted += [r.text for r in model.read(torch.cat([p[0] for p in chunk]), full=full)]
            figures[name][family] = {k: round(v, 5) for k, v in score_texts(predicted, truth).items()}
    return figures


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="a folder of training shards (training.captcha_mix shards)")
    parser.add_argument("--init", metavar="MANIFEST", help="start from an exported general reader's weights")
    parser.add_argument("--val-dir", help="where the validation captchas are cached (default <out>/val)")
    parser.add_argument("--val-count", type=int, default=VAL_PER_FAMILY, help="validation captchas per family")
    add_common_args(parser, epochs=100, lr=1e-3, batch_size=64, weight_decay=1e-2, clip=5.0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = resolve_device(args.device)
    init_manifest = None
    if args.init:
        model, init_manifest = load_checkpoint(args.init, device)
    else:
        model = CaptchaCTC(default_config()).to(device)
    x, y, fam = load_shards(Path(args.shards))
    shard_count = len(list(Path(args.shards).glob("shard_*.npz")))
    print(f"{NAME}: {model.describe()} | {model.num_parameters():,} parameters | {len(x):,} training captchas "
          f"from {shard_count} shards | device {device}", flush=True)
    sets = validation_sets(Path(args.val_dir or Path(args.out) / "val"), args.val_count)

    gen = torch.Generator().manual_seed(args.seed)
    source = ReaderBatches(ArraySource(x, y.astype(np.int64), args.batch_size, gen), gen, augment=True, device=device)
    steps = max(1, len(x) // args.batch_size // 4)  # an "epoch" = a quarter pass: a validation point every ~15k
    settings = settings_from_args(args, steps, args.out)
    # A go-on chunk's last epoch is partial and at ~0 lr: the best epoch on validation is kept.
    settings.keep_best = "val_full_string_accuracy"

    def evaluate() -> dict:
        figures = family_figures(model, {f: sets[f] for f in TRAIN_FAMILIES}, device)
        out = {f"val_{f}": figures[f]["full_string_accuracy"] for f in TRAIN_FAMILIES}
        out["val_full_string_accuracy"] = round(float(np.mean(list(out.values()))), 5)  # keep_best
        return out

    result = fit(model, source, ctc_loss, settings=settings, evaluate=evaluate)
    figures = family_figures(model, sets, device)
    for family, f in figures.items():
        tag = " (zero-shot)" if family in HELD_OUT_FAMILIES else ""
        print(f"{family:14s} {f['full_string_accuracy']:.2%} full string, {f['char_accuracy']:.2%} per char{tag}",
              flush=True)
    metrics = {
        # Not `full_string_accuracy`: that ranks the seed-style readers for the default reader
        # (app.registry), and this one must not take the page's seed captchas over.
        "validation_per_family": figures, "validation_per_family_count": args.val_count, "validation_seed": VAL_SEED,
        "mix_full_string_accuracy": mix_mean({f: v["full_string_accuracy"] for f, v in figures.items()}),
        "zero_shot_families": list(HELD_OUT_FAMILIES),
    }
    training = training_section(result, settings, seed=args.seed, batch_size=args.batch_size, device=device,
                                pool_captchas=len(x), shards=shard_count, families=list(TRAIN_FAMILIES),
                                lengths=f"1-{MAX_LENGTH}",
                                augmentation="random shift +-3/2 px and scale 0.93-1.07 per batch item")
    # What this chunk's pool held per family (shards may weigh families unevenly: captcha_mix --weights)
    per_family = np.bincount(fam, minlength=len(FAMILIES))
    pool_per_family = {name: int(n) for name, n in zip(FAMILIES, per_family) if n}
    chunk = {"samples_seen": result.samples, "seconds": result.seconds, "device": str(device),
             "pool_per_family": pool_per_family}
    if init_manifest is not None:
        chunks = list(init_manifest.training.get("chunks", [])) or [
            {k: init_manifest.training.get(k) for k in ("samples_seen", "seconds")}]
        training["chunks"] = chunks + [chunk]
        training["total_samples_seen"] = sum(c.get("samples_seen") or 0 for c in training["chunks"])
        training["total_seconds"] = round(sum(c.get("seconds") or 0 for c in training["chunks"]), 1)
    else:
        training["chunks"] = [chunk]
    manifest = build_manifest(model, task="captcha", variant="ctc", input=CONTRACT, metrics=metrics, training=training,
                              charset=CHARSET, case_insensitive=True, length=None,  # any: 1-8 trained
                              outputs="CTC: 37 per column, 0 = blank, k = charset[k-1]; greedy: argmax, merge repeats, drop blanks",
                              generator="the mix of training/captcha_mix.py: " + ", ".join(TRAIN_FAMILIES) +
                                        f"; held out: {', '.join(HELD_OUT_FAMILIES)}",
                              description="general captcha reader (many styles, 1-8 characters): " + model.describe())
    json_path = export(model, manifest, args.out, NAME,
                       curve=(f"{NAME}: the generator mix", [("train_loss", "train CTC loss"),
                                                            ("val_full_string_accuracy", "validation, mean over families")]))
    print(f"wrote {json_path}", flush=True)
    return json_path


if __name__ == "__main__":
    main()
