// The jobs page: submit (with upload progress), the job list kept current by the service's pushed events
// (GET /v1/jobs/events, read with fetch so that the bearer header goes with it), and the result view.
import { api, appendOptions, applyOptions, clearError, dropZones, el, showError, token, upload }
  from "/static/common.js";
import { appendPick } from "/static/preview.js";
import { errorText, isPhoto, progressText, summaryRows } from "/static/progress.js";
import { decorate, following, forgetThumbnail, pager } from "/static/gallery.js";

const jobs = new Map(); // id -> the job as the API shows it
const list = document.getElementById("jobs");
const form = document.getElementById("submit-form");

// ------------------------------------------------------------------------------------------------------- submit

form.faces.addEventListener("change", () => {
  document.getElementById("reference-field").hidden = form.faces.value !== "reference";
  form.reference.required = form.faces.value === "reference";
});

dropZones(); // a dropped file fires the input's change, which the preview follows
applyOptions().catch(showError);

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError();
  const data = new FormData();
  data.append("target", form.target.files[0]);
  for (const file of form.source.files) data.append("source", file);
  if (form.faces.value === "reference") data.append("reference", form.reference.files[0]);
  appendPick(appendOptions(form, data));
  const bar = document.getElementById("upload-progress");
  const text = document.getElementById("upload-text");
  const button = document.getElementById("submit");
  button.disabled = true;
  bar.hidden = false;
  bar.value = 0;
  try {
    const job = await upload("/v1/jobs", data, (sent, total) => {
      bar.value = total ? sent / total : 0;
      text.textContent = total ? `uploading ${mb(sent)} of ${mb(total)}` : `uploading ${mb(sent)}`;
    });
    text.textContent = `queued job ${job.id.slice(0, 8)}`;
    originals.set(job.id, form.target.files[0]);
    show(job);
  } catch (error) {
    text.textContent = "";
    showError(error);
  } finally {
    button.disabled = false;
    bar.hidden = true;
  }
});

