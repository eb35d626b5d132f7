"""Getting image bytes out of a request, within the upload limit.

Accepted bodies:
  * multipart/form-data with the image in a file field (`file` for single-image routes),
  * application/json `{"image": "<base64 or data URL>"}` (field names per route),
  * a raw body with an image/* content type (`curl --data-binary @x.png -H 'Content-Type: image/png'`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json

from fastapi import Request
from starlette.datastructures import UploadFile

from app.errors import ApiError


async def read_body_limited(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it passes `limit` bytes (checked on the
    declared Content-Length first, then while streaming, for chunked uploads)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"body of {int(declared):,} bytes exceeds the {limit:,}-byte upload limit")
    chunks, size = [], 0
    # A client that trickles its body must not hold a slot forever (slow-loris): 408 after the time-out.
    timeout = getattr(getattr(request.app.state, "settings", None), "upload_timeout_s", None)
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "too_large", f"body exceeds the {limit:,}-byte upload limit")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, "upload_timeout", f"request body not received within {timeout:g} s") from None
    return b"".join(chunks)


def _decode_base64(value: object, key: str) -> bytes:
    if not isinstance(value, str) or not value.strip():
        raise ApiError(422, "invalid_base64", f"JSON field {key!r} must be a non-empty base64 string or data URL")
    text = value.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise ApiError(422, "invalid_base64", f"data URL in {key!r} must be base64-encoded (data:image/png;base64,...)")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_base64", f"JSON field {key!r} is not valid base64") from None
    if not data:
        raise ApiError(422, "invalid_base64", f"JSON field {key!r} decodes to zero bytes")
    return data


async def read_images(request: Request, limit: int, fields: dict[str, str]) -> dict[str, bytes]:
    """Return {multipart field: bytes} for each of `fields`, a map of multipart field name to
    the JSON key that carries the same image (e.g. {"file": "image"})."""
    body = await read_body_limited(request, limit)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    names = ", ".join(repr(f) for f in fields)

    if ctype == "multipart/form-data":
        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=len(fields) + 4, max_fields=32)
        except Exception as exc:  # malformed multipart: python-multipart raises several kinds
            raise ApiError(422, "invalid_request", f"could not parse multipart body: {exc}") from None
        out = {}
        try:
            for field in fields:
                part = form.get(field)
                if part is None:
                    found = ", ".join(repr(k) for k in form.keys()) or "none"
                    raise ApiError(422, "missing_file", f"multipart field {field!r} is required (expected {names}; found {found})")
                if not isinstance(part, UploadFile):
                    raise ApiError(422, "missing_file", f"multipart field {field!r} must be a file upload, not text")
                data = await part.read()
                if not data:
                    raise ApiError(422, "invalid_image", f"uploaded file {field!r} is empty (0 bytes)")
                out[field] = data
        finally:
            await form.close()
        return out

    if ctype == "application/json":
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(422, "invalid_json", "body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise ApiError(422, "invalid_json", "JSON body must be an object like {\"image\": \"<base64>\"}")
        out = {}
        for field, key in fields.items():
            if key not in payload:
                keys = ", ".join(repr(k) for k in fields.values())
                raise ApiError(422, "missing_file", f"JSON field {key!r} is required (expected {keys})")
            out[field] = _decode_base64(payload[key], key)
        return out

    if ctype.startswith("image/") and len(fields) == 1:
        if not body:
            raise ApiError(422, "invalid_image", "request body is empty")
        return {next(iter(fields)): body}

    if not body:
        raise ApiError(422, "missing_file", f"no image sent: post multipart/form-data with file field(s) {names}, "
                                            "or JSON with base64")
    raise ApiError(415, "unsupported_media_type",
                   f"content type {ctype or 'none'!r} not accepted: use multipart/form-data (field(s) {names}), "
                   "application/json with base64, or a raw image/* body")
