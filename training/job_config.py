"""A training job's configuration: typed dataclasses that are the whole contract, read top to bottom.

A job is a task (``char`` or ``forecast``; the sine toy is a forecast job), its data options, its
model options and :class:`TrainSettings`. It is built from a preset plus the flags that were given
(:mod:`rnnops.training.jobs`), logged as MLflow params and as ``config/job.json``, and saved beside
the checkpoint so ``--resume`` can rebuild it: :meth:`to_dict` and :func:`job_from_dict` are that
JSON form, unchanged from the untyped dicts of earlier versions (an option that is ``None`` is
left out, so a run logged before this module existed reads back the same).

Flags reach a job as dotted keys (``"model.hidden_size"``, ``"train.lr"``, ``"lookback"``):
:func:`with_overrides` applies them, and refuses a key the job does not have in one line.
``rnnops tune`` names its search dimensions with the same keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import ClassVar

from rnnops.errors import RnnopsError
from rnnops.training.trainer import TrainSettings


@dataclass
class CharModelOptions:
    """A char model's options (``CharModelConfig`` less what the data decides: the vocabulary)."""

    cell: str = "lstm"
    hidden_size: int = 512
    num_layers: int = 1
    embed_dim: int = 64
    dropout: float = 0.0
    heads: int | None = None  # mlstm only (default 4)
    ff_mult: float | None = None  # modern cells only: MLP width / model width (0 = none)


@dataclass
class ForecastModelOptions:
    """A forecaster's options (``ForecasterConfig`` less what the data decides: sizes, names, scaler)."""

    cell: str = "gru"
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0
    norm: str = "revin"  # "revin" (windowed) | "fixed" (stateful)
    linear_skip: bool = True  # revin only: an NLinear-style linear map of the window
    heads: int | None = None
    ff_mult: float | None = None
    arch: str | None = None  # None: "rnn" (the cell over every observation); "segrnn": over segments
    segment_length: int | None = None  # segrnn only
    quantiles: list[float] | None = None  # prediction-interval levels; None: no intervals


@dataclass
class CharJob:
    """Train a char-level language model on a text (nanoGPT's 90/10 split)."""

    task: ClassVar[str] = "char"
    command: ClassVar[str] = "char"  # `rnnops train char`; runs go to the experiment rnnops-char
    model_options: ClassVar[type] = CharModelOptions
    data: str  # a named dataset (tinyshakespeare) or a path to a UTF-8 text file
    preset: str | None
    seq_len: int  # characters per training sequence
    model: CharModelOptions
    train: TrainSettings


@dataclass
class ForecastJob:
    """Train a multi-step forecaster on a series (ETT's 12/4/4 split, else 70/10/20)."""

    task: ClassVar[str] = "forecast"
    command: ClassVar[str] = "forecast"
    model_options: ClassVar[type] = ForecastModelOptions
    data: str  # a named dataset (etth1, etth2), a CSV path, or "sine"
    preset: str | None
    features: str  # "M": every numeric column in and out; "S": the target column only
    target: str | None  # None: OT, else the last numeric column
    date_column: str | None  # None: detected
    fill: str | None  # "ffill", or None: missing values are an error
    lookback: int
    horizon: int
    model: ForecastModelOptions
    train: TrainSettings
    init_from: str | None = None  # --init-from, as PanelJob's
    parent_run: str | None = None


@dataclass
class PanelModelOptions:
    """A global panel forecaster's options (``PanelModelConfig`` less what the panel decides:
    horizon, season, inputs and their fitted statistics). See ``training/panel_model.py``."""

    cell: str = "gru"
    hidden_size: int = 128
    num_layers: int = 2
    segment_length: int = 24  # lookback steps per recurrent step; must divide the lookback
    context_size: int = 16
    decoder_hidden: int = 64
    dropout: float = 0.0
    scaling: str = "standard"  # per window inside the model: standard | mean_abs (negbin's)
    seasonal_residual: bool = True
    likelihood: str | None = None  # None: the pinball loss over `quantiles`; else studentt | normal | negbin
    quantiles: list[float] | None = None  # None: panel_model.DEFAULT_QUANTILES


