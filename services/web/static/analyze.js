// The analyse page: a photo or a camera selfie -> POST /v1/analyze -> boxes, landmarks and head pose drawn over it.
import { apiJson, appendOptions, applyOptions, clearError, dropZones, el, showError } from "/static/common.js";

export const BOX_COLOUR = "#00e5ff";
const LANDMARK_COLOUR = "#ffd600";
const AXIS_COLOURS = ["#e53935", "#43a047", "#1e63e9"]; // x: the face's left (image right when frontal), y: up, z: gaze
const LANDMARK_NAMES = ["right eye", "left eye", "nose", "right mouth corner", "left mouth corner"];

const form = document.getElementById("analyze-form");
const status = document.getElementById("status");
const preview = document.getElementById("preview");
let camera = null;

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const photo = form.photo.files[0];
  if (!photo) { showError("Pick a photo first (or use the camera)."); return; }
  analyse(photo);
});

dropZones((input) => input.files[0] && analyse(input.files[0]));
applyOptions().catch(showError);

document.getElementById("camera").addEventListener("click", async () => {
  clearError();
  try {
    camera = await navigator.mediaDevices.getUserMedia({ video: { width: 1280, height: 720 }, audio: false });
  } catch (error) {
    showError(`The camera is not available (${error.message}). Pick a photo instead.`);
    return;
  }
  preview.srcObject = camera;
  preview.hidden = false;
  document.getElementById("snap").hidden = false;
  await preview.play();
});

document.getElementById("snap").addEventListener("click", async () => {
  const canvas = el("canvas", { width: preview.videoWidth, height: preview.videoHeight });
  canvas.getContext("2d").drawImage(preview, 0, 0);
  for (const track of camera.getTracks()) track.stop();
  preview.hidden = true;
  document.getElementById("snap").hidden = true;
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
  analyse(new File([blob], "selfie.jpg", { type: "image/jpeg" }));
});

async function analyse(photo) {
  clearError();
  status.textContent = "analysing…";
  const data = new FormData();
  data.append("photo", photo);
  appendOptions(form, data);
  try {
    const [result, image] = await Promise.all([
      apiJson("/v1/analyze", { method: "POST", body: data }),
      createImageBitmap(photo, { imageOrientation: "from-image" }),
    ]);
    const found = result.faces.length > 0;
    document.getElementById("found").hidden = !found;
    document.getElementById("none-found").hidden = found;
    if (found) {
      draw(image, result.faces);
      list(result.faces);
    }
    status.textContent = `${result.faces.length || "no"} face${result.faces.length === 1 ? "" : "s"} found in ${result.width}×${result.height}`;
  } catch (error) {
    status.textContent = "";
    document.getElementById("found").hidden = document.getElementById("none-found").hidden = true;
    showError(error);
  }
}

function draw(image, faces) {
  const canvas = document.getElementById("drawing");
  canvas.width = image.width;
  canvas.height = image.height;
  canvas.dataset.faces = faces.length;
  const g = canvas.getContext("2d");
  g.drawImage(image, 0, 0);
  const line = Math.max(2, Math.round(Math.max(image.width, image.height) / 300));
  g.lineWidth = line;
  g.font = `${Math.max(12, line * 6)}px system-ui, sans-serif`;
  faces.forEach((face, index) => {
    const [x1, y1, x2, y2] = face.box.map(Math.round);
    g.strokeStyle = BOX_COLOUR;
    g.strokeRect(x1, y1, x2 - x1, y2 - y1);
    g.fillStyle = BOX_COLOUR;
    g.fillText(`${index + 1} · ${face.score.toFixed(2)}`, x1, Math.max(y1 - line * 2, line * 6));
    g.fillStyle = LANDMARK_COLOUR;
    for (const [x, y] of face.landmarks) {
      g.beginPath();
      g.arc(x, y, line * 1.5, 0, 2 * Math.PI);
      g.fill();
    }
    drawPose(g, face.landmarks[2], face.pose, 0.4 * (x2 - x1), line);
  });
}

/** The head's axes, rotated by its pose and seen from the camera (orthographic), from the nose. */
function drawPose(g, [nx, ny], pose, length, line) {
  const rad = Math.PI / 180;
  const [p, y, r] = [pose.pitch * rad, pose.yaw * rad, pose.roll * rad];
  // Image axes: x right, y down, z towards the viewer. Pitch > 0 up, yaw > 0 to the image's right, roll > 0 clockwise.
  const rotate = ([vx, vy, vz]) => {
    [vy, vz] = [vy * Math.cos(p) - vz * Math.sin(p), vy * Math.sin(p) + vz * Math.cos(p)];
    [vx, vz] = [vx * Math.cos(y) + vz * Math.sin(y), -vx * Math.sin(y) + vz * Math.cos(y)];
    [vx, vy] = [vx * Math.cos(r) - vy * Math.sin(r), vx * Math.sin(r) + vy * Math.cos(r)];
    return [vx, vy];
  };
  [[1, 0, 0], [0, -1, 0], [0, 0, 1]].forEach((axis, index) => {
    const [dx, dy] = rotate(axis);
    g.strokeStyle = AXIS_COLOURS[index];
    g.lineWidth = line * 1.5;
    g.beginPath();
    g.moveTo(nx, ny);
    g.lineTo(nx + dx * length, ny + dy * length);
    g.stroke();
  });
  g.lineWidth = line;
}

// The table's columns; at phone width each face is a card of "column: value" lines (style.css table.stack).
const COLUMNS = ["face", "certainty", "box (left, top, right, bottom)", "turned (yaw)", "tilted up (pitch)",
  "leaning (roll)", "landmarks (x, y)"];

function list(faces) {
  const table = document.getElementById("faces");
  const degrees = (value) => `${value.toFixed(1)}°`;
  const cells = (face, index) => [
    String(index + 1),
    face.score.toFixed(3),
    face.box.map((v) => v.toFixed(0)).join(", "),
    degrees(face.pose.yaw),
    degrees(face.pose.pitch),
    degrees(face.pose.roll),
    face.landmarks.map(([x, y], i) => `${LANDMARK_NAMES[i]} ${x.toFixed(0)}, ${y.toFixed(0)}`).join("; "),
  ];
  table.replaceChildren(
    el("thead", {}, el("tr", {}, ...COLUMNS.map((name) => el("th", { scope: "col" }, name)))),
    el("tbody", {}, ...faces.map((face, index) => el("tr", { class: "face" },
      ...cells(face, index).map((text, column) => el("td", { "data-label": COLUMNS[column] }, text))))));
}
