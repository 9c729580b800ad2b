"""Shared fixtures: an isolated MLflow store, cache and checkpoint folder per test, and the
shared datasets (``RNNOPS_DATA_DIR``, default ``../shared/data`` beside the repo).

Two rules for the whole suite live here too:

- under CI (``CI`` set) nothing skips for want of something CI has: a missing dataset or a module
  that does not import fails there (:func:`servers.missing` for the prerequisites a test checks
  itself, the hooks below for ``pytest.importorskip``);
- ``--fast`` runs the fast serving tests only (:data:`FAST`): the torch-free modules that ``make
  check`` runs in a venv with the ``serve`` extra alone, as the serving image has; there, no test
  may skip at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from servers import missing

# The tiny registry (trained, exported, registered once per session) every serving test uses
from serving_fixtures import registry  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DATASETS = ("tinyshakespeare.txt", "ETTh1.csv")

# The fast serving tests: modules that import no torch (not even through a fixture) and need no
# dataset, service or network; `make check` runs them with `--fast` in its serve-only venv.
FAST = frozenset(
    {
        "test_batch_tails.py",
        "test_dependency_rule.py",
        "test_panel_contract.py",
        "test_refs.py",
        "test_routes.py",
        "test_scheduler.py",
        "test_security_static.py",
        "test_serve_assets.py",
        "test_sessions.py",
        "test_timeseries.py",
    }
)


def pytest_addoption(parser):
    parser.addoption(
        "--fast",
        action="store_true",
        help="run only the fast serving tests (torch-free; what `make check` runs in its serve-only venv)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "fast: a fast serving test (torch-free), selected by conftest.FAST")


def pytest_ignore_collect(collection_path, config):
    if config.getoption("--fast") and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return collection_path.name not in FAST
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in FAST:
            item.add_marker(pytest.mark.fast)


def _forbidden_skip(config, report) -> str | None:
    """Why this skip must fail instead, or None when it may stand."""
    if not report.skipped or getattr(report, "wasxfail", None) is not None:
        return None
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")  # how a skip at collection is worded
    if config.getoption("--fast"):
        return f"{reason} (a fast serving test may not skip: it must run in the serve-only venv of `make check`)"
    if os.environ.get("CI") and reason.startswith("could not import"):
        return f"{reason} (CI is set: every test dependency is installed there)"
    return None


def _fail(report, why: str) -> None:
    report.outcome = "failed"
    report.longrepr = why


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    why = _forbidden_skip(item.config, report)
    if why:
        _fail(report, why)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    why = _forbidden_skip(collector.config, report)
    if why:
        _fail(report, why)


def shared_data_dir() -> Path | None:
    """The folder with the shared datasets, or None when it lacks one."""
    env = os.environ.get("RNNOPS_DATA_DIR")
    path = Path(env) if env else SHARED_DATA
    return path if all((path / name).is_file() for name in DATASETS) else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared datasets' folder; skips without it, but fails under CI (which always has it)."""
    path = shared_data_dir()
    if path is None:
        missing("shared datasets not found: set RNNOPS_DATA_DIR to the folder with tinyshakespeare.txt and ETTh1.csv")
    return path


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
def data_dir(shared_data, monkeypatch):
    """:func:`shared_data`, with ``RNNOPS_DATA_DIR`` pointing at it for the test."""
    monkeypatch.setenv("RNNOPS_DATA_DIR", str(shared_data))
    return shared_data


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
    df = pd.DataFrame(
        {
            "date": pd.date_range("2024-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
            "a": np.sin(t / 8.0),
            "b": np.cos(t / 13.0) + 0.001 * t,
            "OT": np.sin(t / 8.0 + 1.0) * 2 + 5,
        }
    )
    path = tmp_path / "small.csv"
    df.to_csv(path, index=False)
    return path
