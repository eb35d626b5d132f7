"""What the two captcha readers share: the charset, the conv feature extractor, the answer type.

The captcha task: 4 characters drawn in mixed case from 0-9, a-z, A-Z; reading is
case-insensitive, so there are 36 classes (0-9, a-z) and answers are lower case.
Both networks (`models.captcha_ctc`, `models.captcha_seq2seq`) read the image column by
column: the conv stack turns a (B, 1, H, W) image into (B, W/4, C * H/16) column features.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

CHARSET = "0123456789abcdefghijklmnopqrstuvwxyz"  # class i <-> CHARSET[i]
DRAWN_ALPHABET = string.digits + string.ascii_letters  # what captchas are drawn from: mixed case, 62
NUM_CHARS = len(CHARSET)  # 36
CAPTCHA_LENGTH = 4
_INDEX = {c: i for i, c in enumerate(CHARSET)}


def encode_label(text: str) -> list[int]:
    """'3Fk9' -> [3, 15, 20, 9]; case is ignored. Raises ValueError on characters outside the charset."""
    try:
        return [_INDEX[c] for c in text.lower()]
    except KeyError as exc:
        raise ValueError(f"character {exc.args[0]!r} in {text!r} is not in the charset 0-9a-z") from None


def decode_label(indices) -> str:
    return "".join(CHARSET[int(i)] for i in indices)


@dataclass
class CharReading:
    char: str
    confidence: float
    top3: list[tuple[str, float]]
    # With explain: where the character was read, as weights over the reader's T input columns
    # (each 4 px of its input), summing to 1 (seq2seq: its attention; ctc: its run's probabilities).
    columns: list[float] | None = None


@dataclass
class CaptchaReading:
    """One captcha's answer: the text, the probability of the whole string, and per character
    its probability and the 3 most likely classes."""
    text: str
    confidence: float
    characters: list[CharReading] = field(default_factory=list)


def char_reading(probs: torch.Tensor, index: int) -> CharReading:
    """probs: (C,) class probabilities over CHARSET for one character position."""
    top = probs.topk(3)
    return CharReading(CHARSET[index], float(probs[index]),
                       [(CHARSET[int(i)], float(p)) for p, i in zip(top.values, top.indices)])


def conv_block(c_in: int, c_out: int, pool: tuple[int, int]) -> nn.Sequential:
    # Conv-BN-LeakyReLU, the reference design's block; the conv has no bias (BN supplies it).
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.1, inplace=True),
        nn.MaxPool2d(pool),
    )


class ConvColumns(nn.Module):
    """(B, 1, H, W) -> (B, T = W/4, F = C_last * H/16): four Conv-BN-LeakyReLU blocks pooling
    2x2, 2x2, 2x1, 2x1, so the height folds into the features and each of the T columns
    covers a 4-pixel-wide strip (with a receptive field of ~40 px around it)."""

    POOLS = ((2, 2), (2, 2), (2, 1), (2, 1))

    def __init__(self, channels: tuple[int, ...] | list[int], height: int, width: int):
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"expected 4 conv widths, got {channels}")
        if height % 16 or width % 4:
            raise ValueError(f"input {height}x{width}: height must divide by 16 and width by 4")
        blocks, c_in = [], 1
        for c_out, pool in zip(channels, self.POOLS):
            blocks.append(conv_block(c_in, c_out, pool))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.steps = width // 4
        self.features = channels[-1] * (height // 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.blocks(x)  # (B, C, H/16, W/4)
        b, c, h, w = f.shape
        return f.permute(0, 3, 1, 2).reshape(b, w, c * h)  # (B, T, C*H/16), columns left to right


def shifted_views(x: torch.Tensor, shifts: list[list[int]] | list[tuple[int, int]]) -> torch.Tensor:
    """x: (B, C, H, W) -> (S*B, C, H, W): x moved right by dx and down by dy pixels for each of
    the S (dx, dy) in `shifts`, view-major; the edge pixels repeat into the gap."""
    px = max(abs(int(dx)) for dx, _ in shifts)
    py = max(abs(int(dy)) for _, dy in shifts)
    h, w = x.shape[-2:]
    padded = F.pad(x, (px, px, py, py), mode="replicate")
    return torch.cat([padded[..., py - dy:py - dy + h, px - dx:px - dx + w] for dx, dy in shifts])


def init_gru(gru: nn.Module) -> None:
    # Orthogonal recurrent weights per gate keep the state's norm over the columns.
    hidden = gru.hidden_size
    for name, p in gru.named_parameters():
        if name.startswith("weight_hh"):
            for g in range(p.shape[0] // hidden):
                nn.init.orthogonal_(p.data[g * hidden:(g + 1) * hidden])
        elif name.startswith("weight_ih"):
            nn.init.xavier_uniform_(p.data)
        elif name.startswith("bias"):
            nn.init.zeros_(p.data)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions each cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def score_texts(predictions: list[str], labels: list[str]) -> dict[str, float]:
    """Full-string accuracy (the whole answer right, case ignored) and per-character accuracy
    = 1 - edit distance / label length, summed over the set. For same-length answers that is
    the share of positions right; a CTC answer with a missing or extra character is charged
    for it without shifting the rest."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError("need as many predictions as labels, at least one")
    full = sum(p.lower() == t.lower() for p, t in zip(predictions, labels))
    chars = sum(len(t) for t in labels)
    errors = sum(min(edit_distance(p.lower(), t.lower()), len(t)) for p, t in zip(predictions, labels))
    return {"full_string_accuracy": full / len(labels), "char_accuracy": 1 - errors / chars}
