"""POST /predict/reconstruct and /predict/interpolate: the convolutional autoencoder.

Uploads go through the same digit preprocessing as /predict/digit (`digit_canvas`), then
encode -> 32 numbers -> decode. The reconstruction error, placed among the errors of MNIST
test digits (quantiles stored in the manifest), gives `typicality`: "does this look like a
digit?". /predict/digit reports it too, through `canvas_typicality` below.

Like /predict/digit, requests go through app/batching.py: admission control, then one
forward pass for whatever requests are queued.
"""

from __future__ import annotations

import io
from typing import Annotated, Literal

import numpy as np
import torch
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from PIL import Image
from pydantic import BaseModel, Field

from app.batching import stack_batch
from app.errors import UPLOAD_ERRORS, ApiError
from app.imaging import decode_image, png_data_url
from app.registry import LoadedModel, ModelRegistry
from app.uploads import read_images
from models.autoencoder import per_image_mse, typicality
from models.preprocess import NoDigitError, canvas_to_image, digit_canvas, to_autoencoder_tensor

router = APIRouter(tags=["autoencoder"])

TASK = "autoencoder"
MAX_SCALE = 16
_IMAGE = {"type": "string", "format": "binary", "description": "PNG, JPEG, GIF, BMP, WebP or TIFF"}
_BASE64 = {"type": "string", "description": "base64 image or data:image/...;base64 URL"}


def _body(fields: dict[str, str]) -> dict:
    """OpenAPI request body for {multipart field: JSON key} image uploads."""
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": list(fields),
                                           "properties": {f: _IMAGE for f in fields}}},
        "application/json": {"schema": {"type": "object", "required": list(fields.values()),
                                        "properties": {k: _BASE64 for k in fields.values()}}},
    }}}


PNG_OK = {200: {"content": {"image/png": {}}, "description": "JSON, or with format=png the image itself"}}
FormatQuery = Annotated[Literal["json", "png"],
                        Query(alias="format", description="json (data URLs) or png (image/png bytes)")]
ScaleQuery = Annotated[int, Query(ge=1, le=MAX_SCALE, description="enlarge the returned images this many times")]


class Reconstruction(BaseModel):
    input: str = Field(..., description="the 28x28 the model saw, as a PNG data URL")
    reconstruction: str = Field(..., description="the decoded 28x28, as a PNG data URL")
    latent: list[float] = Field(..., description="the code: 32 numbers")
    mse: float = Field(..., description="per-pixel mean squared error of reconstruction vs input, pixels in [0, 1]",
                       examples=[0.0031])
    typicality: float | None = Field(
        None, ge=0, le=1, examples=[0.62],
        description="share of MNIST test digits the autoencoder reconstructs worse than this image: ~0.5 for a "
                    "typical digit, near 0 for a scribble or noise")
    model: str = Field(..., examples=["conv"])


class Interpolation(BaseModel):
    frames: list[str] = Field(..., description="`steps` PNG data URLs, from a's reconstruction to b's")
    model: str = Field(..., examples=["conv"])


def upload_canvas(data: bytes, max_pixels: int) -> np.ndarray:
    """Image bytes -> the (28, 28) [0, 1] canvas the digit models take; 4xx when unusable."""
    image = decode_image(data, max_pixels)
    try:
        return digit_canvas(image)
    except NoDigitError as exc:
        raise ApiError(422, "no_digit", f"{exc}; draw a digit in a colour that differs from the background") from None


def autoencoder_or_none(registry: ModelRegistry) -> LoadedModel | None:
    """The loaded autoencoder, or None when the server has none (typicality is then omitted)."""
    return registry.pick(TASK, None) if registry.variants(TASK) else None


def reconstruct_batch(entry: LoadedModel, items: list[torch.Tensor]) -> list[tuple[list[float], np.ndarray, float]]:
    """One forward pass for B requests (run by app/batching.py in the model's thread):
    items B x (1, 1, 28, 28) -> per item (code: 32 floats, reconstruction (28, 28) in [0, 1], MSE)."""
    x = stack_batch(items, entry.device)  # (B, 1, 28, 28)
    z = entry.model.encode(x)  # (B, 32)
    recon = entry.model.decode(z)  # (B, 1, 28, 28)
    mse = per_image_mse(recon, x).tolist()  # B floats
    return list(zip(z.cpu().tolist(), recon[:, 0].cpu().numpy(), mse))


