"""A hand-written panel graph for the serving tests of panel models (tests/test_panel_serving.py):
the ONNX contract's inputs and outputs (rnnops/panel_contract.py) around a formula simple enough
to recompute in numpy, so a test can tell that every input reached the graph where it should.
Written with onnx.helper (no torch: the serving tests run in the serving venv too).

    level    = sum of the observed past_target values / L          (NaN -> 0)
    forecast = level + known_future[:, :, 0] + static_cat[:, 0] + static_real[:, 0]
               + 0.01 * (sum of the observed past_covariates + sum of known_past)
    quantiles[..., q] = forecast + (-1, 0, 1)[q]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rnnops import contract
from rnnops import panel_contract as pc
from rnnops.panel_contract import PanelContract, StaticCategorical

L, H = 6, 3


def tiny_contract(min_history: int = 1) -> PanelContract:
    return PanelContract(
        target="sales",
        freq="D",
        season=7,
        lookback=L,
        horizon=H,
        quantiles=(0.1, 0.5, 0.9),
        past_covariates=("temp",),
        future_covariates=("promo",),
        calendar=("day_of_week",),
        static_categorical=(StaticCategorical("store", ("north", "south")),),
        static_real=("size",),
        min_history=min_history,
    )


def expected(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The graph's forecast [B, H] and quantiles [B, H, 3], recomputed in numpy (float64)."""
    pt = np.nan_to_num(feeds[pc.PAST_TARGET].astype(np.float64))
    cov = np.nan_to_num(feeds[pc.PAST_COVARIATES].astype(np.float64)).sum(axis=(1, 2))
    kp = feeds[pc.KNOWN_PAST].astype(np.float64).sum(axis=(1, 2))
    f = (
        pt.sum(1, keepdims=True) / L
        + feeds[pc.KNOWN_FUTURE][:, :, 0]
        + feeds[pc.STATIC_CAT][:, :1]
        + feeds[pc.STATIC_REAL][:, :1]
        + 0.01 * (cov + kp)[:, None]
    )
    return f, f[:, :, None] + np.array([-1.0, 0.0, 1.0])


