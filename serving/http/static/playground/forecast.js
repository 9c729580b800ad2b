// Forecast: history + forecast per target (with the interval band when the model has
// quantiles), from a window of the model's validation data (GET /models/{name}/sample) or a
// pasted/uploaded CSV; one POST /forecast, or a session (POST /sessions, then one observation
// per POST /sessions/{id}) that animates the updated forecast.
// A panel model (a global forecaster over many series) is asked by series: pick one of the
// series its file embeds (panel.js), see its history, its covariates (event flags such as
// promotion days shaded), the forecast and its band; its session is named by the series id.

import { ApiError, getJSON, postJSON, request } from "./api.js";
import { covariateChart, fit, forecastChart } from "./charts.js";
import { el, join, show } from "./dom.js";
import * as panel from "./panel.js";

const $ = (id) => document.getElementById(id);
const fmt = (x, d = 0) => Number(x).toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: d });

let models = [];
let limits = {};
let charts = []; // [{el, chart, target}]
let session = null; // the running session animation
const samples = new Map();

const isPanel = (m) => Boolean(m && m.kind === "panel" && m.panel);

export function setModels(list, lim) {
  models = list.filter((m) => m.kind === "forecaster" || isPanel(m));
  limits = lim || {};
  const sel = $("fc-model");
  const keep = sel.value;
  sel.replaceChildren();
  for (const m of models) {
    const what = isPanel(m) ? `panel model of ${m.panel.target}`
      : `${m.cell}, ${m.targets.length} target${m.targets.length > 1 ? "s" : ""}`;
    sel.add(new Option(`${m.name}  (v${m.version}, ${what})`, m.name)); // Option(): text, never markup
  }
  if (models.some((m) => m.name === keep)) sel.value = keep;
  $("fc-go").disabled = $("fc-session").disabled = !models.length;
  if (!models.length) $("fc-status").textContent = "No forecaster is served here.";
  modelChanged();
}

function model() {
  return models.find((m) => m.name === $("fc-model").value);
}

function info() {
  const m = model();
  if (!m) { $("fc-info").replaceChildren(); return; }
  if (isPanel(m)) { panelInfo(m); return; }
  const q = m.quantiles && m.quantiles.length ? `intervals at ${m.quantiles.join(", ")}` : "no intervals";
  show($("fc-info"), "reads ", el("b", {}, m.features.length), ` feature${m.features.length > 1 ? "s" : ""} (`,
    el("code", {}, m.features.join(", ")), ") · forecasts ", el("b", {}, m.horizon), " steps of ",
    el("code", {}, m.targets.join(", ")),
    m.stateful ? " · stateful (any history length)" : [" · windowed: the last ", el("b", {}, m.lookback), " rows"],
    ` · lookback ${m.lookback}`, m.freq ? [" · freq ", el("code", {}, m.freq)] : null, ` · ${q}`);
}

function showError(msg) {
  $("fc-error").textContent = msg || "";
  $("fc-error").hidden = !msg;
}

/** The status line: a string, or a list of strings and nodes (built with dom.js). */
function status(content, state = "info") {
  show($("fc-status"), content).dataset.state = state;
}

const ok = (text) => el("span", { class: "ok" }, text);

// ------------------------------------------------------------------------------ data

const DATE_NAMES = /^(date|time|timestamp|datetime|ds|day|month|week)$/i;

/** CSV text -> {rows: [[F numbers]], timestamps: [string] | null}, columns matched to the
 * model's features by name (a header row), or by position when there is none. */
