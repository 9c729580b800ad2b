"""The global panel forecaster on M4 Hourly (issue 25, section 5): trained over all 414 series
on a time budget, the official 48-step test forecast, scored by ``forecast_metrics`` beside the
seasonal-naive, Naive2 and naive baselines of the same run and the published M4 anchors.

    python benchmarks/m4_global.py                   # the quick preset: 300 s of training
    python benchmarks/m4_global.py --budget-s 180 --seeds 0,1,2 --json out.json

Data: ``m4-hourly`` (``RNNOPS_DATA_DIR/m4/`` or downloaded with its sha256). The training budget
is wall-clock seconds including the validation passes, on whatever the machine gives: the load
average before and after is printed beside the figures, because on a shared machine the same
budget buys fewer optimizer steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from rnnops.training import forecast_metrics as fm
from rnnops.training.m4 import HORIZON, M4_HOURLY_ANCHORS
from rnnops.training.panel import PanelSpec, read_panel
from rnnops.training.panel_train import PanelTrainConfig, PanelWindows, forecast, train_panel

QUICK = PanelTrainConfig(lookback=336, segment_length=24, cell="gru", hidden_size=128, num_layers=2, budget_s=300.0)


def score(result, panel) -> dict:
    """The trained model's test forecast, scored (and the baselines on the same windows)."""
    cut = panel.splits().val_end
    _, histories, actual = panel.window(cut)
    t0 = time.perf_counter()
    fc = forecast(result.model, PanelWindows(panel, result.config.lookback), cut)
    predict_s = time.perf_counter() - t0
    base = fm.baseline_scores(histories, actual, panel.season)
    model = fc.scores(histories, actual, panel.season, naive2=base["naive2"])
    return {
        "model": model.as_dict(),
        "baselines": {k: v.as_dict() for k, v in base.items()},
        "predict_s": predict_s,
        "train": result.summary(),
        "history": result.history,
    }


def _f(v, digits: int = 3) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def table(runs: list[dict]) -> str:
    cols = ("smape", "mase", "owa", "msis", "coverage", "wql")
    lines = [
        "| method | sMAPE | MASE | OWA | MSIS | coverage (95 %) | WQL | training |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        m, t = r["model"], r["train"]
        lines.append(
            f"| global GRU, seed {t['config']['seed']} | "
            + " | ".join(_f(m[c]) for c in cols)
            + f" | {t['seconds']:.0f} s, {t['steps']} steps ({t['windows_per_s']:.0f} windows/s), "
            f"best at step {t['best_step']} |"
        )
    if len(runs) > 1:
        med = {c: float(np.median([r["model"][c] for r in runs])) for c in cols}
        spread = {c: float(np.ptp([r["model"][c] for r in runs])) for c in cols}
        lines.append(
            "| median of seeds (range) | " + " | ".join(f"{_f(med[c])} ({_f(spread[c])})" for c in cols) + " | |"
        )
    for name, s in runs[0]["baselines"].items():
        lines.append(f"| {name} (this run) | " + " | ".join(_f(s[c]) for c in cols) + " | |")
    for name in ("sNaive", "Smyl (ES-RNN, M4 winner)", "Doornik et al. (best hourly)"):
        sm, ma, ow, ms = M4_HOURLY_ANCHORS[name]
        lines.append(f"| {name} (published) | {_f(sm)} | {_f(ma)} | {_f(ow)} | {_f(ms)} | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--budget-s", type=float, default=QUICK.budget_s, help="training seconds per seed (wall clock)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, each trained on the full budget")
    ap.add_argument(
        "--likelihood",
        choices=("studentt", "normal", "negbin"),
        default=None,
        help="fit a distribution by likelihood instead of the pinball loss over quantiles",
    )
    ap.add_argument(
        "--quantiles",
        default=",".join(map(str, QUICK.quantiles)),
        help="levels of the pinball loss (must include 0.5; 0.025 and 0.975 give MSIS)",
    )
    ap.add_argument(
        "--scaling",
        choices=("standard", "mean_abs"),
        default=QUICK.scaling,
        help="per-window scaling inside the model (ablation: mean_abs is the issue's calibration run's)",
    )
    ap.add_argument(
        "--no-seasonal-residual", action="store_true", help="ablation: the location does not start at the seasonal lag"
    )
    ap.add_argument("--no-calendar", action="store_true", help="ablation: no calendar features")
    ap.add_argument("--hidden-size", type=int, default=QUICK.hidden_size)
    ap.add_argument("--batch-size", type=int, default=QUICK.batch_size)
    ap.add_argument("--lr", type=float, default=QUICK.lr)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: several times faster than 2 on a shared, loaded 2-core machine)",
    )
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the raw scores here")
    args = ap.parse_args(argv)
    spec = PanelSpec(
        "id",
        "timestamp",
        ("value",),
        horizon=HORIZON,
        lookback=QUICK.lookback,
        likelihood=args.likelihood,
        calendar_features=not args.no_calendar,
    )
    panel = read_panel("m4-hourly", spec)
    print(panel.summary(), file=sys.stderr)
    load_before = os.getloadavg()
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        config = replace(
            QUICK,
            budget_s=args.budget_s,
            seed=seed,
            likelihood=args.likelihood,
            quantiles=tuple(float(q) for q in args.quantiles.split(",")),
            scaling=args.scaling,
            seasonal_residual=not args.no_seasonal_residual,
            hidden_size=args.hidden_size,
            batch_size=args.batch_size,
            lr=args.lr,
            progress=not args.no_progress,
            threads=args.threads,
        )
        runs.append(score(train_panel(config, panel), panel))
    load_after = os.getloadavg()
    print(
        f"\nM4 Hourly, global model: {args.budget_s:.0f} s of training per seed, {args.threads} torch thread(s) on {os.cpu_count()} cores; "
        f"load average (1/5/15 min) {'/'.join(f'{v:.1f}' for v in load_before)} before, "
        f"{'/'.join(f'{v:.1f}' for v in load_after)} after\n"
    )
    print(table(runs))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"budget_s": args.budget_s, "load_before": load_before, "load_after": load_after, "runs": runs},
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
