"""POST /predict/captcha: a 4-character captcha -> its text; GET /captcha/new: one to try."""

from __future__ import annotations

import secrets
import threading
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from app.batching import stack_batch
from app.errors import UPLOAD_ERRORS, ApiError
from app.imaging import png_data_url
from app.inference import SINGLE_UPLOAD, ServicesDep, serve
from app.registry import LoadedModel
from app.uploads import upload_body
from models.captcha_common import (CAPTCHA_LENGTH, DRAWN_ALPHABET, MAX_CONSTRAINED_LENGTH, CaptchaReading,
                                   Constraints, parse_constraints, with_answers)

router = APIRouter(tags=["captcha"])


class CaptchaCharacter(BaseModel):
    char: str = Field(..., examples=["3"])
    confidence: float = Field(..., description="probability of `char` at its position", examples=[0.99])
    top3: list[tuple[str, float]] = Field(..., description="the 3 most likely characters with probabilities",
                                          examples=[[["3", 0.99], ["8", 0.005], ["b", 0.001]]])
    span: tuple[int, int] | None = Field(
        None, description="with explain=true: [x0, x1) in the upload's pixels where the character was read "
                          "(the middle 90% of its weights)", examples=[[12, 41]])
    weights: list[float] | None = Field(
        None, description="with explain=true: one weight per column of the upload, summing to 1: where it was "
                          "read (seq2seq: its attention; ctc: the probabilities of its run of columns)")


class CaptchaPrediction(BaseModel):
    text: str = Field(..., description="the answer, lower case (reading is case-insensitive)", examples=["3fk9"])
    confidence: float = Field(..., description="probability of the whole string (calibrated: readers with a fitted "
                                               "temperature mean about 9 in 10 right at 0.9)", examples=[0.97])
    model: str = Field(..., description="the reader that answered: ctc, seq2seq, general or a served name",
                       examples=["ctc"])
    characters: list[CaptchaCharacter]


class NewCaptcha(BaseModel):
    image: str = Field(..., description="a fresh 160x60 captcha as a PNG data URL")
    text: str = Field(..., description="its answer, lower case", examples=["3fk9"])


CaptchaItem = tuple[torch.Tensor, torch.Tensor | None, bool, Constraints | None]


def captcha_batch(entry: LoadedModel, items: list[CaptchaItem]) -> list[CaptchaReading | ValueError]:
    """One forward pass for B requests (run by app/batching.py in the model's thread):
    items B x ((1, 1, H, W), full-resolution (1, 60, 160) or None, explain, constraints or None)
    -> B readings (text, string probability, per-character top-3, and where each was read when
    a request asked), each decoded under its own request's constraints. An item whose
    constraints this reader cannot meet gets its ValueError instead (the others still read)."""
    results: list[CaptchaReading | ValueError | None] = [None] * len(items)
    ok = []
    for i, item in enumerate(items):
        try:
            entry.model.check_constraints(item[3] if len(item) > 3 else None)
            ok.append(i)
        except ValueError as exc:
            results[i] = exc
    if ok:
        chosen = [items[i] for i in ok]
        x = stack_batch([item[0] for item in chosen], entry.device)
        explain = any(item[2] for item in chosen)
        full = None if chosen[0][1] is None else stack_batch([item[1] for item in chosen], entry.device)
        constraints = [item[3] if len(item) > 3 else None for item in chosen]
        for i, reading in zip(ok, entry.model.read(x, full=full, explain=explain, constraints=constraints)):
            results[i] = reading
    return results


def upload_columns(columns: list[float], reader_width: int, upload_width: int) -> tuple[list[float], tuple[int, int]]:
    """A character's weights over the reader's T input columns (each 4 px of its `reader_width`
    input) -> (weights over the upload's columns, summing to 1; its span [x0, x1), the middle 90%
    of that weight). The reader's input is the upload resized, so column t covers upload x in
    [4t, 4t + 4) * upload_width / reader_width."""
    per_pixel = np.zeros(upload_width)
    scale = upload_width / reader_width
    for t, w in enumerate(columns):
        x0, x1 = round(4 * t * scale), max(round(4 * (t + 1) * scale), round(4 * t * scale) + 1)
        x1 = min(x1, upload_width)
        if x1 > x0:
            per_pixel[x0:x1] += w / (x1 - x0)
    per_pixel /= max(per_pixel.sum(), 1e-12)
    cumulative = np.cumsum(per_pixel)
    x0 = int(np.searchsorted(cumulative, 0.05))
    x1 = int(np.searchsorted(cumulative, 0.95)) + 1
    return per_pixel.tolist(), (x0, max(min(x1, upload_width), x0 + 1))


