"""The logged model: weights (safetensors) + a JSON config, no pickled code.

``save_model_files`` writes the two files; ``log_model`` logs them as an MLflow model
(pyfunc "models from code": MLflow stores our small loader script, never a pickle);
``load_model`` rebuilds the torch module from a run id, a ``runs:/`` or ``models:/`` URI, or a
local folder. The export stage calls ``load_model``.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rnnops.contract import TAG_MODEL_URI as MODEL_URI_TAG
from rnnops.errors import RnnopsError
from rnnops.training.models import build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    spec: dict  # the config.json: kind, config, vocab / feature names, metrics, ...
    run_id: str | None
    uri: str

    @property
    def kind(self) -> str:
        return self.spec["kind"]


def save_model_files(model: torch.nn.Module, spec: dict, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(spec, indent=2))
    return folder


def model_from_files(folder: Path) -> tuple[torch.nn.Module, dict]:
    config_path = next(iter(sorted(folder.rglob(CONFIG_FILE))), None)
    weights_path = next(iter(sorted(folder.rglob(WEIGHTS_FILE))), None)
    if config_path is None or weights_path is None:
        raise RnnopsError(f"{folder} holds no rnnops model ({CONFIG_FILE} + {WEIGHTS_FILE})")
    spec = json.loads(config_path.read_text())
    model = build_model(spec["kind"], spec["config"])
    model.load_state_dict(load_file(str(weights_path)))
    return model.eval(), spec


def log_model(model: torch.nn.Module, spec: dict, workdir: Path) -> str:
    """Log the model to the active MLflow run; returns its ``models:/`` URI (also tagged on the run)."""
    import mlflow

    files = save_model_files(model, spec, workdir)
    with warnings.catch_warnings():  # MLflow nags about type hints we deliberately leave out
        warnings.simplefilter("ignore", UserWarning)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"config": str(files / CONFIG_FILE), "weights": str(files / WEIGHTS_FILE)},
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "safetensors", "rnnops"],
        )
    mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
    return info.model_uri


def load_model(ref: str) -> LoadedModel:
    """Rebuild a logged model from a run id, ``runs:/…``, ``models:/…`` or a local folder."""
    path = Path(ref)
    if path.is_dir():
        model, spec = model_from_files(path)
        return LoadedModel(model, spec, spec.get("run_id"), str(path))

    import mlflow
    from mlflow.exceptions import MlflowException

    from rnnops.tracking import connect

    connect()
    run_id = None
    uri = ref
    try:
        if RUN_ID.match(ref):
            run_id = ref
            run = mlflow.get_run(ref)
            uri = run.data.tags.get(MODEL_URI_TAG)
            if not uri:
                raise RnnopsError(f"run {ref} has no logged model (did its training finish?)")
        elif not ref.startswith(("runs:/", "models:/")):
            raise RnnopsError(f"{ref!r} is not a run id, a runs:/ or models:/ URI, or a folder")
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as exc:
        raise RnnopsError(f"cannot load {ref}: {exc.message.splitlines()[0]}") from None
    model, spec = model_from_files(local)
    return LoadedModel(model, spec, run_id or spec.get("run_id"), uri)
