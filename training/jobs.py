"""Training jobs: char models and forecasters, each logged as one MLflow run.

A job (:mod:`rnnops.training.job_config`: typed, the whole configuration) is built here from a
preset plus the flags that were given (:func:`char_job`, :func:`forecast_job`, :func:`sine_job`);
its task (:mod:`rnnops.training.tasks`) loads the data and builds the model, the loss and the
evaluation; :func:`run_job` trains it as one MLflow run: params and ``config/job.json`` from the
job, the job saved beside the checkpoint so ``--resume`` can rebuild it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import rnnops
from rnnops import settings
from rnnops.errors import RnnopsError, Terminated
from rnnops.training import cells, distributed, runinfo, tasks
from rnnops.training.intervals import parse_levels
from rnnops.training.job_config import (
    CharJob,
    CharModelOptions,
    ForecastJob,
    ForecastModelOptions,
    Job,
    PanelJob,
    PanelModelOptions,
    flat_params,
    job_from_dict,
    to_dict,
    with_overrides,
)
from rnnops.training.logged_model import log_model
from rnnops.training.models import check_config
from rnnops.training.panel import split_list
from rnnops.training.recipe import RECIPE_ARTIFACT
from rnnops.training.segrnn import DEFAULT_SEGMENT, check_segments
from rnnops.training.trainer import Checkpoint, TrainSettings, train

CHAR_PRESETS = {
    "tiny": dict(
        model=dict(hidden_size=64, num_layers=1, embed_dim=16),
        seq_len=32,
        train=dict(steps=30, batch_size=16, lr=3e-3, warmup_steps=5, eval_every=15),
    ),
    # Small batches win in a fixed CPU budget: more updates, and this machine runs a 16x64
    # LSTM step 4.5x faster than a 32x100 one (docs/training.md).
    "quick": dict(
        model=dict(hidden_size=384, num_layers=1, embed_dim=64),
        seq_len=64,
        train=dict(
            steps=10000, batch_size=16, lr=3e-3, warmup_steps=50, eval_every=500, time_budget_s=170.0, patience=100
        ),
    ),
    "full": dict(
        model=dict(hidden_size=512, num_layers=2, embed_dim=64, dropout=0.2),
        seq_len=128,
        train=dict(
            steps=20000, batch_size=64, lr=3e-3, warmup_steps=100, eval_every=250, time_budget_s=1800.0, patience=8
        ),
    ),
}

FORECAST_PRESETS = {
    "tiny": dict(
        model=dict(hidden_size=16), train=dict(steps=20, batch_size=32, lr=3e-3, warmup_steps=2, eval_every=10)
    ),
    # ETT overfits quickly: a small GRU, dropout before the head, small batches and early
    # stopping on val MSE win (docs/training.md).
    "quick": dict(
        model=dict(hidden_size=64, dropout=0.3),
        train=dict(
            steps=3000, batch_size=32, lr=1e-3, warmup_steps=50, eval_every=150, time_budget_s=150.0, patience=4
        ),
    ),
    "full": dict(
        model=dict(hidden_size=256, num_layers=2, dropout=0.1),
        train=dict(
            steps=10000, batch_size=64, lr=1e-3, warmup_steps=100, eval_every=250, time_budget_s=900.0, patience=6
        ),
    ),
}

# --arch segrnn (training/segrnn.py): the paper's shape (one GRU layer, segments of 24, dropout
# 0.5 before the head) at a width and batch this CPU trains for enough epochs in the budget.
# These replace the preset's model and train settings whatever the cell.
SEGRNN_PRESETS = {
    "tiny": dict(
        model=dict(hidden_size=16, dropout=0.0),
        train=dict(steps=20, batch_size=32, lr=3e-3, warmup_steps=2, eval_every=10),
    ),
    "quick": dict(
        model=dict(hidden_size=256, dropout=0.5),
        train=dict(
            steps=6000, batch_size=64, lr=1e-3, warmup_steps=50, eval_every=150, time_budget_s=150.0, patience=6
        ),
    ),
    "full": dict(
        model=dict(hidden_size=512, dropout=0.5),
        train=dict(
            steps=20000, batch_size=256, lr=1e-3, warmup_steps=100, eval_every=100, time_budget_s=900.0, patience=10
        ),
    ),
}


def _preset(presets: dict, task: str, cell: str, preset: str) -> dict:
    """The preset's values, with the cell's own preset (if any: training/cells.py) over them; a fresh copy."""
    p = json.loads(json.dumps(presets[preset]))
    entry = cells.CELLS.get(cell)  # an unknown cell is refused (one line) once the job is built
    cell_p = entry.presets.get(task, {}).get(preset) if entry else None
    if cell_p:
        p["model"] = dict(cell_p.get("model", p["model"]))
        p["train"].update(cell_p.get("train", {}))
        p.update({k: v for k, v in cell_p.items() if k not in ("model", "train")})
    return p


def _check_model(kind: str, m) -> None:
    check_config(kind, m.cell, m.num_layers, m.hidden_size, m.heads, m.ff_mult)


SINE_JOB = dict(
    model=dict(hidden_size=32, norm="fixed"),
    lookback=50,
    horizon=10,
    train=dict(steps=300, batch_size=32, lr=5e-3, warmup_steps=10, eval_every=100),
)


def char_job(data: str, cell: str, preset: str, overrides: dict) -> CharJob:
    """The full job for a char model: preset values, then the flags that were given."""
    if preset not in CHAR_PRESETS:
        raise RnnopsError(f"unknown preset {preset!r}: use one of {', '.join(CHAR_PRESETS)}")
    p = _preset(CHAR_PRESETS, "char", cell, preset)
    job = CharJob(
        data=data,
        preset=preset,
        seq_len=p["seq_len"],
        model=CharModelOptions(cell=cell, **p["model"]),
        train=TrainSettings(**p["train"]),
    )
    job = with_overrides(job, overrides)
    _check_model("char", job.model)
    return job


def forecast_job(data: str, cell: str, preset: str, overrides: dict, arch: str = "rnn") -> ForecastJob:
    if preset not in FORECAST_PRESETS:
        raise RnnopsError(f"unknown preset {preset!r}: use one of {', '.join(FORECAST_PRESETS)}")
    if arch not in ("rnn", "segrnn"):
        raise RnnopsError(f"unknown --arch {arch!r}: use rnn or segrnn")
    p = _preset(FORECAST_PRESETS, "forecast", cell, preset)
    model = ForecastModelOptions(cell=cell)
    if arch == "segrnn":
        p = {"model": dict(SEGRNN_PRESETS[preset]["model"]), "train": dict(SEGRNN_PRESETS[preset]["train"])}
        model = ForecastModelOptions(cell=cell, arch="segrnn", segment_length=DEFAULT_SEGMENT, linear_skip=False)
    job = ForecastJob(
        data=data,
        preset=preset,
        features="M",
        target=None,
        date_column=None,
        fill=None,
        lookback=96,
        horizon=96,
        model=replace(model, **p["model"]),
        train=TrainSettings(**p["train"]),
    )
    job = with_overrides(job, overrides)
    _check_model("forecaster", job.model)
    return _check_forecast(job)


def _check_forecast(job: ForecastJob) -> ForecastJob:
    """What a forecast job's flags can get wrong, each one line before any data is read."""
    m = replace(job.model, quantiles=parse_levels(job.model.quantiles) or None)
    if (m.arch or "rnn") == "segrnn":
        if m.norm != "revin":
            raise RnnopsError(
                "--arch segrnn normalises each window by itself (instance normalisation): use --norm revin"
            )
        check_segments(int(job.lookback), int(job.horizon), int(m.segment_length or DEFAULT_SEGMENT))
    elif m.segment_length is not None:
        raise RnnopsError("--segment-length applies to --arch segrnn only")
    return replace(job, model=m)


