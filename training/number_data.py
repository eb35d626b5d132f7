"""Lines of handwritten digits for the number reader, composed on the fly and reproducible from
a seed: MNIST digits (augmented like the digit trainer's) set side by side with random size,
baseline, slope and spacing (touching and slightly overlapping included), and lines drawn the
way the demo page's pad draws (testkit's pen paths, jittered, with a round pen).

Every line then goes through `models.preprocess.number_line`, the serving preprocessing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.number import pad_lines
from models.preprocess import NumberLine, number_line
from testkit.drawing import number_paths, render_canvas
from training.augment import augment_digits

CONTRACT = {"height": 28, "ink_height": 20, "pad": 8, "max_width": 1024,
            "ink": "white on black, [0, 1]; crop to the ink, scale its box to 20 px tall (at most 1024 px wide), "
                   "centre in a 28 px line with 8 px of paper left and right"}
TEST_SEED = 2026  # the 10,000 MNIST-test lines
CANVAS_TEST_SEED = 7  # the drawn numbers


def _gap(rng: random.Random, narrower: int) -> int:
    """Pixels between two neighbours at MNIST scale (negative: they overlap)."""
    r = rng.random()
    if r < 0.5:
        return rng.randint(1, 7)
    if r < 0.7:
        return rng.randint(8, 22)
    if r < 0.88:
        return 0  # touching
    return -rng.randint(1, max(1, min(4, narrower // 4)))  # overlapping a little


def compose(digits: np.ndarray, rng: random.Random) -> np.ndarray:
    """digits: (n, 28, 28) ink in [0, 1], MNIST layout -> one line's ink (h, w): each digit cut
    to its ink columns, scaled by 0.8-1.2, set on a baseline with a random slope and wobble."""
    pieces = []
    for d in digits:
        cols = np.flatnonzero(d.max(axis=0) > 0.05)
        if len(cols) == 0:
            cols = np.array([13, 14])
        piece = d[:, cols[0]:cols[-1] + 1]
        s = rng.uniform(0.8, 1.2)
        h, w = max(8, round(28 * s)), max(1, round(piece.shape[1] * s))
        if (h, w) != piece.shape:
            piece = F.interpolate(torch.from_numpy(np.ascontiguousarray(piece))[None, None], size=(h, w),
                                  mode="bilinear", antialias=True, align_corners=False)[0, 0].clamp_(0, 1).numpy()
        pieces.append(piece)
    slope = rng.uniform(-0.08, 0.08)
    xs, ys, x = [], [], 0
    for i, p in enumerate(pieces):
        if i:
            x += _gap(rng, min(p.shape[1], pieces[i - 1].shape[1]))
        xs.append(x)
        ys.append(round(slope * x + rng.gauss(0, 1.2) + (28 - p.shape[0]) / 2))
        x += p.shape[1]
    top = min(ys)
    height = max(y - top + p.shape[0] for y, p in zip(ys, pieces))
    line = np.zeros((height, x + 1), dtype=np.float32)
    for p, x0, y0 in zip(pieces, xs, ys):
        region = line[y0 - top:y0 - top + p.shape[0], x0:x0 + p.shape[1]]
        np.maximum(region, p, out=region)
    return line


def drawn_number(text: str, rng: random.Random, size: int = 64) -> np.ndarray:
    """`text` written like on the page's pad (testkit's jittered pen paths, a round pen, each
    digit `size` px tall give or take) -> ink (h, w) in [0, 1]. Rendered small: the reader sees
    20 px anyway."""
    pen = rng.uniform(0.05, 0.11) * size * 1.3
    paths, w, h = number_paths(text, size, rng, pen)
    return np.asarray(render_canvas(paths, (w, h), pen).getchannel("A"), dtype=np.float32) / 255.0


@dataclass
class LineBatch:
    x: torch.Tensor  # (B, 1, 28, W) lines, right-padded with 0
    widths: torch.Tensor  # (B,) each line's width
    targets: torch.Tensor  # (B, L) digits, padded with -1
    texts: list[str]


def collate(lines: list[NumberLine], texts: list[str]) -> LineBatch:
    x, widths = pad_lines([line.x for line in lines])
    longest = max(1, max(len(t) for t in texts))
    targets = torch.full((len(texts), longest), -1, dtype=torch.long)
    for i, t in enumerate(texts):
        targets[i, :len(t)] = torch.tensor([int(c) for c in t], dtype=torch.long)
    return LineBatch(x, widths, targets, texts)


def mnist_lines(images: torch.Tensor, labels: torch.Tensor, lengths: list[int], rng: random.Random,
                gen: torch.Generator | None = None, with_ids: bool = False):
    """One line per entry of `lengths`, from random digits of (images (N, 28, 28), labels (N,));
    with `gen`, the digits are augmented first (as the digit trainer does) -> (inks, texts), and
    with `with_ids` each line's image indices too (which digits it holds, left to right)."""
    idx = torch.tensor([rng.randrange(len(images)) for _ in range(sum(lengths))])
    digits = images[idx]
    if gen is not None:
        digits = augment_digits(digits, gen)
    digits, chosen = digits.numpy(), labels[idx].tolist()
    inks, texts, k = [], [], 0
    for n in lengths:
        inks.append(compose(digits[k:k + n], rng))
        texts.append("".join(str(d) for d in chosen[k:k + n]))
        k += n
    if with_ids:
        return inks, texts, [ids.tolist() for ids in torch.split(idx, lengths)]
    return inks, texts


