"""Is the int8 variant (:mod:`rnnops.export.int8`) good enough? Validation quality and step latency,
both through onnxruntime.

Quality uses the training job's own evaluation protocol on the validation split (the data is
rebuilt from the run's data recipe, :func:`rnnops.training.recipe.run_recipe`):

- char models: mean cross-entropy in nats/char over non-overlapping 256-character windows, each
  from a zero state (``training.tasks.char_val_loss``);
- forecasters: MSE on the z-scored scale over every stride-1 validation window (``val_mse``).

A panel model's file is checked differently (:func:`check_panel`, below): it has no int8 form,
and its validation MASE through onnxruntime must match the run's logged one.

The int8 file is kept only when its quality delta is within :data:`BOUNDS` of the fp32 ONNX
(absolute +0.02 nats/char; relative +2 % MSE) and its own parity gate passed
(:func:`rnnops.export.parity.run_int8_gate`). Whether it is made at all depends on the model's
width (:data:`rnnops.export.int8.MIN_HIDDEN`), not on a timing: an export gives the same files on
any machine under any load. Its speed-up over fp32 is still measured and reported (medians of the
two files timed in turns, one thread); ``benchmarks/kernel.py`` measures speed properly.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from rnnops import contract
from rnnops.export import ort_tools, wrappers
from rnnops.panel_contract import QUANTILES
from rnnops.training.recipe import DataRecipe

BOUNDS = {"char": ("val_loss", "abs", 0.02), "forecaster": ("val_mse", "rel", 0.02)}


@dataclass
class EvalData:
    kind: str
    x: np.ndarray  # char: int64 [N, 257] windows (inputs + next char); forecaster: float32 [N, L, F]
    y: np.ndarray | None = None  # forecaster: float32 [N, H, targets]
    scale: np.ndarray | None = None  # forecaster: target std (z-scored errors)


def load_eval_data(model, recipe: DataRecipe, data=None) -> EvalData:
    """The validation split the run was scored on, from its data recipe (``data``: the recipe's data,
    already loaded; else it is read again and checked)."""
    windows = recipe.windows("val", data)
    if model.kind == "char":
        return EvalData("char", windows.x)
    return EvalData("forecaster", windows.x, windows.y, recipe.target_scale())


def val_metric(sess, data: EvalData, model, chunk: int = 64) -> float:
    """The validation metric of an ONNX session (val_loss in nats/char, or val_mse)."""
    spec = wrappers.state_spec(model)
    total, count = 0.0, 0
    for i in range(0, len(data.x), chunk if data.kind == "char" else 512):
        xb = data.x[i : i + (chunk if data.kind == "char" else 512)]
        b = len(xb)
        feeds = {contract.INPUT: xb[:, :-1] if data.kind == "char" else xb}
        feeds.update({t.input: np.zeros(t.shape_for(b), np.float32) for t in spec})
        out = sess.run([wrappers.output_names(model)[0]], feeds)[0].astype(np.float64)
        if data.kind == "char":
            target = xb[:, 1:]
            logz = out.max(-1, keepdims=True)
            logz = logz + np.log(np.exp(out - logz).sum(-1, keepdims=True))
            nll = logz[..., 0] - np.take_along_axis(out, target[..., None], -1)[..., 0]
            total += float(nll.sum())
            count += nll.size
        else:
            err = (out - data.y[i : i + b]) / data.scale
            total += float((err**2).sum())
            count += err.size
    return total / count


def compare_int8(model, fp32_path, int8_path, data: EvalData | None, skip_reason: str | None = None) -> dict:
    """Quality delta and speed-up of the int8 file against the fp32 ONNX; ``keep`` says which wins."""
    metric, mode, bound = BOUNDS[model.kind]
    report = {
        "metric": metric,
        "bound": {
            "mode": mode,
            "value": bound,
            "rule": f"int8 {metric} - fp32 {metric} <= {bound}"
            if mode == "abs"
            else f"int8 {metric} / fp32 {metric} - 1 <= {bound:.0%}",
        },
        "speed_shape": "one T=1 step" if model.kind == "char" else "one window",
    }
    fp32 = ort_tools.session(fp32_path, threads=2)
    int8 = ort_tools.session(int8_path, threads=2)
    report["latency_ms"] = _speed(model, fp32_path, int8_path)
    if data is None:
        report.update(keep=False, reason=f"quality not measured ({skip_reason}); int8 not kept unverified")
    else:
        q32, q8 = val_metric(fp32, data, model), val_metric(int8, data, model)
        delta = q8 - q32 if mode == "abs" else q8 / q32 - 1.0
        ok = bool(delta <= bound)
        report.update(
            fp32=q32,
            int8=q8,
            delta=delta,
            keep=ok,
            reason="within bound" if ok else f"quality delta {delta:.4g} exceeds the bound {bound:g}",
        )
    return report


def _speed(model, fp32_path, int8_path, rounds: int = 3) -> dict:
    """Median latency of the serving shape (char: a T=1 step; forecaster: one window) at batch 1 and
    64, one thread, the two files timed in turns so that a shared machine's load falls on both."""
    rng = np.random.default_rng(0)
    t = wrappers.min_time(model) if model.kind == "forecaster" else 1
    out = {}
    s32, s8 = ort_tools.session(fp32_path, threads=1), ort_tools.session(int8_path, threads=1)
    for batch in (1, 64):
        feeds = wrappers.make_inputs(model, batch, t, rng, random_state=True)
        times = [
            (ort_tools.step_latency(s32, feeds, 0.1), ort_tools.step_latency(s8, feeds, 0.1)) for _ in range(rounds)
        ]
        a, b = statistics.median(x for x, _ in times), statistics.median(y for _, y in times)
        out[f"batch{batch}"] = {"fp32": a * 1e3, "int8": b * 1e3, "speedup": a / b}
    return out


