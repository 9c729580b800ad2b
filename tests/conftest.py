"""Shared fixtures: an isolated MLflow store, cache and checkpoint folder per test, and the
shared datasets (``RNNOPS_DATA_DIR``, default ``../shared/data`` beside the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The tiny registry (trained, exported, registered once per session) every serving test uses
from serving_fixtures import registry  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data_dir() -> Path | None:
    env = os.environ.get("RNNOPS_DATA_DIR")
    path = Path(env) if env else SHARED_DATA
    return path if (path / "tinyshakespeare.txt").is_file() else None


@pytest.fixture
def mlflow_env(tmp_path, monkeypatch):
    """A fresh embedded MLflow store, cache and checkpoint folder; cwd is the test's tmp dir."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("RNNOPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RNNOPS_CHECKPOINTS", str(tmp_path / "checkpoints"))
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def data_dir(monkeypatch):
    path = shared_data_dir()
    if path is None:
        pytest.skip("shared datasets not found: set RNNOPS_DATA_DIR to the folder with tinyshakespeare.txt and ETTh1.csv")
    monkeypatch.setenv("RNNOPS_DATA_DIR", str(path))
    return path


@pytest.fixture
def small_text(tmp_path) -> Path:
    """A generated text with a learnable pattern (a few KB)."""
    path = tmp_path / "small.txt"
    words = ["the quick brown fox", "jumps over", "the lazy dog", "and runs away"]
    path.write_text("\n".join(f"{words[i % 4]} {i % 7}" for i in range(400)), encoding="utf-8")
    return path


@pytest.fixture
def small_csv(tmp_path) -> Path:
    """A generated hourly CSV: two sines and a trend, 600 rows."""
    import numpy as np
    import pandas as pd

    n = 600
    t = np.arange(n)
    df = pd.DataFrame({
        "date": pd.date_range("2024-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
        "a": np.sin(t / 8.0),
        "b": np.cos(t / 13.0) + 0.001 * t,
        "OT": np.sin(t / 8.0 + 1.0) * 2 + 5,
    })
    path = tmp_path / "small.csv"
    df.to_csv(path, index=False)
    return path
