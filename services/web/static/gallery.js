// The gallery on the jobs page: each job shows a swapped frame (GET /v1/jobs/{id}/thumbnail), the files' names as
// they were chosen, the length of video written, and "Run again" (POST /v1/jobs/{id}/again: the same files and
// settings); past the newest 50 (the list the service pushes), pages of 50 older jobs, Newer / Older.
import { api, apiJson, clearError, el, seconds, showError, token } from "/static/common.js";
import { isPhoto } from "/static/progress.js";

const PAGE = 50;
// With a token: job id -> the promise of its thumbnail's object URL (fetched once; stored while pending, so that a
// job drawn again meanwhile does not fetch it twice); revoked when jobs.js forgets the job (also on a page change).
const thumbnails = new Map();
let hooks = null; // from jobs.js: show(job), forget(id), ids(), order()
let page = 0; // 0: the newest jobs, kept current by the service's pushed events
let total = 0;
const pagerText = el("span", { class: "muted", "aria-live": "polite" });
const newer = el("button", { type: "button", class: "secondary", onclick: () => go(page - 1) }, "‹ Newer");
const older = el("button", { type: "button", class: "secondary", onclick: () => go(page + 1) }, "Older ›");
const pagerNav = el("nav", { class: "pager actions spaced", "aria-label": "pages of jobs" }, newer, pagerText, older);

/** Adds the gallery's parts to a job's list item (after jobs.js has drawn it). */
export function decorate(item, job) {
  item.classList.add("gallery-item");
  item.prepend(thumbnail(job));
  item.querySelector(".head")?.after(namesLine(job));
  if (job.state === "done" || job.state === "failed") {
    item.querySelector(".actions")?.prepend(el("button", { type: "button", class: "secondary again",
      onclick: () => runAgain(job) }, "Run again"));
  }
}

function thumbnail(job) {
  const what = job.names?.target ? `a swapped frame of ${job.names.target}` : "a swapped frame";
  if (!job.thumbnail_url) return el("div", { class: "thumb empty", "aria-hidden": "true" });
  const image = el("img", { class: "thumb", alt: what, loading: "lazy", width: "96" });
  if (!token()) {
    image.src = job.thumbnail_url; // the browser caches it
  } else {
    thumbnailUrl(job).then((url) => { if (url) image.src = url; }).catch(showError);
  }
  return image;
}

function thumbnailUrl(job) {
  if (thumbnails.has(job.id)) return thumbnails.get(job.id);
  const fetching = api(job.thumbnail_url).then((response) => response.blob()).then((blob) => {
    if (thumbnails.get(job.id) !== fetching) return null; // forgotten meanwhile
    return URL.createObjectURL(blob);
  }, (error) => {
    if (thumbnails.get(job.id) === fetching) thumbnails.delete(job.id); // drawn again, it tries again
    throw error;
  });
  thumbnails.set(job.id, fetching);
  return fetching;
}

/** jobs.js forgets a job (deleted, gone from the service, or on another page): its thumbnail's URL goes too. */
export function forgetThumbnail(id) {
  const url = thumbnails.get(id);
  thumbnails.delete(id);
  url?.then((made) => made && URL.revokeObjectURL(made), () => {});
}

function namesLine(job) {
  const names = job.names || {};
  const sources = names.sources || [];
  return el("div", { class: "names" },
    names.target ? el("span", { class: "target-name", title: names.target }, names.target) : null,
    sources.length ? el("span", { class: "source-names", title: sources.join(", ") },
      `face from ${sources.join(", ")}`) : null,
    job.duration != null ? el("span", { class: "duration" }, `${seconds(job.duration)} of video`) : null,
    job.duration == null && isPhoto(job) ? el("span", { class: "duration" }, "photo") : null);
}

async function runAgain(job) {
  clearError();
  try {
    const again = await apiJson(`/v1/jobs/${job.id}/again`, { method: "POST" });
    if (page === 0) hooks?.show(again); // the pushed events bring its progress
    else await go(0);
  } catch (error) {
    showError(error);
  }
}

// ------------------------------------------------------------------------------------------------------ paging

/** Called by jobs.js once: the list's own operations, and where the pager goes (after the list). */
export function pager(given, list) {
  hooks = given;
  list.after(pagerNav);
  drawPager();
}

/** jobs.js asks before applying a pushed change: true on the newest page (then the change is shown). */
export function following(newTotal) {
  total = newTotal;
  drawPager();
  return page === 0;
}

async function go(to) {
  clearError();
  try {
    const answer = await apiJson(`/v1/jobs?limit=${PAGE}&offset=${to * PAGE}`);
    page = to;
    total = answer.total;
    for (const id of hooks.ids()) hooks.forget(id);
    for (const job of answer.jobs) hooks.show(job);
    hooks.order();
    drawPager();
    document.getElementById("jobs-title")?.scrollIntoView({ block: "start" });
  } catch (error) {
    showError(error);
  }
}

function drawPager() {
  const last = Math.max(0, Math.ceil(total / PAGE) - 1);
  pagerNav.hidden = page === 0 && total <= PAGE;
  newer.disabled = page === 0;
  older.disabled = page >= last;
  const first = page * PAGE + 1;
  pagerText.textContent = `jobs ${Math.min(first, total)}–${Math.min(first + PAGE - 1, total)} of ${total}`
    + (page === 0 ? " (kept current)" : "");
}
