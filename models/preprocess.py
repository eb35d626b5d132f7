"""Image -> model input, in one place, so serving feeds the nets exactly what training did.

Two stages:
  1. `digit_canvas(image)`: any PIL image (photo, scan, canvas export) -> a 28x28 float32
     array in [0, 1], white ink on black, laid out by MNIST's own convention: crop to the
     ink, fit into 20x20 keeping the aspect ratio, and paste so the centre of mass lands
     at the centre of the 28x28 field.
  2. `to_digit_tensor(canvas)`: -> (B, 28, 28) normalised with MNIST's mean/std (the RNNs);
     `to_autoencoder_tensor(canvas)`: -> (B, 1, 28, 28) raw [0, 1] (the autoencoder).
Training works on MNIST, which is already in stage-1 form, so it uses stage 2 only;
serving and the pipeline evaluation use both.

The prepare functions (`prepare_digit`, `prepare_captcha`) are what the catalog hands each
task: an upload (PIL image) and the manifest's `input` contract -> the network's input.
"""

from __future__ import annotations

from dataclasses import dataclass

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
# Light paper lit unevenly (a phone's shadow, vignetting) is evened out before the ink is measured
# against one paper colour, when its brightness varies by more than MIN_SHADE across the image:
# measured in SHADE_BLOCKS blocks (of at least SHADE_MIN_BLOCK px) along the shorter side, in
# images at least SHADE_MIN_SIDE px on it (a smaller one is a canvas or a crop, not a photo).
MIN_SHADE = 0.10
SHADE_BLOCKS = 16
SHADE_MIN_SIDE = 64
SHADE_MIN_BLOCK = 16  # px: several stroke widths, so that ink fills few blocks
# Printed rules (`_without_rules`): bands this thin (share of the height), inked across this much.
RULE_THICKNESS = 0.04
RULE_COVER = 0.9
RULE_INK = 0.05  # ink that counts as covering a pixel (printed lines are faint next to a pen)
# Ink counts for the writing's box where its 3x3 neighbourhood averages this much (`_without_specks`).
SPECK_MEAN = 0.1
SPECK_MARGIN = 2


class NoDigitError(ValueError):
    """The image holds no ink that stands out from its background."""


