"""Batch jobs over panels: ``rnnops forecast --model M --input PANEL --id-column ID --date-column
DATE [--future FUTURE]`` with a panel model (``rnnops.kind`` = ``"panel"``, issue 26, section 4).

PANEL is the long table the model was trained on (CSV or Parquet): per row a series id, a date,
the target, the past covariates, the future covariates (their history) and the static columns
(one value per series). FUTURE (CSV or Parquet) holds id, date and the future covariates for the
horizon: per series, the ``H`` steps after its last row. Each series becomes a request entry and
then the model's inputs through :mod:`rnnops.panel_features`, the same function ``/forecast``'s
``series`` form uses, so a batch job and the server give the same numbers for the same series.

Output: as every batch job (:mod:`.write`): one row per series x step, with the point forecast
(the model's median) and a ``forecast_pNN`` column per quantile level. A series that cannot be
forecast (its future covariates missing from FUTURE or of the wrong length, dates off the model's
frequency, too little history, an unparsable date...) is a row of ``<output>.errors.csv`` with the
reason, and the others are written (``--strict``: nothing is written). Problems with the files
(missing columns, non-numeric columns, a model input without its column) stop the job first.

Both engines share :func:`prepare_series` (a group of series -> their features, as arrays) and
:func:`predict` (the model calls); the Spark engine (:func:`run_panel_spark`) reads and groups the
files with Spark and runs the same two on its workers, the model in the local engine's calls, so
its output is the local engine's, byte for byte.

Memory: the local engine streams a panel whose series are contiguous (sorted or grouped by id)
through :mod:`.panel_stream`, series by series, memory flat in the number of series; a panel whose
series interleave is read whole (only the columns the model reads) and grouped here, with a
warning that says how to stream it. The Spark engine prepares and forecasts on the workers; its
driver gathers each forecast series' first file position, the forecasts and the error rows, not
the inputs (docs/benchmarks.md measures what it holds).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rnnops import calendar, timeseries
from rnnops import panel_contract as pc_
from rnnops import panel_features as pf
from rnnops.errors import RnnopsError
from rnnops.panel_contract import PanelContract
from rnnops.serving.batch.job import ForecastJob, ForecastModel, JobSummary, Layout, _list
from rnnops.serving.batch.read import file_format, parse_dates, read_header
from rnnops.serving.batch.tails import NAT, Prepared, SeriesError
from rnnops.serving.batch.write import strict_error, write_results
from rnnops.timeseries import ts

if TYPE_CHECKING:  # pyspark is untyped (these are Any to mypy)
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

    from rnnops.serving.runtime import Runtime


def contract_of(model: ForecastModel) -> PanelContract:
    assert model.info.panel is not None, "a panel model"
    return model.info.panel


def static_columns(c: PanelContract) -> tuple[str, ...]:
    return tuple(s.name for s in c.static_categorical) + c.static_real


def panel_columns(c: PanelContract) -> tuple[str, ...]:
    """The value columns a panel file needs for model ``c`` (besides id and date)."""
    return (c.target, *c.past_covariates, *c.future_covariates, *static_columns(c))


def check_files(job: ForecastJob, model: ForecastModel, id_column: str, date_column: str) -> None:
    """File-level checks of a panel job (one line each): the columns the model reads, and FUTURE."""
    c = contract_of(model)
    have = set(read_header(job.input, file_format(job.input, "input")).names)
    missing = [col for col in (id_column, date_column, *panel_columns(c)) if col not in have]
    if missing:
        raise RnnopsError(
            f"{job.input} lacks columns the panel model {model.name} reads: {_list(missing)} (it has "
            f"{_list(sorted(have))}); it needs the id, the date, target {c.target!r}, past covariates "
            f"{_list(c.past_covariates) or 'none'}, future covariates {_list(c.future_covariates) or 'none'} "
            f"(their history) and static columns {_list(static_columns(c)) or 'none'}"
        )
    if c.future_covariates and job.future is None:
        raise RnnopsError(
            f"the panel model {model.name} reads future covariates ({_list(c.future_covariates)}): give "
            f"--future FILE with {id_column}, {date_column} and them for the {c.horizon} steps after each series"
        )
    if job.future is not None:
        if not job.future.is_file():
            raise RnnopsError(f"--future {job.future} not found")
        have_f = set(read_header(job.future, file_format(job.future, "--future")).names)
        missing = [col for col in (id_column, date_column, *c.future_covariates) if col not in have_f]
        if missing:
            raise RnnopsError(f"--future {job.future} lacks columns {_list(missing)} (it has {_list(sorted(have_f))})")
    if job.plot_dir is not None:
        raise RnnopsError("--plot is not available for panel models yet; leave it out")


# ------------------------------------------------------------------------------ reading


@dataclass
class Table:
    """A file's columns as arrays, rows grouped by series (first appearance), then by date."""

    ids: list[Hashable]  # each series' id as read, in order of first appearance
    keys: list[str]  # str(id): how the panel and FUTURE are matched
    starts: np.ndarray  # int64 [series + 1]: series k is rows starts[k]:starts[k + 1] (sorted)
    first_pos: np.ndarray  # int64 [series]: the file position of each series' first row
    dates: np.ndarray  # int64 ns [rows] (NAT where unparsable), sorted within each series
    values: dict[str, np.ndarray]  # numeric columns: float64 [rows] (NaN where missing)
    text: dict[str, np.ndarray]  # the other (static) columns at each series' first row by date: object [series]
    no_id_rows: int  # rows without an id (reported as one error row)
    no_id_pos: int  # the first of them (-1: none)


