"""SeriesTails, the batch job's per-series streaming state, fed Arrow record batches directly:
no model, no files, a Layout built by hand.

What it must get right whatever the chunking: interleaved series, series spanning chunks, the
ring buffer wrapping around, backwards and repeated timestamps (also across a chunk boundary),
NaN inside or outside the window the model reads, too-short series, rows without an id.
"""

from __future__ import annotations

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pd = pytest.importorskip("pandas")

from rnnops import timeseries  # noqa: E402
from rnnops.serving.batch import Layout, Prepared, SeriesError, SeriesTails  # noqa: E402

L, H = 4, 3
HOUR = 3600 * 10**9


def layout(id_column: str | None = "id", lookback: int = L, **kw) -> Layout:
    kw = {"freq": None, "date_format": None, "model_freq": "h", **kw}
    return Layout(
        fmt="csv",
        id_column=id_column,
        date_column="date",
        features=("a", "b"),
        targets=("b",),
        lookback=lookback,
        horizon=H,
        **kw,
    )


def frame(series: dict[str, int], start: str = "2024-03-01", freq: str = "h") -> pd.DataFrame:
    """{id: rows} -> id, date (ISO strings), a, b; grouped by id, in time order; values name their row."""
    parts = []
    for k, (sid, n) in enumerate(series.items()):
        dates = pd.date_range(start, periods=n, freq=freq).strftime("%Y-%m-%d %H:%M:%S")
        parts.append(
            pd.DataFrame({"id": sid, "date": dates, "a": 100.0 * k + np.arange(n), "b": -(100.0 * k + np.arange(n))})
        )
    return pd.concat(parts, ignore_index=True)


def batches(df: pd.DataFrame, sizes) -> list:
    """The frame as record batches of the given sizes (cycled)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    out, lo, i = [], 0, 0
    sizes = list(sizes)
    while lo < len(df):
        n = sizes[i % len(sizes)]
        out.append(table.slice(lo, n).combine_chunks().to_batches()[0])
        lo, i = lo + n, i + 1
    return out


def feed(lay: Layout, df: pd.DataFrame, sizes=(10**9,), positions=None, capacity: int = 1024) -> SeriesTails:
    tails = SeriesTails(lay, capacity=capacity)
    pos = np.arange(len(df), dtype=np.int64) if positions is None else np.asarray(positions, np.int64)
    lo = 0
    for b in batches(df, sizes):
        tails.feed(b, pos[lo : lo + b.num_rows])
        lo += b.num_rows
    return tails


def naive(df: pd.DataFrame, lookback: int = L) -> dict:
    """What the windows must be: each series' last rows, oldest first."""
    out = {}
    groups = df.groupby("id", sort=False) if "id" in df else [(None, df)]
    for sid, g in groups:
        g = g.tail(lookback)
        dates = pd.to_datetime(g["date"]).to_numpy().astype("datetime64[ns]").astype(np.int64)
        out[sid] = (g[["a", "b"]].to_numpy(np.float32), dates)
    return out


def check_windows(p: Prepared, df: pd.DataFrame, lookback: int = L):
    want = naive(df, lookback)
    assert p.windows.shape == (len(p.ids), lookback, 2) and p.windows.dtype == np.float32
    for k, sid in enumerate(p.ids):
        np.testing.assert_array_equal(p.windows[k], want[sid][0], err_msg=str(sid))
        np.testing.assert_array_equal(p.window_dates[k], want[sid][1], err_msg=str(sid))
        np.testing.assert_array_equal(p.future[k], timeseries.future(want[sid][1], H, model_freq="h"))


def by_id(errors: list[SeriesError]) -> dict:
    return {e.series_id: e for e in errors}


# ----------------------------------------------------------------------------- good input


@pytest.mark.parametrize("sizes", [(10**9,), (1,), (3,), (7, 2, 5), (L,), (L + 1,)])
def test_any_chunking_gives_the_same_windows(sizes):
    df = frame({"s1": 9, "s2": 4, "s3": 13, "s4": 5})
    p = feed(layout(), df, sizes).finish()
    assert p.ids == ["s1", "s2", "s3", "s4"] and p.errors == []
    assert p.rows.tolist() == [9, 4, 13, 5] and p.first_pos.tolist() == [0, 9, 13, 26]
    check_windows(p, df)
    assert not p.mismatch.any() and p.freq_mismatch == 0