@router.post(
    "/predict/captcha",
    response_model=CaptchaPrediction,
    response_model_exclude_none=True,
    responses=UPLOAD_ERRORS,
    openapi_extra=upload_body(SINGLE_UPLOAD),
    summary="Read a captcha (0-9, a-z, case-insensitive) with a CNN-to-sequence model",
)
async def predict_captcha(
    request: Request,
    services: ServicesDep,
    model: Annotated[str | None, Query(description="ctc | seq2seq: the seed-style readers (the demo's generator: "
                                               "both read 1-8 characters; default: the one that reads them best at "
                                               "its worst of 4, 5 and 6 characters) | "
                                               "general: many styles, 1-8 characters | a reader you trained (GET "
                                               "/models lists what is served)")] = None,
    explain: Annotated[bool, Query(description="add each character's span and weights over the upload's "
                                               "columns: where it was read")] = False,
    length: Annotated[int | None, Query(
        ge=1, le=MAX_CONSTRAINED_LENGTH,
        description=f"answer exactly this many characters (1-{MAX_CONSTRAINED_LENGTH}), by constrained decoding: "
                    "ctc finds the most probable column alignment that writes exactly that many; a seq2seq reader "
                    "with an end token (the served seq2seq) may not end before that step and must end on it; one "
                    f"without (trained on fixed-length labels) writes a fixed {CAPTCHA_LENGTH} and takes only "
                    f"length={CAPTCHA_LENGTH}")] = None,
    charset: Annotated[str | None, Query(
        description="answer only with these characters: `digits` (0-9), `letters` (a-z), `alnum` (0-9a-z, the "
                    "default) or the characters themselves, e.g. `0123abc` (any of 0-9a-zA-Z, case-insensitive). "
                    "Decoded under it, not filtered after: the other characters' probability is removed and the "
                    "rest renormalised before the answer is chosen; top3 lists only allowed characters")] = None,
) -> CaptchaPrediction:
    try:
        constraints = parse_constraints(length=length, charset=charset)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    reader = services.registry.pick("captcha", model)
    constraints = with_answers(constraints, reader.manifest.answers)
    if not constraints.free:  # refuse what the reader cannot do before reading the upload
        _check_constraints(reader, constraints)
    served = await serve(services, request, task="captcha", model=model, batch=captcha_batch,
                         item=lambda inputs: (*inputs["file"], explain, None if constraints.free else constraints))
    if isinstance(served.result, ValueError):  # the reader changed since the check (a reload)
        raise ApiError(422, "invalid_request", str(served.result))
    reading: CaptchaReading = served.result
    characters = []
    for c in reading.characters:
        character = CaptchaCharacter(char=c.char, confidence=round(c.confidence, 6),
                                     top3=[(ch, round(p, 6)) for ch, p in c.top3])
        if explain and c.columns is not None:
            weights, span = upload_columns(c.columns, served.entry.manifest.input["width"], served.sizes["file"][0])
            character.span, character.weights = span, [round(w, 6) for w in weights]
        characters.append(character)
    return CaptchaPrediction(text=reading.text, confidence=round(reading.confidence, 6), model=served.entry.variant,
                             characters=characters)


def _check_constraints(entry: LoadedModel, constraints: Constraints) -> None:
    try:
        entry.model.check_constraints(constraints)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None


_generator_lock = threading.Lock()
_generator = None


def _new_captcha() -> NewCaptcha:
    global _generator
    from captcha.image import ImageCaptcha

    text = "".join(secrets.choice(DRAWN_ALPHABET) for _ in range(CAPTCHA_LENGTH))
    with _generator_lock:  # one ImageCaptcha (it caches its fonts), drawn one image at a time
        if _generator is None:
            _generator = ImageCaptcha()  # the training generator's defaults: 160x60, bundled font
        image = _generator.generate_image(text)
    return NewCaptcha(image=png_data_url(image), text=text.lower())


@router.get("/captcha/new", response_model=NewCaptcha, summary="A fresh random captcha and its answer (for the demo)")
def new_captcha() -> NewCaptcha:
    return _new_captcha()
