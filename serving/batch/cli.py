"""``rnnops forecast``: batch forecasts for every series in a file (local engine or Spark).

Wired into the root command by ``register(app)``; heavy imports happen inside the command.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

Opt = typer.Option


class Engine(str, Enum):
    local = "local"
    spark = "spark"


def forecast(
    model: Annotated[
        str,
        Opt(
            help="Forecaster to run: name@alias, name/version, models:/..., a local .onnx file or "
            "bentoml:name[:version] (as `rnnops serve` takes)."
        ),
    ] = "forecaster@champion",
    input: Annotated[
        Path,
        Opt(
            "--input",
            "-i",
            help="Long-format .csv (.csv.gz) or .parquet: one row per series and timestamp, "
            "with the model's feature columns.",
        ),
    ] = ...,  # type: ignore[assignment]  # Typer's mark of a required option
    output: Annotated[
        Path,
        Opt(
            "--output",
            "-o",
            help="Where to write the forecasts (.csv or .parquet); written under a "
            "temporary name and renamed when complete.",
        ),
    ] = ...,  # type: ignore[assignment]  # Typer's mark of a required option
    id_column: Annotated[str | None, Opt(help="Column naming the series (omit when the file is one series).")] = None,
    date_column: Annotated[
        str | None, Opt(help="Timestamp column (default: date, datetime, timestamp, time or ds).")
    ] = None,
    horizon: Annotated[
        int | None, Opt(min=1, help="Steps to forecast (at most the model's horizon; default: all of them).")
    ] = None,
    freq: Annotated[
        str | None,
        Opt(
            help="Frequency of the series (pandas: h, 15min, D, W, MS...); default: inferred "
            "from each series' timestamps."
        ),
    ] = None,
    date_format: Annotated[
        str | None, Opt(help="strptime format of the dates (default: ISO 8601, else pandas' inference).")
    ] = None,
    engine: Annotated[
        Engine, Opt(help="local: this machine, streaming; spark: Apache Spark (pyspark + Java 17).")
    ] = Engine.local,
    spark_master: Annotated[
        str | None, Opt(help="Spark master URL (default local[*], or RNNOPS_SPARK_MASTER).")
    ] = None,
    strict: Annotated[
        bool,
        Opt(
            "--strict",
            help="Fail the whole job (nothing written) when any series cannot be forecast, "
            "instead of reporting it and writing the rest.",
        ),
    ] = False,
    errors: Annotated[
        Path | None, Opt("--errors", help="Per-series error report (CSV; default: OUTPUT's name + .errors.csv).")
    ] = None,
    plot: Annotated[
        Path | None, Opt("--plot", help="Write a PNG of history + forecast per series into this folder.")
    ] = None,
    plot_max: Annotated[int, Opt(min=0, help="Plot at most this many series (the first ones).")] = 20,
    workers: Annotated[int, Opt(min=0, help="Threads running the model (local engine; 0 = all CPUs).")] = 0,
    batch_size: Annotated[int, Opt("--batch-size", min=1, help="Windows per onnxruntime call.")] = 256,
    chunk_rows: Annotated[int, Opt(min=1, help="Rows read per chunk (local engine; memory vs. overhead).")] = 65_536,
    progress: Annotated[
        bool | None, Opt("--progress/--no-progress", help="Progress bars (default: when stderr is a terminal).")
    ] = None,
    future: Annotated[
        Path | None,
        Opt(
            "--future",
            help="Panel models: CSV or Parquet with the id, the date and the future covariates for the "
            "horizon (the steps after each series' last row).",
        ),
    ] = None,
) -> None:
    """Forecast every series of a long-format file with a registered forecaster.

    Output: one row per series x future timestamp x target, with the id column (as named in the input), the date column, step (1..horizon), target, forecast (raw units), model and model_version.

    Series that cannot be forecast (bad dates, duplicated timestamps, too short, NaN in the window the model reads, irregular spacing) go to an error report and the others are written; the command then exits with status 3. Problems with the file itself stop the job before anything is written (status 2). See docs/batch.md.
    """
    from rnnops.serving.batch import EXIT_SERIES_FAILED, ForecastJob, describe, run

    job = ForecastJob(
        model=model,
        input=input,
        output=output,
        id_column=id_column,
        date_column=date_column,
        horizon=horizon,
        freq=freq,
        date_format=date_format,
        strict=strict,
        errors_path=errors,
        chunk_rows=chunk_rows,
        batch_windows=batch_size,
        workers=workers,
        progress=progress,
        plot_dir=plot,
        plot_max=plot_max,
        future=future,
    )
    summary = run(job, engine=engine.value, spark_master=spark_master)
    typer.echo(describe(summary), err=True)
    if summary.failed:
        raise typer.Exit(EXIT_SERIES_FAILED)


def register(app: typer.Typer) -> None:
    app.command("forecast")(forecast)
