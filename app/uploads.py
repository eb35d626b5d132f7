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
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile

from app.errors import ApiError


async def read_body_limited(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """The whole body, refusing with 413 as soon as it passes `limit` bytes (checked on the
    declared Content-Length first, then while streaming, for chunked uploads)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"body of {int(declared):,} bytes exceeds the {limit:,}-byte upload limit")
    chunks, size = [], 0
    # A client that trickles its body must not hold a slot forever (slow-loris): 408 after `timeout` s.
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


def simple_multipart(body: bytes, content_type: str, max_parts: int) -> dict[str, tuple[bytes, bool]] | None:
    """A well-formed multipart/form-data body (what browsers, curl and HTTP libraries send) ->
    {field name: (content, is a file)}; None for anything less usual (an epilogue, duplicate or
    unnamed fields, transfer encodings, too many parts, ...), which the full parser then handles
    (with its errors). Why: python-multipart's byte-wise state machine was ~10% of the event
    loop's CPU per /predict/digit; the body is already in memory, so splitting it is enough."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        return None
    delimiter = b"--" + boundary
    close = body.find(b"\r\n" + delimiter + b"--")
    if not body.startswith(delimiter) or close < 0 or body[close + len(delimiter) + 4:] not in (b"", b"\r\n"):
        return None
    chunks = body[len(delimiter):close].split(b"\r\n" + delimiter)  # each: \r\n headers \r\n\r\n content
    if len(chunks) > max_parts:
        return None
    parts: dict[str, tuple[bytes, bool]] = {}
    for chunk in chunks:
        head, blank, content = chunk.partition(b"\r\n\r\n")
        if not blank or not head.startswith(b"\r\n"):
            return None
        headers = {}
        for line in head[2:].split(b"\r\n"):
            key, colon, value = line.partition(b":")
            if not colon:
                return None
            headers[key.strip().lower()] = value.strip()
        if set(headers) - {b"content-disposition", b"content-type"}:
            return None  # e.g. Content-Transfer-Encoding: the full parser knows those
        kind, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        name = disposition.get(b"name")
        if kind != b"form-data" or not name:
            return None
        try:
            key = name.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if key in parts:
            return None
        parts[key] = (content, b"filename" in disposition)
    return parts


def _pick_parts(parts: dict[str, tuple[bytes, bool]], fields: dict[str, str]) -> dict[str, bytes]:
    names = ", ".join(repr(f) for f in fields)
    out = {}
    for field in fields:
        if field not in parts:
            found = ", ".join(repr(k) for k in parts) or "none"
            raise ApiError(422, "missing_file", f"multipart field {field!r} is required (expected {names}; found {found})")
        data, is_file = parts[field]
        if not is_file:
            raise ApiError(422, "missing_file", f"multipart field {field!r} must be a file upload, not text")
        if not data:
            raise ApiError(422, "invalid_image", f"uploaded file {field!r} is empty (0 bytes)")
        out[field] = data
    return out


async def read_images(request: Request, limit: int, fields: dict[str, str],
                      timeout: float | None = None) -> dict[str, bytes]:
    """Return {multipart field: bytes} for each of `fields`, a map of multipart field name to
    the JSON key that carries the same image (e.g. {"file": "image"})."""
    body = await read_body_limited(request, limit, timeout)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    names = ", ".join(repr(f) for f in fields)

    if ctype == "multipart/form-data":
        parts = simple_multipart(body, request.headers.get("content-type", ""), max_parts=len(fields) + 4)
        if parts is not None:
            return _pick_parts(parts, fields)

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=len(fields) + 4, max_fields=32)
        except Exception as exc:  # malformed multipart: python-multipart raises several kinds
            raise ApiError(422, "invalid_request", f"could not parse multipart body: {exc}") from None
        try:
            parts = {}
            for key, part in form.multi_items():
                if key not in parts:  # the first of duplicate fields, as FormData.get gives
                    parts[key] = (await part.read(), True) if isinstance(part, UploadFile) else (b"", False)
        finally:
            await form.close()
        return _pick_parts(parts, fields)

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


_IMAGE_PART = {"type": "string", "format": "binary", "description": "PNG, JPEG, GIF, BMP, WebP or TIFF"}
_BASE64 = {"type": "string", "description": "base64 image or data:image/...;base64 URL"}


def upload_body(fields: dict[str, str]) -> dict:
    """OpenAPI request body (a route's `openapi_extra`) for {multipart field: JSON key} uploads."""
    content = {
        "multipart/form-data": {"schema": {"type": "object", "required": list(fields),
                                           "properties": {f: _IMAGE_PART for f in fields}}},
        "application/json": {"schema": {"type": "object", "required": list(fields.values()),
                                        "properties": {k: _BASE64 for k in fields.values()}}},
    }
    return {"requestBody": {"required": True, "content": content}}
