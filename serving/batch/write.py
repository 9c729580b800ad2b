"""Writing a batch job's results: the output schema and tables (one row per series x step x
target), the atomic writer (a temporary name, renamed when complete), the per-series error
report, the plots, and :func:`write_results`, where both engines end.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import os
import re
import time
from collections.abc import Hashable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from rnnops.errors import RnnopsError
from rnnops.serving.batch.job import (
    FORECAST,
    MODEL,
    MODEL_VERSION,
    STEP,
    TARGET,
    ForecastJob,
    ForecastModel,
    JobSummary,
    Layout,
    _progress,
    quantile_column,
)
from rnnops.serving.batch.read import CSV_SUFFIXES, PARQUET_SUFFIXES, file_format
from rnnops.serving.batch.tails import Prepared, SeriesError


def output_schema(layout: Layout, date_type: pa.DataType) -> pa.Schema:
    fields = []
    if layout.id_column is not None:
        fields.append(pa.field(layout.id_column, layout.id_type or pa.string()))
    fields += [
        pa.field(layout.date_column, date_type),
        pa.field(STEP, pa.int32()),
        pa.field(TARGET, pa.string()),
        pa.field(FORECAST, pa.float32()),
        *(pa.field(quantile_column(q), pa.float32()) for q in layout.quantiles),
        pa.field(MODEL, pa.string()),
        pa.field(MODEL_VERSION, pa.int64()),
    ]
    return pa.schema(fields)


def date_type_for(future: np.ndarray) -> pa.DataType:
    """Whole seconds are written as such (``2024-01-31 13:00:00``), else nanoseconds."""
    return pa.timestamp("s") if (future % 1_000_000_000 == 0).all() else pa.timestamp("ns")


def output_table(
    schema: pa.Schema,
    layout: Layout,
    ids: list[Hashable],
    future: np.ndarray,
    y: np.ndarray,
    model: str,
    version: int | None,
) -> pa.Table:
    """Rows for ``len(ids)`` series: for each series, each step, each target (in that order).
    ``y``: forecasts ``[m, H, T]``, or ``[m, H, T, 1 + levels]`` (the forecast, then each quantile)
    for a model with prediction intervals."""
    m, H = future.shape
    T = len(layout.targets)
    per = H * T
    bands = np.ascontiguousarray(y[:, :H, :, 1:], dtype=np.float32) if y.ndim == 4 else None
    y = np.ascontiguousarray(y[:, :H, :, 0] if y.ndim == 4 else y[:, :H, :], dtype=np.float32)
    cols = []
    if layout.id_column is not None:
        id_field = schema.field(layout.id_column)
        cols.append(pa.array(ids, type=id_field.type).take(pa.array(np.repeat(np.arange(m), per))))
    dates = np.repeat(future, T, axis=1).reshape(-1).view("datetime64[ns]")
    cols.append(pa.array(dates, type=pa.timestamp("ns")).cast(schema.field(layout.date_column).type))
    cols.append(pa.array(np.tile(np.repeat(np.arange(1, H + 1, dtype=np.int32), T), m)))
    targets = pa.array(list(layout.targets), type=pa.string())
    cols.append(targets.take(pa.array(np.tile(np.arange(T), m * H))))
    cols.append(pa.array(y.reshape(-1)))
    for k in range(len(layout.quantiles)):
        assert bands is not None, "a model with quantiles gives a 4-d y"
        cols.append(pa.array(np.ascontiguousarray(bands[..., k]).reshape(-1)))
    cols.append(pa.array([model], type=pa.string()).take(pa.array(np.zeros(m * per, np.int64))))
    cols.append(
        pa.nulls(m * per, pa.int64()) if version is None else pa.array(np.full(m * per, int(version), np.int64))
    )
    return pa.Table.from_arrays(cols, schema=schema)


ROW_GROUP_ROWS = 131_072  # output rows per Parquet row group (and per write to disk)


class AtomicWriter:
    """Writes CSV or Parquet under a temporary name in the output's folder; :meth:`commit` renames
    it into place, :meth:`abort` removes it. Readers never see a partial file under the real name.

    Parquet: the tables handed to :meth:`write` are buffered and written in row groups of exactly
    ``ROW_GROUP_ROWS`` rows (the last one shorter), so the file's bytes depend on its rows only,
    not on how a job cut its writes (both engines write the same bytes), and a group is large
    enough for the encoders to pay (one group per model call of 256 series made writing the
    largest part of a panel job). Only the columns that repeat (ids, dates, names) are dictionary
    encoded: the forecasts' floats rarely repeat, and their dictionaries cost ~4x the time of the
    whole write and made the file larger (measured on a 100,000-series output: 1.0 s, 44 MB ->
    0.23 s, 32 MB)."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.fmt = file_format(path, "output")
        self.schema = schema
        self.rows = 0
        self._pending: list[pa.Table] = []  # Parquet: rows not yet in a row group
        self._pending_rows = 0
        if self.fmt == "csv":
            import pyarrow.csv as pcsv

            compression = None if path.name.lower().endswith(".csv") else pa.Codec.detect(str(path)).name
            self._sink = (
                pa.CompressedOutputStream(str(self.tmp), compression) if compression else pa.OSFile(str(self.tmp), "wb")
            )
            self._writer = pcsv.CSVWriter(self._sink, schema)
        else:
            import pyarrow.parquet as pq

            self._sink = None
            repeated = [f.name for f in schema if not pa.types.is_floating(f.type)]
            self._writer = pq.ParquetWriter(str(self.tmp), schema, compression="zstd", use_dictionary=repeated)

    def write(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        if self.fmt == "csv":
            self._writer.write_table(table)
            return
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        """Write the whole row groups buffered (``final``: the rest too)."""
        if not self._pending:
            return
        rows = pa.concat_tables(self._pending).combine_chunks()  # pages do not follow the writes' cuts
        whole = rows.num_rows if final else rows.num_rows - rows.num_rows % ROW_GROUP_ROWS
        if whole:
            self._writer.write_table(rows.slice(0, whole), row_group_size=ROW_GROUP_ROWS)
        rest = rows.slice(whole)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def commit(self) -> None:
        if self.fmt != "csv":
            self._flush(final=True)
        self._writer.close()
        if self._sink is not None:
            self._sink.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            if self._sink is not None:
                self._sink.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def errors_path_for(job: ForecastJob) -> Path:
    if job.errors_path is not None:
        return job.errors_path
    name = job.output.name
    for suffix in CSV_SUFFIXES + PARQUET_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return job.output.with_name(name + ".errors.csv")


def write_errors(path: Path, layout: Layout, errors: list[SeriesError]) -> Path | None:
    """The per-series error report (CSV: id, rows, error), atomically; removes a stale one."""
    if not errors:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow([layout.id_column or "id", "rows", "error"])
            for e in errors:
                w.writerow(["" if e.series_id is None else e.series_id, e.rows, e.message])
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def no_space(exc: BaseException) -> str | None:
    """The reason, when ``exc`` (or what caused it) is a full disk (ENOSPC / EDQUOT); else None.
    pyarrow's writers raise OSError with errno set and the C library's text in the message."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return os.strerror(e.errno)
        if "no space left on device" in str(e).lower():
            return "No space left on device"
        e = e.__cause__ or e.__context__
    return None


def disk_full_error(why: str, job: ForecastJob, writer: AtomicWriter) -> RnnopsError:
    """The one line for an output that could not be written whole (``why``: :func:`no_space`'s)."""
    kept = f"; the older {job.output.name} is left as it was" if job.output.exists() else ""
    return RnnopsError(
        f"{why} while writing {job.output} (after {writer.rows:,} rows): the job is not complete, "
        f"so nothing was written (the temporary {writer.tmp.name} was removed){kept}. Free some "
        "space on that disk or write the output elsewhere"
    )


def strict_error(errors: list[SeriesError], layout: Layout) -> RnnopsError:
    shown = "; ".join(f"{_label(e.series_id, layout)}: {e.message}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more series)" if len(errors) > 5 else ""
    return RnnopsError(f"--strict: {len(errors)} series cannot be forecast: {shown}{more}; nothing was written")


def _label(sid: Hashable, layout: Layout) -> str:
    if layout.id_column is None:
        return "the series"
    return f"series {sid!r}" if sid is not None else "rows without an id"


def write_results(
    job: ForecastJob,
    model: ForecastModel,
    layout: Layout,
    prepared: Prepared,
    forecasts: Iterator[tuple[slice, np.ndarray]],
    *,
    engine: str,
    rows_read: int,
    series: int,
    started: float,
) -> JobSummary:
    """Write the output (atomically), the error report and the plots, and sum the job up;
    both engines end here. ``started``: the job's ``time.perf_counter()`` at its start."""
    schema = output_schema(layout, date_type_for(prepared.future))
    plots: list[Path] = []
    writer = AtomicWriter(job.output, schema)
    bar = _progress(job, total=len(prepared.ids), unit="series", desc="forecasting")
    try:
        for s, y in forecasts:
            writer.write(
                output_table(schema, layout, prepared.ids[s], prepared.future[s], y, model.name, model.version)
            )
            bar.update(s.stop - s.start)
            if job.plot_dir is not None and s.start < job.plot_max:
                plots += plot_series(job.plot_dir, layout, prepared, y, s, job.plot_max)
        errors_path = write_errors(errors_path_for(job), layout, prepared.errors)
        writer.commit()
    except BaseException as exc:
        writer.abort()
        why = no_space(exc) if isinstance(exc, Exception) else None
        if why is None:
            raise
        raise disk_full_error(why, job, writer) from None
    finally:
        bar.close()
    return JobSummary(
        engine=engine,
        output=job.output,
        errors_path=errors_path,
        rows_read=rows_read,
        series=series,
        forecasted=len(prepared.ids),
        failed=len(prepared.errors),
        output_rows=writer.rows,
        seconds=time.perf_counter() - started,
        freq_mismatch=prepared.freq_mismatch,
        plots=tuple(plots),
        first_errors=tuple(prepared.errors[:5]),
    )


def plot_series(folder: Path, layout: Layout, prepared: Prepared, y: np.ndarray, s: slice, most: int) -> list[Path]:
    """A PNG per series (the first ``most``): the window the model read and the forecast, per target."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RnnopsError("--plot needs matplotlib: pip install matplotlib") from None
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    T = len(layout.targets)
    shown_t = list(range(min(T, 8)))
    for k in range(s.start, min(s.stop, most)):
        i = k - s.start
        sid = prepared.ids[k]
        hist = prepared.window_dates[k].view("datetime64[ns]")
        fut = prepared.future[k].view("datetime64[ns]")
        fig, axes = plt.subplots(len(shown_t), 1, figsize=(10, 2.2 * len(shown_t) + 0.6), squeeze=False, sharex=True)
        for ax, t in zip(axes[:, 0], shown_t):
            name = layout.targets[t]
            f_in = layout.features.index(name) if name in layout.features else None
            point = y[i, : layout.horizon, t, 0] if y.ndim == 4 else y[i, : layout.horizon, t]
            fx, fy = fut, point
            if f_in is not None:
                ax.plot(hist, prepared.windows[k, :, f_in], color="0.35", lw=1, label="history")
                fx, fy = np.r_[hist[-1:], fut], np.r_[prepared.windows[k, -1:, f_in], fy]  # joined to the last point
            if y.ndim == 4:  # the outermost levels' band, e.g. 0.1-0.9
                lv = layout.quantiles
                ax.fill_between(
                    fut,
                    y[i, : layout.horizon, t, 1],
                    y[i, : layout.horizon, t, -1],
                    color="tab:orange",
                    alpha=0.25,
                    lw=0,
                    label=f"p{lv[0] * 100:g}-p{lv[-1] * 100:g}",
                )
            ax.plot(fx, fy, color="tab:orange", lw=1.4, label="forecast")
            ax.set_ylabel(name, fontsize=8)
            ax.tick_params(labelsize=7)
        title = "" if sid is None else f"{layout.id_column} = {sid}: "
        axes[0, 0].set_title(f"{title}last {layout.lookback} rows and {layout.horizon}-step forecast", fontsize=9)
        axes[0, 0].legend(loc="upper left", fontsize=7)
        fig.autofmt_xdate()
        fig.tight_layout()
        stem = "series" if sid is None else re.sub(r"[^A-Za-z0-9._-]+", "_", str(sid))[:80] or "_"
        path = folder / f"{k:05d}_{stem}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written
