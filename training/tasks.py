"""The task seam: what a training job is made of, once its data is loaded.

A task turns a typed job (:mod:`rnnops.training.job_config`) into a :class:`TrainingSetup`: the
model, how to draw a batch, the loss, the evaluation (called every ``eval_every`` steps), the
final scores (on the best weights), the logged model's spec and the MLflow dataset input. The
training loop (:mod:`rnnops.training.trainer`) and the run around it
(:func:`rnnops.training.jobs.run_job`) know nothing else about the task. A new task is a
``setup_<task>`` function here, its job dataclass in ``job_config.py`` and an entry in
:data:`TASKS`.

- ``char``: next-character cross-entropy on random ``seq_len`` windows of the training split;
  scored in nats/char over 256-character validation windows, each from a zero state, beside
  unigram and bigram baselines.
- ``forecast``: MSE on the z-scored scale over random training windows; scored as val and test
  MSE/MAE over every stride-1 window beside the repeat-last baseline, with intervals calibrated
  on the validation split when the model has quantile levels.
- ``panel``: a global forecaster over a panel (:mod:`rnnops.training.panel_task`): the pinball
  loss or a likelihood over windows of random series; scored with the M4 metrics per split and
  per backtest origin beside the naive baselines.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rnnops.errors import RnnopsError
from rnnops.training import data as D
from rnnops.training import intervals
from rnnops.training.job_config import CharJob, ForecastJob, Job
from rnnops.training.models import CharModel, CharModelConfig, Forecaster, ForecasterConfig
from rnnops.training.recipe import prepare_series, prepare_text
from rnnops.training.sampling import generate
from rnnops.training.segrnn import SegRNN
from rnnops.training.task_setup import TrainingSetup, dataset_input


def setup(job: Job) -> TrainingSetup:
    """The task's setup for ``job`` (loads its data and builds its model)."""
    return TASKS[job.task](job)


# ---------------------------------------------------------------- char


