"""Panels in: a long-format table (one row per series x timestamp) read, checked and laid out
for a global forecaster.

Input: CSV or Parquet (or a pandas DataFrame, or the named panel ``m4-hourly``) with

- an id column (``--id-column``) and a date column (``--date-column``);
- one or more numeric targets (``--target A,B``);
- optional static columns, one value per series (strings become categories with an unknown
  bucket, code 0, for categories first seen at prediction time; numbers stay numbers);
- optional future covariates (known in advance: promotions, prices, holidays; they must be
  present at every step) and past covariates (known up to now; may be missing).

Every problem in the input is reported as one :class:`RnnopsError` line before any training:
unknown columns, a column given two roles, null ids, unreadable dates, duplicate (id, date) rows,
a target or covariate that is not numeric, a negative target under ``negbin``, a series whose
timestamps do not follow the frequency (with ``--freq`` gaps are filled as missing instead), a
static column that changes within a series, a future covariate missing inside the data, and no
series long enough for lookback + horizon. Shorter series are counted and listed in
:attr:`Panel.too_short`, never dropped silently. Missing target values stay NaN (the loss masks
them), they are not forward-filled.

Splits are per series and by time (the M4 protocol): the last ``horizon`` steps of each series
are test, the ``horizon`` before them validation, the rest training (:meth:`Panel.splits`).
:func:`backtest_cutoffs` gives rolling origins as NeuralForecast's ``cross_validation`` does.

Parquet is read by Arrow record batches and only the columns that have a role; the checked panel
is held in memory as flat arrays (rows of series i are ``offsets[i]:offsets[i + 1]``).

No torch: batch jobs and tools can read and check panels without it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from rnnops import calendar
from rnnops.errors import RnnopsError
from rnnops.training.forecast_metrics import season_length

LIKELIHOODS = ("studentt", "normal", "negbin")
PARQUET_SUFFIXES = (".parquet", ".pq")
NAMED_PANELS = ("m4-hourly",)


def split_list(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"a,b , c"`` -> ``("a", "b", "c")`` (the form of every list flag); None -> ()."""
    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    return tuple(p.strip() for p in parts if p.strip())


@dataclass(frozen=True)
class PanelSpec:
    """What the panel flags say: the columns and their roles, the frequency, the window sizes.
    ``freq`` None: inferred, and a series off it is an error; given: gaps are filled as missing."""

    id_column: str
    date_column: str
    targets: tuple[str, ...]
    horizon: int
    lookback: int
    static_columns: tuple[str, ...] = ()
    future_covariates: tuple[str, ...] = ()
    past_covariates: tuple[str, ...] = ()
    freq: str | None = None
    likelihood: str | None = None
    calendar_features: bool = True

    def __post_init__(self):
        for name in ("targets", "static_columns", "future_covariates", "past_covariates"):
            object.__setattr__(self, name, split_list(getattr(self, name)))
        if not self.targets:
            raise RnnopsError("--target names no column; give the column(s) to forecast, e.g. --target sales")
        if self.horizon < 1 or self.lookback < 1:
            raise RnnopsError(f"--horizon ({self.horizon}) and --lookback ({self.lookback}) must be at least 1")
        if self.likelihood is not None and self.likelihood not in LIKELIHOODS:
            raise RnnopsError(f"--likelihood {self.likelihood!r} is not one of {', '.join(LIKELIHOODS)}")

    def roles(self) -> list[tuple[str, str]]:
        """(column, role) for every column named, in flag order."""
        out = [(self.id_column, "--id-column"), (self.date_column, "--date-column")]
        out += [(c, "--target") for c in self.targets]
        out += [(c, "--static-columns") for c in self.static_columns]
        out += [(c, "--future-covariates") for c in self.future_covariates]
        out += [(c, "--past-covariates") for c in self.past_covariates]
        return out


@dataclass(frozen=True)
class StaticColumn:
    """One static column: per-series ``values`` [series]; categorical ones hold int64 codes where
    0 is the unknown bucket and code i + 1 is ``vocabulary[i]``."""

    name: str
    kind: Literal["categorical", "real"]
    values: np.ndarray
    vocabulary: tuple[str, ...] = ()

    def encode(self, categories: Sequence[object]) -> np.ndarray:
        """Codes of (new) categories; one never seen in training gets the unknown bucket 0."""
        index = {c: i + 1 for i, c in enumerate(self.vocabulary)}
        return np.array([index.get(str(c), 0) for c in categories], np.int64)


