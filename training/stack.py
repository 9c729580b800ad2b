"""The residual stack around the modern cells (minGRU, minLSTM, mLSTM), and their state layout.

As in the minGRU paper's language model (and nanoGPT's transformer blocks), each layer is a
pre-norm residual block, then a final norm:

    x = Linear(input -> width)(x)            (only when the input is not already `width` wide)
    for each block:
        x = x + dropout(cell(RMSNorm(x)))     minGRU / minLSTM / mLSTM, carrying its state
        x = x + dropout(MLP(RMSNorm(x)))      GELU MLP, ff_mult x width inside (0 = no MLP)
    x = RMSNorm(x)

State, as the ONNX contract's ``rnnops.state`` describes it (:func:`state_tensors`):

- minGRU / minLSTM: ``h [layers, batch, width]``, named ``h0`` / ``hn``: the classic GRU
  layout, one row per block.
- mLSTM: per block ``l``: ``C [batch, heads, d_k, d_v]``, ``n [batch, heads, d_k]``,
  ``m [batch, heads]`` named ``C0_l<l>`` / ``Cn_l<l>``, ``n0_l<l>`` / ``nn_l<l>``,
  ``m0_l<l>`` / ``mn_l<l>``, in that order (batch is axis 0).

All zeros is the empty state for every cell. ``forward(x, state, recurrent=False)`` runs the
training (parallel / fused scan) form; ``recurrent=True`` the stepped form that export uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnops.contract import BATCH_DIM, StateTensor
from rnnops.training import fused

DEFAULT_HEADS = 4
DEFAULT_FF_MULT = 4.0


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing() or torch.jit.is_scripting():  # export: the formula, in plain ops
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        if fused.enabled(x):  # one pass each way (F.rms_norm is six ops and their backward on a CPU)
            return fused.rms_norm(x, self.weight, self.eps)
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class MLP(nn.Module):
    def __init__(self, width: int, mult: float):
        super().__init__()
        inner = max(1, int(round(width * mult)))
        self.up, self.down = nn.Linear(width, inner), nn.Linear(inner, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, cell: nn.Module, width: int, ff_mult: float, dropout: float):
        super().__init__()
        self.norm1 = RMSNorm(width)
        self.cell = cell
        self.norm2 = RMSNorm(width) if ff_mult > 0 else None
        self.mlp = MLP(width, ff_mult) if ff_mult > 0 else None
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, state, recurrent: bool):
        y, state = self.cell(self.norm1(x), state, recurrent)
        x = x + self.drop(y)
        if self.mlp is not None:
            x = x + self.drop(self.mlp(self.norm2(x)))
        return x, state


class CellStack(nn.Module):
    """``forward(x [B, T, input], state | None) -> (y [B, T, width], state)``; state as in the module doc."""

    def __init__(
        self,
        cell: str,
        make_cell,
        input_size: int,
        width: int,
        layers: int,
        heads: int | None = None,
        ff_mult: float | None = None,
        dropout: float = 0.0,
    ):
        """``make_cell(width, heads)``: one block's cell module (the registry entry's ``block_cell``)."""
        super().__init__()
        self.cell, self.width, self.layers = cell, width, layers
        self.heads = heads or DEFAULT_HEADS
        ff = DEFAULT_FF_MULT if ff_mult is None else float(ff_mult)
        self.proj = nn.Linear(input_size, width) if input_size != width else nn.Identity()
        self.blocks = nn.ModuleList(Block(make_cell(width, self.heads), width, ff, dropout) for _ in range(layers))
        self.norm = RMSNorm(width)

    def forward(self, x: Tensor, state: tuple[Tensor, ...] | None = None, recurrent: bool = False):
        x = self.proj(x)
        per_block = []
        for index, block in enumerate(self.blocks):
            x, s = block(x, None if state is None else self._block_state(state, index), recurrent)
            per_block.append(s)
        return self.norm(x), self._pack(per_block)

    def _block_state(self, state, index: int):
        if self.cell == "mlstm":
            return tuple(state[3 * index : 3 * index + 3])
        return (state[0][index],)

    def _pack(self, per_block) -> tuple[Tensor, ...]:
        if self.cell == "mlstm":
            return tuple(t for s in per_block for t in s)
        return (torch.stack([s[0] for s in per_block]),)


def state_tensors(cell: str, layers: int, width: int, heads: int | None = None) -> tuple[StateTensor, ...]:
    """The state of a modern-cell stack, in the contract's terms (names, shapes with batch, dtype)."""
    if cell == "mlstm":
        h = heads or DEFAULT_HEADS
        d = width // h
        out = []
        for l in range(layers):
            out += [
                StateTensor(f"C0_l{l}", f"Cn_l{l}", (BATCH_DIM, h, d, d)),
                StateTensor(f"n0_l{l}", f"nn_l{l}", (BATCH_DIM, h, d)),
                StateTensor(f"m0_l{l}", f"mn_l{l}", (BATCH_DIM, h)),
            ]
        return tuple(out)
    return (StateTensor("h0", "hn", (int(layers), BATCH_DIM, int(width))),)
