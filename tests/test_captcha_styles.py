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
