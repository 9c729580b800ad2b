// The playground's entry point: tabs, the served models (GET /models), and the four views.

import { apiKey, getJSON, setApiKey } from "./api.js";
import * as forecast from "./forecast.js";
import * as generate from "./generate.js";
import * as live from "./live.js";
import * as models from "./models.js";

const $ = (id) => document.getElementById(id);
window.__playground = { ready: false, generation: null };
let config = { mlflow_ui: null };

function showTab(name) {
  if (!document.getElementById(`tab-${name}`)) name = "generate";
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === `tab-${name}`);
  if (name === "live") live.start(); else live.stop();
  if (name === "forecast") forecast.onShow();
  if (name === "models") refresh();
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
}

async function refresh() {
  const pill = $("server-status");
  try {
    const d = await getJSON("/models");
    const list = d.models || [];
    generate.setModels(list);
    forecast.setModels(list, d.limits);
    models.render(d, config);
    $("models-error").hidden = true;
    const n = (k) => list.filter((m) => m.kind === k).length;
    const nf = n("forecaster") + n("panel");
    pill.textContent = `${n("char")} char · ${nf} forecast model${nf === 1 ? "" : "s"}` +
      (d.errors && d.errors.length ? ` · ${d.errors.length} error${d.errors.length > 1 ? "s" : ""}` : "");
    pill.className = `pill ${d.errors && d.errors.length ? "warn" : "ok"}`;
    return list.length > 0;
  } catch (e) {
    pill.textContent = e.status === 503 ? "starting…" : "unreachable";
    pill.className = "pill bad";
    $("models-error").textContent = e.message;
    $("models-error").hidden = false;
    return false;
  }
}

async function main() {
  generate.init();
  forecast.init();
  live.init();
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  window.addEventListener("hashchange", () => showTab(location.hash.slice(1)));
  $("key-button").hidden = !apiKey();
  $("key-button").addEventListener("click", () => {
    if (confirm("Forget the API key kept for this tab?")) { setApiKey(null); refresh(); }
  });
  try { config = await getJSON("/playground/config.json"); } catch { /* links stay plain */ }
  // until every model has loaded, look again (a server that is still starting answers 503)
  for (let i = 0; !(await refresh()) && i < 60; i++) await new Promise((r) => setTimeout(r, 1000));
  showTab(location.hash.slice(1) || "generate");
  window.__playground.ready = true;
}

main();
