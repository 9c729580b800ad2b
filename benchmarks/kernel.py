"""Per-step kernel benchmark for the exported char model: eager vs TorchScript vs ORT vs ORT-int8.

What serving does per generated token is one step at T=1 for a batch of streams, so that is what
is timed: median latency of one ``forward(x[B,1], state)`` at batch 1, 8, 64 and 256, for

- ``2x512``: a 2-layer 512-unit LSTM char model (vocab 65, embedding 64, random weights: speed
  does not depend on what the weights learnt), the ``full`` preset's shape;
- ``quick``: the ``quick`` preset's shape (1x384 LSTM, embedding 64).

ORT-int8 is the file serving runs at ``RNNOPS_PRECISION=int8``: the fixed-scale int8 form
(:mod:`rnnops.export.int8`: each LSTM as a ``Scan`` of int8 recurrent products with ``h`` quantised
at the fixed scale 1/127, the first layer's input projection a table lookup, stacked layers' and
the head's products int8 too), not onnxruntime's dynamic quantisation (whose per-call scales
break batch invariance).

Beside them, the roofline of this machine: a step must read every weight once (bytes: the LSTM
and head matrices in fp32) and do 2 x batch x weights FLOPs; against the measured memory
bandwidth (a large numpy copy) and peak GEMM throughput (a large numpy float32 matmul) that
gives a lower bound on the step time. Goals (issue 3): ORT >= 5x eager at batch 1, and ORT
within 2x of the roofline at batch 256.

    python benchmarks/kernel.py            # full run (a minute or two)
    python benchmarks/kernel.py --quick    # short timings, same table
    python benchmarks/kernel.py --json out.json

Threads: torch and onnxruntime both get ``--threads`` intra-op threads (default 2), numpy's
BLAS whatever it uses by default (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS to pin it). Run it on
a quiet machine: the figures are medians, but a busy neighbour still shows.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCHES = (1, 8, 64, 256)
MODELS = {
    "2x512": dict(num_layers=2, hidden_size=512, embed_dim=64),
    "quick": dict(num_layers=1, hidden_size=384, embed_dim=64),
}
VOCAB = 65


# ----------------------------------------------------------------------------- machine roofline


def memory_bandwidth(mb: int, reps: int) -> float:
    """Bytes/s of a large array copy (each byte read once and written once)."""
    src = np.ones(mb * (1 << 20) // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(reps))
    return 2 * src.nbytes / best


def peak_flops(n: int, reps: int) -> float:
    """FLOP/s of a large float32 matmul (numpy's BLAS)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n**3 / best


def step_cost(cfg: dict, batch: int) -> tuple[int, int]:
    """(weight bytes read, FLOPs) of one T=1 step: LSTM gates + head, fp32; embedding rows ignored."""
    h, e, layers = cfg["hidden_size"], cfg["embed_dim"], cfg["num_layers"]
    weights = sum(4 * h * ((e if k == 0 else h) + h) for k in range(layers)) + h * VOCAB
    return 4 * weights, 2 * batch * weights


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ----------------------------------------------------------------------------- backends


def build(cfg: dict, folder: Path, threads: int) -> dict:
    """name -> step(feeds) for the four backends of one model shape."""
    import onnxruntime as ort
    import torch

    from rnnops.export.int8 import quantize_file
    from rnnops.export.onnx_export import export_onnx
    from rnnops.export.torchscript import export_torchscript, load_torchscript
    from rnnops.training.models import CharModel, CharModelConfig

    torch.manual_seed(0)
    model = CharModel(CharModelConfig(vocab_size=VOCAB, cell="lstm", **cfg)).eval()
    spec = {"vocab": [chr(32 + i) for i in range(VOCAB)]}
    onnx_path = export_onnx(model, spec, folder / "model.onnx")
    int8_path = quantize_file(onnx_path, folder / "model.int8.onnx")
    ts = load_torchscript(export_torchscript(model, folder / "model.pt"))

    def session(path):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])

    fp32, int8 = session(onnx_path), session(int8_path)

    def eager(f):
        with torch.inference_mode():
            return model(f["tx"], (f["th0"], f["tc0"]))

    def torchscript(f):
        with torch.inference_mode():
            return ts(f["tx"], f["th0"], f["tc0"])

    return {
        "eager": eager,
        "torchscript": torchscript,
        "ort": lambda f: fp32.run(None, f["np"]),
        "ort_int8": lambda f: int8.run(None, f["np"]),
    }


