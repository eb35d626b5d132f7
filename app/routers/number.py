"""POST /predict/number: a line of handwritten digits -> the number, each digit with its
confidence and where it lies in the upload."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from app.errors import UPLOAD_ERRORS
from app.inference import SINGLE_UPLOAD, ServicesDep, serve
from app.registry import LoadedModel
from app.uploads import upload_body
from models.number import NumberReading, pad_lines
from models.preprocess import NumberLine

router = APIRouter(tags=["number"])


class NumberDigit(BaseModel):
    digit: int = Field(..., ge=0, le=9, examples=[2])
    confidence: float = Field(..., description="probability of `digit` where it was read (the reader's and the "
                                               "second look's, mixed)", examples=[0.999])
    span: tuple[int, int] = Field(..., description="[x0, x1) in the upload's pixels: where the digit's ink lies",
                                  examples=[[40, 212]])
    top3: list[tuple[int, float]] = Field(..., description="the 3 most likely digits there, with probabilities",
                                          examples=[[[2, 0.999], [7, 0.0006], [3, 0.0001]]])


class NumberPrediction(BaseModel):
    text: str = Field(..., description="the digits read, left to right (empty when none could be read)",
                      examples=["2026"])
    confidence: float = Field(..., description="probability of the whole `text`: the reader's CTC probability "
                                               "(summed over every alignment of its digits to the line's columns), "
                                               "each digit's own share replaced by its probability after the second "
                                               "look at its span. A line read less surely than the manifest's "
                                               "`reread.below` is read again at other sizes: then the mean over its "
                                               "readings of their probabilities, counting 0 for those that spell "
                                               "another text", examples=[0.995])
    digits: list[NumberDigit]
    model: str = Field(..., description="the variant that answered", examples=["ctc"])


def number_batch(entry: LoadedModel, items: list[NumberLine]) -> list[NumberReading]:
    """One forward pass for B lines of any widths (run by app/batching.py in the model's thread):
    padded on the right to the widest, which changes no line's outputs (models/number.py)."""
    x, widths = pad_lines([line.x for line in items])
    return entry.model.read(x.to(entry.device), widths, spans=True, lines=items)


def _upload_span(line: NumberLine, span: tuple[float, float], upload_width: int) -> tuple[int, int]:
    x0 = min(max(0, math.floor(line.to_upload(span[0]))), upload_width - 1)
    x1 = min(max(x0 + 1, math.ceil(line.to_upload(span[1]))), upload_width)
    return x0, x1


@router.post(
    "/predict/number",
    response_model=NumberPrediction,
    responses=UPLOAD_ERRORS,
    openapi_extra=upload_body(SINGLE_UPLOAD),
    summary="Read a handwritten number (1-10 digits on one line, any width) with a CNN + BiGRU + CTC reader",
)
async def predict_number(
    request: Request,
    services: ServicesDep,
    model: Annotated[str | None, Query(description="ctc (default: the most accurate loaded)")] = None,
) -> NumberPrediction:
    served = await serve(services, request, task="number", model=model, batch=number_batch)
    reading: NumberReading = served.result
    line: NumberLine = served.inputs["file"]
    width = served.sizes["file"][0]
    return NumberPrediction(
        text=reading.text,
        confidence=round(reading.confidence, 6),
        digits=[NumberDigit(digit=d.digit, confidence=round(d.confidence, 6), span=_upload_span(line, d.span, width),
                            top3=[(k, round(p, 6)) for k, p in d.top3]) for d in reading.digits],
        model=served.entry.variant,
    )
