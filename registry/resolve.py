"""Turn a model reference (``char-rnn@champion``, ``@3``, a ``models:/`` URI, a ``.onnx`` file, a
BentoML tag: the grammar of :mod:`rnnops.refs`) into verified local ONNX files.

What serving and batch jobs call: :func:`resolve_ref` for any reference, :func:`resolve` for a
registry one. A version carries ``model.onnx`` and, when the export's int8 gates kept it,
``model.int8.onnx`` beside it. Each file is cached under ``<RNNOPS_CACHE>/models/<name>/<version>/``
and hashed against its tag (``rnnops.onnx_sha256``, ``rnnops.int8_sha256``) on every call, cache
hit or not: a corrupted cached copy is fetched again once, and a file that still does not match is
refused (the whole resolve fails: a corrupt int8 file is never served, nor silently swapped for
fp32). Nothing unverified is ever returned. MLflow + stdlib (+ onnxruntime on a fresh download,
to read the metadata; BentoML for a ``bentoml:`` reference); never torch.

Cost of a cache hit: one registry request (the version and its tags) and one sha256 per file.
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
from typing import TYPE_CHECKING, Any

from rnnops import contract as C
from rnnops import refs, settings
from rnnops.contract import ONNX_FILE
from rnnops.errors import RnnopsError
from rnnops.onnx_metadata import Metadata, read_metadata
from rnnops.refs import ModelRef, int8_sibling
from rnnops.registry import store
from rnnops.util import sha256_file

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

SIDECAR = "rnnops.json"  # beside the cached model.onnx: sha256 + decoded metadata


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: int
    alias: str | None  # the alias the ref named, if any
    path: Path  # a local .onnx whose sha256 matched the registry's tag
    sha256: str
    metadata: Metadata  # rnnops.* metadata_props, decoded (kind, cell, vocab, state names, ...)
    source_run: str | None
    int8_path: Path | None = None  # the verified model.int8.onnx; None: the version has none (or not asked for)
    int8_sha256: str | None = None

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


def resolve(ref: str, default_alias: str = C.ALIAS_CHAMPION, int8: bool = True) -> ResolvedModel:
    """Local, sha256-verified files for ``ref`` plus its metadata (see the module docstring).

    ``int8``: also fetch and verify the version's ``model.int8.onnx`` when it carries one (serving
    at ``RNNOPS_PRECISION=fp32`` passes False and never downloads it). Every file is checked the
    same way: a mismatch is fetched again once, then refused.
    """
    name, version, alias = parse_ref(ref, default_alias)
    c = store.client()
    mv = _lookup(c, name, version, alias)
    version = int(mv.version)
    tags = mv.tags or {}
    sha = tags.get(C.VTAG_ONNX_SHA256)
    if not sha:
        raise RnnopsError(
            f"{name} version {version} has no {C.VTAG_ONNX_SHA256} tag (not registered by rnnops): "
            "refusing to serve a file that cannot be verified"
        )
    int8_sha = tags.get(C.VTAG_INT8_SHA256) if int8 else None
    try:
        folder = cache_folder(name, version)
    except OSError as exc:
        raise RnnopsError(f"cannot create the model cache: {exc}; point RNNOPS_CACHE at a writable folder") from None
    try:
        _verified(c, name, version, folder, ONNX_FILE, sha)
        info = _sidecar(folder, sha)
        if info is None:
            info = _write_sidecar(
                folder, sha, read_metadata(folder / ONNX_FILE), tags.get(C.VTAG_SOURCE_RUN), name, version
            )
        if int8_sha:
            _verified(c, name, version, folder, C.INT8_FILE, int8_sha)
    except OSError as exc:
        raise RnnopsError(
            f"cannot write the model cache {folder}: {exc}; point RNNOPS_CACHE at a writable folder"
        ) from None
    return ResolvedModel(
        name=name,
        version=version,
        alias=alias,
        path=folder / ONNX_FILE,
        sha256=sha,
        metadata=info["metadata"],
        source_run=info.get("source_run") or tags.get(C.VTAG_SOURCE_RUN),
        int8_path=folder / C.INT8_FILE if int8_sha else None,
        int8_sha256=int8_sha,
    )


def source_run(ref: str, default_alias: str = C.ALIAS_CHAMPION) -> str:
    """The training run a registry version was exported from (``NAME@ALIAS``, ``NAME/3``, …): what
    ``rnnops train forecast --init-from`` fine-tunes. One registry request; nothing is downloaded."""
    name, version, alias = parse_ref(ref, default_alias)
    mv = _lookup(store.client(), name, version, alias)
    run: str | None = (mv.tags or {}).get(C.VTAG_SOURCE_RUN) or mv.run_id
    if not run:
        raise RnnopsError(f"{name} version {mv.version} names no source run; give the training run's id instead")
    return run


def cache_folder(name: str, version: int) -> Path:
    return settings.cache_dir() / "models" / store.check_name(name) / str(int(version))


def _lookup(c: MlflowClient, name: str, version: int | None, alias: str | None) -> ModelVersion:
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


def _verified(c: MlflowClient, name: str, version: int, folder: Path, file: str, sha: str) -> Path:
    """``folder/file`` hashing to ``sha``: the cached copy if it does, else downloaded (into a
    temporary folder, then renamed into place: concurrent workers never see half a file) and
    verified; a download that does not match is refused, never installed."""
    path = folder / file
    if path.is_file() and sha256_file(path) == sha:
        return path
    if path.exists():
        log.warning("cached %s of %s version %s does not match its sha256; fetching it again", file, name, version)
        path.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder))
    try:
        got = store.download_onnx(c, name, version, tmp, file)
        actual = sha256_file(got)
        if actual != sha:
            raise RnnopsError(
                f"{name} version {version}: the registry's {file} hashes to {actual[:16]}…, "
                f"not the registered {sha[:16]}…; refusing it (the artifact changed after registration)"
            )
        os.replace(got, path)
        return path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sidecar(folder: Path, sha: str) -> dict[str, Any] | None:
    """The cached metadata of the ``model.onnx`` hashing to ``sha``, else None."""
    try:
        info = json.loads((folder / SIDECAR).read_text())
        return info if info.get("sha256") == sha else None
    except (OSError, ValueError):
        return None


def store_in_cache(
    name: str,
    version: int,
    path: Path,
    sha: str,
    metadata: Metadata,
    source_run: str | None,
    int8_path: Path | None = None,
    int8_sha256: str | None = None,
) -> Path:
    """Copy already-verified files into the cache (register does this so that the first resolve hits)."""
    folder = cache_folder(name, version)
    folder.mkdir(parents=True, exist_ok=True)
    files = [(path, ONNX_FILE, sha)] + ([(int8_path, C.INT8_FILE, int8_sha256)] if int8_path and int8_sha256 else [])
    tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=folder))
    try:
        for src, file, want in files:
            copy = tmp / file
            shutil.copyfile(src, copy)
            if sha256_file(copy) != want:
                raise OSError(f"copy of {src} does not hash to {want}")
            os.replace(copy, folder / file)
        _write_sidecar(folder, sha, metadata, source_run, name, version)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / ONNX_FILE


def _write_sidecar(
    folder: Path, sha: str, metadata: Metadata, source_run: str | None, name: str, version: int
) -> dict[str, Any]:
    """The decoded metadata of the verified ``model.onnx`` beside it (by rename: never half a file)."""
    info = {"name": name, "version": int(version), "sha256": sha, "metadata": metadata, "source_run": source_run}
    side_tmp = folder / (SIDECAR + f".{os.getpid()}.tmp")
    side_tmp.write_text(json.dumps(info))
    os.replace(side_tmp, folder / SIDECAR)
    return info


# ---------------------------------------------------------------- any reference: registry, file, BentoML


@dataclass(frozen=True)
class LocalModel:
    """A reference resolved to a verified local ONNX file."""

    ref: ModelRef
    name: str
    version: str  # registry version number, BentoML registry_version label or tag, or sha256[:12]
    path: Path
    sha256: str
    metadata: Metadata  # decoded rnnops.* metadata
    alias: str | None = None
    source_run: str | None = None
    int8_path: Path | None = None  # the verified int8 variant (model.int8.onnx), if the model has one
    int8_sha256: str | None = None

    @property
    def registry_version(self) -> int | None:
        return int(self.version) if self.ref.source == "registry" else None


def resolve_ref(ref: ModelRef | str, sha256: str | None = None, int8: bool = True) -> LocalModel:
    """A verified local file for ``ref``: registry versions against their sha256 tag (cached),
    BentoML models against the sha256 they were stored with, files hashed as they are
    (``sha256`` when the caller already hashed it). Blocking (registry calls, hashing).

    ``int8``: also find the model's int8 variant, verified the same way: the registry version's
    ``model.int8.onnx`` (:func:`resolve`), the one stored in the BentoML
    model, or for a file ``X.onnx`` the file ``X.int8.onnx`` beside it (what ``rnnops export``
    leaves in its folder when the int8 gates kept it)."""
    if isinstance(ref, str):
        ref = refs.parse_ref(ref)
    if ref.path is not None:  # a file reference
        if not ref.path.is_file():
            raise RnnopsError(f"{ref.path}: no such ONNX file")
        sha = sha256 or sha256_file(ref.path)
        sibling = int8_sibling(ref.path) if int8 else None
        return LocalModel(
            ref,
            ref.name,
            sha[:12],
            ref.path,
            sha,
            read_metadata(ref.path),
            int8_path=sibling,
            int8_sha256=sha256_file(sibling) if sibling else None,
        )
    if ref.source == "bentoml":
        return _resolve_bentoml(ref, int8)
    r = resolve(ref.target, int8=int8)
    return LocalModel(
        ref,
        r.name,
        str(r.version),
        Path(r.path),
        r.sha256,
        r.metadata,
        r.alias or ref.alias,
        r.source_run,
        r.int8_path,
        r.int8_sha256,
    )


def _resolve_bentoml(ref: ModelRef, int8: bool = True) -> LocalModel:
    try:
        import bentoml
    except ImportError:
        raise RnnopsError(f"{ref.text} needs BentoML: pip install 'rnnops[serve]'") from None
    try:
        m = bentoml.models.get(ref.tag)
    except Exception as exc:  # BentoML raises its own NotFound types
        raise RnnopsError(
            f"the BentoML model store has no {ref.tag!r}: {exc} (`rnnops registry pull NAME@ALIAS` imports one)"
        ) from None
    files = sorted(p for p in Path(m.path).rglob("*.onnx") if p.name != C.INT8_FILE)
    if not files:
        raise RnnopsError(f"BentoML model {m.tag} holds no .onnx file")
    main = next((p for p in files if p.name == C.ONNX_FILE), files[0])
    labels = dict(m.info.labels or {})
    sha = sha256_file(main)
    if labels.get("sha256") and labels["sha256"] != sha:
        raise RnnopsError(
            f"BentoML model {m.tag}: its ONNX hashes to {sha[:16]}…, not the {labels['sha256'][:16]}… "
            "it was stored with; refusing it"
        )
    int8_path = int8_sha = None
    if int8 and labels.get("int8_sha256"):
        int8_path = main.with_name(C.INT8_FILE)
        int8_sha = sha256_file(int8_path) if int8_path.is_file() else "missing"
        if int8_sha != labels["int8_sha256"]:
            raise RnnopsError(
                f"BentoML model {m.tag}: its {C.INT8_FILE} hashes to {int8_sha[:16]}…, not the "
                f"{labels['int8_sha256'][:16]}… it was stored with; refusing it"
            )
    version = labels.get("registry_version") or str(m.tag.version)
    return LocalModel(
        ref,
        ref.name,
        version,
        main,
        sha,
        read_metadata(main),
        source_run=labels.get("source_run") or None,
        int8_path=int8_path,
        int8_sha256=int8_sha,
    )
