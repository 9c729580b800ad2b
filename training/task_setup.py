"""What a task hands the training loop and the run (:class:`TrainingSetup`), and the MLflow dataset
input of its data. Its own module so that every task module (:mod:`rnnops.training.tasks`,
:mod:`rnnops.training.panel_task`) builds one without importing the others."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnnops.training import data as D
from rnnops.training.recipe import DataRecipe


@dataclass
class TrainingSetup:
    """What the training loop and the run need from a task (:mod:`rnnops.training.tasks` says what each part is)."""

    model: torch.nn.Module
    sample_batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    loss_fn: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[[int], dict]  # step -> validation metrics (``val_key`` among them)
    finish: Callable[[dict], dict]  # the loop's final state -> the run's final metrics
    items_per_batch: int  # what one step trains on, in ``unit``
    unit: str  # "chars" | "windows"
    val_key: str  # the metric early stopping and best weights follow (lower is better)
    spec: dict  # the logged model's config.json, less run id and metrics
    dataset: Any  # the MLflow dataset input (mlflow.data.Dataset)
    recipe: DataRecipe  # how the data was made (logged as config/recipe.json)


def dataset_input(name: str, path: Path | None, sha: str, url: str | None = None):
    """The MLflow dataset input of a run's data: its URL (a named dataset's, or ``url``), its file,
    or the generator that made it; the digest is the sha256's first 16 hex digits."""
    from mlflow.data.meta_dataset import MetaDataset

    if url is not None:
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        source = HTTPDatasetSource(url)
    elif name in D.DATASETS:
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        source = HTTPDatasetSource(D.DATASETS[name].url)
    elif path is not None:
        from mlflow.data.http_dataset_source import HTTPDatasetSource

        source = HTTPDatasetSource(path.resolve().as_uri())
    else:
        from mlflow.data.code_dataset_source import CodeDatasetSource

        source = CodeDatasetSource({"generator": "rnnops.training.data.make_sine"})
    return MetaDataset(source=source, name=name, digest=sha[:16])
