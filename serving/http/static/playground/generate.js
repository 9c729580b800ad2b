// Generate: stream text from a char model and color each character by its probability or by
// the activation of one hidden unit.
//
// - Text streams from POST /generate (SSE `chunk` events, then `done` with the server's stats)
//   or from POST /v1/completions (stream, logprobs=5: each character's probability arrives with
//   it).
// - The state per character comes from the Open Inference Protocol: one
//   /v2/models/{name}/infer call per character, the state tensors (as the model's `state`
//   description names them) given as inputs and asked for as outputs, so the server's fast
//   path is untouched. The same calls give the logits, hence each character's probability
//   under the raw distribution when the text came from /generate.

import { ApiError, getJSON, postJSON, postSSE, rawInt } from "./api.js";
import { el, join, show } from "./dom.js";

const $ = (id) => document.getElementById(id);
const OIP_TYPES = { float32: "FP32", float16: "FP16", float64: "FP64" };
const TRACE_LIMIT = 4000; // characters traced at most (one request each)
const fmt = (x, d = 0) => Number(x).toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: d });

let models = [];
let run = null; // the current generation (text, spans, trace)
let unitChosen = false; // the user picked a unit (else the most active one is shown)
const vocabs = new Map();

// ------------------------------------------------------------------------------ setup

export function setModels(list) {
  models = list.filter((m) => m.kind === "char");
  const sel = $("gen-model");
  const keep = sel.value;
  sel.replaceChildren();
  for (const m of models) sel.add(new Option(`${m.name}  (v${m.version}, ${m.cell} ${m.layers}×${m.hidden_size})`, m.name));
  if (models.some((m) => m.name === keep)) sel.value = keep;
  $("gen-go").disabled = !models.length;
  if (!models.length) $("gen-stats").textContent = "No char model is served here.";
  setupUnits();
}

function model() {
  return models.find((m) => m.name === $("gen-model").value);
}

function nonBatchDims(t) {
  return t.shape.filter((d) => d !== "batch");
}

function setupUnits() {
  const m = model();
  const sel = $("unit-tensor");
  const keep = sel.value;
  sel.replaceChildren();
  if (!m || !m.state) return;
  for (const t of m.state) sel.add(new Option(`${t.output}  [${nonBatchDims(t).join("×")}]`, t.output));
  // default: the hidden state h (hn), else the first tensor
  const h = m.state.find((t) => /^h/i.test(t.output)) || m.state[0];
  sel.value = m.state.some((t) => t.output === keep) ? keep : h.output;
  setupLayers();
}

function tensor() {
  const m = model();
  return m && m.state ? m.state.find((t) => t.output === $("unit-tensor").value) : null;
}

function setupLayers() {
  const t = tensor();
  if (!t) return;
  const dims = nonBatchDims(t);
  const layers = dims.length > 1 ? dims[0] : 1;
  const sel = $("unit-layer");
  sel.replaceChildren();
  for (let i = 0; i < layers; i++) sel.add(new Option(String(i), String(i)));
  sel.value = String(layers - 1); // default: the last layer
  $("unit-layer-label").hidden = layers <= 1;
  const units = dims.length > 1 ? dims.slice(1).reduce((a, b) => a * b, 1) : dims[0];
  const r = $("unit-index");
  r.max = String(units - 1);
  if (Number(r.value) > units - 1) r.value = "0";
  $("unit-value").textContent = `${r.value} of ${units}`;
  repaint();
}

function unitOffset() {
  const t = tensor();
  const dims = nonBatchDims(t);
  const per = dims.length > 1 ? dims.slice(1).reduce((a, b) => a * b, 1) : dims[0];
  return { offset: (dims.length > 1 ? Number($("unit-layer").value) * per : 0), per };
}

function colorMode() {
  return document.querySelector("#gen-color input:checked").value;
}

// ------------------------------------------------------------------------------ generation

function readForm() {
  const body = {
    model: $("gen-model").value,
    prompt: $("gen-prompt").value,
    max_chars: Number($("gen-max").value),
    temperature: Number($("gen-temp").value),
    top_k: Number($("gen-topk").value),
    top_p: Number($("gen-topp").value),
  };
  const seed = $("gen-seed").value.trim();
  if (seed) body.seed = /^\d+$/.test(seed) ? BigInt(seed) : seed; // anything else: the server says what is wrong
  const stop = $("gen-stop").value;
  if (stop) body.stop = stop.split(",").map((s) => s.replace(/\\n/g, "\n").replace(/\\t/g, "\t")).filter(Boolean);
  return body;
}

