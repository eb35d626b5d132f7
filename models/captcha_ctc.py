"""Captcha reader with a CTC head: conv columns -> bidirectional GRU -> 37 outputs per column
(36 characters + the CTC blank), decoded greedily.

Greedy CTC decoding: take the most likely output in every column, merge runs of the same
output, drop blanks. "a a - a b" -> "aab" needs a blank between the two a's; that is how
CTC writes doubled letters.

Optionally (`o0` in the config) the reader carries the o/0 glyph net of models/captcha_o0.py:
`read(x, full=...)` shows it the full-resolution image around each character read as o or 0,
centred on the columns of that character's run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.captcha_common import (CHARSET, NUM_CHARS, CaptchaReading, ConvColumns, char_reading,
                                   decode_label, init_gru)
from models.captcha_o0 import INDEX_O, INDEX_ZERO, O0GlyphConfig, O0GlyphNet, cut_windows

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
    # The o/0 glyph net's config (an O0GlyphConfig as a dict, its `mix` fitted for this reader);
    # None = the reader alone. Used by `read(x, full=...)`.
    o0: dict | None = None

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
        self.o0 = O0GlyphNet(O0GlyphConfig(**config.o0)) if config.o0 is not None else None

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
    def read(self, x: torch.Tensor, full: torch.Tensor | None = None, explain: bool = False) -> list[CaptchaReading]:
        """x: (B, 1, H, W) reader input; full: (B, 60, 160) grey pixels of the same images at the
        generator's size, for the o/0 glyph net (ignored without one). With `explain`, each
        character carries the probabilities of its run's columns, normalised."""
        logits = self(x)
        if self.o0 is None or full is None:
            return read_ctc(logits, explain=explain)
        return read_ctc(*self.refine_o0(logits, full.to(x.device)), explain=explain)

    @torch.inference_mode()
    def o0_candidates(self, logits: torch.Tensor, full_width: int,
                      ) -> tuple[list[list[tuple[int, list[int]]]], list[tuple[int, int]], torch.Tensor]:
        """Greedy runs per item, the (item, run) pairs read as o or 0, and their centres (M,) in
        x pixels of a `full_width` image (the mean column of the run; a column is 4 px of the input)."""
        runs = [greedy_runs(row) for row in logits.argmax(-1).tolist()]
        picked = [(i, j) for i, item in enumerate(runs) for j, (k, _) in enumerate(item) if k in (INDEX_O, INDEX_ZERO)]
        scale = full_width / self.config.width
        centres = torch.tensor([(4 * sum(runs[i][j][1]) / len(runs[i][j][1]) + 2) * scale for i, j in picked])
        return runs, picked, centres

    @torch.inference_mode()
    def refine_o0(self, logits: torch.Tensor, full: torch.Tensor):
        """logits (B, T, 37), full (B, 60, 160) -> (log-probs (B, T, 37), runs) for `read_ctc`:
        in the columns of every run read as o or 0, the mass of o and 0 is split again by the
        glyph net (mixed with the reader's log-odds at the run's best column) and the run's
        character is whichever of the two then wins; other runs and columns stay as they were."""
        runs, picked, centres = self.o0_candidates(logits, full.shape[-1])
        log_probs = logits.float().log_softmax(-1)
        if not picked:
            return log_probs, runs
        items = torch.tensor([i for i, _ in picked])
        windows = cut_windows(full[items], centres.unsqueeze(1).to(full.device), self.o0.config.width)  # (M, 1, 60, 48)
        glyph = self.o0(windows).float()  # (M,)
        a, b = self.o0.config.mix
        o, zero = INDEX_O + 1, INDEX_ZERO + 1  # CTC outputs (0 is the blank)
        for (i, j), g in zip(picked, glyph.tolist()):
            k, cols = runs[i][j]
            best = max(cols, key=lambda c: float(log_probs[i, c, k + 1]))
            z = a * g + b * float(log_probs[i, best, zero] - log_probs[i, best, o])
            mass = torch.logaddexp(log_probs[i, cols, o], log_probs[i, cols, zero])
            log_probs[i, cols, zero] = mass + F.logsigmoid(torch.tensor(z))
            log_probs[i, cols, o] = mass + F.logsigmoid(torch.tensor(-z))
            runs[i][j] = (INDEX_ZERO if z > 0 else INDEX_O, cols)
        return log_probs, runs

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> str:
        c = self.config
        glyph = "; o vs 0 decided again by a glyph CNN on the full-resolution image" if c.o0 is not None else ""
        return (f"4 conv blocks ({'-'.join(map(str, c.channels))}) on {c.height}x{c.width} grey -> BiGRU "
                f"{c.num_layers}x{c.hidden_size} over {self.conv.steps} columns -> CTC (36 + blank), greedy{glyph}")


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


def greedy_runs(row: list[int]) -> list[tuple[int, list[int]]]:
    """Per emitted character: (its index 0..35, the columns of its run)."""
    runs, prev = [], BLANK
    for t, k in enumerate(row):
        if k != BLANK and k == prev:
            runs[-1][1].append(t)
        elif k != BLANK:
            runs.append((k - 1, [t]))
        prev = k
    return runs


def read_ctc(logits: torch.Tensor, runs: list[list[tuple[int, list[int]]]] | None = None,
             explain: bool = False) -> list[CaptchaReading]:
    """logits (B, T, 37) -> readings. A character's confidence and top-3 come from the column
    of its run where it is most likely (blank excluded, renormalised over the 36 characters
    for the top-3). The string's confidence is the CTC probability of the decoded text, i.e.
    summed over every column alignment that spells it. `runs` (per item: (character, its
    columns)) replaces the greedy decoding of `logits` (the o/0 glyph net's decisions)."""
    probs = logits.float().softmax(-1)  # (B, T, 37)
    log_probs = probs.clamp_min(1e-30).log().transpose(0, 1)  # (T, B, 37)
    b, t = logits.shape[:2]
    if runs is None:
        runs = [greedy_runs(row) for row in probs.argmax(-1).tolist()]
    readings = []
    for i, item_runs in enumerate(runs):
        chars = []
        for k, cols in item_runs:
            col = max(cols, key=lambda c: float(probs[i, c, k + 1]))
            char_probs = probs[i, col, 1:]  # (36,)
            top = char_reading(char_probs / char_probs.sum(), k)
            top.confidence = float(probs[i, col, k + 1])
            if explain:  # where it was read: its probability in each column of its run, normalised
                weights = torch.zeros(t)
                weights[cols] = probs[i, cols, k + 1].cpu()
                top.columns = (weights / weights.sum().clamp_min(1e-12)).tolist()
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
