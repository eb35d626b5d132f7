"""The demo page in a real browser: Debian's Chromium driven by Python Playwright.

The real service runs in a subprocess (uvicorn on a free loopback port) on the committed
weights in models/weights. Digits are drawn with mouse moves (and, at phone size, touch)
along the pen paths of testkit/drawing.py. Screenshots of each panel go to
artifacts/browser/ (gitignored); with RNNLAB_UPDATE_SCREENSHOT=1, one desktop view also goes to
docs/screenshot.png and the "watch it think" view to docs/explain.png, for the README.

Needs `playwright` (the dev extra) and Chromium at /usr/bin/chromium (`apt-get install
chromium`; Playwright's own browser download is not used). Without them these tests skip,
except under CI=true, where a missing browser is a failure.
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.request
from pathlib import Path

import pytest

from conftest import IN_CI, REPO_ROOT, WEIGHTS_DIR
from testkit import digit_paths, running_service

CHROMIUM = Path(os.environ.get("RNNLAB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
ARTIFACTS = REPO_ROOT / "artifacts" / "browser"
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "screenshot.png"
DOCS_EXPLAIN = REPO_ROOT / "docs" / "explain.png"
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
AE_TASK = "autoencoder"
SETTLE_MS = 30_000  # a prediction on a loaded 2-core machine; normally ~100 ms


def _skip_or_fail(message: str):
    if IN_CI:
        pytest.fail(message + " -- required under CI=true")
    pytest.skip(message)


@pytest.fixture(scope="module")
def playwright_api():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("browser tests need the `playwright` Python package (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        _skip_or_fail(f"browser tests need Chromium at {CHROMIUM} (apt-get install -y chromium; "
                      "set RNNLAB_CHROMIUM to use another binary)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright_api):
    b = playwright_api.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield b
    b.close()


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real service on the committed weights: {"url", "catalog": {task: [variants]}, "defaults"}."""
    if not any(WEIGHTS_DIR.glob("digits_*.json")):
        _skip_or_fail(f"no digit weights in {WEIGHTS_DIR}; train them with `python -m training.digits`")
    env = {"RNNLAB_MODELS_DIR": str(WEIGHTS_DIR), "RNNLAB_DEVICE": "cpu", "RNNLAB_TORCH_THREADS": "1",
           "RNNLAB_LOG_LEVEL": "warning"}
    with running_service(env, log_path=tmp_path_factory.mktemp("server") / "uvicorn.log") as service:
        models = _get_json(service.url + "/models")
        catalog: dict[str, list[str]] = {}
        for m in models["models"]:
            catalog.setdefault(m["task"], []).append(m["variant"])
        yield {"url": service.url, "catalog": catalog, "defaults": models["defaults"]}


class Page:
    """A page on the demo plus every console error and uncaught exception it produced."""

    def __init__(self, browser, url: str, viewport: dict, phone: bool = False):
        self.context = browser.new_context(viewport=viewport, device_scale_factor=2 if phone else 1,
                                           is_mobile=phone, has_touch=phone, reduced_motion="reduce")
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.set_default_timeout(SETTLE_MS)
        self.url = url

    def open(self):
        self.page.goto(self.url + "/")
        self.page.wait_for_selector("body[data-ready=true]")
        return self

    def panel(self, name: str):
        return self.page.get_by_test_id(f"{name}-panel")

    def settle(self, name: str) -> str:
        """Wait until the panel has no request in flight or pending; returns its state."""
        self.page.wait_for_function(
            "name => !['loading', 'busy'].includes(document.querySelector(`[data-testid=${name}-panel]`).dataset.state)",
            arg=name)
        return self.panel(name).get_attribute("data-state")

    def _canvas_box(self):
        canvas = self.page.get_by_test_id("digit-canvas")
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        assert box and box["width"] > 100 and abs(box["width"] - box["height"]) < 1, box
        return box

    def draw_with_mouse(self, digit: int, variant: int = 0):
        box = self._canvas_box()
        mouse = self.page.mouse
        for stroke in digit_paths(digit, variant, size=box["width"]):
            mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
            mouse.down()
            for x, y in stroke[1:]:
                mouse.move(box["x"] + x, box["y"] + y, steps=2)
            mouse.up()

    def draw_with_touch(self, digit: int, variant: int = 0):
        """Real touch input (CDP touch events; Chromium turns them into touch pointer events)."""
        box = self._canvas_box()
        cdp = self.context.new_cdp_session(self.page)
        for stroke in digit_paths(digit, variant, size=box["width"]):
            points = [{"x": box["x"] + x, "y": box["y"] + y} for x, y in stroke]
            cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [points[0]]})
            for p in points[1:]:
                cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [p]})
            cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        cdp.detach()

    def predicted_digit(self) -> str:
        assert self.settle("digits") == "ready", self.page.get_by_test_id("digit-error").text_content()
        return self.page.get_by_test_id("digit-result").text_content()

    def shot(self, name: str, locator=None, full_page: bool = False) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        if locator is not None:
            # The sticky header would otherwise be stitched into tall element captures.
            locator.screenshot(path=str(path), style=".topbar { position: static !important; }")
        else:
            self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def assert_clean(self, allowed: tuple[str, ...] = ()):
        unexpected = [e for e in self.errors if not any(a in e for a in allowed)]
        assert not unexpected, "errors in the browser console:\n" + "\n".join(unexpected)

    def close(self):
        self.context.close()


@pytest.fixture
def desktop(browser, server):
    p = Page(browser, server["url"], DESKTOP).open()
    yield p
    p.close()


