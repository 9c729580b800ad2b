"""onnxruntime helpers for export: sessions, the optimised graph, step timing.

- **Optimised graph**: onnxruntime's own graph rewrites (constant folding, node fusions, ...)
  saved with ``SessionOptions.optimized_model_filepath`` at ``ORT_ENABLE_EXTENDED``: the level
  whose output is still a portable ONNX file for any CPU (``ORT_ENABLE_ALL`` adds layout
  rewrites specific to the machine that wrote it). It may contain ``com.microsoft`` ops, so it
  is for onnxruntime only; serving can load it to skip the optimisation at start-up.

The int8 variant is :mod:`rnnops.export.int8` (fixed scales). onnxruntime's ``quantize_dynamic``
is not used: its per-call activation scales make a row's result depend on the rest of the batch
and on how a sequence is chunked.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from rnnops.contract import decode_metadata


def session(path: str | Path, threads: int = 1, level: str = "all"):
    """A CPU InferenceSession; ``level``: "disable" | "basic" | "extended" | "all"."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = _level(level)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def optimise(src: str | Path, dst: str | Path, level: str = "extended") -> Path:
    """Write onnxruntime's optimised graph of ``src`` to ``dst`` (metadata kept)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = _level(level)
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    _copy_metadata(src, dst)
    return Path(dst)


def step_latency(sess, feeds: dict[str, np.ndarray], budget_s: float = 0.25, min_runs: int = 10) -> float:
    """Median seconds per ``sess.run`` with ``feeds`` (a warm-up call first)."""
    sess.run(None, feeds)
    times = []
    end = time.perf_counter() + budget_s
    while len(times) < min_runs or time.perf_counter() < end:
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t)
        if len(times) >= 10_000:
            break
    return statistics.median(times)


def _level(name: str):
    import onnxruntime as ort

    G = ort.GraphOptimizationLevel
    return {
        "disable": G.ORT_DISABLE_ALL,
        "basic": G.ORT_ENABLE_BASIC,
        "extended": G.ORT_ENABLE_EXTENDED,
        "all": G.ORT_ENABLE_ALL,
    }[name]


def _copy_metadata(src: str | Path, dst: str | Path) -> None:
    """Make sure a derived file carries the same ``rnnops.*`` metadata as its source."""
    import onnx

    from rnnops.export.onnx_export import set_metadata

    meta = decode_metadata({p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props})
    out = onnx.load(str(dst))
    if decode_metadata({p.key: p.value for p in out.metadata_props}) != meta:
        set_metadata(out, meta)
        onnx.save_model(out, str(dst), save_as_external_data=False)
