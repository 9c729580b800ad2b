"""One machine, more workers: streamed generation and forecasts at ``--workers 1`` and ``--workers 2``.

One server per worker count (``rnnops serve --workers N``, the command users run) serves two
models at once: a random-weight char LSTM of the quick preset's size (``streaming.py``'s
``build_model``: speed does not depend on the weights) and ``forecaster@champion`` (GRU 1x64,
ETTh1, lookback 96, horizon 96, made by the project's pipeline as ``forecast_http.py`` makes it).
Against each, one after the other:

- **streaming**: 64 concurrent SSE clients streaming ``/generate`` (400 characters a request,
  back to back) for ``--seconds``: aggregate chars/s, time to first chunk p99;
- **forecasts**: ``wrk`` at 64 connections on ``/forecast`` (one 96x7 window per request) for
  ``--seconds``: requests/s, latency p50/p99.

Nothing is pinned: with two workers the server needs both cores, so the load generator shares
them too (its CPU is reported). BentoML spreads connections over its workers (SO_REUSEPORT); each
worker runs its own engine process per char model and its own forecast batcher.

What the service picks (``ServeConfig.ort_threads``): per worker, ``cpus // workers - 1``
onnxruntime threads, at least 1 and at most 8, so one core per worker is left for its event loop
and the workers never ask for more threads than there are cores. On this 2-core machine that is 1
thread per session with 1 worker and still 1 with 2 workers (each worker's engine and forecaster
then share a core with the other worker's).

    python benchmarks/workers.py --quick --json out.json
    python benchmarks/workers.py --json workers.json        # 1 and 2 workers, 30 s per load
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common as C  # noqa: E402
import forecast_http as FH  # noqa: E402
from streaming import build_model, run_level  # noqa: E402


def start(workers: int, champ: C.Champion, char_onnx: Path, work: Path):
    port = C.free_port()
    log = work / f"workers-{workers}.log"
    env = {
        **champ.env,
        "PYTHONUNBUFFERED": "1",
        "RNNOPS_POLL_SECONDS": "0",
        "BENTOML_HOME": str(work / "bentoml"),
        "RNNOPS_MAX_CHARS": "100000",
        "RNNOPS_PRECISION": "fp32",
    }
    cli = Path(sys.executable).parent / "rnnops"
    head = [str(cli)] if cli.is_file() else [sys.executable, "-c", "from rnnops.cli import main; main()"]
    argv = [
        *head,
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--models",
        f"{champ.name}@champion,char={char_onnx}",
        "--poll-seconds",
        "0",
    ]
    proc = C.start_process(argv, env, log, cwd=work)
    C.wait_http(f"http://127.0.0.1:{port}/readyz", proc, log, timeout=240)
    return proc, port, log


def ort_threads(workers: int) -> int:
    from rnnops.serving.config import ServeConfig

    return ServeConfig(workers=workers).ort_threads


def measure(
    workers: int, champ: C.Champion, char_onnx: Path, work: Path, seconds: float, files: list[Path], script: Path
) -> dict:
    import resource

    proc, port, log = start(workers, champ, char_onnx, work)
    try:
        asyncio.run(run_level(port, 16, 50, 1, 10, proc.pid))  # warm-up: every worker loads and steps
        FH.wrk_load(f"http://127.0.0.1:{port}/forecast", files, 16, 10**6, 2.0, None, script)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        stream = asyncio.run(run_level(port, 64, 400, 10**6, seconds, proc.pid))
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        client = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / stream["wall_s"]
        fc = FH.wrk_load(f"http://127.0.0.1:{port}/forecast", files, 64, 10**7, seconds, proc.pid, script)
        pids = C.process_tree(proc.pid)
        engines = sum(
            "rnnops.serving.generate.engine" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
            for p in pids
            if Path(f"/proc/{p}/cmdline").exists()
        )
    finally:
        C.stop_process(proc)
    row = {
        "workers": workers,
        "ort_threads": ort_threads(workers),
        "engine_processes": engines,
        "chars_per_s": stream["chars_per_s"],
        "ttfc_ms_p99": stream["ttfc_ms_p99"],
        "stream_client_cpu": round(client, 2),
        "stream_errors": stream["errors"],
        "forecast_rps": round(fc["rps"], 1),
        "forecast_p50_ms": fc["p50_ms"],
        "forecast_p99_ms": fc["p99_ms"],
        "forecast_errors": fc["errors"],
    }
    print(
        f"  {workers} worker(s): {row['chars_per_s']:,.0f} chars/s at 64 streams (TTFC p99 {row['ttfc_ms_p99']} ms); "
        f"{row['forecast_rps']:,.0f} forecasts/s at 64 (p99 {row['forecast_p99_ms']:.1f} ms); "
        f"{engines} engine process(es)",
        file=sys.stderr,
        flush=True,
    )
    return row


def run(quick: bool, work: Path, counts: list[int], seconds: float) -> dict:
    import shutil

    if not shutil.which("wrk"):
        raise SystemExit("error: no `wrk` on PATH; install it with scripts/install_wrk.sh")
    print("building forecaster@champion (train -> export -> register -> promote)…", file=sys.stderr)
    champ = C.champion_forecaster(work / "registry")
    char_onnx = build_model(work / "char.onnx", 384, 1, "lstm")
    files = [f for f in (work / f"body_{i:02d}.json" for i in range(32))]
    for f, body in zip(files, FH.payloads("rnnops", FH.windows_pool(champ.metadata), champ.metadata)):
        f.write_bytes(body)
    script = work / "wrk_bodies.lua"
    script.write_text(FH.WRK_LUA)
    rows = [measure(n, champ, char_onnx, work, seconds, files, script) for n in counts]
    return {
        "quick": quick,
        "seconds": seconds,
        "cpus": C.cpus(),
        "rows": rows,
        "machine": C.machine(),
        "client": FH.wrk_version(),
    }


def markdown(res: dict) -> str:
    head = [
        "workers",
        "ORT threads / worker",
        "engine processes",
        "chars/s at 64 streams",
        "TTFC p99 ms",
        "forecasts/s at 64",
        "forecast p50 / p99 ms",
    ]
    rows = [
        [
            r["workers"],
            r["ort_threads"],
            r["engine_processes"],
            C.fmt(r["chars_per_s"], 0),
            C.fmt(r["ttfc_ms_p99"]),
            C.fmt(r["forecast_rps"], 0),
            f"{C.fmt(r['forecast_p50_ms'])} / {C.fmt(r['forecast_p99_ms'])}",
        ]
        for r in res["rows"]
    ]
    by = {r["workers"]: r for r in res["rows"]}
    lines = [
        f"One server per row (`rnnops serve --workers N`) serving a char LSTM 1x384 (random weights) and "
        f"forecaster@champion (GRU 1x64) on {res['cpus']} CPUs, nothing pinned; {res['seconds']:.0f} s per load"
        + (" (--quick)" if res["quick"] else "")
        + "; streaming: 64 SSE clients, 400 chars a request; forecasts: "
        f"{(res.get('client') or 'wrk')}, 64 connections.",
        "",
        C.md_table(head, rows),
    ]
    if 1 in by and 2 in by:
        lines += [
            "",
            f"2 workers / 1 worker: streaming {C.ratio(by[2]['chars_per_s'], by[1]['chars_per_s'])}, "
            f"forecasts {C.ratio(by[2]['forecast_rps'], by[1]['forecast_rps'])}.",
        ]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    names = [f"{r['workers']} worker" + ("s" if r["workers"] > 1 else "") for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    axes[0].bar(names, [r["chars_per_s"] for r in rows], color="tab:orange")
    axes[0].set_ylabel("chars/s at 64 streams")
    axes[1].bar(names, [r["forecast_rps"] for r in rows], color="tab:blue")
    axes[1].set_ylabel("forecasts/s at 64 connections")
    for ax in axes:
        ax.set_title("higher is better", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 s per load")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    ap.add_argument("--seconds", type=float, help="seconds per load (default 30; --quick: 8)")
    ap.add_argument("--work", type=Path, help="working folder (default: a new temporary one; reuses a champion in it)")
    a = ap.parse_args(argv)
    work = a.work or Path(tempfile.mkdtemp(prefix="rnnops-bench-workers-"))
    work.mkdir(parents=True, exist_ok=True)
    res = run(a.quick, work, [int(x) for x in a.workers.split(",")], a.seconds or (8.0 if a.quick else 30.0))
    print(markdown(res))
    C.write_json(a.json, res)


if __name__ == "__main__":
    main()