export function parseCSV(text, features) {
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  if (!lines.length) throw new Error("the CSV is empty");
  const delim = [",", ";", "\t"].sort((a, b) => lines[0].split(b).length - lines[0].split(a).length)[0];
  const cells = lines.map((l) => l.split(delim).map((c) => c.trim().replace(/^"(.*)"$/, "$1")));
  const numeric = (c) => c !== "" && Number.isFinite(Number(c));
  const header = cells[0].some((c) => !numeric(c)) && cells.length > 1 && cells[1].some(numeric) ? cells[0] : null;
  const body = header ? cells.slice(1) : cells;
  let cols, dateCol = -1;
  if (header) {
    const lower = header.map((h) => h.toLowerCase());
    cols = features.map((f) => { const i = header.indexOf(f); return i >= 0 ? i : lower.indexOf(f.toLowerCase()); });
    const missing = features.filter((f, k) => cols[k] < 0);
    if (missing.length) {
      throw new Error(`the CSV has no column ${missing.map((f) => `"${f}"`).join(", ")}; the model reads ` +
        `${features.join(", ")} (its columns: ${header.join(", ")})`);
    }
    dateCol = header.findIndex((h, i) => !cols.includes(i) && DATE_NAMES.test(h));
    if (dateCol < 0) dateCol = header.findIndex((h, i) => !cols.includes(i) && body[0] && !numeric(body[0][i]) && !Number.isNaN(Date.parse(body[0][i])));
  } else {
    const n = body[0].length;
    if (n === features.length) cols = features.map((f, k) => k);
    else if (n === features.length + 1 && !numeric(body[0][0])) { dateCol = 0; cols = features.map((f, k) => k + 1); }
    else throw new Error(`the CSV's rows have ${n} values and no header; the model reads ${features.length} features ` +
      `(${features.join(", ")}): add a header row naming them`);
  }
  const rows = body.map((r, i) => cols.map((c, k) => {
    const v = Number(r[c]);
    if (r[c] === undefined || r[c] === "" || !Number.isFinite(v)) {
      throw new Error(`row ${i + 1 + (header ? 1 : 0)}, column ${features[k]}: ${JSON.stringify(r[c] ?? "")} is not a number`);
    }
    return v;
  }));
  const timestamps = dateCol >= 0 ? body.map((r) => r[dateCol]) : null;
  return { rows, timestamps };
}

async function sampleOf(m) {
  const key = `${m.name}@${m.version}`;
  if (!samples.has(key)) samples.set(key, await getJSON(`/models/${encodeURIComponent(m.name)}/sample`));
  return samples.get(key);
}

/** {context rows, their timestamps, the actual future (rows) when known}. */
async function history(m) {
  if (document.querySelector("#fc-source input:checked").value === "sample") {
    const s = await sampleOf(m);
    const n = s.context_rows;
    return { rows: s.rows.slice(0, n), timestamps: s.timestamps ? s.timestamps.slice(0, n) : null,
      future: s.rows.slice(n), futureTs: s.timestamps ? s.timestamps.slice(n) : null,
      what: `validation rows ${fmt(s.start_row)}–${fmt(s.start_row + n - 1)} of ${s.source}` };
  }
  const text = $("fc-csv").value;
  const { rows, timestamps } = parseCSV(text, m.features);
  return { rows, timestamps, future: null, futureTs: null, what: `${fmt(rows.length)} CSV rows` };
}

// ------------------------------------------------------------------------------ charts

const epoch = (ts) => {
  const t = Date.parse(/[zZ]|[+-]\d\d:?\d\d$/.test(ts) ? ts : ts.replace(" ", "T") + "Z");
  return Number.isNaN(t) ? null : t / 1000;
};

/** The chart data of each target: x, history, actual, forecast, lo, hi. */
function chartData(m, hist, resp) {
  const H = resp.forecast.length;
  const L = hist.rows.length;
  const shown = Math.min(L, 1000); // longer histories: their last 1000 rows
  const rows = hist.rows.slice(L - shown);
  let x = null, time = false;
  if (hist.timestamps && resp.timestamps) {
    const a = hist.timestamps.slice(L - shown).map(epoch);
    const b = resp.timestamps.map(epoch);
    if (!a.includes(null) && !b.includes(null)) { x = [...a, ...b]; time = true; }
  }
  if (!x) x = [...Array.from({ length: shown }, (_, i) => i - shown + 1), ...Array.from({ length: H }, (_, i) => i + 1)];
  const levels = resp.quantiles ? Object.keys(resp.quantiles).map(Number).sort((p, q) => p - q) : [];
  const lo = levels.length >= 2 ? resp.quantiles[String(levels[0])] ?? resp.quantiles[levels[0].toString()] : null;
  const hi = levels.length >= 2 ? resp.quantiles[String(levels[levels.length - 1])] : null;
  return resp.targets.map((t, k) => {
    const fi = m.features.indexOf(t);
    const pad = (arr) => [...new Array(shown).fill(null), ...arr];
    const future = hist.future ? hist.future.slice(0, H).map((r) => r[fi]) : null;
    return {
      target: t, time, x,
      history: [...rows.map((r) => r[fi]), ...new Array(H).fill(null)],
      forecast: pad(resp.forecast.map((r) => r[k])),
      actual: future && future.length ? pad([...future, ...new Array(H - future.length).fill(null)]) : null,
      lo: lo ? pad(lo.map((r) => r[k])) : null,
      hi: hi ? pad(hi.map((r) => r[k])) : null,
      bandLabel: lo ? `${fmt((levels[levels.length - 1] - levels[0]) * 100)}% interval` : null,
    };
  });
}

