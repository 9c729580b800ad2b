"""Fine-tuning: ``rnnops train forecast --init-from RUN_ID|NAME@ALIAS --data NEW.parquet``, for
panel models and single-series forecasters (char models are refused).

A new MLflow run trains its parent's model further on new data. The **parent** is a run's logged
model (the weights and ``config.json`` of :mod:`rnnops.training.logged_model`); a registry reference
(``NAME@ALIAS``, ``NAME/3``, ``models:/…``) names the run its version was exported from, looked
up by the registry stage (the root command hands :func:`rnnops.registry.cli.source_run` over: the
training stage never imports the registry). The job records both (``init_from``: the reference as
given, ``parent_run``: the run it named then, since an alias moves), and so does the run (tags
``rnnops.init_from`` and ``rnnops.parent_run``, ``config/init_from.json``).

**What the child keeps of its parent**: the whole model (architecture, head, quantile levels,
the fitted input statistics) and the data's shape (target, static, past and future covariate
columns with their kinds, frequency, calendar features, lookback, horizon): the new job takes
them from the parent's ``config/job.json``, and a flag that says otherwise is one line naming it.
The training settings (``--lr``, ``--steps``, ``--time-budget``, ``--batch-size``, ``--seed``,
the preset's loop), ``--dropout``, ``--backtest`` and the id and date columns' names are the new
run's own. The new panel is checked against the parent's model after it is read (one line for
what differs and how to fix it).

**New static categories grow the vocabulary** (rather than going to the unknown bucket): a store
or category first seen in the new data gets its own embedding row, appended after the parent's
vocabulary (whose codes keep their meaning) and initialised from the parent's unknown-bucket row,
which training keeps trained (``unknown_dropout``). So before its first step the child forecasts
what the parent would have (new categories as unknown), and fine-tuning then learns them, which
is what new data is for; mapping them to the unknown bucket would leave every new store sharing
one row forever. The embeddings keep their widths (``static_embedding_dims``) so the parent's
weights fit, and the child's logged vocabulary is the grown one (the export contract carries it);
the unknown bucket stays for categories first seen at prediction time.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from rnnops.errors import RnnopsError
from rnnops.training.panel import Panel, StaticColumn, split_list

# The parent's job and model are small downloads: no tqdm bars from MLflow in a one-line error's way
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
RUNS_URI = re.compile(r"^runs:/([0-9a-f]{32})(/.*)?$")
INIT_ARTIFACT = "config/init_from.json"
TAG_PARENT_RUN = "rnnops.parent_run"
TAG_INIT_FROM = "rnnops.init_from"

# A registry reference -> the run id its version came from (the registry stage's lookup).
SourceRun = Callable[[str], str]

# The job keys a child takes from its parent, per task, with their flags: a flag given with
# another value is refused. Model options not listed are the parent's too (no flag sets them).
INHERITED = {
    "panel": {
        "targets": "--target",
        "static_columns": "--static-columns",
        "future_covariates": "--future-covariates",
        "past_covariates": "--past-covariates",
        "freq": "--freq",
        "calendar": "--calendar/--no-calendar",
        "lookback": "--lookback",
        "horizon": "--horizon",
        "model.cell": "--cell",
        "model.hidden_size": "--hidden-size",
        "model.num_layers": "--layers",
        "model.segment_length": "--segment-length",
        "model.likelihood": "--likelihood",
        "model.quantiles": "--quantiles",
    },
    "forecast": {
        "features": "--features",
        "target": "--target",
        "lookback": "--lookback",
        "horizon": "--horizon",
        "model.cell": "--cell",
        "model.arch": "--arch",
        "model.hidden_size": "--hidden-size",
        "model.num_layers": "--layers",
        "model.heads": "--heads",
        "model.ff_mult": "--ff-mult",
        "model.norm": "--norm",
        "model.linear_skip": "--linear-skip",
        "model.segment_length": "--segment-length",
        "model.quantiles": "--quantiles",
    },
}
# the new file's key columns may have other names
RENAMABLE = {"panel": ("id_column", "date_column"), "forecast": ("date_column",)}
OWN_MODEL_OPTIONS = ("dropout",)  # a training setting: the child's own


@dataclass(frozen=True)
class Parent:
    """The run a fine-tuning run starts from: the reference as given, its run id, its job."""

    ref: str
    run_id: str
    job: dict  # its config/job.json

    @property
    def task(self) -> str:
        return self.job.get("task", "?")


def find_parent(ref: str, source_run: SourceRun | None) -> Parent:
    """The parent ``ref`` names (a run id, ``runs:/…``, or a registry reference) and its job;
    one line for a run that cannot be fine-tuned."""
    run_id = parent_run_of(ref, source_run)
    parent = Parent(ref, run_id, parent_job(run_id))
    if parent.task not in INHERITED:
        raise RnnopsError(
            f"--init-from {ref}: run {run_id} trained a {parent.task} model; fine-tuning takes forecasters "
            "(`rnnops train forecast`, panels or one series) for now"
        )
    return parent


def parent_run_of(ref: str, source_run: SourceRun | None) -> str:
    """The run id ``ref`` names: a run id, a ``runs:/`` URI, or a registry reference."""
    ref = ref.strip()
    if RUN_ID.match(ref):
        return ref
    found = RUNS_URI.match(ref)
    if found:
        return found.group(1)
    from rnnops.refs import parse_ref

    parsed = parse_ref(ref)
    if parsed.source != "registry":
        raise RnnopsError(
            f"--init-from {ref}: a {parsed.source} reference holds no trainable weights; give a run id "
            "or a registry reference (NAME@ALIAS, NAME/VERSION)"
        )
    if source_run is None:  # training.cli's app used on its own, not through the `rnnops` command
        raise RnnopsError(f"--init-from {ref}: looking up a registry version needs `rnnops train …`")
    return source_run(ref)


def parent_job(run_id: str) -> dict:
    """The parent run's ``config/job.json``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from rnnops.tracking import connect

    connect()
    try:
        mlflow.get_run(run_id)
    except MlflowException:
        raise RnnopsError(
            f"--init-from: no run {run_id} in the tracking store; give a run id of `mlflow runs`"
        ) from None
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/config/job.json")
    except Exception:  # MLflow raises several kinds for a missing artifact
        raise RnnopsError(
            f"--init-from: run {run_id} has no config/job.json (not an `rnnops train` run, or it never started)"
        ) from None


