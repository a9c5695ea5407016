// A job in the jobs page's words: its progress line (frames, or "photo"; faces swapped; speed; the time left, shown
// only once it is stable), its error in plain words, and the rows of its result's summary.
import { plainWords, seconds } from "/static/common.js";

const ETA_ESTIMATES = 3;     // estimates of the finish that must agree before the time left is shown
const ETA_AGREEMENT = 0.25;  // ... within this share of the time left (and 2 s)

const seen = new Map(); // job id -> [{ at, frames }] the running job's progress as it came, one per new frame count

/** A photo job (its result is a photo; a running one has one frame and no video duration). */
export function isPhoto(job) {
  if (job.result) return !job.result.endsWith(".mp4");
  return job.frames_total === 1 && job.duration == null;
}

const plural = (count, word) => `${count} ${word}${count === 1 ? "" : "s"}`;

/** The running job's frames per second, measured between progress updates (the start-up before its first frames
 * is not counted), and the time left once the last estimates of its finish agree. */
function pace(job) {
  if (job.state !== "running") {
    seen.delete(job.id);
    return { fps: job.fps, left: null };
  }
  const samples = seen.get(job.id) || [];
  const last = samples[samples.length - 1];
  if (job.frames_done > 0 && (!last || job.frames_done > last.frames)) {
    samples.push({ at: job.updated_at, frames: job.frames_done });
    seen.set(job.id, samples);
  }
  if (samples.length < 2) return { fps: null, left: null };
  const finishes = [];
  for (let i = 1; i < samples.length; i += 1) {
    const rate = (samples[i].frames - samples[0].frames) / (samples[i].at - samples[0].at);
    if (rate > 0) finishes.push(samples[i].at + (job.frames_total - samples[i].frames) / rate);
  }
  const newest = samples[samples.length - 1];
  const fps = (newest.frames - samples[0].frames) / (newest.at - samples[0].at);
  const recent = finishes.slice(-ETA_ESTIMATES);
  if (recent.length < ETA_ESTIMATES || !job.frames_total) return { fps, left: null };
  const left = recent[recent.length - 1] - newest.at;
  const spread = Math.max(...recent) - Math.min(...recent);
  return { fps, left: spread <= Math.max(2, ETA_AGREEMENT * left) ? Math.max(0, left) : null };
}

/** "40 % · 86 / 216 frames · 2.9 fps · about 45 s left · 86 faces swapped · attempt 1 of 3" (a photo: "photo"). */
export function progressText(job) {
  const photo = isPhoto(job);
  const { fps, left } = pace(job);
  const total = job.frames_total;
  const parts = [
    `${Math.round(job.progress * 100)} %`,
    photo ? "photo" : total ? `${job.frames_done} / ${total} frames` : `${job.frames_done} frames`,
    !photo && fps ? `${fps.toFixed(1)} fps` : null,
    left != null ? `about ${seconds(left)} left` : null,
    plural(job.faces_swapped, "face") + " swapped",
    `attempt ${job.attempts} of ${job.max_attempts}`,
  ];
  return parts.filter(Boolean).join(" · ");
}

/** The job's error (or why it waits) in the page's words; null when it has none, or finished well after all. */
export function errorText(job) {
  return job.error && job.state !== "done" ? plainWords(job.error_code, job.error) : null;
}

/** [name, value] rows of a finished job's summary: a photo's has no frames, speed or frames without a face. */
export function summaryRows(job) {
  const stats = job.stats || {};
  const time = ["time", job.started_at && job.finished_at ? seconds(job.finished_at - job.started_at) : "–"];
  const notes = (stats.notes || []).map((note) => ["note", note]);
  if (isPhoto(job)) {
    return [["faces swapped", job.faces_swapped], time, ...notes];
  }
  return [
    ["frames", job.frames_total],
    ["faces swapped", job.faces_swapped],
    ["frames without a face", stats.frames_without_face ?? "–"],
    ["frames per second", job.fps ? job.fps.toFixed(1) : "–"],
    time,
    ...Object.entries(stats.stage_seconds || {}).map(([stage, s]) => [`${stage} (stage time)`, seconds(s)]),
    ...notes,
  ];
}
