"""Captcha reader as sequence to sequence, the reference design: conv columns -> a GRU encoder
reading the columns -> a second GRU that emits exactly 4 characters -> Linear(..., 36).

The reference fed the decoder the encoder's last output, repeated 4 times (`attention=False`
here). By default the decoder instead looks back at the encoded columns at each of its 4
steps (additive attention, its previous state as the query): it then learns where each
character sits instead of squeezing all four into one vector, and trains in far fewer
samples. Decoding is a plain argmax per step: always 4 characters, no search.

Optionally (`o0` in the config) the reader carries a second, small net for its most common
confusion, o against 0 (models/captcha_o0.py): `read(x, full=...)` shows it the full-resolution
image around each character the reader read as o or 0, centred where the reader's attention
for that character centres.

Any length (`end_token` in the config): the decoder takes `length` + 1 steps over 36
characters and an end token, and the answer is what comes before the first end (the last step
can only end). Without it, the reference design: exactly `length` characters.

Constrained decoding (`read(..., constraints=...)`): the characters a charset leaves out get
-inf logits at every step of every shifted view, before the views are averaged (so each view
is renormalised over the allowed ones). `length=N` on an end-token reader: steps before N may not
end and step N must (masked the same way); with a charset and no length, N is the length it reads
without the charset. The string's confidence then also counts how likely the reader itself found
ending at N (`charge_imposed_lengths`). A fixed-length reader honours only its own length.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.captcha_common import (CAPTCHA_LENGTH, NUM_CHARS, CaptchaReading, Constraints, ConvColumns, char_reading,
                                   constraints_per_item, decode_label, init_gru, mean_of_views, shifted_views)
from models.captcha_o0 import (INDEX_O, INDEX_ZERO, O0GlyphConfig, O0GlyphNet, attention_centres, cut_windows,
                               mix_o0)


@dataclass
class CaptchaSeq2SeqConfig:
    variant: str = "seq2seq"
    height: int = 32
    width: int = 96
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])
    encoder_hidden: int = 128  # per direction (the encoder is bidirectional)
    encoder_layers: int = 1
    decoder_hidden: int = 256
    attention: bool = True
    attention_size: int = 128
    length: int = CAPTCHA_LENGTH  # the characters it writes (with end_token: at most)
    end_token: bool = False  # one more step and one more class: answers of 0..length characters
    dropout: float = 0.0  # before the head (training only)
    # Inference only: (dx, dy) pixel shifts of the input whose log-probabilities `log_probs` and
    # `read` average (test-time augmentation); empty = the image as is. Weights don't depend on it.
    test_time_shifts: list[list[int]] = field(default_factory=list)
    # The o/0 glyph net's config (an O0GlyphConfig as a dict); None = the reader alone. Needs
    # attention (its windows are centred by it) and `read(x, full=...)` to be used.
    o0: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def steps(self) -> int:
        return self.length + 1 if self.end_token else self.length

    @property
    def classes(self) -> int:
        return NUM_CHARS + 1 if self.end_token else NUM_CHARS


END = NUM_CHARS  # the end token's class index (end-token readers only)


class CaptchaSeq2Seq(nn.Module):
    def __init__(self, config: CaptchaSeq2SeqConfig):
        super().__init__()
        if config.variant != "seq2seq":
            raise ValueError(f"CaptchaSeq2Seq needs variant 'seq2seq', got {config.variant!r}")
        self.config = config
        self.conv = ConvColumns(config.channels, config.height, config.width)
        self.encoder = nn.GRU(self.conv.features, config.encoder_hidden, num_layers=config.encoder_layers,
                              batch_first=True, bidirectional=True)
        enc = 2 * config.encoder_hidden
        hid = config.decoder_hidden
        if config.attention:
            self.init_state = nn.Linear(enc, hid)
            self.keys = nn.Linear(enc, config.attention_size, bias=False)
            self.query = nn.Linear(hid, config.attention_size)
            self.score = nn.Linear(config.attention_size, 1, bias=False)
            # Step t's input: the attended columns plus a learned "which character" vector.
            self.position = nn.Parameter(torch.randn(config.steps, 32) * 0.1)
            self.decoder = nn.GRUCell(enc + 32, hid)
        else:
            self.decoder = nn.GRU(enc, hid, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(hid, config.classes)
        init_gru(self.encoder)
        init_gru(self.decoder)
        if config.o0 is not None and not config.attention:
            raise ValueError("the o/0 glyph net needs attention (its windows are centred by it)")
        self.o0 = O0GlyphNet(O0GlyphConfig(**config.o0)) if config.o0 is not None else None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, H, W) standardised image -> encoded columns (B, T, 2He), T = W/4."""
        enc, _ = self.encoder(self.conv(x))
        return enc

    def emit(self, enc: torch.Tensor, return_attention: bool = False):
        """Encoded columns (B, T, 2He) -> logits (B, S, C) (and attention (B, S, T)): S steps,
        C = 36 characters (+ the end token); S = C's length (+ 1), see the config."""
        b, t, _ = enc.shape
        if not self.config.attention:
            last = enc[:, -1]  # (B, 2He): forward direction has read everything, backward its last column
            out, _ = self.decoder(last.unsqueeze(1).expand(b, self.config.steps, last.shape[-1]).contiguous())
            logits = self.head(self.dropout(out))  # (B, S, C)
            return (logits, None) if return_attention else logits
        keys = self.keys(enc)  # (B, T, A)
        h = torch.tanh(self.init_state(enc.mean(1)))  # (B, Hd)
        steps, weights = [], []
        for i in range(self.config.steps):
            scores = self.score(torch.tanh(keys + self.query(h).unsqueeze(1))).squeeze(-1)  # (B, T)
            alpha = scores.softmax(-1)
            context = torch.bmm(alpha.unsqueeze(1), enc).squeeze(1)  # (B, 2He)
            h = self.decoder(torch.cat([context, self.position[i].expand(b, -1)], -1), h)
            steps.append(h)
            weights.append(alpha)
        logits = self.head(self.dropout(torch.stack(steps, 1)))  # (B, S, C)
        return (logits, torch.stack(weights, 1)) if return_attention else logits

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        """x: (B, 1, H, W) standardised image -> logits (B, S, C) (4 steps, 36 classes for the
        reference design); with `return_attention` also the attention weights (B, S, T) over the
        T = W/4 columns."""
        return self.emit(self.encode(x), return_attention)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """targets: (B, S) class indices (0..35, END after the last character of an end-token
        reader's answer, -100 on the steps after it: not scored)."""
        return F.cross_entropy(logits.reshape(-1, self.config.classes), targets.reshape(-1), ignore_index=-100)

    @torch.inference_mode()
    def decode(self, logits: torch.Tensor) -> list[str]:
        """Greedy: the argmax per step, up to the first end token."""
        return [decode_label(row[:row.index(END)] if END in row else row) if self.config.end_token
                else decode_label(row) for row in logits.argmax(-1).tolist()]

    def step_mask(self, items: Sequence[Constraints | None], device) -> torch.Tensor | None:
        """(B, S, C) bool, where each step may write each class, or None when nothing is masked.
        A charset masks characters on every step; an end-token reader may end only on its last
        step (or where no more characters fit) and, with length=N, must end exactly at step N."""
        end = self.config.end_token
        if not end and all(c is None or c.allowed is None for c in items):
            return None
        mask = torch.ones(len(items), self.config.steps, self.config.classes, dtype=torch.bool, device=device)
        for i, c in enumerate(items):
            if c is not None and c.allowed is not None:
                mask[i, :, :NUM_CHARS] = c.mask(device)
            if end:
                mask[i, -1, :NUM_CHARS] = False  # nothing more to write: the last step ends
                if c is not None and c.length is not None:
                    mask[i, :c.length, END] = False
                    mask[i, c.length, :NUM_CHARS] = False
        return mask

    @torch.inference_mode()
    def log_probs(self, x: torch.Tensor, return_attention: bool = False, allowed: torch.Tensor | None = None):
        """x: (B, 1, H, W) -> (B, S, C) log-probabilities; with `test_time_shifts`, the mean of
        the V shifted views' log-probabilities (one batch of V*B), renormalised. With
        `return_attention` also the attention (B, S, T) on the unshifted image. `allowed`
        (B, C) or (B, S, C) bool (see `step_mask`): the other classes get -inf logits on every
        view, before the views are averaged (each view renormalised over the allowed ones)."""
        logits, attention = self.view_logits(x)
        lp = self.average_views(logits, x.shape[0], allowed)
        return (lp, self.plain_attention(x, attention)) if return_attention else lp

    def view_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, 1, H, W) -> logits (V*B, S, C) and attention (V*B, S, T) of the V shifted views
        (V = 1, the image as is, without `test_time_shifts`): the one forward pass a reading needs."""
        shifts = self.config.test_time_shifts
        return self(shifted_views(x, shifts) if shifts else x, return_attention=True)

    @staticmethod
    def average_views(logits: torch.Tensor, batch: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """`view_logits`' (V*B, S, C) -> (B, S, C) log-probabilities: each view masked by `allowed`
        and renormalised, then the views' mean renormalised."""
        views = len(logits) // batch
        repeat = None if allowed is None else allowed.repeat(views, *[1] * (allowed.dim() - 1))
        return mean_of_views(mask_logits(logits.float(), repeat).log_softmax(-1), batch)

    def plain_attention(self, x: torch.Tensor, attention: torch.Tensor | None) -> torch.Tensor | None:
        """`view_logits`' attention (V*B, S, T) -> the unshifted image's (B, S, T)."""
        shifts = [[int(dx), int(dy)] for dx, dy in self.config.test_time_shifts]
        if not shifts:
            return attention
        if [0, 0] not in shifts:  # no unshifted view among the shifts: look at the image as is once more
            return self(x, return_attention=True)[1]
        b, plain = x.shape[0], shifts.index([0, 0])
        return attention[plain * b:(plain + 1) * b]

    @torch.inference_mode()
    def refine_o0(self, log_probs: torch.Tensor, attention: torch.Tensor, full: torch.Tensor,
                  allow: torch.Tensor | None = None) -> torch.Tensor:
        """log_probs (B, S, C), attention (B, S, T), full (B, 60, 160) grey image at the
        generator's resolution -> log_probs with o against 0 decided again by the glyph net
        wherever the reader's answer is o or 0 (and, with `allow` (B,) bool, the item allows both)."""
        top = log_probs.argmax(-1)  # (B, S)
        apply = (top == INDEX_O) | (top == INDEX_ZERO)
        if allow is not None:
            apply &= allow.to(apply.device)[:, None]
        if self.o0 is None or not bool(apply.any()):
            return log_probs
        centres = attention_centres(attention, self.config.width, full.shape[-1])  # (B, S) x in full pixels
        windows = cut_windows(full, centres, self.o0.config.width)  # (B*S, 1, 60, 48)
        glyph = torch.zeros(apply.numel(), device=log_probs.device)
        glyph[apply.flatten()] = self.o0(windows[apply.flatten()]).float()
        return mix_o0(log_probs, glyph.view_as(top), apply, self.o0.config.mix)

    def check_constraints(self, constraints: Constraints | None) -> None:
        """ValueError for a length the decoder cannot write."""
        if constraints is None or constraints.length is None:
            return
        if self.config.end_token:
            if constraints.length > self.config.length:
                raise ValueError(f"length={constraints.length}: this seq2seq reader writes at most "
                                 f"{self.config.length} characters")
            return
        if constraints.length != self.config.length:
            raise ValueError(f"length={constraints.length}: the seq2seq reader reads exactly {self.config.length} "
                             "characters (a fixed number of decoder steps, no end token yet); use model=ctc "
                             "for another length")

    def lengths_read_freely(self, logits: torch.Tensor, items: list[Constraints | None]) -> list[Constraints | None]:
        """`items` with a length wherever an end-token reader is given a charset but no length: the
        length it reads without the charset, from `view_logits`' logits (V*B, S, C) (the number of
        characters in the image does not depend on which ones the caller allows; masked first, the
        end token wins wherever no allowed character is likely: an empty answer to charset=digits
        on a captcha of letters)."""
        pending = [i for i, c in enumerate(items) if c is not None and c.allowed is not None and c.length is None]
        if not self.config.end_token or not pending:
            return items
        b = len(items)
        free = self.average_views(logits, b, self.step_mask([None] * b, logits.device))  # (B, S, C), same logits
        ends = (free.argmax(-1) == END).int().argmax(-1)  # (B,): the first step that ends (the last one always does)
        items = list(items)
        for i in pending:
            if ends[i] > 0:  # an empty free reading stays empty
                items[i] = replace(items[i], length=int(ends[i]))
        return items

    def charge_imposed_lengths(self, readings: list[CaptchaReading], logits: torch.Tensor,
                               items: list[Constraints | None]) -> None:
        """A length (asked for, or the free reading's under a charset) masks the end token away
        before step N and forces it on N, so the masked steps alone would call a forced answer
        sure. Each such reading's confidence is multiplied by the chance the reader itself (its
        charset masks only) gives to ending exactly there, prod_{s<N} (1 - p_end[s]) * p_end[N],
        so that, as for ctc, it is the answer's probability rather than one given its length.
        logits: `view_logits`' (V*B, S, C)."""
        imposed = [i for i, c in enumerate(items) if c is not None and c.length is not None]
        if not self.config.end_token or not imposed:
            return
        free = [None if c is None else replace(c, length=None) for c in items]
        p_end = self.average_views(logits, len(items), self.step_mask(free, logits.device))[..., END].exp()  # (B, S)
        for i in imposed:
            n = items[i].length
            readings[i].confidence *= float((1 - p_end[i, :n]).prod() * p_end[i, n])

    @torch.inference_mode()
    def read(self, x: torch.Tensor, full: torch.Tensor | None = None, explain: bool = False,
             constraints: Constraints | Sequence[Constraints | None] | None = None) -> list[CaptchaReading]:
        """x: (B, 1, H, W) reader input; full: (B, 60, 160) grey pixels of the same images at the
        generator's size, for the o/0 glyph net (ignored without one; without `full` the
        reader answers alone). With `explain`, each character carries its attention over the
        input columns (on the unshifted view). `constraints`: one for the batch or one per item
        (None: none); a charset masks every step (see the module doc), the glyph net then only
        decides o against 0 where the item's charset allows both."""
        items = constraints_per_item(constraints, x.shape[0])
        for c in items:
            self.check_constraints(c)
        logits, attention = self.view_logits(x)  # (V*B, S, C), (V*B, S, T)
        items = self.lengths_read_freely(logits, items)
        allowed = self.step_mask(items, x.device)  # (B, S, C) or None
        lp = self.average_views(logits, x.shape[0], allowed)
        if explain or (self.o0 is not None and full is not None):
            attention = self.plain_attention(x, attention)
        if self.o0 is not None and full is not None:
            both = None if allowed is None else allowed[:, 0, INDEX_O] & allowed[:, 0, INDEX_ZERO]
            lp = self.refine_o0(lp, attention, full.to(x.device), allow=both)
        readings = read_seq2seq(lp, allowed=allowed)
        self.charge_imposed_lengths(readings, logits, items)
        if explain:
            if attention is None:
                raise ValueError("explain needs a seq2seq reader with attention")
            for reading, weights in zip(readings, attention.float().tolist()):  # (S, T) per item
                for char, column_weights in zip(reading.characters, weights):
                    char.columns = column_weights
        return readings

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> str:
        c = self.config
        decoder = (f"GRU {c.decoder_hidden} with attention" if c.attention else f"GRU {c.decoder_hidden}")
        tta = f"; reads {len(c.test_time_shifts)} shifted copies and averages" if c.test_time_shifts else ""
        if c.o0 is not None:
            tta += "; o vs 0 decided again by a glyph CNN on the full-resolution image"
        steps = (f"{c.steps} steps -> Linear({c.decoder_hidden}, 37): up to {c.length} characters, then an end token"
                 if c.end_token else f"{c.steps} steps -> Linear({c.decoder_hidden}, 36)")
        return (f"4 conv blocks ({'-'.join(map(str, c.channels))}) on {c.height}x{c.width} grey -> BiGRU encoder "
                f"{c.encoder_layers}x{c.encoder_hidden} over {self.conv.steps} columns -> {decoder}, {steps}{tta}")


