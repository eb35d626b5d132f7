"""Pick the final captcha weights from runs that branched from one checkpoint: each run's own
weights or their average ("model soup"), chosen on the validation captchas, then measured on
the held-out test captchas and exported.

    python -m training.captcha_soup --runs data/captcha_runs/joint data/captcha_runs/branch \\
        --pool data/captcha_pool --out models/weights

Each run folder holds captcha_ctc.* and captcha_seq2seq.* from one `--variant joint` run (so
both readers share their conv + encoder). Averaging is only meaningful for runs that share a
starting point (`--init` from one snapshot or exported soup), and BatchNorm's running
statistics are re-estimated on pool captchas after averaging. The choice uses the validation
seed only; the test seed is read once, for the chosen weights.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from models.captcha_seq2seq import CaptchaSeq2Seq
from models.checkpoint import load_checkpoint
from models.manifest import Manifest
from models.preprocess import to_captcha_tensor
from training.captcha_data import generate_arrays
from training.captcha_lib import TEST_SEED, VAL_SEED, JointCaptcha, evaluate, load_pools, test_metrics
from training.export import export

HEADS = ("ctc", "seq2seq")


def load_joint(run: Path) -> tuple[JointCaptcha, dict[str, Manifest]]:
    seq2seq, s_manifest = load_checkpoint(run / "captcha_seq2seq.json")
    ctc, c_manifest = load_checkpoint(run / "captcha_ctc.json")
    joint = JointCaptcha(seq2seq)
    joint.ctc.head.load_state_dict(ctc.head.state_dict())
    return joint.eval(), {"ctc": c_manifest, "seq2seq": s_manifest}


@torch.no_grad()
def recalibrate_bn(joint: JointCaptcha, images: np.ndarray, batches: int = 200, batch_size: int = 64) -> None:
    """Re-estimate BatchNorm running mean/var (cumulative average) on `batches` pool batches."""
    for m in joint.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    joint.train()
    rng = np.random.default_rng(0)
    for _ in range(batches):
        idx = np.sort(rng.choice(len(images), batch_size, replace=False))
        joint.seq2seq.encode(to_captcha_tensor(images[idx]))
    joint.eval()


def average(joints: list[JointCaptcha]) -> JointCaptcha:
    soup = load_joint_like(joints[0])
    states = [j.state_dict() for j in joints]
    soup.load_state_dict({k: sum(s[k].float() for s in states) / len(states) if states[0][k].is_floating_point()
                          else states[0][k] for k in states[0]})
    return soup


def load_joint_like(joint: JointCaptcha) -> JointCaptcha:
    fresh = JointCaptcha(CaptchaSeq2Seq(joint.seq2seq.config))
    fresh.load_state_dict(joint.state_dict())
    return fresh.eval()


def init_lineage(init_dir: str | None, head: str) -> dict | None:
    """What the shared starting checkpoint was (its manifest's training, minus per-epoch
    history), so a soup of soups still tells its whole story."""
    path = Path(init_dir) / f"captcha_{head}.json" if init_dir else None
    if path is None or not path.is_file():
        return None
    training = Manifest.read(path).training

    def trim(d: dict) -> dict:
        return {k: (trim(v) if isinstance(v, dict) else [trim(r) for r in v] if k == "runs" else v)
                for k, v in d.items() if k != "history"}

    return {"from": init_dir, **trim(training)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--pool", action="append", required=True, help="pool(s) for BatchNorm re-estimation")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--val-samples", type=int, default=2000)
    parser.add_argument("--test-samples", type=int, default=2000)
    parser.add_argument("--bn-batches", type=int, default=200)
    parser.add_argument("--pick", choices=["auto", "average"], default="auto",
                        help="auto: the best on validation; average: the average regardless")
    parser.add_argument("--tta", choices=["auto", "on", "off"], default="off",
                        help="seq2seq test-time shifts for the exported average: auto = only if they read more "
                             "validation captchas right")
    parser.add_argument("--tta-shifts", default="0,0 -2,0 2,0 0,-1 0,1", help="(dx,dy) pixel shifts, space-separated")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    runs = [Path(r) for r in args.runs]
    loaded = [load_joint(r) for r in runs]
    h, w = loaded[0][1]["ctc"].input["height"], loaded[0][1]["ctc"].input["width"]
    val_x, val_y, _ = generate_arrays(args.val_samples, VAL_SEED, h, w)

    candidates = {str(r): j for r, (j, _) in zip(runs, loaded)}
    if len(runs) > 1:
        pool_images, _, _ = load_pools(args.pool)
        soup = average([j for j, _ in loaded])
        recalibrate_bn(soup, pool_images, args.bn_batches)
        candidates["average"] = soup
    scores = {}
    for name, joint in candidates.items():
        s = {head: evaluate(net, val_x, val_y, "cpu") for head, net in joint.heads.items()}
        scores[name] = s
        print(f"val {name}: " + " | ".join(f"{head} full {s[head]['full_string_accuracy']:.2%} char "
                                            f"{s[head]['char_accuracy']:.3%}" for head in HEADS), flush=True)
    best = max(scores, key=lambda n: sum(scores[n][h]["full_string_accuracy"] for h in HEADS))
    if args.pick == "average":
        best = "average"
    print(f"chosen: {best}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = candidates[best]
    tta_info = None
    if args.tta != "off":
        s2s = chosen.seq2seq
        shifts = [[int(v) for v in pair.split(",")] for pair in args.tta_shifts.split()]
        s2s.config = replace(s2s.config, test_time_shifts=shifts)
        with_tta = evaluate(s2s, val_x, val_y, "cpu")
        plain = scores[best]["seq2seq"]
        used = args.tta == "on" or with_tta["full_string_accuracy"] > plain["full_string_accuracy"]
        print(f"val {best} seq2seq with {len(shifts)} shifted views: full {with_tta['full_string_accuracy']:.2%} "
              f"(without {plain['full_string_accuracy']:.2%}) -> {'used' if used else 'not used'}", flush=True)
        if not used:
            s2s.config = replace(s2s.config, test_time_shifts=[])
        tta_info = {"shifts": shifts, "used": used, "val_full_string_accuracy_with": round(
            with_tta["full_string_accuracy"], 5), "val_full_string_accuracy_without": round(
            plain["full_string_accuracy"], 5)}

    test_x, test_y, _ = generate_arrays(args.test_samples, TEST_SEED, h, w)
    # The chosen run's manifests (for the average: the last run's), amended below.
    base = loaded[[str(r) for r in runs].index(best)][1] if best != "average" else loaded[-1][1]
    # Read before anything is written: --out may be the folder the runs started from.
    lineage = {head: init_lineage((base[head].training.get("init") or {}).get("from"), head) for head in HEADS}
    for head, net in chosen.heads.items():
        test = evaluate(net, test_x, test_y, "cpu")
        manifest = replace(base[head], architecture=net.config.to_dict(), description=net.describe(),
                           metrics={**base[head].metrics, **test_metrics(test, args.test_samples)})
        # Per run: its own settings and figures (the manifests of `training.captcha`).
        run_keys = ("samples_seen", "seconds", "epochs", "init", "seed", "optimizer", "minutes_budget", "history")
        runs_info = [{"run": str(r), **{k: m[head].training.get(k) for k in run_keys}}
                     for r, (_, m) in zip(runs, loaded)]
        validation = {name: {h: {"full_string_accuracy": round(sc[h]["full_string_accuracy"], 5),
                                 "char_accuracy": round(sc[h]["char_accuracy"], 5)} for h in HEADS}
                      for name, sc in scores.items()}
        selection = {"runs": runs_info, "validation": validation, "val_samples": args.val_samples, "chosen": best}
        if best == "average":
            # Compute behind the average: every run's own samples/seconds, the shared start counted once.
            shared = base[head].training.get("init") or {"samples_seen": 0, "seconds": 0}
            common = {k: v for k, v in base[head].training.items() if k not in run_keys}
            manifest.training = {
                "samples_seen": sum(r["samples_seen"] for r in runs_info) - shared["samples_seen"],
                "seconds": round(sum(r["seconds"] for r in runs_info) - shared["seconds"], 1),
                **common,
                "joint": "both readers trained together: shared conv + encoder, loss = seq2seq cross-entropy + CTC; "
                         "samples and seconds are shared by the two",
                "soup": {"how": f"uniform average of the final weights of runs that branched from one checkpoint, "
                                f"BatchNorm statistics re-estimated on {args.bn_batches} pool batches; "
                                "chosen over each run alone on the validation captchas; samples and seconds add up "
                                "the runs (they ran side by side, one core each), the shared start counted once",
                         **selection},
            }
        else:
            # One run's weights as they are: its own figures (they include its starting checkpoint's).
            manifest.training = {**base[head].training, "soup": {
                "how": "each run's final weights and their uniform average (BatchNorm re-estimated) were read on the "
                       "validation captchas; this run alone read best, so its weights are exported as they are; "
                       "samples and seconds are this run's lineage only",
                **selection}}
        if head == "seq2seq" and tta_info:
            manifest.training["soup"]["test_time_shifts"] = tta_info
        if lineage[head]:
            manifest.training["soup"]["started_from"] = lineage[head]
        print(f"{head} {best} test: full-string {test['full_string_accuracy']:.2%} per-char "
              f"{test['char_accuracy']:.3%}", flush=True)
        export(net, manifest, out, f"captcha_{head}")
        curve = (Path(best) if best != "average" else runs[-1]) / f"captcha_{head}_curve.png"
        if curve.is_file():
            shutil.copy(curve, out / curve.name)
    print(f"wrote {best}'s weights to {out}")


if __name__ == "__main__":
    main()