def read_file(path: Path, id_column: str, date_column: str, numeric: Sequence[str], other: Sequence[str]) -> pa.Table:
    """The columns a job reads from ``path`` (CSV: ids, dates and text columns as strings)."""
    fmt = file_format(path, "input")
    columns = list(dict.fromkeys([id_column, date_column, *numeric, *other]))
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path, columns=columns)
        import pyarrow.csv as pcsv

        types = {c: pa.string() for c in (id_column, date_column, *other)}
        return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(include_columns=columns, column_types=types))
    except (OSError, pa.ArrowException) as exc:
        raise RnnopsError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None


def group(
    table: pa.Table,
    id_column: str,
    date_column: str,
    numeric: Sequence[str],
    other: Sequence[str],
    date_format: str | None,
    positions: np.ndarray | None = None,
    name: str = "the panel",
) -> Table:
    """A file's rows grouped by series (first appearance), each series by date; ``positions``:
    each row's place in the file (default: the table's order). A non-numeric column is one line.
    Per series work is done by Arrow and numpy: no Python object per row or per series, but the
    ids' list."""
    pos = np.arange(table.num_rows, dtype=np.int64) if positions is None else positions
    values = {}
    for col in numeric:
        arr = table.column(col)
        try:
            values[col] = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise RnnopsError(f"column {col!r} of {name} is not numeric ({arr.type}); give numbers") from None
    in_file = None if positions is None or _increasing(pos) else np.argsort(pos, kind="stable")
    raw_ids = table.column(id_column)
    if in_file is not None:  # file order: first appearance decides the series' order
        raw_ids = raw_ids.take(in_file)
    raw_ids = raw_ids.combine_chunks() if isinstance(raw_ids, pa.ChunkedArray) else raw_ids
    if pa.types.is_dictionary(raw_ids.type):
        raw_ids = raw_ids.dictionary_decode()
    encoded = raw_ids.dictionary_encode()  # codes in order of first appearance; null for a missing id
    codes_sorted = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    ids = encoded.dictionary.to_pylist()
    if in_file is None:
        codes = codes_sorted
    else:
        codes = np.empty_like(codes_sorted)
        codes[in_file] = codes_sorted
    dates = parse_dates(table.column(date_column), date_format)
    has_id = codes >= 0
    keep = np.flatnonzero(has_id) if raw_ids.null_count else np.arange(len(codes))
    order = keep[np.lexsort((dates[keep], codes[keep]))]
    counts = np.bincount(codes[keep], minlength=len(ids))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    # a series' first row in the file: where its code first appears (codes number the ids in order
    # of first appearance, so that is where the codes, in file order, pass their running maximum)
    in_file_pos = pos if in_file is None else pos[in_file]
    valid = codes_sorted >= 0
    c_k = codes_sorted[valid]
    new = c_k > np.maximum.accumulate(np.r_[-1, c_k[:-1]]) if len(c_k) else np.zeros(0, bool)
    first_pos = np.full(len(ids), np.iinfo(np.int64).max, np.int64)
    first_pos[c_k[new]] = in_file_pos[valid][new]
    first_row = order[starts[:-1]]  # each series' first row by date: where its static columns are read
    return Table(
        ids=ids,
        keys=ids
        if pa.types.is_string(raw_ids.type) or pa.types.is_large_string(raw_ids.type)
        else [str(v) for v in ids],
        starts=starts,
        first_pos=first_pos,
        dates=dates[order],
        values={k: v[order] for k, v in values.items()},
        text={c: table.column(c).take(first_row).to_numpy(zero_copy_only=False) for c in other},
        no_id_rows=int((~has_id).sum()),
        no_id_pos=int(pos[~has_id].min()) if (~has_id).any() else -1,
    )


def _increasing(a: np.ndarray) -> bool:
    return bool(len(a) < 2 or (a[1:] > a[:-1]).all())


