"""rnnops/panel_features.py: a series request becomes exactly the window training cuts
(training/panel_train.py's PanelWindows.batch) for the same series and cutoff, and every bad
entry is one line that names the series and what to change."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from rnnops import panel_contract as pc
from rnnops import timeseries
from rnnops.panel_contract import PanelContract, StaticCategorical
from rnnops.panel_features import SeriesEntry, SeriesError, build_feeds, series_features
from rnnops.training.panel import Panel, PanelSpec, read_panel

L, H = 14, 5


def make_panel() -> Panel:
    """Four daily series of different lengths and starts (one shorter than the lookback), a
    missing target and a missing past covariate, categorical and numeric statics."""
    rows = []
    for sid, start, n, store, size in (
        ("A", "2024-01-01", 40, "s1", 2.0),
        ("B", "2024-01-05", 30, "s2", 1.0),
        ("C", "2024-02-01", 9, "s1", 3.0),
        ("D", "2023-12-20", 45, "s3", 0.5),
    ):
        for k, day in enumerate(pd.date_range(start, periods=n, freq="D")):
            rows.append(
                {
                    "id": sid,
                    "day": day.strftime("%Y-%m-%d"),
                    "sales": float((k * 7 + len(sid)) % 11),
                    "promo": float(k % 4 == 0),
                    "price": 1.0 + 0.1 * (k % 3),
                    "temp": 10.0 + k % 9,
                    "store": store,
                    "size": size,
                }
            )
    df = pd.DataFrame(rows)
    df.loc[5, "sales"] = np.nan
    df.loc[7, "temp"] = np.nan
    spec = PanelSpec(
        id_column="id",
        date_column="day",
        targets="sales",
        horizon=H,
        lookback=L,
        static_columns="store,size",
        future_covariates="promo,price",
        past_covariates="temp",
    )
    return read_panel(df, spec)


def contract_of(panel: Panel, min_history: int = 1) -> PanelContract:
    return PanelContract(
        target=panel.spec.targets[0],
        freq=panel.freq,
        season=panel.season,
        lookback=L,
        horizon=H,
        quantiles=(0.1, 0.5, 0.9),
        past_covariates=panel.spec.past_covariates,
        future_covariates=panel.spec.future_covariates,
        calendar=panel.calendar_names,
        static_categorical=tuple(
            StaticCategorical(s.name, s.vocabulary) for s in panel.static if s.kind == "categorical"
        ),
        static_real=tuple(s.name for s in panel.static if s.kind == "real"),
        min_history=min_history,
    )


def entry_at(panel: Panel, i: int, cutoff: int, iso: bool = True) -> SeriesEntry:
    """Series ``i``'s request at ``cutoff``: its history before it, future covariates to cutoff + H."""
    r = panel.rows(i)
    t = panel.timestamps[r][:cutoff]
    static = {}
    for s in panel.static:
        v = s.values[i]
        static[s.name] = s.vocabulary[int(v) - 1] if s.kind == "categorical" else float(v)
    return SeriesEntry(
        id=panel.ids[i],
        timestamps=timeseries.iso(t.view(np.int64)) if iso else t,
        context=panel.target[r][:cutoff, 0].tolist(),
        past_covariates={c: panel.past[r][:cutoff, k] for k, c in enumerate(panel.spec.past_covariates)},
        future_covariates={
            c: panel.future[r][: cutoff + H, k].tolist() for k, c in enumerate(panel.spec.future_covariates)
        },
        static=static,
        start=None if cutoff else timeseries.iso(panel.timestamps[r][:1].view(np.int64))[0],
    )


@pytest.fixture(scope="module")
def panel() -> Panel:
    return make_panel()


