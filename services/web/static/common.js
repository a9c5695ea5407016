// What every swapstream page shares (an ES module, no build step): the nav, the bearer token (asked once per tab,
// kept in sessionStorage), `api()` (fetch + token; a refusal becomes an ApiError worded from the API's `code`),
// `upload()` (the same with upload progress), and the visible error box.
//
// A page needs `<header class="top"></header>` (the nav is drawn into it) and `<main>` (the error box goes first in
// it); importing this module draws both and shows any uncaught error in the box.

const TOKEN_KEY = "swapstream-token";
// The nav; a page is static/<name>.html (served at /<name>) with its script, plus its line here.
const PAGES = [["/", "Jobs"], ["/analyze", "Analyse"], ["/swap-photo", "Swap a photo"], ["/live", "Live"]];

// The service's error codes in this page's words (never its API names, flags or commands); an unknown code shows
// the API's `detail`. Job errors (`error_code`) and live messages (`code`) use the same words.
const PLAIN_WORDS = {
  no_face_in_source: "No face found in the source photo — try a photo where the face is larger and frontal.",
  no_face_in_target: "No face found in the photo to change — try one where the faces are larger and turned to the camera.",
  no_face_in_reference: "No face found in the photo of the person to replace — try one where the face is larger and frontal.",
  missing_source: "Choose a photo of the face to put in first.",
  too_many_sources: "Too many photos of the face — choose fewer.",
  missing_reference: "Replacing one chosen person needs a photo of that person: add it, then try again.",
  not_a_video: "That file could not be read as a video — it may be damaged or of a kind this service does not take. Try an MP4 video.",
  not_a_photo: "That file is not a photo this service can read — use a JPEG or PNG photo.",
  wrong_file_type: "That kind of file is not accepted — choose a video or a photo.",
  empty_file: "One of the chosen files is empty — choose it again.",
  too_large: "The file is larger than this service accepts — try a shorter or smaller one.",
  too_many_pixels: "The picture is too large — use a smaller resolution.",
  too_long: "The video is longer than this service accepts — cut it into shorter parts.",
  frame_rate_too_high: "The video has more frames per second than this service accepts — use an ordinary frame rate, such as 30.",
  bad_option: "One of the settings is not accepted — check the values and try again.",
  pick_on_no_face: "One of the places picked is not on a face — pick the faces inside their outlines.",
  forbidden_origin: "The service does not accept requests from this page's address — open the service's own page.",
  bad_host: "The service does not answer under this name — open it by its address.",
  not_found: "That no longer exists — it may have been deleted.",
  not_ready: "The result is not ready yet.",
  gone: "The original file of this job is no longer kept.",
  too_many_requests: "The service is busy — wait a moment and try again.",
  disk_full: "The service has run out of storage space — try again later.",
  inference_unavailable: "The face-swap engine is not answering right now — try again in a moment.",
  store_unavailable: "The service cannot reach its list of jobs right now — try again in a moment.",
  unavailable: "The service is not available right now — try again in a moment.",
  internal_error: "Something went wrong in the service — try again; if it keeps happening, tell whoever runs it.",
  bad_input: "The service could not use the chosen files or settings — check them and try again.",
  bad_request: "The service did not understand the request — reload the page and try again.",
  unauthorized: "The service asks for its token.",
  forbidden: "The service does not allow this.",
  worker_lost: "The service stopped while working on this — it is tried again by itself.",
  service_restarting: "The service restarted while working on this — it starts again by itself.",
  encode_failed: "The result could not be written with these settings — try the default quality and speed.",
  bad_frame: "A camera picture could not be read — the stream goes on.",
  bad_message: "The page and the service did not understand each other — reload the page.",
  wrong_swapper: "That face was prepared for another swapper — start again with it.",
  switch_pending: "Still switching to the previous face — wait a moment, then try again.",
};

/** An error code in this page's words; `detail` (the service's own text) when the code is unknown or absent. */
export function plainWords(code, detail = "") {
  return PLAIN_WORDS[code] || detail;
}

export class ApiError extends Error {
  /** `message`: the code in the page's words, else the API's `detail`; both kept as they came. */
  constructor(status, detail, code = null) {
    super(plainWords(code, detail));
    this.name = "ApiError";
    this.status = status;
    this.detail = detail;
    this.code = code;
  }
}

// ------------------------------------------------------------------------------------------------ the page frame

function drawNav() {
  const header = document.querySelector("header.top");
  if (!header) return;
  header.replaceChildren(
    el("a", { class: "brand", href: "/" }, "swapstream"),
    el("nav", { "aria-label": "pages" }, ...PAGES.map(([href, name]) => el("a", {
      href, ...(location.pathname === href ? { "aria-current": "page" } : {}),
    }, name))),
  );
}

function errorBox() {
  let box = document.getElementById("error");
  if (!box) {
    box = el("div", { id: "error", class: "error", role: "alert", hidden: "" },
      el("span", { class: "message" }),
      el("button", { type: "button", "aria-label": "dismiss the error", onclick: clearError }, "×"));
    (document.querySelector("main") || document.body).prepend(box);
  }
  return box;
}

