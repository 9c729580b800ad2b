"""Configuration from the environment: standard variables first, then ``RNNOPS_*``.

Defaults work with no configuration at all (embedded sqlite MLflow store in the working
directory, a cache under ``~/.cache/rnnops``).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    """MLflow tracking URI: ``MLFLOW_TRACKING_URI`` or the embedded sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def cache_dir() -> Path:
    """Where downloads and resolved models are cached (``RNNOPS_CACHE``)."""
    root = os.environ.get("RNNOPS_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "rnnops"
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path | None:
    """A local directory holding the named datasets (``RNNOPS_DATA_DIR``), if set."""
    root = os.environ.get("RNNOPS_DATA_DIR")
    return Path(root) if root else None


def checkpoint_dir() -> Path:
    """Where training checkpoints live (``RNNOPS_CHECKPOINTS``, default ``./checkpoints``)."""
    return Path(os.environ.get("RNNOPS_CHECKPOINTS") or "checkpoints")
