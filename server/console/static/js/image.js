import { api, bearer, el, notice } from "./api.js";
import { showImages } from "./render.js";
import { account } from "./shell.js";

const $ = (id) => document.getElementById(id);
const requestId = location.pathname.split("/").pop();

async function load() {
  await account;
  const [item, catalog] = await Promise.all([
    api(`/generations/${requestId}`), api("/loras/available?include_incompatible=true")]);
  const names = new Map(catalog.map((lora) => [lora.id, lora.name]));
  document.querySelector("h1").textContent = item.prompt;
  $("prompt-text").textContent = item.prompt;
  const images = item.images || [];
  showImages($("pictures"), images, item.prompt, requestId);
  const settings = { status: item.status, ...item.settings, format: item.options?.format,
    provider: images[0]?.metadata?.provider, model: images[0]?.metadata?.model ?? item.settings.model };
  $("settings").replaceChildren(...Object.entries(settings).flatMap(([name, value]) =>
    [el("dt", { text: name }), el("dd", { text: value === null || value === undefined || value === "" ? "—" : String(value) })]));
  $("lora-list").replaceChildren(...(item.loras || []).map((l) => el("li", { text: `${names.get(l.id) ?? `LoRA ${l.id}`} at weight ${l.weight}` })));
  if (!item.loras?.length) $("lora-list").append(el("li", { text: "None" }));
  showInputs(item.inputs || {});
  $("infotext").textContent = images.map((i) => i.infotext || "").join("\n\n") || "—";
  if (images[0]) {
    $("download").href = images[0].url;
    $("edit").href = `/ui/edit?from=${requestId}`;
  } else {
    $("download").hidden = true;
    $("edit").hidden = true;
  }
  $("use").addEventListener("click", () => {
    sessionStorage.setItem("darkroom.use", JSON.stringify(
      { prompt: item.prompt, settings: item.settings, loras: item.loras, options: item.options }));
    location.assign("/ui/generate");
  });
  $("delete").addEventListener("click", async () => {
    if (!confirm("Delete this generation and its images?")) return;
    await api(`/generations/${requestId}`, { method: "DELETE" });
    location.assign("/ui/gallery");
  });
}

// An image-to-image's init image and mask: the owner's own links, fetched with the token.
async function showInputs(inputs) {
  const names = { init_image: "Input image", mask: "Mask" };
  const shown = await Promise.all(Object.entries(inputs).map(async ([field, input]) => {
    const response = await fetch(input.url, { headers: bearer() });
    const src = URL.createObjectURL(await response.blob());
    return el("figure", {}, el("img", { src, alt: names[field] ?? field }),
      el("figcaption", { text: `${names[field] ?? field}, ${input.width}×${input.height}` }));
  }));
  $("inputs").replaceChildren(...shown);
  $("inputs-section").hidden = shown.length === 0;
}

load().catch((error) => notice(error.message));
