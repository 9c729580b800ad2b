"""Inference modules with the state as explicit tensor arguments: what TorchScript and ONNX see.

The training modules take ``forward(x, state)`` with ``state`` a tuple of 1 or 2 tensors (or
None). TorchScript cannot script a variable-length tuple argument, and an ONNX graph wants one
named input per tensor, so export goes through these thin modules instead:

    char, GRU / RNN:   forward(x, h0)      -> (logits, hn)
    char, LSTM:        forward(x, h0, c0)  -> (logits, hn, cn)
    forecaster:        the same with ``forecast`` instead of ``logits``

They share the trained submodules (no copies of the weights) and re-state the forward pass with
dropout left out (it is the identity at inference). Re-stating it is deliberate: it is the one
piece of code TorchScript and ONNX are produced from, and the parity gate checks it against the
training module's own ``forward``.

The modern cells (minGRU, minLSTM, mLSTM) go through :class:`CharStepModern` /
:class:`ForecastStepModern`: ``forward(x, *state) -> (out, *state)`` with the state tensors the
model's ``state_tensors()`` lists, running the cell stack's **recurrent** form. Everything but the
recurrence itself is computed for all time steps at once; the recurrence is a scripted loop
over time (``training.scan.scan_loop``, ``training.mlstm.mlstm_loop``), which the ONNX exporter
writes as a ``Loop`` whose trip count is the input's length, so batch and time stay dynamic and
nothing is unrolled. These wrappers are traced (the loops inside stay scripted), not scripted:
their state arity depends on the layer count.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from rnnops import contract
from rnnops.errors import RnnopsError
from rnnops.training import cells, intervals


class CharStep(nn.Module):
    """embedding -> GRU | RNN -> head; ``forward(x, h0) -> (logits, hn)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.embed = model.embed
        self.rnn = model.rnn
        self.head = model.head

    def forward(self, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        out, hn = self.rnn(self.embed(x), h0)
        return self.head(out), hn


class CharStepLSTM(CharStep):
    """embedding -> LSTM -> head; ``forward(x, h0, c0) -> (logits, hn, cn)``."""

    def forward(self, x: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out, (hn, cn) = self.rnn(self.embed(x), (h0, c0))
        return self.head(out), hn, cn


class ForecastStep(nn.Module):
    """Normalise (fixed scaler or per-window RevIN) -> GRU -> direct multi-step head -> raw units."""

    # Constants TorchScript folds, so the branch a model does not use is never compiled.
    __constants__ = ["revin", "use_skip", "lookback", "horizon"]

    def __init__(self, model: nn.Module):
        super().__init__()
        c = model.config
        self.revin = c.norm == "revin"
        self.use_skip = model.skip is not None
        self.lookback = int(c.lookback)
        self.horizon = int(c.horizon)
        self.register_buffer("mean", model.mean.detach().clone().view(1, 1, -1))
        self.register_buffer("std", model.std.detach().clone().view(1, 1, -1))
        self.register_buffer("targets", model.targets.detach().clone())
        self.rnn = model.rnn
        self.head = model.head
        # A placeholder keeps the attribute a module in both cases; use_skip prunes the call.
        self.skip = model.skip if model.skip is not None else nn.Identity()

    def _normalise(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.revin:
            x = x[:, -self.lookback :]
            mean = x.mean(dim=1, keepdim=True)
            std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + 1e-5)
        else:
            mean, std = self.mean, self.std
        return (x - mean) / std, mean, std

    def _forecast(self, out: Tensor, z: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        y = self.head(out[:, -1]).view(z.size(0), self.horizon, -1)
        if self.use_skip:
            zt = z.index_select(2, self.targets)
            y = y + self.skip(zt.transpose(1, 2)).transpose(1, 2)
        return y * std.index_select(2, self.targets) + mean.index_select(2, self.targets)

    def forward(self, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        z, mean, std = self._normalise(x)
        out, hn = self.rnn(z, h0)
        return self._forecast(out, z, mean, std), hn


class ForecastStepLSTM(ForecastStep):
    def forward(self, x: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z, mean, std = self._normalise(x)
        out, (hn, cn) = self.rnn(z, (h0, c0))
        return self._forecast(out, z, mean, std), hn, cn


class CharStepModern(nn.Module):
    """embedding -> minGRU | minLSTM | mLSTM stack (recurrent form) -> head; ``forward(x, *state)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.embed, self.rnn, self.head = model.embed, model.rnn, model.head

    def forward(self, x: Tensor, *state: Tensor):
        out, new = self.rnn(self.embed(x), state, recurrent=True)
        return (self.head(out), *new)


class ForecastStepModern(ForecastStep):
    def forward(self, x: Tensor, *state: Tensor):
        z, mean, std = self._normalise(x)
        out, new = self.rnn(z, state, recurrent=True)
        return (self._forecast(out, z, mean, std), *new)


def is_modern(model: nn.Module) -> bool:
    return cells.modern(getattr(model.config, "cell", None))


def is_segrnn(model: nn.Module) -> bool:
    return getattr(model.config, "arch", "rnn") == "segrnn"


def traced(model: nn.Module) -> bool:
    """Wrappers whose state arity varies (``forward(x, *state)``): traced, not scripted."""
    return is_modern(model) or is_segrnn(model)


def inference_module(model: nn.Module) -> nn.Module:
    """The explicit-state module for a CharModel or Forecaster, in eval mode."""
    kind, cell = getattr(model, "kind", None), getattr(model.config, "cell", None)
    if is_segrnn(model):  # its own module, prediction intervals included (training/segrnn.py)
        from rnnops.training.segrnn import SegRNNStep

        return SegRNNStep(model).eval()
    task = {"char": "char", "forecaster": "forecast"}.get(kind)
    entry = cells.CELLS.get(cell)
    if task is None or entry is None or task not in entry.tasks:
        raise RnnopsError(
            f"cannot export a {kind} model with cell {cell!r}: supported are char "
            f"{'/'.join(cells.names('char'))} and forecaster {'/'.join(cells.names('forecast'))}"
        )
    if intervals.has_intervals(model):  # + the quantiles output (export/bands.py)
        from rnnops.export.bands import bands_module

        return bands_module(model, modern=entry.family == "modern")
    if entry.family == "modern":
        return (CharStepModern(model) if kind == "char" else ForecastStepModern(model)).eval()
    if kind == "char":
        step = CharStepLSTM(model) if entry.has_cell_state else CharStep(model)
    else:
        step = ForecastStepLSTM(model) if entry.has_cell_state else ForecastStep(model)
    rnn = model.rnn
    if getattr(rnn, "bidirectional", False) or not getattr(rnn, "batch_first", True) or not getattr(rnn, "bias", True):
        raise RnnopsError("export supports unidirectional, batch-first recurrent layers with biases only")
    return step.eval()


# ----------------------------------------------------------------------------- names and inputs


def state_spec(model: nn.Module) -> tuple[contract.StateTensor, ...]:
    """The model's state tensors as the contract describes them (names, shape with batch, dtype)."""
    return tuple(model.state_tensors())


def input_names(model: nn.Module) -> list[str]:
    return [contract.INPUT, *(t.input for t in state_spec(model))]


def output_names(model: nn.Module) -> list[str]:
    main = contract.CHAR_OUTPUT if model.kind == "char" else contract.FORECAST_OUTPUT
    extra = [contract.QUANTILES_OUTPUT] if intervals.has_intervals(model) else []  # always last
    return [main, *(t.output for t in state_spec(model)), *extra]


def relative_outputs(model: nn.Module) -> list[str]:
    """State outputs without a fixed scale, gated relatively: mLSTM's memory C and n (sums over
    the sequence, kept divided by exp(m)); a forecaster's ``forecast`` is relative anyway."""
    bands = [contract.QUANTILES_OUTPUT] if intervals.has_intervals(model) else []  # raw units, as the forecast
    prefixes = cells.get(model.config.cell).relative_state
    return [t.output for t in state_spec(model) if prefixes and t.output.startswith(prefixes)] + bands


def is_windowed(model: nn.Module) -> bool:
    """A forecaster that normalises each window by its own statistics (needs ``lookback`` rows)."""
    return getattr(model, "kind", None) == "forecaster" and model.config.norm == "revin"


def min_time(model: nn.Module) -> int:
    """Shortest input the model accepts: ``lookback`` rows for a windowed forecaster, else 1."""
    return int(model.config.lookback) if is_windowed(model) else 1


def make_inputs(
    model: nn.Module, batch: int, time: int, rng: np.random.Generator, random_state: bool
) -> dict[str, np.ndarray]:
    """Realistic numpy inputs by contract name: token ids, or raw values around the training scale."""
    c = model.config
    if model.kind == "char":
        x = rng.integers(0, c.vocab_size, size=(batch, time), dtype=np.int64)
    else:
        mean = model.mean.detach().numpy().astype(np.float64)
        std = model.std.detach().numpy().astype(np.float64)
        x = (mean + std * rng.standard_normal((batch, time, c.n_features))).astype(np.float32)
    feeds = {contract.INPUT: x}
    for t in state_spec(model):
        shape = t.shape_for(batch)
        feeds[t.input] = (
            (0.5 * rng.standard_normal(shape)).astype(np.float32) if random_state else np.zeros(shape, np.float32)
        )
    return feeds


def example_inputs(model: nn.Module) -> tuple[Tensor, ...]:
    """Tracing inputs. Batch 4 and time >= 3 (never 0 or 1, which exporters specialise on)."""
    time = min_time(model) + 2 if is_windowed(model) else 6
    feeds = make_inputs(model, 4, time, np.random.default_rng(0), random_state=True)
    return tuple(torch.from_numpy(v) for v in feeds.values())
