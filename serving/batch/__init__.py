"""Batch forecast jobs: a long-format file in, one row per series x future timestamp x target out.

``rnnops forecast --model forecaster@champion --input data.csv --output out.parquet`` (see
docs/batch.md). This module is the *local* engine and everything the Spark engine
(:mod:`.spark`) shares with it, so the two cannot drift apart:

- :class:`SeriesTails` is the streaming state: per series, the last ``lookback`` rows (a ring
  buffer of values and timestamps), the rows seen, the last timestamp and the first error. Input
  arrives as Arrow record batches in any chunking; a series may span chunks and series may
  interleave. Memory is ``series x lookback x (features + 1) x ~4-8 bytes``, independent of the
  number of rows: a file far larger than RAM streams through.
- :meth:`SeriesTails.finish` checks the window each series' model reads and builds the
  windows and the future timestamps; :func:`output_table` turns forecasts into output rows.
- The Spark engine feeds each group of series through the same two calls, so both engines give
  the same rows, the same errors and the same order.

Error policy (docs/batch.md): problems with the *file* (missing columns, unreadable input, a
model that is not a forecaster, ``--horizon`` beyond the model's) stop the job before anything
is written. Problems with *one series* (unparsable or missing dates, duplicated or backwards
timestamps, too few rows, NaN or irregular timestamps in the window the model reads) put that
series in an error report (``<output>.errors.csv``) and the rest are written; the command then
exits with status 3. ``--strict`` turns a series error into a job error (nothing written). The
output is written under a temporary name in the same folder and renamed when complete.

No torch here: onnxruntime (through :class:`Runtime`), numpy, pyarrow and pandas.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import queue
import re
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnops.errors import RnnopsError
from rnnops.serving.runtime import ModelInfo

log = logging.getLogger("rnnops.serving.batch")

NAT = np.iinfo(np.int64).min  # numpy's NaT as int64 nanoseconds
NONE = NAT + 1  # "no timestamp yet" for a series (never a real date: year 1677)
# Output columns besides the input's id and date columns (whose names are kept).
STEP, TARGET, FORECAST, MODEL, MODEL_VERSION = "step", "target", "forecast", "model", "model_version"
DATE_NAMES = ("date", "datetime", "timestamp", "time", "ds")
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_BLOCK_BYTES = 1 << 20
EXIT_SERIES_FAILED = 3  # CLI exit status when some series failed and the rest were written


# ---------------------------------------------------------------------------- the job


@dataclass
class ForecastJob:
    """What ``rnnops forecast`` was asked to do (the CLI's flags, validated by :func:`plan`)."""

    model: str  # name@alias, name/version, models:/..., or a local .onnx file
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


@dataclass(frozen=True)
class ForecastModel:
    """The model a job runs: where its verified ONNX is and what its metadata says."""

    name: str
    version: int | None  # registry version (None for a local .onnx file)
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


@dataclass
class JobSummary:
    engine: str
    output: Path
    errors_path: Path | None
    rows_read: int = 0
    series: int = 0
    forecasted: int = 0
    failed: int = 0
    output_rows: int = 0
    seconds: float = 0.0
    freq_mismatch: int = 0  # series whose step differs from the model's training frequency
    plots: list[Path] = field(default_factory=list)
    first_errors: list[tuple] = field(default_factory=list)  # (id, rows, message), a few

    @property
    def rows_per_s(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def file_format(path: Path, what: str) -> str:
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise RnnopsError(f"{what} {path}: use a .csv (or .csv.gz) or .parquet file")


def load_model(ref: str) -> ForecastModel:
    """Resolve ``ref`` (registry reference or local .onnx) and check that it is a forecaster."""
    from rnnops.registry.onnx_file import read_metadata, sha256_file

    local = Path(ref)
    if ref.endswith(".onnx"):
        if not local.is_file():
            raise RnnopsError(f"model file {ref} not found")
        path, sha, meta, name, version = local, sha256_file(local), read_metadata(local), local.stem, None
    else:
        from rnnops.registry.resolve import resolve
        from rnnops.tracking import connect

        connect()
        resolved = resolve(ref)
        path, sha, meta, name, version = resolved.path, resolved.sha256, resolved.metadata, resolved.name, resolved.version
    if meta.get("kind") != "forecaster":
        raise RnnopsError(f"{ref} is a {meta.get('kind') or 'model without rnnops metadata'}, not a forecaster: "
                          "`rnnops forecast` needs a model trained with `rnnops train forecast` (or `sine`)")
    info = ModelInfo.from_metadata(meta, where=str(ref))
    return ForecastModel(name=name, version=version, path=Path(path), sha256=sha, info=info)


def read_header(path: Path, fmt: str) -> pa.Schema:
    """The input's columns (CSV: names only, types left to the reader)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise RnnopsError(f"cannot read {path} as Parquet: {exc}") from None
    import pyarrow.csv as pcsv

    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            reader = pcsv.open_csv(stream, read_options=pcsv.ReadOptions(block_size=1 << 20),
                                   convert_options=pcsv.ConvertOptions(column_types={}))
            return pa.schema([(name, pa.string()) for name in reader.schema.names])
    except (OSError, pa.ArrowException) as exc:
        raise RnnopsError(f"cannot read {path} as CSV: {str(exc).splitlines()[0]}") from None


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
    date_col = job.date_column
    if date_col is None:
        date_col = next((c for c in header if c.lower() in DATE_NAMES), None)
        if date_col is None:
            raise RnnopsError(f"{job.input}: no date column found (looked for {', '.join(DATE_NAMES)}); "
                              f"name it with --date-column (columns: {_list(header)})")
    needed = {"--date-column": [date_col], "--id-column": [job.id_column] if job.id_column else [],
              "the model's features": list(info.feature_names)}
    missing = {what: [c for c in cols if c not in have] for what, cols in needed.items()}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        detail = "; ".join(f"{what}: {_list(cols)}" for what, cols in missing.items())
        raise RnnopsError(f"{job.input} lacks columns ({detail}); it has {_list(header)}. The model "
                          f"{model.name} reads {_list(info.feature_names)} (one row per series and timestamp)")
    if job.id_column is not None and job.id_column in info.feature_names:
        raise RnnopsError(f"--id-column {job.id_column} is one of the model's features")
    if date_col in info.feature_names:
        raise RnnopsError(f"date column {date_col} is one of the model's features")
    taken = {STEP, TARGET, FORECAST, MODEL, MODEL_VERSION}
    clash = [c for c in (job.id_column, date_col) if c in taken]
    if clash or job.id_column == date_col and job.id_column is not None:
        raise RnnopsError(f"input column name(s) {_list(clash or [date_col])} clash with the output columns "
                          f"({_list(sorted(taken))}) or each other; rename them")
    horizon = info.horizon if job.horizon is None else int(job.horizon)
    if not 1 <= horizon <= info.horizon:
        raise RnnopsError(f"--horizon {job.horizon}: this model forecasts 1 to {info.horizon} steps")
    if job.freq:
        _offset(job.freq)  # a bad --freq is an error now, not per series
    if info.lookback < 1:
        raise RnnopsError(f"{model.name}: its metadata has no lookback; re-export it with a current rnnops")
    id_type = None
    if job.id_column is not None:
        id_type = schema.field(job.id_column).type
        if pa.types.is_dictionary(id_type):
            id_type = id_type.value_type
        if pa.types.is_large_string(id_type):
            id_type = pa.string()
    return Layout(fmt=fmt, id_column=job.id_column, date_column=date_col, features=tuple(info.feature_names),
                  targets=tuple(info.target_names), lookback=info.lookback, horizon=horizon, freq=job.freq,
                  date_format=job.date_format, model_freq=info.freq, id_type=id_type)


def _list(cols, most: int = 12) -> str:
    cols = [str(c) for c in cols]
    return ", ".join(cols[:most]) + (f" (+{len(cols) - most} more)" if len(cols) > most else "")


# ---------------------------------------------------------------------------- reading


def iter_input(path: Path, layout: Layout, chunk_rows: int) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Record batches of the needed columns (at most ``chunk_rows`` rows each), with the input
    bytes consumed so far (CSV) or rows (Parquet), for the progress bar."""
    cols = [c for c in (layout.id_column, layout.date_column) if c] + list(layout.features)
    if layout.fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        done = 0
        try:
            for batch in pf.iter_batches(batch_size=chunk_rows, columns=cols):
                done += batch.num_rows
                yield batch, done
        except pa.ArrowException as exc:
            raise RnnopsError(f"cannot read {path}: {exc}") from None
        return
    import pyarrow.csv as pcsv

    types = {c: pa.float64() for c in layout.features}
    types[layout.date_column] = pa.string()
    if layout.id_column:
        types[layout.id_column] = pa.string()  # ids are labels: "007" stays "007"
    convert = pcsv.ConvertOptions(column_types=types, include_columns=cols, null_values=[""],
                                  strings_can_be_null=True, quoted_strings_can_be_null=True)
    raw = pa.OSFile(str(path), "rb")
    compression = pa.Codec.detect(str(path)).name if not str(path).lower().endswith(".csv") else None
    stream = pa.CompressedInputStream(raw, compression) if compression else raw
    # 1 MiB blocks parsed in the reading thread (use_threads=False): measured fastest here and
    # the leanest; Arrow's threaded reader reads dozens of blocks ahead (hundreds of MB).
    read = pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False)
    pending, n = [], 0
    try:
        reader = pcsv.open_csv(stream, read_options=read, convert_options=convert)
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            for lo in range(0, batch.num_rows, chunk_rows):
                piece = batch.slice(lo, chunk_rows)
                pending.append(piece)
                n += piece.num_rows
                if n >= chunk_rows:
                    yield _combine(pending), raw.tell()
                    pending, n = [], 0
        if pending:
            yield _combine(pending), raw.tell()
    except pa.ArrowInvalid as exc:
        raise RnnopsError(f"cannot read {path}: {str(exc).splitlines()[0]} (feature columns must hold numbers; "
                          "an empty cell is a missing value)") from None
    finally:
        stream.close()


def _combine(batches: list) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]


