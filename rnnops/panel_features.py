"""Series requests -> a panel model's graph inputs: the one implementation of that step, used by
``/forecast``'s series form, the batch jobs over panels (and, later, sessions and OIP).

A request names series, each with its history and what the model's contract
(:class:`~rnnops.panel_contract.PanelContract`, metadata ``rnnops.panel``) says it reads:

- ``timestamps`` and ``context``: the history (``n`` steps, oldest first), target values
  (``[n]``, or ``[n, 1]`` rows as the single-window forms take them); missing values are NaN;
- ``past_covariates``: name -> ``n`` values (known up to now; NaN / None where missing);
- ``future_covariates``: name -> ``n + H`` values: one per history step, then one per forecast
  step (the model reads them over its lookback too, as it did in training; NeuralForecast and
  Darts ask the same of "future" exogenous columns); never missing;
- ``static``: column -> value (a categorical column's category, a numeric column's number).

The inputs are built exactly as training's ``PanelWindows.batch`` cuts a window at a cutoff
(training/panel_train.py; tests/test_panel_features.py checks they are equal): the model reads
the last ``lookback`` steps; a shorter history is left-padded with NaN (target, past covariates)
and 0 (known inputs); the known inputs are the future covariates then the calendar features
(:mod:`rnnops.calendar`) of each step's timestamp, history and horizon alike. The horizon's
timestamps continue the history at the model's frequency (:mod:`rnnops.timeseries`, the time
system of every forecast path); a series with no history (cold start, when the model allows it)
gives ``start``, its first forecast timestamp.

Only what the model reads is converted and checked: the last ``lookback`` steps of the history
(older values, timestamps included, are counted, not read), and the horizon's covariates.
Every entry is untrusted: a problem is a :class:`SeriesError`, one line that names the series
and what to change. An unknown static category is not an error: it goes to the unknown bucket
(code 0, as in training) with a warning. :func:`series_features` handles one series (batch jobs
turn its errors into error rows); :func:`build_feeds` a whole request (the first error is fatal),
its feeds laid out for all series at once.

Cost (the ``/forecast`` series form spends it per series, on the server's event loop): the time
axis of a history (its timestamps parsed, continued over the horizon, their calendar features) is
cached per distinct list of timestamps, since a panel's series usually share their dates; the
usual values (JSON numbers well inside float32's range, a full lookback) take one numpy call
each. ~24 us of CPU a series, ~70 us when its timestamps are new; anything unusual takes the
exact per-value path, which names the problem.

No torch and no onnxruntime: numpy, and pandas through the time system for calendar offsets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

from rnnops import calendar, timeseries
from rnnops import panel_contract as pc
from rnnops.panel_contract import PanelContract

MAX_ID_CHARS = 200  # a series id longer than this is refused (ids come back in every answer)


class SeriesError(ValueError):
    """A series entry the model cannot take: ``str(exc)`` is one line naming the series and what
    to change; ``series`` its id (None when the id itself is bad), ``field`` the entry's field."""

    def __init__(self, message: str, series: str | None = None, field: str | None = None):
        super().__init__(message)
        self.series = series
        self.field = field


@dataclass(frozen=True)
class SeriesEntry:
    """One series of a request, as a client gives it (lists or arrays; checked by
    :func:`series_features`). ``timestamps``: ISO 8601 strings, or datetime64 / int64 ns."""

    id: str
    timestamps: Sequence[Any] | np.ndarray = ()
    context: Sequence[Any] | np.ndarray = ()
    past_covariates: Mapping[str, Any] = field(default_factory=dict)
    future_covariates: Mapping[str, Any] = field(default_factory=dict)
    static: Mapping[str, Any] = field(default_factory=dict)
    start: str | int | None = None  # the first forecast timestamp: needed only without a history


@dataclass(frozen=True)
class SeriesFeatures:
    """One series' graph inputs (no batch axis: ``past_target [L]``, ``known_future [H, K]``...),
    its forecast's timestamps (int64 ns ``[H]``) and its warnings."""

    id: str
    inputs: dict[str, np.ndarray]
    future: np.ndarray
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class PanelFeeds:
    """A request's series as one batch: ``feeds`` the graph inputs ``[B, ...]`` (the contract's
    names), ``future`` int64 ns ``[B, H]``, per series its id and warnings, in request order."""

    ids: tuple[str, ...]
    feeds: dict[str, np.ndarray]
    future: np.ndarray
    warnings: tuple[tuple[str, ...], ...]