def mask_logits(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """logits (N, S, C), allowed (N, C) (every step alike) or (N, S, C) bool, or None -> the
    disallowed classes at -inf."""
    if allowed is None:
        return logits
    allowed = allowed.to(logits.device)
    return logits.masked_fill(~(allowed[:, None, :] if allowed.dim() == 2 else allowed), float("-inf"))


def read_seq2seq(logits: torch.Tensor, allowed: torch.Tensor | None = None) -> list[CaptchaReading]:
    """logits (B, S, C) -> readings: per step the argmax, up to the first end token when C has
    one (C = 37); the string's confidence is the product of its steps' probabilities, the end's
    included. `allowed` (B, C) or (B, S, C) bool keeps each item's top-3 to its charset (the
    logits then already give the other characters nothing)."""
    probs = logits.float().softmax(-1)
    with_end = probs.shape[-1] == NUM_CHARS + 1
    readings = []
    for i, row in enumerate(probs):
        chars, confidence = [], 1.0
        for step, p in enumerate(row):
            index = int(p.argmax())
            confidence *= float(p[index])
            if with_end and index == END:
                break
            mask = None if allowed is None else (allowed[i] if allowed.dim() == 2 else allowed[i, step])
            chars.append(char_reading(p[:NUM_CHARS], index, None if mask is None else mask[:NUM_CHARS]))
        readings.append(CaptchaReading("".join(c.char for c in chars), confidence, chars))
    return readings
