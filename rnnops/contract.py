"""Names shared between stages: the ONNX contract, MLflow tags, registry defaults.

One place for every string two stages must agree on (export writes them, registry and serving
read them). See docs/architecture.md, "The ONNX contract". No torch, no onnxruntime here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rnnops.metadata_limits import (  # noqa: F401 (re-exported: the contract's names, as before)
    MAX_DIM,
    MAX_NAME_CHARS,
    MAX_NAMES,
    MAX_STATE_ELEMENTS,
    MAX_VOCAB,
    MetadataError,
    _shown,
    check_name,
    check_names,
)

ONNX_FILE = "model.onnx"  # the graph's file name: what mlflow.onnx.log_model writes, in every stage
# The int8 variant (fixed scales, onnxruntime only: rnnops.export.int8), beside model.onnx in the
# same logged model when the export's gates kept it. Same inputs, outputs, state and metadata,
# except "rnnops.precision".
INT8_FILE = "model.int8.onnx"
PRECISIONS = ("fp32", "int8")

# --- ONNX graph: inputs and outputs --------------------------------------------------------
INPUT = "x"  # char: int64 [B, T] token ids; forecaster: float32 [B, T, F] raw values
CHAR_OUTPUT = "logits"  # float32 [B, T, V]
FORECAST_OUTPUT = "forecast"  # float32 [B, horizon, F_out], raw units
# Forecasters with prediction intervals: float32 [B, horizon, F_out, levels], raw units, the last
# output of the graph; its name and levels are in the "rnnops.quantiles" metadata (quantiles_of).
QUANTILES_OUTPUT = "quantiles"


def state_inputs(cell: str) -> list[str]:
    """The classic cells' state inputs, each float32 [layers, B, hidden]: h0 (+ c0 for LSTM)."""
    return ["h0", "c0"] if cell == "lstm" else ["h0"]


def state_outputs(cell: str) -> list[str]:
    return ["hn", "cn"] if cell == "lstm" else ["hn"]


# --- The general state contract: metadata "rnnops.state" ---------------------------------
# The recurrent state is an ordered list of named tensors. Each entry says which graph input
# feeds it, which output returns it, its shape with the batch dimension written as the string
# BATCH_DIM (exactly one per tensor), and its dtype. Serving gathers, scatters, zeroes and
# stores state from this description alone: no cell-specific code there. Files exported before
# the entry existed are read as the equivalent description (classic_state_spec).
BATCH_DIM = "batch"


