// The number panel: write a few digits on a wide pad and the number reader (CNN + BiGRU + CTC,
// POST /predict/number) reads the line live: the number in big type, its confidence, one chip
// per digit with its confidence and runners-up, and where on the pad each digit's ink lies (a
// translucent band over its span; hover, focus or tap a chip to pick its band out).

import { ApiError, Throttle, postFiles } from "./api.js";
import { SketchPad } from "./sketch.js";
import { exampleStrokes } from "./strokes.js";
import { $, el, label, markUnavailable, pctNice, setPanelState, showError } from "./ui.js";

const LIVE_INTERVAL_MS = 250; // as the digit pad: at most ~4 requests/s while the pen moves
const EXAMPLES = ["2026", "1984", "314", "90210", "42"];

/** An example number as strokes in pad units (y in [0, 1], x in [0, aspect]): the example
 * digits of lib/strokes.js side by side, centred, shrunk to fit a narrow pad. */
function exampleNumber(text, aspect) {
  const GAP = 0.12; // between two digits' ink, in pad heights
  const digits = [...text].map((ch) => {
    const strokes = exampleStrokes(Number(ch));
    const xs = strokes.flat().map((p) => p[0]);
    return { strokes, x0: Math.min(...xs), x1: Math.max(...xs) };
  });
  const inkWidth = digits.reduce((w, d) => w + d.x1 - d.x0, 0) + GAP * (digits.length - 1);
  const scale = Math.min(1, (aspect * 0.86) / inkWidth);
  let x = (aspect - inkWidth * scale) / 2;
  const out = [];
  for (const d of digits) {
    for (const stroke of d.strokes) {
      out.push(stroke.map(([px, py]) => [x + (px - d.x0) * scale, 0.5 + (py - 0.5) * scale]));
    }
    x += (d.x1 - d.x0 + GAP) * scale;
  }
  return out;
}

