"""The seq2seq reader with an end token (answers of any length up to its `length`), the
conversion of a fixed-length reader to one, and a reader widened to more input columns."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.captcha_common import CHARSET, NUM_CHARS, parse_constraints
from models.captcha_ctc import CaptchaCTC, CaptchaCTCConfig
from models.captcha_seq2seq import END, CaptchaSeq2Seq, CaptchaSeq2SeqConfig, read_seq2seq
from models.manifest import Manifest
from training.captcha_lengths import merge, record_chunk, seq2seq_loss, widen, with_end_token

TINY = dict(channels=[4, 8, 8, 8], encoder_hidden=16, decoder_hidden=24, attention_size=16)


def end_token_reader(length: int = 8) -> CaptchaSeq2Seq:
    torch.manual_seed(0)
    return CaptchaSeq2Seq(CaptchaSeq2SeqConfig(end_token=True, length=length, **TINY)).eval()


def step_logits(indices: list[int], steps: int = 9, sharp: float = 8.0) -> torch.Tensor:
    """(1, steps, 37) logits whose argmax per step is `indices` (then END on the remaining steps)."""
    logits = torch.zeros(1, steps, NUM_CHARS + 1)
    for t in range(steps):
        logits[0, t, indices[t] if t < len(indices) else END] = sharp
    return logits


def test_an_end_token_reader_has_one_more_step_and_class():
    model = end_token_reader()
    assert (model.config.steps, model.config.classes) == (9, 37)
    assert model(torch.randn(2, 1, 32, 96)).shape == (2, 9, 37)
    assert "up to 8 characters, then an end token" in model.describe()
    fixed = CaptchaSeq2Seq(CaptchaSeq2SeqConfig(**TINY))
    assert (fixed.config.steps, fixed.config.classes) == (4, 36)  # the reference design, unchanged


def test_reading_stops_at_the_first_end_and_counts_its_probability():
    ab = [CHARSET.index("a"), CHARSET.index("b")]
    logits = step_logits(ab + [END, CHARSET.index("c")])  # a character after the end is not read
    (reading,) = read_seq2seq(logits)
    probs = logits[0].softmax(-1)
    assert reading.text == "ab" and [c.char for c in reading.characters] == ["a", "b"]
    assert reading.confidence == pytest.approx(float(probs[0, ab[0]] * probs[1, ab[1]] * probs[2, END]), rel=1e-6)
    assert all(c.top3[0][0] == c.char and len(c.top3) == 3 for c in reading.characters)  # top3 never lists END
    model = end_token_reader()
    assert model.decode(logits) == ["ab"]
    assert read_seq2seq(step_logits([]))[0].text == ""  # ending at once: an empty answer, not a crash


def test_length_and_charset_masks_make_the_reader_write_exactly_that():
    model = end_token_reader()
    x = torch.randn(3, 1, 32, 96)
    for n in range(1, 9):
        for charset in (None, "digits", "xyz"):
            readings = model.read(x, constraints=parse_constraints(length=n, charset=charset))
            for r in readings:
                assert len(r.text) == n and len(r.characters) == n, (n, charset, r.text)
                if charset is not None:
                    allowed = parse_constraints(charset=charset).charset
                    assert set(r.text) <= set(allowed) and all(ch in allowed for c in r.characters for ch, _ in c.top3)
    mask = model.step_mask([parse_constraints(length=3)], "cpu")[0]  # (9, 37)
    assert not mask[:3, END].any() and mask[3].tolist() == [False] * NUM_CHARS + [True]
    free = model.step_mask([None], "cpu")[0]
    assert free[:8].all() and free[8].tolist() == [False] * NUM_CHARS + [True]  # 9th step: only the end
    assert all(len(r.text) <= 8 for r in model.read(torch.randn(8, 1, 32, 96)))
    end_token_reader(length=5).check_constraints(parse_constraints(length=5))
    with pytest.raises(ValueError, match="at most 5"):
        end_token_reader(length=5).check_constraints(parse_constraints(length=6))


def test_an_imposed_length_counts_in_the_string_confidence():
    """length=N forces the end onto step N: the string's confidence is the answer's probability
    under the reader's own steps (not ending before N, and ending at N, included), so a length the
    reader would not write reads as unlikely, and the length it writes anyway changes nothing."""
    model = end_token_reader()
    x = torch.randn(4, 1, 32, 96)
    with torch.no_grad():
        own = model.average_views(model.view_logits(x)[0], 4, model.step_mask([None] * 4, "cpu")).exp()  # (4, 9, 37)
    free = model.read(x)
    for n in range(1, 9):
        for i, r in enumerate(model.read(x, constraints=parse_constraints(length=n))):
            steps = [CHARSET.index(c) for c in r.text] + [END]
            assert r.confidence == pytest.approx(math.prod(float(own[i, s, k]) for s, k in enumerate(steps)), rel=1e-4)
            if len(free[i].text) == n:
                assert r.text == free[i].text and r.confidence == pytest.approx(free[i].confidence, rel=1e-4)


def test_a_charset_alone_keeps_the_length_the_reader_reads(monkeypatch):
    """A captcha of 4 letters read with charset=digits: 4 digits (the best it can do), not an empty
    answer because the end token outscored every digit at the first step."""
    model = end_token_reader()
    logits = step_logits([CHARSET.index(c) for c in "k7pk"])  # (1, 9, 37)
    logits[0, :4, END] = 3.0  # the end is the runner-up at each character step, above every digit but 7
    monkeypatch.setattr(model, "emit", lambda enc, return_attention=False:
                        (logits.expand(len(enc), -1, -1), torch.full((len(enc), 9, 24), 1 / 24)))
    x = torch.randn(2, 1, 32, 96)
    assert [r.text for r in model.read(x)] == ["k7pk", "k7pk"]
    digits, free, explicit = model.read(x[:1].expand(3, -1, -1, -1), constraints=[
        parse_constraints(charset="digits"), None, parse_constraints(charset="digits", length=2)])
    assert len(digits.text) == 4 and digits.text[1] == "7" and digits.text.isdigit()
    assert free.text == "k7pk" and len(explicit.text) == 2  # other items and an explicit length: as asked
    assert model.read(x, constraints=parse_constraints(charset="kp7"))[0].text == "k7pk"


def test_fixed_length_readers_still_take_only_their_own_length():
    fixed = CaptchaSeq2Seq(CaptchaSeq2SeqConfig(**TINY)).eval()
    fixed.check_constraints(parse_constraints(length=4))
    with pytest.raises(ValueError, match="exactly 4"):
        fixed.check_constraints(parse_constraints(length=5))


def test_the_loss_scores_each_character_and_the_end_only():
    torch.manual_seed(1)
    logits = torch.randn(2, 9, 37)
    labels = torch.tensor([[3, 5, -1, -1, -1, -1, -1, -1], [1, 2, 3, 4, 5, 6, 7, 8]])
    expected = F.cross_entropy(torch.cat([logits[0, :3], logits[1, :9]]),
                               torch.tensor([3, 5, END, 1, 2, 3, 4, 5, 6, 7, 8, END]))
    torch.testing.assert_close(seq2seq_loss(logits, labels), expected)
    changed = logits.clone()
    changed[0, 3:] = torch.randn(6, 37)  # steps after the first captcha's end do not count
    torch.testing.assert_close(seq2seq_loss(changed, labels), expected)


def _manifest(model) -> Manifest:
    return Manifest(name="m", weights="m.safetensors", task="captcha", variant=model.config.variant,
                    architecture=model.config.to_dict(),
                    input={"height": 32, "width": model.config.width, "layout": "read column by column"})


def test_converting_a_fixed_reader_keeps_what_it_read():
    torch.manual_seed(2)
    fixed = CaptchaSeq2Seq(CaptchaSeq2SeqConfig(**TINY)).eval()
    model, manifest = with_end_token(fixed, _manifest(fixed), 8, "cpu")
    assert manifest.architecture["end_token"] and manifest.architecture["length"] == 8
    assert "37" in manifest.outputs and "end" in manifest.description
    x = torch.randn(4, 1, 32, 96)
    with torch.inference_mode():
        before, after = fixed(x), model.eval()(x)
    # The decoder does not feed back its answers, so its first 4 steps are the same computation.
    torch.testing.assert_close(after[:, :4, :NUM_CHARS], before)
    torch.testing.assert_close(after[:, :, END], torch.zeros(4, 9))  # the end starts at logit 0


@pytest.mark.parametrize("variant", ["ctc", "seq2seq"])
def test_widening_keeps_the_weights_and_reads_more_columns(variant):
    torch.manual_seed(3)
    model = (CaptchaCTC(CaptchaCTCConfig(hidden_size=16, channels=[4, 8, 8, 8])) if variant == "ctc"
             else CaptchaSeq2Seq(CaptchaSeq2SeqConfig(**TINY))).eval()
    wide, manifest = widen(model, _manifest(model), 128, "cpu")
    assert wide.config.width == 128 and manifest.input["width"] == 128 and "32 columns" in manifest.input["layout"]
    assert manifest.architecture["width"] == 128 and "32x128" in manifest.description
    for name, value in model.state_dict().items():
        torch.testing.assert_close(wide.state_dict()[name], value)
    with torch.inference_mode():
        out = wide(torch.randn(2, 1, 32, 128))
    assert out.shape[1] == (32 if variant == "ctc" else 4)
    assert math.isfinite(float(out.sum()))


def test_a_batch_item_the_reader_cannot_answer_gets_its_own_error():
    """captcha_batch: a request for a length a fixed-length reader cannot write gets its
    ValueError; the others in the micro-batch read as they would alone."""
    from types import SimpleNamespace

    from app.routers.captcha import captcha_batch

    torch.manual_seed(4)
    fixed = CaptchaSeq2Seq(CaptchaSeq2SeqConfig(**TINY)).eval()
    entry = SimpleNamespace(model=fixed, device=torch.device("cpu"))
    xs = torch.randn(3, 1, 1, 32, 96)
    items = [(xs[0], None, False, None), (xs[1], None, False, parse_constraints(length=6)),
             (xs[2], None, False, parse_constraints(charset="digits"))]
    together = captcha_batch(entry, items)
    assert isinstance(together[1], ValueError) and "exactly 4" in str(together[1])
    for i in (0, 2):
        alone = captcha_batch(entry, [items[i]])[0]
        assert together[i].text == alone.text and together[i].confidence == pytest.approx(alone.confidence, rel=1e-5)
    assert set(together[2].text) <= set("0123456789")


def test_a_resumed_lengths_run_keeps_its_earlier_chunks_and_counts_each_once():
    training = {"samples_seen": 1000, "seconds": 50.0}  # the reader before it learned every length
    record_chunk(training, {"samples_seen": 300, "seconds": 20.0, "lr": 1e-3})
    assert training["lengths"] == {"samples_seen": 300, "seconds": 20.0, "lr": 1e-3}
    record_chunk(training, {"samples_seen": 700, "seconds": 60.0, "lr": 5e-4})  # --init from the first run
    record_chunk(training, {"samples_seen": 100, "seconds": 5.0, "lr": 1e-4})
    assert training["samples_seen"] == 2100 and training["seconds"] == 135.0
    assert training["lengths"]["lr"] == 1e-4
    assert [c["lr"] for c in training["lengths"]["earlier_chunks"]] == [1e-3, 5e-4]
    assert all("earlier_chunks" not in c for c in training["lengths"]["earlier_chunks"])


def test_merge_refuses_an_init_that_learned_every_length_already(tmp_path):
    from training.export import export

    tiny = CaptchaCTC(CaptchaCTCConfig(channels=[4, 8, 8, 8], hidden_size=8))
    chunk = {"samples_seen": 10, "seconds": 1.0}
    for name in ("captcha_run", "captcha_init"):
        export(tiny, {"task": "captcha", "variant": "ctc", "architecture": tiny.config.to_dict(),
                      "input": {"height": 32, "width": 96, "channels": 1}, "training": {"lengths": chunk}},
               tmp_path, name)
    with pytest.raises(SystemExit, match="learned every length already"):
        merge(tmp_path / "captcha_run.json", tmp_path / "captcha_init.json", tmp_path / "out", torch.device("cpu"))
    assert not (tmp_path / "out").exists()
