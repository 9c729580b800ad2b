"""Forecast accuracy as the M4 competition defines it, the GluonTS weighted quantile loss, and the
baselines the M4 scores are relative to (naive, seasonal naive, Naive2).

Definitions follow the M4 organisers' ``Benchmarks and Evaluation.R`` (github
Mcompetitions/M4-methods) and the M4 paper (Makridakis et al., IJF 2020):

- sMAPE = mean of 200 |y - f| / (|y| + |f|)                       (so x100, in percent)
- MASE  = mean |y - f| / s, where s = mean |x_t - x_{t-m}| over the series' own in-sample part
- OWA   = (sMAPE / sMAPE_Naive2 + MASE / MASE_Naive2) / 2, from the means over all series
- MSIS  = mean of [(U - L) + 2/a (L - y) 1{y < L} + 2/a (y - U) 1{y > U}] / s, a = 0.05
- coverage = share of actual values inside [L, U]
- WQL (GluonTS ``mean_wQuantileLoss``) = mean over quantiles q of
  sum 2 |(y - f_q)(1{y <= f_q} - q)| / sum |y|, both sums over every series and step

The seasonal period m comes from the frequency (:func:`season_length`). Every mean runs over the
finite actual values only: a missing target (NaN) is left out of the score, not imputed. The M4
data has neither missing values nor zeros, so the two choices that the R code leaves undefined
(0/0 in sMAPE, here 0; a history too short for one seasonal difference, here the lag-1 scale)
never touch the published figures.

numpy and pandas only (no torch): benchmarks and serving-side tools import this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from rnnops.calendar import offset_of

MSIS_ALPHA = 0.05  # the M4 intervals: 95 %
GLUONTS_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # GluonTS' Evaluator default


# --------------------------------------------------------------------------- seasonal period


def season_length(freq: str | None) -> int:
    """The seasonal period m of a pandas frequency: 24 hourly, 7 daily, 5 business-daily,
    12 monthly, 4 quarterly, 1 otherwise (weekly, yearly, sub-hourly, none).

    These are the M4 periods for hourly, monthly and quarterly data; daily data gets the weekly
    cycle (7), which is what daily retail and traffic panels have (M4 itself used 1 for its daily
    series, whose benchmarks are not compared here). A multiple such as ``2h`` divides the day
    (12); one that does not divide it has no season (1)."""
    if not freq:
        return 1
    import pandas as pd

    offset = offset_of(freq)
    n = max(1, int(getattr(offset, "n", 1)))
    per_cycle = {
        pd.offsets.Hour: 24,
        pd.offsets.Day: 7,
        pd.offsets.BusinessDay: 5,
        pd.offsets.MonthBegin: 12,
        pd.offsets.MonthEnd: 12,
        pd.offsets.QuarterBegin: 4,
        pd.offsets.QuarterEnd: 4,
    }
    for kind, steps in per_cycle.items():
        if isinstance(offset, kind):
            return steps // n if steps % n == 0 and steps // n > 1 else 1
    return 1


# --------------------------------------------------------------------------- scores per element


def smape_terms(actual: np.ndarray, forecast: np.ndarray) -> np.ndarray:
    """200 |y - f| / (|y| + |f|) elementwise (0 where both are 0; NaN where y is missing)."""
    y, f = np.asarray(actual, np.float64), np.asarray(forecast, np.float64)
    denom = np.abs(y) + np.abs(f)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 200.0 * np.abs(y - f) / denom
    return np.where(denom == 0, 0.0, out) if np.any(denom == 0) else out


def mase_scale(insample: np.ndarray, m: int) -> float:
    """mean |x_t - x_{t-m}| over the in-sample part (pairs with a missing value left out), the
    denominator of MASE and MSIS. A history with no complete seasonal pair uses m = 1; one with
    no pair at all gives NaN. A constant history gives 0 (its scaled errors are infinite)."""
    x = np.asarray(insample, np.float64)
    for lag in (m, 1) if m > 1 else (1,):
        if len(x) > lag:
            d = np.abs(x[lag:] - x[:-lag])
            d = d[np.isfinite(d)]
            if len(d):
                return float(d.mean())
    return math.nan


def quantile_loss_terms(actual: np.ndarray, forecast_q: np.ndarray, q: float) -> np.ndarray:
    """GluonTS' quantile loss per element: 2 |(y - f_q)(1{y <= f_q} - q)|."""
    y, f = np.asarray(actual, np.float64), np.asarray(forecast_q, np.float64)
    return 2.0 * np.abs((f - y) * ((y <= f).astype(np.float64) - q))


