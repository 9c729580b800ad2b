"""``rnnops tune forecast|char``: hyperparameter search with Optuna, every trial an MLflow run.

- one **parent** MLflow run per study (named ``tune <study>``), each trial a **nested** run made
  by the ordinary training job (:func:`rnnops.training.jobs.run_job`: params, metrics, curves,
  the logged model), tagged with its trial number;
- the objective is the job's validation metric (``val_mse`` / ``val_loss``; a panel's
  ``val_mase``, or ``val_wql`` with ``--metric wql``; lower is better; the test split is never
  looked at); each evaluation is reported to Optuna and a
  :class:`optuna.pruners.MedianPruner` stops trials that trail the median of earlier ones at the
  same step (the pruned run ends KILLED, its stop reason says so);
- **resumable**: the study lives in ``--storage`` (default: ``optuna.db`` beside a local
  ``sqlite:///…/mlflow.db``, or in the cache folder when tracking goes to a server), its name
  defaults to one made from the job, and the parent run id is kept in the study, so running the
  same command again continues the same study under the same parent run;
- the parent run gets the best trial's params and value, Optuna's optimisation-history and
  parameter-importance plots (its matplotlib backend) and ``best_command.txt``: the best config as
  a ready-to-run ``rnnops train`` command, also printed.

The search space: :data:`SPACES` per task (and arch; a panel's segment lengths are its
lookback's divisors), minus every parameter given as a flag
(a flag fixes it), restricted with ``--params``, widened or narrowed with ``--space
name=low:high[:log]`` or ``name=a|b|c``. An empty space is refused before any training.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rnnops import settings
from rnnops.errors import RnnopsError

if TYPE_CHECKING:
    from rnnops.training.job_config import Job


@dataclass(frozen=True)
class Param:
    """One dimension: floats in [low, high] (log-uniform when ``log``), ints, or choices."""

    name: str  # the job key, e.g. "train.lr" or "model.hidden_size"
    flag: str  # the rnnops train flag, e.g. "--lr"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    integer: bool = False

    def suggest(self, trial):
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def _p(name, flag, *a, **kw) -> Param:
    return Param(name, flag, *a, **kw)


COMMON_FORECAST = [
    _p("train.lr", "--lr", 3e-4, 3e-3, log=True),
    _p("model.dropout", "--dropout", 0.0, 0.6),
    _p("train.batch_size", "--batch-size", choices=(16, 32, 64, 128)),
]
SPACES = {
    ("forecast", "rnn"): [_p("model.hidden_size", "--hidden-size", choices=(32, 64, 96, 128)), *COMMON_FORECAST],
    ("forecast", "segrnn"): [
        _p("model.hidden_size", "--hidden-size", choices=(128, 256, 384, 512)),
        _p("model.segment_length", "--segment-length", choices=(8, 12, 16, 24, 32, 48)),
        *COMMON_FORECAST,
    ],
    # A global forecaster over a panel (training/panel_model.py); the segment lengths offered are the
    # lookback's divisors (panel_space), these are for a lookback of 336 (M4 Hourly's).
    ("panel", "rnn"): [
        _p("model.hidden_size", "--hidden-size", choices=(32, 64, 128, 256)),
        _p("model.num_layers", "--layers", choices=(1, 2, 3)),
        _p("model.segment_length", "--segment-length", choices=(12, 24, 48)),
        _p("model.cell", "--cell", choices=("gru", "lstm")),
        _p("train.lr", "--lr", 1e-3, 1e-2, log=True),
        _p("model.dropout", "--dropout", 0.0, 0.3),
        _p("train.batch_size", "--batch-size", choices=(64, 128, 256)),
    ],
    ("char", "rnn"): [
        _p("model.hidden_size", "--hidden-size", choices=(256, 384, 512)),
        _p("train.lr", "--lr", 1e-3, 6e-3, log=True),
        _p("seq_len", "--seq-len", choices=(64, 100, 128)),
        _p("train.batch_size", "--batch-size", choices=(16, 32)),
        _p("model.dropout", "--dropout", 0.0, 0.3),
    ],
}


def space_for(
    task: str,
    arch: str,
    fixed: dict,
    params: str | None,
    overrides: list[str] | None,
    lookback: int | None = None,
) -> list[Param]:
    """The search space: the default for the task, minus flags given, as restricted / changed.
    A panel's (``lookback`` given) offers the lookback's divisors as segment lengths."""
    space = {p.name: p for p in SPACES[(task, arch if task == "forecast" else "rnn")]}
    if task == "panel" and lookback:
        space["model.segment_length"] = panel_segments(int(lookback))
    for text in overrides or []:
        p = _parse_space(text, space)
        space[p.name] = p
    short = {p.name.split(".")[-1]: p.name for p in space.values()}
    if params is not None:
        wanted = [w.strip().replace("-", "_") for w in params.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in short]
        if unknown:
            raise RnnopsError(f"--params {', '.join(unknown)}: not in the search space ({', '.join(short)})")
        space = {short[w]: space[short[w]] for w in wanted}
    given = [name for name in space if fixed.get(name) is not None]
    for name in given:
        del space[name]
    if not space:
        why = (
            f"every parameter of it is fixed by a flag ({', '.join(short_name(n) for n in given)})"
            if given
            else "--params selects nothing"
        )
        raise RnnopsError(
            f"the search space is empty: {why}; drop a flag, or name what to tune with --params ({', '.join(short)})"
        )
    return list(space.values())


def panel_segments(lookback: int, most: int = 48, steps: int = 64) -> Param:
    """Segment lengths that tile the lookback: its divisors up to ``most`` steps that leave the
    encoder at most ``steps`` recurrent steps (6 .. 48 for 336: 56 down to 7 steps)."""
    divisors = [d for d in range(2, min(most, lookback) + 1) if lookback % d == 0 and lookback // d <= steps]
    return Param("model.segment_length", "--segment-length", choices=tuple(divisors or [lookback]))


def short_name(name: str) -> str:
    return name.split(".")[-1]


def _parse_space(text: str, space: dict) -> Param:
    """``lr=1e-4:3e-3:log``, ``hidden_size=64|128|256``, ``dropout=0:0.5``."""
    key, _, spec = text.partition("=")
    key = key.strip().replace("-", "_")
    by_short = {short_name(n): p for n, p in space.items()}
    if key not in by_short or not spec.strip():
        raise RnnopsError(
            f"--space {text!r}: want NAME=LOW:HIGH[:log] or NAME=A|B|C with NAME one of {', '.join(by_short)}"
        )
    base = by_short[key]
    if "|" in spec or (":" not in spec):
        items = [v.strip() for v in spec.split("|") if v.strip()]
        if not items:
            raise RnnopsError(f"--space {text!r}: no choices")
        words = any(isinstance(c, str) for c in base.choices)  # cell=gru|lstm
        return Param(base.name, base.flag, choices=tuple(v if words else _number(v, text) for v in items))
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise RnnopsError(f"--space {text!r}: want LOW:HIGH or LOW:HIGH:log")
    low, high = _number(parts[0], text), _number(parts[1], text)
    log = len(parts) == 3
    if not low < high or (log and low <= 0):
        raise RnnopsError(
            f"--space {text!r}: the range is empty (need LOW < HIGH{', both > 0 for log' if log else ''})"
        )
    integer = isinstance(low, int) and isinstance(high, int) and key != "dropout"
    return Param(base.name, base.flag, low, high, log, integer=integer)


def _number(v: str, text: str):
    try:
        f = float(v)
    except ValueError:
        raise RnnopsError(f"--space {text!r}: {v!r} is not a number") from None
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


# A panel study minimises validation MASE (the M4 point metric, early stopping's), or WQL (the
# quantiles') with `--metric wql`; the test split is never looked at.
PANEL_METRIC = "val_mase"
PANEL_METRICS = ("val_mase", "val_wql")

# ----------------------------------------------------------------------------- storage


def default_storage() -> str:
    """sqlite beside a local sqlite MLflow store, else in the cache folder."""
    uri = settings.tracking_uri()
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :]).expanduser()
        return f"sqlite:///{path.with_name('optuna.db')}"
    folder = settings.cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def default_study_name(job: Job, metric: str = "val_mase") -> str:
    m = job.model
    data = os.path.basename(str(job.data)).replace(" ", "_")
    if job.task == "char":
        return f"char-{m.cell}-{data}-{job.preset}"
    if job.task == "panel":
        return f"panel-{data}-{'+'.join(job.targets)}-L{job.lookback}-H{job.horizon}-{job.preset}-{metric}"
    return f"forecast-{m.arch or 'rnn'}-{m.cell}-{data}-{job.features}-L{job.lookback}-H{job.horizon}-{job.preset}"


# ----------------------------------------------------------------------------- the command


def command_for(job: Job, base_flags: list[str], params: dict) -> str:
    """The ready-to-run ``rnnops train`` command for the base flags plus a trial's params."""
    space = {p.name: p for ps in SPACES.values() for p in ps}
    flags = list(base_flags)
    for name, value in params.items():
        flags += [space[name].flag, f"{value:.6g}" if isinstance(value, float) else str(value)]
    return "rnnops train " + job.command + " " + " ".join(shlex.quote(f) for f in flags)


