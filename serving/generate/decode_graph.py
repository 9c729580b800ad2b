"""The decode graph: sampling and several decode steps inside one onnxruntime call.

Without it, a decode step is one model call (T=1) and then Python: each stream's temperature,
top-k and top-p sampling in numpy (:mod:`rnnops.serving.generate.sampling`), the characters handed
to the streams, the next call. At 64 streams that Python is about as long as the kernel itself
(docs/serving.md, "Where a served step's time goes"). The decode graph moves the step into the
model: an ONNX ``Loop`` over ``K`` steps whose body is the served model's own graph (its nodes and
weights copied as they are) followed by the sampler, so one call and one Python visit produce
``K`` characters per stream.

**Built when the model loads**, not exported: it is derived from the verified ``model.onnx`` or
``model.int8.onnx`` itself, so every char model exported so far gets it, and there is no new file
to log, register, hash or download. The model's graph is read and the wrap written with the
``onnx`` package (its protobuf classes and ``onnx.helper``): the model's nodes and weights become
the ``Loop`` body as they are, with the sampler's nodes appended. A file the wrap cannot take
(an opset below 13, a graph that is not the contract's) keeps today's path: :func:`build` returns
None and says why, and the scheduler samples in Python as before.

**The same sampler, the same text.** The graph computes exactly what
:func:`~rnnops.serving.generate.sampling.sample_batch` computes, in float64, in the same order:
greedy rows take the first maximum of the raw logits; plain rows ``exp(z - max)`` in vocabulary
order and its running sum; top-k / top-p rows the same in sorted order (``TopK`` breaks ties by
the lower index, as the stable ``argsort`` does); and every row picks the first index whose running
mass exceeds ``u * total``. The uniforms ``u`` come from outside, ``[B, K]``, drawn from each
stream's own seeded generator in the order it draws them today, so a seed gives the same text
alone or among 64 streams, and the same text as the Python sampler unless the two ``exp``
implementations (numpy's and onnxruntime's) differ in the last bit right at a boundary
(docs/serving.md gives the count on 1,000 seeded streams).

Inputs: ``decode.tokens`` int64 ``[B]`` (each stream's last character), the model's state tensors
as ``decode.<name>``, ``decode.temperature`` / ``decode.top_p`` float64 ``[B]``, ``decode.top_k``
int64 ``[B]``, ``decode.uniforms`` float64 ``[B, K]`` (``K`` = the steps of this call). Outputs: the
state after ``K`` steps (``decode.<output name>``), ``decode.step_tokens`` int64 ``[K, B]`` and
``decode.step_logits`` float32 ``[K, B, V]`` (the raw logits each token was drawn from, fetched only
when a stream asked for log-probabilities).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
from onnx import GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper

from rnnops import contract
from rnnops.serving.runtime import run_bound

if TYPE_CHECKING:
    from rnnops.serving.runtime import Runtime, State

log = logging.getLogger("rnnops.serving")

MIN_OPSET = 13  # ReduceSum's axes as an input, and the Loop / TopK / CumSum forms written here
PREFIX = "decode."  # every name the wrap adds (the model's own names never start with it)
TOKENS, TEMPERATURE, TOP_K, TOP_P, UNIFORMS = (
    PREFIX + n for n in ("tokens", "temperature", "top_k", "top_p", "uniforms")
)
STEP_TOKENS, STEP_LOGITS = PREFIX + "step_tokens", PREFIX + "step_logits"


@dataclass(frozen=True)
class DecodeResult:
    tokens: np.ndarray  # int64 [K, B]: the characters sampled, step by step
    logits: np.ndarray | None  # float32 [K, B, V] when asked for, else None
    state: State  # after the K steps, where the runtime keeps state


class DecodeGraph:
    """An onnxruntime session of the decode graph of one char model (see the module docstring)."""

    def __init__(self, runtime: Runtime, model: bytes) -> None:
        self.runtime = runtime
        rt = runtime
        self.session = ort.InferenceSession(model, sess_options=rt.session_options(), providers=rt.providers)
        self.state_in = [PREFIX + t.input for t in rt.info.state]
        self.state_out = [PREFIX + t.output for t in rt.info.state]
        self.device = rt.device
        self.iobinding = rt.iobinding

    def run(
        self,
        tokens: np.ndarray,
        state: State,
        temperature: np.ndarray,
        top_k: np.ndarray,
        top_p: np.ndarray,
        uniforms: np.ndarray,
        logits: bool = False,
    ) -> DecodeResult:
        """``K = uniforms.shape[1]`` steps for ``B`` streams in one call.

        On CPU a batch of one runs as two rows (the row twice), as :meth:`Runtime._call` does:
        onnxruntime's kernels take another path for one row, and a stream's text must not depend on
        whether it ran alone."""
        rt = self.runtime
        feeds: dict[str, Any] = {
            TOKENS: np.ascontiguousarray(tokens, np.int64),
            TEMPERATURE: np.ascontiguousarray(temperature, np.float64),
            TOP_K: np.ascontiguousarray(top_k, np.int64),
            TOP_P: np.ascontiguousarray(top_p, np.float64),
            UNIFORMS: np.ascontiguousarray(uniforms, np.float64),
        }
        lone = self.device == "cpu" and feeds[TOKENS].shape[0] == 1
        if lone:
            feeds = {k: np.concatenate([v, v]) for k, v in feeds.items()}
            state = rt.concat([state, state])
        host = [STEP_TOKENS, STEP_LOGITS] if logits else [STEP_TOKENS]
        if not self.iobinding:
            out = self.session.run(host + self.state_out, {**feeds, **dict(zip(self.state_in, state))})
        else:  # the state stays on the device between calls
            out = run_bound(
                self.session, {**feeds, **dict(zip(self.state_in, state))}, host, self.state_out, self.device
            )
        toks, lg, new = out[0], out[1] if logits else None, tuple(out[len(host) :])
        if lone:
            toks, lg, new = toks[:, :1], None if lg is None else lg[:, :1], rt.take(new, [0])
        return DecodeResult(toks, lg, new)


def build(runtime: Runtime) -> tuple[DecodeGraph | None, str]:
    """The decode graph of ``runtime``'s model, or (None, why not): the scheduler then samples in
    Python as before. Never raises for a model it cannot wrap."""
    path = getattr(runtime, "path", None)
    info = getattr(runtime, "info", None)
    if path is None or info is None or not hasattr(runtime, "session_options"):
        return None, "not an onnxruntime Runtime"
    if info.kind != "char":
        return None, "not a char model"
    try:
        model = wrap(path.read_bytes(), info.state, len(info.vocab))
        return DecodeGraph(runtime, model), "the decode graph (sampling and steps in one onnxruntime call)"
    except (ValueError, OSError) as exc:
        why = str(exc)
    except Exception as exc:  # onnxruntime refused the wrap: its own exception types
        why = (
            f"onnxruntime cannot load the decode graph: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        )
    log.warning("%s: sampling stays in Python (%s)", path, why)
    return None, why


# ----------------------------------------------------------------------------- the graph


def wrap(model: bytes, state: tuple[contract.StateTensor, ...], vocab: int) -> bytes:
    """The decode graph (a serialised ModelProto) of a char model file's bytes. Raises ValueError
    when the file is not one it can wrap."""
    proto = ModelProto()
    try:
        proto.ParseFromString(model)
    except Exception as exc:  # protobuf's DecodeError (its module has no type stubs)
        raise ValueError(f"the file is not an ONNX model ({exc})") from None
    opsets = {o.domain: o.version for o in proto.opset_import}
    if opsets.get("", 0) < MIN_OPSET:
        raise ValueError(f"opset {opsets.get('', 0)} is below {MIN_OPSET}: the decode graph needs {MIN_OPSET}+")
    if vocab < 1:
        raise ValueError("the model has no vocabulary")
    if not proto.HasField("graph"):
        raise ValueError("the file holds no graph")
    names_in = {v.name for v in proto.graph.input}
    names_out = {v.name for v in proto.graph.output}
    want_in = {contract.INPUT, *(t.input for t in state)}
    want_out = {contract.CHAR_OUTPUT, *(t.output for t in state)}
    if not want_in <= names_in or not want_out <= names_out:
        raise ValueError(
            f"the graph's inputs/outputs ({sorted(names_in)} / {sorted(names_out)}) are not the contract's"
        )
    if any(n.startswith(PREFIX) for n in names_in | names_out):
        raise ValueError(f"the graph already uses names starting with {PREFIX!r}")
    body = _body(proto.graph, state, vocab, opsets[""])
    outer = _outer(body, state, vocab)
    wrapped = helper.make_model(outer, opset_imports=list(proto.opset_import), producer_name="rnnops.decode_graph")
    wrapped.ir_version = max(proto.ir_version, 7)
    wrapped.functions.extend(proto.functions)  # what the model's nodes need, as they are
    return bytes(wrapped.SerializeToString())


class _Nodes:
    """Nodes of one graph under construction, with unique names under :data:`PREFIX`."""

    def __init__(self, scope: str) -> None:
        self.scope = PREFIX + scope + "/"
        self.nodes: list[NodeProto] = []
        self.n = 0

    def __call__(self, op: str, *inputs: str, out: str | None = None, **attrs: object) -> str:
        self.n += 1
        name = out or f"{self.scope}{op}_{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [name], f"{self.scope}{op}_{self.n}", **attrs))
        return name

    def outputs(self, op: str, inputs: list[str], count: int, **attrs: object) -> list[str]:
        self.n += 1
        names = [f"{self.scope}{op}_{self.n}_{k}" for k in range(count)]
        self.nodes.append(helper.make_node(op, inputs, names, f"{self.scope}{op}_{self.n}", **attrs))
        return names


# Constants, as initializers of the outer graph (the body reads them from there)
def _constants(vocab: int) -> dict[str, np.ndarray]:
    return {
        "zero_f64": np.array(0.0),
        "one_f64": np.array(1.0),
        "zero_i64": np.array(0, np.int64),
        "one_i64": np.array(1, np.int64),
        "vocab_i64": np.array(vocab, np.int64),
        "last_i64": np.array(vocab - 1, np.int64),
        "last_col": np.array([vocab - 1], np.int64),
        "k_vocab": np.array([vocab], np.int64),
        "axis1": np.array([1], np.int64),
        "col": np.array([-1, 1], np.int64),
        "steps_rows_1": np.array([0, -1, 1], np.int64),
        "flat": np.array([-1], np.int64),
        "ranks": np.arange(vocab, dtype=np.int64)[None, :],
        "true": np.array(True),
    }


_DTYPES = {"float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "int64": TensorProto.INT64}


def _info(name: str, elem_type: int, shape: list[int | str]) -> ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _c(name: str) -> str:
    return PREFIX + "const/" + name


def _inverse_cdf(n: _Nodes, p: str, ucol: str) -> str:
    """Per row, the first index where the running sum of ``p`` exceeds ``u * total`` (as
    :func:`sampling._inverse_cdf`: the count of running sums <= the target, at most V - 1)."""
    cdf = n("CumSum", p, _c("axis1"))
    target = n("Mul", ucol, n("Gather", cdf, _c("last_col"), axis=1))
    count = n("ReduceSum", n("Cast", n("LessOrEqual", cdf, target), to=TensorProto.INT64), _c("axis1"), keepdims=0)
    return n("Min", count, _c("last_i64"))


def _body(model_graph: GraphProto, state: tuple[contract.StateTensor, ...], vocab: int, opset: int) -> GraphProto:
    """One step: the model's graph at T=1 from the carried token and state, then the sampler.

    The greedy and top-k / top-p parts (an argmax, a sort of every row, a second ``exp``) run only
    in a call where some row asks for them (an ``If`` on a flag of the outer graph): in a call of
    plain temperature rows they would cost as much as the rest of the sampler."""
    n = _Nodes("step")
    it, cond, tok = PREFIX + "iter", PREFIX + "cond", PREFIX + "token"
    o = PREFIX + "outer/"
    # first, before the model's nodes (a graph's nodes are in topological order): [B] -> x [B, 1]
    first = helper.make_node("Reshape", [tok, _c("col")], [contract.INPUT], PREFIX + "step/x")
    logits = n("Gather", contract.CHAR_OUTPUT, _c("zero_i64"), axis=1, out=PREFIX + "logits")  # [B, 1, V] -> [B, V]
    ucol = n("Gather", o + "uniforms", it, axis=0)  # this step's uniform per row [B, 1]
    z = n("Div", n("Cast", logits, to=TensorProto.DOUBLE), o + "tcol")
    if opset >= 18:  # the row maximum [B, 1]
        zmax = n("ReduceMax", z, _c("axis1"), keepdims=1)
    else:
        zmax = n("ReduceMax", z, axes=[1], keepdims=1)
    plain = _inverse_cdf(n, n("Exp", n("Sub", z, zmax)), ucol)

    f = _Nodes("special")  # the top-k / top-p rows in sorted order (as sample_batch's), and greedy ones
    zs, order = f.outputs("TopK", [z, _c("k_vocab")], 2, axis=-1, largest=1, sorted=1)
    p = f("Exp", f("Sub", zs, zmax))
    keep = f("Or", o + "k_off", f("Less", _c("ranks"), o + "kcol"))
    p = f("Mul", p, f("Cast", keep, to=TensorProto.DOUBLE))
    cum = f("CumSum", p, _c("axis1"))
    before = f("Sub", cum, p)
    bound = f("Mul", o + "pcol", f("Gather", cum, _c("last_col"), axis=1))
    keep = f("And", keep, f("Or", o + "p_off", f("Less", before, bound)))
    pick = _inverse_cdf(f, f("Mul", p, f("Cast", keep, to=TensorProto.DOUBLE)), ucol)
    chosen = f("Reshape", f("GatherElements", order, f("Reshape", pick, _c("col")), axis=1), _c("flat"))
    mixed = f("Where", o + "greedy", f("ArgMax", logits, axis=1, keepdims=0), f("Where", o + "filtered", chosen, plain))
    then = helper.make_graph(f.nodes, PREFIX + "special", [], [_info(mixed, TensorProto.INT64, [contract.BATCH_DIM])])
    e = _Nodes("plain")
    only_plain = e("Identity", plain)
    otherwise = helper.make_graph(
        e.nodes, PREFIX + "plain", [], [_info(only_plain, TensorProto.INT64, [contract.BATCH_DIM])]
    )
    nxt = PREFIX + "next"
    n.nodes.append(
        helper.make_node(
            "If",
            [o + "any_special"],
            [nxt],
            PREFIX + "step/if_special",
            then_branch=then,
            else_branch=otherwise,
        )
    )
    n("Identity", cond, out=PREFIX + "cond_out")
    n("Identity", nxt, out=PREFIX + "scan_token")
    inputs = [
        _info(it, TensorProto.INT64, []),
        _info(cond, TensorProto.BOOL, []),
        _info(tok, TensorProto.INT64, [contract.BATCH_DIM]),
        *(_info(t.input, _DTYPES[t.dtype], list(t.shape)) for t in state),
    ]
    outputs = [
        _info(PREFIX + "cond_out", TensorProto.BOOL, []),
        _info(nxt, TensorProto.INT64, [contract.BATCH_DIM]),
        *(_info(t.output, _DTYPES[t.dtype], list(t.shape)) for t in state),
        _info(PREFIX + "scan_token", TensorProto.INT64, [contract.BATCH_DIM]),
        _info(logits, TensorProto.FLOAT, [contract.BATCH_DIM, vocab]),
    ]
    # the model's graph at its core: its nodes (after ``first``), weights and value infos as they are
    body = GraphProto()
    body.CopyFrom(model_graph)
    del body.input[:], body.output[:]
    model_nodes = list(body.node)
    del body.node[:]
    body.node.extend([first, *model_nodes, *n.nodes])
    body.name = PREFIX + "step"
    body.input.extend(inputs)
    body.output.extend(outputs)
    return body


def _outer(body: GraphProto, state: tuple[contract.StateTensor, ...], vocab: int) -> GraphProto:
    """The per-row choices of the sampler (computed once per call), then the Loop over K steps."""
    n = _Nodes("outer")
    o = PREFIX + "outer/"
    greedy = n("LessOrEqual", TEMPERATURE, _c("zero_f64"), out=o + "greedy")
    n("Reshape", n("Where", greedy, _c("one_f64"), TEMPERATURE), _c("col"), out=o + "tcol")  # 0 -> 1: no 0/0
    k_on = n("And", n("Greater", TOP_K, _c("zero_i64")), n("Less", TOP_K, _c("vocab_i64")))
    p_on = n("Less", TOP_P, _c("one_f64"))
    filtered = n("And", n("Not", greedy), n("Or", k_on, p_on), out=o + "filtered")
    some = n("ReduceSum", n("Cast", n("Or", greedy, filtered), to=TensorProto.INT64), keepdims=0)  # all axes: a scalar
    n("Greater", some, _c("zero_i64"), out=o + "any_special")
    # the uniforms step-major, [K, B, 1]: step i's column is one Gather in the body
    n("Reshape", n("Transpose", UNIFORMS, perm=[1, 0]), _c("steps_rows_1"), out=o + "uniforms")
    kcol = n("Reshape", TOP_K, _c("col"), out=o + "kcol")
    n("LessOrEqual", kcol, _c("zero_i64"), out=o + "k_off")
    pcol = n("Reshape", TOP_P, _c("col"), out=o + "pcol")
    n("GreaterOrEqual", pcol, _c("one_f64"), out=o + "p_off")
    steps = n("Gather", n("Shape", UNIFORMS), _c("one_i64"), axis=0)
    carried_in = [TOKENS, *(PREFIX + t.input for t in state)]
    carried_out = [PREFIX + "last_token", *(PREFIX + t.output for t in state)]
    n.nodes.append(
        helper.make_node(
            "Loop",
            [steps, _c("true"), *carried_in],
            [*carried_out, STEP_TOKENS, STEP_LOGITS],
            PREFIX + "loop",
            body=body,
        )
    )
    inits = [numpy_helper.from_array(v, _c(k)) for k, v in _constants(vocab).items()]
    inputs = [
        _info(TOKENS, TensorProto.INT64, [contract.BATCH_DIM]),
        *(_info(PREFIX + t.input, _DTYPES[t.dtype], list(t.shape)) for t in state),
        _info(TEMPERATURE, TensorProto.DOUBLE, [contract.BATCH_DIM]),
        _info(TOP_K, TensorProto.INT64, [contract.BATCH_DIM]),
        _info(TOP_P, TensorProto.DOUBLE, [contract.BATCH_DIM]),
        _info(UNIFORMS, TensorProto.DOUBLE, [contract.BATCH_DIM, "steps"]),
    ]
    outputs = [
        _info(PREFIX + "last_token", TensorProto.INT64, [contract.BATCH_DIM]),
        *(_info(PREFIX + t.output, _DTYPES[t.dtype], list(t.shape)) for t in state),
        _info(STEP_TOKENS, TensorProto.INT64, ["steps", contract.BATCH_DIM]),
        _info(STEP_LOGITS, TensorProto.FLOAT, ["steps", contract.BATCH_DIM, vocab]),
    ]
    return helper.make_graph(n.nodes, PREFIX + "decode", inputs, outputs, initializer=inits)