def test_feeds_equal_training_windows(panel):
    """Full lookbacks, a history shorter than the lookback (left-padded), a missing target and
    past covariate inside the window, string and datetime64 timestamps: the feeds are training's
    windows, bit for bit (NaN where training has NaN), and the horizon's timestamps are the panel's."""
    torch = pytest.importorskip("torch")  # the reference: training's own window cutter
    from rnnops.training.panel_train import PanelWindows

    windows = PanelWindows(panel, L)
    contract = contract_of(panel)
    series = np.array([0, 0, 1, 2, 3, 3, 1])
    cutoffs = np.array([35, 6, 25, 4, 40, 14, 1])  # A's cutoff 6 holds the missing sales and temp
    entries = [entry_at(panel, int(i), int(c), iso=k % 2 == 0) for k, (i, c) in enumerate(zip(series, cutoffs))]
    want = windows.batch(series, cutoffs)
    for k, e in enumerate(entries):
        got = series_features(e, contract)
        for name in contract.inputs:
            np.testing.assert_array_equal(got.inputs[name], getattr(want, name)[k].numpy(), err_msg=f"{name} of {k}")
        r = panel.rows(int(series[k]))
        np.testing.assert_array_equal(got.future, panel.timestamps[r][cutoffs[k] : cutoffs[k] + H].view(np.int64))
        assert got.warnings == ()
    assert torch.isnan(want.past_target[1]).any()  # the padded / missing cases were exercised

    # a request of distinct series: one batch in request order, shapes as the contract says
    batch = build_feeds([entries[0], entries[2], entries[3]], contract)
    assert batch.ids == ("A", "B", "C")
    assert set(batch.feeds) == set(contract.inputs)
    for name, (shape, dtype) in contract.inputs.items():
        assert batch.feeds[name].shape == (3, *shape[1:]) and batch.feeds[name].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(batch.feeds[name], getattr(want, name)[[0, 2, 3]].numpy())


def test_cold_start_is_training_window_at_cutoff_zero(panel):
    from rnnops.training.panel_train import PanelWindows

    pytest.importorskip("torch")
    contract = contract_of(panel, min_history=0)
    want = PanelWindows(panel, L).batch(np.array([1]), np.array([0]))
    got = series_features(entry_at(panel, 1, 0), contract)
    for name in contract.inputs:
        np.testing.assert_array_equal(got.inputs[name], getattr(want, name)[0].numpy(), err_msg=name)
    np.testing.assert_array_equal(got.future, panel.timestamps[panel.rows(1)][:H].view(np.int64))
    # a model that needs a history refuses the same entry, in one line
    with pytest.raises(SeriesError, match=r"series 'B' has 0 observed values .* needs at least one"):
        series_features(entry_at(panel, 1, 0), contract_of(panel))


def test_unknown_category_goes_to_the_unknown_bucket(panel):
    contract = contract_of(panel)
    e = entry_at(panel, 0, 20)
    got = series_features(SeriesEntry(**{**e.__dict__, "static": {**e.static, "store": "s9"}}), contract)
    assert got.inputs[pc.STATIC_CAT].tolist() == [0]
    assert len(got.warnings) == 1 and "'store' = 's9'" in got.warnings[0] and "unknown" in got.warnings[0]
    known = series_features(e, contract)
    assert known.inputs[pc.STATIC_CAT].tolist() == [1] and known.warnings == ()


def _with(e: SeriesEntry, **changes) -> SeriesEntry:
    return SeriesEntry(**{**e.__dict__, **changes})


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (
            lambda e: _with(
                e, future_covariates={"promo": e.future_covariates["promo"][:-1], "price": e.future_covariates["price"]}
            ),
            r"series 'A': future covariate 'promo' has 24 values; it needs 25 values: one per context step \(20\) and per forecast step \(5\)",
        ),
        (
            lambda e: _with(e, future_covariates={"promo": e.future_covariates["promo"]}),
            r"series 'A': future covariate 'price' is missing; it needs 25 values",
        ),
        (
            lambda e: _with(e, past_covariates={**e.past_covariates, "humidity": [1.0] * 20}),
            r"series 'A': past_covariates 'humidity' is not one the model knows \(it takes temp\)",
        ),
        (
            lambda e: _with(e, static={**e.static, "colour": "red"}),
            r"series 'A': static 'colour' is not one the model knows \(it takes store, size\)",
        ),
        (
            lambda e: _with(e, timestamps=e.timestamps[:15] + e.timestamps[16:] + ["2024-01-21"]),
            r"series 'A': timestamps are not D apart: 2D from 2024-01-15 00:00:00 to 2024-01-17",
        ),
        (lambda e: _with(e, context=e.context[:-1] + ["x"]), r"series 'A': context holds values that are not numbers"),
        (
            lambda e: _with(e, future_covariates={**e.future_covariates, "price": [float("nan")] * 25}),
            r"series 'A': future covariate 'price'\[6\] is a missing, infinite or out-of-range value",
        ),
        (
            lambda e: _with(e, context=e.context[:-1] + [1e39]),
            r"series 'A': context\[19\] is an infinite or out-of-range value",
        ),
        (lambda e: _with(e, context=[[1.0, 2.0]] * 20), r"series 'A': context must be one value of 'sales' per step"),
        (lambda e: _with(e, timestamps=e.timestamps[:-1]), r"series 'A': 19 timestamps for 20 context values"),
        (lambda e: _with(e, static={"store": "s1"}), r"series 'A': numeric static 'size' is missing"),
        (lambda e: _with(e, timestamps=["2024-01-01T00:30:00"] * 20), r"series 'A': timestamps must increase strictly"),
    ],
)
def test_bad_entries_are_one_line(panel, change, pattern):
    e = entry_at(panel, 0, 20)
    with pytest.raises(SeriesError, match=pattern) as info:
        series_features(change(e), contract_of(panel))
    assert "\n" not in str(info.value) and info.value.series == "A"


