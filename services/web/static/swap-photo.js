// Swap a photo: source + target -> POST /v1/swap-image -> the swapped photo beside the target.
import { api, appendOptions, applyOptions, dropZones, clearError, showError } from "/static/common.js";

const form = document.getElementById("swap-form");
const status = document.getElementById("status");
let urls = [];

dropZones();
applyOptions().catch(showError);

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clearError();
  const data = new FormData();
  const target = form.target.files[0];
  data.append("target", target);
  for (const file of form.source.files) data.append("source", file);
  appendOptions(form, data);
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
