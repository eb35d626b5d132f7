"""`python -m training.captcha finetune`: folder checks, a short real fine-tune on 5-character
captchas, the service serving it as model=NAME without a restart, and HTTP answering exactly
what the trainer's evaluation reads."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import WEIGHTS_DIR
from training import captcha as captcha_cli
from training.captcha_data import CaptchaGenerator


def write_captchas(folder: Path, count: int, seed: int, length: int) -> list[tuple[Path, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    gen = CaptchaGenerator(seed, length=length)
    items = []
    for i in range(count):
        text, image = gen.sample()
        path = folder / f"{text}_{i:04d}.png"
        image.save(path)
        items.append((path, text.lower()))
    return items


def finetune(*args: str) -> Path:
    return captcha_cli.main(["finetune", "--threads", "1", "--no-progress", *args])


def refused(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exc:
        finetune(*args)
    return str(exc.value.code) + capsys.readouterr().err


def test_folders_that_cannot_be_trained_on_are_refused_naming_the_files(tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in refused(capsys, "--folder", str(empty), "--name", "x", "--out", str(out))

    few = tmp_path / "few"
    write_captchas(few, 12, seed=1, length=4)
    message = refused(capsys, "--folder", str(few), "--name", "x", "--out", str(out))
    assert "12 labelled" in message and "at least 50" in message

    bad = tmp_path / "bad"
    write_captchas(bad, 60, seed=2, length=4)
    (bad / "junk_1.png").write_bytes(b"not a png")
    Image.new("RGB", (160, 60), "white").save(bad / "_nolabel.png")
    message = refused(capsys, "--folder", str(bad), "--name", "x", "--out", str(out))
    assert "junk_1.png" in message and "_nolabel.png" in message and "empty label" in message

    only_digits = refused(capsys, "--folder", str(few), "--name", "x", "--out", str(out), "--charset", "0123456789")
    assert "outside --charset" in only_digits
    assert "--name" in refused(capsys, "--folder", str(few), "--name", "Bad Name!", "--out", str(out))
    assert not out.exists()  # nothing half-written


def test_a_finetuned_reader_is_served_without_a_restart_and_answers_as_in_training(tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings
    from models.checkpoint import load_checkpoint
    from models.preprocess import captcha_pixels
    from training.captcha_finetune import read_texts

    models = tmp_path / "models"
    models.mkdir()
    for suffix in (".json", ".safetensors"):
        (models / f"captcha_ctc{suffix}").symlink_to(WEIGHTS_DIR / f"captcha_ctc{suffix}")
    folder = tmp_path / "mine"
    items = write_captchas(folder, 60, seed=5, length=5)
    # The start reader reads three shifted views; --views start passes them on, so the parity
    # below holds for a reader that averages views too.
    start = tmp_path / "start"
    start.mkdir()
    shifts = [[0, 0], [0, -1], [0, 1]]
    start_manifest = json.loads((WEIGHTS_DIR / "captcha_ctc.json").read_text())
    start_manifest["architecture"]["test_time_shifts"] = shifts
    (start / "captcha_ctc.json").write_text(json.dumps(start_manifest))
    (start / "captcha_ctc.safetensors").symlink_to(WEIGHTS_DIR / "captcha_ctc.safetensors")

    app = create_app(Settings(models_dir=models, device="cpu", models_watch_s=0.2))
    with TestClient(app) as client:
        assert "five" not in client.get("/readyz").json()["models"]["captcha"]
        # trained with a bf16 forward pass; evaluated and served in fp32 all the same
        json_path = finetune("--folder", str(folder), "--name", "five", "--minutes", "0.1", "--out", str(models),
                             "--precision", "bf16", "--init", str(start / "captcha_ctc.json"), "--views", "start")
        assert json_path == models / "captcha_five.json"
        written = json.loads(json_path.read_text())
        assert written["training"]["precision"].startswith("bf16")
        assert written["architecture"]["test_time_shifts"] == shifts
        assert written["metrics"]["test_time_shifts"]["chosen"] == shifts
        assert written["metrics"]["full_string_accuracy"] == written["metrics"]["test_time_shifts"]["views_full_string_accuracy"]
        deadline = time.monotonic() + 15
        while "five" not in client.get("/readyz").json()["models"]["captcha"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sorted(client.get("/readyz").json()["models"]["captcha"]) == ["ctc", "five"]
        served = {m["variant"]: m for m in client.get("/models").json()["models"]}
        assert served["five"]["name"] == "captcha_five" and served["five"]["network"] == "ctc"

        # Parity: every image through HTTP reads as the trainer's evaluation reads it.
        model, manifest = load_checkpoint(json_path)
        # At the reader's own input size, as the trainer and the service read (the widened ctc
        # reads 128x32; captcha_pixels' default is the seed readers' 96x32).
        size = (manifest.input["height"], manifest.input["width"])
        pixels = np.stack([captcha_pixels(Image.open(p), *size) for p, _ in items])
        trained = read_texts(model, pixels, "cpu", manifest.answers)
        answered = []
        for path, _ in items:
            resp = client.post("/predict/captcha?model=five", files={"file": (path.name, path.read_bytes(), "image/png")})
            assert resp.status_code == 200 and resp.json()["model"] == "five"
            answered.append(resp.json()["text"])
        assert answered == trained
        assert sum(a == t for a, (_, t) in zip(answered, items)) >= 50  # and it reads them (5 characters)

        # A broken manifest is reported and leaves the others serving; removing it clears it.
        (models / "captcha_broken.json").write_text("{not json")
        deadline = time.monotonic() + 15
        while "captcha_broken.json" not in client.get("/readyz").json()["errors"] and time.monotonic() < deadline:
            time.sleep(0.2)
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"
        assert "captcha_broken.json" in client.get("/models").json()["errors"]
        path, text = items[0]
        resp = client.post("/predict/captcha?model=five", files={"file": (path.name, path.read_bytes(), "image/png")})
        assert resp.status_code == 200
        (models / "captcha_broken.json").unlink()
        (models / "captcha_five.json").unlink()
        deadline = time.monotonic() + 15
        while client.get("/readyz").json()["status"] != "ready" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.get("/readyz").json() == {"status": "ready", "models": {"captcha": ["ctc"]}, "errors": {}}
        resp = client.post("/predict/captcha?model=five", files={"file": (path.name, path.read_bytes(), "image/png")})
        assert resp.status_code == 422 and resp.json()["error"]["code"] == "unknown_model"


def test_a_reader_of_your_own_captchas_never_becomes_the_default(tmp_path):
    """Its figures are measured on your held-out captchas, not the seed generator's: however high
    they are, a plain /predict/captcha keeps a reader of the seed's captchas of any length."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    models = tmp_path / "models"
    models.mkdir()
    for variant in ("ctc", "seq2seq", "mine"):
        source = "ctc" if variant == "mine" else variant
        (models / f"captcha_{variant}.safetensors").symlink_to(WEIGHTS_DIR / f"captcha_{source}.safetensors")
    for variant in ("ctc", "seq2seq"):
        (models / f"captcha_{variant}.json").symlink_to(WEIGHTS_DIR / f"captcha_{variant}.json")
    # As `training.captcha finetune` writes it: a reader that read all of its held-out captchas.
    mine = json.loads((WEIGHTS_DIR / "captcha_ctc.json").read_text())
    mine.update(name="captcha_mine", weights="captcha_mine.safetensors",
                metrics={"full_string_accuracy": 1.0, "char_accuracy": 1.0, "holdout_samples": 200,
                         "holdout_before_full_string_accuracy": 0.1})
    (models / "captcha_mine.json").write_text(json.dumps(mine))

    with TestClient(create_app(Settings(models_dir=models, device="cpu"))) as client:
        listing = client.get("/models").json()
        assert {m["variant"] for m in listing["models"]} == {"ctc", "seq2seq", "mine"}
        # ctc reads 4, 5 and 6 characters best at its worst of the three (each manifest measures each).
        assert listing["defaults"]["captcha"] == "ctc"
        items = write_captchas(tmp_path / "six", 1, seed=11, length=6)
        path, _ = items[0]
        body = client.post("/predict/captcha", files={"file": (path.name, path.read_bytes(), "image/png")}).json()
        assert body["model"] == "ctc" and len(body["text"]) == 6


