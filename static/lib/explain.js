// "Watch it think": what happens inside the recurrent cell while it reads, from the
// `explain` block of POST /predict/digit?explain=true. Three views, all row by row:
// - lanes on a canvas beside the heat map: the mean gate activations, the candidate, the
//   norms of the memory and of the output, and 8 single units (one thin line each);
// - the cell's equations, written out, with the current row's numbers filled in;
// - a strip of 28 cells beside the 28x28 image: how much each row mattered.

import { el } from "./ui.js";

export const ROWS = 28;
export const GATE_W = 640; // intrinsic canvas width; its height is the heat map's (448)

// Lane colours: readable on the light and the dark surface alike.
const C = {
  forget: "#2563eb", input: "#16a34a", candidate: "#0d9488", output: "#9333ea",
  cell: "#db2777", hidden: "#64748b", reset: "#ea580c", update: "#2563eb",
};
const UNIT_COLOURS = ["#e11d48", "#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2", "#65a30d", "#db2777"];

/**
 * What each cell shows. `lanes`: the canvas lanes, left to right (`of` says where the values
 * come from in `explain`, `kind` how they are scaled: gate 0..1, signed ±max, norm 0..max, units
 * -1..1); `eqs`: the equations, top to bottom, each with the lane whose number it carries.
 * The GRU is written in PyTorch's form (torch.nn.GRU): h_t = (1 − z_t) ⊙ h̃_t + z_t ⊙ h_{t−1},
 * so z near 1 keeps the old state, and r acts after the recurrent matrix.
 */
const CELLS = {
  lstm: {
    name: "LSTM",
    lanes: [
      { id: "forget", sym: "f", of: ["gates", "forget"], kind: "gate", colour: C.forget, what: "forget gate" },
      { id: "input", sym: "i", of: ["gates", "input"], kind: "gate", colour: C.input, what: "input gate" },
      { id: "candidate", sym: "C\u0303", of: ["candidate"], kind: "signed", colour: C.candidate, what: "candidate" },
      { id: "cell", sym: "‖C‖", of: ["cell_norm"], kind: "norm", colour: C.cell, what: "memory C, its length" },
      { id: "output", sym: "o", of: ["gates", "output"], kind: "gate", colour: C.output, what: "output gate" },
      { id: "hidden", sym: "‖h‖", of: ["hidden_norm"], kind: "norm", colour: C.hidden, what: "output h, its length" },
    ],
    eqs: [
      { lane: "forget", tex: "f_t = σ(W_f·[h_{t−1}, x_t] + b_f)", say: "forget: near 1 keeps the memory, near 0 wipes it" },
      { lane: "input", tex: "i_t = σ(W_i·[h_{t−1}, x_t] + b_i)", say: "input: how much of the candidate is written" },
      { lane: "candidate", tex: "C\u0303_t = tanh(W_C·[h_{t−1}, x_t] + b_C)", say: "candidate: what this row would write" },
      { lane: "cell", tex: "C_t = f_t ⊙ C_{t−1} + i_t ⊙ C\u0303_t", say: "the memory: kept part plus written part" },
      { lane: "output", tex: "o_t = σ(W_o·[h_{t−1}, x_t] + b_o)", say: "output: how much of the memory shows" },
      { lane: "hidden", tex: "h_t = o_t ⊙ tanh(C_t)", say: "what the next layer and the answer read" },
    ],
    note: "σ is the logistic sigmoid (0 to 1), ⊙ multiplies unit by unit. A gate's number is its mean over the "
      + "units; ‖·‖ is the length of the whole vector.",
  },
  gru: {
    name: "GRU",
    lanes: [
      { id: "reset", sym: "r", of: ["gates", "reset"], kind: "gate", colour: C.reset, what: "reset gate" },
      { id: "update", sym: "z", of: ["gates", "update"], kind: "gate", colour: C.update, what: "update gate" },
      { id: "candidate", sym: "h\u0303", of: ["candidate"], kind: "signed", colour: C.candidate, what: "candidate" },
      { id: "hidden", sym: "‖h‖", of: ["hidden_norm"], kind: "norm", colour: C.hidden, what: "state h, its length" },
    ],
    eqs: [
      { lane: "reset", tex: "r_t = σ(W_r·[h_{t−1}, x_t] + b_r)", say: "reset: how much of the old state the candidate sees" },
      { lane: "update", tex: "z_t = σ(W_z·[h_{t−1}, x_t] + b_z)", say: "update: near 1 keeps the old state" },
      { lane: "candidate", tex: "h\u0303_t = tanh(W_{in}·x_t + b_{in} + r_t ⊙ (W_{hn}·h_{t−1} + b_{hn}))", say: "candidate: the proposed new state" },
      { lane: "hidden", tex: "h_t = (1 − z_t) ⊙ h\u0303_t + z_t ⊙ h_{t−1}", say: "the new state: a blend of candidate and old" },
    ],
    note: "Written as PyTorch computes it (torch.nn.GRU): z near 1 keeps the old state and near 0 takes the "
      + "candidate (some books swap z and 1 − z), and r multiplies after the recurrent matrix. σ is the logistic "
      + "sigmoid, ⊙ multiplies unit by unit; a gate's number is its mean over the units, ‖h‖ the state's length.",
  },
  rnn: {
    name: "RNN",
    lanes: [
      { id: "hidden", sym: "‖h‖", of: ["hidden_norm"], kind: "norm", colour: C.hidden, what: "state h, its length" },
    ],
    eqs: [
      { lane: "hidden", tex: "h_t = tanh(W_{ih}·x_t + b_{ih} + W_{hh}·h_{t−1} + b_{hh})", say: "no gates: every row rewrites the whole state" },
    ],
    note: "A plain RNN has no gates and no separate memory: all it keeps is h, squashed by tanh at every row. "
      + "‖h‖ is the length of the whole state vector.",
  },
};
const UNITS_LANE = { id: "units", sym: "8 units", kind: "units", what: "8 single units of h" };