def interval_score_terms(
    actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, alpha: float = MSIS_ALPHA
) -> np.ndarray:
    """The M4 interval score per element (not yet scaled): width plus 2/alpha times the miss."""
    y = np.asarray(actual, np.float64)
    lo, hi = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    return (hi - lo) + (2.0 / alpha) * (lo - y) * (y < lo) + (2.0 / alpha) * (y - hi) * (y > hi)


# --------------------------------------------------------------------------- scores over a panel


@dataclass(frozen=True)
class Scores:
    """A method's scores over a panel. ``owa`` needs the same run's Naive2 scores; the interval
    scores need lower/upper bounds and ``wql`` needs quantile forecasts (else NaN)."""

    smape: float
    mase: float
    owa: float = math.nan
    msis: float = math.nan
    coverage: float = math.nan
    wql: float = math.nan
    n_series: int = 0
    n_values: int = 0  # actual values scored (missing ones left out)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Plain floats for MLflow / JSON (``prefix`` e.g. ``"test_"``)."""
        return {f"{prefix}{k}": float(v) for k, v in asdict(self).items()}


def _panel(actual, forecast) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(actual, np.float64)
    f = np.asarray(forecast, np.float64)
    if y.ndim == 1:
        y, f = y[None], f.reshape(1, -1) if f.ndim == 1 else f
    if y.shape != f.shape or y.ndim != 2:
        raise ValueError(f"actual {list(y.shape)} and forecast {list(f.shape)} must both be [series, horizon]")
    return y, f


def scales(insample: Sequence[np.ndarray], m: int) -> np.ndarray:
    """:func:`mase_scale` of every series."""
    return np.array([mase_scale(x, m) for x in insample], np.float64)


def owa(smape: float, mase: float, smape_naive2: float, mase_naive2: float) -> float:
    """The M4 overall weighted average: 1 is Naive2, lower is better."""
    return 0.5 * (smape / smape_naive2 + mase / mase_naive2)


def evaluate(
    insample: Sequence[np.ndarray],
    actual,
    forecast,
    m: int,
    *,
    lower=None,
    upper=None,
    alpha: float = MSIS_ALPHA,
    quantile_forecasts=None,
    quantiles: Sequence[float] = GLUONTS_QUANTILES,
    naive2: Scores | None = None,
) -> Scores:
    """Scores of a point forecast ``forecast`` [series, horizon] against ``actual`` (same shape),
    each series scaled by its own ``insample`` history (a list: series differ in length).

    Means run over every (series, step) with a finite actual value, as the M4 R code's
    ``mean(Total_smape[i,,])``; for equal horizons without gaps that is the mean of per-series means.
    ``lower``/``upper`` (same shape): the (1 - alpha) interval -> MSIS and coverage.
    ``quantile_forecasts`` [series, horizon, len(quantiles)] -> WQL.
    ``naive2``: the same panel's Naive2 scores -> OWA. Several targets: score each on its own, or
    stack them as more series (each with its own history)."""
    y, f = _panel(actual, forecast)
    if len(insample) != y.shape[0]:
        raise ValueError(f"{len(insample)} in-sample histories for {y.shape[0]} series")
    ok = np.isfinite(y)
    s = scales(insample, m)[:, None]
    # A series whose history has no pair of values has no MASE scale (NaN): it is left out of MASE
    # and MSIS (sMAPE still counts it), so one short series does not turn the panel's MASE, and
    # early stopping on it, into NaN.
    scaled = ok & np.isfinite(s)
    with np.errstate(divide="ignore", invalid="ignore"):
        mase_terms = np.abs(y - f) / s
    smape_v = float(np.mean(smape_terms(y, f)[ok])) if ok.any() else math.nan
    mase_v = float(np.mean(mase_terms[scaled])) if scaled.any() else math.nan
    msis_v = cov_v = wql_v = math.nan
    if lower is not None and upper is not None:
        lo, hi = _panel(actual, lower)[1], _panel(actual, upper)[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            msis_v = float(np.mean((interval_score_terms(y, lo, hi, alpha) / s)[scaled])) if scaled.any() else math.nan
        cov_v = float(np.mean(((y >= lo) & (y <= hi))[ok]))
    if quantile_forecasts is not None:
        wql_v = wql(y, quantile_forecasts, quantiles)
    owa_v = owa(smape_v, mase_v, naive2.smape, naive2.mase) if naive2 is not None else math.nan
    return Scores(smape_v, mase_v, owa_v, msis_v, cov_v, wql_v, y.shape[0], int(ok.sum()))


def merge_scores(parts: Sequence[tuple[Scores, float]], naive2: Scores | None = None) -> Scores:
    """The scores of a panel scored in parts (blocks of series read one at a time, as the streaming
    reader does): ``parts`` holds each part's :class:`Scores` and the sum of its scored ``|actual|``
    values (WQL's denominator). sMAPE, MASE, MSIS and coverage are means over every scored value, so
    the parts' means weighted by ``n_values``; WQL is a ratio of sums, so weighted by ``|actual|``;
    OWA from the merged means and the merged Naive2 (``naive2``). Equal to :func:`evaluate` over the
    whole panel, up to rounding."""
    parts = [(s, a) for s, a in parts if s.n_values]
    n = np.array([s.n_values for s, _ in parts], np.float64)
    weight = np.array([a for _, a in parts], np.float64)

    def mean(key: str, w: np.ndarray) -> float:
        values = np.array([getattr(s, key) for s, _ in parts], np.float64)
        if not len(values) or np.isnan(values).any() or w.sum() <= 0:
            return math.nan
        return float(np.sum(values * w) / w.sum())

    smape_v, mase_v = mean("smape", n), mean("mase", n)
    owa_v = owa(smape_v, mase_v, naive2.smape, naive2.mase) if naive2 is not None else math.nan
    return Scores(
        smape_v,
        mase_v,
        owa_v,
        mean("msis", n),
        mean("coverage", n),
        mean("wql", weight),
        sum(s.n_series for s, _ in parts),
        int(n.sum()),
    )


def wql(actual, quantile_forecasts, quantiles: Sequence[float] = GLUONTS_QUANTILES) -> float:
    """GluonTS' ``mean_wQuantileLoss``: per quantile, the quantile loss summed over all series and
    steps over the summed |actual|; then the mean over quantiles. ``quantile_forecasts``:
    [series, horizon, len(quantiles)]; missing actual values are left out of both sums."""
    y = np.asarray(actual, np.float64)
    y = y[None] if y.ndim == 1 else y
    qf = np.asarray(quantile_forecasts, np.float64)
    qf = qf[None] if qf.ndim == 2 else qf
    if qf.shape != (*y.shape, len(quantiles)):
        raise ValueError(
            f"quantile forecasts {list(qf.shape)} must be [series, horizon, {len(quantiles)}] "
            f"for actual values {list(y.shape)} and quantiles {list(quantiles)}"
        )
    ok = np.isfinite(y)
    denom = float(np.abs(y[ok]).sum())
    losses = [float(quantile_loss_terms(y[ok], qf[..., i][ok], q).sum()) for i, q in enumerate(quantiles)]
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(np.array(losses) / denom))


