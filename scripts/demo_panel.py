"""The files `make demo` (scripts/demo.sh) uses to show the M4-hourly panel model by series.

Writes, into the folder given (default ``build/demo``):

- ``m4-hourly.csv``: M4 Hourly's training part in long format (``id``, ``timestamp``, ``value``;
  414 series, synthetic hourly timestamps: training/m4.py), the PANEL of a batch job
  (``rnnops forecast --input ... --id-column id --date-column timestamp``), which forecasts the
  48 hours after each series, the official test hours;
- ``forecast-<id>.json``: a ``/forecast`` body for one series in the ``series`` form (its id,
  timestamps and history; the model reads the last ``lookback`` values), for ``curl -d @file``.

The data comes as every dataset does: ``RNNOPS_DATA_DIR/m4/``, the cache, or the sha256-checked
download (training/data.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rnnops.training.m4 import load_m4_hourly


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", default="build/demo", type=Path)
    ap.add_argument("--model", default="panel-forecaster", help="the served name the /forecast body names")
    ap.add_argument("--series", default="H1", help="the series of the /forecast body")
    args = ap.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)

    frame = load_m4_hourly().frame
    train = frame[frame["split"] == "train"][["id", "timestamp", "value"]]
    panel = args.folder / "m4-hourly.csv"
    train.to_csv(panel, index=False, date_format="%Y-%m-%d %H:%M:%S")

    one = train[train["id"] == args.series]
    if one.empty:
        raise SystemExit(f"M4 Hourly has no series {args.series!r} (its ids are H1 ... H414)")
    stamps = np.datetime_as_string(one["timestamp"].to_numpy(), unit="s")
    body = {
        "model": args.model,
        "series": [
            {
                "id": args.series,
                "timestamps": [str(t).replace("T", " ") for t in stamps],
                "context": [float(v) for v in one["value"]],
            }
        ],
    }
    request = args.folder / f"forecast-{args.series}.json"
    request.write_text(json.dumps(body))
    print(f"{panel}: {len(train):,} rows of {train['id'].nunique()} series; {request}: series {args.series}")


if __name__ == "__main__":
    main()