def test_the_start_readers_views_are_kept_only_when_they_read_the_held_out_captchas_as_well():
    import torch

    from models.captcha_ctc import CaptchaCTC, CaptchaCTCConfig
    from training.captcha_finetune import choose_views, read_texts

    torch.manual_seed(0)
    model = CaptchaCTC(CaptchaCTCConfig()).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (40, model.config.height, model.config.width), np.uint8)
    shifts = [[0, 0], [3, 0], [-3, 0], [0, 2]]
    one = read_texts(model, pixels, "cpu")
    model.config.test_time_shifts = shifts
    many = read_texts(model, pixels, "cpu")
    model.config.test_time_shifts = []
    assert one != many  # the views change some readings, so the held-out figures can tell them apart

    # Truth as the views read: auto keeps them; the model is left reading them.
    texts, figures, note = choose_views(model, pixels, many, "cpu", None, shifts)
    assert texts == many and figures["full_string_accuracy"] == 1.0
    assert model.config.test_time_shifts == shifts == note["chosen"]
    assert note["one_view_full_string_accuracy"] < note["views_full_string_accuracy"] == 1.0
    # Truth as one view reads: auto drops them.
    texts, figures, note = choose_views(model, pixels, one, "cpu", None, shifts)
    assert texts == one and model.config.test_time_shifts == [] == note["chosen"]
    # --views start / none decide whatever the figures; no shifts to start with: nothing to choose.
    assert choose_views(model, pixels, one, "cpu", None, shifts, "start")[0] == many
    assert model.config.test_time_shifts == shifts
    texts, _, note = choose_views(model, pixels, many, "cpu", None, shifts, "none")
    assert texts == one and model.config.test_time_shifts == [] == note["chosen"]
    assert choose_views(model, pixels, one, "cpu", None, [])[2] is None


