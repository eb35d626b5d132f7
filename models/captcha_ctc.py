"""Captcha reader with a CTC head: conv columns -> bidirectional GRU -> 37 outputs per column
(36 characters + the CTC blank), decoded greedily.

Greedy CTC decoding: take the most likely output in every column, merge runs of the same
output, drop blanks. "a a - a b" -> "aab" needs a blank between the two a's; that is how
CTC writes doubled letters.

Optionally (`o0` in the config) the reader carries the o/0 glyph net of models/captcha_o0.py:
`read(x, full=...)` shows it the full-resolution image around each character read as o or 0,
centred on the columns of that character's run.

Constrained decoding (`read(..., constraints=...)`, models.captcha_common.Constraints): with a
charset, the outputs of the other characters are removed from every column and the rest
(blank + allowed) renormalised before decoding; with a length N, instead of the greedy path,
`ctc_best_path` finds the most probable single alignment that writes exactly N characters
(a Viterbi pass over (column, characters written so far, last output)).

With `test_time_shifts` in the config, the reader reads the image moved by each (dx, dy) in
one batch and decodes the mean of the views' (constrained) log-probabilities per column.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.captcha_common import (CHARSET, NUM_CHARS, CaptchaReading, Constraints, ConvColumns, char_reading,
                                   constraints_per_item, decode_label, init_gru, mean_of_views, shifted_views)
from models.captcha_o0 import INDEX_O, INDEX_ZERO, O0GlyphConfig, O0GlyphNet, cut_windows
from models.ctc import BLANK, greedy_runs, text_probability  # output 0 is the blank; output k is CHARSET[k - 1]



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
    # Calibration: the answer's confidences come from the log-probabilities divided by this
    # (fitted on validation captchas by training/captcha_calibrate.py); the decoding ignores it.
    temperature: float = 1.0
    # Inference only: (dx, dy) pixel shifts of the input read as one batch, their per-column
    # log-probabilities averaged before decoding (models.captcha_common.shifted_views). Empty:
    # the image as is. Chosen on validation per reader (the general reader gains; ctc did not).
    test_time_shifts: list[list[int]] = field(default_factory=list)

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

    def check_constraints(self, constraints: Constraints | None) -> None:
        """ValueError when no answer can meet them: N characters need N columns (2N - 1 when
        the charset has one character: a repeat needs a blank column between)."""
        if constraints is None or constraints.length is None:
            return
        most = ctc_max_length(self.conv.steps, len(constraints.charset))
        if constraints.length > most:
            single = " of a single character (a repeat needs a blank column between)" if len(constraints.charset) == 1 else ""
            raise ValueError(f"length={constraints.length} is more than the ctc reader can write: its "
                             f"{self.conv.steps} columns hold at most {most} characters{single}")

    @torch.inference_mode()
    def read(self, x: torch.Tensor, full: torch.Tensor | None = None, explain: bool = False,
             constraints: Constraints | Sequence[Constraints | None] | None = None) -> list[CaptchaReading]:
        """x: (B, 1, H, W) reader input; full: (B, 60, 160) grey pixels of the same images at the
        generator's size, for the o/0 glyph net (ignored without one). With `explain`, each
        character carries the probabilities of its run's columns, normalised. `constraints`: one
        for the batch or one per item (None: none): decoded under them (see the module doc);
        the glyph net only decides o against 0 where the item's charset allows both."""
        items = constraints_per_item(constraints, x.shape[0])
        log_probs, runs = self.answer(x, full, items)
        masks = None if all(c.allowed is None for c in items) else [c.mask() for c in items]
        return read_ctc(log_probs, runs, explain=explain, allowed=masks, temperature=self.config.temperature)

    @torch.inference_mode()
    def answer(self, x: torch.Tensor, full: torch.Tensor | None, items: Sequence[Constraints],
               ) -> tuple[torch.Tensor, list[list[tuple[int, list[int]]]]]:
        """What `read` decides, before any confidence: (log-probabilities (B, T, 37) under the
        constraints, the o/0 glyph net's split applied; per item its runs (character, columns))."""
        for c in items:
            self.check_constraints(c)
        shifts = self.config.test_time_shifts
        views = shifted_views(x, shifts) if shifts else x  # (V*B, 1, H, W), view-major
        # each view constrained and renormalised, then their mean: (B, T, 37)
        log_probs = mean_of_views(constrained_log_probs(self(views), list(items) * max(1, len(shifts))), x.shape[0])
        runs = [decode_runs(lp, c) for lp, c in zip(log_probs, items)]
        if self.o0 is not None and full is not None:
            allow = [c.allows("o") and c.allows("0") for c in items]
            log_probs, runs = self.refine_o0(log_probs, full.to(x.device), runs=runs, allow=allow)
        return log_probs, runs

    @torch.inference_mode()
    def o0_candidates(self, logits: torch.Tensor, full_width: int, runs: list[list[tuple[int, list[int]]]] | None = None,
                      allow: Sequence[bool] | None = None,
                      ) -> tuple[list[list[tuple[int, list[int]]]], list[tuple[int, int]], torch.Tensor]:
        """Runs per item (greedy on `logits` unless given), the (item, run) pairs read as o or 0
        (only in items where `allow`, if given), and their centres (M,) in x pixels of a
        `full_width` image (the mean column of the run; a column is 4 px of the input)."""
        if runs is None:
            runs = [greedy_runs(row) for row in logits.argmax(-1).tolist()]
        picked = [(i, j) for i, item in enumerate(runs) if allow is None or allow[i]
                  for j, (k, _) in enumerate(item) if k in (INDEX_O, INDEX_ZERO)]
        scale = full_width / self.config.width
        centres = torch.tensor([(4 * sum(runs[i][j][1]) / len(runs[i][j][1]) + 2) * scale for i, j in picked])
        return runs, picked, centres

    @torch.inference_mode()
    def refine_o0(self, logits: torch.Tensor, full: torch.Tensor, runs: list[list[tuple[int, list[int]]]] | None = None,
                  allow: Sequence[bool] | None = None):
        """logits (B, T, 37), full (B, 60, 160) -> (log-probs (B, T, 37), runs) for `read_ctc`:
        in the columns of every run read as o or 0, the mass of o and 0 is split again by the
        glyph net (mixed with the reader's log-odds at the run's best column) and the run's
        character is whichever of the two then wins; other runs and columns stay as they were.
        `runs`: the decoding to refine (default: greedy on `logits`); `allow`: per item whether
        to refine it at all (a charset without o or without 0 leaves nothing to decide)."""
        runs, picked, centres = self.o0_candidates(logits, full.shape[-1], runs=runs, allow=allow)
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
        tta = f"; reads {len(c.test_time_shifts)} shifted copies and averages" if c.test_time_shifts else ""
        return (f"4 conv blocks ({'-'.join(map(str, c.channels))}) on {c.height}x{c.width} grey -> BiGRU "
                f"{c.num_layers}x{c.hidden_size} over {self.conv.steps} columns -> CTC (36 + blank), greedy{tta}{glyph}")


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


