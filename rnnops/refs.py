"""The one grammar for a model reference, used by ``rnnops serve``, ``rnnops forecast``, the
registry and the BentoML store alike.

A reference is one of:

- ``NAME@ALIAS`` / ``models:/NAME@ALIAS``: the version an alias points at (watched by serving);
  ``NAME@3`` is version 3;
- ``NAME/3`` / ``models:/NAME/3``: one pinned registry version;
- ``NAME``: ``NAME@champion``;
- ``path/to/model.onnx`` (or any existing file): a local ONNX file, its sha256 its version;
- ``bentoml:NAME[:VERSION]``: a model saved in the BentoML model store (``rnnops registry pull``).

:func:`parse_ref` reads the text (no I/O beyond checking whether a path exists). Turning a parsed
reference into a verified local file is the registry stage's job
(:func:`rnnops.registry.resolve.resolve_ref`): this module is the shared core and imports no stage.
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
GRAMMAR = (
    "NAME@ALIAS, NAME@VERSION, NAME/VERSION, models:/NAME@ALIAS, models:/NAME/VERSION, "
    "a path to a .onnx file, or bentoml:NAME[:VERSION]"
)


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
        tag = raw[len("bentoml:") :]
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
        raise RnnopsError(
            f"{raw} is a logged model, not a registered one: register it first "
            "(`rnnops registry register RUN_ID`) and use NAME@ALIAS or NAME/VERSION"
        )
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


INT8_SUFFIX = ".int8.onnx"  # model.onnx -> model.int8.onnx (contract.INT8_FILE)


def int8_sibling(path: Path) -> Path | None:
    """``X.int8.onnx`` beside an fp32 file ``X.onnx``, if it exists."""
    if path.suffix != ".onnx" or path.name.endswith(INT8_SUFFIX):
        return None
    sibling = path.with_name(path.stem + INT8_SUFFIX)
    return sibling if sibling.is_file() else None