def prefetch(it: Iterator, depth: int = 2) -> Iterator:
    """Run ``it`` in a thread, ``depth`` items ahead: Arrow parses the next chunk (without the
    GIL) while this thread processes the current one."""
    q: queue.Queue = queue.Queue(depth)
    done = object()
    stop = threading.Event()

    def pump():
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    t = threading.Thread(target=pump, name="rnnops-forecast-reader", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()
        t.join(timeout=5)


def parse_dates(arr: pa.Array, date_format: str | None = None) -> np.ndarray:
    """int64 nanoseconds since the epoch (UTC for inputs with an offset), NAT where missing or
    unparsable. ISO 8601 strings take Arrow's fast path; anything else pandas' parser."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if pa.types.is_timestamp(t):
        if t.tz is not None:  # Arrow keeps UTC underneath
            arr = arr.cast(pa.timestamp(t.unit, tz="UTC")).cast(pa.timestamp(t.unit))
        out = arr.cast(pa.timestamp("ns"), safe=False)
    elif pa.types.is_date(t):
        out = arr.cast(pa.timestamp("ns"))
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        if date_format:
            out = pc.strptime(arr, format=date_format, unit="ns", error_is_null=True)
        else:
            try:
                out = arr.cast(pa.timestamp("ns"))
            except pa.ArrowInvalid:
                out = _pandas_dates(arr)
    else:
        raise RnnopsError(f"the date column holds {t}, not dates or strings")
    return out.to_numpy(zero_copy_only=False).astype("datetime64[ns]").view(np.int64)


def _pandas_dates(arr: pa.Array) -> pa.Array:
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "could not infer format": we coerce and report
        parsed = pd.to_datetime(pd.Series(arr.to_numpy(zero_copy_only=False), dtype=object), errors="coerce", utc=True)
    return pa.array(parsed.dt.tz_localize(None).astype("datetime64[ns]"), type=pa.timestamp("ns"))


def feature_matrix(batch: pa.RecordBatch, features) -> np.ndarray:
    """float32 ``[rows, F]`` of the feature columns; nulls become NaN."""
    cols = []
    for name in features:
        col = batch.column(name)
        try:
            cols.append(np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float32))
        except (TypeError, ValueError):
            raise RnnopsError(f"column {name} holds {col.type}, not numbers") from None
    return np.column_stack(cols) if cols else np.zeros((batch.num_rows, 0), np.float32)


def ts(ns) -> str:
    """A timestamp for messages: 2024-01-31 13:00:00."""
    import pandas as pd

    return str(pd.Timestamp(int(ns)))


def span(ns) -> str:
    """A duration for messages: 2h, 15min, 1D."""
    import pandas as pd

    with contextlib.suppress(ValueError):
        text = pd.tseries.frequencies.to_offset(pd.Timedelta(int(ns))).freqstr
        return text if text[:1].isdigit() else "1" + text
    return str(pd.Timedelta(int(ns)))


def _offset(freq: str):
    import pandas as pd

    try:
        return pd.tseries.frequencies.to_offset(freq)
    except ValueError:
        raise RnnopsError(f"--freq {freq!r} is not a pandas frequency (examples: h, 15min, D, W, MS)") from None


def _tick_nanos(offset) -> int | None:
    """Nanoseconds of a fixed-length offset (h, min, D...), None for calendar ones (MS, B, W-SUN...)."""
    try:
        return int(offset.nanos)
    except ValueError:
        return None


# ---------------------------------------------------------------------------- streaming state


@dataclass
class Prepared:
    """What :meth:`SeriesTails.finish` hands to the forecasting step."""

    ids: list  # valid series, in order of first appearance
    first_pos: np.ndarray  # int64 position of each valid series' first row (the output order)
    windows: np.ndarray  # float32 [m, lookback, F]
    window_dates: np.ndarray  # int64 ns [m, lookback]
    future: np.ndarray  # int64 ns [m, horizon]
    errors: list  # (id, rows, message, first_pos) in order of first appearance
    mismatch: np.ndarray  # bool [m]: spaced unlike the model's training data (a warning, not an error)

    @property
    def freq_mismatch(self) -> int:
        return int(self.mismatch.sum())


class SeriesTails:
    """Per-series streaming state; feed Arrow batches in file order, then :meth:`finish`.

    Rows of a series must come in increasing time order (series may interleave and span
    chunks); the first problem in a series (in file order) is its error and the rest of its rows
    are ignored.
    """

    def __init__(self, layout: Layout, capacity: int = 1024):
        self.layout = layout
        self.L = layout.lookback
        self.F = len(layout.features)
        self.index: dict = {}  # series id -> gid (position of first appearance)
        self.ids: list = []
        self._alloc(capacity)
        self.messages: dict[int, str] = {}  # gid -> the series' error
        self.rows = 0

    def _alloc(self, cap: int) -> None:
        L, F = self.L, self.F
        old = getattr(self, "cap", 0)
        new = {
            "tails": np.zeros((cap, L, F), np.float32),
            "tdates": np.zeros((cap, L), np.int64),
            "wptr": np.zeros(cap, np.int64),
            "count": np.zeros(cap, np.int64),
            "last": np.full(cap, NONE, np.int64),
            "failed": np.zeros(cap, bool),
            "first": np.zeros(cap, np.int64),
        }
        for name, arr in new.items():
            if old:
                arr[:old] = getattr(self, name)[:old]
            setattr(self, name, arr)
        self.cap = cap

    @property
    def series(self) -> int:
        return len(self.ids)

    def _gids(self, batch: pa.RecordBatch, n: int) -> np.ndarray:
        col = self.layout.id_column
        if col is None:
            if not self.ids:
                self._new_gid(None)
            return np.zeros(n, np.int64)
        arr = batch.column(col)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        enc = pc.dictionary_encode(arr, null_encoding="encode")
        local = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        lookup = np.array([self.index[u] if u in self.index else self._new_gid(u)
                           for u in enc.dictionary.to_pylist()], dtype=np.int64)
        return lookup[local] if len(lookup) else local

    def _new_gid(self, key) -> int:
        gid = len(self.ids)
        if gid >= self.cap:
            self._alloc(self.cap * 2)
        self.index[key] = gid
        self.ids.append(key)
        if key is None and self.layout.id_column is not None:
            self.failed[gid] = True  # rows without an id: reported, never forecast
        return gid

    def feed(self, batch: pa.RecordBatch, positions: np.ndarray) -> None:
        """Take one chunk. ``positions``: int64, increasing in file order (row numbers locally,
        Spark's ``monotonically_increasing_id`` there); they order the output and the errors."""
        n = batch.num_rows
        if n == 0:
            return
        self.rows += n
        gl = self._gids(batch, n)
        dates = parse_dates(batch.column(self.layout.date_column), self.layout.date_format)
        order = np.argsort(gl, kind="stable")  # rows of a series together, in file order
        g, d = gl[order], dates[order]
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        ends = np.r_[starts[1:], n]
        gids = g[starts]
        sizes = ends - starts
        new = self.count[gids] == 0
        self.first[gids[new]] = positions[order[starts[new]]]
        self.count[gids] += sizes

        prev = np.empty(n, np.int64)
        prev[1:] = d[:-1]
        prev[starts] = self.last[gids]
        bad_date = d == NAT
        backwards = ~bad_date & (prev != NONE) & (prev != NAT) & (d <= prev)
        dead = np.repeat(self.failed[gids], sizes)
        viol = (bad_date | backwards) & ~dead
        if viol.any():
            rows = np.flatnonzero(viol)
            _, first = np.unique(g[rows], return_index=True)
            raw = batch.column(self.layout.date_column)
            for r in rows[first]:
                gid = int(g[r])
                if bad_date[r]:
                    value = raw[int(order[r])].as_py()
                    msg = "a row has no date" if value is None else f"unparsable date {str(value)!r}"
                elif d[r] == prev[r]:
                    msg = f"timestamp {ts(d[r])} repeats (one row per series and timestamp)"
                else:
                    msg = (f"timestamps go back: {ts(d[r])} comes after {ts(prev[r])} (sort the rows of each "
                           "series by time" + ("" if self.layout.id_column else "; or is this several series? "
                                               "name the id column with --id-column") + ")")
                self.messages[gid] = msg
                self.failed[gid] = True

        alive = ~self.failed[gids]
        if not alive.any():
            return
        gids_a, starts_a, ends_a = gids[alive], starts[alive], ends[alive]
        take = np.minimum(ends_a - starts_a, self.L)  # only the last lookback rows of each series matter
        # ring-buffer slots: row j of the k taken (oldest first) goes to (wptr + j) % L
        rows = _ranges(ends_a - take, take)
        owner = np.repeat(gids_a, take)
        j = rows - np.repeat(ends_a - take, take)
        slot = (self.wptr[owner] + j) % self.L
        vals = feature_matrix(batch.select(list(self.layout.features)).take(pa.array(order[rows])), self.layout.features)
        self.tails[owner, slot] = vals
        self.tdates[owner, slot] = d[rows]
        self.wptr[gids_a] = (self.wptr[gids_a] + take) % self.L
        self.last[gids_a] = d[ends_a - 1]

    def error_list(self) -> list:
        return [(self.ids[g], int(self.count[g]), m, int(self.first[g])) for g, m in sorted(self.messages.items())]

    def finish(self) -> Prepared:
        """Check each series' window (length, NaN, spacing) and build windows + future timestamps."""
        import pandas as pd

        lay, L, n = self.layout, self.L, self.series
        messages = dict(self.messages)
        if lay.id_column is not None and None in self.index:
            g = self.index[None]
            messages[g] = f"{int(self.count[g])} rows have no {lay.id_column}"
        alive = np.flatnonzero(~self.failed[:n])
        short = alive[self.count[alive] < L]
        for g in short:
            messages[int(g)] = f"only {int(self.count[g])} rows; the model reads the last {L}"
        alive = alive[self.count[alive] >= L]

        idx = (self.wptr[alive, None] + np.arange(L)) % L  # oldest first
        windows = self.tails[alive[:, None], idx]
        wdates = self.tdates[alive[:, None], idx]
        finite = np.isfinite(windows).all(axis=(1, 2))
        for k in np.flatnonzero(~finite):
            t, f = np.argwhere(~np.isfinite(windows[k]))[0]
            what = "missing (NaN)" if np.isnan(windows[k, t, f]) else f"{windows[k, t, f]}"
            messages[int(alive[k])] = (f"{lay.features[f]} is {what} at {ts(wdates[k, t])}, within the last {L} rows "
                                       "that the model reads")

        horizon = lay.horizon
        future = np.zeros((len(alive), horizon), np.int64)
        ok = finite.copy()
        mismatch = np.zeros(len(alive), bool)
        model_step = _tick_nanos(_offset(lay.model_freq)) if lay.model_freq else None
        fixed_offset = _offset(lay.freq) if lay.freq else None
        fixed_step = _tick_nanos(fixed_offset) if fixed_offset is not None else None
        diffs = np.diff(wdates, axis=1)
        steps_h = np.arange(1, horizon + 1, dtype=np.int64)
        last = wdates[:, -1:] if len(alive) else np.zeros((0, 1), np.int64)
        # The common cases, vectorised: a fixed --freq, or every gap of the window equal.
        if fixed_offset is not None and fixed_step is not None:
            regular = finite & (diffs == fixed_step).all(axis=1)
            future[regular] = last[regular] + fixed_step * steps_h
        elif fixed_offset is None and L >= 2:
            regular = finite & (diffs == diffs[:, :1]).all(axis=1)
            step = diffs[:, 0]
            future[regular] = last[regular] + step[regular, None] * steps_h
            if model_step is not None:
                mismatch = regular & (step != model_step)
        else:
            regular = np.zeros(len(alive), bool)
        # The rest, one by one: irregular windows (errors) and calendar frequencies (MS, B...).
        for k in np.flatnonzero(finite & ~regular):
            g = int(alive[k])
            dk = diffs[k]
            if fixed_offset is not None and fixed_step is not None:
                i = int(np.flatnonzero(dk != fixed_step)[0])
                messages[g] = (f"timestamps are not {lay.freq} apart: {span(dk[i])} from {ts(wdates[k, i])} to "
                               f"{ts(wdates[k, i + 1])}, within the last {L} rows that the model reads")
                ok[k] = False
                continue
            if fixed_offset is not None:  # a calendar frequency: compare with pandas' own range
                want = pd.date_range(pd.Timestamp(int(wdates[k, 0])), periods=L, freq=fixed_offset).as_unit("ns").asi8
                bad = np.flatnonzero(want != wdates[k])
                if len(bad):
                    messages[g] = (f"timestamps do not follow --freq {lay.freq}: {ts(wdates[k, bad[0]])} where "
                                   f"{ts(want[bad[0]])} was due, within the last {L} rows that the model reads")
                    ok[k] = False
                    continue
                future[k] = _calendar_future(wdates[k, -1], fixed_offset, horizon)
                continue
            offset = _infer_offset(wdates[k]) if L >= 3 else None
            if offset is None and L < 2 and lay.model_freq:
                offset = _offset(lay.model_freq)
            if offset is None:
                messages[g] = (_irregular(dk, wdates[k], L) if L >= 2 else
                               "one row cannot tell the frequency and the model has none: give --freq")
                ok[k] = False
                continue
            future[k] = _calendar_future(wdates[k, -1], offset, horizon)

        keep = alive[ok]
        errors = [(self.ids[g], int(self.count[g]), m, int(self.first[g])) for g, m in sorted(messages.items())]
        return Prepared(ids=[self.ids[g] for g in keep], first_pos=self.first[keep].copy(),
                        windows=np.ascontiguousarray(windows[ok]), window_dates=wdates[ok], future=future[ok],
                        errors=errors, mismatch=mismatch[ok])


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + l)`` for each pair, vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offs = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + (np.arange(total) - offs)


def _infer_offset(dates: np.ndarray):
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            freq = pd.infer_freq(pd.DatetimeIndex(dates.astype("datetime64[ns]")))
        except (TypeError, ValueError):
            return None
    if freq is None:
        return None
    return pd.tseries.frequencies.to_offset(freq if isinstance(freq, str) else freq.freqstr)


def _calendar_future(last_ns: int, offset, horizon: int) -> np.ndarray:
    import pandas as pd

    rng = pd.date_range(pd.Timestamp(int(last_ns)), periods=horizon + 1, freq=offset)[1:]
    return rng.as_unit("ns").asi8


def _irregular(dk: np.ndarray, dates: np.ndarray, L: int) -> str:
    values, counts = np.unique(dk, return_counts=True)
    common = int(values[np.argmax(counts)])
    i = int(np.flatnonzero(dk != common)[0])
    return (f"irregular timestamps: a step of {span(dk[i])} from {ts(dates[i])} to {ts(dates[i + 1])} where most are "
            f"{span(common)}, within the last {L} rows that the model reads (give --freq for a calendar frequency)")


# ---------------------------------------------------------------------------- forecasting + output


def output_schema(layout: Layout, date_type: pa.DataType) -> pa.Schema:
    fields = []
    if layout.id_column is not None:
        fields.append(pa.field(layout.id_column, layout.id_type or pa.string()))
    fields += [pa.field(layout.date_column, date_type), pa.field(STEP, pa.int32()), pa.field(TARGET, pa.string()),
               pa.field(FORECAST, pa.float32()), pa.field(MODEL, pa.string()), pa.field(MODEL_VERSION, pa.int64())]
    return pa.schema(fields)


def date_type_for(future: np.ndarray) -> pa.DataType:
    """Whole seconds are written as such (``2024-01-31 13:00:00``), else nanoseconds."""
    return pa.timestamp("s") if (future % 1_000_000_000 == 0).all() else pa.timestamp("ns")


def output_table(schema: pa.Schema, layout: Layout, ids: list, future: np.ndarray, y: np.ndarray,
                 model: str, version: int | None) -> pa.Table:
    """Rows for ``len(ids)`` series: for each series, each step, each target (in that order)."""
    m, H = future.shape
    T = len(layout.targets)
    per = H * T
    y = np.ascontiguousarray(y[:, :H, :], dtype=np.float32)
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
    cols.append(pa.array([model], type=pa.string()).take(pa.array(np.zeros(m * per, np.int64))))
    cols.append(pa.nulls(m * per, pa.int64()) if version is None else
                pa.array(np.full(m * per, int(version), np.int64)))
    return pa.Table.from_arrays(cols, schema=schema)


class AtomicWriter:
    """Writes CSV or Parquet under a temporary name in the output's folder; :meth:`commit` renames
    it into place, :meth:`abort` removes it. Readers never see a partial file under the real name."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.fmt = file_format(path, "output")
        self.schema = schema
        self.rows = 0
        if self.fmt == "csv":
            import pyarrow.csv as pcsv

            compression = None if path.name.lower().endswith(".csv") else pa.Codec.detect(str(path)).name
            self._sink = pa.CompressedOutputStream(str(self.tmp), compression) if compression else pa.OSFile(str(self.tmp), "wb")
            self._writer = pcsv.CSVWriter(self._sink, schema)
        else:
            import pyarrow.parquet as pq

            self._sink = None
            self._writer = pq.ParquetWriter(str(self.tmp), schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table)
        self.rows += table.num_rows

    def commit(self) -> None:
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


def write_errors(path: Path, layout: Layout, errors: list) -> Path | None:
    """The per-series error report (CSV: id, rows, error), atomically; removes a stale one."""
    if not errors:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([layout.id_column or "id", "rows", "error"])
        for sid, rows, msg, *_ in errors:
            w.writerow(["" if sid is None else sid, rows, msg])
    os.replace(tmp, path)
    return path


def strict_error(errors: list, layout: Layout) -> RnnopsError:
    shown = "; ".join(f"{_label(sid, layout)}: {msg}" for sid, _, msg, *_ in errors[:5])
    more = f" (and {len(errors) - 5} more series)" if len(errors) > 5 else ""
    return RnnopsError(f"--strict: {len(errors)} series cannot be forecast: {shown}{more}; nothing was written")


def _label(sid, layout: Layout) -> str:
    if layout.id_column is None:
        return "the series"
    return f"series {sid!r}" if sid is not None else "rows without an id"


def make_runtime(model: ForecastModel, threads: int = 1):
    from rnnops.serving.runtime import Runtime

    return Runtime(model.path, providers=os.environ.get("RNNOPS_PROVIDERS", "cpu"), threads=threads,
                   name=f"{model.name}/{model.version}")


def forecast_windows(runtime, windows: np.ndarray, batch: int) -> np.ndarray:
    """``runtime.forecast`` made batch-invariant: onnxruntime's CPU kernels take another path for
    a batch of one (a matrix-vector product) whose results differ in the last float32 bit, so a
    lone window is run as a batch of two. With it a series' forecast does not depend on which
    other series share its call: tiny chunks, other worker counts and the Spark engine all give
    the same bytes."""
    if len(windows) == 1:
        return runtime.forecast(np.concatenate([windows, windows]), max_batch=max(2, batch))[:1]
    out = runtime.forecast(windows, max_batch=batch)
    if len(windows) > batch and len(windows) % batch == 1:  # the last chunk would be a batch of one
        out[-1:] = forecast_windows(runtime, windows[-1:], batch)
    return out


def forecast_batches(runtime, prepared: Prepared, batch: int, workers: int) -> Iterator[tuple[slice, np.ndarray]]:
    """Forecasts for ``prepared.windows`` in slices of ``batch`` windows, ``workers`` onnxruntime
    calls at a time (one session, called from several threads; each call single-threaded:
    for small recurrent nets parallel batches scale better than intra-op threads)."""
    m = len(prepared.windows)
    slices = [slice(lo, min(m, lo + batch)) for lo in range(0, m, batch)]
    if workers <= 1 or len(slices) <= 1:
        for s in slices:
            yield s, forecast_windows(runtime, prepared.windows[s], batch)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="rnnops-forecast") as pool:
        # bounded look-ahead keeps memory flat: at most 2 x workers batches in flight
        pending: list = []
        it = iter(slices)
        for s in it:
            pending.append((s, pool.submit(forecast_windows, runtime, prepared.windows[s], batch)))
            if len(pending) >= 2 * workers:
                s0, f0 = pending.pop(0)
                yield s0, f0.result()
        for s0, f0 in pending:
            yield s0, f0.result()


# ---------------------------------------------------------------------------- the local engine


def run(job: ForecastJob, engine: str = "local", spark_master: str | None = None) -> JobSummary:
    """Run ``job`` with the local or Spark engine; raises :class:`RnnopsError` for file-level problems."""
    model = load_model(job.model)
    layout = plan(job, model)
    if engine == "spark":
        from rnnops.serving.batch.spark import run_spark

        return run_spark(job, model, layout, master=spark_master)
    if engine != "local":
        raise RnnopsError(f"--engine {engine!r}: use local or spark")
    return run_local(job, model, layout)


def _progress(job: ForecastJob, **kw):
    from tqdm.auto import tqdm

    enabled = job.progress if job.progress is not None else sys.stderr.isatty()
    return tqdm(disable=not enabled, file=sys.stderr, dynamic_ncols=True, **kw)


def run_local(job: ForecastJob, model: ForecastModel, layout: Layout) -> JobSummary:
    t0 = time.perf_counter()
    workers = job.workers or available_cpus()
    tails = SeriesTails(layout)
    if layout.fmt == "parquet":
        import pyarrow.parquet as pq

        total, unit = pq.ParquetFile(job.input).metadata.num_rows, "rows"
    else:
        total, unit = job.input.stat().st_size, "B"
    bar = _progress(job, total=total, unit=unit, unit_scale=True, desc="reading")
    done_prev = 0
    try:
        for batch, done in prefetch(iter_input(job.input, layout, job.chunk_rows)):
            tails.feed(batch, np.arange(tails.rows, tails.rows + batch.num_rows, dtype=np.int64))
            bar.update(done - done_prev)
            done_prev = done
            elapsed = time.perf_counter() - t0
            bar.set_postfix(rows=f"{tails.rows:,}", series=f"{tails.series:,}",
                            rows_s=f"{tails.rows / max(elapsed, 1e-9):,.0f}", refresh=False)
            if job.strict and tails.messages:
                raise strict_error(tails.error_list(), layout)
    finally:
        bar.close()
    prepared = tails.finish()
    if job.strict and prepared.errors:
        raise strict_error(prepared.errors, layout)
    summary = JobSummary(engine="local", output=job.output, errors_path=None, rows_read=tails.rows,
                         series=tails.series)
    runtime = make_runtime(model, threads=1)
    write_results(job, model, layout, prepared, forecast_batches(runtime, prepared, job.batch_windows, workers), summary)
    summary.seconds = time.perf_counter() - t0
    return summary


def write_results(job: ForecastJob, model: ForecastModel, layout: Layout, prepared: Prepared,
                  forecasts: Iterator[tuple[slice, np.ndarray]], summary: JobSummary) -> None:
    """Write the output (atomically), the error report and the plots; both engines end here."""
    schema = output_schema(layout, date_type_for(prepared.future))
    summary.failed = len(prepared.errors)
    summary.freq_mismatch = prepared.freq_mismatch
    summary.first_errors = [e[:3] for e in prepared.errors[:5]]
    writer = AtomicWriter(job.output, schema)
    bar = _progress(job, total=len(prepared.ids), unit="series", desc="forecasting")
    try:
        for s, y in forecasts:
            writer.write(output_table(schema, layout, prepared.ids[s], prepared.future[s], y, model.name, model.version))
            bar.update(s.stop - s.start)
            if job.plot_dir is not None and s.start < job.plot_max:
                summary.plots += plot_series(job.plot_dir, layout, prepared, y, s, job.plot_max)
        summary.errors_path = write_errors(errors_path_for(job), layout, prepared.errors)
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    summary.forecasted = len(prepared.ids)
    summary.output_rows = writer.rows


# ---------------------------------------------------------------------------- plots


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
            fx, fy = fut, y[i, : layout.horizon, t]
            if f_in is not None:
                ax.plot(hist, prepared.windows[k, :, f_in], color="0.35", lw=1, label="history")
                fx, fy = np.r_[hist[-1:], fut], np.r_[prepared.windows[k, -1:, f_in], fy]  # joined to the last point
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


def describe(summary: JobSummary) -> str:
    s = summary
    line = (f"{s.engine}: {s.rows_read:,} rows, {s.series:,} series -> {s.output_rows:,} forecast rows for "
            f"{s.forecasted:,} series in {s.output} ({s.seconds:.1f} s, {s.rows_per_s:,.0f} rows/s)")
    if s.failed:
        line += f"; {s.failed:,} series failed: see {s.errors_path}"
        for sid, rows, msg in s.first_errors[:3]:
            line += f"\n  {sid!r} ({rows} rows): {msg}"
    if s.freq_mismatch:
        line += (f"\nwarning: {s.freq_mismatch:,} series are spaced unlike the model's training data; "
                 "their forecasts use the model at a frequency it was not trained on")
    if s.plots:
        line += f"\nplots: {len(s.plots)} PNG in {s.plots[0].parent}"
    return line
