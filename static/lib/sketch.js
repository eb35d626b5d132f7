// A drawing pad on a <canvas>: mouse, touch and pen through Pointer Events.
// Strokes are kept in unit coordinates ([0, 1] x [0, 1]), so the pad can be resized (phone
// rotation, layout changes, devicePixelRatio) without losing the drawing, and the export is
// rendered at a fixed size whatever the screen.

export const EXPORT_SIZE = 280; // px; with INK_RATIO this is the 22 px pen of testkit/drawing.py
export const INK_RATIO = 22 / 280; // pen width as a fraction of the canvas side

export function drawStrokes(ctx, strokes, size, { ink = "#111827", ratio = INK_RATIO } = {}) {
  ctx.save();
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.strokeStyle = ink;
  ctx.fillStyle = ink;
  ctx.lineWidth = ratio * size;
  for (const stroke of strokes) {
    if (!stroke.length) continue;
    if (stroke.length === 1) { // a tap: a dot as wide as the pen
      ctx.beginPath();
      ctx.arc(stroke[0][0] * size, stroke[0][1] * size, ctx.lineWidth / 2, 0, Math.PI * 2);
      ctx.fill();
      continue;
    }
    ctx.beginPath();
    ctx.moveTo(stroke[0][0] * size, stroke[0][1] * size);
    for (let i = 1; i < stroke.length; i++) ctx.lineTo(stroke[i][0] * size, stroke[i][1] * size);
    ctx.stroke();
  }
  ctx.restore();
}

/**
 * Strokes -> PNG Blob: dark ink on a transparent background, EXPORT_SIZE square. The
 * service's preprocessing (models/preprocess.py) reads the ink from the alpha channel.
 */
export function strokesToBlob(strokes, size = EXPORT_SIZE) {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = size;
  drawStrokes(canvas.getContext("2d"), strokes, size, { ink: "#000" });
  return new Promise((resolve, reject) => canvas.toBlob(
    (blob) => (blob ? resolve(blob) : reject(new Error("canvas export failed"))), "image/png"));
}

/** A small preview of strokes on a canvas element (thumbnails of stored drawings). */
export function paintThumbnail(canvas, strokes) {
  const dpr = window.devicePixelRatio || 1;
  const side = canvas.clientWidth || canvas.width;
  canvas.width = canvas.height = Math.round(side * dpr);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  drawStrokes(ctx, strokes, canvas.width);
}

export class SketchPad extends EventTarget {
  constructor(canvas) {
    super();
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.strokes = [];
    this.active = null; // the stroke being drawn, with its pointerId
    this.#bind();
    new ResizeObserver(() => this.#resize()).observe(canvas);
    this.#resize();
  }

  get isEmpty() { return this.strokes.length === 0; }

  clear() { this.#set([]); }
  undo() { if (this.strokes.length) this.#set(this.strokes.slice(0, -1)); }
  load(strokes) { this.#set(strokes.map((s) => s.map((p) => [p[0], p[1]]))); }
  snapshot() { return this.strokes.map((s) => s.map((p) => [p[0], p[1]])); }
  toBlob() { return strokesToBlob(this.strokes); }

  #set(strokes) {
    this.active = null;
    this.strokes = strokes;
    this.#redraw();
    this.#emit("change", { final: true });
  }

  #emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  #resize() {
    const dpr = window.devicePixelRatio || 1;
    const side = Math.max(1, Math.round(this.canvas.clientWidth * dpr));
    if (this.canvas.width !== side || this.canvas.height !== side) {
      this.canvas.width = this.canvas.height = side;
      this.#redraw();
    }
  }

  #redraw() {
    const { ctx, canvas } = this;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    drawStrokes(ctx, this.strokes, canvas.width, { ink: getComputedStyle(canvas).color || "#111827" });
  }

  #point(event) {
    const rect = this.canvas.getBoundingClientRect();
    const clamp = (v) => Math.min(1, Math.max(0, v));
    return [clamp((event.clientX - rect.left) / rect.width), clamp((event.clientY - rect.top) / rect.height)];
  }

  #bind() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => {
      if (e.button !== 0 || this.active) return; // one finger/pen/mouse at a time
      e.preventDefault();
      c.setPointerCapture(e.pointerId);
      this.active = { id: e.pointerId, points: [this.#point(e)] };
      this.strokes.push(this.active.points);
      this.#redraw();
      this.#emit("change", { final: false });
    });
    c.addEventListener("pointermove", (e) => {
      if (!this.active || e.pointerId !== this.active.id) return;
      // Coalesced events carry every sample between frames: smooth curves on fast moves.
      const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [];
      for (const ev of events.length ? events : [e]) this.active.points.push(this.#point(ev));
      this.#redraw();
      this.#emit("change", { final: false });
    });
    const end = (e) => {
      if (!this.active || e.pointerId !== this.active.id) return;
      this.active = null;
      this.#emit("change", { final: true });
    };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
    c.addEventListener("lostpointercapture", end);
    // touch-action: none already stops scrolling; cancelling the touches too keeps the browser
    // from turning a quick stroke into a fling gesture, which would swallow the next tap
    // (e.g. on Clear) as "stop the fling".
    for (const type of ["touchstart", "touchmove"]) c.addEventListener(type, (e) => e.preventDefault(), { passive: false });
    // Keyboard: the pad is focusable; Ctrl/Cmd+Z undoes, Delete/Backspace/Escape clears.
    c.addEventListener("keydown", (e) => {
      if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") { e.preventDefault(); this.undo(); }
      else if (["Delete", "Backspace", "Escape"].includes(e.key) && !this.isEmpty) { e.preventDefault(); this.clear(); }
    });
  }
}