/** Shows an error (an Error, ApiError or text) in the page's error box. */
export function showError(error) {
  const box = errorBox();
  box.querySelector(".message").textContent = error instanceof Error ? error.message : String(error);
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });
}

export function clearError() {
  const box = document.getElementById("error");
  if (box) box.hidden = true;
}

/** document.createElement with attributes (on* are listeners) and children (nodes or text). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else if (value !== false && value != null) node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child != null && child !== false));
  return node;
}

// ----------------------------------------------------------------------------------------------------- the token

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

let asking = null; // one token dialog at a time, shared by concurrent calls

/** Asks for the token in a dialog; resolves when one was entered, rejects when the person cancels. */
function askToken(reason) {
  if (asking) return asking;
  const message = el("p", { class: "token-reason" }, reason);
  const input = el("input", { type: "password", name: "token", autocomplete: "off", required: true,
    "aria-label": "token" });
  const form = el("form", { method: "dialog" },
    el("h2", {}, "This service needs its token"), message,
    el("label", { class: "field" }, el("span", {}, "Token"), input),
    el("div", { class: "actions" },
      el("button", { type: "submit", value: "ok" }, "Use this token"),
      el("button", { type: "button", class: "secondary", onclick: () => dialog.close("cancel") }, "Cancel")));
  const dialog = el("dialog", { id: "token-dialog", "aria-label": "token" }, form);
  document.body.append(dialog);
  asking = new Promise((resolve, reject) => {
    dialog.addEventListener("close", () => {
      dialog.remove();
      asking = null;
      if (dialog.returnValue === "ok" && input.value.trim()) {
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        resolve();
      } else {
        reject(new ApiError(401, `${reason} No token entered: the page cannot call the service.`));
      }
    });
  });
  dialog.showModal();
  input.focus();
  return asking;
}

function refusedReason() {
  return token()
    ? "The service refused the token you entered. Enter the right one."
    : "The service asks for a token. Ask whoever runs it.";
}

function authHeaders(headers = {}) {
  const value = token();
  return value ? { ...headers, Authorization: `Bearer ${value}` } : headers;
}

/** The API's `detail` (text, or FastAPI's list of field errors) as one line. */
function detailText(body, status, statusText) {
  if (typeof body?.detail === "string") return body.detail;
  if (Array.isArray(body?.detail)) return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return `${status} ${statusText}`;
}

/**
 * fetch() against the service with the bearer token; a 401 asks for the token and tries again. Returns the
 * Response when it is 2xx; otherwise throws an ApiError whose message is the API's `detail`.
 */
export async function api(path, options = {}) {
  for (;;) {
    const response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
    if (response.ok) return response;
    const body = await response.json().catch(() => null);
    if (response.status !== 401) {
      throw new ApiError(response.status, detailText(body, response.status, response.statusText), body?.code);
    }
    const reason = refusedReason();
    sessionStorage.removeItem(TOKEN_KEY);
    await askToken(reason);
  }
}

/** api() and its JSON body. */
export async function apiJson(path, options = {}) {
  return (await api(path, options)).json();
}

// ------------------------------------------------------------------------------------------------- the options

let optionTable = null; // GET /v1/options, fetched once per page
const applied = new WeakMap(); // root -> the promise of its controls filled (one per root, shared by every caller)

/**
 * Fills every control marked `data-option="table.name"` (e.g. `swap.faces`) from the service's options table: a
 * select gets the choices (less those in `data-except`), a number input its bounds, step and default, a checkbox
 * its default. The pages write no choice, default or bound themselves. Returns one promise per root, the same to
 * every caller: await it before reading the controls (it rejects when the table could not be had).
 */
export function applyOptions(root = document) {
  if (!applied.has(root)) applied.set(root, fillOptions(root));
  return applied.get(root);
}

async function fillOptions(root) {
  optionTable ??= apiJson("/v1/options");
  const table = await optionTable;
  for (const control of root.querySelectorAll("[data-option]")) {
    const [group, name] = control.dataset.option.split(".");
    const option = (table[group] || []).find((entry) => entry.name === name);
    if (!option) throw new Error(`this page needs the option ${control.dataset.option}, which the service lacks`);
    fillControl(control, option);
  }
}

function fillControl(control, option) {
  control.title = option.help;
  if (control.dataset.control === "sensitivity") {
    sensitivity(control, option);
  } else if (control.tagName === "SELECT") {
    const except = (control.dataset.except || "").split(" ");
    control.replaceChildren(...option.choices.filter((choice) => !except.includes(choice.value)).map((choice) =>
      el("option", { value: choice.value, selected: choice.value === option.default }, choice.label)));
  } else if (control.type === "checkbox") {
    control.checked = Boolean(option.default);
  } else {
    const step = option.step ?? (option.type === "integer" ? 1 : 0.01);
    control.step = step;
    // An open bound is excluded: the nearest allowed step inside it.
    if (option.low != null) control.min = option.low_open ? +(option.low + step).toFixed(6) : option.low;
    if (option.high != null) control.max = option.high_open ? +(option.high - step).toFixed(6) : option.high;
    control.value = option.default;
  }
  control.dispatchEvent(new Event("change"));
}

