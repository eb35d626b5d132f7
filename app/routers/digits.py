"""POST /predict/digit: a drawn or photographed digit -> the RNN's answer, row by row."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from app.batching import stack_batch
from app.errors import UPLOAD_ERRORS, ApiError
from app.imaging import decode_image, png_data_url
from app.registry import LoadedModel
from app.routers.reconstruct import canvas_typicality
from app.uploads import read_images
from models.preprocess import NoDigitError, canvas_to_image, digit_canvas, to_digit_tensor

router = APIRouter(tags=["digits"])

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {"type": "string", "format": "binary",
                                                   "description": "PNG, JPEG, GIF, BMP, WebP or TIFF"}}}},
            "application/json": {
                "schema": {"type": "object", "required": ["image"],
                           "properties": {"image": {"type": "string",
                                                    "description": "base64 image or data:image/...;base64 URL"}}}},
        },
    }
}


class DigitPrediction(BaseModel):
    digit: int = Field(..., ge=0, le=9, examples=[7])
    confidence: float = Field(..., description="probability of `digit`", examples=[0.998])
    probabilities: list[float] = Field(..., description="10 class probabilities, summing to 1")
    model: str = Field(..., description="the variant that answered: rnn, lstm or gru", examples=["gru"])
    steps: list[list[float]] | None = Field(
        None, description="with steps=true: 28 rows x 10 probabilities, the answer after reading each row")
    input: str | None = Field(None, description="with echo=true: the exact 28x28 the model saw, as a PNG data URL")
    typicality: float | None = Field(
        None, ge=0, le=1, description="does this look like a digit? share of MNIST test digits the autoencoder "
                                      "reconstructs worse (~0.5 typical, near 0 a scribble); absent without one")


def _prepare(data: bytes, max_pixels: int) -> tuple[torch.Tensor, np.ndarray]:
    """Upload bytes -> (model input (1, 28, 28), canvas (28, 28) in [0, 1]); 4xx when unusable."""
    image = decode_image(data, max_pixels)
    try:
        canvas = digit_canvas(image)  # (28, 28) in [0, 1]
    except NoDigitError as exc:
        raise ApiError(422, "no_digit", f"{exc}; draw a digit in a colour that differs from the background") from None
    return to_digit_tensor(canvas), canvas  # (1, 28, 28)


def digit_batch(entry: LoadedModel, items: list[torch.Tensor]) -> list[tuple[list[float], list[list[float]]]]:
    """One forward pass for B requests (run by app/batching.py in the model's thread):
    items B x (1, 28, 28) -> per item (10 probabilities, 28 x 10 per-row probabilities)."""
    x = stack_batch(items, entry.device)  # (B, 28, 28)
    logits, step_logits = entry.model(x, return_steps=True)  # (B, 10), (B, 28, 10)
    probs = logits.softmax(-1).cpu().tolist()
    step_probs = step_logits.softmax(-1).cpu().tolist()
    return list(zip(probs, step_probs))


def _response(entry: LoadedModel, probs: list[float], step_probs: list[list[float]], canvas: np.ndarray,
              steps: bool, echo: bool) -> DigitPrediction:
    digit = max(range(len(probs)), key=probs.__getitem__)
    return DigitPrediction(
        digit=digit,
        confidence=round(probs[digit], 6),
        probabilities=[round(p, 6) for p in probs],
        model=entry.variant,
        steps=[[round(p, 5) for p in row] for row in step_probs] if steps else None,
        input=png_data_url(canvas_to_image(canvas)) if echo else None,
    )


@router.post(
    "/predict/digit",
    response_model=DigitPrediction,
    response_model_exclude_none=True,
    responses=UPLOAD_ERRORS,
    openapi_extra=IMAGE_BODY,
    summary="Classify a handwritten digit with a row-reading RNN",
)
async def predict_digit(
    request: Request,
    model: Annotated[str | None, Query(description="rnn | lstm | gru (default: the most accurate)")] = None,
    steps: Annotated[bool, Query(description="include the 28x10 per-row probabilities")] = False,
    echo: Annotated[bool, Query(description="include the 28x28 input the model saw")] = False,
) -> DigitPrediction:
    settings = request.app.state.settings
    entry = request.app.state.registry.pick("digits", model)  # 422 before reading a big body
    pool = request.app.state.batching
    # Admission first (503 + Retry-After when this model's queue is full), then the body.
    async with pool.for_model(entry, digit_batch).admit() as slot:
        files = await read_images(request, settings.max_upload_bytes, {"file": "image"})
        # Decoding and preprocessing in a worker thread; the forward pass joins a micro-batch
        # run in the model's own thread (app/batching.py). Neither blocks the event loop.
        x, canvas = await pool.preprocess(_prepare, files["file"], settings.max_image_pixels)
        probs, step_probs = await slot.infer(x)
    prediction = _response(entry, probs, step_probs, canvas, steps, echo)
    prediction.typicality = await canvas_typicality(request, canvas)  # app/routers/reconstruct.py
    return prediction
