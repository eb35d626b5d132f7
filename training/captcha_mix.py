"""The general captcha reader's generator mix, reproducible from seeds, and pre-rendered shards.

Training families (mixed-case texts of 1-8 characters, read case-insensitively):

    seed          the seed's generator: captcha 0.7 `ImageCaptcha()`, 160x60
    captcha_fonts the captcha package with 1-3 fonts from Debian's font packages, any size
    wheezy        wheezy.captcha with randomised drawings (background, warp/rotate/offset, curves,
                  noise, smoothing), fonts, colours and sizes
    pil_lines     our renderer: rotated, jittered glyphs on a tinted background, crossed by
                  interference lines, arcs and dots
    pil_warp      our renderer: a line of text (sometimes hollow, overlapping, struck through)
                  on a gradient with speckle, warped by a sine wave, sometimes JPEG-compressed
    pil_tiles     our renderer: each character on a cell of its own colour, rotated up to 75
                  degrees, with strokes, lines and discs (written after seeing multicolor fail)

Held out of training (zero-shot families, only for evaluation):

    multicolor    the multicolorcaptcha package (its own bundled fonts), 4 characters
    claptcha      the claptcha package in FreeSerif/FreeMono (fonts the mix never draws)

    # 200,000 training captchas as 20 shards, in 2 processes
    python -m training.captcha_mix shards --out /work/runs/general/shards --count 200000 --seed 100 --workers 2

Fonts: every .ttf/.otf under /usr/share/fonts except symbol fonts, hairlines and the held-out
FreeSerif/FreeMono (`make fonts` installs the Debian packages the mix was built with).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import random
import time
from functools import lru_cache
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from models.captcha_common import CHARSET, DRAWN_ALPHABET
from models.preprocess import captcha_pixels
from training.captcha_data import seeded_captcha

FONT_ROOT = Path("/usr/share/fonts")
HELD_OUT_FONTS = ("FreeSerif", "FreeMono")  # kept for the claptcha family
_SKIP = ("Symbol", "Dingbat", "Math", "Hairline", "Thin", "ExtraLight", "Emoji", "D050000L", "Z003")
MAX_LENGTH = 8
# How often each length is drawn for the training families (4-6 most common, as on real sites).
LENGTH_WEIGHTS = {1: 0.03, 2: 0.04, 3: 0.08, 4: 0.25, 5: 0.22, 6: 0.18, 7: 0.11, 8: 0.09}
TRAIN_FAMILIES = ("seed", "captcha_fonts", "wheezy", "pil_lines", "pil_warp", "pil_tiles")
HELD_OUT_FAMILIES = ("multicolor", "claptcha")
# The reader's input: every captcha is resized to this (grey, PIL bilinear), whatever its size.
HEIGHT, WIDTH = 48, 160

Draw = Callable[[str], Image.Image]


@lru_cache(maxsize=1)
def mix_fonts() -> tuple[str, ...]:
    """The font files the training families draw from (sorted, so a seed picks the same ones)."""
    found = sorted(str(p) for p in FONT_ROOT.rglob("*") if p.suffix.lower() in (".ttf", ".otf"))
    fonts = tuple(f for f in found if not any(s in Path(f).name for s in _SKIP + HELD_OUT_FONTS))
    if not fonts:
        raise FileNotFoundError(f"no fonts under {FONT_ROOT}: install fonts-dejavu-core and fonts-liberation "
                                "(`make fonts` installs the full set)")
    return fonts


def held_out_fonts() -> tuple[str, ...]:
    found = sorted(str(p) for p in FONT_ROOT.rglob("*.ttf") if any(Path(p).name.startswith(s) for s in HELD_OUT_FONTS))
    return tuple(found) or mix_fonts()[:2]


def _colour(rng: random.Random, lo: int, hi: int) -> tuple[int, int, int]:
    return tuple(rng.randint(lo, hi) for _ in range(3))


# --- training families ---------------------------------------------------------------------

def _seed_family(rng: random.Random) -> Draw:
    from captcha.image import ImageCaptcha

    drawer = ImageCaptcha()

    def draw(text: str) -> Image.Image:
        with seeded_captcha(rng):
            return drawer.generate_image(text)

    return draw


def _captcha_fonts_family(rng: random.Random) -> Draw:
    from captcha.image import ImageCaptcha

    fonts = mix_fonts()
    # 32 looks (1-3 fonts, a height, a font size); the width follows the text's length.
    looks = []
    for _ in range(32):
        height = rng.randint(50, 90)
        looks.append((tuple(rng.sample(fonts, rng.randint(1, 3))), height, int(height * rng.uniform(0.6, 0.85)),
                      rng.uniform(0.45, 0.75)))
    drawers: dict = {}

    def draw(text: str) -> Image.Image:
        k, n = rng.randrange(len(looks)), max(len(text), 3)
        if (k, n) not in drawers:
            chosen, height, size, per_char = looks[k]
            drawers[(k, n)] = ImageCaptcha(width=int(height * per_char * n) + 20, height=height, fonts=list(chosen),
                                           font_sizes=(size - 4, size, size + 4))
        with seeded_captcha(rng):
            return drawers[(k, n)].generate_image(text)

    return draw


def _wheezy_family(rng: random.Random) -> Draw:
    from wheezy.captcha import image as w

    fonts = mix_fonts()

    def draw(text: str) -> Image.Image:
        n = len(text)
        height = rng.randint(55, 85)
        width = int(height * rng.uniform(0.5, 0.8) * max(n, 3) + rng.randint(10, 40))
        text_drawings = []
        if rng.random() < 0.7:
            text_drawings.append(w.warp(dx_factor=rng.uniform(0.1, 0.35), dy_factor=rng.uniform(0.1, 0.35)))
        if rng.random() < 0.7:
            text_drawings.append(w.rotate(angle=rng.randint(5, 30)))
        if rng.random() < 0.7:
            text_drawings.append(w.offset(dx_factor=rng.uniform(0.05, 0.2), dy_factor=rng.uniform(0.05, 0.3)))
        ink = "#%02x%02x%02x" % _colour(rng, 0, 140)
        drawings = [w.background(color="#%02x%02x%02x" % _colour(rng, 170, 255)),
                    w.text(fonts=rng.sample(fonts, rng.randint(1, 3)), color=ink,
                           font_sizes=tuple(int(height * f) for f in (0.6, 0.68, 0.76)), drawings=text_drawings,
                           squeeze_factor=rng.uniform(0.7, 1.0))]
        if rng.random() < 0.7:
            drawings.append(w.curve(color=ink if rng.random() < 0.5 else "#%02x%02x%02x" % _colour(rng, 0, 160),
                                    width=rng.randint(1, 3), number=rng.randint(2, 8)))
        if rng.random() < 0.7:
            drawings.append(w.noise(number=rng.randint(20, 120), color="#%02x%02x%02x" % _colour(rng, 0, 200),
                                    level=rng.randint(1, 3)))
        if rng.random() < 0.5:
            drawings.append(w.smooth())
        return w.captcha(drawings=drawings, width=width, height=height)(text)

    return draw


@lru_cache(maxsize=512)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _pil_lines_family(rng: random.Random) -> Draw:
    fonts = mix_fonts()

    def draw(text: str) -> Image.Image:
        n = len(text)
        height = rng.randint(45, 80)
        size = int(height * rng.uniform(0.45, 0.65))
        width = int(size * rng.uniform(0.7, 1.05) * n + rng.randint(16, 40))
        image = Image.new("RGB", (width, height), _colour(rng, 190, 255))
        d = ImageDraw.Draw(image)
        chosen = rng.sample(fonts, rng.randint(1, 3))
        step = (width - 16) / max(n, 1)
        one_colour = _colour(rng, 0, 130) if rng.random() < 0.5 else None
        for i, ch in enumerate(text):
            font = _font(rng.choice(chosen), size + rng.randint(-3, 3))
            glyph = Image.new("RGBA", (size * 2, size * 2), (0, 0, 0, 0))
            ImageDraw.Draw(glyph).text((size // 2, size // 3), ch, font=font,
                                       fill=(one_colour or _colour(rng, 0, 130)) + (255,))
            glyph = glyph.rotate(rng.uniform(-30, 30), resample=Image.Resampling.BILINEAR)
            x = int(8 + i * step + step / 2 - size + rng.uniform(-3, 3))
            y = int((height - 2 * size) / 2 + rng.uniform(-height * 0.12, height * 0.12))
            image.paste(glyph, (x, y), glyph)
        for _ in range(rng.randint(0, 5)):  # interference lines and arcs across the text
            colour = _colour(rng, 30, 170)
            if rng.random() < 0.6:
                d.line([(rng.uniform(0, width), rng.uniform(0, height)) for _ in range(2)], fill=colour,
                       width=rng.randint(1, 3))
            else:
                x0, y0 = rng.uniform(-width / 2, width / 2), rng.uniform(-height / 2, height / 2)
                d.arc([x0, y0, x0 + rng.uniform(width / 2, width * 1.5), y0 + rng.uniform(height / 2, height * 1.5)],
                      rng.uniform(0, 360), rng.uniform(0, 360), fill=colour, width=rng.randint(1, 3))
        for _ in range(rng.randint(0, 300)):  # dots
            d.point((rng.uniform(0, width), rng.uniform(0, height)), fill=_colour(rng, 0, 220))
        if rng.random() < 0.4:
            image = image.filter(ImageFilter.SMOOTH if rng.random() < 0.6 else ImageFilter.GaussianBlur(0.8))
        return _maybe_dark(image, rng)

    return draw


def _maybe_dark(image: Image.Image, rng: random.Random, p: float = 0.2) -> Image.Image:
    """One in five: light ink on a dark paper (each channel inverted), as some sites draw."""
    if rng.random() >= p:
        return image
    return Image.fromarray(255 - np.asarray(image.convert("RGB")))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    """The image as a JPEG at `quality` would show it (blocks, ringing)."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _sine_warp(image: Image.Image, rng: random.Random) -> Image.Image:
    """Each column moved up/down and each row left/right by sine waves (edge pixels repeat)."""
    a = np.asarray(image)
    h, w = a.shape[:2]
    ay, fy, py = rng.uniform(0, h * 0.12), rng.uniform(0.5, 2.0) * 2 * math.pi / w, rng.uniform(0, 2 * math.pi)
    ax, fx, px = rng.uniform(0, 3), rng.uniform(0.5, 2.0) * 2 * math.pi / h, rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:h, 0:w]
    src_y = np.clip(np.round(ys + ay * np.sin(fy * xs + py)), 0, h - 1).astype(np.int64)
    src_x = np.clip(np.round(xs + ax * np.sin(fx * ys + px)), 0, w - 1).astype(np.int64)
    return Image.fromarray(a[src_y, src_x])