@pytest.fixture
def phone(browser, server):
    p = Page(browser, server["url"], PHONE, phone=True).open()
    yield p
    p.close()


def _post_file(url: str, data: bytes) -> dict:
    """multipart POST of one PNG as `file` (stdlib only) -> JSON."""
    boundary = "rnnlab-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _agreement(a: str, b: str) -> int:
    return sum(x == y for x, y in zip(a.lower(), b.lower()))


def _answers(page, path: str) -> list:
    """Every response to `path` with explain=true, in arrival order (read them after settling)."""
    seen: list = []
    page.on("response", lambda r: seen.append(r) if path in r.url and "explain=true" in r.url else None)
    return seen


def _num(v: float, digits: int) -> str:
    """A number as the page writes it: fixed decimals and a real minus sign."""
    return ("−" if v < 0 else "") + f"{abs(v):.{digits}f}"


def _box_rows(page, selector: str) -> tuple[float, float]:
    box = page.locator(selector).bounding_box()
    return box["y"], box["height"]


# RGB of the page's lane colours (static/lib/explain.js), to find the traces on the canvas.
LANE_RGB = {"forget": (37, 99, 235), "input": (22, 163, 74), "output": (147, 51, 234), "update": (37, 99, 235),
            "reset": (234, 88, 12)}


# ---------------------------------------------------------------------------------------------


def test_page_loads_with_every_panel_in_a_known_state(desktop, server):
    page = desktop.page
    assert page.title().startswith("rnnlab")
    status = page.locator("#server-status")
    assert status.get_attribute("data-tone") == "up" and "Online" in status.text_content()
    assert desktop.panel("digits").get_attribute("data-state") == "empty"
    assert page.get_by_test_id("digit-result").text_content() == ""
    for name, tasks in [("captcha", ["captcha"]), ("ae", [AE_TASK])]:
        available = any(server["catalog"].get(t) for t in tasks)
        state = desktop.panel(name).get_attribute("data-state")
        assert (state != "unavailable") == available, (name, state, server["catalog"])
    # Keyboard: the skip link comes first and lands on the pad's section; the pad is focusable.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.get_by_test_id("digit-canvas").focus()
    assert page.evaluate("document.activeElement.dataset.testid") == "digit-canvas"
    assert page.get_by_test_id("digit-canvas").get_attribute("aria-label")
    assert page.locator("#announcer[aria-live=polite]").count() == 1
    desktop.assert_clean()


def test_drawn_digits_are_read_and_shown_row_by_row(desktop, server):
    page = desktop.page
    desktop.draw_with_mouse(1)  # a clear vertical 1
    assert desktop.predicted_digit() == "1"
    page.get_by_test_id("digit-clear").click()
    assert desktop.settle("digits") == "empty"
    assert page.get_by_test_id("digit-result").text_content() == ""

    desktop.draw_with_mouse(0)
    assert desktop.predicted_digit() == "0"
    # Undo by keyboard removes the only stroke: back to empty.
    page.get_by_test_id("digit-canvas").focus()
    page.keyboard.press("Control+z")
    assert desktop.settle("digits") == "empty"

    desktop.draw_with_mouse(7)
    assert desktop.predicted_digit() == "7"
    # Every cell answered for the same drawing, and the selected one is the default model.
    for cell in server["catalog"]["digits"]:
        assert re.fullmatch(r"\d", page.get_by_test_id(f"digit-result-{cell}").text_content()), cell
    assert page.locator(".cell-card[aria-pressed=true]").get_attribute("data-variant") == server["defaults"]["digits"]
    probs = page.locator("#digit-bars .bar-fill").evaluate_all(
        "els => els.map(e => parseFloat(e.style.getPropertyValue('--p')))")
    assert len(probs) == 10 and abs(sum(probs) - 1) < 0.01 and max(probs) == probs[7]
    # Watch it read: the full heat map, then the scrubber moves the highlighted row.
    assert page.locator("#watch").get_attribute("data-empty") == "false"
    assert page.locator("#row-readout").text_content().startswith("After row 28 of 28: 7")
    page.locator("#row-slider").fill("20")
    assert page.locator("#row-readout").text_content().startswith("After row 20 of 28:")
    assert "row 20" in page.locator("#row-slider").get_attribute("aria-valuetext")

    desktop.shot("desktop-digits", desktop.panel("digits"))
    page.evaluate("window.scrollTo(0, 0)")
    path = desktop.shot("desktop")
    if os.environ.get("RNNLAB_UPDATE_SCREENSHOT"):  # refresh the README's picture on demand only,
        DOCS_SCREENSHOT.write_bytes(path.read_bytes())  # so `make test` leaves the tree clean
    desktop.shot("desktop-full", full_page=True)
    desktop.assert_clean()


def test_live_prediction_is_throttled_and_play_walks_the_rows(desktop, server):
    """While the pen moves, requests are spaced out with at most one live request in flight
    (all cells only when a stroke ends), not one per pointer move."""
    page = desktop.page
    in_flight, peak, total = set(), [0], [0]

    def started(req):
        if "/predict/digit" in req.url:
            in_flight.add(req)
            total[0] += 1
            peak[0] = max(peak[0], len(in_flight))

    page.on("request", started)
    page.on("requestfinished", lambda req: in_flight.discard(req))
    page.on("requestfailed", lambda req: in_flight.discard(req))
    moves = sum(len(stroke) for stroke in digit_paths(8)) * 2  # pointer moves: mouse.move(steps=2) per point
    desktop.draw_with_mouse(8)
    assert desktop.predicted_digit() == "8"
    cells = len(server["catalog"]["digits"])
    assert peak[0] <= cells, peak[0]
    assert total[0] < moves / 2, (total[0], moves)
    # Play animates the reading from row 1 to row 28, then stops by itself.
    page.locator("#row-play").click()
    assert page.locator("#row-play").get_attribute("aria-pressed") == "true"
    page.wait_for_function("document.querySelector('#row-play').getAttribute('aria-pressed') === 'false'")
    assert page.locator("#row-readout").text_content().startswith("After row 28 of 28: 8")
    desktop.assert_clean()


