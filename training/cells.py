"""The recurrent cells, one :class:`Cell` entry each: what every stage needs to know about a cell.

Training builds the recurrent core from an entry (:meth:`Cell.build`), describes its state in the
ONNX contract's terms (:meth:`Cell.state_tensors`) and takes a cell's own presets from it; the CLI
offers the cells an entry lists for each task; export picks the inference wrapper from
:attr:`Cell.family` and makes the int8 file only where :attr:`Cell.int8` says a form exists.

Two families:

- ``classic``: PyTorch's ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``, exported as the native ONNX op
  named by :attr:`Cell.onnx_op` (:mod:`rnnops.export.wrappers`; the dynamo exporter routes them
  through :mod:`rnnops.export.dynamo_ops`); state ``h`` (+ ``c`` for LSTM), ``[layers, batch, hidden]``;
- ``modern``: a residual stack of blocks (:mod:`rnnops.training.stack`) around a parallel-trained
  cell (minGRU, minLSTM: :mod:`rnnops.training.mingru`; mLSTM: :mod:`rnnops.training.mlstm`),
  exported as a scripted loop over time (an ONNX ``Loop``); state as the stack lays it out.

**Adding a cell**: write its module (the ``nn.Module`` of one block's cell, with its stepped form
for export, and its state layout in :func:`rnnops.training.stack.state_tensors`), then add one
entry to :data:`CELLS`. The CLI choices, the config checks, the presets and export follow.

Serving never imports this module (no torch there): an exported file describes its state in its
``rnnops.state`` metadata, so the server needs no cell-specific code.

This module imports no torch at import time (the CLI builds its choices from it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rnnops.errors import RnnopsError

TASKS = ("char", "forecast")

# The modern cells' presets replace the model section of the task's presets
# (rnnops.training.jobs) and add the listed train settings.
_MODERN_PRESETS = {
    "char": {
        "tiny": dict(model=dict(hidden_size=64, num_layers=1, embed_dim=16, ff_mult=2.0)),
        "quick": dict(model=dict(hidden_size=256, num_layers=2, embed_dim=64, ff_mult=2.0), train=dict(lr=2e-3)),
        "full": dict(
            model=dict(hidden_size=384, num_layers=3, embed_dim=64, ff_mult=4.0, dropout=0.1),
            seq_len=128,
            train=dict(batch_size=32, lr=1.5e-3),
        ),
    },
    "forecast": {
        "tiny": dict(model=dict(hidden_size=16, ff_mult=2.0)),
        "quick": dict(model=dict(hidden_size=64, ff_mult=2.0, dropout=0.3)),
        "full": dict(model=dict(hidden_size=128, num_layers=2, ff_mult=2.0, dropout=0.1)),
    },
}


@dataclass(frozen=True)
class Cell:
    name: str  # the --cell value, the "cell" of a model config and of the ONNX metadata
    family: str  # "classic" (a PyTorch recurrent layer) | "modern" (a residual stack, training/stack.py)
    tasks: tuple[str, ...]  # the tasks whose models take it ("char", "forecast")
    onnx_op: str | None = None  # classic: the native ONNX op its layer exports as ("LSTM", "GRU", "RNN")
    int8: bool = False  # export has a fixed-scale int8 form of its op (rnnops.export.int8)
    max_layers: int = 3
    takes_heads: bool = False  # --heads (mlstm: memory heads)
    takes_ff_mult: bool = False  # --ff-mult (the modern stack's MLP width)
    # State outputs without a fixed scale (gated relatively by export's parity gate), by name prefix.
    relative_state: tuple[str, ...] = ()
    # modern: one block's cell, "module:Class", built as Class(width) (or Class(width, heads) when it takes heads)
    block: str | None = None
    presets: dict = field(default_factory=dict)  # task -> preset name -> values over the task's preset

    @property
    def has_cell_state(self) -> bool:
        """A classic cell whose state is (h, c) rather than h alone (LSTM)."""
        return self.onnx_op == "LSTM"

    def build(self, input_size: int, hidden_size: int, num_layers: int, dropout: float, heads=None, ff_mult=None):
        """The recurrent core: ``forward(x [B, T, input], state) -> (y [B, T, hidden], state)`` for the modern
        stack; the PyTorch layer (batch first) for the classic cells (:func:`models._rnn_step` runs both)."""
        from torch import nn

        if self.family == "modern":
            from rnnops.training.stack import CellStack

            return CellStack(self.name, self.block_cell, input_size, hidden_size, num_layers, heads, ff_mult, dropout)
        layer = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}[self.onnx_op]
        kwargs = dict(batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        if self.onnx_op == "RNN":
            kwargs["nonlinearity"] = "tanh"
        return layer(input_size, hidden_size, num_layers, **kwargs)

    def block_cell(self, width: int, heads: int):
        """Modern: one block's cell module (the residual stack wraps it: training/stack.py)."""
        import importlib

        module, _, name = self.block.partition(":")
        cls = getattr(importlib.import_module(module), name)
        return cls(width, heads) if self.takes_heads else cls(width)

    def state_tensors(self, num_layers: int, hidden_size: int, heads=None):
        """The model's state in the ONNX contract's terms: one :class:`rnnops.contract.StateTensor` per tensor."""
        from rnnops import contract

        if self.family == "modern":
            from rnnops.training.stack import state_tensors

            return state_tensors(self.name, num_layers, hidden_size, heads)
        return contract.classic_state_spec(self.name, num_layers, hidden_size)

    def check(self, num_layers: int, hidden_size: int, heads=None, ff_mult=None) -> None:
        """Refuse, in one line, options this cell does not take."""
        if not 1 <= int(num_layers) <= self.max_layers:
            raise RnnopsError(f"--layers {num_layers} is out of range for {self.name}: use 1-{self.max_layers}")
        if heads is not None and not self.takes_heads:
            raise RnnopsError(
                f"--heads applies to {', '.join(c.name for c in CELLS.values() if c.takes_heads)} only, not {self.name}"
            )
        if ff_mult is not None and not self.takes_ff_mult:
            raise RnnopsError(
                f"--ff-mult applies to {', '.join(c.name for c in CELLS.values() if c.takes_ff_mult)} "
                f"only, not {self.name}"
            )
        if ff_mult is not None and not 0 <= float(ff_mult) <= 16:
            raise RnnopsError(f"--ff-mult {ff_mult} is out of range: use 0 (no MLP) to 16")
        if self.takes_heads:
            from rnnops.training.stack import DEFAULT_HEADS

            h = heads or DEFAULT_HEADS
            if h < 1 or hidden_size % h:
                raise RnnopsError(
                    f"--heads {h} does not divide --hidden-size {hidden_size} for {self.name}: "
                    "pick heads that divide the width"
                )