def test_request_level_errors(panel):
    contract = contract_of(panel)
    a, b = entry_at(panel, 0, 20), entry_at(panel, 1, 20)
    with pytest.raises(SeriesError, match=r"series id 'A' is given twice \(entries 0 and 2\)"):
        build_feeds([a, b, a], contract)
    with pytest.raises(SeriesError, match="has no history: give `start`"):
        series_features(_with(entry_at(panel, 1, 0), start=None), contract_of(panel, min_history=0))
    monthly = dataclasses.replace(contract_of(panel, min_history=0), freq="MS", calendar=("month_of_year",))
    with pytest.raises(SeriesError, match=r"start 2024-01-05 00:00:00 is not a step of the model's frequency MS"):
        series_features(entry_at(panel, 1, 0), monthly)
    with pytest.raises(SeriesError, match="a series id must be a string"):
        build_feeds([_with(a, id="")], contract)
    empty = build_feeds([], contract)
    assert empty.feeds[pc.PAST_TARGET].shape == (0, L) and empty.future.shape == (0, H)


def test_only_the_steps_the_model_reads_are_read(panel):
    """A history longer than the lookback: its older values are counted, never converted (a
    client's long history costs the server nothing), so even a non-number there is not read."""
    contract = contract_of(panel)
    e = entry_at(panel, 0, 30)  # 30 steps, the model reads 14
    older = _with(e, context=["x"] + e.context[1:], timestamps=["not a date"] + e.timestamps[1:])
    a, b = series_features(e, contract), series_features(older, contract)
    for name in contract.inputs:
        np.testing.assert_array_equal(a.inputs[name], b.inputs[name])


def test_shared_timestamps_and_fast_paths_give_the_same_features(panel):
    """Series that share their timestamps share one parsed time axis (a cache keyed by the strings
    or the int64 values and the model's frequency, horizon and calendar): every form of the same
    history (ISO strings, datetime64, int64 ns, a tuple) gives the same features, another horizon
    gets its own axis, and values the fast number check passes on (integers, float64 between 3.4e38
    and float32's largest) are what the exact check gives."""
    contract = contract_of(panel)
    e = entry_at(panel, 0, 20)
    want = series_features(e, contract)
    t = timeseries.parse_iso(e.timestamps)
    for stamps in (tuple(e.timestamps), t, t.view("datetime64[ns]"), list(e.timestamps)):
        got = series_features(_with(e, timestamps=stamps), contract)
        for name in contract.inputs:
            np.testing.assert_array_equal(got.inputs[name], want.inputs[name], err_msg=name)
        np.testing.assert_array_equal(got.future, want.future)
    two_more = {k: list(v) + [0.0, 1.0] for k, v in e.future_covariates.items()}
    longer = series_features(_with(e, future_covariates=two_more), dataclasses.replace(contract, horizon=H + 2))
    assert longer.future.shape == (H + 2,) and longer.inputs[pc.KNOWN_FUTURE].shape == (H + 2, 5)
    np.testing.assert_array_equal(longer.future[:H], want.future)

    big = np.float64(np.finfo(np.float32).max)  # above the fast check's bound, still a float32
    ints = series_features(_with(e, context=[int(v) if v == v else 0 for v in e.context[:-1]] + [big]), contract)
    assert ints.inputs[pc.PAST_TARGET][-1] == np.float32(big) and ints.inputs[pc.PAST_TARGET].dtype == np.float32
    assert ints.inputs[pc.PAST_TARGET][-2] == float(int(e.context[-2]))
    newline = e.timestamps[:10] + [e.timestamps[10] + "\n"] + e.timestamps[11:]  # one more line when joined
    with pytest.raises(SeriesError, match=r"series 'A': timestamps\[10\] = '2024-01-11T00:00:00\\n' is not an ISO"):
        series_features(_with(e, timestamps=newline), contract)
