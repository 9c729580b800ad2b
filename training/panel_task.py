"""The panel task: a global forecaster over a panel (``rnnops train forecast --id-column …``) as a
:class:`~rnnops.training.task_setup.TrainingSetup`, so it runs in the one training loop
(:mod:`rnnops.training.trainer`: checkpoints, exact resume, early stopping) and the one MLflow
run (:func:`rnnops.training.jobs.run_job`) as every other task.

- **Data**: :func:`rnnops.training.recipe.prepare_panel` reads and checks the panel (every bad
  input is one line, before any training) and describes it as the run's recipe: the column
  roles, the frequency, the calendar features and each series' splits (M4: the last horizon is
  test, the one before it validation).
- **Batches**: each step draws ``batch_size`` series uniformly, then a cutoff uniformly among
  that series' training origins (:func:`rnnops.training.panel_train.training_origins`), from the
  loop's seeded generator, so a resumed run draws what the uninterrupted one would.
- **Evaluation**: validation MASE (``val_mase``, the metric early stopping follows) every
  ``eval_every`` steps; at the end, on the best weights, the M4 scores (sMAPE, MASE, OWA, MSIS,
  coverage, WQL) of the validation and test windows and of each ``--backtest`` origin, each
  beside the naive, seasonal-naive and Naive2 baselines scored on the same windows.
- **Backtests** as NeuralForecast's ``cross_validation(refit=False)``: one model, trained on what
  precedes the first scored origin of each series (so no window scores values it trained on),
  then scored at every origin: ``backtest_<w>/<metric>``, ``w`` 0 the oldest, the last one the
  test window.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from rnnops.errors import RnnopsError
from rnnops.training import data as D
from rnnops.training import forecast_metrics as fm
from rnnops.training.job_config import PanelJob
from rnnops.training.panel import NAMED_PANELS, Panel, PanelSpec
from rnnops.training.panel_model import DEFAULT_QUANTILES, PanelForecaster
from rnnops.training.panel_train import (
    PanelForecast,
    PanelTrainConfig,
    PanelWindows,
    forecast,
    model_config,
    training_origins,
)
from rnnops.training.recipe import prepare_panel
from rnnops.training.task_setup import TrainingSetup, dataset_input

SHORT_SERIES_ARTIFACT = "data/too_short.json"
PLOTTED_SERIES = 4


def panel_spec(job: PanelJob) -> PanelSpec:
    """The panel reader's spec of a job's columns, frequency and windows."""
    return PanelSpec(
        job.id_column,
        job.date_column,
        tuple(job.targets),
        horizon=int(job.horizon),
        lookback=int(job.lookback),
        static_columns=tuple(job.static_columns),
        future_covariates=tuple(job.future_covariates),
        past_covariates=tuple(job.past_covariates),
        freq=job.freq,
        likelihood=job.model.likelihood,
        calendar_features=job.calendar,
    )


def train_config(job: PanelJob) -> PanelTrainConfig:
    """The model part of :class:`PanelTrainConfig` from the job (the loop's part is ``job.train``)."""
    m = job.model
    return PanelTrainConfig(
        lookback=int(job.lookback),
        segment_length=m.segment_length,
        cell=m.cell,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        context_size=m.context_size,
        decoder_hidden=m.decoder_hidden,
        dropout=m.dropout,
        scaling=m.scaling,
        seasonal_residual=m.seasonal_residual,
        likelihood=m.likelihood,
        quantiles=tuple(m.quantiles) if m.quantiles else DEFAULT_QUANTILES,
        batch_size=job.train.batch_size,
        seed=job.train.seed,
        progress=False,
    )


def setup_panel(job: PanelJob) -> TrainingSetup:
    if job.stream:  # larger than memory: windows streamed from Parquet (training/panel_stream_task.py)
        from rnnops.training.panel_stream_task import setup_streaming_panel

        return setup_streaming_panel(job)
    recipe, panel = prepare_panel(job.data, panel_spec(job), job.backtest, job.backtest_step)
    config = train_config(job)
    start = None
    if job.parent_run:  # --init-from: the parent's model, its vocabularies grown by the new categories
        from rnnops.training.init_from import start_panel

        start = start_panel(job.init_from or job.parent_run, job.parent_run, panel, job.model.dropout)
        panel = start.panel
    print(panel.summary(), file=sys.stderr)
    windows = PanelWindows(panel, config.lookback)
    mcfg = start.model.config if start else model_config(config, panel, windows)
    model = start.model if start else PanelForecaster(mcfg)
    splits = panel.splits()
    backtest = panel.backtest(job.backtest, job.backtest_step) if job.backtest else None
    end = None
    if backtest is not None:  # train on what precedes each series' first scored origin
        scored = np.where(backtest >= 1, backtest, np.iinfo(np.int64).max)
        end = np.minimum(scored.min(axis=1), splits.train_end)
    series, low, high = rank_shard(*training_origins(panel, config.lookback, end))
    span = torch.from_numpy(high - low + 1)
    bs = job.train.batch_size

    def sample_batch(gen):
        pick = torch.randint(0, len(series), (bs,), generator=gen)
        offset = (torch.rand(bs, generator=gen, dtype=torch.float64) * span[pick]).long()
        pick = pick.numpy()
        return windows.batch(series[pick], low[pick] + offset.numpy()), None

    def loss_fn(m, batch, _):
        return distributed_loss(m, model, batch)

    def evaluate(step):
        """Validation MASE (early stopping follows it) and, where the nine GluonTS levels are
        forecast, WQL (what `rnnops tune --metric wql` minimises), from one forecast."""
        _, histories, actual = panel.window(splits.train_end)
        s = forecast(model, windows, splits.train_end).scores(histories, actual, panel.season)
        return {"val_mase": s.mase, **({"val_wql": s.wql} if np.isfinite(s.wql) else {})}

    def scores(prefix: str, cutoffs: np.ndarray) -> tuple[dict, PanelForecast]:
        """The model's and the baselines' M4 scores of one origin per series, as MLflow metrics."""
        _, histories, actual = panel.window(cutoffs)
        fc = forecast(model, windows, cutoffs)
        base = fm.baseline_scores(histories, actual, panel.season)
        out = fc.scores(histories, actual, panel.season, naive2=base["naive2"]).as_dict(prefix)
        for name, s in base.items():
            out.update(s.as_dict(f"{prefix}{name}_"))
            out.pop(f"{prefix}{name}_n_series")
            out.pop(f"{prefix}{name}_n_values")
        return {k: v for k, v in out.items() if np.isfinite(v)}, fc

    def finish(state):
        import mlflow

        final, _ = scores("val_", splits.train_end)
        test, test_fc = scores("test_", splits.val_end)
        final.update(test)
        if backtest is not None:
            for w in range(backtest.shape[1]):
                final.update(scores(f"backtest_{w}/", backtest[:, w])[0])
        final["too_short_series"] = len(panel.too_short)
        if start is not None:
            from rnnops.training.init_from import INIT_ARTIFACT

            mlflow.log_dict(start.record(), INIT_ARTIFACT)
        mlflow.log_dict(short_series(panel), SHORT_SERIES_ARTIFACT)
        mlflow.log_text(panel.summary() + "\n", "data/summary.txt")
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "forecast_vs_actual.png"
            plot_forecasts(panel, test_fc, splits.val_end, config.lookback, png)
            mlflow.log_artifact(str(png), "plots")
        return final

    spec = run_spec(mcfg, panel, recipe)
    named = job.data in NAMED_PANELS  # m4-hourly: its training file's URL is the source
    path = None if named else Path(job.data).expanduser()
    url = D.DATASETS[f"{job.data}-train"].url if named else None
    return TrainingSetup(
        model=model,
        sample_batch=sample_batch,
        loss_fn=loss_fn,
        evaluate=evaluate,
        finish=finish,
        items_per_batch=bs,
        unit="windows",
        val_key="val_mase",
        spec=spec,
        dataset=dataset_input(recipe.source.name, path, recipe.source.sha256, url=url),
        recipe=recipe,
    )


def rank_shard(series: np.ndarray, low: np.ndarray, high: np.ndarray):
    """The training origins (``training_origins``' arrays) of this process's shard of the series:
    all of them in one process; with ``--nproc``/torchrun, rank r's (series index modulo N)."""
    from rnnops.training import distributed

    group = distributed.current()
    if group is None:
        return series, low, high
    keep = np.isin(series, distributed.shard(series, group.rank, group.world_size))
    if not keep.any():
        raise RnnopsError(
            f"rank {group.rank} of {group.world_size} has no series with a training window: the panel has "
            f"{len(series)}; use fewer processes"
        )
    return series[keep], low[keep], high[keep]


def distributed_loss(m, model: PanelForecaster, batch) -> torch.Tensor:
    """The head's loss of ``m``'s forward pass: ``m`` is the model, or its DDP wrapper (whose
    backward averages the ranks' gradients), which runs only ``forward``, not ``model.loss``."""
    raw, loc, scale = m(batch)
    return model.head.loss(raw, loc, scale, batch.future_target)


def run_spec(mcfg, panel, recipe) -> dict:
    """The run's model spec (logged as the model's config: what export rebuilds it from), for a
    panel in memory or a streamed one's index (both have ``spec``, ``static``, ``freq``...)."""
    return {
        "kind": "panel",
        "config": json.loads(json.dumps(asdict(mcfg))),
        "inputs": model_inputs(panel),
        "stateful": False,  # each window is scaled by itself: the model reads the last `lookback` steps
        "dataset": {"name": recipe.source.name, "sha256": recipe.source.sha256},
        "freq": panel.freq,
    }


def model_inputs(panel: Panel) -> dict:
    """What the model reads, in its input order, beside its config: enough to build its inputs from
    a panel again (export's covariate contract and serving build on it)."""
    spec = panel.spec
    return {
        "id": spec.id_column,
        "date": spec.date_column,
        "targets": list(spec.targets),
        "past_covariates": list(spec.past_covariates),
        # known inputs: the future covariates, then the calendar features (rnnops.calendar)
        "future_covariates": list(spec.future_covariates),
        "calendar": list(panel.calendar_names),
        "static": [
            {"name": s.name, "kind": s.kind, "vocabulary": list(s.vocabulary)}
            for s in panel.static  # categorical codes: 0 unknown, i + 1 vocabulary[i]
        ],
        "season": panel.season,
    }


def short_series(panel: Panel) -> dict:
    """The series shorter than lookback + horizon (kept, trained and scored with their missing steps
    masked; listed so none is dropped silently)."""
    need = panel.spec.lookback + panel.spec.horizon
    index = {sid: i for i, sid in enumerate(panel.ids)}
    return {
        "lookback": panel.spec.lookback,
        "horizon": panel.spec.horizon,
        "needed": need,
        "count": len(panel.too_short),
        "series": [{"id": sid, "length": int(panel.lengths[index[sid]])} for sid in panel.too_short],
    }


def plot_forecasts(panel: Panel, fc: PanelForecast, cutoffs: np.ndarray, lookback: int, path: Path) -> None:
    """The test forecast of a few series (spread over the panel) against the actual values, with the
    95 % interval where it was forecast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(PLOTTED_SERIES, len(fc.series))
    rows = np.linspace(0, len(fc.series) - 1, n).astype(int)
    band = fc.interval()
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.4 * n), squeeze=False)
    h = panel.spec.horizon
    for ax, r in zip(axes[:, 0], rows):
        i = int(fc.series[r])
        cut = int(cutoffs[i])
        values = panel.target[panel.rows(i), 0]
        start = max(0, cut - lookback)
        ax.plot(np.arange(start, cut), values[start:cut], color="0.4", label="history")
        fut = np.arange(cut, cut + h)
        ax.plot(fut, values[cut : cut + h], color="tab:blue", label="actual")
        ax.plot(fut, fc.point[r], color="tab:orange", label="forecast (median)")
        if band is not None:
            ax.fill_between(fut, band[0][r], band[1][r], color="tab:orange", alpha=0.25, lw=0, label="95 % interval")
        ax.set_title(f"{panel.source}: series {panel.ids[i]!r}, test window", fontsize=9)
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
