"""Training jobs: char models and forecasters, each logged as one MLflow run.

A job = data + model config + :class:`TrainSettings` + an evaluation protocol. The job dict
(``task``, ``data``, ``model``, ``train``, ...) is the whole configuration: it is logged as
params and as ``config/job.json``, and saved beside the checkpoint so ``--resume`` can rebuild it.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import rnnops
from rnnops import settings
from rnnops.errors import RnnopsError, Terminated
from rnnops.training import data as D
from rnnops.training import distributed
from rnnops.training.logged_model import log_model
from rnnops.training import intervals, runinfo
from rnnops.training.intervals import parse_levels
from rnnops.training.models import CharModel, CharModelConfig, Forecaster, ForecasterConfig, check_config
from rnnops.training.segrnn import DEFAULT_SEGMENT, SegRNN, check_segments
from rnnops.training.sampling import generate
from rnnops.training.trainer import Checkpoint, TrainSettings, train

EVAL_WINDOW = 256  # char protocol: validation cut into 256-char windows, each from a zero state

CHAR_PRESETS = {
    "tiny": dict(model=dict(hidden_size=64, num_layers=1, embed_dim=16), seq_len=32,
                 train=dict(steps=30, batch_size=16, lr=3e-3, warmup_steps=5, eval_every=15)),
    # Small batches win in a fixed CPU budget: more updates, and this machine runs a 16x64
    # LSTM step 4.5x faster than a 32x100 one (docs/training.md).
    "quick": dict(model=dict(hidden_size=384, num_layers=1, embed_dim=64), seq_len=64,
                  train=dict(steps=10000, batch_size=16, lr=3e-3, warmup_steps=50, eval_every=500,
                             time_budget_s=170.0, patience=100)),
    "full": dict(model=dict(hidden_size=512, num_layers=2, embed_dim=64, dropout=0.2), seq_len=128,
                 train=dict(steps=20000, batch_size=64, lr=3e-3, warmup_steps=100, eval_every=250,
                            time_budget_s=1800.0, patience=8)),
}

FORECAST_PRESETS = {
    "tiny": dict(model=dict(hidden_size=16), train=dict(steps=20, batch_size=32, lr=3e-3, warmup_steps=2, eval_every=10)),
    # ETT overfits quickly: a small GRU, dropout before the head, small batches and early
    # stopping on val MSE win (docs/training.md).
    "quick": dict(model=dict(hidden_size=64, dropout=0.3), train=dict(steps=3000, batch_size=32, lr=1e-3, warmup_steps=50,
                                                         eval_every=150, time_budget_s=150.0, patience=4)),
    "full": dict(model=dict(hidden_size=256, num_layers=2, dropout=0.1),
                 train=dict(steps=10000, batch_size=64, lr=1e-3, warmup_steps=100, eval_every=250,
                            time_budget_s=900.0, patience=6)),
}

# The modern cells (minGRU, minLSTM, mLSTM) run as residual stacks (training/stack.py): their
# presets replace the model section of the ones above (and the listed train settings).
_MODERN_CHAR = {
    "tiny": dict(model=dict(hidden_size=64, num_layers=1, embed_dim=16, ff_mult=2.0)),
    "quick": dict(model=dict(hidden_size=256, num_layers=2, embed_dim=64, ff_mult=2.0), train=dict(lr=2e-3)),
    "full": dict(model=dict(hidden_size=384, num_layers=3, embed_dim=64, ff_mult=4.0, dropout=0.1), seq_len=128,
                 train=dict(batch_size=32, lr=1.5e-3)),
}
_MODERN_FORECAST = {
    "tiny": dict(model=dict(hidden_size=16, ff_mult=2.0)),
    "quick": dict(model=dict(hidden_size=64, ff_mult=2.0, dropout=0.3)),
    "full": dict(model=dict(hidden_size=128, num_layers=2, ff_mult=2.0, dropout=0.1)),
}
CELL_PRESETS = {
    "char": {"mingru": _MODERN_CHAR, "minlstm": _MODERN_CHAR, "mlstm": _MODERN_CHAR},
    "forecast": {"mingru": _MODERN_FORECAST, "minlstm": _MODERN_FORECAST, "mlstm": _MODERN_FORECAST},
}

# --arch segrnn (training/segrnn.py): the paper's shape (one GRU layer, segments of 24, dropout
# 0.5 before the head) at a width and batch this CPU trains for enough epochs in the budget.
# These replace the preset's model and train settings whatever the cell.
SEGRNN_PRESETS = {
    "tiny": dict(model=dict(hidden_size=16, dropout=0.0), train=dict(steps=20, batch_size=32, lr=3e-3, warmup_steps=2,
                                                                       eval_every=10)),
    "quick": dict(model=dict(hidden_size=256, dropout=0.5),
                  train=dict(steps=6000, batch_size=64, lr=1e-3, warmup_steps=50, eval_every=150, time_budget_s=150.0,
                             patience=6)),
    "full": dict(model=dict(hidden_size=512, dropout=0.5),
                 train=dict(steps=20000, batch_size=256, lr=1e-3, warmup_steps=100, eval_every=100, time_budget_s=900.0,
                            patience=10)),
}


def _preset(presets: dict, task: str, cell: str, preset: str) -> dict:
    """The preset's values, with the cell's own preset (if any) over them; a fresh copy."""
    p = json.loads(json.dumps(presets[preset]))
    cell_p = CELL_PRESETS[task].get(cell, {}).get(preset)
    if cell_p:
        p["model"] = dict(cell_p.get("model", p["model"]))
        p["train"].update(cell_p.get("train", {}))
        p.update({k: v for k, v in cell_p.items() if k not in ("model", "train")})
    return p


def _check_model(kind: str, m: dict) -> None:
    check_config(kind, m["cell"], m.get("num_layers", 1), m.get("hidden_size", 1), m.get("heads"), m.get("ff_mult"))


SINE_JOB = dict(model=dict(hidden_size=32, norm="fixed"), lookback=50, horizon=10,
                train=dict(steps=300, batch_size=32, lr=5e-3, warmup_steps=10, eval_every=100))


def char_job(data: str, cell: str, preset: str, overrides: dict) -> dict:
    """The full job dict for a char model: preset values, then the flags that were given."""
    if preset not in CHAR_PRESETS:
        raise RnnopsError(f"unknown preset {preset!r}: use one of {', '.join(CHAR_PRESETS)}")
    p = _preset(CHAR_PRESETS, "char", cell, preset)
    job = {"task": "char", "data": data, "preset": preset, "seq_len": p["seq_len"],
           "model": {"cell": cell, "dropout": 0.0, **p["model"]}, "train": asdict(TrainSettings(**p["train"]))}
    _apply(job, overrides)
    _check_model("char", job["model"])
    return job


def forecast_job(data: str, cell: str, preset: str, overrides: dict, arch: str = "rnn") -> dict:
    if preset not in FORECAST_PRESETS:
        raise RnnopsError(f"unknown preset {preset!r}: use one of {', '.join(FORECAST_PRESETS)}")
    if arch not in ("rnn", "segrnn"):
        raise RnnopsError(f"unknown --arch {arch!r}: use rnn or segrnn")
    p = _preset(FORECAST_PRESETS, "forecast", cell, preset)
    if arch == "segrnn":
        p = {"model": dict(SEGRNN_PRESETS[preset]["model"]), "train": dict(SEGRNN_PRESETS[preset]["train"])}
    job = {"task": "forecast", "data": data, "preset": preset, "features": "M", "target": None,
           "date_column": None, "fill": None, "lookback": 96, "horizon": 96,
           "model": {"cell": cell, "norm": "revin", "linear_skip": True, "num_layers": 1, "dropout": 0.0, **p["model"]},
           "train": asdict(TrainSettings(**p["train"]))}
    if arch == "segrnn":
        job["model"].update(arch="segrnn", segment_length=DEFAULT_SEGMENT, linear_skip=False)
    _apply(job, overrides)
    _check_model("forecaster", job["model"])
    _check_forecast(job)
    return job


def _check_forecast(job: dict) -> None:
    """What a forecast job's flags can get wrong, each one line before any data is read."""
    m = job["model"]
    m["quantiles"] = parse_levels(m.get("quantiles"))
    if not m["quantiles"]:
        m.pop("quantiles", None)
    if m.get("arch", "rnn") == "segrnn":
        if m.get("norm", "revin") != "revin":
            raise RnnopsError("--arch segrnn normalises each window by itself (instance normalisation): use --norm revin")
        check_segments(int(job["lookback"]), int(job["horizon"]), int(m.get("segment_length", DEFAULT_SEGMENT)))
    elif "segment_length" in m:
        raise RnnopsError("--segment-length applies to --arch segrnn only")


