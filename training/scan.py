"""The gated linear scan shared by minGRU and minLSTM: ``h_t = a_t * h_{t-1} + b_t``.

Both cells (Feng et al. 2024, "Were RNNs All We Needed?") reduce to this recurrence once their
gates no longer read ``h_{t-1}``: every ``a_t`` and ``b_t`` is computed from the input alone, for
the whole sequence at once, and only this elementwise recurrence is left. The cells hand it
over in log space (``log a``, ``log b``), as the paper's numerically stable version does.

Three forms, one result:

- :func:`fused_scan` (training, the default on CPU): gates + recurrence as **one fused
  kernel**, a numba loop over time for the forward pass and a reverse loop for the gradients,
  wrapped in a ``torch.autograd.Function``, the rows of the batch in parallel on torch's
  threads. The chain of PyTorch ops of the log-space form (softplus, where, exp, cumsum,
  logcumsumexp and their backward) makes a few dozen full passes over ``[B, T, D]`` tensors,
  which on a CPU cost more than the matmuls; the kernel makes one pass each way, at the
  speed of memory.
- :func:`scan_log_space`: the paper's log-space parallel scan in plain PyTorch
  (``h = exp(a* + logcumsumexp(log b - a*))`` with ``a* = cumsum(log a)``), in chunks of 64
  steps so that ``a*`` stays small enough for float32 on long sequences. It is the fallback
  when numba is not installed or the tensors are not on the CPU (``RNNOPS_SCAN=torch`` forces
  it); tests check it against the kernel.
- :func:`scan_loop` (inference, export): the recurrence stepped one ``t`` at a time, scripted,
  so the ONNX exporter turns it into a ``Loop`` whose trip count is the input's time length.
  (A T=1 branch without the Loop measured no faster in onnxruntime 1.32: the Loop's own cost
  is about a microsecond per layer and step; docs/training.md.)

An initial state ``h0`` may be negative (it is a free input to the exported graph), so it is
carried linearly, ``h_t = A_t h0 + (scan from zero)_t``, never through a logarithm.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnops.training import fused

CHUNK = 64  # steps per log-space chunk: cumsum(log a) over 64 steps keeps float32 precise

# ------------------------------------------------------------------ the fused kernels (numba, in fused_kernels.py)
# One pass over time per direction, straight from the gate pre-activations ``pre`` [B, T, k*D]
# (minGRU: k = 2, [W_z x | W_h x]; minLSTM: k = 3, [W_f x | W_i x | W_h x]) and their sigmoids
# (one vectorised torch.sigmoid over the whole tensor): the gates, the recurrence and, walking
# back, the gradients of the pre-activations, without materialising any intermediate [B, T, D]
# tensor and without a transcendental function in the loop. Same formulas as the log-space
# form (tests check them against each other):
#   minGRU:  a = 1 - sigmoid(k)                        b = (1 - a) g
#   minLSTM: a = sigmoid(f~) / (sigmoid(f~) + sigmoid(i~))   b = (1 - a) g
#            (= sigmoid(log sigmoid(f~) - log sigmoid(i~)), the log-space form's f')
#   g = p + 0.5 for p >= 0, else sigmoid(p)

MINGRU, MINLSTM = 0, 1


def _numba_kernels():
    """The kernels, {cell: (forward, backward)}, compiled on first use (cached on disk); None
    without numba."""
    if fused.numba_module() is None:
        return None
    from rnnops.training import fused_kernels

    return fused_kernels.SCAN


class _FusedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell: int, pre: Tensor, h0: Tensor) -> Tensor:
        fwd, _ = _numba_kernels()[cell]
        pre, h0 = pre.detach().contiguous(), h0.detach().contiguous()
        sig = torch.sigmoid(pre)
        h = pre.new_empty(pre.shape[0], pre.shape[1], h0.shape[1])
        fused.threads(fused.numba_module())
        fwd(pre.numpy(), sig.numpy(), h0.numpy(), h.numpy())
        ctx.cell = cell
        ctx.save_for_backward(pre, sig, h0, h)
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        _, bwd = _numba_kernels()[ctx.cell]
        pre, sig, h0, h = ctx.saved_tensors
        grad_pre, grad_h0 = torch.empty_like(pre), torch.empty_like(h0)
        fused.threads(fused.numba_module())
        bwd(
            pre.numpy(),
            sig.numpy(),
            h0.numpy(),
            h.numpy(),
            grad_h.detach().contiguous().numpy(),
            grad_pre.numpy(),
            grad_h0.numpy(),
        )
        return None, grad_pre, grad_h0


def fused_available(x: Tensor) -> bool:
    return fused.enabled(x) and _numba_kernels() is not None


def fused_scan(cell: int, pre: Tensor, h0: Tensor) -> Tensor:
    """All ``h_t`` [B, T, D] of minGRU (``cell=MINGRU``) or minLSTM from the pre-activations, fused."""
    return _FusedScan.apply(cell, pre, h0)


# ------------------------------------------------------------------ plain PyTorch forms


def scan_log_space(log_a: Tensor, log_b: Tensor, h0: Tensor, chunk: int = CHUNK) -> Tensor:
    """The paper's parallel scan in log space (Heinsen's form), chunk by chunk, in plain PyTorch."""
    outs, h = [], h0
    for s in range(0, log_a.shape[1], chunk):
        la, lb = log_a[:, s : s + chunk], log_b[:, s : s + chunk]
        a_star = la.cumsum(1)  # log A_t = sum of log a up to t (within the chunk)
        hs = torch.exp(a_star + torch.logcumsumexp(lb - a_star, dim=1)) + torch.exp(a_star) * h[:, None]
        outs.append(hs)
        h = hs[:, -1]
    return outs[0] if len(outs) == 1 else torch.cat(outs, 1)


@torch.jit.script
def scan_loop(a: Tensor, b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """The recurrence stepped over time (what inference and the ONNX ``Loop`` run).

    ``a``, ``b`` [B, T, D] in linear space, ``h`` [B, D]; returns all ``h_t`` [B, T, D] and the last.
    """
    a, b = a.transpose(0, 1), b.transpose(0, 1)  # time-major: one Gather per step in the Loop body
    outs: list[Tensor] = []
    for t in range(a.size(0)):
        h = a[t] * h + b[t]
        outs.append(h)
    return torch.stack(outs, 1), h
