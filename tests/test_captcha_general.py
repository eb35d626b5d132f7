"""The general captcha reader's pipeline: shards -> trainer -> a manifest served as model=general
beside the seed-style reader (which stays the default), chunks that add up across --init, and
a calibration temperature that changes confidences but never answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import WEIGHTS_DIR
from models.captcha_common import NO_CONSTRAINTS
from models.checkpoint import load_checkpoint
from models.preprocess import prepare_captcha
from testkit import png_bytes
from training.captcha_data import CaptchaGenerator
from training.captcha_mix import render_shard


def seed_captchas(count: int, seed: int = 31):
    gen = CaptchaGenerator(seed)
    return [gen.sample() for _ in range(count)]


def test_temperature_changes_confidences_not_answers():
    model, manifest = load_checkpoint(WEIGHTS_DIR / "captcha_ctc.json")
    items = seed_captchas(12) + [(t, im) for t, im in seed_captchas(4, seed=32)]
    xs, fulls = zip(*(prepare_captcha(im, manifest.input) for _, im in items))
    x, full = torch.cat(xs), torch.cat(fulls)
    model.config.temperature = 1.0
    plain = model.read(x, full=full)
    model.config.temperature = 2.5
    warm = model.read(x, full=full)
    assert [r.text for r in warm] == [r.text for r in plain]
    assert all(w.confidence <= p.confidence + 1e-6 for w, p in zip(warm, plain))
    assert np.mean([r.confidence for r in warm]) < np.mean([r.confidence for r in plain]) - 0.01
    # and the constrained decoding reads the same under any temperature
    model.config.temperature = 1.0
    log_probs, runs = model.answer(x, full, [NO_CONSTRAINTS] * len(items))
    model.config.temperature = 3.0
    assert model.answer(x, full, [NO_CONSTRAINTS] * len(items))[1] == runs


def test_calibration_confidences_are_the_served_ones():
    from training.captcha_calibrate import confidences

    model, manifest = load_checkpoint(WEIGHTS_DIR / "captcha_ctc.json")
    items = seed_captchas(6)
    xs, fulls = zip(*(prepare_captcha(im, manifest.input) for _, im in items))
    x, full = torch.cat(xs), torch.cat(fulls)
    model.config.temperature = 1.7
    log_probs, runs = model.answer(x, full, [NO_CONSTRAINTS] * len(items))
    served = [r.confidence for r in model.read(x, full=full)]
    assert np.allclose(confidences(log_probs, [[k for k, _ in r] for r in runs], 1.7), served, atol=1e-4)
    # empty answers (nothing read), alone or beside others: the all-blank path's probability
    blank_heavy = torch.full((2, 40, 37), -8.0)
    blank_heavy[:, :, 0] = -0.01
    empty = confidences(blank_heavy.log_softmax(-1), [[], []], 1.0)
    assert np.allclose(empty, torch.exp(blank_heavy.log_softmax(-1)[:, :, 0].sum(1)).numpy(), rtol=1e-4)
    assert np.allclose(confidences(blank_heavy.log_softmax(-1), [[], [3]], 1.0)[0], empty[0], rtol=1e-4)


def test_calibration_cap_raises_the_temperature_until_no_family_is_wrong_and_sure():
    from training.captcha_calibrate import figures, fit_temperature

    # 20 answers of one character, 1 of them wrong: the NLL fit leaves them at ~0.95, sure
    logits = torch.full((20, 40, 37), -4.0)
    logits[:, :, 0] = 2.0
    logits[:, 20, 0], logits[:, 20, 4] = -4.0, 2.0
    sets = {"family": (logits.log_softmax(-1), [[3]] * 20, [False] + [True] * 19)}
    plain, _ = fit_temperature(sets)
    assert figures(sets, plain)["family"]["wrong_and_sure"] == 0.05
    capped, _ = fit_temperature(sets, cap=0.0)
    assert capped > plain and figures(sets, capped)["family"]["wrong_and_sure"] == 0.0
    assert fit_temperature(sets, cap=0.05)[0] == plain  # a cap already met changes nothing


def test_calibration_cools_an_overconfident_reader_on_foreign_styles(tmp_path):
    from training.captcha_calibrate import figures, fit_temperature, calibration_set

    model, manifest = load_checkpoint(WEIGHTS_DIR / "captcha_ctc.json")
    sets = calibration_set(model, manifest, count=25)
    temperature, curve = fit_temperature(sets)
    losses = dict(curve)
    assert temperature > 1.0 and losses[temperature] < losses[min(losses, key=lambda t: abs(t - 1.0))]
    before, after = figures(sets, 1.0), figures(sets, temperature)
    assert sum(f["wrong_and_sure"] for f in after.values()) <= sum(f["wrong_and_sure"] for f in before.values())
    assert after["seed"]["accuracy"] == before["seed"]["accuracy"]  # the answers are the same


def test_general_trainer_exports_a_reader_served_beside_the_default(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    import training.captcha_general as trainer
    from app.main import create_app
    from app.settings import Settings
    from training.captcha_general import main

    shards = tmp_path / "shards"
    shards.mkdir()
    render_shard(shards / "shard_000001.npz", {"seed": 40, "pil_warp": 24}, seed=1)
    models = tmp_path / "models"
    common = ["--shards", str(shards), "--val-dir", str(tmp_path / "val"), "--val-count", "6", "--epochs", "4",
              "--samples", "64", "--batch-size", "16", "--threads", "1", "--no-progress", "--out", str(models)]
    first = main(common)
    manifest = json.loads(first.read_text())
    assert manifest["name"] == "captcha_general" and manifest["input"]["height"] == 48
    assert manifest.get("length") is None and manifest["training"]["lengths"] == "1-8"  # any length
    assert "full_string_accuracy" not in manifest["metrics"]  # never ranks as the default reader
    assert set(manifest["metrics"]["validation_per_family"]) >= {"seed", "multicolor", "claptcha"}
    assert manifest["training"]["chunks"][0]["samples_seen"] == 64
    assert manifest["training"]["chunks"][0]["pool_per_family"] == {"seed": 40, "pil_warp": 24}
    assert manifest["training"]["weights_from_epoch"] >= 1
    again = json.loads(main(common + ["--init", str(first)]).read_text())
    assert [c["samples_seen"] for c in again["training"]["chunks"]] == [64, 64]
    assert again["training"]["total_samples_seen"] == 128
    # keep_best: a go-on chunk from the committed reader whose last two steps (one per epoch here)
    # climb the loss instead of descending it, so its last epoch reads worse than its best
    # whatever weights are committed. The exported weights must be the best epoch's, and the
    # figures measured again on them must be that epoch's.
    descend, steps = trainer.ctc_loss, []

    def unlearn_late(outputs, targets):
        steps.append(1)
        loss = descend(outputs, targets)
        return loss if len(steps) <= 2 else -loss

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "ctc_loss", unlearn_late)
        go_on = json.loads(main(common + ["--init", str(WEIGHTS_DIR / "captcha_general.json"), "--lr", "3e-3",
                                          "--out", str(tmp_path / "go_on")]).read_text())
    assert len(steps) == 4
    history = [h["val_full_string_accuracy"] for h in go_on["training"]["history"]]
    assert max(history) > history[-1], history  # the case under test: the last epoch is not the best
    assert go_on["training"]["weights_from_epoch"] == history.index(max(history)) + 1 <= 2
    assert go_on["metrics"]["mix_full_string_accuracy"] == max(history)

    for suffix in (".json", ".safetensors"):
        (models / f"captcha_ctc{suffix}").symlink_to(WEIGHTS_DIR / f"captcha_ctc{suffix}")
    text, image = seed_captchas(1)[0]
    app = create_app(Settings(models_dir=models, device="cpu", models_watch_s=0))
    with TestClient(app) as client:
        assert sorted(client.get("/readyz").json()["models"]["captcha"]) == ["ctc", "general"]
        general = client.post("/predict/captcha?model=general", files={"file": ("c.png", png_bytes(image), "image/png")})
        assert general.status_code == 200 and general.json()["model"] == "general"
        default = client.post("/predict/captcha", files={"file": ("c.png", png_bytes(image), "image/png")})
        assert default.status_code == 200 and default.json()["model"] == "ctc" and default.json()["text"] == text.lower()
        # any length up to 8 can be asked of it: 40 columns
        five = client.post("/predict/captcha?model=general&length=7", files={"file": ("c.png", png_bytes(image), "image/png")})
        assert five.status_code == 200 and len(five.json()["text"]) == 7


def test_the_committed_general_reader_reads_styles_the_seed_reader_cannot(client):
    """Real captchas of two mix styles (fresh seed, lengths 1-8) through the service: the general
    reader reads most of them, the seed-style reader almost none; both answer in the same shape."""
    from training.captcha_mix import samples

    items = [item for family in ("wheezy", "pil_lines") for _, item in zip(range(12), samples(family, 31337))]
    right = {"general": 0, "ctc": 0}
    for text, image in items:
        png = png_bytes(image)
        for model in right:
            r = client.post(f"/predict/captcha?model={model}", files={"file": ("c.png", png, "image/png")})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == model and 0 <= body["confidence"] <= 1
            # ctc, trained on 1-8 characters, may read nothing in a style it does not know.
            assert body["text"] == body["text"].lower() and len(body["text"]) <= 8
            right[model] += body["text"] == text.lower()
    assert right["general"] >= 0.4 * len(items), right
    assert right["ctc"] <= 0.15 * len(items), right


def test_test_time_shifts_are_chosen_on_validation_as_the_service_reads(tmp_path):
    """training.captcha_shifts: each candidate's figures are what the reader answers with those
    shifts; --write stores the best and re-reads the manifest's validation; a fine-tune from a
    reader with shifts keeps them only if they read its held-out captchas as well as one view."""
    import shutil

    from training import captcha as captcha_cli
    from training.captcha_general import family_figures, validation_sets
    from training.captcha_shifts import main as choose

    for suffix in (".json", ".safetensors"):
        shutil.copy(WEIGHTS_DIR / f"captcha_general{suffix}", tmp_path / f"captcha_general{suffix}")
    path = tmp_path / "captcha_general.json"
    data = json.loads(path.read_text())
    data["architecture"]["test_time_shifts"] = []
    data["metrics"]["validation_per_family_count"] = 10
    path.write_text(json.dumps(data))
    candidates = {"0,0": [], "0,0;0,-1;0,1": [[0, 0], [0, -1], [0, 1]]}
    val = tmp_path / "val"
    result = choose([str(path), "--count", "20", "--val-dir", str(val), "--candidates", "|".join(candidates),
                     "--threads", "1", "--write"])
    model, _ = load_checkpoint(path)
    sets = validation_sets(val, 20)
    assert set(result["figures"]) == set(candidates)
    for name, shifts in candidates.items():
        model.config.test_time_shifts = shifts
        served = family_figures(model, sets, torch.device("cpu"))
        assert result["figures"][name] == {f: served[f]["full_string_accuracy"] for f in served}, name

    written = json.loads(path.read_text())
    chosen = candidates[result["best"]]
    assert written["architecture"]["test_time_shifts"] == chosen
    assert written["metrics"]["test_time_shifts"]["chosen"] == result["best"]
    assert ("reads 3 shifted copies" in written["description"]) == bool(chosen)
    model, _ = load_checkpoint(path)
    assert model.config.test_time_shifts == chosen
    assert written["metrics"]["validation_per_family"] == family_figures(model, validation_sets(val, 10),
                                                                         torch.device("cpu"))

    written["architecture"]["test_time_shifts"] = [[0, 0], [0, -1], [0, 1]]
    path.write_text(json.dumps(written))
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, (text, image) in enumerate(seed_captchas(60, seed=33)):
        image.save(folder / f"{text}_{i:03d}.png")
    tuned = captcha_cli.main(["finetune", "--folder", str(folder), "--name", "mine", "--minutes", "0.05", "--init",
                              str(path), "--out", str(tmp_path / "out"), "--threads", "1", "--no-progress"])
    tuned = json.loads(tuned.read_text())
    views = tuned["metrics"]["test_time_shifts"]
    kept = views["views_full_string_accuracy"] >= views["one_view_full_string_accuracy"]
    assert tuned["architecture"]["test_time_shifts"] == views["chosen"] == ([[0, 0], [0, -1], [0, 1]] if kept else [])


def test_precise_bn_statistics_are_the_plain_mean_over_the_batches():
    """training.common.precise_bn: each BatchNorm the batches reach gets as running mean the mean
    of its inputs over all of them, as variance the mean of the batches' unbiased variances; the
    o/0 glyph net, which the reader's forward pass never reaches, keeps its statistics."""
    from training.captcha_lib import pixel_batches
    from training.common import precise_bn

    model, manifest = load_checkpoint(WEIGHTS_DIR / "captcha_ctc.json")
    assert model.o0 is not None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    size = (manifest.input["height"], manifest.input["width"])
    pixels = np.random.default_rng(0).integers(0, 256, (96 + 7, *size), np.uint8)  # 3 batches of 32, 7 left out
    inputs = []
    hook = norm.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    with torch.no_grad():
        for x in pixel_batches(pixels, 32):
            model(x)
    hook.remove()
    assert len(inputs) == 3
    precise_bn(model, pixel_batches(pixels, 32))
    assert not model.training and norm.momentum == 0.1
    means = torch.stack([b.mean((0, 2, 3)) for b in inputs])  # (3, C)
    variances = torch.stack([b.transpose(0, 1).flatten(1).var(1) for b in inputs])
    torch.testing.assert_close(norm.running_mean, means.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, variances.mean(0), rtol=1e-4, atol=1e-5)
    assert norm.num_batches_tracked == 3
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("o0."))
    assert not all(torch.equal(after[k], v) for k, v in before.items() if "running_mean" in k)


