"""Hostile and odd uploads against every POST endpoint the app declares.

Each hostile request must get a 4xx with the JSON error body (never a 5xx); odd-but-valid
images must get a 200 or an explaining 4xx. The endpoints and their upload fields are read from
the OpenAPI schema, so routes added later are covered without editing this file.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import WEIGHTS_DIR
from testkit import drawn_digit, png_bytes


def _endpoints() -> list[tuple[str, list[str], list[str]]]:
    """[(path, multipart file fields, JSON keys)] for each POST route that takes an upload."""
    from app.main import create_app
    from app.settings import Settings

    spec = create_app(Settings(models_dir=WEIGHTS_DIR, device="cpu")).openapi()
    found = []
    for path, ops in spec["paths"].items():
        content = ops.get("post", {}).get("requestBody", {}).get("content", {})
        multipart = content.get("multipart/form-data", {}).get("schema", {})
        as_json = content.get("application/json", {}).get("schema", {})
        if multipart.get("required"):
            found.append((path, list(multipart["required"]), list(as_json.get("required", []))))
    return found


ENDPOINTS = _endpoints()
MB = 1024 * 1024


# -- hostile bodies ------------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG header for a huge 8-bit grey image, followed by a few bytes of data:
    ~100 bytes on the wire that would decode to width*height bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 1024))
            + _chunk(b"IEND", b""))


def gif_claiming(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b",\x00\x00\x00\x00" + \
        struct.pack("<HH", width, height) + b"\x00\x02\x02D\x01\x00;"


def digit_png() -> bytes:
    return png_bytes(drawn_digit(7))


def files_of(fields, data: bytes, name="x.png", ctype="image/png"):
    return {"files": {f: (name, data, ctype) for f in fields}}


def raw(data: bytes, ctype: str):
    return {"content": data, "headers": {"content-type": ctype}}


# name -> (request kwargs from (fields, json keys), allowed statuses, error codes allowed)
HOSTILE = {
    "empty_body": (lambda f, k: {}, {422}, {"missing_file"}),
    "missing_field": (lambda f, k: {"files": {"note": (None, "a text part, no file")}}, {422}, {"missing_file"}),
    "wrong_field_name": (lambda f, k: {"files": {"upload": ("x.png", digit_png(), "image/png")}}, {422},
                         {"missing_file"}),
    "field_is_text_not_file": (lambda f, k: {"files": {x: (None, "abc") for x in f}}, {422}, {"missing_file"}),
    "urlencoded_form": (lambda f, k: {"data": {x: "abc" for x in f}}, {415}, {"unsupported_media_type"}),
    "zero_bytes": (lambda f, k: files_of(f, b""), {422}, {"invalid_image"}),
    "plain_text": (lambda f, k: files_of(f, b"hello, I am not an image", "x.txt", "text/plain"), {415},
                   {"invalid_image"}),
    "html": (lambda f, k: files_of(f, b"<!doctype html><html><body><script>alert(1)</script></body></html>",
                                   "x.html", "text/html"), {415}, {"invalid_image"}),
    "svg": (lambda f, k: files_of(f, b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28">'
                                     b'<path d="M4 4L24 24" stroke="black"/></svg>', "x.svg", "image/svg+xml"),
            {415}, {"invalid_image"}),
    "truncated_png": (lambda f, k: files_of(f, digit_png()[: len(digit_png()) // 2]), {422}, {"invalid_image"}),
    "png_header_100000x100000": (lambda f, k: files_of(f, png_claiming(100_000, 100_000)), {413},
                                 {"image_too_large"}),
    "gif_header_65535x65535": (lambda f, k: files_of(f, gif_claiming(65535, 65535), "x.gif", "image/gif"),
                               {413}, {"image_too_large"}),
    "body_20mb": (lambda f, k: files_of(f, b"\x89PNG" + b"\0" * (20 * MB)), {413}, {"too_large"}),
    "body_20mb_chunked_no_length": (  # no Content-Length: the limit must hold while streaming
        lambda f, k: {"content": (b"\0" * MB for _ in range(20)), "headers": {"content-type": "image/png"}},
        {413, 415}, {"too_large", "unsupported_media_type"}),
    "text_with_image_content_type": (lambda f, k: files_of(f, b"GIF? no, just text " * 10), {415},
                                     {"invalid_image"}),
    "raw_text_as_image_png": (lambda f, k: raw(b"definitely not a png", "image/png"), {415},
                              {"invalid_image", "unsupported_media_type"}),
    "bad_base64_json": (lambda f, k: {"json": {x: "!!not*base64$$" for x in k}}, {422}, {"invalid_base64"}),
    "base64_of_text_json": (lambda f, k: {"json": {x: base64.b64encode(b"plain text").decode() for x in k}},
                            {415}, {"invalid_image"}),
    "json_not_an_object": (lambda f, k: {"json": ["image"]}, {422}, {"invalid_json"}),
    "json_syntax_error": (lambda f, k: raw(b'{"image": ', "application/json"), {422}, {"invalid_json"}),
    "json_image_is_number": (lambda f, k: {"json": {x: 12345 for x in k}}, {422}, {"invalid_base64"}),
    "malformed_multipart": (lambda f, k: raw(b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
                                             "multipart/form-data; boundary=xyz"), {422},
                            {"invalid_request", "missing_file", "invalid_image"}),
    "unknown_content_type": (lambda f, k: raw(b"<xml/>", "application/xml"), {415}, {"unsupported_media_type"}),
}


@pytest.fixture(scope="module")
def available(client) -> dict[str, bool]:
    """Endpoint -> whether its model is loaded (a valid image does not get 503 model_unavailable)."""
    out = {}
    for path, fields, _ in ENDPOINTS:
        resp = client.post(path, **files_of(fields, digit_png()))
        out[path] = not (resp.status_code == 503 and resp.json()["error"]["code"] == "model_unavailable")
    return out


def assert_json_error(resp, statuses: set[int], codes: set[str]):
    assert resp.status_code in statuses, (resp.status_code, resp.text[:300])
    body = resp.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] in codes, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def test_every_upload_route_is_covered():
    assert "/predict/digit" in [p for p, _, _ in ENDPOINTS]


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("path,fields,keys", ENDPOINTS, ids=[p for p, _, _ in ENDPOINTS])
def test_hostile_upload_gets_a_json_4xx(client, available, path, fields, keys, case):
    if not available[path]:
        pytest.skip(f"no model loaded for {path}")
    build, statuses, codes = HOSTILE[case]
    kwargs = build(fields, keys)
    if case.startswith("raw_") and len(fields) > 1:  # raw bodies carry one image: 415 on multi-image routes
        statuses, codes = {415}, {"unsupported_media_type"}
    assert_json_error(client.post(path, **kwargs), statuses, codes)


# -- odd but valid images ----------------------------------------------------------------------
def _grey(digit=7) -> Image.Image:
    """The drawn digit as black ink on white, 8-bit grey."""
    rgba = drawn_digit(digit)
    grey = Image.new("L", rgba.size, 255)
    grey.paste(0, mask=rgba.getchannel("A"))
    return grey


def _animated_gif() -> bytes:
    buf = io.BytesIO()
    _grey(7).save(buf, "GIF", save_all=True, append_images=[_grey(1), _grey(4)], duration=100, loop=0)
    return buf.getvalue()


def _upright_page() -> Image.Image:
    """The grey 7 at the top of a portrait page, 280 wide and 400 high: not square, so turning it
    on its side changes its size."""
    page = Image.new("L", (280, 400), 255)
    page.paste(_grey(7), (0, 0))
    return page


def _sideways_page() -> Image.Image:
    """The upright page turned 90 degrees counter-clockwise: 400 wide, 280 high."""
    return _upright_page().transpose(Image.Transpose.ROTATE_90)


def _exif_rotated() -> bytes:
    """The sideways page with EXIF Orientation=6 ('rotate 90 CW to display'), so that a reader
    honouring EXIF gets the upright page back."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return png_bytes(_sideways_page(), exif=exif.tobytes())


