"""Names shared between stages: the ONNX contract, MLflow tags, registry defaults.

One place for every string two stages must agree on (export writes them, registry and serving
read them). See ARCHITECTURE.md, "The ONNX contract". No torch, no onnxruntime here.
"""

from __future__ import annotations

import json

# --- ONNX graph: inputs and outputs --------------------------------------------------------
INPUT = "x"  # char: int64 [B, T] token ids; forecaster: float32 [B, T, F] raw values
CHAR_OUTPUT = "logits"  # float32 [B, T, V]
FORECAST_OUTPUT = "forecast"  # float32 [B, horizon, F_out], raw units


def state_inputs(cell: str) -> list[str]:
    """State inputs, each float32 [layers, B, hidden]: h0 (+ c0 for LSTM)."""
    return ["h0", "c0"] if cell == "lstm" else ["h0"]


def state_outputs(cell: str) -> list[str]:
    return ["hn", "cn"] if cell == "lstm" else ["hn"]


# --- ONNX metadata_props: keys prefixed "rnnops.", values JSON-encoded ----------------------
META_PREFIX = "rnnops."
META_KEYS = (
    "kind",  # "char" | "forecaster"
    "cell",  # "lstm" | "gru" | "rnn"
    "layers",
    "hidden_size",
    "state_inputs",  # e.g. ["h0", "c0"]
    "state_outputs",  # e.g. ["hn", "cn"]
    "stateful",  # true: stepwise == whole sequence; false: needs the last `lookback` rows
    "vocab",  # char: list of characters, id = position
    "feature_names",  # forecaster: input columns, in order
    "target_names",  # forecaster: output columns, in order
    "lookback",
    "horizon",
    "freq",  # forecaster: pandas frequency string of the training data, or null
    "source_run",  # MLflow run id the weights came from
    "version",  # rnnops version that exported it
)


def encode_metadata(meta: dict) -> dict[str, str]:
    return {META_PREFIX + k: json.dumps(v) for k, v in meta.items()}


def decode_metadata(props: dict[str, str]) -> dict:
    return {k[len(META_PREFIX):]: json.loads(v) for k, v in props.items() if k.startswith(META_PREFIX)}


# --- MLflow run tags written by export on the source run -----------------------------------
TAG_MODEL_URI = "rnnops.model_uri"  # the logged torch model (weights + config), set by training
TAG_ONNX_URI = "rnnops.export.onnx_uri"  # models:/... of the mlflow.onnx logged model
TAG_ONNX_SHA256 = "rnnops.export.onnx_sha256"
TAG_PARITY_PASSED = "rnnops.export.parity_passed"  # "true" | "false"
TAG_PARITY_MAX_DIFF = "rnnops.export.parity_max_diff"

# --- Model Registry -------------------------------------------------------------------------
DEFAULT_NAMES = {"char": "char-rnn", "forecaster": "forecaster"}
ALIAS_CHAMPION = "champion"
ALIAS_CHALLENGER = "challenger"
# The validation metric the promotion gate compares (lower is better), per model kind.
VAL_METRIC = {"char": "val_loss", "forecaster": "val_mse"}

# --- Model version tags written by the registry (``rnnops registry register``) -------------
VTAG_KIND = "rnnops.kind"
VTAG_CELL = "rnnops.cell"
VTAG_VERSION = "rnnops.version"  # rnnops version that exported the ONNX
VTAG_SOURCE_RUN = "rnnops.source_run"
VTAG_ONNX_SHA256 = "rnnops.onnx_sha256"  # resolve refuses a file that does not hash to this
VTAG_PARITY_PASSED = "rnnops.parity_passed"
VTAG_PARITY_MAX_DIFF = "rnnops.parity_max_diff"
VTAG_VAL_METRIC = "rnnops.val_metric"  # the metric's name (VAL_METRIC[kind]); its value is
# tagged as "rnnops.<name>", e.g. rnnops.val_loss = "1.4821"
VTAG_FORCED = "rnnops.forced_promotion"  # JSON record of a promotion that bypassed the gate
# Registered-model tags: the model kind, and the champion stack that ``rollback`` pops.
RMTAG_KIND = "rnnops.kind"
RMTAG_CHAMPION_HISTORY = "rnnops.champion_history"
