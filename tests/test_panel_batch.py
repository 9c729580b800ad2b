"""Batch jobs over panels (issue 26, section 4): ``rnnops forecast`` with a panel model, PANEL and
FUTURE files, quantile columns, per-series error rows, ``--strict``; the numbers are the exported
model's eager PyTorch graph on training's windows (as /forecast's are, tests/test_panel_serving.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from panel_fixtures import HORIZON, LOOKBACK, export_tiny_panel, tiny_panel, tiny_panel_model  # noqa: E402
from panel_graph import write_panel_files  # noqa: E402

from rnnops.errors import RnnopsError  # noqa: E402
from rnnops.serving import batch as B  # noqa: E402

pd = pytest.importorskip("pandas")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny model, and its panel cut at each series' test origin: PANEL holds the history,
    FUTURE the promotions of the horizon after it, except series 2's (absent) and series 3's
    (one step short)."""
    root = tmp_path_factory.mktemp("panel-batch")
    model = export_tiny_panel(root / "tiny.onnx")
    panel = tiny_panel()
    write_panel_files(panel, root, drop_future=(2,), short_future=(3,))
    return root, model, panel


def job(root: Path, model: Path, out: str, **kw) -> B.ForecastJob:
    kw.setdefault("future", root / "future.parquet")
    return B.ForecastJob(
        model=str(model),
        input=root / "panel.csv",
        output=root / out,
        id_column="item_id",
        date_column="date",
        progress=False,
        **kw,
    )


def test_panel_job_forecasts_each_series_as_the_model_computes_it(files):
    import torch

    from rnnops.export.panel_export import PanelGraph, eager
    from rnnops.training.panel_train import PanelWindows

    root, model_path, panel = files
    summary = B.run(job(root, model_path, "out.parquet"))
    assert (summary.series, summary.forecasted, summary.failed) == (12, 10, 2)
    out = pq.read_table(root / "out.parquet").to_pandas()
    contract = B.load_model(str(model_path)).info.panel
    bands = [f"forecast_p{q * 100:g}" for q in contract.quantiles]
    assert "forecast_p10" in bands and "forecast_p90" in bands
    assert list(out.columns) == ["item_id", "date", "step", "target", "forecast", *bands, "model", "model_version"]
    assert len(out) == 10 * HORIZON and set(out["target"]) == {"sales"}

    model, _ = tiny_panel_model()
    ok = [i for i in range(12) if i not in (2, 3)]
    cutoffs = panel.lengths[ok] - HORIZON
    batch = PanelWindows(panel, LOOKBACK).batch(np.array(ok), cutoffs)
    feeds = {n: getattr(batch, n).numpy() for n in contract.inputs}
    with torch.no_grad():
        want_f, want_q = eager(PanelGraph(model, contract), feeds)
    for k, i in enumerate(ok):
        rows = out[out["item_id"] == panel.ids[i]].sort_values("step")
        np.testing.assert_allclose(rows["forecast"], want_f[k], rtol=1e-4, atol=1e-3)
        for j, col in enumerate(bands):
            np.testing.assert_allclose(rows[col], want_q[k, :, j], rtol=1e-4, atol=1e-3)
        want_dates = panel.timestamps[panel.rows(i)][cutoffs[k] : cutoffs[k] + HORIZON]
        np.testing.assert_array_equal(rows["date"].to_numpy().astype("datetime64[ns]"), want_dates)

    report = pd.read_csv(root / "out.errors.csv")
    assert list(report["item_id"]) == [panel.ids[2], panel.ids[3]]
    assert report["error"][0].startswith("--future has no rows for this series: its future covariates (promo)")
    assert report["error"][1] == (
        f"future covariate 'promo' has {LOOKBACK + HORIZON - 1} values; it needs {LOOKBACK + HORIZON} values: one "
        f"per context step ({LOOKBACK}) and per forecast step ({HORIZON})"
    )


def test_strict_and_file_errors(files):
    root, model_path, _ = files
    with pytest.raises(RnnopsError, match=r"--strict: 2 series cannot be forecast: .*nothing was written"):
        B.run(job(root, model_path, "strict.csv", strict=True))
    assert not (root / "strict.csv").exists()
    with pytest.raises(RnnopsError, match=r"reads future covariates \(promo\): give --future FILE with item_id, date"):
        B.run(job(root, model_path, "x.csv", future=None))
    pd.read_csv(root / "panel.csv").drop(columns=["price"]).to_csv(root / "noprice.csv", index=False)
    with pytest.raises(RnnopsError, match=r"lacks columns the panel model .* reads: price"):
        B.run(B.ForecastJob(**{**job(root, model_path, "x.csv").__dict__, "input": root / "noprice.csv"}))


def test_horizon_flag_cuts_the_panel_forecast(files):
    root, model_path, _ = files
    B.run(job(root, model_path, "short.csv", horizon=3))
    full = pd.read_csv(root / "out.errors.csv")  # written by the first test's job: same series fail
    short = pd.read_csv(root / "short.csv")
    assert sorted(set(short["step"])) == [1, 2, 3] and len(short) == 10 * 3
    assert len(pd.read_csv(root / "short.errors.csv")) == len(full)


@pytest.mark.slow
def test_spark_engine_matches_local(files):
    from test_batch import spark_available

    reason = spark_available()
    if reason:
        import os

        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the Spark test must run there)", pytrace=False)
        pytest.skip(reason)
    root, model_path, _ = files
    local = B.run(job(root, model_path, "local.parquet", batch_windows=4))
    spark = B.run(job(root, model_path, "spark.parquet"), engine="spark")
    assert (spark.series, spark.forecasted, spark.failed, spark.output_rows, spark.rows_read) == (
        local.series,
        local.forecasted,
        local.failed,
        local.output_rows,
        local.rows_read,
    )
    a, b = pq.read_table(root / "local.parquet"), pq.read_table(root / "spark.parquet")
    assert a.schema == b.schema and a.equals(b)
    assert (root / "local.errors.csv").read_text() == (root / "spark.errors.csv").read_text()