def test_precise_bn_is_written_only_when_validation_reads_better(tmp_path):
    """training.captcha_bn: a reader whose statistics are off gets them re-estimated and written
    (only the statistics move; the manifest's validation is what it now answers); run again on
    the same images, nothing reads better and the files stay as they are."""
    import shutil

    from safetensors.torch import load_file, save_file

    from training.captcha_bn import main as recalibrate
    from training.captcha_general import family_figures, validation_sets

    for suffix in (".json", ".safetensors"):
        shutil.copy(WEIGHTS_DIR / f"captcha_general{suffix}", tmp_path / f"captcha_general{suffix}")
    path = tmp_path / "captcha_general.json"
    data = json.loads(path.read_text())
    data["metrics"]["validation_per_family_count"] = 12
    path.write_text(json.dumps(data))
    weights = tmp_path / "captcha_general.safetensors"
    state = load_file(str(weights))  # statistics well off: the variances 9x, the means moved
    save_file({k: v * 9 if k.endswith("running_var") else v + 0.5 if k.endswith("running_mean") else v
               for k, v in state.items()}, str(weights))
    shards = tmp_path / "shards"
    shards.mkdir()
    render_shard(shards / "shard_000001.npz", {"seed": 40, "pil_lines": 40, "wheezy": 40}, seed=5)
    val = tmp_path / "val"
    original = {k: v.clone() for k, v in load_checkpoint(path)[0].state_dict().items()}
    args = [str(path), "--shards", str(shards), "--images", "96", "--batch-size", "32", "--val-dir", str(val),
            "--threads", "1", "--write"]
    result = recalibrate(args)
    assert result["kept"] and result["means"]["after"] > result["means"]["before"]
    model, manifest = load_checkpoint(path)
    assert manifest.storage == "float16" and manifest.training["precise_bn"]["images"] == 96
    assert manifest.training["precise_bn"]["mix_full_string_accuracy_after"] == result["means"]["after"]
    assert manifest.metrics["validation_per_family"] == result["after"] == family_figures(
        model, validation_sets(val, 12), torch.device("cpu"))
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, original[k])}
    assert moved and all("running_" in k or "num_batches" in k for k in moved)  # only the statistics

    written = path.read_bytes(), weights.read_bytes()
    again = recalibrate(args)
    assert not again["kept"] and (path.read_bytes(), weights.read_bytes()) == written


