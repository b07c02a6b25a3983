// One generation from submit to images: queue place, a progress bar, latent previews
// (Server-Sent Events), Cancel; then the images with their seeds.
import { api, el, events, notice } from "./api.js";

export async function follow(requestId, prompt) {
  const state = document.getElementById("state");
  const bar = document.getElementById("progress");
  const preview = document.getElementById("preview");
  const cancel = document.getElementById("cancel");
  const results = document.getElementById("results");
  const stop = new AbortController();
  results.replaceChildren();
  bar.hidden = false;
  cancel.hidden = false;
  setProgress(bar, 0);
  cancel.onclick = async () => {
    cancel.disabled = true;
    await api(`/generations/${requestId}/cancel`, { method: "POST" });
  };
  let last = null;
  try {
    for await (const status of events(`/generations/${requestId}/events?previews=true`, stop.signal)) {
      last = status;
      if (status.status === "pending") {
        const place = status.queue_position;
        state.textContent = place ? `Queued: position ${place}` : "Queued";
      } else if (status.status === "processing") {
        state.textContent = `Rendering: step ${status.step ?? 0} of ${status.total_steps ?? "?"}`;
        setProgress(bar, Math.round((status.progress ?? 0) * 100));
        if (status.preview && preview) {
          preview.src = status.preview;
          preview.hidden = false;
        }
      }
    }
  } finally {
    cancel.hidden = true;
    cancel.disabled = false;
    if (preview) preview.hidden = true;
  }
  if (last?.status === "completed") {
    setProgress(bar, 100);
    state.textContent = `Done: ${last.images.length} image(s)`;
    showImages(results, last.images, prompt, requestId);
  } else if (last?.status === "failed") {
    bar.hidden = true;
    state.textContent = last.error?.code === "CANCELLED" ? "Cancelled" : "Failed";
    notice(last.error?.message || "The generation failed");
  }
  return last;
}

export function setProgress(bar, percent) {
  bar.setAttribute("aria-valuenow", String(percent));
  bar.querySelector("span").style.width = `${percent}%`;
}

export function showImages(box, images, prompt, requestId) {
  box.replaceChildren(...images.map((image, index) => el("figure", {},
    el("a", { href: `/ui/image/${requestId}` },
      el("img", { src: image.url, alt: prompt, loading: "lazy",
        width: image.metadata.width, height: image.metadata.height })),
    el("figcaption", { text: `Seed ${image.metadata.seed}` , "data-index": index }))));
}
