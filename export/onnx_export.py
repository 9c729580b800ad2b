"""Write the ONNX file of the contract: ``x`` + state in, main output + state out, metadata inside.

Two exporters, both ending in the native ONNX ``LSTM`` / ``GRU`` / ``RNN`` ops (what onnxruntime
runs fastest, and what :mod:`rnnops.export.int8` rewrites into its int8 form):

- ``legacy`` (default): ``torch.onnx.export(..., dynamo=False)``, the TorchScript-based
  exporter. Batch and time stay symbolic for all three cells and it takes well under a second.
  It is deprecated upstream but present in the pinned torch 2.13.
- ``dynamo``: the torch.export-based exporter (torch's default). Taken as it comes it fixes the
  time axis for every recurrent cell and cannot express ``nn.RNN`` for other lengths, so the
  recurrent layer is routed through custom ops with native ONNX translations
  (:mod:`rnnops.export.dynamo_ops`). It takes several seconds per model (it rebuilds its op
  registry on every call). This is the path forward once the legacy exporter is removed.

Whatever the exporter, the result is normalised the same way: input/output dims named
``batch`` / ``time`` per the contract, ``rnnops.*`` metadata set, one self-contained file (no
external data), checked with ``onnx.checker``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

import rnnops
from rnnops import contract
from rnnops.errors import RnnopsError
from rnnops.export import wrappers
from rnnops.training import cells, intervals

EXPORTERS = ("legacy", "dynamo")
DEFAULT_OPSET = 18
# Opsets each exporter can write here (torch 2.13: the TorchScript exporter stops at 20; the
# dynamo exporter's op library is written for 18+).
OPSETS = {"legacy": range(11, 21), "dynamo": range(18, 24)}
BATCH, TIME = "batch", "time"


def metadata_for(model: nn.Module, spec: dict, source_run: str | None) -> dict:
    """The ``rnnops.*`` metadata (un-prefixed keys, plain values) of the contract."""
    c = model.config
    kind = model.kind
    state = wrappers.state_spec(model)  # classic cells: contract.classic_state_spec; modern: their own
    meta = {
        "kind": kind,
        "cell": c.cell,
        "layers": int(c.num_layers),  # blocks, for the modern cells
        "hidden_size": int(c.hidden_size),  # the model width
        "state_inputs": [t.input for t in state],
        "state_outputs": [t.output for t in state],
        "state": [t.to_json() for t in state],
        "stateful": True if kind == "char" else bool(spec.get("stateful", c.norm == "fixed")),
        "vocab": list(spec.get("vocab") or []) if kind == "char" else None,
        "feature_names": list(c.feature_names) if kind == "forecaster" else None,
        "target_names": list(c.target_names) if kind == "forecaster" else None,
        "lookback": int(c.lookback) if kind == "forecaster" else None,
        "horizon": int(c.horizon) if kind == "forecaster" else None,
        "freq": spec.get("freq") if kind == "forecaster" else None,
        "arch": getattr(c, "arch", "rnn") if kind == "forecaster" else None,
        "quantiles": (
            {
                "output": contract.QUANTILES_OUTPUT,
                "levels": [float(v) for v in c.quantiles],
                "calibration": spec.get("intervals"),
            }
            if intervals.has_intervals(model)
            else None
        ),
        "precision": "fp32",  # the int8 variant says "int8" (rnnops.export.int8)
        "source_run": source_run,
        "version": rnnops.__version__,
        "panel": None,  # a panel model's covariate contract (export/panel_export.py writes it)
    }
    assert set(meta) == set(contract.META_KEYS), "metadata must follow rnnops.contract.META_KEYS"
    return meta


def export_onnx(
    model: nn.Module,
    spec: dict,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "legacy",
    source_run: str | None = None,
) -> Path:
    """Export ``model`` (CharModel or Forecaster) to ``path`` per the ONNX contract; returns the path."""
    import onnx

    check_exporter(exporter, opset)
    model = model.eval()
    step = wrappers.inference_module(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = wrappers.example_inputs(model)
    names_in = wrappers.input_names(model)
    names_out = wrappers.output_names(model)
    axes = _dynamic_axes(model)
    try:
        with _quiet(), torch.no_grad():
            if exporter == "legacy":
                _export_legacy(step, args, path, opset, names_in, names_out, axes)
            elif wrappers.is_segrnn(model):
                raise RnnopsError("the dynamo exporter does not take --arch segrnn yet: use --exporter legacy")
            elif wrappers.is_modern(model):
                raise RnnopsError(
                    f"the dynamo exporter cannot export {model.config.cell} yet (its recurrence is a "
                    "scripted loop, which torch.export unrolls): use --exporter legacy"
                )
            else:
                _export_dynamo(step, cells.get(model.config.cell).onnx_op, args, path, opset, names_in, names_out)
    except RnnopsError:
        raise
    except Exception as exc:  # exporters raise many types; the first line says what went wrong
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RnnopsError(
            f"the {exporter} ONNX exporter failed at opset {opset} for a {model.kind} "
            f"{model.config.cell} model: {first[:300]}"
        ) from exc
    proto = onnx.load(str(path))
    _name_dims(proto, model)
    set_metadata(proto, metadata_for(model, spec, source_run))
    proto.doc_string = (
        f"rnnops {rnnops.__version__} {model.kind} model ({model.config.cell}), exported with the {exporter} exporter"
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    return path


def check_exporter(exporter: str, opset: int) -> None:
    """Refuse, before any work, an exporter or opset this torch cannot do."""
    if exporter not in EXPORTERS:
        raise RnnopsError(f"unknown exporter {exporter!r}: use one of {', '.join(EXPORTERS)}")
    if opset not in OPSETS[exporter]:
        r = OPSETS[exporter]
        raise RnnopsError(
            f"the {exporter} exporter cannot write opset {opset} (it supports {r.start}-{r.stop - 1}); "
            f"use --opset {DEFAULT_OPSET}" + ("" if exporter == "dynamo" else " or --exporter dynamo for newer opsets")
        )


def set_metadata(proto, meta: dict) -> None:
    """Replace the ``rnnops.*`` entries of ``metadata_props`` (other keys are kept)."""
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith(contract.META_PREFIX)]
    del proto.metadata_props[:]
    for key, value in keep + sorted(contract.encode_metadata(meta).items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


# ----------------------------------------------------------------------------- exporters


def _dynamic_axes(model: nn.Module) -> dict:
    """Dynamic dims by graph name: x and the main output, and every state tensor's batch axis."""
    main = contract.CHAR_OUTPUT if model.kind == "char" else contract.FORECAST_OUTPUT
    axes = {contract.INPUT: {0: BATCH, 1: TIME}, main: {0: BATCH, 1: TIME} if model.kind == "char" else {0: BATCH}}
    for t in wrappers.state_spec(model):
        axes[t.input] = axes[t.output] = {t.batch_axis: BATCH}
    if intervals.has_intervals(model):
        axes[contract.QUANTILES_OUTPUT] = {0: BATCH}
    return axes


