"""statsforecast's SeasonalNaive, AutoETS and AutoTheta (season 24) on M4 Hourly, run in its own
virtualenv by ``benchmarks/m4_peers.py`` (never in ours).

Set up as statsforecast's documentation recommends (``pip install statsforecast``; the
installation page, nixtlaverse.nixtla.io/statsforecast/docs/getting-started/installation.html),
used as its end-to-end walkthrough on M4 Hourly does ("End to End Walkthrough",
nixtlaverse.nixtla.io/statsforecast/docs/getting-started/getting_started_complete.html):
``StatsForecast(models=[...], freq=1, n_jobs=-1)`` with ``season_length=24``, forecasts with
``level=[95]`` (the interval MSIS scores). Each model is fitted by its own ``StatsForecast`` so
each row's seconds are its own: ``fit`` is the training seconds, ``predict`` the prediction
seconds. These are local models (one per series): no training budget applies.

    <venv>/bin/python m4_statsforecast.py --train train.csv --out DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import m4_peer_io as io  # noqa: E402

H, SEASON, LEVEL = 48, 24, 95


def main() -> int:
    ap = io.arguments(__doc__, budget=False)
    ap.add_argument("--models", default="SeasonalNaive,AutoETS,AutoTheta")
    ap.add_argument("--n-jobs", type=int, default=-1, help="the walkthrough's -1: every core")
    args = ap.parse_args()
    import statsforecast
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS, AutoTheta, SeasonalNaive

    make = {
        "SeasonalNaive": lambda: SeasonalNaive(season_length=SEASON),
        "AutoETS": lambda: AutoETS(season_length=SEASON),
        "AutoTheta": lambda: AutoTheta(season_length=SEASON),
    }
    train = io.read_train(args.train)
    ids = list(dict.fromkeys(train["unique_id"]))
    report = {"library": "statsforecast", "version": statsforecast.__version__, "cores": os.cpu_count(), "rows": {}}
    for name in args.models.split(","):
        sf = StatsForecast(models=[make[name]()], freq=1, n_jobs=args.n_jobs)
        with io.Timer() as fit:
            sf.fit(df=train)
        with io.Timer() as pred:
            fc = sf.predict(h=H, level=[LEVEL])
        fc = fc.reset_index() if "unique_id" not in fc.columns else fc
        lo, hi = (100 - LEVEL) / 200, 1 - (100 - LEVEL) / 200
        cols = {0.5: name, round(lo, 4): f"{name}-lo-{LEVEL}", round(hi, 4): f"{name}-hi-{LEVEL}"}
        q = {level: io.long_to_matrix(fc, ids, col, H) for level, col in cols.items()}
        io.write_forecasts(args.out / f"statsforecast-{name}.csv", ids, H, q)
        report["rows"][f"statsforecast-{name}"] = {
            "train_s": fit.seconds,
            "predict_s": pred.seconds,
            "config": {"season_length": SEASON, "freq": 1, "n_jobs": args.n_jobs, "level": [LEVEL]},
        }
    io.write_report(args.out / "statsforecast.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
