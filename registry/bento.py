"""``rnnops registry pull``: put a verified registry version into the BentoML model store.

The Bento model holds ``model.onnx`` and, when the version carries one, ``model.int8.onnx`` (the
files resolve verified) with labels and metadata that say where they came from (registry name,
version, sha256 of each, kind, cell), so a Bento built from ``char-rnn:latest`` serves exactly
what the registry calls that version. The store is
``$BENTOML_HOME/models`` (BentoML's default ``~/bentoml`` when unset).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

from rnnops.contract import INT8_FILE, ONNX_FILE
from rnnops.errors import RnnopsError
from rnnops.registry.resolve import ResolvedModel, resolve
from rnnops.util import sha256_file


@dataclass
class PulledModel:
    tag: str  # BentoML tag, e.g. "char-rnn:v3-1f2e3d4c5b6a"
    path: str  # folder of the model in the BentoML store
    resolved: ResolvedModel
    created: bool  # False when the store already held this exact file


def bento_model_name(name: str) -> str:
    """A valid BentoML model name: lowercase alphanumerics, '-', '_', '.', at most 63 characters."""
    clean = re.sub(r"[^a-z0-9._-]+", "-", name.lower())
    clean = re.sub(r"^[^a-z0-9]+|[^a-z0-9]+$", "", clean)[:63].rstrip("._-")
    if not clean:
        raise RnnopsError(f"cannot make a BentoML model name from {name!r}")
    return clean


def pull(ref: str, bento_name: str | None = None) -> PulledModel:
    """Resolve ``ref`` (sha256-verified) and import its ONNX into the BentoML model store."""
    resolved = resolve(ref)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")  # no usage telemetry from a CLI import
    try:
        import bentoml
        from bentoml.exceptions import NotFound
    except ImportError:
        raise RnnopsError("`registry pull` needs BentoML: pip install 'rnnops[serve]'") from None

    name = bento_model_name(bento_name or resolved.name)
    tag = f"{name}:v{resolved.version}-{resolved.sha256[:12]}"
    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        existing = None
    files = {ONNX_FILE: (resolved.path, resolved.sha256)}
    if resolved.int8_path and resolved.int8_sha256:
        files[INT8_FILE] = (resolved.int8_path, resolved.int8_sha256)
    if existing is not None:
        if all(_holds(existing.path_of(f), sha) for f, (_, sha) in files.items()):
            return PulledModel(str(existing.tag), existing.path, resolved, created=False)
        bentoml.models.delete(tag)  # a damaged or incomplete copy: replace it

    labels = {
        "registry_name": resolved.name,
        "registry_version": str(resolved.version),
        "sha256": resolved.sha256,
        "int8_sha256": resolved.int8_sha256 or "",
        "kind": str(resolved.metadata.get("kind", "")),
        "cell": str(resolved.metadata.get("cell", "")),
        "source_run": resolved.source_run or "",
    }
    metadata = {
        "registry_uri": resolved.uri,
        "alias": resolved.alias or "",
        "sha256": resolved.sha256,
        "onnx_file": ONNX_FILE,
        "rnnops": _bento_safe(resolved.metadata),
    }
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
        for f, (src, _) in files.items():
            shutil.copyfile(src, model.path_of(f))
    stored = bentoml.models.get(tag)
    for f, (_, sha) in files.items():
        if not _holds(stored.path_of(f), sha):
            bentoml.models.delete(tag)
            raise RnnopsError(
                f"the copy of {resolved.uri}'s {f} in the BentoML store does not hash to {sha[:16]}…; removed it"
            )
    return PulledModel(str(stored.tag), stored.path, resolved, created=True)


def _holds(path: str, sha: str) -> bool:
    return os.path.isfile(path) and sha256_file(path) == sha


def _bento_safe(value: Any) -> Any:
    """BentoML metadata takes no None: drop None fields, keep everything else as is."""
    if isinstance(value, dict):
        return {str(k): _bento_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_bento_safe(v) if v is not None else "" for v in value]
    return value
