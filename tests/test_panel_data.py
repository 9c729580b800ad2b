"""Panels in (training/panel.py): CSV and Parquet read alike, every bad input is one clear line
before any training, gaps, splits and backtest origins; the calendar features (rnnops/calendar.py);
the generated retail panel (benchmarks/retail_panel.py); M4 Hourly as a long panel."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_forecast_metrics import m4_data  # noqa: F401  (the M4 files: skip locally, fail under CI)

from rnnops import calendar
from rnnops.errors import RnnopsError
from rnnops.training import forecast_metrics as fm
from rnnops.training.panel import PanelSpec, backtest_cutoffs, read_panel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import retail_panel  # noqa: E402

RETAIL = dict(
    id_column="item_id",
    date_column="date",
    targets="sales",
    static_columns="store,category",
    future_covariates="promo,price",
)


def hand_panel() -> pd.DataFrame:
    """Three daily series: A 30 days, B 25 days starting later, C 6 days (short); one missing sales."""
    rows = []
    for sid, start, n, store in (
        ("A", "2024-01-01", 30, "s1"),
        ("B", "2024-01-06", 25, "s2"),
        ("C", "2024-01-25", 6, "s1"),
    ):
        for k, day in enumerate(pd.date_range(start, periods=n, freq="D")):
            rows.append(
                {
                    "id": sid,
                    "day": day.strftime("%Y-%m-%d"),
                    "sales": float(k % 7 + (sid == "B") * 10),
                    "promo": float(k % 5 == 0),
                    "store": store,
                    "temp": 20.0 + k,
                }
            )
    df = pd.DataFrame(rows)
    df.loc[3, "sales"] = np.nan
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)  # any row order


def spec(**kw) -> PanelSpec:
    base = dict(
        id_column="id",
        date_column="day",
        targets="sales",
        horizon=3,
        lookback=7,
        static_columns="store",
        future_covariates="promo",
        past_covariates="temp",
    )
    base.update(kw)
    return PanelSpec(**base)


def one_line_error(df, s: PanelSpec) -> str:
    with pytest.raises(RnnopsError) as info:
        read_panel(df, s)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- reading


def test_a_panel_is_sorted_split_into_series_and_keeps_missing_targets():
    p = read_panel(hand_panel(), spec())
    assert p.ids == tuple(sorted(p.ids, key=p.ids.index)) and set(p.ids) == {"A", "B", "C"}
    a = p.ids.index("A")
    rows = p.rows(a)
    assert p.lengths[a] == 30
    assert np.all(np.diff(p.timestamps[rows].view(np.int64)) == 86_400 * 10**9)
    assert np.isnan(p.target[rows][3, 0]) and p.missing_targets == 1  # kept, not forward-filled
    assert p.target[rows][4, 0] == 4.0
    assert p.freq == "D" and p.season == 7
    assert p.calendar_names == ("day_of_week", "day_of_month", "day_of_year")
    assert p.calendar().shape == (int(p.lengths.sum()), 3)
    assert p.too_short == ("C",)  # 6 < lookback 7 + horizon 3: listed, kept
    assert "1 series shorter than lookback 7 + horizon 3: C" in p.summary()
    store = p.static[0]
    assert store.kind == "categorical" and store.vocabulary == ("s1", "s2")
    assert store.values[p.ids.index("B")] == 2
    assert store.encode(["s2", "never-seen"]).tolist() == [2, 0]  # unknown bucket for new categories
    assert p.future.shape == (int(p.lengths.sum()), 1) and p.past.shape[1] == 1


def test_csv_and_parquet_read_alike(tmp_path):
    df = retail_panel.generate(series=12, days=70, seed=3)
    df.to_csv(tmp_path / "p.csv", index=False)
    df.to_parquet(tmp_path / "p.parquet", index=False)
    s = PanelSpec(**RETAIL, horizon=7, lookback=42, likelihood="negbin")
    a, b = read_panel(str(tmp_path / "p.csv"), s), read_panel(str(tmp_path / "p.parquet"), s)
    assert a.ids == b.ids and a.n_series == 12
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    np.testing.assert_array_equal(a.target, b.target)
    np.testing.assert_allclose(a.future, b.future)
    assert [c.vocabulary for c in a.static] == [c.vocabulary for c in b.static]
    assert a.freq == "D" and len(a.too_short) == 1  # the generator's one short history (3-6 weeks)


def test_batches_of_any_size_give_the_same_panel_and_row_numbers(tmp_path, monkeypatch):
    from rnnops.training import panel as panel_module

    df = retail_panel.generate(series=12, days=70, seed=3)
    df.to_csv(tmp_path / "p.csv", index=False)
    df.to_parquet(tmp_path / "p.parquet", index=False)
    s = PanelSpec(**RETAIL, horizon=7, lookback=42)
    whole = read_panel(df, s)
    monkeypatch.setattr(panel_module, "BATCH_ROWS", 50)  # ~15 batches
    for source in (df, str(tmp_path / "p.csv"), str(tmp_path / "p.parquet")):
        p = read_panel(source, s)
        assert p.ids == whole.ids and p.too_short == whole.too_short
        np.testing.assert_array_equal(p.offsets, whole.offsets)
        np.testing.assert_array_equal(p.timestamps, whole.timestamps)
        np.testing.assert_array_equal(p.target, whole.target)
        np.testing.assert_allclose(p.future, whole.future)
        for a, b in zip(p.static, whole.static):
            assert a.vocabulary == b.vocabulary
            np.testing.assert_array_equal(a.values, b.values)
    monkeypatch.setattr(panel_module, "BATCH_ROWS", 7)
    bad = hand_panel()
    bad["id"] = bad["id"].astype(object)
    bad.loc[[3, 40], "id"] = None
    assert one_line_error(bad, spec()).startswith("2 rows of the panel have no id in 'id' (first at row 3)")
    bad = hand_panel()
    bad["sales"] = bad["sales"].astype(object)
    bad.loc[44, "sales"] = "x"
    assert "not numeric: row 44 holds 'x'" in one_line_error(bad, spec())
    bad = hand_panel()
    dup = pd.concat([bad, bad.iloc[[2]]], ignore_index=True)  # the copy lands in another batch
    assert f"the first: {bad.loc[2, 'id']!r} at {bad.loc[2, 'day']} (row 61)" in one_line_error(dup, spec())


def test_static_numeric_columns_stay_numbers():
    df = hand_panel()
    df["size"] = df["id"].map({"A": 1.5, "B": 2.0, "C": 3.0})
    p = read_panel(df, spec(static_columns="store,size"))
    size = p.static[1]
    assert size.kind == "real" and size.values[p.ids.index("B")] == 2.0


# --------------------------------------------------------------------------- bad input, one line each


def test_duplicate_rows_say_how_many_and_the_first():
    df = hand_panel()
    df = pd.concat([df, df[df["id"] == "B"].head(2)], ignore_index=True)
    msg = one_line_error(df, spec())
    assert msg.startswith("2 duplicate (id, day) rows") and "the first: 'B' at 2024-01-" in msg


def test_a_target_that_is_not_numeric():
    df = hand_panel()
    df["sales"] = df["sales"].astype(object)
    df.loc[5, "sales"] = "n/a"
    msg = one_line_error(df, spec())
    assert (
        msg
        == "target 'sales' in the panel is not numeric: row 5 holds 'n/a'; give numbers (missing values may be empty)"
    )


def test_a_column_given_two_roles():
    msg = one_line_error(hand_panel(), spec(past_covariates="temp,promo"))
    assert "column 'promo' is given two roles (--future-covariates and --past-covariates)" in msg
    assert "two roles" in one_line_error(hand_panel(), spec(targets="sales,id"))


def test_a_future_covariate_missing_inside_the_data():
    df = hand_panel()
    df.loc[df.index[df["id"] == "B"][0], "promo"] = np.nan
    msg = one_line_error(df, spec())
    assert "future covariate 'promo' is missing at 1 step " in msg and "'B'" in msg
    # the same column as a past covariate may have holes
    p = read_panel(df, spec(future_covariates=(), past_covariates="temp,promo"))
    assert np.isnan(p.past).sum() == 1


def test_no_series_long_enough():
    msg = one_line_error(hand_panel(), spec(lookback=40))
    assert "no series of the panel is long enough for lookback 40 + horizon 3" in msg and "'A', has 30" in msg


def test_null_ids():
    df = hand_panel()
    df["id"] = df["id"].astype(object)
    df.loc[7, "id"] = None
    assert one_line_error(df, spec()).startswith("1 row of the panel has no id in 'id' (first at row 7)")


def test_a_negative_target_under_negbin():
    df = hand_panel()
    df.loc[df["id"] == "C", "sales"] = -1.0
    msg = one_line_error(df, spec(likelihood="negbin"))
    assert "negative target" in msg and "series 'C'" in msg and "negbin" in msg
    read_panel(df, spec(likelihood="studentt"))  # fine for a real-valued likelihood


def test_timestamps_off_the_frequency_name_the_series():
    df = hand_panel()
    gap = df.index[(df["id"] == "B") & (df["day"] == "2024-01-10")]
    msg = one_line_error(df.drop(gap), spec())
    assert (
        "1 series of the panel skips timestamps of the panel's frequency D: series 'B' jumps from 2024-01-09 to 2024-01-11"
        in msg
    )
    assert "--freq D" in msg
    df2 = hand_panel()
    df2.loc[df2.index[df2["id"] == "A"][0], "day"] = "2024-01-03 06:00"
    msg = one_line_error(df2, spec(freq="D"))
    assert "off the D steps" in msg and "'A'" in msg


def test_freq_fills_gaps_as_missing():
    df = hand_panel()
    drop = df.index[(df["id"] == "B") & df["day"].isin(["2024-01-10", "2024-01-11"])]
    p = read_panel(df.drop(drop), spec(freq="D", future_covariates=()))
    b = p.rows(p.ids.index("B"))
    assert p.filled_gaps == 2 and p.lengths[p.ids.index("B")] == 25
    assert np.all(np.diff(p.timestamps[b].view(np.int64)) == 86_400 * 10**9)
    assert np.isnan(p.target[b][4:6, 0]).all() and p.missing_targets == 1 + 2
    assert "2 missing timestamps filled as missing values" in p.summary()
    # a future covariate cannot be unknown at a filled step
    msg = one_line_error(df.drop(drop), spec(freq="D"))
    assert "future covariate 'promo'" in msg and "a timestamp missing from the file" in msg


def test_calendar_freq_gaps_fill_on_month_starts():
    days = pd.date_range("2020-01-01", periods=24, freq="MS")
    df = pd.DataFrame({"id": ["x"] * 24 + ["y"] * 12, "day": list(days) + list(days[6:18]), "sales": np.arange(36.0)})
    df = df.drop(index=[3, 4])  # x skips April and May 2020
    p = read_panel(df, PanelSpec("id", "day", "sales", horizon=2, lookback=3, freq="MS"))
    x = p.rows(0)
    assert p.filled_gaps == 2 and p.lengths[0] == 24
    np.testing.assert_array_equal(p.timestamps[x], days.to_numpy("datetime64[ns]"))
    assert p.calendar_names == ("month_of_year",) and p.season == 12


@settings(max_examples=40, deadline=None)
@given(
    freq=st.sampled_from(["h", "15min", "D", "B", "W-MON", "MS", "QE"]),
    lengths=st.lists(st.integers(2, 30), min_size=1, max_size=4),
    data=st.data(),
)
def test_freq_fills_any_gaps_back_to_the_full_grid(freq, lengths, data):
    frames, full = [], []
    for i, n in enumerate(lengths):
        skip = data.draw(st.integers(0, 20), label="start offset")
        grid = pd.date_range("2021-01-04", periods=skip + n, freq=freq)[skip:]  # 2021-01-04: a Monday
        keep = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="rows kept"))
        keep[0] = keep[-1] = True  # the series' span stays
        values = np.arange(n, dtype=np.float64) + 100 * i
        frames.append(pd.DataFrame({"id": f"s{i}", "t": grid[keep], "y": values[keep]}))
        full.append((grid, values, keep))
    df = pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=0)
    p = read_panel(df, PanelSpec("id", "t", "y", horizon=1, lookback=1, freq=freq))
    for i, (grid, values, keep) in enumerate(full):
        rows = p.rows(p.ids.index(f"s{i}"))
        np.testing.assert_array_equal(p.timestamps[rows], grid.to_numpy("datetime64[ns]"))
        got = p.target[rows, 0]
        np.testing.assert_array_equal(np.isnan(got), ~keep)
        np.testing.assert_array_equal(got[keep], values[keep])
    assert p.filled_gaps == sum(int((~keep).sum()) for _, _, keep in full)


def test_other_bad_inputs_are_one_line():
    assert "column 'price' (--future-covariates) is not in the panel" in one_line_error(
        hand_panel(), spec(future_covariates="price")
    )
    df = hand_panel()
    df.loc[2, "day"] = "not a date"
    assert "1 row of the panel has no valid date in 'day' (first at row 2: 'not a date')" in one_line_error(df, spec())
    df = hand_panel()
    df.loc[df.index[df["id"] == "A"][4], "store"] = "s9"
    assert "static column 'store' changes within series 'A'" in one_line_error(df, spec())
    with pytest.raises(RnnopsError, match="--likelihood 'poisson' is not one of"):
        spec(likelihood="poisson")
    with pytest.raises(RnnopsError, match="no panel file"):
        read_panel("no-such-file.csv", spec())


def test_a_bad_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_text("id,day\n")
    with pytest.raises(RnnopsError, match="cannot read bad.parquet as Parquet") as info:
        read_panel(str(bad), spec())
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- splits and backtests


def test_splits_follow_the_m4_protocol_per_series():
    p = read_panel(hand_panel(), spec())
    sp = p.splits()
    a, c = p.ids.index("A"), p.ids.index("C")
    assert (sp.range("train")[1][a], sp.range("val")[1][a], sp.range("test")[1][a]) == (24, 27, 30)
    assert (sp.range("test")[0][c], sp.range("train")[1][c]) == (3, 0)  # short: no training part
    with pytest.raises(ValueError):
        sp.range("holdout")


def test_backtest_cutoffs_roll_back_from_the_test_window():
    cut = backtest_cutoffs(np.array([20, 8]), horizon=3, windows=3)
    assert cut.tolist() == [[11, 14, 17], [-1, 2, 5]]  # the last window is the test split
    assert backtest_cutoffs(np.array([20]), 3, 3, step=1).tolist() == [[15, 16, 17]]
    with pytest.raises(RnnopsError, match="at least 1"):
        backtest_cutoffs(np.array([20]), 3, 0)


def test_a_window_gives_histories_and_actual_values_per_series():
    p = read_panel(hand_panel(), spec())
    a, c = p.ids.index("A"), p.ids.index("C")
    series, histories, actual = p.window(p.splits().val_end)
    assert series.tolist() == list(range(3))
    rows = p.rows(a)
    np.testing.assert_array_equal(histories[a], p.target[rows][:27, 0].astype(np.float64))
    np.testing.assert_array_equal(actual[a], p.target[rows][27:30, 0])
    cut = p.backtest(4)  # C (6 steps) has history before the test window only
    assert cut[c].tolist() == [-1, -1, -1, 3] and cut[a].tolist() == [18, 21, 24, 27]
    series, histories, actual = p.window(cut[:, 0])
    assert c not in series.tolist() and actual.shape == (len(series), 3)
    with pytest.raises(ValueError, match="less than one horizon"):
        p.window(p.lengths)


# --------------------------------------------------------------------------- calendar


@pytest.mark.parametrize(
    "freq, names",
    [
        ("h", ("hour_of_day", "day_of_week", "day_of_month", "day_of_year")),
        ("15min", ("minute_of_hour", "hour_of_day", "day_of_week", "day_of_month", "day_of_year")),
        ("D", ("day_of_week", "day_of_month", "day_of_year")),
        ("B", ("day_of_week", "day_of_month", "day_of_year")),
        ("W-MON", ("day_of_month", "week_of_year")),
        ("MS", ("month_of_year",)),
        ("QE", ("month_of_year",)),
        ("YS", ()),
    ],
)
def test_calendar_features_follow_the_frequency(freq, names):
    assert calendar.features_for(freq) == names


def test_calendar_features_match_pandas():
    rng = np.random.default_rng(0)
    ns = np.sort(rng.integers(pd.Timestamp("1999-12-25").value, pd.Timestamp("2031-01-07").value, 2000))
    ns = np.concatenate(
        [ns, [pd.Timestamp(d).value for d in ("2020-12-31", "2021-01-03", "2021-01-04", "2026-12-31 23:59:59")]]
    )
    idx = pd.DatetimeIndex(ns)
    names = tuple(calendar.FORMULAS)
    got = calendar.compute(names, ns)
    want = {
        "second_of_minute": idx.second / 59 - 0.5,
        "minute_of_hour": idx.minute / 59 - 0.5,
        "hour_of_day": idx.hour / 23 - 0.5,
        "day_of_week": idx.dayofweek / 6 - 0.5,
        "day_of_month": (idx.day - 1) / 30 - 0.5,
        "day_of_year": (idx.dayofyear - 1) / 365 - 0.5,
        "month_of_year": (idx.month - 1) / 11 - 0.5,
        "week_of_year": (idx.isocalendar().week.to_numpy(np.float64) - 1) / 52 - 0.5,
    }
    for k, name in enumerate(names):
        np.testing.assert_allclose(got[:, k], np.asarray(want[name], np.float64), atol=1e-6, err_msg=name)
    # datetime64 input and any shape
    assert calendar.compute(("hour_of_day",), idx.to_numpy().reshape(2, -1)).shape == (2, len(ns) // 2, 1)
    with pytest.raises(ValueError, match="not a pandas frequency"):
        calendar.features_for("fortnightly")


# --------------------------------------------------------------------------- the generated retail panel


def test_retail_panel_is_seeded_and_its_covariates_matter(tmp_path):
    a = retail_panel.generate(series=20, days=84, seed=5)
    pd.testing.assert_frame_equal(a, retail_panel.generate(series=20, days=84, seed=5))
    assert not a["sales"].equals(retail_panel.generate(series=20, days=84, seed=6)["sales"])
    assert list(a.columns) == ["item_id", "date", "sales", "store", "category", "promo", "price"]
    assert (a["sales"] >= 0).all() and a["sales"].dtype.kind == "i"
    lengths = a.groupby("item_id").size()
    assert lengths.max() == 84 and 21 <= lengths.min() <= 42  # the short history: 3 to 6 weeks
    # promotions lift sales, item by item (the covariate benchmark depends on it)
    lift = a.groupby(["item_id", "promo"])["sales"].mean().unstack()
    assert (lift[1] > lift[0]).mean() > 0.8
    # static columns are constant per item
    assert (a.groupby("item_id")[["store", "category"]].nunique() == 1).all().all()
    # the CLI writes Parquet that reads back as a panel
    out = tmp_path / "retail.parquet"
    assert retail_panel.main(["--series", "15", "--days", "60", "--out", str(out)]) == 0
    p = read_panel(str(out), PanelSpec(**RETAIL, horizon=7, lookback=14, likelihood="negbin"))
    assert p.n_series == 15 and p.freq == "D" and p.season == 7
    csv = tmp_path / "retail.csv"
    assert retail_panel.main(["--series", "15", "--days", "60", "--out", str(csv)]) == 0
    assert csv.read_text().splitlines()[1].split(",")[1] == "2023-01-02"  # plain dates in CSV
    q = read_panel(str(csv), PanelSpec(**RETAIL, horizon=7, lookback=14))
    np.testing.assert_array_equal(q.target, p.target)
    np.testing.assert_array_equal(q.timestamps, p.timestamps)


# --------------------------------------------------------------------------- M4 Hourly


def test_m4_hourly_is_a_long_panel_with_the_official_split(m4_data):
    from rnnops.training import m4

    panel = m4.load_m4_hourly()
    f = panel.frame
    assert list(f.columns) == ["id", "timestamp", "value", "split"]
    assert len(panel.ids) == 414 and panel.ids[:2] == ("H1", "H2")
    assert (f[f["split"] == "test"].groupby("id").size() == 48).all()
    assert f["timestamp"].iloc[0] == pd.Timestamp("1970-01-01 00:00")
    p = read_panel("m4-hourly", PanelSpec("id", "timestamp", "value", horizon=48, lookback=336))
    assert p.n_series == 414 and p.freq == "h" and p.season == 24 and p.too_short == ()
    assert sorted(set(p.lengths.tolist())) == [748, 1008]
    start, end = p.splits().range("test")
    test = np.stack([p.target[p.offsets[i] + start[i] : p.offsets[i] + end[i], 0] for i in range(p.n_series)])
    np.testing.assert_allclose(test, panel.test_values(), rtol=1e-6)  # the split is the official one
    # Backtest windows scored as the metrics module scores them: the last window is the M4 test.
    cut = p.backtest(3)
    scores = []
    for w in range(3):
        series, histories, actual = p.window(cut[:, w])
        assert len(series) == 414
        scores.append(fm.baseline_scores(histories, actual, p.season)["seasonal_naive"])
    assert (round(scores[-1].smape, 3), round(scores[-1].mase, 3)) == (13.912, 1.193)
    assert scores[0].smape != scores[-1].smape


def test_m4_hourly_downloads_into_the_cache_with_its_sha256(m4_data, tmp_path, monkeypatch):
    """No RNNOPS_DATA_DIR: both files come over HTTP (a local server holding the real files) into
    the cache's m4/ folder, checked against the registered sha256; a wrong file is refused."""
    import dataclasses
    import functools
    import http.server
    import threading

    from rnnops.training import data as D
    from rnnops.training import m4

    served = tmp_path / "served"
    served.mkdir()
    for name in ("Hourly-train.csv", "Hourly-test.csv"):
        (served / name).write_bytes((m4_data / "m4" / name).read_bytes())
    (served / "wrong.csv").write_text("V1,V2\nH1,1\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        for key, name in ((m4.TRAIN_DATASET, "Hourly-train.csv"), (m4.TEST_DATASET, "Hourly-test.csv")):
            monkeypatch.setitem(D.DATASETS, key, dataclasses.replace(D.DATASETS[key], url=f"{base}/{name}"))
        monkeypatch.delenv("RNNOPS_DATA_DIR")
        monkeypatch.setenv("RNNOPS_CACHE", str(tmp_path / "cache"))
        panel = m4.load_m4_hourly()
        assert len(panel.ids) == 414
        assert (tmp_path / "cache" / "data" / "m4" / "Hourly-train.csv").is_file()
        assert (tmp_path / "cache" / "data" / "m4" / "Hourly-test.csv").is_file()
        (tmp_path / "cache" / "data" / "m4" / "Hourly-test.csv").unlink()
        monkeypatch.setitem(
            D.DATASETS, m4.TEST_DATASET, dataclasses.replace(D.DATASETS[m4.TEST_DATASET], url=f"{base}/wrong.csv")
        )
        with pytest.raises(RnnopsError, match="sha256"):
            m4.load_m4_hourly()
        assert not (tmp_path / "cache" / "data" / "m4" / "Hourly-test.csv").exists()
    finally:
        server.shutdown()
        server.server_close()