def test_compare_cells_switch_the_watched_model(desktop, server):
    cells = server["catalog"]["digits"]
    if len(cells) < 2:
        pytest.skip("only one digit model is loaded")
    page = desktop.page
    desktop.draw_with_mouse(7)
    desktop.predicted_digit()
    other = next(c for c in cells if page.locator(f".cell-card[data-variant={c}]").get_attribute("aria-pressed") != "true")
    page.locator(f".cell-card[data-variant={other}]").click()
    assert desktop.predicted_digit() == "7"
    assert page.locator(f".cell-card[data-variant={other}]").get_attribute("aria-pressed") == "true"
    assert page.locator("#digit-meta").text_content().lower().startswith(other)
    desktop.assert_clean()


def test_captcha_panel(desktop, server):
    page = desktop.page
    panel = desktop.panel("captcha")
    variants = server["catalog"].get("captcha", [])
    if not variants:
        # The server has no captcha model: the panel must say so, and offer no controls.
        assert panel.get_attribute("data-state") == "unavailable"
        assert page.get_by_test_id("captcha-unavailable").is_visible()
        assert "not available" in page.get_by_test_id("captcha-unavailable").text_content()
        assert not page.get_by_test_id("captcha-new").is_visible()
        desktop.shot("desktop-captcha", panel)
        desktop.assert_clean()
        return
    assert not page.get_by_test_id("captcha-unavailable").is_visible()
    # The default reader is selected, and its note says whether it checks o/0 at full resolution.
    listing = _get_json(server["url"] + "/models")
    default = listing["defaults"]["captcha"]
    arch = next(m for m in listing["models"] if m["task"] == "captcha" and m["variant"] == default)["architecture"]
    assert page.get_by_test_id(f"captcha-model-{default}").is_checked()
    note = page.locator("#captcha-model-note").text_content()
    assert ("o vs 0 checked at full resolution" in note) == bool(arch.get("o0")), note
    # A captcha file made by the server's generator, read by the API and by the page.
    fresh = _get_json(server["url"] + "/captcha/new")
    png = base64.b64decode(fresh["image"].split(",", 1)[1])
    upload = ARTIFACTS / "captcha-upload.png"
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_bytes(png)
    api = _post_file(server["url"] + "/predict/captcha", png)
    page.get_by_test_id("captcha-file").set_input_files(str(upload))
    assert desktop.settle("captcha") == "ready", page.get_by_test_id("captcha-error").text_content()
    shown = page.get_by_test_id("captcha-result").text_content()
    assert shown == api["text"]  # the page shows exactly what the service decoded
    assert len(shown) == 4 and _agreement(shown, fresh["text"]) >= 3, (shown, fresh["text"])
    # Top-3 on hover of a character.
    page.locator("[data-testid=captcha-result] .char").first.hover()
    tip = page.locator("#captcha-tip")
    assert tip.is_visible() and tip.locator("li").count() == 3

    # Drag-and-drop of the same file onto the drop zone reads the same text.
    page.get_by_test_id("captcha-result").evaluate("el => el.replaceChildren()")
    transfer = page.evaluate_handle(
        """b64 => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                   const dt = new DataTransfer();
                   dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
                   return dt; }""", base64.b64encode(png).decode())
    page.locator("#captcha-drop").dispatch_event("drop", {"dataTransfer": transfer})
    assert desktop.settle("captcha") == "ready"
    assert page.get_by_test_id("captcha-result").text_content() == api["text"]

    page.get_by_test_id("captcha-new").click()
    assert desktop.settle("captcha") == "ready", page.get_by_test_id("captcha-error").text_content()
    truth = page.get_by_test_id("captcha-truth").text_content()
    decoded = page.get_by_test_id("captcha-result").text_content()
    assert re.fullmatch(r"[0-9a-z]{4}", truth) and len(decoded) == 4
    assert _agreement(decoded, truth) >= 3, (decoded, truth)

    seed_style = [v for v in variants if v in ("ctc", "seq2seq")]  # the readers of this generator
    if len(seed_style) > 1:  # the decoder switch re-reads the same captcha
        other = next(v for v in seed_style if not page.get_by_test_id(f"captcha-model-{v}").is_checked())
        page.get_by_test_id(f"captcha-model-{other}").click()  # the (transparent) radio over its label
        assert desktop.settle("captcha") == "ready"
        assert _agreement(page.get_by_test_id("captcha-result").text_content(), truth) >= 3
        assert page.locator("#captcha-confidence").text_content().lower().startswith(f"read by {other.lower()}")
    if "general" in variants:  # the reader of many styles, for a captcha that is not this demo's
        from training.captcha_mix import samples

        _, image = next(samples("wheezy", 4242))
        foreign = ARTIFACTS / "captcha-wheezy.png"
        image.save(foreign)
        api = _post_file(server["url"] + "/predict/captcha?model=general", foreign.read_bytes())
        page.get_by_test_id("captcha-model-general").click()
        assert desktop.settle("captcha") == "ready"
        assert "training styles" in page.locator("#captcha-model-note").text_content()
        page.get_by_test_id("captcha-file").set_input_files(str(foreign))
        assert desktop.settle("captcha") == "ready", page.get_by_test_id("captcha-error").text_content()
        assert page.get_by_test_id("captcha-result").text_content() == api["text"]
        assert page.locator("#captcha-confidence").text_content().lower().startswith("read by general")
    page.mouse.move(0, 0)
    desktop.shot("desktop-captcha", panel)
    desktop.assert_clean()