# --------------------------------------------------------------------------- baselines


def _finite_tail(x: np.ndarray) -> np.ndarray:
    """The history up to its last finite value (a missing tail says nothing about the next step)."""
    idx = np.flatnonzero(np.isfinite(x))
    if not len(idx):
        raise ValueError("a series with no finite value has no baseline forecast")
    return x[: idx[-1] + 1]


def naive(insample: np.ndarray, horizon: int) -> np.ndarray:
    """The last observed value, repeated (M4's Naive 1)."""
    x = _finite_tail(np.asarray(insample, np.float64))
    return np.full(horizon, x[-1])


def seasonal_naive(insample: np.ndarray, horizon: int, m: int) -> np.ndarray:
    """The last season repeated (M4's sNaive: ``head(rep(tail(x, m), h), h)``); naive when m = 1
    or the history is shorter than one season. A missing value in the last season is taken from
    the latest earlier season that has it, else the last observed value."""
    x = _finite_tail(np.asarray(insample, np.float64))
    if m <= 1 or len(x) < m:
        return naive(x, horizon)
    last = x[-m:].copy()
    for j in np.flatnonzero(~np.isfinite(last)):
        earlier = x[len(x) - m + j :: -m]
        earlier = earlier[np.isfinite(earlier)]
        last[j] = earlier[0] if len(earlier) else x[-1]
    return np.resize(last, horizon)


