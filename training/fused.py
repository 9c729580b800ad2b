"""Fused CPU kernels (numba) for the modern cells' training: one pass where PyTorch makes many.

On a CPU the matmuls of a small recurrent model run near the machine's FLOP rate; what is left,
chains of elementwise ops and their backward, is memory-bound and made of many full passes over
``[B, T, D]`` tensors, each a separate op (``F.rms_norm`` alone decomposes into pow, mean, add,
rsqrt, mul, mul on the CPU, and its backward into more). Here such a chain is one numba loop per
direction, parallel over independent rows, wrapped in a ``torch.autograd.Function``:

- :func:`rms_norm`: RMSNorm forward (``x * rsqrt(mean(x^2) + eps) * w``) and backward;
- :func:`mlstm`: the mLSTM layer between its two projections, its recurrence stepped per
  (batch row, head) with the per-head norm and output gate, and a hand-written backward that
  recomputes the states from checkpoints (:mod:`rnnops.training.mlstm` has the math, and the
  PyTorch forms tests compare it with).

The minGRU / minLSTM scan has its own Function in :mod:`rnnops.training.scan`. The loops live in
:mod:`rnnops.training.fused_kernels`, imported on first use (numba is slow to import).

numba is optional: :func:`numba_module` is None without it, and the callers fall back to
PyTorch ops (``RNNOPS_SCAN=torch`` forces that for every fused kernel). The kernels run on as
many threads as torch does (:func:`threads`), never more than torch was given.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

_numba = None


def numba_module():
    """The numba module, or None when it is not installed."""
    global _numba
    if _numba is None:
        try:
            import numba
        except ImportError:
            numba = False
        _numba = numba
    return _numba or None


def threads(numba) -> int:
    """numba's threads for the next kernel: torch's intra-op thread count (at most numba's pool)."""
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def _workers(items: int) -> int:
    """Set numba's threads (as :func:`threads`); the parallel loop's iterations: one per thread."""
    return min(items, threads(numba_module()))


def enabled(x: Tensor) -> bool:
    """Whether the fused kernels take ``x``: a CPU float tensor, numba installed, not turned off."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and os.environ.get("RNNOPS_SCAN", "fused") != "torch"
        and numba_module() is not None
    )


def _get(name: str):
    """The (forward, backward) kernels of ``name``, compiled on first use (cached on disk)."""
    from rnnops.training import fused_kernels as K

    return {"norm": (K.norm_forward, K.norm_backward), "mlstm": (K.mlstm_forward, K.mlstm_backward)}[name]


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        fwd, _ = _get("norm")
        x2 = x.detach().contiguous().view(-1, x.shape[-1])
        w = weight.detach().contiguous()
        y, rstd = torch.empty_like(x2), x2.new_empty(x2.shape[0])
        threads(numba_module())
        fwd(x2.numpy(), w.numpy(), eps, y.numpy(), rstd.numpy())
        ctx.save_for_backward(x2, w, rstd)
        ctx.shape = x.shape
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        _, bwd = _get("norm")
        x2, w, rstd = ctx.saved_tensors
        numba = numba_module()
        threads(numba)
        gy = grad_y.contiguous().view(x2.shape)
        gx = torch.empty_like(x2)
        gw = torch.zeros(numba.get_num_threads(), x2.shape[1], dtype=torch.float64)
        bwd(x2.numpy(), w.numpy(), rstd.numpy(), gy.numpy(), gx.numpy(), gw.numpy())
        return gx.view(ctx.shape), gw.sum(0).to(w.dtype), None


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last axis in one pass each way (callers check :func:`enabled` first)."""
    return _RMSNorm.apply(x, weight, eps)


class _MLSTM(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, qkvo: Tensor, gates: Tensor, C0: Tensor, n0: Tensor, m0: Tensor, weight: Tensor, eps: float, chunk: int
    ):
        fwd, _ = _get("mlstm")
        qkvo, gates, w = (z.detach().contiguous() for z in (qkvo, gates, weight))
        C0, n0, m0 = (z.detach().contiguous() for z in (C0, n0, m0))
        og = torch.sigmoid(qkvo[..., 3 * (qkvo.shape[-1] // 4) :])  # the output gate, vectorised by torch
        B, T, D4 = qkvo.shape
        H, d = C0.shape[1], C0.shape[2]
        nc = -(-T // chunk)
        y, hs = qkvo.new_empty(B, T, D4 // 4), qkvo.new_empty(B, T, D4 // 4)
        Ck, nk, mk = qkvo.new_empty(B, H, nc, d, d), qkvo.new_empty(B, H, nc, d), qkvo.new_empty(B, H, nc)
        Cn, nn_, mn_ = torch.empty_like(C0), torch.empty_like(n0), torch.empty_like(m0)
        fwd(
            *(z.numpy() for z in (qkvo, gates, og, C0, n0, m0, w)),
            1.0 / math.sqrt(d),
            eps,
            chunk,
            _workers(B * H),
            *(z.numpy() for z in (y, hs, Ck, nk, mk, Cn, nn_, mn_)),
        )
        ctx.save_for_backward(qkvo, gates, og, w, hs, Ck, nk, mk)
        ctx.eps, ctx.chunk = eps, chunk
        return y, Cn, nn_, mn_

    @staticmethod
    def backward(ctx, gy: Tensor, gCn: Tensor, gnn: Tensor, gmn: Tensor):
        _, bwd = _get("mlstm")
        qkvo, gates, og, w, hs, Ck, nk, mk = ctx.saved_tensors
        B, H, _, d, _ = Ck.shape
        gqkvo, ggates = torch.empty_like(qkvo), torch.empty_like(gates)
        gC0, gn0, gm0 = qkvo.new_empty(B, H, d, d), qkvo.new_empty(B, H, d), qkvo.new_empty(B, H)
        gw = qkvo.new_zeros(B, w.shape[0])
        bwd(
            *(z.numpy() for z in (qkvo, gates, og, w)),
            1.0 / math.sqrt(d),
            ctx.eps,
            ctx.chunk,
            _workers(B * H),
            *(z.detach().contiguous().numpy() for z in (hs, Ck, nk, mk, gy, gCn, gnn, gmn)),
            *(z.numpy() for z in (gqkvo, ggates, gC0, gn0, gm0, gw)),
        )
        return gqkvo, ggates, gC0, gn0, gm0, gw.sum(0), None, None


def mlstm(qkvo: Tensor, gates: Tensor, C: Tensor, n: Tensor, m: Tensor, weight: Tensor, eps: float, chunk: int = 32):
    """The mLSTM layer between its two projections, fused: the recurrence (as
    :func:`rnnops.training.mlstm.mlstm_step`, q scaled by 1/sqrt(d)), the per-head layer norm, its
    weight and the output gate. qkvo [B, T, 4D] = [q | k | v | o], gates [B, T, 2H] = [i~ | f~];
    returns (y [B, T, D], C, n, m). ``chunk``: steps between the backward pass's checkpoints."""
    return _MLSTM.apply(qkvo, gates, C, n, m, weight, eps, chunk)