/** The values of a form's option controls (`data-option`), appended to `data` by name (checkboxes: true/false). */
export function appendOptions(form, data) {
  for (const control of form.querySelectorAll("[data-option]")) {
    data.append(control.name, control.type === "checkbox" ? control.checked : optionValue(control));
  }
  return data;
}

// ---------------------------------------------------------------------------------------------- the sensitivity

// The detector's score threshold, shown as a sensitivity: a slider whose right end finds more faces (a lower
// threshold), with words for where it stands. The API's option is unchanged; the slider's steps are its values.
function sensitivity(control, option) {
  const step = option.step ?? 0.05;
  const low = option.low_open ? option.low + step : option.low;
  const high = option.high_open ? option.high - step : option.high;
  const count = Math.round((high - low) / step);
  // index 0 = the highest threshold (least sensitive)
  const thresholds = Array.from({ length: count + 1 }, (_, i) => +(high - i * step).toFixed(6));
  control.type = "range";
  control.min = 0;
  control.max = count;
  control.step = 1;
  control.value = thresholds.indexOf(+(+option.default).toFixed(6));
  control.dataset.thresholds = JSON.stringify(thresholds);
  control.dataset.normal = control.value;
  let words = control.parentElement.querySelector(".sensitivity-words");
  if (!words) {
    words = el("span", { class: "hint sensitivity-words", "aria-live": "polite" });
    control.after(words);
  }
  const explain = () => {
    words.textContent = sensitivityWords(Number(control.value), Number(control.dataset.normal), count);
    control.setAttribute("aria-valuetext", words.textContent);
  };
  control.addEventListener("input", explain);
  explain();
}

function sensitivityWords(value, normal, top) {
  if (value === normal) return "Normal (recommended): finds faces that are clear and not too small.";
  if (value > normal) {
    return value >= top - 3
      ? "Very high: finds nearly every face, even tiny or turned ones — and may take other things for faces."
      : "Higher: also finds small, turned or dim faces — may now and then take something else for a face.";
  }
  return value <= 2
    ? "Very low: only the clearest, largest faces — many real faces are left out."
    : "Lower: only clear faces — fewer mistakes, but small or turned faces may be missed.";
}

/** A control's value as the API takes it (the sensitivity slider's position is its threshold). */
export function optionValue(control) {
  if (control.dataset.control === "sensitivity" && control.dataset.thresholds) {
    return JSON.parse(control.dataset.thresholds)[Number(control.value)];
  }
  return control.value;
}

/**
 * POSTs a FormData with upload progress (fetch cannot report it): onProgress(sent, total). Same token handling and
 * errors as api(); resolves with the parsed JSON body.
 */
export async function upload(path, formData, onProgress = () => {}) {
  for (;;) {
    const request = new XMLHttpRequest();
    const done = new Promise((resolve, reject) => {
      request.upload.addEventListener("progress", (e) => onProgress(e.loaded, e.lengthComputable ? e.total : 0));
      request.addEventListener("load", () => resolve());
      request.addEventListener("error", () => reject(new Error(`the upload to ${path} failed: the service is not reachable`)));
      request.addEventListener("abort", () => reject(new Error("the upload was stopped")));
    });
    request.open("POST", path);
    for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
    request.send(formData);
    await done;
    let body = null;
    try { body = JSON.parse(request.responseText); } catch { /* not JSON: handled below */ }
    if (request.status >= 200 && request.status < 300) return body;
    if (request.status !== 401) {
      throw new ApiError(request.status, detailText(body, request.status, request.statusText), body?.code);
    }
    const reason = refusedReason();
    sessionStorage.removeItem(TOKEN_KEY);
    await askToken(reason);
  }
}

/** Labels marked data-drop take a file dropped on them into their file input, which then fires `change` (as when
 * the files are chosen); then onDrop(input), for a page that does more on a drop than on a choice. */
export function dropZones(onDrop = () => {}) {
  for (const zone of document.querySelectorAll("[data-drop]")) {
    const input = zone.querySelector("input[type=file]");
    zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      input.files = event.dataTransfer.files;
      input.dispatchEvent(new Event("change", { bubbles: true }));
      onDrop(input);
    });
  }
}

// --------------------------------------------------------------------------------------------------------- formats

export function seconds(value) {
  if (value == null || !isFinite(value)) return "–";
  if (value < 60) return `${value.toFixed(value < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(value / 60);
  return minutes < 60 ? `${minutes} min ${Math.round(value % 60)} s` : `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

// ---------------------------------------------------------------------------------------------------- on import

drawNav();
errorBox();
// Pages catch their errors and showError() them; anything they missed is shown too (and stays a console error).
window.addEventListener("unhandledrejection", (event) => showError(event.reason));
window.addEventListener("error", (event) => showError(event.error || event.message));
