"""Forecast metrics (training/forecast_metrics.py) against hand-computed values and against the
M4 competition's published Hourly results (the organisers' "Evaluation and Ranks.xlsx")."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rnnops.training import forecast_metrics as fm

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- hand-computed


def test_smape_and_mase_by_hand():
    insample = [np.array([1.0, 2, 3, 4, 5, 6])]  # m = 2: |3-1| = |4-2| = ... = 2
    actual = np.array([[100.0, 200.0]])
    forecast = np.array([[110.0, 180.0]])
    s = fm.evaluate(insample, actual, forecast, m=2)
    assert s.smape == pytest.approx((200 * 10 / 210 + 200 * 20 / 380) / 2)
    assert s.mase == pytest.approx((10 / 2 + 20 / 2) / 2)
    assert (s.n_series, s.n_values) == (1, 2)
    assert math.isnan(s.owa) and math.isnan(s.msis) and math.isnan(s.wql)


def test_mase_scale_follows_the_seasonal_difference_and_falls_back():
    x = np.array([1.0, 5, 2, 6, 3, 7])
    assert fm.mase_scale(x, 2) == pytest.approx(1.0)  # |2-1|, |6-5|, |3-2|, |7-6|
    assert fm.mase_scale(x, 1) == pytest.approx(np.mean(np.abs(np.diff(x))))
    assert fm.mase_scale(x[:2], 24) == pytest.approx(4.0)  # no seasonal pair: lag 1
    assert math.isnan(fm.mase_scale(x[:1], 24))
    with_gap = np.array([1.0, np.nan, 3, 4])
    assert fm.mase_scale(with_gap, 1) == pytest.approx(1.0)  # only the complete pair (3, 4)


def test_missing_actual_values_are_left_out():
    insample = [np.arange(10.0) + 1]
    actual = np.array([[10.0, np.nan, 12.0]])
    forecast = np.array([[11.0, 999.0, 12.0]])
    s = fm.evaluate(insample, actual, forecast, m=1)
    assert s.n_values == 2
    assert s.mase == pytest.approx((1 + 0) / 2)


def test_smape_of_zero_against_zero_is_zero():
    assert fm.smape_terms(np.array([0.0, 1.0]), np.array([0.0, 3.0])).tolist() == pytest.approx([0.0, 100.0])


def test_msis_and_coverage_by_hand():
    insample = [np.array([0.0, 2.0, 4.0])]  # m = 1: scale 2
    actual = np.array([[10.0, 0.0, 20.0]])
    lower = np.full((1, 3), 5.0)
    upper = np.full((1, 3), 15.0)
    s = fm.evaluate(insample, actual, actual, m=1, lower=lower, upper=upper)
    # width 10 each; misses of 5 below and 5 above cost 2 / 0.05 * 5 = 200 each
    assert s.msis == pytest.approx((10 + 210 + 210) / 3 / 2)
    assert s.coverage == pytest.approx(1 / 3)


def test_wql_as_gluonts_defines_it():
    actual = np.array([[1.0, 2.0], [3.0, np.nan]])
    qs = (0.1, 0.5, 0.9)
    qf = np.zeros((2, 2, 3))
    qf[..., 0], qf[..., 1], qf[..., 2] = 0.5, 2.0, 4.0
    # per quantile: 2 * sum |(f - y) * (1{y <= f} - q)| over the 3 present values, / (1 + 2 + 3)
    expected = []
    for k, q in enumerate(qs):
        f = qf[..., k][np.isfinite(actual)]
        y = actual[np.isfinite(actual)]
        expected.append(2 * np.sum(np.abs((f - y) * ((y <= f) - q))) / 6)
    assert fm.wql(actual, qf, qs) == pytest.approx(np.mean(expected))
    # a perfect median with quantiles collapsed on it scores 0
    exact = np.repeat(np.nan_to_num(actual)[..., None], 3, axis=2)
    assert fm.wql(actual, exact, qs) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="must be"):
        fm.wql(actual, qf[..., :2], qs)


def test_owa_is_relative_to_naive2():
    assert fm.owa(10.0, 1.0, 20.0, 2.0) == pytest.approx(0.5)
    assert fm.owa(18.383, 2.395, 18.383, 2.395) == pytest.approx(1.0)


def test_baselines_by_hand():
    x = np.arange(10.0)
    assert fm.naive(x, 3).tolist() == [9, 9, 9]
    assert fm.seasonal_naive(x, 6, 4).tolist() == [6, 7, 8, 9, 6, 7]
    assert fm.seasonal_naive(x[:3], 4, 4).tolist() == [2, 2, 2, 2]  # shorter than a season: naive
    gap = x.copy()
    gap[7] = np.nan  # the last season's hole comes from the season before (position 3)
    assert fm.seasonal_naive(gap, 4, 4).tolist() == [6, 3, 8, 9]
    assert fm.naive(np.array([1.0, 2.0, np.nan]), 2).tolist() == [2, 2]  # the last observed value


def test_naive2_continues_a_pure_seasonal_series():
    # level 10 times a seasonal pattern of mean 1: the centred moving average is exactly 10, the
    # seasonal index exactly the pattern, so Naive2 continues the series exactly.
    pattern = np.array([0.5, 1.0, 1.5, 1.0])
    x = 10 * np.resize(pattern, 40)
    assert fm.seasonality_test(x, 4)
    np.testing.assert_allclose(fm.multiplicative_seasonal(x, 4), np.resize(pattern, 40))
    np.testing.assert_allclose(fm.naive2(x, 6, 4), 10 * np.resize(pattern, 46)[40:])
    # odd season length: a plain moving average of 3
    odd = 10 * np.resize(np.array([0.5, 1.0, 1.5]), 30)
    np.testing.assert_allclose(fm.naive2(odd, 3, 3), odd[:3])


def test_seasonality_test_follows_the_m4_rules():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(500)
    assert not fm.seasonality_test(noise + 100, 24)
    hourly = 100 + 10 * np.sin(2 * np.pi * np.arange(500) / 24) + noise
    assert fm.seasonality_test(hourly, 24)
    assert not fm.seasonality_test(hourly[:71], 24)  # under 3 seasons
    # 3 seasons but R's acf computes floor(10 log10 n) lags: 200 points give 23 < 24 lags
    assert not fm.seasonality_test(hourly[:200], 24)
    assert not fm.seasonality_test(np.full(100, 5.0), 4)  # constant: no autocorrelation at all
    # with the test failing, Naive2 is naive
    assert fm.naive2(noise + 100, 5, 24).tolist() == [noise[-1] + 100] * 5


@pytest.mark.parametrize(
    "freq, m",
    [
        ("h", 24),
        ("2h", 12),
        ("5h", 1),
        ("D", 7),
        ("B", 5),
        ("W", 1),
        ("MS", 12),
        ("ME", 12),
        ("QS", 4),
        ("YS", 1),
        ("15min", 1),
        (None, 1),
    ],
)
def test_season_length_from_frequency(freq, m):
    assert fm.season_length(freq) == m


def test_season_length_rejects_a_non_frequency():
    with pytest.raises(ValueError, match="not a pandas frequency"):
        fm.season_length("fortnightly")


def test_scores_as_dict_for_mlflow():
    s = fm.Scores(1.0, 2.0, n_series=3, n_values=4)
    d = s.as_dict("test_")
    assert d["test_smape"] == 1.0 and d["test_n_values"] == 4.0 and set(d) >= {"test_owa", "test_wql"}


# --------------------------------------------------------------------------- the M4 anchors


@pytest.fixture
def m4_data(monkeypatch):
    env = os.environ.get("RNNOPS_DATA_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not (path / "m4" / "Hourly-train.csv").is_file() or not (path / "m4" / "Hourly-test.csv").is_file():
        reason = f"M4 Hourly not found under {path}/m4 (set RNNOPS_DATA_DIR to the folder holding m4/Hourly-*.csv)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the M4 anchors must be checked there)", pytrace=False)
        pytest.skip(reason)
    monkeypatch.setenv("RNNOPS_DATA_DIR", str(path))
    return path


def test_m4_hourly_baselines_reproduce_the_published_results(m4_data):
    from rnnops.training.m4 import M4_HOURLY_ANCHORS, load_m4_hourly

    panel = load_m4_hourly()
    insample, actual = panel.insample(), panel.test_values()
    assert len(insample) == 414 and actual.shape == (414, 48)
    scores = fm.baseline_scores(insample, actual, panel.season)
    # Published (sMAPE, MASE) to three decimals (these are the figures of M4_HOURLY_ANCHORS).
    assert (round(scores["naive2"].smape, 3), round(scores["naive2"].mase, 3)) == (18.383, 2.395)
    assert (round(scores["seasonal_naive"].smape, 3), round(scores["seasonal_naive"].mase, 3)) == (13.912, 1.193)
    assert (round(scores["naive"].smape, 3), round(scores["naive"].mase, 3)) == (43.003, 11.608)
    assert M4_HOURLY_ANCHORS["sNaive"][:2] == (13.912, 1.193) and M4_HOURLY_ANCHORS["Naive2"][:2] == (18.383, 2.395)
    # The published OWA is computed from the rounded sMAPE and MASE (0.62745 for sNaive, 3.59302
    # for Naive); from the unrounded ones it is 0.62750 and 3.59292: the same to 0.001.
    assert scores["seasonal_naive"].owa == pytest.approx(0.627, abs=1e-3)
    assert fm.owa(13.912, 1.193, 18.383, 2.395) == pytest.approx(0.62745362, abs=1e-8)
    assert scores["naive"].owa == pytest.approx(3.593, abs=1e-3)
    # Naive's 95 % random-walk interval: published MSIS 71.245 and ACD (|coverage - 0.95|) 0.011.
    assert round(scores["naive"].msis, 3) == 71.245
    assert round(abs(scores["naive"].coverage - 0.95), 3) == 0.011


def test_metrics_panels_and_calendar_import_without_torch():
    code = (
        "import sys\n"
        "import rnnops.calendar, rnnops.training.forecast_metrics, rnnops.training.m4, rnnops.training.panel\n"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr[-2000:]


def test_a_series_without_a_mase_scale_is_left_out_of_mase_not_nan():
    """One observation of history has no pair to scale by: MASE and MSIS leave that series out
    (sMAPE counts it), so a panel with very short series still has a MASE to early-stop on."""
    histories = [np.array([1.0, 2.0, 4.0, 7.0]), np.array([5.0])]
    actual = np.array([[8.0, 9.0], [5.0, 6.0]])
    forecast = np.array([[7.0, 7.0], [5.0, 5.0]])
    both = fm.evaluate(histories, actual, forecast, 1, lower=forecast - 1, upper=forecast + 1)
    alone = fm.evaluate(histories[:1], actual[:1], forecast[:1], 1, lower=forecast[:1] - 1, upper=forecast[:1] + 1)
    assert both.mase == pytest.approx(alone.mase) and np.isfinite(both.mase)
    assert both.msis == pytest.approx(alone.msis)
    assert both.smape != pytest.approx(alone.smape)  # the short series still counts in sMAPE
