"""The M4 Hourly table (issue 25, section 5), so far its baselines: Naive, seasonal naive and
Naive2 computed here with ``rnnops.training.forecast_metrics``, beside the published results of
the M4 organisers' results file (and the published rows of the M4 winner and the best hourly
entry). The global forecaster and the peers join this table when they exist.

    python benchmarks/m4_hourly.py                 # prints the markdown table (~2 s)
    python benchmarks/m4_hourly.py --json out.json

Data: ``m4-hourly`` (``RNNOPS_DATA_DIR/m4/`` or downloaded with its sha256).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from rnnops.training import forecast_metrics as fm
from rnnops.training.m4 import M4_HOURLY_ANCHORS, load_m4_hourly

# our baseline name -> its name in the M4 results file
PUBLISHED_NAME = {"naive": "Naive", "seasonal_naive": "sNaive", "naive2": "Naive2"}


def run() -> dict:
    t0 = time.perf_counter()
    panel = load_m4_hourly()
    insample, actual = panel.insample(), panel.test_values()
    scores = fm.baseline_scores(insample, actual, panel.season)
    return {
        "seconds": time.perf_counter() - t0,
        "n_series": len(insample),
        "horizon": panel.horizon,
        "season": panel.season,
        "scores": {k: v.as_dict() for k, v in scores.items()},
    }


def _f(v: float | None, digits: int = 3) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def table(result: dict) -> str:
    published = M4_HOURLY_ANCHORS
    lines = [
        "| method | sMAPE | MASE | OWA | MSIS | published sMAPE / MASE / OWA / MSIS |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, s in result["scores"].items():
        pub = published[PUBLISHED_NAME[name]]
        lines.append(
            f"| {name} (this run) | {_f(s['smape'])} | {_f(s['mase'])} | {_f(s['owa'])} | {_f(s['msis'])} | "
            + " / ".join(_f(v) or "-" for v in pub)
            + " |"
        )
    for name in ("Smyl (ES-RNN, M4 winner)", "Doornik et al. (best hourly)"):
        lines.append(f"| {name} | | | | | " + " / ".join(_f(v) or "-" for v in published[name]) + " |")
    lines.append(
        "\nThe published OWA is computed from the rounded sMAPE and MASE (sNaive: 0.62745); "
        "from the unrounded ones it is 0.62750."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="also write the raw scores here")
    args = ap.parse_args(argv)
    result = run()
    print(
        f"M4 Hourly: {result['n_series']} series, horizon {result['horizon']}, season {result['season']} "
        f"({result['seconds']:.1f} s)\n"
    )
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
