// Image to image: pick or drop an image, paint a mask (white: repaint), then generate.
import { api, bearer, el, notice, readEvents } from "./api.js";
import { setProgress } from "./render.js";
import { account } from "./shell.js";

const $ = (id) => document.getElementById(id);
const picture = $("picture");
const mask = $("mask");
let painting = false;
let painted = false;

function loadImage(source) {
  const image = new Image();
  image.onload = () => {
    for (const canvas of [picture, mask]) { canvas.width = image.naturalWidth; canvas.height = image.naturalHeight; }
    picture.getContext("2d").drawImage(image, 0, 0);
    clearMask();
  };
  image.src = source;
}

function clearMask() {
  const ctx = mask.getContext("2d");
  ctx.clearRect(0, 0, mask.width, mask.height);
  painted = false;
}

function paint(event) {
  if (!painting) return;
  const box = mask.getBoundingClientRect();
  const x = ((event.clientX - box.left) / box.width) * mask.width;
  const y = ((event.clientY - box.top) / box.height) * mask.height;
  const radius = (Number($("brush").value) / box.width) * mask.width / 2;
  const ctx = mask.getContext("2d");
  ctx.globalCompositeOperation = $("erase").checked ? "destination-out" : "source-over";
  ctx.fillStyle = "rgba(255, 255, 255, 1)";
  ctx.beginPath();
  ctx.arc(x, y, Math.max(1, radius), 0, 2 * Math.PI);
  ctx.fill();
  painted = true;
}

function openAiMask() {
  // OpenAI's mask, which /v1/images/edits takes: fully transparent where painted (repaint).
  const out = document.createElement("canvas");
  out.width = mask.width; out.height = mask.height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.globalCompositeOperation = "destination-out";
  ctx.drawImage(mask, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

mask.addEventListener("pointerdown", (event) => { painting = true; mask.setPointerCapture(event.pointerId); paint(event); });
mask.addEventListener("pointermove", paint);
mask.addEventListener("pointerup", () => { painting = false; });
$("clear").addEventListener("click", clearMask);
$("invert").addEventListener("click", () => {
  const ctx = mask.getContext("2d");
  const data = ctx.getImageData(0, 0, mask.width, mask.height);
  for (let i = 3; i < data.data.length; i += 4) {
    data.data[i] = 255 - data.data[i];
    data.data[i - 3] = data.data[i - 2] = data.data[i - 1] = 255;
  }
  ctx.putImageData(data, 0, 0);
  painted = true;
});
$("image-file").addEventListener("change", () => {
  const file = $("image-file").files[0];
  if (file) loadImage(URL.createObjectURL(file));
});
$("drop").addEventListener("dragover", (event) => event.preventDefault());
$("drop").addEventListener("drop", (event) => {
  event.preventDefault();
  const file = event.dataTransfer.files[0];
  if (file) loadImage(URL.createObjectURL(file));
});
let running = null;

$("cancel").addEventListener("click", () => running?.abort());

$("edit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  notice("");
  if (!picture.width) { notice("Pick an image first."); return; }
  const form = new FormData();
  form.append("image", await new Promise((resolve) => picture.toBlob(resolve, "image/png")), "image.png");
  if (painted) form.append("mask", await openAiMask(), "mask.png");
  form.append("prompt", $("prompt").value);
  form.append("negative_prompt", $("negative").value);
  form.append("strength", $("strength").value);
  form.append("steps", $("steps").value);
  if (Number($("seed").value) >= 0) form.append("seed", $("seed").value);
  form.append("output_format", "png");
  form.append("stream", "true");
  form.append("partial_images", "3");
  await edit(form);
});

// OpenAI's streamed edit: partial images as they come (progress), then the image.
async function edit(form) {
  const state = $("state"), bar = $("progress"), results = $("results");
  running = new AbortController();
  $("generate").disabled = true;
  $("cancel").hidden = false;
  bar.hidden = false;
  setProgress(bar, 0);
  results.replaceChildren();
  state.textContent = "Queued";
  let finished = false;
  try {
    const response = await fetch("/v1/images/edits",
      { method: "POST", body: form, headers: bearer(), signal: running.signal });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      throw new Error(body?.error?.message || `HTTP ${response.status}`);
    }
    for await (const event of readEvents(response)) {
      if (event.error) throw new Error(event.error.message);
      const src = `data:image/png;base64,${event.b64_json}`;
      if (event.type === "image_edit.partial_image") {
        state.textContent = `Rendering: preview ${event.partial_image_index + 1}`;
        setProgress(bar, 25 * (event.partial_image_index + 1));
      } else if (event.type === "image_edit.completed") {
        finished = true;
        setProgress(bar, 100);
        state.textContent = "Done: 1 image(s)";
        results.append(el("figure", {}, el("img", { src, alt: $("prompt").value }),
          el("figcaption", { text: "Edited (in the gallery)" })));
      }
    }
    if (!finished) state.textContent = "Failed";
  } catch (error) {
    state.textContent = error.name === "AbortError" ? "Cancelled" : "Failed";
    if (error.name !== "AbortError") notice(String(error.message || error));
  } finally {
    $("generate").disabled = false;
    $("cancel").hidden = true;
    running = null;
  }
}

(async () => {
  await account;
  const from = new URLSearchParams(location.search).get("from");
  if (from) {
    const item = await api(`/generations/${from}`);
    if (item.images?.[0]) loadImage(item.images[0].url);
    $("prompt").value = item.prompt;
  }
})().catch((error) => notice(error.message));
