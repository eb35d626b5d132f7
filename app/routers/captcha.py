"""POST /predict/captcha: a 4-character captcha -> its text; GET /captcha/new: one to try."""

from __future__ import annotations

import secrets
import threading
from typing import Annotated

import torch
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from app.batching import stack_batch
from app.errors import UPLOAD_ERRORS
from app.imaging import png_data_url
from app.inference import SINGLE_UPLOAD, ServicesDep, serve
from app.registry import LoadedModel
from app.uploads import upload_body
from models.captcha_common import CAPTCHA_LENGTH, DRAWN_ALPHABET, CaptchaReading

router = APIRouter(tags=["captcha"])


class CaptchaCharacter(BaseModel):
    char: str = Field(..., examples=["3"])
    confidence: float = Field(..., description="probability of `char` at its position", examples=[0.99])
    top3: list[tuple[str, float]] = Field(..., description="the 3 most likely characters with probabilities",
                                          examples=[[["3", 0.99], ["8", 0.005], ["b", 0.001]]])


class CaptchaPrediction(BaseModel):
    text: str = Field(..., description="the answer, lower case (reading is case-insensitive)", examples=["3fk9"])
    confidence: float = Field(..., description="probability of the whole string", examples=[0.97])
    model: str = Field(..., description="the variant that answered: ctc or seq2seq", examples=["ctc"])
    characters: list[CaptchaCharacter]


class NewCaptcha(BaseModel):
    image: str = Field(..., description="a fresh 160x60 captcha as a PNG data URL")
    text: str = Field(..., description="its answer, lower case", examples=["3fk9"])


def captcha_batch(entry: LoadedModel, items: list[tuple[torch.Tensor, torch.Tensor | None]]) -> list[CaptchaReading]:
    """One forward pass for B requests (run by app/batching.py in the model's thread):
    items B x ((1, 1, H, W), full-resolution (1, 60, 160) or None) -> B readings (text, string
    probability, per-character top-3)."""
    x = stack_batch([small for small, _ in items], entry.device)
    if items[0][1] is None:
        return entry.model.read(x)
    return entry.model.read(x, full=stack_batch([full for _, full in items], entry.device))


@router.post(
    "/predict/captcha",
    response_model=CaptchaPrediction,
    responses=UPLOAD_ERRORS,
    openapi_extra=upload_body(SINGLE_UPLOAD),
    summary="Read a 4-character captcha (0-9, a-z, case-insensitive) with a CNN-to-sequence model",
)
async def predict_captcha(
    request: Request,
    services: ServicesDep,
    model: Annotated[str | None, Query(description="ctc | seq2seq (default: the most accurate)")] = None,
) -> CaptchaPrediction:
    served = await serve(services, request, task="captcha", model=model, batch=captcha_batch)
    reading: CaptchaReading = served.result
    return CaptchaPrediction(
        text=reading.text,
        confidence=round(reading.confidence, 6),
        model=served.entry.variant,
        characters=[CaptchaCharacter(char=c.char, confidence=round(c.confidence, 6),
                                     top3=[(ch, round(p, 6)) for ch, p in c.top3]) for c in reading.characters],
    )


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