# --------------------------------------------------------------------------- checking values

# Below float32's largest finite value (3.4028e38): a float64 no larger in magnitude casts to a
# finite float32, so the usual values skip the exact (slower) check of the cast itself.
_F32_SAFE = 3.4e38


def _sequence(values: Any, what: str, sid: str, fld: str) -> Sequence[Any] | np.ndarray:
    """``values`` if it is a list or an array (what has a length and slices), else one line."""
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise SeriesError(f"{what} must be a list of numbers, not {type(values).__name__}", sid, fld)
    return values


def _numbers(values: Any, what: str, sid: str, fld: str, *, missing_ok: bool, offset: int = 0) -> np.ndarray:
    """``values`` as float64 (NaN where missing, when ``missing_ok``), or a :class:`SeriesError`
    (``offset``: the position of ``values[0]`` in what the client sent, for the message). The
    result may be ``values`` itself (a float64 array): callers copy it into the feeds."""
    if isinstance(values, np.ndarray):
        a = values
    else:
        try:
            a = np.asarray(values)
        except ValueError:  # ragged rows
            raise SeriesError(f"{what} is not a list of numbers (rows of unequal length)", sid, fld) from None
    # the usual case, JSON numbers well inside float32's range: two numpy reductions, no copy
    if a.dtype == np.float64:
        size = np.abs(a)
        if (not (size > _F32_SAFE).any()) if missing_ok else bool((size <= _F32_SAFE).all()):
            return a
    elif a.dtype == np.float32:  # (a session's arrays) float32 already: only NaN and infinities to refuse
        if (not np.isinf(a).any()) if missing_ok else bool(np.isfinite(a).all()):
            return a.astype(np.float64)
    elif a.dtype.kind in "iu" and a.dtype.itemsize <= 8:  # any integer up to 64 bits fits float32's range
        return a.astype(np.float64)
    if a.dtype == object and missing_ok:  # None marks a missing value
        a = np.asarray([np.nan if v is None else v for v in a.ravel()]).reshape(a.shape)
    if a.dtype.kind not in "fiub":
        raise SeriesError(f"{what} holds values that are not numbers; give numbers (JSON numbers)", sid, fld)
    x = a.astype(np.float64)
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)  # what the graph reads: a finite float64 beyond float32's range is no number here
    bad = np.isinf(x32) if missing_ok else ~np.isfinite(x32)
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        kind = "an infinite or out-of-range" if missing_ok else "a missing, infinite or out-of-range"
        raise SeriesError(f"{what}[{i + offset}] is {kind} value ({x.reshape(-1)[i]!r}); give finite numbers", sid, fld)
    return x


def _timestamps(values: Any, sid: str, offset: int = 0) -> np.ndarray:
    """A history's timestamps as int64 ns, strictly increasing (``offset``: as in :func:`_numbers`)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "Mi":
        t = values.astype("datetime64[ns]").view(np.int64) if values.dtype.kind == "M" else values.astype(np.int64)
        back = np.flatnonzero(np.diff(t) <= 0)
        if len(back):
            raise SeriesError(
                f"series {sid!r}: timestamps must increase strictly ([{int(back[0]) + 1 + offset}] is not after "
                "the one before)",
                sid,
                "timestamps",
            )
        return t.reshape(-1)
    if not isinstance(values, (list, tuple)):
        raise SeriesError(f"series {sid!r}: timestamps must be a list of ISO 8601 strings", sid, "timestamps")
    try:
        return timeseries.parse_iso(list(values))
    except timeseries.TimestampError as exc:
        text = str(exc)
        if exc.index is not None and text.startswith(f"[{exc.index}]"):
            text = f"[{exc.index + offset}]" + text[len(f"[{exc.index}]") :]
        sep = "" if text.startswith("[") else " "
        raise SeriesError(f"series {sid!r}: timestamps{sep}{text}", sid, "timestamps") from None


def _check_names(given: Mapping[str, Any], known: Sequence[str], role: str, sid: str) -> None:
    unknown = [k for k in given if k not in known]
    if unknown:
        takes = f"it takes {', '.join(known)}" if known else "it takes none"
        raise SeriesError(
            f"series {sid!r}: {role} {sorted(str(k) for k in unknown)[0]!r} is not one the model knows ({takes})",
            sid,
            role,
        )


# --------------------------------------------------------------------------- the time axis


@dataclass(frozen=True)
class _TimeAxis:
    """What a history's timestamps (the steps read) give the model, all read-only: the steps as
    int64 ns ``[m]``, the forecast's ``[H]``, and the calendar features of both ``[m + H, C]``."""

    steps: np.ndarray
    future: np.ndarray
    calendar: np.ndarray