def _captcha_requests(page) -> list:
    """Every POST /predict/captcha the page sends, in order (their query strings parsed)."""
    from urllib.parse import parse_qs, urlparse

    sent: list = []
    page.on("request", lambda r: sent.append(parse_qs(urlparse(r.url).query)) if "/predict/captcha" in r.url else None)
    return sent


def _pick_reader(desktop, variant: str):
    page = desktop.page
    radio = page.get_by_test_id(f"captcha-model-{variant}")
    if not radio.is_checked():
        radio.click()  # the (transparent) radio over its label
        desktop.settle("captcha")


def test_captcha_length_and_charset_are_sent_and_the_answer_obeys(desktop, server):
    """Length and charset controls: each change re-reads the captcha with length=/charset= in the
    query, the page shows the server's answer and which reader gave it; what the server refuses
    (a custom set outside 0-9a-z) is shown as its own message."""
    variants = server["catalog"].get("captcha", [])
    if "ctc" not in variants:
        pytest.skip("no ctc captcha reader is loaded")
    page = desktop.page
    sent = _captcha_requests(page)
    answers = _answers(page, "/predict/captcha")
    length, charset = page.get_by_test_id("captcha-length"), page.get_by_test_id("captcha-charset")
    assert length.input_value() == "" and charset.input_value() == ""  # "any" by default
    assert [o.strip() for o in length.locator("option").all_text_contents()] == ["any", *"12345678"]
    _pick_reader(desktop, "ctc")
    length.select_option("5")
    assert not sent  # nothing to read yet
    page.get_by_test_id("captcha-new").click()  # a 4-character captcha, read as 5
    assert desktop.settle("captcha") == "ready", page.get_by_test_id("captcha-error").text_content()
    assert sent[-1]["length"] == ["5"] and sent[-1]["model"] == ["ctc"] and "charset" not in sent[-1]
    body = answers[-1].json()
    assert body["model"] == "ctc" and len(body["text"]) == 5
    assert page.get_by_test_id("captcha-result").text_content() == body["text"]
    assert page.locator("[data-testid=captcha-result] .char").count() == 5
    assert page.get_by_test_id("captcha-answered-by").text_content().lower() == "ctc"
    meta = page.locator("#captcha-confidence")
    assert meta.get_attribute("data-model") == "ctc"
    assert meta.text_content().lower().startswith("read by ctc · whole string"), meta.text_content()
    assert "exactly 5 characters" in page.get_by_test_id("captcha-asked").text_content()

    # Digits only: re-read at once, both constraints in the query.
    n = len(sent)
    charset.select_option("digits")
    assert desktop.settle("captcha") == "ready", page.get_by_test_id("captcha-error").text_content()
    assert len(sent) == n + 1 and sent[-1]["charset"] == ["digits"] and sent[-1]["length"] == ["5"]
    body = answers[-1].json()
    assert re.fullmatch(r"\d{5}", body["text"]) and page.get_by_test_id("captcha-result").text_content() == body["text"]

    # A custom set: the field appears; characters outside 0-9a-zA-Z get the server's 422 message.
    custom = page.get_by_test_id("captcha-charset-custom")
    assert custom.is_hidden()
    charset.select_option("custom")
    assert custom.is_visible()
    assert desktop.settle("captcha") == "ready"  # nothing typed yet: read without a charset
    assert "charset" not in sent[-1]
    custom.fill("ab!")
    custom.press("Enter")
    assert desktop.settle("captcha") == "error"
    assert sent[-1]["charset"] == ["ab!"]
    refusal = answers[-1]
    assert refusal.status == 422
    message = refusal.json()["error"]["message"]
    assert page.get_by_test_id("captcha-error-message").text_content() == message
    assert "invalid_request" in page.get_by_test_id("captcha-error").text_content()
    assert page.get_by_test_id("captcha-result").text_content() == ""
    custom.fill("0123abc")
    custom.press("Enter")
    assert desktop.settle("captcha") == "ready", page.get_by_test_id("captcha-error").text_content()
    assert sent[-1]["charset"] == ["0123abc"] and page.get_by_test_id("captcha-error").is_hidden()
    shown = page.get_by_test_id("captcha-result").text_content()
    assert re.fullmatch(r"[0123abc]{5}", shown) and shown == answers[-1].json()["text"]
    desktop.shot("desktop-captcha-constraints", desktop.panel("captcha"))

    # Back to any: the query carries neither.
    length.select_option("")
    charset.select_option("")
    assert desktop.settle("captcha") == "ready"
    assert "length" not in sent[-1] and "charset" not in sent[-1]
    assert len(page.get_by_test_id("captcha-result").text_content()) == 4

    if "seq2seq" in variants:
        # seq2seq writes an end token, so it reads any length too: nothing is disabled, no hint.
        hint = page.get_by_test_id("captcha-length-hint")
        length.select_option("5")
        assert desktop.settle("captcha") == "ready"
        page.get_by_test_id("captcha-model-seq2seq").click()
        assert desktop.settle("captcha") == "ready", page.get_by_test_id("captcha-error").text_content()
        assert sent[-1]["model"] == ["seq2seq"] and sent[-1]["length"] == ["5"]
        assert answers[-1].json()["model"] == "seq2seq" and len(answers[-1].json()["text"]) == 5
        assert page.get_by_test_id("captcha-result").text_content() == answers[-1].json()["text"]
        assert page.get_by_test_id("captcha-answered-by").text_content() == "seq2seq"
        assert hint.is_hidden() and length.locator("option:disabled").count() == 0
        _pick_reader(desktop, "ctc")
    desktop.assert_clean(allowed=("status of 422",))


