"""The batch job's plan: what ``rnnops forecast`` was asked (:class:`ForecastJob`), the model it
runs, how the input's columns map onto the model (:class:`Layout`, checked by :func:`plan`), and
the :class:`JobSummary` both engines report.

Error policy (docs/batch.md): problems with the *file* (missing columns, unreadable input, a
model that is not a forecaster, ``--horizon`` beyond the model's) stop the job before anything
is written. Problems with *one series* (unparsable or missing dates, duplicated or backwards
timestamps, too few rows, NaN or irregular timestamps in the window the model reads) put that
series in an error report (``<output>.errors.csv``) and the rest are written; the command then
exits with status 3. ``--strict`` turns a series error into a job error (nothing written).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from rnnops.errors import RnnopsError
from rnnops.serving.batch.read import file_format, read_header
from rnnops.serving.runtime import ModelInfo
from rnnops.timeseries import TimestampError, check_freq

if TYPE_CHECKING:
    from rnnops.serving.batch.tails import SeriesError

# Output columns besides the input's id and date columns (whose names are kept).
STEP, TARGET, FORECAST, MODEL, MODEL_VERSION = "step", "target", "forecast", "model", "model_version"
DATE_NAMES = ("date", "datetime", "timestamp", "time", "ds")


def quantile_column(level: float) -> str:
    """The output column of a prediction-interval level: 0.1 -> forecast_p10, 0.025 -> forecast_p2.5."""
    return f"{FORECAST}_p{level * 100:g}"


EXIT_SERIES_FAILED = 3  # CLI exit status when some series failed and the rest were written


@dataclass
class ForecastJob:
    """What ``rnnops forecast`` was asked to do (the CLI's flags, validated by :func:`plan`)."""

    model: str  # any rnnops.refs reference: name@alias, name/version, models:/..., a .onnx file, bentoml:tag
    input: Path
    output: Path
    id_column: str | None = None  # None: the whole file is one series
    date_column: str | None = None  # None: detected (date, datetime, timestamp, time, ds)
    horizon: int | None = None  # steps to write (<= the model's); None: the model's
    freq: str | None = None  # pandas frequency ("h", "15min", "D", "MS"); None: inferred per series
    date_format: str | None = None  # strptime format; None: ISO 8601, else pandas' inference
    strict: bool = False  # a bad series fails the job (nothing written)
    errors_path: Path | None = None  # default: <output stem>.errors.csv beside the output
    chunk_rows: int = 65_536  # rows per chunk fed to the state (memory vs. per-chunk overhead)
    batch_windows: int = 256  # windows per onnxruntime call (measured: 256 as fast as 1024, far less memory)
    workers: int = 0  # threads running onnxruntime calls; 0 = the CPUs this process may use
    progress: bool | None = None  # None: when stderr is a terminal
    plot_dir: Path | None = None
    plot_max: int = 20
    future: Path | None = None  # a panel model's future covariates for the horizon (id, date, covariates)


@dataclass(frozen=True)
class ForecastModel:
    """The model a job runs: where its verified ONNX is and what its metadata says."""

    name: str
    version: int | None  # registry version (the model_version column); None for a file or a BentoML model
    path: Path
    sha256: str
    info: ModelInfo


@dataclass(frozen=True)
class Layout:
    """Which input columns mean what, and the shape of the windows and output."""

    fmt: str  # csv | parquet
    id_column: str | None
    date_column: str
    features: tuple[str, ...]
    targets: tuple[str, ...]
    lookback: int
    horizon: int  # steps written
    freq: str | None
    date_format: str | None
    model_freq: str | None
    id_type: pa.DataType | None = None  # the id column's type: string for CSV, the file's for Parquet
    quantiles: tuple[float, ...] = ()  # prediction-interval levels: a forecast_pNN column each (write.py)


@dataclass(frozen=True)
class JobSummary:
    """What a job did, built once when it ends (:func:`~rnnops.serving.batch.write.write_results`)."""

    engine: str
    output: Path
    errors_path: Path | None  # the error report, None when every series was forecast
    rows_read: int
    series: int
    forecasted: int
    failed: int
    output_rows: int
    seconds: float
    freq_mismatch: int  # series whose step differs from the model's training frequency
    plots: tuple[Path, ...] = ()
    first_errors: tuple[SeriesError, ...] = ()  # a few, for the command's message

    @property
    def rows_per_s(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0


def load_model(ref: str) -> ForecastModel:
    """Resolve ``ref`` (any reference :mod:`rnnops.refs` reads: ``name@alias``, ``name/3``,
    ``models:/...``, a ``.onnx`` file, ``bentoml:name[:version]``) and check that it is a forecaster."""
    from rnnops.registry.resolve import resolve_ref

    # a reference that does not parse: refs' one message; batch jobs run model.onnx (fp32), so a
    # version's int8 file is neither fetched nor verified here
    local = resolve_ref(ref, int8=False)
    meta = local.metadata
    if meta.get("kind") not in ("forecaster", "panel"):
        raise RnnopsError(
            f"{ref} is a {meta.get('kind') or 'model without rnnops metadata'}, not a forecaster: "
            "`rnnops forecast` needs a model trained with `rnnops train forecast` (or `sine`, or a panel run)"
        )
    info = ModelInfo.from_metadata(meta, where=str(ref))
    return ForecastModel(
        name=local.name, version=local.registry_version, path=Path(local.path), sha256=local.sha256, info=info
    )


def plan(job: ForecastJob, model: ForecastModel) -> Layout:
    """Check the job against the input's columns and the model; one clear error if they don't fit."""
    if not job.input.is_file():
        raise RnnopsError(f"input {job.input} not found")
    fmt = file_format(job.input, "input")
    file_format(job.output, "output")
    if job.output.resolve() == job.input.resolve():
        raise RnnopsError("--output must not be the input file")
    if not job.output.parent.is_dir():
        raise RnnopsError(f"output folder {job.output.parent} does not exist")
    info = model.info
    schema = read_header(job.input, fmt)
    header = list(schema.names)
    have = set(header)
    if info.panel is None and job.future is not None:
        raise RnnopsError(f"--future is for panel models; {model.name} is a single-window forecaster")
    date_col = job.date_column
    if date_col is None:
        date_col = next((c for c in header if c.lower() in DATE_NAMES), None)
        if date_col is None:
            raise RnnopsError(
                f"{job.input}: no date column found (looked for {', '.join(DATE_NAMES)}); "
                f"name it with --date-column (columns: {_list(header)})"
            )
    if info.panel is not None:
        if job.id_column is None:
            raise RnnopsError(f"{model.name} is a panel model: name the series with --id-column")
        from rnnops.serving.batch.panel import check_files

        check_files(job, model, job.id_column, date_col)
    needed = {
        "--date-column": [date_col],
        "--id-column": [job.id_column] if job.id_column else [],
        "the model's features": list(info.feature_names),
    }
    missing = {what: [c for c in cols if c not in have] for what, cols in needed.items()}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        detail = "; ".join(f"{what}: {_list(cols)}" for what, cols in missing.items())
        raise RnnopsError(
            f"{job.input} lacks columns ({detail}); it has {_list(header)}. The model "
            f"{model.name} reads {_list(info.feature_names)} (one row per series and timestamp)"
        )
    if job.id_column is not None and job.id_column in info.feature_names:
        raise RnnopsError(f"--id-column {job.id_column} is one of the model's features")
    if date_col in info.feature_names:
        raise RnnopsError(f"date column {date_col} is one of the model's features")
    taken = {STEP, TARGET, FORECAST, MODEL, MODEL_VERSION, *map(quantile_column, info.quantiles)}
    clash = [c for c in (job.id_column, date_col) if c in taken]
    if clash or job.id_column == date_col and job.id_column is not None:
        raise RnnopsError(
            f"input column name(s) {_list(clash or [date_col])} clash with the output columns "
            f"({_list(sorted(taken))}) or each other; rename them"
        )
    horizon = info.horizon if job.horizon is None else int(job.horizon)
    if not 1 <= horizon <= info.horizon:
        raise RnnopsError(f"--horizon {job.horizon}: this model forecasts 1 to {info.horizon} steps")
    if job.freq:
        try:
            check_freq(job.freq)  # a bad --freq is an error now, not per series
        except TimestampError as exc:
            raise RnnopsError(str(exc)) from None
    if info.lookback < 1:
        raise RnnopsError(f"{model.name}: its metadata has no lookback; re-export it with a current rnnops")
    id_type = None
    if job.id_column is not None:
        id_type = schema.field(job.id_column).type
        if pa.types.is_dictionary(id_type):
            id_type = id_type.value_type
        if pa.types.is_large_string(id_type):
            id_type = pa.string()
    return Layout(
        fmt=fmt,
        id_column=job.id_column,
        date_column=date_col,
        features=tuple(info.feature_names),
        targets=tuple(info.target_names),
        lookback=info.lookback,
        horizon=horizon,
        freq=job.freq,
        date_format=job.date_format,
        model_freq=info.freq,
        id_type=id_type,
        quantiles=tuple(info.quantiles),
    )


def _list(cols: Iterable[object], most: int = 12) -> str:
    names = [str(c) for c in cols]
    return ", ".join(names[:most]) + (f" (+{len(names) - most} more)" if len(names) > most else "")


def run(job: ForecastJob, engine: str = "local", spark_master: str | None = None) -> JobSummary:
    """Run ``job`` with the local or Spark engine; raises :class:`RnnopsError` for file-level problems."""
    model = load_model(job.model)
    layout = plan(job, model)
    if engine not in ("local", "spark"):
        raise RnnopsError(f"--engine {engine!r}: use local or spark")
    if model.info.panel is not None:
        from rnnops.serving.batch import panel

        if engine == "spark":
            return panel.run_panel_spark(job, model, layout, master=spark_master)
        return panel.run_panel_local(job, model, layout)
    if engine == "spark":
        from rnnops.serving.batch.spark import run_spark

        return run_spark(job, model, layout, master=spark_master)
    from rnnops.serving.batch.local import run_local

    return run_local(job, model, layout)


def _progress(job: ForecastJob, **kw: Any) -> Any:  # a tqdm bar (tqdm is untyped)
    from tqdm.auto import tqdm

    enabled = job.progress if job.progress is not None else sys.stderr.isatty()
    return tqdm(disable=not enabled, file=sys.stderr, dynamic_ncols=True, **kw)


def describe(summary: JobSummary) -> str:
    s = summary
    line = (
        f"{s.engine}: {s.rows_read:,} rows, {s.series:,} series -> {s.output_rows:,} forecast rows for "
        f"{s.forecasted:,} series in {s.output} ({s.seconds:.1f} s, {s.rows_per_s:,.0f} rows/s)"
    )
    if s.failed:
        line += f"; {s.failed:,} series failed: see {s.errors_path}"
        for e in s.first_errors[:3]:
            line += f"\n  {e.series_id!r} ({e.rows} rows): {e.message}"
    if s.freq_mismatch:
        line += (
            f"\nwarning: {s.freq_mismatch:,} series are spaced unlike the model's training data; "
            "their forecasts use the model at a frequency it was not trained on"
        )
    if s.plots:
        line += f"\nplots: {len(s.plots)} PNG in {s.plots[0].parent}"
    return line
