import { api, ApiError, el, notice } from "./api.js";
import { follow } from "./render.js";
import { account } from "./shell.js";

const $ = (id) => document.getElementById(id);
let samplers = [];

function option(value, label, selected = false) {
  return el("option", { value, text: label ?? value, selected });
}

async function load() {
  await account;
  const [models, loras, presets, list] = await Promise.all([
    api("/models"), api("/loras/available"), api("/presets"), api("/samplers"),
  ]);
  // Text to image here: inpainting models render only jobs with a mask.
  $("model").replaceChildren(...models.filter((m) => !m.inpainting).map((m) => option(m.default ? "" : m.title, m.title + (m.default ? " (default)" : ""))));
  samplers = list.samplers;
  const names = [...new Set(samplers.map((s) => s.sampler))];
  $("sampler").replaceChildren(...names.map((name) => option(name, name, name === "Euler")));
  fillSchedules();
  $("sampler").addEventListener("change", fillSchedules);
  $("loras").replaceChildren(...loras.map(loraRow));
  $("preset").replaceChildren(...presets.map((p) => option(p.name)));
  applyStored();
}

function fillSchedules(chosen) {
  const sampler = $("sampler").value;
  const options = samplers.filter((s) => s.sampler === sampler);
  $("schedule").replaceChildren(...options.map((s) => option(s.id, s.schedule, s.id === chosen)));
}

function loraRow(lora) {
  const id = `lora-${lora.id}`;
  return el("li", { class: "lora" },
    lora.thumbnail_url ? el("img", { src: lora.thumbnail_url, alt: "", width: 48, height: 48 }) : null,
    el("input", { type: "checkbox", id, "data-lora": lora.id }),
    el("label", { for: id, text: lora.name }),
    el("label", { for: `${id}-weight`, class: "sr", text: `Weight of ${lora.name}` }),
    el("input", { type: "number", id: `${id}-weight`, min: 0, max: 2, step: 0.05,
      value: lora.preferred_weight ?? 1, class: "weight" }));
}

function request() {
  const loras = [...document.querySelectorAll("[data-lora]:checked")].map((box) => ({
    id: Number(box.dataset.lora), weight: Number($(`${box.id}-weight`).value),
  }));
  return {
    prompt: $("prompt").value,
    settings: {
      negative_prompt: $("negative").value,
      model: $("model").value || null,
      sampler: $("schedule").value,
      steps: Number($("steps").value),
      cfg_scale: Number($("cfg").value),
      width: Number($("width").value),
      height: Number($("height").value),
      seed: Number($("seed").value),
    },
    loras,
    options: { num_images: Number($("count").value), format: $("format").value,
      provider: $("provider").value },
  };
}

function fill(body) {
  const s = body.settings || {};
  $("prompt").value = body.prompt ?? $("prompt").value;
  $("negative").value = s.negative_prompt ?? "";
  for (const [id, value] of [["steps", s.steps], ["cfg", s.cfg_scale], ["width", s.width],
    ["height", s.height], ["seed", s.seed]]) if (value !== undefined) $(id).value = value;
  if (s.model !== undefined) $("model").value = s.model || "";
  const known = samplers.find((x) => x.id === s.sampler);
  if (known) { $("sampler").value = known.sampler; fillSchedules(known.id); }
  $("size").value = "custom";
  for (const box of document.querySelectorAll("[data-lora]")) box.checked = false;
  for (const lora of body.loras || []) {
    const box = $(`lora-${lora.id}`);
    if (box) { box.checked = true; $(`lora-${lora.id}-weight`).value = lora.weight; }
  }
  if (body.options?.num_images) $("count").value = body.options.num_images;
  if (body.options?.format) $("format").value = body.options.format;
}

function applyStored() {
  const stored = sessionStorage.getItem("darkroom.use");
  if (!stored) return;
  sessionStorage.removeItem("darkroom.use");
  fill(JSON.parse(stored));
}

$("size").addEventListener("change", () => {
  const [w, h] = $("size").value.split("x");
  if (h) { $("width").value = w; $("height").value = h; }
});
$("dice").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2 ** 32); });
$("load-preset").addEventListener("click", async () => {
  const presets = await api("/presets");
  const chosen = presets.find((p) => p.name === $("preset").value);
  if (chosen) fill({ prompt: $("prompt").value, settings: chosen.settings, loras: chosen.loras });
});
$("save-preset").addEventListener("click", async () => {
  const body = request();
  try {
    await api("/presets/save", { method: "POST",
      body: { name: $("preset-name").value, settings: body.settings, loras: body.loras } });
    const presets = await api("/presets");
    $("preset").replaceChildren(...presets.map((p) => option(p.name)));
    notice("");
  } catch (error) { notice(error.message); }
});
$("generate-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  notice("");
  const button = $("generate");
  button.disabled = true;
  try {
    const body = request();
    const submitted = await api("/image/generate", { method: "POST", body });
    await follow(submitted.request_id, body.prompt);
  } catch (error) {
    notice(error instanceof ApiError ? error.message : String(error));
  } finally {
    button.disabled = false;
  }
});

load().catch((error) => notice(error.message));