/** "f_t = σ(W_f·x)" -> HTML with <var> letters and <sub> subscripts (static, trusted strings only). */
export function mathHTML(src) {
  return src.replace(/([A-Za-z]{2,})|([A-Za-z])(\u0303?)(?:_(?:\{([^}]*)\}|([A-Za-z0-9]+)))?/g,
    (_m, word, ch, tilde, braced, plain) => {
      if (word) return `<span class="fn">${word}</span>`;
      const sub = braced ?? plain;
      return `<var>${ch}${tilde}</var>${sub != null ? `<sub>${sub}</sub>` : ""}`;
    });
}

const fmt = (v, digits = 2) => (v < 0 ? "−" : "") + Math.abs(v).toFixed(digits); // a real minus sign
const niceMax = (m) => {
  const steps = [0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200, 300, 400, 500, 1000];
  return steps.find((s) => s >= m) ?? m;
};

export class ExplainView {
  constructor({ canvas, labels, caption, strip, section, architecture }) {
    Object.assign(this, { canvas, labels, caption, strip, section, architecture });
    canvas.width = GATE_W;
    canvas.height = 448;
    this.cell = null;
    this.cells = Array.from({ length: ROWS }, (_, r) => el("span", { class: "imp-cell", "data-row": String(r + 1) }));
    strip.replaceChildren(...this.cells);
    this.eqSlots = {};
  }

  /** The layout (lanes, label row, equations) for one kind of cell; rebuilt only when it changes. */
  setCell(cell, variant) {
    const spec = CELLS[cell] || CELLS.rnn;
    const key = `${cell}/${variant}`;
    if (this.key === key) return;
    this.key = key;
    this.cell = cell;
    this.spec = spec;
    const lanes = [...spec.lanes, UNITS_LANE];
    // Lane widths: 72 px per gauge for the LSTM's six, 96 for the GRU's four, 160 for the RNN's
    // one; the units take the rest.
    const laneW = spec.lanes.length === 1 ? 160 : Math.min(96, Math.floor((GATE_W * 2) / 3 / spec.lanes.length));
    this.lanes = lanes.map((l, i) => ({ ...l, w: i < spec.lanes.length ? laneW : GATE_W - laneW * spec.lanes.length }));
    let x = 0;
    for (const l of this.lanes) { l.x = x; x += l.w; }
    this.labels.style.setProperty("grid-template-columns", this.lanes.map((l) => `${l.w}fr`).join(" "));
    this.labelNodes = this.lanes.map((l) => {
      const range = el("small", { class: "lane-range" });
      const node = el("span", { class: "lane-label", style: { "--lane": l.colour || "currentColor" }, title: l.what },
        el("span", { class: "lane-sym", text: l.sym }), range);
      node._range = range;
      return node;
    });
    this.labels.replaceChildren(...this.labelNodes);
    // Equations: one row each, its number filled in as the scrubber moves.
    const eqs = this.section.querySelector(".eqs");
    this.eqSlots = {};
    eqs.replaceChildren(...spec.eqs.map((e) => {
      const lane = this.lanes.find((l) => l.id === e.lane);
      const value = el("span", { class: "eq-value", "data-testid": `eq-value-${e.lane}` });
      const meter = lane.kind === "gate" ? el("span", { class: "eq-meter", "aria-hidden": "true" }, el("span")) : null;
      const tex = el("span", { class: "eq-tex" });
      tex.innerHTML = mathHTML(e.tex);
      this.eqSlots[e.lane] = { value, meter };
      return el("div", { class: "eq", "data-lane": e.lane, style: { "--lane": lane.colour } },
        el("span", { class: "eq-swatch", "aria-hidden": "true" }), tex,
        el("span", { class: "eq-num" }, value, meter),
        el("span", { class: "eq-say", text: e.say }));
    }));
    this.unitsRow = el("div", { class: "eq eq-units", "data-lane": "units" },
      el("span", { class: "eq-swatch eq-swatch-units", "aria-hidden": "true" }),
      el("span", { class: "eq-tex", text: "" }), el("span", { class: "unit-chips", "data-testid": "unit-values" }));
    eqs.append(this.unitsRow);
    this.section.querySelector("[data-role=cell]").textContent = spec.name;
    this.section.querySelector("[data-role=note]").textContent = spec.note;
  }

