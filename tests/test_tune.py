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