def sine_job(overrides: dict) -> ForecastJob:
    p = json.loads(json.dumps(SINE_JOB))
    job = ForecastJob(
        data="sine",
        preset="sine",
        features="S",
        target=None,
        date_column=None,
        fill=None,
        lookback=p["lookback"],
        horizon=p["horizon"],
        model=ForecastModelOptions(cell="gru", linear_skip=False, **p["model"]),
        train=TrainSettings(**p["train"]),
    )
    return with_overrides(job, overrides)


# Global panel forecasters (training/panel_model.py). `quick` is benchmarks/m4_global.py's
# configuration (a 2-layer GRU over 24-step segments of a 336-step window, batch 256, lr 3e-3,
# 300 s; its validation every ~15 s there is every 100 steps here); `tiny` trains in seconds (tests).
PANEL_PRESETS = {
    "tiny": dict(
        model=dict(hidden_size=16, num_layers=1, context_size=4, decoder_hidden=8),
        train=dict(steps=20, batch_size=16, lr=1e-2, warmup_steps=2, eval_every=10, patience=100),
    ),
    "quick": dict(
        model=dict(hidden_size=128, num_layers=2),
        train=dict(
            steps=100_000,
            batch_size=256,
            lr=3e-3,
            min_lr_ratio=0.05,
            warmup_steps=50,
            weight_decay=1e-4,
            eval_every=100,
            patience=8,
            time_budget_s=300.0,
        ),
    ),
    "full": dict(
        model=dict(hidden_size=256, num_layers=2),
        train=dict(
            steps=1_000_000,
            batch_size=256,
            lr=3e-3,
            min_lr_ratio=0.05,
            warmup_steps=100,
            weight_decay=1e-4,
            eval_every=200,
            patience=10,
            time_budget_s=1800.0,
        ),
    ),
}
# The columns and horizon a named panel comes with (flags may still override them).
NAMED_PANEL_COLUMNS = {"m4-hourly": dict(id_column="id", date_column="timestamp", targets=["value"], horizon=48)}