@pytest.mark.parametrize("sizes", [(10**9,), (1,), (5,), (2, 9)])
def test_interleaved_series(sizes):
    df = frame({"x": 11, "y": 7, "z": 6})
    inter = df.assign(_t=pd.to_datetime(df["date"])).sort_values(["_t", "id"], kind="stable").drop(columns="_t")
    inter = inter.reset_index(drop=True)
    assert inter["id"].tolist()[:3] == ["x", "y", "z"]  # really interleaved
    p = feed(layout(), inter, sizes).finish()
    assert p.ids == ["x", "y", "z"] and p.first_pos.tolist() == [0, 1, 2]  # order of first appearance
    check_windows(p, inter)


def test_ring_buffer_wraps_around_many_times():
    """A long series fed a row at a time and in odd chunks: the window is its last L rows, oldest
    first, however often the write pointer went round."""
    df = frame({"long": 4 * L + 3, "exact": L, "twice": 2 * L})
    for sizes in ((1,), (3,), (L - 1, L + 1), (2 * L + 1,)):
        p = feed(layout(), df, sizes).finish()
        check_windows(p, df)
        assert p.windows[0, :, 0].tolist() == [float(v) for v in range(3 * L + 3, 4 * L + 3)]


def test_capacity_grows_and_positions_are_kept():
    """More series than the initial capacity (the arrays double), with gapped positions as Spark's
    monotonically_increasing_id gives them."""
    df = frame({f"s{k:02d}": L + k % 3 for k in range(37)})
    positions = np.arange(len(df), dtype=np.int64) * 10 + (1 << 33)
    p = feed(layout(), df, (5,), positions=positions, capacity=2).finish()
    assert len(p.ids) == 37 and p.first_pos.tolist() == positions[df.drop_duplicates("id").index].tolist()
    check_windows(p, df)


def test_integer_ids_and_a_whole_file_without_id_column():
    df = frame({"1": 6, "2": 5}).assign(id=lambda d: d["id"].astype(np.int64))
    p = feed(layout(), df, (4,)).finish()
    assert p.ids == [1, 2]
    check_windows(p, df)
    one = frame({"only": 7}).drop(columns="id")
    p = feed(layout(id_column=None), one, (3,)).finish()
    assert p.ids == [None] and p.rows.tolist() == [7]
    check_windows(p, one)


def test_calendar_series_and_the_mismatch_warning():
    ms = frame({"monthly": 6}, start="2024-01-01", freq="MS")
    q = frame({"quarter-hourly": 6}, freq="15min")
    p = feed(layout(), pd.concat([ms, q], ignore_index=True), (4,)).finish()
    assert p.ids == ["monthly", "quarter-hourly"]
    assert timeseries.iso(p.future[0]) == ["2024-07-01T00:00:00", "2024-08-01T00:00:00", "2024-09-01T00:00:00"]
    assert p.mismatch.tolist() == [False, True]  # 15min against the model's h; calendar steps are not compared


# ----------------------------------------------------------------------------- bad input


def test_backwards_and_repeated_timestamps_also_across_chunks():
    df = frame({"ok": 6, "dup": 6, "back": 6, "dup_edge": 6, "back_edge": 6})
    rows = lambda sid: df.index[df.id == sid]  # noqa: E731
    df.loc[rows("dup")[3], "date"] = df.loc[rows("dup")[2], "date"]
    df.loc[rows("back")[4], "date"] = "2024-03-01 00:30:00"
    df.loc[rows("dup_edge")[3], "date"] = df.loc[rows("dup_edge")[2], "date"]
    df.loc[rows("back_edge")[3], "date"] = "2024-02-01 00:00:00"
    # chunks of 3 rows: the *_edge problems sit on a chunk boundary (the carried last timestamp)
    assert rows("dup_edge")[3] % 3 == 0 and rows("back_edge")[3] % 3 == 0
    for sizes in ((10**9,), (3,), (1,)):
        tails = feed(layout(), df, sizes)
        assert tails.has_errors and [e.series_id for e in tails.errors()] == ["dup", "back", "dup_edge", "back_edge"]
        p = tails.finish()
        assert p.ids == ["ok"]
        errors = by_id(p.errors)
        assert errors["dup"].message == "timestamp 2024-03-01 02:00:00 repeats (one row per series and timestamp)"
        assert errors["dup_edge"].message.startswith("timestamp 2024-03-01 02:00:00 repeats")
        assert errors["back"].message == (
            "timestamps go back: 2024-03-01 00:30:00 comes after 2024-03-01 03:00:00 "
            "(sort the rows of each series by time)"
        )
        assert errors["back_edge"].message.startswith(
            "timestamps go back: 2024-02-01 00:00:00 comes after 2024-03-01 02:00:00"
        )
        assert errors["back"] == SeriesError("back", 6, errors["back"].message, int(rows("back")[0]))