def _sixteen_bit() -> bytes:
    return png_bytes(Image.fromarray(np.asarray(_grey(7)).astype(np.uint16) * 257))  # mode I;16


ODD = {
    "1x1_pixel": lambda: png_bytes(Image.new("RGB", (1, 1), (255, 255, 255))),
    "1x1000_strip": lambda: png_bytes(Image.new("L", (1, 1000), 0)),
    "cmyk_jpeg": lambda: png_bytes(_grey(7).convert("CMYK"), "JPEG", quality=95),
    "16bit_png": _sixteen_bit,
    "animated_gif": _animated_gif,
    "palette_png": lambda: png_bytes(_grey(7).convert("P")),
    "alpha_la_png": lambda: png_bytes(drawn_digit(7).convert("LA")),
    "transparent_rgba_png": lambda: png_bytes(drawn_digit(7)),
    "bilevel_png": lambda: png_bytes(_grey(7).convert("1")),
    "exif_rotated_png": _exif_rotated,
    "float_tiff": lambda: png_bytes(Image.fromarray(np.asarray(_grey(7)).astype(np.float32)), "TIFF"),
    "animated_webp": lambda: _animated_webp(),
}


def _animated_webp() -> bytes:
    buf = io.BytesIO()
    _grey(7).convert("RGB").save(buf, "WEBP", save_all=True, append_images=[_grey(1).convert("RGB")], lossless=True)
    return buf.getvalue()


