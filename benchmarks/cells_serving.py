"""The recurrent cells served: raw ORT step kernel and streamed generation per cell, beside the LSTM.

For each cell (lstm, gru, mingru, minlstm, mlstm) a random-weight char model of about 1M
parameters (``training_throughput.CELL_CONFIGS``, the sizes the training benchmark compares;
speed does not depend on what the weights learnt), exported through the project's own path
(``export_onnx``: the modern cells get their stepped form, a ``Loop`` over time; mLSTM's has an
``If`` branch for T=1 that skips it), then:

- **kernel**: the raw ORT step, T=1 with carried state, at batch 1/64/256, in this process with
  the thread count the service picks (``ServeConfig().ort_threads``);
- **T=1 through the Loop**: mLSTM's step exported without its T=1 branch (the ``Loop`` runs one
  iteration): what the branch saves;
- **served**: chars/s of streamed generation at 64 concurrent streams through the real
  ``bentoml serve`` service and its step scheduler (``benchmarks/streaming.py``'s server and
  client), the same settings for every cell.

All servers start up front; each is measured in turn, ``--alternate`` times (medians), so a
neighbour's load on a shared machine falls on every cell alike. Ratios are to the LSTM.

    python benchmarks/cells_serving.py --quick
    python benchmarks/cells_serving.py --json out.json
    python benchmarks/cells_serving.py --cells lstm,mlstm --alternate 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import streaming  # noqa: E402
from training_throughput import CELL_CONFIGS  # noqa: E402

CELLS = ("lstm", "gru", "mingru", "minlstm", "mlstm")
BRANCHED = ("mlstm",)  # cells whose exported step has a T=1 branch without the Loop
BATCHES = (1, 64, 256)


def export_cell(cell: str, path: Path) -> Path:
    """A random-weight char model of ``cell`` in the ONNX contract, through ``export_onnx``."""
    import torch

    from rnnops.export.onnx_export import export_onnx
    from rnnops.training.models import CharModel, CharModelConfig

    torch.manual_seed(0)
    model = CharModel(CharModelConfig(vocab_size=len(streaming.VOCAB), cell=cell, **CELL_CONFIGS[cell])).eval()
    return export_onnx(model, {"vocab": streaming.VOCAB}, path)


@contextlib.contextmanager
def loop_only():
    """Export mLSTM's step without its T=1 branch: the recurrence always a ``Loop``."""
    import torch

    from rnnops.training import mlstm as X

    @torch.jit.script
    def mlstm_loop(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        i: torch.Tensor,
        logf: torch.Tensor,
        C: torch.Tensor,
        n: torch.Tensor,
        m: torch.Tensor,
        eps: float = 1e-6,
    ):
        q, k, v, i, logf = (
            q.transpose(0, 1),
            k.transpose(0, 1),
            v.transpose(0, 1),
            i.transpose(0, 1),
            logf.transpose(0, 1),
        )
        outs: list[torch.Tensor] = []
        for t in range(q.size(0)):
            h, C, n, m = X.mlstm_step(q[t], k[t], v[t], i[t], logf[t], C, n, m, eps)
            outs.append(h)
        return torch.stack(outs, 1), C, n, m

    saved = X.mlstm_loop
    X.mlstm_loop = mlstm_loop
    try:
        yield
    finally:
        X.mlstm_loop = saved


def step_times(files: dict[str, Path], threads: int, batches, seconds: float, repeats: int) -> dict:
    """Median ms of one T=1 step per file and batch, the files measured in turn ``repeats`` times."""
    from rnnops.serving.runtime import Runtime

    runtimes = {k: Runtime(p, threads=threads) for k, p in files.items()}
    times: dict[str, dict[int, list[float]]] = {k: {b: [] for b in batches} for k in files}
    for _ in range(repeats):
        for b in batches:
            tok = np.zeros((b, 1), np.int64)
            for k, rt in runtimes.items():
                state = rt.zero_state(b)
                for _ in range(3):
                    state = rt.run(tok, state, "last").state
                laps, end = [], time.perf_counter() + seconds
                while time.perf_counter() < end:
                    t = time.perf_counter()
                    state = rt.run(tok, state, "last").state
                    laps.append(time.perf_counter() - t)
                times[k][b].append(1e3 * statistics.median(laps))
    return {k: {b: statistics.median(v) for b, v in by_b.items()} for k, by_b in times.items()}


