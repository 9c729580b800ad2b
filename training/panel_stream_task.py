"""The panel task on a streamed panel (``rnnops train forecast --id-column … --stream``): the same
:class:`~rnnops.training.task_setup.TrainingSetup` as :mod:`rnnops.training.panel_task`, with the
same model, loop, metrics and artifacts, but the panel is never in memory whole
(:mod:`rnnops.training.panel_stream`).

What differs from the in-memory task, and why:

- **Data**: one streaming pass indexes and checks the panel (rank 0 does it and shares the index
  with the other ranks); the recipe is made from the index (the same ids, lengths and splits).
- **Batches**: :class:`~rnnops.training.panel_stream.StreamSampler` draws each step's windows from a
  buffer of series chunks read across the files in a seeded random order, one buffer ahead in a
  background thread. With ``--nproc``/torchrun each rank samples its own shard of the series. The
  buffers are not in the checkpoint: ``--resume`` continues the run, but its later batches are not
  those of the uninterrupted run (the in-memory task's resume is exact).
- **Validation during training** (``val_mase``, early stopping) scores a seeded sample of
  :data:`EVAL_SERIES` series held in memory, not every series: scoring 100,000 series every few
  hundred steps would cost more than the training. The same sample gives the model's input
  statistics (the covariates' and levels' means and scales) and the forecast plot.
- **Final scores** cover every series, read back a block at a time
  (:func:`stream_scores`): each block's scores merged as :func:`forecast_metrics.merge_scores` says,
  which equals scoring the panel at once.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from rnnops.training import forecast_metrics as fm
from rnnops.training.job_config import PanelJob
from rnnops.training.panel import Panel
from rnnops.training.panel_model import PanelForecaster
from rnnops.training.panel_stream import PanelIndex, StreamSampler, index_panel
from rnnops.training.panel_task import (
    SHORT_SERIES_ARTIFACT,
    distributed_loss,
    panel_spec,
    plot_forecasts,
    rank_shard,
    run_spec,
    short_series,
    train_config,
)
from rnnops.training.panel_train import (
    PanelWindows,
    forecast,
    model_config,
    training_origins,
    validation_mase,
)
from rnnops.training.recipe import panel_recipe
from rnnops.training.task_setup import TrainingSetup, dataset_input

EVAL_SERIES = 2000  # series scored at each validation during training (a seeded sample)
EVAL_BLOCK_ROWS = 1 << 18  # rows read at a time for the final scores


def setup_streaming_panel(job: PanelJob) -> TrainingSetup:
    from rnnops.training import distributed

    spec = panel_spec(job)
    group = distributed.current()
    shared = None
    if group is None or group.is_main:
        index = index_panel(job.data, spec)
        shared = (index, panel_recipe(job.data, spec, index, job.backtest, job.backtest_step))
    index, recipe = group.share(shared) if group is not None else shared
    print(index.summary() + f"\n(streamed from {len(index.files)} Parquet file(s))", file=sys.stderr)
    config = train_config(job)
    splits = index.splits()
    backtest = index.backtest(job.backtest, job.backtest_step) if job.backtest else None
    end = None
    if backtest is not None:  # as the in-memory task: train on what precedes the first scored origin
        scored = np.where(backtest >= 1, backtest, np.iinfo(np.int64).max)
        end = np.minimum(scored.min(axis=1), splits.train_end)
    series, low, high = rank_shard(*training_origins(index, config.lookback, end))

    # The in-memory sample: validation during training, the input statistics, the plot.
    has_val = np.flatnonzero(splits.train_end >= 1)
    rng = np.random.default_rng(job.train.seed)
    val_panel = index.load(rng.choice(has_val, min(EVAL_SERIES, len(has_val)), replace=False))
    val_windows = PanelWindows(val_panel, config.lookback)
    mcfg = model_config(config, val_panel, val_windows)
    model = PanelForecaster(mcfg)

    rank = group.rank if group is not None else 0
    sampler = StreamSampler(
        index,
        series,
        low,
        high,
        lambda panel: PanelWindows(panel, config.lookback),
        seed=job.train.seed + rank * distributed.RANK_SEED_STRIDE,
    )
    span = torch.from_numpy(high - low + 1)
    bs = job.train.batch_size

    def sample_batch(gen):
        buffer = sampler.current()
        pick = torch.randint(0, len(buffer.positions), (bs,), generator=gen)
        where = buffer.positions[pick.numpy()]
        offset = (torch.rand(bs, generator=gen, dtype=torch.float64) * span[where]).long().numpy()
        return buffer.windows.batch(pick.numpy(), low[where] + offset), None

    def loss_fn(m, batch, _):
        return distributed_loss(m, model, batch)

    def evaluate(step):
        return {"val_mase": validation_mase(model, val_windows, val_panel)}

    def finish(state):
        import mlflow

        sampler.close()
        origins = {"val_": splits.train_end, "test_": splits.val_end}
        if backtest is not None:
            origins.update({f"backtest_{w}/": backtest[:, w] for w in range(backtest.shape[1])})
        final = stream_scores(model, index, config.lookback, origins)
        final["too_short_series"] = len(index.too_short)
        final["stream_buffers_read"] = sampler.buffers_read
        final["stream_wait_seconds"] = sampler.wait_s
        mlflow.log_dict(short_series(index), SHORT_SERIES_ARTIFACT)
        mlflow.log_text(index.summary() + "\n", "data/summary.txt")
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "forecast_vs_actual.png"
            cut = val_panel.splits().val_end
            plot_forecasts(val_panel, forecast(model, val_windows, cut), cut, config.lookback, png)
            mlflow.log_artifact(str(png), "plots")
        return final

    spec_out = run_spec(mcfg, index, recipe)
    return TrainingSetup(
        model=model,
        sample_batch=sample_batch,
        loss_fn=loss_fn,
        evaluate=evaluate,
        finish=finish,
        items_per_batch=bs,
        unit="windows",
        val_key="val_mase",
        spec=spec_out,
        dataset=dataset_input(recipe.source.name, Path(job.data).expanduser(), recipe.source.sha256),
        recipe=recipe,
    )


def window_scores(model: PanelForecaster, windows: PanelWindows, panel: Panel, cutoffs: np.ndarray) -> dict:
    """The model's and the baselines' scores of one origin per series of ``panel``, each with the
    sum of the scored ``|actual|`` (what :func:`forecast_metrics.merge_scores` needs)."""
    _, histories, actual = panel.window(cutoffs)
    fc = forecast(model, windows, cutoffs)
    base = fm.baseline_scores(histories, actual, panel.season)
    total = float(np.abs(actual[np.isfinite(actual)]).sum())
    return {"model": (fc.scores(histories, actual, panel.season), total), **{k: (v, total) for k, v in base.items()}}


def stream_scores(
    model: PanelForecaster, index: PanelIndex, lookback: int, origins: dict, block_rows: int = EVAL_BLOCK_ROWS
) -> dict:
    """The M4 scores of every series at each origin (``{prefix: cutoffs per series}``), the series
    read a block of about ``block_rows`` rows at a time: the same metrics, named as the in-memory
    task names them (``val_mase``, ``test_seasonal_naive_owa``, ``backtest_0/wql``, …)."""
    parts: dict[str, dict[str, list]] = {prefix: {} for prefix in origins}
    for block in index.chunks(np.arange(index.n_series), block_rows):
        panel = None
        for prefix, cutoffs in origins.items():
            cut = np.asarray(cutoffs, np.int64)[block]
            if not (cut >= 1).any():
                continue
            if panel is None:
                panel = index.load(block)
                windows = PanelWindows(panel, lookback)
            for method, part in window_scores(model, windows, panel, cut).items():
                parts[prefix].setdefault(method, []).append(part)
    out: dict[str, float] = {}
    for prefix, methods in parts.items():
        if not methods:
            continue
        naive2 = fm.merge_scores(methods["naive2"])
        for method, scored in methods.items():
            name = prefix if method == "model" else f"{prefix}{method}_"
            values = fm.merge_scores(scored, naive2).as_dict(name)
            if method != "model":
                values.pop(f"{name}n_series")
                values.pop(f"{name}n_values")
            out.update({k: v for k, v in values.items() if np.isfinite(v)})
    return out
