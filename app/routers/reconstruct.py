"""POST /predict/reconstruct and /predict/interpolate: the convolutional autoencoder.

Uploads go through the prepare function of the autoencoder's manifest (the digit canvas, raw
[0, 1] pixels), then encode -> 32 numbers -> decode. The reconstruction error, placed among the
errors of MNIST test digits (quantiles stored in the manifest), gives `typicality`: "does this
look like a digit?". /predict/digit reports it too, from its own batch (app/routers/digits.py).
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
from app.errors import UPLOAD_ERRORS
from app.imaging import png_data_url
from app.inference import SINGLE_UPLOAD, ServicesDep, serve
from app.registry import LoadedModel
from app.uploads import upload_body
from models.autoencoder import per_image_mse, typicality
from models.preprocess import canvas_to_image

router = APIRouter(tags=["autoencoder"])

TASK = "autoencoder"
PAIR_UPLOAD = {"a": "a", "b": "b"}
MAX_SCALE = 16

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


def reconstruct_batch(entry: LoadedModel, items: list[tuple[torch.Tensor, np.ndarray]]
                      ) -> list[tuple[list[float], np.ndarray, float]]:
    """One forward pass for B requests (run by app/batching.py in the model's thread):
    items B x (input (1, 28, 28), canvas) -> per item (code: 32 floats, reconstruction (28, 28) in [0, 1], MSE)."""
    x = stack_batch([x for x, _ in items], entry.device)  # (B, 28, 28)
    z = entry.model.encode(x)  # (B, 32)
    recon = entry.model.decode(z)  # (B, 1, 28, 28)
    mse = per_image_mse(recon, x).tolist()  # B floats
    return list(zip(z.cpu().tolist(), recon[:, 0].cpu().numpy(), mse))


def interpolate_batch(entry: LoadedModel, items: list[tuple[torch.Tensor, int]]) -> list[np.ndarray]:
    """items B x (pair (2, 28, 28), steps) -> per item frames (steps, 28, 28) in [0, 1].
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


@router.post(
    "/predict/reconstruct",
    response_model=Reconstruction,
    response_model_exclude_none=True,
    responses={**UPLOAD_ERRORS, **PNG_OK},
    openapi_extra=upload_body(SINGLE_UPLOAD),
    summary="Encode a digit to 32 numbers and decode it back; with format=png, the reconstruction as a PNG",
)
async def predict_reconstruct(request: Request, services: ServicesDep, fmt: FormatQuery = "json",
                              scale: ScaleQuery = 1):
    served = await serve(services, request, task=TASK, model=None, batch=reconstruct_batch)
    _, canvas = served.inputs["file"]
    # PNG encoding in a worker thread too.
    return await services.batching.preprocess(_reconstruction_response, served.entry, canvas, served.result, fmt, scale)


@router.post(
    "/predict/interpolate",
    response_model=Interpolation,
    responses={**UPLOAD_ERRORS, **PNG_OK},
    openapi_extra=upload_body(PAIR_UPLOAD),
    summary="Decode evenly spaced points between two digits' codes; with format=png, one horizontal strip",
)
async def predict_interpolate(
    request: Request,
    services: ServicesDep,
    steps: Annotated[int, Query(ge=2, le=32, description="frames, both ends included")] = 8,
    fmt: FormatQuery = "json",
    scale: ScaleQuery = 1,
):
    served = await serve(services, request, task=TASK, model=None, batch=interpolate_batch, fields=PAIR_UPLOAD,
                         item=lambda inputs: (torch.cat([inputs["a"][0], inputs["b"][0]]), steps))  # (2, 28, 28)
    return await services.batching.preprocess(_interpolation_response, served.entry, served.result, fmt, scale)
