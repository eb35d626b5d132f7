"""Image -> model input, in one place, so serving feeds the nets exactly what training did.

Two stages:
  1. `digit_canvas(image)`: any PIL image (photo, scan, canvas export) -> a 28x28 float32
     array in [0, 1], white ink on black, laid out by MNIST's own convention: crop to the
     ink, fit into 20x20 keeping the aspect ratio, and paste so the centre of mass lands
     at the centre of the 28x28 field.
  2. `to_digit_tensor(canvas)`: -> (B, 28, 28) normalised with MNIST's mean/std.
Training works on MNIST, which is already in stage-1 form, so it uses stage 2 only;
serving and the pipeline evaluation use both.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
SIDE = 28
FIT = 20  # the digit's longer side after size normalisation
CENTRE = 14.0  # MNIST's mean centre of mass, in index coordinates (measured: 13.99, 14.01)

# Below this colour distance from the paper (0..1 scale) nothing counts as ink: it is the
# margin for JPEG ringing, sensor noise and paper texture.
MIN_CONTRAST = 0.10
# Photos larger than this (longer side, pixels) are reduced first; ink-finding stays cheap.
MAX_WORK_SIDE = 2048


class NoDigitError(ValueError):
    """The image holds no ink that stands out from its background."""


def _ink_map(image: Image.Image) -> np.ndarray:
    """Per-pixel ink strength in [0, 1], whatever the polarity or colours.

    Transparent exports (ink drawn on a transparent canvas) carry the ink in alpha. Otherwise
    ink is the colour distance from the paper, estimated as the median of the border pixels:
    that covers black-on-white, white-on-black and coloured ink on tinted paper alike.
    """
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        hi = arr.max() if arr.max() > 255 else 255.0
        image = Image.fromarray((arr / hi * 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
        if alpha.max() - alpha.min() > MIN_CONTRAST:
            return alpha
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    rgb = np.asarray(image, dtype=np.float32) / 255.0
    if rgb.ndim == 2:
        rgb = rgb[..., None]
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0)  # (N, C)
    paper = np.median(border, axis=0)
    # Euclidean distance over channels, scaled so black vs white is 1.0.
    return np.sqrt(((rgb - paper) ** 2).sum(-1) / rgb.shape[-1])


def digit_canvas(image: Image.Image) -> np.ndarray:
    """PIL image -> (28, 28) float32 in [0, 1], MNIST layout. Raises NoDigitError."""
    if max(image.size) > MAX_WORK_SIDE:
        image = image.copy()
        image.thumbnail((MAX_WORK_SIDE, MAX_WORK_SIDE), Image.Resampling.BOX)
    ink = _ink_map(image)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise NoDigitError("no ink found: the image is blank or has too little contrast")
    # Soft threshold: below a floor is paper (kills JPEG noise and texture), above it the
    # stroke is stretched to reach 1.0 at its strongest, like MNIST's anti-aliased ink.
    floor = max(MIN_CONTRAST * 0.5, 0.25 * peak)
    ink = np.clip((ink - floor) / (peak - floor), 0.0, 1.0)

    ys, xs = np.nonzero(ink)
    crop = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    scale = FIT / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    # Antialiased area resampling, as MNIST's size normalisation was.
    fitted = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(crop))[None, None],
        size=(new_h, new_w),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[0, 0].clamp_(0, 1).numpy()
    top_peak = fitted.max()
    if top_peak <= 0:
        raise NoDigitError("no ink found after resizing")
    fitted = fitted / top_peak

    mass = fitted.sum()
    gy, gx = np.mgrid[0:new_h, 0:new_w]
    com_y, com_x = (fitted * gy).sum() / mass, (fitted * gx).sum() / mass
    top = int(round(CENTRE - com_y))
    left = int(round(CENTRE - com_x))
    # Keep the whole 20x20 box inside the field even for lopsided digits.
    top = min(max(top, 0), SIDE - new_h)
    left = min(max(left, 0), SIDE - new_w)
    canvas = np.zeros((SIDE, SIDE), dtype=np.float32)
    canvas[top:top + new_h, left:left + new_w] = fitted
    return canvas


def to_digit_tensor(canvas: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(28, 28) or (B, 28, 28) ink in [0, 1] -> normalised float tensor (B, 28, 28)."""
    x = torch.as_tensor(canvas, dtype=torch.float32)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    return (x - MNIST_MEAN) / MNIST_STD


def canvas_to_image(canvas: np.ndarray, scale: int = 1) -> Image.Image:
    """A (H, W) [0, 1] array -> 8-bit grayscale PIL image, optionally enlarged (pixelated)."""
    img = Image.fromarray((np.clip(canvas, 0, 1) * 255).round().astype(np.uint8), "L")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img
