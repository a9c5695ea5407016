// The /live page: the camera streams JPEG frames to WS /v1/live and the swapped frames come back onto a canvas;
// while streaming, the face can be switched (a `source` message), the view mirrored, shown full screen and recorded.
import { apiJson, applyOptions, clearError, plainWords, seconds, showError, upload } from "/static/common.js";

// The WS /v1/live protocol is defined in services/live/protocol.py; tests/web/test_live_page.py checks that these
// constants are the same.
const SUBPROTOCOL = "swapstream.live.v1";
const TICKET_PREFIX = "ticket.";
const CLOSE_NORMAL = 1000;
const CLOSE_SERVICE_RESTART = 1012;
// Closes after which the page comes back by itself with a new ticket (through another replica): the service is
// restarting or draining (1012), going away (1001), or the connection was lost without a close (1006).
const RECONNECT_CODES = [CLOSE_SERVICE_RESTART, 1001, 1006];
const RECONNECT_MS = 30000;          // how long the page tries to come back before it gives up
const RECONNECT_PAUSE_MS = 500;      // between two tries

const MAX_WIDTH = 640;               // frames are sent at most this wide (the camera's own size when smaller)
const MAX_BUFFERED = 1 << 20;        // bytes unsent in the socket past which a camera frame is skipped, not queued
const LATENCY_WINDOW = 60;           // answers the shown latency is the median of
const FPS_WINDOW_MS = 2000;          // frames/s back: over the last 2 s, or (slower) the last two answers ...
const FPS_LONGEST_MS = 10000;        // ... of the last 10 s
const STOP_GRACE_MS = 10000;         // after `stop`, how long the service may take to answer what it holds
const RECORD_TYPES = ["video/webm;codecs=vp9", "video/webm;codecs=vp8", "video/webm", "video/mp4"];
const STATS_EVERY_MS = 250;          // the figures are redrawn at most this often while streaming
const ENCODER = new TextEncoder();
const DECODER = new TextDecoder();

// A close of the stream in this page's words (its code), else the service's reason.
const CLOSE_WORDS = {
  1008: "The service refused the connection — reload the page and start again.",
  1009: "The photo or a camera picture was too large for the service — try a smaller photo.",
  1013: "The service is busy — try again in a moment.",
  4400: "The service could not start the stream with this photo — try another photo.",
  4404: "The face photo is no longer on the service — pick it again and start.",
  4408: "The stream stopped: no camera picture reached the service for a while.",
  4422: plainWords("no_face_in_source"),
};

const $ = (id) => document.getElementById(id);
const form = $("live-form");
applyOptions().catch(showError);
const camera = $("camera");
const swapped = $("swapped");
const swappedContext = swapped.getContext("2d");
const capture = document.createElement("canvas");
const captureContext = capture.getContext("2d");
const mirror = $("mirror");
// The figures' elements, looked up once (they are redrawn while streaming).
const figures = Object.fromEntries(["fps", "latency", "skipped", "counts", "faces-found", "server-time"]
  .map((id) => [id, $(id)]));

let session = null; // the running stream: { ws, stream, seq, stats, ... }

function status(text) {
  $("status").textContent = text;
}

function setRunning(running) {
  $("start").disabled = running;
  $("stop").disabled = !running;
  for (const input of form.querySelectorAll("input, select")) input.disabled = running;
  $("switch-source").disabled = !running;
  $("record").disabled = !running;
}

// ------------------------------------------------------------------------------------------------ frames on the wire

function packFrame(header, image) {
  const head = ENCODER.encode(JSON.stringify(header));
  const message = new Uint8Array(4 + head.length + image.byteLength);
  new DataView(message.buffer).setUint32(0, head.length); // big-endian
  message.set(head, 4);
  message.set(new Uint8Array(image), 4 + head.length);
  return message.buffer;
}

function unpackFrame(buffer) {
  const length = new DataView(buffer).getUint32(0);
  const header = JSON.parse(DECODER.decode(new Uint8Array(buffer, 4, length)));
  return [header, new Uint8Array(buffer, 4 + length)];
}

