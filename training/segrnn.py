"""SegRNN: a segment-recurrent forecaster (Lin et al. 2023, arXiv:2308.11200), read top to bottom.

Where the point-wise forecaster (:class:`rnnops.training.models.Forecaster`) steps its cell once
per observation and reads the horizon off the last state, SegRNN makes the recurrence short and
the decoding parallel:

1. **instance normalisation**: each window's channels are z-scored by their own mean and std
   over the window (RevIN without the affine part) and the forecast is de-normalised with them;
2. **channel independence**: every channel of every window is its own sequence (``B x F`` of
   them), sharing all weights;
3. **segments**: the lookback ``L`` is cut into ``L / w`` segments of ``w`` observations; each is
   embedded by ``ReLU(Linear(w -> d))`` and the cell runs over the *segments* (4 steps for
   L 96, w 24, instead of 96);
4. **parallel multi-step decoding** (the paper's PMF): for every horizon segment ``j`` and
   channel ``c`` the cell takes one step from the encoder's final state with the input
   ``[pos_emb[j], channel_emb[c]]`` (``d/2`` learned values each); ``Linear(d -> w)`` after
   dropout turns each output into that segment's ``w`` values. All horizon segments are one
   batched step, so nothing is fed back and errors do not accumulate.

A horizon that is not a multiple of ``w`` is decoded in ``ceil(H / w)`` segments and cut to
``H``; a lookback must be a multiple of ``w`` (checked before training, one line).

The cell is GRU by default (the paper's); LSTM and the state-contract cells (minGRU, minLSTM,
mLSTM: :mod:`rnnops.training.stack`) fit too: the encoder state is the cell's state tuple and
the decoder repeats it once per horizon segment along each tensor's batch axis.

**State in the ONNX contract.** The model is *windowed* (``rnnops.stateful=false``: it needs the
last ``lookback`` rows). Its state tensors are the encoder's initial/final state, one per tensor
of the cell's own state, with the cell's batch axis (``B x F`` sequences) split into ``batch``
and the channels: GRU 1 x 512 over 7 channels is ``h0``/``hn`` ``[1, batch, 7, 512]``. Serving
passes zeros (what training saw) and never needs to know what they mean.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from rnnops import contract
from rnnops.errors import RnnopsError
from rnnops.training import intervals

ARCHS = ("rnn", "segrnn")
DEFAULT_SEGMENT = 24


def check_segments(lookback: int, horizon: int, segment_length: int) -> None:
    """One-line RnnopsError for a segment length the lookback cannot be cut into."""
    w = int(segment_length)
    if w < 1:
        raise RnnopsError(f"--segment-length {w}: must be at least 1")
    if w > lookback or lookback % w:
        divisors = [d for d in range(2, lookback + 1) if lookback % d == 0 and d <= 96][-6:]
        raise RnnopsError(
            f"--segment-length {w} does not divide --lookback {lookback}: segments must tile the "
            f"lookback exactly; use one of {', '.join(map(str, divisors))}"
        )


class SegRNN(nn.Module):
    """``forward(x [B, T, F] raw, state | None) -> (forecast [B, H, targets] raw, state)``."""

    kind = "forecaster"

    def __init__(self, config):
        super().__init__()
        from rnnops.training.models import _make_rnn, check_config  # the cells, shared with the point-wise model

        c = config
        check_config("forecaster", c.cell, c.num_layers, c.hidden_size, c.heads, c.ff_mult)
        check_segments(c.lookback, c.horizon, c.segment_length)
        if c.norm != "revin":
            raise RnnopsError(
                "--arch segrnn normalises each window by itself (instance normalisation): it takes --norm revin only"
            )
        if c.hidden_size < 2:
            raise RnnopsError("--arch segrnn needs --hidden-size of at least 2 (half position, half channel embedding)")
        self.config = c
        f, d, w = c.n_features, c.hidden_size, c.segment_length
        self.segments_in = c.lookback // w
        self.segments_out = math.ceil(c.horizon / w)
        mean = torch.tensor(c.scaler_mean or [0.0] * f, dtype=torch.float32)
        std = torch.tensor(c.scaler_std or [1.0] * f, dtype=torch.float32)
        self.register_buffer("mean", mean)  # the training split's scale: only for realistic test inputs
        self.register_buffer("std", std)
        self.register_buffer("targets", torch.tensor(c.target_indices, dtype=torch.long))
        self.embed = nn.Sequential(nn.Linear(w, d), nn.ReLU())
        self.rnn = _make_rnn(c.cell, d, d, c.num_layers, c.dropout, c.heads, c.ff_mult)
        self.pos_emb = nn.Parameter(torch.randn(self.segments_out, d // 2))
        self.channel_emb = nn.Parameter(torch.randn(f, d - d // 2))
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(d, w)
        intervals.add_buffer(self)

    # ------------------------------------------------------------------ state

    def _inner_spec(self) -> tuple[contract.StateTensor, ...]:
        from rnnops.training.models import state_tensors

        c = self.config
        return state_tensors(c.cell, c.num_layers, c.hidden_size, c.heads)

    def state_tensors(self) -> tuple[contract.StateTensor, ...]:
        """The cell's state with its batch axis (B x F sequences) split into ``batch`` and channels."""
        f = int(self.config.n_features)
        out = []
        for t in self._inner_spec():
            a = t.batch_axis
            out.append(
                contract.StateTensor(
                    t.input, t.output, (*t.shape[:a], contract.BATCH_DIM, f, *t.shape[a + 1 :]), t.dtype
                )
            )
        return tuple(out)

    def init_state(self, batch: int, device=None):
        return tuple(torch.zeros(t.shape_for(batch), device=device) for t in self.state_tensors())

    def _to_inner(self, state):
        return tuple(
            s.reshape(*s.shape[: t.batch_axis], -1, *s.shape[t.batch_axis + 2 :])
            for s, t in zip(state, self._inner_spec())
        )

    def _to_outer(self, state, batch: int):
        f = self.config.n_features
        return tuple(
            s.reshape(*s.shape[: t.batch_axis], batch, f, *s.shape[t.batch_axis + 1 :])
            for s, t in zip(state, self._inner_spec())
        )

    def _core(self, x: Tensor, state, recurrent: bool):
        from rnnops.training import cells
        from rnnops.training.models import _rnn_step

        if cells.modern(self.config.cell):
            return self.rnn(x, state, recurrent=recurrent)
        return _rnn_step(self.rnn, self.config.cell, x, state)

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor, state=None, recurrent: bool = False):
        c = self.config
        batch, f, w, m = x.shape[0], c.n_features, c.segment_length, self.segments_out
        x = x[:, -c.lookback :]
        mean = x.mean(dim=1, keepdim=True)
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + 1e-5)
        z = (x - mean) / std  # [B, L, F]
        segments = z.transpose(1, 2).reshape(batch * f, self.segments_in, w)  # channel-independent
        _, enc = self._core(self.embed(segments), None if state is None else self._to_inner(state), recurrent)
        # every (channel, horizon segment) pair decodes in one step from the encoder's state
        queries = torch.cat(
            [self.pos_emb.unsqueeze(0).expand(f, m, -1), self.channel_emb.unsqueeze(1).expand(f, m, -1)], dim=-1
        )  # [F, m, d]
        queries = queries.unsqueeze(0).expand(batch, f, m, c.hidden_size).reshape(batch * f * m, 1, c.hidden_size)
        dec_state = tuple(s.repeat_interleave(m, dim=t.batch_axis) for s, t in zip(enc, self._inner_spec()))
        out, _ = self._core(queries, dec_state, recurrent)
        y = self.head(self.drop(out[:, -1])).reshape(batch, f, m * w)[:, :, : c.horizon].transpose(1, 2)
        y = y.index_select(2, self.targets)
        y = y * std.index_select(2, self.targets) + mean.index_select(2, self.targets)
        return y, self._to_outer(enc, batch)


class SegRNNStep(nn.Module):
    """What export traces: ``forward(x, *state) -> (forecast, *state[, quantiles])``, the recurrent form
    of the modern cells (an ONNX Loop) and the native GRU / LSTM op for the classic ones."""

    def __init__(self, model: SegRNN):
        super().__init__()
        self.model = model
        self.bands = intervals.has_intervals(model)

    def forward(self, x: Tensor, *state: Tensor):
        y, new = self.model(x, state, recurrent=True)
        if self.bands:
            return (y, *new, intervals.bands(self.model, x, y))
        return (y, *new)
