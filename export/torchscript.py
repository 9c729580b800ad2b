"""TorchScript: the explicit-state inference module, scripted and frozen.

Scripted (not traced) so no example shape is baked in; frozen so the weights become constants
and the module is inference-only. ``torch.jit.load(path)`` gives ``forward(x, h0[, c0])`` ->
``(logits | forecast, hn[, cn])``, the same order and names as the ONNX graph.

TorchScript is deprecated upstream (torch 2.13 warns on ``torch.jit.script`` / ``load``); its
replacements are ``torch.export`` (an ``ExportedProgram`` for AOTInductor / ExecuTorch) and the
ONNX file this stage also writes. The warnings are silenced here so users do not see them on
every export; docs/export.md says what replaces the format.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from rnnops.export import wrappers


def export_torchscript(model: nn.Module, path: str | Path) -> Path:
    """Script (or, for the modern cells, trace) + freeze the inference module and save it to ``path``.

    The modern cells' wrappers take ``forward(x, *state)`` (as many state tensors as the model
    has), which TorchScript cannot script; they are traced instead, with their recurrence loops
    already scripted, so batch and time stay dynamic (the parity gate runs T = 1 to 2,048).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    step = wrappers.inference_module(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if wrappers.traced(model):  # the modern cells and SegRNN: forward(x, *state)
            module = torch.jit.trace(step, wrappers.example_inputs(model), check_trace=False)
        else:
            module = torch.jit.script(step)
        frozen = torch.jit.freeze(module)
        torch.jit.save(frozen, str(path))
    return path


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").eval()