function draw(m, hist, resp) {
  drawFigures(chartData(m, hist, resp).map((d) => ({
    key: `target:${d.target}:${d.time}:${Boolean(d.lo)}`, kind: "forecast", d,
    dataset: { target: d.target, historyPoints: String(d.history.filter((v) => v != null).length),
      forecastPoints: String(d.forecast.filter((v) => v != null).length), band: d.lo ? "yes" : "no" },
    caption: forecastCaption(d),
  })));
}

function forecastCaption(d, extra = null) {
  const nh = d.history.filter((v) => v != null).length;
  const nf = d.forecast.filter((v) => v != null).length;
  return [el("b", {}, d.target), " ", el("span", { class: "muted" }, `· history ${fmt(nh)} points · forecast ` +
    `${fmt(nf)} steps${d.bandLabel ? ` · shaded: ${d.bandLabel}` : ""}${d.actual ? " · dashed: what actually followed" : ""}`,
  extra)];
}

/** One figure per spec ({key, kind: "forecast" | "covariate", d, dataset, caption}); when the
 * keys are those already shown (a session's animation), the charts are updated in place. */
function drawFigures(specs) {
  const box = $("fc-charts");
  const reuse = charts.length === specs.length && charts.every((c, i) => c.key === specs[i].key);
  if (!reuse) {
    for (const c of charts) c.chart.destroy();
    box.replaceChildren();
    charts = specs.map((spec) => {
      const cap = el("figcaption");
      const plot = el("div");
      const fig = el("figure", { class: spec.kind === "covariate" ? "chart covariate" : "chart" }, cap, plot);
      box.appendChild(fig);
      const chart = spec.kind === "covariate" ? covariateChart(plot, spec.d) : forecastChart(plot, spec.d);
      return { fig, cap, el: plot, key: spec.key, chart };
    });
  }
  specs.forEach((spec, i) => {
    const c = charts[i], d = spec.d;
    if (reuse) {
      const blank = new Array(d.x.length).fill(null);
      c.chart.setData(spec.kind === "covariate" ? [d.x, d.values]
        : [d.x, d.history, d.actual || blank, d.forecast, d.lo || blank, d.hi || blank]);
    }
    Object.assign(c.fig.dataset, spec.dataset);
    show(c.cap, spec.caption);
  });
}

// ------------------------------------------------------------------------------ panel models

function panelInfo(m) {
  const p = m.panel;
  const names = (list) => (list.length ? el("code", {}, list.join(", ")) : "none");
  const statics = [...p.static_categorical.map((c) => c.name), ...p.static_real];
  show($("fc-info"), "a global model: forecasts ", el("b", {}, p.horizon), " steps of ", el("code", {}, p.target),
    " per series from the last ", el("b", {}, p.lookback), ` · freq `, el("code", {}, p.freq),
    " · past covariates ", names(p.past_covariates), " · future covariates ", names(p.future_covariates),
    " · statics ", names(statics), p.quantiles.length ? ` · intervals at ${p.quantiles.join(", ")}` : null);
}

/** The checked series of a panel model's embedded sample. */
async function panelSeriesList(m) {
  return panel.sampleSeries(await sampleOf(m), m.panel.horizon);
}

async function selectedSeries(m) {
  const list = await panelSeriesList(m);
  const s = list.find((x) => x.id === $("fc-series").value) || list[0];
  if (!s) throw new Error(`model ${m.name}'s sample holds no series`);
  return s;
}

/** The series picker of a panel model (ids from its sample). */
async function fillSeries(m) {
  const sel = $("fc-series");
  const keep = sel.value;
  sel.replaceChildren();
  $("fc-series-info").replaceChildren();
  try {
    const list = await panelSeriesList(m);
    if (model() !== m) return; // another model was picked meanwhile
    for (const s of list) sel.add(new Option(s.id, s.id));
    if (list.some((s) => s.id === keep)) sel.value = keep;
    seriesInfo(await selectedSeries(m));
  } catch (e) {
    if (model() === m) showError(e.message);
  }
}