def run(cells: list[str], quick: bool, streams: int, alternate: int, threads: int) -> dict:
    from rnnops.serving.config import ServeConfig

    threads = threads or ServeConfig().ort_threads
    chars, rounds, level_s, seconds = (100, 1, 20.0, 0.3) if quick else (400, 2, 60.0, 1.0)
    work = Path(tempfile.mkdtemp(prefix="rnnops-cells-"))
    files = {c: export_cell(c, work / f"{c}.onnx") for c in cells}
    with loop_only():
        loops = {c: export_cell(c, work / f"{c}.loop.onnx") for c in cells if c in BRANCHED}
    print(
        f"{len(cells)} cells exported to {work}; {C.cpus()} CPUs, {threads} ORT thread(s); load {C.machine()['load_avg_1m']}",
        file=sys.stderr,
    )

    kernel = step_times(files, threads, BATCHES, seconds, alternate)
    loop = step_times({c: p for c, p in loops.items()}, threads, (1, 64), seconds, alternate) if loops else {}
    served: dict[str, list[dict]] = {c: [] for c in cells}
    servers = {}
    try:
        for c in cells:  # all up front: an idle server costs next to nothing
            servers[c] = streaming.start_server(files[c], "batched", threads, streams, work / f"{c}.log")
        for _ in range(alternate):
            for c, (proc, port) in servers.items():
                row = asyncio.run(streaming.run_level(port, streams, chars, rounds, level_s, proc.pid))
                served[c].append(row)
                print(
                    f"{c:8s} {streams} streams: {row['chars_per_s']:8.0f} chars/s ({row['requests']} requests, "
                    f"{row['errors']} errors, server CPU {row['server_cpu_ms_per_1k_chars']} ms/1k chars)",
                    file=sys.stderr,
                )
    finally:
        for proc, _ in servers.values():
            streaming.stop_server(proc)

    out = {
        "machine": C.machine(),
        "threads": threads,
        "streams": streams,
        "chars_per_request": chars,
        "requests_per_stream": rounds,
        "alternate": alternate,
        "quick": quick,
        "cells": {},
    }
    for c in cells:
        row = sorted(served[c], key=lambda r: r["chars_per_s"])[(len(served[c]) - 1) // 2]
        out["cells"][c] = {
            "config": CELL_CONFIGS[c],
            "kernel_step_ms": {str(b): round(ms, 4) for b, ms in kernel[c].items()},
            "kernel_chars_per_s": {str(b): round(b * 1e3 / ms, 1) for b, ms in kernel[c].items()},
            "loop_step_ms": {str(b): round(ms, 4) for b, ms in loop.get(c, {}).items()} or None,
            "served_chars_per_s": row["chars_per_s"],
            "served_runs": [r["chars_per_s"] for r in served[c]],
            "served": row,
        }
    return out


def markdown(res: dict) -> str:
    cells = res["cells"]
    base = cells.get("lstm")

    def vs(x, ref):
        return f" ({x / ref:.2f}x)" if ref else ""

    rows = []
    for c, r in cells.items():
        k = r["kernel_chars_per_s"]
        row = [c]
        for b in map(str, BATCHES):
            row.append(f"{C.fmt(k[b])}{vs(k[b], base and base['kernel_chars_per_s'][b])}")
        row.append(
            f"{r['kernel_step_ms']['1']:.3f}" + (f" / {r['loop_step_ms']['1']:.3f}" if r["loop_step_ms"] else "")
        )
        row.append(
            f"{C.fmt(r['served_chars_per_s'])}{vs(r['served_chars_per_s'], base and base['served_chars_per_s'])}"
        )
        rows.append(row)
    m = res["machine"]
    return "\n".join(
        [
            f"{m['cpu']}, {m['cpus']} CPUs, load {m['load_avg_1m']} at start; {res['threads']} ORT thread(s) (the service's "
            f"choice); medians of {res['alternate']} alternating run(s)" + (" (--quick)" if res["quick"] else "") + ".",
            "",
            C.md_table(
                [
                    "cell",
                    "kernel batch 1 chars/s (vs LSTM)",
                    "batch 64",
                    "batch 256",
                    "T=1 step ms, batch 1 (mLSTM: If branch / Loop only)",
                    f"served, {res['streams']} streams, chars/s (vs LSTM)",
                ],
                rows,
            ),
        ]
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, from {', '.join(CELLS)}")
    ap.add_argument("--streams", type=int, default=64, help="concurrent streams for the served figure")
    ap.add_argument(
        "--alternate",
        type=int,
        default=None,
        metavar="N",
        help="measure every cell N times in turn (default 2, --quick 1)",
    )
    ap.add_argument("--threads", type=int, default=0, help="ORT threads (default: what the service picks)")
    ap.add_argument("--quick", action="store_true", help="short timings and requests")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    args = ap.parse_args(argv)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        ap.error(f"unknown cell(s) {unknown}: use {', '.join(CELLS)}")
    res = run(cells, args.quick, args.streams, args.alternate or (1 if args.quick else 2), args.threads)
    print(markdown(res))
    C.write_json(args.json, res)


if __name__ == "__main__":
    main()