def test_captcha_offers_user_trained_readers(browser, server):
    """Readers fine-tuned on the user's own captchas (extra captcha entries in /models, forced
    here with interception) are offered after ctc and seq2seq, A-Z; the note gives their held-out
    accuracy, and the answer says which reader gave it. A fixed-length one offers its length only."""
    variants = server["catalog"].get("captcha", [])
    if not variants:
        pytest.skip("no captcha model is loaded")
    p = Page(browser, server["url"], DESKTOP)
    page = p.page

    def own(variant: str, accuracy: float, holdout: int) -> dict:
        return {"name": f"captcha_{variant}", "task": "captcha", "variant": variant, "network": "ctc",
                "description": "ctc fine-tuned on 800 labelled captchas of 4-6 characters",
                "architecture": {"variant": "ctc"}, "parameters": 1,
                "metrics": {"full_string_accuracy": accuracy, "char_accuracy": 0.99, "holdout_samples": holdout},
                "training": {"train_samples": 800, "label_lengths": [4, 5, 6], "init": {"from": "captcha_ctc"}}}

    def with_own_readers(route):
        body = json.loads(route.fetch().text())
        # A seq2seq trained on 4-character labels (`training.captcha --variant seq2seq`) has no end token.
        fixed = {**own("fixed4", 0.95, 100), "network": "seq2seq",
                 "description": "seq2seq trained on 800 labelled captchas of 4 characters",
                 "architecture": {"variant": "seq2seq", "length": 4, "end_token": False},
                 "training": {"train_samples": 800, "label_lengths": [4], "init": "random weights"}}
        body["models"] += [own("myshop", 0.97, 200), own("acme", 0.9, 50), fixed]
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    sent: list = []

    def fake_myshop(route):
        if "model=fixed4" in route.request.url:  # the service's refusal of a length it cannot write
            route.fulfill(status=422, content_type="application/json", body=json.dumps({"error": {
                "code": "invalid_request", "message": "fixed4 reads exactly 4 characters; use model=ctc"}}))
            return
        if "model=myshop" not in route.request.url:
            route.continue_()
            return
        sent.append(route.request.url)
        chars = [{"char": c, "confidence": 0.98, "top3": [[c, 0.98], ["x", 0.01], ["y", 0.005]]} for c in "ab12c"]
        route.fulfill(status=200, content_type="application/json", body=json.dumps(
            {"text": "ab12c", "confidence": 0.91, "model": "myshop", "characters": chars}))

    page.route("**/models", with_own_readers)
    page.route("**/predict/captcha*", fake_myshop)
    p.open()
    order = page.locator("#captcha-models input").evaluate_all("els => els.map(e => e.value)")
    shipped = [v for v in ("ctc", "seq2seq") if v in variants]
    assert order[:len(shipped)] == shipped and order[-3:] == ["acme", "fixed4", "myshop"], order
    if "general" in variants:  # the shipped general reader: after ctc/seq2seq, not marked as the user's own
        assert order.index("general") == len(shipped)
        assert "seg-own" not in page.locator("#captcha-models [data-variant=general]").get_attribute("class")
        page.get_by_test_id("captcha-model-general").click()
        assert "many captcha styles" in page.get_by_test_id("captcha-model-note").text_content()
    note = page.get_by_test_id("captcha-model-note")
    page.get_by_test_id("captcha-model-myshop").click()
    assert page.get_by_test_id("captcha-model-myshop").is_checked()
    text = note.text_content()
    assert "your own captchas" in text and "97.0% of 200 of your held-out captchas" in text, text
    assert "test captchas" not in text  # not the seed generator's test set
    assert page.get_by_test_id("captcha-length").locator("option:disabled").count() == 0  # a CTC reader
    page.get_by_test_id("captcha-model-acme").click()
    assert "90.0% of 50 of your held-out captchas" in note.text_content()
    page.get_by_test_id("captcha-model-myshop").click()
    page.get_by_test_id("captcha-length").select_option("5")
    page.get_by_test_id("captcha-new").click()
    assert p.settle("captcha") == "ready", page.get_by_test_id("captcha-error").text_content()
    assert "length=5" in sent[-1]
    assert page.get_by_test_id("captcha-result").text_content() == "ab12c"
    assert page.get_by_test_id("captcha-answered-by").text_content() == "myshop"

    # A fixed-length reader takes only its own length: the others are disabled, with a hint, and
    # a length chosen before switching gets the server's refusal, shown, not thrown.
    length, hint = page.get_by_test_id("captcha-length"), page.get_by_test_id("captcha-length-hint")
    assert hint.is_hidden()
    page.get_by_test_id("captcha-model-fixed4").click()
    assert p.settle("captcha") == "error"
    assert page.get_by_test_id("captcha-error-message").text_content().startswith("fixed4 reads exactly 4")
    assert page.locator("#captcha-verdict").is_hidden()  # no verdict on an answer that is not there
    assert hint.is_visible() and "exactly 4" in hint.text_content() and "cannot answer 5" in hint.text_content()
    disabled = length.locator("option").evaluate_all("os => os.filter(o => o.disabled).map(o => o.value)")
    assert disabled == ["1", "2", "3", "5", "6", "7", "8"], disabled
    p.shot("desktop-captcha-fixed-length", p.panel("captcha"))
    page.get_by_test_id("captcha-model-myshop").click()  # every length open again
    assert p.settle("captcha") == "ready" and hint.is_hidden()
    assert length.locator("option:disabled").count() == 0
    assert page.locator("#captcha-confidence").text_content().startswith("Read by myshop · whole string 91% sure")
    page.mouse.move(0, 0)
    p.panel("captcha").scroll_into_view_if_needed()
    p.shot("desktop-captcha-own-reader", p.panel("captcha"))
    page.emulate_media(color_scheme="dark")
    p.shot("desktop-captcha-own-reader-dark", p.panel("captcha"))
    p.assert_clean(allowed=("status of 422",))
    p.close()


