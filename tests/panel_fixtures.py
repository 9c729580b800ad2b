"""A tiny panel forecaster with every input role, for tests that need a real panel ``.onnx``.

``tiny_panel_model(head)`` builds one (untrained, every weight random so that each input moves
the output) over a generated retail panel: past covariate ``price``, future covariate ``promo``,
the daily calendar features, a categorical static ``store`` and a numeric static ``size``;
lookback 14, horizon 7. ``export_tiny_panel(path, head)`` writes its ONNX file
(:func:`rnnops.export.panel_export.export_panel_onnx`), the graph and ``rnnops.panel`` metadata
serving reads. Needs torch (the training extra).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOOKBACK, HORIZON = 14, 7


def tiny_panel(series: int = 12, days: int = 60, seed: int = 5, likelihood: str | None = None):
    """The generated retail panel (benchmarks/retail_panel.py) with a numeric static column added."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import retail_panel

    from rnnops.training.panel import PanelSpec, read_panel

    df = retail_panel.generate(series=series, days=days, seed=seed)
    df["size"] = df["store"].map(lambda s: float(len(str(s))))  # constant per series, as statics are
    spec = PanelSpec(
        "item_id",
        "date",
        "sales",
        horizon=HORIZON,
        lookback=LOOKBACK,
        static_columns="store,size",
        future_covariates="promo",
        past_covariates="price",
        freq="D",
        likelihood=likelihood,
    )
    return read_panel(df, spec)


def tiny_panel_model(head: str = "pinball", seed: int = 0, random_weights: bool = True):
    """``(model, spec)``: a panel forecaster and the config.json a panel run logs for it."""
    import torch

    from rnnops.training.panel_model import PanelForecaster
    from rnnops.training.panel_task import model_inputs
    from rnnops.training.panel_train import PanelTrainConfig, PanelWindows, model_config

    likelihood = None if head == "pinball" else head
    panel = tiny_panel(likelihood=likelihood)
    config = PanelTrainConfig(
        lookback=LOOKBACK,
        segment_length=7,
        hidden_size=16,
        num_layers=1,
        context_size=4,
        decoder_hidden=8,
        likelihood=likelihood,
        progress=False,
    )
    torch.manual_seed(seed)
    model = PanelForecaster(model_config(config, panel, PanelWindows(panel, LOOKBACK))).eval()
    if random_weights:  # a fresh model's output layers start at zero: its forecast would ignore the inputs
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.3)
    spec = {
        "kind": "panel",
        "config": json.loads(json.dumps(asdict(model.config))),
        "inputs": model_inputs(panel),
        "stateful": False,
        "freq": panel.freq,
    }
    return model, spec


def export_tiny_panel(path: str | Path, head: str = "pinball", seed: int = 0) -> Path:
    """Write the tiny panel model's ONNX file to ``path``; returns the path."""
    from rnnops.export.panel_export import export_panel_onnx

    model, spec = tiny_panel_model(head, seed)
    return export_panel_onnx(model, spec, path, source_run="tiny-panel")