function addChars(text, prompt) {
  const out = $("gen-output");
  const frag = document.createDocumentFragment();
  for (const ch of text) {
    const i = run.chars.length;
    const s = document.createElement("span");
    s.className = prompt ? "ch prompt" : "ch";
    if (ch === "\n") s.classList.add("nl");
    s.textContent = ch;
    s.dataset.i = String(i);
    run.chars.push({ ch, prompt, p: null, top: null, state: null });
    run.spans.push(s);
    frag.appendChild(s);
  }
  out.appendChild(frag);
}

function showError(msg) {
  const e = $("gen-error");
  e.textContent = msg;
  e.hidden = !msg;
}

function liveFigures() {
  if (!run) return;
  const n = run.generated;
  const now = performance.now();
  const parts = [[el("b", {}, fmt(n)), " chars"]];
  if (run.tFirst) {
    const dt = (now - run.tFirst) / 1000;
    if (n > 1 && dt > 0) parts.push([el("b", {}, fmt(n / dt)), " chars/s"]);
    parts.push(["first char after ", el("b", {}, fmt(run.tFirst - run.t0, 1)), " ms"]);
  }
  show($("gen-live"), join(parts, " · "));
}

function doneStats(d) {
  const box = $("gen-stats");
  box.dataset.state = "done";
  const srv = d.chars_per_s != null ? ` · server ${fmt(d.chars_per_s)} chars/s` : "";
  const ttfc = d.ttfc_ms != null ? ` · first char ${fmt(d.ttfc_ms, 1)} ms` : "";
  const replay = /^\d+$/.test(String(d.seed))
    ? el("a", { href: "#", class: "replay", title: "put this seed in the form: the same settings give the same text again" }, "replay")
    : null;
  if (replay) replay.addEventListener("click", (ev) => { ev.preventDefault(); $("gen-seed").value = String(d.seed); });
  show(box, el("span", { class: "ok" }, "done"), ` ${fmt(d.chars)} chars · finish `, el("b", {}, d.finish_reason),
    `${ttfc}${srv}${d.queue_ms != null ? ` · queue ${fmt(d.queue_ms, 1)} ms` : ""} · seed `, el("code", {}, d.seed), " ",
    replay, " · ", el("span", { class: "muted" }, `${d.model} v${d.version}${d.source ? " via " + d.source : ""}`));
}

async function streamGenerate(body, signal) {
  let done = null;
  await postSSE("/generate", body, (event, data, text) => {
    if (event === "chunk") onText(data.text);
    else if (event === "done") done = { ...data, seed: rawInt(text, "seed") ?? data.seed };
    else if (event === "error") throw new ApiError(500, `${data.type}: ${data.error}`, data);
  }, signal);
  return done;
}

async function streamCompletions(body, signal) {
  const req = { model: body.model, prompt: body.prompt, max_tokens: body.max_chars, temperature: Math.min(2, body.temperature),
    top_p: body.top_p, stream: true, logprobs: 5 };
  if (body.seed !== undefined) req.seed = body.seed;
  if (body.stop) req.stop = body.stop;
  let finish = null, seed = null;
  await postSSE("/v1/completions", req, (event, data, text) => {
    if (data === "[DONE]") return;
    if (data.error) throw new ApiError(500, data.error.message, data);
    if (data.seed != null) seed = rawInt(text, "seed") ?? data.seed;
    for (const c of data.choices || []) {
      const start = run.chars.length;
      onText(c.text);
      const lp = c.logprobs;
      if (lp) {
        lp.token_logprobs.forEach((v, k) => {
          const r = run.chars[start + k];
          if (!r) return;
          r.p = Math.exp(v);
          r.top = Object.entries(lp.top_logprobs[k] || {}).map(([ch, l]) => [ch, Math.exp(l)]).sort((a, b) => b[1] - a[1]);
          paint(start + k);
        });
      }
      if (c.finish_reason) finish = c.finish_reason;
    }
  }, signal);
  const dur = performance.now() - run.t0;
  return { chars: run.generated, finish_reason: finish, seed: seed ?? (body.seed !== undefined ? String(body.seed) : "not streamed back"), ttfc_ms: run.tFirst ? run.tFirst - run.t0 : null,
    chars_per_s: null, queue_ms: null, duration_ms: dur, model: body.model, version: model().version,
    source: "/v1/completions (times measured in the browser)" };
}