def fine_tune_overrides(parent: Parent, overrides: dict, task: str) -> dict:
    """The new ``task`` job's overrides: the parent's columns, windows and model under the flags
    that were given (``None``: not given); one line for a flag that contradicts the parent."""
    job, ref = parent.job, parent.ref
    if parent.task != task:
        kinds = {"panel": "a panel model (--id-column)", "forecast": "a single-series forecaster"}
        raise RnnopsError(
            f"--init-from {ref}: run {parent.run_id} trained {kinds[parent.task]}, and this is "
            f"{kinds[task]}; give data of the parent's kind"
        )
    merged = {k: v for k, v in overrides.items() if v is not None}
    for key in RENAMABLE[parent.task]:
        merged.setdefault(key, job[key])
    model = job["model"]
    flags = INHERITED[parent.task]
    keys = dict.fromkeys(list(flags) + [f"model.{k}" for k in model if k not in OWN_MODEL_OPTIONS])
    for key in keys:
        section, _, name = key.rpartition(".")
        theirs = model.get(name) if section else job.get(name)
        if key == "model.arch":
            theirs = theirs or "rnn"  # the JSON form leaves the default out
        if key == "freq" and theirs is None:  # the parent's was inferred: checked once the panel is read
            continue
        if key in merged and not _same(merged[key], theirs):
            flag = flags.get(key, key)
            raise RnnopsError(
                f"--init-from {ref}: {flag} {_shown(merged[key])} differs from the parent run's "
                f"{_shown(theirs)}; a fine-tuned model keeps its parent's inputs, windows and architecture: "
                f"drop {flag.split('/')[0]}, or train a new model without --init-from"
            )
        if theirs is not None or not section:
            merged[key] = theirs
    return {**merged, "init_from": ref, "parent_run": parent.run_id}


def _same(given, theirs) -> bool:
    """Whether a flag's value and the parent job's say the same (``"0.1,0.5"`` and ``[0.1, 0.5]``,
    ``"28"`` and ``28``)."""
    return _norm(given) == _norm(theirs)


def _norm(v):
    if v is None:
        return None
    items = split_list(v) if isinstance(v, str) else list(v) if isinstance(v, list | tuple) else [v]
    return [float(x) if _is_number(x) else x for x in items]


def _is_number(v) -> bool:
    if isinstance(v, bool):
        return False
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _shown(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, list | tuple):
        return ",".join(map(str, v)) or "none"
    return str(v)


# ---------------------------------------------------------------- the model


@dataclass
class FineTuneStart:
    """Where a fine-tuning run starts: the new panel (its static codes in the grown vocabulary),
    the model with its parent's weights, and what was added."""

    panel: Panel
    model: torch.nn.Module
    init_from: str
    parent_run: str
    new_categories: dict[str, list[str]] = field(default_factory=dict)  # column -> categories added

    def record(self) -> dict:
        """``config/init_from.json``."""
        return {
            "init_from": self.init_from,
            "parent_run": self.parent_run,
            "new_categories": self.new_categories,
        }


