"""The upload preprocessing: what people send must reach the net in MNIST's own layout."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import mnist_image
from models.preprocess import NoDigitError, digit_canvas, to_digit_tensor
from testkit import drawn_digit

# A handful of real test digits of different classes (indices into the MNIST test set).
SAMPLE = [0, 1, 2, 3, 4, 7, 8, 11, 18, 61]


def _variants(big: Image.Image) -> dict[str, Image.Image]:
    """The same white-on-black digit (L mode, ~280 px) dressed the ways users send it."""
    ink = np.asarray(big, dtype=np.float32) / 255.0  # (H, W) ink strength
    h, w = ink.shape
    out = {"white_on_black": big}
    out["black_on_white"] = Image.fromarray(255 - np.asarray(big), "L")
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 3] = np.asarray(big)  # canvas export: black ink, alpha carries the stroke
    out["transparent_canvas"] = Image.fromarray(rgba, "RGBA")
    paper, pen = np.array([250, 236, 200]), np.array([30, 60, 200])  # blue ink on cream paper
    out["blue_on_cream"] = Image.fromarray((paper * (1 - ink[..., None]) + pen * ink[..., None]).astype(np.uint8), "RGB")
    frame = Image.new("L", (1200, 700), 255)  # a small digit off-centre in a wide photo
    frame.paste(Image.fromarray(255 - np.asarray(big.resize((90, 90))), "L"), (850, 520))
    out["small_in_large_frame"] = frame
    rng = np.random.default_rng(0)  # a phone photo: grey paper, a shadow across it, sensor noise
    yy, xx = np.mgrid[:700, :1200]
    light = 1 - 0.4 * np.exp(-((yy - 100) ** 2 + (xx - 300) ** 2) / (2 * 350 ** 2))
    sheet = np.full((700, 1200), 210.0)
    sheet[200:200 + 180, 500:500 + 180] = 210 - 160 * np.asarray(big.resize((180, 180)), np.float32) / 255
    photo = sheet * light + rng.normal(0, 5, sheet.shape)
    out["shadowed_noisy_photo"] = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8), "L")
    for y in range(40, 700, 150):  # the same on ruled paper
        photo[y:y + 4] -= 50 * light[y:y + 4]
    out["shadowed_ruled_photo"] = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8), "L")
    out["scaled_up"] = big.resize((w * 3, h * 3), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    out["black_on_white"].convert("RGB").save(buf, format="JPEG", quality=60)
    out["jpeg_q60"] = Image.open(io.BytesIO(buf.getvalue()))
    return out


def test_canvas_layout_follows_mnist_convention(mnist_test):
    images, _ = mnist_test
    canvas = digit_canvas(mnist_image(images[0], scale=10))
    assert canvas.shape == (28, 28) and canvas.dtype == np.float32
    assert canvas.min() >= 0 and canvas.max() == pytest.approx(1.0)
    ys, xs = np.nonzero(canvas > 0)
    assert max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == 20  # fitted into 20x20
    gy, gx = np.mgrid[0:28, 0:28]
    com = ((canvas * gy).sum() / canvas.sum(), (canvas * gx).sum() / canvas.sum())
    assert abs(com[0] - 14) < 1.0 and abs(com[1] - 14) < 1.0


def test_mnist_digits_pass_through_nearly_unchanged(mnist_test):
    """MNIST is already in this layout, so the pipeline should barely move its digits."""
    images, _ = mnist_test
    for i in SAMPLE:
        canvas = digit_canvas(mnist_image(images[i]))
        assert np.abs(canvas - images[i].numpy()).mean() < 0.06, i


def _aligned_distance(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean |a-b|, correlation) at the best of the 1-pixel shifts: centring by centre of
    mass rounds to whole pixels, so the same digit at another resolution can land one
    pixel over, which the nets' shift augmentation absorbs."""
    best = (np.inf, -1.0)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            s = np.roll(np.roll(a, dy, 0), dx, 1)
            d = float(np.abs(s - b).mean())
            if d < best[0]:
                best = (d, float(np.corrcoef(s.ravel(), b.ravel())[0, 1]))
    return best


@pytest.mark.parametrize("index", SAMPLE)
def test_same_digit_in_many_dresses_gives_nearly_the_same_input(mnist_test, index):
    images, _ = mnist_test
    variants = _variants(mnist_image(images[index], scale=10))
    reference = digit_canvas(variants["white_on_black"])
    for name, img in variants.items():
        diff, corr = _aligned_distance(digit_canvas(img), reference)
        assert diff < 0.04 and corr > 0.9, f"{name}: mean |diff| {diff:.3f}, corr {corr:.3f}"


@pytest.mark.parametrize("mode", ["RGBA-black", "RGBA-white", "RGB-white-paper", "L-dark-paper", "LA", "P"])
def test_drawn_canvas_exports_in_any_mode(mode):
    if mode == "RGBA-black":
        img = drawn_digit(7)
    elif mode == "RGBA-white":
        img = drawn_digit(7, ink=(255, 255, 255, 255))
    elif mode == "RGB-white-paper":
        img = drawn_digit(7, paper=(255, 255, 255, 255)).convert("RGB")
    elif mode == "L-dark-paper":
        img = drawn_digit(7, ink=(240, 240, 240, 255), paper=(20, 20, 20, 255)).convert("L")
    elif mode == "LA":
        img = drawn_digit(7).convert("LA")
    else:
        img = drawn_digit(7, paper=(255, 255, 255, 255)).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    reference = digit_canvas(drawn_digit(7))
    canvas = digit_canvas(img)
    assert np.abs(canvas - reference).mean() < 0.04, mode


def test_sixteen_bit_grayscale():
    img = drawn_digit(3, paper=(255, 255, 255, 255)).convert("L")
    wide = Image.fromarray(np.asarray(img).astype(np.uint16) * 257)  # mode I;16
    assert wide.mode.startswith("I;16")
    assert np.abs(digit_canvas(wide) - digit_canvas(img)).mean() < 0.02


@pytest.mark.parametrize("image", [
    Image.new("RGB", (64, 48), (255, 255, 255)),
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)),
    Image.new("L", (1, 1), 0),
    Image.new("RGB", (80, 80), (120, 160, 200)),
], ids=["white", "transparent", "1x1", "flat-colour"])
def test_blank_images_have_no_digit(image):
    with pytest.raises(NoDigitError):
        digit_canvas(image)


def test_faint_noise_is_not_ink():
    rng = np.random.default_rng(0)
    noisy = np.clip(235 + rng.normal(0, 4, (120, 120)), 0, 255).astype(np.uint8)  # paper texture
    with pytest.raises(NoDigitError):
        digit_canvas(Image.fromarray(noisy, "L"))


def test_tensor_normalisation_matches_training():
    canvas = np.zeros((28, 28), np.float32)
    x = to_digit_tensor(canvas)
    assert x.shape == (1, 28, 28)
    assert x[0, 0, 0].item() == pytest.approx(-0.1307 / 0.3081)
    assert to_digit_tensor(np.zeros((4, 28, 28), np.float32)).shape == (4, 28, 28)
