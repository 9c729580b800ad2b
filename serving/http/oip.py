"""The Open Inference Protocol (KServe v2 / Triton HTTP), so Triton's and KServe's clients, gateways
and load generators can use a served model as it is.

- ``GET /v2`` (server metadata), ``/v2/health/live``, ``/v2/health/ready``;
  ``GET /v2/models/{name}[/versions/{v}]`` (inputs and outputs with datatypes and shapes from the
  ONNX contract), ``.../ready``; ``POST /v2/models/{name}[/versions/{v}]/infer``.
- Tensors as JSON (``data`` flat in row-major order, or nested) or with the **binary tensor data
  extension**: a JSON header of ``Inference-Header-Content-Length`` bytes, then each input's
  ``binary_data_size`` bytes in order; outputs go out binary when asked (an output's
  ``binary_data``, or the request's ``binary_data_output``, which tritonclient sets when it
  names no outputs). Errors are ``{"error": "..."}`` (tritonclient reads that key).
- Forecasters: ``x`` FP32 ``[B, T, F]`` -> ``forecast`` FP32 ``[B, H, F_out]`` (with intervals also
  ``quantiles`` ``[B, H, F_out, levels]``, the levels in the metadata's ``parameters``) through the
  model's :class:`ForecastBatcher`, batched with ``/forecast`` traffic. A windowed model declares
  ``T = lookback`` (what it reads; longer windows are cut to it as on ``/forecast``).
- Char models: ``x`` INT64 ``[B, T]`` -> ``logits`` ``[B, T, V]``, plus the state tensors as the
  model's ``rnnops.state`` names them: given as inputs they are the starting state (else zeros),
  asked for as outputs they are returned.
- **Sequences** (Triton's sequence batcher over HTTP: request parameters ``sequence_id``,
  ``sequence_start``, ``sequence_end``) for forecasters: a sequence is a forecast session of the
  one :class:`SessionStore` under the id ``seq:<model>:<sequence_id>`` (same cap, idle TTL, and
  version pinning), stepped with the version's other sessions (the one session path,
  :mod:`rnnops.serving.forecast.stepper`). ``sequence_end`` frees it; an unknown or expired
  sequence without ``sequence_start`` is a 400 saying so. Until a windowed sequence has ``lookback``
  rows its answer has no outputs and the parameter ``needs``. Tensors: ``RNNOPS_OIP_MAX_ELEMENTS``.

Over 400 lines on purpose: the Open Inference Protocol's model metadata, JSON and binary
tensors (each length checked before anything is allocated from it) and sequences are one
protocol; the session path underneath is ``forecast/stepper.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from rnnops import __version__, contract
from rnnops import panel_contract as pc
from rnnops.serving.errors import UnknownModel, UnknownSession
from rnnops.serving.http.errors import ApiError, JSONResponse, validation_error

if TYPE_CHECKING:
    from rnnops.serving.forecast.batcher import Bands
    from rnnops.serving.http.app import Serving
    from rnnops.serving.models import LoadedModel
    from rnnops.serving.runtime import ModelInfo

HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
OIP_TYPE = {v: k for k, v in DTYPES.items()}


class Tensor(BaseModel):
    """An input tensor (``data`` as JSON, or ``parameters.binary_data_size`` bytes after the header)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: str
    shape: list[int] = Field(..., max_length=8)
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """POST /v2/models/{name}/infer (KServe v2). ``parameters``: ``binary_data_output``,
    ``sequence_id`` (int or string), ``sequence_start``, ``sequence_end``; ``priority`` and
    ``timeout`` are accepted as hints."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[Tensor] = Field(..., min_length=1, max_length=16)
    outputs: list[RequestedOutput] | None = None


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[float] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[OutputTensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] | None = Field(
        None,
        description='rnnops: {"precision": "fp32" | "int8"}, the '
        "arithmetic of the file this version runs (RNNOPS_PRECISION)",
    )


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class OIPError(BaseModel):
    error: str


# --------------------------------------------------------------------------------- models


def _model(serving: Serving, request: Request) -> LoadedModel:
    name = request.path_params["name"]
    m = serving.models.current.get(name)
    if m is None:  # 503 while a configured model loads, else UnknownModel (404)
        m = serving.models.get(name, "char")
    version = request.path_params.get("version")
    if version and version != m.version:
        raise UnknownModel(f"model {name!r} version {version!r} is not loaded here (it serves version {m.version})")
    return m


def _state_meta(t: contract.StateTensor, end: str) -> dict[str, Any]:
    shape = [-1 if d == contract.BATCH_DIM else int(d) for d in t.shape]
    return {"name": t.input if end == "input" else t.output, "datatype": OIP_TYPE[t.dtype], "shape": shape}


def model_metadata(m: LoadedModel) -> dict[str, Any]:
    """The OIP model metadata of a loaded version (made once per version: every infer checks its
    inputs against it)."""
    if m.oip_metadata is None:
        m.oip_metadata = _model_metadata(m)
    return m.oip_metadata


def _model_metadata(m: LoadedModel) -> dict[str, Any]:
    i = m.runtime.info
    if i.panel is not None:  # the contract's graph inputs and outputs, as they are
        inputs = [
            {"name": name, "datatype": OIP_TYPE[dtype], "shape": [-1, *(int(d) for d in shape[1:])]}
            for name, (shape, dtype) in i.panel.inputs.items()
        ]
        outputs = [
            {"name": name, "datatype": OIP_TYPE[dtype], "shape": [-1, *(int(d) for d in shape[1:])]}
            for name, (shape, dtype) in i.panel.outputs.items()
        ]
    elif i.kind == "char":
        inputs = [
            {"name": contract.INPUT, "datatype": "INT64", "shape": [-1, -1]},
            *(_state_meta(t, "input") for t in i.state),
        ]
        outputs = [
            {"name": contract.CHAR_OUTPUT, "datatype": "FP32", "shape": [-1, -1, len(i.vocab)]},
            *(_state_meta(t, "output") for t in i.state),
        ]
    else:
        t = -1 if i.stateful else i.lookback  # what runs: a windowed model reads exactly its lookback
        inputs = [{"name": contract.INPUT, "datatype": "FP32", "shape": [-1, t, len(i.feature_names)]}]
        outputs = [
            {"name": contract.FORECAST_OUTPUT, "datatype": "FP32", "shape": [-1, i.horizon, len(i.target_names)]}
        ]
        if i.quantiles_output:
            outputs.append(
                {**outputs[0], "name": i.quantiles_output, "shape": [*outputs[0]["shape"], len(i.quantiles)]}
            )
    # "parameters" is outside the protocol's required fields (clients ignore it): which file runs, levels
    params: dict[str, Any] = {
        "precision": i.precision,
        **({"quantiles": list(i.quantiles)} if i.quantiles_output else {}),
    }
    if i.panel is not None:  # what each input's columns are (names, vocabularies): rnnops.panel
        params["panel"] = i.panel.to_json()
    return {
        "name": m.name,
        "versions": [m.version],
        "platform": "onnxruntime_onnx",
        "inputs": inputs,
        "outputs": outputs,
        "parameters": params,
    }


async def server_metadata(serving: Serving, request: Request) -> Response:
    return JSONResponse({"name": "rnnops", "version": __version__, "extensions": ["binary_tensor_data", "sequence"]})


async def live(serving: Serving, request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(serving: Serving, request: Request) -> Response:
    ok = bool(serving.models.ready)
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "5"})


async def metadata(serving: Serving, request: Request) -> Response:
    return JSONResponse(model_metadata(_model(serving, request)))


async def model_ready(serving: Serving, request: Request) -> Response:
    m = _model(serving, request)
    return JSONResponse({"name": m.name, "ready": True})


# --------------------------------------------------------------------------------- tensors


def _bad(message: str, field: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request", message, field=field)


async def _read(request: Request) -> tuple[InferRequest, bytes]:
    raw = await request.body()
    n = request.headers.get(HEADER_LENGTH)
    if n is not None:
        try:
            size = int(n)
        except ValueError:
            raise _bad(f"{HEADER_LENGTH} is {n!r}, not a byte count") from None
        if not 0 <= size <= len(raw):
            raise _bad(f"{HEADER_LENGTH} is {size} but the body has {len(raw)} bytes")
        head, blob = raw[:size], raw[size:]
    else:
        head, blob = raw, b""
    try:
        return InferRequest.model_validate_json(head or b"{}"), blob
    except ValidationError as exc:
        raise validation_error(exc) from None


def _tensors(body: InferRequest, blob: bytes, max_elements: int) -> dict[str, np.ndarray]:
    out, offset = {}, 0
    for t in body.inputs:
        where = f"input {t.name!r}"
        if t.datatype not in DTYPES:
            raise _bad(f"{where}: datatype {t.datatype!r} is not one of {', '.join(DTYPES)}", "datatype")
        # every dimension at least 1: an empty axis is no input, and a zero-length sequence aborts
        # onnxruntime's recurrent kernels (the whole worker); a zero beside a huge dimension
        # would also slip past the element bound into numpy's reshape (a 500)
        if any(d < 1 for d in t.shape) or math.prod(t.shape) > max_elements:
            raise _bad(
                f"{where}: shape {t.shape} must be positive, at most {max_elements} elements (RNNOPS_OIP_MAX_ELEMENTS)",
                "shape",
            )
        dtype = np.dtype(DTYPES[t.datatype])
        count = math.prod(t.shape)
        size = (t.parameters or {}).get("binary_data_size")
        if size is not None:
            if t.data is not None:
                raise _bad(f"{where} has both data and binary_data_size", "data")
            if not isinstance(size, int) or size != count * dtype.itemsize or offset + size > len(blob):
                raise _bad(
                    f"{where}: binary_data_size {size!r} does not fit shape {t.shape} {t.datatype} "
                    f"({count * dtype.itemsize} bytes) or the {len(blob) - offset} bytes left",
                    "binary_data_size",
                )
            a = np.frombuffer(blob, dtype=dtype, count=count, offset=offset).reshape(t.shape)
            offset += size
        elif t.data is not None:
            try:
                a = np.asarray(t.data, dtype=dtype)
            except (TypeError, ValueError, OverflowError):
                raise _bad(f"{where}: data is not a list of {t.datatype} values", "data") from None
            if a.size != count:
                raise _bad(f"{where}: {a.size} values for shape {t.shape}", "data")
            a = a.reshape(t.shape)
        else:
            raise _bad(f"{where} has neither data nor parameters.binary_data_size", "data")
        if t.name in out:
            raise _bad(f"input {t.name!r} is given twice", "inputs")
        out[t.name] = a
    if offset != len(blob):
        raise _bad(f"{len(blob) - offset} bytes after the binary inputs belong to no input")
    return out


def _check_inputs(m: LoadedModel, tensors: dict[str, np.ndarray], sequence: bool = False) -> None:
    spec = {t["name"]: t for t in model_metadata(m)["inputs"]}
    if sequence and m.kind == "forecaster":  # a sequence takes any number of new rows at a time
        spec[contract.INPUT] = {**spec[contract.INPUT], "shape": [-1, -1, spec[contract.INPUT]["shape"][2]]}
    for name, a in tensors.items():
        t = spec.get(name)
        if t is None:
            raise _bad(f"model {m.name!r} has no input {name!r}; its inputs: {', '.join(spec)}", "inputs")
        if OIP_TYPE.get(a.dtype.name) != t["datatype"]:
            raise _bad(
                f"input {name!r} is {OIP_TYPE.get(a.dtype.name, a.dtype.name)}; the model takes {t['datatype']}",
                "datatype",
            )
        want = t["shape"]
        if a.ndim != len(want) or any(w != -1 and w != d for w, d in zip(want, a.shape)):
            if not (
                name == contract.INPUT
                and m.kind == "forecaster"
                and a.ndim == 3
                and a.shape[2] == want[2]
                and a.shape[1] >= want[1]
            ):  # a windowed model cuts longer windows to its lookback
                raise _bad(f"input {name!r} has shape {list(a.shape)}; the model takes {want} (-1: any)", "shape")
    if m.runtime.info.panel is not None:
        _check_panel(m, tensors)
        return
    if contract.INPUT not in tensors:
        raise _bad(f"input {contract.INPUT!r} is missing", "inputs")
    if m.kind == "forecaster" and not np.isfinite(tensors[contract.INPUT]).all():
        raise _bad(f"input {contract.INPUT!r} has NaN or infinite values", "data")


def _check_panel(m: LoadedModel, tensors: dict[str, np.ndarray]) -> None:
    """A panel model's inputs: all of them, one batch size, values as the contract allows (NaN
    only where a value may be missing: the past target and past covariates; category codes
    within the vocabulary, 0 the unknown one)."""
    p = m.runtime.info.panel
    assert p is not None
    missing = [n for n in p.inputs if n not in tensors]
    if missing:
        raise _bad(f"input {missing[0]!r} is missing; a panel model takes {', '.join(p.inputs)}", "inputs")
    sizes = {n: a.shape[0] for n, a in tensors.items()}
    if len(set(sizes.values())) != 1:
        raise _bad(f"inputs have different batch sizes ({sizes}); give one row per series in each", "shape")
    maybe_missing = (pc.PAST_TARGET, pc.PAST_COVARIATES)
    for name, a in tensors.items():
        if a.dtype.kind == "f":
            bad = np.isinf(a) if name in maybe_missing else ~np.isfinite(a)
            if bad.any():
                what = "infinite" if name in maybe_missing else "NaN or infinite"
                raise _bad(f"input {name!r} has {what} values", "data")
    if pc.STATIC_CAT in tensors:
        codes = tensors[pc.STATIC_CAT]
        for k, col in enumerate(p.static_categorical):
            if codes[:, k].min() < 0 or codes[:, k].max() > len(col.vocabulary):
                raise _bad(
                    f"input {pc.STATIC_CAT!r} column {k} ({col.name}) has codes outside 0..{len(col.vocabulary)} "
                    "(0: a category the model never saw, i: the i-th of its vocabulary)",
                    "data",
                )


def _answer(
    m: LoadedModel, body: InferRequest, results: dict[str, np.ndarray], params: dict[str, Any] | None = None
) -> Response:
    req_params = body.parameters or {}
    default_binary = bool(req_params.get("binary_data_output", False))
    if not results:  # a windowed sequence still filling its window: nothing to give yet
        wanted = []
    elif body.outputs:
        unknown = [o.name for o in body.outputs if o.name not in results]
        if unknown:
            raise _bad(
                f"model {m.name!r} has no output {', '.join(map(repr, unknown))}; it gives {', '.join(results)}",
                "outputs",
            )
        wanted = [(o.name, bool((o.parameters or {}).get("binary_data", default_binary))) for o in body.outputs]
    else:
        wanted = [(name, default_binary) for name in results]
    outputs, blobs = [], []
    for name, binary in wanted:
        a = np.ascontiguousarray(results[name])
        t: dict[str, Any] = {"name": name, "datatype": OIP_TYPE[a.dtype.name], "shape": list(a.shape)}
        if binary:
            data = a.tobytes()
            t["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            t["data"] = a.ravel()
        outputs.append(t)
    resp: dict[str, Any] = {"model_name": m.name, "model_version": m.version, "outputs": outputs}
    if body.id is not None:
        resp["id"] = body.id
    if params:
        resp["parameters"] = params
    if not blobs:
        return JSONResponse(resp)
    head = orjson.dumps(resp, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(
        b"".join([head, *blobs]), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(head))}
    )


# --------------------------------------------------------------------------------- infer


async def infer(serving: Serving, request: Request) -> Response:
    m = _model(serving, request)
    body, blob = await _read(request)
    tensors = _tensors(body, blob, serving.config.oip_max_elements)
    params = body.parameters or {}
    sequence = params.get("sequence_id") not in (None, 0, "")
    if sequence and m.kind == "panel":
        raise _bad(
            f"sequences of panel models are not served yet; send {m.name!r} whole windows (one row per series)",
            "parameters.sequence_id",
        )
    _check_inputs(m, tensors, sequence)
    if sequence:
        return await _sequence(serving, m, body, tensors[contract.INPUT], params)
    if m.kind == "panel":
        return await _panel(serving, m, body, tensors)
    if m.kind == "forecaster":
        x = tensors[contract.INPUT]
        if len(x) > serving.config.forecast_max_windows:
            raise _bad(
                f"{len(x)} windows; the limit per request is {serving.config.forecast_max_windows} "
                "(RNNOPS_FORECAST_MAX_WINDOWS)",
                "shape",
            )
        batcher = m.batcher
        assert batcher is not None, "every forecaster has its batcher"
        bands = await batcher.forecast_bands(list(x))  # at least one window: _tensors refuses empty axes
        return _answer(m, body, _forecasts(m.runtime.info, bands))
    return await _char(m, body, tensors)


async def _panel(serving: Serving, m: LoadedModel, body: InferRequest, tensors: dict[str, np.ndarray]) -> Response:
    """A panel model's rows through its batcher (batched with /forecast's series), answered in
    the graph's own output shapes: forecast [B, H], quantiles [B, H, Q]."""
    b = next(iter(tensors.values())).shape[0]
    if b > serving.config.forecast_max_windows:
        raise _bad(
            f"{b} series; the limit per request is {serving.config.forecast_max_windows} (RNNOPS_FORECAST_MAX_WINDOWS)",
            "shape",
        )
    assert m.batcher is not None, "a panel model has its batcher"
    bands = await m.batcher.forecast_series([{n: a[k] for n, a in tensors.items()} for k in range(b)])
    results = {pc.FORECAST: np.stack([y[:, 0] for y, _ in bands])}
    results[pc.QUANTILES] = np.stack([cast(np.ndarray, q)[:, 0, :] for _, q in bands])
    return _answer(m, body, results)


