"""POST /predict/digit: a drawn or photographed digit -> the RNN's answer, row by row, and the
autoencoder's typicality of the same canvas, from one forward pass each per micro-batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from app.batching import stack_batch
from app.errors import UPLOAD_ERRORS
from app.imaging import png_data_url
from app.inference import SINGLE_UPLOAD, ServicesDep, serve
from app.registry import LoadedModel
from app.uploads import upload_body
from models.autoencoder import per_image_mse, typicality_of
from models.explain import explain_digits
from models.preprocess import canvas_to_image

router = APIRouter(tags=["digits"])


class UnitTrace(BaseModel):
    unit: int = Field(..., description="index of the hidden unit in the traced layer")
    values: list[float] = Field(..., description="its value h_t after each of the 28 rows")


class DigitExplanation(BaseModel):
    cell: str = Field(..., examples=["lstm"])
    layer: int = Field(..., description="the traced layer (the last), 1-based")
    layers: int
    gates: dict[str, list[float]] = Field(
        ..., description="mean gate activation over the hidden units, per row: lstm input/forget/output, "
                         "gru update/reset, rnn none")
    candidate: list[float] | None = Field(None, description="mean candidate per row (lstm C~_t, gru n_t)")
    cell_norm: list[float] | None = Field(None, description="lstm: L2 norm of the cell state C_t per row")
    hidden_norm: list[float] = Field(..., description="L2 norm of h_t per row")
    row_importance: list[float] = Field(
        ..., description="per row, how much the answer's probability drops when that row alone is blanked")
    row_importance_log_odds: list[float] = Field(
        ..., description="the same as a drop of the answer's log-odds log(p / (1 - p)): tells rows apart even "
                         "when the answer is so sure that no single row moves its probability")
    units: list[UnitTrace] = Field(..., description="the 8 hidden units that move most, row by row")


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
    explain: DigitExplanation | None = Field(
        None, description="with explain=true: the last recurrent layer's gates and states row by row, computed "
                          "step by step with the same weights on the same input, and the rows that mattered")


@dataclass(frozen=True)
class DigitReader:
    """What a digit micro-batch runs: the digit network and, when one is loaded, the
    autoencoder that scores the same canvases' typicality (inside the same admission)."""
    digits: LoadedModel
    autoencoder: LoadedModel | None


@dataclass
class DigitItem:
    x: torch.Tensor  # (1, 28, 28): the digit net's input, by its manifest's contract
    canvas: np.ndarray  # (28, 28) in [0, 1]: the autoencoder's input (raw pixels)
    steps: bool  # the caller wants the per-row answers
    explain: bool = False  # ... and the gates, states and row importance (models/explain.py)


@dataclass
class DigitResult:
    probabilities: list[float]  # 10
    steps: list[list[float]] | None  # 28 x 10, the answer after each row (only when asked for)
    typicality: float | None
    explain: dict | None = None


def digit_batch(reader: DigitReader, items: list[DigitItem]) -> list[DigitResult]:
    """One forward pass for B requests (run by app/batching.py in the model's thread) -> B results.
    The per-row answers are computed only when some request in the batch asked for them."""
    x = stack_batch([item.x for item in items], reader.digits.device)  # (B, 28, 28)
    step_probs: list = [None] * len(items)
    if any(item.steps for item in items):
        logits, step_logits = reader.digits.model(x, return_steps=True)  # (B, 10), (B, 28, 10)
        step_probs = step_logits.softmax(-1).cpu().tolist()
    else:
        logits = reader.digits.model(x)  # (B, 10)
    probs = logits.softmax(-1).cpu().tolist()
    typical = [None] * len(items)
    ae = reader.autoencoder
    if ae is not None and ae.manifest.typicality:
        # The autoencoder's input contract is the raw canvas (`normalize: null`), (B, 28, 28).
        canvases = torch.from_numpy(np.stack([item.canvas for item in items])).to(ae.device)
        mse = per_image_mse(ae.model(canvases), canvases).cpu().numpy()  # (B,)
        typical = typicality_of(mse, ae.manifest.typicality["mse_quantiles"]).tolist()
    results = [DigitResult(p, s if item.steps else None, t) for p, s, t, item in zip(probs, step_probs, typical, items)]
    wanted = [k for k, item in enumerate(items) if item.explain]
    if wanted:
        norm = reader.digits.manifest.input.get("normalize")
        blank = -norm["mean"] / norm["std"] if norm else 0.0  # what an empty pixel becomes as input
        answers = logits[wanted].argmax(-1)
        for k, explanation in zip(wanted, explain_digits(reader.digits.model, x[wanted], answers, blank)):
            results[k].explain = explanation
    return results


def _reader(entry: LoadedModel, services) -> DigitReader:
    autoencoders = services.registry.variants("autoencoder")
    return DigitReader(entry, services.registry.pick("autoencoder", None) if autoencoders else None)


@router.post(
    "/predict/digit",
    response_model=DigitPrediction,
    response_model_exclude_none=True,
    responses=UPLOAD_ERRORS,
    openapi_extra=upload_body(SINGLE_UPLOAD),
    summary="Classify a handwritten digit with a row-reading RNN",
)
async def predict_digit(
    request: Request,
    services: ServicesDep,
    model: Annotated[str | None, Query(description="rnn | lstm | gru (default: the most accurate)")] = None,
    steps: Annotated[bool, Query(description="include the 28x10 per-row probabilities")] = False,
    echo: Annotated[bool, Query(description="include the 28x28 input the model saw")] = False,
    explain: Annotated[bool, Query(description="include the last layer's gates and states per row, the rows "
                                               "that mattered and the 8 units that move most")] = False,
) -> DigitPrediction:
    served = await serve(services, request, task="digits", model=model, batch=digit_batch,
                         target=lambda entry: _reader(entry, services),
                         item=lambda inputs: DigitItem(*inputs["file"], steps=steps, explain=explain))
    result: DigitResult = served.result
    probs = result.probabilities
    digit = max(range(len(probs)), key=probs.__getitem__)
    _, canvas = served.inputs["file"]
    return DigitPrediction(
        digit=digit,
        confidence=round(probs[digit], 6),
        probabilities=[round(p, 6) for p in probs],
        model=served.entry.variant,
        steps=[[round(p, 5) for p in row] for row in result.steps] if result.steps is not None else None,
        input=png_data_url(canvas_to_image(canvas)) if echo else None,
        typicality=result.typicality,
        explain=_rounded(result.explain) if result.explain else None,
    )


def _rounded(value, places: int = 5):
    """Floats in nested lists/dicts rounded for the response."""
    if isinstance(value, float):
        return round(value, places)
    if isinstance(value, list):
        return [_rounded(v, places) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v, places) for k, v in value.items()}
    return value