function closeText(event) {
  return CLOSE_WORDS[event.code] || event.reason || `the connection ended (close code ${event.code})`;
}

// ---------------------------------------------------------------------------------------------------------- figures

function newStats() {
  return { sent: 0, answered: 0, refused: 0, dropped: 0, skipped: 0, latencies: [], answeredAt: [], shownAt: -Infinity };
}

// Drops are the stream working as meant: the service swaps the newest picture and skips the older ones.
function skippedText(stats) {
  const skipped = stats.dropped + stats.skipped;
  const camera = stats.sent + stats.skipped;
  if (!skipped) return "none";
  return `${skipped} of ${camera} camera pictures (${Math.round(100 * skipped / camera)} %): only the newest is `
    + "swapped, so the view stays current";
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

/** Redraws the figures; while streaming (`often`) at most every STATS_EVERY_MS, the last answer's a moment later. */
function showStats(stats, header, often = false) {
  const now = performance.now();
  if (header) stats.header = header;
  if (often && now - stats.shownAt < STATS_EVERY_MS) {
    stats.later ??= setTimeout(() => { stats.later = null; showStats(stats, stats.header); },
      STATS_EVERY_MS - (now - stats.shownAt));
    return;
  }
  clearTimeout(stats.later);
  stats.later = null;
  stats.shownAt = now;
  header = stats.header;
  const times = stats.answeredAt; // in order: the old ones are trimmed from the front
  let old = 0;
  while (old < times.length && now - times[old] > FPS_LONGEST_MS) old += 1;
  if (old) times.splice(0, old);
  let first = times.length;
  while (first > 0 && now - times[first - 1] <= FPS_WINDOW_MS) first -= 1;
  const recent = times.length - first;
  const usedFrom = recent > 1 ? first : Math.max(0, times.length - 2);
  const used = times.length - usedFrom;
  const span = used > 1 ? now - times[usedFrom] : 0;
  figures.fps.textContent = span > 0 ? ((used - 1) * 1000 / span).toFixed(1) : "–";
  if (stats.latencies.length) {
    const last = stats.latencies[stats.latencies.length - 1];
    figures.latency.textContent = `${Math.round(median(stats.latencies))} ms median of the last ${stats.latencies.length}`
      + ` · ${Math.round(last)} ms last`;
  }
  figures.skipped.textContent = skippedText(stats);
  figures.counts.textContent = `${stats.sent} / ${stats.answered} / ${stats.refused}`;
  if (header) {
    figures["faces-found"].textContent = String(header.faces ?? "–");
    const t = header.timings || {};
    figures["server-time"].textContent = Object.keys(t).length
      ? Object.entries(t).map(([name, ms]) => `${name} ${Math.round(ms)}`).join(" · ") + " ms"
      : "–";
  }
}

// ------------------------------------------------------------------------------------------------------ the stream

async function openCamera() {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("This browser offers the camera only to https:// pages or to localhost: open the page that way.");
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: false,
      video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 30 } } });
  } catch (error) {
    if (error.name === "NotAllowedError") throw new Error("The camera was refused: allow it for this site in the browser, then start again.");
    if (error.name === "NotFoundError") throw new Error("No camera was found: connect one, then start again.");
    throw new Error(`The camera could not be opened: ${error.message}`);
  }
}

