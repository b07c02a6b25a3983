// Small SVG charts, drawn from numbers the server already has.
const NS = "http://www.w3.org/2000/svg";

function svg(tag, attributes, text) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

export function bars(target, values, labels, { width = 600, height = 120 } = {}) {
  const top = Math.max(1, ...values);
  const step = width / Math.max(1, values.length);
  target.setAttribute("viewBox", `0 0 ${width} ${height + 16}`);
  target.replaceChildren(
    svg("text", { x: 0, y: 10, class: "axis" }, `max ${top}`),
    ...values.map((value, i) => {
      const h = (value / top) * (height - 14);
      const bar = svg("rect", { x: i * step + 1, y: height - h, width: Math.max(1, step - 2), height: h });
      bar.append(svg("title", {}, `${labels[i]}: ${value}`));
      return bar;
    }),
  );
}

export function labelledBars(target, rows, { width = 600, row = 22 } = {}) {
  const top = Math.max(0.001, ...rows.map((r) => r.value));
  target.setAttribute("viewBox", `0 0 ${width} ${Math.max(1, rows.length) * row}`);
  target.replaceChildren(...rows.flatMap((r, i) => [
    svg("text", { x: 0, y: i * row + 15, class: "axis" }, r.label),
    svg("rect", { x: 260, y: i * row + 4, height: row - 8, width: ((width - 330) * r.value) / top }),
    svg("text", { x: width - 60, y: i * row + 15, class: "axis" }, `${r.value} s`),
  ]));
  if (!rows.length) target.append(svg("text", { x: 0, y: 15, class: "axis" }, "No images in the last hour"));
}
