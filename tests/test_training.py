"""The shared training loop (training/loop.py) and the trainers on it: a short digit run must
learn (a broken loop cannot reach the bar), snapshots resume to the same weights, bf16
autocast runs on the CPU, the schedule is torch's one-cycle, and the captcha pipelines export
checkpoints the service loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require_mnist
from models.checkpoint import load_checkpoint, save_checkpoint
from models.digits import DigitRNN, DigitRNNConfig
from training.loop import Budget, FitSettings, OneCycle, Shuffled, fit

# A small GRU on the first 2,000 MNIST training digits for 2 epochs, scored on the first 2,000
# test digits (never trained on). A correct loop reaches 87.4% (seed 0; 87.8% with seed 1);
# chance is 10%. Measured with the loop broken: no optimizer step or lr 0 11.4%, the schedule
# stuck at its starting lr 52.9%, no shuffling (one image over and over) 9.0%. A loop that never
# zeroes its gradients still reaches 82.4% (clipping and Adam hide the sum), so
# test_fit_is_the_hand_written_loop checks every step against a plain AdamW + OneCycleLR loop.
LEARNS = ["--cell", "gru", "--hidden-size", "128", "--num-layers", "1", "--no-augment", "--limit", "2000",
          "--epochs", "2", "--batch-size", "32", "--lr", "1e-2", "--threads", "1", "--no-progress"]
ACCURACY_BAR = 0.75


def test_short_digit_run_learns_and_exports(tmp_path):
    from training.digits import main

    root = require_mnist()
    json_path = main(LEARNS + ["--data-root", str(root), "--out", str(tmp_path)])
    manifest = json.loads(json_path.read_text())
    accuracy = manifest["metrics"]["mnist_test_accuracy"]
    assert accuracy >= ACCURACY_BAR, f"held-out accuracy {accuracy:.2%} after 2 epochs: the loop does not learn"
    assert manifest["metrics"]["mnist_test_accuracy_upload_pipeline"] >= ACCURACY_BAR - 0.03
    history = manifest["training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["train_loss"] < history[0]["train_loss"] < 2.3
    assert [h["samples_seen"] for h in history] == [2000, 4000] and history[-1]["test_accuracy"] == accuracy

    assert manifest["task"] == "digits" and manifest["variant"] == "gru" and "cell" not in manifest
    assert manifest["architecture"]["hidden_size"] == 128 and manifest["classes"] == [str(i) for i in range(10)]
    training = manifest["training"]
    assert training["epochs"] == 2 and training["samples_seen"] == 4000 and training["seed"] == 0
    assert training["optimizer"] == "AdamW(wd=0.0001) + OneCycle(max_lr=0.01)" and training["grad_clip"] == 1.0
    assert training["precision"] == "fp32" and training["threads"] == 1 and training["seconds"] > 0
    assert manifest["torch_version"] == torch.__version__ and manifest["metrics"]["mnist_test_samples"] == 2000
    assert manifest["parameters"] == DigitRNN(DigitRNNConfig(**manifest["architecture"])).num_parameters()
    model, loaded = load_checkpoint(json_path)
    assert model(torch.zeros(2, 28, 28)).shape == (2, 10) and loaded.metrics == manifest["metrics"]
    curve = Image.open(tmp_path / "digits_gru_curve.png")
    assert curve.width > 100 and curve.height > 100


class Interrupted(Exception):
    pass


def test_snapshot_resume_gives_the_uninterrupted_run(tmp_path, monkeypatch):
    """A run stopped during its second epoch and resumed from its epoch-1 snapshot ends with
    the same weights, history and sample count as one that never stopped (augmentation,
    dropout and the shuffling continue from the snapshot's generator states)."""
    import training.digits as digits
    from safetensors.torch import load_file

    root = require_mnist()
    tiny = ["--cell", "gru", "--hidden-size", "16", "--limit", "256", "--epochs", "2", "--batch-size", "64",
            "--data-root", str(root), "--no-progress", "--threads", "1", "--snapshot"]
    whole = json.loads(digits.main(tiny + ["--out", str(tmp_path / "whole")]).read_text())

    real_classify, calls = digits.classify, []

    def crash_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted
        return real_classify(*args, **kwargs)

    monkeypatch.setattr(digits, "classify", crash_in_epoch_2)
    with pytest.raises(Interrupted):
        digits.main(tiny + ["--out", str(tmp_path / "cut")])
    monkeypatch.setattr(digits, "classify", real_classify)
    snapshots = tmp_path / "cut" / "snapshots"
    state = json.loads((snapshots / "state.json").read_text())
    assert state["epoch"] == 1 and state["samples"] == 256 and len(state["history"]) == 1
    assert not (tmp_path / "cut" / "digits_gru.json").exists()

    resumed = json.loads(digits.main(tiny + ["--out", str(tmp_path / "cut"), "--resume", str(snapshots)]).read_text())
    assert resumed["training"]["resumed_from"] == str(snapshots)
    assert resumed["training"]["samples_seen"] == whole["training"]["samples_seen"] == 512
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in whole["training"]["history"]]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed["training"]["history"]] == strip
    assert resumed["metrics"] == whole["metrics"]
    a = load_file(str(tmp_path / "whole" / "digits_gru.safetensors"))
    b = load_file(str(tmp_path / "cut" / "digits_gru.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((snapshots / "state.json").read_text())["epoch"] == 2


def _toy_problem(n: int = 512):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x, y


class _Toy:
    def __init__(self, x, y, batch_size):
        self.x, self.y, self.order = x, y, Shuffled(len(x), batch_size, torch.Generator().manual_seed(1))

    def next(self):
        idx = self.order.next()
        return self.x[idx], self.y[idx]


def test_fit_is_the_hand_written_loop():
    """fit() on an epoch budget is, to the bit, zero_grad / backward / clip / AdamW step under
    torch's OneCycleLR (with its beta1 cycling)."""
    x, y = _toy_problem()
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
    model.load_state_dict(reference.state_dict())
    epochs, steps = 3, 16
    opt = torch.optim.AdamW(reference.parameters(), lr=0.05, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=epochs * steps, pct_start=0.15)
    source = _Toy(x, y, 32)
    for _ in range(epochs * steps):
        xb, yb = source.next()
        loss = torch.nn.functional.cross_entropy(reference(xb), yb)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.1)  # tight enough to clip every step
        opt.step()
        sched.step()
    result = fit(model, _Toy(x, y, 32), torch.nn.functional.cross_entropy, log=lambda line: None,
                 settings=FitSettings(Budget(epochs, steps), OneCycle(0.05), weight_decay=1e-2, clip=0.1,
                                      progress=False))
    assert result.steps == epochs * steps and result.samples == epochs * steps * 32
    for a, b in zip(reference.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_bf16_autocast_on_cpu_keeps_fp32_weights_and_learns():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    seen = set()
    model[0].register_forward_hook(lambda m, i, out: seen.add(out.dtype) if m.training else None)
    x, y = _toy_problem()
    settings = FitSettings(Budget(epochs=3, steps_per_epoch=16), OneCycle(1e-2), clip=1.0, precision="bf16",
                           progress=False)

    def accuracy():
        model.eval()
        with torch.no_grad():
            return {"accuracy": round((model(x).argmax(1) == y).float().mean().item(), 4)}

    result = fit(model, _Toy(x, y, 32), torch.nn.functional.cross_entropy, settings=settings, evaluate=accuracy,
                 log=lambda line: None)
    assert seen == {torch.bfloat16}  # the forward pass ran in bf16 ...
    assert all(p.dtype == torch.float32 for p in model.parameters())  # ... the weights stayed fp32
    assert result.history[-1]["accuracy"] > 0.9 and result.samples == 3 * 16 * 32
    assert settings.describe_precision().startswith("bf16 autocast")


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bf16_hardware_says_fp32_is_faster(monkeypatch, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    x, y = _toy_problem()
    model, lines = torch.nn.Linear(8, 2), []
    for precision in ("fp32", "bf16"):
        fit(model, _Toy(x, y, 32), torch.nn.functional.cross_entropy, log=lines.append,
            settings=FitSettings(Budget(epochs=1, steps_per_epoch=2), OneCycle(1e-2), precision=precision,
                                 progress=False))
    warnings = [line for line in lines if "no native bf16" in line]
    assert len(warnings) == (0 if native else 1) and (native or "--precision fp32" in warnings[0])


def test_keep_best_ends_with_the_best_epochs_weights_across_a_resume(tmp_path):
    """With keep_best, the model ends with the weights of the epoch that scored best, not the
    last epoch's; the best weights travel in the snapshot, so a resumed run keeps them too."""
    x, y = _toy_problem()
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    scores = iter([0.5, 0.9, 0.7, 0.8])  # the "validation" figure of epochs 1..4
    weights = []  # the model's weights as each epoch ended

    def evaluate():
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"val": next(scores), "other": 0.0}

    def settings(epochs, **kw):
        return FitSettings(Budget(epochs, 8), OneCycle(1e-2), progress=False, keep_best="val", **kw)

    snapshots = tmp_path / "snapshots"
    first = fit(model, _Toy(x, y, 32), torch.nn.functional.cross_entropy, settings=settings(2, snapshot_dir=snapshots),
                evaluate=evaluate, log=lambda line: None)
    assert first.best_epoch == 2 and (snapshots / "best_model.safetensors").is_file()
    lines = []
    resumed = fit(model, _Toy(x, y, 32), torch.nn.functional.cross_entropy, settings=settings(4, resume=snapshots),
                  evaluate=evaluate, log=lines.append)
    assert [h["val"] for h in resumed.history] == [0.5, 0.9, 0.7, 0.8] and resumed.best_epoch == 2
    assert not torch.equal(weights[3]["weight"], weights[1]["weight"])  # training moved on after epoch 2 ...
    for key, value in model.state_dict().items():  # ... and the model ends with epoch 2's weights
        assert torch.equal(value, weights[1][key])
    assert "kept epoch 2's weights: val 0.9 (the last epoch's: 0.8)" in lines[-1]
    # Without keep_best the last epoch's weights stay, and a figure evaluate() lacks is an error.
    plain = fit(model, _Toy(x, y, 32), torch.nn.functional.cross_entropy, evaluate=lambda: {"val": 0.1},
                settings=FitSettings(Budget(1, 8), OneCycle(1e-2), progress=False), log=lambda line: None)
    assert plain.best_epoch is None
    with pytest.raises(KeyError, match="accuracy"):
        fit(model, _Toy(x, y, 32), torch.nn.functional.cross_entropy, evaluate=lambda: {"val": 0.1},
            settings=FitSettings(Budget(1, 8), OneCycle(1e-2), progress=False, keep_best="accuracy"),
            log=lambda line: None)


def test_schedule_is_torchs_one_cycle_and_budgets_stop_the_run():
    steps = 37
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    torch_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.15)
    for step in range(steps):
        lr, beta1 = OneCycle(0.1).at(step, steps, step_unit=1.0)
        assert (lr, beta1) == (opt.param_groups[0]["lr"], opt.param_groups[0]["betas"][0])
        opt.step()
        torch_sched.step()
    # On a sample budget the schedule follows the samples and the run stops when they are spent.
    model = torch.nn.Linear(8, 2)
    x, y = _toy_problem()
    result = fit(model, _Toy(x, y, 32), torch.nn.functional.cross_entropy, log=lambda line: None,
                 settings=FitSettings(Budget(epochs=10, steps_per_epoch=16, samples=640), OneCycle(1e-2),
                                      progress=False))
    assert result.samples == 640 and result.epochs == 2  # 20 of the 160 steps
    assert result.lr == OneCycle(1e-2).at(640 - 32, 640)[0] < 1e-4  # at 95% of the samples, not at 12% of the steps


def test_missing_dataset_says_how_to_get_it(tmp_path):
    from training.digits import main

    with pytest.raises(SystemExit, match="--download"):
        main(["--data-root", str(tmp_path), "--epochs", "1", "--out", str(tmp_path / "out"), "--no-progress"])


def test_captcha_joint_runs_and_soup(tmp_path):
    """Tiny captcha pipeline: a pool, a bf16 joint run, a second run branching from it, and the
    soup that averages them; every export loads and the manifests add the compute up."""
    from training.captcha import main as train
    from training.captcha_data import write_pool
    from training.captcha_soup import main as soup

    pool = write_pool(tmp_path / "pool", count=96, seed=5, workers=1, chunk=48)
    tiny = ["--variant", "joint", "--pool", str(pool), "--epochs", "1", "--epoch-samples", "64", "--batch-size", "32",
            "--channels", "8", "8", "8", "8", "--hidden-size", "8", "--decoder-hidden", "16", "--val-samples", "16",
            "--test-samples", "16", "--threads", "1", "--no-progress"]
    first = train(tiny + ["--precision", "bf16", "--out", str(tmp_path / "a")])
    assert [p.name for p in first] == ["captcha_ctc.json", "captcha_seq2seq.json"]
    a = json.loads(first[1].read_text())
    assert a["training"]["precision"].startswith("bf16") and a["training"]["samples_seen"] == 64
    branch = ["--init", str(tmp_path / "a"), "--init-samples", "64", "--init-seconds", str(a["training"]["seconds"])]
    train(tiny + branch + ["--seed", "1", "--out", str(tmp_path / "b")])
    train(tiny + branch + ["--seed", "2", "--out", str(tmp_path / "c")])

    soup(["--runs", str(tmp_path / "b"), str(tmp_path / "c"), "--pool", str(pool), "--out", str(tmp_path / "soup"),
          "--pick", "average", "--val-samples", "16", "--test-samples", "16", "--bn-batches", "2", "--tta", "on",
          "--tta-shifts", "0,0 2,0"])
    for head in ("ctc", "seq2seq"):
        model, manifest = load_checkpoint(tmp_path / "soup" / f"captcha_{head}.json")
        assert model(torch.zeros(2, 1, 32, 96)).shape[0] == 2
        training = manifest.training
        assert training["samples_seen"] == 64 * 3  # the shared start once, then each branch
        assert [r["seed"] for r in training["soup"]["runs"]] == [1, 2]
        assert training["soup"]["started_from"]["samples_seen"] == 64
        assert "history" not in training["soup"]["started_from"]
        assert manifest.metrics["test_samples"] == 16
    s2s, manifest = load_checkpoint(tmp_path / "soup" / "captcha_seq2seq.json")
    assert s2s.config.test_time_shifts == [[0, 0], [2, 0]] == manifest.architecture["test_time_shifts"]
    assert manifest.training["soup"]["test_time_shifts"]["used"] is True
    assert "2 shifted copies" in manifest.description

    # --pick auto may keep one run as it is: exported the same way, with that run's own lineage.
    soup(["--runs", str(tmp_path / "b"), str(tmp_path / "c"), "--pool", str(pool), "--out", str(tmp_path / "auto"),
          "--val-samples", "16", "--test-samples", "16", "--bn-batches", "2"])
    _, manifest = load_checkpoint(tmp_path / "auto" / "captcha_seq2seq.json")
    chosen = manifest.training["soup"]["chosen"]
    assert chosen in (str(tmp_path / "b"), str(tmp_path / "c"), "average")
    assert set(manifest.training["soup"]["validation"]) == {str(tmp_path / "b"), str(tmp_path / "c"), "average"}
    assert manifest.training["samples_seen"] == (64 * 3 if chosen == "average" else 64 * 2)


def save_captcha_reader(model, folder):
    """A (tiny) captcha reader as a checkpoint the o/0 trainer can load: <folder>/captcha_<variant>.json."""
    variant = model.config.variant
    save_checkpoint(model, {"task": "captcha", "variant": variant, "architecture": model.config.to_dict(),
                            "input": {"height": 32, "width": 96}, "metrics": {"test_seed": 424242},
                            "training": {"samples_seen": 10, "seconds": 1.0}}, folder, f"captcha_{variant}")


def test_captcha_o0_glyph_net_pipeline(tmp_path, monkeypatch):
    """o/0-rich full-resolution sets -> the glyph net trained on windows where a (tiny) reader
    looks -> exported inside the seq2seq checkpoint, which loads and reads with it."""
    from models.captcha_o0 import INDEX_O, INDEX_ZERO
    from models.captcha_seq2seq import CaptchaSeq2Seq, CaptchaSeq2SeqConfig
    from training.captcha_o0 import load_o0_set, main as o0_main

    o0_main(["data", "--count", "40", "--seed", "3", "--out", str(tmp_path / "train"), "--o0-share", "0.6",
             "--workers", "1"])
    o0_main(["data", "--count", "20", "--seed", "4", "--out", str(tmp_path / "val"), "--o0-share", "0.6",
             "--workers", "1"])
    full, labels, meta = load_o0_set(tmp_path / "train")
    assert full.shape == (40, 60, 160) and full.dtype == np.uint8 and meta["o0_share"] == 0.6
    share = float(np.isin(labels, [INDEX_O, INDEX_ZERO]).mean())
    assert 0.4 < share < 0.8  # ~0.6 + 2/62 of the rest, far above real captchas' 3/62

    torch.manual_seed(0)
    reader = CaptchaSeq2Seq(CaptchaSeq2SeqConfig(channels=[4, 8, 8, 8], encoder_hidden=8, decoder_hidden=16,
                                                 attention_size=8, test_time_shifts=[[0, 0], [2, 0]])).eval()
    save_captcha_reader(reader, tmp_path / "reader")
    o0_main(["train", "--data", str(tmp_path / "train"), "--val", str(tmp_path / "val"),
             "--reader", str(tmp_path / "reader" / "captcha_seq2seq.json"), "--out", str(tmp_path / "out"),
             "--epochs", "1", "--batch-size", "16", "--threads", "1", "--val-samples", "8", "--test-samples", "8"])
    model, manifest = load_checkpoint(tmp_path / "out" / "captcha_seq2seq.json")
    assert model.o0 is not None and manifest.architecture["o0"]["mix"] == manifest.training["o0"]["mix"]
    # The reader's own weights are carried over untouched.
    for k, v in reader.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)
    assert manifest.input["full_resolution"] == {**manifest.input["full_resolution"], "height": 60, "width": 160}
    o0 = manifest.training["o0"]
    assert o0["windows"] == int(np.isin(labels, [INDEX_O, INDEX_ZERO]).sum()) and o0["seconds"] > 0
    assert o0["samples_seen"] == o0["windows"] // 16 * 16 and len(o0["history"]) == 1
    assert manifest.metrics["test_samples"] == 8 and "reader_alone" in manifest.metrics
    x = torch.randn(3, 1, 32, 96)
    readings = model.read(x, full=torch.randint(0, 256, (3, 60, 160), dtype=torch.uint8))
    assert [len(r.text) for r in readings] == [4, 4, 4]

    # The same glyph net attached to a ctc reader. An untrained ctc reads no 4-character
    # strings, so this one's columns are fixed: o in columns 2-3, 0 in 8, o in 14, k in 20.
    from models.captcha_common import CHARSET
    from models.captcha_ctc import CaptchaCTC, CaptchaCTCConfig

    def fixed_columns(self, x):
        logits = torch.zeros(x.shape[0], 24, len(CHARSET) + 1)
        logits[:, :, 0] = 5.0  # blank
        for cols, char in (([2, 3], "o"), ([8], "0"), ([14], "o"), ([20], "k")):
            logits[:, cols, CHARSET.index(char) + 1] = 9.0
            logits[:, cols, CHARSET.index("0" if char == "o" else "o") + 1] = 8.0  # a close second
        return logits

    monkeypatch.setattr(CaptchaCTC, "forward", fixed_columns)
    ctc = CaptchaCTC(CaptchaCTCConfig(channels=[4, 8, 8, 8], hidden_size=8)).eval()
    save_captcha_reader(ctc, tmp_path / "reader")
    o0_main(["attach", "--val", str(tmp_path / "val"), "--reader", str(tmp_path / "reader" / "captcha_ctc.json"),
             "--glyph", str(tmp_path / "out" / "captcha_seq2seq.json"), "--out", str(tmp_path / "out"),
             "--threads", "1", "--val-samples", "8", "--test-samples", "8"])
    ctc_model, ctc_manifest = load_checkpoint(tmp_path / "out" / "captcha_ctc.json")
    for k, v in model.o0.state_dict().items():  # the seq2seq reader's glyph net, as it is
        torch.testing.assert_close(ctc_model.o0.state_dict()[k], v)
    o0 = ctc_manifest.training["o0"]
    assert o0["glyph_from"] == "captcha_seq2seq.json" and ctc_manifest.architecture["o0"]["mix"] == o0["mix"]
    assert o0["validation_window_errors"]["characters"] > 0 and "full_resolution" in ctc_manifest.input
    readings = ctc_model.read(x, full=torch.randint(0, 256, (3, 60, 160), dtype=torch.uint8))
    assert all(len(r.text) == 4 and r.text[3] == "k" and set(r.text[:3]) <= {"o", "0"} for r in readings)


