// Swap a photo: source + target -> POST /v1/swap-image -> the swapped photo beside the target.
// Once the target is chosen its faces are found (POST /v1/analyze), outlined and numbered left to right; clicking a
// face (or Enter/Space on it) picks it, and then only the picked faces are replaced: the request carries
// `pick_points` (the picked faces' centres, in the photo's pixels) and, with several source photos, `pick_sources`
// (which photo each picked face becomes).
import { api, apiJson, appendOptions, applyOptions, clearError, dropZones, el, optionValue, showError } from "/static/common.js";
import { centre, clearPicksOnFacesChange, faceButton, markPicked, togglePick } from "/static/faces.js";

const form = document.getElementById("swap-form");
const status = document.getElementById("status");
const picker = document.getElementById("picker");
const frame = document.getElementById("target-faces");
const pickerStatus = document.getElementById("picker-status");
const sourcesList = document.getElementById("picked-sources");
const unpickButton = document.getElementById("unpick");
let urls = [];

const found = {
  faces: [],            // [{number, box}] numbered left to right
  width: 0,
  height: 0,
  picked: new Set(),    // face numbers
  url: null,            // object URL of the target shown
  asked: 0,             // the latest analysis asked for (an older answer is dropped)
};

const optionsReady = applyOptions().catch(showError);
dropZones(); // a dropped file fires the input's change (below)
form.target.addEventListener("change", findFaces);
form.source.addEventListener("change", showSources);
form.score_threshold.addEventListener("change", () => { if (form.target.files[0]) findFaces(); });
unpickButton.addEventListener("click", unpick);
clearPicksOnFacesChange(form.faces, () => { if (found.picked.size) unpick(); }); // picking is "these faces"

function unpick() {
  found.picked.clear();
  showPicks();
}

// --------------------------------------------------------------------------------------------- the faces found

async function findFaces() {
  const target = form.target.files[0];
  const asked = ++found.asked;
  found.faces = [];
  found.picked.clear();
  if (found.url) URL.revokeObjectURL(found.url);
  found.url = null;
  frame.replaceChildren();
  picker.hidden = !target;
  if (!target) return;
  await optionsReady;
  clearError();
  pickerStatus.textContent = "looking for faces…";
  const data = new FormData();
  data.append("photo", target);
  data.append("score_threshold", optionValue(form.score_threshold));
  let result;
  try {
    result = await apiJson("/v1/analyze", { method: "POST", body: data });
  } catch (error) {
    if (asked !== found.asked) return;
    pickerStatus.textContent = "";
    showError(error);
    return;
  }
  if (asked !== found.asked) return;
  found.width = result.width;
  found.height = result.height;
  found.faces = result.faces.map((face) => face.box)
    .sort((a, b) => a[0] - b[0] || a[1] - b[1])
    .map((box, index) => ({ number: index + 1, box }));
  found.url = URL.createObjectURL(target);
  frame.replaceChildren(el("img", { src: found.url, alt: "the target photo, its faces outlined" }),
    ...found.faces.map((face) => faceButton(face, found.width, found.height, false, toggle)));
  showPicks();
}

function toggle(number) {
  togglePick(found.picked, number, form.faces);
  showPicks();
}

/** The buttons' pressed state, the words under the photo and, with several source photos, who becomes whom. */
function showPicks() {
  for (const button of frame.querySelectorAll(".face-box")) markPicked(button, found.picked.has(Number(button.dataset.number)));
  const count = found.faces.length;
  const picked = found.picked.size;
  if (!count) {
    pickerStatus.textContent = "No face found in this photo — try one where the faces are larger, or raise the sensitivity.";
  } else if (!picked) {
    pickerStatus.textContent = `${count} face${count > 1 ? "s" : ""} found. Click the faces to replace — with none picked, the "Faces" setting decides.`;
  } else {
    pickerStatus.textContent = `Face${picked > 1 ? "s" : ""} ${pickedNumbers().join(", ")} will be replaced; the others stay as they are.`;
  }
  unpickButton.hidden = !picked;
  showSources();
}

const pickedNumbers = () => [...found.picked].sort((a, b) => a - b);

/** With two or more source photos: for each picked face, which photo it becomes (or all of them as one person). */
function showSources() {
  const photos = [...form.source.files];
  const numbers = pickedNumbers();
  sourcesList.hidden = photos.length < 2 || !numbers.length;
  const kept = Object.fromEntries([...sourcesList.querySelectorAll("select")].map((s) => [s.name, s.value]));
  sourcesList.replaceChildren(...(sourcesList.hidden ? [] : numbers.map((number) => {
    const name = `face-${number}`;
    const select = el("select", { name, "aria-label": `the photo face ${number} becomes` },
      el("option", { value: "" }, "all the photos (one person)"),
      ...photos.map((photo, index) => el("option", { value: String(index) }, `photo ${index + 1}: ${photo.name}`)));
    if (kept[name] !== undefined && select.querySelector(`option[value="${kept[name]}"]`)) select.value = kept[name];
    return el("label", { class: "field" }, el("span", {}, `Face ${number} becomes`), select);
  })));
}

/** The picks as the API takes them; throws when some faces name a photo and others all of them. */
function appendPicks(data) {
  const numbers = pickedNumbers();
  if (!numbers.length) return;
  const boxes = new Map(found.faces.map((face) => [face.number, face.box]));
  data.set("faces", "all");
  data.append("pick_points", JSON.stringify(numbers.map((number) => centre(boxes.get(number)))));
  const chosen = [...sourcesList.querySelectorAll("select")].map((select) => select.value);
  if (sourcesList.hidden || chosen.every((value) => value === "")) return;
  if (chosen.some((value) => value === "")) {
    throw new Error("Choose a photo for every picked face, or \"all the photos\" for every one.");
  }
  data.append("pick_sources", JSON.stringify(chosen.map(Number)));
}

// ----------------------------------------------------------------------------------------------------- the swap

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError();
  const data = new FormData();
  const target = form.target.files[0];
  data.append("target", target);
  for (const file of form.source.files) data.append("source", file);
  appendOptions(form, data);
  try {
    appendPicks(data);
  } catch (error) {
    showError(error);
    return;
  }
  const button = document.getElementById("swap");
  button.disabled = true;
  status.textContent = "swapping…";
  try {
    const response = await api("/v1/swap-image", { method: "POST", body: data });
    const faces = response.headers.get("X-Faces-Swapped");
    const swapped = await response.blob();
    for (const url of urls) URL.revokeObjectURL(url);
    urls = [URL.createObjectURL(swapped), URL.createObjectURL(target)];
    document.getElementById("swapped-photo").src = urls[0];
    document.getElementById("target-photo").src = urls[1];
    const download = document.getElementById("download");
    download.href = urls[0];
    download.download = `swapped-${target.name.replace(/\.[^.]*$/, "")}.${swapped.type === "image/png" ? "png" : "jpg"}`;
    document.getElementById("swapped-caption").textContent = `swapped: ${faces} face${faces === "1" ? "" : "s"}`;
    status.textContent = "";
    document.getElementById("swapped").hidden = false;
  } catch (error) {
    status.textContent = "";
    showError(error);
  } finally {
    button.disabled = false;
  }
});
