"""rnnops tune (training/tune.py): the search space and its bad inputs, and a tiny study on a small
CSV: nested trial runs under one parent, resumed from its storage, plots and the best command."""

from __future__ import annotations

import mlflow
import pytest

from rnnops.errors import RnnopsError
from rnnops.training.tune import space_for


def test_flags_fix_parameters_and_an_empty_space_is_one_line():
    names = [p.name for p in space_for("forecast", "segrnn", {"train.lr": 1e-3}, None, None)]
    assert "train.lr" not in names and "model.segment_length" in names
    assert [p.name for p in space_for("char", "rnn", {}, "lr,seq_len", None)] == ["train.lr", "seq_len"]
    with pytest.raises(RnnopsError, match="the search space is empty: every parameter of it is fixed by a flag"):
        space_for("forecast", "rnn", {"train.lr": 1e-3, "model.dropout": 0.1}, "lr,dropout", None)
    with pytest.raises(RnnopsError, match="the search space is empty: --params selects nothing"):
        space_for("forecast", "rnn", {}, " , ", None)
    with pytest.raises(RnnopsError, match="not in the search space"):
        space_for("forecast", "rnn", {}, "segment_length", None)
    with pytest.raises(RnnopsError, match="the range is empty"):
        space_for("forecast", "rnn", {}, None, ["lr=3e-3:1e-4:log"])
    with pytest.raises(RnnopsError, match="want NAME=LOW:HIGH"):
        space_for("forecast", "rnn", {}, None, ["momentum=0:1"])
    p = space_for("forecast", "rnn", {}, "hidden_size", ["hidden_size=8|16"])[0]
    assert p.choices == (8, 16)


def test_a_study_nests_its_trials_resumes_and_prints_the_best_command(mlflow_env, small_csv, capsys):
    from rnnops.training.jobs import forecast_job
    from rnnops.training.tune import space_for, tune

    overrides = {"lookback": 24, "horizon": 8, "model.hidden_size": 8, "train.steps": 12, "train.eval_every": 6}
    job = forecast_job(str(small_csv), "gru", "tiny", overrides)
    space = space_for("forecast", "rnn", overrides, "lr,dropout", None)
    flags = ["--data", str(small_csv), "--lookback", "24", "--horizon", "8", "--hidden-size", "8", "--steps", "12"]
    first = tune(job, flags, space, trials=2, timeout=None, storage=None, study_name=None)
    again = tune(job, flags, space, trials=1, timeout=None, storage=None, study_name=None)  # same storage + name
    assert again["parent_run"] == first["parent_run"] and again["trials"] == 3
    assert (mlflow_env / "optuna.db").is_file()  # beside the local sqlite MLflow store
    kids = mlflow.search_runs(
        experiment_names=["rnnops-forecast"], filter_string=f"tags.mlflow.parentRunId = '{first['parent_run']}'"
    )
    assert len(kids) == 3 and set(kids["tags.rnnops.tune.trial"]) == {"0", "1", "2"}
    parent = mlflow.get_run(first["parent_run"])
    assert parent.info.status == "FINISHED" and "best_val_mse" in parent.data.metrics
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "tune")}
    assert {"tune/best_command.txt", "tune/optimization_history.png", "tune/param_importances.png"} <= arts
    command = parent.data.tags["rnnops.tune.best_command"]
    assert command.startswith("rnnops train forecast --data ") and "--lr " in command and "--dropout " in command
    assert command in capsys.readouterr().out


def test_a_panel_space_offers_segments_that_tile_the_lookback_and_cells_by_name():
    space = {p.name: p for p in space_for("panel", "rnn", {"train.lr": 1e-3}, None, None, lookback=28)}
    assert "train.lr" not in space and space["model.cell"].choices == ("gru", "lstm")
    assert space["model.segment_length"].choices == (2, 4, 7, 14, 28)  # the divisors of 28
    assert {"model.hidden_size", "model.num_layers", "model.dropout"} <= set(space)
    (cell,) = space_for("panel", "rnn", {}, "cell", ["cell=lstm"], lookback=28)
    assert cell.choices == ("lstm",)


def test_a_panel_study_minimises_validation_mase_or_wql(mlflow_env, tmp_path, monkeypatch, capsys):
    """`rnnops tune forecast --id-column …` on a generated retail panel, 2 trials (and 1 on WQL);
    the best command trains again as printed."""
    import shlex
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import retail_panel

    from rnnops.cli import main

    panel = tmp_path / "retail.parquet"
    retail_panel.write(panel, series=12, days=60, seed=5, stores=3)
    data = ["--data", str(panel), "--id-column", "item_id", "--date-column", "date", "--target", "sales"]
    windows = ["--static-columns", "store,category", "--future-covariates", "promo,price", "--freq", "D"]
    windows += ["--horizon", "7", "--lookback", "28", "--preset", "tiny", "--steps", "10", "--eval-every", "5"]

    def rnnops(*args) -> str:
        monkeypatch.setattr(sys, "argv", ["rnnops", *args])
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, capsys.readouterr().err
        return capsys.readouterr().out

    search = ["--params", "hidden_size,segment_length,cell,lr", "--space", "hidden_size=8|16"]
    out = rnnops("tune", "forecast", *data, *windows, *search, "--trials", "2")
    (parent,) = study_parents("panel-retail.parquet-sales-L28-H7-tiny-val_mase")
    kids = mlflow.search_runs(
        experiment_names=["rnnops-forecast"],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        output_format="list",
    )
    assert len(kids) == 2 and {k.data.tags["rnnops.task"] for k in kids} == {"panel"}
    for k in kids:
        assert 28 % int(k.data.params["model.segment_length"]) == 0
        assert k.data.params["model.hidden_size"] in ("8", "16") and k.data.params["model.cell"] in ("gru", "lstm")
    best = min(k.data.metrics["val_mase"] for k in kids)
    assert parent.data.metrics["best_val_mase"] == pytest.approx(best)
    command = parent.data.tags["rnnops.tune.best_command"]
    assert command.startswith("rnnops train forecast --data ") and "--id-column item_id" in command
    assert "--segment-length " in command and "--cell " in command and command in out
    rnnops(*shlex.split(command)[1:])  # the best command trains as printed
    assert len(mlflow.search_runs(experiment_names=["rnnops-forecast"], output_format="list")) == 4

    rnnops("tune", "forecast", *data, *windows, "--params", "lr", "--trials", "1", "--metric", "wql")
    (wql,) = study_parents("panel-retail.parquet-sales-L28-H7-tiny-val_wql")
    (kid,) = mlflow.search_runs(
        experiment_names=["rnnops-forecast"],
        filter_string=f"tags.mlflow.parentRunId = '{wql.info.run_id}'",
        output_format="list",
    )
    assert wql.data.metrics["best_val_wql"] == pytest.approx(kid.data.metrics["val_wql"])
    history = mlflow.MlflowClient().get_metric_history(kid.info.run_id, "val_wql")
    assert 5 in {m.step for m in history}  # reported at each evaluation, where the pruner reads it


def study_parents(study: str) -> list:
    """The parent runs of an Optuna study (its trials carry the study's tag too)."""
    runs = mlflow.search_runs(
        experiment_names=["rnnops-forecast"],
        filter_string=f"tags.`rnnops.tune.study` = '{study}'",
        output_format="list",
    )
    return [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
