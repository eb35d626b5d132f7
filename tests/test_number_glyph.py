"""The number reader's digit glyph net: the MNIST-style crops, the mix, and that a reader with
one reads as the reader alone when the mix says so, and follows the glyph net when it says so."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import WEIGHTS_DIR, require_mnist
from models.checkpoint import load_checkpoint
from models.number import NumberReader, pad_lines
from models.number_glyph import GLYPH_INK, GLYPH_SIZE, DigitGlyphConfig, DigitGlyphNet, glyph_crop, mix_digits
from models.preprocess import number_line, prepare_number
from testkit import drawn_number
from training.number_data import CONTRACT


def _line() -> torch.Tensor:
    """A 28x60 line: a bar 20 px tall (a 1) at x 10-13 and a 16x12 block at x 30-45."""
    line = torch.zeros(28, 60)
    line[4:24, 10:14] = 1.0
    line[8:20, 30:46] = 0.6
    return line


def test_a_crop_is_its_span_laid_out_as_mnist():
    crop = glyph_crop(_line(), (8.0, 16.0))
    assert crop.shape == (GLYPH_SIZE, GLYPH_SIZE)
    rows, cols = (crop > 0.05).any(1).nonzero().squeeze(1), (crop > 0.05).any(0).nonzero().squeeze(1)
    assert int(rows[-1] - rows[0] + 1) == GLYPH_INK  # the longer side is 20 px
    assert int(cols[-1] - cols[0] + 1) <= 5  # the bar stays a bar: the aspect is kept
    mass = crop.sum()
    cy = float((crop.sum(1) * torch.arange(28.0)).sum() / mass)
    cx = float((crop.sum(0) * torch.arange(28.0)).sum() / mass)
    assert abs(cy - 13.5) <= 1 and abs(cx - 13.5) <= 1  # centred by mass
    # The block next to it is scaled up to 20 px wide, and nothing of the bar comes with it.
    block = glyph_crop(_line(), (28.0, 50.0))
    inked = (block > 0.05).any(0).nonzero().squeeze(1)
    assert int(inked[-1] - inked[0] + 1) == GLYPH_INK and float(block.max()) == pytest.approx(0.6, abs=0.02)
    assert float(glyph_crop(_line(), (50.0, 60.0)).abs().sum()) == 0  # no ink: all zeros


def test_the_mix_weights_pick_either_side_or_both():
    glyph = torch.tensor([[5.0, 0.0, 0.0, 0, 0, 0, 0, 0, 0, 0]])
    reader = torch.full((1, 10), 0.01)
    reader[0, 3] = 0.91
    torch.testing.assert_close(mix_digits(glyph, reader, [0.0, 1.0]), reader)
    torch.testing.assert_close(mix_digits(glyph, reader, [1.0, 0.0]), glyph.softmax(-1))
    both = mix_digits(glyph, reader, [1.0, 1.0])  # the normalised product of the two
    product = glyph.softmax(-1) * reader
    torch.testing.assert_close(both, product / product.sum())
    assert int(both.argmax()) == 0  # e^5 * 0.01 = 1.48 against 1 * 0.91: the glyph net wins


def test_source_crops_keep_detail_that_the_28_px_line_loses():
    # A 90 px bar and, beside it, a 40 px block of 10 stripes (4 px period). The line is scaled
    # to the bar (20 px): the block becomes 9 px tall and its stripes (0.9 px) blur away; cut
    # from the source ink it is brought to 20 px and keeps them (2 px period).
    ink = np.zeros((90, 140), np.float32)
    ink[:, 10:22] = 1.0
    ink[30:70, 60:90] = np.tile(np.repeat(np.float32([1, 0]), 2), 10)[:, None]
    line = number_line(ink, CONTRACT)
    s = 20 / 90
    assert line.source.shape == (90, 80) and line.source_scale == pytest.approx(s)
    span = (line.pad + 50 * s, line.pad + 80 * s)  # the block's columns in the line (50..80 of the source)
    assert line.to_source(span) == pytest.approx((50.0, 80.0))
    sharp, blurry = glyph_crop(line.source, line.to_source(span)), glyph_crop(line.x[0, 0], span)

    def stripes(crop):  # how far the row means swing between neighbouring rows, inside the ink
        rows = crop.sum(1)
        rows = rows[rows > 0.05 * float(rows.max())]
        return float((rows[1:] - rows[:-1]).abs().mean() / rows.mean())

    assert stripes(sharp) > 0.5 and stripes(blurry) < 0.2
    torch.testing.assert_close(sharp, glyph_crop(torch.from_numpy(ink[:, 59:91].copy()), (0.0, 32.0)))


def _reader_alone() -> NumberReader:
    model, _ = load_checkpoint(WEIGHTS_DIR / "number_ctc.json")
    return model.without_glyph().eval()


def _number_lines():
    return [prepare_number(drawn_number(t, seed=i), CONTRACT) for i, t in enumerate(["2026", "7", "31415926", "58"])]


def _lines():
    return pad_lines([line.x for line in _number_lines()])


def test_a_glyph_net_weighted_zero_changes_nothing_and_one_that_says_7_makes_every_digit_7():
    reader = _reader_alone()
    x, widths = _lines()
    alone = reader.read(x, widths, spans=True)
    assert [r.text for r in alone] == ["2026", "7", "31415926", "58"]
    torch.manual_seed(0)
    net = DigitGlyphNet(DigitGlyphConfig(mix=[0.0, 1.0])).eval()
    same = reader.with_glyph(net).read(x, widths)
    for a, b in zip(alone, same):
        assert a.text == b.text and a.confidence == pytest.approx(b.confidence, rel=1e-4)
        assert [d.span for d in a.digits] == [d.span for d in b.digits]
        assert [d.confidence for d in a.digits] == pytest.approx([d.confidence for d in b.digits], rel=1e-4)
    # A glyph net sure of 7 everywhere, and trusted alone: every digit becomes 7, the count stays.
    last = net.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.where(torch.arange(10) == 7, 20.0, 0.0))
    net.config = replace(net.config, mix=[1.0, 0.0])
    sevens = reader.with_glyph(net).read(x, widths)
    assert [r.text for r in sevens] == ["7777", "7", "77777777", "77"]
    for a, r in zip(alone, sevens):
        assert all(d.top3[0][0] == 7 and d.top3[0][1] > 0.99 for d in r.digits)
        assert 0 < r.confidence <= 1 and [d.span for d in r.digits] == [d.span for d in a.digits]


def test_the_committed_reader_carries_its_glyph_net_and_reads_the_same_alone_or_in_a_batch():
    model, manifest = load_checkpoint(WEIGHTS_DIR / "number_ctc.json")
    assert model.glyph is not None and manifest.architecture["glyph"]["mix"] == manifest.training["glyph"]["mix"]
    lines = _number_lines()
    x, widths = pad_lines([line.x for line in lines])
    together = model.read(x, widths, lines=lines)
    assert [r.text for r in together] == ["2026", "7", "31415926", "58"]
    for line, reading in zip(lines, together):
        alone = model.read(line.x, lines=[line])[0]
        assert alone.text == reading.text and alone.confidence == pytest.approx(reading.confidence, rel=1e-4)


def test_a_glyph_net_on_source_crops_needs_the_lines_and_reads_them_alone_or_batched():
    reader = _reader_alone()
    torch.manual_seed(0)
    net = DigitGlyphNet(DigitGlyphConfig(mix=[1.0, 1.0], crops="source")).eval()
    model = reader.with_glyph(net)
    lines = _number_lines()
    x, widths = pad_lines([line.x for line in lines])
    with pytest.raises(ValueError, match="source ink"):
        model.read(x, widths)
    together = model.read(x, widths, lines=lines)
    for i, line in enumerate(lines):
        alone = model.read(line.x, lines=[line])[0]
        assert alone.text == together[i].text and alone.confidence == pytest.approx(together[i].confidence, rel=1e-4)
    # The crops are cut from the source: not the ones the same net would see in the line.
    readings = reader.read(x, widths, spans=True)
    logits, _ = reader(x, widths)
    from_source, _ = reader.digit_evidence(x, logits, readings, lines, "source")
    from_line, _ = reader.digit_evidence(x, logits, readings)
    assert from_source.shape == from_line.shape == (15, 1, GLYPH_SIZE, GLYPH_SIZE)
    assert not torch.allclose(from_source, from_line, atol=0.05)


def test_the_committed_glyph_net_reads_better_than_the_reader_alone_on_validation():
    m = json.loads((WEIGHTS_DIR / "number_ctc.json").read_text())
    val = m["training"]["glyph"]["validation"]
    assert val["chosen"]["lines_wrong"] < val["reader_alone"]["lines_wrong"]
    assert m["metrics"]["mnist_lines_number_accuracy"] > m["metrics"]["reader_alone"]["mnist_lines_number_accuracy"]


def test_the_glyph_trainer_trains_goes_on_and_refits(tmp_path):
    from training import number_glyph

    root = require_mnist()
    common = ["--data-root", str(root), "--limit", "2000", "--val-lines", "150", "--threads", "1", "--no-progress"]
    cache = str(tmp_path / "crops.pt")
    first = number_glyph.main(common + ["--lines", "200", "--epochs", "1", "--cache", cache, "--out", str(tmp_path / "a")])
    model, manifest = load_checkpoint(first)
    glyph = manifest.training["glyph"]
    assert model.glyph is not None and manifest.architecture["glyph"]["mix"] == glyph["mix"]
    assert glyph["data"]["training_crops"] > 200 and glyph["samples_seen"] > 0
    assert model.glyph.config.crops == glyph["data"]["crops_from"] == "source"  # the default
    with pytest.raises(SystemExit, match="cut from the source, not the line"):  # the cache says which kind it holds
        number_glyph.main(common + ["--crops", "line", "--cache", cache, "--out", str(tmp_path / "x")])
    assert {"reader_alone", "glyph_alone", "chosen"} <= set(glyph["validation"])
    assert manifest.metrics["mnist_test_lines"] == 2_000 and "reader_alone" in manifest.metrics
    # A second chunk from the first one's glyph net (and the reader inside the first manifest).
    # This one warps its crops and adds the 1,800 training digits of --limit 2000 (90%) whole.
    second = number_glyph.main(common + ["--lines", "200", "--epochs", "1", "--reader", str(first),
                                         "--glyph-init", str(first), "--augment", "--mnist-digits",
                                         "--out", str(tmp_path / "b")])
    model2, manifest2 = load_checkpoint(second)
    data2 = manifest2.training["glyph"]["data"]
    assert data2["mnist_digits"] and data2["training_crops"] == glyph["data"]["training_crops"] + 1_800
    assert "affine" in data2["augmentation"] and not glyph["data"]["mnist_digits"]
    chunks = manifest2.training["glyph"]["chunks"]
    assert len(chunks) == 2 and chunks[0]["samples_seen"] == glyph["samples_seen"]
    assert manifest2.metrics["reader_alone"] == manifest.metrics["reader_alone"]
    assert any(not torch.equal(model2.glyph.state_dict()[k], v) for k, v in model.glyph.state_dict().items())
    # The same glyph net on a reader: nothing trained, only the mix fitted again.
    third = number_glyph.main(common + ["--reader", str(first), "--glyph-from", str(second),
                                        "--out", str(tmp_path / "c")])
    model3, manifest3 = load_checkpoint(third)
    for k, v in model2.glyph.state_dict().items():
        torch.testing.assert_close(model3.glyph.state_dict()[k], v)
    assert manifest3.training["glyph"]["glyph_from"] == "number_ctc.json"
    assert manifest3.training["glyph"]["chunks"] == chunks


def test_the_glyph_trainer_trains_on_whole_digits_alone_n_times_over(tmp_path):
    from training import number_glyph

    root = require_mnist()
    common = ["--data-root", str(root), "--limit", "2000", "--val-lines", "150", "--threads", "1", "--no-progress",
              "--epochs", "1"]
    with pytest.raises(SystemExit):  # no lines and no whole digits: nothing to train on
        number_glyph.main(common + ["--lines", "0", "--out", str(tmp_path / "none")])
    out = number_glyph.main(common + ["--lines", "0", "--mnist-digits", "2", "--augment", "--out", str(tmp_path / "w")])
    model, manifest = load_checkpoint(out)
    data = manifest.training["glyph"]["data"]
    # --limit 2000: 1,800 training digits (90%), twice over, and no crops cut from lines.
    assert data["mnist_digits"] == 2 and data["training_crops"] == 3_600 and data["lines"] == 0
    assert manifest.training["glyph"]["samples_seen"] > 0 and model.glyph is not None
    assert not (tmp_path / "none").exists()


def test_training_crops_are_warped_like_digits_and_whole_mnist_digits_are_laid_out_as_crops():
    from training.number_glyph import CropBatches, mnist_crops

    digits = torch.zeros(3, 28, 28)
    digits[0, 2:26, 12:16] = 1.0  # a tall bar (a 1) nearer the top than MNIST would put it
    digits[1, 10:14, 4:24] = 0.8  # a flat bar
    crops = mnist_crops(digits)  # the third is empty: all zeros
    assert crops.shape == (3, 1, 28, 28) and crops.dtype == torch.uint8
    torch.testing.assert_close(crops[0, 0].float() / 255, glyph_crop(digits[0], (0.0, 28.0)), atol=1 / 255, rtol=0)
    rows = crops[0, 0].float().sum(1).nonzero().squeeze(1)
    assert int(rows[-1]) - int(rows[0]) + 1 == GLYPH_INK and int(crops[2].sum()) == 0

    many = crops[:2].repeat(32, 1, 1, 1)
    labels = torch.tensor([1, 7]).repeat(32)  # 1: the tall bar, 7: the flat bar
    sums = (many[:2].float() / 255).sum((1, 2, 3))

    def matches_an_original(x: torch.Tensor) -> torch.Tensor:  # (B,) whether its ink is an original's
        return ((x.sum((1, 2, 3))[:, None] - sums[None]).abs() < 1e-3).any(1)

    x, y = CropBatches(many, labels, 16, torch.device("cpu")).next()
    assert x.shape == (16, 1, 28, 28) and bool(matches_an_original(x).all())  # only shifted: the ink is kept
    x, y = CropBatches(many, labels, 16, torch.device("cpu"), augment=True, seed=3).next()
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and float(x.min()) >= 0 and float(x.max()) <= 1
    assert int(matches_an_original(x).sum()) <= 8  # most are warped (10% are left clean)
    ink = x[:, 0] > 0.3
    tall = ink.any(2).sum(1) > ink.any(1).sum(1)  # more rows than columns hold ink
    assert torch.equal(tall, y == 1)  # each warped crop still comes with its own label