def test_batchnorm_statistics_are_re_estimated_unless_the_held_out_captchas_read_worse():
    import torch

    from models.checkpoint import load_checkpoint
    from models.preprocess import captcha_pixels
    from training.captcha_finetune import accuracy, choose_statistics, read_texts

    model, manifest = load_checkpoint(WEIGHTS_DIR / "captcha_ctc.json")
    size = (manifest.input["height"], manifest.input["width"])
    gen = CaptchaGenerator(21)
    items = [gen.sample() for _ in range(64 + 32)]
    pixels = np.stack([captcha_pixels(image, *size) for _, image in items])
    truth = [text.lower() for text, _ in items[64:]]
    trained = {k: v.clone() for k, v in model.state_dict().items()}

    # Statistics from training images of one kind: kept or not as the held-out figures say.
    note, _ = choose_statistics(model, pixels[:64], pixels[64:], truth, "cpu", None)
    assert note["holdout_full_string_accuracy_before"] == accuracy(
        read_texts(load_checkpoint(WEIGHTS_DIR / "captcha_ctc.json")[0], pixels[64:], "cpu"), truth)["full_string_accuracy"]
    moved = any(not torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    assert note["kept"] == (note["holdout_full_string_accuracy_after"] >= note["holdout_full_string_accuracy_before"])
    assert moved == note["kept"]
    # Statistics from blank images read the held-out captchas worse: the trained ones stay.
    model.load_state_dict(trained)
    blank = np.full((64, *size), 255, np.uint8)
    note, _ = choose_statistics(model, blank, pixels[64:], truth, "cpu", None)
    assert not note["kept"] and note["holdout_full_string_accuracy_after"] < note["holdout_full_string_accuracy_before"]
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