def naive_interval(insample: np.ndarray, horizon: int, alpha: float = MSIS_ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """The (1 - alpha) prediction interval of M4's Naive (R's ``forecast::naive``, a random walk):
    last value +- z * sigma * sqrt(h), sigma the root mean square of the one-step changes. With it
    M4 Hourly's published Naive MSIS (71.245) and coverage (ACD 0.011) are reproduced."""
    x = _finite_tail(np.asarray(insample, np.float64))
    steps = np.diff(x)
    steps = steps[np.isfinite(steps)]
    sigma = float(np.sqrt(np.mean(steps**2))) if len(steps) else math.nan
    z = NormalDist().inv_cdf(1 - alpha / 2)
    half = z * sigma * np.sqrt(np.arange(1, horizon + 1))
    return x[-1] - half, x[-1] + half


def _acf(x: np.ndarray, nlags: int) -> np.ndarray:
    """R's ``acf(x)$acf[-1]``: lags 1..nlags, biased (divided by n), around the mean."""
    d = x - x.mean()
    denom = float(d @ d)
    if denom == 0:  # a constant series: R's acf gives NaN
        return np.full(nlags, np.nan)
    return np.array([float(d[: len(d) - k] @ d[k:]) / denom for k in range(1, nlags + 1)])


def seasonality_test(x: np.ndarray, m: int) -> bool:
    """The M4 90 % seasonality test (``SeasonalityTest``): the lag-m autocorrelation is outside
    1.645 / sqrt(n) * sqrt(1 + 2 sum_{k<m} r_k^2). Needs 3 seasons; R's ``acf`` computes
    floor(10 log10 n) lags, so a longer m (hourly under 252 points) is never seasonal there."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if m <= 1 or n < 3 * m:
        return False
    nlags = min(int(math.floor(10 * math.log10(n))), n - 1)
    if m > nlags:
        return False
    r = _acf(x, nlags)
    if not np.all(np.isfinite(r)):  # a constant series
        return False
    clim = 1.645 / math.sqrt(n) * np.sqrt(np.cumsum(np.concatenate([[1.0], 2.0 * r**2])))
    return bool(abs(r[m - 1]) > clim[m - 1])


def multiplicative_seasonal(x: np.ndarray, m: int) -> np.ndarray:
    """R's ``decompose(x, type="multiplicative")$seasonal``: the centred moving average of order m
    (2 x m for even m) as trend, x / trend averaged per position in the cycle (counted from the
    series' first value), normalised to mean 1, repeated over the series."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if m % 2 == 0:
        weights = np.concatenate([[0.5], np.ones(m - 1), [0.5]]) / m
    else:
        weights = np.ones(m) / m
    half = len(weights) // 2
    trend = np.full(n, np.nan)
    trend[half : n - half] = np.convolve(x, weights, mode="valid")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = x / trend
    figure = np.array([np.nanmean(ratio[i::m]) for i in range(m)])
    figure = figure / figure.mean()
    return np.resize(figure, n)


def naive2(insample: np.ndarray, horizon: int, m: int) -> np.ndarray:
    """M4's Naive2: naive on the seasonally adjusted series, times the seasonal index, where the
    seasonality test passes (classical multiplicative decomposition); plain naive otherwise.
    Needs a complete history: missing values are linearly interpolated first (M4 has none)."""
    x = _finite_tail(np.asarray(insample, np.float64))
    if not np.all(np.isfinite(x)):
        idx = np.arange(len(x))
        good = np.isfinite(x)
        x = np.interp(idx, idx[good], x[good])
    if m > 1 and seasonality_test(x, m):
        seasonal = multiplicative_seasonal(x, m)
        season_out = np.resize(seasonal[len(x) - m :], horizon)
        return (x[-1] / seasonal[-1]) * season_out
    return np.full(horizon, x[-1])


BASELINES = ("naive", "seasonal_naive", "naive2")


def baseline_forecasts(insample: Sequence[np.ndarray], horizon: int, m: int) -> dict[str, np.ndarray]:
    """Each baseline's forecast of every series: ``{name: [series, horizon]}``."""
    return {
        "naive": np.stack([naive(x, horizon) for x in insample]),
        "seasonal_naive": np.stack([seasonal_naive(x, horizon, m) for x in insample]),
        "naive2": np.stack([naive2(x, horizon, m) for x in insample]),
    }


def baseline_scores(insample: Sequence[np.ndarray], actual, m: int, alpha: float = MSIS_ALPHA) -> dict[str, Scores]:
    """The baselines scored on the same panel, OWA against this panel's Naive2 (Naive2's is 1);
    naive also gets its random-walk interval's MSIS and coverage (:func:`naive_interval`)."""
    y = np.asarray(actual, np.float64)
    y = y[None] if y.ndim == 1 else y
    forecasts = baseline_forecasts(insample, y.shape[-1], m)
    ref = evaluate(insample, y, forecasts["naive2"], m)
    bounds = [naive_interval(x, y.shape[-1], alpha) for x in insample]
    lower, upper = np.stack([b[0] for b in bounds]), np.stack([b[1] for b in bounds])
    out = {name: evaluate(insample, y, f, m, naive2=ref) for name, f in forecasts.items()}
    out["naive"] = evaluate(insample, y, forecasts["naive"], m, lower=lower, upper=upper, alpha=alpha, naive2=ref)
    return out