def interpolate_batch(entry: LoadedModel, items: list[tuple[torch.Tensor, int]]) -> list[np.ndarray]:
    """items B x (pair (2, 1, 28, 28), steps) -> per item frames (steps, 28, 28) in [0, 1].
    One encoder pass for every pair, one decoder pass for every frame."""
    z = entry.model.encode(torch.cat([pair for pair, _ in items]).to(entry.device))  # (2B, 32)
    codes = []
    for i, (_, steps) in enumerate(items):
        z_a, z_b = z[2 * i], z[2 * i + 1]  # (32,) each
        t = torch.linspace(0, 1, steps, device=z.device)[:, None]  # (steps, 1)
        # Straight line between the codes; t=0 and t=1 decode to the two reconstructions.
        codes.append((1 - t) * z_a + t * z_b)  # (steps, 32)
    frames = entry.model.decode(torch.cat(codes))[:, 0].cpu().numpy()  # (sum of steps, 28, 28)
    bounds = np.cumsum([0] + [steps for _, steps in items])
    return [frames[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


def _typicality(entry: LoadedModel, mse: float) -> float | None:
    quantiles = (entry.manifest.typicality or {}).get("mse_quantiles")
    return typicality(mse, quantiles) if quantiles else None


async def canvas_typicality(request: Request, canvas: np.ndarray) -> float | None:
    """Typicality of an upload's (28, 28) digit canvas, for routes that preprocess uploads
    themselves (/predict/digit). None when no autoencoder is loaded, or when it is too busy
    to answer: the caller's own result does not wait on it."""
    entry = autoencoder_or_none(request.app.state.registry)
    if entry is None:
        return None
    try:
        async with request.app.state.batching.for_model(entry, reconstruct_batch).admit() as slot:
            _, _, mse = await slot.infer(to_autoencoder_tensor(canvas))
    except ApiError:  # 503 overloaded / timeout on the autoencoder's queue
        return None
    return _typicality(entry, mse)


def _png(image: Image.Image) -> Response:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Response(content=buf.getvalue(), media_type="image/png")


def _reconstruction_response(entry: LoadedModel, canvas: np.ndarray, result, fmt: str, scale: int):
    latent, recon, mse = result
    if fmt == "png":
        return _png(canvas_to_image(recon, scale))
    return Reconstruction(
        input=png_data_url(canvas_to_image(canvas, scale)),
        reconstruction=png_data_url(canvas_to_image(recon, scale)),
        latent=[round(v, 5) for v in latent],
        mse=round(mse, 6),
        typicality=_typicality(entry, mse),
        model=entry.variant,
    )


def _interpolation_response(entry: LoadedModel, frames: np.ndarray, fmt: str, scale: int):
    if fmt == "png":
        return _png(canvas_to_image(np.concatenate(list(frames), axis=1), scale))  # (28, steps * 28) strip
    return Interpolation(frames=[png_data_url(canvas_to_image(f, scale)) for f in frames], model=entry.variant)


def _prepare_pair(files: dict[str, bytes], max_pixels: int) -> torch.Tensor:
    """Two uploads -> (2, 1, 28, 28): a, then b."""
    return to_autoencoder_tensor(np.stack([upload_canvas(files["a"], max_pixels),
                                           upload_canvas(files["b"], max_pixels)]))


@router.post(
    "/predict/reconstruct",
    response_model=Reconstruction,
    response_model_exclude_none=True,
    responses={**UPLOAD_ERRORS, **PNG_OK},
    openapi_extra=_body({"file": "image"}),
    summary="Encode a digit to 32 numbers and decode it back; with format=png, the reconstruction as a PNG",
)
async def predict_reconstruct(request: Request, fmt: FormatQuery = "json", scale: ScaleQuery = 1):
    settings = request.app.state.settings
    entry = request.app.state.registry.pick(TASK, None)  # 503 before reading a big body
    pool = request.app.state.batching
    # Admission first (503 + Retry-After when the queue is full), then the body; decoding in a
    # worker thread, the forward pass in a micro-batch in the model's thread (app/batching.py).
    async with pool.for_model(entry, reconstruct_batch).admit() as slot:
        files = await read_images(request, settings.max_upload_bytes, {"file": "image"})
        canvas = await pool.preprocess(upload_canvas, files["file"], settings.max_image_pixels)
        result = await slot.infer(to_autoencoder_tensor(canvas))
    return await pool.preprocess(_reconstruction_response, entry, canvas, result, fmt, scale)  # PNG encoding


@router.post(
    "/predict/interpolate",
    response_model=Interpolation,
    responses={**UPLOAD_ERRORS, **PNG_OK},
    openapi_extra=_body({"a": "a", "b": "b"}),
    summary="Decode evenly spaced points between two digits' codes; with format=png, one horizontal strip",
)
async def predict_interpolate(
    request: Request,
    steps: Annotated[int, Query(ge=2, le=32, description="frames, both ends included")] = 8,
    fmt: FormatQuery = "json",
    scale: ScaleQuery = 1,
):
    settings = request.app.state.settings
    entry = request.app.state.registry.pick(TASK, None)
    pool = request.app.state.batching
    async with pool.for_model(entry, interpolate_batch).admit() as slot:
        files = await read_images(request, settings.max_upload_bytes, {"a": "a", "b": "b"})
        pair = await pool.preprocess(_prepare_pair, files, settings.max_image_pixels)
        frames = await slot.infer((pair, steps))
    return await pool.preprocess(_interpolation_response, entry, frames, fmt, scale)
