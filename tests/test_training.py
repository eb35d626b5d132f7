"""A training smoke run on a small MNIST subset writes a checkpoint the service can load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require_mnist
from models.checkpoint import load_checkpoint, save_checkpoint
from models.digits import DigitRNN, DigitRNNConfig


def test_smoke_run_writes_loadable_checkpoint(tmp_path):
    from training.digits import main

    root = require_mnist()
    json_path = main(["--cell", "gru", "--hidden-size", "32", "--limit", "256", "--epochs", "2", "--batch-size", "64",
                      "--data-root", str(root), "--out", str(tmp_path), "--no-progress", "--threads", "1"])
    manifest = json.loads(json_path.read_text())
    assert manifest["task"] == "digits" and manifest["cell"] == "gru"
    assert manifest["architecture"]["hidden_size"] == 32
    assert manifest["training"]["epochs"] == 2 and len(manifest["training"]["history"]) == 2
    assert manifest["training"]["seed"] == 0 and manifest["torch_version"] == torch.__version__
    assert 0 <= manifest["metrics"]["mnist_test_accuracy"] <= 1
    assert manifest["metrics"]["mnist_test_samples"] == 256
    assert manifest["parameters"] == DigitRNN(DigitRNNConfig(**manifest["architecture"])).num_parameters()
    model, _ = load_checkpoint(json_path)
    assert model(torch.zeros(2, 28, 28)).shape == (2, 10)
    curve = Image.open(tmp_path / "digits_gru_curve.png")
    assert curve.width > 100 and curve.height > 100


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
        training = manifest["training"]
        assert training["samples_seen"] == 64 * 3  # the shared start once, then each branch
        assert [r["seed"] for r in training["soup"]["runs"]] == [1, 2]
        assert training["soup"]["started_from"]["samples_seen"] == 64
        assert "history" not in training["soup"]["started_from"]
        assert manifest["metrics"]["test_samples"] == 16
    s2s, manifest = load_checkpoint(tmp_path / "soup" / "captcha_seq2seq.json")
    assert s2s.config.test_time_shifts == [[0, 0], [2, 0]] == manifest["architecture"]["test_time_shifts"]
    assert manifest["training"]["soup"]["test_time_shifts"]["used"] is True
    assert "2 shifted copies" in manifest["description"]

    # --pick auto may keep one run as it is: exported the same way, with that run's own lineage.
    soup(["--runs", str(tmp_path / "b"), str(tmp_path / "c"), "--pool", str(pool), "--out", str(tmp_path / "auto"),
          "--val-samples", "16", "--test-samples", "16", "--bn-batches", "2"])
    _, manifest = load_checkpoint(tmp_path / "auto" / "captcha_seq2seq.json")
    chosen = manifest["training"]["soup"]["chosen"]
    assert chosen in (str(tmp_path / "b"), str(tmp_path / "c"), "average")
    assert set(manifest["training"]["soup"]["validation"]) == {str(tmp_path / "b"), str(tmp_path / "c"), "average"}
    assert manifest["training"]["samples_seen"] == (64 * 3 if chosen == "average" else 64 * 2)


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
    save_checkpoint(reader, {"task": "captcha", "variant": "seq2seq", "architecture": reader.config.to_dict(),
                             "input": {"height": 32, "width": 96}, "metrics": {"test_seed": 424242},
                             "training": {"samples_seen": 10, "seconds": 1.0}}, tmp_path / "reader", "captcha_seq2seq")
    o0_main(["train", "--data", str(tmp_path / "train"), "--val", str(tmp_path / "val"),
             "--reader", str(tmp_path / "reader" / "captcha_seq2seq.json"), "--out", str(tmp_path / "out"),
             "--epochs", "1", "--batch-size", "16", "--threads", "1", "--val-samples", "8", "--test-samples", "8"])
    model, manifest = load_checkpoint(tmp_path / "out" / "captcha_seq2seq.json")
    assert model.o0 is not None and manifest["architecture"]["o0"]["mix"] == manifest["training"]["o0"]["mix"]
    # The reader's own weights are carried over untouched.
    for k, v in reader.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)
    assert manifest["input"]["full_resolution"] == {**manifest["input"]["full_resolution"], "height": 60, "width": 160}
    o0 = manifest["training"]["o0"]
    assert o0["windows"] == int(np.isin(labels, [INDEX_O, INDEX_ZERO]).sum()) and o0["seconds"] > 0
    assert o0["samples_seen"] == o0["windows"] // 16 * 16 and len(o0["history"]) == 1
    assert manifest["metrics"]["test_samples"] == 8 and "reader_alone" in manifest["metrics"]
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
    save_checkpoint(ctc, {"task": "captcha", "variant": "ctc", "architecture": ctc.config.to_dict(),
                          "input": {"height": 32, "width": 96}, "metrics": {"test_seed": 424242},
                          "training": {"samples_seen": 10, "seconds": 1.0}}, tmp_path / "reader", "captcha_ctc")
    o0_main(["attach", "--val", str(tmp_path / "val"), "--reader", str(tmp_path / "reader" / "captcha_ctc.json"),
             "--glyph", str(tmp_path / "out" / "captcha_seq2seq.json"), "--out", str(tmp_path / "out"),
             "--threads", "1", "--val-samples", "8", "--test-samples", "8"])
    ctc_model, ctc_manifest = load_checkpoint(tmp_path / "out" / "captcha_ctc.json")
    for k, v in model.o0.state_dict().items():  # the seq2seq reader's glyph net, as it is
        torch.testing.assert_close(ctc_model.o0.state_dict()[k], v)
    o0 = ctc_manifest["training"]["o0"]
    assert o0["glyph_from"] == "captcha_seq2seq.json" and ctc_manifest["architecture"]["o0"]["mix"] == o0["mix"]
    assert o0["validation_window_errors"]["characters"] > 0 and "full_resolution" in ctc_manifest["input"]
    readings = ctc_model.read(x, full=torch.randint(0, 256, (3, 60, 160), dtype=torch.uint8))
    assert all(len(r.text) == 4 and r.text[3] == "k" and set(r.text[:3]) <= {"o", "0"} for r in readings)