def is_panel(data: str, id_column: str | None) -> bool:
    """Whether ``rnnops train forecast`` takes the panel path: an id column, or a named panel."""
    return id_column is not None or data in NAMED_PANEL_COLUMNS


def default_segment(lookback: int, most: int = 24) -> int:
    """The largest divisor of the lookback up to ``most`` steps (336 -> 24, 98 -> 14, 28 -> 14)."""
    return max(d for d in range(1, min(most, lookback) + 1) if lookback % d == 0)


def panel_job(data: str, preset: str, overrides: dict) -> PanelJob:
    """The full job for a global panel forecaster: preset, the named panel's columns (m4-hourly),
    then the flags that were given. Without --lookback the window is 7 horizons (M4 Hourly: 336);
    without --segment-length a segment is the lookback's largest divisor up to 24 steps."""
    if preset not in PANEL_PRESETS:
        raise RnnopsError(f"unknown preset {preset!r}: use one of {', '.join(PANEL_PRESETS)}")
    p = json.loads(json.dumps(PANEL_PRESETS[preset]))
    named = NAMED_PANEL_COLUMNS.get(data, {})
    given = {k: v for k, v in overrides.items() if v is not None}
    columns = {k: given.pop(k, named.get(k)) for k in ("id_column", "date_column", "targets", "horizon")}
    for flag, key in (("--id-column", "id_column"), ("--date-column", "date_column"), ("--target", "targets")):
        if not columns[key]:
            raise RnnopsError(f"a panel needs {flag}: give the column of the file that holds it")
    if not columns["horizon"]:
        raise RnnopsError("a panel needs --horizon: the number of steps to forecast")
    horizon = int(columns["horizon"])
    lookback = int(given.pop("lookback", None) or 7 * horizon)
    job = PanelJob(
        data=data,
        preset=preset,
        id_column=columns["id_column"],
        date_column=columns["date_column"],
        targets=list(split_list(columns["targets"])),
        static_columns=[],
        future_covariates=[],
        past_covariates=[],
        freq=None,
        calendar=True,
        lookback=lookback,
        horizon=horizon,
        backtest=0,
        backtest_step=None,
        model=PanelModelOptions(segment_length=default_segment(lookback), **p["model"]),
        train=TrainSettings(**p["train"]),
    )
    lists = ("static_columns", "future_covariates", "past_covariates")
    job = with_overrides(job, {k: list(split_list(v)) if k in lists else v for k, v in given.items()})
    from rnnops.training.panel_stream import parquet_rows, should_stream

    if "stream" not in given:  # not asked either way: stream when the panel would not fit in memory
        job = replace(job, stream=should_stream(data))
    elif job.stream and parquet_rows(data) is None:
        raise RnnopsError(
            f"--stream reads a Parquet panel (a file or a directory of files), not {data}: convert it, or drop --stream"
        )
    if job.stream and job.parent_run:
        raise RnnopsError(
            "--init-from fine-tunes on a panel read into memory; a streamed panel does not take it yet: "
            "give --no-stream"
        )
    return _check_panel(job)