def test_autoencoder_panel(desktop, server):
    page = desktop.page
    panel = desktop.panel("ae")
    if not server["catalog"].get(AE_TASK):
        assert panel.get_attribute("data-state") == "unavailable"
        assert "not available" in page.get_by_test_id("ae-unavailable").text_content()
        assert not page.get_by_test_id("ae-morph").is_visible()
        desktop.shot("desktop-autoencoder", panel)
        desktop.assert_clean()
        return
    desktop.draw_with_mouse(3)
    desktop.predicted_digit()
    assert desktop.settle("ae") == "ready", page.get_by_test_id("ae-error").text_content()
    recon = page.get_by_test_id("ae-reconstruction")
    assert recon.evaluate("img => img.complete && img.naturalWidth") == 28
    assert recon.bounding_box()["width"] >= 28 * 4  # shown enlarged
    latent = page.locator("#ae-latent .latent-bar").evaluate_all(
        "els => els.map(e => parseFloat(e.style.getPropertyValue('--v')))")
    assert len(latent) == 32 and max(abs(v) for v in latent) == pytest.approx(1.0, abs=1e-3)
    # Morph from the drawing to an example 8 in 6 frames.
    page.locator("#morph-slot-a button").click()
    page.locator("#morph-slot-b select").select_option("8")
    page.locator("#morph-steps").fill("6")
    page.get_by_test_id("ae-morph").click()
    page.wait_for_selector("#morph-player[data-empty=false]")
    assert page.locator("#morph-strip img").count() == 6
    assert page.locator("#morph-frame").evaluate("img => img.complete && img.naturalWidth") == 28
    desktop.shot("desktop-autoencoder", panel)
    desktop.assert_clean()


def _trace_pixels(page, rgb) -> int:
    """How many pixels of the gate canvas are (nearly) the colour `rgb`: the trace is drawn."""
    return page.locator("#gate-canvas").evaluate("""(c, rgb) => {
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4)
          if (d[i + 3] > 200 && Math.abs(d[i] - rgb[0]) + Math.abs(d[i + 1] - rgb[1]) + Math.abs(d[i + 2] - rgb[2]) < 30) n++;
        return n; }""", list(rgb))


def _check_inside_the_cell(page, ex: dict, digit: int):
    """The gate lanes, the equations with the scrubbed row's numbers, and the row-importance strip
    show what the API sent for this drawing (`ex`: its explain block)."""
    explain = page.get_by_test_id("explain")
    assert explain.is_visible()
    assert page.locator("#gate-caption").text_content().endswith(f"(layer {ex['layer']} of {ex['layers']}), row by row")
    gates = sorted(ex["gates"])
    lanes = page.locator("#gate-labels .lane-label").count()
    assert lanes == {"lstm": 7, "gru": 5, "rnn": 2}[ex["cell"]], lanes
    for gate in gates:
        assert _trace_pixels(page, LANE_RGB[gate]) > 100, gate
    # The rows line up: image, strip, heat map and gate lanes share their top and height.
    top, height = _box_rows(page, "#seen-canvas")
    for sel in ("#row-importance", "#heat-canvas", "#gate-canvas"):
        t, h = _box_rows(page, sel)
        assert abs(t - top) < 1.5 and abs(h - height) < 1.5, (sel, t, h, top, height)
    shown = {}
    for row in (9, 20):
        page.locator("#row-slider").fill(str(row))
        assert page.locator("#explain-title").text_content().endswith(f"at row {row} of 28")
        for gate in gates:
            value = page.get_by_test_id(f"eq-value-{gate}").text_content()
            assert value == f"mean {_num(ex['gates'][gate][row - 1], 2)}", (gate, row, value)
            shown[gate, row] = value
        assert page.get_by_test_id("eq-value-hidden").text_content().endswith(f"= {_num(ex['hidden_norm'][row - 1], 1)}")
        if ex.get("cell_norm"):
            assert page.get_by_test_id("eq-value-cell").text_content().endswith(f"= {_num(ex['cell_norm'][row - 1], 1)}")
        chips = page.get_by_test_id("unit-values").locator(".unit-chip")
        assert chips.count() == len(ex["units"]) == 8
        first = ex["units"][0]
        assert chips.first.text_content() == f"#{first['unit']} {_num(first['values'][row - 1], 2)}"
        valuetext = page.locator("#row-slider").get_attribute("aria-valuetext")
        assert f"row {row} of 28" in valuetext and all(f"{g} gate" in valuetext for g in gates), valuetext
    if gates:  # the numbers follow the scrubber
        assert any(shown[g, 9] != shown[g, 20] for g in gates), shown
    # Row importance: 28 cells shaded by the drop in the answer's log-odds, the darkest at the
    # row that mattered most, empty rows blank.
    imp = ex["row_importance_log_odds"]
    cells = page.get_by_test_id("row-importance").locator(".imp-cell")
    assert cells.count() == 28
    shade = cells.evaluate_all("els => els.map(e => parseFloat(e.style.getPropertyValue('--v')))")
    peak = max(abs(v) for v in imp)
    top_row = max(range(28), key=lambda r: imp[r])
    for r in range(28):
        assert shade[r] == pytest.approx(min(1, abs(imp[r]) / max(peak, 0.5)), abs=2e-3), (r, shade[r], imp[r])
    assert shade[top_row] == max(shade) > 0 and shade[0] == 0
    assert f"odds of a {digit}" in cells.nth(top_row).get_attribute("title")
    assert f"row {top_row + 1}" in page.get_by_test_id("row-importance").get_attribute("aria-label")
    assert page.get_by_test_id("row-matter").text_content().endswith(f"The row that mattered most: row {top_row + 1}.")
    return top_row


