"""``rnnops tune forecast|char``: the same data, model and preset flags as ``rnnops train``, plus
the study's (``--trials``, ``--timeout``, ``--storage``, ``--study-name``, ``--params``,
``--space``). A flag given fixes that parameter; the rest of the search space is tuned
(training/tune.py)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from rnnops.errors import RnnopsError
from rnnops.training import cli as T

app = typer.Typer(help="Tune hyperparameters with Optuna; every trial is a nested MLflow run.", no_args_is_help=True)
Opt = typer.Option

Trials = Annotated[int, Opt("--trials", min=1, help="Trials to run now (a resumed study adds these).")]
Timeout = Annotated[float | None, Opt("--timeout", min=1.0, help="Stop starting trials after this many seconds.")]
Storage = Annotated[
    str | None,
    Opt(
        help="Optuna storage URL (default: optuna.db beside a local sqlite MLflow store, "
        "else in the cache folder). Same storage + study name = resume."
    ),
]
Study = Annotated[str | None, Opt("--study-name", help="Study name (default: made from the task, data and flags).")]
Params = Annotated[str | None, Opt("--params", help="Tune only these, comma-separated (e.g. lr,dropout).")]
Space = Annotated[
    list[str] | None, Opt("--space", help="Change a range: NAME=LOW:HIGH[:log] or NAME=A|B|C (repeatable).")
]
TuneSeed = Annotated[int, Opt("--sampler-seed", help="Seed of Optuna's TPE sampler.")]


def _flags(pairs: dict) -> list[str]:
    """The given flags as a command line (for the best config's ready-to-run command)."""
    out = []
    for flag, value in pairs.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, str(getattr(value, "value", value))]
    return out


def _run(
    job,
    flags: list[str],
    fixed: dict,
    params,
    space,
    trials,
    timeout,
    storage,
    study_name,
    sampler_seed,
    experiment,
    arch: str,
    metric: str | None = None,
) -> None:
    from rnnops.training.tune import space_for, tune

    dims = space_for(job.task, arch, fixed, params, space, lookback=getattr(job, "lookback", None))
    tune(
        job, flags, dims, trials, timeout, storage, study_name, seed=sampler_seed, experiment=experiment, metric=metric
    )


class Metric(str, Enum):
    mase = "mase"
    wql = "wql"


