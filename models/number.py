"""Number reader: a line of handwritten digits -> its text. Convolutions turn the line into
columns, a bidirectional GRU reads the columns left to right and back, and a CTC head says per
column which digit (or blank) it sees; greedy decoding merges runs and drops blanks.

Optionally (`glyph` in the config) a small CNN reads each digit again from its span
(models/number_glyph.py), and its probabilities are mixed with the reader's.

Lines have any width. A batch pads them on the right to the widest; every block zeroes the
padded columns again and the GRU is packed, so an image gets exactly the same outputs alone or
in any batch (tests/test_number.py checks it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.ctc import greedy_runs, padded_ctc_loss, text_probability  # output 0 is the blank; output k is the digit k - 1
from models.number_glyph import GLYPH_SIZE, DigitGlyphConfig, DigitGlyphNet, glyph_crop, mix_digits
from models.preprocess import NumberLine, number_line

NUM_DIGITS = 10


@dataclass
class NumberReaderConfig:
    variant: str = "ctc"
    height: int = 28  # the line's height in pixels (ink 20 px tall, as MNIST's digits)
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    projection: int = 192  # the column features after the convolutions
    hidden_size: int = 128  # per direction
    num_layers: int = 2
    dropout: float = 0.1
    # The digit glyph net's config (a DigitGlyphConfig as a dict, its `mix` fitted for this
    # reader; models/number_glyph.py); None = the reader alone.
    glyph: dict | None = None
    # Read an unsure line again at other sizes: a reading whose text has a probability under
    # `below` is read again from the line's source ink scaled by each of `scales` (relative to its
    # own ink height), and the texts vote (`reread` below); None = one reading per line.
    reread: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def stride(self) -> int:
        """Pixels of the line per output column."""
        return 2


@dataclass
class DigitRun:
    digit: int
    columns: list[int]  # the output columns of its run
    confidence: float  # its probability at the run's best column
    top3: list[tuple[int, float]]  # the 3 most likely digits at that column (blank left out, renormalised)
    column: int = -1  # that column: the one of its run where its digit is most likely
    span: tuple[float, float] | None = None  # [x0, x1) of its ink in the line's pixels (`read` with `ink`)


@dataclass
class NumberReading:
    text: str
    confidence: float  # CTC probability of `text`: summed over every column alignment that spells it
    digits: list[DigitRun]


class _Block(nn.Module):
    """conv 3x3 -> BatchNorm -> ReLU, then optional max-pooling."""

    def __init__(self, c_in: int, c_out: int, pool: tuple[int, int] | None):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.pool = pool

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), mask (B, 1, 1, W) of 0/1 -> (B, C', H', W') with the padding zeroed."""
        x = F.relu(self.bn(self.conv(x))) * mask
        if self.pool is not None:
            x = F.max_pool2d(x, self.pool)
        return x