def test_disorder_without_id_column_suggests_one():
    df = pd.concat([frame({"a": 5}), frame({"b": 5})], ignore_index=True).drop(columns="id")
    p = feed(layout(id_column=None), df).finish()
    assert p.ids == [] and p.errors[0].message.endswith(
        "; or is this several series? name the id column with --id-column)"
    )
    assert p.errors[0].series_id is None and p.errors[0].rows == 10


def test_nan_inside_the_window_fails_outside_it_does_not():
    df = frame({"inside": 8, "outside": 8, "inf": 8})
    rows = lambda sid: df.index[df.id == sid]  # noqa: E731
    df.loc[rows("inside")[-2], "b"] = np.nan
    df.loc[rows("outside")[1], "a"] = np.nan  # 7 rows back: not read with lookback 4
    df.loc[rows("inf")[-1], "a"] = np.inf
    for sizes in ((10**9,), (3,)):
        p = feed(layout(), df, sizes).finish()
        assert p.ids == ["outside"]
        errors = by_id(p.errors)
        assert errors["inside"].message == (
            "b is missing (NaN) at 2024-03-01 06:00:00, within the last 4 rows that the model reads"
        )
        assert errors["inf"].message.startswith("a is inf at 2024-03-01 07:00:00")
        check_windows(p, df)


def test_too_short_series_rows_without_id_and_bad_dates():
    df = frame({"short": L - 1, "ok": L, "baddate": 6, "nodate": 6})
    df.loc[len(df)] = {"id": None, "date": "2024-03-01 00:00:00", "a": 1.0, "b": 1.0}
    df.loc[len(df)] = {"id": None, "date": "2024-03-01 01:00:00", "a": 1.0, "b": 1.0}
    df.loc[df.index[df.id == "baddate"][2], "date"] = "31/02/2024 25:00"
    df.loc[df.index[df.id == "nodate"][4], "date"] = None
    for sizes in ((10**9,), (2,)):
        p = feed(layout(), df, sizes).finish()
        assert p.ids == ["ok"]
        assert [(e.series_id, e.rows, e.message) for e in p.errors] == [
            ("short", 3, "only 3 rows; the model reads the last 4"),
            ("baddate", 6, "unparsable date '31/02/2024 25:00'"),
            ("nodate", 6, "a row has no date"),
            (None, 2, "2 rows have no id"),
        ]
        assert [e.first_pos for e in p.errors] == [0, 7, 13, 19]


def test_irregular_window_and_a_given_freq():
    df = frame({"gap": 7, "ok": 7})
    df = df.drop(df.index[df.id == "gap"][-2]).reset_index(drop=True)  # an hour missing inside the window
    p = feed(layout(), df).finish()
    assert p.ids == ["ok"]
    assert p.errors[0].message.startswith(
        "irregular timestamps: a step of 2h from 2024-03-01 04:00:00 to "
        "2024-03-01 06:00:00 where most are 1h, within the last 4 rows"
    )
    p = feed(layout(freq="15min"), df).finish()
    assert p.ids == [] and all(e.message.startswith("timestamps are not 15min apart") for e in p.errors)


def test_empty_input():
    tails = SeriesTails(layout())
    tails.feed(pa.RecordBatch.from_pandas(frame({"x": 1}).iloc[:0], preserve_index=False), np.zeros(0, np.int64))
    p = tails.finish()
    assert (tails.rows, tails.series, p.ids, p.errors) == (0, 0, [], [])
    assert p.windows.shape == (0, L, 2) and p.future.shape == (0, H)