# ------------------------------------------------------------------------------ series -> features


@dataclass
class Features:
    """Series' model inputs as one batch, as arrays from the file to the model call (no object
    per series): ``inputs`` graph input name -> ``[m, ...]`` (the contract's dtypes), ``future``
    each series' forecast timestamps, int64 ns ``[m, H]``."""

    inputs: dict[str, np.ndarray]
    future: np.ndarray

    def __len__(self) -> int:
        return len(self.future)

    def rows(self, index: slice | np.ndarray) -> Features:
        """The series at ``index`` (a slice: views, no copy)."""
        return Features({n: a[index] for n, a in self.inputs.items()}, self.future[index])

    @staticmethod
    def empty(c: PanelContract) -> Features:
        return Features(pf.stack([], c), np.zeros((0, c.horizon), np.int64))

    @staticmethod
    def of(features: Sequence[pf.SeriesFeatures], c: PanelContract) -> Features:
        """The per-series path's features as one batch."""
        if not features:
            return Features.empty(c)
        return Features(pf.stack(features, c), np.stack([f.future for f in features]))

    @staticmethod
    def concat(parts: Sequence[Features]) -> Features:
        if len(parts) == 1:
            return parts[0]
        names = parts[0].inputs
        return Features(
            {n: np.concatenate([p.inputs[n] for p in parts]) for n in names},
            np.concatenate([p.future for p in parts]),
        )


@dataclass
class PanelPrepared:
    """The series that can be forecast (their features, in order of first appearance), and the
    errors of the others."""

    ids: list[Hashable]
    first_pos: np.ndarray  # int64 [m]
    features: Features  # [m]
    series_rows: np.ndarray  # int64 [m]: PANEL rows of each
    errors: list[SeriesError]
    rows: int  # panel rows read
    series: int  # series seen


def columns(c: PanelContract) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(numeric, text) columns of a panel file for model ``c``."""
    cats = tuple(s.name for s in c.static_categorical)
    return (c.target, *c.past_covariates, *c.future_covariates, *c.static_real), cats


def prepare(job: ForecastJob, model: ForecastModel, id_column: str, date_column: str) -> PanelPrepared:
    """Read PANEL (and FUTURE) and turn each series into the model's inputs, or an error row."""
    c = contract_of(model)
    numeric, text = columns(c)
    table = read_file(job.input, id_column, date_column, numeric, text)
    panel = group(table, id_column, date_column, numeric, text, job.date_format, name=job.input.name)
    future = None
    if job.future is not None and c.future_covariates:
        ft = read_file(job.future, id_column, date_column, c.future_covariates, ())
        future = group(ft, id_column, date_column, c.future_covariates, (), job.date_format, name=job.future.name)
    return prepare_series(panel, future, c, id_column, date_column)


