"""`rnnops train forecast --init-from RUN_ID|NAME@ALIAS` (training/init_from.py), through the root
command with real MLflow: a tiny panel model trained on a generated retail panel, then fine-tuned on
a shifted panel (later dates, doubled sales, two more stores) as a new run that records its parent.

The fine-tuned run starts from the parent's weights: at learning rate 0 its weights stay the
parent's exactly (new stores' embedding rows: the parent's unknown bucket), and on the parent's own
panel its first validation MASE is the parent's. Data or flags the parent's model cannot take are
one line before any run starts."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import retail_panel  # noqa: E402
from test_panel_cli import rnnops  # noqa: E402  (the root command as a user runs it: exit code, stderr)

COLUMNS = ["--id-column", "item_id", "--date-column", "date", "--target", "sales"]
COVARIATES = ["--static-columns", "store,category", "--future-covariates", "promo,price", "--freq", "D"]
WINDOWS = ["--horizon", "7", "--lookback", "28", "--preset", "tiny"]
FROZEN = ["--preset", "tiny", "--lr", "0", "--steps", "1"]  # one step at learning rate 0: weights unchanged


@pytest.fixture(scope="module")
def panels(tmp_path_factory):
    folder = tmp_path_factory.mktemp("panels")
    parent, shifted = folder / "retail.parquet", folder / "shifted.parquet"
    retail_panel.write(parent, series=12, days=60, seed=5, stores=3)
    new = retail_panel.generate(series=10, days=70, seed=6, stores=5)
    new["date"] = pd.to_datetime(new["date"]) + pd.Timedelta(days=60)
    new["sales"] = new["sales"] * 2
    new.to_parquet(shifted, index=False)
    return parent, shifted


def train(monkeypatch, capsys, *args) -> mlflow.entities.Run:
    before = {r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    code, err = rnnops(monkeypatch, capsys, "train", "forecast", *args)
    assert code == 0, err
    (run,) = [
        r for r in mlflow.search_runs(search_all_experiments=True, output_format="list") if r.info.run_id not in before
    ]
    return run


def weights(run_id: str) -> dict:
    from rnnops.training.logged_model import load_model

    return load_model(run_id).model.state_dict()


def test_fine_tune_starts_from_the_parents_weights_and_records_it(mlflow_env, panels, monkeypatch, capsys):
    parent_file, shifted = panels
    parent = train(monkeypatch, capsys, "--data", str(parent_file), *COLUMNS, *COVARIATES, *WINDOWS)
    pid = parent.info.run_id

    # on the shifted panel, at learning rate 0: the parent's weights, new stores' rows its unknown bucket's
    child = train(monkeypatch, capsys, "--data", str(shifted), "--init-from", pid, *FROZEN)
    cid = child.info.run_id
    assert cid != pid
    assert child.data.tags["rnnops.parent_run"] == pid and child.data.tags["rnnops.init_from"] == pid
    assert child.data.params["parent_run"] == pid and child.data.params["init_from"] == pid
    # inherited: columns, windows, architecture (none of them given again)
    assert child.data.params["static_columns"] == parent.data.params["static_columns"]
    assert child.data.params["model.hidden_size"] == parent.data.params["model.hidden_size"]
    record = mlflow.artifacts.load_dict(f"runs:/{cid}/config/init_from.json")
    assert record["parent_run"] == pid and record["new_categories"] == {"store": ["store_03", "store_04"]}
    before, after = weights(pid), weights(cid)
    assert before.keys() == after.keys()
    store = "embeddings.0.weight"
    for key in before:
        if key != store:
            assert torch.equal(before[key], after[key]), key
    assert after[store].shape[0] == before[store].shape[0] + 2
    assert torch.equal(after[store][: len(before[store])], before[store])
    assert torch.equal(after[store][-2:], before[store][:1].expand(2, -1))  # the unknown bucket's row
    from rnnops.training.logged_model import load_model

    vocab = load_model(cid).spec["inputs"]["static"][0]["vocabulary"]
    assert vocab == ["store_00", "store_01", "store_02", "store_03", "store_04"]  # the parent's codes kept

    # on the parent's own panel: the first validation score is the parent's (its best weights')
    same = train(monkeypatch, capsys, "--data", str(parent_file), "--init-from", pid, *FROZEN)
    first = mlflow.MlflowClient().get_metric_history(same.info.run_id, "val_mase")[0]
    assert first.step == 1 and first.value == pytest.approx(parent.data.metrics["val_mase"], rel=1e-6)

    # fine-tuning proper (the tiny preset's learning rate) moves the weights
    tuned = train(monkeypatch, capsys, "--data", str(shifted), "--init-from", pid, "--preset", "tiny")
    moved = weights(tuned.info.run_id)
    assert not torch.equal(moved["direct.weight"], before["direct.weight"])


def test_a_registered_version_is_fine_tuned_from_its_source_run(mlflow_env, panels, monkeypatch, capsys):
    parent_file, shifted = panels
    parent = train(monkeypatch, capsys, "--data", str(parent_file), *COLUMNS, *COVARIATES, *WINDOWS)
    pid = parent.info.run_id
    # a version as `rnnops registry register` tags one (its files do not matter here: the weights
    # come from the source run's logged model)
    c = mlflow.MlflowClient()
    c.create_registered_model("retail-global")
    mv = c.create_model_version("retail-global", f"runs:/{pid}/model", run_id=pid, tags={"rnnops.source_run": pid})
    c.set_registered_model_alias("retail-global", "champion", mv.version)
    child = train(monkeypatch, capsys, "--data", str(shifted), "--init-from", "retail-global@champion", *FROZEN)
    assert child.data.tags["rnnops.parent_run"] == pid
    assert child.data.tags["rnnops.init_from"] == "retail-global@champion"
    code, err = rnnops(
        monkeypatch, capsys, "train", "forecast", "--data", str(shifted), "--init-from", "retail-global@prod"
    )
    assert code == 2 and "retail-global has no alias 'prod' (aliases: champion->1)" in err, err


def test_what_the_parent_cannot_take_is_one_line_before_any_run(mlflow_env, panels, monkeypatch, capsys, tmp_path):
    parent_file, shifted = panels
    parent = train(monkeypatch, capsys, "--data", str(parent_file), *COLUMNS, *COVARIATES, *WINDOWS)
    pid = parent.info.run_id
    numeric_store = tmp_path / "numeric_store.parquet"
    df = pd.read_parquet(shifted)
    df.assign(store=df["store"].str[-2:].astype(int)).to_parquet(numeric_store, index=False)
    no_price = tmp_path / "no_price.parquet"
    df.drop(columns="price").to_parquet(no_price, index=False)
    cases = [
        (
            [str(shifted), "--horizon", "14"],
            f"--init-from {pid}: --horizon 14 differs from the parent run's 7; a fine-tuned model keeps its "
            "parent's inputs, windows and architecture: drop --horizon, or train a new model without --init-from",
        ),
        ([str(shifted), "--cell", "lstm"], "--cell lstm differs from the parent run's gru"),
        (
            [str(numeric_store)],
            f"--init-from {pid}: static columns: the new panel has store (real),category (categorical), the "
            f"parent run {pid} was trained on store (categorical),category (categorical); a static column must "
            "keep its kind",
        ),
        ([str(no_price)], "column 'price' (--future-covariates) is not in no_price.parquet"),
        ([str(shifted), "--init-from", "0" * 32], f"no run {'0' * 32} in the tracking store"),
    ]
    for args, message in cases:
        data, *extra = args
        init = [] if "--init-from" in extra else ["--init-from", pid]
        code, err = rnnops(monkeypatch, capsys, "train", "forecast", "--data", data, *init, *extra, "--preset", "tiny")
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == 1  # the parent alone


def test_a_single_series_forecaster_is_fine_tuned_too(mlflow_env, small_csv, monkeypatch, capsys, tmp_path):
    parent = train(
        monkeypatch,
        capsys,
        "--data",
        str(small_csv),
        "--lookback",
        "24",
        "--horizon",
        "8",
        "--hidden-size",
        "8",
        "--norm",
        "fixed",
        "--preset",
        "tiny",
    )
    pid = parent.info.run_id
    df = pd.read_csv(small_csv)
    shifted = tmp_path / "shifted.csv"
    df.assign(OT=df["OT"] * 1.5 + 1).to_csv(shifted, index=False)
    child = train(monkeypatch, capsys, "--data", str(shifted), "--init-from", pid, *FROZEN)
    assert child.data.tags["rnnops.parent_run"] == pid
    p = child.data.params
    assert (p["lookback"], p["model.hidden_size"], p["model.norm"]) == ("24", "8", "fixed")  # the parent's
    before, after = weights(pid), weights(child.info.run_id)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    from rnnops.training.logged_model import load_model

    # the parent's scaler (a stateful model's): its weights were trained on that scale
    assert load_model(child.info.run_id).spec["config"]["scaler_mean"] == load_model(pid).spec["config"]["scaler_mean"]

    fewer = tmp_path / "fewer.csv"
    df.drop(columns="b").to_csv(fewer, index=False)
    cases = [
        ([str(fewer)], "feature names: the new series has a,OT, the parent run"),
        ([str(shifted), "--arch", "segrnn"], "--arch segrnn differs from the parent run's rnn"),
        ([str(shifted), *COLUMNS[:2]], "trained a single-series forecaster, and this is a panel model"),
    ]
    for (data, *extra), message in cases:
        code, err = rnnops(monkeypatch, capsys, "train", "forecast", "--data", data, "--init-from", pid, *extra)
        assert code == 2 and message in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == 2
