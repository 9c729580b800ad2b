"""Write the tiny ONNX files of tests/assets/ that the fast serving tests serve (`make check`).

The check venv has the serve extra only (no torch, like the serving image), so it cannot export a
model; these files are made here, with the real exporter (rnnops.export.onnx_export) from freshly
initialised tiny models, and committed. Run it again in the full venv when the ONNX contract
changes (a new metadata key, a new input), then commit the files:

    .venv/bin/python scripts/make_test_assets.py

Seeded: the same torch and rnnops versions write the same graphs.
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

import torch

from rnnops.export.onnx_export import export_onnx
from rnnops.training.models import CharModel, CharModelConfig, Forecaster, ForecasterConfig

ASSETS = Path(__file__).resolve().parents[1] / "tests" / "assets"
VOCAB = list("\n " + string.ascii_letters + ".,;:!?'-")
FEATURES = ["a", "b", "OT"]


def char_model() -> CharModel:
    torch.manual_seed(0)
    return CharModel(CharModelConfig(vocab_size=len(VOCAB), cell="lstm", hidden_size=16, embed_dim=8))


def forecaster(norm: str, quantiles: list[float] | None = None) -> Forecaster:
    """``fixed``: stateful (sessions carry state); ``revin``: windowed (sessions keep the window).
    With ``quantiles``: prediction intervals, a band of -1 .. +1 (scaled units) around the median."""
    torch.manual_seed(1)
    n = len(FEATURES)
    model = Forecaster(
        ForecasterConfig(
            n_features=n,
            target_indices=[n - 1],
            lookback=12,
            horizon=4,
            cell="gru",
            hidden_size=8,
            norm=norm,
            scaler_mean=[0.0, 0.0, 5.0],
            scaler_std=[1.0, 1.0, 2.0],
            feature_names=FEATURES,
            target_names=["OT"],
            quantiles=quantiles or [],
        )
    )
    if quantiles:
        from rnnops.training import intervals

        intervals.add_buffer(model)
        offsets = torch.linspace(-1.0, 1.0, len(quantiles))
        with torch.no_grad():
            getattr(model, intervals.BUFFER).copy_(offsets.expand(4, 1, len(quantiles)))
    return model


def main() -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    files = {
        "char-lstm.onnx": (char_model(), {"vocab": VOCAB}),
        "forecaster-fixed.onnx": (forecaster("fixed"), {"freq": "h", "stateful": True}),
        "forecaster-revin.onnx": (forecaster("revin"), {"freq": "h", "stateful": False}),
        # stateful with prediction intervals: the session path's quantiles (tests/test_sessions.py)
        "forecaster-bands.onnx": (forecaster("fixed", [0.1, 0.5, 0.9]), {"freq": "h", "stateful": True}),
    }
    for name, (model, spec) in files.items():
        path = export_onnx(model, spec, ASSETS / name, source_run=None)
        print(f"{path.relative_to(ASSETS.parents[1])}: {path.stat().st_size:,} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