def sine_job(overrides: dict) -> dict:
    p = json.loads(json.dumps(SINE_JOB))
    job = {"task": "forecast", "data": "sine", "preset": "sine", "features": "S", "target": None,
           "date_column": None, "fill": None, "lookback": p["lookback"], "horizon": p["horizon"],
           "model": {"cell": "gru", "num_layers": 1, "dropout": 0.0, "linear_skip": False, **p["model"]},
           "train": asdict(TrainSettings(**p["train"]))}
    _apply(job, overrides)
    return job


def _apply(job: dict, overrides: dict) -> None:
    """Flags override preset values; ``model.x`` / ``train.x`` keys go to those sections."""
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")
        (job[section] if section else job)[name] = value


# ---------------------------------------------------------------- running


def run_job(job: dict, experiment: str | None = None, resume_run: str | None = None, on_metrics=None) -> str:
    """Train ``job`` as an MLflow run (or continue ``resume_run``); returns the run id.

    Inside an active run (``rnnops tune``'s parent) the run is nested under it. ``on_metrics(m,
    step)`` sees every logged dict (tuning reports evaluations to its pruner; raising
    :class:`runinfo.StopRun` there ends the run as KILLED)."""
    import mlflow

    from rnnops.tracking import connect

    connect()
    torch.manual_seed(job["train"]["seed"])
    np.random.seed(job["train"]["seed"])
    setup = _setup_char(job) if job["task"] == "char" else _setup_forecast(job)
    group = distributed.current()  # None unless several processes train together (--nproc, torchrun)
    if group:
        setup = group.wrap(setup, job["train"]["seed"])
        if not group.is_main:
            return group.follow(job, setup, resume_run)  # rank 0 alone logs, evaluates, checkpoints
    experiment = experiment or f"rnnops-{job['task']}"
    if resume_run:
        run = mlflow.start_run(run_id=resume_run, log_system_metrics=runinfo.system_metrics())
    else:
        if mlflow.active_run() is None:
            mlflow.set_experiment(experiment)
        run = mlflow.start_run(run_name=runinfo.run_name(job), nested=True, log_system_metrics=runinfo.system_metrics())
        mlflow.log_params(_flatten(job))
        # the size a table of runs compares (the job's settings only imply it)
        mlflow.log_param("model.parameters", sum(p.numel() for p in setup["model"].parameters()))
        mlflow.set_tags({"rnnops.version": rnnops.__version__, "rnnops.task": job["task"], **_git_tags(),
                         runinfo.DESCRIPTION_TAG: f"training ({runinfo.run_name(job)})"})
        mlflow.log_input(setup["dataset"], context="training")
        mlflow.log_dict(job, "config/job.json")
    run_id = run.info.run_id
    if group:
        group.share(run_id)
        mlflow.set_tag("rnnops.world_size", group.world_size)
    ckpt = Checkpoint(settings.checkpoint_dir() / run_id)
    ckpt.save_job(job)
    print(f"MLflow run {run_id} (experiment {experiment}); checkpoints in {ckpt.folder}", file=sys.stderr)
    status = "FAILED"
    try:
        state = train(
            setup["model"], TrainSettings(**job["train"]), setup["sample_batch"], setup["loss_fn"],
            setup["evaluate"], _logger(on_metrics), ckpt,
            setup["items_per_batch"], setup["unit"], setup["val_key"], resume=resume_run is not None,
            clock=group.clock if group else time.perf_counter,
        )
        final = setup["finish"](state)
        # Logged at the last step so the run's summary shows these (best weights), not the last eval.
        mlflow.log_metrics({**final, "train_seconds": state["elapsed"], "steps": state["step"]}, step=state["step"])
        mlflow.set_tags({"rnnops.stop_reason": state["stop"], runinfo.DESCRIPTION_TAG: runinfo.description(job, final, state)})
        spec = {**setup["spec"], "run_id": run_id, "metrics": final, "rnnops_version": rnnops.__version__}
        with tempfile.TemporaryDirectory() as tmp:
            log_model(setup["model"], spec, Path(tmp))
        status = "FINISHED"
        _print_summary(job, final, state, run_id)
    except (KeyboardInterrupt, Terminated) as exc:  # Ctrl-C, or SIGTERM
        status = "KILLED"
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"\n{what}: checkpoint saved; continue with `rnnops train {job['task']} --resume {run_id}`", file=sys.stderr)
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
            f"`rnnops train {job['task']} --resume {run_id}` once the server is back"
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