def ctc_max_length(columns: int, allowed: int) -> int:
    """The most characters T columns can write: one per column, but a charset of one character
    can only repeat it with a blank column between each two."""
    return columns if allowed > 1 else (columns + 1) // 2


def constrained_log_probs(logits: torch.Tensor, items: Sequence[Constraints]) -> torch.Tensor:
    """logits (B, T, 37) -> log-probabilities (B, T, 37) with each item's disallowed characters
    at -inf (probability 0) and the blank + allowed outputs renormalised per column."""
    logits = logits.float()
    if any(c.allowed is not None for c in items):
        keep = torch.ones(len(items), NUM_CHARS + 1, dtype=torch.bool, device=logits.device)
        keep[:, 1:] = torch.stack([c.mask() for c in items]).to(logits.device)
        logits = logits.masked_fill(~keep[:, None, :], float("-inf"))
    return logits.log_softmax(-1)


def ctc_best_path(log_probs: torch.Tensor, length: int) -> list[int] | None:
    """log_probs (T, C): per column the log-probabilities of C outputs, output 0 the blank
    (-inf: never) -> the most probable single alignment (one output per column) that writes
    exactly `length` symbols once repeats merge and blanks drop; None if no alignment can.

    Viterbi over states (symbols written so far m, last output k): a column may repeat the last
    output (a run goes on; blank stays blank), write a blank, or write an output other than the
    last one, which is one more symbol -- so a doubled symbol needs a blank between its two runs."""
    lp = log_probs.detach().double().cpu().numpy()
    steps, c = lp.shape
    n = int(length)
    if n < 0:
        raise ValueError("length must be >= 0")
    score = np.full((n + 1, c), -np.inf)
    score[0, 0] = 0.0  # before the first column: nothing written, as if after a blank
    other = np.where(np.eye(c, dtype=bool), -np.inf, 0.0)  # (from, to): a new symbol needs another output
    counts = np.arange(n + 1)[:, None]
    back = np.empty((steps, n + 1, c), dtype=np.int64)  # the previous state, as m * c + k
    for t in range(steps):
        val, idx = score.copy(), counts * c + np.arange(c)  # the same output again (a run goes on)
        best = score.argmax(1)  # a blank after anything, same count
        val[:, 0], idx[:, 0] = score[counts[:, 0], best], counts[:, 0] * c + best
        if n:
            moves = score[:-1, :, None] + other[None]  # (n, from, to): one more symbol
            came = moves.argmax(1)  # (n, to)
            new = np.take_along_axis(moves, came[:, None, :], 1)[:, 0, :]
            better = new > val[1:]
            better[:, 0] = False  # a blank writes nothing
            val[1:] = np.where(better, new, val[1:])
            idx[1:] = np.where(better, counts[:-1] * c + came, idx[1:])
        score = val + lp[t][None, :]
        back[t] = idx
    last = int(score[n].argmax())
    if not np.isfinite(score[n, last]):
        return None
    path, state = [last] * steps, n * c + last
    for t in range(steps - 1, 0, -1):
        state = int(back[t][state // c, state % c])
        path[t - 1] = state % c
    return path


def decode_runs(log_probs: torch.Tensor, constraints: Constraints) -> list[tuple[int, list[int]]]:
    """One item's log-probabilities (T, 37), already constrained (`constrained_log_probs`) ->
    its runs (character 0..35, its columns): greedy, or with a length the best alignment of
    exactly that many characters (ValueError when the columns cannot hold them)."""
    if constraints.length is None:
        return greedy_runs(log_probs.argmax(-1).tolist())
    outputs = [BLANK] + [k + 1 for k in (range(NUM_CHARS) if constraints.allowed is None else sorted(constraints.allowed))]
    path = ctc_best_path(log_probs[:, outputs], constraints.length)
    if path is None:
        most = ctc_max_length(log_probs.shape[0], len(outputs) - 1)
        raise ValueError(f"length={constraints.length} is more than {log_probs.shape[0]} columns can write: "
                         f"at most {most} characters")
    return greedy_runs([outputs[k] for k in path])


def read_ctc(logits: torch.Tensor, runs: list[list[tuple[int, list[int]]]] | None = None,
             explain: bool = False, allowed: Sequence[torch.Tensor] | None = None,
             temperature: float = 1.0) -> list[CaptchaReading]:
    """logits (B, T, 37) -> readings. A character's confidence and top-3 come from the column
    of its run where it is most likely (blank excluded, renormalised over the 36 characters
    for the top-3). The string's confidence is the CTC probability of the decoded text, i.e.
    summed over every column alignment that spells it. `runs` (per item: (character, its
    columns)) replaces the greedy decoding of `logits` (the o/0 glyph net's decisions, or a
    constrained decoding); `allowed` (per item a (36,) bool mask) keeps the top-3 to a charset
    (the logits then already give the other characters nothing). `temperature` divides the
    logits for the probabilities only: the runs (the answer) are decided before it."""
    if runs is None:
        runs = [greedy_runs(row) for row in logits.argmax(-1).tolist()]
    probs = (logits.float() / temperature).softmax(-1)  # (B, T, 37)
    log_probs = probs.clamp_min(1e-30).log().transpose(0, 1)  # (T, B, 37)
    b, t = logits.shape[:2]
    readings = []
    for i, item_runs in enumerate(runs):
        chars = []
        for k, cols in item_runs:
            col = max(cols, key=lambda c: float(probs[i, c, k + 1]))
            char_probs = probs[i, col, 1:]  # (36,)
            top = char_reading(char_probs / char_probs.sum(), k, None if allowed is None else allowed[i])
            top.confidence = float(probs[i, col, k + 1])
            if explain:  # where it was read: its probability in each column of its run, normalised
                weights = torch.zeros(t)
                weights[cols] = probs[i, cols, k + 1].cpu()
                top.columns = (weights / weights.sum().clamp_min(1e-12)).tolist()
            chars.append(top)
        text = "".join(c.char for c in chars)
        readings.append(CaptchaReading(text, text_probability(log_probs[:, i], [CHARSET.index(c) for c in text]),
                                       chars))
    return readings