def drawn_lines(lengths: list[int], rng: random.Random) -> tuple[list[np.ndarray], list[str]]:
    texts = ["".join(str(rng.randrange(10)) for _ in range(n)) for n in lengths]
    return [drawn_number(t, rng, size=rng.randint(40, 72)) for t in texts], texts


def test_lines(images: torch.Tensor, labels: torch.Tensor, count: int = 10_000, seed: int = TEST_SEED,
               max_len: int = 8) -> tuple[list[np.ndarray], list[str]]:
    """The fixed evaluation lines: `count` lines of 1..max_len digits (uniform) from these
    images (MNIST test), composed without augmentation from `seed`."""
    rng = random.Random(seed)
    lengths = [rng.randint(1, max_len) for _ in range(count)]
    return mnist_lines(images, labels, lengths, rng)


def validation_lines(images: torch.Tensor, labels: torch.Tensor, count: int, with_ids: bool = False):
    """The reader's validation lines: `count` lines of 1-8 digits from these images (MNIST
    training digits 54,000-59,999), composed without augmentation, always the same -> (inks,
    texts), and with `with_ids` the indices of each line's digits among `images`."""
    return mnist_lines(images, labels, [random.Random(k).randint(1, 8) for k in range(count)], random.Random(12345),
                       with_ids=with_ids)


def canvas_test_numbers(count: int = 500, seed: int = CANVAS_TEST_SEED, max_len: int = 8):
    """Drawn numbers for evaluation: (ink, text) from a seed never used in training."""
    rng = random.Random(seed * 1_000_003 + 17)
    lengths = [rng.randint(1, max_len) for _ in range(count)]
    return drawn_lines(lengths, rng)


class LineSource:
    """Training batches: `batch_size` lines of 1..max_len digits, a share of them drawn like the
    page's pad, the rest from (augmented) MNIST digits. The state is one torch generator."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, gen: torch.Generator,
                 device: torch.device, max_len: int = 10, drawn_share: float = 0.2):
        self.images, self.labels, self.batch_size, self.gen, self.device = images, labels, batch_size, gen, device
        self.max_len, self.drawn_share = max_len, drawn_share

    def next(self) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        rng = random.Random(int(torch.randint(1 << 62, (1,), generator=self.gen)))
        # Lines of one batch have lengths near each other, so little of the batch is padding.
        centre = rng.randint(1, self.max_len)
        lengths = [min(self.max_len, max(1, centre + rng.randint(-1, 1))) for _ in range(self.batch_size)]
        drawn = sum(rng.random() < self.drawn_share for _ in lengths)
        inks, texts = mnist_lines(self.images, self.labels, lengths[drawn:], rng, self.gen)
        if drawn:
            more_inks, more_texts = drawn_lines(lengths[:drawn], rng)
            inks, texts = more_inks + inks, more_texts + texts
        batch = collate([number_line(ink, CONTRACT) for ink in inks], texts)
        return (batch.x.to(self.device), batch.widths), batch.targets.to(self.device)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
