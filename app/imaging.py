"""Bytes -> PIL image, safely: size limits, format allow-list, first frame, EXIF rotation."""

from __future__ import annotations

import base64
import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ApiError

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow warns (and above 2x raises) on huge images; our own check below is the
            # limit, so turn the warning into the same 413.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ApiError(413, "image_too_large",
                               f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}")
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)  # animated GIF/WebP/APNG: the first frame
            image.load()
            image = ImageOps.exif_transpose(image)
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(413, "image_too_large", f"image has more than {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        raise ApiError(415, "invalid_image",
                       f"not a readable image; send one of {', '.join(FORMATS)}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:  # truncated / corrupt
        raise ApiError(422, "invalid_image", f"image data is corrupt or truncated ({exc})") from None
    if image.width < 1 or image.height < 1:
        raise ApiError(422, "invalid_image", "image has no pixels")
    return image


def png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
