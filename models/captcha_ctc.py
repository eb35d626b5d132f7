"""Captcha reader with a CTC head: conv columns -> bidirectional GRU -> 37 outputs per column
(36 characters + the CTC blank), decoded greedily.

Greedy CTC decoding: take the most likely output in every column, merge runs of the same
output, drop blanks. "a a - a b" -> "aab" needs a blank between the two a's; that is how
CTC writes doubled letters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.captcha_common import (CHARSET, NUM_CHARS, CaptchaReading, ConvColumns, char_reading,
                                   decode_label, init_gru, register_variant)

BLANK = 0  # CTC output 0 is the blank; output k (1..36) is CHARSET[k - 1]


@dataclass
class CaptchaCTCConfig:
    variant: str = "ctc"
    height: int = 32
    width: int = 96
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])
    hidden_size: int = 128  # per direction
    num_layers: int = 1
    dropout: float = 0.0  # before the head (training only)

    def to_dict(self) -> dict:
        return asdict(self)


class CaptchaCTC(nn.Module):
    def __init__(self, config: CaptchaCTCConfig):
        super().__init__()
        if config.variant != "ctc":
            raise ValueError(f"CaptchaCTC needs variant 'ctc', got {config.variant!r}")
        self.config = config
        self.conv = ConvColumns(config.channels, config.height, config.width)
        self.rnn = nn.GRU(self.conv.features, config.hidden_size, num_layers=config.num_layers,
                          batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(2 * config.hidden_size, NUM_CHARS + 1)
        init_gru(self.rnn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, H, W) standardised image -> logits (B, T, 37), T = W/4 columns."""
        cols = self.conv(x)  # (B, T, F)
        out, _ = self.rnn(cols)  # (B, T, 2H)
        return self.head(self.dropout(out))

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """targets: (B, L) class indices 0..35 (fixed length L)."""
        log_probs = logits.log_softmax(-1).transpose(0, 1)  # (T, B, 37), as ctc_loss wants
        b, t = logits.shape[:2]
        return F.ctc_loss(log_probs, targets + 1, torch.full((b,), t, dtype=torch.long),
                          torch.full((b,), targets.shape[1], dtype=torch.long), blank=BLANK, zero_infinity=True)

    @torch.inference_mode()
    def decode(self, logits: torch.Tensor) -> list[str]:
        return [decode_label(idx) for idx in greedy_collapse(logits.argmax(-1))]

    @torch.inference_mode()
    def read(self, x: torch.Tensor) -> list[CaptchaReading]:
        logits = self(x)
        return read_ctc(logits)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> str:
        c = self.config
        return (f"4 conv blocks ({'-'.join(map(str, c.channels))}) on {c.height}x{c.width} grey -> BiGRU "
                f"{c.num_layers}x{c.hidden_size} over {self.conv.steps} columns -> CTC (36 + blank), greedy")


def greedy_collapse(best: torch.Tensor) -> list[list[int]]:
    """best: (B, T) most likely output per column -> per item the character indices (0..35)
    after merging repeats and dropping blanks."""
    out = []
    for row in best.tolist():
        chars, prev = [], BLANK
        for k in row:
            if k != prev and k != BLANK:
                chars.append(k - 1)
            prev = k
        out.append(chars)
    return out


def _runs(row: list[int]) -> list[tuple[int, list[int]]]:
    """Per emitted character: (its index 0..35, the columns of its run)."""
    runs, prev = [], BLANK
    for t, k in enumerate(row):
        if k != BLANK and k == prev:
            runs[-1][1].append(t)
        elif k != BLANK:
            runs.append((k - 1, [t]))
        prev = k
    return runs


def read_ctc(logits: torch.Tensor) -> list[CaptchaReading]:
    """logits (B, T, 37) -> readings. A character's confidence and top-3 come from the column
    of its run where it is most likely (blank excluded, renormalised over the 36 characters
    for the top-3). The string's confidence is the CTC probability of the decoded text, i.e.
    summed over every column alignment that spells it."""
    probs = logits.float().softmax(-1)  # (B, T, 37)
    log_probs = probs.clamp_min(1e-30).log().transpose(0, 1)  # (T, B, 37)
    b, t = logits.shape[:2]
    readings = []
    for i, row in enumerate(probs.argmax(-1).tolist()):
        chars = []
        for k, cols in _runs(row):
            col = max(cols, key=lambda c: float(probs[i, c, k + 1]))
            char_probs = probs[i, col, 1:]  # (36,)
            top = char_reading(char_probs / char_probs.sum(), k)
            top.confidence = float(probs[i, col, k + 1])
            chars.append(top)
        text = "".join(c.char for c in chars)
        if chars:
            target = torch.tensor([[CHARSET.index(c) + 1 for c in text]])
            nll = F.ctc_loss(log_probs[:, i:i + 1], target, torch.tensor([t]), torch.tensor([len(text)]),
                             blank=BLANK, reduction="sum", zero_infinity=True)
        else:  # the empty string: every column blank
            nll = -log_probs[:, i, BLANK].sum()
        readings.append(CaptchaReading(text, float(torch.exp(-nll)), chars))
    return readings


def _build(architecture: dict) -> CaptchaCTC:
    return CaptchaCTC(CaptchaCTCConfig(**architecture))


register_variant("ctc", _build)
