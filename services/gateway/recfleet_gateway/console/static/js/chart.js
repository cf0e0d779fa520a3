// Hand-drawn SVG bar charts: one bar per entry from zero to its value, with an optional
// interval drawn as a whisker (lo..hi), a zero line and a label under each bar.

import { s } from "./dom.js";

const WIDTH = 520;
const HEIGHT = 240;
const MARGIN = { top: 28, right: 16, bottom: 40, left: 72 };

function ticks(low, high, count = 4) {
  const step = (high - low) / count;
  return Array.from({ length: count + 1 }, (_, i) => low + i * step);
}

/**
 * bars: [{label, value, lo, hi, kind}] (lo/hi optional; kind "control" or "variant");
 * format: value -> text (axis: axisFormat, default format).
 */
export function barChart({ title, bars, format, axisFormat = format }) {
  const values = bars.flatMap((bar) => [bar.value, bar.lo, bar.hi]).filter((v) => typeof v === "number");
  let low = Math.min(0, ...values);
  let high = Math.max(0, ...values);
  if (high === low) high = low + 0.01;
  const pad = (high - low) * 0.1;
  low = low < 0 ? low - pad : low;
  high += pad;
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const y = (value) => MARGIN.top + ((high - value) / (high - low)) * plotHeight;
  const slot = plotWidth / Math.max(1, bars.length);
  const barWidth = Math.min(72, slot * 0.5);

  const description = bars
    .map((bar) => `${bar.label}: ${format(bar.value)}${bar.lo !== undefined ? ` (${format(bar.lo)} to ${format(bar.hi)})` : ""}`)
    .join("; ");
  const svg = s(
    "svg",
    { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, width: WIDTH, height: HEIGHT, role: "img", "aria-label": `${title}: ${description}`, class: "chart" },
    s("title", {}, title),
    s("text", { x: MARGIN.left, y: 14, class: "chart-title" }, title),
  );
  for (const tick of ticks(low, high)) {
    svg.append(
      s("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(tick), y2: y(tick), class: "grid" }),
      s("text", { x: MARGIN.left - 6, y: y(tick) + 4, class: "axis", "text-anchor": "end" }, axisFormat(tick)),
    );
  }
  bars.forEach((bar, i) => {
    const centre = MARGIN.left + slot * (i + 0.5);
    const top = y(Math.max(0, bar.value));
    const height = Math.abs(y(bar.value) - y(0));
    svg.append(s("rect", { x: centre - barWidth / 2, y: top, width: barWidth, height: Math.max(1, height), class: `bar ${bar.kind || ""}` }));
    if (typeof bar.lo === "number" && typeof bar.hi === "number") {
      const cap = barWidth / 4;
      svg.append(
        s("line", { x1: centre, x2: centre, y1: y(bar.hi), y2: y(bar.lo), class: "whisker" }),
        s("line", { x1: centre - cap, x2: centre + cap, y1: y(bar.hi), y2: y(bar.hi), class: "whisker" }),
        s("line", { x1: centre - cap, x2: centre + cap, y1: y(bar.lo), y2: y(bar.lo), class: "whisker" }),
      );
    }
    const labelY = typeof bar.hi === "number" ? y(Math.max(bar.hi, bar.value)) : y(Math.max(0, bar.value));
    svg.append(
      s("text", { x: centre, y: labelY - 6, class: "value", "text-anchor": "middle" }, format(bar.value)),
      s("text", { x: centre, y: HEIGHT - MARGIN.bottom + 18, class: "label", "text-anchor": "middle" }, bar.label),
    );
  });
  svg.append(s("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(0), y2: y(0), class: "zero" }));
  return svg;
}