@dataclass(frozen=True)
class Splits:
    """Per-series split points by time (positions within each series). Series i's training steps
    are ``[0, train_end[i])``, validation ``[train_end[i], val_end[i])``, test
    ``[val_end[i], length[i])``; a series shorter than two horizons has an empty training part."""

    horizon: int
    length: np.ndarray
    train_end: np.ndarray
    val_end: np.ndarray

    def range(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) positions of ``split`` (train | val | test) for every series."""
        zero = np.zeros_like(self.length)
        ranges = {"train": (zero, self.train_end), "val": (self.train_end, self.val_end),
                  "test": (self.val_end, self.length)}
        if split not in ranges:
            raise ValueError(f"split must be train, val or test, not {split!r}")
        return ranges[split]


def backtest_cutoffs(length: np.ndarray, horizon: int, windows: int, step: int | None = None) -> np.ndarray:
    """Rolling origins, as NeuralForecast's ``cross_validation(n_windows=windows, step_size=step)``:
    ``[series, windows]`` positions where each forecast window starts, oldest first; window w
    covers ``[cutoff, cutoff + horizon)``, and the last window is the test split (length - H).
    The stride is ``step`` (default ``horizon``). -1 marks an origin that would leave a series no
    history before it (the series is too short for that many windows)."""
    if windows < 1:
        raise RnnopsError(f"--backtest must be at least 1 window, not {windows}")
    step = horizon if step is None else step
    if step < 1:
        raise RnnopsError(f"--step must be at least 1, not {step}")
    length = np.asarray(length, np.int64)
    back = step * np.arange(windows - 1, -1, -1, dtype=np.int64)
    cutoffs = (length - horizon)[:, None] - back[None, :]
    return np.where(cutoffs >= 1, cutoffs, -1)


@dataclass(frozen=True)
class Panel:
    """A checked panel, sorted by series then time, gaps filled with missing rows.

    Row arrays (``timestamps``, ``target``, ``future``, ``past``) hold every series end to end;
    series i is rows ``offsets[i]:offsets[i + 1]``. Missing values are NaN."""

    spec: PanelSpec
    freq: str
    season: int  # the seasonal period m of ``freq`` (MASE, lags)
    ids: tuple[str, ...]
    offsets: np.ndarray  # int64 [series + 1]
    timestamps: np.ndarray  # datetime64[ns] [rows]
    target: np.ndarray  # float32 [rows, targets]
    future: np.ndarray  # float32 [rows, future covariates]
    past: np.ndarray  # float32 [rows, past covariates]
    static: tuple[StaticColumn, ...]
    calendar_names: tuple[str, ...]
    too_short: tuple[str, ...]  # ids of series shorter than lookback + horizon
    filled_gaps: int = 0  # rows inserted as missing (with --freq)
    missing_targets: int = 0  # target values that are NaN (masked in the loss)
    source: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def n_series(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def rows(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def calendar(self, timestamps=None) -> np.ndarray:
        """Calendar features ``[rows, len(calendar_names)]`` of the panel's (or given) timestamps."""
        return calendar.compute(self.calendar_names, self.timestamps if timestamps is None else timestamps)

    def splits(self) -> Splits:
        n = self.lengths
        h = self.spec.horizon
        return Splits(h, n, np.maximum(n - 2 * h, 0), np.maximum(n - h, 0))

    def backtest(self, windows: int, step: int | None = None) -> np.ndarray:
        """:func:`backtest_cutoffs` of this panel's series."""
        return backtest_cutoffs(self.lengths, self.spec.horizon, windows, step)

    def summary(self) -> str:
        """What was read, in a few lines (the CLI prints it; a run logs it)."""
        n = self.lengths
        lines = [f"{self.n_series} series, {int(n.sum())} rows, frequency {self.freq} (season {self.season}), "
                 f"lengths {int(n.min())}..{int(n.max())}"]
        if self.filled_gaps:
            lines.append(f"{self.filled_gaps} missing timestamps filled as missing values (--freq {self.freq})")
        if self.missing_targets:
            lines.append(f"{self.missing_targets} target values missing (kept as missing, masked in the loss)")
        if self.too_short:
            shown = ", ".join(self.too_short[:10]) + (" ..." if len(self.too_short) > 10 else "")
            lines.append(f"{len(self.too_short)} series shorter than lookback {self.spec.lookback} + horizon "
                         f"{self.spec.horizon}: {shown}")
        lines.extend(self.notes)
        return "\n".join(lines)


