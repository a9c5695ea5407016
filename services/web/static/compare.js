// Before/after compare: the original and the swapped picture (or video) one over the other, split by a line the
// person moves: drag anywhere on it (mouse, touch, pen), or focus the line and use the arrow keys (Shift: bigger
// steps, Home/End). Photos zoom (wheel, double-click, the +/− buttons or keys) and pan by dragging once zoomed;
// videos play together from one bar (play/pause, seek).
//
// Markup: a container marked `data-compare` holding media marked `data-side="before"` and `data-side="after"` (an
// <img> and/or a <video> each; the page shows one of each kind at a time with `hidden`). A before video whose
// `data-offset` is set (seconds) is that much ahead: the swapped video is a part of it starting there. On import every such
// container is turned into a compare view; the media keep their ids, so the page still sets their `src`.
import { el } from "/static/common.js";

const MAX_ZOOM = 8;
const STEP = 2; // % per arrow key
const BIG_STEP = 10;

const clamp = (value, low, high) => Math.min(high, Math.max(low, value));
const clock = (s) => (isFinite(s) ? `${Math.floor(s / 60)}:${String(Math.floor(s % 60)).padStart(2, "0")}` : "–");

export function compare(container) {
  for (const figure of container.querySelectorAll("figure")) { // the captions stay, under their side
    figure.classList.add(figure.querySelector("[data-side=before]") ? "compare-caption-before" : "compare-caption-after");
  }
  const media = [...container.querySelectorAll("[data-side]")];
  const before = el("div", { class: "compare-layer before" }, ...media.filter((m) => m.dataset.side === "before"));
  const after = el("div", { class: "compare-layer after" }, ...media.filter((m) => m.dataset.side === "after"));
  const line = el("div", { class: "compare-line", role: "slider", tabindex: "0", "aria-valuemin": "0",
    "aria-valuemax": "100", "aria-label": "move the line between the original (left) and the swapped (right)" },
  el("span", { class: "compare-knob", "aria-hidden": "true" }, "◂▸"));
  const stage = el("div", { class: "compare-stage" }, before, after, line,
    el("span", { class: "compare-tag before" }, "original"), el("span", { class: "compare-tag after" }, "swapped"));
  const play = el("button", { type: "button", class: "secondary compare-play" }, "Play");
  const seek = el("input", { type: "range", class: "compare-seek", min: "0", max: "0", step: "any", value: "0",
    "aria-label": "position in the video" });
  const time = el("span", { class: "muted compare-time" }, "");
  const zoomOut = el("button", { type: "button", class: "secondary", "aria-label": "zoom out" }, "−");
  const zoomIn = el("button", { type: "button", class: "secondary", "aria-label": "zoom in" }, "+");
  const zoomText = el("span", { class: "muted compare-zoom" }, "");
  const videoBar = el("div", { class: "compare-controls" }, play, seek, time);
  const photoBar = el("div", { class: "compare-controls" }, zoomOut, zoomIn, zoomText);
  const bar = el("div", { class: "compare-bar" }, videoBar, photoBar);
  container.prepend(stage, bar);
  container.classList.add("compared");

  const view = { split: 50, zoom: 1, x: 0, y: 0 };
  const shown = (layer) => [...layer.children].find((m) => !m.hidden);
  const videos = () => [shown(after), shown(before)].filter((m) => m?.tagName === "VIDEO");
  const isVideo = () => shown(after)?.tagName === "VIDEO";

  function draw() {
    stage.style.setProperty("--split", `${view.split}%`);
    stage.style.setProperty("--zoom", view.zoom);
    stage.style.setProperty("--x", `${view.x}px`);
    stage.style.setProperty("--y", `${view.y}px`);
    stage.classList.toggle("zoomed", view.zoom > 1);
    line.setAttribute("aria-valuenow", String(Math.round(view.split)));
    line.setAttribute("aria-valuetext", `${Math.round(view.split)} % original, ${Math.round(100 - view.split)} % swapped`);
    zoomText.textContent = `${view.zoom.toFixed(1)}×`;
    zoomOut.disabled = view.zoom <= 1;
    zoomIn.disabled = view.zoom >= MAX_ZOOM;
  }

  const setSplit = (percent) => { view.split = clamp(percent, 0, 100); draw(); };

  /** Zoom to `zoom`, keeping the picture's point under (px, py) (stage pixels) where it is. */
  function zoomTo(zoom, px = stage.clientWidth / 2, py = stage.clientHeight / 2) {
    const next = clamp(zoom, 1, MAX_ZOOM);
    view.x = px - (px - view.x) * (next / view.zoom);
    view.y = py - (py - view.y) * (next / view.zoom);
    view.zoom = next;
    pan(0, 0);
  }

  function pan(dx, dy) { // the picture always covers the stage
    view.x = clamp(view.x + dx, stage.clientWidth * (1 - view.zoom), 0);
    view.y = clamp(view.y + dy, stage.clientHeight * (1 - view.zoom), 0);
    draw();
  }

  function reset() {
    Object.assign(view, { split: 50, zoom: 1, x: 0, y: 0 });
    videoBar.hidden = !isVideo();
    photoBar.hidden = isVideo() || !shown(after);
    draw();
  }

  // ---- pointer: drag the line (anywhere while not zoomed), pan when zoomed
  let drag = null;
  stage.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    const box = stage.getBoundingClientRect();
    const nearLine = Math.abs(event.clientX - (box.left + (box.width * view.split) / 100)) < 24;
    drag = { mode: view.zoom > 1 && !nearLine ? "pan" : "split", x: event.clientX, y: event.clientY };
    stage.setPointerCapture(event.pointerId);
    if (drag.mode === "split") setSplit(((event.clientX - box.left) / box.width) * 100);
    line.focus({ preventScroll: true });
    event.preventDefault();
  });
  stage.addEventListener("pointermove", (event) => {
    if (!drag) return;
    if (drag.mode === "split") {
      const box = stage.getBoundingClientRect();
      setSplit(((event.clientX - box.left) / box.width) * 100);
    } else {
      pan(event.clientX - drag.x, event.clientY - drag.y);
      Object.assign(drag, { x: event.clientX, y: event.clientY });
    }
  });
  for (const end of ["pointerup", "pointercancel"]) stage.addEventListener(end, () => { drag = null; });

  // ---- photos: wheel and double-click zoom at the pointer
  const at = (event) => {
    const box = stage.getBoundingClientRect();
    return [event.clientX - box.left, event.clientY - box.top];
  };
  stage.addEventListener("wheel", (event) => {
    if (isVideo()) return;
    event.preventDefault();
    zoomTo(view.zoom * (event.deltaY < 0 ? 1.25 : 0.8), ...at(event));
  }, { passive: false });
  stage.addEventListener("dblclick", (event) => { if (!isVideo()) zoomTo(view.zoom > 1 ? 1 : 2.5, ...at(event)); });
  zoomIn.addEventListener("click", () => zoomTo(view.zoom * 1.5));
  zoomOut.addEventListener("click", () => zoomTo(view.zoom / 1.5));

  // ---- keyboard on the line
  line.addEventListener("keydown", (event) => {
    const step = event.shiftKey ? BIG_STEP : STEP;
    const moves = { ArrowLeft: -step, ArrowDown: -step, ArrowRight: step, ArrowUp: step, PageDown: -BIG_STEP,
      PageUp: BIG_STEP };
    if (event.key in moves) setSplit(view.split + moves[event.key]);
    else if (event.key === "Home") setSplit(0);
    else if (event.key === "End") setSplit(100);
    else if (!isVideo() && (event.key === "+" || event.key === "=")) zoomTo(view.zoom * 1.5);
    else if (!isVideo() && event.key === "-") zoomTo(view.zoom / 1.5);
    else if (!isVideo() && event.key === "0") zoomTo(1);
    else if (isVideo() && event.key === " ") play.click();
    else return;
    event.preventDefault();
  });

  // ---- videos: one bar plays, pauses and seeks both; the original follows the swapped one
  play.addEventListener("click", () => {
    const [swapped] = videos();
    if (swapped) (swapped.paused ? swapped.play() : Promise.resolve(swapped.pause())).catch(() => {});
  });
  seek.addEventListener("input", () => { const [swapped] = videos(); if (swapped) swapped.currentTime = Number(seek.value); });
  for (const video of after.querySelectorAll("video")) {
    const follower = () => before.querySelector("video");
    const follow = () => { follower().currentTime = video.currentTime + Number(follower().dataset.offset || 0); };
    const update = () => {
      play.textContent = video.paused ? "Play" : "Pause";
      seek.max = String(video.duration || 0);
      seek.value = String(video.currentTime);
      time.textContent = `${clock(video.currentTime)} / ${clock(video.duration)}`;
    };
    video.addEventListener("play", () => { follow(); follower().play().catch(() => {}); update(); });
    video.addEventListener("pause", () => { follower().pause(); update(); });
    video.addEventListener("seeked", () => { follow(); update(); });
    video.addEventListener("timeupdate", update);
    video.addEventListener("loadedmetadata", () => { reset(); follow(); update(); });
  }
  for (const image of after.querySelectorAll("img")) image.addEventListener("load", reset);
  new ResizeObserver(() => pan(0, 0)).observe(stage);
  reset();
}

for (const container of document.querySelectorAll("[data-compare]")) compare(container);
