"""The int8 variant of a recurrent file, with **fixed** scales, so it keeps the scheduler's guarantees.

Why not onnxruntime's ``quantize_dynamic``: it quantises activations with a scale computed from
each call's whole input tensor, so one stream's output depends on its batch neighbours and on how
its prompt was chunked (0.137 in the logits between stepping 17 characters one at a time and one
call, on the demo's LSTM). The scheduler promises that chunked prefill equals whole prefill and
that a seed gives the same text alone or among 64 streams; a per-call scale breaks both. And
onnxruntime quantises its ``LSTM`` op only dynamically (there is no QDQ or QLinear LSTM), so the
cell has to be written out as matrix products and element-wise ops to get fixed scales at all.

What an LSTM, GRU or tanh RNN multiplies by its recurrent weights is its hidden state ``h``, which
lies in (-1, 1) by construction (LSTM: ``o * tanh(c)``; GRU: a convex mix of ``tanh`` values and
the previous ``h``; RNN: ``tanh``). So the activation scale needs no calibration and no per-call
statistics: it is 1/127, fixed in the file. Each row (one stream, one time step) is then quantised
on its own, and the int8 x int8 -> int32 product is exact, so a row's result cannot depend on the
rows beside it or on how time was chunked.

The graph rewrite, per recurrent node of the fp32 file (any layer count, char model or forecaster):

- the input projection ``X @ W^T + b`` runs for all time steps at once, before the recurrence:
  for a char model's first layer (``Gather(embedding, x)``) it becomes one ``Gather`` from the
  precomputed table ``E @ W^T + b`` (exact, and no matmul at all); for a stacked layer, whose
  input is the previous layer's ``h``, an int8 product with the same fixed 1/127 scale; for a
  forecaster's first layer (normalised observations, unbounded) it stays fp32;
- the recurrence is a ``Scan`` over time whose body is ``QuantizeLinear(h, 1/127, 128)`` ->
  ``MatMulIntegerToFloat`` (int8 weights, one scale per output column) -> the cell's gates ->
  the new state; ``Scan`` keeps batch and time dynamic;
- any other ``MatMul`` / ``Gemm`` with constant weights whose input is a recurrent layer's ``h``
  (the head) becomes the same fixed-scale int8 product; everything else is left as it is.

GRU needs ``linear_before_reset=1`` (PyTorch's GRU, what both exporters write) and RNN its default
``tanh``; anything else raises :class:`ValueError` and the export keeps the cell in fp32.

The result is an onnxruntime-only file (``com.microsoft`` ops) with the same inputs, outputs, state
contract and metadata as the fp32 one, except ``rnnops.precision = "int8"``. The export's gates
(:func:`rnnops.export.parity.run_int8_gate`, :mod:`rnnops.export.quality`) decide whether it is
kept (:mod:`rnnops.export.pipeline`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

H_SCALE = 1.0 / 127.0  # |h| < 1: the full int8 range, fixed
H_ZERO = 128  # uint8 activations (onnxruntime's fast u8 x s8 kernels), zero at 128
# Weights use 7 bits (onnxruntime's "reduce_range"): on x86 CPUs without VNNI the u8 x s8 kernel
# (VPMADDUBSW) adds two products in 16 bits and saturates above 32,767; with |w| <= 63 and
# activations <= 255 two products stay below it, so every CPU computes the same exact integers
# and the export's gates hold wherever the file is served. Measured on the quick-preset char
# LSTM: val_loss delta +0.00012 nats/char with 8-bit weights, -0.00003 with 7-bit (noise).
W_MAX = 63
MS_DOMAIN = "com.microsoft"
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
# The int8 form is made only for recurrent layers at least this wide. It pays where the recurrent
# products dominate a step; below, the Scan's per-step cost outweighs their cheaper arithmetic and
# RNNOPS_PRECISION=auto would trade fp32 for something slower. Measured at batch 64 (one thread,
# against the fused fp32 op): 2x16 char LSTM 0.8x, 1x64 char LSTM 1.1x, the quick-preset 1x64 GRU
# forecaster over 96-step windows 1.0x (0.15x at batch 1); 1x128 char LSTM 1.4x, 1x256 GRU 2.5x,
# the quick char LSTM (1x384) 2.7x. A rule on the width rather than a timing at export keeps the
# export's files the same on any machine, busy or not.
MIN_HIDDEN = 128
# ops that only move values: an input in (-1, 1) gives an output in (-1, 1)
_SHAPE_OPS = ("Squeeze", "Unsqueeze", "Transpose", "Reshape", "Identity", "Flatten", "Gather", "Slice", "Split")


def quantize_file(src: str | Path, dst: str | Path, h_inputs: bool = True) -> Path:
    """Write the fixed-scale int8 variant of ``src`` (an fp32 file with ``LSTM`` / ``GRU`` / ``RNN``
    nodes) to ``dst``. ``h_inputs=False`` leaves the products that read a layer's ``h`` from outside
    the recurrence (a stacked layer's input projection, the head) in fp32, for comparison."""
    import onnx
    from onnx import helper

    from rnnops.contract import encode_metadata

    model = onnx.load(str(src))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    rw = _Rewriter(inits, producers, h_inputs)
    for node in g.node:
        rw.visit(node)
    if not rw.recurrent:
        raise ValueError(f"{src} has no LSTM, GRU or RNN node to quantise")
    g.ClearField("node")
    g.node.extend(_live(rw.nodes, [o.name for o in g.output]))
    used = {i for n in g.node for i in _inputs_with_subgraphs(n)}
    kept = [t for t in g.initializer if t.name in used] + [t for t in rw.tensors if t.name in used]
    g.ClearField("initializer")
    g.initializer.extend(kept)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    ((key, value),) = encode_metadata({"precision": "int8"}).items()  # what the file computes in
    entry = next((p for p in model.metadata_props if p.key == key), None) or model.metadata_props.add(key=key)
    entry.value = value
    onnx.checker.check_model(model)
    onnx.save_model(model, str(dst), save_as_external_data=False)
    return Path(dst)


def int8_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w`` [K, N] -> (int8 [K, N], fp32 scale [N]): symmetric, one scale per output column, in
    [-W_MAX, W_MAX] (see :data:`W_MAX`)."""
    scale = np.maximum(np.abs(w).max(0), 1e-12) / W_MAX
    return np.clip(np.round(w / scale), -W_MAX, W_MAX).astype(np.int8), scale.astype(np.float32)


class _Rewriter:
    """Walks the fp32 graph in order, replacing what it can; ``bounded``: tensors known in (-1, 1)."""

    def __init__(self, inits: dict, producers: dict, h_inputs: bool):
        self.inits, self.producers, self.h_inputs = inits, producers, h_inputs
        self.nodes: list = []
        self.tensors: list = []
        self._names: set[str] = set()
        self.bounded: set[str] = set()
        self.recurrent = 0
        self.int8_products = 0

    def visit(self, node) -> None:
        op = node.op_type
        if op in RECURRENT_OPS:
            self.nodes += self._recurrent(node)
            self.recurrent += 1
        elif op in ("MatMul", "Gemm") and self.h_inputs and node.input[0] in self.bounded and self._product(node):
            self.int8_products += 1
        else:
            self.nodes.append(node)
            if op in _SHAPE_OPS and node.input and node.input[0] in self.bounded:
                self.bounded.update(o for o in node.output if o)
            elif op == "Concat" and all(i in self.bounded for i in node.input):
                self.bounded.update(node.output)

    # ------------------------------------------------------------------ helpers

    def const(self, name: str, value: np.ndarray) -> str:
        """An initializer named ``name`` (made once: the same name is the same value)."""
        from onnx import numpy_helper

        if name not in self._names:
            self._names.add(name)
            self.tensors.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def int8_matmul(self, p: str, a: str, w_t: np.ndarray, out: str, bias: np.ndarray | None = None) -> list:
        """``out = a @ w_t (+ bias)`` with ``a`` in (-1, 1): fixed-scale uint8 activations, int8 weights."""
        from onnx import helper

        wq, ws = int8_columns(w_t.astype(np.float32))
        hs, hz = (
            self.const(p + "h_scale", np.array(H_SCALE, np.float32)),
            self.const(p + "h_zero", np.array(H_ZERO, np.uint8)),
        )
        ins = [p + "aq", self.const(p + "w_q", wq), hs, self.const(p + "w_scale", ws), hz]
        if bias is not None:
            ins += ["", self.const(p + "bias", bias.astype(np.float32))]
        return [
            helper.make_node("QuantizeLinear", [a, hs, hz], [p + "aq"]),
            helper.make_node("MatMulIntegerToFloat", ins, [out], domain=MS_DOMAIN),
        ]

    def _product(self, node) -> bool:
        """A ``MatMul`` / ``Gemm`` reading ``h`` with constant 2-D weights -> the int8 product."""
        from onnx import helper

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = self.weight(node.input[1])
        if w is None or w.ndim != 2:
            return False
        bias = None
        if node.op_type == "Gemm":
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                return False
            w = w.T if attrs.get("transB", 0) else w
            if len(node.input) > 2 and node.input[2]:
                bias = self.weight(node.input[2])
                if bias is None or bias.shape != (w.shape[1],):
                    return False
        p = f"int8_matmul{self.int8_products}/"
        self.nodes += self.int8_matmul(p, node.input[0], w, node.output[0], bias)
        return True

    def _embedding(self, x_name: str):
        """``(embedding initializer, ids)`` when ``x_name`` is ``Transpose(Gather(E, ids), [1, 0, 2])``."""
        from onnx import helper

        t = self.producers.get(x_name)
        if t is None or t.op_type != "Transpose":
            return None
        perm = [helper.get_attribute_value(a) for a in t.attribute if a.name == "perm"]
        gather = self.producers.get(t.input[0])
        if list(perm[0] if perm else []) != [1, 0, 2] or gather is None or gather.op_type != "Gather":
            return None
        if gather.input[0] not in self.inits or any(a.name == "axis" and a.i != 0 for a in gather.attribute):
            return None
        return gather.input[0], gather.input[1]

    # ------------------------------------------------------------------ recurrent nodes

    def _recurrent(self, node) -> list:
        """Nodes replacing one forward ``LSTM`` / ``GRU`` / ``RNN`` node (input projection + Scan)."""
        from onnx import TensorProto, helper

        op = node.op_type
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("direction", b"forward") not in (b"forward", "forward") or "clip" in attrs:
            raise ValueError(f"only forward {op}s without clip are quantised")
        if op == "LSTM" and attrs.get("input_forget"):
            raise ValueError("an LSTM with input_forget is not quantised")
        if op == "GRU" and not attrs.get("linear_before_reset"):
            raise ValueError(
                "a GRU with linear_before_reset=0 is not quantised (PyTorch's GRU is linear_before_reset=1)"
            )
        if op != "LSTM" and [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])] not in (
            [],
            ["Sigmoid", "Tanh"] if op == "GRU" else ["Tanh"],
        ):
            raise ValueError(f"only the default activations of {op} are quantised (h must stay in (-1, 1))")
        ins = list(node.input) + [""] * (8 - len(node.input))
        x_name, w_name, r_name, b_name, seq_lens, h0_name = ins[:6]
        c0_name = ins[6] if op == "LSTM" else None
        W, R = self.weight(w_name), self.weight(r_name)
        if seq_lens or not h0_name or (op == "LSTM" and not c0_name) or W is None or R is None:
            raise ValueError(f"the {op} node must have constant W/R, no sequence_lens, and its initial state")
        W, R = W[0].astype(np.float32), R[0].astype(np.float32)  # [G*H, I], [G*H, H]
        H = R.shape[1]
        gates = R.shape[0] // H
        B = np.zeros(2 * gates * H, np.float32) if not b_name else self.weight(b_name)[0].astype(np.float32)
        wb, rb = B[: gates * H], B[gates * H :]
        # Biases: all into the input projection, except GRU's recurrent "h" block, which the reset gate scales.
        x_bias, r_bias = (
            (wb + rb, None)
            if op != "GRU"
            else (
                wb + np.concatenate([rb[: 2 * H], np.zeros(H, np.float32)]),
                np.concatenate([np.zeros(2 * H, np.float32), rb[2 * H :]]),
            )
        )
        p = f"int8_{op.lower()}{self.recurrent}/"
        nodes = []

        # Input projection for every time step at once -> xw [T, B, G*H] (fp32).
        table_src = self._embedding(x_name)
        if table_src is not None:  # X = Transpose(Gather(E, ids), [1, 0, 2]): fold E @ W^T + b into a table
            emb_name, ids = table_src
            E = self.weight(emb_name).astype(np.float64)
            table = self.const(p + "xw_table", (E @ W.T.astype(np.float64) + x_bias).astype(np.float32))
            nodes += [
                helper.make_node("Gather", [table, ids], [p + "xw_bt"]),
                helper.make_node("Transpose", [p + "xw_bt"], [p + "xw"], perm=[1, 0, 2]),
            ]
        elif self.h_inputs and x_name in self.bounded:  # a stacked layer: its input is the previous layer's h
            nodes += self.int8_matmul(p + "x_", x_name, W.T, p + "xw", x_bias)
        else:
            nodes += [
                helper.make_node("MatMul", [x_name, self.const(p + "w_t", np.ascontiguousarray(W.T))], [p + "xw_nb"]),
                helper.make_node("Add", [p + "xw_nb", self.const(p + "x_bias", x_bias)], [p + "xw"]),
            ]

        # Recurrent weights: int8, one scale per output column; h quantised with the fixed scale.
        rq, rs = int8_columns(R.T)
        hs, hz = (
            self.const(p + "h_scale", np.array(H_SCALE, np.float32)),
            self.const(p + "h_zero", np.array(H_ZERO, np.uint8)),
        )
        rec_ins = [p + "hq", self.const(p + "r_q", rq), hs, self.const(p + "r_scale", rs), hz]
        if r_bias is not None:
            rec_ins += ["", self.const(p + "r_bias", r_bias)]
        split = lambda *sizes: self.const(p + "split_" + "_".join(map(str, sizes)), np.array(sizes, np.int64))  # noqa: E731
        b = "body/"
        body = [
            helper.make_node("QuantizeLinear", ["h", hs, hz], [p + "hq"]),
            helper.make_node("MatMulIntegerToFloat", rec_ins, [b + "rec"], domain=MS_DOMAIN),
        ]
        body += _CELL_BODIES[op](b, H, split)
        body.append(helper.make_node("Identity", ["h_out"], ["y_t"]))
        f32 = TensorProto.FLOAT
        state = ["h", "c"] if op == "LSTM" else ["h"]
        graph = helper.make_graph(
            body,
            f"{p}step",
            [
                *(helper.make_tensor_value_info(s, f32, ["B", H]) for s in state),
                helper.make_tensor_value_info("xw_t", f32, ["B", gates * H]),
            ],
            [
                *(helper.make_tensor_value_info(s + "_out", f32, ["B", H]) for s in state),
                helper.make_tensor_value_info("y_t", f32, ["B", H]),
            ],
        )
        zero = self.const(p + "axis0", np.array([0], np.int64))
        one = self.const(p + "axis1", np.array([1], np.int64))
        inits = [h0_name] + ([c0_name] if op == "LSTM" else [])
        finals = [p + s + "T" for s in state]
        nodes += [helper.make_node("Squeeze", [n, zero], [p + s + "0"]) for n, s in zip(inits, state)]
        nodes.append(
            helper.make_node(
                "Scan", [p + s + "0" for s in state] + [p + "xw"], finals + [p + "ys"], body=graph, num_scan_inputs=1
            )
        )
        outs = (list(node.output) + ["", "", ""])[: 1 + len(state)]
        if outs[0]:
            nodes.append(helper.make_node("Unsqueeze", [p + "ys", one], [outs[0]]))  # [T, 1, B, H] as the op's Y
            self.bounded.add(outs[0])
        for final, out, s in zip(finals, outs[1:], state):
            if out:
                nodes.append(helper.make_node("Unsqueeze", [final, zero], [out]))
                if s == "h":
                    self.bounded.add(out)
        return nodes


def _lstm_body(b: str, H: int, split) -> list:
    """ONNX LSTM gates ``i, o, f, c``: c' = f*c + i*g, h' = o*tanh(c')."""
    from onnx import helper

    n = helper.make_node
    return [
        n("Add", ["xw_t", b + "rec"], [b + "gates"]),
        n("Split", [b + "gates", split(3 * H, H)], [b + "gio_f", b + "gc"], axis=-1),
        n("Sigmoid", [b + "gio_f"], [b + "sig"]),
        n("Split", [b + "sig", split(H, H, H)], [b + "i", b + "o", b + "f"], axis=-1),
        n("Tanh", [b + "gc"], [b + "g"]),
        n("Mul", [b + "f", "c"], [b + "fc"]),
        n("Mul", [b + "i", b + "g"], [b + "ig"]),
        n("Add", [b + "fc", b + "ig"], ["c_out"]),
        n("Tanh", ["c_out"], [b + "tc"]),
        n("Mul", [b + "o", b + "tc"], ["h_out"]),
    ]


def _gru_body(b: str, H: int, split) -> list:
    """ONNX GRU gates ``z, r, h`` with linear_before_reset=1: n = tanh(x_h + r*(h R_h + Rb_h)),
    h' = (1 - z)*n + z*h, written n + z*(h - n)."""
    from onnx import helper

    n = helper.make_node
    return [
        n("Split", ["xw_t", split(2 * H, H)], [b + "x_zr", b + "x_h"], axis=-1),
        n("Split", [b + "rec", split(2 * H, H)], [b + "r_zr", b + "r_h"], axis=-1),
        n("Add", [b + "x_zr", b + "r_zr"], [b + "g_zr"]),
        n("Sigmoid", [b + "g_zr"], [b + "zr"]),
        n("Split", [b + "zr", split(H, H)], [b + "z", b + "r"], axis=-1),
        n("Mul", [b + "r", b + "r_h"], [b + "rh"]),
        n("Add", [b + "x_h", b + "rh"], [b + "g_h"]),
        n("Tanh", [b + "g_h"], [b + "n"]),
        n("Sub", ["h", b + "n"], [b + "h_n"]),
        n("Mul", [b + "z", b + "h_n"], [b + "zh"]),
        n("Add", [b + "n", b + "zh"], ["h_out"]),
    ]


def _rnn_body(b: str, H: int, split) -> list:
    """h' = tanh(x W^T + h R^T + b)."""
    from onnx import helper

    return [helper.make_node("Add", ["xw_t", b + "rec"], [b + "g"]), helper.make_node("Tanh", [b + "g"], ["h_out"])]


_CELL_BODIES = {"LSTM": _lstm_body, "GRU": _gru_body, "RNN": _rnn_body}


def _inputs_with_subgraphs(node) -> list[str]:
    """A node's inputs, plus the outer-scope names its subgraphs (Scan, Loop, If) read."""
    names = list(node.input)
    for a in node.attribute:
        graphs = [a.g] if a.type == a.GRAPH else list(a.graphs) if a.type == a.GRAPHS else []
        for sub in graphs:
            local = (
                {i.name for i in sub.input}
                | {t.name for t in sub.initializer}
                | {o for n in sub.node for o in n.output}
            )
            names += [i for n in sub.node for i in _inputs_with_subgraphs(n) if i and i not in local]
    return names


def _live(nodes: list, outputs: list[str]) -> list:
    """``nodes`` without those whose outputs nothing needs (the folded Gather and Transpose)."""
    needed, keep = set(outputs), []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in _inputs_with_subgraphs(n) if i)
    return keep[::-1]