@app.command()
def forecast(
    ctx: typer.Context,
    data: Annotated[
        str, Opt(help="Named dataset (etth1, etth2, or the panel m4-hourly), a CSV path, a Parquet panel, or sine.")
    ] = "etth1",
    features: Annotated[str, Opt(help="M or S.")] = "M",
    target: Annotated[str | None, Opt(help="Target column.")] = None,
    date_column: Annotated[str | None, Opt(help="Date column.")] = None,
    fill: Annotated[str | None, Opt(help="ffill.")] = None,
    lookback: Annotated[int | None, Opt(min=1, help="Input window length L.")] = None,
    horizon: Annotated[int | None, Opt(min=1, help="Forecast steps H.")] = None,
    cell: Annotated[T.ForecastCell, Opt(help="Recurrent cell.")] = T.ForecastCell.gru,
    arch: Annotated[T.Arch, Opt(help="rnn or segrnn.")] = T.Arch.rnn,
    segment_length: Annotated[int | None, Opt("--segment-length", help="segrnn: observations per segment.")] = None,
    quantiles: Annotated[str | None, Opt(help="Prediction-interval levels, e.g. 0.1,0.5,0.9.")] = None,
    norm: Annotated[T.Norm | None, Opt(help="revin or fixed.")] = None,
    preset: Annotated[T.Preset, Opt(help="tiny, quick, full: each trial trains with it.")] = T.Preset.quick,
    hidden_size: T.Hidden = None,
    layers: T.Layers = None,
    dropout: T.Dropout = None,
    steps: T.Steps = None,
    batch_size: T.Batch = None,
    lr: T.Lr = None,
    eval_every: T.EvalEvery = None,
    patience: T.Patience = None,
    time_budget: T.Budget = None,
    seed: T.Seed = None,
    experiment: T.Experiment = None,
    trials: Trials = 20,
    timeout: Timeout = None,
    storage: Storage = None,
    study_name: Study = None,
    params: Params = None,
    space: Space = None,
    sampler_seed: TuneSeed = 0,
    id_column: Annotated[
        str | None, Opt("--id-column", help="Tune a global forecaster over this panel.", rich_help_panel=T.PANEL)
    ] = None,
    static_columns: Annotated[
        str | None,
        Opt("--static-columns", help="Static columns (as in rnnops train forecast).", rich_help_panel=T.PANEL),
    ] = None,
    future_covariates: Annotated[
        str | None, Opt("--future-covariates", help="Covariates known in advance.", rich_help_panel=T.PANEL)
    ] = None,
    past_covariates: Annotated[
        str | None, Opt("--past-covariates", help="Covariates known up to now.", rich_help_panel=T.PANEL)
    ] = None,
    freq: Annotated[str | None, Opt(help="The panel's pandas frequency.", rich_help_panel=T.PANEL)] = None,
    calendar: Annotated[
        bool | None, Opt("--calendar/--no-calendar", help="Calendar features (on by default).", rich_help_panel=T.PANEL)
    ] = None,
    likelihood: Annotated[
        T.Likelihood | None, Opt(help="A distribution head instead of the pinball loss.", rich_help_panel=T.PANEL)
    ] = None,
    backtest: Annotated[
        int | None, Opt(min=1, help="Rolling origins scored; training ends before the first.", rich_help_panel=T.PANEL)
    ] = None,
    metric: Annotated[
        Metric | None,
        Opt(
            help="Panels: minimise validation MASE (default) or WQL (the quantiles' weighted loss).",
            rich_help_panel=T.PANEL,
        ),
    ] = None,
):
    """Tune a forecaster on its validation MSE, or a panel's global forecaster on its validation
    MASE or WQL (the test split is never used to choose)."""
    from rnnops.training.jobs import forecast_job, is_panel

    if is_panel(data, id_column):
        return _panel(ctx, locals())
    T._refuse(
        "a panel only (give --id-column)",
        {
            "--static-columns": static_columns,
            "--future-covariates": future_covariates,
            "--past-covariates": past_covariates,
            "--freq": freq,
            "--calendar": calendar,
            "--likelihood": likelihood,
            "--backtest": backtest,
            "--metric": metric,
        },
    )
    overrides = {
        "features": features,
        "target": target,
        "date_column": date_column,
        "fill": fill,
        "lookback": lookback,
        "horizon": horizon,
        "model.norm": norm.value if norm else None,
        "model.hidden_size": hidden_size,
        "model.num_layers": layers,
        "model.dropout": dropout,
        "model.segment_length": segment_length,
        "model.quantiles": quantiles,
        **T._train_overrides(steps, batch_size, lr, eval_every, patience, time_budget, seed),
    }
    job = forecast_job(data, cell.value, preset.value, overrides, arch=arch.value)
    flags = _flags(
        {
            "--data": data,
            "--features": features if features != "M" else None,
            "--target": target,
            "--date-column": date_column,
            "--fill": fill,
            "--lookback": lookback,
            "--horizon": horizon,
            "--cell": cell if cell != T.ForecastCell.gru else None,
            "--arch": arch if arch != T.Arch.rnn else None,
            "--segment-length": segment_length,
            "--quantiles": quantiles,
            "--norm": norm,
            "--preset": preset,
            "--hidden-size": hidden_size,
            "--layers": layers,
            "--dropout": dropout,
            "--steps": steps,
            "--batch-size": batch_size,
            "--lr": lr,
            "--eval-every": eval_every,
            "--patience": patience,
            "--time-budget": time_budget,
            "--seed": seed,
        }
    )
    _run(
        job, flags, overrides, params, space, trials, timeout, storage, study_name, sampler_seed, experiment, arch.value
    )