def _forecasts(info: ModelInfo, bands: list[Bands]) -> dict[str, np.ndarray]:
    """The outputs of forecasts (at least one) and their quantiles (a model with intervals), batched."""
    results = {contract.FORECAST_OUTPUT: np.stack([y for y, _ in bands])}
    if info.quantiles_output:
        # a model with quantiles gives them for every window
        results[info.quantiles_output] = np.stack([cast(np.ndarray, q) for _, q in bands])
    return results


async def _char(m: LoadedModel, body: InferRequest, tensors: dict[str, np.ndarray]) -> Response:
    info = m.runtime.info
    given = [t.input in tensors for t in info.state]
    if any(given) and not all(given):
        raise _bad(f"give all of the state inputs ({', '.join(info.state_inputs)}) or none", "inputs")
    x = tensors[contract.INPUT]
    if x.size and (x.min() < 0 or x.max() >= len(info.vocab)):
        raise _bad(f"input 'x' has token ids outside 0..{len(info.vocab) - 1}", "data")
    if x.shape[1] == 0:
        raise _bad("input 'x' has no time steps", "shape")
    state = None
    if all(given) and info.state:
        state = tuple(np.ascontiguousarray(tensors[t.input], np.dtype(t.dtype)) for t in info.state)
        for t, s in zip(info.state, state):
            if s.shape[t.batch_axis] != x.shape[0]:
                raise _bad(f"state input {t.input!r} has batch {s.shape[t.batch_axis]}, x has {x.shape[0]}", "shape")
    if x.shape[0] == 0:
        raise _bad("input 'x' has an empty batch", "shape")
    r = await asyncio.to_thread(m.runtime.run, x, state)
    results = {contract.CHAR_OUTPUT: r.output, **dict(zip(info.state_outputs, m.runtime.state_numpy(r.state)))}
    if not body.outputs:  # the state only when asked for (or when it was given: a caller that carries it)
        results = {k: v for k, v in results.items() if k == contract.CHAR_OUTPUT or all(given) and info.state}
    return _answer(m, body, results)