@dataclass(frozen=True)
class StateTensor:
    input: str  # graph input name, e.g. "h0"
    output: str  # graph output name, e.g. "hn"
    shape: tuple[int | str, ...]  # ints, with BATCH_DIM once: e.g. (2, "batch", 384) or ("batch", 4, 32, 32)
    dtype: str = "float32"

    @property
    def batch_axis(self) -> int:
        return self.shape.index(BATCH_DIM)

    def shape_for(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == BATCH_DIM else int(d) for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input, "output": self.output, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StateTensor:
        try:
            shape = tuple(BATCH_DIM if v == BATCH_DIM else int(v) for v in d["shape"])
            t = cls(str(d["input"]), str(d["output"]), shape, str(d.get("dtype", "float32")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"rnnops.state entry {d!r} is malformed ({exc}); want {{input, output, shape with one 'batch', dtype}}"
            ) from None
        if shape.count(BATCH_DIM) != 1:
            raise ValueError(f"rnnops.state entry {t.input}: shape {list(shape)} must name '{BATCH_DIM}' exactly once")
        return t


def classic_state_spec(cell: str, layers: int, hidden_size: int) -> tuple[StateTensor, ...]:
    """LSTM/GRU/RNN state as the general contract describes it: [layers, batch, hidden] each."""
    return tuple(
        StateTensor(i, o, (int(layers), BATCH_DIM, int(hidden_size)))
        for i, o in zip(state_inputs(cell), state_outputs(cell))
    )


def state_spec(meta: dict[str, Any]) -> tuple[StateTensor, ...]:
    """The state description of a decoded metadata dict: ``rnnops.state``, or for files exported
    before it existed, the classic layout rebuilt from cell/layers/hidden_size."""
    if meta.get("state"):
        return tuple(StateTensor.from_json(d) for d in meta["state"])
    spec = classic_state_spec(str(meta["cell"]), int(meta["layers"]), int(meta["hidden_size"]))
    names_in, names_out = meta.get("state_inputs"), meta.get("state_outputs")
    if names_in and names_out:  # older files name their tensors explicitly: keep those names
        spec = tuple(StateTensor(i, o, t.shape, t.dtype) for i, o, t in zip(names_in, names_out, spec))
    return spec


# --- ONNX metadata_props: keys prefixed "rnnops.", values JSON-encoded ----------------------
META_PREFIX = "rnnops."
META_KEYS = (
    "kind",  # "char" | "forecaster" | "panel"
    "cell",  # "lstm" | "gru" | "rnn"
    "layers",
    "hidden_size",
    "state_inputs",  # e.g. ["h0", "c0"]
    "state_outputs",  # e.g. ["hn", "cn"]
    "state",  # the general state contract: [{input, output, shape (with "batch"), dtype}, ...]
    "stateful",  # true: stepwise == whole sequence; false: needs the last `lookback` rows
    "vocab",  # char: list of characters, id = position
    "feature_names",  # forecaster: input columns, in order
    "target_names",  # forecaster: output columns, in order
    "lookback",
    "horizon",
    "freq",  # forecaster: pandas frequency string of the training data, or null
    "arch",  # forecaster: "rnn" (the cell over every observation) | "segrnn" (over segments); null: char
    "quantiles",  # forecaster with intervals: {"output", "levels", "calibration"}; null: none
    "precision",  # "fp32" | "int8" (the arithmetic of this file); files without the key are fp32
    "source_run",  # MLflow run id the weights came from
    "version",  # rnnops version that exported it
    "panel",  # a global panel forecaster's covariate contract (rnnops.panel_contract)
)
# A forecaster's window of validation data (lookback + horizon rows, raw units), for the
# playground: outside META_PREFIX on purpose, as it is no part of what serving needs (the
# runtime never reads it; set_metadata keeps it). Written by rnnops.export.sample.
META_SAMPLE = "rnnops_sample"


def quantiles_of(meta: dict[str, Any]) -> tuple[str, tuple[float, ...]] | None:
    """(output name, levels) of a decoded metadata dict's prediction intervals, or None (files
    exported before the key existed, and models without intervals)."""
    q = meta.get("quantiles")
    if not q:
        return None
    try:
        levels = tuple(float(v) for v in q["levels"])
        return str(q.get("output") or QUANTILES_OUTPUT), levels
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"rnnops.quantiles {q!r} is malformed ({exc}); want {{output, levels, calibration}}") from None


def encode_metadata(meta: dict[str, Any]) -> dict[str, str]:
    return {META_PREFIX + k: json.dumps(v) for k, v in meta.items()}


def decode_metadata(props: dict[str, str]) -> dict[str, Any]:
    return {k[len(META_PREFIX) :]: json.loads(v) for k, v in props.items() if k.startswith(META_PREFIX)}


# --- MLflow run tags written by export on the source run -----------------------------------
TAG_MODEL_URI = "rnnops.model_uri"  # the logged torch model (weights + config), set by training
TAG_ONNX_URI = "rnnops.export.onnx_uri"  # models:/... of the mlflow.onnx logged model
TAG_ONNX_SHA256 = "rnnops.export.onnx_sha256"
TAG_PARITY_PASSED = "rnnops.export.parity_passed"  # "true" | "false"
TAG_PARITY_MAX_DIFF = "rnnops.export.parity_max_diff"
# sha256 of model.int8.onnx as stored beside model.onnx in the logged model; set only when the
# export's int8 gates kept it (no tag: no int8 file)
TAG_INT8_SHA256 = "rnnops.export.int8_sha256"

# --- Model Registry -------------------------------------------------------------------------
DEFAULT_NAMES = {"char": "char-rnn", "forecaster": "forecaster", "panel": "panel-forecaster"}
ALIAS_CHAMPION = "champion"
ALIAS_CHALLENGER = "challenger"
# The validation metric the promotion gate compares (lower is better), per model kind, by default.
VAL_METRIC = {"char": "val_loss", "forecaster": "val_mse", "panel": "val_mase"}
# The metrics a version of each kind may be gated on (`rnnops registry register --metric`): a panel
# model by its point forecast (MASE, M4's) or by its quantiles (the mean weighted quantile loss).
VAL_METRICS = {"char": ("val_loss",), "forecaster": ("val_mse",), "panel": ("val_mase", "val_wql")}

# --- Model version tags written by the registry (``rnnops registry register``) -------------
VTAG_KIND = "rnnops.kind"
VTAG_CELL = "rnnops.cell"
VTAG_VERSION = "rnnops.version"  # rnnops version that exported the ONNX
VTAG_SOURCE_RUN = "rnnops.source_run"
VTAG_ONNX_SHA256 = "rnnops.onnx_sha256"  # resolve refuses a file that does not hash to this
VTAG_INT8_SHA256 = "rnnops.int8_sha256"  # the version also carries model.int8.onnx; verified the same way
VTAG_PARITY_PASSED = "rnnops.parity_passed"
VTAG_PARITY_MAX_DIFF = "rnnops.parity_max_diff"
VTAG_VAL_METRIC = "rnnops.val_metric"  # the metric's name (VAL_METRIC[kind]); its value is
# tagged as "rnnops.<name>", e.g. rnnops.val_loss = "1.4821"
VTAG_FORCED = "rnnops.forced_promotion"  # JSON record of a promotion that bypassed the gate
# Registered-model tags: the model kind, and the champion stack that ``rollback`` pops.
RMTAG_KIND = "rnnops.kind"
RMTAG_CHAMPION_HISTORY = "rnnops.champion_history"


# --- What metadata may hold: checked at load (serving refuses the version, in one line naming the
# field) and, for column names, when training reads its data. A model's metadata is untrusted
# input: its names reach logs, JSON answers and the playground, which shows them as text
# (docs/security.md). Any printable text is a valid name (a CSV's column is the user's own);
# control characters and unbounded lengths or counts are not. The bounds (MAX_*) and the name
# checks live in rnnops/metadata_limits.py, which rnnops/panel_contract.py builds on too.
NAME_LISTS = ("feature_names", "target_names", "covariate_names", "state_inputs", "state_outputs")
SHORT_STRINGS = ("kind", "cell", "arch", "precision", "freq", "source_run", "version")
SIZES = ("layers", "hidden_size", "lookback", "horizon")


def _size(field: str, value: object, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_DIM:
        raise MetadataError(f"{field} must be an integer in {low}..{MAX_DIM}, not {_shown(value)}")


def check_metadata(meta: dict[str, Any], where: str = "model") -> None:
    """Raise :class:`MetadataError` (one line, naming the field) unless the decoded ``rnnops.*``
    metadata keeps the bounds above. Keys it does not know are left to their readers."""
    try:
        for key in NAME_LISTS:
            if meta.get(key) is not None:
                check_names(META_PREFIX + key, meta[key])
        for key in SHORT_STRINGS:
            if meta.get(key) is not None:
                check_name(META_PREFIX + key, meta[key])
        for key in SIZES:
            if meta.get(key) is not None:
                _size(META_PREFIX + key, meta[key], 0 if key == "lookback" else 1)
        vocab = meta.get("vocab")
        if vocab is not None:
            if not isinstance(vocab, list) or len(vocab) > MAX_VOCAB:
                raise MetadataError(f"rnnops.vocab must be a list of at most {MAX_VOCAB} characters")
            for i, ch in enumerate(vocab):
                if not isinstance(ch, str) or len(ch) != 1:
                    raise MetadataError(f"rnnops.vocab[{i}] must be one character, not {_shown(ch)}")
        state = meta.get("state")
        if state is not None:
            if not isinstance(state, list) or len(state) > MAX_NAMES:
                raise MetadataError(f"rnnops.state must be a list of at most {MAX_NAMES} tensors")
            for i, t in enumerate(state):
                field = f"rnnops.state[{i}]"
                if not isinstance(t, dict):
                    raise MetadataError(f"{field} must be an object {{input, output, shape, dtype}}")
                check_name(f"{field}.input", t.get("input"))
                check_name(f"{field}.output", t.get("output"))
                check_name(f"{field}.dtype", t.get("dtype", "float32"))
                shape = t.get("shape")
                if not isinstance(shape, list) or len(shape) > 8:
                    raise MetadataError(f"{field}.shape must be a list of at most 8 dimensions")
                elements = 1
                for d in shape:
                    if d != BATCH_DIM:
                        _size(f"{field}.shape", d)
                        elements *= d
                if elements > MAX_STATE_ELEMENTS:
                    raise MetadataError(
                        f"{field}.shape {shape} holds {elements} values per row, more than {MAX_STATE_ELEMENTS}"
                    )
        q = meta.get("quantiles")
        if isinstance(q, dict) and q.get("output") is not None:
            check_name("rnnops.quantiles.output", q["output"])
        from rnnops.panel_contract import panel_contract  # it builds on this module

        panel_contract(meta)
    except MetadataError as exc:
        raise MetadataError(f"{where}: metadata {exc}") from None
