"""Timestamps and frequencies: the one time system of ``/forecast``, forecast sessions and
``rnnops forecast`` (batch).

Future timestamps continue the history the way pandas' own ``date_range`` would:

- ``freq`` given (``--freq`` in a batch job, ``freq`` in a request): the history must follow it
  (fixed offsets such as ``h``, ``15min``, ``D``: every gap equal to it; calendar offsets such as
  ``MS``, ``ME``, ``B``, ``W-MON``: equal to ``date_range(first, periods=len, freq)``), and the
  future is ``date_range(last, periods=horizon + 1, freq)[1:]``;
- no ``freq``: all gaps equal -> that step (but equal gaps of whole days, 28 or more, over 3
  rows or more go to ``pandas.infer_freq`` first: three month starts can be 31 days apart);
  else ``pandas.infer_freq`` (3 rows or more) for a calendar frequency (MS, ME, B, W-MON...);
  a single row -> the model's training frequency; else a :class:`TimestampError` that asks for
  ``freq``.

Cost (the ``/forecast`` path spends ~1 ms of CPU per request): a regular history is pure numpy,
a few microseconds, and never imports pandas. Calendar frequencies take pandas' offsets, which
are slow (``date_range`` of 97 month starts takes ~1 ms under pandas 3), so: parsed offsets are
cached (:func:`check_freq`), month-start, month-end, business-day and weekly ranges are computed
with numpy month/day arithmetic (checked against ``date_range`` in tests/test_timeseries.py), other
calendar ranges are cached by (start, periods, offset), and the whole answer for an irregular
history is cached by the history's bytes (series of one file or one client usually share their
timestamps).

No torch; pandas is imported only on the calendar and error paths.

Over 400 lines on purpose: one time system (frequencies, the regular-history check, future
timestamps for fixed steps in numpy and for each calendar offset family as pandas'
``date_range`` would continue it) is one job, used by /forecast, sessions and batch jobs.
"""

from __future__ import annotations

import re
import warnings
from functools import lru_cache
from typing import TYPE_CHECKING, Any, SupportsInt, overload

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # pandas is imported where it is used (the fast paths never load it)
    from pandas.tseries.offsets import BaseOffset

# a parsed frequency: its offset, and its length in nanoseconds (None: a calendar offset, MS, B, W...)
Step = tuple["BaseOffset", "int | None"]

NS_PER_S = 1_000_000_000
DAY_NS = 86_400 * NS_PER_S
WEEK_NS = 7 * DAY_NS
CACHE_MAX_ROWS = 1024  # longer histories and ranges are computed, not cached (the caches stay under ~10 MB)