  /** Values of a lane for the current explain block (an array of 28, or null). */
  static series(explain, lane) {
    let v = explain;
    for (const k of lane.of || []) v = v?.[k];
    return Array.isArray(v) && v.length === ROWS ? v.map(Number) : null;
  }

  /** Paint everything for rows 1..k read. `data` is the digit response (or null). */
  paint(data, k, { dark, accent, cellHint }) {
    const ex = data?.explain || null;
    this.setCell(ex?.cell || cellHint || "rnn", data?.model || cellHint);
    this.paintCanvas(ex, k, { dark, accent });
    this.paintStrip(data, ex, k);
    this.paintEquations(data, ex, k);
  }

  scaleFor(lane, values) {
    if (lane.kind === "gate") return { lo: 0, hi: 1, label: "0–1" };
    if (lane.kind === "units") return { lo: -1, hi: 1, label: "−1 to 1" };
    const m = values ? Math.max(...values.map(Math.abs)) : 0;
    if (lane.kind === "signed") { const a = niceMax(Math.max(0.05, m)); return { lo: -a, hi: a, label: `±${a}` }; }
    const a = niceMax(Math.max(1, m));
    return { lo: 0, hi: a, label: `0–${a}` };
  }

  paintCanvas(ex, k, { dark, accent }) {
    const g = this.canvas.getContext("2d");
    const W = this.canvas.width, H = this.canvas.height, rowH = H / ROWS;
    g.clearRect(0, 0, W, H);
    const grid = dark ? "rgba(255,255,255,0.10)" : "rgba(22,26,39,0.10)";
    const laneBg = dark ? ["#1c202b", "#202532"] : ["#f8f9fc", "#f0f2f8"];
    const y = (r) => (r + 0.5) * rowH;
    const summary = [];
    this.lanes.forEach((lane, i) => {
      g.fillStyle = laneBg[i % 2];
      g.fillRect(lane.x, 0, lane.w - 2, H);
      const pad = 6;
      const x0 = lane.x + pad, x1 = lane.x + lane.w - 2 - pad;
      const unitsSeries = lane.kind === "units" ? (ex?.units || []).slice(0, 8) : null;
      const values = lane.kind === "units" ? null : (ex ? ExplainView.series(ex, lane) : null);
      const sc = this.scaleFor(lane, values);
      const xOf = (v) => x0 + ((Math.min(sc.hi, Math.max(sc.lo, v)) - sc.lo) / (sc.hi - sc.lo)) * (x1 - x0);
      // Guides: 0.5 for gates, 0 for signed values and units.
      g.strokeStyle = grid;
      g.lineWidth = 1;
      const guide = lane.kind === "gate" ? 0.5 : lane.kind === "norm" ? null : 0;
      if (guide != null) { g.beginPath(); g.moveTo(xOf(guide), 0); g.lineTo(xOf(guide), H); g.stroke(); }
      // Norms and the candidate scale to the drawing: no range before there is one.
      this.labelNodes[i]._range.textContent = ex || lane.kind === "gate" || lane.kind === "units" ? sc.label : "\u00a0";
      if (!ex) return;
      const trace = (vals, colour, width, fill) => {
        g.strokeStyle = colour;
        g.lineWidth = width;
        g.lineJoin = "round";
        if (fill) {
          const base = xOf(lane.kind === "signed" ? 0 : sc.lo);
          g.beginPath();
          g.moveTo(base, y(0));
          vals.forEach((v, r) => g.lineTo(xOf(v), y(r)));
          g.lineTo(base, y(ROWS - 1));
          g.closePath();
          g.globalAlpha = 0.16;
          g.fillStyle = colour;
          g.fill();
          g.globalAlpha = 1;
        }
        g.beginPath();
        vals.forEach((v, r) => (r ? g.lineTo(xOf(v), y(r)) : g.moveTo(xOf(v), y(r))));
        g.stroke();
      };
      if (unitsSeries) {
        unitsSeries.forEach((u, j) => {
          if (Array.isArray(u.values) && u.values.length === ROWS) trace(u.values.map(Number), UNIT_COLOURS[j % 8], 2, false);
        });
      } else if (values) {
        trace(values, lane.colour, 3.5, true);
        if (k >= 1) summary.push(`${lane.what} ${fmt(values[k - 1])}`);
      }
      // The row being read: a dot on each trace.
      if (k >= 1) {
        const dots = unitsSeries ? unitsSeries.map((u, j) => [Number(u.values?.[k - 1]), UNIT_COLOURS[j % 8], 4])
          : values ? [[values[k - 1], lane.colour, 7]] : [];
        for (const [v, colour, r] of dots) {
          if (!Number.isFinite(v)) continue;
          g.fillStyle = colour;
          g.strokeStyle = dark ? "#0e1016" : "#ffffff";
          g.lineWidth = 2;
          g.beginPath();
          g.arc(xOf(v), y(k - 1), r, 0, Math.PI * 2);
          g.fill();
          g.stroke();
        }
      }
    });
    if (ex && k < ROWS) {
      g.fillStyle = dark ? "rgba(20, 22, 34, 0.6)" : "rgba(244, 245, 251, 0.62)";
      g.fillRect(0, k * rowH, W, H - k * rowH);
    }
    if (ex && k >= 1) {
      g.strokeStyle = accent;
      g.lineWidth = 4;
      g.strokeRect(2, (k - 1) * rowH - 1, W - 4, rowH + 1);
    }
    const name = this.spec.name;
    const where = ex ? ` (layer ${ex.layer} of ${ex.layers})` : "";
    this.caption.textContent = `Inside the ${name}${where}, row by row`;
    this.canvas.setAttribute("aria-label", !ex ? `Inside the ${name}, row by row: nothing read yet`
      : `Inside the ${name}${where}: ${this.lanes.map((l) => l.what).join(", ")}, one trace each, row by row`
        + (summary.length ? `; at row ${k}: ${summary.join(", ")}` : ""));
  }

