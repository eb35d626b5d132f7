"""A second look at each digit for the number reader.

The reader's CTC head decides each digit from one column of a BiGRU over the whole line; most
of its misreads are single digits read as a look-alike (5 as 3, 9 as 4) with the count right.
This net reads each digit again on its own: the reader's span of the digit is cut out of the
line's ink at the upload's own resolution (`crops="source"`; older nets: of the 28 px line),
cropped to its ink and laid out the way MNIST lays out a digit (its longer side 20 px, its
centre of mass in the middle of 28x28), and a plain CNN classifies it. `mix_digits`
weighs its log-probabilities against the reader's at the digit's column (weights fitted on
validation lines); the count of digits and their places stay the reader's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

GLYPH_SIZE = 28  # MNIST's layout: the ink's longer side 20 px, centred by mass in 28x28
GLYPH_INK = 20


@dataclass
class DigitGlyphConfig:
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])  # two 3x3 convs per block, then pool
    hidden: int = 256
    dropout: float = 0.3
    # log p = mix[0] * glyph log-probs + mix[1] * reader log-probs (renormalised), fitted on validation.
    mix: list[float] = field(default_factory=lambda: [1.0, 1.0])
    # Where crops are cut: "source", the ink at the upload's resolution (sharper: in the 28 px
    # line most digits are shorter than MNIST's 20 px), or "line" (the first nets).
    crops: str = "line"

    def to_dict(self) -> dict:
        return asdict(self)


class DigitGlyphNet(nn.Module):
    """(N, 1, 28, 28) crops, ink in [0, 1] on 0 -> (N, 10) logits."""

    def __init__(self, config: DigitGlyphConfig):
        super().__init__()
        self.config = config
        layers, c_in = [], 1
        for c_out in config.channels:  # 28 -> 14 -> 7 -> 3
            for a in (c_in, c_out):
                layers += [nn.Conv2d(a, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        side = GLYPH_SIZE >> len(config.channels)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(config.dropout), nn.Linear(c_in * side * side, config.hidden),
                                  nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(config.hidden, 10))

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(crops))


def glyph_crop(line: torch.Tensor, span: tuple[float, float], threshold: float = 0.05) -> torch.Tensor:
    """line (H, W) ink in [0, 1], span [x0, x1) of one digit -> (28, 28) crop laid out as MNIST:
    the ink inside the span cropped to its box, scaled so its longer side is 20 px, and placed
    with its centre of mass at the middle (kept inside the square). All zeros without ink."""
    x0, x1 = max(0, int(span[0])), min(line.shape[1], max(int(span[0]) + 1, int(round(span[1]))))
    part = line[:, x0:x1].float()
    out = part.new_zeros(GLYPH_SIZE, GLYPH_SIZE)
    if part.numel() == 0 or float(part.max()) <= 0:
        return out
    ink = part > threshold * float(part.max())
    rows, cols = ink.any(1).nonzero().squeeze(1), ink.any(0).nonzero().squeeze(1)
    box = part[int(rows[0]):int(rows[-1]) + 1, int(cols[0]):int(cols[-1]) + 1]
    h, w = box.shape
    scale = GLYPH_INK / max(h, w)
    nh, nw = max(1, min(GLYPH_INK, round(h * scale))), max(1, min(GLYPH_INK, round(w * scale)))
    box = F.interpolate(box[None, None], size=(nh, nw), mode="bilinear", antialias=True,
                        align_corners=False)[0, 0].clamp_(0, 1)
    mass = box.sum()
    if float(mass) <= 0:
        return out
    cy = float((box.sum(1) * torch.arange(nh, dtype=box.dtype)).sum() / mass)
    cx = float((box.sum(0) * torch.arange(nw, dtype=box.dtype)).sum() / mass)
    top = min(max(0, round(GLYPH_SIZE / 2 - 0.5 - cy)), GLYPH_SIZE - nh)
    left = min(max(0, round(GLYPH_SIZE / 2 - 0.5 - cx)), GLYPH_SIZE - nw)
    out[top:top + nh, left:left + nw] = box
    return out


def mix_digits(glyph_logits: torch.Tensor, reader_probs: torch.Tensor, mix: list[float] | tuple[float, float]
               ) -> torch.Tensor:
    """glyph_logits (N, 10), reader_probs (N, 10) the reader's digit probabilities at each
    digit's column (renormalised without the blank) -> (N, 10) mixed probabilities."""
    z = mix[0] * glyph_logits.float().log_softmax(-1) + mix[1] * reader_probs.float().clamp_min(1e-12).log()
    return z.softmax(-1)
