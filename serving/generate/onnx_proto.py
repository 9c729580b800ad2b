"""Just enough of ONNX's protobuf encoding to wrap a served model's graph in a decode graph, without
the ``onnx`` package.

Why by hand: the serving image has onnxruntime but not ``onnx`` (nor torch), and the decode graph
(:mod:`rnnops.serving.generate.decode_graph`) is built when a model version loads, from the very
file the registry verified, so that every char model exported so far gets it without a new
export or a new file to register. What that needs is small: read a ``ModelProto``'s and a
``GraphProto``'s top-level fields (to take the model's nodes and weights as they are, as bytes,
and its opset), and write a handful of messages (nodes, attributes, value infos, small constant
tensors, the graphs and the model). Protobuf's wire format makes the wrap cheap: a message is the
concatenation of its fields, so the model's graph becomes the ``Loop`` body by keeping its node
and initializer fields byte for byte and appending new ones.

Field numbers are those of ``onnx/onnx.proto`` (stable since IR version 3). The tests load what
this writes with the real ``onnx`` package and run ``onnx.checker`` on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

# TensorProto.DataType
FLOAT, UINT8, INT8, INT32, INT64, BOOL, DOUBLE = 1, 2, 3, 6, 7, 9, 11
DTYPES = {"float32": FLOAT, "int64": INT64, "float64": DOUBLE, "bool": BOOL, "int32": INT32}
# AttributeProto.AttributeType
_A_FLOAT, _A_INT, _A_STRING, _A_TENSOR, _A_GRAPH, _A_INTS = 1, 2, 3, 4, 5, 7

# ModelProto / GraphProto fields this module reads or writes
M_IR_VERSION, M_GRAPH, M_OPSET_IMPORT, M_METADATA, M_FUNCTIONS = 1, 7, 8, 14, 25
G_NODE, G_NAME, G_INITIALIZER, G_INPUT, G_OUTPUT = 1, 2, 5, 11, 12


class ProtoError(ValueError):
    """The bytes are not the protobuf this module expects (a truncated or foreign file)."""


# ----------------------------------------------------------------------------- writing


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 fields: two's complement in ten bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(int(value))


def field_bytes(number: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def field_float(number: int, value: float) -> bytes:
    return _varint(number << 3 | 5) + np.float32(value).tobytes()


def tensor(name: str, array: np.ndarray) -> bytes:
    """A TensorProto holding ``array`` (little-endian raw data)."""
    a = np.asarray(array)  # (not ascontiguousarray: it makes a scalar 1-d; tobytes is C order anyway)
    dtype = DTYPES[str(a.dtype)]
    dims = b"".join(field_varint(1, d) for d in a.shape)
    return (
        dims
        + field_varint(2, dtype)
        + field_bytes(8, name)
        + field_bytes(9, a.astype(a.dtype.newbyteorder("<")).tobytes())
    )


def attribute(name: str, value: int | float | str | bytes | Sequence[int]) -> bytes:
    """An AttributeProto: int, float, a graph (``bytes`` of a GraphProto, marked with :class:`Graph`),
    a tensor (:class:`Tensor`) or a list of ints."""
    head = field_bytes(1, name)
    if isinstance(value, Graph):
        return head + field_varint(20, _A_GRAPH) + field_bytes(6, bytes(value))
    if isinstance(value, Tensor):
        return head + field_varint(20, _A_TENSOR) + field_bytes(5, bytes(value))
    if isinstance(value, bool | int | np.integer):
        return head + field_varint(20, _A_INT) + field_varint(3, int(value))
    if isinstance(value, float):
        return head + field_varint(20, _A_FLOAT) + field_float(2, value)
    if isinstance(value, str):
        return head + field_varint(20, _A_STRING) + field_bytes(4, value)
    return head + field_varint(20, _A_INTS) + b"".join(field_varint(8, v) for v in value)


class Graph(bytes):
    """A serialised GraphProto given as an attribute's value (a ``Loop``'s body)."""


class Tensor(bytes):
    """A serialised TensorProto given as an attribute's value (a ``Constant``'s value)."""


def node(op: str, inputs: Sequence[str], outputs: Sequence[str], name: str, **attrs: object) -> bytes:
    """A NodeProto of the default domain (attributes in keyword order; values as :func:`attribute` takes them)."""
    out = b"".join(field_bytes(1, i) for i in inputs) + b"".join(field_bytes(2, o) for o in outputs)
    out += field_bytes(3, name) + field_bytes(4, op)
    return out + b"".join(field_bytes(5, attribute(k, v)) for k, v in attrs.items())  # type: ignore[arg-type]


def value_info(name: str, elem_type: int, shape: Sequence[int | str] | None = None) -> bytes:
    """A ValueInfoProto: a tensor of ``elem_type``, its shape if known (ints and named dims)."""
    tt = field_varint(1, elem_type)
    if shape is not None:
        dims = b"".join(field_bytes(1, field_bytes(2, d) if isinstance(d, str) else field_varint(1, d)) for d in shape)
        tt += field_bytes(2, dims)
    return field_bytes(1, name) + field_bytes(2, field_bytes(1, tt))


def graph(
    name: str, nodes: Sequence[bytes], inputs: Sequence[bytes], outputs: Sequence[bytes], keep: bytes = b""
) -> bytes:
    """A GraphProto: ``keep`` (fields of another graph, as bytes) and then the given parts."""
    return (
        keep
        + b"".join(field_bytes(G_NODE, n) for n in nodes)
        + field_bytes(G_NAME, name)
        + b"".join(field_bytes(G_INPUT, i) for i in inputs)
        + b"".join(field_bytes(G_OUTPUT, o) for o in outputs)
    )


# ----------------------------------------------------------------------------- reading


def fields(data: bytes) -> Iterator[tuple[int, int, int | bytes, bytes]]:
    """Top-level fields of a message: (number, wire type, value, the field's raw bytes)."""
    i, n = 0, len(data)
    while i < n:
        start = i
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 2:
            size, i = _read_varint(data, i)
            if i + size > n:
                raise ProtoError("a length-delimited field runs past the end of the message")
            value, i = data[i : i + size], i + size
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ProtoError(f"wire type {wire} (field {number}) is not one ONNX files use")
        if i > n or number == 0:
            raise ProtoError("truncated or malformed protobuf")
        yield number, wire, value, data[start:i]


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ProtoError("truncated or malformed varint")
        b = data[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def opsets(model: bytes) -> dict[str, int]:
    """The model's opset imports, ``{domain: version}`` (``""`` is ai.onnx)."""
    out = {}
    for number, _, value, _ in fields(model):
        if number == M_OPSET_IMPORT:
            assert isinstance(value, bytes)
            domain, version = "", 0
            for n2, _, v2, _ in fields(value):
                if n2 == 1 and isinstance(v2, bytes):
                    domain = v2.decode()
                elif n2 == 2 and isinstance(v2, int):
                    version = v2
            out[domain or "ai.onnx"] = version
    out[""] = out.pop("ai.onnx", 0)
    return out
