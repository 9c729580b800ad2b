"""What makes a training run easy to find in ``mlflow ui``: a name that says what it is, a one-line
description with the headline metric, and MLflow's system metrics (CPU, memory) while it trains.

- run name: ``segrnn-gru-256 etth1 M L96-H96 quick``, ``lstm-1x384 tinyshakespeare quick``
  (instead of MLflow's random "rambunctious-slug-66");
- description (the run's ``mlflow.note.content``, shown on the run page and as a column):
  "ETTh1 M, lookback 96 -> 96: test MSE 0.3702 / MAE 0.3941 (repeat-last 1.2944), 80 % interval
  coverage 0.812, 150 s, 2,100 steps";
- system metrics: ``mlflow.start_run(log_system_metrics=True)`` (psutil), unless
  ``RNNOPS_SYSTEM_METRICS=0``.
"""

from __future__ import annotations

import importlib.util
import os

DESCRIPTION_TAG = "mlflow.note.content"


class StopRun(Exception):
    """Raised inside a run to end it early on purpose (a pruned tuning trial): the run is marked
    ``status`` (KILLED), not FAILED, and its stop reason is the message."""

    status = "KILLED"


def run_name(job: dict) -> str:
    m = job["model"]
    data = os.path.basename(str(job["data"]))
    preset = job.get("preset") or ""
    if job["task"] == "char":
        return f"{m['cell']}-{m.get('num_layers', 1)}x{m.get('hidden_size')} {data} {preset}".strip()
    if job["task"] == "panel":  # global-gru-2x128 m4-hourly L336-H48 quick studentt
        head = m.get("likelihood") or "pinball"
        return (
            f"global-{m['cell']}-{m.get('num_layers')}x{m.get('hidden_size')} {data} "
            f"L{job['lookback']}-H{job['horizon']} {preset} {head}"
        ).strip()
    arch = m.get("arch", "rnn")
    model = f"segrnn-{m['cell']}" if arch == "segrnn" else m["cell"]
    layers = m.get("num_layers", 1)
    width = f"{layers}x{m.get('hidden_size')}" if layers and layers > 1 else f"{m.get('hidden_size')}"
    q = " q" + "/".join(f"{v:g}" for v in m["quantiles"]) if m.get("quantiles") else ""
    return f"{model}-{width} {data} {job.get('features', 'M')} L{job['lookback']}-H{job['horizon']} {preset}{q}".strip()


def description(job: dict, final: dict, state: dict) -> str:
    took = f"{state.get('elapsed', 0):.0f} s, {state.get('step', 0):,} steps"
    if job["task"] == "char":
        return (
            f"{os.path.basename(str(job['data']))}: val {final['val_loss']:.4f} nats/char "
            f"({final['val_bpc']:.3f} bits/char; bigram {final.get('baseline_bigram_loss', float('nan')):.3f}), {took}"
        )
    if job["task"] == "panel":
        return (
            f"{os.path.basename(str(job['data']))}, {final.get('test_n_series', 0):.0f} series, lookback "
            f"{job['lookback']} -> {job['horizon']}: test OWA {final.get('test_owa', float('nan')):.3f}, "
            f"sMAPE {final.get('test_smape', float('nan')):.2f}, MASE {final.get('test_mase', float('nan')):.3f} "
            f"(seasonal naive OWA {final.get('test_seasonal_naive_owa', float('nan')):.3f}), {took}"
        )
    head = (
        f"{os.path.basename(str(job['data']))} {job.get('features', 'M')}, lookback {job['lookback']} -> "
        f"{job['horizon']}: test MSE {final['test_mse']:.4f} / MAE {final['test_mae']:.4f} "
        f"(repeat-last {final['test_repeat_last_mse']:.4f})"
    )
    cover = next(((k, v) for k, v in final.items() if k.startswith("test_coverage_") and k.count("_") == 2), None)
    if cover:
        head += f", {cover[0].rsplit('_', 1)[1]} % interval coverage {cover[1]:.3f}"
    return f"{head}, {took}"


def system_metrics() -> bool:
    """Log MLflow's system metrics (needs psutil), unless RNNOPS_SYSTEM_METRICS=0."""
    if os.environ.get("RNNOPS_SYSTEM_METRICS", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return importlib.util.find_spec("psutil") is not None