# Series of one panel usually share their dates (they end on the same day), so the time axis of
# a history is computed once per distinct list of timestamps and reused: parsing 56 ISO strings,
# continuing them and computing their calendar costs ~60 us, a lookup ~1 us. A history longer than
# this is computed each time (the two caches stay under ~15 MB); a bad one is not cached (its message
# names the series, so :func:`series_features` recomputes it the slow way).
AXIS_CACHE_MAX_STEPS = 512


def _axis(t: np.ndarray, freq: str, horizon: int, names: tuple[str, ...]) -> _TimeAxis | None:
    """The time axis after a parsed history (increasing int64 ns); None when its future cannot be told."""
    try:
        future = timeseries.future(t, horizon, freq=freq, flag="the model's frequency")
    except timeseries.TimestampError:
        return None
    steps = np.concatenate([t, future])
    cal = calendar.compute(names, steps) if names else np.zeros((len(steps), 0), np.float32)
    for a in (t, future, cal):
        a.setflags(write=False)
    return _TimeAxis(t, future, cal)


@lru_cache(maxsize=256)
def _axis_of_iso(joined: str, n: int, freq: str, horizon: int, names: tuple[str, ...]) -> _TimeAxis | None:
    """:func:`_axis` of ``n`` ISO strings joined by newlines (None: not ``n`` good timestamps)."""
    values = joined.split("\n")
    if len(values) != n:  # a value held a newline: not a timestamp
        return None
    try:
        t = timeseries.parse_iso(values)
    except timeseries.TimestampError:
        return None
    return _axis(t, freq, horizon, names)


@lru_cache(maxsize=256)
def _axis_of_ns(key: bytes, freq: str, horizon: int, names: tuple[str, ...]) -> _TimeAxis | None:
    return _axis(np.frombuffer(key, np.int64).copy(), freq, horizon, names)


def _cached_axis(stamps: Any, contract: PanelContract) -> _TimeAxis | None:
    """The time axis of a history's timestamps (the steps read, at least one) from the cache, or
    None when they are not the usual kind (ISO strings, datetime64 or int64 ns, increasing, on the
    model's frequency): then the per-series path checks them and says what is wrong."""
    m = len(stamps)
    if m > AXIS_CACHE_MAX_STEPS:
        return None
    freq, horizon, names = contract.freq, contract.horizon, contract.calendar
    if isinstance(stamps, (list, tuple)):
        try:
            joined = "\n".join(stamps)
        except TypeError:  # not all strings
            return None
        return _axis_of_iso(joined, m, freq, horizon, names)
    if isinstance(stamps, np.ndarray) and stamps.ndim == 1 and stamps.dtype.kind in "Mi":
        t = stamps.astype("datetime64[ns]").view(np.int64) if stamps.dtype.kind == "M" else stamps.astype(np.int64)
        if m > 1 and not (t[1:] > t[:-1]).all():
            return None
        return _axis_of_ns(t.tobytes(), freq, horizon, names)
    return None


def _forecast_times(t: np.ndarray, entry: SeriesEntry, contract: PanelContract, sid: str) -> np.ndarray:
    """The horizon's timestamps: the history (the rows read) continued at the model's frequency,
    or, for a series with no history, ``start`` and the steps after it."""
    H, freq = contract.horizon, contract.freq
    if len(t):
        try:
            return timeseries.future(t[-contract.lookback :], H, freq=freq, flag="the model's frequency")
        except timeseries.TimestampError as exc:
            raise SeriesError(f"series {sid!r}: {exc}", sid, "timestamps") from None
    if entry.start is None:
        raise SeriesError(
            f"series {sid!r} has no history: give `start`, its first forecast timestamp (a cold start)",
            sid,
            "start",
        )
    if isinstance(entry.start, str):
        t0 = int(_timestamps([entry.start], sid)[0])
    else:
        t0 = int(entry.start)
    offset = timeseries.check_freq(freq, flag="the model's frequency")
    nanos = calendar.fixed_nanos(offset)
    out = t0 + nanos * np.arange(H, dtype=np.int64) if nanos else timeseries.calendar_range(t0, H, offset).copy()
    if int(out[0]) != t0:
        raise SeriesError(
            f"series {sid!r}: start {timeseries.ts(t0)} is not a step of the model's frequency {freq} "
            f"(the next one is {timeseries.ts(out[0])})",
            sid,
            "start",
        )
    return out


