"""Captcha data: fresh captchas on the fly, fixed labelled sets on disk, and pools.

    # a fixed set of 2,000 PNGs named <label>_<index>.png (reproducible from --seed)
    python -m training.captcha_data folder --count 2000 --seed 7 --out data/captcha_test
    # a pool of preprocessed uint8 arrays that several trainings can share (memory-mapped)
    python -m training.captcha_data pool --count 400000 --seed 1000 --out data/captcha_pool --workers 2

Captchas come from `captcha.image.ImageCaptcha()` (160x60, its bundled font): 4 characters
drawn in mixed case from 0-9, a-z, A-Z; the label is the text in lower case (36 classes).

Reproducibility: captcha 0.7.x draws every random choice (font size, offsets, rotation, warp,
colours, noise) from the `secrets` module, which cannot be seeded. `seeded_captcha(rng)`
swaps in a seeded `random.Random` for the module's `secrets` while one image is drawn, so a
seed gives the same images on every run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

from models.captcha_common import CAPTCHA_LENGTH, CHARSET, DRAWN_ALPHABET, encode_label
from models.preprocess import CAPTCHA_HEIGHT, CAPTCHA_WIDTH, captcha_pixels
from training.loop import progress

ALPHABET = DRAWN_ALPHABET  # what is drawn: mixed case, 62 symbols
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")


class _SeededSecrets:
    """The three `secrets` functions captcha.image calls, backed by a seeded random.Random."""

    def __init__(self, rng: random.Random):
        self._rng = rng

    def randbelow(self, n: int) -> int:
        return self._rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)

    def choice(self, seq):
        return self._rng.choice(seq)


_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def seeded_captcha(rng: random.Random):
    """Within the block, captcha.image draws its randomness from `rng`. Process-wide (it
    swaps a module global), hence the lock: threads take turns."""
    import captcha.image as captcha_image

    with _PATCH_LOCK:
        saved = captcha_image.secrets
        captcha_image.secrets = _SeededSecrets(rng)
        try:
            yield
        finally:
            captcha_image.secrets = saved


class CaptchaGenerator:
    """Random captchas from one seed: `sample()` -> (mixed-case text, 160x60 RGB PIL image).
    seed=None draws from the OS (not reproducible)."""

    def __init__(self, seed: int | None = None, length: int = CAPTCHA_LENGTH):
        from captcha.image import ImageCaptcha

        self.seed = seed
        self.rng = random.Random(seed)
        self.length = length
        self.captcha = ImageCaptcha()  # the defaults: 160x60, DroidSansMono at 42/50/56 pt

    def text(self) -> str:
        return "".join(self.rng.choice(ALPHABET) for _ in range(self.length))

    def image(self, text: str) -> Image.Image:
        if self.seed is None:
            return self.captcha.generate_image(text)
        with seeded_captcha(self.rng):
            return self.captcha.generate_image(text)

    def sample(self) -> tuple[str, Image.Image]:
        text = self.text()
        return text, self.image(text)


def generate_arrays(count: int, seed: int, height: int = CAPTCHA_HEIGHT, width: int = CAPTCHA_WIDTH,
                    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`count` captchas from `seed` -> (uint8 (N, H, W) model input pixels, int64 (N, 4)
    labels, the drawn texts)."""
    gen = CaptchaGenerator(seed)
    images = np.empty((count, height, width), np.uint8)
    labels = np.empty((count, CAPTCHA_LENGTH), np.int64)
    texts = []
    for i in range(count):
        text, img = gen.sample()
        images[i] = captcha_pixels(img, height, width)
        labels[i] = encode_label(text)
        texts.append(text)
    return images, labels, texts


class FreshCaptchas(torch.utils.data.IterableDataset):
    """An endless stream of new captchas as (uint8 (H, W), int64 (4,)) pairs. Each DataLoader
    worker draws from its own seed (seed * 1000 + worker id), so workers never repeat each
    other and a run is reproducible for a given seed and worker count."""

    def __init__(self, seed: int, height: int = CAPTCHA_HEIGHT, width: int = CAPTCHA_WIDTH):
        self.seed, self.height, self.width = seed, height, width

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        torch.set_num_threads(1)
        gen = CaptchaGenerator(self.seed * 1000 + worker)
        while True:
            text, img = gen.sample()
            yield (torch.from_numpy(captcha_pixels(img, self.height, self.width)),
                   torch.tensor(encode_label(text)))


def fresh_loader(seed: int, batch_size: int, workers: int, height: int = CAPTCHA_HEIGHT,
                 width: int = CAPTCHA_WIDTH) -> torch.utils.data.DataLoader:
    """Batches of fresh captchas: (uint8 (B, H, W), int64 (B, 4)). Generation (~2-3 ms per
    captcha per core) runs in `workers` processes so it overlaps the training step."""
    return torch.utils.data.DataLoader(FreshCaptchas(seed, height, width), batch_size=batch_size,
                                       num_workers=workers, persistent_workers=workers > 0,
                                       prefetch_factor=8 if workers else None)


# --- labelled folders ------------------------------------------------------------------------