def setup_char(job: CharJob) -> TrainingSetup:
    seq = int(job.seq_len)
    recipe, text = prepare_text(job.data, min_chars=seq + 2)
    if len(text.train) < seq + 1 or len(text.val) < 2:
        raise RnnopsError(
            f"{text.path} is too short for a training window of {seq} characters plus a validation split; use a longer text or --seq-len"
        )
    config = CharModelConfig(vocab_size=len(text.vocab), **_options(job))
    model = CharModel(config)
    train_ids = torch.from_numpy(text.train)
    bs = job.train.batch_size
    offsets = torch.arange(seq + 1)

    def sample_batch(gen):
        starts = torch.randint(0, len(train_ids) - seq - 1 + 1, (bs,), generator=gen)
        chunk = train_ids[starts[:, None] + offsets]
        return chunk[:, :-1], chunk[:, 1:]

    def loss_fn(m, x, y):
        logits, _ = m(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    val_windows = torch.from_numpy(recipe.windows("val", text).x)
    baselines = _ngram_baselines(text.train, text.val, len(text.vocab))

    def evaluate(step):
        import mlflow

        loss = char_val_loss(model, val_windows)
        sample = generate(model, text.vocab.chars, "\n", 300, temperature=0.8, seed=0)
        mlflow.log_text(sample, f"samples/step_{step:06d}.txt")
        return {"val_loss": loss, "val_bpc": loss / math.log(2)}

    def finish(state):
        loss = char_val_loss(model, val_windows)
        return {"val_loss": loss, "val_bpc": loss / math.log(2), **baselines}

    spec = {
        "kind": "char",
        "config": config.to_dict(),
        "vocab": text.vocab.chars,
        "dataset": {"name": text.name, "sha256": text.sha256},
    }
    return TrainingSetup(
        model=model,
        sample_batch=sample_batch,
        loss_fn=loss_fn,
        evaluate=evaluate,
        finish=finish,
        items_per_batch=bs * seq,
        unit="chars",
        val_key="val_loss",
        spec=spec,
        dataset=dataset_input(text.name, text.path, text.sha256),
        recipe=recipe,
    )


@torch.no_grad()
def char_val_loss(model, windows: torch.Tensor, chunk: int = 64) -> float:
    """Mean cross-entropy (nats/char) over all windows, each started from a zero state."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), chunk):
        w = windows[i : i + chunk]
        logits, _ = model(w[:, :-1])
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum").item()
        count += w[:, 1:].numel()
    return total / count


def _ngram_baselines(train: np.ndarray, val: np.ndarray, vocab: int) -> dict:
    """Add-one-smoothed unigram and bigram cross-entropy on the validation split (nats/char)."""
    uni = np.bincount(train, minlength=vocab).astype(np.float64) + 1
    uni_ce = -np.log(uni / uni.sum())[val[1:]].mean()
    big = np.ones((vocab, vocab))
    np.add.at(big, (train[:-1], train[1:]), 1)
    big /= big.sum(1, keepdims=True)
    big_ce = -np.log(big[val[:-1], val[1:]]).mean()
    return {"baseline_unigram_loss": float(uni_ce), "baseline_bigram_loss": float(big_ce)}


# ---------------------------------------------------------------- forecast


def setup_forecast(job: ForecastJob) -> TrainingSetup:
    recipe, series = prepare_series(
        job.data, job.features, job.target, job.date_column, job.fill, job.lookback, job.horizon
    )
    L, H = int(job.lookback), int(job.horizon)
    if L < 1 or H < 1:
        raise RnnopsError("--lookback and --horizon must be at least 1")
    starts = {s: series.window_starts(s, L, H) for s in ("train", "val", "test")}
    mean = np.asarray(recipe.scaling.mean, np.float32)
    std = np.asarray(recipe.scaling.std, np.float32)
    tidx = series.target_indices
    config = ForecasterConfig(
        n_features=len(series.feature_names),
        target_indices=tidx,
        lookback=L,
        horizon=H,
        scaler_mean=mean.tolist(),
        scaler_std=std.tolist(),
        feature_names=series.feature_names,
        target_names=series.target_names,
        **_options(job),
    )
    if job.parent_run:  # --init-from: the parent's model (and scaler), checked against this data
        from rnnops.training.init_from import start_forecaster

        model = start_forecaster(job.init_from or job.parent_run, job.parent_run, config)
        config = model.config
    else:
        model = SegRNN(config) if config.arch == "segrnn" else Forecaster(config)
    values = torch.tensor(series.values)  # a copy: pandas may hand out a read-only array
    std_t = torch.from_numpy(std[tidx])
    bs = job.train.batch_size

    def windows(idx: torch.Tensor):
        x = values[idx[:, None] + torch.arange(L)]
        y = values[idx[:, None] + L + torch.arange(H)][:, :, tidx]
        return x, y

    train_starts = torch.from_numpy(starts["train"])

    def sample_batch(gen):
        return windows(train_starts[torch.randint(0, len(train_starts), (bs,), generator=gen)])

    def loss_fn(m, x, y):
        pred, _ = m(x)
        return (((pred - y) / std_t) ** 2).mean()

    @torch.no_grad()
    def scores(split: str) -> dict:
        model.eval()
        sq = ab = rl_sq = rl_ab = 0.0
        n = 0
        idx_all = torch.from_numpy(starts[split])
        for i in range(0, len(idx_all), 512):
            x, y = windows(idx_all[i : i + 512])
            pred, _ = model(x)
            err = (pred - y) / std_t
            rl = (x[:, -1:, tidx] - y) / std_t  # repeat-last baseline
            sq += (err**2).sum().item()
            ab += err.abs().sum().item()
            rl_sq += (rl**2).sum().item()
            rl_ab += rl.abs().sum().item()
            n += err.numel()
        return {
            f"{split}_mse": sq / n,
            f"{split}_mae": ab / n,
            f"{split}_repeat_last_mse": rl_sq / n,
            f"{split}_repeat_last_mae": rl_ab / n,
        }

    def evaluate(step):
        m = scores("val")
        return {"val_mse": m["val_mse"], "val_mae": m["val_mae"]}

    def finish(state):
        import mlflow

        final = {**scores("val"), **scores("test")}
        if intervals.has_intervals(model):  # calibrated on val after training, scored on val and test
            calibration = intervals.calibrate(model, windows, starts["val"])
            spec["intervals"] = calibration
            mlflow.log_dict(calibration, "intervals/calibration.json")
            for split in ("val", "test"):
                final.update(intervals.scores(model, windows, starts[split], std_t, split))
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "forecast_vs_actual.png"
            _plot_forecasts(model, series, starts["test"], windows, png)
            mlflow.log_artifact(str(png), "plots")
        return final

    spec = {
        "kind": "forecaster",
        "config": config.to_dict(),
        "stateful": config.stateful,
        "dataset": {"name": series.name, "sha256": series.sha256},
        "freq": recipe.freq,
    }
    return TrainingSetup(
        model=model,
        sample_batch=sample_batch,
        loss_fn=loss_fn,
        evaluate=evaluate,
        finish=finish,
        items_per_batch=bs,
        unit="windows",
        val_key="val_mse",
        spec=spec,
        dataset=dataset_input(series.name, series.path, series.sha256),
        recipe=recipe,
    )


@torch.no_grad()
def _plot_forecasts(model, series: D.SeriesData, test_starts: np.ndarray, windows, path: Path, n: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = model.config.lookback
    picks = torch.from_numpy(test_starts[np.linspace(0, len(test_starts) - 1, n).astype(int)])
    x, y = windows(picks)
    pred, _ = model(x)
    band = None
    if intervals.has_intervals(model):  # the outermost levels, e.g. the 80 % interval of 0.1 / 0.9
        q = intervals.bands(model, x, pred)
        levels = model.config.quantiles
        band = (q[..., 0], q[..., -1], f"{(levels[-1] - levels[0]) * 100:g} % interval")
    t_in = series.feature_names.index(series.target_names[-1])
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        hist = np.arange(L)
        fut = np.arange(L, L + y.shape[1])
        ax.plot(hist, x[i, :, t_in], color="0.4", label="history")
        ax.plot(fut, y[i, :, -1], color="tab:blue", label="actual")
        ax.plot(fut, pred[i, :, -1], color="tab:orange", label="forecast")
        if band is not None:
            ax.fill_between(
                fut, band[0][i, :, -1], band[1][i, :, -1], color="tab:orange", alpha=0.25, lw=0, label=band[2]
            )
        ax.set_title(
            f"{series.name} {series.target_names[-1]}: test window starting at row {int(picks[i])}", fontsize=9
        )
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _options(job: Job) -> dict:
    """The job's model options as the model config takes them (options left unset are the config's defaults)."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(job.model).items() if v is not None}


def setup_panel(job) -> TrainingSetup:
    """A global forecaster over a panel: :mod:`rnnops.training.panel_task` (imported here, so the
    other tasks do not load the panel model)."""
    from rnnops.training.panel_task import setup_panel as setup

    return setup(job)


TASKS: dict[str, Callable[[Job], TrainingSetup]] = {
    "char": setup_char,
    "forecast": setup_forecast,
    "panel": setup_panel,
}
