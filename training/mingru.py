"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"), log-space version.

The 2015 cells gate on ``h_{t-1}``, so each step waits for the previous one. The minimal cells
gate on the input only:

    minGRU:   z_t = sigmoid(W_z x_t),  h~_t = g(W_h x_t)
              h_t = (1 - z_t) * h_{t-1} + z_t * h~_t
    minLSTM:  f_t = sigmoid(W_f x_t),  i_t = sigmoid(W_i x_t),  h~_t = g(W_h x_t)
              h_t = f'_t * h_{t-1} + i'_t * h~_t,  with f' = f / (f + i), i' = i / (f + i)

where ``g(x) = x + 0.5`` for x >= 0 and ``sigmoid(x)`` below keeps ``h~`` positive (the paper's
log-space variant). Every gate is known for the whole sequence up front, so training runs
``h_t = a_t h_{t-1} + b_t`` as one scan (:mod:`rnnops.training.scan`); inference steps the same
recurrence. Each layer returns all ``h_t`` as its output (state size = width) and its state
is ``h [batch, width]``.

Written in log space: ``log a`` and ``log b`` come out of softplus terms, never a log of a
rounded-off sigmoid; for minLSTM, ``f' = sigmoid(d)`` and ``i' = sigmoid(-d)`` with
``d = log f - log i = softplus(-W_i x) - softplus(-W_f x)``. The stepped form (``recurrent``,
what export writes) takes ``a`` and ``b`` in linear space instead (:meth:`coefficients`):
sigmoids and a ``where``, the same values without a log or exp per step, and no ``Softplus``,
which onnxruntime runs unvectorised (it was two thirds of a step at batch 64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnops.training import scan as S


def log_g(x: Tensor) -> Tensor:
    """log of the paper's positive activation g: log(x + 0.5) for x >= 0, log sigmoid(x) below."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def g(x: Tensor) -> Tensor:
    """The paper's positive activation: x + 0.5 for x >= 0, sigmoid(x) below."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


class MinGRU(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.to_gate_hidden = nn.Linear(width, 2 * width, bias=False)  # W_z and W_h in one matmul

    kernel = S.MINGRU

    def pre_activations(self, x: Tensor) -> Tensor:
        return self.to_gate_hidden(x)

    @staticmethod
    def log_coefficients(pre: Tensor) -> tuple[Tensor, Tensor]:
        k, pre_h = pre.chunk(2, dim=-1)
        return -F.softplus(k), -F.softplus(-k) + log_g(pre_h)  # log(1 - z), log(z * h~)

    @staticmethod
    def coefficients(pre: Tensor) -> tuple[Tensor, Tensor]:
        k, pre_h = pre.chunk(2, dim=-1)
        z = torch.sigmoid(k)
        return 1 - z, z * g(pre_h)  # a = 1 - z, b = z h~

    def forward(self, x: Tensor, state: tuple[Tensor, ...] | None = None, recurrent: bool = False):
        """x [B, T, D] -> all h_t [B, T, D], (h_T [B, D],). ``recurrent``: step (the export path)."""
        return _gated(self, x, state, recurrent)


class MinLSTM(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.to_gates_hidden = nn.Linear(width, 3 * width, bias=False)  # W_f, W_i, W_h

    kernel = S.MINLSTM

    def pre_activations(self, x: Tensor) -> Tensor:
        return self.to_gates_hidden(x)

    @staticmethod
    def log_coefficients(pre: Tensor) -> tuple[Tensor, Tensor]:
        pre_f, pre_i, pre_h = pre.chunk(3, dim=-1)
        d = F.softplus(-pre_i) - F.softplus(-pre_f)  # log f - log i
        return -F.softplus(-d), -F.softplus(d) + log_g(pre_h)  # log f', log(i' * h~)

    @staticmethod
    def coefficients(pre: Tensor) -> tuple[Tensor, Tensor]:
        pre_f, pre_i, pre_h = pre.chunk(3, dim=-1)
        f, i = torch.sigmoid(pre_f), torch.sigmoid(pre_i)
        a = f / torch.clamp(f + i, min=1e-37)  # f' = f / (f + i); both underflowed (< -88): a = 0, as the kernel
        return a, (1 - a) * g(pre_h)  # a = f', b = i' h~

    def forward(self, x: Tensor, state: tuple[Tensor, ...] | None = None, recurrent: bool = False):
        return _gated(self, x, state, recurrent)


def _gated(layer, x: Tensor, state, recurrent: bool, impl: str = "auto"):
    """``impl``: "auto" (the fused kernel where it runs, else log space), "fused" or "torch"."""
    pre = layer.pre_activations(x)
    h0 = state[0] if state is not None else x.new_zeros(x.shape[0], x.shape[2])
    if recurrent:  # the stepped form export writes: linear-space coefficients, no Softplus (slow in ORT)
        hs, h = S.scan_loop(*layer.coefficients(pre), h0)
        return hs, (h,)
    if impl == "fused" or (impl == "auto" and S.fused_available(pre)):
        hs = S.fused_scan(layer.kernel, pre, h0)
    else:
        hs = S.scan_log_space(*layer.log_coefficients(pre), h0)
    return hs, (hs[:, -1],)


def sequential(layer, x: Tensor, state: tuple[Tensor, ...] | None = None):
    """Reference: the recurrence one step at a time in Python (tests compare the scans with it)."""
    log_a, log_b = layer.log_coefficients(layer.pre_activations(x))
    a, b = log_a.exp(), log_b.exp()
    h = state[0] if state is not None else x.new_zeros(x.shape[0], x.shape[2])
    outs = []
    for t in range(x.shape[1]):
        h = a[:, t] * h + b[:, t]
        outs.append(h)
    return torch.stack(outs, 1), (h,)