function openSocket(sourceId, ticket, options) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/v1/live`, [SUBPROTOCOL, TICKET_PREFIX + ticket]);
  ws.binaryType = "arraybuffer";
  return new Promise((resolve, reject) => {
    ws.onopen = () => ws.send(JSON.stringify({ type: "start", source_id: sourceId, ...options }));
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") return;
      const message = JSON.parse(event.data);
      if (message.type === "ready") { ws.swapper = message.swapper; resolve(ws); }
      else if (message.type === "error") reject(new Error(plainWords(message.code, message.detail)));
    };
    ws.onerror = () => {}; // the close event that follows says why
    ws.onclose = (event) => reject(new Error(`The service closed the stream: ${closeText(event)}`));
  });
}

function sendFrame(current) {
  if (session !== current || current.stopping) return;
  const width = camera.videoWidth;
  const height = camera.videoHeight;
  if (!width || current.encoding) return;
  if (current.ws.bufferedAmount > MAX_BUFFERED) {
    current.stats.skipped += 1;
    return;
  }
  const scale = Math.min(1, MAX_WIDTH / width);
  const captureWidth = Math.round(width * scale);
  const captureHeight = Math.round(height * scale);
  if (capture.width !== captureWidth || capture.height !== captureHeight) { // a resize clears it: only on a change
    capture.width = captureWidth;
    capture.height = captureHeight;
  }
  const capturedAt = performance.now();
  captureContext.drawImage(camera, 0, 0, capture.width, capture.height);
  current.encoding = true;
  capture.toBlob(async (blob) => {
    current.encoding = false;
    const open = () => session === current && !current.stopping && current.ws.readyState === WebSocket.OPEN;
    if (!blob || !open()) return;
    const image = await blob.arrayBuffer();
    if (!open()) return; // closed (a draining replica, Stop) while the bytes were read
    current.seq += 1;
    current.ws.send(packFrame({ seq: current.seq, ts: capturedAt }, image));
    current.stats.sent += 1;
  }, "image/jpeg", current.quality / 100);
}

function watchCamera(current) {
  if (camera.requestVideoFrameCallback) {
    const onFrame = () => {
      if (session !== current) return;
      sendFrame(current);
      camera.requestVideoFrameCallback(onFrame);
    };
    camera.requestVideoFrameCallback(onFrame);
  } else {
    current.timer = setInterval(() => sendFrame(current), 1000 / 30);
  }
}

async function onAnswer(current, buffer) {
  const [header, image] = unpackFrame(buffer);
  const stats = current.stats;
  stats.answered += 1;
  stats.dropped += (header.dropped || []).length;
  stats.latencies.push(performance.now() - header.ts);
  if (stats.latencies.length > LATENCY_WINDOW) stats.latencies.shift();
  stats.answeredAt.push(performance.now());
  const bitmap = await createImageBitmap(new Blob([image], { type: "image/jpeg" }));
  if (header.seq > current.drawn) { // decoding may finish out of order: never draw an older frame over a newer one
    current.drawn = header.seq;
    if (swapped.width !== bitmap.width || swapped.height !== bitmap.height) {
      swapped.width = bitmap.width;
      swapped.height = bitmap.height;
    }
    drawSwapped(bitmap);
  }
  bitmap.close();
  if (!current.stopping) showStats(stats, header, true); // after Stop the figures stand still

}

function onText(current, message) {
  if (message.type === "switched") {
    status("Streaming: now wearing the new face.");
    return;
  }
  if (message.type !== "error") return;
  const words = plainWords(message.code, message.detail);
  if (message.seq != null) {
    current.stats.refused += 1;
    status(`A camera picture was refused: ${words}`);
  } else if (message.request === "source") {
    status("Streaming, with the face from before.");
    showError(`The new face could not be used: ${words}`);
  } else {
    showError(words);
  }
}

function release(current) {
  clearInterval(current.timer);
  for (const track of current.stream?.getTracks() || []) track.stop();
  camera.srcObject = null;
  if (session === current) session = null;
  setRunning(false);
  showStats(current.stats); // the final counts, then the figures stand still
  figures.fps.textContent = "–"; // nothing comes back any more
  if (recorder) recorder.stop();
}

// ------------------------------------------------------------------------------------ mirror, full screen, record

// The mirror flips the drawing itself (not only its look), so a recording is what was seen.
function drawSwapped(image) {
  swappedContext.save();
  if (mirror.checked) {
    swappedContext.translate(swapped.width, 0);
    swappedContext.scale(-1, 1);
  }
  swappedContext.drawImage(image, 0, 0);
  swappedContext.restore();
}

mirror.addEventListener("change", () => {
  camera.classList.toggle("mirrored", mirror.checked);
  // the last picture turns at once, not at the next answer
  const copy = document.createElement("canvas");
  [copy.width, copy.height] = [swapped.width, swapped.height];
  copy.getContext("2d").drawImage(swapped, 0, 0);
  swappedContext.save();
  swappedContext.translate(swapped.width, 0);
  swappedContext.scale(-1, 1);
  swappedContext.drawImage(copy, 0, 0);
  swappedContext.restore();
});

function toggleFullscreen() {
  if (document.fullscreenElement) {
    document.exitFullscreen().catch(showError);
  } else {
    $("swapped-view").requestFullscreen().catch(() => showError("This browser did not allow full screen here."));
  }
}
$("fullscreen").addEventListener("click", toggleFullscreen);
swapped.addEventListener("dblclick", toggleFullscreen);
document.addEventListener("fullscreenchange", () => {
  $("fullscreen").textContent = document.fullscreenElement ? "Leave full screen" : "Full screen";
});

let recorder = null;
let recordingUrl = null;

function startRecording() {
  const type = RECORD_TYPES.find((kind) => window.MediaRecorder?.isTypeSupported(kind));
  if (!type) {
    showError("This browser cannot record video: use another browser to record.");
    return;
  }
  const chunks = [];
  const started = performance.now();
  const rec = new MediaRecorder(swapped.captureStream(30), { mimeType: type });
  rec.ondataavailable = (event) => { if (event.data.size) chunks.push(event.data); };
  rec.onstop = () => {
    clearInterval(rec.clock);
    recorder = null;
    $("record").textContent = "Record";
    $("record-state").classList.remove("recording");
    const blob = new Blob(chunks, { type: type.split(";")[0] });
    if (recordingUrl) URL.revokeObjectURL(recordingUrl);
    recordingUrl = URL.createObjectURL(blob);
    const link = $("recording");
    link.href = recordingUrl;
    const extension = type.startsWith("video/mp4") ? "mp4" : "webm";
    link.download = `swapped-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-")}.${extension}`;
    link.textContent = `Download the recording (${seconds((performance.now() - started) / 1000)}, `
      + `${(blob.size / 1e6).toFixed(1)} MB)`;
    link.hidden = false;
    $("record-state").textContent = "";
  };
  rec.start(1000);
  rec.clock = setInterval(() => {
    $("record-state").textContent = `● recording ${seconds((performance.now() - started) / 1000)}`;
  }, 500);
  recorder = rec;
  $("record").textContent = "Stop recording";
  $("record-state").textContent = "● recording";
  $("record-state").classList.add("recording");
  $("recording").hidden = true;
}