def test_watch_it_think_gates_equations_and_rows_that_mattered(desktop, server):
    """explain=true: the LSTM's gates beside the heat map with the chapter's equations and the
    scrubbed row's numbers, the rows that mattered beside the image; then the GRU and the RNN."""
    cells = server["catalog"]["digits"]
    if "lstm" not in cells:
        pytest.skip("no LSTM digit model is loaded")
    page = desktop.page
    answers = _answers(page, "/predict/digit")
    page.locator(".cell-card[data-variant=lstm]").click()
    desktop.draw_with_mouse(7)
    assert desktop.predicted_digit() == "7"
    body = answers[-1].json()  # one request in flight at a time: the last answer is the one shown
    assert body["model"] == "lstm" and body["digit"] == 7
    ex = body["explain"]
    eqs = page.get_by_test_id("equations")
    assert eqs.locator(".eq").count() == 7  # six equations and the 8 units
    text = eqs.inner_text()
    for piece in ("ft = σ(Wf·[ht−1, xt] + bf)", "Ct = ft ⊙ Ct−1 + it ⊙ C\u0303t", "ht = ot ⊙ tanh(Ct)"):
        assert piece in text.replace("\n", " "), (piece, text)
    _check_inside_the_cell(page, ex, 7)
    page.locator("#row-slider").fill("10")
    desktop.shot("desktop-explain-7", page.locator(".watch-card"))
    if os.environ.get("RNNLAB_UPDATE_SCREENSHOT"):
        DOCS_EXPLAIN.write_bytes((ARTIFACTS / "desktop-explain-7.png").read_bytes())

    # A 1: one straight stroke, read by the same cell.
    page.get_by_test_id("digit-clear").click()
    assert desktop.settle("digits") == "empty"
    assert page.get_by_test_id("explain").is_hidden()
    desktop.draw_with_mouse(1)
    assert desktop.predicted_digit() == "1"
    ex1 = answers[-1].json()["explain"]
    _check_inside_the_cell(page, ex1, 1)
    page.locator("#row-slider").fill("10")
    desktop.shot("desktop-explain-1", page.locator(".watch-card"))

    # The GRU, written as PyTorch computes it, and the plain RNN: no gates, one equation.
    for cell, rows, needle in [("gru", 5, "ht = (1 − zt) ⊙ h\u0303t + zt ⊙ ht−1"), ("rnn", 2, "no gates")]:
        if cell not in cells:
            continue
        page.locator(f".cell-card[data-variant={cell}]").click()
        assert desktop.predicted_digit() == "1"
        assert page.locator(".cell-card[aria-pressed=true]").get_attribute("data-variant") == cell
        ex_c = answers[-1].json()["explain"]
        assert ex_c["cell"] == cell
        assert eqs.locator(".eq").count() == rows
        assert needle in eqs.inner_text().replace("\n", " ")
        if cell == "gru":  # says which convention it follows
            assert "torch.nn.GRU" in page.locator("#explain [data-role=note]").text_content()
        _check_inside_the_cell(page, ex_c, 1)
        desktop.shot(f"desktop-explain-{cell}", page.locator(".watch-card"))
    desktop.assert_clean()


def test_captcha_hover_shows_where_each_character_was_read(desktop, server):
    """Hover, focus or click a character: a band over the columns where it was read (its span)
    and a curve of its weights; the bands go left to right in the order of the characters."""
    variants = server["catalog"].get("captcha", [])
    if not variants:
        pytest.skip("no captcha model is loaded")
    page = desktop.page
    answers = _answers(page, "/predict/captcha")
    page.get_by_test_id("captcha-new").click()
    assert desktop.settle("captcha") == "ready", page.get_by_test_id("captcha-error").text_content()
    for n, variant in enumerate(v for v in ["ctc", "seq2seq"] if v in variants):
        if not page.get_by_test_id(f"captcha-model-{variant}").is_checked():
            page.get_by_test_id(f"captcha-model-{variant}").click()
            assert desktop.settle("captcha") == "ready"
        body = answers[-1].json()
        assert body["model"] == variant
        chars = page.locator("[data-testid=captcha-result] .char")
        band = page.get_by_test_id("captcha-band")
        img = page.locator("#captcha-img").bounding_box()
        width = len(body["characters"][0]["weights"])
        centres = []
        for i, ch in enumerate(body["characters"]):
            chars.nth(i).hover()
            assert band.is_visible() and band.get_attribute("data-index") == str(i)
            assert "is-reading" in chars.nth(i).get_attribute("class")
            box = band.bounding_box()
            x0, x1 = ch["span"]
            # The band covers the span, in the shown image's scale (the captcha is 160x60, shown 400 wide).
            assert box["x"] == pytest.approx(img["x"] + img["width"] * x0 / width, abs=1.5), (i, box, ch["span"])
            assert box["width"] == pytest.approx(img["width"] * (x1 - x0) / width, abs=1.5)
            assert page.locator("#captcha-read .read-line").get_attribute("d").count("L") == width - 1
            centres.append(box["x"] + box["width"] / 2)
        assert centres == sorted(centres), (variant, centres)
        if n == 0:
            desktop.shot("desktop-captcha-read", page.locator(".captcha-out"))
        page.mouse.move(0, 0)
        assert page.get_by_test_id("captcha-read").is_hidden()
        # From the keyboard: focus shows it, Escape hides it.
        chars.nth(2).focus()
        assert band.is_visible() and band.get_attribute("data-index") == "2"
        assert "read between pixels" in chars.nth(2).get_attribute("aria-label")
        page.keyboard.press("Escape")
        assert page.get_by_test_id("captcha-read").is_hidden()
        chars.nth(2).blur()
    desktop.assert_clean()