  paintStrip(data, ex, k) {
    const imp = importanceOf(data);
    this.cells.forEach((cell, r) => {
      const v = imp ? imp.values[r] : 0;
      // Shaded relative to the row that mattered most, but against a floor: when no row
      // matters much, the strip stays faint instead of amplifying noise.
      const t = imp ? Math.min(1, Math.abs(v) / Math.max(imp.peak, imp.floor)) : 0;
      cell.style.setProperty("--v", t.toFixed(3));
      cell.classList.toggle("is-neg", v < 0);
      cell.classList.toggle("is-current", Boolean(imp) && r === k - 1);
      cell.classList.toggle("is-unread", Boolean(imp) && r >= k);
      cell.title = imp ? `row ${r + 1}: ${imp.say(r)}` : "";
    });
    if (!imp) { this.strip.setAttribute("aria-label", "How much each row mattered (none yet)"); return; }
    const order = imp.values.map((v, r) => [v, r]).sort((a, b) => b[0] - a[0]).filter(([v]) => v >= imp.floor / 4).slice(0, 3);
    this.strip.setAttribute("aria-label", order.length
      ? `Rows that mattered most for the ${data.digit}: ${order.map(([, r]) => `row ${r + 1} (${imp.say(r)})`).join("; ")}`
      : `No single row mattered much for the ${data.digit}: ${imp.say(imp.top)} at most`);
  }

