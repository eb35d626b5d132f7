"""HTTP contract of the digits service on the committed weights."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from conftest import WEIGHTS_DIR, mnist_image
from testkit import drawn_digit, png_bytes

CELLS = ["rnn", "lstm", "gru"]


def post_png(client, image: Image.Image, query: str = "", fmt: str = "PNG"):
    return client.post(f"/predict/digit{query}", files={"file": (f"d.{fmt.lower()}", png_bytes(image, fmt), f"image/{fmt.lower()}")})


def assert_error(resp, status: int, code: str):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def test_health_ready_and_models(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert sorted(ready.json()["models"]["digits"]) == sorted(CELLS)
    models = client.get("/models").json()
    digits = {m["variant"]: m for m in models["models"] if m["task"] == "digits"}
    assert sorted(digits) == sorted(CELLS)
    for cell, m in digits.items():
        assert m["architecture"]["cell"] == cell
        assert m["parameters"] > 0 and m["device"] == "cpu"
        assert 0.9 < m["metrics"]["mnist_test_accuracy"] <= 1.0
    best = max(digits, key=lambda c: digits[c]["metrics"]["mnist_test_accuracy"])
    assert models["defaults"]["digits"] == best


def test_readyz_is_503_without_models(tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    with TestClient(create_app(Settings(models_dir=tmp_path, device="cpu"))) as c:
        resp = c.get("/readyz")
        assert resp.status_code == 503 and resp.json()["status"] == "not_ready"
        assert c.get("/healthz").status_code == 200
        assert_error(post_png(c, drawn_digit(1)), 503, "model_unavailable")


@pytest.mark.parametrize("digit", range(10))
def test_drawn_digits_are_read_by_the_default_model(client, digit):
    resp = post_png(client, drawn_digit(digit))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["digit"] == digit, body
    assert body["model"] == client.get("/models").json()["defaults"]["digits"]
    assert len(body["probabilities"]) == 10 and sum(body["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert body["confidence"] == max(body["probabilities"])
    assert "steps" not in body and "input" not in body


@pytest.mark.parametrize("cell", CELLS)
def test_each_cell_answers_with_steps_and_echo(client, cell):
    resp = post_png(client, drawn_digit(7), f"?model={cell}&steps=true&echo=true")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == cell and body["digit"] == 7
    steps = np.array(body["steps"])
    assert steps.shape == (28, 10)
    np.testing.assert_allclose(steps.sum(1), 1.0, atol=1e-3)
    # The last row's answer is the answer; the first rows (blank top margin) are unsure.
    np.testing.assert_allclose(steps[-1], body["probabilities"], atol=1e-4)
    assert steps[0].max() < body["confidence"]
    assert body["input"].startswith("data:image/png;base64,")
    seen = Image.open(io.BytesIO(base64.b64decode(body["input"].split(",", 1)[1])))
    assert seen.size == (28, 28) and seen.mode == "L"
    arr = np.asarray(seen)
    assert arr[0].max() == 0 and arr.max() == 255  # white ink on black, empty margin


def test_same_digit_in_many_formats_gets_the_same_answer(client, mnist_test):
    images, labels = mnist_test
    for index in (0, 1, 2, 3, 4):
        big = mnist_image(images[index], scale=10)
        inverted = Image.fromarray(255 - np.asarray(big), "L")
        rgba = Image.fromarray(np.dstack([np.zeros((280, 280, 3), np.uint8), np.asarray(big)]), "RGBA")
        answers = set()
        for img, fmt in [(big, "PNG"), (inverted, "JPEG"), (rgba, "PNG"), (inverted, "GIF"), (inverted, "BMP"),
                         (inverted.convert("RGB"), "WEBP")]:
            resp = post_png(client, img, fmt=fmt)
            assert resp.status_code == 200, (fmt, resp.text)
            answers.add(resp.json()["digit"])
        assert answers == {int(labels[index])}


def test_json_base64_and_data_url_and_raw_body(client):
    raw = png_bytes(drawn_digit(3))
    b64 = base64.b64encode(raw).decode()
    for payload in (b64, "data:image/png;base64," + b64):
        resp = client.post("/predict/digit", json={"image": payload})
        assert resp.status_code == 200 and resp.json()["digit"] == 3, resp.text
    resp = client.post("/predict/digit?model=lstm", content=raw, headers={"content-type": "image/png"})
    assert resp.status_code == 200 and resp.json()["digit"] == 3 and resp.json()["model"] == "lstm"


def test_blank_image_is_no_digit(client):
    assert_error(post_png(client, Image.new("RGBA", (280, 280), (0, 0, 0, 0))), 422, "no_digit")
    assert_error(post_png(client, Image.new("RGB", (50, 30), (255, 255, 255))), 422, "no_digit")


def test_unknown_model_is_422(client):
    resp = post_png(client, drawn_digit(1), "?model=transformer")
    assert_error(resp, 422, "unknown_model")
    assert "gru" in resp.json()["error"]["message"]


@pytest.mark.parametrize("data,ctype,status", [
    (b"hello, I am not an image", "text/plain", 415),
    (b"<html><body>hi</body></html>", "text/html", 415),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png", 415),  # PNG signature, then garbage: unreadable
])
def test_not_an_image_is_invalid_image(client, data, ctype, status):
    resp = client.post("/predict/digit", files={"file": ("x", data, ctype)})
    assert_error(resp, status, "invalid_image")


def test_truncated_png_is_invalid_image(client):
    data = png_bytes(drawn_digit(5))
    assert_error(client.post("/predict/digit", files={"file": ("x.png", data[: len(data) // 2], "image/png")}),
                 422, "invalid_image")


def test_request_shape_errors(client):
    good = png_bytes(drawn_digit(2))
    assert_error(client.post("/predict/digit", files={"image": ("x.png", good, "image/png")}), 422, "missing_file")
    assert_error(client.post("/predict/digit", files={"file": ("x.png", b"", "image/png")}), 422, "invalid_image")
    assert_error(client.post("/predict/digit"), 422, "missing_file")
    assert_error(client.post("/predict/digit", json={"img": "abc"}), 422, "missing_file")
    assert_error(client.post("/predict/digit", json={"image": "not base64 at all!"}), 422, "invalid_base64")
    assert_error(client.post("/predict/digit", content=b"{nope", headers={"content-type": "application/json"}),
                 422, "invalid_json")
    assert_error(client.post("/predict/digit", content=b"abc", headers={"content-type": "application/xml"}),
                 415, "unsupported_media_type")
    assert_error(client.post("/predict/digit?steps=maybe", files={"file": ("x.png", good, "image/png")}),
                 422, "invalid_request")
    assert_error(client.get("/predict/digit"), 405, "method_not_allowed")
    assert_error(client.get("/no/such/route"), 404, "not_found")


def test_too_large_body_is_413(client):
    limit = client.app.state.settings.max_upload_bytes
    resp = client.post("/predict/digit", files={"file": ("big.png", b"\0" * (limit + 1), "image/png")})
    assert_error(resp, 413, "too_large")


def test_too_many_pixels_is_413(client):
    # A valid, tiny-on-the-wire PNG whose pixel count is over the limit.
    settings = client.app.state.settings
    side = int(settings.max_image_pixels ** 0.5) + 10
    data = png_bytes(Image.new("1", (side, side), 1), optimize=True)
    assert len(data) < settings.max_upload_bytes
    assert_error(client.post("/predict/digit", files={"file": ("huge.png", data, "image/png")}), 413, "image_too_large")


def test_openapi_declares_response_schemas(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/predict/digit"]["post"]
    assert {"200", "413", "415", "422"} <= set(op["responses"])
    assert "DigitPrediction" in op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert "ErrorResponse" in op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    assert {"multipart/form-data", "application/json"} <= set(op["requestBody"]["content"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn." not in docs.text  # works offline
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_page_is_served(client):
    resp = client.get("/")
    assert resp.status_code == 200 and "text/html" in resp.headers["content-type"]
    assert "rnnlab" in resp.text


def test_one_admission_per_digit_request_with_typicality_inside(tmp_path):
    """The digit route scores typicality inside its own micro-batch: one batcher, one queue
    slot and one forward pass per request, and the same typicality /predict/reconstruct gives."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(models_dir=WEIGHTS_DIR, device="cpu"))
    upload = {"file": ("d.png", png_bytes(drawn_digit(4)), "image/png")}
    with TestClient(app) as c:
        digit = c.post("/predict/digit", files=upload).json()
        batchers = list(app.state.batching.batchers.values())
        assert [b.name for b in batchers] == [app.state.registry.pick("digits", None).name]
        assert (batchers[0].stats.batches, batchers[0].stats.items) == (1, 1)
        reconstruction = c.post("/predict/reconstruct", files=upload).json()
    assert digit["digit"] == 4 and 0 <= digit["typicality"] <= 1
    assert digit["typicality"] == reconstruction["typicality"]


def test_a_batch_mixing_steps_and_plain_requests_answers_each_as_asked(client):
    """Per-row answers are computed only for batches that need them, and never change the answer."""
    import torch

    from app.routers.digits import DigitItem, DigitReader, digit_batch
    from models.preprocess import prepare_digit

    registry = client.app.state.registry
    entry = registry.pick("digits", None)
    reader = DigitReader(entry, registry.pick("autoencoder", None))
    inputs = [prepare_digit(drawn_digit(d), entry.manifest.input) for d in (1, 7)]
    with torch.inference_mode():
        plain = digit_batch(reader, [DigitItem(*i, steps=False) for i in inputs])
        mixed = digit_batch(reader, [DigitItem(*inputs[0], steps=True), DigitItem(*inputs[1], steps=False)])
    assert [r.steps for r in plain] == [None, None] and mixed[1].steps is None
    assert len(mixed[0].steps) == 28 and all(len(row) == 10 for row in mixed[0].steps)
    assert mixed[0].steps[-1] == pytest.approx(mixed[0].probabilities, abs=1e-6)  # the last row is the answer
    for a, b in zip(plain, mixed):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6) and a.typicality == b.typicality
