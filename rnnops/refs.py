"""The one grammar for a model reference, used by ``rnnops serve``, ``rnnops forecast``, the
registry and the BentoML store alike.

A reference is one of:

- ``NAME@ALIAS`` / ``models:/NAME@ALIAS``: the version an alias points at (watched by serving);
  ``NAME@3`` is version 3;
- ``NAME/3`` / ``models:/NAME/3``: one pinned registry version;
- ``NAME``: ``NAME@champion``;
- ``path/to/model.onnx`` (or any existing file): a local ONNX file, its sha256 its version;
- ``bentoml:NAME[:VERSION]``: a model saved in the BentoML model store (``rnnops registry pull``).

:func:`parse_ref` reads the text (no I/O beyond checking whether a path exists);
:func:`resolve_ref` turns a parsed reference into a verified local file plus its metadata.
Serving prefixes a reference with ``SERVED_NAME=`` to choose the name clients use
(:func:`parse_served`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from rnnops import contract as C
from rnnops.errors import RnnopsError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
GRAMMAR = ("NAME@ALIAS, NAME@VERSION, NAME/VERSION, models:/NAME@ALIAS, models:/NAME/VERSION, "
           "a path to a .onnx file, or bentoml:NAME[:VERSION]")


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference; exactly one of the source-specific fields is meaningful."""

    source: str  # "registry" | "file" | "bentoml"
    text: str  # as the user wrote it
    name: str  # registry name, BentoML model name, or the file's default served name
    version: int | None = None  # registry: a pinned version
    alias: str | None = None  # registry: the alias (watched for hot reload)
    path: Path | None = None  # file: absolute path
    tag: str | None = None  # bentoml: the store tag, NAME[:VERSION]

    @property
    def target(self) -> str:
        """The canonical form: ``name@alias``, ``name/3``, an absolute path or a BentoML tag."""
        if self.source == "file":
            return str(self.path)
        if self.source == "bentoml":
            return str(self.tag)
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"

    @property
    def watched(self) -> bool:
        """Can what it points at change under the same reference (an alias, a file)?"""
        return self.source == "file" or (self.source == "registry" and self.alias is not None)


def bad_ref(text: str, why: str = "") -> RnnopsError:
    """The one message for a reference that does not parse."""
    return RnnopsError(f"cannot read model reference {text!r}{': ' + why if why else ''}; use {GRAMMAR}")


def parse_ref(text: str, default_alias: str = C.ALIAS_CHAMPION) -> ModelRef:
    """Parse a model reference (see the module docstring); raises :class:`RnnopsError` if it is not one."""
    raw = (text or "").strip()
    if not raw:
        raise bad_ref(text, "it is empty")
    if raw.startswith("bentoml:"):
        tag = raw[len("bentoml:"):]
        name, _, version = tag.partition(":")
        if not NAME.match(name) or (version and not NAME.match(version)):
            raise bad_ref(text, "a BentoML tag is NAME or NAME:VERSION")
        return ModelRef("bentoml", raw, name, tag=tag)
    if raw.endswith(".onnx") or (os.path.exists(raw) and not raw.startswith("models:/")):
        p = Path(raw).expanduser().resolve()
        default = p.parent.name if p.stem == "model" and p.parent.name else p.stem
        return ModelRef("file", raw, default, path=p)
    body = raw.removeprefix("models:/").strip("/")
    if raw.startswith("models:/") and body.startswith("m-") and "@" not in body and "/" not in body:
        raise RnnopsError(f"{raw} is a logged model, not a registered one: register it first "
                          "(`rnnops registry register RUN_ID`) and use NAME@ALIAS or NAME/VERSION")
    if "@" in body:
        name, _, tail = body.partition("@")
    elif "/" in body:
        name, _, tail = body.partition("/")
        if tail and not tail.isdigit():
            raise bad_ref(text, f"the part after '/' must be a version number, not {tail!r}")
    else:
        name, tail = body, default_alias
    if not name or not tail or "/" in tail or "@" in tail or not NAME.match(name) or not NAME.match(tail):
        raise bad_ref(text)
    if tail.isdigit():
        return ModelRef("registry", raw, name, version=int(tail))
    return ModelRef("registry", raw, name, alias=tail)


