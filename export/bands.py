"""Inference modules for point-wise forecasters with prediction intervals: the usual wrapper's
outputs, then ``quantiles [B, horizon, targets, levels]`` (raw units) last.

``quantiles = forecast + scale x offsets``: ``scale`` is the std the wrapper already normalised
the window with (RevIN) or the fixed scaler's std, ``offsets`` the split-conformal calibration
(:mod:`rnnops.training.intervals`) as a constant of the graph. The output goes last so that
``outputs[1:1 + len(state)]`` stay the state tensors for everything that carries state.
SegRNN's own wrapper (:class:`rnnops.training.segrnn.SegRNNStep`) appends it the same way.
"""

from __future__ import annotations

from torch import Tensor, nn

from rnnops.export.wrappers import ForecastStep
from rnnops.training import cells
from rnnops.training.intervals import BUFFER


class ForecastStepBands(ForecastStep):
    """GRU: ``forward(x, h0) -> (forecast, hn, quantiles)``."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.register_buffer("offsets", getattr(model, BUFFER).detach().clone())

    def _bands(self, y: Tensor, std: Tensor) -> Tensor:
        return y.unsqueeze(-1) + std.index_select(2, self.targets).unsqueeze(-1) * self.offsets

    def forward(self, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z, mean, std = self._normalise(x)
        out, hn = self.rnn(z, h0)
        y = self._forecast(out, z, mean, std)
        return y, hn, self._bands(y, std)


class ForecastStepLSTMBands(ForecastStepBands):
    """LSTM: ``forward(x, h0, c0) -> (forecast, hn, cn, quantiles)``."""

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        z, mean, std = self._normalise(x)
        out, (hn, cn) = self.rnn(z, (h0, c0))
        y = self._forecast(out, z, mean, std)
        return y, hn, cn, self._bands(y, std)


class ForecastStepModernBands(ForecastStepBands):
    """minGRU / minLSTM / mLSTM (traced): ``forward(x, *state) -> (forecast, *state, quantiles)``."""

    def forward(self, x: Tensor, *state: Tensor):
        z, mean, std = self._normalise(x)
        out, new = self.rnn(z, state, recurrent=True)
        y = self._forecast(out, z, mean, std)
        return (y, *new, self._bands(y, std))


def bands_module(model: nn.Module, modern: bool) -> nn.Module:
    if modern:
        return ForecastStepModernBands(model).eval()
    lstm = cells.get(model.config.cell).has_cell_state
    return (ForecastStepLSTMBands(model) if lstm else ForecastStepBands(model)).eval()
