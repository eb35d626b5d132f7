"""The multipart fast path (app/uploads.simple_multipart) agrees with the full parser: on every
body it either gives the same fields or steps aside (None) for the full parser to decide."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.datastructures import UploadFile
from starlette.requests import Request

from app.uploads import simple_multipart
from testkit import drawn_digit, png_bytes

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3 + b"\r\n--notquite\r\n"  # binary, CRLFs, dashes


def _reference(body: bytes, ctype: str) -> dict[str, tuple[bytes, bool]] | str:
    """What starlette + python-multipart make of the body: {name: (content, is file)} (first of
    duplicates), or the error's type name."""
    async def run():
        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": "POST", "headers": [(b"content-type", ctype.encode("latin-1"))]}
        try:
            form = await Request(scope, receive).form()
        except Exception as exc:  # noqa: BLE001 - any parser error counts as "refused"
            return type(exc).__name__
        out = {}
        for key, part in form.multi_items():
            if key not in out:
                out[key] = (await part.read(), True) if isinstance(part, UploadFile) else (part.encode(), False)
        await form.close()
        return out

    return asyncio.run(run())


def _httpx_body(files=None, data=None) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.read(), request.headers["content-type"]


def _handmade(parts: list[bytes], boundary: bytes = b"XyZ", tail: bytes = b"--\r\n") -> tuple[bytes, str]:
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + boundary + tail
    return body, f"multipart/form-data; boundary={boundary.decode()}"


FILE_PART = b'Content-Disposition: form-data; name="file"; filename="d.png"\r\nContent-Type: image/png\r\n\r\n' + PNG

CASES = {
    "httpx one file": _httpx_body(files={"file": ("d.png", PNG, "image/png")}),
    "httpx two files": _httpx_body(files={"a": ("a.png", PNG, "image/png"), "b": ("b.png", PNG[::-1], "image/png")}),
    "httpx file and text": _httpx_body(files={"file": ("d.png", PNG, "image/png")}, data={"note": "hello"}),
    "httpx empty file": _httpx_body(files={"file": ("d.png", b"", "image/png")}),
    "curl-like, no part type": _handmade([b'Content-Disposition: form-data; name="file"; filename="x"\r\n\r\n' + PNG]),
    "quoted boundary": (_handmade([FILE_PART])[0], 'multipart/form-data; boundary="XyZ"'),
    "epilogue": _handmade([FILE_PART], tail=b"--\r\nthe end\r\n"),
    "no closing delimiter": _handmade([FILE_PART], tail=b"\r\n"),
    "preamble": (b"preamble\r\n" + _handmade([FILE_PART])[0], _handmade([FILE_PART])[1]),
    "duplicate field": _handmade([FILE_PART, FILE_PART.replace(PNG, b"second")]),
    "transfer encoding": _handmade([b'Content-Disposition: form-data; name="file"; filename="x"\r\n'
                                    b"Content-Transfer-Encoding: base64\r\n\r\naGVsbG8="]),
    "no name": _handmade([b'Content-Disposition: form-data; filename="x"\r\n\r\n' + PNG]),
    "not form-data": _handmade([b'Content-Disposition: attachment; name="file"\r\n\r\n' + PNG]),
    "header without colon": _handmade([b"Content-Disposition form-data\r\n\r\n" + PNG]),
    "no blank line": _handmade([b'Content-Disposition: form-data; name="file"; filename="x"']),
    "LF line endings": (_handmade([FILE_PART])[0].replace(b"\r\n", b"\n"), _handmade([FILE_PART])[1]),
    "no boundary parameter": (_handmade([FILE_PART])[0], "multipart/form-data"),
    "wrong boundary": (_handmade([FILE_PART])[0], "multipart/form-data; boundary=other"),
    "empty body": (b"", "multipart/form-data; boundary=XyZ"),
    "many parts": _handmade([FILE_PART.replace(b'name="file"', f'name="f{i}"'.encode()) for i in range(9)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_fast_path_agrees_with_the_full_parser_or_steps_aside(case):
    body, ctype = CASES[case]
    fast = simple_multipart(body, ctype, max_parts=6)
    if fast is not None:
        assert fast == _reference(body, ctype)


@pytest.mark.parametrize("case", ["httpx one file", "httpx two files", "httpx file and text", "httpx empty file",
                                  "curl-like, no part type", "quoted boundary"])
def test_what_clients_send_takes_the_fast_path(case):
    body, ctype = CASES[case]
    fast = simple_multipart(body, ctype, max_parts=6)
    assert fast is not None and fast == _reference(body, ctype)


@pytest.mark.parametrize("case", ["epilogue", "no closing delimiter", "preamble", "duplicate field",
                                  "transfer encoding", "no name", "not form-data", "header without colon",
                                  "no blank line", "LF line endings", "no boundary parameter", "wrong boundary",
                                  "empty body", "many parts"])
def test_unusual_bodies_go_to_the_full_parser(case):
    body, ctype = CASES[case]
    assert simple_multipart(body, ctype, max_parts=6) is None


def test_unusual_bodies_are_still_read_or_refused_with_a_json_4xx(client):
    """Through the service: a body only the full parser reads is still answered, and its
    refusals reach the client as before."""
    digit = png_bytes(drawn_digit(3))
    body, ctype = _handmade([FILE_PART.replace(PNG, digit)], tail=b"--\r\nthe end\r\n")  # an epilogue
    assert simple_multipart(body, ctype, max_parts=6) is None
    response = client.post("/predict/digit", content=body, headers={"content-type": ctype})
    assert response.status_code == 200 and response.json()["digit"] == 3
    body, ctype = CASES["no name"]
    response = client.post("/predict/digit", content=body, headers={"content-type": ctype})
    assert response.status_code == 422 and response.json()["error"]["code"] in ("missing_file", "invalid_request")
