"""The foreign captcha styles of the fine-tuning benchmark: reproducible from a seed, the sizes
they claim, labels of 4-6 characters, and genuinely foreign to the shipped reader."""

from __future__ import annotations

import numpy as np
import pytest

from training.captcha_styles import STYLES, samples

SIZES = {"fonts": (200, 70), "wheezy": (200, 75), "lines": (180, 60)}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_styles_are_reproducible_and_sized(style):
    first = [next(samples(style, 3)) for _ in range(1)][0]
    again = next(samples(style, 3))
    other = next(samples(style, 4))
    assert first[0] == again[0] and np.array_equal(np.asarray(first[1]), np.asarray(again[1]))
    assert first[0] != other[0]
    texts = [t for _, (t, _) in zip(range(30), samples(style, 5))]
    assert {len(t) for t in texts} <= {4, 5, 6} and len({len(t) for t in texts}) > 1
    assert first[1].size == SIZES[style]
    grey = np.asarray(first[1].convert("L"), dtype=np.float32)
    assert grey.std() > 10  # something is drawn


def _ink_box(font_file: str, char: str) -> np.ndarray:
    """One character's ink at 100 px (thresholded), cropped to its box."""
    from PIL import Image, ImageDraw, ImageFont

    from training.captcha_styles import font_path

    image = Image.new("L", (200, 200), 0)
    ImageDraw.Draw(image).text((20, 20), char, font=ImageFont.truetype(font_path(font_file), 100), fill=255)
    ink = np.asarray(image) > 127
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


@pytest.mark.parametrize("font_file,same", [("DejaVuSans.ttf", True), ("DejaVuSans-Bold.ttf", True),
                                            ("LiberationSans-Regular.ttf", True), ("LiberationSans-Bold.ttf", True),
                                            ("LiberationSerif-Regular.ttf", False), ("LiberationMono-Bold.ttf", False)])
def test_the_sans_fonts_draw_capital_i_and_small_l_alike(font_file, same):
    # What SAME_I_AND_L rests on: in the styles' sans fonts I and l are each one solid bar, as
    # wide (within 1 px at 100 px) and as tall (within 5%); in the serif and mono fonts they are not.
    i, l = _ink_box(font_file, "I"), _ink_box(font_file, "l")
    bars = i.mean() > 0.95 and l.mean() > 0.95
    alike = abs(i.shape[1] - l.shape[1]) <= 1 and abs(i.shape[0] / l.shape[0] - 1) < 0.05
    assert (bars and alike) == same


def test_best_possible_counts_each_ambiguous_i_or_l_as_a_coin_toss():
    from training.captcha_styles import best_possible

    assert best_possible("wheezy", ["abcd", "x2y9z"]) == 1.0
    assert best_possible("wheezy", ["aIcd"]) == 0.5  # both wheezy fonts are sans
    assert best_possible("wheezy", ["lIab"]) == 0.25
    assert best_possible("fonts", ["abl1"]) == 0.75  # one font of two is sans; 1 and i are not counted
    assert best_possible("lines", ["abcd", "Iabc"]) == (1 + 0.75) / 2


def test_i_and_l_right_reads_only_answers_of_the_right_length():
    from training.captcha_styles import i_and_l_right

    assert i_and_l_right(["ilab", "lab", "iiab"], ["Ilab", "Iab4", "Ilab"]) == (3, 4)
    assert i_and_l_right(["abcd"], ["abcd"]) == (0, 0)