export function initNumber({ panel, catalog, announce }) {
  const variants = Object.keys(catalog.models.number || {});
  if (!variants.length) {
    markUnavailable(panel, "No number reader is loaded on this server, so written numbers cannot be read. "
      + "Train one with `python -m training.number` and restart the service.");
    return;
  }
  const selected = variants.includes(catalog.defaults.number) ? catalog.defaults.number : variants[0];
  const els = {
    canvas: $("[data-testid=number-canvas]", panel),
    bands: $("[data-testid=number-bands]", panel),
    undo: $("[data-testid=number-undo]", panel),
    clear: $("[data-testid=number-clear]", panel),
    example: $("[data-testid=number-example]", panel),
    text: $("[data-testid=number-text]", panel),
    meta: $("#number-meta", panel),
    hint: $("#number-hint", panel),
    digits: $("#number-digits", panel),
    detail: $("#number-detail", panel),
    error: $("#number-error", panel),
  };
  const pad = new SketchPad(els.canvas);
  const HINT = els.hint.textContent;

  let version = 0; // bumps on every drawing change; answers for older drawings are dropped
  let shownVersion = -1;
  let outcome = "empty"; // the panel's state once nothing is in flight: empty | ready | error
  let shownWidth = 0; // the export width the bands on screen were measured in
  let exampleIndex = 0;

  // ---- pad controls -------------------------------------------------------------------------
  els.clear.addEventListener("click", () => { pad.clear(); pad.canvas.focus(); });
  els.undo.addEventListener("click", () => pad.undo());
  els.example.addEventListener("click", () => {
    pad.load(exampleNumber(EXAMPLES[exampleIndex % EXAMPLES.length], pad.aspect));
    exampleIndex += 1;
  });
  const syncButtons = () => {
    els.undo.disabled = els.clear.disabled = pad.isEmpty;
    pad.canvas.parentElement.classList.toggle("has-ink", !pad.isEmpty);
  };
  syncButtons();

  // ---- bands and chips ------------------------------------------------------------------------
  let active = null; // index of the digit picked out (hover / focus / tap)

  function setActive(i) {
    active = i;
    for (const b of els.bands.children) b.classList.toggle("is-active", Number(b.dataset.index) === i);
    for (const c of els.digits.children) c.classList.toggle("is-active", Number(c.dataset.index) === i);
    els.bands.classList.toggle("has-active", i != null);
    const chip = i == null ? null : els.digits.children[i];
    els.detail.textContent = chip ? chip._detail : "";
  }

  function clearAnswer() {
    setActive(null);
    els.text.textContent = "";
    els.meta.textContent = "";
    els.digits.replaceChildren();
    els.bands.replaceChildren();
    els.detail.textContent = "";
    shownWidth = 0;
  }

  const normTop3 = (top3) => (Array.isArray(top3) ? top3 : [])
    .filter((t) => Array.isArray(t) && t.length >= 2).map(([d, p]) => [String(d), Number(p)]);

  function showAnswer(data, uploadWidth, drawn) {
    setActive(null);
    const text = String(data.text ?? "");
    const model = label(data.model || selected);
    const digits = Array.isArray(data.digits) ? data.digits : [];
    els.text.textContent = text;
    const conf = typeof data.confidence === "number" ? data.confidence : null;
    els.meta.textContent = text
      ? `${model} · ${conf != null ? `${pctNice(conf)} sure` : "read"} · ${text.length} digit${text.length === 1 ? "" : "s"}`
      : `${model} read no digits in this drawing`;
    els.hint.textContent = text ? "" : "Try writing the digits bigger, or a little further apart.";
    els.hint.hidden = Boolean(text);
    shownWidth = uploadWidth;

    const bands = [];
    const chips = digits.map((d, i) => {
      const digit = String(d.digit ?? "?");
      const p = typeof d.confidence === "number" ? d.confidence : null;
      const tone = p == null ? "" : p >= 0.9 ? "hi" : p >= 0.6 ? "mid" : "lo";
      const top3 = normTop3(d.top3);
      const span = Array.isArray(d.span) && d.span.length === 2 ? d.span.map(Number) : null;
      const hasSpan = span && span[0] < span[1] && uploadWidth > 0;
      const others = top3.filter(([t]) => t !== digit);
      const where = hasSpan ? `; written between ${Math.round((100 * span[0]) / uploadWidth)}% and `
        + `${Math.round((100 * span[1]) / uploadWidth)}% of the way across the pad` : "";
      const chip = el("button", {
        type: "button", class: `num-chip tone-${tone}`, "data-index": String(i), "data-testid": "number-digit",
        "aria-label": `digit ${i + 1} of ${digits.length}: ${digit}${p != null ? `, ${pctNice(p)} sure` : ""}`
          + (others.length ? `; runners-up ${others.map(([t, q]) => `${t} ${pctNice(q)}`).join(", ")}` : "") + where,
        style: p != null ? { "--conf": p.toFixed(3) } : null,
      },
      el("span", { class: "num-chip-digit", "aria-hidden": "true", text: digit }),
      el("span", { class: "num-chip-conf", "aria-hidden": "true", text: p != null ? pctNice(p) : "" }));
      chip._detail = `Digit ${i + 1}: ${digit}${p != null ? ` (${pctNice(p)})` : ""}`
        + (others.length ? ` · runners-up ${others.map(([t, q]) => `${t} ${pctNice(q)}`).join(", ")}` : "");
      chip.addEventListener("mouseenter", () => setActive(i));
      chip.addEventListener("focus", () => setActive(i));
      chip.addEventListener("click", () => setActive(i)); // a tap, where a button may not take focus
      chip.addEventListener("mouseleave", () => { if (document.activeElement !== chip) setActive(null); });
      chip.addEventListener("blur", () => setActive(null));
      if (hasSpan) {
        // [x0, x1) in the uploaded PNG's pixels; the PNG is exactly the pad, so a share of its
        // width is the same share of the pad's CSS width (the band layer covers the pad).
        bands.push(el("div", {
          class: `num-band tone-${tone}`, "data-testid": "number-band", "data-index": String(i), "data-digit": digit,
          "data-span": `${span[0]},${span[1]}`,
          style: { left: `${((100 * span[0]) / uploadWidth).toFixed(3)}%`, width: `${((100 * (span[1] - span[0])) / uploadWidth).toFixed(3)}%` },
        }, el("span", { class: "num-band-label", text: digit })));
      }
      return chip;
    });
    els.digits.replaceChildren(...chips);
    els.bands.replaceChildren(...bands);
    els.bands.dataset.stale = String(drawn !== version); // the pen moved on since this drawing was sent
    els.detail.textContent = "";
    showError(els.error, null);
    outcome = "ready";
  }

  function showEmpty() {
    clearAnswer();
    els.hint.textContent = HINT;
    els.hint.hidden = false;
    showError(els.error, null);
    outcome = "empty";
    setPanelState(panel, "empty");
  }

  function showNoDigit() {
    // Ink the reader cannot use (a dot, a faint smudge): a prompt, not an error.
    clearAnswer();
    els.hint.textContent = "No digits there yet: write a number, a few digits side by side.";
    els.hint.hidden = false;
    showError(els.error, null);
    outcome = "empty";
  }

  function errorTitle(err) {
    if (err.status === 0) return "Server unreachable.";
    if (err.status === 503) return "Not available right now.";
    if (err.status === 429) return "The server is busy.";
    return "The server refused this drawing.";
  }

  function showFailure(err) {
    clearAnswer(); // the answer on screen belongs to an older drawing: take it down; the box says why
    els.hint.hidden = true;
    showError(els.error, err, errorTitle(err));
    outcome = "error";
  }

  // ---- requests -------------------------------------------------------------------------------
  async function read() {
    if (pad.isEmpty) return;
    const asked = version;
    const { width } = pad.exportSize; // the PNG below is exactly this wide
    let data = null;
    let error = null;
    try {
      data = await postFiles(`/predict/number?model=${encodeURIComponent(selected)}`, { file: await pad.toBlob() });
    } catch (err) {
      error = err;
    }
    if (pad.isEmpty || asked < shownVersion || panel.dataset.state === "unavailable") return;
    shownVersion = asked;
    const final = !throttle.hasPending; // the last answer for now: say it out loud
    if (error instanceof ApiError && error.missingEndpoint) {
      throttle.cancel();
      markUnavailable(panel, "This server lists a number reader but has no /predict/number endpoint.");
      return;
    }
    if (error instanceof ApiError && error.code === "no_digit") {
      showNoDigit();
      if (final) announce("No digits found. Write a number.");
    } else if (error) {
      showFailure(error);
      if (final) announce(`Error: ${error.message}`);
    } else {
      showAnswer(data, width, asked);
      if (final) {
        announce(data.text ? `Read ${[...String(data.text)].join(" ")}, ${pctNice(data.confidence)} sure.`
          : "No digits read in this drawing.");
      }
    }
  }

  const throttle = new Throttle(read, {
    minInterval: LIVE_INTERVAL_MS,
    merge: () => undefined,
    onBusy: (busy) => {
      if (panel.dataset.state === "unavailable") return;
      setPanelState(panel, busy ? "busy" : pad.isEmpty ? "empty" : outcome);
      if (busy) panel.setAttribute("aria-busy", "true"); else panel.removeAttribute("aria-busy");
    },
  });

  pad.addEventListener("change", () => {
    syncButtons();
    if (panel.dataset.state === "unavailable") return;
    version += 1;
    if (pad.isEmpty) { throttle.cancel(); showEmpty(); return; }
    els.bands.dataset.stale = "true"; // the bands on screen are for the drawing before this change
    throttle.trigger(); // while the pen moves (throttled), and once more when the stroke ends
  });
  // A new pad shape (rotation, a layout breakpoint) is a new picture: the export, and so every
  // span, changes width. Read it again rather than show bands measured on the old one.
  pad.addEventListener("resize", () => {
    if (pad.isEmpty || !shownWidth || pad.exportSize.width === shownWidth) return;
    version += 1;
    els.bands.dataset.stale = "true";
    throttle.trigger();
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && active != null && panel.contains(document.activeElement)) setActive(null);
  });

  showEmpty();
}
