"""What a model file must pass before onnxruntime opens it (a model file is untrusted input).

onnxruntime follows a tensor's external-data ``location`` wherever it points and reads whatever
file it is given, so these checks run first, on the file's bytes alone:

- it is an ONNX ``ModelProto`` at all (protobuf wire format with an IR version and a graph);
- no tensor anywhere (initializers, sparse initializers, node attributes, subgraphs, functions,
  training graphs) names external data by an absolute path or outside the model's folder
  (``../../etc/passwd``), nor through a symlink that leads out of it;
- the file is not far larger than its own ``rnnops.*`` metadata says the model is
  (:func:`size_bound`): a multi-gigabyte file claiming a 32-unit GRU is refused.

The walk reads the protobuf wire format directly from a memory map: tensor payloads are skipped
by their lengths, never read, so checking a large file costs a scan of its structure, not its
size in memory. (Serving has no ``onnx`` package; onnxruntime exposes no parser before it loads.)
Each failure is one :class:`ModelFileError` line naming the file and what is wrong.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rnnops.errors import RnnopsError


class ModelFileError(RnnopsError):
    """A model file that fails verification; the message is one line."""


# ONNX protobuf field numbers (onnx/onnx.proto) of the messages that can hold a tensor, and what
# each such field holds: the walk descends into these and skips every other field.
_MODEL, _GRAPH, _NODE, _ATTR, _TENSOR, _SPARSE, _FUNCTION, _TRAINING, _ENTRY = range(9)
_CHILDREN = {
    _MODEL: {7: _GRAPH, 14: _ENTRY, 20: _TRAINING, 25: _FUNCTION},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _TENSOR: {13: _ENTRY},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _FUNCTION: {7: _NODE},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _ENTRY: {},
}
_MAX_DEPTH = 64  # subgraphs nest (If/Loop/Scan bodies); a deeper file is not one we export
META_PREFIX = "rnnops."


class _Malformed(Exception):
    pass


def _varint(buf: mmap.mmap | bytes, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise _Malformed("truncated or overlong varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


# The value is an int (varint), None (fixed width) or the (start, end) span of a payload, by wire type:
# Any, as the callers test the wire type before they use it.
def _fields(buf: mmap.mmap | bytes, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value or (start, end) of a length-delimited payload) of one message."""
    i = start
    while i < end:
        key, i = _varint(buf, i, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Malformed("field number 0")
        if wire == 0:
            value, i = _varint(buf, i, end)
            yield field, wire, value
        elif wire == 1 or wire == 5:
            i += 8 if wire == 1 else 4
            if i > end:
                raise _Malformed("truncated fixed-width field")
            yield field, wire, None
        elif wire == 2:
            n, i = _varint(buf, i, end)
            if n > end - i:
                raise _Malformed(f"field {field} claims {n} bytes, past the end of its message")
            yield field, wire, (i, i + n)
            i += n
        else:  # groups (3, 4) are not used by ONNX; 6 and 7 do not exist
            raise _Malformed(f"wire type {wire}")


def _entry(buf: mmap.mmap | bytes, span: tuple[int, int]) -> tuple[str, str]:
    key = value = ""
    for field, wire, v in _fields(buf, *span):
        if wire == 2 and field in (1, 2):
            text = bytes(buf[v[0] : v[1]]).decode("utf-8", "replace")
            key, value = (text, value) if field == 1 else (key, text)
    return key, value


def scan(path: Path) -> tuple[dict[str, str], list[str]]:
    """The model's ``metadata_props`` and every external-data location its tensors name.
    Raises :class:`ModelFileError` when the file is not an ONNX model."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise ModelFileError(f"{path}: cannot load it, not an ONNX model (the file is empty)")
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _scan(buf, size, path)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None


def _scan(buf: mmap.mmap | bytes, size: int, path: Path) -> tuple[dict[str, str], list[str]]:
    meta: dict[str, str] = {}
    locations: list[str] = []
    seen = {"ir_version": False, "graph": False}

    def walk(kind: int, span: tuple[int, int], depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise _Malformed(f"messages nested deeper than {_MAX_DEPTH}")
        external = False
        entries: list[tuple[str, str]] = []
        for field, wire, v in _fields(buf, *span):
            if kind == _MODEL:
                seen["ir_version"] |= field == 1 and wire == 0
                seen["graph"] |= field == 7 and wire == 2
            if kind == _TENSOR and field == 14 and wire == 0:
                external = v == 1  # TensorProto.DataLocation.EXTERNAL
            child = _CHILDREN[kind].get(field)
            if child is None or wire != 2:
                continue
            if child == _ENTRY:
                entries.append(_entry(buf, v))
            else:
                walk(child, v, depth + 1)
        if kind == _MODEL:
            meta.update(entries)
        elif kind == _TENSOR and (external or entries):
            where = dict(entries).get("location")
            if external and not where:
                raise ModelFileError(f"{path}: a tensor stores its data externally but names no location")
            if where is not None:
                locations.append(where)

    try:
        walk(_MODEL, (0, size), 0)
    except _Malformed as exc:
        raise ModelFileError(
            f"{path}: cannot load it, not an ONNX model (its bytes are not an ONNX protobuf: {exc})"
        ) from None
    if not (seen["ir_version"] and seen["graph"]):
        raise ModelFileError(f"{path}: cannot load it, not an ONNX model (no IR version or no graph)")
    return meta, locations


def check_external_data(path: Path, locations: list[str]) -> None:
    """Every external-data location is a relative path that stays inside the model's folder."""
    folder = Path(path).resolve().parent
    for where in locations:
        shown = where if len(where) <= 80 else where[:77] + "..."
        if os.path.isabs(where) or where.startswith(("/", "\\")) or (len(where) > 1 and where[1] == ":"):
            raise ModelFileError(
                f"{path}: external data at the absolute path {shown!r}; a model may only "
                "reference files inside its own folder"
            )
        if "\0" in where:
            raise ModelFileError(f"{path}: an external-data location holds a NUL byte: {shown!r}")
        target = (folder / where).resolve()
        if not target.is_relative_to(folder):
            raise ModelFileError(
                f"{path}: external data at {shown!r} points outside the model's folder; a model "
                "may only reference files inside it"
            )


def size_bound(meta: dict[str, Any]) -> int:
    """The most bytes a model with these ``rnnops.*`` metadata (decoded) may take, generously.

    Parameters of any cell this project exports are under 32 x hidden x (hidden + inputs) per
    layer (an LSTM's four gates, a modern cell's projections and MLP), plus the embedding, the
    head and a forecaster's linear skip; 4 bytes each (fp32; int8 files are smaller), times 4
    for exporter duplication, plus 16 MiB for the graph itself. "Far larger" means past this.
    """

    def number(key: str, default: int = 0) -> int:
        try:
            return max(0, int(meta.get(key) or default))
        except (TypeError, ValueError):
            return default

    hidden, layers = number("hidden_size", 1), number("layers", 1)
    vocab = len(meta.get("vocab") or ())
    features = len(meta.get("feature_names") or ())
    targets = len(meta.get("target_names") or ())
    lookback, horizon = number("lookback"), number("horizon")
    width = hidden + max(vocab, features, 1)
    params = (
        32 * hidden * width * layers
        + 2 * hidden * max(vocab, 1)
        + hidden * horizon * max(targets, 1) * 8
        + lookback * horizon
        + 4 * lookback * features * hidden
    )
    return 4 * 4 * params + (16 << 20)


def check_model_file(path: Path) -> dict[str, str]:
    """Verify ``path`` before onnxruntime opens it (see the module docstring); returns its raw
    ``metadata_props``. Raises :class:`ModelFileError` (one line) when it fails."""
    path = Path(path)
    props, locations = scan(path)
    check_external_data(path, locations)
    meta = {}
    for k, v in props.items():
        if k.startswith(META_PREFIX):
            try:
                meta[k[len(META_PREFIX) :]] = json.loads(v)
            except ValueError:
                raise ModelFileError(f"{path}: metadata {k} is not JSON") from None
    extra = sum(len(k) + len(v) for k, v in props.items())  # a forecaster's embedded sample, say
    size, bound = path.stat().st_size, size_bound(meta) + extra
    if size > bound:
        raise ModelFileError(
            f"{path}: {size / 2**20:.1f} MiB, far more than its metadata describes (a "
            f"{meta.get('layers', '?')}-layer, {meta.get('hidden_size', '?')}-unit model: at most "
            f"{bound / 2**20:.1f} MiB); refusing it"
        )
    return props
