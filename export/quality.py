"""Is the int8 variant (:mod:`rnnops.export.int8`) good enough? Validation quality and step latency,
both through onnxruntime.

Quality uses the training job's own evaluation protocol on the validation split (the data is
rebuilt from the run's data recipe, :func:`rnnops.training.recipe.run_recipe`):

- char models: mean cross-entropy in nats/char over non-overlapping 256-character windows, each
  from a zero state (``training.tasks.char_val_loss``);
- forecasters: MSE on the z-scored scale over every stride-1 validation window (``val_mse``).

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