  paintEquations(data, ex, k) {
    this.section.hidden = !ex;
    if (!ex) return;
    const row = k >= 1 ? k - 1 : null;
    this.section.querySelector("[data-role=row]").textContent = row == null ? "0 (nothing read yet)" : `${k} of ${ROWS}`;
    const width = this.architecture(data.model)?.hidden_size;
    this.section.querySelector("[data-role=scope]").textContent = `Layer ${ex.layer} of ${ex.layers}, the one the answer `
      + `is read from${width ? `, ${width} units` : ""}. Numbers for the row being read; move the slider or press Play.`;
    for (const [id, slot] of Object.entries(this.eqSlots)) {
      const lane = this.lanes.find((l) => l.id === id);
      const values = ExplainView.series(ex, lane);
      const v = values && row != null ? values[row] : null;
      const number = v == null ? "–" : fmt(v, lane.kind === "norm" ? 1 : 2);
      if (lane.kind === "norm") slot.value.innerHTML = `${mathHTML(`‖${lane.sym.slice(1, -1)}_t‖`)} = ${number}`;
      else slot.value.textContent = `mean ${number}`;
      if (slot.meter) slot.meter.firstChild.style.width = `${v == null ? 0 : Math.round(Math.min(1, Math.max(0, v)) * 100)}%`;
    }
    const units = (ex.units || []).slice(0, 8);
    this.unitsRow.querySelector(".eq-tex").innerHTML = mathHTML("h_t") + "<span> of 8 units</span>";
    this.unitsRow.querySelector(".unit-chips").replaceChildren(...units.map((u, j) => el("span",
      { class: "unit-chip", style: { "--lane": UNIT_COLOURS[j % 8] }, title: `unit ${u.unit}` },
      el("span", { class: "unit-id", text: `#${u.unit}` }), " ",
      row == null ? "–" : fmt(Number(u.values?.[row]), 2))));
    const imp = importanceOf(data);
    const matter = this.section.querySelector("[data-role=matter]");
    matter.textContent = imp && row != null
      ? `Row ${k}: ${imp.say(row)}. The row that mattered most: row ${imp.top + 1}.` : "";
  }

  /** Text for the slider's aria-valuetext: the gates' numbers at row k. */
  spoken(data, k) {
    const ex = data?.explain;
    if (!ex || k < 1) return "";
    return this.spec.lanes.map((l) => {
      const v = ExplainView.series(ex, l)?.[k - 1];
      return v == null ? null : `${l.what} ${fmt(v, l.kind === "norm" ? 1 : 2)}`;
    }).filter(Boolean).join(", ");
  }
}

/** A probability with enough decimals to tell 99.992% from 99.97%. */
export function pctFine(p) {
  const q = Math.min(1, Math.max(0, p));
  const decimals = q > 0.99 ? Math.min(4, Math.max(1, Math.ceil(-Math.log10(Math.max(1 - q, 1e-7))) - 1)) : q >= 0.1 ? 0 : 1;
  return `${(q * 100).toFixed(decimals)}%`;
}

/**
 * Row importance by occlusion: how much the answer suffers when that row alone is blanked.
 * In log-odds log(p / (1 - p)) when the server sends them (`row_importance_log_odds`): a sure
 * answer (p = 0.9999) barely moves its probability, but its odds still fall 3-fold when a row
 * that matters goes. Otherwise the drop in probability. Null when the answer has neither.
 */
export function importanceOf(data) {
  const ex = data?.explain;
  const ok = (a) => Array.isArray(a) && a.length === ROWS;
  if (!ex || !(ok(ex.row_importance_log_odds) || ok(ex.row_importance))) return null;
  const logOdds = ok(ex.row_importance_log_odds);
  const values = (logOdds ? ex.row_importance_log_odds : ex.row_importance).map(Number);
  const drops = ok(ex.row_importance) ? ex.row_importance.map(Number) : null;
  const top = values.indexOf(Math.max(...values));
  const digit = data.digit;
  const p = typeof data.confidence === "number" ? data.confidence : null;
  const say = (r) => {
    const v = values[r];
    const after = p != null && drops ? ` (p(${digit}) ${pctFine(p)} → ${pctFine(p - drops[r])})` : "";
    if (logOdds) {
      if (Math.abs(v) < 0.01) return `blanking it changes nothing`;
      const fold = Math.exp(Math.abs(v));
      return fold < 1.1 ? `blanking it barely changes the odds of a ${digit}`
        : `blanking it ${v > 0 ? "cuts" : "raises"} the odds of a ${digit} ${fold.toFixed(1)}-fold${after}`;
    }
    const points = Math.abs(v) * 100;
    if (points < 0.1) return `blanking it changes p(${digit}) by under 0.1 points`;
    return `blanking it ${v > 0 ? "lowers" : "raises"} p(${digit}) by ${points >= 0.95 ? points.toFixed(0) : points.toFixed(1)} points`;
  };
  // Floors: a 1.6-fold change of the odds, or 0.1 points of probability.
  return { values, top, peak: Math.max(0, ...values.map(Math.abs)), floor: logOdds ? 0.5 : 0.001, say, logOdds };
}