@dataclass
class PanelJob:
    """Train one global forecaster over a panel (long format: one row per series x timestamp);
    per-series splits by time (the M4 protocol), scored with the M4 metrics. Logged in the
    ``rnnops-forecast`` experiment like the single-series forecasters."""

    task: ClassVar[str] = "panel"
    command: ClassVar[str] = "forecast"  # `rnnops train forecast --id-column …`, experiment rnnops-forecast
    model_options: ClassVar[type] = PanelModelOptions
    data: str  # a CSV or Parquet path, or a named panel (m4-hourly)
    preset: str | None
    id_column: str
    date_column: str
    targets: list[str]
    static_columns: list[str]
    future_covariates: list[str]
    past_covariates: list[str]
    freq: str | None  # None: inferred (a series off it is an error); given: gaps filled as missing
    calendar: bool  # calendar features from the frequency (rnnops.calendar)
    lookback: int
    horizon: int
    backtest: int  # rolling origins scored (0: none); the last is the test window
    backtest_step: int | None  # stride between origins (None: the horizon)
    model: PanelModelOptions
    train: TrainSettings
    # --init-from: fine-tune the model of another run on this job's data (training/init_from.py).
    # The reference as given (a run id, NAME@ALIAS, NAME/3) and the run it named when this job was
    # built: the parent, whose logged model gives the weights (an alias may move on later).
    init_from: str | None = None
    parent_run: str | None = None
    # Stream the panel from Parquet instead of reading it into memory (training/panel_stream.py);
    # resolved when the job is built (``--stream``, else by the panel's size), so job.json says which.
    stream: bool = False


Job = CharJob | ForecastJob | PanelJob
JOBS: dict[str, type] = {"char": CharJob, "forecast": ForecastJob, "panel": PanelJob}
_SECTIONS = {"model", "train"}


def to_dict(job: Job) -> dict:
    """The JSON form (``config/job.json``, the checkpoint's job.json): ``task`` first, ``None`` model
    options left out, and so are optional job fields that are unset (``init_from``): a job without
    them reads and logs as it did before they existed."""
    out: dict = {"task": job.task}
    for f in fields(job):
        value = getattr(job, f.name)
        if value is None and f.default is None:
            continue
        if f.name == "model":
            value = {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
        elif f.name == "train":
            value = dataclasses.asdict(value)
        out[f.name] = value
    return out


def job_from_dict(d: dict) -> Job:
    """The typed job of a JSON form (this version's or an earlier one's); one line for what does not fit."""
    task = d.get("task")
    if task not in JOBS:
        raise RnnopsError(f"unknown task {task!r} in the job: use one of {', '.join(JOBS)}")
    cls = JOBS[task]
    values = {}
    for f in fields(cls):
        if f.name not in d:
            if f.default is not dataclasses.MISSING:  # an optional field, unset (or written before it existed)
                continue
            raise RnnopsError(f"the {task} job has no {f.name!r}: it was not written by rnnops train")
        values[f.name] = d[f.name]
    values["model"] = _build(cls.model_options, d["model"], "model")
    values["train"] = _build(TrainSettings, d["train"], "train")
    unknown = sorted(set(d) - {f.name for f in fields(cls)} - {"task"})
    if unknown:
        raise RnnopsError(f"the {task} job has unknown keys {', '.join(unknown)}")
    return cls(**values)


def flat_params(job: Job) -> dict:
    """The MLflow params: the JSON form flattened with dotted keys (``model.hidden_size``)."""
    out = {}
    for k, v in to_dict(job).items():
        if isinstance(v, dict):
            out.update({f"{k}.{name}": value for name, value in v.items()})
        else:
            out[k] = v
    return out


def with_overrides(job: Job, overrides: dict) -> Job:
    """``job`` with flag values over it: ``model.x`` / ``train.x`` keys go to those sections, the rest
    to the job; a ``None`` value (a flag not given) leaves the preset's value."""
    top, sections = {}, {s: {} for s in _SECTIONS}
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.rpartition(".")
        target = sections.get(section) if section else top
        if target is None:
            raise RnnopsError(f"unknown job key {key!r}: use a field of the job, or model.<name> / train.<name>")
        target[name] = value
    known = {f.name for f in fields(job)} - _SECTIONS
    bad = sorted(set(top) - known)
    if bad:
        raise RnnopsError(f"unknown {job.task} job option(s) {', '.join(bad)}: use one of {', '.join(sorted(known))}")
    for name, values in sections.items():
        current = getattr(job, name)
        valid = {f.name for f in fields(current)}
        bad = sorted(set(values) - valid)
        if bad:
            raise RnnopsError(
                f"unknown {name} option(s) {', '.join(bad)} for a {job.task} job: use one of {', '.join(sorted(valid))}"
            )
        top[name] = dataclasses.replace(current, **values)
    return dataclasses.replace(job, **top)


def _build(cls, values: dict, section: str):
    valid = {f.name for f in fields(cls)}
    bad = sorted(set(values) - valid)
    if bad:
        raise RnnopsError(
            f"unknown {section} option(s) {', '.join(bad)} in the job: use one of {', '.join(sorted(valid))}"
        )
    return cls(**values)