def prepare_series(
    panel: Table, future: Table | None, c: PanelContract, id_column: str, date_column: str
) -> PanelPrepared:
    """Each series of ``panel`` (with its horizon's covariates from ``future``) as the model's
    inputs (:func:`rnnops.panel_features.series_features`), or an error row: both engines' step."""
    cats = tuple(s.name for s in c.static_categorical)
    ahead = {} if future is None else {k: i for i, k in enumerate(future.keys)}
    L = c.lookback
    slow_ks: list[int] = []
    slow: list[pf.SeriesFeatures] = []
    errors: list[SeriesError] = []
    if panel.no_id_rows:
        errors.append(SeriesError(None, panel.no_id_rows, f"rows without an id in {id_column!r}", panel.no_id_pos))
    fast_ks, fast = regular_features(panel, future, ahead, c)
    others = np.ones(len(panel.ids), bool)
    others[fast_ks] = False
    for k in np.flatnonzero(others).tolist():  # the series with a problem (or rare shapes): one by one
        sid = panel.ids[k]
        lo, hi = int(panel.starts[k]), int(panel.starts[k + 1])
        rows = hi - lo

        def fail(message: str, sid: Hashable = sid, rows: int = rows, k: int = k) -> None:
            errors.append(SeriesError(sid, rows, message, int(panel.first_pos[k])))

        d = panel.dates[lo:hi]
        if (d == NAT).any():
            fail(f"a date in {date_column!r} is missing or unreadable")
            continue
        if (np.diff(d) == 0).any():
            fail(f"two rows are dated {ts(d[int(np.flatnonzero(np.diff(d) == 0)[0])])}; keep one row per date")
            continue
        lo_read = max(lo, hi - L)  # the model reads the last L steps
        fut: dict[str, np.ndarray] = {}
        fut_dates = None
        if c.future_covariates:
            j = ahead.get(panel.keys[k])
            if j is None or future is None:
                fail(
                    f"--future has no rows for this series: its future covariates "
                    f"({', '.join(c.future_covariates)}) for the {c.horizon} steps after {ts(d[-1])} are missing"
                )
                continue
            flo, fhi = int(future.starts[j]), int(future.starts[j + 1])
            fut = {name: future.values[name][flo:fhi] for name in c.future_covariates}
            fut_dates = future.dates[flo:fhi]
        entry = pf.SeriesEntry(
            id=panel.keys[k],
            timestamps=panel.dates[lo_read:hi],
            context=panel.values[c.target][lo_read:hi],
            past_covariates={n: panel.values[n][lo_read:hi] for n in c.past_covariates},
            future_covariates={n: np.concatenate([panel.values[n][lo_read:hi], fut[n]]) for n in c.future_covariates},
            static={
                **{n: str(panel.text[n][k]) for n in cats if panel.text[n][k] is not None},
                **{n: panel.values[n][lo] for n in c.static_real},
            },
        )
        try:
            f = pf.series_features(entry, c)
        except pf.SeriesError as exc:
            fail(str(exc).removeprefix(f"series {panel.keys[k]!r}: "))
            continue
        if fut_dates is not None and not np.array_equal(fut_dates, f.future):
            fail(
                f"--future's dates for this series ({ts(fut_dates[0])} .. {ts(fut_dates[-1])}) are not the "
                f"{c.horizon} steps after its last row ({ts(f.future[0])} .. {ts(f.future[-1])})"
            )
            continue
        slow_ks.append(k)
        slow.append(f)
    errors.sort(key=lambda e: e.first_pos)
    ks = fast_ks
    features = fast
    if slow:  # merged back into the order of the file
        ks = np.concatenate([fast_ks, np.asarray(slow_ks, np.int64)])
        order = np.argsort(ks, kind="stable")
        ks = ks[order]
        features = Features.concat([fast, Features.of(slow, c)]).rows(order)
    rows_read = len(panel.dates) + panel.no_id_rows
    series = len(panel.ids) + (1 if panel.no_id_rows else 0)
    counts = np.diff(panel.starts)
    return PanelPrepared(
        ids=[panel.ids[k] for k in ks.tolist()] if len(ks) != len(panel.ids) else list(panel.ids),
        first_pos=panel.first_pos[ks],
        features=features,
        series_rows=counts[ks],
        errors=errors,
        rows=rows_read,
        series=series,
    )


