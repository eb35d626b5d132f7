// The captcha panel: upload (picker or drag-and-drop) or fetch a fresh captcha, decode it,
// show each character's confidence with its top-3 on hover/focus, and where on the image it
// was read (`explain=true`: a band over its span and a curve of its column weights); switch
// between every served reader (ctc, seq2seq, general, then readers fine-tuned on the user's own captchas);
// ask for an exact length and a set of characters (`length=`, `charset=`: decoded under them).

import { ApiError, dataUrlToBlob, getJSON, postFiles } from "./api.js";
import { $, el, label, markUnavailable, pct, pctNice, setPanelState, showError } from "./ui.js";

const ORDER = ["ctc", "seq2seq", "general"]; // the shipped readers first, then the others A-Z

/** Served captcha readers: ctc, seq2seq, general, then the rest (user-trained readers) alphabetically. */
export function orderReaders(names) {
  const rank = (v) => (ORDER.includes(v) ? ORDER.indexOf(v) : ORDER.length);
  return [...names].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b, "en", { sensitivity: "base" }) || (a < b ? -1 : 1));
}

const NAMED_CHARSETS = { digits: "digits (0-9)", letters: "letters (a-z)" };

export function initCaptcha({ panel, catalog, announce }) {
  const variants = orderReaders(Object.keys(catalog.models.captcha || {}));
  if (!variants.length) {
    markUnavailable(panel, "No captcha model is loaded on this server, so captchas cannot be read here yet.");
    return;
  }
  const els = {
    models: $("#captcha-models", panel),
    modelNote: $("#captcha-model-note", panel),
    length: $("#captcha-length", panel),
    lengthHint: $("#captcha-length-hint", panel),
    charset: $("#captcha-charset", panel),
    customRow: $("#captcha-custom-row", panel),
    custom: $("#captcha-custom", panel),
    file: $("[data-testid=captcha-file]", panel),
    drop: $("#captcha-drop", panel),
    newBtn: $("[data-testid=captcha-new]", panel),
    img: $("#captcha-img", panel),
    stage: $("#captcha-stage", panel),
    read: $("#captcha-read", panel),
    band: $("[data-testid=captcha-band]", panel),
    curve: $("#captcha-read svg", panel),
    result: $("[data-testid=captcha-result]", panel),
    confidence: $("#captcha-confidence", panel),
    truthRow: $("#captcha-truth-row", panel),
    truth: $("[data-testid=captcha-truth]", panel),
    verdict: $("#captcha-verdict", panel),
    error: $("#captcha-error", panel),
    tip: $("#captcha-tip"),
  };

  let selected = variants.includes(catalog.defaults.captcha) ? catalog.defaults.captcha : variants[0];
  let current = null; // {blob, truth}
  let ticket = 0; // answers to superseded requests are dropped
  let objectUrl = null;

  // ---- model switch: a radio group, keyboard-native -----------------------------------------
  const DESCRIBE = {
    ctc: "bidirectional GRU over the columns, CTC decoding",
    seq2seq: (m) => "GRU encoder over the columns, GRU decoder " + (m.architecture?.end_token
      ? `writing up to ${m.architecture.length} characters, then an end token`
      : `emitting ${m.architecture?.length || 4} characters`),
    general: "trained on many captcha styles, 1-8 characters: for captchas that are not this demo's",
  };
  const manifest = (v) => catalog.models.captcha[v] || {};
  const network = (v) => manifest(v).network || (ORDER.includes(v) ? v : "ctc");
  /** A reader trained on the user's own captchas (training.captcha finetune): not a shipped one. */
  const isOwn = (v) => !ORDER.includes(v) || typeof manifest(v).metrics?.holdout_samples === "number";
  /** The one length a reader can answer (a seq2seq without an end token: its fixed decoder
   *  steps), else null = any. */
  const fixedLength = (v) => (network(v) === "seq2seq" && !manifest(v).architecture?.end_token
    ? Number(manifest(v).architecture?.length) || 4 : null);
  const count = (n) => Number(n).toLocaleString("en");

  function describeOwn(v) {
    const m = manifest(v), metrics = m.metrics || {}, training = m.training || {};
    const scratch = training.init === "random weights";
    const from = typeof training.init?.from === "string" ? training.init.from.replace(/^captcha_/, "") : null;
    const lengths = Array.isArray(training.label_lengths) && training.label_lengths.length
      ? training.label_lengths.map(Number) : null;
    const span = lengths ? (Math.min(...lengths) === Math.max(...lengths) ? `${Math.min(...lengths)}`
      : `${Math.min(...lengths)}-${Math.max(...lengths)}`) : null;
    const what = [
      typeof training.train_samples === "number" ? `${count(training.train_samples)} labelled` : null,
      span ? `${span} characters` : null,
    ].filter(Boolean).join(", ");
    let note = `${scratch ? "Trained" : "Fine-tuned"} on your own captchas${what ? ` (${what})` : ""}`
      + (!scratch && from ? `, starting from the ${label(from)} reader` : `; ${label(network(v))} decoding`);
    if (typeof metrics.full_string_accuracy === "number") {
      const n = metrics.holdout_samples;
      note += typeof n === "number"
        ? ` · ${pct(metrics.full_string_accuracy, n >= 1000 ? 2 : 1)} of ${count(n)} of your held-out captchas read right`
        : ` · ${pct(metrics.full_string_accuracy, 1)} of your held-out captchas read right`;
    }
    return note;
  }

  function describeModel() {
    if (isOwn(selected)) {
      els.modelNote.textContent = describeOwn(selected);
      return;
    }
    const m = manifest(selected).metrics || {};
    const styles = m.validation_per_family ? Object.keys(m.validation_per_family).length
      - (m.zero_shot_families || []).length : 0;
    const acc = typeof m.full_string_accuracy === "number"
      ? ` · ${pct(m.full_string_accuracy, 2)} of ${m.test_samples ? count(m.test_samples) : "held-out"} test captchas read right`
      : typeof m.mix_full_string_accuracy === "number" && styles > 0
        ? ` · ${pct(m.mix_full_string_accuracy, 1)} of validation captchas read right (mean over its ${styles} training styles)`
        : "";
    // The seq2seq weights may carry the o/0 glyph net (architecture.o0): say so.
    const glyph = manifest(selected).architecture?.o0 ? ", o vs 0 checked at full resolution" : "";
    const described = typeof DESCRIBE[selected] === "function" ? DESCRIBE[selected](manifest(selected)) : DESCRIBE[selected];
    els.modelNote.textContent = `${described || manifest(selected).description || selected}${glyph}${acc}`;
  }
  variants.forEach((v, i) => {
    const input = el("input", { type: "radio", name: "captcha-model", value: v, id: `captcha-model-${i}`,
      checked: v === selected, "data-testid": `captcha-model-${v}`, "aria-describedby": "captcha-model-note" });
    input.addEventListener("change", () => { selected = v; describeModel(); fitLengths(); if (current) decode(); });
    const own = isOwn(v);
    els.models.append(el("span", { class: `seg${own ? " seg-own" : ""}`, "data-variant": v }, input,
      el("label", { for: input.id, title: own ? "trained on your own captchas" : null }, label(v))));
  });

  // ---- what the answer must look like: an exact length, a set of characters ------------------
  /** The query's constraint parameters, as the controls stand now ("" when none). */
  function constraintQuery() {
    const params = [];
    if (els.length.value) params.push(`length=${encodeURIComponent(els.length.value)}`);
    const cs = els.charset.value === "custom" ? els.custom.value.trim() : els.charset.value;
    if (cs) params.push(`charset=${encodeURIComponent(cs)}`);
    return params.length ? `&${params.join("&")}` : "";
  }

  /** Words for the constraints a request asked for ("" when none). */
  function constraintWords() {
    const words = [];
    if (els.length.value) words.push(`exactly ${els.length.value} character${els.length.value === "1" ? "" : "s"}`);
    const cs = els.charset.value === "custom" ? els.custom.value.trim() : els.charset.value;
    if (cs) words.push(NAMED_CHARSETS[cs] ? `${NAMED_CHARSETS[cs]} only` : `only “${cs}”`);
    return words.join(", ");
  }

  /** A fixed-length reader (seq2seq) takes only its own length: the others are disabled, with a hint. */
  function fitLengths() {
    const fixed = fixedLength(selected);
    for (const opt of els.length.options) opt.disabled = fixed != null && opt.value !== "" && Number(opt.value) !== fixed;
    const off = fixed != null && els.length.value !== "" && Number(els.length.value) !== fixed;
    els.lengthHint.hidden = fixed == null;
    els.lengthHint.classList.toggle("is-warn", off);
    els.lengthHint.textContent = fixed == null ? ""
      : `${label(selected)} always reads exactly ${fixed} characters`
        + (off ? ` and cannot answer ${els.length.value}: choose “any” or ${fixed}, or another reader.`
          : "; choose another reader for other lengths.");
  }

  let asked = null; // the constraint query of the last request sent
  let typing = null;
  /** Re-read the current captcha when the constraints now differ from the last request's. */
  const constraintsChanged = () => {
    clearTimeout(typing);
    fitLengths();
    if (current && constraintQuery() !== asked) decode();
  };
  els.length.addEventListener("change", constraintsChanged);
  els.charset.addEventListener("change", () => {
    els.customRow.hidden = els.charset.value !== "custom";
    if (els.charset.value === "custom") els.custom.focus();
    constraintsChanged(); // custom with nothing typed yet: no charset
  });
  // Typing a custom set re-reads after a pause; Enter or leaving the field, at once.
  els.custom.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(constraintsChanged, 400); });
  els.custom.addEventListener("change", constraintsChanged);
  els.custom.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); constraintsChanged(); } });

  describeModel();
  fitLengths();

  // ---- per-character tooltip (top-3) ---------------------------------------------------------
  function showTip(button) {
    els.tip.replaceChildren(el("strong", { text: "Top 3" }), el("ol", {},
      (button._top3 || []).map(([c, p]) => el("li", {}, el("span", { class: "tip-char", text: c }), ` ${pctNice(p)}`))));
    els.tip.hidden = false;
    const r = button.getBoundingClientRect();
    const tipW = els.tip.offsetWidth;
    const left = Math.min(window.innerWidth - tipW - 8, Math.max(8, r.left + r.width / 2 - tipW / 2));
    els.tip.style.left = `${left + window.scrollX}px`;
    els.tip.style.top = `${r.bottom + window.scrollY + 8}px`;
  }
  const hideTip = () => { els.tip.hidden = true; };
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") { hideTip(); hideRead(); } });

  // ---- where each character was read: a band over its span, a curve of its column weights ---
  /** The drawn image's box inside the <img> (object-fit: contain letterboxes other shapes). */
  function imageBox() {
    const img = els.img;
    const nw = img.naturalWidth, nh = img.naturalHeight, cw = img.clientWidth, ch = img.clientHeight;
    const s = Math.min(cw / nw, ch / nh);
    return { left: img.offsetLeft + (cw - nw * s) / 2, top: img.offsetTop + (ch - nh * s) / 2, width: nw * s, height: nh * s };
  }

  function showRead(button) {
    const read = button._read;
    if (!read || !els.img.naturalWidth) return;
    for (const b of els.result.children) b.classList.toggle("is-reading", b === button);
    const width = read.weights.length || els.img.naturalWidth;
    const box = imageBox();
    Object.assign(els.read.style, { left: `${box.left}px`, top: `${box.top}px`, width: `${box.width}px`, height: `${box.height}px` });
    const [x0, x1] = read.span;
    els.band.style.left = `${(100 * x0) / width}%`;
    els.band.style.width = `${(100 * (x1 - x0)) / width}%`;
    els.band.dataset.char = read.char;
    els.band.dataset.index = String(read.index);
    // The weights as a curve along the bottom of the image, its peak at 60% of the height.
    const peak = Math.max(...read.weights, 1e-9);
    const pts = read.weights.map((w, x) => `${x + 0.5},${(100 - (60 * w) / peak).toFixed(2)}`);
    els.curve.setAttribute("viewBox", `0 0 ${width} 100`);
    if (pts.length) {
      els.curve.querySelector(".read-line").setAttribute("d", `M${pts.join("L")}`);
      els.curve.querySelector(".read-area").setAttribute("d", `M0,100L${pts.join("L")}L${width},100Z`);
    }
    els.curve.hidden = !pts.length;
    els.read.hidden = false;
  }

  function hideRead() {
    els.read.hidden = true;
    for (const b of els.result.children) b.classList.remove("is-reading");
  }

  /** A character's span and weights from the answer, when the server sent them (else null). */
  function readOf(ch, i) {
    const span = Array.isArray(ch.span) && ch.span.length === 2 ? ch.span.map(Number) : null;
    if (!span || !(span[0] < span[1])) return null;
    const weights = Array.isArray(ch.weights) ? ch.weights.map(Number) : [];
    return { span, weights, char: String(ch.char ?? ""), index: i };
  }

  const normTop3 = (top3) => (Array.isArray(top3) ? top3 : []).map((t) => (Array.isArray(t)
    ? [String(t[0]), Number(t[1])] : [String(t.char ?? t.c ?? "?"), Number(t.confidence ?? t.p ?? t.probability ?? 0)]));

  function showResult(data, truth, wanted = "") {
    const text = String(data.text ?? "");
    const chars = Array.isArray(data.characters) && data.characters.length
      ? data.characters : [...text].map((c) => ({ char: c }));
    const truthLower = truth ? truth.toLowerCase() : null;
    hideRead();
    els.result.replaceChildren(...chars.map((ch, i) => {
      const c = String(ch.char ?? "");
      const conf = typeof ch.confidence === "number" ? ch.confidence : null;
      const tone = conf == null ? "" : conf >= 0.9 ? "hi" : conf >= 0.6 ? "mid" : "lo";
      const wrong = truthLower != null && truthLower[i] !== c.toLowerCase();
      const top3 = normTop3(ch.top3);
      const read = readOf(ch, i);
      const b = el("button", {
        type: "button", class: `char tone-${tone}${wrong ? " is-wrong" : ""}`,
        "aria-label": `character ${i + 1}: ${c}${conf != null ? `, ${pctNice(conf)} sure` : ""}`
          + (top3.length ? `; top 3: ${top3.map(([t, p]) => `${t} ${pctNice(p)}`).join(", ")}` : "")
          + (read ? `; read between pixels ${read.span[0]} and ${read.span[1]} across` : ""),
        style: conf != null ? { "--conf": conf.toFixed(3) } : null,
      }, c);
      b._top3 = top3;
      b._read = read;
      const show = () => { if (top3.length) showTip(b); showRead(b); };
      const hide = () => { hideTip(); hideRead(); };
      if (top3.length || read) {
        b.addEventListener("mouseenter", show);
        b.addEventListener("focus", show);
        b.addEventListener("click", show); // a tap, where a button may not take focus
        b.addEventListener("mouseleave", () => { if (document.activeElement !== b) hide(); });
        b.addEventListener("blur", hide);
      }
      return b;
    }));
    // Which reader answered (the response's own `model`), how sure, and what it was asked for.
    const reader = String(data.model || selected);
    const by = el("span", { class: "answered-by", "data-testid": "captcha-answered-by", text: label(reader) });
    els.confidence.dataset.model = reader;
    if (!text) els.confidence.replaceChildren(by, " read no characters in this image");
    else {
      els.confidence.replaceChildren("Read by ", by,
        typeof data.confidence === "number" ? ` · whole string ${pctNice(data.confidence)} sure` : "");
    }
    if (wanted) els.confidence.append(el("span", { class: "asked", "data-testid": "captcha-asked", text: ` · asked for ${wanted}` }));
    els.truthRow.hidden = !truth;
    if (truth) {
      els.truth.textContent = truth;
      const ok = truthLower === text.toLowerCase();
      els.verdict.textContent = ok ? "✓ correct" : "✗ misread";
      els.verdict.className = `chip ${ok ? "chip-ok" : "chip-warn"}`;
      els.verdict.hidden = false;
    }
    announce(`Captcha read by ${label(reader)} as ${[...text].join(" ")}${truth ? `; the true text is ${[...truth].join(" ")}` : ""}.`);
  }

  function setImage(blob) {
    if (objectUrl) URL.revokeObjectURL(objectUrl);
    objectUrl = URL.createObjectURL(blob);
    els.img.src = objectUrl;
    els.img.alt = current?.truth ? `captcha (true text ${current.truth})` : "the uploaded captcha";
    els.stage.dataset.empty = "false";
  }

  async function decode() {
    const mine = ++ticket;
    setPanelState(panel, "busy");
    panel.setAttribute("aria-busy", "true");
    try {
      asked = constraintQuery();
      const wanted = constraintWords();
      const data = await postFiles(`/predict/captcha?model=${encodeURIComponent(selected)}&explain=true${asked}`,
        { file: current.blob });
      if (mine !== ticket) return;
      showError(els.error, null);
      showResult(data, current.truth, wanted);
      setPanelState(panel, "ready");
    } catch (err) {
      if (mine !== ticket) return;
      // 422 invalid_request: the reader cannot answer under these settings (a length a fixed-length
      // seq2seq cannot write, characters outside 0-9a-z): the server's own message says why.
      const refused = err instanceof ApiError && err.status === 422 && err.code === "invalid_request" && asked;
      failed(err, refused ? `${label(selected)} cannot answer with these settings.` : "Could not read this image.");
    } finally {
      if (mine === ticket) panel.removeAttribute("aria-busy");
    }
  }

  function failed(err, prefix) {
    if (err instanceof ApiError && err.missingEndpoint) {
      markUnavailable(panel, "This server lists a captcha model but has no /predict/captcha endpoint.");
      return;
    }
    hideRead();
    els.result.replaceChildren();
    els.confidence.replaceChildren();
    delete els.confidence.dataset.model;
    els.verdict.hidden = true; // no answer now: the true text stays, the verdict on the last one goes
    showError(els.error, err, prefix);
    announce(`Error: ${err.message}`);
    setPanelState(panel, "error");
  }

  function useFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      failed(new ApiError(0, "not_an_image", `${file.name} is not an image (${file.type}).`), "Not an image.");
      return;
    }
    current = { blob: file, truth: null };
    setImage(file);
    decode();
  }

  els.file.addEventListener("change", () => { useFile(els.file.files[0]); els.file.value = ""; });

  // Drag-and-drop onto the drop zone (files only; counter keeps the highlight steady over children).
  let dragDepth = 0;
  const dragging = (on) => els.drop.classList.toggle("is-dragging", on);
  els.drop.addEventListener("dragenter", (e) => { e.preventDefault(); dragDepth += 1; dragging(true); });
  els.drop.addEventListener("dragover", (e) => { e.preventDefault(); e.dataTransfer.dropEffect = "copy"; });
  els.drop.addEventListener("dragleave", () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) dragging(false); });
  els.drop.addEventListener("drop", (e) => {
    e.preventDefault();
    dragDepth = 0;
    dragging(false);
    useFile(e.dataTransfer.files[0]);
  });

  els.newBtn.addEventListener("click", async () => {
    const mine = ++ticket;
    els.newBtn.disabled = true;
    setPanelState(panel, "busy");
    try {
      const fresh = await getJSON("/captcha/new");
      if (mine !== ticket) return;
      current = { blob: dataUrlToBlob(fresh.image), truth: fresh.text ? String(fresh.text) : null };
      setImage(current.blob);
      await decode();
    } catch (err) {
      if (mine !== ticket) return;
      if (err instanceof ApiError && err.missingEndpoint) {
        // Reading uploads still works; only the generator is missing.
        els.newBtn.hidden = true;
        showError(els.error, err, "This server cannot make new captchas.");
        setPanelState(panel, "error");
      } else failed(err, "Could not fetch a new captcha.");
    } finally {
      els.newBtn.disabled = false;
    }
  });

  setPanelState(panel, "empty");
}