def _export_legacy(step, args, path, opset, names_in, names_out, axes) -> None:
    torch.onnx.export(
        step,
        args,
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=names_in,
        output_names=names_out,
        dynamic_axes=axes,
        do_constant_folding=True,
    )


def _export_dynamo(step, onnx_op, args, path, opset, names_in, names_out) -> None:
    from rnnops.export import dynamo_ops

    batch, time = torch.export.Dim("batch", min=1), torch.export.Dim("time", min=1)
    shapes = {contract.INPUT: {0: batch, 1: time}}
    for name in names_in[1:]:
        shapes[name] = {1: batch}
    program = torch.onnx.export(
        dynamo_ops.with_custom_ops(step, onnx_op),
        args,
        None,
        dynamo=True,
        opset_version=opset,
        input_names=names_in,
        output_names=names_out,
        dynamic_shapes=shapes,
        custom_translation_table=dynamo_ops.TRANSLATIONS,
        verbose=False,
        optimize=True,
    )
    program.save(str(path), external_data=False)


def _name_dims(proto, model: nn.Module) -> None:
    """Name the symbolic dims as the contract does, whatever the exporter called them."""
    c = model.config
    if model.kind == "char":
        x, main = [BATCH, TIME], [BATCH, TIME, c.vocab_size]
    else:
        x, main = [BATCH, TIME, c.n_features], [BATCH, c.horizon, len(c.target_indices)]
    want = {contract.INPUT: x, contract.CHAR_OUTPUT: main, contract.FORECAST_OUTPUT: main}
    if intervals.has_intervals(model):
        want[contract.QUANTILES_OUTPUT] = [*main, len(c.quantiles)]
    for t in wrappers.state_spec(model):  # exactly the shapes the rnnops.state metadata declares
        want[t.input] = want[t.output] = list(t.shape)
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = want[value.name]
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for d in dims:
            dim = shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = int(d)


@contextlib.contextmanager
def _quiet():
    """Keep exporter chatter (deprecation notices, progress lines, registry warnings) off the console."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
