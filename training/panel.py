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

Only the columns that have a role are read, batch by batch (Arrow record batches for Parquet,
pandas chunks for CSV): each batch is checked and converted to compact arrays (series codes,
int64 timestamps, float32 values), so Python objects never exceed one batch. The checked panel
is held in memory as flat arrays (rows of series i are ``offsets[i]:offsets[i + 1]``); a panel
larger than memory is indexed and read back a block of series at a time instead
(:mod:`rnnops.training.panel_stream`, which checks each block with :func:`check_panel`).

No torch: batch jobs and tools can read and check panels without it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
        ranges = {
            "train": (zero, self.train_end),
            "val": (self.train_end, self.val_end),
            "test": (self.val_end, self.length),
        }
        if split not in ranges:
            raise ValueError(f"split must be train, val or test, not {split!r}")
        return ranges[split]


def splits_of(length: np.ndarray, horizon: int) -> Splits:
    """The M4 splits of series of these lengths: the last ``horizon`` steps test, the ``horizon``
    before them validation, the rest training."""
    n = np.asarray(length, np.int64)
    return Splits(horizon, n, np.maximum(n - 2 * horizon, 0), np.maximum(n - horizon, 0))


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
        return splits_of(self.lengths, self.spec.horizon)

    def backtest(self, windows: int, step: int | None = None) -> np.ndarray:
        """:func:`backtest_cutoffs` of this panel's series."""
        return backtest_cutoffs(self.lengths, self.spec.horizon, windows, step)

    def window(self, cutoffs: np.ndarray, target: int = 0) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
        """One forecast origin per series -> ``(series, histories, actual)``: the indices of the
        series scored (those whose cutoff is not -1), each one's values before its cutoff (float64,
        lengths differ) and the ``horizon`` values from it, ``[len(series), horizon]``. ``cutoffs``:
        a column of :meth:`backtest`, or ``splits().val_end`` for the test window (``train_end``
        for validation). Histories and actual values feed ``forecast_metrics.evaluate``."""
        cutoffs = np.asarray(cutoffs, np.int64)
        series = np.flatnonzero(cutoffs >= 1)
        start = self.offsets[series] + cutoffs[series]
        if np.any(cutoffs[series] + self.spec.horizon > self.lengths[series]):
            raise ValueError("a cutoff leaves less than one horizon of values after it")
        values = self.target[:, target].astype(np.float64)
        histories = [values[self.offsets[i] : s] for i, s in zip(series, start)]
        actual = values[start[:, None] + np.arange(self.spec.horizon)]
        return series, histories, actual

    def summary(self) -> str:
        """What was read, in a few lines (the CLI prints it; a run logs it)."""
        n = self.lengths
        lines = [
            f"{self.n_series} series, {int(n.sum())} rows, frequency {self.freq} (season {self.season}), "
            f"lengths {int(n.min())}..{int(n.max())}"
        ]
        if self.filled_gaps:
            lines.append(f"{self.filled_gaps} missing timestamps filled as missing values (--freq {self.freq})")
        if self.missing_targets:
            lines.append(f"{self.missing_targets} target values missing (kept as missing, masked in the loss)")
        if self.too_short:
            shown = ", ".join(self.too_short[:10]) + (" ..." if len(self.too_short) > 10 else "")
            lines.append(
                f"{len(self.too_short)} series shorter than lookback {self.spec.lookback} + horizon "
                f"{self.spec.horizon}: {shown}"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------- reading

BATCH_ROWS = 1 << 16  # rows converted at a time: the file is never held as Python objects whole


def _columns_of(path: Path) -> list[str]:
    if path.suffix.lower() in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    import pandas as pd

    return [str(c) for c in pd.read_csv(path, nrows=0).columns]


def _frame_batches(df):
    for start in range(0, len(df), BATCH_ROWS):
        yield df.iloc[start : start + BATCH_ROWS]


def _file_batches(path: Path, columns: list[str]):
    """The role columns as pandas frames of up to BATCH_ROWS rows: Parquet by Arrow record
    batches, CSV by pandas chunks (ids kept as text)."""
    import pandas as pd

    if path.suffix.lower() in PARQUET_SUFFIXES:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(columns=columns, batch_size=BATCH_ROWS):
            yield batch.to_pandas()
    else:
        yield from pd.read_csv(path, usecols=columns, dtype={columns[0]: str}, chunksize=BATCH_ROWS)


def _one_line(exc: Exception) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def read_panel(source, spec: PanelSpec) -> Panel:
    """Read and check a panel: ``source`` a CSV or Parquet path, a pandas DataFrame, or a named
    panel (``m4-hourly``: columns ``id``, ``timestamp``, ``value``). Raises :class:`RnnopsError`
    with one line for the first problem found."""
    import pandas as pd

    columns = [c for c, _ in _unique_roles(spec)]
    if isinstance(source, pd.DataFrame) or (isinstance(source, str) and source in NAMED_PANELS):
        if isinstance(source, pd.DataFrame):
            name, df = "the panel", source
        else:
            from rnnops.training.m4 import load_m4_hourly

            name, df = source, load_m4_hourly().frame
        _check_columns(spec, [str(c) for c in df.columns], name)
        return check_panel(_frame_batches(df[columns]), spec, name)
    files = panel_files(source)
    for path in files:
        _check_columns(spec, _readable_columns(path), path.name)

    def batches():
        for path in files:
            try:
                yield from _file_batches(path, columns)
            except RnnopsError:
                raise
            except Exception as exc:
                raise RnnopsError(f"cannot read {path.name} as {_kind(path)}: {_one_line(exc)}") from None

    return check_panel(batches(), spec, Path(source).expanduser().name)


def panel_files(source) -> list[Path]:
    """The files of a panel: the file itself, or a directory's Parquet files in name order (one
    panel written as several files, as Spark and Dask write them)."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PARQUET_SUFFIXES)
        if not files:
            raise RnnopsError(f"no Parquet files (*.parquet, *.pq) in the directory {source!r}")
        return files
    if not path.is_file():
        raise RnnopsError(
            f"no panel file {source!r}: give a CSV or Parquet file, a directory of Parquet files "
            f"(or one of {', '.join(NAMED_PANELS)})"
        )
    return [path]


def _kind(path: Path) -> str:
    return "Parquet" if path.suffix.lower() in PARQUET_SUFFIXES else "CSV"


def _readable_columns(path: Path) -> list[str]:
    """The columns of a panel file, or one line saying it cannot be read."""
    try:
        return _columns_of(path)
    except Exception as exc:  # pandas / Arrow raise many types for unreadable files
        raise RnnopsError(f"cannot read {path.name} as {_kind(path)}: {_one_line(exc)}") from None


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


# --------------------------------------------------------------------------- converting, batch by batch


def _ts(value) -> str:
    """A timestamp for messages: 2024-01-31, or 2024-01-31 13:00:00 when it has a time of day."""
    import pandas as pd

    t = pd.Timestamp(value)
    return str(t.date()) if t == t.normalize() else str(t)


def _n(count: int, noun: str, plural: str | None = None) -> str:
    """'1 row', '3 rows' (``plural`` for nouns such as series)."""
    return f"{count} {noun if count == 1 else (plural or noun + 's')}"


def _have(count: int) -> str:
    return "has" if count == 1 else "have"


def _numeric(s, col: str, what: str, name: str, row0: int) -> np.ndarray:
    """A column batch as float64, or one line naming the first value that is not a number
    (``row0``: the file row of the batch's first row)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(s):
        s = s.astype(np.float64)
    if not pd.api.types.is_numeric_dtype(s):
        coerced = pd.to_numeric(s, errors="coerce")
        bad = np.flatnonzero((coerced.isna() & s.notna()).to_numpy())
        if len(bad):
            raise RnnopsError(
                f"{what} {col!r} in {name} is not numeric: row {row0 + int(bad[0])} holds "
                f"{s.iloc[bad[0]]!r}; give numbers (missing values may be empty)"
            )
        s = coerced
    values = s.to_numpy(np.float64, na_value=np.nan)
    inf = np.flatnonzero(np.isinf(values))
    if len(inf):
        raise RnnopsError(
            f"{what} {col!r} in {name} has an infinite value at row {row0 + int(inf[0])}; give finite "
            "numbers or leave them empty (missing)"
        )
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


class _Codes:
    """Strings -> int64 codes in order of first appearance, across batches (ids, categories)."""

    def __init__(self):
        self.index: dict[str, int] = {}

    def encode(self, s) -> np.ndarray:
        """Codes of a batch; -1 for a missing value."""
        import pandas as pd

        local, uniques = pd.factorize(s, use_na_sentinel=True)
        table = np.array([self.index.setdefault(str(u), len(self.index)) for u in uniques] + [-1], np.int64)
        return table[local]  # local -1 (missing) picks the trailing -1

    @property
    def values(self) -> list[str]:
        return list(self.index)


@dataclass
class _Rows:
    """The role columns of the whole input as compact arrays, in file order."""

    ids: _Codes
    codes: np.ndarray  # int64 series code per row
    dates: np.ndarray  # int64 ns
    targets: np.ndarray  # float32 [rows, targets]
    future: np.ndarray
    past: np.ndarray
    static_codes: list[np.ndarray]  # per static column: code of str(value) per row (-1 missing)
    static_text: list[_Codes]
    static_numbers: list[np.ndarray | None]  # per static column: float64 per row, None when not all numeric


def _convert(batches, spec: PanelSpec, name: str, first_row: int = 0) -> _Rows:
    """Each batch checked (ids, dates, numbers: with file row numbers, the first being
    ``first_row``) and converted to compact arrays; Python objects never exceed one batch."""
    import pandas as pd

    idc, datec = spec.id_column, spec.date_column
    ids = _Codes()
    static_text = [_Codes() for _ in spec.static_columns]
    parts: dict[str, list] = {k: [] for k in ("codes", "dates", "targets", "future", "past")}
    static_codes: list[list] = [[] for _ in spec.static_columns]
    static_numbers: list[list | None] = [[] for _ in spec.static_columns]
    # Rows without an id or a date are counted over the whole input before the one line is raised.
    no_id: list = [0, None]  # count, first row
    no_date: list = [0, None, None]  # count, first row, its value
    row0 = 0
    for df in batches:
        n, first = len(df), first_row + row0
        if not n:
            continue
        null_ids = np.flatnonzero(df[idc].isna().to_numpy())
        dates = _parse_dates(df[datec])
        bad = np.flatnonzero(dates.isna().to_numpy() & ~df[idc].isna().to_numpy())
        if len(null_ids) and no_id[1] is None:
            no_id[1] = first + int(null_ids[0])
        if len(bad) and no_date[1] is None:
            no_date[1:] = [first + int(bad[0]), df[datec].iloc[bad[0]]]
        no_id[0] += len(null_ids)
        no_date[0] += len(bad)
        row0 += n
        if no_id[0] or no_date[0]:
            continue  # only counting from here on
        parts["codes"].append(ids.encode(df[idc].astype(str)))
        if getattr(dates.dt, "tz", None) is not None:  # time zones: compared and stepped in UTC
            dates = dates.dt.tz_convert("UTC").dt.tz_localize(None)
        parts["dates"].append(dates.to_numpy("datetime64[ns]").view(np.int64))
        for key, cols, what in (
            ("targets", spec.targets, "target"),
            ("future", spec.future_covariates, "future covariate"),
            ("past", spec.past_covariates, "past covariate"),
        ):
            block = np.empty((n, len(cols)), np.float32)
            for k, c in enumerate(cols):
                block[:, k] = _numeric(df[c], c, what, name, first)
            parts[key].append(block)
        for k, c in enumerate(spec.static_columns):
            s = df[c]
            static_codes[k].append(static_text[k].encode(s.astype(str).where(s.notna(), None)))
            if static_numbers[k] is not None:  # numbers as long as every batch holds numbers
                if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
                    static_numbers[k].append(s.to_numpy(np.float64, na_value=np.nan))
                else:
                    static_numbers[k] = None
    if not row0:
        raise RnnopsError(f"{name} has no rows")
    if no_id[0]:
        raise RnnopsError(
            f"{_n(no_id[0], 'row')} of {name} {_have(no_id[0])} no id in {idc!r} (first at row {no_id[1]}); "
            "fill or drop them"
        )
    if no_date[0]:
        raise RnnopsError(
            f"{_n(no_date[0], 'row')} of {name} {_have(no_date[0])} no valid date in {datec!r} (first at "
            f"row {no_date[1]}: {no_date[2]!r}); give ISO dates like 2024-01-31 or 2024-01-31 13:00"
        )
    widths = {"targets": len(spec.targets), "future": len(spec.future_covariates), "past": len(spec.past_covariates)}
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    for key, w in widths.items():
        cat[key] = cat[key].reshape(row0, w)
    return _Rows(
        ids,
        cat["codes"],
        cat["dates"],
        cat["targets"],
        cat["future"],
        cat["past"],
        [np.concatenate(c) for c in static_codes],
        static_text,
        [None if v is None else np.concatenate(v) for v in static_numbers],
    )


def _infer_freq(dates: np.ndarray, offsets: np.ndarray) -> str:
    """The panel's frequency (``dates``: int64 ns, sorted per series): pandas' inference on the
    longest series, else the most common step."""
    import pandas as pd

    lengths = np.diff(offsets)
    longest = int(np.argmax(lengths))
    if lengths[longest] >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            freq = pd.infer_freq(
                pd.DatetimeIndex(dates[offsets[longest] : offsets[longest + 1]].view("datetime64[ns]"))
            )
        if freq is not None:
            return freq
    steps = np.diff(dates.view(np.int64))
    same = np.ones(len(steps), bool)
    same[offsets[1:-1] - 1] = False  # a step across two series is no step
    steps = steps[same]
    if not len(steps):
        raise RnnopsError(
            "no series has two timestamps, so the frequency cannot be inferred; give --freq (e.g. h, D, MS)"
        )
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


def _grid_times(first: np.ndarray, last: np.ndarray, within: np.ndarray, series: np.ndarray, freq: str) -> np.ndarray:
    """Timestamps (int64 ns) of step ``within`` on the grid of series ``series`` (``first`` to ``last``)."""
    import pandas as pd

    offset = calendar.offset_of(freq)
    f = first.view(np.int64)
    nanos = calendar.fixed_nanos(offset)
    if nanos is not None:
        return f[series] + within * nanos
    # A calendar step: filled rows lie inside their series, so inside the panel's span.
    grid = (
        pd.date_range(pd.Timestamp(int(f.min())), pd.Timestamp(int(last.view(np.int64).max())), freq=offset)
        .as_unit("ns")
        .asi8
    )
    return grid[np.searchsorted(grid, f)[series] + within]


# --------------------------------------------------------------------------- checking the whole panel


def check_panel(
    batches,
    spec: PanelSpec,
    name: str = "the panel",
    *,
    freq: str | None = None,
    first_row: int = 0,
    require_long: bool = True,
) -> Panel:
    """Check a panel given as pandas frames (batches of rows in file order) holding the spec's
    columns; see :func:`read_panel`.

    For a part of a larger panel (the streaming reader, :mod:`rnnops.training.panel_stream`,
    checks whole series a block at a time): ``freq`` is the panel's frequency when it is already
    known (a gap is still an error unless ``spec.freq`` is given), ``first_row`` the file row of the
    block's first row (for messages), and ``require_long=False`` leaves the "no series long enough"
    check to the caller, who sees every series."""
    rows = _convert(batches, spec, name, first_row)
    idc, datec = spec.id_column, spec.date_column
    ids = tuple(rows.ids.values)

    # Sort by series (in order of first appearance) then time; lexsort is stable, so of equal
    # (id, date) rows the first in the file comes first.
    order = np.lexsort((rows.dates, rows.codes))
    codes, t = rows.codes[order], rows.dates[order]
    dup = np.flatnonzero((codes[1:] == codes[:-1]) & (t[1:] == t[:-1])) + 1
    if len(dup):
        first = int(order[dup].min())  # the duplicate that comes first in the file
        raise RnnopsError(
            f"{_n(len(dup), f'duplicate ({idc}, {datec}) row')} in {name}; the first: "
            f"{ids[rows.codes[first]]!r} at {_ts(rows.dates[first])} (row {first_row + first}); keep one row per "
            "series and timestamp"
        )
    targets, future, past = rows.targets[order], rows.future[order], rows.past[order]
    counts = np.bincount(codes, minlength=len(ids))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    read_offsets = offsets  # the rows as read (before gaps are filled): static columns are checked on them

    if spec.likelihood == "negbin":
        neg = np.flatnonzero((targets < 0).any(axis=1))
        if len(neg):
            r = int(neg[0])
            raise RnnopsError(
                f"{_n(len(neg), 'row')} of {name} {_have(len(neg))} a negative target (first: series "
                f"{ids[codes[r]]!r} at {_ts(t[r])}), but --likelihood negbin models counts >= 0; "
                "use studentt or normal"
            )

    freq = spec.freq or freq or _infer_freq(t, offsets)
    try:
        season = season_length(freq)
        cal_names = calendar.features_for(freq) if spec.calendar_features else ()
    except ValueError as exc:
        raise RnnopsError(f"--freq: {exc}") from None
    pos, off = _grid_positions(t, offsets, freq)
    if off.any():
        r = int(np.flatnonzero(off)[0])
        n_series = len(np.unique(codes[off]))
        raise RnnopsError(
            f"{_n(n_series, 'series', 'series')} of {name} {_have(n_series)} timestamps off the {freq} "
            f"steps from their first one: series {ids[codes[r]]!r} at {_ts(t[r])} (starting "
            f"{_ts(t[offsets[codes[r]]])}); fix the timestamps or give the right --freq"
        )
    step = np.diff(pos)
    same_series = np.ones(len(step), bool)
    same_series[offsets[1:-1] - 1] = False
    gap = np.flatnonzero((step > 1) & same_series)
    filled = 0
    was_read = np.ones(len(t), bool)  # False: a row inserted for a gap (--freq)
    if len(gap):
        if spec.freq is None:
            r = int(gap[0])
            n_series = len(np.unique(codes[gap]))
            raise RnnopsError(
                f"{_n(n_series, 'series', 'series')} of {name} {'skips' if n_series == 1 else 'skip'} "
                f"timestamps of the panel's frequency {freq}: series {ids[codes[r]]!r} jumps from "
                f"{_ts(t[r])} to {_ts(t[r + 1])}; fill them, or pass --freq {freq} to treat the gaps as "
                "missing values"
            )
        # --freq given: gaps become rows of missing values.
        new_len = pos[offsets[1:] - 1] + 1
        new_offsets = np.concatenate([[0], np.cumsum(new_len)]).astype(np.int64)
        total = int(new_offsets[-1])
        dest = np.repeat(new_offsets[:-1], counts) + pos
        filled = total - int(offsets[-1])

        def spread(a):
            out = np.full((total, a.shape[1]), np.nan, np.float32)
            out[dest] = a
            return out

        was_read = np.zeros(total, bool)
        was_read[dest] = True
        targets, future, past = spread(targets), spread(future), spread(past)
        series_of_row = np.repeat(np.arange(len(ids)), new_len)
        within = np.arange(total) - np.repeat(new_offsets[:-1], new_len)
        t = _grid_times(t[offsets[:-1]], t[offsets[1:] - 1], within, series_of_row, freq)
        offsets, codes = new_offsets, series_of_row

    if future.shape[1]:
        missing = np.isnan(future)
        if missing.any():
            r, k = (int(v) for v in np.argwhere(missing)[0])
            where = "" if was_read[r] else ", a timestamp missing from the file"
            raise RnnopsError(
                f"future covariate {spec.future_covariates[k]!r} is missing at "
                f"{_n(int(missing[:, k].sum()), 'step')} of {name} (first: series {ids[codes[r]]!r} at "
                f"{_ts(t[r])}{where}); future covariates must be known at every step: fill them, or "
                "declare the column with --past-covariates"
            )

    static = tuple(
        _static_column(rows, k, c, order, read_offsets, ids, name) for k, c in enumerate(spec.static_columns)
    )

    lengths = np.diff(offsets)
    need = spec.lookback + spec.horizon
    short = lengths < need
    if require_long and short.all():
        longest = int(np.argmax(lengths))
        raise RnnopsError(
            f"no series of {name} is long enough for lookback {spec.lookback} + horizon {spec.horizon} "
            f"({need} steps): the longest, {ids[longest]!r}, has {int(lengths[longest])}; use a shorter "
            "--lookback or --horizon"
        )
    return Panel(
        spec=spec,
        freq=freq,
        season=season,
        ids=ids,
        offsets=offsets,
        timestamps=t.view("datetime64[ns]"),
        target=targets,
        future=future,
        past=past,
        static=static,
        calendar_names=tuple(cal_names),
        too_short=tuple(ids[i] for i in np.flatnonzero(short)),
        filled_gaps=filled,
        missing_targets=int(np.isnan(targets).sum()),
        source=name,
    )


def _static_column(
    rows: _Rows, k: int, col: str, order: np.ndarray, offsets: np.ndarray, ids, name: str
) -> StaticColumn:
    """Static column ``k``: one value per series (checked), as category codes or numbers."""
    codes = rows.static_codes[k][order]
    first = codes[offsets[:-1]]
    series_of_row = np.repeat(np.arange(len(ids)), np.diff(offsets))
    changed = np.flatnonzero(codes != first[series_of_row])
    text = rows.static_text[k].values
    if len(changed):
        r = int(changed[0])
        i = int(series_of_row[r])

        def shown(c):
            return repr(text[c]) if c >= 0 else "a missing value"

        raise RnnopsError(
            f"static column {col!r} changes within series {ids[i]!r} of {name} ({shown(first[i])}, then "
            f"{shown(codes[r])}); static columns hold one value per series (use a covariate for one "
            "that changes)"
        )
    numbers = rows.static_numbers[k]
    if numbers is not None:
        values = numbers[order][offsets[:-1]]
        if np.isnan(values).any():
            i = int(np.flatnonzero(np.isnan(values))[0])
            raise RnnopsError(
                f"numeric static column {col!r} is missing for series {ids[i]!r} of {name}; give a value "
                "for every series"
            )
        return StaticColumn(col, "real", values.astype(np.float32))
    vocabulary = tuple(sorted(text))
    # first-appearance code -> 1 + position in the sorted vocabulary; missing (-1) -> 0, the unknown bucket
    remap = np.zeros(len(text) + 1, np.int64)
    for c, value in enumerate(text):
        remap[c] = vocabulary.index(value) + 1
    return StaticColumn(col, "categorical", remap[first], vocabulary)