function onText(text) {
  if (!text) return;
  if (!run.tFirst) run.tFirst = performance.now();
  addChars(text, false);
  run.generated += [...text].length;
  run.lengths.push(run.generated);
  const stats = $("gen-stats");
  stats.dataset.state = "streaming";
  stats.textContent = "streaming…";
  liveFigures();
  if (run.tracer) run.tracer.wake();
}

async function generate(ev) {
  ev.preventDefault();
  if (run && run.abort) run.abort.abort();
  const body = readForm();
  const endpoint = $("gen-endpoint").value;
  showError("");
  $("gen-output").replaceChildren();
  $("gen-trace").textContent = "";
  $("gen-live").textContent = "";
  $("unit-suggest").replaceChildren();
  const abort = new AbortController();
  run = { chars: [], spans: [], generated: 0, lengths: [], t0: performance.now(), tFirst: 0, abort, model: model(),
    endpoint, tracer: null, done: false };
  window.__playground.generation = run;
  addChars(body.prompt, true);
  if (colorMode() !== "none") startTrace();
  repaint();
  const stats = $("gen-stats");
  stats.dataset.state = "waiting";
  stats.textContent = `waiting for a slot on ${body.model}…`;
  $("gen-go").disabled = true;
  $("gen-stop-btn").disabled = false;
  const timer = setInterval(liveFigures, 200);
  const mine = run;
  try {
    const d = endpoint === "completions" ? await streamCompletions(body, abort.signal) : await streamGenerate(body, abort.signal);
    if (mine !== run) return;
    liveFigures();
    if (d) doneStats(d);
    else stats.textContent = "the stream ended without its done event";
  } catch (e) {
    if (mine !== run) return;
    if (e.name === "AbortError") {
      stats.dataset.state = "stopped";
      stats.textContent = `stopped after ${fmt(run.generated)} chars`;
    } else {
      stats.dataset.state = "error";
      stats.textContent = "failed";
      showError(e.message);
      if (run.generated === 0 && run.tracer) run.tracer.stop();
    }
  } finally {
    clearInterval(timer);
    if (mine === run) {
      run.done = true;
      run.abort = null;
      if (run.tracer) run.tracer.wake();
      $("gen-go").disabled = false;
      $("gen-stop-btn").disabled = true;
    }
  }
}

// ------------------------------------------------------------------------------ the state per character

async function vocabOf(m) {
  const key = `${m.name}@${m.version}`;
  if (!vocabs.has(key)) {
    const v = await getJSON(`/models/${encodeURIComponent(m.name)}/vocab`);
    vocabs.set(key, new Map(v.vocab.map((c, i) => [c, i])));
    vocabs.set(key + "#list", v.vocab);
  }
  return [vocabs.get(key), vocabs.get(key + "#list")];
}

function softmax(logits) {
  let mx = -Infinity;
  for (const v of logits) if (v > mx) mx = v;
  const e = logits.map((v) => Math.exp(v - mx));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / z);
}

// A state tensor of B rows <-> B separate rows (flat, row-major, batch axis where `shape` says).
function splitDims(t) {
  const b = t.shape.indexOf("batch");
  const outer = t.shape.slice(0, b).reduce((x, y) => x * y, 1);
  const inner = t.shape.slice(b + 1).reduce((x, y) => x * y, 1);
  return { outer, inner };
}

function pack(t, rows) {
  const { outer, inner } = splitDims(t);
  const R = rows.length;
  const out = new Array(outer * R * inner);
  for (let o = 0; o < outer; o++) {
    for (let r = 0; r < R; r++) {
      const src = rows[r];
      for (let i = 0; i < inner; i++) out[(o * R + r) * inner + i] = src[o * inner + i];
    }
  }
  return out;
}

function unpack(t, flat, R) {
  const { outer, inner } = splitDims(t);
  const rows = [];
  for (let r = 0; r < R; r++) {
    const row = new Float32Array(outer * inner);
    for (let o = 0; o < outer; o++) for (let i = 0; i < inner; i++) row[o * inner + i] = flat[(o * R + r) * inner + i];
    rows.push(row);
  }
  return rows;
}

