"""The two model families, read top to bottom.

Both take and return **raw units** and carry their recurrent state explicitly:
``forward(x, state) -> (output, state)``, where ``state`` is a tuple ``(h,)`` for GRU/RNN or
``(h, c)`` for LSTM, each ``[layers, batch, hidden]``. ``state=None`` means zeros. The modern
cells (minGRU, minLSTM, xLSTM's mLSTM: :mod:`rnnops.training.stack`) run as a residual stack and
carry their own state tuple; ``model.state_tensors()`` describes any model's state.

- :class:`CharModel`: embedding -> LSTM | GRU | vanilla RNN (tanh, as in Karpathy's
  min-char-rnn) | minGRU | minLSTM | mLSTM stack -> dropout -> linear head over the vocabulary.
- :class:`Forecaster`: a recurrent core (any cell but the vanilla RNN) over the lookback window -> direct multi-step head
  (horizon x targets at once). Normalisation lives inside the module:
  ``norm="fixed"``: a z-score scaler fitted on the training split, stored as buffers. Stepping
  one observation at a time with carried state gives the same forecast as one call over the
  whole window: the model is *stateful* (O(1) per new observation when served).
  ``norm="revin"``: each input window is normalised by its own mean/std (RevIN, Kim et al.
  2022) and the forecast de-normalised with them; with ``linear_skip`` an NLinear-style
  linear map of the normalised window is added to the recurrent head. Better on drifting
  series such as ETT, but the model needs the last ``lookback`` observations: *windowed*.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from rnnops import contract
from rnnops.errors import RnnopsError
from rnnops.training import cells, intervals

State = tuple[torch.Tensor, ...]


def check_config(kind: str, cell: str, num_layers: int, hidden_size: int, heads=None, ff_mult=None) -> None:
    """One-line RnnopsError for a cell the model kind does not have or options the cell does not take."""
    cells.for_task(cell, "char" if kind == "char" else "forecast").check(num_layers, hidden_size, heads, ff_mult)


def _make_rnn(
    cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float, heads=None, ff_mult=None
) -> nn.Module:
    return cells.get(cell).build(input_size, hidden_size, num_layers, dropout, heads, ff_mult)


def state_tensors(cell: str, num_layers: int, hidden: int, heads=None) -> tuple[contract.StateTensor, ...]:
    """A model's state in the ONNX contract's terms: one entry per tensor (names, shape, dtype)."""
    return cells.get(cell).state_tensors(num_layers, hidden, heads)


def _zero_state(config, batch: int, device=None) -> State:
    spec = state_tensors(config.cell, config.num_layers, config.hidden_size, config.heads)
    return tuple(torch.zeros(t.shape_for(batch), device=device) for t in spec)


def _rnn_step(rnn: nn.Module, cell: str, x: torch.Tensor, state: State | None):
    """Run the recurrent core; normalise LSTM's (h, c) and GRU/RNN's h to a tuple."""
    c = cells.get(cell)
    if c.family == "modern":
        return rnn(x, state)
    if state is None:
        out, new = rnn(x)
    elif c.has_cell_state:
        out, new = rnn(x, (state[0], state[1]))
    else:
        out, new = rnn(x, state[0])
    return out, (tuple(new) if c.has_cell_state else (new,))


@dataclass
class CharModelConfig:
    vocab_size: int
    cell: str = "lstm"
    hidden_size: int = 512
    num_layers: int = 1
    embed_dim: int = 64
    dropout: float = 0.0
    heads: int | None = None  # mlstm only (default 4)
    ff_mult: float | None = None  # modern cells only: MLP width / model width (default 4; 0 = none)

    def to_dict(self) -> dict:
        return asdict(self)


class CharModel(nn.Module):
    kind = "char"

    def __init__(self, config: CharModelConfig):
        super().__init__()
        check_config("char", config.cell, config.num_layers, config.hidden_size, config.heads, config.ff_mult)
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.rnn = _make_rnn(
            config.cell,
            config.embed_dim,
            config.hidden_size,
            config.num_layers,
            config.dropout,
            config.heads,
            config.ff_mult,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)

    def init_state(self, batch: int, device=None) -> State:
        return _zero_state(self.config, batch, device)

    def state_tensors(self) -> tuple[contract.StateTensor, ...]:
        c = self.config
        return state_tensors(c.cell, c.num_layers, c.hidden_size, c.heads)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x: int64 [B, T] token ids -> logits float32 [B, T, V], new state."""
        out, state = _rnn_step(self.rnn, self.config.cell, self.embed(x), state)
        return self.head(self.drop(out)), state


