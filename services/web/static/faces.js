// The face picker the jobs page's preview and the swap-photo page share: an outline button over each face found
// (placed in % of the picture, numbered, pressed when picked), a face's centre (what the API takes as a pick), and
// the rule between picks and the "Faces" setting: picking a face sets "Faces" back to "all" (picking is "these
// faces"), and changing "Faces" away from "all" clears the picks.
import { el } from "/static/common.js";

/** The centre of a box [x1, y1, x2, y2], in whole pixels. */
export function centre([x1, y1, x2, y2]) {
  return [Math.round((x1 + x2) / 2), Math.round((y1 + y2) / 2)];
}

/** Sets a face button's pressed state and its label. */
export function markPicked(button, picked) {
  button.setAttribute("aria-pressed", String(picked));
  button.setAttribute("aria-label", `face ${button.dataset.number}${picked ? ", picked" : ""}`);
}

/**
 * The outline button of `face` ({number, box}) over a picture `width` × `height` pixels: clicking it (or
 * Enter/Space on it) calls onToggle(number). `extraClass` is added to `face-box`.
 */
export function faceButton(face, width, height, picked, onToggle, extraClass = "") {
  const [x1, y1, x2, y2] = face.box;
  const button = el("button", { type: "button", class: `face-box${extraClass ? ` ${extraClass}` : ""}`,
    "data-number": String(face.number), onclick: () => onToggle(face.number) }, el("span", {}, String(face.number)));
  markPicked(button, picked);
  // CSSOM, not a style attribute: the pages' Content-Security-Policy allows it
  Object.assign(button.style, { left: `${(100 * x1) / width}%`, top: `${(100 * y1) / height}%`,
    width: `${(100 * (x2 - x1)) / width}%`, height: `${(100 * (y2 - y1)) / height}%` });
  return button;
}

/** Picks `number` in the set `numbers`, or unpicks it; with a face picked, the `faces` select goes back to "all". */
export function togglePick(numbers, number, faces) {
  if (numbers.has(number)) numbers.delete(number); else numbers.add(number);
  if (numbers.size && faces.value !== "all") faces.value = "all";
}

/** Calls clear() when the `faces` select changes away from "all" (the picks no longer apply). */
export function clearPicksOnFacesChange(faces, clear) {
  faces.addEventListener("change", () => { if (faces.value !== "all") clear(); });
}
