"""A second look at o and 0 for the seq2seq captcha reader, at the generator's full resolution.

The captcha generator crops every glyph to its ink and stretches it to its font's full box,
so o, O and 0 all come out as ovals of one size: what still tells 0 from o / O is the stroke
thickness (a stretched o has thick top and bottom strokes) and the shape of the sides. The
reader's 96x32 input (0.6 x 0.53 of the drawn 160x60 image) blurs most of that, and o<->0
made most of its misreads.

So where the reader reads o or 0, this net looks at a 48 px wide, full-height window of the
160x60 grey image centred where the reader's attention for that character centres, and gives
the log-odds of 0 against o (either case). `mix_o0` weighs that against the reader's own
log-odds (weights fitted on validation captchas) and moves probability between o and 0
only: the other 34 characters keep what the reader gave them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models.captcha_common import CHARSET

INDEX_O = CHARSET.index("o")
INDEX_ZERO = CHARSET.index("0")


@dataclass
class O0GlyphConfig:
    height: int = 60  # the window: the full height of the generator's 160x60 image
    width: int = 48  # ~1.7 glyph widths, so a misplaced centre still holds the glyph
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 96])
    dropout: float = 0.2
    # z = mix[0] * glyph log-odds + mix[1] * reader log-odds (0 against o), fitted on validation.
    mix: list[float] = field(default_factory=lambda: [1.0, 0.0])

    def to_dict(self) -> dict:
        return asdict(self)


class O0GlyphNet(nn.Module):
    """(N, 1, 60, 48) standardised windows -> (N,) log-odds that the centred glyph is 0 (not o / O)."""

    def __init__(self, config: O0GlyphConfig):
        super().__init__()
        self.config = config
        layers, c_in = [], 1
        for k, c_out in enumerate(config.channels):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)]
            if k < len(config.channels) - 1:
                layers.append(nn.MaxPool2d(2))  # 60x48 -> 30x24 -> 15x12 -> 7x6
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((3, 2))  # keep where the strokes are (top/bottom vs sides)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(c_in * 6, 1)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        f = self.pool(self.features(windows)).flatten(1)  # (N, C*6)
        return self.head(self.dropout(f)).squeeze(-1)  # (N,)


def attention_centres(attention: torch.Tensor, reader_width: int, full_width: int) -> torch.Tensor:
    """attention (B, L, T) over the reader's T columns (each 4 px of its `reader_width` input)
    -> (B, L) x of each character's attention centre in the full-width image, in pixels."""
    t = attention.shape[-1]
    column_x = (torch.arange(t, dtype=torch.float32, device=attention.device) * 4 + 2)  # (T,) column centres
    return (attention.float() * column_x).sum(-1) * (full_width / reader_width)


def cut_windows(full: torch.Tensor, centres: torch.Tensor, width: int, standardise: bool = True) -> torch.Tensor:
    """full (B, H, W) grey in 0..255 (any dtype), centres (B, L) x in pixels -> (B*L, 1, H, width)
    float32 windows, each standardised on its own like the reader's input (unless
    `standardise` is False: grey levels as they are). Beyond the image edge the edge column
    repeats."""
    b, h, w = full.shape
    if centres.dim() != 2 or centres.shape[0] != b:
        raise ValueError(f"need one row of centres per image: images {tuple(full.shape)}, centres {tuple(centres.shape)}")
    half = width // 2
    padded = F.pad(full.float().unsqueeze(1), (half, half, 0, 0), mode="replicate").squeeze(1)  # (B, H, W+width)
    start = centres.round().long().clamp(0, w)  # left edge in padded coordinates = centre - half + half
    cols = start.unsqueeze(-1) + torch.arange(width, device=full.device)  # (B, L, width)
    rows = padded.unsqueeze(1).expand(b, cols.shape[1], h, w + 2 * half)  # (B, L, H, W+width)
    windows = rows.gather(3, cols.unsqueeze(2).expand(b, cols.shape[1], h, width))  # (B, L, H, width)
    windows = windows.reshape(-1, 1, h, width)
    return standardise_windows(windows) if standardise else windows


def standardise_windows(windows: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) grey levels -> each window at zero mean and unit std (std floored at 1 grey level)."""
    windows = windows.float()
    mean = windows.mean(dim=(2, 3), keepdim=True)
    std = windows.std(dim=(2, 3), keepdim=True).clamp_min(1.0)
    return (windows - mean) / std


def mix_o0(log_probs: torch.Tensor, glyph_logits: torch.Tensor, apply: torch.Tensor,
           mix: list[float] | tuple[float, float]) -> torch.Tensor:
    """log_probs (B, L, 36) from the reader, glyph_logits (B, L) log-odds of 0 vs o from the
    glyph net, apply (B, L) bool: where to use them -> new (B, L, 36) log-probabilities.

    Where `apply`, the mass the reader gave o and 0 together is split again by
    sigmoid(z), z = mix[0] * glyph + mix[1] * (reader's log p(0) - log p(o))."""
    lp_o, lp_0 = log_probs[..., INDEX_O], log_probs[..., INDEX_ZERO]
    z = mix[0] * glyph_logits.float() + mix[1] * (lp_0 - lp_o)
    mass = torch.logaddexp(lp_o, lp_0)  # log(p(o) + p(0))
    out = log_probs.clone()
    out[..., INDEX_ZERO] = torch.where(apply, mass + F.logsigmoid(z), lp_0)
    out[..., INDEX_O] = torch.where(apply, mass + F.logsigmoid(-z), lp_o)
    return out
