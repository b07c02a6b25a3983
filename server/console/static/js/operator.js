import { api, el, notice } from "./api.js";
import { bars, labelledBars } from "./charts.js";
import { account } from "./shell.js";

const $ = (id) => document.getElementById(id);
const rows = (id, items) => $(id).querySelector("tbody").replaceChildren(...items);
const cell = (text) => el("td", { text: text === null || text === undefined ? "—" : String(text) });

async function queue() {
  const { items } = await api("/admin/queue");
  rows("queue", items.map((item) => el("tr", {},
    cell(item.user), cell(item.prompt), cell(item.status),
    cell(item.status === "processing" ? `${Math.round((item.progress ?? 0) * 100)}%` : `#${item.queue_position ?? "?"}`),
    el("td", {}, el("button", { type: "button", class: "quiet", text: "Cancel",
      "aria-label": `Cancel ${item.user}'s generation`,
      onclick: async () => { await api(`/admin/generations/${item.request_id}/cancel`, { method: "POST" }); refresh(); } })))));
  if (!items.length) rows("queue", [el("tr", {}, el("td", { colspan: 5, text: "The queue is empty." }))]);
}

async function devices() {
  const response = await fetch("/health");
  const health = await response.json();
  const list = [];
  for (const device of health.devices || []) {
    const details = Object.entries(device).filter(([k]) => !["name", "state"].includes(k))
      .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
    list.push(el("tr", {}, cell(device.name), cell("device"), cell(device.state), cell(details)));
  }
  for (const node of health.nodes || []) list.push(el("tr", {}, cell(node.id ?? node.node), cell("node"), cell(node.state ?? (node.alive ? "alive" : "")), cell(JSON.stringify(node))));
  for (const [name, provider] of Object.entries(health.providers || {})) {
    list.push(el("tr", {}, cell(name), cell("provider"), cell(provider.state), cell(JSON.stringify(provider))));
  }
  rows("devices", list);
}

async function library() {
  const [models, loras] = await Promise.all([api("/models?include_incompatible=true"), api("/loras/available?include_incompatible=true")]);
  $("model-list").replaceChildren(...models.map((m) => el("li", { text: `${m.title}${m.default ? " (default)" : ""}${m.inpainting ? " (inpainting only)" : ""}${m.compatible ? "" : ` — incompatible: ${m.incompatible_reason}`}` })));
  $("lora-library").replaceChildren(...loras.map((l) => el("li", { text: `${l.name}${l.compatible ? "" : ` — incompatible: ${l.incompatible_reason}`}` })));
}

async function users() {
  const { items } = await api("/admin/users");
  rows("users", items.filter((u) => !u.builtin).map((user) => {
    const amount = el("input", { type: "number", step: "any", "aria-label": `Credits to add for ${user.name}`, class: "amount" });
    return el("tr", {},
      cell(user.name + (user.admin ? " (admin)" : "")),
      cell(user.credits.unlimited ? "unlimited" : user.credits.balance),
      cell(user.credits.held), cell(user.charged), cell(user.active),
      el("td", { class: "inline" }, amount,
        el("button", { type: "button", class: "quiet", text: "Add credits", "aria-label": `Add credits for ${user.name}`,
          onclick: async () => { await api(`/admin/users/${encodeURIComponent(user.name)}/credits`, { method: "POST", body: { amount: Number(amount.value) } }); users(); } }),
        el("button", { type: "button", class: "danger", text: "Revoke tokens", "aria-label": `Revoke ${user.name}'s tokens`,
          onclick: async () => { if (confirm(`Revoke every token of ${user.name}?`)) { await api(`/admin/users/${encodeURIComponent(user.name)}/revoke`, { method: "POST" }); users(); } } })));
  }));
}

async function charts() {
  const activity = await api("/admin/activity");
  const labels = activity.minutes.map((t) => new Date(t * 1000).toLocaleTimeString());
  bars($("chart-images"), activity.images, labels);
  bars($("chart-queue"), activity.queue_depth, labels);
  labelledBars($("chart-speed"), activity.render_seconds.map((r) => ({ label: `${r.device} · ${r.model}`, value: r.seconds_per_image })));
}

async function refresh() {
  try { await Promise.all([queue(), devices(), users(), charts()]); } catch (error) { notice(error.message); }
}

$("refresh-models").addEventListener("click", async () => { await api("/models/refresh", { method: "POST" }); library(); });
$("refresh-loras").addEventListener("click", async () => { await api("/loras/refresh", { method: "POST" }); library(); });
$("add-user").addEventListener("submit", async (event) => {
  event.preventDefault();
  const credits = $("new-credits").value;
  try {
    const created = await api("/admin/users", { method: "POST", body: {
      name: $("new-name").value, credits: credits === "" ? null : Number(credits), admin: $("new-admin").checked } });
    const shown = $("new-token");
    shown.textContent = `Token for ${created.name} (shown once): ${created.token}`;
    shown.hidden = false;
    notice("");
    users();
  } catch (error) { notice(error.message); }
});

(async () => {
  const me = await account;
  if (!me.admin) { notice("Only administrators can see this page."); document.querySelectorAll("main section").forEach((s) => { s.hidden = true; }); return; }
  await Promise.all([refresh(), library()]);
  setInterval(refresh, 5000);
})().catch((error) => notice(error.message));