# --------------------------------------------------------------------------- one series


class _Checked(NamedTuple):  # a tuple: built once per series, several times cheaper than a frozen dataclass
    """One series entry, checked and converted: what it puts in the feeds (float64 values are
    cast to float32 there, as training casts them). ``m``: the steps read (at most ``lookback``)."""

    id: str
    m: int
    target: np.ndarray  # [m]
    past: list[np.ndarray]  # per past covariate, [m]
    known: np.ndarray  # the future covariates, [m + H, n_future]
    axis: _TimeAxis
    codes: list[int]
    reals: list[float]
    warnings: tuple[str, ...]


def _future_values(entry: SeriesEntry, contract: PanelContract, n: int, lo: int) -> np.ndarray:
    """The future covariates the model reads (from step ``lo`` of ``n`` to the horizon's end) as
    float64 ``[n - lo + H, n_future]``, or the first problem's :class:`SeriesError`."""
    H, sid, names = contract.horizon, entry.id, contract.future_covariates
    given = [entry.future_covariates.get(name) for name in names]
    if names and all(type(v) is list and len(v) == n + H for v in given):
        # the usual entry (JSON lists of numbers): one flat numpy conversion and one range check
        # for all of them (numpy reads a flat list several times faster than nested ones)
        flat: list[Any] = []
        for v in given:
            flat += v[lo:]  # type: ignore[index]  # checked: a list
        try:
            a = np.asarray(flat)
        except ValueError:  # ragged: values that are lists (the loop below names the covariate)
            a = np.zeros((0, 0))
        if a.dtype == np.float64 and a.ndim == 1 and bool((np.abs(a) <= _F32_SAFE).all()):
            return a.reshape(len(names), -1).T
    columns = []
    for name, value in zip(names, given):
        what = f"series {sid!r}: future covariate {name!r}"
        size = None if value is None else len(_sequence(value, what, sid, "future_covariates"))
        if size != n + H:
            state = "is missing" if value is None else f"has {size} values"
            raise SeriesError(
                f"series {sid!r}: future covariate {name!r} {state}; it needs {n + H} values: one per "
                f"context step ({n}) and per forecast step ({H})",
                sid,
                "future_covariates",
            )
        assert value is not None
        v = _numbers(value[lo:], what, sid, "future_covariates", missing_ok=False, offset=lo)
        if v.shape != (n - lo + H,):
            raise SeriesError(f"{what} must be a list of numbers", sid, "future_covariates")
        columns.append(v)
    return np.stack(columns, axis=1) if columns else np.zeros((n - lo + H, 0))