def write_tiny_panel_model(path: Path, c: PanelContract | None = None) -> Path:
    import onnx
    from onnx import TensorProto, helper

    c = c or tiny_contract()
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64

    def const(name: str, values, dtype=np.float32):
        return helper.make_node(
            "Constant", [], [name], value=onnx.numpy_helper.from_array(np.asarray(values, dtype), name)
        )

    def observed(x: str, out: str) -> list:  # NaN -> 0
        nan = helper.make_node("IsNaN", [x], [out + "_nan"])
        return [nan, helper.make_node("Where", [out + "_nan", "zero", x], [out])]

    nodes = [
        const("zero", 0.0),
        const("inv_l", 1.0 / L),
        const("cent", 0.01),
        const("ax1", [1], np.int64),
        const("ax2", [2], np.int64),
        const("ax12", [1, 2], np.int64),
        const("first", [0], np.int64),
        const("one", [1], np.int64),
        const("spread", [-1.0, 0.0, 1.0]),
        *observed(pc.PAST_TARGET, "pt0"),
        helper.make_node("ReduceSum", ["pt0", "ax1"], ["pt_sum"], keepdims=1),  # [B, 1]
        helper.make_node("Mul", ["pt_sum", "inv_l"], ["level"]),
        *observed(pc.PAST_COVARIATES, "pcov0"),
        helper.make_node("ReduceSum", ["pcov0", "ax12"], ["pcov_sum"], keepdims=0),  # [B]
        helper.make_node("ReduceSum", [pc.KNOWN_PAST, "ax12"], ["kp_sum"], keepdims=0),
        helper.make_node("Add", ["pcov_sum", "kp_sum"], ["extra0"]),
        helper.make_node("Mul", ["extra0", "cent"], ["extra1"]),
        helper.make_node("Unsqueeze", ["extra1", "ax1"], ["extra"]),  # [B, 1]
        helper.make_node("Slice", [pc.KNOWN_FUTURE, "first", "one", "ax2"], ["promo3"]),
        helper.make_node("Squeeze", ["promo3", "ax2"], ["promo"]),  # [B, H]
        helper.make_node("Slice", [pc.STATIC_CAT, "first", "one", "ax1"], ["cat1"]),
        helper.make_node("Cast", ["cat1"], ["catf"], to=f32),  # [B, 1]
        helper.make_node("Slice", [pc.STATIC_REAL, "first", "one", "ax1"], ["real1"]),
        helper.make_node("Add", ["level", "promo"], ["a1"]),
        helper.make_node("Add", ["a1", "catf"], ["a2"]),
        helper.make_node("Add", ["a2", "real1"], ["a3"]),
        helper.make_node("Add", ["a3", "extra"], [pc.FORECAST]),
        helper.make_node("Unsqueeze", [pc.FORECAST, "ax2"], ["f3"]),
        helper.make_node("Add", ["f3", "spread"], [pc.QUANTILES]),
    ]
    types = {"float32": f32, "int64": i64}
    inputs = [
        helper.make_tensor_value_info(name, types[dtype], list(shape)) for name, (shape, dtype) in c.inputs.items()
    ]
    outputs = [helper.make_tensor_value_info(name, f32, list(shape)) for name, (shape, _) in c.outputs.items()]
    graph = helper.make_graph(nodes, "tiny_panel", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    meta = {"kind": pc.KIND, pc.META_KEY: c.to_json(), "version": "test", "cell": "none"}
    for k, v in contract.encode_metadata(meta).items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def request_entry(panel, i: int, cutoff: int) -> dict:
    """Series ``i`` of a training panel (rnnops.training.panel.Panel) as a ``/forecast`` entry at
    ``cutoff``: its history before it, its future covariates up to cutoff + horizon, its statics."""
    from rnnops import timeseries

    r = panel.rows(i)
    h = panel.spec.horizon
    static = {}
    for s in panel.static:
        v = s.values[i]
        static[s.name] = s.vocabulary[int(v) - 1] if s.kind == "categorical" else float(v)

    def values(a: np.ndarray) -> list:
        return [None if np.isnan(v) else float(v) for v in a]

    return {
        "id": panel.ids[i],
        "timestamps": timeseries.iso(panel.timestamps[r][:cutoff].view(np.int64)),
        "context": values(panel.target[r][:cutoff, 0]),
        "past_covariates": {c: values(panel.past[r][:cutoff, k]) for k, c in enumerate(panel.spec.past_covariates)},
        "future_covariates": {
            c: values(panel.future[r][: cutoff + h, k]) for k, c in enumerate(panel.spec.future_covariates)
        },
        "static": static,
    }


def write_panel_files(panel, root: Path, drop_future: tuple[int, ...] = (), short_future: tuple[int, ...] = ()) -> None:
    """A batch job's files from a training panel cut at each series' test origin (length - H):
    ``root/panel.csv`` the history (target, past and future covariates, statics), and
    ``root/future.parquet`` the future covariates of the horizon after it, but none for the
    series in ``drop_future`` and one step short for those in ``short_future``."""
    import pandas as pd

    h = panel.spec.horizon
    hist, ahead = [], []
    for i, sid in enumerate(panel.ids):
        r = panel.rows(i)
        cut = int(panel.lengths[i]) - h
        frame = pd.DataFrame({"item_id": sid, "date": pd.DatetimeIndex(panel.timestamps[r]).strftime("%Y-%m-%d")})
        frame[panel.spec.targets[0]] = panel.target[r][:, 0]
        for k, c in enumerate(panel.spec.past_covariates):
            frame[c] = panel.past[r][:, k]
        for k, c in enumerate(panel.spec.future_covariates):
            frame[c] = panel.future[r][:, k]
        for s in panel.static:
            v = s.values[i]
            frame[s.name] = s.vocabulary[int(v) - 1] if s.kind == "categorical" else float(v)
        hist.append(frame.iloc[:cut])
        future = frame.iloc[cut:][["item_id", "date", *panel.spec.future_covariates]]
        if i in short_future:
            future = future.iloc[:-1]
        if i not in drop_future:
            ahead.append(future)
    pd.concat(hist).to_csv(root / "panel.csv", index=False)
    pd.concat(ahead).to_parquet(root / "future.parquet")