def test_captcha_o0_glyph_net_for_a_ctc_reader_of_every_length(tmp_path, monkeypatch):
    """Mixed-length o/0-rich sets (labels padded with -1) -> a glyph net trained on the windows of
    a ctc reader's own runs, only on captchas it read at their label's length."""
    from models.captcha_common import CHARSET
    from models.captcha_ctc import CaptchaCTC, CaptchaCTCConfig
    from models.captcha_o0 import INDEX_O, INDEX_ZERO
    import training.captcha_o0 as o0_cli
    from training.captcha_o0 import load_o0_set

    for name, seed, count in (("train", 5, 60), ("val", 6, 30)):
        o0_cli.main(["data", "--count", str(count), "--seed", str(seed), "--out", str(tmp_path / name), "--o0-share", "0.6",
                     "--workers", "1", "--lengths", "4-5"])
    full, labels, meta = load_o0_set(tmp_path / "train")
    lengths = (labels >= 0).sum(1)
    assert labels.shape == (60, 5) and meta["lengths"] == [4, 5] and set(lengths.tolist()) == {4, 5}
    assert (labels[lengths == 4, 4] == -1).all() and (labels[:, :4] >= 0).all()

    def four_runs(self, x):  # every captcha read as 4 characters: o, 0, o, k
        logits = torch.zeros(x.shape[0], 24, len(CHARSET) + 1)
        logits[:, :, 0] = 5.0
        for cols, char in (([2, 3], "o"), ([8], "0"), ([14], "o"), ([20], "k")):
            logits[:, cols, CHARSET.index(char) + 1] = 9.0
        return logits

    monkeypatch.setattr(CaptchaCTC, "forward", four_runs)
    ctc = CaptchaCTC(CaptchaCTCConfig(channels=[4, 8, 8, 8], hidden_size=8)).eval()
    save_captcha_reader(ctc, tmp_path / "reader")
    # A reader of every length carries figures on 5 and 6 characters: the old glyph net's, to be
    # measured again with the new one (on small sets here).
    reader_json = tmp_path / "reader" / "captcha_ctc.json"
    stale = {f"{k}_{n}_chars": v for n in (5, 6) for k, v in (("full_string_accuracy", 0.5), ("char_accuracy", 0.5),
                                                                ("test_samples", 1000))}
    reader_json.write_text(json.dumps({**json.loads(reader_json.read_text()), "metrics": {"test_seed": 424242, **stale}}))
    monkeypatch.setattr(o0_cli, "EVAL", {4: (8, 424242), 5: (6, 424247), 6: (6, 424248)})
    o0_cli.main(["train", "--data", str(tmp_path / "train"), "--val", str(tmp_path / "val"),
                 "--reader", str(reader_json), "--out", str(tmp_path / "out"),
                 "--epochs", "1", "--batch-size", "8", "--threads", "1", "--val-samples", "8", "--test-samples", "8"])
    model, manifest = load_checkpoint(tmp_path / "out" / "captcha_ctc.json")
    o0 = manifest.training["o0"]
    # Windows only from the 4-character captchas (read at their length), at their o/0 positions.
    assert o0["windows"] == int(np.isin(labels[lengths == 4], [INDEX_O, INDEX_ZERO]).sum()) > 0
    assert "CTC run" in o0["how"] and manifest.architecture["o0"]["mix"] == o0["mix"] and model.o0 is not None
    assert "CTC run" in manifest.input["full_resolution"]["for"]
    assert manifest.description.endswith("; reads 1-8 characters")
    # Every reading is 4 characters long: nothing of 5 or 6 is read right, with the glyph net or without.
    for n in (5, 6):
        assert manifest.metrics[f"test_samples_{n}_chars"] == 6 and manifest.metrics[f"test_seed_{n}_chars"] == 424242 + n
        assert manifest.metrics[f"full_string_accuracy_{n}_chars"] == 0.0
        assert manifest.metrics["reader_alone"][f"full_string_accuracy_{n}_chars"] == 0.0

    # Going on from that glyph net: the same shape, its weights as the start, where it came from recorded.
    first = tmp_path / "out" / "captcha_ctc.json"
    o0_cli.main(["train", "--data", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--reader", str(reader_json),
                 "--init", str(first), "--out", str(tmp_path / "again"), "--epochs", "1", "--batch-size", "8",
                 "--threads", "1", "--lr", "1e-9", "--val-samples", "8", "--test-samples", "8"])
    again, again_manifest = load_checkpoint(tmp_path / "again" / "captcha_ctc.json")
    assert again_manifest.training["o0"]["init"]["from"] == str(first)
    assert again_manifest.training["o0"]["init"]["samples_seen"] == o0["samples_seen"]
    # A peak learning rate of 1e-9: the weights are the first net's (batch-norm statistics aside).
    for name, weight in model.o0.state_dict().items():
        if "running" not in name and "num_batches" not in name:
            assert torch.allclose(weight, again.o0.state_dict()[name], atol=1e-6), name