$("record").addEventListener("click", () => (recorder ? recorder.stop() : startRecording()));

// ------------------------------------------------------------------------------------------- switch the face

async function switchSource() {
  const current = session;
  const file = $("switch-source").files[0];
  if (!current?.ws || !file) return;
  clearError();
  try {
    status("Preparing the new face…");
    const data = new FormData();
    data.append("source", file);
    if (current.ws.swapper) data.append("swapper", current.ws.swapper); // the stream's own
    const source = await upload("/v1/sources", data);
    if (session !== current || current.ws.readyState !== WebSocket.OPEN) return;
    current.sourceId = source.id; // a reconnect goes on with the new face
    current.ws.send(JSON.stringify({ type: "source", source_id: source.id }));
    status("Switching to the new face…");
  } catch (error) {
    status("Streaming, with the face from before.");
    showError(error);
  } finally {
    $("switch-source").value = "";
  }
}
$("switch-source").addEventListener("change", switchSource);

async function start() {
  clearError();
  const file = $("source").files[0];
  if (!file) {
    showError("Pick a source photo first: the face you want to wear.");
    $("source").focus();
    return;
  }
  const quality = Number($("quality").value);
  if (!$("quality").checkValidity()) {
    showError(`Quality is a whole number from ${$("quality").min} to ${$("quality").max}.`);
    $("quality").focus();
    return;
  }
  const options = { faces: $("faces").value, quality, smoothing: $("smoothing").checked };
  const current = { stats: newStats(), seq: 0, drawn: 0, quality, encoding: false, stopping: false, options,
                    reconnects: 0 };
  session = current;
  setRunning(true);
  try {
    status("Uploading the source photo…");
    const data = new FormData();
    data.append("source", file);
    data.append("swapper", $("swapper").value);  // the stream then swaps with the swapper its source was made for
    const source = await upload("/v1/sources", data, (sent, total) => {
      if (total) status(`Uploading the source photo… ${Math.round(100 * sent / total)}%`);
    });
    status("Opening the camera…");
    current.stream = await openCamera();
    camera.srcObject = current.stream;
    await camera.play();
    status("Connecting…");
    current.sourceId = source.id;
    const { ticket } = await apiJson("/v1/live/tickets", { method: "POST" });
    current.ws = await openSocket(source.id, ticket, options);
  } catch (error) {
    release(current);
    current.ws?.close();
    status("Not streaming.");
    showError(error);
    return;
  }
  attach(current, current.ws);
  status("Streaming.");
  watchCamera(current);
}