def test_o0_glyph_net_for_the_general_reader_trains_on_its_own_families(tmp_path, monkeypatch):
    """o/0-rich captchas drawn from the general mix's families -> a glyph net on the general
    reader's CTC runs, exported under the reader's own name with its figures per family, read
    from the validation captchas' sources as the service prepares an upload."""
    import training.captcha_general as general
    import training.captcha_o0 as o0_cli
    from models.captcha_o0 import INDEX_O, INDEX_ZERO
    from training.captcha_mix import HELD_OUT_FAMILIES, TRAIN_FAMILIES

    def data(out, family, count, seed):
        o0_cli.main(["data", "--family", family, "--count", str(count), "--seed", str(seed), "--lengths", "4-6",
                     "--o0-share", "0.6", "--workers", "1", "--out", str(tmp_path / out)])
        return o0_cli.load_o0_set(tmp_path / out)

    full, labels, meta = data("train", "mix", 36, 7)
    assert meta["family"] == "mix" and full.shape == (36, 60, 160) and set((labels >= 0).sum(1)) <= {4, 5, 6}
    assert np.isin(labels[labels >= 0], [INDEX_O, INDEX_ZERO]).mean() > 0.4  # o/0-rich
    assert np.array_equal(data("again", "mix", 36, 7)[0], full)  # the same set from the same seed
    # one family alone draws other pixels than the mix's turns (whose first captcha is the seed's style)
    assert not np.array_equal(data("lines", "pil_lines", 6, 7)[0], full[:6])
    data("val", "mix", 24, 8)
    with pytest.raises(SystemExit):  # the held-out families stay out of training
        data("held_out", HELD_OUT_FAMILIES[-1], 6, 9)

    monkeypatch.setattr(general, "VAL_PER_FAMILY", 3)
    o0_cli.main(["train", "--reader", str(WEIGHTS_DIR / "captcha_general.json"), "--data", str(tmp_path / "train"),
                 "--val", str(tmp_path / "val"), "--out", str(tmp_path / "out"), "--epochs", "1", "--batch-size", "16",
                 "--threads", "1", "--no-progress"])
    model, manifest = load_checkpoint(tmp_path / "out" / "captcha_general.json")
    assert model.o0 is not None and manifest.served_name() == "general" and "full_resolution" in manifest.input
    assert "full_string_accuracy" not in manifest.metrics  # never ranks as the default reader
    with_o0, alone = manifest.metrics, manifest.metrics["reader_alone"]
    assert set(with_o0["validation_per_family"]) == set(TRAIN_FAMILIES + HELD_OUT_FAMILIES)
    assert manifest.training["o0"]["validation"] == {"alone": alone["mix_full_string_accuracy"],
                                                      "with_o0": with_o0["mix_full_string_accuracy"]}
    # The reader alone from the sources, as served = its figures on the cached validation sets (the same captchas).
    reader, _ = load_checkpoint(WEIGHTS_DIR / "captcha_general.json")
    cached = general.family_figures(reader, general.validation_sets(tmp_path / "cached", 3), torch.device("cpu"))
    assert alone["validation_per_family"] == cached
    assert alone["mix_full_string_accuracy"] == general.mix_mean(
        {f: v["full_string_accuracy"] for f, v in cached.items()})
