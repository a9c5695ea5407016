// The jobs page's preview: thumbnails of the chosen files at once (object URLs, nothing sent), then a frame slider
// over the target showing the original (the browser's own frame) beside the swapped one (POST /v1/preview), with
// the faces found outlined and numbered on the original. Clicking a face (or Enter/Space on it) picks it: only the
// picked faces are swapped, and the job gets `pick_time` and `pick_points`. One preview request is in flight at a
// time; a slider moved meanwhile asks again for where it ended, once.
import { ApiError, appendOptions, api, applyOptions, el, showError } from "/static/common.js";
import { centre, clearPicksOnFacesChange, faceButton, togglePick } from "/static/faces.js";

const form = document.getElementById("submit-form");
const root = document.getElementById("preview");

const state = {
  target: null,        // File
  isVideo: false,
  session: null,       // the service's preview session: the files are not sent again
  time: 0,             // where the slider is (s)
  faces: [],           // the faces of the frame shown: [{number, box, score, swapped}]
  frame: null,         // the X-Preview of the frame shown
  pick: null,          // {time, numbers: Set} the faces picked, at one frame
  busy: false,
  again: false,        // asked again while busy
  urls: [],            // object URLs of the thumbnails and the original
  swappedUrl: null,
  chosenAt: null,      // performance.now() when the files were chosen (latency of the first frame)
  movedAt: null,       // ... when the slider last moved
};

// ------------------------------------------------------------------------------------------------------ the view

const thumbs = el("div", { class: "thumbs", "aria-label": "the chosen files" });
const original = el("div", { class: "preview-frame" });
const swappedImage = el("img", { alt: "the swapped frame", hidden: true });
const swappedBox = el("div", { class: "preview-frame swapped" }, swappedImage);
const slider = el("input", { type: "range", min: "0", max: "0", step: "any", value: "0", id: "preview-time",
  "aria-label": "time in the target video" });
const timeText = el("output", { for: "preview-time", class: "muted" }, "0.0 s");
const status = el("p", { class: "hint", "aria-live": "polite" });
const clearPick = el("button", { type: "button", class: "secondary", hidden: true, onclick: () => unpick() },
  "Swap every face again");

root.replaceChildren(
  thumbs,
  el("div", { class: "pair" },
    el("figure", {}, original, el("figcaption", {}, "original — click a face to swap only the faces you pick")),
    el("figure", {}, swappedBox, el("figcaption", {}, "swapped"))),
  el("div", { class: "slider", id: "preview-slider" }, el("label", { for: "preview-time" }, "Frame at"), slider, timeText),
  el("div", { class: "actions" }, status, clearPick),
);

function revokeAll() {
  for (const url of state.urls.splice(0)) URL.revokeObjectURL(url);
}

function objectUrl(file) {
  const url = URL.createObjectURL(file);
  state.urls.push(url);
  return url;
}

/** The chosen files changed: thumbnails now, then the first preview. */
function filesChanged() {
  const target = form.target.files[0] || null;
  const sources = [...form.source.files];
  revokeAll();
  state.session = null;
  state.pick = null;
  state.faces = [];
  state.chosenAt = performance.now();
  thumbs.replaceChildren(
    ...sources.map((file) => el("figure", {}, thumbnail(file, "img"), el("figcaption", {}, "source"))),
    ...(target ? [el("figure", {}, thumbnail(target, isVideo(target) ? "video" : "img"), el("figcaption", {}, "target"))] : []));
  root.hidden = !(target || sources.length);
  showOriginal(target); // its object URL went with the others
  if (target && sources.length) request();
  else status.textContent = target ? "Choose a photo of the face to put in to see the swap." : "Choose the video or photo to change.";
}

const isVideo = (file) => file.type.startsWith("video/") || /\.(mp4|mov|mkv|webm|avi|m4v|ts|flv|ogv)$/i.test(file.name);

function thumbnail(file, tag) {
  const media = el(tag, { src: objectUrl(file), alt: file.name, title: file.name, class: "thumb" });
  if (tag === "video") Object.assign(media, { muted: true, preload: "metadata", playsInline: true });
  return media;
}

function showOriginal(target) {
  state.target = target;
  state.isVideo = Boolean(target && isVideo(target));
  state.time = 0;
  slider.value = "0";
  slider.max = "0";
  timeText.textContent = "0.0 s";
  document.getElementById("preview-slider").hidden = !state.isVideo;
  swappedImage.hidden = true;
  if (!target) { original.replaceChildren(); return; }
  const media = state.isVideo
    ? el("video", { src: objectUrl(target), muted: true, playsinline: true, preload: "auto", "aria-label": "the original frame" })
    : el("img", { src: objectUrl(target), alt: "the original" });
  if (state.isVideo) {
    media.addEventListener("loadedmetadata", () => { slider.max = String(media.duration || 0); });
    media.addEventListener("error", () => { status.textContent = "This browser cannot show the video itself; the swapped frame comes from the service."; });
  }
  original.replaceChildren(media);
}

// ------------------------------------------------------------------------------------------------- the requests

slider.addEventListener("input", () => {
  state.time = Number(slider.value);
  state.movedAt = performance.now();
  timeText.textContent = `${state.time.toFixed(1)} s`;
  const video = original.querySelector("video");
  if (video) video.currentTime = state.time;
  request();
});