/** The state after every character, from the Open Inference Protocol, as the text arrives.
 *
 * One call per character would take a round trip each. Instead each batch of new characters
 * (n of them) is cut into K ~ sqrt(n) segments: K - 1 calls over whole segments give the state
 * at each segment's start (a char model steps exactly as it runs a whole sequence), then every
 * step advances all segments together as the rows of one batched call (rows are computed
 * exactly as alone). About 2 sqrt(n) calls instead of n; the logits of the steps give each
 * character's probability too (unless /v1/completions logprobs gave it first). */
class Tracer {
  constructor(r) {
    this.run = r;
    this.next = 0; // characters traced so far
    this.state = null; // per tensor: the (B = 1) state after character next - 1
    this.calls = 0;
    this.stopped = false;
    this.waiter = null;
    this.loop().catch((e) => {
      if (this.run === run) $("gen-trace").textContent = `state trace failed: ${e.message}`;
    });
  }

  wake() {
    if (this.waiter) { this.waiter(); this.waiter = null; }
  }

  stop() {
    this.stopped = true;
    this.wake();
  }

  async infer(ids, states, outputs) {
    const m = this.run.model;
    const R = ids.length;
    const inputs = [{ name: "x", shape: [R, ids[0].length], datatype: "INT64", data: ids.flat() }];
    if (states) {
      m.state.forEach((t, k) => inputs.push({ name: t.input, datatype: OIP_TYPES[t.dtype] || "FP32",
        shape: t.shape.map((d) => (d === "batch" ? R : d)), data: pack(t, states.map((s) => s[k])) }));
    }
    this.calls++;
    const ans = await postJSON(`/v2/models/${encodeURIComponent(m.name)}/infer`, { inputs, outputs: outputs.map((name) => ({ name })) });
    const by = Object.fromEntries(ans.outputs.map((o) => [o.name, o.data]));
    // per row: its state tensors (B = 1 each)
    const rows = Array.from({ length: R }, () => []);
    m.state.forEach((t, k) => unpack(t, by[t.output], R).forEach((row, r) => { rows[r][k] = row; }));
    return { by, rows };
  }

  async wave(a, b, index, list) {
    const r = this.run;
    const m = r.model;
    const V = list.length;
    const ids = [];
    for (let i = a; i < b; i++) {
      const id = index.get(r.chars[i].ch);
      if (id === undefined) throw new Error(`character ${JSON.stringify(r.chars[i].ch)} is not in the vocabulary`);
      ids.push(id);
    }
    const n = b - a;
    const K = Math.max(1, Math.round(Math.sqrt(n)));
    const S = Math.ceil(n / K);
    const starts = [this.state]; // state before each segment
    const names = m.state.map((t) => t.output);
    for (let k = 1; k * S < n; k++) {
      const seg = ids.slice((k - 1) * S, k * S);
      const { rows } = await this.infer([seg], starts[k - 1] ? [starts[k - 1]] : null, names);
      starts.push(rows[0]);
    }
    const segs = starts.length;
    let cur = starts.slice();
    for (let j = 0; j < S && !this.stopped && r === run; j++) {
      const live = [];
      for (let k = 0; k < segs; k++) if (k * S + j < Math.min(n, (k + 1) * S)) live.push(k);
      if (!live.length) break;
      const zero = cur.some((s, k) => live.includes(k) && s === null);
      if (zero) { // the text's first character: from the zero state (only segment 0 can be at it)
        for (const k of live) if (cur[k] === null) cur[k] = m.state.map((t) => new Float32Array(splitDims(t).outer * splitDims(t).inner));
      }
      const { by, rows } = await this.infer(live.map((k) => [ids[k * S + j]]), live.map((k) => cur[k]), ["logits", ...names]);
      live.forEach((k, q) => {
        const i = a + k * S + j;
        cur[k] = rows[q];
        r.chars[i].state = rows[q];
        const logits = by.logits.slice(q * V, (q + 1) * V);
        const probs = { probs: softmax(logits), list, index: i + 1 };
        if (i + 1 < r.chars.length) this.setProb(probs);
        else r.pendingProbs = probs; // its character has not arrived yet
        paint(i);
      });
      this.progress();
    }
    this.state = cur[segs - 1];
    this.next = b;
  }