@pytest.mark.parametrize("case", sorted(ODD))
@pytest.mark.parametrize("path,fields,keys", ENDPOINTS, ids=[p for p, _, _ in ENDPOINTS])
def test_odd_but_valid_image_gets_200_or_an_explaining_4xx(client, available, path, fields, keys, case):
    if not available[path]:
        pytest.skip(f"no model loaded for {path}")
    resp = client.post(path, **files_of(fields, ODD[case]()))
    if resp.status_code != 200:
        assert_json_error(resp, {413, 415, 422}, {"no_digit", "invalid_image", "image_too_large", "no_text"})


def _answer(client, data: bytes) -> tuple[dict, np.ndarray]:
    """/predict/digit's answer for this upload, and the 28x28 the model saw (echo=true) as floats
    in [0, 1]."""
    resp = client.post("/predict/digit?echo=true", files={"file": ("x", data, "application/octet-stream")})
    assert resp.status_code == 200, resp.text
    b64 = resp.json()["input"].split(",", 1)[1]
    return resp.json(), np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))), dtype=np.float32) / 255


def _seen(client, data: bytes) -> np.ndarray:
    return _answer(client, data)[1]


@pytest.mark.parametrize("case", ["cmyk_jpeg", "16bit_png", "animated_gif", "palette_png", "alpha_la_png",
                                  "transparent_rgba_png", "bilevel_png", "exif_rotated_png", "float_tiff",
                                  "animated_webp"])
def test_digit_model_sees_the_same_digit_whatever_the_encoding(client, case):
    """Modes, alpha, the first frame of an animation and EXIF rotation all reach the model as the
    same 28x28 as the plain 8-bit PNG (JPEG within its compression noise)."""
    reference = _seen(client, png_bytes(_grey(7)))
    seen = _seen(client, ODD[case]())
    tolerance = 0.02 if case == "cmyk_jpeg" else 1e-6
    assert np.abs(seen - reference).mean() <= tolerance


def test_exif_rotated_upload_is_served_upright(client):
    """The EXIF case is stored on its side (width and height swapped, EXIF Orientation 6), and the
    service turns it upright: the model sees and answers what it does for the upright page, not
    what it does for the same pixels without the tag."""
    upright, sideways = _upright_page(), _sideways_page()
    stored = Image.open(io.BytesIO(_exif_rotated()))
    assert stored.getexif().get(0x0112) == 6
    assert stored.size == (400, 280) and upright.size == (280, 400)
    assert np.array_equal(np.asarray(stored), np.asarray(sideways))
    want, want_seen = _answer(client, png_bytes(upright))
    _, ignored_seen = _answer(client, png_bytes(sideways))  # what a reader ignoring EXIF would see
    got, got_seen = _answer(client, _exif_rotated())
    assert np.abs(ignored_seen - want_seen).mean() > 0.05  # the rotation changes what the model sees
    assert np.abs(got_seen - want_seen).max() <= 1e-6
    assert got["digit"] == want["digit"] == 7
    assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)


def test_service_still_ready_and_no_5xx_after_the_battery(client, available):
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics").text
    served = [line for line in metrics.splitlines() if line.startswith("rnnlab_http_requests_total{")
              and any(f'route="{path}"' in line for path, ok in available.items() if ok)]
    assert served  # the battery was counted
    assert not [line for line in served if 'status="5' in line]