# --------------------------------------------------------------------------- reading


def _columns_of(path: Path) -> list[str]:
    if path.suffix.lower() in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    import pandas as pd

    return [str(c) for c in pd.read_csv(path, nrows=0).columns]


def _read_table(path: Path, columns: list[str]):
    """The columns that have a role: Parquet by record batches, CSV through pandas."""
    import pandas as pd

    if path.suffix.lower() in PARQUET_SUFFIXES:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        batches = list(pf.iter_batches(columns=columns, batch_size=1 << 16))
        table = pa.Table.from_batches(batches) if batches else pf.read(columns=columns)
        return table.to_pandas()
    # Everything as read; types are checked column by column below, with row numbers.
    return pd.read_csv(path, usecols=columns, dtype={columns[0]: str})


def read_panel(source, spec: PanelSpec) -> Panel:
    """Read and check a panel: ``source`` a CSV or Parquet path, a pandas DataFrame, or a named
    panel (``m4-hourly``: columns ``id``, ``timestamp``, ``value``). Raises :class:`RnnopsError`
    with one line for the first problem found."""
    import pandas as pd

    name = "the panel"
    if isinstance(source, pd.DataFrame):
        df = source
        available = [str(c) for c in df.columns]
        _check_columns(spec, available, name)
        df = df[[c for c, _ in _unique_roles(spec)]]
    elif isinstance(source, str) and source in NAMED_PANELS:
        from rnnops.training.m4 import load_m4_hourly

        name = source
        df = load_m4_hourly().frame
        _check_columns(spec, list(df.columns), name)
        df = df[[c for c, _ in _unique_roles(spec)]]
    else:
        path = Path(source).expanduser()
        name = path.name
        if not path.is_file():
            raise RnnopsError(f"no panel file {source!r}: give a CSV or Parquet file (or one of {', '.join(NAMED_PANELS)})")
        try:
            available = _columns_of(path)
        except Exception as exc:  # pandas / Arrow raise many types for unreadable files
            raise RnnopsError(f"cannot read {path.name} as {'Parquet' if path.suffix.lower() in PARQUET_SUFFIXES else 'CSV'}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        _check_columns(spec, available, name)
        try:
            df = _read_table(path, [c for c, _ in _unique_roles(spec)])
        except Exception as exc:
            raise RnnopsError(f"cannot read {path.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return check_panel(df, spec, name)


def _unique_roles(spec: PanelSpec) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for col, role in spec.roles():
        seen.setdefault(col, role)
    return list(seen.items())


def _check_columns(spec: PanelSpec, available: list[str], name: str) -> None:
    roles: dict[str, list[str]] = {}
    for col, role in spec.roles():
        roles.setdefault(col, []).append(role)
    for col, given in roles.items():
        if len(given) > 1:
            raise RnnopsError(f"column {col!r} is given two roles ({' and '.join(given)}); give each column one role")
    for col, given in roles.items():
        if col not in available:
            raise RnnopsError(f"column {col!r} ({given[0]}) is not in {name} (columns: {', '.join(available)})")


# --------------------------------------------------------------------------- checking


def _ts(value) -> str:
    """A timestamp for messages: 2024-01-31, or 2024-01-31 13:00:00 when it has a time of day."""
    import pandas as pd

    t = pd.Timestamp(value)
    return str(t.date()) if t == t.normalize() else str(t)


def _n(count: int, noun: str, plural: str | None = None) -> str:
    """'1 row', '3 rows' (``plural`` for nouns such as series)."""
    return f"{count} {noun if count == 1 else (plural or noun + 's')}"


def _numeric(df, col: str, what: str, name: str) -> np.ndarray:
    """A column as float64, or one line naming the first value that is not a number."""
    import pandas as pd

    s = df[col]
    if pd.api.types.is_bool_dtype(s):
        s = s.astype(np.float64)
    if not pd.api.types.is_numeric_dtype(s):
        coerced = pd.to_numeric(s, errors="coerce")
        bad = np.flatnonzero((coerced.isna() & s.notna()).to_numpy())
        if len(bad):
            raise RnnopsError(f"{what} {col!r} in {name} is not numeric: row {int(bad[0])} holds {s.iloc[bad[0]]!r} "
                              f"({_n(len(bad), 'such row')}); give numbers (missing values may be empty)")
        s = coerced
    values = s.to_numpy(np.float64, na_value=np.nan)
    inf = np.flatnonzero(np.isinf(values))
    if len(inf):
        raise RnnopsError(f"{what} {col!r} in {name} has {_n(len(inf), 'infinite value')} (first at row {int(inf[0])}); "
                          "give finite numbers or leave them empty (missing)")
    return values


def _parse_dates(raw):
    """Dates as pandas datetimes (NaT where unreadable): ISO 8601 in any mix of precisions
    (2024-01-31, 2024-01-31 13:00), else the one format pandas infers from the first value."""
    import pandas as pd

    if pd.api.types.is_datetime64_any_dtype(raw):
        return raw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' "could not infer format" for odd strings
        dates = pd.to_datetime(raw, errors="coerce", format="ISO8601")
        if dates.isna().any():
            other = pd.to_datetime(raw, errors="coerce")
            if other.isna().sum() < dates.isna().sum():
                dates = other
    return dates


def _infer_freq(dates: np.ndarray, offsets: np.ndarray) -> str:
    """The panel's frequency: pandas' inference on the longest series, else the most common step."""
    import pandas as pd

    lengths = np.diff(offsets)
    longest = int(np.argmax(lengths))
    if lengths[longest] >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            freq = pd.infer_freq(pd.DatetimeIndex(dates[offsets[longest]:offsets[longest + 1]]))
        if freq is not None:
            return freq
    steps = np.diff(dates.view(np.int64))
    same = np.ones(len(steps), bool)
    same[offsets[1:-1] - 1] = False  # a step across two series is no step
    steps = steps[same]
    if not len(steps):
        raise RnnopsError("no series has two timestamps, so the frequency cannot be inferred; give --freq (e.g. h, D, MS)")
    values, counts = np.unique(steps, return_counts=True)
    return pd.tseries.frequencies.to_offset(pd.Timedelta(int(values[np.argmax(counts)]))).freqstr


def _grid_positions(dates: np.ndarray, offsets: np.ndarray, freq: str):
    """Each row's step number on its series' grid of ``freq`` (0 at the series' first row), and
    the rows that are on no such grid (a timestamp between two steps)."""
    import pandas as pd

    offset = calendar.offset_of(freq)
    t = dates.view(np.int64)
    lengths = np.diff(offsets)
    first = np.repeat(t[offsets[:-1]], lengths)
    nanos = calendar.fixed_nanos(offset)
    if nanos is not None:  # a fixed step (h, 15min, D): arithmetic per series
        delta = t - first
        return delta // nanos, delta % nanos != 0
    # A calendar step (MS, W-MON, B): one grid over the panel's span, looked up.
    grid = pd.date_range(pd.Timestamp(int(t.min())), pd.Timestamp(int(t.max())), freq=offset).as_unit("ns").asi8
    pos = np.searchsorted(grid, t)
    off = (pos >= len(grid)) | (grid[np.minimum(pos, len(grid) - 1)] != t)
    return pos - np.repeat(pos[offsets[:-1]], lengths), off


def check_panel(df, spec: PanelSpec, name: str = "the panel") -> Panel:
    """Check a long-format frame holding (at least) the spec's columns; see :func:`read_panel`."""
    import pandas as pd

    _check_columns(spec, [str(c) for c in df.columns], name)
    df = df.reset_index(drop=True)
    idc, datec = spec.id_column, spec.date_column
    if not len(df):
        raise RnnopsError(f"{name} has no rows")

    null_ids = np.flatnonzero(df[idc].isna().to_numpy())
    if len(null_ids):
        raise RnnopsError(f"{_n(len(null_ids), 'row')} of {name} {'has' if len(null_ids) == 1 else 'have'} no id in {idc!r} (first at row {int(null_ids[0])}); "
                          "fill or drop them")

    raw_dates = df[datec]
    dates = _parse_dates(raw_dates)
    bad = np.flatnonzero(dates.isna().to_numpy())
    if len(bad):
        raise RnnopsError(f"{_n(len(bad), 'row')} of {name} {'has' if len(bad) == 1 else 'have'} no valid date in {datec!r} (first at row {int(bad[0])}: "
                          f"{raw_dates.iloc[bad[0]]!r}); give ISO dates like 2024-01-31 or 2024-01-31 13:00")
    if getattr(dates.dt, "tz", None) is not None:  # time zones: compared and stepped in UTC
        dates = dates.dt.tz_convert("UTC").dt.tz_localize(None)
    ids_str = df[idc].astype(str)

    dup = pd.DataFrame({"id": ids_str, "date": dates}).duplicated(keep="first").to_numpy()
    if dup.any():
        first = int(np.flatnonzero(dup)[0])
        raise RnnopsError(f"{_n(int(dup.sum()), f'duplicate ({idc}, {datec}) row')} in {name}; the first: "
                          f"{ids_str.iloc[first]!r} at {_ts(dates.iloc[first])} (row {first}); keep one row per series "
                          "and timestamp")

    targets = np.stack([_numeric(df, c, "target", name) for c in spec.targets], axis=1)
    future = np.stack([_numeric(df, c, "future covariate", name) for c in spec.future_covariates], axis=1) \
        if spec.future_covariates else np.zeros((len(df), 0))
    past = np.stack([_numeric(df, c, "past covariate", name) for c in spec.past_covariates], axis=1) \
        if spec.past_covariates else np.zeros((len(df), 0))

    # Sort by series (in order of first appearance) then time.
    codes, uniques = pd.factorize(ids_str, sort=False)
    date_ns = dates.to_numpy("datetime64[ns]")
    order = np.lexsort((date_ns.view(np.int64), codes))
    codes, date_ns = codes[order], date_ns[order]
    targets, future, past = targets[order], future[order], past[order]
    counts = np.bincount(codes, minlength=len(uniques))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    ids = tuple(str(u) for u in uniques)
    read_offsets = offsets  # the rows as read (before gaps are filled): static columns are checked on them

    if spec.likelihood == "negbin":
        neg = np.flatnonzero((targets < 0).any(axis=1))
        if len(neg):
            r = int(neg[0])
            raise RnnopsError(f"{_n(len(neg), 'row')} of {name} {'has' if len(neg) == 1 else 'have'} a negative target (first: series {ids[codes[r]]!r} at "
                              f"{_ts(date_ns[r])}), but --likelihood negbin models counts >= 0; use studentt or normal")

    freq = spec.freq or _infer_freq(date_ns, offsets)
    try:
        season = season_length(freq)
        cal_names = calendar.features_for(freq) if spec.calendar_features else ()
    except ValueError as exc:
        raise RnnopsError(f"--freq: {exc}") from None
    pos, off = _grid_positions(date_ns, offsets, freq)
    if off.any():
        r = int(np.flatnonzero(off)[0])
        n_series = len(np.unique(codes[off]))
        raise RnnopsError(f"{_n(n_series, 'series', 'series')} of {name} {'has' if n_series == 1 else 'have'} timestamps off the {freq} steps from their first one: series "
                          f"{ids[codes[r]]!r} at {_ts(date_ns[r])} (starting {_ts(date_ns[offsets[codes[r]]])}); "
                          "fix the timestamps or give the right --freq")
    step = np.diff(pos)
    same_series = np.ones(len(step), bool)
    same_series[offsets[1:-1] - 1] = False
    gap = np.flatnonzero((step > 1) & same_series)
    filled = 0
    was_read = np.ones(len(date_ns), bool)  # False: a row inserted for a gap (--freq)
    if len(gap):
        if spec.freq is None:
            r = int(gap[0])
            n_series = len(np.unique(codes[gap]))
            raise RnnopsError(f"{_n(n_series, 'series', 'series')} of {name} {'skips' if n_series == 1 else 'skip'} timestamps of the panel's frequency {freq}: series "
                              f"{ids[codes[r]]!r} jumps from {_ts(date_ns[r])} to {_ts(date_ns[r + 1])}; fill them, "
                              f"or pass --freq {freq} to treat the gaps as missing values")
        # --freq given: gaps become rows of missing values.
        new_len = pos[offsets[1:] - 1] + 1
        new_offsets = np.concatenate([[0], np.cumsum(new_len)]).astype(np.int64)
        dest = np.repeat(new_offsets[:-1], counts) + pos
        filled = int(new_offsets[-1] - offsets[-1])

        def spread(a):
            out = np.full((int(new_offsets[-1]), a.shape[1]), np.nan)
            out[dest] = a
            return out

        was_read = np.zeros(int(new_offsets[-1]), bool)
        was_read[dest] = True
        targets, future, past = spread(targets), spread(future), spread(past)
        t = np.empty(int(new_offsets[-1]), np.int64)
        series_of_row = np.repeat(np.arange(len(ids)), new_len)
        within = np.arange(int(new_offsets[-1])) - np.repeat(new_offsets[:-1], new_len)
        t[:] = _grid_times(date_ns[offsets[:-1]], date_ns[offsets[1:] - 1], within, series_of_row, freq)
        date_ns, offsets, counts = t.view("datetime64[ns]"), new_offsets, new_len
        codes = series_of_row

    if future.shape[1]:
        missing = np.isnan(future)
        if missing.any():
            r, k = (int(v) for v in np.argwhere(missing)[0])
            where = "" if was_read[r] else ", a timestamp missing from the file"
            raise RnnopsError(f"future covariate {spec.future_covariates[k]!r} is missing at {_n(int(missing[:, k].sum()), 'step')} "
                              f"of {name} (first: series {ids[codes[r]]!r} at {_ts(date_ns[r])}{where}); future covariates "
                              "must be known at every step: fill them, or declare the column with --past-covariates")

    static = tuple(_static_column(df, c, order, read_offsets, ids, name) for c in spec.static_columns)

    lengths = np.diff(offsets)
    need = spec.lookback + spec.horizon
    short = lengths < need
    if short.all():
        longest = int(np.argmax(lengths))
        raise RnnopsError(f"no series of {name} is long enough for lookback {spec.lookback} + horizon {spec.horizon} "
                          f"({need} steps): the longest, {ids[longest]!r}, has {int(lengths[longest])}; use a shorter "
                          "--lookback or --horizon")
    return Panel(
        spec=spec, freq=freq, season=season, ids=ids, offsets=offsets, timestamps=date_ns,
        target=targets.astype(np.float32), future=future.astype(np.float32), past=past.astype(np.float32),
        static=static, calendar_names=tuple(cal_names), too_short=tuple(np.array(ids, dtype=object)[short]),
        filled_gaps=filled, missing_targets=int(np.isnan(targets).sum()), source=name,
    )


def _grid_times(first: np.ndarray, last: np.ndarray, within: np.ndarray, series: np.ndarray, freq: str) -> np.ndarray:
    """Timestamps (int64 ns) of step ``within`` on the grid of series ``series`` (``first`` to ``last``)."""
    import pandas as pd

    offset = calendar.offset_of(freq)
    f = first.view(np.int64)
    nanos = calendar.fixed_nanos(offset)
    if nanos is not None:
        return f[series] + within * nanos
    # A calendar step: filled rows lie inside their series, so inside the panel's span.
    grid = pd.date_range(pd.Timestamp(int(f.min())), pd.Timestamp(int(last.view(np.int64).max())),
                         freq=offset).as_unit("ns").asi8
    return grid[np.searchsorted(grid, f)[series] + within]


def _static_column(df, col: str, order: np.ndarray, offsets: np.ndarray, ids, name: str) -> StaticColumn:
    """One value per series (checked), as category codes or numbers."""
    import pandas as pd

    s = df[col].iloc[order].reset_index(drop=True)
    starts = offsets[:-1]
    series_of_row = np.repeat(np.arange(len(ids)), np.diff(offsets))
    firsts = s.iloc[starts].reset_index(drop=True)
    same = (s.astype(str).to_numpy() == firsts.astype(str).to_numpy()[series_of_row])
    if not same.all():
        r = int(np.flatnonzero(~same)[0])
        k = int(series_of_row[r])
        raise RnnopsError(f"static column {col!r} changes within series {ids[k]!r} of {name} ({firsts.iloc[k]!r}, then "
                          f"{s.iloc[r]!r}); static columns hold one value per series (use a covariate for one that changes)")
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        values = firsts.to_numpy(np.float64, na_value=np.nan)
        if np.isnan(values).any():
            k = int(np.flatnonzero(np.isnan(values))[0])
            raise RnnopsError(f"numeric static column {col!r} is missing for series {ids[k]!r} of {name}; give a value "
                              "for every series")
        return StaticColumn(col, "real", values.astype(np.float32))
    text = firsts.where(firsts.notna(), None)
    vocabulary = tuple(sorted({str(v) for v in text if v is not None}))
    index = {c: i + 1 for i, c in enumerate(vocabulary)}
    codes = np.array([0 if v is None else index[str(v)] for v in text], np.int64)  # missing: the unknown bucket
    return StaticColumn(col, "categorical", codes, vocabulary)
