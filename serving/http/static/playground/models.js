// Models: what the server runs (GET /models), one card per model version, with its MLflow run
// linked when the page knows the tracking server's UI (GET /playground/config.json).

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

function precision(m) {
  if (m.precision) return m.precision;
  return /int8/i.test(m.path || "") ? "int8" : "fp32";
}

function row(k, v) {
  return v === undefined || v === null || v === "" ? "" : `<dt>${k}</dt><dd>${v}</dd>`;
}

function card(m, config) {
  const run = m.source_run;
  const runLink = run ? (config.mlflow_ui ? `<a href="${esc(config.mlflow_ui)}/#/runs/${esc(run)}" target="_blank" rel="noopener"><code>${esc(run.slice(0, 12))}</code></a>`
    : `<code title="set RNNOPS_MLFLOW_UI (or an http MLFLOW_TRACKING_URI) to link it">${esc(run.slice(0, 12))}</code>`) : null;
  const state = (m.state || []).map((t) => `<code>${esc(t.output)}</code> [${t.shape.map(esc).join(", ")}]`).join(" ");
  const kind = m.kind === "char"
    ? row("vocabulary", `${m.vocab_size} characters`)
    : row("features", `<code>${esc((m.features || []).join(", "))}</code>`) + row("targets", `<code>${esc((m.targets || []).join(", "))}</code>`) +
      row("lookback / horizon", `${m.lookback} / ${m.horizon}${m.freq ? ` · <code>${esc(m.freq)}</code>` : ""}`) +
      row("intervals", m.quantiles ? m.quantiles.join(", ") : "none") + row("stateful", m.stateful ? "yes (a session costs O(1) per observation)" : "no (windowed)");
  const sched = m.scheduler ? row("scheduler", `${m.scheduler.active ?? 0} active · ${m.scheduler.queued ?? 0} queued · ${(m.scheduler.chars ?? 0).toLocaleString("en-US")} chars so far`) : "";
  const status = m.status === "serving" ? "ok" : "warn";
  return `<article class="card" data-model="${esc(m.name)}">
    <header><h3>${esc(m.name)}</h3><span class="pill ${status}">${esc(m.status)}</span></header>
    <div class="sub">${m.kind === "char" ? "char model" : "forecaster"} · version <b>${esc(m.version)}</b>${m.alias ? ` · alias <b>@${esc(m.alias)}</b>` : ""}</div>
    <dl>
      ${row("cell", `${esc(m.cell)} · ${m.layers}×${m.hidden_size}`)}
      ${row("precision", precision(m))}
      ${row("providers", esc((m.providers || []).join(", ")) + (m.iobinding ? " · IOBinding" : "") + (m.threads ? ` · ${m.threads} threads` : ""))}
      ${kind}
      ${row("state", state)}
      ${sched}
      ${row("sha256", `<code title="${esc(m.sha256)}">${esc((m.sha256 || "").slice(0, 16))}…</code>`)}
      ${row("MLflow run", runLink)}
      ${row("source", `<code>${esc(m.ref)}</code>`)}
      ${row("loaded", m.loaded_at ? new Date(m.loaded_at * 1000).toLocaleString() : null)}
    </dl>
  </article>`;
}

export function render(d, config) {
  const list = [...(d.models || []), ...(d.draining || [])];
  let html = list.map((m) => card(m, config)).join("");
  if (d.errors && d.errors.length) {
    html += `<article class="card bad"><header><h3>errors</h3></header><ul>${d.errors.map((e) => `<li>${esc(typeof e === "string" ? e : JSON.stringify(e))}</li>`).join("")}</ul></article>`;
  }
  $("models-list").innerHTML = html || "<p class=\"muted\">No model is loaded yet.</p>";
}
