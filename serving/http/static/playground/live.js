// Live: the server's own figures from its Prometheus /metrics, read every second while the tab
// is open: chars/s (the generated-characters counter between two reads), active streams, queue
// depth, and the mean batch size of the decode steps (the histogram's _sum and _count between
// two reads).

import { postJSON, request } from "./api.js";
import { fit, sparkline } from "./charts.js";
import { el } from "./dom.js";

const $ = (id) => document.getElementById(id);
const WINDOW_S = 60;

/** Prometheus text exposition -> Map(name -> [{labels, value}]). */
export function parseMetrics(text) {
  const out = new Map();
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const l of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    const value = Number(m[4]);
    if (!out.has(m[1])) out.set(m[1], []);
    out.get(m[1]).push({ labels, value });
  }
  return out;
}

const sum = (metrics, name) => (metrics.get(name) || []).reduce((a, s) => a + (Number.isFinite(s.value) ? s.value : 0), 0);

const FIGURES = [
  { key: "cps", title: "characters / second", color: "#2a9d8f", read: (m) => sum(m, "rnnops_chars_per_second") },
  { key: "active", title: "active streams", color: "#1f4e8c", read: (m) => sum(m, "rnnops_active_streams") },
  { key: "queue", title: "queue depth (waiting streams)", color: "#e4572e", read: (m) => sum(m, "rnnops_queue_depth") },
  { key: "batch", title: "streams per decode step (mean, last second)", color: "#8d5a97", read: null },
];

let timer = null;
let prev = null;
const history = { t: [], cps: [], active: [], queue: [], batch: [] };
const charts = {};

function build() {
  const grid = $("live-grid");
  if (grid.childElementCount) return;
  for (const f of FIGURES) {
    const chart = el("div", { class: "live-chart" });
    grid.appendChild(el("div", { class: "live-card", "data-metric": f.key }, el("div", { class: "live-title" }, f.title),
      el("div", { class: "live-value", id: `live-${f.key}` }, "–"), chart));
    charts[f.key] = { chart: sparkline(chart, f.title, f.color), el: chart };
  }
}

async function tick() {
  try {
    const resp = await request("/metrics", { raw: true });
    const m = parseMetrics(await resp.text());
    $("live-error").hidden = true;
    const now = Date.now() / 1000;
    const bsum = sum(m, "rnnops_step_batch_size_sum"), bcount = sum(m, "rnnops_step_batch_size_count");
    const chars = sum(m, "rnnops_generated_chars_total");
    let batch = 0, cps = FIGURES[0].read(m);
    if (prev && bcount > prev.bcount) batch = (bsum - prev.bsum) / (bcount - prev.bcount);
    // characters per second between two reads, from the counter (the gauge covers its own last second)
    if (prev && m.has("rnnops_generated_chars_total") && now > prev.t) cps = Math.max(0, (chars - prev.chars) / (now - prev.t));
    prev = { bsum, bcount, chars, t: now };
    const v = { cps, active: FIGURES[1].read(m), queue: FIGURES[2].read(m), batch };
    history.t.push(now);
    for (const k of Object.keys(v)) history[k].push(v[k]);
    while (history.t.length && history.t[0] < now - WINDOW_S) for (const k of Object.keys(history)) history[k].shift();
    for (const f of FIGURES) {
      $(`live-${f.key}`).textContent = f.key === "batch" ? v.batch.toFixed(1) : Math.round(v[f.key]).toLocaleString("en-US");
      charts[f.key].chart.setData([history.t.map((t) => t - now), history[f.key]]);
    }
    $("live-grid").dataset.reads = String(Number($("live-grid").dataset.reads || 0) + 1);
  } catch (e) {
    $("live-error").textContent = `/metrics: ${e.message}`;
    $("live-error").hidden = false;
  }
}

export function start() {
  build();
  window.__playground.live = history;
  for (const k of Object.keys(charts)) fit(charts[k].chart, charts[k].el);
  if (!timer) { tick(); timer = setInterval(tick, 1000); }
}

export function stop() {
  clearInterval(timer);
  timer = null;
}

/** A burst of concurrent streams, so the figures have something to show: /v1/completions with
 * n choices per request (a browser opens at most 6 connections to a server, and /metrics needs
 * one of them), else /complete requests, 4 at a time. */
async function burst() {
  const n = Math.max(1, Math.min(256, Number($("load-n").value) || 16));
  const model = document.getElementById("gen-model").value;
  if (!model) return;
  const prompt = document.getElementById("gen-prompt").value || "\n"; // the Generate tab's prompt
  const btn = $("load-go");
  btn.disabled = true;
  btn.textContent = `${n} streams running…`;
  const fail = (e) => { $("live-error").textContent = e.message; $("live-error").hidden = false; };
  const jobs = [];
  for (let left = n, k = 0; left > 0; left -= 16, k++) jobs.push([Math.min(16, left), k * 16]);
  const one = async ([count, seed]) => {
    try {
      await postJSON("/v1/completions", { model, prompt, n: count, max_tokens: 3000, temperature: 0.9, seed });
    } catch (e) {
      if (e.status !== 404) throw e;
      for (let i = 0; i < count; i += 4) { // no OpenAI endpoint here: /complete, 4 at a time
        await Promise.all(Array.from({ length: Math.min(4, count - i) }, (_, j) =>
          postJSON("/complete", { model, prompt, max_chars: 3000, temperature: 0.9, seed: seed + i + j })));
      }
    }
  };
  try {
    for (let i = 0; i < jobs.length; i += 4) await Promise.all(jobs.slice(i, i + 4).map(one));
  } catch (e) {
    fail(e);
  } finally {
    btn.disabled = false;
    btn.textContent = "Send a burst of streams";
  }
}

export function init() {
  $("load-go").addEventListener("click", burst);
}