class TimestampError(ValueError):
    """A timestamp or frequency problem; ``str(exc)`` is a user-facing sentence. ``index``: the
    offending element of :func:`parse_iso`'s input (None otherwise)."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


# --------------------------------------------------------------------------- parsing + output

# Every form parse_iso takes (one value), and the usual one alone: the latter, over all the
# values joined by newlines, is checked ~3x faster than the general pattern (12 vs 35 us for 96).
_ONE = (
    r"[ \t]*[0-9]{4}(?:-[0-9]{2}(?:-[0-9]{2}(?:[T ][0-9]{2}(?::[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?)?)?)?)?Z?[ \t]*"
)
_USUAL = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2})?Z?"
_ONE_RE = re.compile(_ONE, re.ASCII)
_USUAL_ALL = re.compile(rf"(?:{_USUAL}\n)*{_USUAL}", re.ASCII)
_ONE_ALL = re.compile(rf"(?:{_ONE}\n)*{_ONE}", re.ASCII)


def _bad_iso(i: int, v: object) -> TimestampError:
    return TimestampError(
        f"[{i}] = {v!r} is not an ISO 8601 timestamp like 2024-01-31T13:00:00 (no time zone offset)", index=i
    )


def parse_iso(values: list[str]) -> np.ndarray:
    """ISO 8601 strings (``2024-01-31T13:00:00``, ``2024-01-31 13:00``, ``2024-01-31``, a trailing
    ``Z`` allowed, no other offset) -> int64 nanoseconds, strictly increasing.

    Messages are meant to follow the field's name: ``"[3] = 'x' is not an ISO 8601 timestamp ..."``
    (``.index`` = 3) and ``"must increase strictly"`` (``.index``: the first element not after
    its predecessor)."""
    n = len(values)
    if n == 0:
        return np.zeros(0, np.int64)
    try:  # one regex over all of them (C speed), then one numpy conversion
        joined = "\n".join(values)
        ok = _USUAL_ALL.fullmatch(joined) is not None or _ONE_ALL.fullmatch(joined) is not None
    except TypeError:  # not all strings
        ok, joined = False, ""
    if ok:
        clean = values
        if (
            "Z" in joined
            or "\t" in joined
            or joined[:1] == " "
            or joined[-1:] == " "
            or "\n " in joined
            or " \n" in joined
        ):
            clean = [v.strip().removesuffix("Z") for v in values]
        try:
            out = np.array(clean, dtype="datetime64[ns]").view(np.int64)
        except ValueError:  # well formed but not a date (2024-02-30, 25:00)
            ok = False
    if not ok:
        for i, v in enumerate(values):
            if not isinstance(v, str) or _ONE_RE.fullmatch(v) is None:
                raise _bad_iso(i, v)
            try:
                np.datetime64(v.strip().removesuffix("Z"), "ns")
            except ValueError:
                raise _bad_iso(i, v) from None
        raise _bad_iso(0, values[0])  # unreachable in practice (a value holding a newline)
    if n > 1:
        back = np.flatnonzero(out[1:] <= out[:-1])
        if len(back):
            raise TimestampError("must increase strictly", index=int(back[0]) + 1)
    return out


def iso(ns: np.ndarray) -> list[str]:
    """int64 ns -> ISO 8601 strings: ``2024-01-31T13:00:00`` when all are whole seconds, else with
    the fraction the values need (milli-, micro- or nanoseconds), the same unit for all."""
    a = np.asarray(ns, dtype=np.int64).reshape(-1)
    unit = "ns"
    for u, k in (("s", NS_PER_S), ("ms", 1_000_000), ("us", 1_000)):
        if not (a % k).any():
            unit = u
            break
    return np.datetime_as_string(a.view("datetime64[ns]").astype(f"datetime64[{unit}]")).tolist()


def ts(ns: SupportsInt) -> str:
    """A timestamp for messages: 2024-01-31 13:00:00."""
    import pandas as pd

    return str(pd.Timestamp(int(ns)))


def span(ns: SupportsInt) -> str:
    """A duration for messages: 2h, 15min, 1D, 17D."""
    import pandas as pd

    if int(ns) > 0 and int(ns) % DAY_NS == 0:
        return f"{int(ns) // DAY_NS}D"
    try:
        text = pd.tseries.frequencies.to_offset(pd.Timedelta(int(ns))).freqstr
        return text if text[:1].isdigit() else "1" + text
    except ValueError:
        return str(pd.Timedelta(int(ns)))


# --------------------------------------------------------------------------- frequencies


@lru_cache(maxsize=256)
def _parse_freq(freq: str) -> Step | None:
    """(offset, nanoseconds of a fixed offset or None), or None when pandas cannot read ``freq``."""
    import pandas as pd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated aliases ("H", "T") still parse
            offset = pd.tseries.frequencies.to_offset(freq)
    except (ValueError, TypeError):
        return None
    try:
        nanos = int(offset.nanos)
    except ValueError:  # a calendar offset (MS, B, W-SUN...)
        nanos = None
    return offset, nanos


def check_freq(freq: str, flag: str = "--freq") -> BaseOffset:
    """``freq`` as a pandas offset (``pd.offsets.BaseOffset``; cached), or a :class:`TimestampError`."""
    parsed = _parse_freq(freq) if isinstance(freq, str) and freq.strip() else None
    if parsed is None:
        raise TimestampError(f"{flag} {freq!r} is not a pandas frequency (examples: h, 15min, D, W, MS)")
    return parsed[0]


def _freq_step(freq: str, flag: str) -> Step:
    check_freq(freq, flag)
    step = _parse_freq(freq)
    assert step is not None, "check_freq raised otherwise"
    return step


def _model_step(model_freq: str | None) -> Step | tuple[None, None]:
    """The model's training frequency as (offset, nanos); (None, None) when absent or unreadable
    (model metadata is not user input: an odd value only disables what depends on it)."""
    parsed = _parse_freq(model_freq) if isinstance(model_freq, str) and model_freq.strip() else None
    return parsed if parsed is not None else (None, None)


# --------------------------------------------------------------------------- calendar ranges


def calendar_range(start_ns: int, periods: int, offset: BaseOffset) -> np.ndarray:
    """``pd.date_range(Timestamp(start_ns), periods=periods, freq=offset)`` as int64 ns (read-only),
    fast for month starts/ends, business days and weeks anchored on a weekday, cached for the rest."""
    start_ns, periods = int(start_ns), int(periods)
    fast = _numpy_range(start_ns, periods, offset)
    if fast is not None:
        return fast
    if periods > CACHE_MAX_ROWS:
        return _pandas_range.__wrapped__(start_ns, periods, offset)
    return _pandas_range(start_ns, periods, offset)


def _numpy_range(start: int, periods: int, offset: BaseOffset) -> np.ndarray | None:
    """The same as date_range for MonthBegin, MonthEnd, BusinessDay and Week(weekday=w) with n = 1
    and a start on the offset (time of day kept, as pandas' offsets keep it); None otherwise."""
    import pandas as pd

    if getattr(offset, "n", None) != 1 or getattr(offset, "normalize", True):
        return None
    kind = type(offset)
    day = np.int64(start).view("datetime64[ns]").astype("datetime64[D]")
    tod = start - int(day.astype("datetime64[ns]").view(np.int64))
    if kind is pd.offsets.Week:
        weekday = offset.weekday  # type: ignore[attr-defined]  # pandas-stubs omit Week.weekday
        if weekday is None or (int(day.view(np.int64)) + 3) % 7 != weekday:  # 1970-01-01: a Thursday
            return None
        out = start + WEEK_NS * np.arange(periods, dtype=np.int64)
    elif kind is pd.offsets.BusinessDay:
        # Mon-Fri, no holidays: numpy's default calendar
        if offset.offset or not np.is_busday(day):  # type: ignore[attr-defined]  # pandas-stubs omit BusinessDay.offset
            return None
        days = np.busday_offset(day, np.arange(periods), roll="raise")
        out = days.astype("datetime64[ns]").view(np.int64) + tod
    elif kind is pd.offsets.MonthBegin or kind is pd.offsets.MonthEnd:
        month = day.astype("datetime64[M]")
        months = month + np.arange(periods)
        if kind is pd.offsets.MonthBegin:
            if day != month.astype("datetime64[D]"):
                return None
            days = months.astype("datetime64[D]")
        else:
            if day != (month + 1).astype("datetime64[D]") - 1:
                return None
            days = (months + 1).astype("datetime64[D]") - 1
        out = days.astype("datetime64[ns]").view(np.int64) + tod
    else:
        return None
    out.setflags(write=False)
    return out


@lru_cache(maxsize=256)
def _pandas_range(start: int, periods: int, offset: BaseOffset) -> np.ndarray:
    import pandas as pd

    out = pd.date_range(pd.Timestamp(start), periods=periods, freq=offset).as_unit("ns").asi8.copy()
    out.setflags(write=False)
    return out


def _continue(last_ns: int, offset: BaseOffset, horizon: int) -> np.ndarray:
    return calendar_range(last_ns, horizon + 1, offset)[1:]


# fn: an lru_cache'd function of a history's bytes (its __wrapped__ skips the cache)
def _cached(fn: Any, key: bytes, *args: Any) -> Any:
    return fn(key, *args) if len(key) <= 8 * CACHE_MAX_ROWS else fn.__wrapped__(key, *args)


@lru_cache(maxsize=128)
def _infer(key: bytes) -> BaseOffset | None:
    """pandas.infer_freq of a history (int64 ns bytes) as an offset, None when it has none."""
    import pandas as pd

    dates = np.frombuffer(key, dtype=np.int64).view("datetime64[ns]")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            freq = pd.infer_freq(pd.DatetimeIndex(dates))
        except (TypeError, ValueError):
            return None
    if freq is None:
        return None
    text = freq if isinstance(freq, str) else freq.freqstr
    parsed = _parse_freq(text)
    return None if parsed is None else parsed[0]


# --------------------------------------------------------------------------- future timestamps


def _irregular(dk: np.ndarray, dates: np.ndarray, flag: str) -> str:
    values, counts = np.unique(dk, return_counts=True)
    common = int(values[np.argmax(counts)])
    i = int(np.flatnonzero(dk != common)[0])
    return (
        f"irregular timestamps: a step of {span(dk[i])} from {ts(dates[i])} to {ts(dates[i + 1])} where most are "
        f"{span(common)}, within the last {len(dates)} rows that the model reads (give {flag} for a calendar "
        "frequency)"
    )


@lru_cache(maxsize=512)
def _slow(
    key: bytes, horizon: int, freq: str | None, model_freq: str | None, flag: str
) -> tuple[np.ndarray, None] | tuple[None, str]:
    """Everything but a regular history: (future read-only, None) or (None, message). Cached by
    the history's bytes (a calendar history costs pandas' inference and ranges once)."""
    h = np.frombuffer(key, dtype=np.int64)
    L = len(h)
    dk = np.diff(h)
    offset: BaseOffset | None
    if freq:
        offset, nanos = _freq_step(freq, flag)
        if nanos is not None:
            i = int(np.flatnonzero(dk != nanos)[0])
            return None, (
                f"timestamps are not {freq} apart: {span(dk[i])} from {ts(h[i])} to {ts(h[i + 1])}, "
                f"within the last {L} rows that the model reads"
            )
        want = calendar_range(h[0], L, offset)
        bad = np.flatnonzero(want != h)
        if len(bad):
            return None, (
                f"timestamps do not follow {flag} {freq}: {ts(h[bad[0]])} where {ts(want[bad[0]])} was "
                f"due, within the last {L} rows that the model reads"
            )
        return _continue(h[-1], offset, horizon), None
    offset = None
    if L >= 3:
        # The model's own calendar frequency, when the history follows it exactly, is what pandas
        # would infer (month starts, month ends, business days), at a tenth of infer_freq's cost.
        model_offset, model_nanos = _model_step(model_freq)
        if model_offset is not None and model_nanos is None:
            fast = _numpy_range(int(h[0]), L, model_offset)
            if fast is not None and np.array_equal(fast, h):
                offset = model_offset
        if offset is None:
            offset = _cached(_infer, key)
    if offset is None and L >= 2 and (dk == dk[0]).all():  # equal gaps of >= 28 days that are no calendar step
        return h[-1] + int(dk[0]) * _steps(horizon), None
    if offset is None and L < 2:
        offset = _model_step(model_freq)[0]
    if offset is None:
        if L >= 2:
            return None, _irregular(dk, h, flag)
        return None, f"one row cannot tell the frequency and the model has none: give {flag}"
    return _continue(h[-1], offset, horizon), None


@lru_cache(maxsize=64)
def _steps(horizon: int) -> np.ndarray:
    out = np.arange(1, horizon + 1, dtype=np.int64)
    out.setflags(write=False)
    return out


@overload
def _calendar_like(step: int) -> bool: ...
@overload
def _calendar_like(step: np.ndarray) -> np.ndarray: ...
def _calendar_like(step: int | np.ndarray) -> bool | np.ndarray:
    """Equal gaps that may be calendar steps in disguise: whole days, 28 or more (three month
    starts Jul 1, Aug 1, Sep 1 are 31 days apart, and so are three year ends without a leap
    day). pandas' inference decides those (MS, YE-DEC...), as it prefers calendar rules itself."""
    return (step >= 28 * DAY_NS) & (step % DAY_NS == 0)


def _history(history: npt.ArrayLike) -> np.ndarray:
    h = history
    if not (isinstance(h, np.ndarray) and h.dtype == np.int64 and h.ndim == 1):
        h = np.ascontiguousarray(history, dtype=np.int64).reshape(-1)
    if len(h) == 0:
        raise TimestampError("no timestamps: at least one is needed to place the forecast in time")
    return h


def future(
    history: np.ndarray, horizon: int, *, freq: str | None = None, model_freq: str | None = None, flag: str = "--freq"
) -> np.ndarray:
    """The ``horizon`` timestamps after ``history`` (int64 ns, increasing, oldest first, at least
    one): int64 ns ``[horizon]``, or a :class:`TimestampError` (see the module docstring)."""
    h = _history(history)
    horizon = int(horizon)
    steps = _steps(horizon)
    if freq:
        nanos = _freq_step(freq, flag)[1]
        if nanos is not None and (len(h) < 2 or (np.diff(h) == nanos).all()):
            return h[-1] + nanos * steps
    elif len(h) >= 2:
        d = np.diff(h)
        step = int(d[0])
        if (d == step).all() and not (len(h) >= 3 and _calendar_like(step)):
            return h[-1] + step * steps
    out, message = _cached(_slow, np.ascontiguousarray(h).tobytes(), horizon, freq or None, model_freq or None, flag)
    if message is not None:
        raise TimestampError(message)
    return out.copy()


def future_many(
    histories: np.ndarray, horizon: int, *, freq: str | None = None, model_freq: str | None = None, flag: str = "--freq"
) -> tuple[np.ndarray, np.ndarray, dict[int, str], np.ndarray]:
    """:func:`future` for the rows of ``histories`` (int64 ns ``[m, L]``, L >= 1) ->
    ``(future [m, horizon], ok [m], messages {row: message}, mismatch [m])``.

    Regular rows are done at once with numpy, the others row by row through :func:`future`; the
    results are the same as calling :func:`future` per row. ``mismatch``: rows whose regular
    step (no ``freq`` given) differs from the model's fixed training step (a warning: the model
    runs at a frequency it was not trained on). Failed rows hold zeros."""
    hs = np.asarray(histories, dtype=np.int64)
    if hs.ndim != 2 or hs.shape[1] < 1:
        raise ValueError(f"histories must be [m, L] with L >= 1, got {list(hs.shape)}")
    m, L = hs.shape
    horizon = int(horizon)
    out = np.zeros((m, horizon), np.int64)
    ok = np.zeros(m, bool)
    mismatch = np.zeros(m, bool)
    messages: dict[int, str] = {}
    if m == 0:
        return out, ok, messages, mismatch
    steps = _steps(horizon)
    diffs = np.diff(hs, axis=1)
    regular = np.zeros(m, bool)
    if freq:
        nanos = _freq_step(freq, flag)[1]
        if nanos is not None:
            regular = (diffs == nanos).all(axis=1)
            out[regular] = hs[regular, -1:] + nanos * steps
    elif L >= 2:
        step = diffs[:, 0]
        regular = (diffs == diffs[:, :1]).all(axis=1)
        if L >= 3:
            regular &= ~_calendar_like(step)
        out[regular] = hs[regular, -1:] + step[regular, None] * steps
        model_nanos = _model_step(model_freq)[1]
        if model_nanos is not None:
            mismatch = regular & (step != model_nanos)
    ok |= regular
    for k in np.flatnonzero(~regular):
        try:
            out[k] = future(hs[k], horizon, freq=freq, model_freq=model_freq, flag=flag)
            ok[k] = True
        except TimestampError as exc:
            messages[int(k)] = str(exc)
    return out, ok, messages, mismatch
