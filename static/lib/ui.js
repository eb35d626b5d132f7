// Small DOM helpers shared by the panels.

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

/** el("div", {class: "x", "aria-label": "y"}, child, "text") */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === false || v == null) continue;
    if (k === "text") node.textContent = v;
    else if (k === "style" && typeof v === "object") {
      for (const [prop, value] of Object.entries(v)) node.style.setProperty(prop, value); // works for --custom too
    }
    else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) if (child != null) node.append(child);
  return node;
}

export const pct = (p, digits = 0) => `${(p * 100).toFixed(digits)}%`;

/** A percentage that stays informative near 0 and 1 ("<0.1%", "99.9%"). */
export function pctNice(p) {
  if (p >= 0.9995) return ">99.9%";
  if (p < 0.001) return "<0.1%";
  return p >= 0.1 ? pct(p, 0) : pct(p, 1);
}

export const VARIANT_LABELS = { rnn: "RNN", lstm: "LSTM", gru: "GRU", ctc: "CTC", seq2seq: "seq2seq" };
export const label = (variant) => VARIANT_LABELS[variant] || variant;

/**
 * A panel's visible state lives in data-state on its <section> (tests and CSS read it):
 * loading | empty | busy | ready | error | unavailable.
 */
export function setPanelState(panel, state) { panel.dataset.state = state; }

/** Show (or with `null`, hide) an error box built from an ApiError or any Error. */
export function showError(box, error, prefix = "") {
  if (!error) { box.hidden = true; box.textContent = ""; return; }
  const code = error.code && error.status ? ` (${error.status} ${error.code})` : "";
  box.replaceChildren(el("strong", { text: prefix || "Something went wrong." }), " ",
    el("span", { "data-testid": box.dataset.testid ? `${box.dataset.testid}-message` : null, text: error.message }),
    el("span", { class: "code", text: code }));
  box.hidden = false;
}

/** Show a panel's "not available on this server" notice and mark the panel unavailable. */
export function markUnavailable(panel, message) {
  const notice = panel.querySelector("[data-role=unavailable]");
  notice.querySelector("[data-role=reason]").textContent = message;
  notice.hidden = false;
  for (const body of panel.querySelectorAll("[data-role=body]")) body.hidden = true;
  setPanelState(panel, "unavailable");
}

/** Colour for a probability in a heat map: paper -> indigo, perceptually even-ish. */
export function heatColour(p, dark = false) {
  const t = Math.sqrt(Math.min(1, Math.max(0, p))); // sqrt: small probabilities stay visible
  const from = dark ? [30, 33, 48] : [244, 245, 251];
  const to = dark ? [165, 180, 252] : [49, 46, 129];
  const c = from.map((f, i) => Math.round(f + (to[i] - f) * t));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

export const prefersDark = () => window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
export const prefersReducedMotion = () =>
  window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;

/**
 * The "does this look like a digit?" signal (`typicality`, from the autoencoder): the share of
 * MNIST test digits that the autoencoder rebuilds worse than this drawing. About 0.5 for a
 * typical digit, near 0 for a scribble. Returns null when the response has none.
 */
export function describeTypicality(t) {
  const score = typeof t === "number" ? t : (t && typeof t.typicality === "number" ? t.typicality : null);
  if (score == null || !Number.isFinite(score)) return null;
  const detail = `rebuilt better than ${pct(score, 0)} of MNIST digits`;
  if (score >= 0.05) return { verdict: true, score, text: "Looks like a digit", detail };
  if (score >= 0.01) return { verdict: false, score, text: "An unusual digit", detail };
  return { verdict: false, score, text: "Doesn't look like a digit", detail };
}
