"""Streaming benchmark: the step scheduler vs naive per-request generation, over real HTTP.

For each mode (``batched``: continuous batching, one ORT call per step for all streams;
``naive``: every request calls ORT on its own, one character per call, on its own thread) it
starts ``bentoml serve rnnops.serving.service:RnnopsService`` on a free loopback port
(``RNNOPS_SCHEDULER=<mode>``), then at each concurrency level runs that many clients, each
streaming ``/generate`` (SSE) requests back to back, and reports:

- aggregate chars/s (all characters received / wall time of the level),
- time to first chunk (request sent -> first ``chunk`` event) p50/p99,
- inter-chunk latency (gap between consecutive chunk events of a stream) p50/p99,
- the server's RSS (all its processes) at the highest level.

In every turn, the raw ORT kernel throughput (T=1 steps at batch 1/64/256 in this process, same threads)
and the two goals: batched >= 8x naive at 64 streams; served >= 50% of the kernel at batch 64.

``--precisions fp32,int8`` runs a batched server per precision on the same model in one run
(``RNNOPS_PRECISION``; the int8 file is the fixed-scale form of ``rnnops.export.int8``, made beside
the fp32 one if it is not there yet), each against its own raw kernel at batch 64 with the same
threads, and reports the int8/fp32 ratio of chars/s at 64 streams (goal: >= 1.5x). The naive mode
runs at fp32 only. Each server's ``GET /models`` is checked to say the precision asked for, so a
fallback cannot pass for an int8 figure. ``--alternate N`` measures every level N times with the
servers (and then the kernels) taking turns and reports medians: on a shared machine a busy
minute then falls on both precisions alike.

    python benchmarks/streaming.py --quick            # a smoke run (1, 8, 64 streams, short)
    python benchmarks/streaming.py --out bench.json   # 1, 8, 64, 256 streams
    python benchmarks/streaming.py --onnx model.onnx  # your model (default: a random-weight
                                                      # char LSTM, 1x512 unless --hidden/--layers,
                                                      # built with torch; speed ignores weights)
    python benchmarks/streaming.py --hidden 384 --modes batched --precisions fp32,int8 --levels 64 --alternate 5
                                                      # the quick preset's LSTM, fp32 vs int8 served
    python benchmarks/streaming.py --hidden 384 --modes batched --precisions fp32,int8 --levels 64,256 \
        --decode-steps 0,16 --alternate 2             # today's decode path vs the decode graph (issue 27)

``--decode-steps`` (``RNNOPS_DECODE_STEPS``, default: the service's, 16) runs a batched server per
value side by side: ``0`` is the numpy sampler, one model step per call; ``K`` >= 1 the decode
graph, sampling and up to K steps in one onnxruntime call. The service's default keeps the plain
keys (``batched``, ``batched-int8``); another value is suffixed (``batched-k0``, ``batched-int8-k8``). Each is reported against its precision's raw kernel, and each graph server
against the numpy one of its precision (chars/s, server CPU per character, TTFC p99), measured in
the same run. The raw decode graph (K steps per call, sampling included, no server) is measured
beside the raw kernel. The load average is printed with every level: on a shared machine the
ratios of one run are the figures to quote.

The client is a minimal asyncio HTTP/1.1 reader (not httpx) so that at 256 streams the load
generator, which shares the machine, costs as little as possible. Loopback only; every level is
bounded in requests and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import tree_cpu_s, tree_rss_mb  # noqa: E402  (benchmarks/ is a folder of scripts)

REPO = Path(__file__).resolve().parents[1]
SERVICE = "rnnops.serving.service:RnnopsService"
VOCAB = list("\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")  # tiny shakespeare's 65


# ----------------------------------------------------------------------------- the model


def build_model(path: Path, hidden: int, layers: int, cell: str) -> Path:
    """A random-weight CharModel in the ONNX contract (throughput does not depend on weights)."""
    import warnings

    import onnx
    import torch

    from rnnops import contract
    from rnnops.training.models import CharModel, CharModelConfig

    torch.manual_seed(0)
    m = CharModel(
        CharModelConfig(vocab_size=len(VOCAB), cell=cell, hidden_size=hidden, num_layers=layers, embed_dim=64)
    ).eval()

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x, *state):
            out, new = self.m(x, tuple(state))
            return (out, *new)

    ins, outs = contract.state_inputs(cell), contract.state_outputs(cell)
    axes = {"x": {0: "B", 1: "T"}, "logits": {0: "B", 1: "T"}, **{n: {1: "B"} for n in ins + outs}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrap(),
            (torch.zeros(2, 3, dtype=torch.long), *m.init_state(2)),
            str(path),
            input_names=["x", *ins],
            output_names=["logits", *outs],
            dynamic_axes=axes,
            dynamo=False,
            opset_version=17,
        )
    proto = onnx.load(str(path))
    meta = {
        "kind": "char",
        "cell": cell,
        "layers": layers,
        "hidden_size": hidden,
        "state_inputs": ins,
        "state_outputs": outs,
        "stateful": True,
        "vocab": VOCAB,
        "source_run": None,
        "version": "benchmark",
    }
    for k, v in contract.encode_metadata(meta).items():
        p = proto.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(proto, str(path))
    return path


def graph_throughput(path: Path, threads: int, steps: int, batches=(64, 256), seconds: float = 1.0) -> dict:
    """Raw decode graph: chars/s of calls of ``steps`` sampled steps at each batch size (this process)."""
    from rnnops.serving.generate.decode_graph import build
    from rnnops.serving.runtime import Runtime

    rt = Runtime(path, threads=threads)
    graph, why = build(rt)
    if graph is None:
        return {"error": why}
    out = {}
    rng = np.random.default_rng(0)
    for b in batches:
        state, tok = rt.zero_state(b), np.zeros(b, np.int64)
        temp, k, p = np.full(b, 0.8), np.zeros(b, np.int64), np.ones(b)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            r = graph.run(tok, state, temp, k, p, rng.random((b, steps)))
            state, tok = r.state, r.tokens[-1]
            n += 1
        dt = time.perf_counter() - t0
        out[b] = {"chars_per_s": round(b * steps * n / dt, 1), "call_ms": round(1e3 * dt / n, 3)}
    return out


def seed_check(path: Path, streams: int, steps: int, chars: int = 200) -> dict:
    """How many of ``streams`` seeded texts the decode graph (``steps`` per call) gives differently
    from the numpy sampler (one step per call), in-process. The parameters cycle through plain
    temperature, top-k, top-p, both and greedy, so every path of the sampler is counted."""
    from rnnops.serving.generate.sampling import SamplingParams
    from rnnops.serving.generate.scheduler import GenerationRequest, StepScheduler
    from rnnops.serving.runtime import Runtime

    rt = Runtime(path, threads=1)
    prompts = ["\nFirst Citizen:\n", "ROMEO: ", "To be, or not to be", "\n"]
    params = [SamplingParams(0.8), SamplingParams(1.0, 40), SamplingParams(0.9, 0, 0.9), SamplingParams(1.2, 20, 0.8)]
    params.append(SamplingParams(0.0))
    requests = [
        GenerationRequest(rt.encode(prompts[i % 4]), chars, params[i % len(params)], seed=10_000 + i)
        for i in range(streams)
    ]
    texts = {}
    for k in (0, steps):
        sched = StepScheduler(rt, max_active=256, max_queue=streams, queue_timeout=3600, decode_steps=k)
        out = [sched.submit(r) for r in requests]
        sched.run_until_idle()
        texts[k] = [s.text for s in out]
    differ = [i for i, (a, b) in enumerate(zip(texts[0], texts[steps])) if a != b]
    return {"streams": streams, "chars": chars, "differ": len(differ), "first_differing": differ[:10]}


def kernel_throughput(path: Path, threads: int, batches=(1, 64, 256), seconds: float = 1.0) -> dict:
    """Raw ORT: chars/s of T=1 steps with carried state at each batch size (this process)."""
    from rnnops.serving.runtime import Runtime

    rt = Runtime(path, threads=threads)
    out = {}
    for b in batches:
        state = rt.zero_state(b)
        tok = np.zeros((b, 1), np.int64)
        for _ in range(3):
            state = rt.run(tok, state, "last").state
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            state = rt.run(tok, state, "last").state
            n += 1
        dt = time.perf_counter() - t0
        out[b] = {"chars_per_s": round(b * n / dt, 1), "step_ms": round(1e3 * dt / n, 3)}
    return out


# ----------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def int8_file(onnx: Path) -> Path:
    """The fixed-scale int8 file beside ``onnx`` (``X.onnx`` -> ``X.int8.onnx``), made if missing."""
    from rnnops.export.int8 import quantize_file
    from rnnops.refs import int8_sibling

    return int8_sibling(onnx) or quantize_file(onnx, onnx.with_name(onnx.stem + ".int8.onnx"))


def served_precision(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/models", timeout=10) as r:
        return json.load(r)["models"][0].get("precision", "fp32")


def start_server(
    onnx: Path,
    mode: str,
    threads: int,
    max_streams: int,
    log: Path,
    python: str = sys.executable,
    precision: str = "fp32",
    decode_steps: int = 0,
) -> tuple[subprocess.Popen, int]:
    """``bentoml serve`` of the rnnops service that ``python``'s environment has installed."""
    port = free_port()
    env = {
        **os.environ,
        "RNNOPS_MODELS": f"bench={onnx}",
        "RNNOPS_SCHEDULER": mode,
        "RNNOPS_POLL_SECONDS": "0",
        "RNNOPS_PRECISION": precision,
        "RNNOPS_THREADS": str(threads),
        "RNNOPS_MAX_STREAMS": str(max_streams),
        "RNNOPS_MAX_QUEUE": str(max_streams),
        "RNNOPS_MAX_CHARS": "100000",
        "RNNOPS_DECODE_STEPS": str(decode_steps),
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(log.parent / "bentoml"),
    }
    out = open(log, "ab")
    proc = subprocess.Popen(
        [python, "-m", "bentoml", "serve", SERVICE, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except OSError:
            pass
        time.sleep(0.3)
    stop_server(proc)
    raise TimeoutError(f"server not ready in 120 s; see {log}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


# ----------------------------------------------------------------------------- the client


async def sse_request(port: int, body: dict) -> tuple[float | None, list[float], int]:
    """POST /generate; returns (time to first chunk, chunk arrival times, characters)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    writer.write(
        b"POST /generate HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n" + payload
    )
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        rest = await reader.read()
        writer.close()
        raise RuntimeError(f"{status.decode().strip()}: {rest[-300:]!r}")
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
            chunked = True
    arrivals: list[float] = []
    chars = 0
    buf = b""
    done = False
    while not done:
        if chunked:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                break
            data = await reader.readexactly(size + 2)
            buf += data[:-2]
        else:
            data = await reader.read(65536)
            if not data:
                break
            buf += data
        now = time.perf_counter()
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if event.startswith(b"event: chunk"):
                text = json.loads(event.split(b"data: ", 1)[1])["text"]
                chars += len(text)
                arrivals.append(now)
            elif event.startswith(b"event: done"):
                done = True
            elif event.startswith(b"event: error"):
                raise RuntimeError(event.decode())
    writer.close()
    ttfc = arrivals[0] - t0 if arrivals else None
    return ttfc, arrivals, chars


async def run_level(
    port: int, concurrency: int, chars: int, rounds: int, time_limit: float, server_pid: int, rss: bool = False
) -> dict:
    ttfc: list[float] = []
    gaps: list[float] = []
    total = 0
    errors = 0
    rss_mb = 0.0
    deadline = time.perf_counter() + time_limit
    prompts = ["\nFirst Citizen:\n", "ROMEO: ", "To be, or not to be", "\n"]

    async def client(i: int):
        nonlocal total, errors
        for r in range(rounds):
            if time.perf_counter() > deadline:
                return
            body = {
                "prompt": prompts[(i + r) % len(prompts)],
                "max_chars": chars,
                "seed": random.randrange(2**31),
                "temperature": 0.8,
            }
            try:
                first, arrivals, n = await sse_request(port, body)
            except Exception as exc:  # counted, never fatal: overload answers are a result too
                errors += 1
                if errors <= 3:
                    print(f"  request failed: {exc}", file=sys.stderr)
                continue
            total += n
            if first is not None:
                ttfc.append(first)
            gaps.extend(np.diff(arrivals).tolist())

    async def sample_rss():
        nonlocal rss_mb
        while True:
            rss_mb = max(rss_mb, round(tree_rss_mb(server_pid), 1))
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample_rss()) if rss else None
    cpu0 = tree_cpu_s(server_pid)
    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    wall = time.perf_counter() - t0
    cpu = tree_cpu_s(server_pid) - cpu0
    if sampler:
        sampler.cancel()

    def pct(xs, q):
        return round(1e3 * float(np.percentile(xs, q)), 2) if xs else None

    return {
        "concurrency": concurrency,
        "requests": len(ttfc),
        "errors": errors,
        "chars": total,
        "wall_s": round(wall, 2),
        "chars_per_s": round(total / wall, 1),
        "ttfc_ms_p50": pct(ttfc, 50),
        "ttfc_ms_p99": pct(ttfc, 99),
        "inter_chunk_ms_p50": pct(gaps, 50),
        "inter_chunk_ms_p99": pct(gaps, 99),
        "server_cpu_ms_per_1k_chars": round(1e6 * cpu / total, 1) if total else None,
        "rss_mb": rss_mb or None,
    }


# ----------------------------------------------------------------------------- main


def _median(rows: list[dict], key: str) -> dict:
    """The row whose ``key`` is the median (the lower one of an even count)."""
    return sorted(rows, key=lambda r: r[key])[(len(rows) - 1) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", type=Path, help="a char model in the rnnops ONNX contract (default: build one)")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--levels", default=None, help="concurrency levels, e.g. 1,8,64,256")
    ap.add_argument("--chars", type=int, default=None, help="characters per request")
    ap.add_argument("--rounds", type=int, default=None, help="requests per client per level")
    ap.add_argument("--level-seconds", type=float, default=None, help="time bound per level")
    ap.add_argument("--modes", default="batched,naive")
    ap.add_argument(
        "--precisions",
        default="fp32",
        help="fp32, int8 or fp32,int8: the batched server at each (the naive mode runs at fp32)",
    )
    ap.add_argument(
        "--decode-steps",
        default=None,
        help="RNNOPS_DECODE_STEPS of the batched servers, e.g. 0,16 (default: the service's): 0 = the numpy "
        "sampler, one step per call; K = the decode graph, up to K steps per call; one server per value, side by side",
    )
    ap.add_argument(
        "--seed-check",
        type=int,
        default=0,
        metavar="N",
        help="only count, on N seeded streams in-process, the texts the decode graph gives differently "
        "from the numpy sampler (per precision; K = the largest --decode-steps, else 16), then exit",
    )
    ap.add_argument(
        "--alternate",
        type=int,
        default=1,
        metavar="N",
        help="measure every level N times, the servers taking turns, and report the median (for a shared machine)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="ORT threads for the batched server and the kernel "
        "(default: the server's default, CPUs - 1, at most 8); the naive server uses 1 per request "
        "(its best setting)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: levels 1,8,64, short requests")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args()

    levels = [int(x) for x in (args.levels or ("1,8,64" if args.quick else "1,8,64,256")).split(",")]
    chars = args.chars or (100 if args.quick else 400)
    rounds = args.rounds or (1 if args.quick else 2)
    level_s = args.level_seconds or (30 if args.quick else 120)
    from rnnops.serving.config import ServeConfig
    from rnnops.util import available_cpus

    threads = args.threads or ServeConfig().ort_threads
    work = Path(tempfile.mkdtemp(prefix="rnnops-bench-"))
    onnx = args.onnx or build_model(work / "bench.onnx", args.hidden, args.layers, args.cell)
    print(
        f"model {onnx} ({args.cell} {args.layers}x{args.hidden} unless --onnx); {available_cpus()} CPUs; "
        f"levels {levels}; {chars} chars/request; {rounds} request(s)/client; logs in {work}",
        flush=True,
    )

    precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    if not precisions or set(precisions) - {"fp32", "int8"}:
        ap.error(f"--precisions: fp32, int8 or both, not {args.precisions!r}")
    files = {"fp32": onnx, **({"int8": int8_file(onnx)} if "int8" in precisions else {})}
    results: dict = {
        "levels": levels,
        "chars_per_request": chars,
        "cpus": available_cpus(),
        "threads": threads,
        "modes": {},
        "precisions": precisions,
    }
    default_steps = ServeConfig().decode_steps
    decode = [int(x) for x in (args.decode_steps or str(default_steps)).split(",") if x.strip()]
    results["decode_steps"] = decode
    if args.seed_check:
        k = max(decode) or 16
        results["seed_check"] = {p: seed_check(f, args.seed_check, k) for p, f in files.items()}
        for p, r in results["seed_check"].items():
            print(f"seed check, {p}: {r['differ']} of {r['streams']} seeded texts ({r['chars']} chars) differ (K={k})")
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))
        return
    runs = [
        (mode, p, d)
        for mode in args.modes.split(",")
        for p in (precisions if mode == "batched" else ["fp32"])
        for d in (decode if mode == "batched" else [default_steps])
    ]
    repeats = max(1, args.alternate)
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    measured: dict[str, dict[int, list[dict]]] = {}
    try:
        # All servers up front (an idle one costs next to nothing), then each level measured on
        # each in turn, `repeats` times: on a shared machine the neighbours' load then falls on
        # every server alike instead of on whichever ran during a busy minute.
        for mode, precision, steps in runs:
            key = _key(mode, precision, steps, default_steps)
            servers[key] = start_server(
                onnx,
                mode,
                threads if mode == "batched" else 1,
                max(levels),
                work / f"{key}.log",
                precision=precision,
                decode_steps=steps,
            )
            live = served_precision(servers[key][1])
            if live != precision:
                raise RuntimeError(f"asked for {precision}, the server runs {live}; see {work / f'{key}.log'}")
            measured[key] = {c: [] for c in levels}
        batches = sorted({1, 64, max(levels)})
        graph_batches = sorted({64, max(levels)})
        runs_k: dict[str, list[dict]] = {p: [] for p in files}
        runs_g: dict[str, list[dict]] = {f"{p}-k{d}": [] for p in files for d in decode if d}
        for _ in range(repeats):
            for c in levels:
                for key, (proc, port) in servers.items():
                    load0 = os.getloadavg()[0]
                    row = asyncio.run(run_level(port, c, chars, rounds, level_s, proc.pid, rss=c == max(levels)))
                    row["load_avg"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
                    measured[key][c].append(row)
                    print(
                        f"{key:18s} load {row['load_avg'][0]:.1f}-{row['load_avg'][1]:.1f} {c:4d} streams: {row['chars_per_s']:9.1f} chars/s  TTFC p50 {row['ttfc_ms_p50']} "
                        f"p99 {row['ttfc_ms_p99']} ms  inter-chunk p50 {row['inter_chunk_ms_p50']} p99 "
                        f"{row['inter_chunk_ms_p99']} ms  server CPU {row['server_cpu_ms_per_1k_chars']} ms/1k chars  "
                        f"({row['requests']} req, {row['errors']} errors"
                        + (f", RSS {row['rss_mb']} MB" if row["rss_mb"] else "")
                        + ")",
                        flush=True,
                    )
            # the raw kernels in the same turn (the servers idle), so a busy minute falls on both
            for p in files:
                runs_k[p].append(kernel_throughput(files[p], threads, batches=batches))
                for d in decode:
                    if d:
                        runs_g[f"{p}-k{d}"].append(graph_throughput(files[p], threads, d, batches=graph_batches))
    finally:
        for proc, _ in servers.values():
            stop_server(proc)
    results["modes"] = {
        key: [_median(rows, "chars_per_s") for rows in by_level.values()] for key, by_level in measured.items()
    }
    if repeats > 1:
        results["repeats"] = {key: {str(c): rows for c, rows in by_level.items()} for key, by_level in measured.items()}
        print(f"medians of {repeats} alternating repeats:")
        for key, rows in results["modes"].items():
            print(
                "  "
                + key
                + ": "
                + ", ".join(
                    f"{r['concurrency']} streams {r['chars_per_s']:.0f} chars/s "
                    f"({r['server_cpu_ms_per_1k_chars']} ms CPU/1k)"
                    for r in rows
                )
            )

    kernels = {p: {b: _median([k[b] for k in ks], "chars_per_s") for b in batches} for p, ks in runs_k.items()}
    kernel = kernels.get("fp32") or kernels["int8"]
    results["kernel"], results["kernels"] = kernel, kernels
    for p, k in kernels.items():
        print(
            f"raw ORT kernel, {p} (T=1 steps, this process, {threads} thread(s)): "
            + ", ".join(f"batch {b}: {x['chars_per_s']:.0f} chars/s ({x['step_ms']} ms/step)" for b, x in k.items())
        )
    by = {m: {r["concurrency"]: r for r in rows} for m, rows in results["modes"].items()}
    if 64 in levels and "batched" in by:
        served = by["batched"][64]["chars_per_s"]
        if "naive" in by and by["naive"][64]["chars_per_s"]:
            ratio = served / by["naive"][64]["chars_per_s"]
            results["batched_over_naive_at_64"] = round(ratio, 2)
            print(f"batched / naive at 64 streams: {ratio:.1f}x (goal >= 8x)")
        frac = served / kernel[64]["chars_per_s"]
        results["served_over_kernel_at_64"] = round(frac, 3)
        print(f"served at 64 streams / raw kernel at batch 64: {100 * frac:.0f}% (goal >= 90%)")
        # On a shared machine wall-clock rates move with the neighbours' load; CPU time per
        # character (the server's processes, user + system) is steadier.
        cpu_b = by["batched"][64]["server_cpu_ms_per_1k_chars"]
        cpu_n = by.get("naive", {}).get(64, {}).get("server_cpu_ms_per_1k_chars")
        if cpu_b:
            line = f"server CPU per character at 64 streams: batched {cpu_b / 1000:.3f} ms"
            if cpu_n:
                line += f", naive {cpu_n / 1000:.3f} ms ({cpu_n / cpu_b:.1f}x less with batching)"
                results["naive_cpu_over_batched_at_64"] = round(cpu_n / cpu_b, 2)
            kernel_cpu = kernel[64]["step_ms"] * threads / 64
            line += f"; the raw kernel at batch 64 needs at most {kernel_cpu:.3f} ms ({threads} ORT thread(s))"
            print(line)
    if 64 in levels and "batched-int8" in by:
        i8 = by["batched-int8"][64]
        frac8 = i8["chars_per_s"] / kernels["int8"][64]["chars_per_s"]
        results["int8_served_over_kernel_at_64"] = round(frac8, 3)
        print(f"int8: served at 64 streams / raw int8 kernel at batch 64: {100 * frac8:.0f}% (goal >= 90%)")
        if "batched" in by and by["batched"][64]["chars_per_s"]:
            served_ratio = i8["chars_per_s"] / by["batched"][64]["chars_per_s"]
            kernel_ratio = kernels["int8"][64]["chars_per_s"] / kernels["fp32"][64]["chars_per_s"]
            results["int8_over_fp32_served_at_64"] = round(served_ratio, 2)
            results["int8_over_fp32_kernel_at_64"] = round(kernel_ratio, 2)
            cpu8, cpu32 = i8["server_cpu_ms_per_1k_chars"], by["batched"][64]["server_cpu_ms_per_1k_chars"]
            if cpu8 and cpu32:
                results["fp32_cpu_over_int8_at_64"] = round(cpu32 / cpu8, 2)
            print(
                f"int8 / fp32 at 64 streams: served {served_ratio:.2f}x (goal >= 1.5x), raw kernel at batch 64 "
                f"{kernel_ratio:.2f}x"
                + (f"; server CPU per character {cpu32 / cpu8:.2f}x less" if cpu8 and cpu32 else "")
            )
            if repeats > 1:  # each turn's own ratio (the servers measured back to back)
                each = [
                    round(a["chars_per_s"] / b["chars_per_s"], 2)
                    for a, b in zip(measured["batched-int8"][64], measured["batched"][64])
                ]
                results["int8_over_fp32_served_at_64_each"] = each
                print(f"  per turn: {', '.join(f'{r:.2f}x' for r in each)}")
    if any(decode):
        graphs = {
            key: (
                {"error": gs[0]["error"]}
                if "error" in gs[0]
                else {b: _median([g[b] for g in gs], "chars_per_s") for b in graph_batches}
            )
            for key, gs in runs_g.items()
        }
        results["graphs"] = graphs
        for key, g in graphs.items():
            if "error" in g:
                print(f"raw decode graph, {key}: not built ({g['error']})")
                continue
            print(
                f"raw decode graph, {key} (sampling included, this process): "
                + ", ".join(f"batch {b}: {x['chars_per_s']:.0f} chars/s ({x['call_ms']} ms/call)" for b, x in g.items())
            )
        results["decode_graph"] = _decode_summary(by, kernels, levels, decode, default_steps)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")


def _key(mode: str, precision: str, steps: int, default_steps: int) -> str:
    """A server's name in the results: the mode, its precision unless fp32, its K unless the service's."""
    return (mode if precision == "fp32" else f"{mode}-{precision}") + ("" if steps == default_steps else f"-k{steps}")


def _decode_summary(by: dict, kernels: dict, levels: list[int], decode: list[int], default_steps: int) -> dict:
    """Issue 27's ratios, per precision, level and K: served / raw kernel at the level's batch, the
    decode graph's server over the numpy one (chars/s, CPU per character), and TTFC p99 of both."""
    out: dict = {}
    for p, kernel in kernels.items():
        base_key = _key("batched", p, 0, default_steps)  # the numpy path
        for d in decode:
            if not d:
                continue
            key = _key("batched", p, d, default_steps)
            for c in levels:
                new, old = by.get(key, {}).get(c), by.get(base_key, {}).get(c)
                if new is None:
                    continue
                k = kernel.get(c) or kernel.get(64)
                row: dict = {"served_over_kernel": round(new["chars_per_s"] / k["chars_per_s"], 3)}
                line = f"{key} at {c} streams: {100 * row['served_over_kernel']:.0f}% of the {p} kernel at batch {c}"
                if old is not None:
                    row["numpy_served_over_kernel"] = round(old["chars_per_s"] / k["chars_per_s"], 3)
                    row["over_numpy"] = round(new["chars_per_s"] / old["chars_per_s"], 2)
                    line += f" (numpy path {100 * row['numpy_served_over_kernel']:.0f}%); {row['over_numpy']:.2f}x its chars/s"
                    if new["server_cpu_ms_per_1k_chars"] and old["server_cpu_ms_per_1k_chars"]:
                        row["cpu_per_char_over_numpy"] = round(
                            new["server_cpu_ms_per_1k_chars"] / old["server_cpu_ms_per_1k_chars"], 3
                        )
                        line += f"; CPU per char {row['cpu_per_char_over_numpy']:.2f}x"
                    row["ttfc_p99_ms"] = [new["ttfc_ms_p99"], old["ttfc_ms_p99"]]
                    row["inter_chunk_p99_ms"] = [new["inter_chunk_ms_p99"], old["inter_chunk_ms_p99"]]
                    line += f"; TTFC p99 {new['ttfc_ms_p99']} vs {old['ttfc_ms_p99']} ms"
                out[f"{key}@{c}"] = row
                print(line)
    return out


if __name__ == "__main__":
    main()