def tune(
    job: Job,
    base_flags: list[str],
    space: list[Param],
    trials: int,
    timeout: float | None,
    storage: str | None,
    study_name: str | None,
    seed: int = 0,
    experiment: str | None = None,
    metric: str | None = None,
) -> dict:
    """Run (or continue) the study; returns a summary (best value, params, command, parent run).
    ``metric``: the validation metric minimised (default: the task's, ``val_mase`` for a panel;
    ``val_wql`` there too)."""
    try:
        import optuna
    except ImportError:
        raise RnnopsError("rnnops tune needs optuna: pip install 'rnnops[train]'") from None
    import mlflow

    from rnnops.contract import VAL_METRIC
    from rnnops.tracking import connect
    from rnnops.training import runinfo
    from rnnops.training.job_config import to_dict, with_overrides
    from rnnops.training.jobs import run_job

    connect()
    if job.task == "panel":
        metric = metric or PANEL_METRIC
        if metric not in PANEL_METRICS:
            raise RnnopsError(f"a panel study minimises {' or '.join(PANEL_METRICS)}, not {metric}")
    else:
        metric = VAL_METRIC["char" if job.task == "char" else "forecaster"]
    storage = storage or default_storage()
    name = study_name or default_study_name(job, metric)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            load_if_exists=True,
            direction="minimize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        )
    except Exception as exc:  # SQLAlchemy / Optuna storage errors: one line
        raise RnnopsError(f"cannot open the Optuna storage {storage}: {str(exc).splitlines()[0]}") from None
    experiment = experiment or f"rnnops-{job.command}"
    parent_id = study.user_attrs.get("mlflow_parent_run")
    if parent_id:  # resumed: the trials go where the parent is (nested runs take the current experiment)
        mlflow.set_experiment(experiment_id=mlflow.get_run(parent_id).info.experiment_id)
        parent = mlflow.start_run(run_id=parent_id)
    else:
        mlflow.set_experiment(experiment)
        parent = mlflow.start_run(run_name=f"tune {name}")
        study.set_user_attr("mlflow_parent_run", parent.info.run_id)
        mlflow.set_tags(
            {
                "rnnops.task": job.task,
                "rnnops.tune.study": name,
                "rnnops.tune.storage": storage,
                runinfo.DESCRIPTION_TAG: f"Optuna study {name}: tuning {', '.join(p.name for p in space)}",
            }
        )
        mlflow.log_dict(
            {"base_job": to_dict(job), "space": [p.__dict__ for p in space], "base_flags": base_flags},
            "tune/study.json",
        )
    done_before = len(study.trials)
    print(
        f"study {name} in {storage} ({done_before} trials so far); parent MLflow run {parent.info.run_id}",
        file=sys.stderr,
    )

    class Pruned(optuna.TrialPruned, runinfo.StopRun):
        pass

    def objective(trial):
        params = {p.name: p.suggest(trial) for p in space}
        t_job = with_overrides(job, params)
        best = {"value": math.inf}

        def report(m: dict, step: int) -> None:
            if not best.get("tagged"):  # inside the trial's own (nested) run
                mlflow.set_tags({"rnnops.tune.trial": str(trial.number), "rnnops.tune.study": name})
                best["tagged"] = True
            if metric not in m:
                return
            best["value"] = min(best["value"], m[metric])
            trial.report(m[metric], step)
            if trial.should_prune():
                raise Pruned(
                    f"pruned by Optuna at step {step}: {metric} {m[metric]:.4f} trails the median of earlier trials"
                )

        trial.set_user_attr("command", command_for(job, base_flags, params))
        try:
            run_id = run_job(t_job, experiment, on_metrics=report)
        except RnnopsError as exc:  # a config that cannot train (e.g. a segment that does not divide)
            raise optuna.TrialPruned(str(exc)) from None
        trial.set_user_attr("mlflow_run", run_id)
        final = mlflow.get_run(run_id).data.metrics
        return float(final.get(metric, best["value"]))

    status = "FAILED"
    try:
        study.optimize(objective, n_trials=trials, timeout=timeout, catch=())
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        print(
            f"\ninterrupted: the study is saved in {storage}; run the same command again to continue it",
            file=sys.stderr,
        )
        raise
    finally:
        try:
            summary = _log_parent(study, metric, job, base_flags, storage)
        finally:
            mlflow.end_run(status=status)
    return summary


