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
turn its errors into error rows); :func:`build_feeds` a whole request (the first error is fatal).

No torch and no onnxruntime: numpy, and pandas through the time system for calendar offsets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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


def _sequence(values: Any, what: str, sid: str, fld: str) -> Sequence[Any] | np.ndarray:
    """``values`` if it is a list or an array (what has a length and slices), else one line."""
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise SeriesError(f"{what} must be a list of numbers, not {type(values).__name__}", sid, fld)
    return values


def _numbers(values: Any, what: str, sid: str, fld: str, *, missing_ok: bool, offset: int = 0) -> np.ndarray:
    """``values`` as float64 (NaN where missing, when ``missing_ok``), or a :class:`SeriesError`
    (``offset``: the position of ``values[0]`` in what the client sent, for the message)."""
    if isinstance(values, np.ndarray):
        a = values
    else:
        try:
            a = np.asarray(values)
        except ValueError:  # ragged rows
            raise SeriesError(f"{what} is not a list of numbers (rows of unequal length)", sid, fld) from None
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
    unknown = sorted(str(k) for k in given if k not in known)
    if unknown:
        takes = f"it takes {', '.join(known)}" if known else "it takes none"
        raise SeriesError(
            f"series {sid!r}: {role} {unknown[0]!r} is not one the model knows ({takes})",
            sid,
            role,
        )


# --------------------------------------------------------------------------- one series


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


def series_features(entry: SeriesEntry, contract: PanelContract) -> SeriesFeatures:
    """One series' graph inputs, as training cuts its window at the series' end; a
    :class:`SeriesError` (one line naming the series) for anything the model cannot take."""
    L, H = contract.lookback, contract.horizon
    if not isinstance(entry.id, str) or not 0 < len(entry.id) <= MAX_ID_CHARS:
        raise SeriesError(f"a series id must be a string of 1 to {MAX_ID_CHARS} characters, not {entry.id!r}"[:300])
    sid = entry.id
    _check_names(entry.past_covariates, contract.past_covariates, "past_covariates", sid)
    _check_names(entry.future_covariates, contract.future_covariates, "future_covariates", sid)
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
    t = _timestamps(stamps[lo:], sid, offset=lo)
    observed = int(np.isfinite(y).sum())
    if observed < contract.min_history:
        need = "at least one observed value" if contract.min_history == 1 else f"{contract.min_history} observed values"
        raise SeriesError(
            f"series {sid!r} has {observed} observed values in the last {L} steps; the model needs {need} "
            "(it was not trained to forecast a series from its statics alone)",
            sid,
            "context",
        )
    future = _forecast_times(t, entry, contract, sid)

    past_target = np.full(L, np.nan, np.float32)
    past_target[L - m :] = y
    inputs: dict[str, np.ndarray] = {pc.PAST_TARGET: past_target}

    if contract.past_covariates:
        past = np.full((L, len(contract.past_covariates)), np.nan, np.float32)
        for k, name in enumerate(contract.past_covariates):
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
            past[L - m :, k] = v
        inputs[pc.PAST_COVARIATES] = past

    if contract.known_names:
        known = np.zeros((L + H, len(contract.known_names)), np.float32)  # 0 before the series starts
        for k, name in enumerate(contract.future_covariates):
            what = f"series {sid!r}: future covariate {name!r}"
            value = entry.future_covariates.get(name)
            size = None if value is None else len(_sequence(value, what, sid, "future_covariates"))
            if size != n + H:
                given = "is missing" if value is None else f"has {size} values"
                raise SeriesError(
                    f"series {sid!r}: future covariate {name!r} {given}; it needs {n + H} values: one per "
                    f"context step ({n}) and per forecast step ({H})",
                    sid,
                    "future_covariates",
                )
            assert value is not None
            v = _numbers(value[lo:], what, sid, "future_covariates", missing_ok=False, offset=lo)
            if v.shape != (m + H,):
                raise SeriesError(f"{what} must be a list of numbers", sid, "future_covariates")
            known[L - m :, k] = v
        if contract.calendar:
            steps = np.concatenate([t, future])
            known[L - m :, len(contract.future_covariates) :] = calendar.compute(contract.calendar, steps)
        inputs[pc.KNOWN_PAST] = known[:L]
        inputs[pc.KNOWN_FUTURE] = known[L:]

    warnings: list[str] = []
    if contract.static_categorical:
        codes = np.zeros(len(contract.static_categorical), np.int64)
        for k, col in enumerate(contract.static_categorical):
            if col.name not in entry.static:
                warnings.append(f"static {col.name!r} is not given: it gets the unknown category")
                continue
            value = entry.static[col.name]
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise SeriesError(
                    f"series {sid!r}: static {col.name!r} must be a category (a string), not {value!r}"[:300],
                    sid,
                    "static",
                )
            codes[k] = col.code(value)
            if codes[k] == 0:
                warnings.append(
                    f"static {col.name!r} = {str(value)[:100]!r} is a category the model was not trained on: "
                    "it gets the unknown category"
                )
        inputs[pc.STATIC_CAT] = codes
    if contract.static_real:
        reals = np.zeros(len(contract.static_real), np.float32)
        for k, name in enumerate(contract.static_real):
            if name not in entry.static:
                raise SeriesError(f"series {sid!r}: numeric static {name!r} is missing; give its value", sid, "static")
            reals[k] = _numbers(
                [entry.static[name]], f"series {sid!r}: static {name!r}", sid, "static", missing_ok=False
            )[0]
        inputs[pc.STATIC_REAL] = reals
    return SeriesFeatures(sid, inputs, future, tuple(warnings))


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
    """A request's series -> the model's feeds; the first bad entry raises its :class:`SeriesError`."""
    check_ids([e.id for e in entries])
    features = [series_features(e, contract) for e in entries]
    future = np.stack([f.future for f in features]) if features else np.zeros((0, contract.horizon), np.int64)
    return PanelFeeds(
        ids=tuple(f.id for f in features),
        feeds=stack(features, contract),
        future=future,
        warnings=tuple(f.warnings for f in features),
    )
