"""Prediction intervals end to end: a tiny SegRNN trained with --quantiles (calibration and its
metrics in MLflow), exported through the gate, served by /forecast and sessions, written by the
batch job as forecast_p10/p50/p90 and drawn by --plot. One training run (seconds) for all of it."""

from __future__ import annotations

import asyncio
import warnings

import mlflow
import numpy as np
import pandas as pd
import pytest

LEVELS = [0.1, 0.5, 0.9]


@pytest.fixture
def trained(mlflow_env, small_csv):
    from rnnops.export.pipeline import export_run
    from rnnops.training.jobs import forecast_job, run_job

    job = forecast_job(
        str(small_csv),
        "gru",
        "tiny",
        {"lookback": 24, "horizon": 8, "model.segment_length": 6, "model.quantiles": "0.1,0.5,0.9", "train.steps": 30},
        arch="segrnn",
    )
    run_id = run_job(job)
    return run_id, export_run(run_id, formats=("onnx",), quantize=False, progress=False), small_csv


def test_intervals_flow_from_training_to_batch_jobs(trained, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from rnnops.serving import batch as B
    from rnnops.serving.config import ServeConfig
    from rnnops.serving.forecast.sessions import SessionStore
    from rnnops.serving.http.app import Serving, create_app
    from rnnops.serving.models import ModelManager
    from rnnops.serving.runtime import Runtime

    run_id, r, csv = trained
    # training: calibration recorded, coverage / width / pinball logged beside MSE/MAE
    run = mlflow.get_run(run_id)
    m = run.data.metrics
    for key in (
        "test_mse",
        "val_coverage_80",
        "test_coverage_80",
        "test_coverage_80_q4",
        "test_interval_width_80",
        "test_pinball",
    ):
        assert key in m, key
    assert 0.5 < m["val_coverage_80"] < 1.0
    cal = mlflow.artifacts.load_dict(f"runs:/{run_id}/intervals/calibration.json")
    assert cal["method"] == "split-conformal" and cal["levels"] == LEVELS
    # the data recipe logged with the run is what export rebuilt the playground's sample from
    recipe = mlflow.artifacts.load_dict(f"runs:/{run_id}/config/recipe.json")
    assert recipe["columns"]["features"] == ["a", "b", "OT"] and recipe["lookback"] == 24 and recipe["horizon"] == 8
    sample = mlflow.artifacts.load_dict(r.artifacts["sample.json"])
    assert sample["source"] == str(csv) and sample["features"] == ["a", "b", "OT"] and len(sample["rows"]) == 24 + 8

    # the runtime: quantiles from the same call; the median is the forecast; chunked calls give the same
    rt = Runtime(r.onnx_path)
    assert rt.info.quantiles == tuple(LEVELS) and rt.describe()["quantiles"] == LEVELS
    df = pd.read_csv(csv)
    feats = ["a", "b", "OT"]
    rows = df[feats].to_numpy(np.float32)
    windows = np.stack([rows[i : i + 24] for i in range(5)])
    r1 = rt.run(windows)
    y, q = r1.output, r1.quantiles
    np.testing.assert_array_equal(rt.run(windows, max_batch=2).quantiles, q)
    assert q.shape == (5, 8, 3, 3) and np.array_equal(q[..., 1], y) and (q[..., 0] <= q[..., 2]).all()
    q1 = rt.run(windows[2:3]).quantiles  # batch invariance: alone == among others
    np.testing.assert_array_equal(q1[0], q[2])

    # /forecast and sessions
    cfg = ServeConfig(models=f"fc={r.onnx_path}", poll_seconds=0)
    manager = ModelManager(cfg)
    asyncio.run(manager.start())
    try:
        with TestClient(create_app(Serving(cfg, manager, SessionStore()))) as c:
            one = c.post("/forecast", json={"context": rows[:30].tolist()}).json()
            assert set(one["quantiles"]) == {"0.1", "0.5", "0.9"}
            np.testing.assert_allclose(
                one["quantiles"]["0.9"], rt.run(rows[6:30][None]).quantiles[0, :, :, 2], rtol=1e-6
            )  # a windowed model reads the last 24 rows
            assert one["quantiles"]["0.5"] == one["forecast"]
            many = c.post("/forecast", json={"contexts": [rows[:24].tolist(), rows[1:25].tolist()]}).json()
            assert len(many["quantiles"]) == 2
            np.testing.assert_allclose(many["quantiles"][1]["0.1"], q[1, :, :, 0], rtol=1e-6)
            opened = c.post("/sessions", json={"context": rows[:10].tolist()}).json()
            assert opened["forecast"] is None and "quantiles" not in opened  # window not full yet
            upd = c.post(f"/sessions/{opened['session_id']}", json={"observations": rows[10:24].tolist()}).json()
            np.testing.assert_allclose(upd["quantiles"]["0.1"], q[0, :, :, 0], rtol=1e-6)
            got = c.get(f"/sessions/{opened['session_id']}").json()
            assert got["quantiles"] == upd["quantiles"]
    finally:
        asyncio.run(manager.stop())

    # the batch job: forecast_p10 / p50 / p90 beside forecast, and the band in the plots
    df.iloc[:60].to_csv(tmp_path / "in.csv", index=False)
    job = B.ForecastJob(
        model=str(r.onnx_path),
        input=tmp_path / "in.csv",
        output=tmp_path / "out.csv",
        progress=False,
        plot_dir=tmp_path / "plots",
    )
    summary = B.run(job)
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == [
        "date",
        "step",
        "target",
        "forecast",
        "forecast_p10",
        "forecast_p50",
        "forecast_p90",
        "model",
        "model_version",
    ]
    qb = rt.run(rows[36:60][None]).quantiles
    np.testing.assert_allclose(out["forecast_p90"].to_numpy(), qb[0, :, :, 2].reshape(-1), rtol=1e-6)
    np.testing.assert_array_equal(out["forecast_p50"].to_numpy(), out["forecast"].to_numpy())
    assert len(summary.plots) == 1 and summary.plots[0].stat().st_size > 0


def test_calibration_with_a_fixed_scaler_spans_several_chunks():
    """A fixed-scaler forecaster's scale is the training std: one per window, so that more windows
    than one prediction chunk (512) concatenate (this failed with a size mismatch)."""
    import numpy as np
    import torch

    from rnnops.training import intervals as I
    from rnnops.training.models import Forecaster, ForecasterConfig

    cfg = ForecasterConfig(
        n_features=3,
        target_indices=[0, 1, 2],
        lookback=12,
        horizon=4,
        cell="gru",
        hidden_size=8,
        norm="fixed",
        scaler_mean=[0.0] * 3,
        scaler_std=[1.0] * 3,
        feature_names=["a", "b", "c"],
        target_names=["a", "b", "c"],
        quantiles=[0.1, 0.5, 0.9],
    )
    torch.manual_seed(0)
    model = Forecaster(cfg)
    data = torch.randn(3000, 3)

    def windows(idx):
        i = idx.tolist()
        return torch.stack([data[k : k + 12] for k in i]), torch.stack([data[k + 12 : k + 16] for k in i])

    assert I.calibrate(model, windows, np.arange(0, 1100))["windows"] == 1100
    cover = I.scores(model, windows, np.arange(1100, 2000), torch.ones(1, 1, 3), "test")["test_coverage_80"]
    assert 0.7 < cover < 0.9  # noise in, noise out: the calibrated 80 % band holds on fresh windows
