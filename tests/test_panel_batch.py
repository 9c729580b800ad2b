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
def test_spark_engine_matches_local(files, monkeypatch):
    """Spark forecasts on its workers in groups of calls: two calls of 4 series a group here, so
    the 10 series that can be forecast make two groups, the second one short."""
    from test_batch import spark_available

    from rnnops.serving.batch import panel as P

    reason = spark_available()
    if reason:
        import os

        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the Spark test must run there)", pytrace=False)
        pytest.skip(reason)
    root, model_path, _ = files
    monkeypatch.setattr(P, "CALLS_PER_GROUP", 2)
    local = B.run(job(root, model_path, "local.parquet", batch_windows=4))
    spark = B.run(job(root, model_path, "spark.parquet", batch_windows=4), engine="spark")
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
    # FUTURE without rows: every group of the first stage has no series to forecast
    pd.read_parquet(root / "future.parquet").iloc[:0].to_parquet(root / "no-future.parquet", index=False)
    none = {"future": root / "no-future.parquet"}
    local = B.run(job(root, model_path, "none-local.parquet", **none))
    spark = B.run(job(root, model_path, "none-spark.parquet", **none), engine="spark")
    assert (spark.forecasted, spark.failed) == (local.forecasted, local.failed) == (0, 12)
    assert (root / "none-local.parquet").read_bytes() == (root / "none-spark.parquet").read_bytes()
    assert (root / "none-local.errors.csv").read_text() == (root / "none-spark.errors.csv").read_text()


def whole_file_job(j: B.ForecastJob):
    """The job as the panel read whole (the path a panel whose series interleave takes)."""
    import time

    from rnnops.serving.batch import panel as P
    from rnnops.serving.batch.job import plan
    from rnnops.serving.batch.local import make_runtime

    model = B.load_model(j.model)
    layout = plan(j, model)
    prep = P.prepare(j, model, layout.id_column, layout.date_column)
    return P.write(j, model, layout, prep, make_runtime(model, threads=1), "local", time.perf_counter())


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_streamed_job_writes_what_the_whole_file_path_writes(files, monkeypatch, capsys, suffix):
    """Record batches of 5 rows (CSV: 400 bytes): series span batches, FUTURE runs ahead of the panel."""
    from rnnops.serving.batch import panel_stream

    root, model_path, _ = files
    monkeypatch.setattr(panel_stream, "CHUNK_ROWS", 5)
    monkeypatch.setattr(panel_stream, "CSV_BLOCK_BYTES", 400)
    panel = pd.read_csv(root / "panel.csv")
    panel.to_parquet(root / "panel.parquet", index=False)
    kw = {"input": root / f"panel.{suffix}", "batch_windows": 3}
    streamed = B.run(B.ForecastJob(**{**job(root, model_path, f"streamed.{suffix}").__dict__, **kw}))
    assert "reading the panel whole" not in capsys.readouterr().err
    whole = whole_file_job(B.ForecastJob(**{**job(root, model_path, f"whole.{suffix}").__dict__, **kw}))
    assert (streamed.series, streamed.forecasted, streamed.failed, streamed.rows_read, streamed.output_rows) == (
        whole.series,
        whole.forecasted,
        whole.failed,
        whole.rows_read,
        whole.output_rows,
    )
    assert (root / f"streamed.{suffix}").read_bytes() == (root / f"whole.{suffix}").read_bytes()
    assert (root / "streamed.errors.csv").read_text() == (root / "whole.errors.csv").read_text()