def test_captcha_o0_glyph_net_for_an_end_token_seq2seq(tmp_path, monkeypatch):
    """An end-token seq2seq reader's glyph net trains on mixed lengths: only captchas whose
    reading ends right after the label's last character give windows (here every reading is
    4 characters and the end, so the 4-character captchas)."""
    import training.captcha_o0 as o0
    from models.captcha_common import CHARSET
    from models.captcha_o0 import INDEX_O, INDEX_ZERO
    from models.captcha_seq2seq import END, CaptchaSeq2Seq, CaptchaSeq2SeqConfig

    for name, seed, count in (("train", 7, 50), ("val", 8, 30)):
        o0.main(["data", "--count", str(count), "--seed", str(seed), "--out", str(tmp_path / name), "--o0-share", "0.6",
                 "--workers", "1", "--lengths", "4-5"])
    _, labels, _ = o0.load_o0_set(tmp_path / "train")

    def four_then_end(reader, full, batch=500):
        lp = torch.full((len(full), reader.config.steps, reader.config.classes), -9.0)
        for step, char in enumerate("o0ok"):
            lp[:, step, CHARSET.index(char)] = -0.1
        lp[:, 4:, END] = -0.1
        return lp, torch.tensor([24.0, 56.0, 88.0, 120.0] + [140.0] * 5).expand(len(full), -1)

    monkeypatch.setattr(o0, "locate", four_then_end)
    reader = CaptchaSeq2Seq(CaptchaSeq2SeqConfig(channels=[4, 8, 8, 8], encoder_hidden=8, decoder_hidden=16,
                                                 attention_size=8, end_token=True, length=8)).eval()
    save_captcha_reader(reader, tmp_path / "reader")
    o0.main(["train", "--data", str(tmp_path / "train"), "--val", str(tmp_path / "val"),
             "--reader", str(tmp_path / "reader" / "captcha_seq2seq.json"), "--out", str(tmp_path / "out"),
             "--epochs", "1", "--batch-size", "8", "--threads", "1", "--val-samples", "8", "--test-samples", "8"])
    model, manifest = load_checkpoint(tmp_path / "out" / "captcha_seq2seq.json")
    four = (labels >= 0).sum(1) == 4
    assert manifest.training["o0"]["windows"] == int(np.isin(labels[four], [INDEX_O, INDEX_ZERO]).sum()) > 0
    assert model.o0 is not None and model.config.end_token and "attention" in manifest.training["o0"]["how"]
