"""The global panel forecaster (training/panel_model.py, training/panel_train.py) on a tiny
generated retail panel: it learns, missing targets are masked out of every head's loss, the
quantiles come out ordered, an unseen static category lands in the unknown bucket, and training
never reads the test split. Whether covariates help is the benchmark's question, not a test's."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnops.errors import RnnopsError
from rnnops.training.panel import PanelSpec, read_panel
from rnnops.training.panel_model import UNKNOWN, PanelForecaster, PanelModelConfig
from rnnops.training.panel_train import (
    PanelTrainConfig,
    PanelWindows,
    forecast,
    model_config,
    train_panel,
    training_origins,
    validation_mase,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import retail_panel  # noqa: E402

HEADS = (None, "normal", "studentt", "negbin")
TINY = PanelTrainConfig(
    lookback=14,
    segment_length=7,
    hidden_size=16,
    num_layers=1,
    context_size=4,
    decoder_hidden=8,
    dropout=0.0,
    batch_size=16,
    lr=1e-2,
    budget_s=0,
    max_steps=30,
    eval_every=15,
    patience=100,
    progress=False,
)


@pytest.fixture(scope="module")
def panel():
    df = retail_panel.generate(series=12, days=60, seed=5)
    spec = PanelSpec(
        "item_id",
        "date",
        "sales",
        horizon=7,
        lookback=14,
        static_columns="store,category",
        future_covariates="promo,price",
        freq="D",
    )
    return read_panel(df, spec)


def fresh_model(panel, config: PanelTrainConfig) -> PanelForecaster:
    """The model train_panel starts from (same seed, same config)."""
    torch.manual_seed(config.seed)
    return PanelForecaster(model_config(config, panel, PanelWindows(panel, config.lookback)))


def random_model(panel, config: PanelTrainConfig) -> PanelForecaster:
    """A model whose every weight is random (a fresh one's output layers start at zero, so its
    forecast would not depend on its inputs)."""
    model = fresh_model(panel, config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def fixed_batch(panel, config: PanelTrainConfig, n: int = 64):
    series, low, high = training_origins(panel, config.lookback)
    rng = np.random.default_rng(123)
    pick = rng.integers(0, len(series), n)
    return PanelWindows(panel, config.lookback).batch(series[pick], rng.integers(low[pick], high[pick] + 1))


def test_training_lowers_the_loss_and_trains_the_unknown_bucket(panel):
    batch = fixed_batch(panel, TINY)
    start = fresh_model(panel, TINY).eval()
    result = train_panel(TINY, panel)
    with torch.no_grad():
        before, after = float(start.loss(batch)), float(result.model.loss(batch))
    assert after < 0.9 * before, (before, after)
    assert result.steps == TINY.max_steps and len(result.history) == 2
    assert np.isfinite(result.best_val_mase) and result.best_step in (15, 30)
    # the unknown bucket (row 0) is trained by replacing a share of the codes while training
    for e0, e1 in zip(start.embeddings, result.model.embeddings):
        assert not torch.equal(e0.weight[UNKNOWN], e1.weight[UNKNOWN])


@pytest.mark.parametrize("head", ["pinball", "normal", "studentt", "negbin"])
def test_missing_targets_do_not_contribute_to_the_loss(head):
    config = PanelModelConfig(lookback=14, horizon=7, segment_length=7, season=7, head=head)
    model = PanelForecaster(config)
    raw = torch.randn(4, 7, model.head.n_outputs, requires_grad=True)
    loc, scale = torch.full((4, 1, 1), 1.0), torch.full((4, 1, 1), 3.0)
    y = torch.randint(0, 20, (4, 7)).float()
    y[0, :3] = float("nan")
    y[2, 5] = float("nan")
    loss = model.head.loss(raw, loc, scale, y)
    loss.backward()
    missing = torch.isnan(y)
    assert torch.isfinite(loss)
    assert torch.all(raw.grad[missing] == 0)
    assert torch.all(raw.grad[~missing].abs().sum(-1) > 0)
    # the missing values' stand-ins are irrelevant: any value there gives another loss, NaN none
    y_filled = torch.where(missing, torch.full_like(y, 1e4), y)
    assert not torch.isclose(model.head.loss(raw, loc, scale, y_filled), loss)
    all_missing = torch.full_like(y, float("nan"))
    assert model.head.loss(raw, loc, scale, all_missing).item() == 0.0


@pytest.mark.parametrize("likelihood", HEADS)
def test_quantiles_are_ordered_and_in_raw_units(panel, likelihood):
    config = replace(TINY, likelihood=likelihood)
    model = random_model(panel, config)
    windows = PanelWindows(panel, config.lookback)
    fc = forecast(model, windows, panel.splits().val_end)
    assert fc.quantiles.shape == (panel.n_series, 7, len(config.quantiles))
    assert np.all(np.isfinite(fc.quantiles))
    assert np.all(np.diff(fc.quantiles, axis=-1) >= 0)
    lo, hi = fc.interval()
    assert np.all(lo <= fc.point) and np.all(fc.point <= hi)
    _, histories, actual = panel.window(panel.splits().val_end)
    scores = fc.scores(histories, actual, panel.season)
    assert np.isfinite([scores.mase, scores.msis, scores.coverage, scores.wql]).all()
    if likelihood == "negbin":
        assert np.all(fc.quantiles >= 0) and np.all(fc.quantiles == np.round(fc.quantiles))


def test_an_unseen_static_category_maps_to_the_unknown_bucket(panel):
    model = random_model(panel, TINY)
    windows = PanelWindows(panel, TINY.lookback)
    store = next(s for s in panel.static if s.name == "store")
    code = int(store.encode(["store_that_opened_today"])[0])
    assert code == UNKNOWN
    batch = windows.batch(np.arange(3), panel.splits().val_end[:3])
    out = {}
    for name, value in (("unknown", code), ("out of range", 10_000), ("negative", -5)):
        batch.static_cat[:, 0] = value
        out[name] = model.quantiles(batch)
    torch.testing.assert_close(out["unknown"], out["out of range"])
    torch.testing.assert_close(out["unknown"], out["negative"])
    batch.static_cat[:, 0] = 1  # a known store gives another forecast
    assert not torch.allclose(model.quantiles(batch), out["unknown"])


def test_covariates_are_standardised_inside_so_their_units_do_not_matter(panel):
    k = panel.spec.future_covariates.index("price")
    future = panel.future.copy()
    future[:, k] = future[:, k] * 1000 + 50  # the same prices in other units
    other = replace(panel, future=future)
    cut = panel.splits().val_end
    a = forecast(random_model(panel, TINY), PanelWindows(panel, TINY.lookback), cut).quantiles
    b = forecast(random_model(other, TINY), PanelWindows(other, TINY.lookback), cut).quantiles
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_training_never_reads_the_test_split(panel):
    config = replace(TINY, max_steps=10, eval_every=5)
    a = train_panel(config, panel)
    spoiled = panel.target.copy()
    splits = panel.splits()
    for i in range(panel.n_series):  # the test values of every series, replaced by garbage
        spoiled[panel.offsets[i] + splits.val_end[i] : panel.offsets[i + 1]] = 1e6
    b = train_panel(config, replace(panel, target=spoiled))
    assert a.best_val_mase == b.best_val_mase
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k


def test_early_stopping_keeps_the_best_validation_state(panel):
    config = replace(TINY, max_steps=40, eval_every=2, patience=2)
    result = train_panel(config, panel)
    scores = [h["val_mase"] for h in result.history]
    best = int(np.argmin(scores))
    assert result.history[best]["step"] == result.best_step and scores[best] == result.best_val_mase
    # the model handed back is the best one, not the last one
    assert validation_mase(result.model, PanelWindows(panel, config.lookback), panel) == pytest.approx(
        result.best_val_mase
    )
    if result.stopped_early:
        assert len(scores) - 1 - best == config.patience and result.steps < config.max_steps
    else:
        assert result.steps == config.max_steps and len(scores) - 1 - best < config.patience


def test_bad_configs_are_one_line():
    with pytest.raises(RnnopsError, match="does not divide --lookback"):
        PanelModelConfig(lookback=30, segment_length=7)
    with pytest.raises(RnnopsError, match="include 0.5"):
        PanelModelConfig(lookback=14, segment_length=7, quantiles=(0.1, 0.9))
    with pytest.raises(RnnopsError, match="not one of"):
        PanelModelConfig(lookback=14, segment_length=7, head="poisson")
    with pytest.raises(RnnopsError, match="not available for panel models"):
        PanelForecaster(PanelModelConfig(lookback=14, horizon=7, segment_length=7, cell="mlstm"))