const mb = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`;

// ---------------------------------------------------------------------------------------------------- the list

function show(job) {
  jobs.set(job.id, job);
  let item = document.getElementById(`job-${job.id}`);
  if (!item) {
    item = el("li", { id: `job-${job.id}`, "data-id": job.id });
    list.prepend(item);
  }
  item.dataset.state = job.state;
  item.dataset.updatedAt = job.updated_at;
  item.replaceChildren(...jobParts(job).filter(Boolean));
  decorate(item, job);
}

function order() {
  const sorted = [...jobs.values()].sort((a, b) => b.created_at - a.created_at);
  for (const job of sorted) list.append(document.getElementById(`job-${job.id}`));
}

function forget(id) {
  jobs.delete(id);
  forgetThumbnail(id);
  document.getElementById(`job-${id}`)?.remove();
}

function jobParts(job) {
  const final = ["done", "failed", "cancelled"].includes(job.state);
  const error = errorText(job);
  return [
    el("div", { class: "head" },
      el("span", { class: `state ${job.state}` }, job.state),
      el("span", { class: "id", title: job.id }, job.id.slice(0, 8)),
      el("span", { class: "muted" }, new Date(job.created_at * 1000).toLocaleString())),
    el("progress", { max: "1", value: String(job.progress), class: job.state,
      "aria-label": `progress of job ${job.id.slice(0, 8)}` }),
    el("div", { class: "numbers" }, progressText(job)),
    error ? el("div", { class: "job-error", title: job.error }, error) : null,
    el("div", { class: "actions" },
      job.state === "done" ? el("button", { type: "button", onclick: () => openResult(job.id) }, "Show the result") : null,
      el("button", { type: "button", class: "danger", onclick: () => remove(job) },
        final ? "Delete" : job.cancel_requested ? "Cancelling…" : "Cancel")),
  ];
}

async function remove(job) {
  clearError();
  try {
    const response = await api(`/v1/jobs/${job.id}`, { method: "DELETE" });
    if (response.status === 204) {
      forget(job.id);
      if (shown === job.id) closeResult();
    } else {
      show(await response.json());
    }
  } catch (error) {
    showError(error);
  }
}

// ---------------------------------------------------------------------------------------- pushed job changes

const streamState = document.getElementById("stream-state");

async function follow() {
  for (;;) {
    try {
      const response = await api("/v1/jobs/events", { headers: { Accept: "text/event-stream" } });
      streamState.textContent = "live: the service pushes every change";
      await readEvents(response.body, applyEvent);
      streamState.textContent = "the service ended the updates; reconnecting…";
    } catch (error) {
      if (error.status === 401) { showError(error); return; } // no token entered: nothing more to do
      streamState.textContent = `updates interrupted (${error.message}); reconnecting…`;
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

/** Server-Sent Events from a fetch body: calls onEvent(name, data) for each event. */
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

function applyEvent(name, data) {
  if (!following(data.total)) return; // an older page is shown (gallery.js)
  if (name === "snapshot") {
    for (const id of [...jobs.keys()]) if (!data.jobs.some((job) => job.id === id)) forget(id);
  }
  for (const id of data.removed) forget(id);
  for (const job of data.jobs) show(job);
  order();
  document.getElementById("jobs-total").textContent = `(${data.total})`;
  if (shown && jobs.get(shown)?.state !== "done") closeResult();
}

// ---------------------------------------------------------------------------------------------- the result view

const originals = new Map(); // job id -> the target File submitted from this tab (no download needed)
const objectUrls = [];
let shown = null;

/** A URL the page can play: the API's own (range requests) without a token, else the file fetched whole. */
async function playable(path) {
  if (!token()) return path;
  const url = URL.createObjectURL(await (await api(path)).blob());
  objectUrls.push(url);
  return url;
}

async function openResult(id) {
  clearError();
  const job = jobs.get(id);
  const isVideo = !isPhoto(job);
  closeResult();
  try {
    const resultUrl = await playable(job.result_url);
    const original = originals.get(id);
    const originalUrl = original ? URL.createObjectURL(original) : await playable(`/v1/jobs/${id}/target`);
    if (original) objectUrls.push(originalUrl);
    shown = id;
    const [resultVideo, resultPhoto] = [document.getElementById("result-video"), document.getElementById("result-photo")];
    const [originalVideo, originalPhoto] = [document.getElementById("original-video"), document.getElementById("original-photo")];
    resultVideo.hidden = originalVideo.hidden = !isVideo;
    resultPhoto.hidden = originalPhoto.hidden = isVideo;
    if (isVideo) {
      resultVideo.src = resultUrl;
      originalVideo.dataset.offset = job.options.start ?? 0; // a trimmed job's result starts there (compare.js)
      originalVideo.src = originalUrl;
    } else {
      resultPhoto.src = resultUrl;
      originalPhoto.src = originalUrl;
    }
    const download = document.getElementById("download");
    download.href = resultUrl;
    download.download = `swapped-${id}${job.result.slice(job.result.lastIndexOf("."))}`;
    document.getElementById("summary").replaceChildren(summary(job));
    const section = document.getElementById("result");
    section.hidden = false;
    section.scrollIntoView({ behavior: "smooth", block: "start" });
  } catch (error) {
    showError(error);
  }
}

function summary(job) {
  const rows = summaryRows(job);
  return el("table", {}, el("tbody", {}, ...rows.map(([name, value]) => el("tr", {}, el("th", {}, name), el("td", {}, String(value))))));
}

function closeResult() {
  shown = null;
  document.getElementById("result").hidden = true;
  for (const id of ["result-video", "original-video"]) {
    const video = document.getElementById(id);
    video.pause();
    video.removeAttribute("src");
    video.load();
  }
  for (const url of objectUrls.splice(0)) URL.revokeObjectURL(url);
}

document.getElementById("close-result").addEventListener("click", closeResult);

// Pages of older jobs (gallery.js); the result's original follows the swapped video in compare.js.
pager({ show, forget, ids: () => [...jobs.keys()], order }, list);
follow();
