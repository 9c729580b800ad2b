"""Calendar features of timestamps, chosen by the frequency: the part of the time system that
training (panel covariates) and serving (the same features for the forecast horizon) must
compute identically, so it lives here, beside neither stage.

Which features a frequency gets, and how each is encoded, follow GluonTS'
``time_features_from_frequency_str`` (each feature scaled to [-0.5, 0.5]):

============================  ====================================================================
frequency (pandas offset)     features
============================  ====================================================================
yearly                        none
quarterly, monthly            month_of_year
weekly                        day_of_month, week_of_year
daily, business-daily         day_of_week, day_of_month, day_of_year
hourly                        hour_of_day, day_of_week, day_of_month, day_of_year
minutely                      minute_of_hour, hour_of_day, day_of_week, day_of_month, day_of_year
secondly                      second_of_minute, minute_of_hour, hour_of_day, day_of_week, ...
============================  ====================================================================

:data:`FORMULAS` spells out each encoding; a model's metadata records the feature names (and
may copy the formulas), so a server recomputes them from the timestamps alone.

No torch; numpy only for the computation (pandas is used to read the frequency).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pandas.tseries.offsets import BaseOffset

# name -> (how it is computed from a timestamp, as documentation and metadata)
FORMULAS: dict[str, str] = {
    "second_of_minute": "second / 59 - 0.5",
    "minute_of_hour": "minute / 59 - 0.5",
    "hour_of_day": "hour / 23 - 0.5",
    "day_of_week": "weekday (Monday 0) / 6 - 0.5",
    "day_of_month": "(day of month - 1) / 30 - 0.5",
    "day_of_year": "(day of year - 1) / 365 - 0.5",
    "month_of_year": "(month - 1) / 11 - 0.5",
    "week_of_year": "(ISO week - 1) / 52 - 0.5",
}

_DAILY = ("day_of_week", "day_of_month", "day_of_year")


def offset_of(freq: str) -> BaseOffset:
    """A frequency string as a pandas offset (``pd.offsets.BaseOffset``), or a ValueError that
    says what a frequency looks like."""
    import pandas as pd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated aliases ("H", "T") still parse
            return pd.tseries.frequencies.to_offset(freq)
    except (ValueError, TypeError):
        raise ValueError(f"frequency {freq!r} is not a pandas frequency (examples: h, 15min, D, W, MS)") from None


def fixed_nanos(offset: BaseOffset) -> int | None:
    """The length of a fixed step (h, 15min, D) in nanoseconds; None for a calendar step (MS, B, W-MON)."""
    try:
        return int(offset.nanos)
    except ValueError:
        return None


def features_for(freq: str) -> tuple[str, ...]:
    """The calendar feature names of a pandas frequency (``h``, ``15min``, ``D``, ``B``, ``W``,
    ``MS``, ``QE``, ``YS``...); a ValueError for a string pandas cannot read."""
    import pandas as pd

    offset = offset_of(freq)
    o = pd.offsets
    if isinstance(offset, (o.YearBegin, o.YearEnd)):
        return ()
    if isinstance(offset, (o.QuarterBegin, o.QuarterEnd, o.MonthBegin, o.MonthEnd)):
        return ("month_of_year",)
    if isinstance(offset, o.Week):
        return ("day_of_month", "week_of_year")
    if isinstance(offset, (o.Day, o.BusinessDay)):
        return _DAILY
    if isinstance(offset, o.Hour):
        return ("hour_of_day",) + _DAILY
    if isinstance(offset, o.Minute):
        return ("minute_of_hour", "hour_of_day") + _DAILY
    if isinstance(offset, (o.Second, o.Milli, o.Micro, o.Nano)):
        return ("second_of_minute", "minute_of_hour", "hour_of_day") + _DAILY
    raise ValueError(
        f"no calendar features are defined for frequency {freq!r}; use one of h, min, s, D, B, W, MS, QS, YS "
        "or turn calendar features off"
    )


def compute(names: tuple[str, ...] | list[str], timestamps: Any) -> np.ndarray:
    """The features ``names`` of ``timestamps`` (datetime64 or int64 nanoseconds, any shape ``S``):
    float32 ``[*S, len(names)]``."""
    t = np.asarray(timestamps)
    if t.dtype.kind != "M":
        t = t.astype(np.int64).view("datetime64[ns]")
    t = t.astype("datetime64[ns]")
    day = t.astype("datetime64[D]")
    out = np.empty((*t.shape, len(names)), np.float32)
    for k, name in enumerate(names):
        if name == "second_of_minute":
            v = (t - t.astype("datetime64[m]")).astype("timedelta64[s]").astype(np.int64) / 59.0
        elif name == "minute_of_hour":
            v = (t.astype("datetime64[m]") - t.astype("datetime64[h]")).astype(np.int64) / 59.0
        elif name == "hour_of_day":
            v = (t.astype("datetime64[h]") - day).astype(np.int64) / 23.0
        elif name == "day_of_week":
            v = ((day.astype(np.int64) + 3) % 7) / 6.0  # 1970-01-01 was a Thursday (weekday 3)
        elif name == "day_of_month":
            v = (day - day.astype("datetime64[M]")).astype(np.int64) / 30.0
        elif name == "day_of_year":
            v = (day - day.astype("datetime64[Y]")).astype(np.int64) / 365.0
        elif name == "month_of_year":
            v = (t.astype("datetime64[M]").astype(np.int64) % 12) / 11.0
        elif name == "week_of_year":
            v = (_iso_week(day) - 1) / 52.0
        else:
            raise ValueError(f"unknown calendar feature {name!r}; known: {', '.join(FORMULAS)}")
        out[..., k] = v - 0.5
    return out


def _iso_week(day: np.ndarray) -> np.ndarray:
    """ISO 8601 week number (1..53) of datetime64[D] values: the week's Thursday decides the year."""
    d = day.astype(np.int64)
    weekday = (d + 3) % 7  # Monday 0
    thursday = d - weekday + 3
    year_start = thursday.astype("datetime64[D]").astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64)
    return (thursday - year_start) // 7 + 1
