"""Drawn digits and image bytes for the tests and the benches.

Hand-designed pen paths for the ten digits, rendered the way the demo page's canvas draws
them (thick round strokes), so "a drawn 7" means the same thing in the API tests, the browser
tests and the benches.

Coordinates are in the unit square, y pointing down. Each digit has one or more variants;
each variant is a list of strokes; each stroke a list of (x, y) control points that are
smoothed with a Catmull-Rom spline.
"""

from __future__ import annotations

import io
import math
import random

from PIL import Image, ImageDraw

STROKES: dict[int, list[list[list[tuple[float, float]]]]] = {
    0: [[[(0.5, 0.1), (0.3, 0.2), (0.23, 0.5), (0.3, 0.8), (0.5, 0.9), (0.7, 0.8), (0.77, 0.5), (0.7, 0.2), (0.5, 0.1), (0.42, 0.14)]]],
    1: [[[(0.5, 0.1), (0.5, 0.9)]],
        [[(0.36, 0.24), (0.53, 0.1), (0.52, 0.9)]]],
    2: [[[(0.26, 0.3), (0.35, 0.15), (0.52, 0.1), (0.7, 0.2), (0.7, 0.4), (0.5, 0.62), (0.25, 0.88), (0.5, 0.87), (0.78, 0.88)]]],
    3: [[[(0.26, 0.2), (0.5, 0.1), (0.72, 0.22), (0.68, 0.4), (0.45, 0.49), (0.7, 0.58), (0.74, 0.78), (0.5, 0.91), (0.25, 0.82)]]],
    4: [[[(0.62, 0.9), (0.62, 0.1), (0.22, 0.64), (0.82, 0.64)]],
        [[(0.3, 0.1), (0.26, 0.56), (0.76, 0.56)], [(0.66, 0.12), (0.66, 0.9)]]],
    5: [[[(0.74, 0.12), (0.34, 0.12), (0.3, 0.45)], [(0.3, 0.45), (0.5, 0.4), (0.72, 0.52), (0.73, 0.76), (0.52, 0.9), (0.26, 0.83)]]],
    6: [[[(0.68, 0.1), (0.45, 0.28), (0.31, 0.58), (0.35, 0.83), (0.55, 0.91), (0.71, 0.77), (0.66, 0.58), (0.47, 0.54), (0.32, 0.65)]]],
    7: [[[(0.22, 0.12), (0.79, 0.12), (0.44, 0.9)]]],
    8: [[[(0.5, 0.5), (0.31, 0.36), (0.33, 0.17), (0.5, 0.1), (0.67, 0.17), (0.69, 0.36), (0.5, 0.5), (0.29, 0.68),
          (0.31, 0.86), (0.5, 0.92), (0.69, 0.86), (0.71, 0.68), (0.5, 0.5)]]],
    9: [[[(0.7, 0.3), (0.56, 0.12), (0.36, 0.14), (0.29, 0.32), (0.44, 0.46), (0.69, 0.36), (0.71, 0.3), (0.69, 0.6), (0.67, 0.9)]]],
}


def _catmull_rom(points: list[tuple[float, float]], per_segment: int = 8) -> list[tuple[float, float]]:
    if len(points) < 3:
        return list(points)
    pts = [points[0]] + list(points) + [points[-1]]
    out = []
    for i in range(1, len(pts) - 2):
        p0, p1, p2, p3 = pts[i - 1], pts[i], pts[i + 1], pts[i + 2]
        for k in range(per_segment):
            t = k / per_segment
            t2, t3 = t * t, t * t * t
            out.append(tuple(0.5 * ((2 * p1[j]) + (-p0[j] + p2[j]) * t + (2 * p0[j] - 5 * p1[j] + 4 * p2[j] - p3[j]) * t2
                                    + (-p0[j] + 3 * p1[j] - 3 * p2[j] + p3[j]) * t3) for j in range(2)))
    out.append(points[-1])
    return out