def test_phone_layout_and_touch_drawing(phone, server):
    page = phone.page
    # Nothing sticks out sideways on a 390 px screen.
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    phone.draw_with_touch(1)
    assert phone.predicted_digit() == "1"
    page.get_by_test_id("digit-clear").tap()
    assert phone.settle("digits") == "empty"
    phone.draw_with_touch(7)
    assert phone.predicted_digit() == "7"
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    # Watch it think: the gate lanes go full width under the image and heat map, the equations
    # below them; nothing sticks out.
    assert page.get_by_test_id("explain").is_visible()
    seen, gates = page.locator("#seen-canvas").bounding_box(), page.locator("#gate-canvas").bounding_box()
    assert gates["y"] > seen["y"] + seen["height"] and gates["x"] >= 0 and gates["x"] + gates["width"] <= PHONE["width"]
    page.locator("#row-slider").fill("12")
    assert page.locator("#explain-title").text_content().endswith("at row 12 of 28")
    for el in page.locator("#explain .eq > *").all():
        box = el.bounding_box()
        assert box is None or box["x"] + box["width"] <= PHONE["width"], el.text_content()
    phone.shot("phone-digits", phone.panel("digits"))
    if server["catalog"].get("captcha"):  # a tap on a character shows where it was read
        page.get_by_test_id("captcha-new").tap()
        assert phone.settle("captcha") == "ready"
        page.locator("[data-testid=captcha-result] .char").nth(1).tap()
        assert page.get_by_test_id("captcha-band").is_visible()
        assert page.get_by_test_id("captcha-band").get_attribute("data-index") == "1"
        if "ctc" in server["catalog"]["captcha"]:  # eight characters wrap instead of sticking out
            page.get_by_test_id("captcha-model-ctc").tap()
            phone.settle("captcha")
            page.get_by_test_id("captcha-length").select_option("8")
            assert phone.settle("captcha") == "ready", page.get_by_test_id("captcha-error").text_content()
            chars = page.locator("[data-testid=captcha-result] .char")
            assert chars.count() == 8
            assert all(b["x"] >= 0 and b["x"] + b["width"] <= PHONE["width"]
                       for b in (c.bounding_box() for c in chars.all()))
            for sel in ("captcha-length", "captcha-charset"):
                box = page.get_by_test_id(sel).bounding_box()
                assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (sel, box)
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    for name in ("captcha", "ae"):
        phone.panel(name).scroll_into_view_if_needed()
        phone.shot(f"phone-{name}", phone.panel(name))
    page.evaluate("window.scrollTo(0, 0)")
    phone.shot("phone")
    phone.shot("phone-full", full_page=True)
    phone.assert_clean()


def test_server_errors_and_missing_endpoints_are_shown_not_thrown(browser, server):
    """Error paths, forced with request interception: the JSON error's message is shown, a 404
    endpoint or a task missing from /models turns its panel off, and nothing throws."""
    p = Page(browser, server["url"], DESKTOP)
    page = p.page
    message = "no ink found: the image is blank or has too little contrast"
    page.route("**/predict/digit*", lambda route: route.fulfill(
        status=422, content_type="application/json",
        body=json.dumps({"error": {"code": "no_digit", "message": message}})))
    page.route("**/predict/reconstruct*", lambda route: route.fulfill(
        status=404, content_type="application/json",
        body=json.dumps({"error": {"code": "not_found", "message": "Not Found"}})))

    def without_captcha(route):
        body = json.loads(route.fetch().text())
        body["models"] = [m for m in body["models"] if m["task"] != "captcha"]
        body["defaults"].pop("captcha", None)
        if not any(m["task"] == AE_TASK for m in body["models"]):  # make the 404 path reachable
            body["models"].append({"name": "autoencoder", "task": AE_TASK, "variant": "conv", "metrics": {}})
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route("**/models", without_captcha)
    p.open()
    assert p.panel("captcha").get_attribute("data-state") == "unavailable"
    p.draw_with_mouse(4)
    assert p.settle("digits") == "error"
    assert page.get_by_test_id("digit-error-message").text_content() == message
    assert "no_digit" in page.get_by_test_id("digit-error").text_content()
    assert p.settle("ae") == "unavailable"
    assert "/predict/reconstruct" in page.get_by_test_id("ae-unavailable").text_content()
    p.shot("desktop-errors", full_page=True)
    # The browser logs each 4xx it was answered; those are the forced ones, nothing else.
    p.assert_clean(allowed=("status of 422", "status of 404"))
    p.close()
