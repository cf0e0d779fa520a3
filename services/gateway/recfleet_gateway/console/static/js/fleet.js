// Fleet: every downstream service and track with its health, the serving model versions,
// each candidate-gen shard's index, and the dependencies that failed recently (the rungs
// of the degradation ladder answers fell to).

import { get } from "./api.js";
import { badge, fill, h, number, percent, table } from "./dom.js";

// What an answer falls back to when a service fails (docs/reliability.md's ladder).
const FALLBACK = {
  "candidate-gen": "answers use the shards that answered, else cold-start and popular items",
  ranking: "answers are ranked by the rule formula, else served from popular items",
  "feature-store": "answers use default user features (cold start) and remembered popular items",
  "event-ingest": "events are refused with 503 until it is back",
};

function health(endpoint) {
  return endpoint.serving ? badge("ok", "serving") : badge("bad", "not serving");
}

function breaker(endpoint) {
  const kind = { closed: "ok", half_open: "warn", open: "bad" }[endpoint.breaker];
  return badge(kind, endpoint.breaker.replace("_", "-"));
}

function serviceRows(status) {
  const rows = [];
  for (const service of status.services) {
    for (const track of service.tracks) {
      for (const endpoint of track.endpoints) {
        rows.push([
          service.service,
          track.track === "canary" ? `canary (${service.weight}%)` : "stable",
          endpoint.name,
          h("code", {}, endpoint.target),
          health(endpoint),
          breaker(endpoint),
          String(track.recent.requests),
          track.recent.errors ? badge("bad", percent(track.recent.error_rate)) : percent(0),
          `${number(track.recent.p99_ms, 1)} ms`,
        ]);
      }
    }
  }
  return rows;
}

/** Every service and track that failed within the window, is down or has its breaker open. */
export function degradations(status) {
  const found = [];
  for (const service of status.services) {
    for (const track of service.tracks) {
      const down = track.endpoints.filter((e) => !e.serving).map((e) => e.name);
      const open = track.endpoints.filter((e) => e.breaker !== "closed").map((e) => e.name);
      const why = [];
      if (track.recent.errors) {
        why.push(`${track.recent.errors} of ${track.recent.requests} calls failed`);
      }
      if (down.length) why.push(`not serving: ${down.join(", ")}`);
      if (open.length) why.push(`circuit open: ${open.join(", ")}`);
      if (why.length) {
        found.push([`${service.service} (${track.track})`, why.join("; "), FALLBACK[service.service] || ""]);
      }
    }
  }
  return found;
}

function shardRows(index) {
  return index.shards.map((shard) => [
    shard.error ? h("code", {}, shard.target) : `shard ${shard.shard} of ${shard.shard_count}`,
    shard.track,
    shard.error ? badge("bad", "unreachable") : h("code", {}, shard.model_version || "none"),
    shard.error ? shard.error : shard.index_type,
    shard.error ? "–" : String(shard.item_count),
    shard.error ? "–" : String(shard.metadata_item_count),
    shard.error
      ? "–"
      : shard.last_reload === "ok" || !shard.last_reload
        ? badge("ok", shard.last_reload || "ok")
        : badge("warn", `${shard.last_reload}${shard.refused_version ? ` (${shard.refused_version})` : ""}`),
  ]);
}

export async function render(panel) {
  const [status, models, index] = await Promise.all([
    get("/admin/v1/fleet"),
    get("/admin/v1/models"),
    get("/admin/v1/index"),
  ]);
  const recent = degradations(status);
  const window = `${number(status.window_seconds, 0)} s`;
  fill(
    panel,
    h("h2", {}, "Fleet"),
    h(
      "div",
      { class: "cards" },
      Object.entries(models.serving).map(([kind, version]) =>
        h("div", { class: "card" }, h("h3", {}, `Serving ${kind}`), h("p", {}, h("code", {}, version || "none"))),
      ),
      h(
        "div",
        { class: "card" },
        h("h3", {}, "Recent degradations"),
        h("p", {}, recent.length ? badge("bad", `${recent.length} failing`) : badge("ok", "none in the last " + window)),
      ),
    ),
    table(`Services and tracks (this gateway replica's calls over the last ${window})`, [
      "service",
      "track",
      "endpoint",
      "target",
      "health",
      "breaker",
      "calls",
      "errors",
      "p99",
    ], serviceRows(status), { id: "fleet-services" }),
    table(`Recent degradations: dependencies that failed in the last ${window}`, [
      "service (track)",
      "what failed",
      "what answers fell back to",
    ], recent, { id: "fleet-degradations" }),
    table("Candidate-gen shard indexes", [
      "shard",
      "track",
      "model version",
      "index",
      "items",
      "metadata items",
      "last reload",
    ], shardRows(index), { id: "fleet-index" }),
  );
}
