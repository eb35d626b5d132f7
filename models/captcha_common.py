"""What the two captcha readers share: the charset, the conv feature extractor, the answer type.

The captcha task: 4 characters drawn in mixed case from 0-9, a-z, A-Z; reading is
case-insensitive, so there are 36 classes (0-9, a-z) and answers are lower case.
Both networks (`models.captcha_ctc`, `models.captcha_seq2seq`) read the image column by
column: the conv stack turns a (B, 1, H, W) image into (B, W/4, C * H/16) column features.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Sequence

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


def char_reading(probs: torch.Tensor, index: int, allowed: torch.Tensor | None = None) -> CharReading:
    """probs: (C,) class probabilities over CHARSET for one character position; allowed: (C,)
    bool, the classes a charset constraint leaves (top-3 only among them: fewer when fewer are left)."""
    if allowed is None or bool(allowed.all()):
        top = probs.topk(3)
        pairs = zip(top.values, top.indices)
    else:
        candidates = allowed.nonzero().flatten().to(probs.device)
        top = probs[candidates].topk(min(3, len(candidates)))
        pairs = zip(top.values, candidates[top.indices])
    return CharReading(CHARSET[index], float(probs[index]), [(CHARSET[int(i)], float(p)) for p, i in pairs])


# --- constraints: what a request may ask the readers to answer (decoded under, not filtered after) ---

MAX_CONSTRAINED_LENGTH = 8
NAMED_CHARSETS = {"digits": string.digits, "letters": string.ascii_lowercase, "alnum": CHARSET}
_EXPLICIT_OK = set(string.digits + string.ascii_letters)


@dataclass(frozen=True)
class Constraints:
    """What an answer must look like. `allowed`: the class indices (0..35 into CHARSET) the
    answer may use, None = all 36; `length`: exactly that many characters, None = the reader's own.
    The readers decode under them: disallowed classes lose their probability before decoding
    (the rest renormalised), and the ctc reader searches the best alignment of that length."""
    allowed: frozenset[int] | None = None
    length: int | None = None

    def __post_init__(self):
        if self.length is not None and not 1 <= self.length <= MAX_CONSTRAINED_LENGTH:
            raise ValueError(f"length must be from 1 to {MAX_CONSTRAINED_LENGTH}, got {self.length}")
        if self.allowed is not None:
            if not self.allowed or not set(self.allowed) <= set(range(NUM_CHARS)):
                raise ValueError(f"allowed must be a non-empty set of class indices 0..{NUM_CHARS - 1}")
            if len(self.allowed) == NUM_CHARS:
                object.__setattr__(self, "allowed", None)  # every class: no charset constraint

    @property
    def free(self) -> bool:
        return self.allowed is None and self.length is None

    @property
    def charset(self) -> str:
        """The allowed characters in CHARSET order."""
        return CHARSET if self.allowed is None else "".join(CHARSET[i] for i in sorted(self.allowed))

    def allows(self, char: str) -> bool:
        return self.allowed is None or _INDEX[char.lower()] in self.allowed

    def mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(36,) bool: True where the class is allowed."""
        m = torch.ones(NUM_CHARS, dtype=torch.bool, device=device)
        if self.allowed is not None:
            m[:] = False
            m[sorted(self.allowed)] = True
        return m


NO_CONSTRAINTS = Constraints()


def parse_constraints(length: int | None = None, charset: str | None = None) -> Constraints:
    """The query's `length` and `charset` -> Constraints; ValueError with what is allowed.
    charset: `digits` (0-9), `letters` (a-z), `alnum` (0-9a-z) or the characters themselves
    from 0-9a-zA-Z (case-insensitive, repeats ignored); a name wins over the same letters."""
    if length is not None and not 1 <= length <= MAX_CONSTRAINED_LENGTH:
        raise ValueError(f"length must be a whole number from 1 to {MAX_CONSTRAINED_LENGTH}, got {length}")
    allowed = None
    if charset is not None:
        chars = NAMED_CHARSETS.get(charset.lower(), charset)
        bad = sorted(set(chars) - _EXPLICIT_OK)
        if not chars or bad:
            found = f"got {charset!r}" if not bad else f"{', '.join(repr(c) for c in bad)} in {charset!r} is not"
            raise ValueError("charset must be digits, letters, alnum or the allowed characters themselves, "
                             f"one or more of 0-9a-zA-Z (case-insensitive), e.g. charset=0123abc; {found}"
                             + (" allowed" if bad else ""))
        allowed = frozenset(_INDEX[c] for c in chars.lower())
    return Constraints(allowed=allowed, length=length)


def with_answers(constraints: Constraints, answers: str | None) -> Constraints:
    """A reader's own answer charset (its manifest's `answers`: a fine-tuned reader keeps to the
    characters of its labels) as the charset of requests that name none."""
    if constraints.allowed is not None or not answers:
        return constraints
    return Constraints(allowed=frozenset(_INDEX[c] for c in answers), length=constraints.length)


def constraints_per_item(constraints: Constraints | Sequence[Constraints | None] | None, batch: int
                         ) -> list[Constraints]:
    """One Constraints for the batch, one per item (None = none), or None -> a list of `batch`."""
    if constraints is None or isinstance(constraints, Constraints):
        return [constraints or NO_CONSTRAINTS] * batch
    items = [c or NO_CONSTRAINTS for c in constraints]
    if len(items) != batch:
        raise ValueError(f"{len(items)} constraints for a batch of {batch}")
    return items


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


def mean_of_views(log_probs: torch.Tensor, batch: int) -> torch.Tensor:
    """(V*B, ...) view-major log-probabilities (`shifted_views` order) -> (B, ...): the views'
    mean, renormalised over the last axis."""
    views = len(log_probs) // batch
    return log_probs if views == 1 else log_probs.view(views, batch, *log_probs.shape[1:]).mean(0).log_softmax(-1)


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
