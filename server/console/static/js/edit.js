// Image to image: pick or drop an image, paint a mask (white: repaint), then generate.
import { api, ApiError, notice } from "./api.js";
import { follow } from "./render.js";
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

function maskDataUrl() {
  // White where painted, black elsewhere: the mask AUTOMATIC1111 and Darkroom read.
  const out = document.createElement("canvas");
  out.width = mask.width; out.height = mask.height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.drawImage(mask, 0, 0);
  return out.toDataURL("image/png");
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
$("edit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  notice("");
  if (!picture.width) { notice("Pick an image first."); return; }
  const body = {
    prompt: $("prompt").value,
    init_image: picture.toDataURL("image/png"),
    mask: painted ? maskDataUrl() : null,
    settings: {
      negative_prompt: $("negative").value,
      steps: Number($("steps").value),
      seed: Number($("seed").value),
      width: picture.width - (picture.width % 8),
      height: picture.height - (picture.height % 8),
      denoising_strength: Number($("strength").value),
    },
    options: { format: "png" },
  };
  $("generate").disabled = true;
  try {
    const submitted = await api("/image/generate", { method: "POST", body });
    await follow(submitted.request_id, body.prompt);
  } catch (error) {
    notice(error instanceof ApiError ? error.message : String(error));
  } finally {
    $("generate").disabled = false;
  }
});

(async () => {
  await account;
  const from = new URLSearchParams(location.search).get("from");
  if (from) {
    const item = await api(`/generations/${from}`);
    if (item.images?.[0]) loadImage(item.images[0].url);
    $("prompt").value = item.prompt;
  }
})().catch((error) => notice(error.message));
