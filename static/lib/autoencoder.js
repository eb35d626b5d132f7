// The autoencoder panel: the current drawing squeezed through 32 numbers and rebuilt, and a
// morph between two drawings (decoded points on the line between their codes).

import { ApiError, Throttle, postFiles } from "./api.js";
import { paintThumbnail, strokesToBlob } from "./sketch.js";
import { exampleStrokes } from "./strokes.js";
import {
  $, describeTypicality, el, markUnavailable, prefersReducedMotion, setPanelState, showError,
} from "./ui.js";

export const AE_TASKS = ["autoencoder", "ae"];

export function initAutoencoder({ panel, pad, catalog, announce }) {
  const task = AE_TASKS.find((t) => Object.keys(catalog.models[t] || {}).length);
  if (!task) {
    markUnavailable(panel, "No autoencoder model is loaded on this server, so reconstructions and morphs are off.");
    return;
  }
  const els = {
    input: $("#ae-input", panel),
    recon: $("[data-testid=ae-reconstruction]", panel),
    stage: $("#ae-stage", panel),
    stats: $("#ae-stats", panel),
    latent: $("#ae-latent", panel),
    error: $("#ae-error", panel),
    morphError: $("#morph-error", panel),
    steps: $("#morph-steps", panel),
    stepsOut: $("#morph-steps-out", panel),
    run: $("[data-testid=ae-morph]", panel),
    frame: $("#morph-frame", panel),
    player: $("#morph-player", panel),
    slider: $("#morph-slider", panel),
    play: $("#morph-play", panel),
    strip: $("#morph-strip", panel),
  };

  // ---- reconstruction of the pad's drawing ----------------------------------------------------
  const latentBars = Array.from({ length: 32 }, (_, i) => {
    const bar = el("span", { class: "latent-bar", title: `z${i}` });
    els.latent.append(bar);
    return bar;
  });
  let version = 0, shown = -1, reconError = null;

  function paintLatent(z) {
    const peak = Math.max(1e-6, ...z.map((v) => Math.abs(v)));
    z.forEach((v, i) => {
      const bar = latentBars[i];
      if (!bar) return;
      bar.style.setProperty("--v", (v / peak).toFixed(4));
      bar.title = `z${i} = ${v.toFixed(3)}`;
    });
    els.latent.setAttribute("aria-label",
      `The 32 code values: ${z.map((v) => v.toFixed(2)).join(", ")}`);
  }

  async function reconstruct() {
    if (pad.isEmpty) return;
    const asked = version;
    try {
      const data = await postFiles("/predict/reconstruct", { file: await pad.toBlob() });
      if (pad.isEmpty || asked < shown) return;
      shown = asked;
      reconError = null;
      showError(els.error, null);
      els.input.src = data.input;
      els.recon.src = data.reconstruction;
      els.stage.dataset.empty = "false";
      if (Array.isArray(data.latent)) paintLatent(data.latent);
      const typ = describeTypicality(data.typicality);
      els.stats.replaceChildren(
        typeof data.mse === "number"
          ? el("span", { class: "mse", title: "mean squared error per pixel, pixels in [0, 1]" },
            `Reconstruction error ${data.mse.toFixed(4)}`) : "",
        typ ? el("span", { class: `chip ${typ.verdict ? "chip-ok" : "chip-warn"}`, "data-testid": "ae-typicality",
          title: typ.detail }, `${typ.text} · ${typ.detail}`) : "");
    } catch (err) {
      if (asked < shown) return;
      reconError = err;
      if (err instanceof ApiError && err.missingEndpoint) {
        markUnavailable(panel, "This server lists an autoencoder but has no /predict/reconstruct endpoint.");
        throttle.cancel();
        return;
      }
      showError(els.error, err, "Could not rebuild this drawing.");
    }
  }

  function showEmpty() {
    els.input.removeAttribute("src");
    els.recon.removeAttribute("src");
    els.stage.dataset.empty = "true";
    els.stats.replaceChildren();
    latentBars.forEach((b) => b.style.setProperty("--v", "0"));
    showError(els.error, null);
    reconError = null;
  }

  const throttle = new Throttle(reconstruct, {
    minInterval: 400,
    onBusy: (busy) => {
      if (panel.dataset.state === "unavailable") return;
      setPanelState(panel, busy ? "busy" : pad.isEmpty ? "empty" : reconError ? "error" : "ready");
    },
  });
  pad.addEventListener("change", (e) => {
    if (panel.dataset.state === "unavailable") return;
    version += 1;
    if (pad.isEmpty) { throttle.cancel(); showEmpty(); setPanelState(panel, "empty"); return; }
    if (e.detail.final) throttle.trigger(); // rebuild when a stroke ends, not on every move
  });

  // ---- morph -------------------------------------------------------------------------------------
  const slots = {};
  for (const [name, initial] of [["a", 3], ["b", 8]]) {
    const root = $(`#morph-slot-${name}`, panel);
    const slot = { root, thumb: $("canvas", root), select: $("select", root), strokes: exampleStrokes(initial) };
    for (let d = 0; d <= 9; d++) slot.select.append(el("option", { value: String(d), text: `Example ${d}` }));
    slot.select.append(el("option", { value: "mine", text: "My drawing" }));
    slot.select.value = slot.choice = String(initial);
    slot.select.addEventListener("change", () => {
      if (slot.select.value === "mine") { useMine(slot); return; }
      slot.choice = slot.select.value;
      slot.strokes = exampleStrokes(Number(slot.choice));
      paintThumbnail(slot.thumb, slot.strokes);
    });
    $("button", root).addEventListener("click", () => useMine(slot));
    slots[name] = slot;
    requestAnimationFrame(() => paintThumbnail(slot.thumb, slot.strokes));
  }

  function useMine(slot) {
    if (pad.isEmpty) {
      showError(els.morphError, new Error("Draw a digit on the pad first, then store it here."), "Nothing to store.");
      slot.select.value = slot.choice; // keep what the slot holds
      return;
    }
    showError(els.morphError, null);
    slot.strokes = pad.snapshot();
    slot.select.value = slot.choice = "mine";
    paintThumbnail(slot.thumb, slot.strokes);
  }

  els.steps.addEventListener("input", () => { els.stepsOut.textContent = els.steps.value; });
  els.stepsOut.textContent = els.steps.value;

  const player = { frames: [], index: 0, timer: null };
  function showFrame(i) {
    player.index = i;
    els.frame.src = player.frames[i];
    els.frame.alt = `morph frame ${i + 1} of ${player.frames.length}`;
    els.slider.value = String(i + 1);
    els.slider.setAttribute("aria-valuetext", `frame ${i + 1} of ${player.frames.length}`);
    [...els.strip.children].forEach((img, j) => img.classList.toggle("is-current", j === i));
  }
  function stop() {
    clearInterval(player.timer);
    player.timer = null;
    els.play.textContent = "Play";
    els.play.setAttribute("aria-pressed", "false");
  }
  function play() {
    if (!player.frames.length) return;
    if (player.index >= player.frames.length - 1) showFrame(0);
    els.play.textContent = "Pause";
    els.play.setAttribute("aria-pressed", "true");
    player.timer = setInterval(() => {
      if (player.index >= player.frames.length - 1) { stop(); return; }
      showFrame(player.index + 1);
    }, 160);
  }
  els.play.addEventListener("click", () => (player.timer ? stop() : play()));
  els.slider.addEventListener("input", () => { stop(); showFrame(Number(els.slider.value) - 1); });

  els.run.addEventListener("click", async () => {
    stop();
    els.run.disabled = true;
    panel.setAttribute("aria-busy", "true");
    try {
      const [a, b] = await Promise.all([strokesToBlob(slots.a.strokes), strokesToBlob(slots.b.strokes)]);
      const data = await postFiles(`/predict/interpolate?steps=${Number(els.steps.value)}`, { a, b });
      const frames = Array.isArray(data.frames) ? data.frames : [];
      if (!frames.length) throw new ApiError(0, "no_frames", "The server sent no frames.");
      showError(els.morphError, null);
      player.frames = frames;
      els.strip.replaceChildren(...frames.map((src, i) => el("img", {
        src, alt: "", class: "strip-frame", onclick: () => { stop(); showFrame(i); } })));
      els.slider.max = String(frames.length);
      els.player.dataset.empty = "false";
      showFrame(0);
      announce(`Morph ready: ${frames.length} frames.`);
      if (!prefersReducedMotion()) play();
    } catch (err) {
      if (err instanceof ApiError && err.missingEndpoint) {
        showError(els.morphError, err, "This server has no /predict/interpolate endpoint.");
      } else showError(els.morphError, err, "Could not morph these drawings.");
    } finally {
      els.run.disabled = false;
      panel.removeAttribute("aria-busy");
    }
  });

  showEmpty();
  setPanelState(panel, "empty");
  if (!pad.isEmpty) { version += 1; throttle.trigger(); }
}
