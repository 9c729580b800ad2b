"""xLSTM's mLSTM (Beck et al. 2024): a matrix memory per head with stabilised exponential gating.

Per head, with ``q_t`` scaled by ``1/sqrt(d_k)``, scalar gates ``i~_t`` (input, exponential) and
``f~_t`` (forget, ``log f_t = log sigmoid(f~_t)``) and the stabiliser ``m``:

    m_t = max(log f_t + m_{t-1}, i~_t)
    C_t = exp(log f_t + m_{t-1} - m_t) C_{t-1} + exp(i~_t - m_t) k_t v_t^T      [d_k, d_v]
    n_t = exp(log f_t + m_{t-1} - m_t) n_{t-1} + exp(i~_t - m_t) k_t            [d_k]
    h_t = C_t^T q_t / (max(|n_t . q_t|, exp(-m_t)) + eps)

``C`` and ``n`` are kept divided by ``exp(m_t)``, so nothing overflows however large the gates.
The state is ``C [B, heads, d_k, d_v]``, ``n [B, heads, d_k]``, ``m [B, heads]``; all zeros is
the empty memory.

Three forms of the same recurrence:

- **fused kernel** (training and eager inference on the CPU, :func:`rnnops.training.fused.mlstm`):
  the step above in a numba loop per (batch row, head), forward and a hand-written backward
  (checkpointed every 32 steps), with the per-head norm and the output gate fused in. On a CPU
  the chunkwise form below is dozens of small ops over ``[B, H, L, L]`` tensors and their
  backward; the loop is one pass each way (docs/training.md has the figures).
- **chunkwise parallel** (the same, in plain PyTorch: without numba, or off the CPU): unrolled,
  ``m_t`` is a max over ``F_t + m_0`` and ``F_t - F_s + i~_s`` (``F`` the running sum of
  ``log f``), and ``h`` is a masked, stabilised attention-like product. Done over chunks of
  :data:`CHUNK` steps with the state carried between them, so an initial state enters exactly
  and memory stays linear in T.
- **recurrent** (:func:`mlstm_loop`, scripted): the step above, one ``t`` at a time: what the
  ONNX graph and served generation run (a ``Loop`` over time; for T=1 one step in an ``If``
  branch, without the Loop).

The layer around it (xLSTM's mLSTM layer, without its causal convolution, so the state is the
memory alone): q, k, v, an output gate ``o`` and the two scalar gates per head from the input;
each head's output layer-normalised, scaled, gated by ``sigmoid(o)`` and projected back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnops.training import fused

CHUNK = 64
EPS = 1e-6


@torch.jit.script
def mlstm_step(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, logf: Tensor, C: Tensor, n: Tensor, m: Tensor, eps: float = 1e-6
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step: q, k [B, H, d_k], v [B, H, d_v], i, logf [B, H]; returns h [B, H, d_v], C, n, m."""
    m_new = torch.maximum(logf + m, i)
    f = torch.exp(logf + m - m_new).unsqueeze(-1)  # [B, H, 1]
    ak = torch.exp(i - m_new).unsqueeze(-1) * k  # a k: scaled once, so C takes three passes, not four
    C = f.unsqueeze(-1) * C + ak.unsqueeze(-1) * v.unsqueeze(-2)
    n = f * n + ak
    num = torch.matmul(q.unsqueeze(-2), C).squeeze(-2)
    den = torch.maximum((q * n).sum(-1, keepdim=True).abs(), torch.exp(-m_new).unsqueeze(-1)) + eps
    return num / den, C, n, m_new


