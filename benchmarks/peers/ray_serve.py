"""Streamed char generation: our step scheduler vs Ray Serve's ``@serve.batch``, same model, same load.

Compared: aggregate chars/s, time to first chunk (TTFC) p50/p99, inter-chunk p99, server CPU
per 1000 characters and the server's peak RSS (all its processes: for Ray, the driver and the
head's services below it: GCS, raylet, Serve controller, HTTP proxy, the replica), at 8, 64 and
256 concurrent streams, each stream asking for ``max_chars`` uniform in 50-800 (mixed lengths:
a static batch keeps a finished member's slot until its longest member ends).

- **rnnops**: ``bentoml serve rnnops.serving.service:RnnopsService`` started by
  ``benchmarks/streaming.py``'s ``start_server`` (continuous batching: one ORT call per step for
  every active stream, streams join and leave between steps), one worker.
- **Ray Serve** 2.60 (its own virtualenv, ``~/.cache/rnnops/peers/ray-venv``): ``ray_app.py``
  beside this file, set up as Ray Serve's "Dynamic Request Batching" guide, section "Streaming
  batched requests" (docs.ray.io/en/latest/serve/advanced-guides/dyn-req-batch.html) says: a
  deployment whose batched method is an ``async`` generator decorated with ``@serve.batch``
  (yielding one output per member per step, ``StopIteration`` for members that are done), with
  Ray's defaults ``batch_wait_timeout_s=0.01`` and ``max_concurrent_batches=1``;
  ``max_batch_size=256`` (the guide's tip: a power of 2; ours admits 256 streams) and
  ``max_ongoing_requests`` above it (else Serve's default of 5 ongoing requests per replica
  would cap the batch; docs.ray.io/en/latest/serve/advanced-guides/performance.html). One
  replica; ``ray.init(num_cpus=<server CPUs>)``; the dashboard off (not on the request path;
  Ray still starts its dashboard and runtime-env agents, counted with its other services).

Both run the same ONNX file (a random-weight char LSTM as ``streaming.py`` builds it: speed
does not depend on weights) with the same onnxruntime version and intra-op thread count
(``ServeConfig.ort_threads`` for one worker on the server's CPUs), pinned to the same CPUs
(three quarters, at least one; the load generator, ``streaming.py``'s minimal asyncio SSE
client, gets the rest). One server at a time: ours first, stopped, then Ray (its driver shuts
Ray down; whatever of its process tree outlives it is killed by process id). Each client runs
requests back to back until the level's time is up (a level then waits for the requests in
flight); client k's sequence of prompts and lengths is the same against both servers. Ray's replica
sends one SSE event per character; ours coalesces a stream's characters over 5 ms windows
(``RNNOPS_COALESCE_MS``), so inter-chunk gaps are not alike per event: chars/s and TTFC are.
Ray's services are processes of their own: the figure lists each one's share of a CPU and
resident memory over the top level, and the CPUs every thread of either server was allowed.

Goal (issue 15): at 64 streams, ours >= 3x Ray Serve's chars/s with a lower TTFC p99.

    python benchmarks/peers/ray_serve.py --quick --json out.json   # smoke: 8 streams, 15 s
    python benchmarks/peers/ray_serve.py --json ray_serve.json     # 8, 64, 256 streams, 90 s each
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common as C  # noqa: E402
import peerlib as P  # noqa: E402  (puts benchmarks/ on sys.path)
from streaming import build_model, sse_request, start_server, stop_server  # noqa: E402

RAY_PINS = ["ray[serve]==2.60.0", f"onnxruntime=={P.ORT}", f"numpy=={P.NUMPY}"]
PROMPTS = ["\nFirst Citizen:\n", "ROMEO: ", "To be, or not to be", "\n"]
METRICS = [
    ("chars_per_s", "chars/s", True, 0),
    ("ttfc_ms_p50", "TTFC p50 ms", False, 1),
    ("ttfc_ms_p99", "TTFC p99 ms", False, 1),
    ("inter_chunk_ms_p99", "inter-chunk p99 ms", False, 1),
    ("server_cpu_s_per_1k_chars", "CPU s/1k chars", False, 3),
    ("rss_mb", "RSS MB", False, 0),
]


# ----------------------------------------------------------------------------- Ray Serve


def start_ray(
    py: Path,
    onnx: Path,
    threads: int,
    num_cpus: int,
    log: Path,
    max_batch_size: int,
    wait_s: float,
    concurrent_batches: int,
    cpus: set[int] | None,
):
    port = C.free_port()
    argv = [
        str(py),
        str(HERE / "ray_app.py"),
        "--onnx",
        str(onnx),
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--num-cpus",
        str(num_cpus),
        "--max-batch-size",
        str(max_batch_size),
        "--batch-wait-timeout-s",
        str(wait_s),
        "--max-concurrent-batches",
        str(concurrent_batches),
    ]
    env = {
        "PATH": f"{py.parent}:/usr/bin:/bin",
        "HOME": str(Path.home()),
        "PYTHONUNBUFFERED": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": str(threads),
    }
    proc = C.start_process(argv, env, log, cpus_allowed=cpus)

    def ready() -> bool:
        if "READY" not in log.read_text(errors="replace"):
            return False
        asyncio.run(sse_request(port, {"prompt": "\n", "max_chars": 4, "temperature": 0.8}))
        return True

    try:
        P.wait_until(ready, 300, "Ray Serve", proc, log, every=1.0)
    except BaseException:
        stop_ray(proc, py, log)
        raise
    return proc, port


def stop_ray(proc, py: Path, log: Path) -> None:
    """Stop the driver (it shuts Serve and Ray down), then whatever of its tree outlived it.

    Not ``ray stop --force``: that kills every Ray process of this user on the machine by name,
    other people's included; this ends only the processes this benchmark started, by id."""
    tree = [p for p in C.process_tree(proc.pid) if p != proc.pid]
    C.stop_process(proc)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in tree):
        time.sleep(0.5)
    left = [p for p in tree if Path(f"/proc/{p}").exists()]
    for p in left:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    if left:
        with open(log, "a") as fh:
            fh.write(f"killed {len(left)} Ray process(es) that outlived the driver\n")


