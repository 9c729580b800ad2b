// Models: what the server runs (GET /models), one card per model version, with its MLflow run
// linked when the page knows the tracking server's UI (GET /playground/config.json).

import { el, join, show } from "./dom.js";

const $ = (id) => document.getElementById(id);

function precision(m) {
  if (m.precision) return m.precision;
  return /int8/i.test(m.path || "") ? "int8" : "fp32";
}

function row(k, v) {
  return v === undefined || v === null || v === "" ? [] : [el("dt", {}, k), el("dd", {}, v)];
}

const code = (text, title) => el("code", { title }, text);

function card(m, config) {
  const run = m.source_run;
  const runLink = !run ? null : config.mlflow_ui
    ? el("a", { href: `${config.mlflow_ui}/#/runs/${encodeURIComponent(run)}`, target: "_blank", rel: "noopener" },
      code(String(run).slice(0, 12)))
    : code(String(run).slice(0, 12), "set RNNOPS_MLFLOW_UI (or an http MLFLOW_TRACKING_URI) to link it");
  const state = join((m.state || []).map((t) => [code(t.output), ` [${t.shape.join(", ")}]`]), " ");
  const p = m.kind === "panel" && m.panel ? m.panel : null;
  const kind = m.kind === "char"
    ? row("vocabulary", `${m.vocab_size} characters`)
    : p ? [row("target", code(p.target)),
      row("lookback / horizon", [`${p.lookback} / ${p.horizon}`, " · ", code(p.freq)]),
      row("past covariates", p.past_covariates.length ? code(p.past_covariates.join(", ")) : "none"),
      row("future covariates", p.future_covariates.length ? code(p.future_covariates.join(", ")) : "none"),
      row("statics", [...p.static_categorical.map((c) => `${c.name} (${c.vocabulary.length} categories)`),
        ...p.static_real].join(", ") || "none"),
      row("intervals", p.quantiles.join(", "))]
    : [row("features", code((m.features || []).join(", "))), row("targets", code((m.targets || []).join(", "))),
      row("lookback / horizon", [`${m.lookback} / ${m.horizon}`, m.freq ? [" · ", code(m.freq)] : null]),
      row("intervals", m.quantiles ? m.quantiles.join(", ") : "none"),
      row("stateful", m.stateful ? "yes (a session costs O(1) per observation)" : "no (windowed)")];
  const sched = m.scheduler ? row("scheduler", `${m.scheduler.active ?? 0} active · ${m.scheduler.queued ?? 0} queued · ` +
    `${(m.scheduler.chars ?? 0).toLocaleString("en-US")} chars so far`) : [];
  const status = m.status === "serving" ? "ok" : "warn";
  return el("article", { class: "card", "data-model": m.name },
    el("header", {}, el("h3", {}, m.name), el("span", { class: `pill ${status}` }, m.status)),
    el("div", { class: "sub" }, `${{ char: "char model", panel: "panel forecaster" }[m.kind] || "forecaster"} · version `, el("b", {}, m.version),
      m.alias ? [" · alias ", el("b", {}, `@${m.alias}`)] : null),
    el("dl", {},
      row("cell", `${m.cell} · ${m.layers}×${m.hidden_size}`),
      row("precision", precision(m)),
      row("providers", (m.providers || []).join(", ") + (m.iobinding ? " · IOBinding" : "") + (m.threads ? ` · ${m.threads} threads` : "")),
      kind,
      row("state", state.length ? state : null),
      sched,
      row("sha256", code(`${(m.sha256 || "").slice(0, 16)}…`, m.sha256)),
      row("MLflow run", runLink),
      row("source", code(m.ref)),
      row("loaded", m.loaded_at ? new Date(m.loaded_at * 1000).toLocaleString() : null)));
}

export function render(d, config) {
  const list = [...(d.models || []), ...(d.draining || [])];
  const cards = list.map((m) => card(m, config));
  if (d.errors && d.errors.length) {
    cards.push(el("article", { class: "card bad" }, el("header", {}, el("h3", {}, "errors")),
      el("ul", {}, d.errors.map((e) => el("li", {}, typeof e === "string" ? e : JSON.stringify(e))))));
  }
  show($("models-list"), cards.length ? cards : el("p", { class: "muted" }, "No model is loaded yet."));
}