def _check(entry: SeriesEntry, contract: PanelContract) -> _Checked:
    """Every check of one series entry (the first problem raises its :class:`SeriesError`) and the
    conversion of the values the model reads."""
    L = contract.lookback
    if not isinstance(entry.id, str) or not 0 < len(entry.id) <= MAX_ID_CHARS:
        raise SeriesError(f"a series id must be a string of 1 to {MAX_ID_CHARS} characters, not {entry.id!r}"[:300])
    sid = entry.id
    _check_names(entry.past_covariates, contract.past_covariates, "past_covariates", sid)
    _check_names(entry.future_covariates, contract.future_covariates, "future_covariates", sid)
    if entry.static:
        static_names = [s.name for s in contract.static_categorical] + list(contract.static_real)
        _check_names(entry.static, static_names, "static", sid)

    # Only the steps the model reads (the last L) are converted and checked: a client may send a
    # long history, and converting values the model never reads would cost the server for nothing.
    context = _sequence(entry.context, f"series {sid!r}: context", sid, "context")
    n = len(context)
    m = min(n, L)
    lo = n - m
    y = _numbers(context[lo:], f"series {sid!r}: context", sid, "context", missing_ok=True, offset=lo)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise SeriesError(
            f"series {sid!r}: context must be one value of {contract.target!r} per step (the model forecasts "
            f"one target), not an array of shape {list(y.shape)}",
            sid,
            "context",
        )
    stamps = entry.timestamps
    if not isinstance(stamps, (list, tuple, np.ndarray)):
        raise SeriesError(f"series {sid!r}: timestamps must be a list of ISO 8601 strings", sid, "timestamps")
    if len(stamps) != n:
        raise SeriesError(f"series {sid!r}: {len(stamps)} timestamps for {n} context values", sid, "timestamps")
    axis = _cached_axis(stamps[lo:], contract) if m else None
    t = axis.steps if axis is not None else _timestamps(stamps[lo:], sid, offset=lo)
    observed = int(np.count_nonzero(~np.isnan(y)))  # y has no infinities (_numbers refused them)
    if observed < contract.min_history:
        need = "at least one observed value" if contract.min_history == 1 else f"{contract.min_history} observed values"
        raise SeriesError(
            f"series {sid!r} has {observed} observed values in the last {L} steps; the model needs {need} "
            "(it was not trained to forecast a series from its statics alone)",
            sid,
            "context",
        )
    if axis is None:  # the slow path: a cold start, or timestamps the cache did not take (it names the problem)
        future = _forecast_times(t, entry, contract, sid)
        steps = np.concatenate([t, future])
        cal = calendar.compute(contract.calendar, steps) if contract.calendar else np.zeros((len(steps), 0), np.float32)
        axis = _TimeAxis(t, future, cal)

    past = []
    for name in contract.past_covariates:
        if name not in entry.past_covariates:
            raise SeriesError(
                f"series {sid!r}: past covariate {name!r} is missing; give its {n} values (null where unknown)",
                sid,
                "past_covariates",
            )
        what = f"series {sid!r}: past covariate {name!r}"
        values = _sequence(entry.past_covariates[name], what, sid, "past_covariates")
        if len(values) != n:
            raise SeriesError(
                f"{what} has {len(values)} values; it needs {n}, one per context step", sid, "past_covariates"
            )
        v = _numbers(values[lo:], what, sid, "past_covariates", missing_ok=True, offset=lo)
        if v.shape != (m,):
            raise SeriesError(f"{what} must be a list of numbers, one per context step", sid, "past_covariates")
        past.append(v)

    known = _future_values(entry, contract, n, lo)

    warnings: list[str] = []
    codes = []
    for col in contract.static_categorical:
        if col.name not in entry.static:
            warnings.append(f"static {col.name!r} is not given: it gets the unknown category")
            codes.append(0)
            continue
        value = entry.static[col.name]
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise SeriesError(
                f"series {sid!r}: static {col.name!r} must be a category (a string), not {value!r}"[:300],
                sid,
                "static",
            )
        codes.append(col.code(value))
        if codes[-1] == 0:
            warnings.append(
                f"static {col.name!r} = {str(value)[:100]!r} is a category the model was not trained on: "
                "it gets the unknown category"
            )
    reals = []
    for name in contract.static_real:
        if name not in entry.static:
            raise SeriesError(f"series {sid!r}: numeric static {name!r} is missing; give its value", sid, "static")
        reals.append(
            _numbers([entry.static[name]], f"series {sid!r}: static {name!r}", sid, "static", missing_ok=False)[0]
        )
    return _Checked(sid, m, y, past, known, axis, codes, reals, tuple(warnings))


