"""`rnnops train forecast` on a panel, end to end through the root CLI (in process, real MLflow):
a tiny generated retail panel (benchmarks/retail_panel.py) as CSV and as Parquet, the tiny
preset. The run holds the job as params and config/job.json, the recipe with the panel's roles,
the M4 scores per split and per backtest window beside the baselines, the short series, the plot
and a model that loads back; bad inputs are one line (exit 2) before any run starts; the
single-series path builds the same jobs as before."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from rnnops.training import jobs
from rnnops.training.job_config import job_from_dict, to_dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import retail_panel  # noqa: E402

# 12 items x 60 days; one has 30 days only (shorter than lookback 28 + horizon 7)
PANEL_ARGS = dict(series=12, days=60, seed=5)
COLUMNS = ["--id-column", "item_id", "--date-column", "date", "--target", "sales"]
COVARIATES = ["--static-columns", "store,category", "--future-covariates", "promo,price", "--freq", "D"]
WINDOWS = ["--horizon", "7", "--lookback", "28", "--preset", "tiny"]
M4_METRICS = ("smape", "mase", "owa", "msis", "coverage", "wql")


@pytest.fixture(scope="module")
def panel_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("panel")
    csv, parquet = folder / "retail.csv", folder / "retail.parquet"
    retail_panel.write(csv, **PANEL_ARGS)
    retail_panel.write(parquet, **PANEL_ARGS)
    return csv, parquet


def rnnops(monkeypatch, capsys, *args) -> tuple[int, str]:
    """The root command as a user runs it: (exit code, stderr)."""
    from rnnops.cli import main

    monkeypatch.setattr(sys, "argv", ["rnnops", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    return code, capsys.readouterr().err


def the_run():
    runs = mlflow.search_runs(experiment_names=["rnnops-forecast"], output_format="list")
    assert len(runs) == 1
    return runs[0]


def test_panel_run_from_csv_logs_everything(mlflow_env, panel_files, monkeypatch, capsys):
    csv, _ = panel_files
    code, err = rnnops(
        monkeypatch, capsys, "train", "forecast", "--data", str(csv), *COLUMNS, *COVARIATES, *WINDOWS, "--backtest", "3"
    )
    assert code == 0, err
    run = the_run()
    run_id, p, m = run.info.run_id, run.data.params, run.data.metrics
    # the job: params and config/job.json, which rebuilds the same typed job
    logged = mlflow.artifacts.load_dict(f"runs:/{run_id}/config/job.json")
    assert logged["task"] == "panel" and job_from_dict(logged).static_columns == ["store", "category"]
    assert p["id_column"] == "item_id" and p["backtest"] == "3" and p["model.segment_length"] == "14"
    assert json.loads(p["future_covariates"].replace("'", '"')) == ["promo", "price"]
    assert run.data.tags["rnnops.task"] == "panel"
    # the recipe: roles, frequency, calendar features, per-series splits
    recipe = mlflow.artifacts.load_dict(f"runs:/{run_id}/config/recipe.json")
    c = recipe["columns"]
    assert (c["id"], c["date"], c["target"]) == ("item_id", "date", ["sales"])
    assert c["static"] == ["store", "category"] and c["future_covariates"] == ["promo", "price"]
    assert recipe["kind"] == "panel" and recipe["freq"] == "D" and "day_of_week" in recipe["calendar"]
    series = recipe["splits"]["series"]
    assert len(series["ids"]) == 12
    assert all(v == n - 7 and t == n - 14 for n, v, t in zip(series["length"], series["val_end"], series["train_end"]))
    assert recipe["backtest"] == {"windows": 3, "step": 7}
    # the dataset input carries the file's sha256
    (ds,) = run.inputs.dataset_inputs
    assert recipe["source"]["sha256"].startswith(ds.dataset.digest)
    # M4 scores per split and backtest window, beside the baselines of the same windows
    for prefix in ("val_", "test_", "backtest_0/", "backtest_1/", "backtest_2/"):
        for name in M4_METRICS:
            assert np.isfinite(m[f"{prefix}{name}"]), prefix + name
        for base in ("naive", "seasonal_naive"):
            assert np.isfinite(m[f"{prefix}{base}_mase"]) and np.isfinite(m[f"{prefix}{base}_owa"])
    assert m["test_naive2_owa"] == pytest.approx(1.0)
    assert m["backtest_2/mase"] == pytest.approx(m["test_mase"])  # the last window is the test window
    assert m["backtest_0/mase"] != pytest.approx(m["backtest_1/mase"])
    # step metrics of the loop
    history = mlflow.MlflowClient().get_metric_history(run_id, "train_loss")
    assert history and "windows_per_s" in m and "lr" in m and "val_mase" in m
    # short series: counted and listed
    short = mlflow.artifacts.load_dict(f"runs:/{run_id}/data/too_short.json")
    assert short["count"] == m["too_short_series"] == 1
    assert short["series"][0]["length"] < short["needed"] == 35
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, "plots")}
    assert files == {"plots/forecast_vs_actual.png"}
    # the model: weights + JSON config, rebuilt from the run
    from rnnops.training.logged_model import load_model

    loaded = load_model(run_id)
    assert loaded.kind == "panel" and loaded.spec["inputs"]["static"][1]["name"] == "category"
    assert loaded.spec["config"]["n_known"] == 2 + len(recipe["calendar"])
    assert loaded.spec["metrics"]["test_mase"] == pytest.approx(m["test_mase"])
    # its export (the rnnops.panel contract) is tests/test_panel_export.py's


def test_panel_run_from_parquet_with_negbin(mlflow_env, panel_files, monkeypatch, capsys):
    _, parquet = panel_files
    args = ["train", "forecast", "--data", str(parquet), *COLUMNS, *COVARIATES, *WINDOWS, "--likelihood", "negbin"]
    code, err = rnnops(monkeypatch, capsys, *args)
    assert code == 0, err
    run = the_run()
    assert run.data.params["model.likelihood"] == "negbin"
    assert np.isfinite(run.data.metrics["test_wql"]) and np.isfinite(run.data.metrics["test_seasonal_naive_mase"])
    from rnnops.training.logged_model import load_model

    assert load_model(run.info.run_id).spec["config"]["head"] == "negbin"


def _bad(tmp_path, panel_files, change) -> Path:
    df = pd.read_csv(panel_files[0])
    df = change(df)
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "change, extra, message",
    [
        (lambda df: pd.concat([df, df.iloc[[61]]]), [], "1 duplicate (item_id, date) row in bad.csv"),
        (lambda df: df, ["--past-covariates", "promo"], "column 'promo' is given two roles"),
        (
            lambda df: df.assign(sales=df.sales.where(df.index != 5, -3)),
            ["--likelihood", "negbin"],
            "row of bad.csv has a negative target (first: series 'item_000000'",
        ),
        (lambda df: df, ["--quantiles", "0.1,0.9"], "include 0.5"),
    ],
    ids=["duplicate", "two-roles", "negbin-negative", "no-median"],
)
def test_bad_panel_input_is_one_line_before_any_training(
    mlflow_env, tmp_path, panel_files, monkeypatch, capsys, change, extra, message
):
    path = _bad(tmp_path, panel_files, change)
    code, err = rnnops(
        monkeypatch, capsys, "train", "forecast", "--data", str(path), *COLUMNS, *COVARIATES, *WINDOWS, *extra
    )
    assert code == 2
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")  # nothing trained


def test_flags_on_the_wrong_path_are_one_line(mlflow_env, panel_files, monkeypatch, capsys):
    code, err = rnnops(monkeypatch, capsys, "train", "forecast", "--data", "etth1", "--backtest", "2")
    assert code == 2 and err.strip() == "error: --backtest does not apply to a panel only (give --id-column)"
    csv = str(panel_files[0])
    code, err = rnnops(monkeypatch, capsys, "train", "forecast", "--data", csv, *COLUMNS, "--arch", "segrnn")
    assert code == 2 and "--arch segrnn does not apply to a panel" in err
    code, err = rnnops(monkeypatch, capsys, "train", "forecast", "--data", csv, *COLUMNS[:4], "--target", "sales")
    assert code == 2 and "a panel needs --horizon" in err


def test_help_explains_the_panel_flags():
    from typer.testing import CliRunner

    from rnnops.training.cli import app

    out = CliRunner().invoke(app, ["forecast", "--help"], env={"COLUMNS": "200"}).output
    for flag in ("--id-column", "--static-columns", "--future-covariates", "--past-covariates", "--likelihood"):
        assert flag in out
    assert "--backtest" in out and "m4-hourly" in out


def test_single_series_jobs_are_unchanged():
    """The ETT and sine jobs (config/job.json and the params) are what they were before panels."""
    before = json.loads((REPO / "tests" / "assets" / "ett_jobs.json").read_text())
    now = {
        "etth1_quick": to_dict(jobs.forecast_job("etth1", "gru", "quick", {})),
        "etth1_segrnn_quick": to_dict(
            jobs.forecast_job("etth1", "gru", "quick", {"model.quantiles": "0.1,0.5,0.9"}, arch="segrnn")
        ),
        "sine": to_dict(jobs.sine_job({})),
    }
    assert json.loads(json.dumps(now)) == before
    assert not jobs.is_panel("etth1", None) and jobs.is_panel("m4-hourly", None) and jobs.is_panel("x.csv", "id")


def test_m4_hourly_is_a_panel_with_its_columns_and_the_benchmarks_quick_preset():
    job = jobs.panel_job("m4-hourly", "quick", {"train.seed": 3})
    assert (job.id_column, job.date_column, job.targets, job.horizon) == ("id", "timestamp", ["value"], 48)
    # benchmarks/m4_global.py's configuration
    assert (job.lookback, job.model.segment_length, job.model.hidden_size, job.model.num_layers) == (336, 24, 128, 2)
    assert (job.train.batch_size, job.train.lr, job.train.time_budget_s, job.train.seed) == (256, 3e-3, 300.0, 3)
    assert job_from_dict(json.loads(json.dumps(to_dict(job)))) == job
    assert type(job).command == "forecast"
