"""The global panel forecaster on the generated retail panel (``benchmarks/retail_panel.py``):
one training per head (and, with ``--without-covariates``, the same model blind to promotions,
prices and the static columns), each scored on the test split beside the seasonal naive.

    python benchmarks/retail_global.py --heads pinball,studentt,negbin --budget-s 30
    python benchmarks/retail_global.py --heads pinball --without-covariates --budget-s 120   # covariate figure

Daily counts, horizon 14, lookback 56 (8 weeks in 7-day segments); the items with only a few
weeks of history are forecast too (their lookback is left-padded as missing). The budget is
wall-clock seconds per training, on whatever the machine gives; the load average is printed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import retail_panel  # noqa: E402

from rnnops.training import forecast_metrics as fm  # noqa: E402
from rnnops.training.panel import PanelSpec, read_panel  # noqa: E402
from rnnops.training.panel_train import PanelTrainConfig, PanelWindows, forecast, train_panel  # noqa: E402

HORIZON, LOOKBACK = 14, 56
CONFIG = PanelTrainConfig(lookback=LOOKBACK, segment_length=7, hidden_size=64, batch_size=128, threads=1)


def spec(covariates: bool, likelihood: str | None) -> PanelSpec:
    return PanelSpec(
        retail_panel.ID,
        retail_panel.DATE,
        retail_panel.TARGET,
        horizon=HORIZON,
        lookback=LOOKBACK,
        static_columns=retail_panel.STATIC if covariates else (),
        future_covariates=retail_panel.FUTURE if covariates else (),
        freq="D",
        likelihood=likelihood,
    )


def run(df, head: str, covariates: bool, config: PanelTrainConfig) -> dict:
    likelihood = None if head == "pinball" else head
    panel = read_panel(df, spec(covariates, likelihood))
    result = train_panel(replace(config, likelihood=likelihood), panel)
    cut = panel.splits().val_end
    series, histories, actual = panel.window(cut)
    fc = forecast(result.model, PanelWindows(panel, config.lookback), cut)
    base = fm.baseline_scores(histories, actual, panel.season)
    scores = fc.scores(histories, actual, panel.season, naive2=base["naive2"])
    short = np.isin(np.array(panel.ids)[series], panel.too_short)  # the few-weeks histories
    short_scores = (0, math.nan, math.nan)
    if short.any():
        hist = [h for h, s in zip(histories, short) if s]
        snaive = np.stack([fm.seasonal_naive(h, HORIZON, panel.season) for h in hist])
        short_scores = (
            int(short.sum()),
            fm.evaluate(hist, actual[short], fc.point[short], panel.season).mase,
            fm.evaluate(hist, actual[short], snaive, panel.season).mase,
        )
    return {
        "head": head,
        "covariates": covariates,
        "scores": scores,
        "snaive": base["seasonal_naive"],
        "short": short_scores,
        "steps": result.steps,
        "seconds": result.seconds,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--series", type=int, default=100)
    ap.add_argument("--days", type=int, default=240)
    ap.add_argument("--heads", default="pinball,studentt,negbin", help="pinball and/or likelihoods, comma-separated")
    ap.add_argument("--without-covariates", action="store_true", help="also train each head without covariates")
    ap.add_argument("--budget-s", type=float, default=30.0, help="training seconds per model")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    df = retail_panel.generate(series=args.series, days=args.days, seed=args.seed)
    config = replace(CONFIG, budget_s=args.budget_s, seed=args.seed, progress=False)
    load = os.getloadavg()
    rows = []
    for head in args.heads.split(","):
        for covariates in (True, False) if args.without_covariates else (True,):
            rows.append(run(df, head.strip(), covariates, config))
    print(
        f"retail panel: {args.series} items x {args.days} days, horizon {HORIZON}; {args.budget_s:.0f} s per "
        f"training, 1 torch thread; load average {load[0]:.1f} at the start\n"
    )
    print(
        "| head | covariates | sMAPE | MASE | WQL | MSIS | coverage (95 %) | short histories: MASE (seasonal naive) | steps |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        s, (n, m, sn) = r["scores"], r["short"]
        print(
            f"| {r['head']} | {'yes' if r['covariates'] else 'no'} | {s.smape:.2f} | {s.mase:.3f} | {s.wql:.4f} | "
            f"{s.msis:.2f} | {s.coverage:.3f} | {n} items: {m:.3f} ({sn:.3f}) | {r['steps']} |"
        )
    sn = rows[0]["snaive"]
    print(f"| seasonal naive | | {sn.smape:.2f} | {sn.mase:.3f} | | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