@torch.jit.script
def mlstm_loop(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, logf: Tensor, C: Tensor, n: Tensor, m: Tensor, eps: float = 1e-6
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The recurrence over time: q, k, v [B, T, H, d], i, logf [B, T, H] -> h [B, T, H, d_v], C, n, m."""
    if q.size(1) == 1:  # one step (served generation): an If branch in ONNX, 6 % faster than the Loop at batch 1
        h, C, n, m = mlstm_step(q[:, 0], k[:, 0], v[:, 0], i[:, 0], logf[:, 0], C, n, m, eps)
        return h.unsqueeze(1), C, n, m
    q, k, v, i, logf = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), i.transpose(0, 1), logf.transpose(0, 1)
    outs: list[Tensor] = []
    for t in range(q.size(0)):
        h, C, n, m = mlstm_step(q[t], k[t], v[t], i[t], logf[t], C, n, m, eps)
        outs.append(h)
    return torch.stack(outs, 1), C, n, m


def parallel_chunk(q, k, v, i, logf, C, n, m, eps: float = EPS):
    """One chunk in parallel from state (C, n, m): q, k, v [B, H, L, d], i, logf [B, H, L]."""
    L = q.shape[2]
    cum = logf.cumsum(-1)  # F_t
    log_w = cum[..., :, None] - cum[..., None, :] + i[..., None, :]  # [B, H, t, s]: F_t - F_s + i~_s
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    log_w = log_w.masked_fill(~causal, float("-inf"))
    log_w0 = cum + m[..., None]  # the initial state's weight, F_t + m_0
    m_t = torch.maximum(log_w.amax(-1), log_w0)
    scores = (q @ k.transpose(-1, -2)) * torch.exp(log_w - m_t[..., None])
    w0 = torch.exp(log_w0 - m_t)
    num = scores @ v + w0[..., None] * (q @ C)
    den = scores.sum(-1) + w0 * (q @ n[..., None])[..., 0]
    h = num / (torch.maximum(den.abs(), torch.exp(-m_t)) + eps)[..., None]
    # the state after the chunk: the same weights, read at its last step
    m_last = m_t[..., -1]
    w = torch.exp(cum[..., -1:] - cum + i - m_last[..., None])  # [B, H, L]
    w0_last = torch.exp(cum[..., -1] + m - m_last)
    kw = k * w[..., None]
    C = w0_last[..., None, None] * C + kw.transpose(-1, -2) @ v
    n = w0_last[..., None] * n + kw.sum(-2)
    return h, C, n, m_last


def chunkwise(q, k, v, i, logf, C, n, m, chunk: int = CHUNK):
    """The whole sequence, chunk by chunk carrying the state: same shapes as :func:`parallel_chunk`."""
    outs = []
    for s in range(0, q.shape[2], chunk):
        sl = slice(s, s + chunk)
        h, C, n, m = parallel_chunk(q[:, :, sl], k[:, :, sl], v[:, :, sl], i[:, :, sl], logf[:, :, sl], C, n, m)
        outs.append(h)
    return (outs[0] if len(outs) == 1 else torch.cat(outs, 2)), C, n, m


class MLSTM(nn.Module):
    """The mLSTM layer: ``forward(x [B, T, D], (C, n, m) | None) -> (y [B, T, D], (C, n, m))``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"mlstm heads ({heads}) must divide the width ({width})")
        self.heads, self.head_dim = heads, width // heads
        self.qkvo = nn.Linear(width, 4 * width, bias=False)
        self.gates = nn.Linear(width, 2 * heads)  # i~ and f~ per head
        self.norm_weight = nn.Parameter(torch.ones(width))
        self.out = nn.Linear(width, width, bias=False)
        with torch.no_grad():  # xLSTM's gate init: forget gates open (bias 3..6), input gates near 0
            self.gates.weight.zero_()
            self.gates.bias[:heads].normal_(0.0, 0.1)
            self.gates.bias[heads:] = torch.linspace(3.0, 6.0, heads)

    def zero_state(self, batch: int, dtype=torch.float32, device=None) -> tuple[Tensor, Tensor, Tensor]:
        H, d = self.heads, self.head_dim
        return (
            torch.zeros(batch, H, d, d, dtype=dtype, device=device),
            torch.zeros(batch, H, d, dtype=dtype, device=device),
            torch.zeros(batch, H, dtype=dtype, device=device),
        )

    def projections(self, x: Tensor):
        B, T = x.shape[0], x.shape[1]
        q, k, v, o = self.qkvo(x).chunk(4, dim=-1)
        i, f = self.gates(x).chunk(2, dim=-1)  # [B, T, H]
        shape = (B, T, self.heads, self.head_dim)
        return q.reshape(shape) / math.sqrt(self.head_dim), k.reshape(shape), v.reshape(shape), i, -F.softplus(-f), o

    def forward(self, x: Tensor, state: tuple[Tensor, ...] | None = None, recurrent: bool = False):
        C, n, m = state if state is not None else self.zero_state(x.shape[0], x.dtype, x.device)
        if not recurrent and fused.enabled(x):  # CPU: the recurrence, norm and gate as one fused kernel
            y, C, n, m = fused.mlstm(self.qkvo(x), self.gates(x), C, n, m, self.norm_weight, EPS)
            return self.out(y), (C, n, m)
        q, k, v, i, logf, o = self.projections(x)
        if recurrent:
            h, C, n, m = mlstm_loop(q, k, v, i, logf, C, n, m, EPS)  # h [B, T, H, d]
        else:
            t = lambda z: z.transpose(1, 2)  # noqa: E731  [B, T, H, ...] -> [B, H, T, ...]
            h, C, n, m = chunkwise(t(q), t(k), t(v), t(i), t(logf), C, n, m)
            h = t(h)
        return self.read_out(h, o), (C, n, m)

    def read_out(self, h: Tensor, o: Tensor) -> Tensor:
        """Per-head layer norm, scale, output gate, projection: h [B, T, H, d] -> [B, T, D]."""
        mean = h.mean(-1, keepdim=True)
        var = ((h - mean) ** 2).mean(-1, keepdim=True)
        h = (h - mean) / torch.sqrt(var + 1e-5)
        h = h.reshape(h.shape[0], h.shape[1], -1)
        return self.out(h * self.norm_weight * torch.sigmoid(o))


def sequential(layer: MLSTM, x: Tensor, state: tuple[Tensor, ...] | None = None):
    """Reference: the recurrent step in a Python loop (tests compare the chunkwise form with it)."""
    q, k, v, i, logf, o = layer.projections(x)
    C, n, m = state if state is not None else layer.zero_state(x.shape[0], x.dtype)
    hs = []
    for t in range(x.shape[1]):
        h, C, n, m = mlstm_step(q[:, t], k[:, t], v[:, t], i[:, t], logf[:, t], C, n, m, EPS)
        hs.append(h)
    return layer.read_out(torch.stack(hs, 1), o), (C, n, m)
