"""NeuralForecast's LSTM, DeepAR and NHITS on M4 Hourly, run in NeuralForecast's own virtualenv by
``benchmarks/m4_peers.py`` (never in ours), and its GRU's training throughput at our model's size.

Set up as NeuralForecast's documentation recommends (``pip install neuralforecast``; the
installation page, nixtlaverse.nixtla.io/neuralforecast/docs/getting-started/installation.html),
the models as its M4-Hourly recipe: the tutorial "Probabilistic Forecasting | NeuralForecast"
(``nbs/docs/tutorials/uncertainty_quantification.ipynb``, on M4 Hourly, h = 48):

    LSTM(input_size=3*48, h=48, loss=MQLoss(level=[80, 90]), max_steps=1000)
    NHITS(input_size=7*48, h=48, n_freq_downsample=[24, 12, 1], loss=MQLoss(level=[80, 90]), max_steps=2000)
    NeuralForecast(models=..., freq=1)

and DeepAR as NeuralForecast's own M4 model check (``action_files/test_models/src/models.py``:
``DeepAR(h, input_size=2*h, scaler_type='minmax1', max_steps=500)``, its default StudentT
likelihood; the point forecast ``DeepAR-median``). Two changes, the same for all three: the
levels are [80, 95] (the 95 % interval is what MSIS scores), and Lightning's ``max_time`` stops
training at the benchmark's budget (the same wall-clock seconds as our quick preset) if the
recipe's ``max_steps`` have not ended it first. Everything else is the library's default.

    <venv>/bin/python m4_neuralforecast.py --train train.csv --out DIR --budget-s 300 --seed 1
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import m4_peer_io as io  # noqa: E402

H = 48
LEVELS = [80, 95]


STEP_TIMES: list[float] = []  # module level: NeuralForecast deep-copies its models, callbacks included


def step_clock():
    """A Lightning callback that records when each optimizer step ends, in :data:`STEP_TIMES`
    (cleared here: one model at a time)."""
    import pytorch_lightning as pl

    class StepClock(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            STEP_TIMES.append(time.perf_counter())

    STEP_TIMES.clear()
    return StepClock()


def recipe(name: str, budget_s: float, seed: int, clock):
    from neuralforecast.losses.pytorch import DistributionLoss, MQLoss
    from neuralforecast.models import LSTM, NHITS, DeepAR

    common = dict(
        random_seed=seed,
        accelerator="cpu",
        max_time=timedelta(seconds=budget_s),
        enable_progress_bar=False,
        logger=False,
        callbacks=[clock],
    )
    if name == "LSTM":
        return LSTM(input_size=3 * H, h=H, loss=MQLoss(level=LEVELS), max_steps=1000, **common)
    if name == "NHITS":
        return NHITS(
            input_size=7 * H, h=H, n_freq_downsample=[24, 12, 1], loss=MQLoss(level=LEVELS), max_steps=2000, **common
        )
    if name == "DeepAR":
        return DeepAR(
            h=H,
            input_size=2 * H,
            scaler_type="minmax1",
            loss=DistributionLoss(distribution="StudentT", level=LEVELS),
            max_steps=500,
            **common,
        )
    raise SystemExit(f"unknown model {name!r}: use LSTM, NHITS, DeepAR")


def quantile_columns(name: str) -> dict[float, str]:
    cols = {0.5: f"{name}-median"}
    for level in LEVELS:
        lo, hi = (100 - level) / 200, 1 - (100 - level) / 200
        cols[round(lo, 4)] = f"{name}-lo-{level}"
        cols[round(hi, 4)] = f"{name}-hi-{level}"
    return cols


def run_model(name: str, train, ids, budget_s: float, seed: int, out: Path) -> dict:
    from neuralforecast import NeuralForecast

    clock = step_clock()
    nf = NeuralForecast(models=[recipe(name, budget_s, seed, clock)], freq=1)
    with io.Timer() as fit:
        nf.fit(df=train)
    with io.Timer() as pred:
        fc = nf.predict()
    fc = fc.reset_index() if "unique_id" not in fc.columns else fc
    q = {level: io.long_to_matrix(fc, ids, col, H) for level, col in quantile_columns(name).items()}
    io.write_forecasts(out / f"neuralforecast-{name}.csv", ids, H, q)
    return {
        "train_s": fit.seconds,
        "predict_s": pred.seconds,
        "steps": len(STEP_TIMES),
        "config": {k: v for k, v in nf.models[0].hparams.items() if isinstance(v, (int, float, str, list, type(None)))},
    }


def throughput(train, steps: int, hidden: int, layers: int, lookback: int, batch: int, seed: int) -> dict:
    """NeuralForecast's GRU at our quick model's size (``hidden`` x ``layers``, a ``lookback``-step
    window, ``batch`` windows per step): windows per second over ``steps`` optimizer steps after
    5 warm-up steps (one torch thread, as ours)."""
    from neuralforecast import NeuralForecast
    from neuralforecast.losses.pytorch import MQLoss
    from neuralforecast.models import GRU

    clock = step_clock()
    model = GRU(
        h=H,
        input_size=lookback,
        encoder_hidden_size=hidden,
        encoder_n_layers=layers,
        batch_size=batch,
        windows_batch_size=batch,
        loss=MQLoss(level=LEVELS),
        max_steps=steps + 5,
        random_seed=seed,
        accelerator="cpu",
        enable_progress_bar=False,
        logger=False,
        callbacks=[clock],
    )
    NeuralForecast(models=[model], freq=1).fit(df=train)
    t = STEP_TIMES[5:]
    per_s = (len(t) - 1) * batch / (t[-1] - t[0])
    return {
        "model": f"GRU {layers}x{hidden}, input_size {lookback}, {batch} windows per step",
        "steps": len(t) - 1,
        "seconds": t[-1] - t[0],
        "windows_per_s": per_s,
    }


def main() -> int:
    ap = io.arguments(__doc__, budget=True)
    ap.add_argument("--models", default="LSTM,DeepAR,NHITS")
    ap.add_argument("--throughput-steps", type=int, default=0, help="0: no throughput figure")
    ap.add_argument("--throughput-model", default="128,2,336,256", help="hidden,layers,lookback,batch")
    args = ap.parse_args()
    import logging

    import torch

    torch.set_num_threads(1)  # as our side: one thread per process on the shared 2-core machine
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import neuralforecast

    train = io.read_train(args.train)
    ids = list(dict.fromkeys(train["unique_id"]))
    report = {
        "library": "neuralforecast",
        "version": neuralforecast.__version__,
        "torch": torch.__version__,
        "rows": {},
    }
    for name in args.models.split(","):
        if name:
            report["rows"][f"neuralforecast-{name}"] = run_model(name, train, ids, args.budget_s, args.seed, args.out)
    if args.throughput_steps:
        hidden, layers, lookback, batch = (int(v) for v in args.throughput_model.split(","))
        report["throughput"] = throughput(train, args.throughput_steps, hidden, layers, lookback, batch, args.seed)
    io.write_report(args.out / "neuralforecast.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