class NumberReader(nn.Module):
    def __init__(self, config: NumberReaderConfig):
        super().__init__()
        if config.variant != "ctc":
            raise ValueError(f"NumberReader needs variant 'ctc', got {config.variant!r}")
        self.config = config
        c = config.channels
        # 28 x W -> 14 x W/2 -> 7 x W/2 -> 7 x W/2: one column per 2 px, so even two touching
        # 1s (about 5 px wide each) get the three columns CTC needs ("1", blank, "1").
        pools = [(2, 2), (2, 1)] + [None] * (len(c) - 2)
        self.blocks = nn.ModuleList(_Block(a, b, p) for a, b, p in zip([1] + c[:-1], c, pools))
        rows = config.height // 4
        self.project = nn.Linear(c[-1] * rows, config.projection)
        self.rnn = nn.GRU(config.projection, config.hidden_size, num_layers=config.num_layers, batch_first=True,
                          bidirectional=True, dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(2 * config.hidden_size, NUM_DIGITS + 1)
        self.glyph = DigitGlyphNet(DigitGlyphConfig(**config.glyph)) if config.glyph is not None else None

    def forward(self, x: torch.Tensor, widths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 1, H, W) ink in [0, 1] on 0, right-padded with 0; widths: (B,) each line's own
        width in pixels (even; default W) -> (logits (B, T, 11), lengths (B,)), T = W / 2."""
        b, _, _, w = x.shape
        if widths is None:
            widths = torch.full((b,), w, dtype=torch.long)
        widths = widths.to(x.device)
        for block in self.blocks:
            cols = torch.arange(x.shape[-1], device=x.device)
            scale = w // x.shape[-1]  # pixels per column at this depth
            mask = (cols[None, :] < (widths[:, None] // scale)).to(x.dtype)[:, None, None, :]  # (B, 1, 1, W')
            x = block(x, mask)
        b, c, h, t = x.shape
        cols = x.permute(0, 3, 1, 2).reshape(b, t, c * h)  # (B, T, C*H)
        cols = F.relu(self.project(cols))
        lengths = (widths // self.config.stride).cpu()
        packed = pack_padded_sequence(cols, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)  # (B, T, 2H), zeros past each length
        return self.head(self.dropout(out)), lengths

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """outputs from forward; targets (B, L) digits 0..9, padded with -1."""
        logits, lengths = outputs  # (fit hands outputs over as fp32: the lengths too)
        return padded_ctc_loss(logits, lengths, targets)

    @torch.inference_mode()
    def read(self, x: torch.Tensor, widths: torch.Tensor | None = None, spans: bool = False,
             lines: list[NumberLine] | None = None, reread: bool = True) -> list[NumberReading]:
        """x (B, 1, H, W), widths (B,) -> one reading per line; with `spans`, each digit's ink
        extent in the line's pixels too. A reader with a glyph net reads each digit again
        inside its span (and so always finds the spans); one that cuts its crops from the
        source ink needs the B NumberLines of x as `lines`. With `lines` (and `reread` in the
        config), unsure lines are read again at other sizes (`reread_unsure`)."""
        logits, lengths = self(x, widths)
        readings = read_number(logits, lengths)
        if spans or self.glyph is not None:
            self.find_spans(x, lengths, readings)
        if self.glyph is not None:
            self.refine(x, logits, readings, lines)
        if reread and self.config.reread is not None and lines is not None:
            self.reread_unsure(readings, lines, x.device)
        return readings

    def reread_unsure(self, readings: list[NumberReading], lines: list[NumberLine], device: torch.device) -> None:
        """Each reading whose text's probability is under the config's `below`: its line is
        composed again from its source ink at each of the `scales` (0.8-1.2 makes the ink 16-24 px
        tall instead of 20: the reader and glyph net see other pixels of the same digits) and read again; the
        distinct texts are scored by the sum of their probabilities over the readings (the first
        one included) and the best wins. Its reading (digits, spans mapped back into the first
        line's pixels) is the most confident one that spells it; its confidence is that sum over
        the number of readings, so a text only some sizes agree on comes back less sure. Confident
        lines (most of them) cost nothing more."""
        below, scales = self.config.reread["below"], self.config.reread["scales"]
        unsure = [i for i, r in enumerate(readings) if r.confidence < below and lines[i].source is not None]
        if not unsure:
            return
        again, owner = [], []
        for i in unsure:
            line = lines[i]
            source = line.source.numpy()
            ink_height = source.shape[0] * line.source_scale  # about the contract's, unless a wide line was shrunk
            for scale in scales:
                contract = {"height": self.config.height, "pad": line.pad, "ink_height": ink_height * scale,
                            "max_width": math.ceil(line.width * scale) + 2 * line.pad + 2}
                again.append(number_line(source, contract))
                owner.append(i)
        x, widths = pad_lines([line.x for line in again])
        rereadings = self.read(x.to(device), widths, spans=True, lines=again, reread=False)
        candidates: dict[int, list[tuple[NumberReading, NumberLine]]] = {i: [(readings[i], lines[i])] for i in unsure}
        for i, reading, line in zip(owner, rereadings, again):
            candidates[i].append((reading, line))
        for i, options in candidates.items():
            votes: dict[str, float] = {}
            for reading, _ in options:
                votes[reading.text] = votes.get(reading.text, 0.0) + reading.confidence
            text = max(votes, key=votes.get)
            best, line = max(((r, l) for r, l in options if r.text == text), key=lambda o: o[0].confidence)
            if best is not readings[i]:
                first = lines[i]
                for d in best.digits:  # its line's pixels -> source pixels -> the first line's pixels
                    d.span = tuple(first.pad + line.to_upload(v) * first.source_scale for v in d.span)
            readings[i] = NumberReading(text, votes[text] / len(options), best.digits)

    def find_spans(self, x: torch.Tensor, lengths: torch.Tensor, readings: list[NumberReading]) -> None:
        ink = x[:, 0].float().sum(1).cpu().numpy()  # (B, W) ink per pixel column
        for reading, columns, length in zip(readings, ink, lengths.tolist()):
            centres = [self.config.stride * (sum(d.columns) / len(d.columns) + 0.5) for d in reading.digits]
            for d, span in zip(reading.digits, digit_spans(columns[:length * self.config.stride], centres)):
                d.span = span

    def digit_evidence(self, x: torch.Tensor, logits: torch.Tensor, readings: list[NumberReading],
                       lines: list[NumberLine] | None = None, crops_from: str = "line"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per digit read (lines in order, digits left to right): its glyph crop (N, 1, 28, 28)
        from its span (in the 28 px line, or with `crops_from="source"` in each line's source
        ink), and the reader's probabilities (N, 11) at the column of its run where its digit
        is most likely."""
        items = [(i, d) for i, reading in enumerate(readings) for d in reading.digits]
        if not items:
            return torch.zeros(0, 1, GLYPH_SIZE, GLYPH_SIZE), torch.zeros(0, NUM_DIGITS + 1)
        if crops_from == "source":
            if lines is None or len(lines) != len(readings) or any(line.source is None for line in lines):
                raise ValueError("this glyph net cuts its crops from the source ink: pass each line's NumberLine")
            crops = torch.stack([glyph_crop(lines[i].source, lines[i].to_source(d.span)) for i, d in items])
        else:
            ink = x[:, 0].float().cpu()  # (B, H, W)
            crops = torch.stack([glyph_crop(ink[i], d.span) for i, d in items])
        crops = crops[:, None]
        rows, cols = torch.tensor([i for i, _ in items]), torch.tensor([d.column for _, d in items])
        at = logits[rows, cols].float().softmax(-1).cpu()  # (N, 11)
        return crops, at

    def refine(self, x: torch.Tensor, logits: torch.Tensor, readings: list[NumberReading],
               lines: list[NumberLine] | None = None) -> None:
        """Each digit read again by the glyph net from its span, mixed with the reader's own
        digit probabilities at its column. The text's confidence is the reader's CTC probability
        of its text, times the ratio of the digits' mixed probabilities to the reader's own (the
        same number when the mix changes nothing)."""
        crops, at = self.digit_evidence(x, logits, readings, lines, self.glyph.config.crops)
        if not len(crops):
            return
        glyph = self.glyph(crops.to(x.device)).float().cpu()  # (N, 10)
        reader = at[:, 1:] / at[:, 1:].sum(-1, keepdim=True)  # (N, 10) without the blank
        mixed = mix_digits(glyph, reader, self.glyph.config.mix)
        k = 0
        for reading in readings:
            change = 1.0  # what the mix did to the product of the digits' probabilities
            for d in reading.digits:
                top = mixed[k].topk(3)
                confidence = float((1 - at[k, 0]) * top.values[0])  # p(not blank) * p(digit | a digit)
                change *= confidence / max(d.confidence, 1e-12)
                d.digit, d.confidence = int(top.indices[0]), confidence
                d.top3 = [(int(j), float(q)) for q, j in zip(top.values, top.indices)]
                k += 1
            reading.text = "".join(str(d.digit) for d in reading.digits)
            reading.confidence = min(1.0, reading.confidence * change)

    def without_glyph(self) -> "NumberReader":
        """The reader alone (itself, when it has no glyph net)."""
        if self.glyph is None:
            return self
        plain = NumberReader(replace(self.config, glyph=None))
        plain.load_state_dict({k: v for k, v in self.state_dict().items() if not k.startswith("glyph.")})
        return plain.to(next(self.parameters()).device).train(self.training)

    def with_glyph(self, net: DigitGlyphNet) -> "NumberReader":
        """This reader's weights with `net` as its glyph net (its config, mix included)."""
        combined = NumberReader(replace(self.config, glyph=net.config.to_dict()))
        combined.load_state_dict({**self.without_glyph().state_dict(),
                                  **{f"glyph.{k}": v for k, v in net.state_dict().items()}})
        return combined.eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> str:
        c = self.config
        glyph = "; each digit read again by a CNN on its own span" if c.glyph is not None else ""
        return (f"{len(c.channels)} conv blocks ({'-'.join(map(str, c.channels))}) on a {c.height} px line -> "
                f"BiGRU {c.num_layers}x{c.hidden_size} over one column per {c.stride} px -> CTC (10 digits + blank)"
                f"{glyph}")


def pad_lines(lines: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Lines (1, 1, H, W_i) -> (one batch (B, 1, H, max W_i) right-padded with 0, widths (B,))."""
    widths = torch.tensor([line.shape[-1] for line in lines])
    x = lines[0].new_zeros(len(lines), 1, lines[0].shape[2], int(widths.max()))
    for i, line in enumerate(lines):
        x[i, :, :, :line.shape[-1]] = line[0]
    return x, widths


def digit_spans(ink: np.ndarray, centres: list[float], threshold: float = 0.05) -> list[tuple[float, float]]:
    """Where each digit's ink lies: ink (W,) per pixel column of a line, centres (n,) the x where
    each digit was read (left to right) -> n spans [x0, x1). Neighbours are split at the column
    with the least ink between their centres (the gap, or the thinnest join where they touch);
    a span is the extent of the ink in its part."""
    w = len(ink)
    cuts = [0]
    for a, b in zip(centres, centres[1:]):
        lo, hi = int(math.floor(a)), int(math.ceil(b))
        lo, hi = max(lo, cuts[-1]), min(max(hi, lo + 1), w)
        between = ink[lo:hi]
        if len(between) == 0:
            cuts.append(lo)
            continue
        least = between.min()
        flat = np.flatnonzero(between <= least + 1e-6)
        cuts.append(lo + int(flat[len(flat) // 2]))  # the middle of the emptiest stretch
    cuts.append(w)
    spans = []
    for (x0, x1), c in zip(zip(cuts, cuts[1:]), centres):
        inked = np.flatnonzero(ink[x0:x1] > threshold * max(float(ink.max()), 1e-6))
        if len(inked):
            spans.append((float(x0 + inked[0]), float(x0 + inked[-1] + 1)))
        else:
            spans.append((max(0.0, c - 4), min(float(w), c + 4)))
    return spans


def read_number(logits: torch.Tensor, lengths: torch.Tensor) -> list[NumberReading]:
    """logits (B, T, 11), lengths (B,) -> one reading per line (greedy decoding; the string's
    confidence is its CTC probability)."""
    probs = logits.float().softmax(-1)
    log_probs = probs.clamp_min(1e-30).log()
    readings = []
    for i, length in enumerate(lengths.tolist()):
        p = probs[i, :length]  # (T_i, 11)
        runs = greedy_runs(p.argmax(-1).tolist())
        digits = []
        for k, cols in runs:
            col = max(cols, key=lambda c: float(p[c, k + 1]))
            rest = p[col, 1:] / p[col, 1:].sum()
            top = rest.topk(3)
            digits.append(DigitRun(k, cols, float(p[col, k + 1]),
                                   [(int(d), float(q)) for q, d in zip(top.values, top.indices)], col))
        text = "".join(str(d.digit) for d in digits)
        readings.append(NumberReading(text, text_probability(log_probs[i, :length], [d.digit for d in digits]),
                                      digits))
    return readings