function seriesInfo(s) {
  const ev = panel.events(s);
  const statics = Object.entries(s.static).map(([k, v]) => [el("code", {}, k), ` ${v}`]);
  show($("fc-series-info"), el("b", {}, `${fmt(s.y.length)}`), " steps of history",
    s.ts.length ? [` (${s.ts[0]} → ${s.ts[s.ts.length - 1]})`] : null,
    statics.length ? [" · ", join(statics, ", ")] : null,
    Object.keys(ev).length ? [" · shaded: ", join(Object.entries(ev).map(([k, t]) =>
      [el("code", {}, k), ` = 1 (${t.length} step${t.length === 1 ? "" : "s"})`]), ", ")] : null);
}

/** The step between timestamps (seconds; the smallest gap), to shade a marked step's width. */
function stepOf(x) {
  let step = Infinity;
  for (let i = 1; i < x.length; i++) if (x[i] > x[i - 1]) step = Math.min(step, x[i] - x[i - 1]);
  return Number.isFinite(step) ? step : 3600;
}

/** The figures of a panel series with ``n`` steps of history and an answer ``r`` (a /forecast
 * series entry or a session's answer): the target, then each covariate over the whole span. */
function panelFigures(m, s, n, r) {
  const p = m.panel, t = p.target, H = p.horizon;
  const y = r.forecast && Array.isArray(r.forecast[t]) ? r.forecast[t] : [];
  const histTs = s.ts.slice(0, n), futTs = Array.isArray(r.timestamps) ? r.timestamps : [];
  const xs = [...histTs, ...futTs].map(epoch);
  const time = !xs.includes(null) && xs.length === n + y.length;
  const x = time ? xs : [...Array.from({ length: n }, (_, i) => i - n + 1), ...y.map((v, i) => i + 1)];
  const pad = (arr) => [...new Array(n).fill(null), ...arr];
  const followed = [...s.y.slice(n), ...s.actual].slice(0, y.length);
  const b = panel.band(r, t);
  const spanTs = [...s.ts, ...s.futureTs], spanX = spanTs.map(epoch);
  const ev = panel.events(s);
  const marks = time ? [...new Set(Object.values(ev).flat())].map(epoch) : [];
  const step = stepOf(time ? x : spanX);
  const d = {
    target: t, time, x, marks, step,
    history: [...s.y.slice(0, n), ...new Array(y.length).fill(null)],
    forecast: pad(y),
    actual: followed.length ? pad([...followed, ...new Array(y.length - followed.length).fill(null)]) : null,
    lo: b ? pad(b.lo) : null,
    hi: b ? pad(b.hi) : null,
    bandLabel: b ? b.label : null,
  };
  const evNames = Object.keys(ev);
  const figures = [{
    key: `panel:${s.id}:${t}:${time}:${Boolean(b)}`, kind: "forecast", d,
    dataset: { target: t, series: s.id, historyPoints: String(n), forecastPoints: String(y.length),
      band: b ? "yes" : "no", marked: String(marks.length) },
    caption: forecastCaption(d, evNames.length ? ` · green: ${evNames.join(", ")} = 1` : null),
  }];
  if (spanX.includes(null)) return figures; // covariates need a time axis to share
  const covariates = [
    ...Object.entries(s.past).map(([k, v]) => [k, "past", [...v, ...new Array(s.futureTs.length).fill(null)]]),
    ...Object.entries(s.future).map(([k, v]) => [k, "future", v]),
  ];
  for (const [name, role, values] of covariates) {
    const marked = ev[name] ? ev[name].map(epoch) : [];
    figures.push({
      key: `cov:${s.id}:${name}`, kind: "covariate",
      d: { x: spanX, values, name, marks: marked, step: stepOf(spanX) },
      dataset: { covariate: name, role, marked: String(marked.length) },
      caption: [el("b", {}, name), " ", el("span", { class: "muted" }, `· ${role} covariate` +
        (role === "future" ? " (known over the horizon)" : " (known up to now)") +
        (marked.length ? ` · green: the ${marked.length} step${marked.length === 1 ? "" : "s"} at 1` : ""))],
    });
  }
  return figures;
}

