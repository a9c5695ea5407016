// The /live page: the camera streams JPEG frames to WS /v1/live and the swapped frames come back onto a canvas.
import { apiJson, applyOptions, clearError, showError, upload } from "/static/common.js";

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
const FPS_WINDOW_MS = 2000;
const STOP_GRACE_MS = 10000;         // after `stop`, how long the service may take to answer what it holds

const $ = (id) => document.getElementById(id);
const form = $("live-form");
applyOptions().catch(showError);
const camera = $("camera");
const swapped = $("swapped");
const swappedContext = swapped.getContext("2d");
const capture = document.createElement("canvas");
const captureContext = capture.getContext("2d");

let session = null; // the running stream: { ws, stream, seq, stats, ... }

function status(text) {
  $("status").textContent = text;
}

function setRunning(running) {
  $("start").disabled = running;
  $("stop").disabled = !running;
  for (const input of form.querySelectorAll("input, select")) input.disabled = running;
}

// ------------------------------------------------------------------------------------------------ frames on the wire

function packFrame(header, image) {
  const head = new TextEncoder().encode(JSON.stringify(header));
  const message = new Uint8Array(4 + head.length + image.byteLength);
  new DataView(message.buffer).setUint32(0, head.length); // big-endian
  message.set(head, 4);
  message.set(new Uint8Array(image), 4 + head.length);
  return message.buffer;
}

function unpackFrame(buffer) {
  const length = new DataView(buffer).getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  return [header, new Uint8Array(buffer, 4 + length)];
}

function closeText(event) {
  return `${event.reason || "the connection ended without a reason"} (close code ${event.code})`;
}

// ---------------------------------------------------------------------------------------------------------- figures

function newStats() {
  return { sent: 0, answered: 0, refused: 0, dropped: 0, skipped: 0, latencies: [], answeredAt: [] };
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

function showStats(stats, header) {
  const now = performance.now();
  stats.answeredAt = stats.answeredAt.filter((t) => now - t <= FPS_WINDOW_MS);
  const span = stats.answeredAt.length > 1 ? now - stats.answeredAt[0] : 0;
  $("fps").textContent = span > 0 ? ((stats.answeredAt.length - 1) * 1000 / span).toFixed(1) : "–";
  if (stats.latencies.length) {
    const last = stats.latencies[stats.latencies.length - 1];
    $("latency").textContent = `${Math.round(median(stats.latencies))} ms median of the last ${stats.latencies.length}`
      + ` · ${Math.round(last)} ms last`;
  }
  $("dropped").textContent = `${stats.dropped}` + (stats.skipped ? ` (and ${stats.skipped} not sent: the connection was busy)` : "");
  $("counts").textContent = `${stats.sent} / ${stats.answered} / ${stats.refused}`;
  if (header) {
    $("faces-found").textContent = String(header.faces ?? "–");
    const t = header.timings || {};
    $("server-time").textContent = Object.keys(t).length
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
      if (message.type === "ready") resolve(ws);
      else if (message.type === "error") reject(new Error(`The service refused the stream: ${message.detail}`));
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
  capture.width = Math.round(width * scale);
  capture.height = Math.round(height * scale);
  const capturedAt = performance.now();
  captureContext.drawImage(camera, 0, 0, capture.width, capture.height);
  current.encoding = true;
  capture.toBlob(async (blob) => {
    current.encoding = false;
    if (!blob || session !== current || current.stopping || current.ws.readyState !== WebSocket.OPEN) return;
    const image = await blob.arrayBuffer();
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
    swappedContext.drawImage(bitmap, 0, 0);
  }
  bitmap.close();
  showStats(stats, header);
}

function onText(current, message) {
  if (message.type !== "error") return;
  if (message.seq != null) {
    current.stats.refused += 1;
    status(`Frame ${message.seq} refused: ${message.detail}`);
  } else {
    showError(`The service: ${message.detail}`);
  }
}

function release(current) {
  clearInterval(current.timer);
  for (const track of current.stream?.getTracks() || []) track.stop();
  camera.srcObject = null;
  if (session === current) session = null;
  setRunning(false);
}

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
