// Try a user: the user's recent history (the export route) beside their recommendations
// with explanations, each item with its catalog title.

import { ApiError, get } from "./api.js";
import { badge, fill, h, number, s, when } from "./dom.js";

const HISTORY = 20;
const LIST = 10;
const FIELDS = "title,categories";
let lastUser = "";

/** Titles and categories of items, by id, from the admin catalog lookup. */
async function catalog(ids) {
  const unique = [...new Set(ids)];
  const found = {};
  for (let start = 0; start < unique.length; start += 100) {
    const { items } = await get("/admin/v1/items", { query: { item_id: unique.slice(start, start + 100) } });
    for (const item of items) found[item.item_id] = item;
  }
  return found;
}

/** Recommendations with explanations and titles inline (`fields=`); where the gateway does
 * not take `fields`, the titles come from the catalog lookup instead. */
async function recommendations(userId) {
  const query = { user_id: userId, limit: LIST, explain: "true" };
  try {
    return await get("/v1/recommendations", { query: { ...query, fields: FIELDS } });
  } catch (error) {
    const aboutFields = error instanceof ApiError && error.status === 400 && /fields/.test(error.message);
    if (!aboutFields) throw error;
  }
  const answer = await get("/v1/recommendations", { query });
  const titles = await catalog(answer.items.map((item) => item.item_id));
  for (const item of answer.items) Object.assign(item, titles[item.item_id] || {}, { item_id: item.item_id });
  return answer;
}

function itemName(item) {
  return h(
    "span",
    { class: "item" },
    h("span", { class: "title" }, item.title || "(untitled)"),
    " ",
    h("code", {}, `#${item.item_id}`),
    item.categories && item.categories.length ? h("span", { class: "muted" }, ` ${item.categories.join(", ")}`) : null,
  );
}

/** Each ranker feature's contribution to the item's score, largest first, as bars. */
function contributions(explanation) {
  const entries = Object.entries(explanation.ranker_contributions || {})
    .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]))
    .slice(0, 6);
  if (!entries.length) return h("p", { class: "muted" }, "no ranker contributions (rule formula or popular items)");
  const scale = Math.max(...entries.map(([, value]) => Math.abs(value))) || 1;
  const rowHeight = 16;
  const svg = s("svg", {
    viewBox: `0 0 420 ${entries.length * rowHeight}`,
    width: 420,
    height: entries.length * rowHeight,
    role: "img",
    "aria-label": "Ranker contributions: " + entries.map(([name, value]) => `${name} ${number(value)}`).join(", "),
    class: "contributions",
  });
  entries.forEach(([name, value], i) => {
    // Names on the left, bars either side of a zero line at 260, values on the right.
    const width = (Math.abs(value) / scale) * 90;
    const y = i * rowHeight;
    svg.append(
      s("text", { x: 0, y: y + 12, class: "label" }, name),
      s("rect", { x: value >= 0 ? 260 : 260 - width, y: y + 3, width: Math.max(1, width), height: 10, class: value >= 0 ? "up" : "down" }),
      s("line", { x1: 260, x2: 260, y1: y, y2: y + rowHeight, class: "zero" }),
      s("text", { x: 418, y: y + 12, class: "value", "text-anchor": "end" }, number(value)),
    );
  });
  return svg;
}

function sourceScores(explanation) {
  // Each candidate source's own score, when the list fused several (e.g. ALS and EASE).
  const entries = Object.entries(explanation.source_scores || {});
  return entries.length ? ` (${entries.map(([source, score]) => `${source} ${number(score)}`).join(", ")})` : "";
}

function recommendationItem(item) {
  const explanation = item.explanation || {};
  return h(
    "li",
    { class: "rec" },
    h("div", { class: "rec-head" }, h("span", { class: "rank" }, `${item.rank}.`), itemName(item)),
    h(
      "p",
      { class: "muted" },
      `score ${number(item.score)} · from ${item.source} · candidate score ${number(explanation.candidate_score)}` +
        sourceScores(explanation),
    ),
    contributions(explanation),
    explanation.rules && explanation.rules.length
      ? h("p", { class: "rules" }, "rules: ", explanation.rules.join(", "))
      : null,
  );
}

function historyView(events, titles) {
  const recent = [...events].reverse().slice(0, HISTORY);
  return h(
    "section",
    { class: "column", id: "user-history", "aria-labelledby": "history-title" },
    h("h3", { id: "history-title" }, `Recent history (${recent.length} of ${events.length} events)`),
    recent.length
      ? h(
          "ol",
          { class: "history" },
          recent.map((event) =>
            h(
              "li",
              {},
              h("span", { class: "event-type" }, event.type),
              event.value === null || event.value === undefined ? "" : ` ${event.value}`,
              " ",
              itemName({ item_id: event.item_id, ...(titles[event.item_id] || {}) }),
              h("span", { class: "muted when" }, ` ${when(event.timestamp)}`),
            ),
          ),
        )
      : h("p", { class: "muted" }, "No stored events: this user gets the cold-start path."),
  );
}

function recommendationsView(answer) {
  const experiment = answer.experiment ? `${answer.experiment.name}: ${answer.experiment.variant}` : "none";
  return h(
    "section",
    { class: "column", id: "user-recommendations", "aria-labelledby": "recs-title" },
    h("h3", { id: "recs-title" }, "Recommendations"),
    h(
      "p",
      {},
      "served by ",
      badge(answer.served_by === "ranker" ? "ok" : "warn", answer.served_by),
      answer.cold_start ? [" ", badge("warn", "cold start")] : "",
      " · model ",
      h("code", {}, answer.model_version || "none"),
      ` · experiment ${experiment}`,
    ),
    answer.degraded.length ? h("p", {}, "degraded: ", answer.degraded.map((d) => badge("bad", d))) : null,
    h("ol", { class: "recs" }, answer.items.map(recommendationItem)),
  );
}

async function show(panel, userId) {
  const result = panel.querySelector("#user-result");
  fill(result, h("p", { class: "muted" }, `Loading ${userId}…`));
  const [exported, answer] = await Promise.all([
    get(`/v1/users/${encodeURIComponent(userId)}/export`),
    recommendations(userId),
  ]);
  const titles = await catalog(exported.events.slice(-HISTORY).map((event) => event.item_id));
  fill(result, h("div", { class: "side-by-side" }, historyView(exported.events, titles), recommendationsView(answer)));
}

export async function render(panel, ui) {
  const form = h(
    "form",
    { class: "inline", id: "user-form" },
    h("label", { for: "user-id" }, "User id"),
    h("input", { id: "user-id", name: "user", required: true, pattern: "[A-Za-z0-9_.:\\-]{1,128}", value: lastUser }),
    h("button", { type: "submit" }, "Show"),
  );
  const result = h("div", { id: "user-result" });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    lastUser = form.elements.user.value.trim();
    ui.report(null);
    try {
      await show(panel, lastUser);
    } catch (error) {
      fill(result);
      ui.report(error);
    }
  });
  fill(
    panel,
    h("h2", {}, "Try a user"),
    h("p", { class: "muted" }, "What the user did, and what the fleet recommends to them now, with why."),
    form,
    result,
  );
  if (lastUser) await show(panel, lastUser);
}