def _log_parent(study, metric: str, job: Job, base_flags: list[str], storage: str) -> dict:
    import mlflow
    import optuna

    from rnnops.training import runinfo

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
    summary = {
        "study": study.study_name,
        "storage": storage,
        "trials": len(study.trials),
        "complete": len(done),
        "pruned": pruned,
        "parent_run": mlflow.active_run().info.run_id if mlflow.active_run() else None,
    }
    if not done:
        print("no trial completed yet: nothing to report", file=sys.stderr)
        return summary
    best = study.best_trial
    command = best.user_attrs.get("command") or command_for(job, base_flags, best.params)
    summary.update(
        best_value=best.value,
        best_params=best.params,
        best_trial=best.number,
        command=command,
        best_run=best.user_attrs.get("mlflow_run"),
    )
    mlflow.log_metrics({f"best_{metric}": best.value, "trials_complete": len(done), "trials_pruned": pruned})
    mlflow.set_tags(
        {
            "rnnops.tune.best_command": command,
            "rnnops.tune.best_run": best.user_attrs.get("mlflow_run", ""),
            runinfo.DESCRIPTION_TAG: f"best {metric} {best.value:.4f} (trial {best.number} of "
            f"{len(study.trials)}, {pruned} pruned): {command}",
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "best_command.txt").write_text(command + "\n")
        mlflow.log_artifact(str(Path(tmp) / "best_command.txt"), "tune")
        for path in _plots(study, Path(tmp)):
            mlflow.log_artifact(str(path), "tune")
    print(
        f"best {metric} {best.value:.4f} (trial {best.number}; {len(done)} complete, {pruned} pruned); "
        f"train it with:\n  {command}"
    )
    return summary


def _plots(study, folder: Path) -> list[Path]:
    """Optuna's history and importance plots, with its matplotlib backend (no browser needed)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out = []
    plots = [("optimization_history.png", ovm.plot_optimization_history)]
    if len([t for t in study.trials if t.value is not None]) >= 2 and len(study.best_trial.params) >= 2:
        plots.append(("param_importances.png", ovm.plot_param_importances))
    for fname, fn in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna flags its matplotlib backend as experimental
            try:
                ax = fn(study)
            except Exception as exc:  # e.g. importances need some variance across trials
                print(f"({fname}: not drawn: {str(exc).splitlines()[0]})", file=sys.stderr)
                continue
        fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        fig.savefig(folder / fname, dpi=90)
        plt.close(fig)
        out.append(folder / fname)
    return out