def start_panel(ref: str, run_id: str, panel: Panel, dropout: float) -> FineTuneStart:
    """The parent's panel model, checked against the new ``panel``, its vocabularies grown by the
    new categories; ``dropout`` is the child's."""
    from rnnops.training.logged_model import load_model
    from rnnops.training.panel_model import PanelForecaster, PanelModelConfig

    loaded = load_model(run_id)
    if loaded.kind != "panel":
        raise RnnopsError(f"--init-from {ref}: run {run_id} logged a {loaded.kind} model, not a panel model")
    spec = loaded.spec
    parent = PanelModelConfig(**spec["config"])
    _check_panel(ref, run_id, spec, parent, panel)
    statics, grown, added = [], [], {}
    parents = {s["name"]: s for s in spec["inputs"]["static"]}
    for s in panel.static:
        if s.kind != "categorical":
            statics.append(s)
            continue
        column, new = _grow(s, tuple(parents[s.name]["vocabulary"]))
        statics.append(column)
        grown.append(len(column.vocabulary))
        if new:
            added[s.name] = list(new)
    config = replace(
        parent,
        static_cardinalities=tuple(grown),
        static_embedding_dims=parent.embedding_dims,
        dropout=float(dropout),
    )
    model = PanelForecaster(config)
    state = loaded.model.state_dict()
    for i, n in enumerate(grown):  # new rows start as the unknown bucket's
        key = f"embeddings.{i}.weight"
        old = state[key]
        state[key] = torch.cat([old, old[:1].expand(n + 1 - len(old), -1)])
    model.load_state_dict(state)
    if added:
        shown = "; ".join(f"{k}: {', '.join(v[:5])}{' ...' if len(v) > 5 else ''}" for k, v in added.items())
        print(f"new static categories (their embeddings start as the unknown bucket's): {shown}", file=sys.stderr)
    print(f"fine-tuning run {run_id} ({ref})", file=sys.stderr)
    return FineTuneStart(replace(panel, static=tuple(statics)), model, ref, run_id, added)


def _grow(column: StaticColumn, vocabulary: tuple[str, ...]) -> tuple[StaticColumn, tuple[str, ...]]:
    """``column`` recoded in ``vocabulary`` + its new categories (sorted), and those categories.
    Code 0 (the unknown bucket) stays 0."""
    new = tuple(sorted(set(column.vocabulary) - set(vocabulary)))
    grown = vocabulary + new
    index = {c: i + 1 for i, c in enumerate(grown)}
    recode = np.array([0] + [index[c] for c in column.vocabulary], np.int64)
    return replace(column, values=recode[column.values], vocabulary=grown), new


def _check_panel(ref: str, run_id: str, spec: dict, parent, panel: Panel) -> None:
    """One line for what the new panel has that the parent's model cannot read."""
    inputs = spec["inputs"]
    mine = {
        "frequency": (panel.freq, spec.get("freq"), "give data at the parent's frequency (or --freq to fill gaps)"),
        "calendar features": (
            list(panel.calendar_names),
            list(inputs["calendar"]),
            "the frequency decides them: give data at the parent's frequency",
        ),
        "static columns": (
            [f"{s.name} ({s.kind})" for s in panel.static],
            [f"{s['name']} ({s['kind']})" for s in inputs["static"]],
            "a static column must keep its kind: numbers stay numbers, strings stay categories",
        ),
        "past covariates": (list(panel.spec.past_covariates), list(inputs["past_covariates"]), ""),
        "future covariates": (list(panel.spec.future_covariates), list(inputs["future_covariates"]), ""),
        "target": (list(panel.spec.targets), list(inputs["targets"]), ""),
        "lookback and horizon": (
            [panel.spec.lookback, panel.spec.horizon],
            [parent.lookback, parent.horizon],
            "",
        ),
    }
    for what, (new, old, fix) in mine.items():
        if new != old:
            raise RnnopsError(
                f"--init-from {ref}: {what}: the new panel has {_shown(new)}, the parent run {run_id} was "
                f"trained on {_shown(old)}; {fix or 'give data with the same columns in the same roles'}"
            )


def start_forecaster(ref: str, run_id: str, config):
    """A single-series forecaster with its parent's weights: the parent's config (its scaler
    too: the weights were trained on that scale) with the child's dropout, after checking that the
    new series has the parent's columns and windows (``config``: the child's, built from its data)."""
    from dataclasses import asdict

    from rnnops.training.logged_model import load_model
    from rnnops.training.models import ForecasterConfig, build_model

    loaded = load_model(run_id)
    if loaded.kind != "forecaster":
        raise RnnopsError(f"--init-from {ref}: run {run_id} logged a {loaded.kind} model, not a forecaster")
    parent = ForecasterConfig(**loaded.spec["config"])
    for what in ("feature_names", "target_names", "lookback", "horizon"):
        new, old = getattr(config, what), getattr(parent, what)
        if new != old:
            raise RnnopsError(
                f"--init-from {ref}: {what.replace('_', ' ')}: the new series has {_shown(new)}, the parent run "
                f"{run_id} was trained on {_shown(old)}; give data with the same columns"
            )
    child = replace(parent, dropout=config.dropout)
    model = build_model("forecaster", asdict(child))
    model.load_state_dict(loaded.model.state_dict())
    print(f"fine-tuning run {run_id} ({ref})", file=sys.stderr)
    return model