def _print_summary(job: dict, final: dict, state: dict, run_id: str) -> None:
    shown = ", ".join(f"{k} {v:.4f}" for k, v in final.items())
    print(f"done in {state['elapsed']:.0f}s ({state['step']} steps, {state['stop']}): {shown}")
    print(f"run id: {run_id}")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _git_tags() -> dict:
    with contextlib.suppress(Exception):
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip()
        if sha:
            return {"mlflow.source.git.commit": sha}
    return {}


def _dataset_input(name: str, path: Path | None, sha: str):
    from mlflow.data.meta_dataset import MetaDataset

    if name in D.DATASETS:
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        source = HTTPDatasetSource(D.DATASETS[name].url)
    elif path is not None:
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        source = HTTPDatasetSource(path.resolve().as_uri())
    else:
        from mlflow.data.code_dataset_source import CodeDatasetSource

        source = CodeDatasetSource({"generator": "rnnops.training.data.make_sine"})
    return MetaDataset(source=source, name=name, digest=sha[:16])


# ---------------------------------------------------------------- char


def _setup_char(job: dict) -> dict:
    seq = int(job["seq_len"])
    text = D.load_text(job["data"], min_chars=seq + 2)
    if len(text.train) < seq + 1 or len(text.val) < 2:
        raise RnnopsError(f"{text.path} is too short for a training window of {seq} characters plus a validation split; use a longer text or --seq-len")
    config = CharModelConfig(vocab_size=len(text.vocab), **job["model"])
    model = CharModel(config)
    train_ids = torch.from_numpy(text.train)
    bs = job["train"]["batch_size"]
    offsets = torch.arange(seq + 1)

    def sample_batch(gen):
        starts = torch.randint(0, len(train_ids) - seq - 1 + 1, (bs,), generator=gen)
        chunk = train_ids[starts[:, None] + offsets]
        return chunk[:, :-1], chunk[:, 1:]

    def loss_fn(m, x, y):
        logits, _ = m(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    val_windows = _val_windows(text.val, EVAL_WINDOW)
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

    spec = {"kind": "char", "config": config.to_dict(), "vocab": text.vocab.chars,
            "dataset": {"name": text.name, "sha256": text.sha256}}
    return dict(model=model, sample_batch=sample_batch, loss_fn=loss_fn, evaluate=evaluate, finish=finish,
                items_per_batch=bs * seq, unit="chars", val_key="val_loss", spec=spec,
                dataset=_dataset_input(text.name, text.path, text.sha256))


def _val_windows(val: np.ndarray, width: int) -> torch.Tensor:
    """Non-overlapping windows of ``width`` inputs (+1 target); a short split is one window."""
    width = min(width, len(val) - 1)
    n = (len(val) - 1) // width
    idx = np.arange(n)[:, None] * width + np.arange(width + 1)
    return torch.from_numpy(val[idx])


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


def _setup_forecast(job: dict) -> dict:
    series = D.load_series(job["data"], job["features"], job["target"], job["date_column"], job["fill"])
    L, H = int(job["lookback"]), int(job["horizon"])
    if L < 1 or H < 1:
        raise RnnopsError("--lookback and --horizon must be at least 1")
    starts = {s: series.window_starts(s, L, H) for s in ("train", "val", "test")}
    mean, std = series.scaler()
    tidx = series.target_indices
    config = ForecasterConfig(n_features=len(series.feature_names), target_indices=tidx, lookback=L, horizon=H,
                              scaler_mean=mean.tolist(), scaler_std=std.tolist(),
                              feature_names=series.feature_names, target_names=series.target_names, **job["model"])
    model = SegRNN(config) if config.arch == "segrnn" else Forecaster(config)
    values = torch.tensor(series.values)  # a copy: pandas may hand out a read-only array
    std_t = torch.from_numpy(std[tidx])
    bs = job["train"]["batch_size"]

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
            sq += (err**2).sum().item(); ab += err.abs().sum().item()
            rl_sq += (rl**2).sum().item(); rl_ab += rl.abs().sum().item()
            n += err.numel()
        return {f"{split}_mse": sq / n, f"{split}_mae": ab / n,
                f"{split}_repeat_last_mse": rl_sq / n, f"{split}_repeat_last_mae": rl_ab / n}

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

    spec = {"kind": "forecaster", "config": config.to_dict(), "stateful": config.stateful,
            "dataset": {"name": series.name, "sha256": series.sha256},
            "freq": _infer_freq(series.dates)}
    return dict(model=model, sample_batch=sample_batch, loss_fn=loss_fn, evaluate=evaluate, finish=finish,
                items_per_batch=bs, unit="windows", val_key="val_mse", spec=spec,
                dataset=_dataset_input(series.name, series.path, series.sha256))


def _infer_freq(dates) -> str | None:
    if dates is None or len(dates) < 3:
        return None
    import pandas as pd

    return pd.infer_freq(pd.DatetimeIndex(dates[:100]))


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
            ax.fill_between(fut, band[0][i, :, -1], band[1][i, :, -1], color="tab:orange", alpha=0.25, lw=0,
                            label=band[2])
        ax.set_title(f"{series.name} {series.target_names[-1]}: test window starting at row {int(picks[i])}", fontsize=9)
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