# ----------------------------------------------------------------------------- the load


async def mixed_level(
    port: int, concurrency: int, lo: int, hi: int, seconds: float, server_pid: int, seed: int = 0
) -> dict:
    """``concurrency`` clients, each streaming /generate requests back to back for ``seconds``,
    each asking for ``max_chars`` uniform in [lo, hi] (client k draws the same sequence on every
    server); chars/s, TTFC and inter-chunk percentiles, server CPU per 1000 chars, peak RSS."""
    ttfc: list[float] = []
    gaps: list[float] = []
    total, errors, done, rss = 0, 0, 0, 0.0
    deadline = time.perf_counter() + seconds

    async def client(k: int):
        nonlocal total, errors, done
        rng = random.Random(seed * 100_003 + k)
        r = 0
        while time.perf_counter() < deadline:
            body = {
                "prompt": PROMPTS[(k + r) % len(PROMPTS)],
                "max_chars": rng.randint(lo, hi),
                "seed": rng.randrange(2**31),
                "temperature": 0.8,
            }
            r += 1
            try:
                first, arrivals, n = await sse_request(port, body)
            except Exception as exc:  # counted: an overload answer is a result too
                errors += 1
                if errors <= 3:
                    print(f"  request failed: {exc}", file=sys.stderr)
                continue
            total += n
            done += 1
            if first is not None:
                ttfc.append(first)
            gaps.extend(np.diff(arrivals).tolist())

    async def sample_rss():
        nonlocal rss
        while True:
            rss = max(rss, C.tree_rss_mb(server_pid))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample_rss())
    use0 = P.tree_usage(server_pid)
    cpu0, t0, client0 = C.tree_cpu_s(server_pid), time.perf_counter(), time.process_time()
    with P.StallMeter() as stall:
        await asyncio.gather(*(client(k) for k in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, C.tree_cpu_s(server_pid) - cpu0
    client_cpu = time.process_time() - client0
    by_process = P.usage_delta(use0, P.tree_usage(server_pid), wall)
    sampler.cancel()
    ms = lambda xs, q: round(1e3 * C.pct(xs, q), 2) if xs else None  # noqa: E731
    return {
        "streams": concurrency,
        "requests": done,
        "errors": errors,
        "chars": total,
        "wall_s": round(wall, 2),
        "chars_per_s": round(total / wall, 1),
        "ttfc_ms_p50": ms(ttfc, 50),
        "ttfc_ms_p99": ms(ttfc, 99),
        "inter_chunk_ms_p50": ms(gaps, 50),
        "inter_chunk_ms_p99": ms(gaps, 99),
        "server_cpu_s": round(cpu, 2),
        "server_cpu_s_per_1k_chars": round(1e3 * cpu / total, 4) if total else None,
        "rss_mb": round(rss, 1),
        "by_process": by_process,
        # the load generator's own share of a CPU, and its longest stall: is a figure the client's or the server's?
        "client_cpu_pct": round(100 * client_cpu / wall, 1),
        "stall_ms": stall.max_ms,
    }


def say(server: str, row: dict) -> None:
    print(
        f"  {server:9s} {row['streams']:4d} streams: {row['chars_per_s']:9.1f} chars/s  TTFC p50 "
        f"{row['ttfc_ms_p50']} p99 {row['ttfc_ms_p99']} ms  inter-chunk p99 {row['inter_chunk_ms_p99']} ms  "
        f"CPU {row['server_cpu_s_per_1k_chars']} s/1k chars  RSS {row['rss_mb']} MB  ({row['requests']} req, "
        f"{row['errors']} errors; client {row['client_cpu_pct']}% of a CPU, longest stall {row['stall_ms']:.0f} ms)",
        file=sys.stderr,
        flush=True,
    )


# ----------------------------------------------------------------------------- main


def run(
    quick: bool,
    work: Path,
    levels: list[int],
    seconds: float,
    lo: int,
    hi: int,
    hidden: int,
    layers: int,
    cell: str,
    threads: int | None,
    pin: bool,
    max_batch_size: int,
    wait_s: float,
    concurrent_batches: int,
    servers=("rnnops", "ray"),
) -> dict:
    py = P.ensure_venv("ray", RAY_PINS)
    server_cpus, client_cpus = P.cpu_split(pin)
    threads = threads or P.server_threads(server_cpus)
    onnx = build_model(work / "char.onnx", hidden, layers, cell)
    out = {
        "quick": quick,
        "model": {"cell": cell, "layers": layers, "hidden_size": hidden, "onnx": str(onnx)},
        "levels": levels,
        "seconds_per_level": seconds,
        "max_chars_uniform": [lo, hi],
        "ort_threads": threads,
        "cpus": {
            "server": sorted(server_cpus) if server_cpus else "all",
            "client": sorted(client_cpus) if client_cpus else "all",
        },
        "ray": {
            "max_batch_size": max_batch_size,
            "batch_wait_timeout_s": wait_s,
            "max_concurrent_batches": concurrent_batches,
            "replicas": 1,
            "versions": P.venv_versions(py, ["ray", "onnxruntime", "numpy", "starlette", "uvicorn"]),
        },
        "machine": C.machine(),
        "servers": {},
        "processes": {},
        "affinity": {},
    }
    print(
        f"model {cell} {layers}x{hidden}; levels {levels}; {seconds:.0f} s each; max_chars U[{lo}, {hi}]; "
        f"{threads} ORT thread(s); server CPUs {out['cpus']['server']}; logs in {work}",
        file=sys.stderr,
    )
    for server in servers:
        log = work / f"{server}.log"
        print(f"starting {server}…", file=sys.stderr, flush=True)
        if server == "rnnops":
            with P.pinned(server_cpus):  # bentoml and its worker inherit the server CPUs
                proc, port = start_server(onnx, "batched", threads, 256, log)
            stop = functools.partial(stop_server, proc)
        else:
            proc, port = start_ray(
                py,
                onnx,
                threads,
                len(server_cpus) if server_cpus else C.cpus(),
                log,
                max_batch_size,
                wait_s,
                concurrent_batches,
                server_cpus,
            )
            stop = functools.partial(stop_ray, proc, py, log)
        try:
            with P.pinned(client_cpus):
                asyncio.run(mixed_level(port, 4, 20, 40, 3.0, proc.pid, seed=999))  # warm-up
                rows = []
                for c in levels:
                    rows.append(asyncio.run(mixed_level(port, c, lo, hi, seconds, proc.pid)))
                    say(server, rows[-1])
            out["processes"][server] = P.process_names(proc.pid)
            out["affinity"][server] = P.tree_affinity(proc.pid)
            out["servers"][server] = rows
        finally:
            stop()
    by = {s: {r["streams"]: r for r in rows} for s, rows in out["servers"].items()}
    if "rnnops" in by and "ray" in by:
        at = 64 if 64 in levels else max(levels)
        o, r = by["rnnops"][at], by["ray"][at]
        ratio = o["chars_per_s"] / r["chars_per_s"] if r["chars_per_s"] else None
        lower = o["ttfc_ms_p99"] is not None and r["ttfc_ms_p99"] is not None and o["ttfc_ms_p99"] < r["ttfc_ms_p99"]
        out["goal"] = {
            "streams": at,
            "chars_per_s_ratio": ratio,
            "ttfc_p99_lower": lower,
            "met": bool(at == 64 and ratio and ratio >= 3 and lower),
        }
    return out


def markdown(res: dict) -> str:
    by = {s: {r["streams"]: r for r in rows} for s, rows in res["servers"].items()}
    lines = [
        f"Same ONNX char model ({res['model']['cell'].upper()} {res['model']['layers']}x"
        f"{res['model']['hidden_size']}, random weights), onnxruntime {res['ray']['versions'].get('onnxruntime')} "
        f"with {res['ort_threads']} intra-op thread(s) in both, one worker / one replica, server CPUs "
        f"{res['cpus']['server']}, client CPUs {res['cpus']['client']}; max_chars uniform in "
        f"{res['max_chars_uniform'][0]}-{res['max_chars_uniform'][1]}; {res['seconds_per_level']:.0f} s per level"
        + (" (--quick)" if res["quick"] else "")
        + f". Ray Serve {res['ray']['versions'].get('ray')}: "
        f"@serve.batch(max_batch_size={res['ray']['max_batch_size']}, batch_wait_timeout_s="
        f"{res['ray']['batch_wait_timeout_s']}, max_concurrent_batches={res['ray']['max_concurrent_batches']}).",
        "",
    ]
    if "ray" in by and "rnnops" in by:
        lines.append(P.side_by_side("streams", res["levels"], by["rnnops"], by["ray"], METRICS, "Ray"))
        lines += [
            "",
            "x: how many times better rnnops is (rnnops/Ray for chars/s, Ray/rnnops for the rest). "
            "CPU and RSS are all of a server's processes; Ray's: "
            + ", ".join(f"{k} x{v}" if v > 1 else k for k, v in sorted(res["processes"].get("ray", {}).items()))
            + ".",
        ]
        top = max(res["levels"])
        use = by["ray"].get(top, {}).get("by_process")
        if use:  # where Ray's CPU and memory go: its services are processes of their own
            lines += [
                "",
                f"Ray's processes at {top} streams (share of one CPU over the level, resident MB): "
                + ", ".join(
                    f"{name}{' x' + str(u['processes']) if u['processes'] > 1 else ''} "
                    f"{C.fmt(u['cpu_pct'], 0)}% / {C.fmt(u['rss_mb'], 0)} MB"
                    for name, u in sorted(use.items(), key=lambda kv: -(kv[1]["cpu_pct"] or 0))
                )
                + "; rnnops's: "
                + ", ".join(
                    f"{name}{' x' + str(u['processes']) if u['processes'] > 1 else ''} {C.fmt(u['cpu_pct'], 0)}% / "
                    f"{C.fmt(u['rss_mb'], 0)} MB"
                    for name, u in (by["rnnops"].get(top, {}).get("by_process") or {}).items()
                )
                + ".",
            ]
        lines += [
            "",
            "The load generator (Python asyncio, its own CPUs) used "
            + "; ".join(
                f"{name} runs {', '.join(C.fmt(r.get('client_cpu_pct'), 0) + '%' for r in rows)}"
                for name, rows in res["servers"].items()
            )
            + " of a CPU per level; its longest stall: "
            + C.fmt(max(r.get("stall_ms") or 0 for rows in res["servers"].values() for r in rows), 0)
            + " ms.",
        ]
        if res.get("affinity"):
            lines += [
                "",
                "CPUs the servers' threads were allowed (all of their processes): "
                + "; ".join(f"{k} {v}" for k, v in res["affinity"].items())
                + ".",
            ]
        g = res.get("goal")
        if g and g["streams"] != 64:
            lines += [
                "",
                "Goal (at 64 streams: rnnops >= 3x Ray Serve's chars/s with a lower TTFC p99): not run at that level.",
            ]
        elif g:
            lines += [
                "",
                f"Goal at {g['streams']} streams: rnnops >= 3x Ray Serve's chars/s with a lower TTFC p99: "
                f"**{C.ratio(g['chars_per_s_ratio'], 1)}**, TTFC p99 {'lower' if g['ttfc_p99_lower'] else 'NOT lower'}"
                f" -> **{'met' if g['met'] else 'not met'}**.",
            ]
    else:
        for s, rows in by.items():
            lines.append(f"{s}: " + "; ".join(f"{c}: {r['chars_per_s']:.0f} chars/s" for c, r in rows.items()))
    return "\n".join(lines)


def plot(res: dict, path: Path) -> Path:
    """chars/s and TTFC p99 against the number of streams, rnnops and Ray Serve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for server, label, color in (("ray", "Ray Serve @serve.batch", "tab:gray"), ("rnnops", "rnnops", "tab:orange")):
        rows = res["servers"].get(server, [])
        x = [r["streams"] for r in rows]
        ax1.plot(x, [r["chars_per_s"] for r in rows], "o-", color=color, label=label)
        ax2.plot(x, [r["ttfc_ms_p99"] for r in rows], "o-", color=color, label=label)
    for ax, what in ((ax1, "chars/s (higher is better)"), (ax2, "time to first chunk p99, ms (lower is better)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(
            f"concurrent streams (max_chars uniform in {res['max_chars_uniform'][0]}-{res['max_chars_uniform'][1]})"
        )
        ax.set_title(what, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("Streamed generation over HTTP SSE: continuous batching vs Ray Serve's @serve.batch", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 streams for 15 s per server")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    ap.add_argument("--levels", help="concurrent streams (default 8,64,256; --quick: 8)")
    ap.add_argument("--seconds", type=float, help="time per level and server (default 90; --quick: 15)")
    ap.add_argument("--min-chars", type=int, default=50)
    ap.add_argument("--max-chars", type=int, default=800)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--threads", type=int, help="ORT intra-op threads for both (default: what our service picks)")
    ap.add_argument("--servers", default="rnnops,ray")
    ap.add_argument("--max-batch-size", type=int, default=256, help="Ray's @serve.batch max_batch_size")
    ap.add_argument("--batch-wait-timeout-s", type=float, default=0.01, help="Ray's default 0.01")
    ap.add_argument("--max-concurrent-batches", type=int, default=1, help="Ray's default 1")
    ap.add_argument("--no-pin", action="store_true", help="servers and client share all CPUs")
    ap.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    a = ap.parse_args(argv)
    levels = [int(x) for x in (a.levels or ("8" if a.quick else "8,64,256")).split(",")]
    seconds = a.seconds or (15.0 if a.quick else 90.0)
    work = a.work or Path(tempfile.mkdtemp(prefix="rnnops-bench-ray-"))
    work.mkdir(parents=True, exist_ok=True)
    res = run(
        a.quick,
        work,
        levels,
        seconds,
        a.min_chars,
        a.max_chars,
        a.hidden,
        a.layers,
        a.cell,
        a.threads,
        not a.no_pin,
        a.max_batch_size,
        a.batch_wait_timeout_s,
        a.max_concurrent_batches,
        tuple(a.servers.split(",")),
    )
    print(markdown(res))
    C.write_json(a.json, res)


if __name__ == "__main__":
    main()
