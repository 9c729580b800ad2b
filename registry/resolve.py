"""Turn ``char-rnn@champion`` (or ``@3``, or a ``models:/`` URI) into a verified local ONNX file.

What serving calls. The file is cached under ``<RNNOPS_CACHE>/models/<name>/<version>/`` and
hashed against the version's ``rnnops.onnx_sha256`` tag on every call, cache hit or not: a
corrupted cached copy is fetched again once, and a file that still does not match is refused.
Nothing unverified is ever returned. MLflow + stdlib (+ onnxruntime on a fresh download, to read
the metadata); never torch.

Cost of a cache hit: one registry request (the version and its tags) and one sha256 of the file.
Hot-reload polls should call :func:`current_version` (one request) and resolve only on change.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rnnops import contract as C
from rnnops import refs
from rnnops import settings
from rnnops.errors import RnnopsError
from rnnops.registry import store
from rnnops.registry.onnx_file import ONNX_FILE, read_metadata, sha256_file

log = logging.getLogger(__name__)

SIDECAR = "rnnops.json"  # beside the cached model.onnx: sha256 + decoded metadata


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: int
    alias: str | None  # the alias the ref named, if any
    path: Path  # a local .onnx whose sha256 matched the registry's tag
    sha256: str
    metadata: dict  # rnnops.* metadata_props, decoded (kind, cell, vocab, state names, ...)
    source_run: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def kind(self) -> str | None:
        return self.metadata.get("kind")


def parse_ref(ref: str, default_alias: str = C.ALIAS_CHAMPION) -> tuple[str, int | None, str | None]:
    """``(name, version, alias)`` of a registry reference (the grammar is :mod:`rnnops.refs`);
    exactly one of version / alias is set, a bare name means ``default_alias``."""
    parsed = refs.parse_ref(ref, default_alias)
    if parsed.source != "registry":
        raise refs.bad_ref(ref, f"a {parsed.source} reference names no registry version")
    store.check_name(parsed.name)
    return parsed.name, parsed.version, parsed.alias


def current_version(name: str, alias: str = C.ALIAS_CHAMPION) -> int | None:
    """The version ``alias`` points at now (None if unset): one cheap request, for reload polls."""
    c = store.client()
    return store.alias_version(store.get_registered_model(c, name), alias)


def resolve(ref: str, default_alias: str = C.ALIAS_CHAMPION) -> ResolvedModel:
    """A local, sha256-verified ONNX for ``ref`` plus its metadata (see the module docstring)."""
    name, version, alias = parse_ref(ref, default_alias)
    c = store.client()
    mv = _lookup(c, name, version, alias)
    version = int(mv.version)
    tags = mv.tags or {}
    sha = tags.get(C.VTAG_ONNX_SHA256)
    if not sha:
        raise RnnopsError(f"{name} version {version} has no {C.VTAG_ONNX_SHA256} tag (not registered by rnnops): "
                          "refusing to serve a file that cannot be verified")
    try:
        folder = cache_folder(name, version)
    except OSError as exc:
        raise RnnopsError(f"cannot create the model cache: {exc}; point RNNOPS_CACHE at a writable folder") from None
    hit = _cached(folder, sha)
    if hit is None:
        try:
            if (folder / ONNX_FILE).exists():
                log.warning("cached %s version %s does not match its sha256; fetching it again", name, version)
                (folder / SIDECAR).unlink(missing_ok=True)
                (folder / ONNX_FILE).unlink(missing_ok=True)
            hit = _fetch(c, name, version, sha, folder, tags.get(C.VTAG_SOURCE_RUN))
        except OSError as exc:
            raise RnnopsError(f"cannot write the model cache {folder}: {exc}; point RNNOPS_CACHE at a writable folder") from None
    return ResolvedModel(name=name, version=version, alias=alias, path=folder / ONNX_FILE, sha256=sha,
                         metadata=hit["metadata"], source_run=hit.get("source_run") or tags.get(C.VTAG_SOURCE_RUN))


def cache_folder(name: str, version: int) -> Path:
    return settings.cache_dir() / "models" / store.check_name(name) / str(int(version))


def _lookup(c, name: str, version: int | None, alias: str | None):
    from mlflow.exceptions import MlflowException

    if version is not None:
        return store.get_version(c, name, version)
    if alias == "latest":
        numbers = store.version_numbers(c, name)
        if not numbers:
            store.get_registered_model(c, name)
            raise RnnopsError(f"{name} has no versions yet")
        return store.get_version(c, name, numbers[-1])
    with store.mlflow_errors(f"resolving {name}@{alias}"):
        try:
            return c.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            if store._code(exc) not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
    rm = store.get_registered_model(c, name)  # an unknown name is the better message
    have = ", ".join(f"{a}->{v}" for a, v in sorted(store.aliases_of(rm).items())) or "none"
    hint = f"; promote a version with `rnnops registry promote {name} VERSION --alias {alias}`"
    raise RnnopsError(f"{name} has no alias {alias!r} (aliases: {have}){hint}")


def _cached(folder: Path, sha: str) -> dict | None:
    """The sidecar of a cached copy whose bytes hash to ``sha``, else None."""
    path, side = folder / ONNX_FILE, folder / SIDECAR
    try:
        info = json.loads(side.read_text())
        if info.get("sha256") != sha or sha256_file(path) != sha:
            return None
        return info
    except (OSError, ValueError):
        return None


def _fetch(c, name: str, version: int, sha: str, folder: Path, source_run: str | None) -> dict:
    """Download, verify and install one version into the cache; refuse a mismatch."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder))
    try:
        path = store.download_onnx(c, name, version, tmp)
        actual = sha256_file(path)
        if actual != sha:
            raise RnnopsError(f"{name} version {version}: the registry's model.onnx hashes to {actual[:16]}…, "
                              f"not the registered {sha[:16]}…; refusing it (the artifact changed after registration)")
        return _install(folder, path, sha, read_metadata(path), source_run, name, version)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def store_in_cache(name: str, version: int, path: Path, sha: str, metadata: dict, source_run: str | None) -> Path:
    """Copy an already-verified file into the cache (register does this so that the first resolve hits)."""
    folder = cache_folder(name, version)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=folder))
    try:
        copy = tmp / ONNX_FILE
        shutil.copyfile(path, copy)
        if sha256_file(copy) != sha:
            raise OSError(f"copy of {path} does not hash to {sha}")
        _install(folder, copy, sha, metadata, source_run, name, version)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / ONNX_FILE


def _install(folder: Path, path: Path, sha: str, metadata: dict, source_run: str | None, name: str, version: int) -> dict:
    """Atomically place the verified file, then its sidecar (each by rename: readers never see half a file)."""
    info = {"name": name, "version": int(version), "sha256": sha, "metadata": metadata, "source_run": source_run}
    os.replace(path, folder / ONNX_FILE)
    side_tmp = path.with_name(SIDECAR + ".tmp")
    side_tmp.write_text(json.dumps(info))
    os.replace(side_tmp, folder / SIDECAR)
    return info
