"""Integration: tiny presets train in seconds into a temporary MLflow store."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from rnnops.training import jobs, tasks, trainer
from rnnops.training.job_config import to_dict
from rnnops.training.logged_model import load_model
from rnnops.training.recipe import RECIPE_ARTIFACT, DataRecipe
from rnnops.training.sampling import generate


def _run(job):
    return jobs.run_job(job)


def test_char_tiny_run_logs_everything_and_loads_back(mlflow_env, small_text):
    job = jobs.char_job(str(small_text), "gru", "tiny", {"train.steps": 40, "train.eval_every": 20})
    run_id = _run(job)
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.cell"] == "gru" and run.data.params["train.steps"] == "40"
    m = run.data.metrics
    for key in (
        "val_loss",
        "val_bpc",
        "baseline_unigram_loss",
        "baseline_bigram_loss",
        "train_loss",
        "lr",
        "chars_per_s",
    ):
        assert key in m, key
    assert m["val_loss"] < m["baseline_unigram_loss"]  # it learned something in 40 steps
    assert abs(m["val_bpc"] - m["val_loss"] / 0.6931471805599453) < 1e-6
    assert run.data.tags["rnnops.version"]
    history = mlflow.MlflowClient().get_metric_history(run_id, "train_loss")
    assert len(history) >= 4 and history[-1].value < history[0].value
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(run_id, "samples")}
    assert files == {"samples/step_000020.txt", "samples/step_000040.txt"}
    assert json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config/job.json")).read_text()
    ) == to_dict(job)
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.digest

    loaded = load_model(run_id)
    assert loaded.kind == "char" and loaded.spec["config"]["cell"] == "gru"
    assert loaded.spec["vocab"] == sorted(set(small_text.read_text()))
    # the loaded weights are the trained ones: same val loss through the logged model
    recipe = DataRecipe.from_dict(mlflow.artifacts.load_dict(f"runs:/{run_id}/{RECIPE_ARTIFACT}"))
    assert recipe.source.uri == str(small_text) and recipe.eval_window == 256
    loss = tasks.char_val_loss(loaded.model, torch.from_numpy(recipe.windows("val").x))
    assert loss == pytest.approx(m["val_loss"], rel=1e-5)
    a = generate(loaded.model, loaded.spec["vocab"], "the ", 50, seed=3)
    b = generate(loaded.model, loaded.spec["vocab"], "the ", 50, seed=3)
    assert a == b and len(a) == 50
    # the model URI form loads too, through MLflow's own pyfunc loader as well
    uri = run.data.tags["rnnops.model_uri"]
    assert load_model(uri).spec["run_id"] == run_id
    pyfunc = mlflow.pyfunc.load_model(uri)
    import pandas as pd

    out = pyfunc.predict(pd.DataFrame({"prompt": ["the "], "max_chars": [10]}))
    assert len(out[0]) == 10


def test_forecast_tiny_run_on_csv(mlflow_env, small_csv):
    job = jobs.forecast_job(str(small_csv), "lstm", "tiny", {"lookback": 24, "horizon": 6, "train.steps": 30})
    run_id = _run(job)
    run = mlflow.get_run(run_id)
    m = run.data.metrics
    for key in ("val_mse", "val_mae", "test_mse", "test_mae", "test_repeat_last_mse", "windows_per_s"):
        assert key in m, key
    plots = [f.path for f in mlflow.MlflowClient().list_artifacts(run_id, "plots")]
    assert plots == ["plots/forecast_vs_actual.png"]
    loaded = load_model(run_id)
    assert loaded.kind == "forecaster" and loaded.spec["stateful"] is False
    assert loaded.spec["freq"] == "h"
    y, _ = loaded.model(torch.zeros(2, 24, 3))
    assert y.shape == (2, 6, 3)


def test_sine_learns_well_past_repeat_last(mlflow_env):
    run_id = _run(jobs.sine_job({"train.steps": 150}))
    m = mlflow.get_run(run_id).data.metrics
    assert m["test_mse"] < 0.25 * m["test_repeat_last_mse"]
    assert load_model(run_id).spec["stateful"] is True


def test_interrupted_run_is_marked_killed_and_resumes(mlflow_env, small_text, monkeypatch):
    job = jobs.char_job(str(small_text), "lstm", "tiny", {"train.steps": 40, "train.eval_every": 10})
    real_lr_at = trainer.lr_at

    def interrupt_at_25(s, step, progress):
        if step == 25:
            raise KeyboardInterrupt
        return real_lr_at(s, step, progress)

    monkeypatch.setattr(trainer, "lr_at", interrupt_at_25)
    with pytest.raises(KeyboardInterrupt):
        _run(job)
    run = mlflow.search_runs(experiment_names=["rnnops-char"], output_format="list")[0]
    assert run.info.status == "KILLED"
    ckpt = trainer.Checkpoint(Path("checkpoints") / run.info.run_id)
    saved = torch.load(ckpt.folder / "trainer.pt", weights_only=True)
    assert saved["trainer"]["step"] == 25

    monkeypatch.setattr(trainer, "lr_at", real_lr_at)
    assert jobs.run_job(ckpt.load_job(), resume_run=run.info.run_id) == run.info.run_id
    resumed = mlflow.get_run(run.info.run_id)
    assert resumed.info.status == "FINISHED"
    assert resumed.data.metrics["steps"] == 40
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "val_loss")]
    assert steps[:2] == [10, 20] and 40 in steps  # continued, not restarted


def test_crash_marks_run_failed(mlflow_env, small_text, monkeypatch):
    job = jobs.char_job(str(small_text), "rnn", "tiny", {"train.steps": 20})

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tasks, "char_val_loss", boom)
    with pytest.raises(RuntimeError):
        _run(job)
    run = mlflow.search_runs(experiment_names=["rnnops-char"], output_format="list")[0]
    assert run.info.status == "FAILED"
    assert (Path("checkpoints") / run.info.run_id / "model.safetensors").is_file()


def _cli(*args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-c", "from rnnops.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_cli_bad_inputs_are_one_clear_line(tmp_path):
    import os

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "RNNOPS_CACHE": str(tmp_path)}
    r = _cli("train", "char", "--data", "nope.txt", "--preset", "tiny", env=env, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: no dataset 'nope.txt'")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("train", "char", "--cell", "transformer", env=env, cwd=tmp_path)
    assert r.returncode == 2 and "transformer" in r.stderr
    env_down = {**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    r = _cli("train", "sine", env=env_down, cwd=tmp_path)
    assert r.returncode == 2 and "unreachable" in r.stderr and "Traceback" not in r.stderr
    r = _cli("train", "char", "--resume", "0" * 32, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "no checkpoint" in r.stderr
    r = _cli("--debug", "train", "char", "--data", "nope.txt", env=env, cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr
