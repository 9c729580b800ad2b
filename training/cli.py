"""``rnnops train char|forecast|sine`` and ``rnnops sample``."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from rnnops.errors import RnnopsError
from rnnops.training import cells

app = typer.Typer(help="Train char models and forecasters; every run is logged to MLflow.", no_args_is_help=True)


# The --cell choices of each task, from the cell registry (training/cells.py: no torch at import).
CharCell = Enum("CharCell", {name: name for name in cells.names("char")}, type=str)
ForecastCell = Enum("ForecastCell", {name: name for name in cells.names("forecast")}, type=str)


class Preset(str, Enum):
    tiny = "tiny"
    quick = "quick"
    full = "full"


class Norm(str, Enum):
    revin = "revin"
    fixed = "fixed"


class Arch(str, Enum):
    rnn = "rnn"
    segrnn = "segrnn"


class Likelihood(str, Enum):
    studentt = "studentt"
    normal = "normal"
    negbin = "negbin"


Opt = typer.Option
Experiment = Annotated[str | None, Opt(help="MLflow experiment (default rnnops-char / rnnops-forecast).")]
Resume = Annotated[
    str | None,
    Opt(help="Continue a killed or interrupted run from its last checkpoint (run id); other flags are ignored."),
]
Hidden = Annotated[int | None, Opt("--hidden-size", min=1, help="Hidden units per layer.")]
Layers = Annotated[
    int | None, Opt("--layers", help="Recurrent layers: 1-3 for lstm/gru/rnn, 1-12 blocks for mingru/minlstm/mlstm.")
]
Heads = Annotated[int | None, Opt("--heads", help="mlstm only: memory heads (default 4); must divide --hidden-size.")]
FFMult = Annotated[
    float | None,
    Opt(
        "--ff-mult",
        help="mingru/minlstm/mlstm only: MLP width per block as a multiple of the model width (0 = no MLP).",
    ),
]
Dropout = Annotated[float | None, Opt(min=0.0, max=0.9, help="Dropout between layers and before the head.")]
Steps = Annotated[int | None, Opt(min=1, help="Optimizer steps (upper bound).")]
Batch = Annotated[int | None, Opt("--batch-size", min=1, help="Sequences (char) or windows (forecast) per step.")]
Lr = Annotated[float | None, Opt(min=0.0, help="Peak learning rate (AdamW; warm-up then cosine).")]
EvalEvery = Annotated[int | None, Opt(min=1, help="Evaluate on the validation split every N steps.")]
Patience = Annotated[int | None, Opt(min=1, help="Stop after N evaluations without improvement.")]
Budget = Annotated[
    float | None,
    Opt("--time-budget", min=0.0, help="Seconds of training at most (0 = none); the lr schedule follows it."),
]
Seed = Annotated[int | None, Opt(help="Random seed.")]
NProc = Annotated[
    int,
    Opt(
        "--nproc",
        min=1,
        help="Train in N processes on this machine (PyTorch DDP; --batch-size is per process). Across machines use torchrun: docs/production.md.",
    ),
]


def _train_overrides(steps, batch_size, lr, eval_every, patience, time_budget, seed) -> dict:
    return {
        "train.steps": steps,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.eval_every": eval_every,
        "train.patience": patience,
        "train.time_budget_s": time_budget,
        "train.seed": seed,
    }


def _resume(run_id: str, nproc: int = 1) -> None:
    from rnnops import settings
    from rnnops.training.distributed import launch
    from rnnops.training.job_config import job_from_dict
    from rnnops.training.trainer import Checkpoint

    ckpt = Checkpoint(settings.checkpoint_dir() / run_id)
    if not ckpt.exists():
        raise RnnopsError(
            f"no checkpoint for run {run_id} in {ckpt.folder}; set RNNOPS_CHECKPOINTS to where the run saved it"
        )
    launch(job_from_dict(ckpt.load_job()), resume_run=run_id, nproc=nproc)


@app.command()
def char(
    data: Annotated[
        str, Opt(help="Named dataset (tinyshakespeare) or a path to a UTF-8 text file.")
    ] = "tinyshakespeare",
    cell: Annotated[
        CharCell,
        Opt(
            help="Recurrent cell: lstm, gru, vanilla rnn, or the parallel-trained mingru, minlstm, mlstm (docs/training.md)."
        ),
    ] = CharCell.lstm,
    preset: Annotated[Preset, Opt(help="tiny (seconds, tests), quick (~3 min), full (~30 min).")] = Preset.quick,
    hidden_size: Hidden = None,
    layers: Layers = None,
    heads: Heads = None,
    ff_mult: FFMult = None,
    embed_dim: Annotated[int | None, Opt(min=1, help="Character embedding size.")] = None,
    dropout: Dropout = None,
    seq_len: Annotated[int | None, Opt(min=2, help="Characters per training sequence.")] = None,
    steps: Steps = None,
    batch_size: Batch = None,
    lr: Lr = None,
    eval_every: EvalEvery = None,
    patience: Patience = None,
    time_budget: Budget = None,
    seed: Seed = None,
    experiment: Experiment = None,
    resume: Resume = None,
    nproc: NProc = 1,
):
    """Train a char-level language model (the classic char-RNN) and log it to MLflow.

    Reports validation loss in nats/char and bits/char on nanoGPT's 90/10 split, beside
    unigram and bigram baselines, with text samples at each evaluation.
    """
    if resume:
        return _resume(resume, nproc)
    from rnnops.training.distributed import launch
    from rnnops.training.jobs import char_job

    overrides = {
        "model.hidden_size": hidden_size,
        "model.num_layers": layers,
        "model.embed_dim": embed_dim,
        "model.heads": heads,
        "model.ff_mult": ff_mult,
        "model.dropout": dropout,
        "seq_len": seq_len,
        **_train_overrides(steps, batch_size, lr, eval_every, patience, time_budget, seed),
    }
    launch(char_job(data, cell.value, preset.value, overrides), experiment, nproc=nproc)


PANEL = "Panels"  # the --help section of the panel flags


@app.command()
def forecast(
    ctx: typer.Context,
    data: Annotated[
        str,
        Opt(help="Named dataset (etth1, etth2, or the panel m4-hourly), a CSV path, a Parquet panel, or sine."),
    ] = "etth1",
    features: Annotated[str, Opt(help="M: all numeric columns in and out; S: the target column only.")] = "M",
    target: Annotated[
        str | None,
        Opt(help="Target column (default OT, else the last numeric column); panels: the column to forecast."),
    ] = None,
    date_column: Annotated[str | None, Opt(help="Date column (default: detected; panels: required).")] = None,
    fill: Annotated[str | None, Opt(help="ffill: fill missing values forward instead of failing.")] = None,
    lookback: Annotated[int | None, Opt(min=1, help="Input window length L (panels: default 7 x horizon).")] = None,
    horizon: Annotated[int | None, Opt(min=1, help="Forecast steps H (panels: required, but m4-hourly's 48).")] = None,
    cell: Annotated[ForecastCell, Opt(help="Recurrent cell (panels: gru or lstm).")] = ForecastCell.gru,
    arch: Annotated[
        Arch,
        Opt(
            help="rnn: the cell over every observation; segrnn: SegRNN, the cell over segments "
            "of the lookback, channel-independent, all horizon segments decoded at once."
        ),
    ] = Arch.rnn,
    segment_length: Annotated[
        int | None,
        Opt(
            "--segment-length",
            help="segrnn and panels: observations per segment (must divide --lookback; default 24, panels: "
            "the largest divisor of the lookback up to 24).",
        ),
    ] = None,
    quantiles: Annotated[
        str | None,
        Opt(
            help="Prediction intervals at these levels, e.g. 0.1,0.5,0.9: "
            "split-conformal per horizon step, calibrated on the validation split. Panels: the levels "
            "forecast (pinball loss, or the likelihood's quantiles); must include 0.5; default "
            "0.025,0.1,...,0.9,0.975."
        ),
    ] = None,
    norm: Annotated[
        Norm | None,
        Opt(help="revin: per-window normalisation (windowed model); fixed: train-split scaler (stateful model)."),
    ] = None,
    linear_skip: Annotated[bool | None, Opt(help="Add an NLinear-style linear map of the window (revin only).")] = None,
    id_column: Annotated[
        str | None,
        Opt(
            "--id-column",
            help="Train one global model over a panel: a long-format CSV or Parquet file, one row per "
            "series x timestamp, this column naming the series (docs/forecasting.md).",
            rich_help_panel=PANEL,
        ),
    ] = None,
    static_columns: Annotated[
        str | None,
        Opt(
            "--static-columns",
            help="Columns with one value per series, comma-separated: strings become categories "
            "(embeddings, with an unknown bucket), numbers stay numbers.",
            rich_help_panel=PANEL,
        ),
    ] = None,
    future_covariates: Annotated[
        str | None,
        Opt(
            "--future-covariates",
            help="Numeric columns known in advance (promotions, prices, holidays), comma-separated: "
            "present at every step, and needed for the horizon when forecasting.",
            rich_help_panel=PANEL,
        ),
    ] = None,
    past_covariates: Annotated[
        str | None,
        Opt(
            "--past-covariates",
            help="Numeric columns known only up to now, comma-separated (may be missing).",
            rich_help_panel=PANEL,
        ),
    ] = None,
    freq: Annotated[
        str | None,
        Opt(
            help="The panel's pandas frequency (h, D, W-MON, MS, ...): gaps are filled as missing values. "
            "Default: inferred, and a series off it is an error.",
            rich_help_panel=PANEL,
        ),
    ] = None,
    calendar: Annotated[
        bool | None,
        Opt(
            "--calendar/--no-calendar",
            help="Calendar features from the frequency (hour of day, day of week, ...); on by default.",
            rich_help_panel=PANEL,
        ),
    ] = None,
    likelihood: Annotated[
        Likelihood | None,
        Opt(
            help="Fit a distribution by likelihood (negbin: counts >= 0) instead of the default, the "
            "pinball loss over --quantiles.",
            rich_help_panel=PANEL,
        ),
    ] = None,
    backtest: Annotated[
        int | None,
        Opt(
            min=1,
            help="Score N rolling origins (the last is the test window) as backtest_<i>/<metric>; the model "
            "trains on what precedes the first.",
            rich_help_panel=PANEL,
        ),
    ] = None,
    step: Annotated[
        int | None,
        Opt(min=1, help="Steps between --backtest origins (default: the horizon).", rich_help_panel=PANEL),
    ] = None,
    init_from: Annotated[
        str | None,
        Opt(
            "--init-from",
            help="Fine-tune: start from the model of this run (RUN_ID) or registered version (NAME@ALIAS, "
            "NAME/VERSION) and train it on --data as a new run; its columns, windows and architecture are "
            "the parent's (docs/forecasting.md).",
            rich_help_panel=PANEL,
        ),
    ] = None,
    stream: Annotated[
        bool | None,
        Opt(
            "--stream/--no-stream",
            help="Stream a Parquet panel (a file or a directory of files) instead of reading it into memory: "
            "windows sampled from a buffer of row blocks across files. Default: stream when the panel would "
            "not fit in memory (docs/forecasting.md).",
            rich_help_panel=PANEL,
        ),
    ] = None,
    preset: Annotated[
        Preset, Opt(help="tiny (seconds, tests), quick (~2.5 min; panels 5 min), full (~15 min; panels 30 min).")
    ] = Preset.quick,
    hidden_size: Hidden = None,
    layers: Layers = None,
    heads: Heads = None,
    ff_mult: FFMult = None,
    dropout: Dropout = None,
    steps: Steps = None,
    batch_size: Batch = None,
    lr: Lr = None,
    eval_every: EvalEvery = None,
    patience: Patience = None,
    time_budget: Budget = None,
    seed: Seed = None,
    experiment: Experiment = None,
    resume: Resume = None,
    nproc: NProc = 1,
):
    """Train a multivariate, multi-step forecaster, or one global forecaster over a panel, and log it to MLflow.

    One series (ETT): val and test MSE/MAE on the z-scored scale (ETT's 12/4/4 split, every
    stride-1 window) beside the repeat-last baseline, with a forecast-vs-actual plot.

    A panel (--id-column, or --data m4-hourly): one model over every series, with static columns
    and covariates; per-series splits by time (the last --horizon steps test, the ones before them
    validation) scored with the M4 metrics (sMAPE, MASE, OWA, MSIS, coverage, WQL) beside the
    naive, seasonal-naive and Naive2 baselines. Example:
    rnnops train forecast --data sales.parquet --id-column item_id --date-column date --target sales
    --static-columns store,category --future-covariates promo,price --horizon 14
    """
    if resume:
        return _resume(resume, nproc)
    from rnnops.training.distributed import launch
    from rnnops.training.jobs import is_panel

    train = _train_overrides(steps, batch_size, lr, eval_every, patience, time_budget, seed)
    parent = None
    if init_from:  # fine-tuning: the parent's job gives the columns, windows and model
        from rnnops.training.init_from import find_parent, fine_tune_overrides

        parent = find_parent(init_from, ctx.obj)  # ctx.obj: the registry's lookup (rnnops/cli.py)
    if is_panel(data, id_column) or (parent and parent.task == "panel"):
        from rnnops.training.jobs import panel_job

        _refuse("a panel", {"--fill": fill, "--norm": norm, "--linear-skip": linear_skip, "--heads": heads})
        _refuse("a panel", {"--ff-mult": ff_mult, "--arch segrnn": arch == Arch.segrnn or None})
        overrides = {
            "id_column": id_column,
            "date_column": date_column,
            "targets": target,
            "static_columns": static_columns,
            "future_covariates": future_covariates,
            "past_covariates": past_covariates,
            "freq": freq,
            "calendar": calendar,
            "lookback": lookback,
            "horizon": horizon,
            "backtest": backtest,
            "backtest_step": step,
            "stream": stream,
            "model.cell": cell.value,
            "model.hidden_size": hidden_size,
            "model.num_layers": layers,
            "model.dropout": dropout,
            "model.segment_length": segment_length,
            "model.likelihood": likelihood.value if likelihood else None,
            "model.quantiles": quantiles,
            **train,
        }
        if parent:
            overrides["model.cell"] = _given(ctx, "cell", cell.value)
            overrides = fine_tune_overrides(parent, overrides, "panel")
        return launch(panel_job(data, preset.value, overrides), experiment, nproc=nproc)
    _refuse(
        "a panel only (give --id-column)",
        {
            "--static-columns": static_columns,
            "--future-covariates": future_covariates,
            "--past-covariates": past_covariates,
            "--freq": freq,
            "--calendar": calendar,
            "--likelihood": likelihood,
            "--backtest": backtest,
            "--step": step,
            "--stream": stream,
        },
    )
    from rnnops.training.jobs import forecast_job

    overrides = {
        "features": features,
        "target": target,
        "date_column": date_column,
        "fill": fill,
        "lookback": lookback,
        "horizon": horizon,
        "model.norm": norm.value if norm else None,
        "model.linear_skip": linear_skip,
        "model.hidden_size": hidden_size,
        "model.num_layers": layers,
        "model.heads": heads,
        "model.ff_mult": ff_mult,
        "model.dropout": dropout,
        "model.segment_length": segment_length,
        "model.quantiles": quantiles,
        **train,
    }
    cell_name, arch_name = cell.value, arch.value
    if parent:
        overrides["features"] = _given(ctx, "features", features)
        overrides["model.cell"] = _given(ctx, "cell", cell.value)
        overrides["model.arch"] = _given(ctx, "arch", arch.value)
        overrides = fine_tune_overrides(parent, overrides, "forecast")
        cell_name, arch_name = overrides.pop("model.cell"), overrides.pop("model.arch")
    launch(forecast_job(data, cell_name, preset.value, overrides, arch=arch_name), experiment, nproc=nproc)


def _given(ctx: typer.Context, name: str, value):
    """``value`` if the flag was given on the command line, else None (a default is not a choice:
    --init-from takes the parent's)."""
    from click.core import ParameterSource

    return None if ctx.get_parameter_source(name) == ParameterSource.DEFAULT else value


def _refuse(what: str, flags: dict) -> None:
    """One line for a flag given where it does not apply (None: not given)."""
    given = [flag for flag, value in flags.items() if value is not None]
    if given:
        raise RnnopsError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to {what}")


@app.command()
def sine(
    steps: Steps = None,
    seed: Seed = None,
    experiment: Experiment = None,
):
    """Train the classic sine-wave toy: a small stateful GRU forecaster (seconds)."""
    from rnnops.training.distributed import launch
    from rnnops.training.jobs import sine_job

    launch(sine_job({"train.steps": steps, "train.seed": seed}), experiment)


def sample(
    model: Annotated[
        str, typer.Argument(help="Run id, runs:/ or models:/ URI, or a folder with config.json + model.safetensors.")
    ],
    prompt: Annotated[str, Opt(help="Text to start from.")] = "\n",
    chars: Annotated[int, Opt(min=1, help="Characters to generate.")] = 300,
    temperature: Annotated[float, Opt(min=0.0, help="Sampling temperature (0 = greedy).")] = 0.8,
    top_k: Annotated[int | None, Opt(min=1, help="Sample from the k most likely characters only.")] = None,
    seed: Annotated[int | None, Opt(help="Random seed (same seed, same text).")] = None,
):
    """Generate text from a logged char model with PyTorch (a first look at a run)."""
    from rnnops.training.logged_model import load_model
    from rnnops.training.sampling import generate

    loaded = load_model(model)
    if loaded.kind != "char":
        raise RnnopsError(f"{model} is a {loaded.kind} model; `rnnops sample` needs a char model")
    typer.echo(prompt + generate(loaded.model, loaded.spec["vocab"], prompt, chars, temperature, top_k, seed))
