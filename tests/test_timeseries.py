"""rnnops/timeseries.py: the one time system (batch jobs, /forecast, sessions).

Future timestamps must be pandas' own ``date_range`` continuation of the history, for fixed
and calendar frequencies alike, inferred or given; irregular histories get one clear error.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from rnnops import timeseries as T  # noqa: E402

H = 12


def hist(start: str, periods: int, freq: str) -> np.ndarray:
    return pd.date_range(start, periods=periods, freq=freq).as_unit("ns").asi8


def pandas_future(h: np.ndarray, freq: str, horizon: int = H) -> np.ndarray:
    return pd.date_range(pd.Timestamp(int(h[-1])), periods=horizon + 1, freq=freq)[1:].as_unit("ns").asi8


CALENDAR = [  # (start, freq): a weekend, a leap day and month ends of every length inside
    ("2024-01-01 00:00", "h"),
    ("2024-02-27 13:00", "15min"),
    ("2024-02-20", "D"),
    ("2024-02-21", "B"),
    ("2024-02-23 09:30", "B"),
    ("2024-01-07", "W-SUN"),
    ("2024-01-01", "W-MON"),
    ("2023-10-01", "MS"),
    ("2023-11-01 06:00", "MS"),
    ("2023-10-31", "ME"),
    ("2024-01-31 23:00", "ME"),
    ("2023-01-01", "QS"),
    ("2020-12-31", "YE"),
]


@pytest.mark.parametrize("start,freq", CALENDAR)
@pytest.mark.parametrize("rows", [3, 24, 96])
def test_future_is_pandas_date_range_continuation(start, freq, rows):
    h = hist(start, rows, freq)
    want = pandas_future(h, freq)
    np.testing.assert_array_equal(T.future(h, H, freq=freq), want)  # given
    # inferred: the continuation at pandas' own inferred frequency, which is the calendar one as
    # soon as the history shows it (3 business days Wed-Fri are just daily, for pandas too)
    inferred = pd.infer_freq(pd.DatetimeIndex(h.view("datetime64[ns]")))
    if rows >= 24:
        assert pandas_future(h, inferred).tolist() == want.tolist()
    np.testing.assert_array_equal(T.future(h, H), pandas_future(h, inferred))
    np.testing.assert_array_equal(T.future(h, H), pandas_future(h, inferred))  # again, from the caches
    # a model trained at this frequency (its calendar offset is tried before pandas' inference)
    np.testing.assert_array_equal(T.future(h, H, model_freq=freq), pandas_future(h, inferred))
    np.testing.assert_array_equal(T.future(h, H, model_freq="h"), pandas_future(h, inferred))
    assert T.future(h, H).flags.writeable  # a copy, never the cached array


def test_monthly_steps_are_calendar_months_not_the_last_gap():
    h = hist("2024-01-01", 24, "MS")
    got = T.iso(T.future(h, 3))
    assert got == ["2026-01-01T00:00:00", "2026-02-01T00:00:00", "2026-03-01T00:00:00"]
    assert T.iso(T.future(hist("2023-11-30", 3, "ME"), 3)) == [
        "2024-02-29T00:00:00",
        "2024-03-31T00:00:00",
        "2024-04-30T00:00:00",
    ]
    # equal gaps are not always a fixed step: month starts 31 days apart, year ends 365 days apart
    for start, freq in (("2024-07-01", "MS"), ("2023-12-01", "MS"), ("2021-12-31", "YE"), ("2023-06-30", "ME")):
        h = hist(start, 3, freq)
        assert len(set(np.diff(h))) == 1
        np.testing.assert_array_equal(T.future(h, H), pandas_future(h, freq))
        np.testing.assert_array_equal(T.future_many(h[None], H)[0][0], pandas_future(h, freq))
    every30 = hist("2024-01-01", 3, "30D")  # and a 30-day step stays one
    np.testing.assert_array_equal(T.future(every30, 3), every30[-1] + 30 * 86_400 * 10**9 * np.arange(1, 4))
    # business days skip the weekend
    assert T.iso(T.future(hist("2024-03-04", 10, "B"), 2)) == ["2024-03-18T00:00:00", "2024-03-19T00:00:00"]


@pytest.mark.parametrize("freq", ["MS", "ME", "B", "W-MON", "W-SUN", "W-WED", "QS", "SMS", "h", "D"])
def test_calendar_range_fast_paths_match_pandas(freq):
    off = T.check_freq(freq)
    fast = 0
    for day in pd.date_range("2023-12-20", "2024-03-10", freq="D"):
        for tod in ("00:00", "13:30:05.5"):
            start = pd.Timestamp(f"{day.date()} {tod}")
            want = pd.date_range(start, periods=40, freq=off).as_unit("ns").asi8
            np.testing.assert_array_equal(T.calendar_range(start.value, 40, off), want, err_msg=f"{freq} {start}")
            fast += T._numpy_range(start.value, 40, off) is not None
    if freq in ("MS", "ME", "B", "W-MON"):
        assert fast > 0  # the numpy path ran (and matched)


def test_irregular_history_is_a_clear_error_and_an_explicit_freq_fixes_it():
    h = hist("2024-01-01", 8, "SMS")  # 1st and 15th: pandas cannot infer it
    with pytest.raises(
        T.TimestampError,
        match=r"irregular timestamps: a step of \d+D from 2024-01-\d\d.*"
        r"within the last 8 rows that the model reads \(give --freq for a "
        r"calendar frequency\)",
    ):
        T.future(h, H)
    with pytest.raises(T.TimestampError, match=r"\(give freq for a calendar frequency\)"):
        T.future(h, H, flag="freq")
    np.testing.assert_array_equal(T.future(h, H, freq="SMS"), pandas_future(h, "SMS"))

    gap = np.delete(hist("2024-03-01", 40, "h"), 30)
    with pytest.raises(
        T.TimestampError,
        match="irregular timestamps: a step of 2h from 2024-03-02 05:00:00 to 2024-03-02 07:00:00 where most are 1h",
    ):
        T.future(gap, H)


def test_given_freq_is_checked():
    q = hist("2024-03-01", 10, "15min")
    with pytest.raises(
        T.TimestampError,
        match="timestamps are not h apart: 15min from 2024-03-01 00:00:00 to "
        "2024-03-01 00:15:00, within the last 10 rows",
    ):
        T.future(q, H, freq="h")
    m = hist("2024-01-15", 6, "D")
    with pytest.raises(
        T.TimestampError,
        match="timestamps do not follow --freq MS: 2024-01-15 00:00:00 where 2024-02-01 00:00:00 was due",
    ):
        T.future(m, H, freq="MS")
    with pytest.raises(T.TimestampError, match="do not follow freq MS"):
        T.future(m, H, freq="MS", flag="freq")


def test_check_freq():
    assert T.check_freq("MS") is T.check_freq("MS")  # cached
    assert T.check_freq("15min").nanos == 15 * 60 * 10**9
    with pytest.raises(
        T.TimestampError,
        match=r"^--freq 'fortnightly' is not a pandas frequency \(examples: h, "
        r"15min, D, W, MS\)$",
    ):
        T.check_freq("fortnightly")
    with pytest.raises(T.TimestampError, match=r"^freq '' is not a pandas frequency"):
        T.check_freq("", flag="freq")
    with pytest.raises(T.TimestampError, match="--freq 'x' is not"):
        T.future(hist("2024-01-01", 5, "h"), H, freq="x")


def test_single_row_takes_the_model_frequency():
    one = hist("2024-01-31", 1, "D")
    np.testing.assert_array_equal(T.future(one, H, model_freq="h"), pandas_future(one, "h"))
    np.testing.assert_array_equal(T.future(one, H, model_freq="ME"), pandas_future(one, "ME"))
    np.testing.assert_array_equal(T.future(one, H, freq="D"), pandas_future(one, "D"))
    with pytest.raises(
        T.TimestampError, match="^one row cannot tell the frequency and the model has none: give --freq$"
    ):
        T.future(one, H)
    with pytest.raises(T.TimestampError, match="give freq$"):
        T.future(one, H, model_freq="not-a-freq", flag="freq")  # unreadable model metadata: as if none
    # two rows: their gap, whatever the model says
    two = hist("2024-01-01", 2, "15min")
    np.testing.assert_array_equal(T.future(two, 3, model_freq="h"), two[-1] + 15 * 60 * 10**9 * np.arange(1, 4))
    with pytest.raises(T.TimestampError, match="no timestamps"):
        T.future(np.zeros(0, np.int64), H)


def test_future_many_equals_future_row_by_row():
    L = 24
    rows = [
        hist("2024-01-01", L, "h"),
        hist("2024-02-01", L, "15min"),
        hist("2023-01-01", L, "MS"),
        hist("2023-01-31", L, "ME"),
        hist("2024-02-20", L, "B"),
        hist("2024-01-01", L, "SMS"),
        np.delete(hist("2024-03-01", L + 1, "h"), 5),
        hist("2024-01-07", L, "W-SUN"),
        hist("2024-01-05", L, "D"),
    ]
    hs = np.stack(rows)
    for kw in ({}, {"model_freq": "h"}, {"freq": "h"}, {"freq": "MS"}, {"freq": "SMS", "flag": "freq"}):
        fut, ok, messages, mismatch = T.future_many(hs, H, **kw)
        assert fut.shape == (len(rows), H) and ok.dtype == bool and mismatch.shape == (len(rows),)
        for k, h in enumerate(rows):
            try:
                want = T.future(h, H, **kw)
            except T.TimestampError as exc:
                assert not ok[k] and messages[k] == str(exc), (kw, k)
                assert (fut[k] == 0).all()
            else:
                assert ok[k] and k not in messages, (kw, k)
                np.testing.assert_array_equal(fut[k], want)
        assert set(messages) == set(np.flatnonzero(~ok))
    _, ok, _, mismatch = T.future_many(hs, H, model_freq="h")
    # regular rows whose step is not the model's: 15min, W-SUN (7D) and D; calendar rows are not compared
    assert mismatch.tolist() == [False, True, False, False, False, False, False, True, True]
    assert not T.future_many(hs, H)[3].any()  # no model frequency: nothing to compare with
    # one column: the model's frequency for every row
    fut, ok, messages, _ = T.future_many(hs[:, :1], 3, model_freq="D")
    assert ok.all() and (fut[:, 0] == hs[:, 0] + 86_400 * 10**9).all()
    fut, ok, messages, _ = T.future_many(np.zeros((0, L), np.int64), H)
    assert fut.shape == (0, H) and not messages


def test_parse_iso_forms_and_errors():
    got = T.parse_iso(
        ["2024-01-31T13:00:00", "2024-01-31 14:00", "2024-01-31T15:00:00Z", " 2024-01-31T16:00:00.5 ", "2024-02-01"]
    )
    assert T.iso(got) == [
        "2024-01-31T13:00:00.000",
        "2024-01-31T14:00:00.000",
        "2024-01-31T15:00:00.000",
        "2024-01-31T16:00:00.500",
        "2024-02-01T00:00:00.000",
    ]
    assert T.iso(T.parse_iso(["2024-01-31T13:00:00Z", "2024-01-31T14:00:00Z"])) == [
        "2024-01-31T13:00:00",
        "2024-01-31T14:00:00",
    ]
    assert T.parse_iso([]).dtype == np.int64 and len(T.parse_iso([])) == 0
    for values, index in (
        (["2024-01-31T13:00:00+01:00"], 0),
        (["2024-01-01", "2024-01-31T13:00:00-01:00"], 1),
        (["2024-01-01", "now"], 1),
        (["NaT"], 0),
        ([""], 0),
        (["20240105"], 0),
        (["-2024-01-01"], 0),
        (["2024-01-01", "2024-02-30"], 1),
        (["2024-01-01T25:00"], 0),
        (["2024-01-01", 5], 1),
        (["31/01/2024"], 0),
        (["2024-01-01\n2024-01-02"], 0),
    ):
        with pytest.raises(T.TimestampError) as info:
            T.parse_iso(values)
        assert info.value.index == index, values
        assert str(info.value) == (
            f"[{index}] = {values[index]!r} is not an ISO 8601 timestamp like 2024-01-31T13:00:00 (no time zone offset)"
        )
    for values, index in ((["2024-01-02", "2024-01-01"], 1), (["2024-01-01", "2024-01-02", "2024-01-02"], 2)):
        with pytest.raises(T.TimestampError, match="^must increase strictly$") as info:
            T.parse_iso(values)
        assert info.value.index == index
    assert isinstance(T.TimestampError("x"), ValueError)


def test_iso_and_message_helpers():
    ns = hist("2024-01-31 13:00", 2, "h")
    assert T.iso(ns) == [str(np.datetime64(int(x), "ns").astype("datetime64[s]")) for x in ns]
    assert T.iso(ns + 1) == ["2024-01-31T13:00:00.000000001", "2024-01-31T14:00:00.000000001"]
    assert T.ts(ns[0]) == "2024-01-31 13:00:00"
    assert (T.span(2 * 3600 * 10**9), T.span(15 * 60 * 10**9), T.span(86_400 * 10**9)) == ("2h", "15min", "1D")


def test_regular_paths_need_no_pandas():
    """A regular history, parsing and formatting stay in numpy (pandas is imported only for
    calendar frequencies and messages)."""
    script = (
        "import sys\n"
        "from rnnops import timeseries as T\n"
        "before = 'pandas' in sys.modules\n"
        "h = T.parse_iso(['2024-01-01T00:00:00', '2024-01-01T01:00:00', '2024-01-01T02:00:00'])\n"
        "T.iso(T.future(h, 4)); T.future_many(h[None], 4, model_freq=None)\n"
        "assert before or 'pandas' not in sys.modules, 'the regular path imported pandas'\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