def digit_paths(digit: int, variant: int = 0, size: int = 280, rng: random.Random | None = None,
                margin: float = 0.12) -> list[list[tuple[float, float]]]:
    """Pixel-space polylines for `digit` on a size x size canvas. With `rng`, the drawing is
    jittered the way people differ: slant, aspect, size, position and wobbly control points."""
    strokes = STROKES[digit][variant % len(STROKES[digit])]
    rot = scale = aspect = 0.0
    dx = dy = 0.0
    if rng is not None:
        rot = math.radians(rng.uniform(-10, 10))
        scale = rng.uniform(-0.25, 0.05)
        aspect = rng.uniform(-0.15, 0.15)
        dx, dy = rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08)
    sx, sy = (1 + scale) * (1 + aspect), (1 + scale) * (1 - aspect)
    paths = []
    for stroke in strokes:
        pts = []
        for x, y in stroke:
            if rng is not None:
                x, y = x + rng.gauss(0, 0.015), y + rng.gauss(0, 0.015)
            x, y = (x - 0.5) * sx, (y - 0.5) * sy
            x, y = x * math.cos(rot) - y * math.sin(rot), x * math.sin(rot) + y * math.cos(rot)
            x, y = 0.5 + dx + x, 0.5 + dy + y
            span = 1 - 2 * margin
            pts.append(((margin + x * span) * size, (margin + y * span) * size))
        paths.append(_catmull_rom(pts))
    return paths


def render_canvas(paths, size: int | tuple[int, int] = 280, width: float = 22, ink=(0, 0, 0, 255),
                  paper=(0, 0, 0, 0)) -> Image.Image:
    """An RGBA image like an HTML canvas export (`size` square, or (width, height)): round-capped
    strokes of `ink` on `paper` (transparent by default)."""
    img = Image.new("RGBA", size if isinstance(size, tuple) else (size, size), paper)
    draw = ImageDraw.Draw(img)
    r = width / 2
    for path in paths:
        draw.line(path, fill=ink, width=int(round(width)), joint="curve")
        for x, y in (path[0], path[-1]):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    return img


def drawn_digit(digit: int, variant: int = 0, seed: int | None = None, size: int = 280, width: float | None = None,
                **colours) -> Image.Image:
    """`digit` as the demo page's canvas exports it; with `seed`, jittered like a person's hand."""
    rng = random.Random(seed) if seed is not None else None
    if width is None:
        width = rng.uniform(14, 30) if rng else 22
    return render_canvas(digit_paths(digit, variant, size, rng), size, width, **colours)


def png_bytes(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    """`image` encoded as `fmt` (PNG unless told), as an upload's bytes."""
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def number_paths(text: str, size: float, rng: random.Random, pen: float) -> tuple[list[list[tuple[float, float]]], int, int]:
    """`text` (digits) written left to right with a `pen` px round pen, each digit about `size`
    px tall, jittered like a hand (variant, slant, size, spacing, baseline) -> (pixel-space
    polylines, canvas width, canvas height)."""
    placed, x = [], 0.0
    for ch in text:
        d = int(ch)
        paths = digit_paths(d, rng.randrange(len(STROKES[d])), size, rng, margin=0.0)
        x_min = min(px for path in paths for px, _ in path)
        x_max = max(px for path in paths for px, _ in path)
        shift = x - x_min + pen / 2
        dy = rng.gauss(0, 0.04 * size) + size * 0.3
        placed += [[(px + shift, py + dy) for px, py in path] for path in paths]
        x += (x_max - x_min) + pen + rng.uniform(-0.05, 0.45) * size
    return placed, int(x + pen * 2 + 4), int(size * 1.6)


def drawn_number(text: str, seed: int = 0, height: int = 240, **colours) -> Image.Image:
    """`text` as the page's number pad exports it: a transparent RGBA canvas `height` px tall,
    the pen as wide as the page's (22/280 of the height), jittered like a person's hand."""
    rng = random.Random(seed)
    pen = 22 / 280 * height
    paths, width, _ = number_paths(text, height / 1.6, rng, pen)
    return render_canvas(paths, (max(width, height), height), pen, **colours)
