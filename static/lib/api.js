// Talking to the service. Every failure becomes an ApiError carrying the server's own
// {"error": {"code", "message"}} when there is one, so panels can show the real reason.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status; // 0 = no answer (network down / server stopped)
    this.code = code;
  }
  /** The route does not exist on this server (an older build, or the feature is not wired). */
  get missingEndpoint() { return this.status === 404 || this.status === 405; }
  /** The route exists but its model is not loaded (503 model_unavailable). */
  get modelUnavailable() { return this.status === 503 || this.code === "model_unavailable"; }
}

async function parse(response) {
  let body = null;
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) {
    try { body = await response.json(); } catch { body = null; }
  }
  if (response.ok) return body;
  const err = body && body.error;
  if (err && typeof err.message === "string") throw new ApiError(response.status, err.code || "error", err.message);
  throw new ApiError(response.status, "http_" + response.status, `${response.status} ${response.statusText || "error"}`);
}

export async function request(path, { method = "GET", body, signal } = {}) {
  let response;
  try {
    response = await fetch(path, { method, body, signal, headers: { Accept: "application/json" } });
  } catch (exc) {
    if (exc && exc.name === "AbortError") throw exc;
    throw new ApiError(0, "unreachable", "The server did not answer. Is it still running?");
  }
  return parse(response);
}

export const getJSON = (path, opts) => request(path, opts);

/** POST multipart/form-data: `files` maps field name -> Blob. */
export function postFiles(path, files, opts = {}) {
  const form = new FormData();
  for (const [name, blob] of Object.entries(files)) form.append(name, blob, `${name}.png`);
  return request(path, { ...opts, method: "POST", body: form });
}

/** A data: URL -> Blob, without a network round trip. */
export function dataUrlToBlob(url) {
  const [header, data] = url.split(",", 2);
  const mime = (header.match(/^data:([^;,]+)/) || [])[1] || "application/octet-stream";
  const bytes = atob(data);
  const buf = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) buf[i] = bytes.charCodeAt(i);
  return new Blob([buf], { type: mime });
}

/**
 * Runs an async job with at most one in flight and at least `minInterval` ms between starts.
 * Triggers that arrive meanwhile collapse into one follow-up run with the latest argument,
 * so live drawing never queues a storm of requests. `merge(prev, next)` combines pending args.
 */
export class Throttle {
  constructor(job, { minInterval = 250, merge = (_prev, next) => next, onBusy = () => {} } = {}) {
    Object.assign(this, { job, minInterval, merge, onBusy });
    this.inFlight = false;
    this.pending = undefined;
    this.hasPending = false;
    this.timer = null;
    this.lastStart = -Infinity;
  }
  get busy() { return this.inFlight || this.hasPending; }
  trigger(arg) {
    this.pending = this.hasPending ? this.merge(this.pending, arg) : arg;
    this.hasPending = true;
    this.onBusy(true);
    this.#schedule();
  }
  cancel() {
    this.hasPending = false;
    this.pending = undefined;
    clearTimeout(this.timer);
    this.timer = null;
    if (!this.inFlight) this.onBusy(false);
  }
  #schedule() {
    if (this.inFlight || this.timer) return;
    const wait = Math.max(0, this.lastStart + this.minInterval - performance.now());
    this.timer = setTimeout(() => { this.timer = null; this.#run(); }, wait);
  }
  async #run() {
    if (!this.hasPending) return;
    const arg = this.pending;
    this.hasPending = false;
    this.pending = undefined;
    this.inFlight = true;
    this.lastStart = performance.now();
    try {
      await this.job(arg);
    } finally {
      this.inFlight = false;
      if (this.hasPending) this.#schedule();
      else this.onBusy(false);
    }
  }
}