async def _sequence(
    serving: Serving, m: LoadedModel, body: InferRequest, x: np.ndarray, params: dict[str, Any]
) -> Response:
    seq = params["sequence_id"]
    if not isinstance(seq, (int, str)) or isinstance(seq, bool):
        raise _bad(f"sequence_id must be an integer or a string, not {seq!r}", "parameters.sequence_id")
    if m.kind != "forecaster":
        raise _bad(
            f"sequences are served for forecasters; {m.name!r} is a {m.kind} model (pass its state "
            "tensors as inputs and outputs instead)",
            "parameters.sequence_id",
        )
    if x.shape[0] != 1:
        raise _bad(f"a sequence request carries one series: x must be [1, T, F], not {list(x.shape)}", "shape")
    store = serving.sessions
    sid = f"seq:{m.name}:{seq}"
    if params.get("sequence_start"):
        await store.open(m, session_id=sid)  # restarts a sequence of that id; 429 at RNNOPS_MAX_SESSIONS
    rows = np.ascontiguousarray(x[0], np.float32)
    try:
        # exactly once, in whichever store holds it; the version's stepper batches it with the other sessions
        sess, y = await store.update(sid, lambda sess: sess.observe(rows))
    except UnknownSession:
        raise ApiError(
            400,
            "unknown_sequence",
            f"sequence {seq!r} of model {m.name!r} is not active: it ended, "
            f"expired after RNNOPS_SESSION_TTL={store.ttl_s:g}s idle, or never started here; start it "
            "with sequence_start",
            field="parameters.sequence_id",
        ) from None
    if params.get("sequence_end"):
        with contextlib.suppress(UnknownSession):  # expired meanwhile: ended all the same
            await store.close(sid)
    if y is None:
        return _answer(sess.model, body, {}, {"needs": sess.needs, "sequence_id": seq})
    return _answer(sess.model, body, _forecasts(sess.model.runtime.info, [(y, sess.last_quantiles)]))
