// Small wrappers around uPlot (vendored, see vendor/uplot/VERSION): a forecast chart per target
// and the live sparklines.

import uPlot from "./vendor/uplot/uPlot.esm.js";

export const COLORS = { history: "#1f4e8c", forecast: "#e4572e", actual: "#7a869a", band: "rgba(228, 87, 46, 0.16)",
  live: "#2a9d8f", covariate: "#6a4c93", mark: "rgba(42, 157, 143, 0.16)" };

const utc = (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC");

function width(el) {
  return Math.max(280, Math.floor(el.getBoundingClientRect().width) - 4);
}

/** Shaded steps behind a chart's lines (a promotion day, a holiday): ``marks`` are the steps'
 * x values, each shaded ``step`` wide (drawn on the canvas: no markup). */
function marksPlugin(marks, step) {
  return {
    hooks: {
      drawClear: [(u) => {
        if (!marks || !marks.length) return;
        const { ctx, bbox } = u;
        ctx.save();
        ctx.fillStyle = COLORS.mark;
        for (const t of marks) {
          const a = Math.max(bbox.left, u.valToPos(t - step / 2, "x", true));
          const b = Math.min(bbox.left + bbox.width, u.valToPos(t + step / 2, "x", true));
          if (b > a) ctx.fillRect(a, bbox.top, b - a, bbox.height);
        }
        ctx.restore();
      }],
    },
  };
}

/** A chart of history, the actual future (when known), the forecast and its band.
 * ``d``: {x, history, actual, forecast, lo, hi, time, title, bandLabel, marks, step}. */
export function forecastChart(el, d) {
  const series = [
    { label: d.time ? "time (UTC)" : "step" },
    { label: "history", stroke: COLORS.history, width: 1.6, points: { show: false } },
    { label: "actual", stroke: COLORS.actual, width: 1.4, dash: [5, 4], points: { show: false } },
    { label: "forecast", stroke: COLORS.forecast, width: 2, points: { show: false } },
    { label: d.bandLabel ? `${d.bandLabel} low` : "low", stroke: "rgba(228,87,46,0.35)", width: 1, show: Boolean(d.lo) },
    { label: d.bandLabel ? `${d.bandLabel} high` : "high", stroke: "rgba(228,87,46,0.35)", width: 1, show: Boolean(d.hi) },
  ];
  const n = d.x.length;
  const blank = () => new Array(n).fill(null);
  const data = [d.x, d.history, d.actual || blank(), d.forecast, d.lo || blank(), d.hi || blank()];
  const opts = {
    width: width(el), height: 230, series, legend: { live: true },
    scales: { x: { time: Boolean(d.time) } },
    tzDate: utc,
    bands: d.lo && d.hi ? [{ series: [5, 4], fill: COLORS.band }] : [],
    axes: [{ grid: { stroke: "#eef1f5" } }, { grid: { stroke: "#eef1f5" }, size: 56 }],
    cursor: { drag: { x: true, y: false } },
    plugins: [marksPlugin(d.marks, d.step)],
  };
  el.classList.toggle("noband", !(d.lo && d.hi));
  el.classList.toggle("noactual", !d.actual);
  return new uPlot(opts, data, el);
}

/** One covariate over a series' history and horizon, its marked steps shaded.
 * ``d``: {x, values, name, marks, step}. */
export function covariateChart(el, d) {
  const opts = {
    width: width(el), height: 110, legend: { live: true },
    series: [{ label: "time (UTC)" }, { label: d.name, stroke: COLORS.covariate, width: 1.4, points: { show: false } }],
    scales: { x: { time: true } },
    tzDate: utc,
    axes: [{ grid: { stroke: "#eef1f5" } }, { grid: { stroke: "#eef1f5" }, size: 56 }],
    cursor: { drag: { x: true, y: false } },
    plugins: [marksPlugin(d.marks, d.step)],
  };
  return new uPlot(opts, [d.x, d.values], el);
}

export function sparkline(el, label, color = COLORS.live) {
  const opts = {
    width: width(el), height: 120, legend: { show: false },
    series: [{}, { label, stroke: color, width: 2, fill: color + "22", points: { show: false } }],
    scales: { x: { time: false, range: (u, lo, hi) => [Math.min(lo, -60), 0] }, y: { range: (u, lo, hi) => [0, Math.max(1, hi * 1.15)] } },
    axes: [{ grid: { show: false }, values: (u, ticks) => ticks.map((t) => (t === 0 ? "now" : `${Math.round(t)}s`)) },
      { size: 64, grid: { stroke: "#eef1f5" } }],
    cursor: { show: false },
  };
  return new uPlot(opts, [[], []], el);
}

export function fit(chart, el) {
  chart.setSize({ width: width(el), height: chart.height });
}
