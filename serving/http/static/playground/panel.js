// A panel model's series, as the Forecast view uses them: one series of the sample that
// `rnnops export` embeds (GET /models/{name}/sample, "kind": "panel"), turned into the request
// bodies of /forecast's `series` form and of a session by series id, and the answers into chart
// data. Pure functions of the data (no DOM): forecast.js draws. The sample is the model file's
// metadata, so it is untrusted: anything that is not the expected shape is refused here with one
// line, and its strings only ever reach the page as text (dom.js).

const isNum = (v) => typeof v === "number" && Number.isFinite(v);
const numOrNull = (v) => (v === null || isNum(v) ? v : undefined);

function check(ok, what) {
  if (!ok) throw new Error(`the model's embedded sample is malformed: ${what}`);
}

/** The series of a panel sample, checked: [{id, static, ts, y, actual, futureTs, past, future}],
 * where `ts`/`y` are the history (leading missing values dropped: a series starts with its first
 * observation), `futureTs`/`actual` the horizon that followed, `past[name]` one value per history
 * step and `future[name]` one per history step and then one per horizon step. */
export function sampleSeries(sample, horizon) {
  check(sample && Array.isArray(sample.series), "no series list");
  return sample.series.map((s, i) => {
    check(s && typeof s === "object", `series ${i} is not an object`);
    check(typeof s.id === "string" && s.id, `series ${i} has no id`);
    const ts = s.timestamps, n = s.context;
    check(Array.isArray(ts) && ts.every((t) => typeof t === "string"), `series ${s.id}: timestamps`);
    check(Number.isInteger(n) && n >= 0 && n <= ts.length, `series ${s.id}: context`);
    check(Array.isArray(s.target) && s.target.length === n && s.target.every((v) => numOrNull(v) !== undefined),
      `series ${s.id}: target`);
    check(Array.isArray(s.actual) && s.actual.every((v) => numOrNull(v) !== undefined), `series ${s.id}: actual`);
    const columns = (obj, len, what) => {
      check(obj && typeof obj === "object" && !Array.isArray(obj), `series ${s.id}: ${what}`);
      for (const [k, v] of Object.entries(obj)) {
        check(Array.isArray(v) && v.length === len && v.every((x) => numOrNull(x) !== undefined),
          `series ${s.id}: ${what} ${k}`);
      }
      return obj;
    };
    const past = columns(s.past_covariates || {}, n, "past covariate");
    const future = columns(s.future_covariates || {}, ts.length, "future covariate");
    const statics = s.static && typeof s.static === "object" && !Array.isArray(s.static) ? s.static : {};
    let first = s.target.findIndex((v) => v !== null);
    if (first < 0) first = n; // no observation at all: a cold start (when the model allows it)
    const cut = (v) => v.slice(first, n);
    return {
      id: s.id,
      static: Object.fromEntries(Object.entries(statics).filter(([, v]) => typeof v === "string" || isNum(v))),
      ts: cut(ts),
      y: cut(s.target),
      futureTs: ts.slice(n, n + horizon),
      actual: s.actual.slice(0, horizon),
      past: Object.fromEntries(Object.entries(past).map(([k, v]) => [k, cut(v)])),
      future: Object.fromEntries(Object.entries(future).map(([k, v]) => [k, v.slice(first)])),
    };
  });
}

/** The series entry of /forecast (and the body of POST /sessions with `id`) for the first ``n``
 * history steps of ``s``: their values and timestamps, the past covariates over them, the future
 * covariates over them and the ``horizon`` steps after, the statics. */
export function entry(s, horizon, n = s.y.length) {
  const allTs = [...s.ts, ...s.futureTs];
  const e = {
    id: s.id,
    timestamps: s.ts.slice(0, n),
    context: s.y.slice(0, n),
    past_covariates: Object.fromEntries(Object.entries(s.past).map(([k, v]) => [k, v.slice(0, n)])),
    future_covariates: Object.fromEntries(Object.entries(s.future).map(([k, v]) => [k, v.slice(0, n + horizon)])),
    static: { ...s.static },
  };
  if (!n && allTs.length) e.start = allTs[0];
  return e;
}

/** The body of POST /sessions/{id} that feeds history step ``i`` of ``s``: its value and
 * timestamp, its past covariates, and the future covariates of the ``horizon`` steps after it. */
export function observation(s, horizon, i) {
  return {
    observations: [s.y[i]],
    timestamps: [s.ts[i]],
    past_covariates: Object.fromEntries(Object.entries(s.past).map(([k, v]) => [k, [v[i]]])),
    future_covariates: Object.fromEntries(Object.entries(s.future).map(([k, v]) => [k, v.slice(i + 1, i + 1 + horizon)])),
  };
}

/** Whether a covariate is an event flag (a promotion day, a holiday): every value 0 or 1 (or
 * missing), at least one 1. Its steps at 1 are marked on the charts. */
export function isEvent(values) {
  return values.some((v) => v === 1) && values.every((v) => v === null || v === 0 || v === 1);
}

/** The timestamps of the steps where an event covariate is 1, by covariate name:
 * {promo: ["2024-03-02T00:00:00", ...]} over the series' whole span (history and horizon). */
export function events(s) {
  const allTs = [...s.ts, ...s.futureTs];
  const out = {};
  for (const [k, v] of Object.entries(s.future)) {
    if (isEvent(v)) out[k] = allTs.filter((t, i) => v[i] === 1);
  }
  for (const [k, v] of Object.entries(s.past)) {
    if (isEvent(v)) out[k] = s.ts.filter((t, i) => v[i] === 1);
  }
  return out;
}

/** The levels of an answer's quantiles, lowest and highest: {lo: [H], hi: [H], label} or null. */
export function band(resp, target) {
  const q = resp.quantiles;
  if (!q || typeof q !== "object") return null;
  const levels = Object.keys(q).map(Number).filter(Number.isFinite).sort((a, b) => a - b);
  if (levels.length < 2) return null;
  const at = (lv) => Object.entries(q).find(([k]) => Number(k) === lv)[1][target];
  const lo = at(levels[0]), hi = at(levels[levels.length - 1]);
  if (!Array.isArray(lo) || !Array.isArray(hi)) return null;
  return { lo, hi, levels, label: `${Math.round((levels[levels.length - 1] - levels[0]) * 100)}% interval` };
}