@dataclass
class ForecasterConfig:
    n_features: int
    target_indices: list[int]
    lookback: int
    horizon: int
    cell: str = "gru"
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0
    norm: str = "revin"  # "revin" (windowed) | "fixed" (stateful)
    heads: int | None = None  # mlstm only (default 4)
    ff_mult: float | None = None  # modern cells only (default 4; 0 = no MLP)
    linear_skip: bool = True  # revin only: add an NLinear-style linear map of the window
    arch: str = "rnn"  # "rnn": the cell over every observation; "segrnn": over segments (training/segrnn.py)
    segment_length: int = 24  # segrnn only: observations per segment (must divide the lookback)
    quantiles: list[float] = field(default_factory=list)  # interval levels (training/intervals.py); [] = none
    scaler_mean: list[float] = field(default_factory=list)
    scaler_std: list[float] = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)
    target_names: list[str] = field(default_factory=list)

    @property
    def stateful(self) -> bool:
        return self.norm == "fixed"

    def to_dict(self) -> dict:
        return asdict(self)


class Forecaster(nn.Module):
    kind = "forecaster"

    def __init__(self, config: ForecasterConfig):
        super().__init__()
        check_config("forecaster", config.cell, config.num_layers, config.hidden_size, config.heads, config.ff_mult)
        if config.norm not in ("revin", "fixed"):
            raise RnnopsError(f"norm must be revin or fixed, not {config.norm!r}")
        self.config = config
        f, n_out = config.n_features, len(config.target_indices)
        mean = torch.tensor(config.scaler_mean or [0.0] * f, dtype=torch.float32)
        std = torch.tensor(config.scaler_std or [1.0] * f, dtype=torch.float32)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("targets", torch.tensor(config.target_indices, dtype=torch.long))
        self.rnn = _make_rnn(
            config.cell, f, config.hidden_size, config.num_layers, config.dropout, config.heads, config.ff_mult
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.horizon * n_out)
        self.skip = (
            nn.Linear(config.lookback, config.horizon) if (config.norm == "revin" and config.linear_skip) else None
        )
        intervals.add_buffer(self)

    def init_state(self, batch: int, device=None) -> State:
        return _zero_state(self.config, batch, device)

    def state_tensors(self) -> tuple[contract.StateTensor, ...]:
        c = self.config
        return state_tensors(c.cell, c.num_layers, c.hidden_size, c.heads)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x: float32 [B, T, F] raw values -> forecast [B, horizon, n_targets] raw, new state.

        A windowed (revin) model reads the last ``lookback`` rows of ``x``.
        """
        c = self.config
        if c.norm == "revin":
            x = x[:, -c.lookback :]
            mean = x.mean(dim=1, keepdim=True)
            std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + 1e-5)
        else:
            mean, std = self.mean.view(1, 1, -1), self.std.view(1, 1, -1)
        z = (x - mean) / std
        out, state = _rnn_step(self.rnn, c.cell, z, state)
        y = self.head(self.drop(out[:, -1])).view(x.shape[0], c.horizon, -1)
        zt = z.index_select(2, self.targets)
        if self.skip is not None:
            y = y + self.skip(zt.transpose(1, 2)).transpose(1, 2)
        return y * std.index_select(2, self.targets) + mean.index_select(2, self.targets), state


def build_model(kind: str, config: dict) -> nn.Module:
    """Rebuild a model from its JSON config (the logged contract)."""
    if kind == "char":
        return CharModel(CharModelConfig(**config))
    if kind == "forecaster":
        fc = ForecasterConfig(**config)
        if fc.arch == "segrnn":
            from rnnops.training.segrnn import SegRNN

            return SegRNN(fc)
        if fc.arch != "rnn":
            raise RnnopsError(f"unknown forecaster architecture {fc.arch!r}: use rnn or segrnn")
        return Forecaster(fc)
    if kind == "panel":  # a global forecaster over a panel (training/panel_model.py)
        from rnnops.training.panel_model import PanelForecaster, PanelModelConfig

        return PanelForecaster(PanelModelConfig(**config))
    raise RnnopsError(f"unknown model kind {kind!r}")