def regular_features(
    panel: Table, future: Table | None, ahead: dict[str, int], c: PanelContract
) -> tuple[np.ndarray, Features]:
    """The features of the series that need no per-series checks, at once with numpy: ``(ks,
    features)``, row ``i`` the series ``ks[i]`` of ``panel``, each with at least ``lookback`` rows, dated, on the
    model's frequency, finite where the model needs it, with its ``horizon`` FUTURE rows on the
    dates after it. The same arrays as :func:`rnnops.panel_features.series_features` (the values
    go through the same float64 -> float32 casts; tests compare both); every other series takes
    that per-series path, which gives its error or its features. Why: the per-series path costs
    ~0.5 ms of Python per series, ten times onnxruntime's share of a job."""
    L, H = c.lookback, c.horizon
    n = len(panel.ids)
    lo_all, hi_all = panel.starts[:-1], panel.starts[1:]
    rows = hi_all - lo_all
    cand = rows >= L
    cand &= np.array([0 < len(key) <= pf.MAX_ID_CHARS for key in panel.keys], bool) if n else cand
    # a missing date or two rows on one date anywhere in the series: the per-series path says which
    bad_row = panel.dates == NAT
    bad_row[1:] |= panel.dates[1:] == panel.dates[:-1]
    bad_row[lo_all[rows > 0]] &= panel.dates[lo_all[rows > 0]] == NAT  # a series' first row has no row before it
    cand &= np.add.reduceat(bad_row.astype(np.int64), lo_all)[:n] == 0 if len(bad_row) else cand
    fut_j = np.array([ahead.get(key, -1) for key in panel.keys], np.int64)
    none = (np.zeros(0, np.int64), Features.empty(c))
    if c.future_covariates:
        if future is None:
            return none
        cand &= fut_j >= 0
        f_rows = np.where(fut_j >= 0, future.starts[fut_j + 1] - future.starts[fut_j], 0)
        cand &= f_rows == H
    ks = np.flatnonzero(cand)
    if not len(ks):
        return none
    idx = hi_all[ks, None] - L + np.arange(L)  # the last L rows of each
    t = panel.dates[idx]
    times, ok, _, _ = timeseries.future_many(t, H, freq=c.freq, flag="the model's frequency")
    y = panel.values[c.target][idx]
    with np.errstate(over="ignore"):
        ok &= ~np.isinf(y.astype(np.float32)).any(axis=1)
        ok &= np.isfinite(y).sum(axis=1) >= c.min_history
        past = np.stack([panel.values[n_][idx] for n_ in c.past_covariates], axis=-1) if c.past_covariates else None
        if past is not None:
            ok &= ~np.isinf(past.astype(np.float32)).any(axis=(1, 2))
        known = None
        if c.future_covariates:
            assert future is not None
            fidx = future.starts[fut_j[ks], None] + np.arange(H)
            ok &= (future.dates[fidx] == times).all(axis=1)
            known = np.stack(
                [
                    np.concatenate([panel.values[n_][idx], future.values[n_][fidx]], axis=1)
                    for n_ in c.future_covariates
                ],
                axis=-1,
            )
            ok &= np.isfinite(known.astype(np.float32)).all(axis=(1, 2))
        first_row = lo_all[ks]
        reals = np.stack([panel.values[n_][first_row] for n_ in c.static_real], axis=-1) if c.static_real else None
        if reals is not None:
            ok &= np.isfinite(reals.astype(np.float32)).all(axis=1)
    import pandas as pd

    inputs: dict[str, np.ndarray] = {pc_.PAST_TARGET: y.astype(np.float32)}
    if past is not None:
        inputs[pc_.PAST_COVARIATES] = past.astype(np.float32)
    if c.known_names:
        parts = [] if known is None else [known.astype(np.float32)]
        if c.calendar:
            parts.append(calendar.compute(c.calendar, np.concatenate([t, times], axis=1)))
        k_all = np.concatenate(parts, axis=-1)
        inputs[pc_.KNOWN_PAST], inputs[pc_.KNOWN_FUTURE] = k_all[:, :L], k_all[:, L:]
    if c.static_categorical:
        codes = np.zeros((len(ks), len(c.static_categorical)), np.int64)
        for j, col in enumerate(c.static_categorical):
            # each distinct value's code once (a missing one: the unknown bucket, 0)
            at, distinct = pd.factorize(panel.text[col.name][ks], use_na_sentinel=True)
            lut = np.array([col.code(str(v)) for v in distinct] + [0], np.int64)
            codes[:, j] = lut[at]  # -1 (missing) takes the last entry
        inputs[pc_.STATIC_CAT] = codes
    if reals is not None:
        inputs[pc_.STATIC_REAL] = reals.astype(np.float32)
    feeds = {name: inputs[name][ok].astype(dtype, copy=False) for name, (_, dtype) in c.inputs.items()}
    return ks[ok], Features(feeds, times[ok])


def forecasts(runtime: Runtime, features: Features, batch: int) -> Iterator[tuple[slice, np.ndarray]]:
    """``(slice, y)`` per call of ``batch`` series: ``y`` ``[m, H, 1, 1 + levels]`` (the
    forecast, then each quantile), what the writer takes."""
    for lo in range(0, len(features), batch):
        s = slice(lo, min(len(features), lo + batch))
        yield s, predict(runtime, features.rows(s), batch)


def predict(runtime: Runtime, features: Features, batch: int) -> np.ndarray:
    """The model on ``features``: ``[m, H, 1, 1 + levels]`` (the forecast, then each quantile)."""
    r = runtime.run(features.inputs, max_batch=batch)
    assert r.quantiles is not None, "a panel model has quantiles"
    return np.concatenate([r.output[..., None], r.quantiles], axis=-1)


def write(
    job: ForecastJob,
    model: ForecastModel,
    layout: Layout,
    prep: PanelPrepared,
    runtime: Runtime,
    engine: str,
    started: float,
) -> JobSummary:
    """The output, the error report and the summary, through the writer every batch job uses."""
    return write_forecasts(
        job, model, layout, prep, forecasts(runtime, prep.features, job.batch_windows), engine, started
    )


def write_forecasts(
    job: ForecastJob,
    model: ForecastModel,
    layout: Layout,
    prep: PanelPrepared,
    forecasts: Iterator[tuple[slice, np.ndarray]],
    engine: str,
    started: float,
) -> JobSummary:
    """:func:`write` with the forecasts given (``(slice, y)`` per call, in ``prep``'s order)."""
    m = len(prep.ids)
    H = layout.horizon  # steps written (--horizon)
    future = prep.features.future[:, :H]
    prepared = Prepared(
        ids=prep.ids,
        first_pos=prep.first_pos,
        rows=prep.series_rows,
        windows=np.zeros((m, 0, 1), np.float32),
        window_dates=np.zeros((m, 0), np.int64),
        future=future,
        errors=prep.errors,
        mismatch=np.zeros(m, bool),
    )
    return write_results(
        job,
        model,
        layout,
        prepared,
        forecasts,
        engine=engine,
        rows_read=prep.rows,
        series=prep.series,
        started=started,
    )


