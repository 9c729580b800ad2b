"""The recurrent core as opaque custom ops, so the dynamo ONNX exporter keeps time symbolic.

Why: in torch 2.13 ``torch.export`` traces ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` through their
fake-tensor kernels, which walk the sequence step by step and so fix the time axis to the
example's length. For LSTM and GRU the ONNX translation still emits the native (shape-generic)
op, but the graph's declared output shapes keep the example's T, and onnxruntime warns on every
call with another length; for ``nn.RNN`` there is no ONNX translation at all and the decomposed
graph is unrolled over exactly T steps (any other length is rejected).

The fix: the inference module's recurrent layer is swapped for :class:`CustomOpRecurrent`, which
calls ``rnnops::lstm`` / ``rnnops::gru`` / ``rnnops::rnn_tanh``. Each custom op runs PyTorch's own
kernel eagerly (``torch.lstm`` etc.), has a fake kernel that gives symbolic output shapes, and
has an onnxscript translation to the native ONNX ``LSTM`` / ``GRU`` / ``RNN`` op (gates reordered
from PyTorch's layout to ONNX's). Only the dynamo path imports this module.
"""

from __future__ import annotations

import torch
from onnxscript import opset18 as op
from torch import Tensor, nn

# ------------------------------------------------------------------ custom ops (eager + fake)


@torch.library.custom_op("rnnops::lstm", mutates_args=())
def lstm(x: Tensor, h0: Tensor, c0: Tensor, weights: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Batch-first, unidirectional multi-layer LSTM with biases (``weights`` as nn.LSTM orders them)."""
    y, hn, cn = torch.lstm(x, (h0, c0), weights, True, h0.shape[0], 0.0, False, False, True)
    return y, hn, cn


@lstm.register_fake
def _(x, h0, c0, weights):
    return x.new_empty(x.shape[0], x.shape[1], h0.shape[2]), torch.empty_like(h0), torch.empty_like(c0)


@torch.library.custom_op("rnnops::gru", mutates_args=())
def gru(x: Tensor, h0: Tensor, weights: list[Tensor]) -> tuple[Tensor, Tensor]:
    y, hn = torch.gru(x, h0, weights, True, h0.shape[0], 0.0, False, False, True)
    return y, hn


@gru.register_fake
def _(x, h0, weights):
    return x.new_empty(x.shape[0], x.shape[1], h0.shape[2]), torch.empty_like(h0)


@torch.library.custom_op("rnnops::rnn_tanh", mutates_args=())
def rnn_tanh(x: Tensor, h0: Tensor, weights: list[Tensor]) -> tuple[Tensor, Tensor]:
    y, hn = torch.rnn_tanh(x, h0, weights, True, h0.shape[0], 0.0, False, False, True)
    return y, hn


@rnn_tanh.register_fake
def _(x, h0, weights):
    return x.new_empty(x.shape[0], x.shape[1], h0.shape[2]), torch.empty_like(h0)


class CustomOpRecurrent(nn.Module):
    """Drop-in for a batch-first nn.LSTM / nn.GRU / nn.RNN(tanh) that calls the custom ops."""

    def __init__(self, rnn: nn.Module, onnx_op: str):
        super().__init__()
        self.rnn = rnn  # keeps the parameters (and their names) where they were
        self.op = onnx_op  # "LSTM" | "GRU" | "RNN": the cell's export form (training/cells.py)
        self.names = [
            f"{w}_l{k}" for k in range(rnn.num_layers) for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]

    def forward(self, x: Tensor, hx):
        weights = [getattr(self.rnn, n) for n in self.names]
        if self.op == "LSTM":
            y, hn, cn = lstm(x, hx[0], hx[1], weights)
            return y, (hn, cn)
        y, hn = {"GRU": gru, "RNN": rnn_tanh}[self.op](x, hx, weights)
        return y, hn


def with_custom_ops(step: nn.Module, onnx_op: str) -> nn.Module:
    """A shallow copy of an inference module whose recurrent layer goes through the custom ops."""
    import copy

    swapped = copy.copy(step)
    swapped._modules = dict(step._modules)
    swapped._modules["rnn"] = CustomOpRecurrent(step.rnn, onnx_op)
    return swapped


# ------------------------------------------------------------------ ONNX translations

# Row blocks of the stacked gate weights, PyTorch order -> ONNX order.
_LSTM_ORDER = (0, 3, 1, 2)  # PyTorch i, f, g, o  -> ONNX i, o, f, c
_GRU_ORDER = (1, 0, 2)  # PyTorch r, z, n     -> ONNX z, r, h


def _reorder(w, hidden: int, order):
    if order is None:
        return w
    blocks = [op.Slice(w, [k * hidden], [(k + 1) * hidden], axes=[0]) for k in order]
    return op.Concat(*blocks, axis=0)


def _layers(x, h0, c0, weights, cell: str):
    """Emit one native ONNX recurrent op per layer; returns (y [B,T,H], hn, cn or None)."""
    hidden = h0.shape[2]
    order = {"lstm": _LSTM_ORDER, "gru": _GRU_ORDER, "rnn": None}[cell]
    cur = op.Transpose(x, perm=[1, 0, 2])  # ONNX recurrent ops are time-major
    hs, cs = [], []
    for layer in range(len(weights) // 4):
        w_ih, w_hh, b_ih, b_hh = weights[4 * layer : 4 * layer + 4]
        W = op.Unsqueeze(_reorder(w_ih, hidden, order), [0])
        R = op.Unsqueeze(_reorder(w_hh, hidden, order), [0])
        B = op.Unsqueeze(op.Concat(_reorder(b_ih, hidden, order), _reorder(b_hh, hidden, order), axis=0), [0])
        h = op.Slice(h0, [layer], [layer + 1], axes=[0])
        if cell == "lstm":
            c = op.Slice(c0, [layer], [layer + 1], axes=[0])
            y, yh, yc = op.LSTM(cur, W, R, B, None, h, c, hidden_size=hidden)
            cs.append(yc)
        elif cell == "gru":
            # linear_before_reset=1 is PyTorch's GRU: the reset gate scales (W_hn h + b_hn).
            y, yh = op.GRU(cur, W, R, B, None, h, hidden_size=hidden, linear_before_reset=1)
        else:
            y, yh = op.RNN(cur, W, R, B, None, h, hidden_size=hidden, activations=["Tanh"])
        hs.append(yh)
        cur = op.Squeeze(y, [1])  # [T, 1, B, H] -> [T, B, H]

    def cat(xs):
        return xs[0] if len(xs) == 1 else op.Concat(*xs, axis=0)

    return op.Transpose(cur, perm=[1, 0, 2]), cat(hs), (cat(cs) if cs else None)


def _lstm_onnx(x, h0, c0, weights):
    return _layers(x, h0, c0, weights, "lstm")


def _gru_onnx(x, h0, weights):
    y, hn, _ = _layers(x, h0, None, weights, "gru")
    return y, hn


def _rnn_onnx(x, h0, weights):
    y, hn, _ = _layers(x, h0, None, weights, "rnn")
    return y, hn


TRANSLATIONS = {
    torch.ops.rnnops.lstm.default: _lstm_onnx,
    torch.ops.rnnops.gru.default: _gru_onnx,
    torch.ops.rnnops.rnn_tanh.default: _rnn_onnx,
}
