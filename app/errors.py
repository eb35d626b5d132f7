"""One error shape for every failure: {"error": {"code": ..., "message": ...}} with a 4xx.

Routes raise `ApiError`; FastAPI's own validation and routing errors are rewritten into
the same shape so clients parse one thing.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("rnnlab")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _describe(status: int, text: str) -> dict:
    return {"model": ErrorResponse, "description": text}


# For routes that take an image upload; used in `responses=` so /docs shows each status.
UPLOAD_ERRORS = {
    413: _describe(413, "`too_large` (body over the upload limit) or `image_too_large` (too many pixels)"),
    415: _describe(415, "`invalid_image` (not a supported image) or `unsupported_media_type` (body type)"),
    422: _describe(422, "`invalid_image` (corrupt/truncated), `no_digit`, `unknown_model`, `missing_file`, "
                        "`invalid_json`, `invalid_base64` or `invalid_request`"),
    408: _describe(408, "`upload_timeout`: the body did not arrive within the upload time-out"),
    503: _describe(503, "`overloaded` (this model's queue is full), `timeout` (still queued after the request "
                        "time-out) or `model_unavailable`; always with a `Retry-After` header (seconds)"),
}

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # pragma: no cover - a bug if reached
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "unexpected server error; it has been logged")
