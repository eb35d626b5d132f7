"""Pick the final captcha weights from runs that branched from one checkpoint: each run's own
weights or their average ("model soup"), chosen on the validation captchas, then measured on
the held-out test captchas and exported.

    python -m training.captcha_soup --runs data/captcha_runs/joint data/captcha_runs/branch \\
        --pool data/captcha_pool --out models/weights

Each run folder holds captcha_ctc.* and captcha_seq2seq.* from one `--variant joint` run (so
both readers share their conv + encoder). Averaging is only meaningful for runs that share a
starting point (here: `--init` from the other run's snapshot), and BatchNorm's running
statistics are re-estimated on pool captchas after averaging. The choice uses the validation
seed only; the test seed is read once, for the chosen weights.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.preprocess import to_captcha_tensor
from training.captcha import TEST_SEED, VAL_SEED, JointCaptcha, evaluate, load_pools
from training.captcha_data import generate_arrays

HEADS = ("ctc", "seq2seq")


def load_joint(run: Path) -> tuple[JointCaptcha, dict]:
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
    from models.captcha_seq2seq import CaptchaSeq2Seq

    fresh = JointCaptcha(CaptchaSeq2Seq(joint.seq2seq.config))
    fresh.load_state_dict(joint.state_dict())
    return fresh.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--pool", action="append", required=True, help="pool(s) for BatchNorm re-estimation")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--val-samples", type=int, default=2000)
    parser.add_argument("--bn-batches", type=int, default=200)
    parser.add_argument("--pick", choices=["auto", "average"], default="auto",
                        help="auto: the best on validation; average: the average regardless")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    runs = [Path(r) for r in args.runs]
    loaded = [load_joint(r) for r in runs]
    h, w = loaded[0][1]["ctc"]["input"]["height"], loaded[0][1]["ctc"]["input"]["width"]
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
    if best != "average":
        for head in HEADS:
            for suffix in (".json", ".safetensors", "_curve.png"):
                src = Path(best) / f"captcha_{head}{suffix}"
                if src.is_file():
                    shutil.copy(src, out / src.name)
        print(f"copied {best}'s exports to {out}")
        return

    test_x, test_y, _ = generate_arrays(2000, TEST_SEED, h, w)
    base = loaded[-1][1]  # the last run's manifests (the branch), amended below
    for head, net in candidates["average"].heads.items():
        test = evaluate(net, test_x, test_y, "cpu")
        manifest = {k: v for k, v in base[head].items() if k not in ("name", "weights")}
        manifest["metrics"] = {**manifest["metrics"],
                               "full_string_accuracy": round(test["full_string_accuracy"], 5),
                               "char_accuracy": round(test["char_accuracy"], 5),
                               "test_loss": round(test["loss"], 5),
                               "test_errors": [f"{t}->{p}" for t, p in test["errors"][:50]]}
        # Per run: its own settings and figures (the manifests of `training.captcha`).
        run_keys = ("samples_seen", "seconds", "epochs", "init", "seed", "optimizer", "minutes_budget", "history")
        runs_info = [{"run": str(r), **{k: m[head]["training"].get(k) for k in run_keys}}
                     for r, (_, m) in zip(runs, loaded)]
        # Compute behind the average: every run's own samples/seconds, the shared start counted once.
        shared = base[head]["training"].get("init") or {"samples_seen": 0, "seconds": 0}
        common = {k: v for k, v in base[head]["training"].items() if k not in run_keys}
        manifest["training"] = {
            "samples_seen": sum(r["samples_seen"] for r in runs_info) - shared["samples_seen"],
            "seconds": round(sum(r["seconds"] for r in runs_info) - shared["seconds"], 1),
            **common,
            "joint": "both readers trained together: shared conv + encoder, loss = seq2seq cross-entropy + CTC; "
                     "samples and seconds are shared by the two",
            "soup": {"how": f"uniform average of the runs' final weights (the last run branched from the first "
                            f"one's snapshot), BatchNorm statistics re-estimated on {args.bn_batches} pool batches; "
                            "chosen over each run alone on the validation captchas; samples and seconds add up "
                            "the runs (they ran side by side, one core each), the shared start counted once",
                     "runs": runs_info},
        }
        print(f"{head} average test: full-string {test['full_string_accuracy']:.2%} per-char "
              f"{test['char_accuracy']:.3%}", flush=True)
        save_checkpoint(net, manifest, out, f"captcha_{head}")
    print(f"wrote the averaged weights to {out}")


if __name__ == "__main__":
    main()