def _panel(ctx: typer.Context, a: dict) -> None:
    """``rnnops tune forecast --id-column …``: a study over the panel model's space (tune.py's
    ``("panel", "rnn")``), each trial a panel run (training/panel_task.py)."""
    from rnnops.training.jobs import panel_job

    T._refuse(
        "a panel", {"--fill": a["fill"], "--norm": a["norm"], "--arch segrnn": a["arch"] == T.Arch.segrnn or None}
    )
    T._refuse("a panel", {"--features": a["features"] if a["features"] != "M" else None})
    cell = a["cell"] if ctx.get_parameter_source("cell").name != "DEFAULT" else None  # given: fixed
    overrides = {
        "id_column": a["id_column"],
        "date_column": a["date_column"],
        "targets": a["target"],
        "static_columns": a["static_columns"],
        "future_covariates": a["future_covariates"],
        "past_covariates": a["past_covariates"],
        "freq": a["freq"],
        "calendar": a["calendar"],
        "lookback": a["lookback"],
        "horizon": a["horizon"],
        "backtest": a["backtest"],
        "model.cell": cell.value if cell else None,
        "model.hidden_size": a["hidden_size"],
        "model.num_layers": a["layers"],
        "model.dropout": a["dropout"],
        "model.segment_length": a["segment_length"],
        "model.likelihood": a["likelihood"].value if a["likelihood"] else None,
        "model.quantiles": a["quantiles"],
        **T._train_overrides(
            a["steps"], a["batch_size"], a["lr"], a["eval_every"], a["patience"], a["time_budget"], a["seed"]
        ),
    }
    job = panel_job(a["data"], a["preset"].value, overrides)
    metric = f"val_{a['metric'].value}" if a["metric"] else None
    if metric == "val_wql":
        from rnnops.training.forecast_metrics import GLUONTS_QUANTILES

        levels = job.model.quantiles
        if levels is not None and not set(GLUONTS_QUANTILES) <= set(levels):
            raise RnnopsError(
                "--metric wql scores the nine levels 0.1, 0.2, ..., 0.9: add them to --quantiles, or leave it out"
            )
    flags = _flags(
        {
            "--data": a["data"],
            "--id-column": a["id_column"],
            "--date-column": a["date_column"],
            "--target": a["target"],
            "--static-columns": a["static_columns"],
            "--future-covariates": a["future_covariates"],
            "--past-covariates": a["past_covariates"],
            "--freq": a["freq"],
            "--calendar": a["calendar"],
            "--likelihood": a["likelihood"],
            "--backtest": a["backtest"],
            "--lookback": a["lookback"],
            "--horizon": a["horizon"],
            "--cell": cell,
            "--segment-length": a["segment_length"],
            "--quantiles": a["quantiles"],
            "--preset": a["preset"],
            "--hidden-size": a["hidden_size"],
            "--layers": a["layers"],
            "--dropout": a["dropout"],
            "--steps": a["steps"],
            "--batch-size": a["batch_size"],
            "--lr": a["lr"],
            "--eval-every": a["eval_every"],
            "--patience": a["patience"],
            "--time-budget": a["time_budget"],
            "--seed": a["seed"],
        }
    )
    _run(
        job,
        flags,
        overrides,
        a["params"],
        a["space"],
        a["trials"],
        a["timeout"],
        a["storage"],
        a["study_name"],
        a["sampler_seed"],
        a["experiment"],
        "rnn",
        metric=metric,
    )


@app.command()
def char(
    data: Annotated[str, Opt(help="Named dataset (tinyshakespeare) or a text file.")] = "tinyshakespeare",
    cell: Annotated[T.CharCell, Opt(help="Recurrent cell.")] = T.CharCell.lstm,
    preset: Annotated[T.Preset, Opt(help="tiny, quick, full: each trial trains with it.")] = T.Preset.quick,
    hidden_size: T.Hidden = None,
    layers: T.Layers = None,
    embed_dim: Annotated[int | None, Opt(min=1, help="Character embedding size.")] = None,
    dropout: T.Dropout = None,
    seq_len: Annotated[int | None, Opt(min=2, help="Characters per training sequence.")] = None,
    steps: T.Steps = None,
    batch_size: T.Batch = None,
    lr: T.Lr = None,
    eval_every: T.EvalEvery = None,
    patience: T.Patience = None,
    time_budget: T.Budget = None,
    seed: T.Seed = None,
    experiment: T.Experiment = None,
    trials: Trials = 20,
    timeout: Timeout = None,
    storage: Storage = None,
    study_name: Study = None,
    params: Params = None,
    space: Space = None,
    sampler_seed: TuneSeed = 0,
):
    """Tune a char model on its validation loss (nats/char)."""
    from rnnops.training.jobs import char_job

    overrides = {
        "model.hidden_size": hidden_size,
        "model.num_layers": layers,
        "model.embed_dim": embed_dim,
        "model.dropout": dropout,
        "seq_len": seq_len,
        **T._train_overrides(steps, batch_size, lr, eval_every, patience, time_budget, seed),
    }
    job = char_job(data, cell.value, preset.value, overrides)
    flags = _flags(
        {
            "--data": data,
            "--cell": cell if cell != T.CharCell.lstm else None,
            "--preset": preset,
            "--hidden-size": hidden_size,
            "--layers": layers,
            "--embed-dim": embed_dim,
            "--dropout": dropout,
            "--seq-len": seq_len,
            "--steps": steps,
            "--batch-size": batch_size,
            "--lr": lr,
            "--eval-every": eval_every,
            "--patience": patience,
            "--time-budget": time_budget,
            "--seed": seed,
        }
    )
    _run(job, flags, overrides, params, space, trials, timeout, storage, study_name, sampler_seed, experiment, "rnn")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="tune")
