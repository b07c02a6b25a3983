import { api, el, notice } from "./api.js";
import { account } from "./shell.js";

const $ = (id) => document.getElementById(id);
const PER_PAGE = 50;
let page = 1;
const selected = new Map();

function query() {
  const params = new URLSearchParams({ page, per_page: PER_PAGE });
  for (const [name, value] of new FormData($("filters"))) if (value) params.set(name, value);
  return params;
}

function tile(item) {
  const first = (item.images || [])[0];
  const id = `pick-${item.request_id}`;
  const picture = first
    ? el("img", { src: first.thumbnail_url, alt: item.prompt, loading: "lazy", width: 256, height: 256 })
    : el("span", { class: "placeholder", text: item.status });
  return el("li", { class: "tile" },
    el("a", { href: `/ui/image/${item.request_id}`, title: item.prompt }, picture),
    el("span", { class: "caption", text: item.prompt }),
    first ? el("span", { class: "pick" },
      el("input", { type: "checkbox", id, checked: selected.has(item.request_id),
        onchange: (event) => toggle(item, event.target.checked) }),
      el("label", { for: id, text: "Compare" })) : null);
}

function toggle(item, on) {
  if (on) selected.set(item.request_id, item); else selected.delete(item.request_id);
  $("compare").disabled = selected.size < 2 || selected.size > 4;
}

async function show() {
  notice("");
  try {
    const result = await api(`/generations/history?${query()}`);
    $("grid").replaceChildren(...result.items.map(tile));
    $("count").textContent = `${result.itemsTotal} generation(s), page ${result.curPage} of ${Math.max(1, result.pageTotal)}`;
    $("newer").disabled = !result.prevPage;
    $("older").disabled = !result.nextPage;
  } catch (error) { notice(error.message); }
}

async function load() {
  await account;
  const [models, loras] = await Promise.all([api("/models"), api("/loras/available")]);
  $("f-model").append(...models.map((m) => el("option", { value: m.name, text: m.title })));
  $("f-lora").append(...loras.map((l) => el("option", { value: l.id, text: l.name })));
  await show();
}

$("filters").addEventListener("submit", (event) => { event.preventDefault(); page = 1; show(); });
$("newer").addEventListener("click", () => { page -= 1; show(); });
$("older").addEventListener("click", () => { page += 1; show(); });
$("compare").addEventListener("click", () => {
  const box = $("comparison");
  box.replaceChildren(...[...selected.values()].map((item) => el("figure", {},
    el("img", { src: item.images[0].url, alt: item.prompt }),
    el("figcaption", { text: `${item.prompt} · seed ${item.images[0].metadata.seed}` }))));
  box.hidden = false;
  box.scrollIntoView();
});

load().catch((error) => notice(error.message));
