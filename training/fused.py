"""Fused CPU kernels (numba) for the modern cells' training: one pass where PyTorch makes many.

On a CPU the matmuls of a small recurrent model run near the machine's FLOP rate; what is left,
chains of elementwise ops and their backward, is memory-bound and made of many full passes over
``[B, T, D]`` tensors, each a separate op (``F.rms_norm`` alone decomposes into pow, mean, add,
rsqrt, mul, mul on the CPU, and its backward into more). Here such a chain is one numba loop per
direction, parallel over independent rows, wrapped in a ``torch.autograd.Function``:

- :func:`rms_norm`: RMSNorm forward (``x * rsqrt(mean(x^2) + eps) * w``) and backward.

The minGRU / minLSTM scan has its own kernels in :mod:`rnnops.training.scan`. The loops live in
:mod:`rnnops.training.fused_kernels`, imported on first use (numba is slow to import).

numba is optional: :func:`numba_module` is None without it, and the callers fall back to
PyTorch ops (``RNNOPS_SCAN=torch`` forces that for every fused kernel). The kernels run on as
many threads as torch does (:func:`threads`), never more than torch was given.
"""

from __future__ import annotations

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


def enabled(x: Tensor) -> bool:
    """Whether the fused kernels take ``x``: a CPU float tensor, numba installed, not turned off."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and os.environ.get("RNNOPS_SCAN", "fused") != "torch" and numba_module() is not None)


def _get(name: str):
    """The (forward, backward) kernels of ``name``, compiled on first use (cached on disk)."""
    from rnnops.training import fused_kernels as K

    return {"norm": (K.norm_forward, K.norm_backward)}[name]


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
