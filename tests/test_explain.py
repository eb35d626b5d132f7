"""Explain views: the step-by-step pass reproduces PyTorch's recurrent layers, gates are gates,
the API answers on every served variant, and captcha characters are placed where they are."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import WEIGHTS_DIR
from models.checkpoint import load_checkpoint
from models.explain import row_importance, step_by_step
from testkit import drawn_digit, png_bytes

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_step_by_step_reproduces_pytorch_row_by_row_in_every_layer(cell):
    torch.manual_seed(0)
    rnn = CELLS[cell](input_size=28, hidden_size=24, num_layers=3, batch_first=True).eval()
    x = torch.randn(4, 28, 28)
    with torch.inference_mode():
        out, state = rnn(x)
    traces = step_by_step(rnn, x)
    assert len(traces) == 3
    torch.testing.assert_close(traces[-1].hidden, out, rtol=0, atol=1e-5)  # h_t of the last layer, every row
    h_n = state[0] if cell == "lstm" else state
    for k, trace in enumerate(traces):  # every layer's last step, and the LSTM's cell states
        torch.testing.assert_close(trace.hidden[:, -1], h_n[k], rtol=0, atol=1e-5)
        if cell == "lstm":
            torch.testing.assert_close(trace.cell[:, -1], state[1][k], rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["lstm", "gru", "rnn"])
def test_committed_networks_traced_and_gates_lie_in_0_1(variant):
    model, manifest = load_checkpoint(WEIGHTS_DIR / f"digits_{variant}.json")
    x = torch.randn(3, 28, 28)
    with torch.inference_mode():
        out, _ = model.rnn(x)
    traces = step_by_step(model.rnn, x)
    torch.testing.assert_close(traces[-1].hidden, out, rtol=0, atol=1e-5)
    expected = {"lstm": {"input", "forget", "output"}, "gru": {"update", "reset"}, "rnn": set()}[variant]
    assert set(traces[-1].gates) == expected
    for gate in traces[-1].gates.values():
        assert gate.shape == (3, 28, model.config.hidden_size) and gate.min() >= 0 and gate.max() <= 1
    if variant != "rnn":
        assert traces[-1].candidate.abs().max() <= 1


def test_row_importance_is_zero_for_empty_rows_and_finds_the_ink():
    model, manifest = load_checkpoint(WEIGHTS_DIR / "digits_lstm.json")
    from models.preprocess import prepare_digit

    x, canvas = prepare_digit(drawn_digit(1), manifest.input)
    norm = manifest.input["normalize"]
    blank = -norm["mean"] / norm["std"]
    answer = model(x).argmax(-1)
    drop, log_drop = row_importance(model, x, answer, blank)
    empty = [r for r in range(28) if canvas[r].max() == 0]
    assert empty and all(abs(log_drop[0, r]) < 1e-6 and abs(drop[0, r]) < 1e-6 for r in empty)
    inked = [r for r in range(28) if canvas[r].max() > 0.5]
    assert max(log_drop[0, r] for r in inked) > 0  # some row of ink matters


@pytest.mark.parametrize("variant", ["lstm", "gru", "rnn"])
def test_predict_digit_explain_on_every_variant(client, variant):
    upload = {"file": ("d.png", png_bytes(drawn_digit(7)), "image/png")}
    plain = client.post(f"/predict/digit?model={variant}", files=upload).json()
    body = client.post(f"/predict/digit?model={variant}&explain=true", files=upload).json()
    assert "explain" not in plain and body["digit"] == plain["digit"] == 7
    assert body["probabilities"] == pytest.approx(plain["probabilities"], abs=1e-5)
    e = body["explain"]
    gates = {"lstm": {"input", "forget", "output"}, "gru": {"update", "reset"}, "rnn": set()}[variant]
    assert e["cell"] == variant and e["layer"] == e["layers"] >= 2 and set(e["gates"]) == gates
    for series in [*e["gates"].values(), e["hidden_norm"], e["row_importance"], e["row_importance_log_odds"]]:
        assert len(series) == 28
    assert all(0 <= v <= 1 for g in e["gates"].values() for v in g)
    assert (e.get("cell_norm") is not None) == (variant == "lstm")
    assert (e.get("candidate") is not None) == (variant != "rnn")
    assert len(e["units"]) == 8 and all(len(u["values"]) == 28 for u in e["units"])
    assert len({u["unit"] for u in e["units"]}) == 8


def test_explain_is_a_bad_value_gets_422(client):
    upload = {"file": ("d.png", png_bytes(drawn_digit(7)), "image/png")}
    response = client.post("/predict/digit?explain=maybe", files=upload)
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("variant", ["seq2seq", "ctc"])
def test_captcha_characters_are_placed_left_to_right(client, variant):
    from training.captcha_data import CaptchaGenerator

    generator = CaptchaGenerator(2024)
    ordered = 0
    for k in range(12):
        image = generator.image(generator.text())
        body = client.post(f"/predict/captcha?model={variant}&explain=true",
                           files={"file": ("c.png", png_bytes(image), "image/png")}).json()
        spans = [c["span"] for c in body["characters"]]
        for c in body["characters"]:
            assert len(c["weights"]) == image.width and sum(c["weights"]) == pytest.approx(1, abs=1e-3)
            assert 0 <= c["span"][0] < c["span"][1] <= image.width
        centres = [(x0 + x1) / 2 for x0, x1 in spans]
        ordered += centres == sorted(centres) and len(set(centres)) == len(centres)
    assert ordered == 12


def test_captcha_spans_are_in_the_uploads_pixels(client):
    from training.captcha_data import CaptchaGenerator

    image = CaptchaGenerator(7).image("ab3K")
    small = client.post("/predict/captcha?model=ctc&explain=true", files={"file": ("c.png", png_bytes(image), "image/png")})
    big = client.post("/predict/captcha?model=ctc&explain=true",
                      files={"file": ("c.png", png_bytes(image.resize((320, 120))), "image/png")})
    for a, b in zip(small.json()["characters"], big.json()["characters"]):
        assert len(b["weights"]) == 320
        assert abs((b["span"][0] + b["span"][1]) / 2 - (a["span"][0] + a["span"][1])) <= 8  # centres scale 2x
    plain = client.post("/predict/captcha", files={"file": ("c.png", png_bytes(image), "image/png")}).json()
    assert all(set(c) == {"char", "confidence", "top3"} for c in plain["characters"])