# ----------------------------------------------------------------------------- panel forecasters

# A panel model's file must score what its run logged: the validation MASE of the ONNX file through
# onnxruntime (every series' validation window, as training scored it) against the run's final
# ``val_mase``. Pinball and normal heads compute the same numbers as training: the bound is float
# rounding. The likelihood heads' logged value came from 200 random draws per window (the median
# of the draws), the file's from the deterministic quantile function (export/panel_export.py): the
# bound allows that Monte-Carlo noise.
PANEL_BOUNDS = {"pinball": 1e-3, "normal": 1e-3, "studentt": 0.05, "negbin": 0.05}  # relative to the logged MASE


def panel_scores(sess, contract, panel, batch: int = 512):
    """The M4 scores (``forecast_metrics.Scores``) of the ONNX file's validation forecasts of
    ``panel`` (one origin per series: its validation split)."""
    from rnnops.training.panel_train import PanelForecast, PanelWindows

    windows = PanelWindows(panel, contract.lookback)
    cut = panel.splits().train_end
    series, histories, actual = panel.window(cut)
    names = list(contract.inputs)
    quantiles = []
    for start in range(0, len(series), batch):
        s = series[start : start + batch]
        b = windows.batch(s, cut[s])
        feeds = {n: getattr(b, n).numpy() for n in names}
        quantiles.append(sess.run([QUANTILES], feeds)[0])
    q = np.concatenate(quantiles).astype(np.float64)
    return PanelForecast(series, contract.quantiles, q).scores(histories, actual, panel.season)


def check_panel(sess, contract, head: str, panel, logged: dict) -> dict:
    """The panel quality gate's report: ``passed`` when the file's validation MASE is within
    :data:`PANEL_BOUNDS` of the run's logged ``val_mase`` (WQL reported beside it)."""
    bound = PANEL_BOUNDS[head]
    scores = panel_scores(sess, contract, panel)
    report = {
        "metric": "val_mase",
        "onnx": scores.mase,
        "logged": logged.get("val_mase"),
        "onnx_val_wql": scores.wql,
        "logged_val_wql": logged.get("val_wql"),
        "bound": {"rel": bound, "rule": f"|onnx val_mase / logged val_mase - 1| <= {bound:g} ({head} head)"},
        "series": scores.n_series,
    }
    if report["logged"] is None:
        report.update(passed=True, reason="the run logged no val_mase: nothing to compare (measured only)")
        return report
    delta = scores.mase / float(report["logged"]) - 1.0
    report.update(delta=delta, passed=bool(abs(delta) <= bound))
    report["reason"] = "within bound" if report["passed"] else f"val_mase differs by {delta:+.3%} (bound {bound:g})"
    return report