def feeds(cfg: dict, batch: int) -> dict:
    import torch

    rng = np.random.default_rng(batch)
    shape = (cfg["num_layers"], batch, cfg["hidden_size"])
    x = rng.integers(0, VOCAB, (batch, 1), dtype=np.int64)
    h0, c0 = (rng.standard_normal(shape).astype(np.float32) * 0.5 for _ in range(2))
    return {
        "np": {"x": x, "h0": h0, "c0": c0},
        "tx": torch.from_numpy(x),
        "th0": torch.from_numpy(h0),
        "tc0": torch.from_numpy(c0),
    }


def median_latency(step, f, budget_s: float, min_runs: int) -> float:
    for _ in range(3):
        step(f)
    times = []
    end = time.perf_counter() + budget_s
    while len(times) < min_runs or time.perf_counter() < end:
        times.append(_timed(lambda: step(f)))
    return statistics.median(times)


# ----------------------------------------------------------------------------- report


def run(quick: bool, threads: int, models: list[str]) -> dict:
    import torch

    torch.set_num_threads(threads)
    budget, min_runs = (0.15, 10) if quick else (1.5, 50)
    print("measuring memory bandwidth and peak GEMM throughput…", file=sys.stderr)
    bw = memory_bandwidth(128 if quick else 512, 3 if quick else 7)
    peak = peak_flops(1024 if quick else 2048, 3 if quick else 7)
    out = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "threads": threads,
            "memory_bandwidth_GBps": bw / 1e9,
            "peak_gemm_GFLOPs": peak / 1e9,
        },
        "quick": quick,
        "rows": [],
    }
    for name in models:
        cfg = MODELS[name]
        with tempfile.TemporaryDirectory() as tmp:
            print(f"exporting {name}…", file=sys.stderr)
            backends = build(cfg, Path(tmp), threads)
            for batch in BATCHES:
                f = feeds(cfg, batch)
                lat = {b: median_latency(step, f, budget, min_runs) for b, step in backends.items()}
                wbytes, flops = step_cost(cfg, batch)
                roof = max(wbytes / bw, flops / peak)
                out["rows"].append(
                    {
                        "model": name,
                        "batch": batch,
                        "latency_ms": {k: v * 1e3 for k, v in lat.items()},
                        "tokens_per_s": {k: batch / v for k, v in lat.items()},
                        "weight_MB": wbytes / 1e6,
                        "GFLOP_per_step": flops / 1e9,
                        "roofline_ms": roof * 1e3,
                        "bound": "memory" if wbytes / bw >= flops / peak else "compute",
                    }
                )
                print(
                    f"  {name} batch {batch}: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in lat.items()),
                    file=sys.stderr,
                )
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"Machine: {m['processor']}, {m['threads']} intra-op threads; memory bandwidth {m['memory_bandwidth_GBps']:.1f} GB/s "
        f"(numpy copy), peak {m['peak_gemm_GFLOPs']:.0f} GFLOP/s (numpy float32 matmul){' — --quick timings' if res['quick'] else ''}.",
        "",
        "| model | batch | eager ms | TorchScript ms | ORT ms | ORT-int8 ms | ORT vs eager | int8 vs ORT | ORT tokens/s "
        "| roofline ms (bound) | ORT / roofline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        L = r["latency_ms"]
        lines.append(
            f"| {r['model']} | {r['batch']} | {L['eager']:.3f} | {L['torchscript']:.3f} | {L['ort']:.3f} | {L['ort_int8']:.3f} "
            f"| {L['eager'] / L['ort']:.1f}x | {L['ort'] / L['ort_int8']:.2f}x | {r['tokens_per_s']['ort']:,.0f} "
            f"| {r['roofline_ms']:.3f} ({r['bound']}) | {L['ort'] / r['roofline_ms']:.2f}x |"
        )
    lines += [
        "",
        "Roofline: fp32 weights read once per step (bytes / bandwidth) vs 2 x batch x weights FLOPs / peak; "
        "the larger is the bound. Below 1x means the weights were served from cache, faster than DRAM.",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short timings (a few seconds per model)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads for torch and onnxruntime (default 2)")
    ap.add_argument("--models", default="2x512,quick", help="comma-separated: 2x512, quick")
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the results as JSON")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}: use {', '.join(MODELS)}")
    res = run(args.quick, args.threads, models)
    print(markdown(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
