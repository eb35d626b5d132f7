"""Ink (white on black, [0, 1]) -> what a phone photo of it on a sheet of paper looks like.

The writing in dark ink on grey paper (plain, ruled or squared), somewhere on a larger sheet, under light
that is uneven (a soft shadow across the sheet and a gradient) or even, with sensor noise, saved
as JPEG.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PAPER, PEN = 205.0, 150.0  # grey levels: the paper, and how much darker the pen's strongest ink is
RULE = 45.0  # how much darker a ruled paper's printed lines are


def phone_photo(ink: np.ndarray, rng: np.random.Generator, *, scale: float = 4.0, sheet: tuple[float, float] = (3.0, 1.8),
                shadow: float = 0.35, noise: float = 4.0, quality: int = 75, rules: float = 0.0,
                squared: bool = False) -> bytes:
    """ink (h, w) in [0, 1] -> JPEG bytes: the ink `scale` times larger on a sheet `sheet` times
    the writing's (height, width), at a random place; `shadow`: how much darker the light is at
    the middle of a broad soft shadow at a random place (0: evenly lit, then no gradient either);
    `rules`: ruled paper, its lines this many writing heights apart (3 px at scale 4), one under the
    writing; `squared`: the same lines across too (squared paper)."""
    h, w = ink.shape
    big = np.asarray(Image.fromarray((np.clip(ink, 0, 1) * 255).astype(np.uint8))
                     .resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR),
                     np.float32) / 255
    sh, sw = max(big.shape[0] + 2, round(big.shape[0] * sheet[0])), max(big.shape[1] + 2, round(big.shape[1] * sheet[1]))
    page = np.zeros((sh, sw), np.float32)
    top, left = int(rng.integers(0, sh - big.shape[0])), int(rng.integers(0, sw - big.shape[1]))
    page[top:top + big.shape[0], left:left + big.shape[1]] = big
    paper = np.full((sh, sw), PAPER, np.float32)
    if rules:
        gap, thick = max(4, round(rules * big.shape[0])), max(1, round(0.75 * scale))
        for y in range((top + big.shape[0]) % gap, sh, gap):
            paper[y:y + thick] -= RULE
        for x in range(left % gap, sw, gap) if squared else ():
            paper[:, x:x + thick] = np.minimum(paper[:, x:x + thick], PAPER - RULE)
    light = np.ones((sh, sw), np.float32)
    if shadow:
        yy, xx = np.mgrid[:sh, :sw].astype(np.float32)
        cy, cx, r = rng.uniform(0, sh), rng.uniform(0, sw), rng.uniform(0.3, 0.8) * max(sh, sw)
        light = (1 - shadow * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))) \
            * (1 + rng.uniform(-0.1, 0.1) * (xx / sw - 0.5))
    photo = np.minimum(paper, PAPER - PEN * page) * light + rng.normal(0, noise, (sh, sw))
    buf = io.BytesIO()
    Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()
