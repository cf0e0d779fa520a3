// Models: every registered version with its metrics; promote and roll back, showing the
// promotion gates' answer (a refused promotion's problem detail and reasons).

import { ApiError, get, post } from "./api.js";
import { confirmChange } from "./dialog.js";
import { badge, fill, h, number, table, when } from "./dom.js";

// Metrics worth a column of their own; the rest are listed in the details.
const HEADLINE = ["ndcg@10", "validation_ndcg@10", "holdout_ndcg@10", "recall@10", "map@10"];

function metricsCell(metrics) {
  const flat = Object.entries(metrics || {}).filter(([, value]) => typeof value === "number");
  const shown = flat.filter(([name]) => HEADLINE.includes(name));
  const rest = flat.filter(([name]) => !HEADLINE.includes(name));
  return h(
    "div",
    {},
    shown.length ? h("dl", { class: "metrics" }, shown.map(([name, value]) => [h("dt", {}, name), h("dd", {}, number(value))])) : null,
    rest.length
      ? h(
          "details",
          {},
          h("summary", {}, `${rest.length} more`),
          h("dl", { class: "metrics" }, rest.map(([name, value]) => [h("dt", {}, name), h("dd", {}, number(value))])),
        )
      : null,
    !shown.length && !rest.length ? "–" : null,
  );
}

function outcome(panel, result) {
  const box = panel.querySelector("#models-outcome");
  if (result instanceof ApiError) {
    const reasons = result.problem.reasons || [];
    fill(
      box,
      h("strong", {}, `${result.problem.title || "Refused"}: `),
      result.message,
      reasons.length ? h("ul", {}, reasons.map((reason) => h("li", {}, reason))) : null,
    );
    box.className = "outcome bad";
  } else {
    fill(
      box,
      `${result.kind} now serves `,
      h("code", {}, result.serving || "nothing"),
      result.previous ? ` (was ${result.previous})` : "",
      result.forced ? ` — forced past: ${result.overridden.join("; ")}` : "",
    );
    box.className = "outcome ok";
  }
}

async function change(panel, ui, title, text, action, request) {
  if (!(await confirmChange(title, text, action))) return;
  let result;
  try {
    result = await request();
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    result = error;
  }
  await render(panel, ui);
  outcome(panel, result);
}

function promoteButton(panel, ui, version, force) {
  const label = force ? `Force promote ${version.version}` : `Promote ${version.version}`;
  const button = h("button", { type: "button", class: force ? "danger" : "", "aria-label": label }, force ? "Force" : "Promote");
  button.addEventListener("click", () =>
    change(
      panel,
      ui,
      `${force ? "Force-promote" : "Promote"} ${version.kind}`,
      force
        ? `Serve ${version.version} although the gates refuse it: ${version.refusals.join("; ")}`
        : `Serve ${version.version} as the ${version.kind} model?`,
      force ? "Force promote" : "Promote",
      () => post(`/admin/v1/models/${version.kind}/promote`, { version: version.version, force }),
    ),
  );
  return button;
}

export async function render(panel, ui) {
  const models = await get("/admin/v1/models");
  const rows = models.versions.map((version) => [
    h("code", {}, version.version),
    version.kind,
    version.status === "serving" ? badge("ok", "serving") : version.status,
    when(version.created_at),
    metricsCell(version.metrics),
    version.refusals.length ? h("ul", { class: "refusals" }, version.refusals.map((r) => h("li", {}, r))) : "–",
    version.status === "serving"
      ? ""
      : h("div", { class: "controls" }, promoteButton(panel, ui, version, false), version.refusals.length ? promoteButton(panel, ui, version, true) : null),
  ]);
  const rollbacks = Object.keys(models.serving).map((kind) => {
    const button = h("button", { type: "button", class: "danger" }, `Roll back ${kind}`);
    button.addEventListener("click", () =>
      change(panel, ui, `Roll back ${kind}`, `Serve the previously serving ${kind} version again?`, "Roll back", () =>
        post(`/admin/v1/models/${kind}/rollback`),
      ),
    );
    return button;
  });
  fill(
    panel,
    h("h2", {}, "Models"),
    h(
      "div",
      { class: "cards" },
      Object.entries(models.serving).map(([kind, version]) =>
        h("div", { class: "card" }, h("h3", {}, `Serving ${kind}`), h("p", {}, h("code", {}, version || "none"))),
      ),
    ),
    h("div", { class: "controls" }, rollbacks),
    h("div", { id: "models-outcome", class: "outcome", role: "status", "aria-live": "polite" }),
    table("Registered versions, newest first", ["version", "kind", "status", "created", "metrics", "gates refuse", "change"], rows, {
      id: "models-versions",
    }),
  );
}