  progress() {
    const r = this.run;
    const done = r.chars.filter((c) => c.state).length;
    $("gen-trace").textContent = `tracing the state: ${fmt(done)}/${fmt(r.chars.length)} chars (${this.calls} /v2 infer calls)`;
  }

  async loop() {
    const r = this.run;
    const [index, list] = await vocabOf(r.model);
    const t0 = performance.now();
    while (!this.stopped && r === run) {
      const end = Math.min(r.chars.length, TRACE_LIMIT);
      if (this.next >= end) {
        if (r.done) break;
        await new Promise((res) => { this.waiter = res; });
        continue;
      }
      if (r.pendingProbs && r.pendingProbs.index < r.chars.length) this.setProb(r.pendingProbs);
      await this.wave(this.next, end, index, list);
    }
    if (r === run && !this.stopped) {
      const n = Math.min(r.chars.length, TRACE_LIMIT);
      $("gen-trace").textContent = `state traced for all ${fmt(n)} chars` +
        (r.chars.length > TRACE_LIMIT ? ` (the first ${fmt(TRACE_LIMIT)})` : "") +
        ` · ${this.calls} calls to /v2/models/${r.model.name}/infer, ${fmt((performance.now() - t0) / 1000, 1)} s`;
      $("gen-output").dataset.traced = String(n);
      suggestUnits();
      repaint();
    }
  }

  setProb({ probs, list, index: i }) {
    const rec = this.run.chars[i];
    this.run.pendingProbs = null;
    if (rec.p != null) return; // logprobs from /v1/completions came first
    const id = list.indexOf(rec.ch);
    rec.p = probs[id];
    rec.top = probs.map((p, k) => [list[k], p]).sort((a, b) => b[1] - a[1]).slice(0, 5);
    paint(i);
  }
}

function startTrace() {
  if (!run || run.tracer || !run.model || !run.model.state) return;
  run.tracer = new Tracer(run);
}

// ------------------------------------------------------------------------------ colors

function unitValue(rec) {
  if (!rec.state) return null;
  const t = tensor();
  const k = run.model.state.findIndex((s) => s.output === t.output);
  const { offset } = unitOffset();
  return rec.state[k][offset + Number($("unit-index").value)];
}

function unitScale() {
  let mx = 0;
  for (const r of run.chars) {
    const v = unitValue(r);
    if (v != null) mx = Math.max(mx, Math.abs(v));
  }
  return Math.max(1, mx); // tanh-bounded states show as they are; others scaled to their range
}

function paint(i) {
  if (!run) return;
  const s = run.spans[i];
  const rec = run.chars[i];
  const mode = colorMode();
  if (mode === "prob") {
    if (rec.p == null) { s.style.background = ""; s.classList.toggle("colored", false); return; }
    // red (unlikely) -> yellow -> green (expected)
    const hue = Math.round(120 * Math.pow(rec.p, 0.5));
    s.style.background = `hsl(${hue} 75% 80%)`;
    s.classList.add("colored");
  } else if (mode === "unit") {
    const v = unitValue(rec);
    if (v == null) { s.style.background = ""; s.classList.remove("colored"); return; }
    const a = Math.min(1, Math.abs(v) / (run.scaleNow || 1));
    s.style.background = v >= 0 ? `rgba(230, 57, 70, ${a.toFixed(3)})` : `rgba(29, 112, 214, ${a.toFixed(3)})`;
    s.classList.add("colored");
  } else {
    s.style.background = "";
    s.classList.remove("colored");
  }
}

function repaint() {
  const mode = colorMode();
  $("unit-controls").hidden = mode !== "unit";
  $("gen-output").dataset.color = mode;
  legend(mode);
  if (!run) return;
  if (mode !== "none" && !run.tracer && run.chars.length) startTrace();
  if (mode === "unit") run.scaleNow = unitScale();
  for (let i = 0; i < run.spans.length; i++) paint(i);
}

