"""GluonTS' DeepAR (the PyTorch one) on M4 Hourly, run in its own virtualenv by
``benchmarks/m4_peers.py`` (never in ours).

Set up as GluonTS' documentation recommends (``pip install "gluonts[torch]"``, the installation
page ts.gluon.ai/stable/install.html) and used as its README / "Quick Start" does
(ts.gluon.ai/stable/getting_started/...: a ``PandasDataset.from_long_dataframe`` and
``DeepAREstimator(prediction_length=..., freq=..., trainer_kwargs={"max_epochs": ...}).train(data)``),
every other argument its default (2 x 40 LSTM, context = prediction length, StudentT output,
batch 32, 50 batches per epoch, lr 1e-3, 100 sample paths). Training stops at the benchmark's
budget (Lightning's ``max_time``: the same wall-clock seconds as our quick preset); quantiles
from the sample paths. Timestamps are synthetic hours from 1970-01-01, as ours (M4 publishes
none for its hourly series).

    <venv>/bin/python m4_gluonts.py --train train.csv --out DIR --budget-s 300 --seed 1
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import m4_peer_io as io  # noqa: E402

H = 48
LEVELS = (0.025, 0.1, 0.5, 0.9, 0.975)


def main() -> int:
    ap = io.arguments(__doc__, budget=True)
    args = ap.parse_args()
    import logging

    import gluonts
    import lightning.pytorch as pl
    import torch
    from gluonts.dataset.pandas import PandasDataset
    from gluonts.torch import DeepAREstimator

    torch.set_num_threads(1)  # as our side: one thread per process on the shared 2-core machine
    for name in ("lightning.pytorch", "pytorch_lightning", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    pl.seed_everything(args.seed)

    train = io.read_train(args.train)
    ids = list(dict.fromkeys(train["unique_id"]))
    train["timestamp"] = pd.Timestamp("1970-01-01") + pd.to_timedelta(train["ds"] - 1, unit="h")
    data = PandasDataset.from_long_dataframe(train, target="y", item_id="unique_id", timestamp="timestamp", freq="h")

    class StepClock(pl.Callback):
        def __init__(self):
            self.steps = 0

        def on_train_batch_end(self, *a, **k):
            self.steps += 1

    clock = StepClock()
    estimator = DeepAREstimator(
        prediction_length=H,
        freq="h",
        trainer_kwargs={
            "max_epochs": 100_000,
            "max_time": timedelta(seconds=args.budget_s),
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "logger": False,
            "default_root_dir": str(args.out / "gluonts-lightning"),  # its best-epoch checkpoint
            "callbacks": [clock],
        },
    )
    with io.Timer() as fit:
        predictor = estimator.train(data)
    with io.Timer() as pred:
        forecasts = {f.item_id: f for f in predictor.predict(data)}
    q = {level: np.stack([forecasts[i].quantile(level) for i in ids]) for level in LEVELS}
    io.write_forecasts(args.out / "gluonts-DeepAR.csv", ids, H, q)
    report = {
        "library": "gluonts",
        "version": gluonts.__version__,
        "torch": torch.__version__,
        "rows": {
            "gluonts-DeepAR": {
                "train_s": fit.seconds,
                "predict_s": pred.seconds,
                "steps": clock.steps,
                "config": {
                    "prediction_length": H,
                    "freq": "h",
                    "defaults": "all other arguments",
                    "max_time_s": args.budget_s,
                },
            }
        },
    }
    io.write_report(args.out / "gluonts.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
