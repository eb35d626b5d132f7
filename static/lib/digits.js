// The digits panel: live prediction while drawing, probability bars, "Watch it read" (the
// per-row guesses as a 28x10 heat map beside the 28x28 the model saw, which rows mattered,
// and the cell's gates row by row: lib/explain.js), and RNN/LSTM/GRU side by side.

import { ApiError, Throttle, postFiles } from "./api.js";
import { ExplainView } from "./explain.js";
import { exampleStrokes } from "./strokes.js";
import {
  $, describeTypicality, el, heatColour, label, markUnavailable, pct, pctNice, prefersDark, setPanelState, showError,
} from "./ui.js";

const ROWS = 28;
const CELL_ORDER = ["rnn", "lstm", "gru"];
const LIVE_INTERVAL_MS = 250; // at most ~4 requests/s per model while the pen moves

export function initDigits({ panel, pad, catalog, announce }) {
  const variants = Object.keys(catalog.models.digits || {})
    .sort((a, b) => (CELL_ORDER.indexOf(a) + 1 || 99) - (CELL_ORDER.indexOf(b) + 1 || 99));
  const els = {
    result: $("[data-testid=digit-result]", panel),
    meta: $("#digit-meta", panel),
    hint: $("#digit-hint", panel),
    bars: $("#digit-bars", panel),
    typicality: $("#digit-typicality", panel),
    error: $("#digit-error", panel),
    compare: $("#digit-compare", panel),
    seen: $("#seen-canvas", panel),
    heat: $("#heat-canvas", panel),
    slider: $("#row-slider", panel),
    play: $("#row-play", panel),
    readout: $("#row-readout", panel),
    watch: $("#watch", panel),
    gates: $("#gate-canvas", panel),
    gateLabels: $("#gate-labels", panel),
    gateCaption: $("#gate-caption", panel),
    importance: $("#row-importance", panel),
    explain: $("#explain", panel),
    undo: $("[data-testid=digit-undo]", panel),
    clear: $("[data-testid=digit-clear]", panel),
    example: $("#digit-example", panel),
  };

  // The pad, Clear, Undo and examples work even without a digit model (the autoencoder
  // panel draws from the same pad).
  els.clear.addEventListener("click", () => { pad.clear(); pad.canvas.focus(); });
  els.undo.addEventListener("click", () => pad.undo());
  els.example.addEventListener("change", () => {
    if (els.example.value === "") return;
    pad.load(exampleStrokes(Number(els.example.value)));
    els.example.value = "";
  });
  const syncButtons = () => {
    els.undo.disabled = els.clear.disabled = pad.isEmpty;
    pad.canvas.parentElement.classList.toggle("has-ink", !pad.isEmpty);
  };
  pad.addEventListener("change", syncButtons);
  syncButtons();

  if (!variants.length) {
    markUnavailable(panel, "No digit model is loaded on this server, so drawings cannot be read. "
      + "Train one with `python -m training.digits` and restart the service.");
    return;
  }

  let selected = variants.includes(catalog.defaults.digits) ? catalog.defaults.digits : variants[variants.length - 1];
  let version = 0; // bumps on every drawing change; answers for older drawings are dropped
  let shownVersion = -1;
  const latest = {}; // variant -> last prediction for the current drawing
  let lastError = null;

  // ---- compare cards -------------------------------------------------------------------
  const cards = {};
  for (const v of variants) {
    const acc = catalog.models.digits[v]?.metrics?.mnist_test_accuracy;
    const mini = el("span", { class: "mini-bars", "aria-hidden": "true" },
      Array.from({ length: 10 }, () => el("span", { class: "mini-bar" })));
    const digit = el("span", { class: "cell-digit", "data-testid": `digit-result-${v}` });
    const conf = el("span", { class: "cell-conf" });
    const card = el("button", {
      type: "button", class: "cell-card", "data-variant": v, "aria-pressed": String(v === selected),
      onclick: () => select(v),
    },
    el("span", { class: "cell-name" }, label(v),
      acc != null ? el("span", { class: "cell-acc", title: "accuracy on the 10,000 MNIST test digits" }, ` ${pct(acc, 1)} on MNIST`) : null),
    el("span", { class: "cell-body" }, digit, conf), mini);
    cards[v] = { card, digit, conf, mini: [...mini.children] };
    els.compare.append(card);
  }

  function select(v) {
    if (v === selected) return;
    selected = v;
    for (const [name, c] of Object.entries(cards)) c.card.setAttribute("aria-pressed", String(name === selected));
    if (latest[v]) showMain(latest[v]);
    if (!pad.isEmpty) throttle.trigger({ full: true });
  }

  // ---- probability bars ----------------------------------------------------------------
  const bars = Array.from({ length: 10 }, (_, d) => {
    const fill = el("span", { class: "bar-fill" });
    const value = el("span", { class: "visually-hidden" });
    const li = el("li", { class: "bar" }, el("span", { class: "bar-track" }, fill),
      el("span", { class: "bar-label", "aria-hidden": "true" }, String(d)), value);
    els.bars.append(li);
    return { li, fill, value };
  });

  function paintBars(probs) {
    const top = probs ? probs.indexOf(Math.max(...probs)) : -1;
    bars.forEach((b, d) => {
      const p = probs ? probs[d] : 0;
      b.fill.style.setProperty("--p", p.toFixed(4));
      b.li.classList.toggle("is-top", d === top);
      b.value.textContent = probs ? `${d}: ${pctNice(p)}` : "";
      b.li.title = probs ? `${d}: ${pctNice(p)}` : "";
    });
  }

  // ---- main result -----------------------------------------------------------------------
  function showMain(data) {
    els.result.textContent = String(data.digit);
    els.meta.textContent = `${label(data.model)} · ${pctNice(data.confidence)} sure`;
    els.hint.hidden = true;
    paintBars(data.probabilities);
    const typ = describeTypicality(data.typicality);
    els.typicality.hidden = !typ;
    if (typ) {
      els.typicality.className = `chip ${typ.verdict ? "chip-ok" : "chip-warn"}`;
      els.typicality.textContent = `${typ.text}${typ.detail ? ` · ${typ.detail}` : ""}`;
    }
    if (data.steps && data.input) showWatch(data);
  }

  function showCard(data) {
    const c = cards[data.model];
    if (!c) return;
    c.digit.textContent = String(data.digit);
    c.conf.textContent = pctNice(data.confidence);
    c.card.classList.remove("is-stale");
    c.mini.forEach((bar, d) => {
      bar.style.setProperty("--p", data.probabilities[d].toFixed(4));
      bar.classList.toggle("is-top", d === data.digit);
    });
  }

  function showEmpty() {
    els.result.textContent = "";
    els.meta.textContent = "";
    els.hint.hidden = false;
    els.typicality.hidden = true;
    paintBars(null);
    for (const c of Object.values(cards)) {
      c.digit.textContent = "";
      c.conf.textContent = "";
      c.mini.forEach((bar) => bar.style.setProperty("--p", "0"));
    }
    for (const k of Object.keys(latest)) delete latest[k];
    watch.data = null;
    els.watch.dataset.empty = "true";
    els.watch.dataset.explain = "false";
    stopPlaying();
    paintWatch();
    showError(els.error, null);
    lastError = null;
    setPanelState(panel, "empty");
  }

  // ---- requests ----------------------------------------------------------------------------
  function errorTitle(err) {
    if (!err) return "";
    if (err.code === "no_digit") return "No digit found.";
    if (err.status === 0) return "Server unreachable.";
    if (err.status === 503) return "Not available right now.";
    return "The server refused this drawing.";
  }

  async function predict({ full }) {
    if (pad.isEmpty) return;
    const asked = version;
    const blob = await pad.toBlob();
    const wanted = full ? variants : [selected];
    const settled = await Promise.allSettled(wanted.map((v) => postFiles(
      `/predict/digit?model=${encodeURIComponent(v)}${v === selected ? "&steps=true&echo=true&explain=true" : ""}`, { file: blob })));
    if (pad.isEmpty || asked < shownVersion) return; // cleared, or a newer drawing is already shown
    shownVersion = asked;
    lastError = null;
    settled.forEach((r, i) => {
      const v = wanted[i];
      if (r.status === "fulfilled") {
        latest[v] = r.value;
        showCard(r.value);
        if (v === selected) showMain(r.value);
      } else if (v === selected || !lastError) {
        lastError = r.reason;
      }
    });
    if (lastError instanceof ApiError && lastError.missingEndpoint) {
      markUnavailable(panel, "This server has no /predict/digit endpoint.");
      throttle.cancel();
      return;
    }
    showError(els.error, lastError, errorTitle(lastError));
    if (lastError && !settled[wanted.indexOf(selected)].value) {
      // The answer on screen belongs to an older drawing: take it down; the box says why.
      els.result.textContent = "";
      els.meta.textContent = "";
      els.hint.hidden = true;
      paintBars(null);
    }
    if (full && !lastError && latest[selected]) {
      const d = latest[selected];
      const typ = describeTypicality(d.typicality);
      announce(`${label(selected)} reads ${d.digit}, ${pctNice(d.confidence)} sure.${typ ? ` ${typ.text}.` : ""}`);
    } else if (lastError) {
      announce(`Error: ${lastError.message}`);
    }
    if (!full) for (const [v, c] of Object.entries(cards)) if (v !== selected) c.card.classList.add("is-stale");
  }

  const throttle = new Throttle(predict, {
    minInterval: LIVE_INTERVAL_MS,
    merge: (a, b) => ({ full: a.full || b.full }),
    onBusy: (busy) => {
      if (panel.dataset.state === "unavailable") return;
      if (busy) setPanelState(panel, "busy");
      else setPanelState(panel, pad.isEmpty ? "empty" : lastError ? "error" : "ready");
    },
  });

  pad.addEventListener("change", (e) => {
    if (panel.dataset.state === "unavailable") return;
    version += 1;
    if (pad.isEmpty) { throttle.cancel(); showEmpty(); return; }
    throttle.trigger({ full: e.detail.final });
  });

  // ---- Watch it read ------------------------------------------------------------------------
  const watch = { data: null, row: ROWS, timer: null, image: new Image() };
  watch.image.addEventListener("load", () => paintWatch());

  function showWatch(data) {
    const fresh = watch.data?.input !== data.input;
    watch.data = data;
    els.watch.dataset.empty = "false";
    els.watch.dataset.explain = String(Boolean(data.explain));
    if (fresh) watch.image.src = data.input; else paintWatch();
  }

  const SEEN = 448; // intrinsic px (2x the 224 css px): 16 px per image row
  const HEAT_W = 400, HEAT_H = SEEN; // same height: rows line up with the image's rows
  const heatLabels = [...$("#heat-labels", panel).children];
  els.seen.width = SEEN; els.seen.height = SEEN;
  els.heat.width = HEAT_W; els.heat.height = HEAT_H;
  const inside = new ExplainView({
    canvas: els.gates, labels: els.gateLabels, caption: els.gateCaption, strip: els.importance, section: els.explain,
    architecture: (v) => catalog.models.digits[v]?.architecture,
  });

  function paintWatch() {
    const dark = prefersDark();
    const styles = getComputedStyle(panel);
    const accent = styles.getPropertyValue("--highlight").trim() || "#f59e0b";
    const rowH = SEEN / ROWS;
    const k = watch.row; // rows 1..k have been read
    const s = els.seen.getContext("2d");
    const h = els.heat.getContext("2d");
    s.clearRect(0, 0, SEEN, SEEN);
    h.clearRect(0, 0, HEAT_W, HEAT_H);
    const data = watch.data;
    // Seen image: the 28x28 input, pixelated; the unread rows veiled.
    s.fillStyle = "#000";
    s.fillRect(0, 0, SEEN, SEEN);
    if (data && watch.image.complete && watch.image.naturalWidth) {
      s.imageSmoothingEnabled = false;
      s.drawImage(watch.image, 0, 0, SEEN, SEEN);
    }
    const colW = HEAT_W / 10;
    for (let r = 0; r < ROWS; r++) {
      const row = data?.steps?.[r];
      for (let d = 0; d < 10; d++) {
        h.fillStyle = heatColour(row ? row[d] : 0, dark);
        h.fillRect(d * colW, r * rowH, colW - 1, rowH - 1);
      }
    }
    if (data && k < ROWS) {
      s.fillStyle = "rgba(15, 18, 34, 0.72)";
      s.fillRect(0, k * rowH, SEEN, SEEN - k * rowH);
      h.fillStyle = dark ? "rgba(20, 22, 34, 0.78)" : "rgba(244, 245, 251, 0.82)";
      h.fillRect(0, k * rowH, HEAT_W, SEEN - k * rowH);
    }
    if (data && k >= 1) {
      const y = (k - 1) * rowH;
      for (const [ctx, w] of [[s, SEEN], [h, HEAT_W]]) {
        ctx.strokeStyle = accent;
        ctx.lineWidth = 4;
        ctx.strokeRect(2, y - 1, w - 4, rowH + 1);
      }
      // The current guess in that row: a dot in its cell.
      const row = data.steps[k - 1];
      const best = row.indexOf(Math.max(...row));
      h.fillStyle = accent;
      h.beginPath();
      h.arc(best * colW + colW / 2 - 0.5, y + rowH / 2 - 0.5, rowH * 0.28, 0, Math.PI * 2);
      h.fill();
    }
    // Column labels under the heat map (HTML, crisp at any size); the final answer's in bold.
    heatLabels.forEach((node, d) => node.classList.toggle("is-answer", Boolean(data) && d === data.digit));
    // Inside the cell: gate lanes, equations with this row's numbers, the row-importance strip.
    const cellHint = catalog.models.digits[selected]?.architecture?.cell || selected;
    inside.paint(data, k, { dark, accent, cellHint });
    // Readout + slider text for screen readers.
    if (data) {
      const row = data.steps[Math.max(0, k - 1)];
      const best = row.indexOf(Math.max(...row));
      const text = k === 0 ? "Nothing read yet" : `After row ${k} of ${ROWS}: ${best} (${pctNice(row[best])})`;
      els.readout.textContent = text;
      const gates = inside.spoken(data, k);
      els.slider.setAttribute("aria-valuetext", gates ? `${text}; ${gates}` : text);
    } else {
      els.readout.textContent = "Draw a digit to see the rows being read";
      els.slider.setAttribute("aria-valuetext", "no drawing yet");
    }
    els.slider.value = String(k);
  }

  function stopPlaying() {
    clearInterval(watch.timer);
    watch.timer = null;
    els.play.setAttribute("aria-pressed", "false");
    els.play.textContent = "Play";
  }

  els.play.addEventListener("click", () => {
    if (watch.timer) { stopPlaying(); return; }
    if (!watch.data) return;
    if (watch.row >= ROWS) watch.row = 0;
    els.play.setAttribute("aria-pressed", "true");
    els.play.textContent = "Pause";
    watch.timer = setInterval(() => {
      watch.row += 1;
      paintWatch();
      if (watch.row >= ROWS) stopPlaying();
    }, 110);
    paintWatch();
  });
  els.slider.addEventListener("input", () => {
    stopPlaying();
    watch.row = Number(els.slider.value);
    paintWatch();
  });

  paintBars(null);
  paintWatch();
  setPanelState(panel, "empty");
}
