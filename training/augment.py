"""Batched on-the-fly augmentation of MNIST digits, so the nets cope with real drawings.

MNIST is tidy: pen scans of one stroke width, upright, size-normalised. Canvas drawings and
photos differ after preprocessing mainly in slant, aspect, stroke width and softness, so
those are what is varied. Everything runs on whole batches (B, 28, 28) with torch ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(x: torch.Tensor, gen: torch.Generator, max_rot_deg: float = 15.0,
                  scale: tuple[float, float] = (0.85, 1.1), max_aspect: float = 0.15,
                  max_shear: float = 0.2, max_shift_px: float = 2.0) -> torch.Tensor:
    b = x.shape[0]

    def u(lo, hi):
        return torch.rand(b, generator=gen) * (hi - lo) + lo

    rot = u(-max_rot_deg, max_rot_deg) * math.pi / 180
    s = u(*scale)
    aspect = u(1 - max_aspect, 1 + max_aspect)
    sx, sy = s * aspect, s / aspect
    shear = u(-max_shear, max_shear)
    tx, ty = u(-max_shift_px, max_shift_px) / 14, u(-max_shift_px, max_shift_px) / 14
    cos, sin = torch.cos(rot), torch.sin(rot)
    # affine_grid maps output coords to input coords, so use the inverse-ish transform; for
    # augmentation the distribution is symmetric, so building the forward matrix is fine.
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cos / sx
    theta[:, 0, 1] = (-sin + shear) / sx
    theta[:, 1, 0] = sin / sy
    theta[:, 1, 1] = cos / sy
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, (b, 1, 28, 28), align_corners=False)
    return F.grid_sample(x.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).squeeze(1)


def random_stroke(x: torch.Tensor, gen: torch.Generator, p_thick: float = 0.25, p_thin: float = 0.15) -> torch.Tensor:
    b = x.shape[0]
    r = torch.rand(b, generator=gen)
    thick = r < p_thick
    thin = (r >= p_thick) & (r < p_thick + p_thin)
    out = x.clone()
    if thick.any():
        # Grey dilation by a 3x3 max filter, blended for widths between 1x and ~1.5x.
        dil = F.max_pool2d(x[thick].unsqueeze(1), 3, stride=1, padding=1).squeeze(1)
        a = torch.rand(int(thick.sum()), 1, 1, generator=gen) * 0.7 + 0.3
        out[thick] = a * dil + (1 - a) * x[thick]
    if thin.any():
        # Raising the ink floor thins anti-aliased strokes without breaking them.
        t = torch.rand(int(thin.sum()), 1, 1, generator=gen) * 0.35
        out[thin] = ((x[thin] - t) / (1 - t)).clamp(0, 1)
    return out


def random_blur(x: torch.Tensor, gen: torch.Generator, p: float = 0.2) -> torch.Tensor:
    b = x.shape[0]
    pick = torch.rand(b, generator=gen) < p
    if not pick.any():
        return x
    sigma = float(torch.rand(1, generator=gen) * 0.5 + 0.5)  # one sigma per batch: cheap
    k = torch.arange(-1, 2, dtype=torch.float32)
    k = torch.exp(-(k ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    kernel = (k[:, None] * k[None, :])[None, None]
    out = x.clone()
    out[pick] = F.conv2d(x[pick].unsqueeze(1), kernel, padding=1).squeeze(1)
    return out


def augment_digits(x: torch.Tensor, gen: torch.Generator, p_clean: float = 0.1) -> torch.Tensor:
    """x: (B, 28, 28) in [0, 1] -> augmented (B, 28, 28) in [0, 1], peak ink back at 1."""
    y = random_affine(x, gen)
    y = random_stroke(y, gen)
    y = random_blur(y, gen)
    peak = y.amax(dim=(1, 2), keepdim=True).clamp_min(1e-3)
    y = (y / peak).clamp(0, 1)
    keep = torch.rand(x.shape[0], generator=gen) < p_clean
    y[keep] = x[keep]
    return y
