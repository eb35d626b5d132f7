// rnnlab demo page: wires the four panels to the service. No build step, no CDN:
// plain ES modules served from /static.

import { getJSON } from "./lib/api.js";
import { initAutoencoder } from "./lib/autoencoder.js";
import { initCaptcha } from "./lib/captcha.js";
import { initDigits } from "./lib/digits.js";
import { initNumber } from "./lib/number.js";
import { SketchPad } from "./lib/sketch.js";
import { $, label, markUnavailable } from "./lib/ui.js";

const announcer = $("#announcer");
let announceTimer = null;
/** Speak `text` through the polite live region (debounced: live drawing must not chatter). */
function announce(text) {
  clearTimeout(announceTimer);
  announceTimer = setTimeout(() => { announcer.textContent = text; }, 150);
}

/** GET /models -> {device, defaults: {task: variant}, models: {task: {variant: manifest}}}. */
async function loadCatalog() {
  const body = await getJSON("/models");
  const models = {};
  for (const m of body.models || []) (models[m.task] ||= {})[m.variant] = m;
  return { device: body.device || "?", defaults: body.defaults || {}, models };
}

function showStatus(catalog, error) {
  const status = $("#server-status");
  if (error) {
    status.dataset.tone = "down";
    status.textContent = "Server unreachable";
    status.title = error.message;
    return;
  }
  const summary = Object.entries(catalog.models)
    .map(([task, variants]) => `${task}: ${Object.keys(variants).map(label).join(", ")}`).join("; ");
  const count = Object.values(catalog.models).reduce((n, v) => n + Object.keys(v).length, 0);
  status.dataset.tone = count ? "up" : "warn";
  status.textContent = count ? `Online · ${count} model${count === 1 ? "" : "s"} · ${catalog.device}` : "Online · no models loaded";
  status.title = summary || "no models loaded";
}

async function main() {
  const pad = new SketchPad($("[data-testid=digit-canvas]"));
  const panels = {
    digits: $("#digits"), number: $("#number"), captcha: $("#captcha"), autoencoder: $("#autoencoder"),
  };
  let catalog;
  try {
    catalog = await loadCatalog();
  } catch (err) {
    showStatus(null, err);
    for (const panel of Object.values(panels)) markUnavailable(panel, `Could not reach the server: ${err.message}`);
    document.body.dataset.ready = "true";
    return;
  }
  showStatus(catalog);
  const shared = { pad, catalog, announce };
  // Each panel starts on its own: one that fails to start must not take the others down.
  for (const [name, init] of [["digits", initDigits], ["number", initNumber], ["captcha", initCaptcha],
    ["autoencoder", initAutoencoder]]) {
    try {
      init({ ...shared, panel: panels[name] });
    } catch (err) {
      console.error(`the ${name} panel failed to start`, err);
      markUnavailable(panels[name], `This panel failed to start: ${err.message}`);
    }
  }
  document.body.dataset.ready = "true";
}

main();