def _check_panel(job: PanelJob) -> PanelJob:
    """What a panel job's flags can get wrong, each one line before any data is read: the model's
    own checks (head, scaling, segments, quantile levels) on a config with the job's sizes; the
    panel's checks (a column given two roles, duplicates, ...) follow when it is read."""
    from rnnops.training.panel_model import PanelModelConfig, make_cell

    m = job.model
    quantiles = m.quantiles
    if isinstance(quantiles, str):  # the flag's form, "0.1,0.5,0.9"
        quantiles = [float(q) for q in split_list(quantiles)]
    if job.lookback < 1 or job.horizon < 1:
        raise RnnopsError(f"--horizon ({job.horizon}) and --lookback ({job.lookback}) must be at least 1")
    if job.backtest < 0 or (job.backtest_step is not None and job.backtest_step < 1):
        raise RnnopsError("--backtest must be 0 or more windows and --step at least 1")
    if job.backtest_step is not None and not job.backtest:
        raise RnnopsError("--step applies to --backtest N only")
    make_cell(m.cell, 1, 1, 1, 0.0)  # one line for a cell panel models do not take yet
    kwargs = {"quantiles": tuple(quantiles)} if quantiles is not None else {}
    PanelModelConfig(
        lookback=job.lookback,
        horizon=job.horizon,
        segment_length=m.segment_length,
        head=m.likelihood or "pinball",
        scaling=m.scaling,
        **kwargs,
    )
    return replace(job, model=replace(m, quantiles=quantiles))


# ---------------------------------------------------------------- running


def run_job(job: Job | dict, experiment: str | None = None, resume_run: str | None = None, on_metrics=None) -> str:
    """Train ``job`` as an MLflow run (or continue ``resume_run``); returns the run id.

    Inside an active run (``rnnops tune``'s parent) the run is nested under it. ``on_metrics(m,
    step)`` sees every logged dict (tuning reports evaluations to its pruner; raising
    :class:`runinfo.StopRun` there ends the run as KILLED). ``job`` may be the JSON form (a
    checkpoint's job.json)."""
    import mlflow

    from rnnops.tracking import connect

    connect()
    if isinstance(job, dict):
        job = job_from_dict(job)
    logged = to_dict(job)  # config/job.json, the params, the checkpoint's job.json
    torch.manual_seed(job.train.seed)
    np.random.seed(job.train.seed)
    setup = tasks.setup(job)
    group = distributed.current()  # None unless several processes train together (--nproc, torchrun)
    if group:
        setup = group.wrap(setup, job.train.seed)
        if not group.is_main:
            return group.follow(job, setup, resume_run)  # rank 0 alone logs, evaluates, checkpoints
    experiment = experiment or f"rnnops-{job.command}"
    if resume_run:
        run = mlflow.start_run(run_id=resume_run, log_system_metrics=runinfo.system_metrics())
    else:
        if mlflow.active_run() is None:
            mlflow.set_experiment(experiment)
        run = mlflow.start_run(
            run_name=runinfo.run_name(logged), nested=True, log_system_metrics=runinfo.system_metrics()
        )
        mlflow.log_params(flat_params(job))
        # the size a table of runs compares (the job's settings only imply it)
        mlflow.log_param("model.parameters", sum(p.numel() for p in setup.model.parameters()))
        mlflow.set_tags(
            {
                "rnnops.version": rnnops.__version__,
                "rnnops.task": job.task,
                **_git_tags(),
                runinfo.DESCRIPTION_TAG: f"training ({runinfo.run_name(logged)})",
            }
        )
        if getattr(job, "parent_run", None):  # --init-from: the run whose model this one starts from
            from rnnops.training.init_from import TAG_INIT_FROM, TAG_PARENT_RUN

            mlflow.set_tags({TAG_PARENT_RUN: job.parent_run, TAG_INIT_FROM: job.init_from or job.parent_run})
        mlflow.log_input(setup.dataset, context="training")
        mlflow.log_dict(logged, "config/job.json")
        mlflow.log_dict(setup.recipe.to_dict(), RECIPE_ARTIFACT)  # how to rebuild the data (export reads it)
    run_id = run.info.run_id
    if group:
        group.share(run_id)
        mlflow.set_tag("rnnops.world_size", group.world_size)
    ckpt = Checkpoint(settings.checkpoint_dir() / run_id)
    ckpt.save_job(logged)
    print(f"MLflow run {run_id} (experiment {experiment}); checkpoints in {ckpt.folder}", file=sys.stderr)
    status = "FAILED"
    try:
        state = train(
            setup.model,
            job.train,
            setup.sample_batch,
            setup.loss_fn,
            setup.evaluate,
            _logger(on_metrics),
            ckpt,
            setup.items_per_batch,
            setup.unit,
            setup.val_key,
            resume=resume_run is not None,
            clock=group.clock if group else time.perf_counter,
        )
        final = setup.finish(state)
        # Logged at the last step so the run's summary shows these (best weights), not the last eval.
        mlflow.log_metrics({**final, "train_seconds": state["elapsed"], "steps": state["step"]}, step=state["step"])
        mlflow.set_tags(
            {"rnnops.stop_reason": state["stop"], runinfo.DESCRIPTION_TAG: runinfo.description(logged, final, state)}
        )
        spec = {**setup.spec, "run_id": run_id, "metrics": final, "rnnops_version": rnnops.__version__}
        with tempfile.TemporaryDirectory() as tmp:
            log_model(setup.model, spec, Path(tmp))
        status = "FINISHED"
        _print_summary(job, final, state, run_id)
    except (KeyboardInterrupt, Terminated) as exc:  # Ctrl-C, or SIGTERM
        status = "KILLED"
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(
            f"\n{what}: checkpoint saved; continue with `rnnops train {job.command} --resume {run_id}`", file=sys.stderr
        )
        raise
    except runinfo.StopRun as exc:  # ended on purpose (a pruned trial): not a failure
        status = exc.status
        mlflow.set_tags({"rnnops.stop_reason": str(exc), runinfo.DESCRIPTION_TAG: str(exc)})
        raise
    except Exception:
        gone = _tracking_server_gone()
        if gone is None:
            raise
        status = None  # the server cannot be told: the run stays RUNNING until --resume ends it
        raise RnnopsError(
            f"MLflow tracking server {settings.tracking_uri()} stopped answering during training ({gone}); "
            f"the checkpoint (step {_checkpoint_step(ckpt)}) is kept in {ckpt.folder}: continue with "
            f"`rnnops train {job.command} --resume {run_id}` once the server is back"
        ) from None
    finally:
        if status is None:
            _end_run_unreachable()
        else:
            mlflow.end_run(status=status)
    return run_id


