"""Thin access to the MLflow Model Registry, with MLflow's errors turned into one clear line.

Every registry call goes through :func:`client` (connects once per tracking URI, failing fast
when an HTTP server is away) and the lookups here, which name what exists when something
does not. Imports MLflow only.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rnnops import settings
from rnnops.contract import ONNX_FILE
from rnnops.errors import RnnopsError

if TYPE_CHECKING:  # MLflow is imported where it is used: `import rnnops.registry.store` stays light
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

_connected: str | None = None

# No tqdm bars from MLflow's artifact downloads: serving resolves models and its logs would
# fill with them. (Set before any download; a user can still turn them back on.)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

# Our names are plain: letters, digits, '.', '_', '-' (MLflow forbids '/' and ':'; quotes would
# break its filter strings).
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def client() -> MlflowClient:
    """An ``MlflowClient`` on the configured tracking/registry URI (connecting on first use)."""
    global _connected
    from mlflow import MlflowClient

    from rnnops.tracking import connect

    uri = settings.tracking_uri()
    registry = os.environ.get("MLFLOW_REGISTRY_URI") or uri
    key = f"{uri}|{registry}"
    if _connected != key:
        connect()
        _connected = key
    # Explicit URIs: whatever another module did to MLflow's global URI, we talk to this store.
    return MlflowClient(tracking_uri=uri, registry_uri=registry)


@contextlib.contextmanager
def mlflow_errors(what: str) -> Iterator[None]:
    """Turn an unexpected MLflow/network failure inside ``what`` into a one-line RnnopsError."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except RnnopsError:
        raise
    except MlflowException as exc:
        msg = " ".join(str(getattr(exc, "message", exc)).split())  # one line, whatever MLflow wrote
        msg = msg if len(msg) <= 400 else msg[:400] + "…"
        if _looks_unreachable(msg):
            raise RnnopsError(
                f"MLflow registry at {settings.tracking_uri()} is unreachable while {what}: {msg}"
            ) from None
        raise RnnopsError(f"MLflow error while {what}: {msg}") from None
    except OSError as exc:  # requests' ConnectionError is an OSError
        raise RnnopsError(f"MLflow registry at {settings.tracking_uri()} is unreachable while {what}: {exc}") from None


def _looks_unreachable(msg: str) -> bool:
    return any(s in msg for s in ("Max retries exceeded", "Connection refused", "Failed to establish", "timed out"))


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or "")


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise RnnopsError(f"invalid registered model name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


def registered_names(c: MlflowClient) -> list[str]:
    return sorted(rm.name for rm in c.search_registered_models(max_results=1000))


def get_registered_model(c: MlflowClient, name: str) -> RegisteredModel:
    """The registered model ``name``, or an error that lists the names that do exist."""
    from mlflow.exceptions import MlflowException

    check_name(name)
    with mlflow_errors(f"reading registered model {name!r}"):
        try:
            return c.get_registered_model(name)
        except MlflowException as exc:
            if _code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
            names = registered_names(c)
    listed = ", ".join(names) if names else "none yet; `rnnops registry register RUN_ID` creates one"
    raise RnnopsError(f"no registered model {name!r} in {settings.tracking_uri()} (registered: {listed})")


def version_numbers(c: MlflowClient, name: str) -> list[int]:
    return sorted(int(v.version) for v in search_versions(c, name))


def search_versions(c: MlflowClient, name: str) -> list[ModelVersion]:
    check_name(name)
    with mlflow_errors(f"listing versions of {name!r}"):
        return list(c.search_model_versions(f"name='{name}'", max_results=10000))


def get_version(c: MlflowClient, name: str, version: int | str) -> ModelVersion:
    """Model version ``version`` of ``name``; an unknown one lists the versions that exist."""
    from mlflow.exceptions import MlflowException

    try:
        number = int(version)
    except (TypeError, ValueError):
        raise RnnopsError(f"version must be a number, got {version!r}") from None
    with mlflow_errors(f"reading {name} version {number}"):
        try:
            return c.get_model_version(name, str(number))
        except MlflowException as exc:
            if _code(exc) != "RESOURCE_DOES_NOT_EXIST":
                raise
    get_registered_model(c, name)  # an unknown name is the better message
    known = ", ".join(map(str, version_numbers(c, name))) or "none"
    raise RnnopsError(f"{name} has no version {number} (versions: {known})")


def alias_version(rm: RegisteredModel, alias: str) -> int | None:
    """The version ``alias`` points at on registered model ``rm``, or None."""
    aliases = rm.aliases or {}
    if isinstance(aliases, dict):
        v = aliases.get(alias)
    else:  # older entity shape: a list of RegisteredModelAlias
        v = next((a.version for a in aliases if a.alias == alias), None)
    return int(v) if v is not None else None


def aliases_of(rm: RegisteredModel) -> dict[str, int]:
    aliases = rm.aliases or {}
    if isinstance(aliases, dict):
        return {k: int(v) for k, v in aliases.items()}
    return {a.alias: int(a.version) for a in aliases}


def download_onnx(c: MlflowClient, name: str, version: int, dst: Path, file: str = ONNX_FILE) -> Path:
    """Download one file of a model version (``model.onnx``, or ``model.int8.onnx`` beside it) into folder ``dst``."""
    import mlflow

    dst.mkdir(parents=True, exist_ok=True)
    with mlflow_errors(f"downloading {name} version {version}"):
        base = c.get_model_version_download_uri(name, str(version))
        try:
            return Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{base.rstrip('/')}/{file}", dst_path=str(dst), tracking_uri=settings.tracking_uri()
                )
            )
        except OSError as exc:
            raise RnnopsError(
                f"{name} version {version} has no {file} at {base}: is it an mlflow.onnx model "
                f"logged by `rnnops export`? ({exc})"
            ) from None


def download_logged_onnx(c: MlflowClient, model_uri: str, dst: Path, file: str = ONNX_FILE) -> Path:
    """Download one file (default ``model.onnx``) of a logged model (``models:/m-…``) or a ``runs:/`` model URI."""
    import mlflow

    dst.mkdir(parents=True, exist_ok=True)
    with mlflow_errors(f"downloading {model_uri}"):
        base = logged_model_artifacts(c, model_uri)
        try:
            return Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{base.rstrip('/')}/{file}", dst_path=str(dst), tracking_uri=settings.tracking_uri()
                )
            )
        except OSError as exc:
            raise RnnopsError(
                f"{model_uri} has no {file}: is it an mlflow.onnx model logged by `rnnops export`? ({exc})"
            ) from None


def logged_model_id(model_uri: str) -> str | None:
    """``m-…`` for a ``models:/m-…`` logged-model URI, else None."""
    rest = model_uri.removeprefix("models:/")
    if model_uri.startswith("models:/") and rest.startswith("m-") and "/" not in rest.rstrip("/"):
        return rest.rstrip("/")
    return None


def logged_model_artifacts(c: MlflowClient, model_uri: str) -> str:
    """The artifact location of a logged model, from its ``models:/m-…`` or ``runs:/`` URI."""
    from mlflow.exceptions import MlflowException

    model_id = logged_model_id(model_uri)
    if model_id is None:
        return model_uri  # runs:/… and plain artifact URIs download as they are
    try:
        return str(c.get_logged_model(model_id).artifact_location)
    except MlflowException as exc:
        if _code(exc) == "RESOURCE_DOES_NOT_EXIST":
            raise RnnopsError(f"logged model {model_uri} does not exist in {settings.tracking_uri()}") from None
        raise