def label_from_filename(path: str | Path) -> str:
    """'3Fk9_000123.png' -> '3fk9'; '3fk9.png' -> '3fk9'. The label is the file name up to the
    first underscore (or the whole stem), case ignored."""
    return Path(path).stem.split("_", 1)[0].lower()


def list_labelled_folder(folder: str | Path, length: int = CAPTCHA_LENGTH) -> list[tuple[Path, str]]:
    """Every image in `folder` with its label from the file name, sorted by name. Raises
    ValueError naming the files whose label is not `length` characters of 0-9a-z."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no such folder: {folder}")
    items, bad = [], []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTS or not path.is_file():
            continue
        label = label_from_filename(path)
        if len(label) != length or any(c not in CHARSET for c in label):
            bad.append(path.name)
        else:
            items.append((path, label))
    if bad:
        raise ValueError(f"{len(bad)} file(s) in {folder} have no {length}-character 0-9a-z label before the "
                         f"first '_' in their name, e.g. {', '.join(bad[:5])}")
    if not items:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    return items


def load_labelled_folder(folder: str | Path, height: int = CAPTCHA_HEIGHT, width: int = CAPTCHA_WIDTH,
                         ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A folder of labelled captchas -> (uint8 (N, H, W) model input pixels, int64 (N, 4)
    labels, the lower-case labels), through the same preprocessing as serving."""
    items = list_labelled_folder(folder)
    images = np.empty((len(items), height, width), np.uint8)
    labels = np.empty((len(items), CAPTCHA_LENGTH), np.int64)
    for i, (path, label) in enumerate(items):
        with Image.open(path) as img:
            images[i] = captcha_pixels(img, height, width)
        labels[i] = encode_label(label)
    return images, labels, [label for _, label in items]


def write_labelled_folder(out: str | Path, count: int, seed: int) -> list[Path]:
    """Write `count` captchas from `seed` as <text>_<index>.png (text as drawn, mixed case)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gen = CaptchaGenerator(seed)
    digits = max(6, len(str(count - 1)))
    paths = []
    for i in range(count):
        text, img = gen.sample()
        path = out / f"{text}_{i:0{digits}d}.png"
        img.save(path)
        paths.append(path)
    return paths


# --- pools: pre-generated uint8 arrays shared by trainings ----------------------------------

def _pool_chunk(args: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    seed, count, height, width = args
    torch.set_num_threads(1)
    images, labels, _ = generate_arrays(count, seed, height, width)
    return images, labels


def fill_in_chunks(make_chunk, jobs: list[tuple], outputs: tuple[np.ndarray, ...], chunk: int, workers: int,
                   desc: str) -> None:
    """Run make_chunk(job) for each job in `workers` processes (in order) and write the arrays
    it returns for job k into rows k*chunk... of the matching `outputs` (memory maps, flushed)."""
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers) as pool:
        for k, arrays in enumerate(progress(pool.imap(make_chunk, jobs), total=len(jobs), desc=desc)):
            for out, arr in zip(outputs, arrays):
                out[k * chunk:k * chunk + len(arr)] = arr
    for out in outputs:
        out.flush()


def write_pool(out: str | Path, count: int, seed: int, workers: int = 1, height: int = CAPTCHA_HEIGHT,
               width: int = CAPTCHA_WIDTH, chunk: int = 5000) -> Path:
    """Generate `count` captchas into <out>/images.npy (uint8 (N, H, W)), labels.npy (int64
    (N, 4)) and meta.json. Chunk k is drawn from seed * 100000 + k, so the pool is the same
    whatever the worker count."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(out / "images.npy", mode="w+", dtype=np.uint8, shape=(count, height, width))
    labels = np.lib.format.open_memmap(out / "labels.npy", mode="w+", dtype=np.int64,
                                       shape=(count, CAPTCHA_LENGTH))
    jobs = [(seed * 100000 + k, min(chunk, count - k * chunk), height, width) for k in range(math.ceil(count / chunk))]
    fill_in_chunks(_pool_chunk, jobs, (images, labels), chunk, workers, "pool")
    (out / "meta.json").write_text(json.dumps({"count": count, "seed": seed, "height": height, "width": width,
                                               "chunk": chunk, "charset": CHARSET}, indent=2) + "\n")
    return out


def load_pool(folder: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """A pool written by `write_pool`, memory-mapped (processes share one copy in the page cache)."""
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    return (np.load(folder / "images.npy", mmap_mode="r"), np.load(folder / "labels.npy", mmap_mode="r"), meta)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("folder", help="write labelled PNGs (<label>_<index>.png)")
    p = sub.add_parser("pool", help="write a pool of preprocessed uint8 arrays")
    for s in (f, p):
        s.add_argument("--count", type=int, required=True)
        s.add_argument("--seed", type=int, required=True)
        s.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--height", type=int, default=CAPTCHA_HEIGHT)
    p.add_argument("--width", type=int, default=CAPTCHA_WIDTH)
    args = parser.parse_args(argv)
    if args.command == "folder":
        paths = write_labelled_folder(args.out, args.count, args.seed)
        print(f"wrote {len(paths)} captchas to {args.out}")
    else:
        out = write_pool(args.out, args.count, args.seed, args.workers, args.height, args.width)
        print(f"wrote a pool of {args.count} captchas to {out}")


if __name__ == "__main__":
    main()