function attach(current, ws) {
  ws.onmessage = (event) => {
    if (typeof event.data === "string") onText(current, JSON.parse(event.data));
    else onAnswer(current, event.data).catch(showError);
  };
  ws.onclose = (event) => {
    if (session === current && !current.stopping && RECONNECT_CODES.includes(event.code)) {
      reconnect(current, event);
      return;
    }
    release(current);
    if (event.code === CLOSE_NORMAL) {
      status("Stopped.");
    } else {
      status("Not streaming.");
      showError(`The service closed the stream: ${closeText(event)}`);
    }
  };
}

// A replica leaving (draining, restarting) closes the stream with 1012: the camera stays on, and a new ticket opens
// a new stream (the stored source is shared by every replica); the frame numbers go on.
async function reconnect(current, closed) {
  current.reconnects += 1;
  const began = performance.now();
  status(`The service is restarting (${closed.reason || `close code ${closed.code}`}): reconnecting…`);
  let lastError = null;
  while (session === current && !current.stopping && performance.now() - began < RECONNECT_MS) {
    try {
      const { ticket } = await apiJson("/v1/live/tickets", { method: "POST" });
      const ws = await openSocket(current.sourceId, ticket, current.options);
      if (session !== current || current.stopping) {
        ws.close(CLOSE_NORMAL, "stopped by the page");
        return;
      }
      current.ws = ws;
      attach(current, ws);
      status(`Streaming (reconnected${current.reconnects > 1 ? ` ${current.reconnects} times` : ""}, after `
        + `${Math.round(performance.now() - began)} ms).`);
      return;
    } catch (error) {
      lastError = error;
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_PAUSE_MS));
    }
  }
  if (session !== current) return;
  release(current);
  status("Not streaming.");
  showError(`The stream could not reconnect within ${RECONNECT_MS / 1000} s: ${lastError?.message || closeText(closed)}`);
}

function stop() {
  const current = session;
  if (!current) return;
  current.stopping = true;
  clearTimeout(current.stats.later); // after Stop the figures stand still
  current.stats.later = null;
  status("Stopping: the service answers the frames it has…");
  if (current.ws?.readyState === WebSocket.OPEN) {
    current.ws.send(JSON.stringify({ type: "stop" }));
    setTimeout(() => current.ws.close(CLOSE_NORMAL, "stopped by the page"), STOP_GRACE_MS);
  } else {
    release(current);
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  start();
});
$("stop").addEventListener("click", stop);
window.addEventListener("pagehide", () => session?.ws?.close(CLOSE_NORMAL, "the page was closed"));