def _tracking_server_gone() -> str | None:
    """Why the HTTP tracking server is unreachable (its ``/health`` does not answer), or None
    when it answers or the store is not a server: then a failure is not the server's."""
    import urllib.error
    import urllib.request

    uri = settings.tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
            resp.read()
        return None
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


def _checkpoint_step(ckpt: Checkpoint) -> int | str:
    try:
        return torch.load(ckpt.folder / "trainer.pt", weights_only=True)["trainer"]["step"]
    except Exception:
        return "?"


def _end_run_unreachable() -> None:
    """End the active run in this process without minutes of retries: one quick attempt to
    mark it FAILED (a server that came back gets it), else leave it RUNNING on the server."""
    import os

    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    try:
        with contextlib.suppress(Exception):
            mlflow.end_run(status="FAILED")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _logger(on_metrics):
    import mlflow

    def log(m: dict, step: int) -> None:
        mlflow.log_metrics(m, step=step)
        if on_metrics is not None:
            on_metrics(m, step)

    return log


# A panel run logs about 20 metrics per split and backtest window: the summary shows the headline ones.
PANEL_SUMMARY = (
    "test_smape",
    "test_mase",
    "test_owa",
    "test_msis",
    "test_coverage",
    "test_wql",
    "test_seasonal_naive_owa",
)


def _print_summary(job: Job, final: dict, state: dict, run_id: str) -> None:
    if job.task == "panel":
        final = {k: v for k, v in final.items() if k in PANEL_SUMMARY or k.endswith("/owa") and "naive" not in k}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in final.items())
    print(f"done in {state['elapsed']:.0f}s ({state['step']} steps, {state['stop']}): {shown}")
    print(f"run id: {run_id}")


def _git_tags() -> dict:
    with contextlib.suppress(Exception):
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        ).stdout.strip()
        if sha:
            return {"mlflow.source.git.commit": sha}
    return {}