function legend(mode) {
  const box = $("gen-legend");
  const sw = (name) => el("span", { class: `sw sw-${name}` }); // colors in style.css (no inline style: CSP)
  if (mode === "prob") {
    const src = $("gen-endpoint").value === "completions" ? "logprobs of /v1/completions" : "the model's logits (via /v2 infer)";
    show(box, el("span", { class: "scale prob" }), ` probability the model gave each character, from ${src}: `,
      sw("unlikely"), " unlikely ", sw("expected"), " expected");
  } else if (mode === "unit") {
    show(box, "activation after each character: ", sw("negative"), " negative ", sw("zero"), " 0 ", sw("positive"),
      " positive ", el("span", { class: "muted" }, "(hover a character for its value)"));
  } else {
    show(box, el("span", { class: "muted" }, "gray: your prompt · hover a character once colored for details"));
  }
}

function suggestUnits() {
  if (!run || !run.model.state) return;
  const t = tensor();
  const k = run.model.state.findIndex((s) => s.output === t.output);
  const { offset, per } = unitOffset();
  const recs = run.chars.filter((r) => r.state);
  if (recs.length < 3) return;
  const scores = [];
  for (let u = 0; u < per; u++) {
    let s = 0, s2 = 0;
    for (const r of recs) { const v = r.state[k][offset + u]; s += v; s2 += v * v; }
    const mean = s / recs.length;
    scores.push([u, Math.sqrt(Math.max(0, s2 / recs.length - mean * mean))]);
  }
  scores.sort((a, b) => b[1] - a[1]);
  if (!unitChosen) { // until one is picked, show the unit that varies most over this text
    $("unit-index").value = String(scores[0][0]);
    $("unit-value").textContent = `${scores[0][0]} of ${per}`;
  }
  const box = $("unit-suggest");
  show(box, el("span", { class: "muted" }, "most active here:"), " ");
  for (const [u, sd] of scores.slice(0, 6)) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "chip";
    b.textContent = `${u}`;
    b.title = `unit ${u}: standard deviation ${sd.toFixed(3)} over this text`;
    b.addEventListener("click", () => { unitChosen = true; $("unit-index").value = String(u); onUnit(); });
    box.appendChild(b);
  }
}

function onUnit() {
  const { per } = unitOffset();
  $("unit-value").textContent = `${$("unit-index").value} of ${per}`;
  repaint();
}

// ------------------------------------------------------------------------------ tooltip

function tooltip(ev) {
  const tip = $("tooltip");
  const s = ev.target.closest(".ch");
  if (!s || !run) { tip.hidden = true; return; }
  const rec = run.chars[Number(s.dataset.i)];
  if (!rec) { tip.hidden = true; return; }
  const visible = (c) => (c === "\n" ? "↵" : c === " " ? "␣" : c === "\t" ? "⇥" : c);
  const lines = [[el("b", { class: "big" }, visible(rec.ch)), " ",
    el("span", { class: "muted" }, `#${s.dataset.i}${rec.prompt ? " (prompt)" : ""}`)]];
  if (rec.p != null) lines.push(["p = ", el("b", {}, rec.p.toFixed(3))]);
  if (rec.top) lines.push(join(rec.top.slice(0, 5).map(([c, p]) => [el("code", {}, visible(c)), ` ${p.toFixed(2)}`]), " "));
  const v = unitValue(rec);
  if (v != null && colorMode() === "unit") lines.push([`unit ${$("unit-index").value}: `, el("b", {}, v.toFixed(3))]);
  show(tip, join(lines, () => el("br")));
  tip.hidden = false;
  tip.style.left = `${ev.clientX + 14}px`;
  tip.style.top = `${ev.clientY + 14}px`;
}

// ------------------------------------------------------------------------------ wiring

export function init() {
  $("gen-form").addEventListener("submit", generate);
  $("gen-stop-btn").addEventListener("click", () => run && run.abort && run.abort.abort());
  $("gen-model").addEventListener("change", setupUnits);
  $("unit-tensor").addEventListener("change", () => { setupLayers(); suggestUnits(); });
  $("unit-layer").addEventListener("change", () => { suggestUnits(); repaint(); });
  $("unit-index").addEventListener("input", () => { unitChosen = true; onUnit(); });
  $("gen-endpoint").addEventListener("change", () => {
    const oa = $("gen-endpoint").value === "completions";
    $("gen-topk").disabled = oa; // OpenAI's completions API has no top_k
    $("gen-topk").title = oa ? "not in OpenAI's completions API" : "";
    legend(colorMode());
  });
  for (const r of document.querySelectorAll("#gen-color input")) r.addEventListener("change", repaint);
  $("gen-output").addEventListener("mousemove", tooltip);
  $("gen-output").addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  legend("none");
}
