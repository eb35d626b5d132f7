// A drawing pad on a <canvas>: mouse, touch and pen through Pointer Events.
// Strokes are kept in units of the canvas's height (y in [0, 1], x in [0, width / height]; for
// the square digit pad that is the unit square), so the pad can be resized (phone rotation,
// layout changes, devicePixelRatio) without losing or distorting the drawing, and the export is
// rendered at a fixed height whatever the screen. A wide pad (the number pad) works the same
// way: its export is EXPORT_SIZE tall and as wide as the pad's shape, the pen INK_RATIO of the
// height, as testkit/drawing.py's drawn_number().

export const EXPORT_SIZE = 280; // px tall; with INK_RATIO this is the 22 px pen of testkit/drawing.py
export const INK_RATIO = 22 / 280; // pen width as a fraction of the canvas's height (its side, when square)

/** Draw `strokes` (canvas-height units) on `ctx`, where `size` px is the canvas's height. */
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

/** The export's pixel size for a pad of shape `aspect` (width / height): `size` tall. */
export function exportSize(aspect = 1, size = EXPORT_SIZE) {
  return { width: Math.max(1, Math.round(size * aspect)), height: size };
}

/**
 * Strokes -> PNG Blob: dark ink on a transparent background, `size` px tall and `aspect` times
 * as wide (EXPORT_SIZE square by default). The service's preprocessing (models/preprocess.py)
 * reads the ink from the alpha channel.
 */
export function strokesToBlob(strokes, size = EXPORT_SIZE, aspect = 1) {
  const canvas = document.createElement("canvas");
  const box = exportSize(aspect, size);
  canvas.width = box.width;
  canvas.height = box.height;
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
    this.aspect = 1; // width / height of the drawing area (1 for the square digit pad)
    this.#bind();
    new ResizeObserver(() => this.#resize()).observe(canvas);
    this.#resize();
  }

  get isEmpty() { return this.strokes.length === 0; }

  clear() { this.#set([]); }
  undo() { if (this.strokes.length) this.#set(this.strokes.slice(0, -1)); }
  load(strokes) { this.#set(strokes.map((s) => s.map((p) => [p[0], p[1]]))); }
  snapshot() { return this.strokes.map((s) => s.map((p) => [p[0], p[1]])); }
  /** The PNG export's {width, height} in px: EXPORT_SIZE tall, the pad's shape. */
  get exportSize() { return exportSize(this.aspect); }
  toBlob() { return strokesToBlob(this.strokes, EXPORT_SIZE, this.aspect); }

  #set(strokes) {
    this.active = null;
    this.strokes = strokes;
    this.#redraw();
    this.#emit("change", { final: true });
  }

  #emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  #resize() {
    const dpr = window.devicePixelRatio || 1;
    const { clientWidth, clientHeight } = this.canvas;
    if (clientWidth > 0 && clientHeight > 0) this.aspect = clientWidth / clientHeight; // hidden: keep the last shape
    const width = Math.max(1, Math.round(clientWidth * dpr));
    const height = Math.max(1, Math.round(width / this.aspect)); // square pad: height === width, as before
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
      this.#redraw();
      this.#emit("resize", { aspect: this.aspect });
    }
  }

  #redraw() {
    const { ctx, canvas } = this;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    drawStrokes(ctx, this.strokes, canvas.height, { ink: getComputedStyle(canvas).color || "#111827" });
  }

  /** A pointer position in canvas-height units: y in [0, 1], x in [0, aspect] (the share of the
   * width, times the drawing area's shape: for the square pad, the unit square as before). */
  #point(event) {
    const rect = this.canvas.getBoundingClientRect();
    const clamp = (v) => Math.min(1, Math.max(0, v));
    return [clamp((event.clientX - rect.left) / rect.width) * this.aspect, clamp((event.clientY - rect.top) / rect.height)];
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
