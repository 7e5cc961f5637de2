// Charts drawn as inline SVG: a line chart over time and a horizontal bar chart. Colours come
// from CSS classes (series-0, series-1, ...), so the stylesheet decides them.

const SVG = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, value);
  for (const child of children) el.append(child instanceof Node ? child : String(child));
  return el;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const step = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 5, 10]) if (m * step >= value) return m * step;
  return 10 * step;
}

function short(n) {
  if (n >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${+(n / 1e3).toFixed(1)}k`;
  return String(n);
}

function legend(series) {
  const box = document.createElement("ul");
  box.className = "legend";
  series.forEach((serie, i) => {
    const item = document.createElement("li");
    item.className = `series-${i}`;
    item.textContent = serie.name;
    box.append(item);
  });
  return box;
}

function figure(title, summary, svg, series) {
  const fig = document.createElement("figure");
  fig.className = "chart";
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title}: ${summary}`);
  fig.append(caption, svg, legend(series));
  return fig;
}

// series: [{name, points: [[x, y], ...]}] sharing x values (time in seconds).
export function lineChart(title, series, formatX) {
  const W = 640, H = 220, L = 48, R = 12, T = 12, B = 28;
  const xs = series[0]?.points.map((p) => p[0]) ?? [];
  const maxY = niceMax(Math.max(0, ...series.flatMap((sr) => sr.points.map((p) => p[1]))));
  const x0 = xs[0] ?? 0, x1 = xs[xs.length - 1] ?? 1;
  const px = (x) => L + ((x - x0) / Math.max(1, x1 - x0)) * (W - L - R);
  const py = (y) => T + (1 - y / maxY) * (H - T - B);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "line-chart" });
  for (let i = 0; i <= 4; i++) {
    const y = (maxY * i) / 4;
    svg.append(s("line", { x1: L, x2: W - R, y1: py(y), y2: py(y), class: "grid" }));
    svg.append(s("text", { x: L - 6, y: py(y) + 4, class: "axis", "text-anchor": "end" }, short(y)));
  }
  const ticks = Math.min(xs.length, 5);
  for (let i = 0; i < ticks; i++) {
    const x = xs[Math.round((i * (xs.length - 1)) / Math.max(1, ticks - 1))];
    // The outer labels align inward, so none is cut at the chart's edge.
    const anchor = i === 0 && ticks > 1 ? "start" : i === ticks - 1 && ticks > 1 ? "end" : "middle";
    // Every other label only on a phone (console.css), where they would overlap.
    const every = i % 2 ? "axis tick-odd" : "axis";
    svg.append(s("text", { x: px(x), y: H - 8, class: every, "text-anchor": anchor }, formatX(x)));
  }
  series.forEach((serie, i) => {
    const d = serie.points.map((p, j) => `${j ? "L" : "M"}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`);
    svg.append(s("path", { d: d.join(""), class: `line series-${i}` }));
    for (const [x, y] of serie.points) {
      if (!y) continue;
      svg.append(
        s("circle", { cx: px(x), cy: py(y), r: 3, class: `dot series-${i}` },
          s("title", {}, `${serie.name} ${formatX(x)}: ${y}`)),
      );
    }
  });
  const totals = series.map((sr) => `${sr.name} ${sr.points.reduce((a, p) => a + p[1], 0)}`);
  return figure(title, totals.join(", "), svg, series);
}

// bars: [{label, values: [v0, v1, ...]}], one value per series, drawn side by side.
export function barChart(title, seriesNames, bars) {
  const W = 640, rowH = 14 * seriesNames.length + 10, L = 120, R = 60, T = 4;
  const H = T + Math.max(1, bars.length) * rowH;
  const maxV = niceMax(Math.max(0, ...bars.flatMap((b) => b.values)));
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "bar-chart" });
  bars.forEach((bar, i) => {
    const y = T + i * rowH;
    const label = bar.label.length > 16 ? `${bar.label.slice(0, 15)}…` : bar.label;
    svg.append(s("text", { x: L - 6, y: y + rowH / 2 + 2, class: "axis", "text-anchor": "end" }, label));
    bar.values.forEach((v, j) => {
      const w = (v / maxV) * (W - L - R);
      const top = y + 3 + j * 14;
      svg.append(
        s("rect", { x: L, y: top, width: Math.max(w, v ? 1 : 0), height: 12, class: `bar series-${j}` },
          s("title", {}, `${bar.label} ${seriesNames[j]}: ${v}`)),
      );
      svg.append(s("text", { x: L + w + 4, y: top + 10, class: "axis" }, short(v)));
    });
  });
  const summary = bars.map((b) => `${b.label} ${b.values.join("/")}`).join(", ") || "no data";
  return figure(title, summary, svg, seriesNames.map((name) => ({ name })));
}