def run_panel_local(job: ForecastJob, model: ForecastModel, layout: Layout) -> JobSummary:
    """Streamed (:mod:`.panel_stream`, memory flat in the number of series) when each series'
    rows are contiguous in PANEL and FUTURE; else the files are read whole, with a warning."""
    from rnnops.serving.batch import panel_stream
    from rnnops.serving.batch.local import make_runtime

    runtime = make_runtime(model, threads=1)
    try:
        try:
            return panel_stream.run_streamed(job, model, layout, runtime, None)
        except panel_stream.SubSecond:  # rare: forecast dates with fractions of a second, found late
            return panel_stream.run_streamed(job, model, layout, runtime, pa.timestamp("ns"))
    except panel_stream.NotGrouped as exc:
        print(
            f"warning: {exc}; reading the panel whole (memory grows with it). Sort PANEL and FUTURE by "
            f"{layout.id_column} (then {layout.date_column}) to stream it",
            file=sys.stderr,
        )
    t0 = time.perf_counter()
    assert layout.id_column is not None
    prep = prepare(job, model, layout.id_column, layout.date_column)
    if job.strict and prep.errors:
        raise strict_error(prep.errors, layout)
    return write(job, model, layout, prep, runtime, "local", t0)


# ------------------------------------------------------------------------------ Spark

SRC = "_rnnops_src"  # 0: a PANEL row, 1: a FUTURE row (both go to their series' group)


@dataclass(frozen=True)
class PanelGroupTask:
    """What a Spark worker needs for a group of series (pickled with the function)."""

    contract: PanelContract
    id_type: pa.DataType | None
    id_column: str
    date_column: str
    date_format: str | None


def prepare_group(task: PanelGroupTask, table: pa.Table) -> pa.Table:
    """One group of whole series (their PANEL and FUTURE rows) -> one row per series: its model
    inputs (flattened) and forecast timestamps, or its error, by the local engine's
    :func:`prepare_series`; the model runs in a second stage (:func:`forecast_group`)."""
    from rnnops.serving.batch import spark as S

    c = task.contract
    numeric, text = columns(c)
    src = table.column(SRC).to_numpy(zero_copy_only=False)

    def part(which: int, num: Sequence[str], txt: Sequence[str]) -> Table:
        t = table.filter(pa.array(src == which))
        pos = t.column(S.POS).to_numpy(zero_copy_only=False).astype(np.int64)
        return group(t, task.id_column, task.date_column, num, txt, task.date_format, positions=pos)

    panel = part(0, numeric, text)
    future = part(1, c.future_covariates, ()) if c.future_covariates else None
    prep = prepare_series(panel, future, c, task.id_column, task.date_column)
    m, errors = len(prep.ids), prep.errors
    n_err = len(errors)
    feeds = prep.features.inputs
    future_ns = prep.features.future
    cols = {
        "id": list(prep.ids) + [e.series_id for e in errors],
        "first": np.r_[prep.first_pos, [e.first_pos for e in errors]].astype(np.int64),
        "rows": np.r_[prep.series_rows, [e.rows for e in errors]].astype(np.int64),
        "error": [None] * m + [e.message for e in errors],
        "future": S._lists(future_ns, pa.int64(), n_err),
        **{
            # (m, size) spelled out: numpy cannot infer -1 when a group has no series to forecast
            name: S._lists(
                feeds[name].reshape(m, int(np.prod([int(d) for d in shape[1:]]))),
                pa.from_numpy_dtype(np.dtype(dtype)),
                n_err,
            )
            for name, (shape, dtype) in c.inputs.items()
        },
    }
    return pa.table(cols, schema=_group_schema(task.id_type, c))


def _group_schema(id_type: pa.DataType | None, c: PanelContract | None) -> pa.Schema:
    """The rows :func:`prepare_group` returns (``c`` None: without the model's inputs)."""
    id_arrow = pa.int64() if id_type is not None and pa.types.is_integer(id_type) else pa.string()
    return pa.schema(
        [
            ("id", id_arrow),
            ("first", pa.int64()),
            ("rows", pa.int64()),
            ("error", pa.string()),
            ("future", pa.list_(pa.int64())),
            *(
                (name, pa.list_(pa.from_numpy_dtype(np.dtype(dtype))))
                for name, (_, dtype) in (c.inputs.items() if c is not None else ())
            ),
        ]
    )


def _spark_schema(schema: pa.Schema) -> StructType:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


BUCKET_ROWS = 262_144  # at most about this many Parquet rows per group of the first stage (held by a worker)
KEY = "_rnnops_calls"  # the group of model calls a series is forecast in
CALLS_PER_GROUP = 64  # model calls of --batch-size series per group of the forecasting stage


