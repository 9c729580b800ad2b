"""What the M4 Hourly peer runners share (``m4_neuralforecast.py``, ``m4_statsforecast.py``,
``m4_gluonts.py``): reading the training panel ``benchmarks/m4_peers.py`` writes for them, and
writing their forecasts and timings back in one format, which our side scores. pandas and numpy
only: this module runs in each peer's own virtualenv, not in ours.

- input: ``train.csv`` with ``unique_id`` (``H1`` …), ``ds`` (1, 2, … per series: M4 publishes no
  hourly dates, as NeuralForecast's own M4-Hourly files) and ``y``, the training part only;
- output: ``<row>.csv`` per forecaster, one line per series and horizon step (``unique_id``,
  ``step`` 1…H) with one column per quantile level (``0.5`` the point forecast; ``0.025`` and
  ``0.975`` the 95 % interval for MSIS), and ``<peer>.json``: per row, training and prediction
  seconds, the optimizer steps done and the configuration used.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd


def arguments(doc: str, budget: bool) -> argparse.ArgumentParser:
    """The flags every runner takes: the training file, the output folder and, for the neural
    ones, the training budget (wall-clock seconds) and the seed."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--train", type=Path, required=True, help="train.csv: unique_id, ds, y")
    ap.add_argument("--out", type=Path, required=True, help="where the forecasts and the report go")
    if budget:
        ap.add_argument("--budget-s", type=float, default=300.0, help="wall-clock training seconds")
        ap.add_argument("--seed", type=int, default=1)
    return ap


def read_train(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"unique_id": str})
    return df.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)


def write_forecasts(path: Path, ids, horizon: int, quantiles: dict[float, np.ndarray]) -> None:
    """``quantiles``: level -> [series, horizon] values, series in ``ids`` order."""
    out = pd.DataFrame(
        {
            "unique_id": np.repeat(np.asarray(ids, dtype=object), horizon),
            "step": np.tile(np.arange(1, horizon + 1), len(ids)),
        }
    )
    for level, values in sorted(quantiles.items()):
        values = np.asarray(values, np.float64)
        if values.shape != (len(ids), horizon):
            raise ValueError(f"quantile {level}: shape {values.shape}, expected {(len(ids), horizon)}")
        out[repr(float(level))] = values.reshape(-1)
    out.to_csv(path, index=False)


def long_to_matrix(df: pd.DataFrame, ids, column: str, horizon: int) -> np.ndarray:
    """A long forecast frame (``unique_id``, ``ds`` in time order) -> [series, horizon] in ``ids`` order."""
    df = df.sort_values(["unique_id", "ds"], kind="stable")
    groups = {k: g[column].to_numpy(np.float64) for k, g in df.groupby("unique_id", sort=False)}
    return np.stack([groups[i][:horizon] for i in ids])


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def write_report(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=1, default=str))