def parse_served(spec: str, what: str = "RNNOPS_MODELS") -> list[tuple[str, ModelRef]]:
    """``[SERVED=]REF, ...`` -> ``[(served name, ref)]``; served names must be unique."""
    out: list[tuple[str, ModelRef]] = []
    for raw in (p.strip() for p in (spec or "").split(",")):
        if not raw:
            continue
        served = None
        head, sep, rest = raw.partition("=")
        if sep and NAME.match(head):
            served, raw = head, rest.strip()
        try:
            ref = parse_ref(raw)
        except RnnopsError as exc:
            raise RnnopsError(f"{what}: {exc}") from None
        out.append((served or ref.name, ref))
    names = [s for s, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RnnopsError(f"{what} serves {', '.join(dup)} twice; give one a name: other-name=REF")
    if not out:
        raise RnnopsError(f"{what} is empty: name at least one model (e.g. char-rnn@champion)")
    return out


@dataclass(frozen=True)
class LocalModel:
    """A reference resolved to a verified local ONNX file."""

    ref: ModelRef
    name: str
    version: str  # registry version number, BentoML registry_version label or tag, or sha256[:12]
    path: Path
    sha256: str
    metadata: dict  # decoded rnnops.* metadata
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
    ``model.int8.onnx`` (:func:`rnnops.registry.resolve.resolve`), the one stored in the BentoML
    model, or for a file ``X.onnx`` the file ``X.int8.onnx`` beside it (what ``rnnops export``
    leaves in its folder when the int8 gates kept it)."""
    from rnnops.registry.onnx_file import read_metadata
    from rnnops.util import sha256_file

    if isinstance(ref, str):
        ref = parse_ref(ref)
    if ref.source == "file":
        if not ref.path.is_file():
            raise RnnopsError(f"{ref.path}: no such ONNX file")
        sha = sha256 or sha256_file(ref.path)
        sibling = int8_sibling(ref.path) if int8 else None
        return LocalModel(ref, ref.name, sha[:12], ref.path, sha, read_metadata(ref.path), int8_path=sibling,
                          int8_sha256=sha256_file(sibling) if sibling else None)
    if ref.source == "bentoml":
        return _resolve_bentoml(ref, int8)
    from rnnops.registry.resolve import resolve  # connects to the configured store on first use

    r = resolve(ref.target, int8=int8)
    return LocalModel(ref, r.name, str(r.version), Path(r.path), r.sha256, r.metadata, r.alias or ref.alias,
                      r.source_run, r.int8_path, r.int8_sha256)


INT8_SUFFIX = ".int8.onnx"  # model.onnx -> model.int8.onnx (contract.INT8_FILE)


def int8_sibling(path: Path) -> Path | None:
    """``X.int8.onnx`` beside an fp32 file ``X.onnx``, if it exists."""
    if path.suffix != ".onnx" or path.name.endswith(INT8_SUFFIX):
        return None
    sibling = path.with_name(path.stem + INT8_SUFFIX)
    return sibling if sibling.is_file() else None


def _resolve_bentoml(ref: ModelRef, int8: bool = True) -> LocalModel:
    from rnnops.registry.onnx_file import read_metadata
    from rnnops.util import sha256_file

    try:
        import bentoml
    except ImportError:
        raise RnnopsError(f"{ref.text} needs BentoML: pip install 'rnnops[serve]'") from None
    try:
        m = bentoml.models.get(ref.tag)
    except Exception as exc:  # BentoML raises its own NotFound types
        raise RnnopsError(f"the BentoML model store has no {ref.tag!r}: {exc} (`rnnops registry pull NAME@ALIAS` "
                          "imports one)") from None
    files = sorted(p for p in Path(m.path).rglob("*.onnx") if p.name != C.INT8_FILE)
    if not files:
        raise RnnopsError(f"BentoML model {m.tag} holds no .onnx file")
    main = next((p for p in files if p.name == C.ONNX_FILE), files[0])
    labels = dict(m.info.labels or {})
    sha = sha256_file(main)
    if labels.get("sha256") and labels["sha256"] != sha:
        raise RnnopsError(f"BentoML model {m.tag}: its ONNX hashes to {sha[:16]}…, not the {labels['sha256'][:16]}… "
                          "it was stored with; refusing it")
    int8_path = int8_sha = None
    if int8 and labels.get("int8_sha256"):
        int8_path = main.with_name(C.INT8_FILE)
        int8_sha = sha256_file(int8_path) if int8_path.is_file() else "missing"
        if int8_sha != labels["int8_sha256"]:
            raise RnnopsError(f"BentoML model {m.tag}: its {C.INT8_FILE} hashes to {int8_sha[:16]}…, not the "
                              f"{labels['int8_sha256'][:16]}… it was stored with; refusing it")
    version = labels.get("registry_version") or str(m.tag.version)
    return LocalModel(ref, ref.name, version, main, sha, read_metadata(main), source_run=labels.get("source_run") or None,
                      int8_path=int8_path, int8_sha256=int8_sha)