// A change of the faces, the swapper or the sensitivity shows at once; picking is "these faces", not another rule.
clearPicksOnFacesChange(form.faces, () => { state.pick = null; });
for (const name of ["faces", "swapper", "score_threshold", "reference_distance", "smoothing"]) {
  form.elements[name]?.addEventListener("change", () => {
    if (name === "faces" && form.faces.value === "reference") state.session = null; // the reference photo goes too
    if (state.session) request();
  });
}

async function request() {
  if (state.busy) { state.again = true; return; }
  state.busy = true;
  try {
    do {
      state.again = false;
      await fetchFrame();
    } while (state.again);
  } finally {
    state.busy = false;
  }
}

function previewForm(withFiles) {
  const data = appendOptions(form, new FormData());
  data.set("time", String(state.time));
  if (withFiles) {
    data.append("target", state.target);
    for (const file of form.source.files) data.append("source", file);
    if (form.faces.value === "reference" && form.reference.files[0]) data.append("reference", form.reference.files[0]);
  } else {
    data.append("session", state.session);
  }
  appendPick(data);
  return data;
}

async function fetchFrame() {
  if (!state.target || !form.source.files.length) return;
  try {
    await applyOptions(); // the option controls are filled from the service's table before the first request
  } catch {
    status.textContent = ""; // the page's error box says why (jobs.js)
    return;
  }
  if (form.faces.value === "reference" && !form.reference.files[0]) {
    status.textContent = "Add the photo of the person to replace to see the swap.";
    return;
  }
  const asked = state.time;
  status.textContent = "swapping this frame…";
  let response;
  try {
    try {
      response = await api("/v1/preview", { method: "POST", body: previewForm(!state.session) });
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404 && state.session)) throw error;
      state.session = null; // the service no longer keeps the files: send them again
      response = await api("/v1/preview", { method: "POST", body: previewForm(true) });
    }
  } catch (error) {
    status.textContent = "";
    showError(error);
    return;
  }
  const frame = JSON.parse(response.headers.get("X-Preview"));
  const blob = await response.blob();
  state.session = frame.session;
  state.frame = frame;
  state.faces = frame.faces;
  if (state.isVideo) slider.max = String(frame.duration);
  const url = URL.createObjectURL(blob);
  await new Promise((resolve) => {
    swappedImage.addEventListener("load", resolve, { once: true });
    swappedImage.addEventListener("error", resolve, { once: true });
    swappedImage.src = url;
    swappedImage.hidden = false;
  });
  if (state.swappedUrl) URL.revokeObjectURL(state.swappedUrl);
  state.swappedUrl = url;
  measure(asked);
  drawFaces();
  describe();
}

/** Milliseconds from choosing the files (first frame) or moving the slider to the swapped frame shown. */
function measure(asked) {
  const now = performance.now();
  if (state.chosenAt != null) {
    root.dataset.firstFrameMs = String(Math.round(now - state.chosenAt));
    state.chosenAt = null;
  } else if (state.movedAt != null && asked === state.time) {
    root.dataset.sliderFrameMs = String(Math.round(now - state.movedAt));
    state.movedAt = null;
  }
  root.dataset.frame = String(state.frame.frame);
}

function describe() {
  const { faces, faces_swapped: swapped, time } = state.frame;
  const at = state.isVideo ? ` at ${time.toFixed(2)} s` : "";
  if (!faces.length) {
    status.textContent = `No face found in this frame${at}${state.isVideo ? " — move the slider to a moment where a face is visible" : ""}.`;
  } else {
    status.textContent = `${faces.length} face${faces.length > 1 ? "s" : ""} found${at}, ${swapped} swapped.` +
      (state.pick ? " Only the faces you picked are swapped in the job." : " Click a face to swap only that one.");
  }
  clearPick.hidden = !state.pick;
}

// ------------------------------------------------------------------------------------------------- the faces

function drawFaces() {
  for (const old of original.querySelectorAll(".face-box")) old.remove();
  const { width, height } = state.frame;
  const pickedHere = state.pick && Math.abs(state.pick.time - state.frame.time) < 1e-3;
  original.append(...state.faces.map((face) => faceButton(face, width, height,
    Boolean(pickedHere && state.pick.numbers.has(face.number)), toggle, face.swapped ? "swapped" : "")));
}

/** Picks (or unpicks) a face of the frame shown; a pick made at another frame is replaced. Picking swaps the faces
 * picked, so the faces setting goes back to "all" (faces.js). */
function toggle(number) {
  const time = state.frame.time;
  if (!state.pick || Math.abs(state.pick.time - time) >= 1e-3) state.pick = { time, numbers: new Set(), points: [] };
  const numbers = state.pick.numbers;
  togglePick(numbers, number, form.faces);
  state.pick.points = state.faces.filter((face) => numbers.has(face.number)).map((face) => centre(face.box));
  if (!numbers.size) state.pick = null;
  request();
}

function unpick() {
  state.pick = null;
  request();
}

/** The pick as the job takes it: `pick_time` (s) and `pick_points` (JSON [[x, y], ...], the picked faces' centres
 * in frame pixels). */
export function appendPick(data) {
  if (!state.pick) return data;
  data.set("pick_time", String(state.pick.time));
  data.set("pick_points", JSON.stringify(state.pick.points));
  return data;
}

form.target.addEventListener("change", filesChanged);
form.source.addEventListener("change", filesChanged);
form.reference?.addEventListener("change", () => { if (state.session) { state.session = null; request(); } });