function drawPanel(m, s, n, r) {
  drawFigures(panelFigures(m, s, n, r));
  const t = m.panel.target;
  window.__playground.forecast = { series: s.id, history: n, timestamps: r.timestamps,
    forecast: r.forecast ? r.forecast[t] : null, quantiles: r.quantiles || null, warnings: r.warnings || [] };
}

const warningsOf = (r) => (Array.isArray(r.warnings) && r.warnings.length ? [" · ", el("span", { class: "warn" },
  `warning: ${r.warnings.map(String).join("; ")}`)] : null);

async function forecastPanel(m) {
  status("reading the series…", "busy");
  const s = await selectedSeries(m);
  const t = performance.now();
  status(["forecasting series ", el("code", {}, s.id), "…"], "busy");
  const resp = await postJSON("/forecast", { model: m.name, series: [panel.entry(s, m.panel.horizon)] });
  const ms = performance.now() - t;
  const r = resp.series[0];
  drawPanel(m, s, s.y.length, r);
  status([ok("forecast"), ` ${resp.horizon} steps of ${m.panel.target} for series `, el("code", {}, r.id),
    ` from ${fmt(s.y.length)} steps of history · ${fmt(ms, 1)} ms · ${resp.model} v${resp.version}` +
    `${r.quantiles ? " · with intervals" : ""}`, warningsOf(r)], "done");
}

/** A session named by the series id: opened with the series' history but its last steps (at
 * most a horizon), which are then fed one by one with their covariates; the last answer is the
 * forecast from the whole history, as the Forecast button gives it. */
async function sessionPanel(m, mine) {
  const s = await selectedSeries(m);
  const H = m.panel.horizon;
  const n0 = Math.max(Math.max(1, m.panel.min_history), s.y.length - H);
  const feed = s.y.length - n0;
  if (feed < 1) throw new Error(`series ${s.id} has ${s.y.length} steps of history: too few to feed a session`);
  let resp = await postJSON("/sessions", { model: m.name, ...panel.entry(s, H, n0) });
  mine.id = resp.session_id;
  drawPanel(m, s, n0, resp);
  for (let k = 0; k < feed && !mine.stopped; k++) {
    const t = performance.now();
    resp = await postJSON(`/sessions/${encodeURIComponent(mine.id)}`, panel.observation(s, H, n0 + k));
    const ms = performance.now() - t;
    drawPanel(m, s, n0 + k + 1, resp);
    status([ok("session"), " ", el("code", {}, mine.id), " · observation ", el("b", {}, k + 1),
      `/${feed} · ${resp.observations} seen · update ${fmt(ms, 1)} ms`, warningsOf(resp)], "session");
    await new Promise((r) => setTimeout(r, Number($("fc-speed").value)));
  }
  if (!mine.stopped) status([ok("session done"), `: ${feed} observations of series `, el("code", {}, s.id),
    " fed one by one, the forecast updated after each"], "done");
}

// ------------------------------------------------------------------------------ one forecast

function contextFor(m, hist) {
  const max = limits.max_context_rows || 100000;
  const n = m.stateful ? Math.min(hist.rows.length, max) : Math.min(hist.rows.length, m.lookback);
  const cut = hist.rows.length - n;
  return { ...hist, rows: hist.rows.slice(cut), timestamps: hist.timestamps ? hist.timestamps.slice(cut) : null };
}

async function forecast(ev) {
  ev.preventDefault();
  stopSession();
  showError("");
  const m = model();
  if (!m) return;
  if (isPanel(m)) {
    try { await forecastPanel(m); } catch (e) { status("failed", "error"); showError(e.message); }
    return;
  }
  try {
    status("reading the history…", "busy");
    const hist = contextFor(m, await history(m));
    const body = { model: m.name, context: hist.rows };
    if (hist.timestamps) body.timestamps = hist.timestamps;
    const t = performance.now();
    status(`forecasting from ${hist.what}…`, "busy");
    const resp = await postJSON("/forecast", body);
    const ms = performance.now() - t;
    draw(m, hist, resp);
    status([ok("forecast"), ` ${resp.horizon} steps of ${resp.targets.join(", ")} from ${hist.what} · ` +
      `${fmt(ms, 1)} ms · ${resp.model} v${resp.version}${resp.quantiles ? " · with intervals" : ""}`], "done");
  } catch (e) {
    status("failed", "error");
    showError(e.message);
  }
}

// ------------------------------------------------------------------------------ a session

function stopSession() {
  if (session) session.stopped = true;
}