def _feeds(series: Sequence[_Checked], contract: PanelContract) -> dict[str, np.ndarray]:
    """Checked series -> the graph feeds ``[B, ...]`` at once, laid out as training's windows: the
    last ``m`` of ``L`` steps filled, NaN (target, past covariates) and 0 (known inputs) before."""
    L, H, B = contract.lookback, contract.horizon, len(series)
    n_fut = len(contract.future_covariates)
    target = np.full((B, L), np.nan, np.float32)
    feeds: dict[str, np.ndarray] = {pc.PAST_TARGET: target}
    if contract.past_covariates:
        past = feeds[pc.PAST_COVARIATES] = np.full((B, L, len(contract.past_covariates)), np.nan, np.float32)
    n_known = n_fut + len(contract.calendar)
    if n_known:
        known = np.zeros((B, L + H, n_known), np.float32)  # 0 before the series starts
    for b, s in enumerate(series):
        m = s.m
        target[b, L - m :] = s.target
        for k, v in enumerate(s.past):
            past[b, L - m :, k] = v
        if n_known:
            known[b, L - m :, :n_fut] = s.known
            known[b, L - m :, n_fut:] = s.axis.calendar
    if n_known:
        feeds[pc.KNOWN_PAST] = np.ascontiguousarray(known[:, :L])
        feeds[pc.KNOWN_FUTURE] = np.ascontiguousarray(known[:, L:])
    if contract.static_categorical:
        codes = np.array([s.codes for s in series], np.int64)
        feeds[pc.STATIC_CAT] = codes.reshape(B, len(contract.static_categorical))
    if contract.static_real:
        reals = np.array([s.reals for s in series], np.float64).astype(np.float32)
        feeds[pc.STATIC_REAL] = reals.reshape(B, len(contract.static_real))
    return feeds


def _inputs(s: _Checked, contract: PanelContract) -> dict[str, np.ndarray]:
    """One checked series' graph inputs (no batch axis). A full lookback (the usual request) needs
    no padding: each input is one numpy call; a shorter history is laid out by :func:`_feeds`."""
    L = contract.lookback
    if s.m < L:
        return {name: a[0] for name, a in _feeds([s], contract).items()}
    f32 = np.float32
    inputs = {pc.PAST_TARGET: s.target.astype(f32)}
    if contract.past_covariates:
        inputs[pc.PAST_COVARIATES] = np.stack(s.past, axis=1).astype(f32)
    if contract.future_covariates or contract.calendar:
        known = np.concatenate([s.known, s.axis.calendar], axis=1, dtype=f32)  # [L + H, n_known]
        inputs[pc.KNOWN_PAST], inputs[pc.KNOWN_FUTURE] = known[:L], known[L:]
    if contract.static_categorical:
        inputs[pc.STATIC_CAT] = np.array(s.codes, np.int64)
    if contract.static_real:
        inputs[pc.STATIC_REAL] = np.array(s.reals, np.float64).astype(f32)
    return inputs


def series_features(entry: SeriesEntry, contract: PanelContract) -> SeriesFeatures:
    """One series' graph inputs, as training cuts its window at the series' end; a
    :class:`SeriesError` (one line naming the series) for anything the model cannot take."""
    s = _check(entry, contract)
    return SeriesFeatures(s.id, _inputs(s, contract), s.axis.future, s.warnings)


# --------------------------------------------------------------------------- a request


def stack(features: Sequence[SeriesFeatures], contract: PanelContract) -> dict[str, np.ndarray]:
    """Series' inputs as one batch of graph feeds ``[B, ...]``, in the contract's input order."""
    out = {}
    for name, (shape, dtype) in contract.inputs.items():
        if features:
            out[name] = np.stack([f.inputs[name] for f in features]).astype(dtype, copy=False)
        else:
            out[name] = np.zeros((0, *(int(d) for d in shape[1:])), dtype)
    return out


def check_ids(ids: Sequence[object]) -> None:
    """A :class:`SeriesError` for an id given twice in one request (its answers would be ambiguous)."""
    seen: dict[str, int] = {}
    for i, sid in enumerate(ids):
        if not isinstance(sid, str):
            continue  # series_features refuses it, naming it
        if sid in seen:
            raise SeriesError(
                f"series id {sid!r} is given twice (entries {seen[sid]} and {i}); give each series once",
                sid,
                "id",
            )
        seen[sid] = i


def build_feeds(entries: Sequence[SeriesEntry], contract: PanelContract) -> PanelFeeds:
    """A request's series -> the model's feeds, built for all of them at once (the per-series
    work is the checks and conversions); the first bad entry raises its :class:`SeriesError`."""
    check_ids([e.id for e in entries])
    checked = [_check(e, contract) for e in entries]
    H = contract.horizon
    future = np.stack([s.axis.future for s in checked]) if checked else np.zeros((0, H), np.int64)
    return PanelFeeds(
        ids=tuple(s.id for s in checked),
        feeds=_feeds(checked, contract),
        future=future,
        warnings=tuple(s.warnings for s in checked),
    )
