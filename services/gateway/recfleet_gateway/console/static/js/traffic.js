// Traffic: canary weight and shadow share per service, changed through a confirmation
// dialog; rollback and acknowledge; the last canary events with their reasons.

import { get, post, put } from "./api.js";
import { confirmChange } from "./dialog.js";
import { badge, fill, h, s, table, when } from "./dom.js";

/** A bar split into the stable and canary shares of users. */
function shareBar(weight) {
  return s(
    "svg",
    { viewBox: "0 0 200 14", width: 200, height: 14, role: "img", "aria-label": `${weight}% of users on the canary` },
    s("rect", { x: 0, y: 0, width: 200, height: 14, class: "share-stable" }),
    s("rect", { x: 0, y: 0, width: weight * 2, height: 14, class: "share-canary" }),
  );
}

function controls(state, panel, ui) {
  if (!state.has_canary) return h("span", { class: "muted" }, "no canary deployed");
  const weightId = `weight-${state.service}`;
  const shadowId = `shadow-${state.service}`;
  const form = h(
    "form",
    { class: "inline", "aria-label": `${state.service} traffic` },
    h("label", { for: weightId }, h("span", { class: "visually-hidden" }, `${state.service} `), "canary weight %"),
    h("input", { id: weightId, name: "weight", type: "number", min: 0, max: 100, step: 1, value: state.weight, required: true }),
    h("label", { for: shadowId }, h("span", { class: "visually-hidden" }, `${state.service} `), "shadow %"),
    h("input", {
      id: shadowId,
      name: "shadow",
      type: "number",
      min: 0,
      max: 100,
      step: 1,
      value: state.shadow_percent,
      disabled: state.service === "event-ingest",
    }),
    h("button", { type: "submit" }, "Apply"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const weight = Number(form.elements.weight.value);
    const shadow = Number(form.elements.shadow.value || 0);
    const sure = await confirmChange(
      `Change ${state.service} traffic`,
      `Route ${weight}% of users to the ${state.service} canary (now ${state.weight}%) and mirror ${shadow}% of calls to it?`,
      "Change traffic",
    );
    if (!sure) return;
    await act(panel, ui, () => put(`/admin/v1/traffic/${state.service}`, { weight, shadow_percent: shadow }));
  });
  const rollback = h("button", { type: "button", class: "danger" }, `Roll back ${state.service}`);
  rollback.addEventListener("click", async () => {
    const sure = await confirmChange(
      `Roll back ${state.service}`,
      `Set the ${state.service} canary weight to 0 at once? It stays frozen until acknowledged.`,
      "Roll back",
    );
    if (!sure) return;
    await act(panel, ui, () => post(`/admin/v1/rollback/${state.service}`, { reason: "rolled back from the console" }));
  });
  const ack = h("button", { type: "button", disabled: !state.frozen }, `Acknowledge ${state.service}`);
  ack.addEventListener("click", () => act(panel, ui, () => post(`/admin/v1/traffic/${state.service}/ack`)));
  return h("div", { class: "controls" }, form, rollback, ack);
}

async function act(panel, ui, change) {
  try {
    await change();
  } catch (error) {
    await render(panel, ui);
    ui.report(error);
    return;
  }
  await render(panel, ui);
}

export async function render(panel, ui) {
  const traffic = await get("/admin/v1/traffic");
  const rows = traffic.services.map((state) => [
    state.service,
    h("span", { class: "weight", "data-service": state.service }, `${state.weight}%`),
    shareBar(state.weight),
    `${state.shadow_percent}%`,
    state.frozen ? badge("bad", "frozen") : badge("ok", "open"),
    state.reason || "–",
    `${state.source}${state.updated_by ? `, by ${state.updated_by}` : ""}`,
    controls(state, panel, ui),
  ]);
  const events = traffic.events.map((event) => [
    when(event.created_at),
    event.service,
    event.action,
    event.weight === null ? "–" : `${event.weight}%`,
    event.reason || "–",
    event.actor,
  ]);
  fill(
    panel,
    h("h2", {}, "Traffic"),
    h(
      "p",
      { class: "muted" },
      "Users are sticky to a track. Raising a weight only moves users from stable to canary; a rollback sets it to 0 and freezes the service until acknowledged.",
    ),
    table("Canary weights and shadow shares", [
      "service",
      "weight",
      "share of users",
      "shadow",
      "state",
      "reason",
      "set by",
      "change",
    ], rows, { id: "traffic-services" }),
    table("Last canary events", ["when", "service", "action", "weight", "reason", "by"], events, {
      id: "traffic-events",
    }),
  );
}