async function playSession() {
  stopSession();
  showError("");
  const m = model();
  if (!m) return;
  const mine = { stopped: false, id: null };
  session = mine;
  $("fc-stop").disabled = false;
  try {
    if (isPanel(m)) { await sessionPanel(m, mine); return; }
    const all = await history(m);
    // the first `lookback` rows open the session (all of the sample's context); the rest are
    // fed one by one, so the forecast moves as each observation arrives
    let rows = all.rows, ts = all.timestamps;
    let feed = all.future || [], feedTs = all.futureTs || null;
    if (!all.future) {
      const n = Math.min(m.lookback, Math.max(1, rows.length - 1));
      feed = rows.slice(n, n + 500);
      feedTs = ts ? ts.slice(n, n + 500) : null;
      rows = rows.slice(0, n);
      ts = ts ? ts.slice(0, n) : null;
    }
    const open = { model: m.name, context: rows };
    if (ts) open.timestamps = ts;
    let resp = await postJSON("/sessions", open);
    mine.id = resp.session_id;
    const seen = { rows: [...rows], timestamps: ts ? [...ts] : null };
    const show = (r, k) => {
      const hist = { rows: seen.rows, timestamps: seen.timestamps, future: feed.slice(k), futureTs: feedTs ? feedTs.slice(k) : null };
      if (r.forecast) draw(m, hist, { ...r, horizon: r.forecast.length });
    };
    show(resp, 0);
    for (let k = 0; k < feed.length && !mine.stopped; k++) {
      const body = { observations: [feed[k]] };
      if (feedTs) body.timestamps = [feedTs[k]];
      const t = performance.now();
      resp = await postJSON(`/sessions/${encodeURIComponent(mine.id)}`, body);
      const ms = performance.now() - t;
      seen.rows.push(feed[k]);
      if (seen.timestamps) seen.timestamps.push(feedTs[k]);
      show(resp, k + 1);
      status([ok("session"), " ", el("code", {}, mine.id.slice(0, 8)), " · observation ", el("b", {}, k + 1),
        `/${feed.length} · ${resp.observations} seen · update ${fmt(ms, 1)} ms` +
        (resp.forecast ? "" : ` · needs ${resp.needs} more`)], "session");
      await new Promise((r) => setTimeout(r, Number($("fc-speed").value)));
    }
    if (!mine.stopped) status([ok("session done"), `: ${feed.length} observations fed one by one, ` +
      "the forecast updated after each"], "done");
  } catch (e) {
    status("failed", "error");
    showError(e instanceof ApiError || e instanceof Error ? e.message : String(e));
  } finally {
    if (mine.id) request(`/sessions/${encodeURIComponent(mine.id)}`, { method: "DELETE" }).catch(() => {});
    if (session === mine) { session = null; $("fc-stop").disabled = true; }
  }
}

// ------------------------------------------------------------------------------ wiring

export function init() {
  $("fc-form").addEventListener("submit", forecast);
  $("fc-session").addEventListener("click", playSession);
  $("fc-stop").addEventListener("click", () => { stopSession(); status("stopped", "stopped"); });
  $("fc-model").addEventListener("change", modelChanged);
  $("fc-series").addEventListener("change", async () => {
    const m = model();
    if (isPanel(m)) seriesInfo(await selectedSeries(m));
  });
  for (const r of document.querySelectorAll("#fc-source input")) {
    r.addEventListener("change", sourceShown);
  }
  $("fc-file").addEventListener("change", async () => {
    const f = $("fc-file").files[0];
    if (f) $("fc-csv").value = await f.text();
  });
  $("fc-speed").addEventListener("input", () => { $("fc-speed-v").textContent = `${$("fc-speed").value} ms`; });
  window.addEventListener("resize", () => charts.forEach((c) => fit(c.chart, c.el)));
}

/** A panel model picks a series of its sample; the others take the sample window or a CSV. */
function sourceShown() {
  const p = isPanel(model());
  $("fc-source").hidden = p;
  $("fc-series-box").hidden = !p;
  $("fc-csv-box").hidden = p || document.querySelector("#fc-source input:checked").value !== "csv";
}

function modelChanged() {
  info();
  sourceShown();
  showError("");
  const m = model();
  if (isPanel(m)) fillSeries(m);
}

export function onShow() {
  charts.forEach((c) => fit(c.chart, c.el));
}