@dataclass(frozen=True)
class PanelForecastTask:
    """What a Spark worker needs to forecast a group of series (pickled with the function)."""

    contract: PanelContract
    id_type: pa.DataType | None
    model_file: str  # name under SparkFiles
    local_path: str  # the driver's path (used when SparkFiles has no copy, e.g. in tests)
    sha256: str
    batch: int  # series per model call (--batch-size)
    bounds: np.ndarray  # int64: the first file position of each group's first series


def call_groups(task: PanelForecastTask, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Each series' group of calls (``KEY``), from its first file position and ``task.bounds``."""
    for b in batches:
        first = b.column("first").to_numpy(zero_copy_only=False)
        group = np.searchsorted(task.bounds, first, side="right") - 1
        yield pa.RecordBatch.from_arrays([*b.columns, pa.array(group, pa.int64())], [*b.schema.names, KEY])


def forecast_group(task: PanelForecastTask, table: pa.Table) -> pa.Table:
    """One group of ``CALLS_PER_GROUP`` calls' series (their inputs, from :func:`prepare_group`)
    -> their forecasts, one row per series. The group starts at a call boundary of the whole job
    (its first series is the ``k * batch * CALLS_PER_GROUP``-th of the file), so cutting it into
    calls of ``batch`` series in file order makes the local engine's calls exactly."""
    from rnnops.serving.batch import spark as S

    c = task.contract
    table = table.sort_by("first")
    m = table.num_rows
    inputs = {}
    for name, (shape, dtype) in c.inputs.items():
        dims = tuple(int(d) for d in shape[1:])
        inputs[name] = S._matrix(table[name], m, int(np.prod(dims)), dtype).reshape(m, *dims)
    future = S._matrix(table["future"], m, c.horizon, np.int64)
    y = predict(S._runtime(task.model_file, task.local_path, task.sha256), Features(inputs, future), task.batch)
    cols = {
        "id": table["id"],
        "first": table["first"],
        "rows": table["rows"],
        "future": table["future"],
        "forecast": S._lists(y.reshape(m, -1), pa.float32(), 0),
    }
    return pa.table(cols, schema=_forecast_schema(task.id_type))


def _forecast_schema(id_type: pa.DataType | None) -> pa.Schema:
    group = _group_schema(id_type, None)
    return pa.schema(
        [*(group.field(n) for n in ("id", "first", "rows", "future")), ("forecast", pa.list_(pa.float32()))]
    )


def _from_forecasts(table: pa.Table, errors: pa.Table, c: PanelContract) -> tuple[PanelPrepared, np.ndarray]:
    """The workers' forecasts back in file order, as the local engine's :class:`PanelPrepared`
    (the features' inputs left out) and ``y`` ``[m, H, 1, 1 + levels]``."""
    from rnnops.serving.batch import spark as S

    table = table.sort_by("first")
    errors = errors.sort_by("first")
    m = table.num_rows
    future = S._matrix(table["future"], m, c.horizon, np.int64)
    y = S._matrix(table["forecast"], m, c.horizon * (1 + len(c.quantiles)), np.float32)
    rows = table["rows"].to_numpy()
    failed = [
        SeriesError(sid, n, message, first)
        for sid, n, message, first in zip(
            errors["id"].to_pylist(),
            errors["rows"].to_pylist(),
            errors["error"].to_pylist(),
            errors["first"].to_pylist(),
        )
    ]
    prep = PanelPrepared(
        ids=table["id"].to_pylist(),
        first_pos=table["first"].to_numpy(),
        features=Features({}, future),
        series_rows=rows,
        errors=failed,
        rows=int(rows.sum()) + int(pc.sum(errors["rows"]).as_py() or 0),
        series=m + errors.num_rows,
    )
    return prep, y.reshape(m, c.horizon, 1, 1 + len(c.quantiles))


def run_panel_spark(job: ForecastJob, model: ForecastModel, layout: Layout, master: str | None = None) -> JobSummary:
    """The Spark engine, in two stages on the workers: PANEL and FUTURE read by Spark, the rows of
    a series (both files) hashed to one group, each group's series turned into model inputs
    (:func:`prepare_group`); then the series that can be forecast, regrouped by their place in
    the file into groups of ``CALLS_PER_GROUP`` model calls, forecast there
    (:func:`forecast_group`, one onnxruntime session per Python worker). The driver collects the
    first file position of each series (to place the groups' bounds), the error rows and the
    forecasts (not the inputs), and writes them with the local writer.

    Why the calls are the local engine's: a panel graph exported before its sums were padded to
    whole SIMD widths is not batch-invariant on onnxruntime's CPU kernels (a series' forecast moves
    in the last float32 bits with the other series of its call), so the series of each call are
    those of the local engine's call (in file order, ``--batch-size`` at a time), and both engines
    write the same bytes for any model file."""
    import math

    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from rnnops.serving.batch import spark as S

    t0 = time.perf_counter()
    c = contract_of(model)
    assert layout.id_column is not None
    idc, datec = layout.id_column, layout.date_column
    numeric, text = columns(c)
    progress = job.progress if job.progress is not None else False
    spark = S.session(master, progress)
    prepared = None
    try:
        sc = spark.sparkContext
        sc.addFile(str(model.path))
        buckets = max(2 * max(1, sc.defaultParallelism), math.ceil(job.input.stat().st_size / S.BUCKET_BYTES))
        if file_format(job.input, "input") == "parquet":  # compressed: its rows say more than its bytes
            import pyarrow.parquet as pq

            buckets = max(buckets, math.ceil(pq.ParquetFile(job.input).metadata.num_rows / BUCKET_ROWS))
        spark.conf.set("spark.sql.shuffle.partitions", str(buckets))

        def read(path: Path, num: Sequence[str], txt: Sequence[str], src: int) -> DataFrame:
            cols = list(dict.fromkeys([idc, datec, *num, *txt]))
            if file_format(path, "input") == "parquet":
                df = spark.read.parquet(str(path.resolve())).select(*cols)
            else:
                header = list(read_header(path, "csv").names)
                schema = T.StructType(
                    [T.StructField(h, T.DoubleType() if h in num else T.StringType()) for h in header]
                )
                df = (
                    spark.read.schema(schema)
                    .option("header", True)
                    .option("mode", "FAILFAST")
                    .option("escape", '"')
                    .csv(str(path.resolve()))
                    .select(*cols)
                )
            for col in num:
                df = df.withColumn(col, F.col(col).cast("double"))
            return df.withColumn(S.POS, F.monotonically_increasing_id()).withColumn(SRC, F.lit(src))

        df = read(job.input, numeric, text, 0)
        if job.future is not None and c.future_covariates:
            fut = read(job.future, c.future_covariates, (), 1)
            df = df.unionByName(fut, allowMissingColumns=True)
        key = F.pmod(F.xxhash64(F.col(idc).cast("string")), F.lit(buckets))
        task = PanelGroupTask(
            contract=c,
            id_type=layout.id_type,
            id_column=idc,
            date_column=datec,
            date_format=job.date_format,
        )

        def prepare_series_group(table: pa.Table) -> pa.Table:
            return prepare_group(task, table)

        schema = _spark_schema(_group_schema(layout.id_type, c))
        prepared = (
            df.withColumn(S.BUCKET, key)
            .groupBy(S.BUCKET)
            .applyInArrow(prepare_series_group, schema=schema)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        try:
            ok = prepared.filter(F.col("error").isNull())
            errors = prepared.filter(F.col("error").isNotNull()).select("id", "first", "rows", "error").toArrow()
            firsts = np.sort(ok.select("first").toArrow()["first"].to_numpy())
            forecast_task = PanelForecastTask(
                contract=c,
                id_type=layout.id_type,
                model_file=model.path.name,
                local_path=str(model.path.resolve()),
                sha256=model.sha256,
                batch=job.batch_windows,
                bounds=firsts[:: job.batch_windows * CALLS_PER_GROUP].copy(),
            )

            def with_call_group(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
                return call_groups(forecast_task, batches)

            def forecast_series_group(table: pa.Table) -> pa.Table:
                return forecast_group(forecast_task, table)

            keyed_schema = T.StructType([*ok.schema.fields, T.StructField(KEY, T.LongType())])
            groups = max(1, len(forecast_task.bounds))
            spark.conf.set("spark.sql.shuffle.partitions", str(min(groups, 2 * max(1, sc.defaultParallelism))))
            res = (
                ok.mapInArrow(with_call_group, schema=keyed_schema)
                .groupBy(KEY)
                .applyInArrow(forecast_series_group, schema=_spark_schema(_forecast_schema(layout.id_type)))
            )
            table = res.toArrow()
        except Exception as exc:
            raise S._spark_error(exc) from None
    finally:
        if prepared is not None:
            with contextlib.suppress(Exception):
                prepared.unpersist()
        if getattr(spark, "_rnnops_owned", True):
            with contextlib.suppress(Exception):
                spark.stop()
    prep, y = _from_forecasts(table, errors, c)
    if job.strict and prep.errors:
        raise strict_error(prep.errors, layout)
    step = max(1, job.batch_windows)
    m = len(prep.ids)
    slices = [slice(lo, min(m, lo + step)) for lo in range(0, m, step)]
    return write_forecasts(job, model, layout, prep, ((s, y[s]) for s in slices), "spark", t0)