def test_interleaved_panel_is_read_whole_with_a_warning(files, monkeypatch, capsys):
    """Rows shuffled (series interleave): the job says how to stream it and writes the same rows."""
    from rnnops.serving.batch import panel_stream

    root, model_path, _ = files
    monkeypatch.setattr(panel_stream, "CSV_BLOCK_BYTES", 400)
    panel = pd.read_csv(root / "panel.csv")
    panel.sample(frac=1.0, random_state=0).to_csv(root / "shuffled.csv", index=False)
    panel.sort_values(["item_id", "date"], ascending=[False, False]).to_csv(root / "desc.csv", index=False)
    shuffled = B.run(
        B.ForecastJob(**{**job(root, model_path, "shuffled-out.csv").__dict__, "input": root / "shuffled.csv"})
    )
    assert "Sort PANEL and FUTURE by item_id (then date) to stream it" in capsys.readouterr().err
    # grouped by id in another order, dates backwards: streamed, no warning
    desc = B.run(B.ForecastJob(**{**job(root, model_path, "desc-out.csv").__dict__, "input": root / "desc.csv"}))
    assert "reading the panel whole" not in capsys.readouterr().err
    assert (shuffled.forecasted, shuffled.failed) == (desc.forecasted, desc.failed) == (10, 2)
    a = pd.read_csv(root / "shuffled-out.csv").sort_values(["item_id", "step"]).reset_index(drop=True)
    b = pd.read_csv(root / "desc-out.csv").sort_values(["item_id", "step"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, rtol=1e-5)


def test_regular_series_take_the_vectorised_path_with_the_same_features(files, monkeypatch):
    """The vectorised features (:func:`panel.regular_features`) equal the per-series path's, and
    series with problems (an infinite price, a missing static, an off-frequency date, a short
    history) fall to the per-series path and give its errors."""
    from rnnops.serving.batch import panel as P

    root, model_path, _ = files
    df = pd.read_csv(root / "panel.csv")
    ids = list(dict.fromkeys(df["item_id"]))
    last = df.groupby("item_id").tail(1).index
    df.loc[df.index[df["item_id"] == ids[4]][-1], "price"] = float("inf")
    df.loc[df["item_id"] == ids[5], "size"] = float("nan")
    df.loc[last[df.loc[last, "item_id"] == ids[6]], "date"] = "2031-01-01"
    df = df[(df["item_id"] != ids[7]) | (df.groupby("item_id").cumcount(ascending=False) < 5)]
    df.to_csv(root / "odd.csv", index=False)
    model = B.load_model(str(model_path))
    j = B.ForecastJob(**{**job(root, model_path, "odd-out.csv").__dict__, "input": root / "odd.csv"})
    fast = P.prepare(j, model, "item_id", "date")
    fast_ks, _ = P.regular_features(*_grouped(P, j, model))
    assert len(fast_ks) == 6  # 12 less 2 and 3 (FUTURE), 4, 5, 6, 7
    c = model.info.panel
    monkeypatch.setattr(P, "regular_features", lambda *a: (np.zeros(0, np.int64), P.Features.empty(c)))
    slow = P.prepare(j, model, "item_id", "date")
    assert fast.ids == slow.ids and len(fast.ids) == 7  # 7, short, forecast by the per-series path
    assert [(e.series_id, e.message) for e in fast.errors] == [(e.series_id, e.message) for e in slow.errors]
    assert len(fast.errors) == 5
    a, b = fast.features, slow.features
    np.testing.assert_array_equal(a.future, b.future)
    assert list(a.inputs) == list(b.inputs) == list(c.inputs)
    for name in a.inputs:
        assert a.inputs[name].dtype == b.inputs[name].dtype
        np.testing.assert_array_equal(a.inputs[name], b.inputs[name])


def _grouped(P, j, model):
    """``regular_features``' arguments for job ``j``'s files."""
    c = model.info.panel
    numeric, text = P.columns(c)
    panel = P.group(P.read_file(j.input, "item_id", "date", numeric, text), "item_id", "date", numeric, text, None)
    ft = P.read_file(j.future, "item_id", "date", c.future_covariates, ())
    future = P.group(ft, "item_id", "date", c.future_covariates, (), None)
    return panel, future, {k: i for i, k in enumerate(future.keys)}, c


def test_a_late_series_with_fractions_of_a_second_widens_the_dates_as_the_whole_file_path(files, monkeypatch):
    """The output's date type is fixed by the first call; a later series dated at half seconds
    makes the streamed job start again with nanoseconds: the same bytes as the panel read whole."""
    from rnnops.serving.batch import panel_stream

    root, model_path, _ = files
    monkeypatch.setattr(panel_stream, "CHUNK_ROWS", 5)
    last = pd.read_csv(root / "panel.csv")["item_id"].iloc[-1]
    for name in ("panel.csv", "future.parquet"):
        df = pd.read_csv(root / name) if name.endswith(".csv") else pd.read_parquet(root / name)
        df["date"] = pd.to_datetime(df["date"]) + pd.to_timedelta(np.where(df["item_id"] == last, 0.5, 0.0), unit="s")
        df.to_parquet(root / f"half-{name.split('.')[0]}.parquet", index=False)
    kw = {"input": root / "half-panel.parquet", "future": root / "half-future.parquet", "batch_windows": 3}
    B.run(B.ForecastJob(**{**job(root, model_path, "half-streamed.csv").__dict__, **kw}))
    whole_file_job(B.ForecastJob(**{**job(root, model_path, "half-whole.csv").__dict__, **kw}))
    text = (root / "half-streamed.csv").read_text()
    assert ".500000000" in text and text == (root / "half-whole.csv").read_text()
