"""How well can o / O be told from 0 at all, and does the reader's 32x96 input cost accuracy?

    .venv/bin/python bench/captcha_o0_glyphs.py [--train 60000] [--test 10000] [--epochs 8]

Most of the captcha readers' misreads are o read as 0 or 0 as o. This bench isolates that
decision: it draws real captchas (the `captcha` package, seeded as in training) whose one
position is o, O or 0, cuts the 48 px-wide window around that glyph out of the final 160x60
image (neighbours, noise dots and the curve included), and trains one small CNN on those
crops twice: at full resolution (60x48) and shrunk as the readers see it (the 96x32 input
scales 160x60 by 0.6 x 0.53: 29x32). It prints the held-out error of "o or O" vs "0" (reading
is case-insensitive) for both. A trained classifier's error is an upper bound on how
ambiguous the glyphs are, not the bound itself.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from torch import nn

from training.captcha_data import ALPHABET, seeded_captcha

TARGETS = "oO0"  # classes 0, 1, 2


def glyph_window(cap, chars: list[str], target: int) -> np.ndarray:
    """ImageCaptcha.generate_image, step by step as in captcha 0.7, keeping track of where
    chars[target] lands -> uint8 (60, 48) grey window centred on it."""
    import captcha.image as ci
    from PIL.ImageDraw import Draw

    color = ci.random_color(10, 200, ci.secrets.randbelow(36) + 220)
    background = ci.random_color(238, 255)
    image = Image.new("RGB", (160, 60), background)
    draw = Draw(image)
    glyphs, which = [], None
    for k, c in enumerate(chars):
        if ci.secrets.randbits(32) / (2**32) > cap.word_space_probability:
            glyphs.append(cap._draw_character(" ", draw, color))
        if k == target:
            which = len(glyphs)
        glyphs.append(cap._draw_character(c, draw, color))
    text_width = sum(g.size[0] for g in glyphs)
    width = max(text_width, 160)
    image = image.resize((width, 60))
    average = int(text_width / len(chars))
    rand, offset = int(cap.word_offset_dx * average), int(average * 0.1)
    for j, g in enumerate(glyphs):
        w, h = g.size
        image.paste(g, (offset, int((60 - h) / 2)), g.convert("L").point(cap.lookup_table))
        if j == which:
            span = (offset, offset + w)
        offset = offset + w + (-ci.secrets.randbelow(rand + 1))
    if width > 160:
        image = image.resize((160, 60))
    cap.create_noise_dots(image, color)
    cap.create_noise_curve(image, color)
    grey = np.asarray(image.filter(ImageFilter.SMOOTH).convert("L"), np.uint8)
    centre = int(round((span[0] + span[1]) / 2 * 160 / width))
    grey = np.pad(grey, ((0, 0), (24, 24)), constant_values=int(np.median(grey)))
    return grey[:, centre:centre + 48]


def make_set(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from captcha.image import ImageCaptcha

    rng, cap = random.Random(seed), ImageCaptcha()
    x, y = np.empty((count, 60, 48), np.uint8), np.empty(count, np.int64)
    for i in range(count):
        y[i], pos = rng.randrange(3), rng.randrange(4)
        chars = [rng.choice(ALPHABET) for _ in range(4)]
        chars[pos] = TARGETS[y[i]]
        with seeded_captcha(rng):
            x[i] = glyph_window(cap, chars, pos)
    return x, y


def to_input(x: np.ndarray, low: bool) -> torch.Tensor:
    t = torch.from_numpy(x).float().unsqueeze(1)  # (N, 1, 60, 48)
    if low:
        t = F.interpolate(t, size=(32, 29), mode="bilinear", antialias=True, align_corners=False)
    mean, std = t.mean((2, 3), keepdim=True), t.std((2, 3), keepdim=True).clamp_min(1)
    return ((t - mean) / std).contiguous(memory_format=torch.channels_last)


def classifier() -> nn.Module:
    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)]
    return nn.Sequential(*block(1, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 128),
                         nn.MaxPool2d(2), *block(128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(128, 3)).to(memory_format=torch.channels_last)


def train_and_score(train, test, low: bool, epochs: int, batch: int = 128) -> dict:
    torch.manual_seed(0)
    xtr, ytr = to_input(train[0], low), torch.from_numpy(train[1])
    xte, yte = to_input(test[0], low), torch.from_numpy(test[1])
    net = classifier()
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * (len(xtr) // batch))
    for _ in range(epochs):
        perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr) - batch + 1, batch):
            idx = perm[i:i + batch]
            x = torch.roll(xtr[idx], (int(torch.randint(-2, 3, ())), int(torch.randint(-2, 3, ()))), (2, 3))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = net(x)
            loss = F.cross_entropy(logits.float(), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        p = torch.cat([net(xte[i:i + 1000]).float().softmax(-1) for i in range(0, len(xte), 1000)])
    says_zero = p[:, 2] > p[:, 0] + p[:, 1]  # case-insensitive: o and O are one answer
    return {"three_way_error": float((p.argmax(-1) != yte).float().mean()),
            "o_vs_0_error": float((says_zero != (yte == 2)).float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=60000)
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train, test = make_set(args.train, 11), make_set(args.test, 12)
    print(f"{args.train:,} training and {args.test:,} test glyph windows (o, O, 0 equally often) "
          f"[{time.perf_counter() - start:.0f}s]", flush=True)
    print("| input | o-or-O vs 0 error | o / O / 0 error |\n|---|---:|---:|")
    for low, name in ((False, "full resolution (60x48 window)"), (True, "the readers' scale (32x29 window)")):
        r = train_and_score(train, test, low, args.epochs)
        print(f"| {name} | {r['o_vs_0_error']:.2%} | {r['three_way_error']:.2%} |", flush=True)


if __name__ == "__main__":
    main()
