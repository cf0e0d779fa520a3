// Experiments: the list, and a readout per experiment: CTR per variant and each variant's
// lift over the control with its 95% interval (SVG charts), the table, and the sample
// ratio check.

import { get, post } from "./api.js";
import { barChart } from "./chart.js";
import { confirmChange } from "./dialog.js";
import { badge, fill, h, number, percent, table, when } from "./dom.js";

function points(value) {
  return `${value >= 0 ? "+" : ""}${(value * 100).toFixed(2)} pt`;
}

function readoutView(readout) {
  const ctr = readout.variants.map((v) => ({
    label: v.variant,
    value: v.ctr,
    kind: v.variant === readout.control ? "control" : "variant",
  }));
  const lifts = readout.variants
    .filter((v) => v.variant !== readout.control)
    .map((v) => ({
      label: v.variant,
      value: v.lift ?? 0,
      lo: v.ci95 ? v.ci95[0] : undefined,
      hi: v.ci95 ? v.ci95[1] : undefined,
      kind: "variant",
    }));
  const rows = readout.variants.map((v) => [
    v.variant === readout.control ? h("span", {}, v.variant, " ", badge("warn", "control")) : v.variant,
    percent(v.share, 0),
    h("code", {}, v.ranker_version),
    String(v.exposures),
    String(v.clicks),
    percent(v.ctr, 2),
    v.lift === null ? "–" : points(v.lift),
    v.relative_lift === null ? "–" : percent(v.relative_lift),
    v.ci95 ? `${points(v.ci95[0])} … ${points(v.ci95[1])}` : "–",
    v.p_value === null ? "–" : number(v.p_value, 4),
  ]);
  const srm = readout.srm.mismatch
    ? badge("bad", `sample ratio mismatch (p = ${number(readout.srm.p_value, 4)}): the split is broken, do not trust the lift`)
    : badge("ok", `sample ratio as planned (p = ${number(readout.srm.p_value, 4)})`);
  return h(
    "section",
    { id: "experiment-readout", "aria-labelledby": "readout-title" },
    h("h3", { id: "readout-title" }, `Readout: ${readout.experiment} (${readout.status})`),
    h("p", {}, srm),
    h(
      "div",
      { class: "charts" },
      barChart({ title: "CTR per variant", bars: ctr, format: (value) => percent(value, 2), axisFormat: (value) => percent(value, 1) }),
      lifts.length
        ? barChart({
            title: "Lift over the control (CTR points), 95% interval",
            bars: lifts,
            format: points,
            axisFormat: (value) => `${(value * 100).toFixed(1)}`,
          })
        : null,
    ),
    table("Per variant", ["variant", "share", "ranked by", "exposures", "clicks", "CTR", "lift", "relative lift", "95% CI of lift", "p-value"], rows, {
      id: "readout-table",
    }),
  );
}

async function showReadout(panel, name) {
  const readout = await get(`/admin/v1/experiments/${encodeURIComponent(name)}/readout`);
  const slot = panel.querySelector("#readout-slot");
  fill(slot, readoutView(readout));
  slot.querySelector("h3").focus?.();
}

export async function render(panel, ui) {
  const { experiments } = await get("/admin/v1/experiments");
  const rows = experiments.map((experiment) => {
    const open = h("button", { type: "button", "aria-label": `Readout of ${experiment.name}` }, "Readout");
    open.addEventListener("click", () => showReadout(panel, experiment.name).catch(ui.report));
    const stop = h("button", { type: "button", class: "danger", "aria-label": `Stop ${experiment.name}` }, "Stop");
    stop.addEventListener("click", async () => {
      if (!(await confirmChange(`Stop ${experiment.name}`, "Responses leave the experiment; its exposures and readout stay.", "Stop"))) return;
      try {
        await post(`/admin/v1/experiments/${encodeURIComponent(experiment.name)}/stop`);
        await render(panel, ui);
      } catch (error) {
        ui.report(error);
      }
    });
    return [
      experiment.name,
      experiment.status === "running" ? badge("ok", "running") : badge("warn", "stopped"),
      experiment.surface || "every surface",
      experiment.variants.map((v) => `${v.name} ${percent(v.share, 0)} (${v.ranker_version})`).join(", "),
      when(experiment.created_at),
      h("div", { class: "controls" }, open, experiment.status === "running" ? stop : null),
    ];
  });
  fill(
    panel,
    h("h2", {}, "Experiments"),
    table("Experiments, newest first", ["name", "status", "surface", "variants", "created", ""], rows, { id: "experiments-list" }),
    h("div", { id: "readout-slot" }),
  );
}