CELLS: dict[str, Cell] = {
    c.name: c
    for c in [
        Cell("lstm", "classic", TASKS, onnx_op="LSTM", int8=True),
        Cell("gru", "classic", TASKS, onnx_op="GRU", int8=True),
        Cell("rnn", "classic", ("char",), onnx_op="RNN", int8=True),  # vanilla tanh RNN (min-char-rnn)
        Cell(
            "mingru",
            "modern",
            TASKS,
            max_layers=12,
            takes_ff_mult=True,
            presets=_MODERN_PRESETS,
            block="rnnops.training.mingru:MinGRU",
        ),
        Cell(
            "minlstm",
            "modern",
            TASKS,
            max_layers=12,
            takes_ff_mult=True,
            presets=_MODERN_PRESETS,
            block="rnnops.training.mingru:MinLSTM",
        ),
        # mLSTM's memory C and normaliser n are sums over the sequence (kept divided by exp(m)): no fixed scale
        Cell(
            "mlstm",
            "modern",
            TASKS,
            max_layers=12,
            takes_heads=True,
            takes_ff_mult=True,
            relative_state=("Cn_", "nn_"),
            presets=_MODERN_PRESETS,
            block="rnnops.training.mlstm:MLSTM",
        ),
    ]
}


def get(name: str) -> Cell:
    """The cell called ``name``; one line listing the cells for anything else."""
    cell = CELLS.get(name)
    if cell is None:
        raise RnnopsError(f"unknown cell {name!r}: use one of {', '.join(CELLS)}")
    return cell


def for_task(name: str, task: str) -> Cell:
    """The cell called ``name`` if ``task``'s models take it; one line listing the task's cells otherwise."""
    cell = CELLS.get(name)
    if cell is None or task not in cell.tasks:
        what = "cell" if task == "char" else "forecaster cell"
        raise RnnopsError(f"unknown {what} {name!r}: use one of {', '.join(names(task))}")
    return cell


def names(task: str | None = None, family: str | None = None) -> tuple[str, ...]:
    """The cells of a task and/or family, in registry order (the CLI's choices)."""
    return tuple(
        c.name for c in CELLS.values() if (task is None or task in c.tasks) and (family is None or c.family == family)
    )


def modern(name: str) -> bool:
    cell = CELLS.get(name)
    return cell is not None and cell.family == "modern"
