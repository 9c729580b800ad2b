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
from rnnops.export.panel_export import export_panel_onnx
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


def panel_model() -> tuple[torch.nn.Module, dict]:
    """A global panel forecaster (rnnops.kind "panel") with every input role: past covariate
    ``price``, future covariate ``promo``, the daily calendar, categorical ``store`` (north,
    south) and numeric ``size``; lookback 14, horizon 7, levels 0.1 / 0.5 / 0.9. Every weight is
    random (a fresh model's output layers start at zero, so its forecast would ignore its inputs).
    Returns the model and the config.json a panel run logs for it."""
    from dataclasses import asdict

    from rnnops.calendar import features_for
    from rnnops.training.panel_model import PanelForecaster, PanelModelConfig

    calendar = list(features_for("D"))
    config = PanelModelConfig(
        lookback=14,
        horizon=7,
        segment_length=7,
        season=7,
        hidden_size=8,
        num_layers=1,
        context_size=4,
        decoder_hidden=8,
        quantiles=(0.1, 0.5, 0.9),
        n_past=1,
        n_known=1 + len(calendar),
        static_cardinalities=(2,),
        static_real_mean=(3.0,),
        static_real_std=(1.0,),
        log_level_mean=2.0,
        past_mean=(5.0,),
        past_std=(2.0,),
        future_mean=(0.2,),
        future_std=(0.4,),
    )
    torch.manual_seed(2)
    model = PanelForecaster(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    inputs = {
        "id": "item_id",
        "date": "date",
        "targets": ["sales"],
        "past_covariates": ["price"],
        "future_covariates": ["promo"],
        "calendar": calendar,
        "static": [
            {"name": "store", "kind": "categorical", "vocabulary": ["north", "south"]},
            {"name": "size", "kind": "real", "vocabulary": []},
        ],
        "season": 7,
    }
    return model, {"kind": "panel", "config": asdict(config), "inputs": inputs, "freq": "D", "stateful": False}


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
    # a panel forecaster, as `rnnops export` writes one (the rnnops.panel contract)
    model, spec = panel_model()
    path = export_panel_onnx(model, spec, ASSETS / "panel-retail.onnx", source_run=None)
    print(f"{path.relative_to(ASSETS.parents[1])}: {path.stat().st_size:,} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