def _ink_map(image: Image.Image) -> tuple[np.ndarray, bool]:
    """Per-pixel ink strength in [0, 1], whatever the polarity or colours, and whether it came
    from the image's colours (a photo or scan may be) rather than a transparent canvas's alpha.

    Transparent exports (ink drawn on a transparent canvas) carry the ink in alpha. Otherwise
    ink is the colour distance from the paper, estimated as the median of the border pixels:
    that covers black-on-white, white-on-black and coloured ink on tinted paper alike. Light
    paper lit unevenly is evened out first (`paper_shading`).
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
            return alpha, False
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    rgb = np.asarray(image, dtype=np.float32) / 255.0
    if rgb.ndim == 2:
        rgb = rgb[..., None]
    shade = paper_shading(rgb)  # (H, W) or None
    if shade is not None:  # shadows darken ink and paper alike: divide the light out
        rgb = np.clip(rgb / shade[..., None], 0.0, 1.0)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0)  # (N, C)
    paper = np.median(border, axis=0)
    # Euclidean distance over channels, scaled so black vs white is 1.0.
    ink = np.sqrt(((rgb - paper) ** 2).sum(-1) / rgb.shape[-1])
    # Back in the photo's own contrast: dividing by the shade also amplified the sensor noise
    # under the shadow, which the noise floor (`_ink`) measures on the paper as a whole.
    return (ink if shade is None else ink * shade), True


def paper_shading(rgb: np.ndarray) -> np.ndarray | None:
    """(H, W, C) in [0, 1] -> the paper's brightness per pixel (H, W) relative to its brightest,
    or None when the paper is dark (canvas exports, chalk), the image small, or the lighting even.
    Per block (min(H, W) / SHADE_BLOCKS px square, at least SHADE_MIN_BLOCK) the paper is the
    90th percentile of its paper pixels: those less than half as dark as the darkest ink against
    the border's paper (a shadow darkens paper far less than a pen does). A block the ink fills
    takes the mean of its neighbours'."""
    h, w = rgb.shape[:2]
    if min(h, w) < SHADE_MIN_SIDE:
        return None
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0).mean(-1)  # (N,)
    paper = float(np.median(border))
    if paper < 0.5:
        return None
    block = max(SHADE_MIN_BLOCK, min(h, w) // SHADE_BLOCKS)
    step = max(1, block // 8)  # about 8x8 samples per block: its percentile costs little on a photo
    gh, gw, k = h // block, w // block, block // step
    grey = rgb[:gh * block:step, :gw * block:step].mean(-1)[:gh * k, :gw * k]  # (gh * k, gw * k)
    dark = paper - grey
    ink = dark > 0.5 * max(float(dark.max()), MIN_CONTRAST)  # a shadow is far fainter
    # Ink sorts below every paper sample, so a block's 90th percentile is paper's while paper
    # holds more than a tenth of it; blocks with under a quarter paper are left to their neighbours.
    samples = np.where(ink, -1.0, grey).reshape(gh, k, gw, k).transpose(0, 2, 1, 3).reshape(gh, gw, k * k)
    level = np.percentile(samples, 90, axis=-1)  # (gh, gw)
    known = (samples >= 0).mean(-1) >= 0.25
    for _ in range(max(gh, gw)):  # the blocks the ink fills: the mean of their known neighbours, inwards
        if known.all() or not known.any():
            break
        total, count = _sum3x3(np.where(known, level, 0.0)), _sum3x3(known.astype(np.float64))
        fill = ~known & (count > 0)
        level = np.where(fill, total / np.maximum(count, 1), level)
        known = known | fill
    if not known.any():
        return None
    top = float(level.max())
    if top <= 0 or (top - float(level.min())) / top < MIN_SHADE:
        return None
    shade = F.interpolate(torch.from_numpy(level / top).float()[None, None], size=(h, w), mode="bilinear",
                          align_corners=False)[0, 0].numpy()
    return np.clip(shade, 1e-3, 1.0)


def _ink(image: Image.Image, floor_from_paper: bool = False) -> tuple[np.ndarray, float]:
    """PIL image -> (ink in [0, 1] with the paper at exactly 0, the work image's width over the
    upload's: below 1 when a large photo was reduced first). Raises NoDigitError.
    `floor_from_paper`: lower the floor to what the paper's own noise needs (see below)."""
    width = image.width
    if max(image.size) > MAX_WORK_SIDE:
        image = image.copy()
        image.thumbnail((MAX_WORK_SIDE, MAX_WORK_SIDE), Image.Resampling.BOX)
    ink, from_colours = _ink_map(image)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:
        raise NoDigitError("no ink found: the image is blank or has too little contrast")
    # Soft threshold: below a floor is paper (kills JPEG noise and texture), above it the
    # stroke is stretched to reach 1.0 at its strongest, like MNIST's anti-aliased ink.
    # 10% of the peak keeps MNIST's own faint edge pixels (so its digits pass through almost
    # unchanged) while JPEG ringing at quality 50 stays below it (measured on MNIST digits).
    floor = max(MIN_CONTRAST * 0.5, 0.1 * peak)
    if floor_from_paper:
        # Most of a line's pixels are paper, so the median ink is the paper's noise: 0 on a clean
        # PNG, higher on a photo. The number reader and its glyph net learnt from lines whose faint
        # edge pixels were never floored away: on the first 2,000 MNIST-test lines as PNG, 51 read
        # wrong with the 10% floor, 42 with this one, as many as composed; JPEG photos with sensor
        # noise read the same with either. 0.03 keeps stray JPEG specks out of the ink's box.
        step = max(1, int((ink.size / 250_000) ** 0.5))  # a photo: the median of every step-th pixel (35 -> 5 ms)
        floor = min(floor, max(0.03, 5 * float(np.median(ink[::step, ::step]))))
    ink = np.clip((ink - floor) / (peak - floor), 0.0, 1.0)
    if from_colours:  # printed lines and sensor noise come with paper, not with a canvas's alpha
        ink = _without_specks(_without_rules(ink))
    return ink, image.width / width


def _without_rules(ink: np.ndarray) -> np.ndarray:
    """(H, W) ink in [0, 1] -> the same without the printed lines of ruled or squared paper: thin
    bands of rows (at most RULE_THICKNESS of the height, and a row more each side for their soft
    edges) inked across at least RULE_COVER of the width, where there are two or more of them
    (one full-width stroke may be a digit's: the bar of a 7 cropped tight); then, on such paper
    only, thin full-height bands of columns too (a squared paper's, a notebook's margin line:
    alone, a tight crop of 11 would look the same). Where a stroke crosses a line (ink just
    before and just after it), its pixels stay."""
    h, w = ink.shape
    if h < 16 or w < 64:
        return ink
    on = ink > RULE_INK
    rows = _thin_full_bands(on.mean(1), RULE_THICKNESS * h)
    if len(rows) < 2:
        return ink
    cols = _thin_full_bands(on.mean(0), RULE_THICKNESS * w)
    rows = [(max(0, a - 1), min(h, b + 1)) for a, b in rows]
    cols = [(max(0, a - 1), min(w, b + 1)) for a, b in cols]
    bare = ink.copy()
    for a, b in rows:
        bare[a:b] = 0
    for a, b in cols:
        bare[:, a:b] = 0
    # Strokes through a line (the writing just before and just after it) get their pixels back.
    writing = bare > RULE_INK
    for a, b in rows:
        crossing = writing[max(0, a - 2)] & writing[min(h - 1, b + 1)]  # (W,)
        bare[a:b, crossing] = ink[a:b, crossing]
    for a, b in cols:
        crossing = writing[:, max(0, a - 2)] & writing[:, min(w - 1, b + 1)]  # (H,)
        bare[crossing, a:b] = ink[crossing, a:b]
    return bare


def _thin_full_bands(cover: np.ndarray, thickness: float) -> list[tuple[int, int]]:
    """Ink cover per row (or column) -> [start, end) of each run of rows inked across at least
    RULE_COVER and at most max(2, `thickness`) rows thick."""
    full = np.concatenate([[0], (cover >= RULE_COVER).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(full))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a <= max(2.0, thickness)]


def _sum3x3(a: np.ndarray) -> np.ndarray:
    """(H, W) -> (H, W): each element's sum with its 8 neighbours (zeros beyond the edges)."""
    padded = np.pad(a, 1)
    across = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]  # (H + 2, W)
    return across[:-2] + across[1:-1] + across[2:]


def _without_specks(ink: np.ndarray) -> np.ndarray:
    """(H, W) ink in [0, 1] -> the same with the ink outside the strokes' box zeroed. On a noisy
    photo a few paper pixels pass any floor, scattered far from the writing, and a box around
    them would shrink the writing to nothing. The strokes' box holds the pixels whose 3x3
    neighbourhood averages at least SPECK_MEAN (a speck is one pixel or a faint JPEG blotch), and
    SPECK_MARGIN px around them keep the strokes' faint edges."""
    if ink.shape[0] < 3 or ink.shape[1] < 3:
        return ink
    strokes = _sum3x3(ink) / 9 >= SPECK_MEAN
    rows, cols = np.flatnonzero(strokes.any(1)), np.flatnonzero(strokes.any(0))
    if not len(rows):
        return ink
    r0, r1 = max(0, rows[0] - SPECK_MARGIN), rows[-1] + SPECK_MARGIN + 1
    c0, c1 = max(0, cols[0] - SPECK_MARGIN), cols[-1] + SPECK_MARGIN + 1
    if r0 == 0 and c0 == 0 and r1 >= ink.shape[0] and c1 >= ink.shape[1]:
        return ink
    kept = np.zeros_like(ink)
    kept[r0:r1, c0:c1] = ink[r0:r1, c0:c1]
    return kept


def _resize(ink: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) ink -> (height, width), antialiased area-like resampling (as MNIST's size
    normalisation was), peak back at 1."""
    out = F.interpolate(torch.from_numpy(np.ascontiguousarray(ink, dtype=np.float32))[None, None],
                        size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0, 0]
    out = out.clamp_(0, 1).numpy()
    peak = out.max()
    return out / peak if peak > 0 else out


def digit_canvas(image: Image.Image) -> np.ndarray:
    """PIL image -> (28, 28) float32 in [0, 1], MNIST layout. Raises NoDigitError."""
    ink, _ = _ink(image)
    # Bounding box of the ink from row/column projections (10x cheaper than np.nonzero).
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    scale = FIT / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    fitted = _resize(crop, new_h, new_w)
    if fitted.max() <= 0:
        raise NoDigitError("no ink found after resizing")

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


def to_autoencoder_tensor(canvas: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(28, 28) or (B, 28, 28) ink in [0, 1] -> (B, 1, 28, 28) float, *not* normalised: the
    autoencoder reconstructs raw [0, 1] pixels with a sigmoid, so it takes them as they are."""
    x = torch.as_tensor(canvas, dtype=torch.float32)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    return x.unsqueeze(1)


def prepare_digit(image: Image.Image, contract: dict) -> tuple[torch.Tensor, np.ndarray]:
    """An upload -> (network input (1, 28, 28), the canvas (28, 28) in [0, 1]) by a digit
    manifest's input contract: the MNIST-layout canvas, then `normalize` {mean, std} (the RNNs)
    or none (`normalize: null`, the autoencoder, which reads raw pixels). Both digit networks
    take (B, 28, 28). Raises NoDigitError."""
    canvas = digit_canvas(image)
    norm = contract.get("normalize")
    x = torch.from_numpy(canvas).unsqueeze(0)  # (1, 28, 28)
    if norm:
        x = (x - norm["mean"]) / norm["std"]
    return x, canvas


def canvas_to_image(canvas: np.ndarray, scale: int = 1) -> Image.Image:
    """A (H, W) [0, 1] array -> 8-bit grayscale PIL image, optionally enlarged (pixelated)."""
    img = Image.fromarray((np.clip(canvas, 0, 1) * 255).round().astype(np.uint8), "L")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


# --- Captchas ---------------------------------------------------------------------------
# A captcha (any size or mode; the generator's are 160x60 RGB) -> grayscale, resized to the
# model's input, as uint8. Training stores exactly these uint8 arrays (pools, folders), and
# serving computes them from the upload, so both feed the nets the same pixels.
# Then `to_captcha_tensor` standardises each image on its own (zero mean, unit std): the
# generator draws ink in colours from dark to mid-grey on a light background, and per-image
# standardisation removes that contrast spread (and a user's different colours) up front.
CAPTCHA_HEIGHT = 32
CAPTCHA_WIDTH = 96
# The generator's own size. The seq2seq reader's o/0 glyph net looks at the image at this
# resolution (through `captcha_pixels` too, so it sees exactly what training saw).
CAPTCHA_FULL_HEIGHT = 60
CAPTCHA_FULL_WIDTH = 160


def captcha_pixels(image: Image.Image, height: int = CAPTCHA_HEIGHT, width: int = CAPTCHA_WIDTH) -> np.ndarray:
    """PIL image -> (height, width) uint8 grayscale, dark ink on light paper as drawn.

    Transparent images are composited on white first (a transparent pixel is paper), so an
    RGBA export reads like its opaque original.
    """
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        hi = arr.max() if arr.max() > 255 else 255.0
        image = Image.fromarray((np.clip(arr, 0, None) / hi * 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    gray = image.convert("L")
    if gray.size != (width, height):
        # PIL's bilinear resize widens its kernel when shrinking, i.e. it is antialiased.
        gray = gray.resize((width, height), Image.Resampling.BILINEAR)
    return np.array(gray, dtype=np.uint8)  # a writable copy (PIL's buffer view is read-only)


def prepare_captcha(image: Image.Image, contract: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An upload -> (reader input (1, 1, H, W), full-resolution grey pixels (1, H', W') or None)
    by a captcha manifest's input contract: `height`/`width` for the reader, and
    `full_resolution` {height, width} when the reader carries the o/0 glyph net."""
    x = to_captcha_tensor(captcha_pixels(image, contract["height"], contract["width"]))
    full = contract.get("full_resolution")
    if full is None:
        return x, None
    return x, torch.from_numpy(captcha_pixels(image, full["height"], full["width"])).unsqueeze(0)


def to_captcha_tensor(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(H, W) or (B, H, W) uint8 (or float in [0, 255]) -> (B, 1, H, W) float32, each image
    standardised to zero mean and unit std."""
    if isinstance(pixels, np.ndarray):
        x = torch.from_numpy(pixels.astype(np.float32))  # a copy: memory-mapped pools are read-only
    else:
        x = pixels.float()
    if x.dim() == 2:
        x = x.unsqueeze(0)
    x = x.unsqueeze(1)  # (B, 1, H, W)
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True).clamp_min(1.0)  # a blank image stays finite (std in grey levels)
    return (x - mean) / std


# --- Numbers ----------------------------------------------------------------------------
# A line of handwritten digits (canvas export, scan or photo, any width) -> the number reader's
# input: the ink cropped to its bounding box and scaled so that box is `ink_height` px tall (as
# MNIST's digits are 20 px in 28), centred in a `height` px line with `pad` px of paper left and
# right, white ink on 0. Lines wider than `max_width` are scaled down further to fit.


SOURCE_MAX_HEIGHT = 96


@dataclass
class NumberLine:
    x: torch.Tensor  # (1, 1, height, width) ink in [0, 1]
    width: int  # even, so the reader's 2 px columns tile it
    x0: float  # the upload's x where the line's ink starts
    px_per_upload_px: float  # line pixels per upload pixel
    pad: int  # paper left of the ink, in line pixels
    # The ink box the line was scaled from, at its own resolution (h, w), and line pixels per
    # its pixels: the digit glyph net cuts its crops from it, sharper than the 20 px line.
    source: torch.Tensor | None = None
    source_scale: float = 1.0

    def to_upload(self, x_line: float) -> float:
        """A line x -> the upload's x."""
        return self.x0 + (x_line - self.pad) / self.px_per_upload_px

    def to_source(self, span: tuple[float, float]) -> tuple[float, float]:
        """[x0, x1) in the line's pixels -> the same in `source`'s."""
        return tuple((x - self.pad) / self.source_scale for x in span)


def number_line(ink: np.ndarray, contract: dict, work_scale: float = 1.0) -> NumberLine:
    """(h, w) ink in [0, 1] (paper 0) -> the reader's line by the manifest's contract (height,
    ink_height, pad, max_width). `work_scale`: the ink's width over the upload's. Raises
    NoDigitError when there is no ink."""
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if not len(rows):
        raise NoDigitError("no ink found: the image is blank or has too little contrast")
    # One contiguous copy, shared by the line's resize and the glyph crops' source.
    crop = np.ascontiguousarray(ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], dtype=np.float32)
    h, w = crop.shape
    height, pad = contract["height"], contract["pad"]
    scale = contract["ink_height"] / h
    scale = min(scale, (contract["max_width"] - 2 * pad) / w)  # a very wide line: smaller, to fit
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    fitted = _resize(crop, new_h, new_w)
    width = new_w + 2 * pad + (new_w % 2)
    line = np.zeros((height, width), dtype=np.float32)
    top = (height - new_h) // 2
    line[top:top + new_h, pad:pad + new_w] = fitted
    # The source for the glyph crops: the ink box as it is, or at most SOURCE_MAX_HEIGHT px tall
    # (a crop ends at 20 px; this bounds what a queued request holds to under 2 MB).
    source, source_scale = crop, scale
    if h > SOURCE_MAX_HEIGHT:
        source = _resize(crop, SOURCE_MAX_HEIGHT, max(1, round(w * SOURCE_MAX_HEIGHT / h)))
        source_scale = scale * h / SOURCE_MAX_HEIGHT
    return NumberLine(torch.from_numpy(line)[None, None], width, cols[0] / work_scale, scale * work_scale, pad,
                      torch.from_numpy(source), source_scale)


def prepare_number(image: Image.Image, contract: dict) -> NumberLine:
    """An upload (a line of handwriting, any size) -> the number reader's input and the way back
    to the upload's pixels. Raises NoDigitError."""
    ink, work_scale = _ink(image, floor_from_paper=True)
    return number_line(ink, contract, work_scale)
