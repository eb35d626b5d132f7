"""Captcha styles the shipped readers were never trained on, reproducible from a seed: for the
fine-tuning benchmark (bench/captcha_finetune.py) and for trying `training.captcha finetune`.

    fonts   the captcha package with other fonts (DejaVu Sans Bold, Liberation Serif), 200x70
    wheezy  wheezy.captcha: background, warped/rotated/offset text, a curve, noise, smoothing; 200x75
    lines   PIL text in Liberation Sans/Mono on a tinted background, crossed by interference
            lines and dots, each character rotated and jittered; 180x60

Texts are mixed case from 0-9a-zA-Z, `lengths` characters (default 4-6). The fonts come from
Debian's fonts-dejavu-core and fonts-liberation (wheezy.captcha from PyPI).
"""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from training.captcha_data import seeded_captcha

ALPHABET = string.digits + string.ascii_letters
FONT_DIRS = [Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation")]


def font_path(name: str) -> str:
    for folder in FONT_DIRS:
        if (folder / name).is_file():
            return str(folder / name)
    raise FileNotFoundError(f"font {name} not found in {', '.join(map(str, FONT_DIRS))}: install "
                            "fonts-dejavu-core and fonts-liberation (apt)")


def _fonts_style(rng: random.Random) -> Callable[[str], Image.Image]:
    from captcha.image import ImageCaptcha

    drawer = ImageCaptcha(width=200, height=70, fonts=[font_path("DejaVuSans-Bold.ttf"),
                                                       font_path("LiberationSerif-Regular.ttf")])

    def draw(text: str) -> Image.Image:
        with seeded_captcha(rng):  # the package draws from `secrets`: from `rng` instead
            return drawer.generate_image(text)

    return draw


def _wheezy_style(rng: random.Random) -> Callable[[str], Image.Image]:
    from wheezy.captcha import image as w

    fonts = [font_path("DejaVuSans.ttf"), font_path("LiberationSans-Regular.ttf")]
    drawer = w.captcha(drawings=[
        w.background(),
        w.text(fonts=fonts, drawings=[w.warp(), w.rotate(), w.offset()]),
        w.curve(), w.noise(), w.smooth()], width=200, height=75)
    return drawer


def _lines_style(rng: random.Random) -> Callable[[str], Image.Image]:
    fonts = [ImageFont.truetype(font_path(name), size) for name in ("LiberationSans-Bold.ttf", "LiberationMono-Bold.ttf")
             for size in (30, 34)]

    def draw(text: str) -> Image.Image:
        width, height = 180, 60
        tint = tuple(rng.randint(200, 250) for _ in range(3))
        image = Image.new("RGB", (width, height), tint)
        d = ImageDraw.Draw(image)
        step = (width - 20) / max(len(text), 1)
        for i, ch in enumerate(text):
            font = rng.choice(fonts)
            colour = tuple(rng.randint(10, 120) for _ in range(3))
            glyph = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
            ImageDraw.Draw(glyph).text((8, 4), ch, font=font, fill=colour + (255,))
            glyph = glyph.rotate(rng.uniform(-25, 25), resample=Image.Resampling.BILINEAR)
            image.paste(glyph, (int(10 + i * step + rng.uniform(-3, 3)), int(rng.uniform(0, 14))), glyph)
        for _ in range(rng.randint(2, 4)):  # interference lines across the text
            points = [(rng.uniform(0, width), rng.uniform(0, height)) for _ in range(2)]
            d.line(points, fill=tuple(rng.randint(40, 160) for _ in range(3)), width=rng.randint(1, 2))
        for _ in range(rng.randint(80, 160)):  # dots
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            d.point((x, y), fill=tuple(rng.randint(0, 200) for _ in range(3)))
        return image.filter(ImageFilter.SMOOTH) if rng.random() < 0.5 else image

    return draw


STYLES: dict[str, Callable[[random.Random], Callable[[str], Image.Image]]] = {
    "fonts": _fonts_style, "wheezy": _wheezy_style, "lines": _lines_style}

# The share of characters each style draws in a sans font whose capital I and small l are the
# same solid bar (DejaVu Sans and Sans Bold, Liberation Sans and Sans Bold: widths within 1 px,
# heights within 4%, less than the size each style varies each character by). Read case-
# insensitively, such an I is "i" and such an l is "l", and nothing in the image tells them apart.
# fonts: 1 of its 2 fonts; wheezy: both; lines: 2 of its 4 font/size pairs.
SAME_I_AND_L = {"fonts": 0.5, "wheezy": 1.0, "lines": 0.5}


def best_possible(style: str, texts: list[str]) -> float:
    """The full-string accuracy a perfect case-insensitive reader can expect on these mixed-case
    `texts` of `style` if every I or l drawn in a font of SAME_I_AND_L is right half the time and
    everything else always. An estimate, not a bound: the bars' few % of height can tip a guess,
    and other look-alikes (0 and O) are not counted."""
    coin = SAME_I_AND_L[style] / 2  # chance that one I or l is both ambiguous and guessed wrong
    return sum((1 - coin) ** sum(c in "Il" for c in text) for text in texts) / len(texts)


def i_and_l_right(predicted: list[str], texts: list[str]) -> tuple[int, int]:
    """Of the I and l characters of the mixed-case `texts` in answers of the right length, how
    many the (lower-case) `predicted` answers read right, and how many there were."""
    right = total = 0
    for answer, text in zip(predicted, texts):
        if len(answer) != len(text):
            continue
        for got, want in zip(answer, text):
            if want in "Il":
                total += 1
                right += got == want.lower()
    return right, total


def samples(style: str, seed: int, lengths: tuple[int, int] = (4, 6)) -> Iterator[tuple[str, Image.Image]]:
    """Endless (mixed-case text, image) of `style` from `seed`."""
    rng = random.Random(seed)
    # The drawing libraries draw their randomness from `random`'s global state: seed it too.
    random.seed(seed)
    draw = STYLES[style](rng)
    while True:
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(*lengths)))
        yield text, draw(text)


def write_folder(out: Path, style: str, count: int, seed: int, lengths: tuple[int, int] = (4, 6)) -> list[Path]:
    """`count` captchas of `style` as <text>_<index>.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (text, image) in zip(range(count), samples(style, seed, lengths)):
        path = out / f"{text}_{i:05d}.png"
        image.save(path)
        paths.append(path)
    return paths