def _pil_warp_family(rng: random.Random) -> Draw:
    fonts = mix_fonts()

    def draw(text: str) -> Image.Image:
        n = len(text)
        height = rng.randint(40, 80)
        size = int(height * rng.uniform(0.5, 0.75))
        font = _font(rng.choice(fonts), size)
        spacing = rng.uniform(-0.18, 0.1) * size  # negative: neighbours overlap
        widths = [font.getlength(ch) for ch in text]
        width = int(sum(widths) + spacing * (n - 1) + rng.randint(16, 50))
        top, bottom = _colour(rng, 150, 255), _colour(rng, 150, 255)
        grad = np.linspace(0, 1, width)[None, :, None]
        bg = (np.array(top)[None, None] * (1 - grad) + np.array(bottom)[None, None] * grad).repeat(height, 0)
        bg += np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(0, 25), bg.shape)
        image = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
        d = ImageDraw.Draw(image)
        ink = _colour(rng, 0, 110)
        hollow = rng.random() < 0.2
        x = (width - (sum(widths) + spacing * (n - 1))) / 2
        base = (height - size) / 2 - size * 0.1
        for ch, cw in zip(text, widths):
            y = base + rng.uniform(-height * 0.08, height * 0.08)
            if hollow:
                d.text((x, y), ch, font=font, fill=tuple(image.getpixel((int(min(x, width - 1)), 0))),
                       stroke_width=max(1, size // 14), stroke_fill=ink)
            else:
                d.text((x, y), ch, font=font, fill=ink)
            x += cw + spacing
        if rng.random() < 0.4:  # struck through
            y0 = height / 2 + rng.uniform(-height * 0.2, height * 0.2)
            d.line([(0, y0), (width, y0 + rng.uniform(-height * 0.3, height * 0.3))], fill=ink, width=rng.randint(1, 3))
        image = _sine_warp(image, rng)
        if rng.random() < 0.3:
            image = _jpeg(image, rng.randint(25, 70))
        return _maybe_dark(image, rng)

    return draw


def _luma(c: tuple[int, int, int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _contrasting(rng: random.Random, paper: tuple[int, int, int], least: float = 45) -> tuple[int, int, int]:
    """A random colour at least `least` grey levels lighter or darker than `paper` (the reader
    sees grey only, so hue contrast alone would leave nothing to read)."""
    for _ in range(50):
        c = _colour(rng, 0, 255)
        if abs(_luma(c) - _luma(paper)) >= least:
            return c
    return (0, 0, 0) if _luma(paper) > 127 else (255, 255, 255)


def _pil_tiles_family(rng: random.Random) -> Draw:
    """Each character in a cell of its own colour (light or dark), strongly rotated (up to 75
    degrees), filled or hollow, with strokes in the glyph's colour, long lines across the cells
    and coloured discs. Written after looking at the held-out multicolor family, which every
    reader failed (so multicolor is no longer a blind test); no multicolor image or font is used."""
    fonts = mix_fonts()

    def draw(text: str) -> Image.Image:
        n = len(text)
        height = rng.randint(50, 110)
        cell = int(height * rng.uniform(0.7, 1.1))
        width = cell * n
        shared = _colour(rng, 0, 255) if rng.random() < 0.4 else None
        image = Image.new("RGB", (width, height))
        d = ImageDraw.Draw(image)
        chosen = rng.sample(fonts, rng.randint(1, 3))
        one_ink = rng.random() < 0.3  # the first cell's ink in every cell where it still contrasts
        ink0 = None
        for i, ch in enumerate(text):
            paper = shared or _colour(rng, 0, 255)
            d.rectangle([i * cell, 0, (i + 1) * cell, height], fill=paper)
            ink = ink0 if one_ink and ink0 and abs(_luma(ink0) - _luma(paper)) >= 45 else _contrasting(rng, paper)
            ink0 = ink0 or ink
            size = int(height * rng.uniform(0.4, 0.7))
            font = _font(rng.choice(chosen), size)
            glyph = Image.new("RGBA", (size * 2, size * 2), (0, 0, 0, 0))
            g = ImageDraw.Draw(glyph)
            if rng.random() < 0.25:  # hollow: the outline in ink, the inside the cell's colour
                g.text((size // 2, size // 3), ch, font=font, fill=paper + (255,), stroke_width=max(1, size // 16),
                       stroke_fill=ink + (255,))
            else:
                g.text((size // 2, size // 3), ch, font=font, fill=ink + (255,))
            glyph = glyph.rotate(rng.uniform(-75, 75), resample=Image.Resampling.BILINEAR)
            x = int(i * cell + cell / 2 - size + rng.uniform(-cell * 0.12, cell * 0.12))
            y = int(height / 2 - size + rng.uniform(-height * 0.12, height * 0.12))
            image.paste(glyph, (x, y), glyph)
            for _ in range(rng.randint(0, 3)):  # strokes that look like parts of the glyph
                x0, y0 = i * cell + rng.uniform(0, cell), rng.uniform(0, height)
                angle, length = rng.uniform(0, math.pi), rng.uniform(0.3, 0.8) * height
                d.line([(x0, y0), (x0 + length * math.cos(angle), y0 + length * math.sin(angle))],
                       fill=ink if rng.random() < 0.6 else _contrasting(rng, paper), width=rng.randint(1, max(2, size // 12)))
        for _ in range(rng.choice((0, 0, 1, 2, 3, 4))):  # long lines across the cells
            y0, y1 = rng.uniform(0, height), rng.uniform(0, height)
            d.line([(0, y0), (width, y1)], fill=_colour(rng, 0, 60) if rng.random() < 0.7 else _colour(rng, 0, 255),
                   width=rng.randint(1, max(2, height // 25)))
        for _ in range(rng.randint(0, 25)):  # coloured discs
            x0, y0, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(1.5, height / 14)
            d.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=_colour(rng, 0, 255))
        if rng.random() < 0.3:
            image = _jpeg(image, rng.randint(30, 80))
        return image

    return draw


# --- held-out families ---------------------------------------------------------------------

def _multicolor_family(rng: random.Random) -> Draw:
    """multicolorcaptcha draws its own 4 upper-case characters: `draw` ignores `text` and the
    family yields the package's text (see `samples`)."""
    from multicolorcaptcha import CaptchaGenerator

    generator = CaptchaGenerator(captcha_size_num=rng.randint(1, 2))

    def draw(_text: str) -> Image.Image:
        random.seed(rng.getrandbits(32))  # the package draws from `random`'s global state
        captcha = generator.gen_captcha_image(difficult_level=rng.randint(0, 3),
                                              chars_mode=rng.choice(("nums", "hex", "ascii")),
                                              multicolor=rng.random() < 0.5, margin=False)
        draw.text = captcha.characters
        return captcha.image.convert("RGB")

    draw.text = ""
    return draw


def _claptcha_family(rng: random.Random) -> Draw:
    from claptcha import Claptcha

    if not hasattr(ImageFont.FreeTypeFont, "getsize"):  # claptcha 0.3.3 predates Pillow 10's removal of it
        ImageFont.FreeTypeFont.getsize = lambda self, text: tuple(self.getbbox(text)[2:])
    fonts = held_out_fonts()

    def draw(text: str) -> Image.Image:
        random.seed(rng.getrandbits(32))
        height = rng.randint(50, 80)
        c = Claptcha(text, rng.choice(fonts), size=(int(height * 0.6 * len(text)) + 30, height),
                     margin=(rng.randint(5, 15), rng.randint(5, 12)), noise=rng.uniform(0.0, 0.4), resample=Image.BILINEAR)
        return c.image[1].convert("RGB")

    return draw


FAMILIES: dict[str, Callable[[random.Random], Draw]] = {
    "seed": _seed_family, "captcha_fonts": _captcha_fonts_family, "wheezy": _wheezy_family,
    "pil_lines": _pil_lines_family, "pil_warp": _pil_warp_family,
    "multicolor": _multicolor_family, "claptcha": _claptcha_family,
    # New families go last: a shard stores each captcha's family as its index in this dict.
    "pil_tiles": _pil_tiles_family,
}


def samples(family: str, seed: int, lengths: dict[int, float] | tuple[int, int] | None = None,
            ) -> Iterator[tuple[str, Image.Image]]:
    """Endless (drawn text, image) of `family` from `seed`. `lengths`: weights per length, or a
    (lo, hi) range drawn uniformly; default LENGTH_WEIGHTS. The multicolor family draws its own
    4-character texts and ignores `lengths`."""
    rng = random.Random(f"{family}/{seed}")
    random.seed(f"{family}/{seed}/global")  # wheezy and the others draw from `random` too
    draw = FAMILIES[family](rng)
    if lengths is None:
        lengths = LENGTH_WEIGHTS
    while True:
        if isinstance(lengths, dict):
            n = rng.choices(list(lengths), list(lengths.values()))[0]
        else:
            n = rng.randint(*lengths)
        text = "".join(rng.choice(DRAWN_ALPHABET) for _ in range(n))
        image = draw(text)
        yield (getattr(draw, "text", "") or text), image


def encode(text: str) -> np.ndarray:
    """'aB3' -> int8 (8,) class indices, padded with -1."""
    label = np.full(MAX_LENGTH, -1, np.int8)
    label[:len(text)] = [CHARSET.index(c) for c in text.lower()]
    return label


# --- shards ----------------------------------------------------------------------------------

def render_shard(path: Path, family_counts: dict[str, int], seed: int, height: int = HEIGHT, width: int = WIDTH,
                 lengths=None) -> Path:
    """Render `family_counts` captchas into one .npz: x uint8 (N, H, W), y int8 (N, 8) padded
    with -1, family int8 (N,) (index into FAMILIES), in a seeded shuffled order."""
    names = list(FAMILIES)
    xs, ys, fams = [], [], []
    for family, count in family_counts.items():
        for _, (text, image) in zip(range(count), samples(family, seed, lengths)):
            xs.append(captcha_pixels(image, height, width))
            ys.append(encode(text))
            fams.append(names.index(family))
    order = np.random.default_rng(seed).permutation(len(xs))
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=np.stack(xs)[order], y=np.stack(ys)[order], family=np.array(fams, np.int8)[order])
    os.replace(tmp, path)
    return path


def _render_job(job) -> str:
    path, counts, seed, lengths = job
    t0 = time.time()
    render_shard(Path(path), counts, seed, lengths=lengths)
    return f"{path} ({sum(counts.values())} in {time.time() - t0:.0f}s)"


def shard_jobs(out: Path, count: int, seed: int, per_shard: int = 10_000, families=TRAIN_FAMILIES,
               weights: dict[str, float] | None = None, lengths=None) -> list:
    """Jobs for `count` captchas in shards of `per_shard`, each shard an even (or `weights`)
    mix of `families`; shard k is rendered from seed + k, so the pool can grow later."""
    weights = weights or {f: 1.0 for f in families}
    total = sum(weights[f] for f in families)
    jobs = []
    for k in range(math.ceil(count / per_shard)):
        n = min(per_shard, count - k * per_shard)
        counts = {f: int(round(n * weights[f] / total)) for f in families}
        path = out / f"shard_{seed + k:06d}.npz"
        if not path.exists():
            jobs.append((str(path), counts, seed + k, lengths))
    return jobs


def parse_weights(text: str | None, families) -> dict[str, float] | None:
    """'seed=0.6,pil_tiles=1.4' -> a weight per family (1 where not named); None or '' -> even."""
    if not text:
        return None
    weights = {f: 1.0 for f in families}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name not in weights:
            raise SystemExit(f"--weights: {name!r} is not one of --families ({', '.join(families)})")
        try:
            weights[name] = float(value)
        except ValueError:
            raise SystemExit(f"--weights: {item!r} is not FAMILY=NUMBER") from None
        if not 0 <= weights[name] < math.inf:
            raise SystemExit(f"--weights: {item!r} needs a weight >= 0")
    if sum(weights.values()) <= 0:
        raise SystemExit("--weights: at least one family needs a weight above 0")
    return weights


def load_shards(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every finished shard in `folder` -> (x (N, H, W) uint8, y (N, 8) int8, family (N,) int8)."""
    parts = [np.load(p) for p in sorted(folder.glob("shard_*.npz")) if not p.name.endswith(".tmp.npz")]
    if not parts:
        raise FileNotFoundError(f"no shards in {folder}: render them with `python -m training.captcha_mix shards`")
    return (np.concatenate([p["x"] for p in parts]), np.concatenate([p["y"] for p in parts]),
            np.concatenate([p["family"] for p in parts]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("shards", help="render training (or evaluation) captchas into .npz shards")
    s.add_argument("--out", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--seed", type=int, required=True, help="shard k is drawn from seed + k")
    s.add_argument("--per-shard", type=int, default=10_000)
    s.add_argument("--families", default=",".join(TRAIN_FAMILIES))
    s.add_argument("--weights", default=None, metavar="FAMILY=W,...",
                   help="share of each family in every shard (default even), e.g. seed=0.6,pil_tiles=1.4; "
                        "families not named weigh 1")
    s.add_argument("--workers", type=int, default=1)
    p = sub.add_parser("preview", help="a grid of samples of every family as one PNG")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "shards":
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        families = tuple(args.families.split(","))
        unknown = set(families) - set(FAMILIES)
        if unknown:
            raise SystemExit(f"unknown families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
        jobs = shard_jobs(out, args.count, args.seed, args.per_shard, families, parse_weights(args.weights, families))
        with Pool(args.workers) as pool:
            for line in pool.imap_unordered(_render_job, jobs):
                print(line, flush=True)
    else:
        rows = []
        for family in FAMILIES:
            tiles = [captcha_pixels(im, HEIGHT, WIDTH) for _, (t, im) in zip(range(6), samples(family, args.seed))]
            rows.append(np.concatenate(tiles, 1))
        Image.fromarray(np.concatenate(rows, 0)).save(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
