"""Forecast over HTTP: our service's ``/forecast`` vs MLflow's own model server, same model, same client.

One registered ONNX forecaster (``forecaster@champion``, made by the project's pipeline in a
throwaway MLflow store: ETTh1's 7 features, lookback 96, horizon 96, GRU 1x64) is served by

- **MLflow**: ``mlflow models serve -m models:/forecaster@champion --env-manager local`` (its
  pyfunc server for the logged ``mlflow.onnx`` model; one uvicorn worker, its default), a
  request is ``{"inputs": {"x": [window], "h0": zeros}}`` on ``/invocations``;
- **rnnops**: ``rnnops serve --models forecaster@champion`` (BentoML + onnxruntime, one worker,
  its default), a request is ``{"context": window}`` on ``/forecast``, batched across requests.

Both servers run from the same environment, pinned to the same CPUs (three quarters of them;
the load generator gets the rest), and only one is under load at a time. The load generator is
``wrk`` (C, closed loop: each connection sends its next request when the answer arrives; a Lua
script cycles 32 pre-encoded 96x7 windows of real rows and stops after a bounded number of
requests; ``scripts/install_wrk.sh`` installs it) or, without it, ``httpx.AsyncClient``. Each
concurrency level (1, 16, 64) runs ``--rounds`` times, the two servers alternating, and the
medians are reported: requests/s, latency p50/p99, errors, and server CPU per request (robust
when the machine is shared). Before the load both servers answer the same window and their
forecasts are compared (they run the same ONNX file, so they must agree). Loopback only.
Goal (issue 5): at concurrency 64, rnnops >= 5x MLflow's requests/s with a lower p99.

    python benchmarks/forecast_http.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

LEVELS = (1, 16, 64)
SERVERS = ("mlflow", "rnnops")

# wrk's Lua side: cycle the bodies, count non-200 answers, stop after max requests, print JSON.
WRK_LUA = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end

function init(args)
  max_requests = tonumber(args[1])
  reqs = {}
  for k = 2, #args do
    local f = assert(io.open(args[k], "rb"))
    reqs[#reqs + 1] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, f:read("*a"))
    f:close()
  end
  sent, answered, bad, first_bad = 0, 0, 0, ""
end

function request()
  sent = sent + 1
  return reqs[(sent - 1) % #reqs + 1]
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= 200 then
    bad = bad + 1
    if first_bad == "" then first_bad = status .. " " .. string.sub(body or "", 1, 160) end
  end
  if answered >= max_requests then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local bad, first = 0, ""
  for _, t in ipairs(threads) do
    bad = bad + t:get("bad")
    if first == "" then first = t:get("first_bad") end
  end
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "non_200": %d, "socket_errors": %d, ' ..
    '"timeouts": %d, "p50_us": %d, "p99_us": %d}\n', summary.requests, summary.duration, bad,
    e.connect + e.read + e.write, e.timeout, latency:percentile(50), latency:percentile(99)))
  if first ~= "" then io.write("FIRST_ERROR " .. first .. "\n") end
end
"""


def windows_pool(meta: dict, n: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` windows of real-looking rows: ETTh1 when available, else generated."""
    L, F = int(meta["lookback"]), len(meta["feature_names"])
    path = Path(os.environ.get("RNNOPS_DATA_DIR") or C.REPO.parent / "shared" / "data") / "ETTh1.csv"
    rng = np.random.default_rng(seed)
    if path.is_file() and meta["feature_names"] == C.ETT_FEATURES:
        import pandas as pd

        values = pd.read_csv(path)[meta["feature_names"]].to_numpy(np.float32)
    else:
        t = np.arange(20_000)[:, None]
        values = (np.sin(t / (8.0 + np.arange(F))) * 3 + 5).astype(np.float32)
    starts = rng.integers(0, len(values) - L, n)
    return np.stack([values[s : s + L] for s in starts])


def payloads(server: str, windows: np.ndarray, meta: dict) -> list[bytes]:
    if server == "mlflow":
        h0 = np.zeros((int(meta["layers"]), 1, int(meta["hidden_size"])), np.float32).tolist()
        extra = {} if meta.get("cell") != "lstm" else {"c0": h0}
        return [json.dumps({"inputs": {"x": [w.tolist()], "h0": h0, **extra}}).encode() for w in windows]
    return [json.dumps({"context": w.tolist()}).encode() for w in windows]


def forecast_of(server: str, body: dict) -> np.ndarray:
    if server == "mlflow":
        pred = body["predictions"]
        return np.asarray(pred["forecast"] if isinstance(pred, dict) else pred, np.float32).reshape(-1)
    return np.asarray(body["forecast"], np.float32).reshape(-1)


def start(
    server: str, champ: C.Champion, work: Path, cpus_allowed: set[int] | None = None, python: str = sys.executable
):
    """``server`` (mlflow | rnnops) from ``python``'s environment, serving the champion."""
    port = C.free_port()
    log = work / f"{server}-{abs(hash(python)) % 10**6}.log"
    env = {**champ.env, "PYTHONUNBUFFERED": "1"}
    # `mlflow models serve` execs `uvicorn` from PATH: the one next to this interpreter
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if server == "mlflow":
        argv = [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{champ.name}@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ]
        ready = f"http://127.0.0.1:{port}/ping"
        path = "/invocations"
    else:
        env.update(RNNOPS_POLL_SECONDS="0", BENTOML_HOME=str(work / "bentoml"))
        cli = Path(python).parent / "rnnops"  # the command users run
        head = [str(cli)] if cli.is_file() else [python, "-c", "from rnnops.cli import main; main()"]
        argv = [
            *head,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--models",
            f"{champ.name}@champion",
            "--poll-seconds",
            "0",
        ]
        ready = f"http://127.0.0.1:{port}/readyz"
        path = "/forecast"
    proc = C.start_process(argv, env, log, cwd=work, cpus_allowed=cpus_allowed)
    C.wait_http(ready, proc, log, timeout=240)
    return proc, f"http://127.0.0.1:{port}{path}"


def _row(
    concurrency: int,
    requests: int,
    errors: int,
    first_error,
    wall: float,
    lat_p50: float,
    lat_p99: float,
    server_cpu: float,
    client_cpu: float,
) -> dict:
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": errors,
        "first_error": first_error,
        "wall_s": round(wall, 3),
        "rps": requests / wall if wall else 0.0,
        "p50_ms": lat_p50,
        "p99_ms": lat_p99,
        "server_cpu_ms_per_request": 1e3 * server_cpu / requests if requests else None,
        "client_cpu_ms_per_request": 1e3 * client_cpu / requests if requests else None,
    }


async def httpx_load(
    url: str, bodies: list[bytes], concurrency: int, max_requests: int, seconds: float, server_pid: int | None = None
) -> dict:
    """The fallback client: ``httpx.AsyncClient`` in this process (a core's worth of Python)."""
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=120.0, trust_env=False) as client:
        deadline = time.perf_counter() + seconds

        async def worker(i: int):
            nonlocal sent
            while sent < max_requests and time.perf_counter() < deadline:
                body = bodies[(sent + i) % len(bodies)]
                sent += 1
                t = time.perf_counter()
                try:
                    r = await client.post(url, content=body, headers=headers)
                    if r.status_code != 200:
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                        continue
                    await r.aread()
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                lat.append(time.perf_counter() - t)

        cpu0 = C.tree_cpu_s(server_pid) if server_pid else 0.0
        client0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        wall = time.perf_counter() - t0
        client = time.process_time() - client0
        cpu = (C.tree_cpu_s(server_pid) - cpu0) if server_pid else float("nan")
    return _row(
        concurrency,
        len(lat),
        len(errors),
        errors[0] if errors else None,
        wall,
        1e3 * C.pct(lat, 50),
        1e3 * C.pct(lat, 99),
        cpu,
        client,
    )


def wrk_version() -> str | None:
    exe = shutil.which("wrk")
    if not exe:
        return None
    out = subprocess.run([exe, "-v"], capture_output=True, text=True).stdout.strip().splitlines()
    return out[0].split(" Copyright")[0] if out else "wrk"  # "wrk debian/4.1.0-3+b2 [epoll]"


def wrk_load(
    url: str,
    body_files: list[Path],
    concurrency: int,
    max_requests: int,
    seconds: float,
    server_pid: int | None,
    script: Path,
) -> dict:
    """One level with ``wrk`` (one thread; it inherits this process's CPU affinity)."""
    argv = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "60s",
        "-s",
        str(script),
        url,
        "--",
        str(max_requests),
        *map(str, body_files),
    ]
    cpu0 = C.tree_cpu_s(server_pid) if server_pid else 0.0
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (C.tree_cpu_s(server_pid) - cpu0) if server_pid else float("nan")
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if res.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")
    r = json.loads(line[len("RESULT ") :])
    first = next((ln[len("FIRST_ERROR ") :] for ln in res.stdout.splitlines() if ln.startswith("FIRST_ERROR ")), None)
    errors = r["non_200"] + r["socket_errors"] + r["timeouts"]
    if r["requests"] >= max_requests:
        print(
            f"    warning: {url} reached the {max_requests}-request bound before {seconds:.0f} s: requests/s is "
            "understated; raise the bound",
            file=sys.stderr,
        )
    client = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return _row(
        concurrency,
        r["requests"] - r["non_200"],
        errors,
        first,
        r["duration_us"] / 1e6,
        r["p50_us"] / 1e3,
        r["p99_us"] / 1e3,
        cpu,
        client,
    )


def median_row(rows: list[dict]) -> dict:
    """The per-level figure: medians over rounds, each round's requests/s kept for the record."""
    keys = ("rps", "p50_ms", "p99_ms", "server_cpu_ms_per_request", "client_cpu_ms_per_request")
    out = {
        k: C.median([r[k] for r in rows if r[k] is not None]) if any(r[k] is not None for r in rows) else None
        for k in keys
    }
    return {
        "concurrency": rows[0]["concurrency"],
        **out,
        "requests": sum(r["requests"] for r in rows),
        "errors": sum(r["errors"] for r in rows),
        "first_error": next((r["first_error"] for r in rows if r["first_error"]), None),
        "rounds_rps": [round(r["rps"], 1) for r in rows],
    }


def run(
    quick: bool, work: Path, levels=LEVELS, pin: bool = True, rounds: int | None = None, client: str = "auto"
) -> dict:
    import httpx

    # a safety bound: with wrk the time bound is the one that ends a level (wrk's clock runs for
    # the whole -d even when the script stops early, so a level that hit the bound is flagged)
    max_requests = {1: 5000, 16: 20000, 64: 20000} if quick else {1: 10000, 16: 50000, 64: 50000}
    seconds = 6.0 if quick else 15.0
    rounds = rounds or (1 if quick else 3)
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "httpx"
    if client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("error: --client wrk but no `wrk` on PATH; install it with scripts/install_wrk.sh")
    print("building forecaster@champion (train -> export -> register -> promote)…", file=sys.stderr)
    champ = C.champion_forecaster(work / "registry")
    meta = champ.metadata
    windows = windows_pool(meta)
    out = {
        "quick": quick,
        "model": {
            "name": champ.name,
            "version": champ.version,
            "cell": meta["cell"],
            "hidden_size": meta["hidden_size"],
            "lookback": meta["lookback"],
            "horizon": meta["horizon"],
            "features": len(meta["feature_names"]),
        },
        "levels": list(levels),
        "max_requests": max_requests,
        "seconds_per_level": seconds,
        "rounds": rounds,
        "client": wrk_version() if client == "wrk" else f"httpx {httpx.__version__} (Python)",
        "servers": {},
    }
    split = C.split_cpus() if pin else None
    server_cpus, client_cpus = split if split else (None, None)
    out["cpus"] = {
        "server": sorted(server_cpus) if server_cpus else "all",
        "client": sorted(client_cpus) if client_cpus else "all",
    }
    script = work / "wrk_forecast.lua"
    script.write_text(WRK_LUA)
    procs, urls, bodies, files, answers = {}, {}, {}, {}, {}
    try:
        for server in SERVERS:  # both up (idle when not measured): rounds can alternate between them
            print(f"starting {server}…", file=sys.stderr)
            procs[server], urls[server] = start(server, champ, work, server_cpus)
            bodies[server] = payloads(server, windows, meta)
            files[server] = []
            for i, b in enumerate(bodies[server]):
                f = work / f"body_{server}_{i:02d}.json"
                f.write_bytes(b)
                files[server].append(f)
            r = httpx.post(
                urls[server],
                content=bodies[server][0],
                headers={"content-type": "application/json"},
                timeout=60,
                trust_env=False,
            )
            r.raise_for_status()
            answers[server] = forecast_of(server, r.json())
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)  # this process, and wrk after it

        def level(server: str, c: int, n: int, secs: float, pid: int | None) -> dict:
            if client == "wrk":
                return wrk_load(urls[server], files[server], c, n, secs, pid, script)
            return asyncio.run(httpx_load(urls[server], bodies[server], c, n, secs, pid))

        for server in SERVERS:  # warm-up: connections, caches, lazy imports
            level(server, 4, 10**6, 2.0, None)
        raw: dict[str, dict[int, list[dict]]] = {s: {c: [] for c in levels} for s in SERVERS}
        for c in levels:
            for k in range(rounds):
                for server in SERVERS if k % 2 == 0 else SERVERS[::-1]:
                    row = level(server, c, max_requests.get(c, 500 * c), seconds, procs[server].pid)
                    raw[server][c].append(row)
                    print(
                        f"  {server:6s} c={c:3d} round {k + 1}/{rounds}: {row['rps']:8.1f} req/s  p50 "
                        f"{row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  server cpu "
                        f"{C.fmt(row['server_cpu_ms_per_request'], 2)} ms/req, client "
                        f"{C.fmt(row['client_cpu_ms_per_request'], 2)}  ({row['requests']} ok, {row['errors']} errors)",
                        file=sys.stderr,
                    )
                    if row["first_error"]:
                        print(f"    first error: {row['first_error']}", file=sys.stderr)
        out["servers"] = {s: [median_row(raw[s][c]) for c in levels] for s in SERVERS}
        out["rounds_raw"] = raw
    finally:
        for proc in procs.values():
            C.stop_process(proc)
    a, b = answers["mlflow"], answers["rnnops"]
    out["same_forecast_max_abs_diff"] = float(np.abs(a - b).max()) if a.shape == b.shape else None
    by = {s: {r["concurrency"]: r for r in rows} for s, rows in out["servers"].items()}
    top = max(levels)
    m, o = by["mlflow"][top], by["rnnops"][top]
    out["goal"] = {
        "concurrency": top,
        "rps_ratio": o["rps"] / m["rps"] if m["rps"] else None,
        "p99_lower": o["p99_ms"] < m["p99_ms"],
        "met": bool(m["rps"] and o["rps"] / m["rps"] >= 5 and o["p99_ms"] < m["p99_ms"]),
    }
    return out


def busy(row: dict, key: str, cpus) -> float | None:
    """Share of its CPUs a side kept busy during a level: CPU ms per request x requests/s."""
    n = len(cpus) if isinstance(cpus, list) else C.cpus()
    ms = row.get(key)
    return None if ms is None else ms * row["rps"] / 1000 / n


def markdown(res: dict) -> str:
    m = res["model"]
    by = {s: {r["concurrency"]: r for r in rows} for s, rows in res["servers"].items()}
    cpus = res.get("cpus", {})
    rows, client_bound = [], []
    for c in res["levels"]:
        a, b = by["mlflow"][c], by["rnnops"][c]
        use = {}
        for name, r in (("mlflow", a), ("rnnops", b)):
            sv, cl = (
                busy(r, "server_cpu_ms_per_request", cpus.get("server")),
                busy(r, "client_cpu_ms_per_request", cpus.get("client")),
            )
            use[name] = (
                f"{C.fmt(100 * sv, 0) if sv is not None else '-'}% / {C.fmt(100 * cl, 0) if cl is not None else '-'}%"
            )
            if sv is not None and cl is not None and cl > 0.6 and sv < 0.7 and c == max(res["levels"]):
                client_bound.append(name)
        rows.append(
            [
                c,
                C.fmt(a["rps"]),
                C.fmt(b["rps"]),
                C.ratio(b["rps"], a["rps"]),
                f"{C.fmt(a['p50_ms'])} / {C.fmt(a['p99_ms'])}",
                f"{C.fmt(b['p50_ms'])} / {C.fmt(b['p99_ms'])}",
                f"{C.fmt(a['server_cpu_ms_per_request'], 2)} / {C.fmt(b['server_cpu_ms_per_request'], 2)}",
                use["mlflow"],
                use["rnnops"],
                f"{a['errors']} / {b['errors']}",
            ]
        )
    g = res["goal"]
    diff = res.get("same_forecast_max_abs_diff")
    rounds = res.get("rounds", 1)
    lines = [
        f"Model: `{m['name']}` v{m['version']} (GRU {m['hidden_size']} hidden, {m['features']} features, "
        f"lookback {m['lookback']}, horizon {m['horizon']}); one window per request; one server worker each; "
        f"client: {res.get('client', 'httpx').split(' Copyright')[0]}, at most {'/'.join(str(v) for v in res['max_requests'].values())} "
        f"requests (concurrency {'/'.join(str(k) for k in res['max_requests'])}) or {res['seconds_per_level']:.0f} s "
        f"per level and round; {rounds} round{'s' if rounds > 1 else ''} per level, the servers alternating"
        + (", medians shown" if rounds > 1 else "")
        + (" (--quick)" if res["quick"] else "")
        + "."
        + (
            f" Server pinned to CPUs {res['cpus']['server']}, client to {res['cpus']['client']}."
            if isinstance(res.get("cpus", {}).get("server"), list)
            else ""
        ),
        "",
        C.md_table(
            [
                "concurrency",
                "MLflow req/s",
                "rnnops req/s",
                "rnnops / MLflow",
                "MLflow p50 / p99 ms",
                "rnnops p50 / p99 ms",
                "server CPU ms/req (MLflow / rnnops)",
                "MLflow busy (server / client)",
                "rnnops busy (server / client)",
                "errors (MLflow / rnnops)",
            ],
            rows,
        ),
        "",
        "Server CPU per request is the CPU time of the server's processes divided by the requests answered: unlike "
        "requests/s it holds when other work shares the cores. Busy = CPU per request x requests/s, as a share of "
        "that side's CPUs (from /proc tick accounting: approximate, a VM can read a little above 100%). The client "
        "(same machine) used "
        + ", ".join(
            f"{C.fmt(by[s][max(res['levels'])]['client_cpu_ms_per_request'], 2)} ms" for s in ("mlflow", "rnnops")
        )
        + f" of CPU per request at concurrency {max(res['levels'])} (MLflow, rnnops runs).",
        "",
        f"Goal at concurrency {g['concurrency']}: rnnops >= 5x MLflow's requests/s with a lower p99: "
        f"**{C.ratio(g['rps_ratio'], 1) if g['rps_ratio'] else '-'}**, p99 {'lower' if g['p99_lower'] else 'NOT lower'} "
        f"-> **{'met' if g['met'] else 'not met'}**.",
    ]
    if diff is not None:
        lines[-1] += f" Both servers return the same forecast for the same window (max abs difference {diff:.2g})."
    top = max(res["levels"])
    over = busy(by["mlflow"][top], "server_cpu_ms_per_request", cpus.get("server"))
    if isinstance(cpus.get("server"), list) and over is not None and over > 1.1:
        lines += [
            "",
            f"MLflow's server kept {C.fmt(100 * over, 0)}% of its pinned CPU{'s' if len(cpus['server']) > 1 else ''} "
            "busy: its onnxruntime session keeps onnxruntime's default thread pool, whose threads set their own "
            "CPU affinity, so one of them ran on the client's CPU (seen in /proc/PID/task/*/status). Left as "
            "MLflow's default: it gives MLflow more CPU than rnnops, whose sessions set their thread count.",
        ]
    if rounds > 1:
        lines += [
            "",
            "Requests/s of each round at concurrency "
            + str(max(res["levels"]))
            + ": "
            + "; ".join(
                f"{s} {', '.join(C.fmt(v) for v in by[s][max(res['levels'])].get('rounds_rps', []))}" for s in by
            )
            + ".",
        ]
    if client_bound:
        lines += [
            "",
            f"**Client-bound at concurrency {max(res['levels'])}** ({', '.join(client_bound)} run): the load "
            "generator kept its CPUs busy while the server's were not, so requests/s there is the client's "
            "limit, not the server's; the server CPU per request is the comparison that holds. Install wrk "
            "(scripts/install_wrk.sh; ~0.1 ms of CPU per request against httpx's ~5-10) or use a machine with "
            "more cores (the client gets a quarter of them) for the requests/s goal.",
        ]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = res["levels"]
    by = {s: {r["concurrency"]: r for r in rows} for s, rows in res["servers"].items()}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(len(levels))
    for k, (server, color) in enumerate((("mlflow", "tab:gray"), ("rnnops", "tab:orange"))):
        ax1.bar(x + (k - 0.5) * 0.38, [by[server][c]["rps"] for c in levels], 0.38, label=server, color=color)
        ax2.bar(x + (k - 0.5) * 0.38, [by[server][c]["p99_ms"] for c in levels], 0.38, label=server, color=color)
    for ax, title in ((ax1, "requests/s (higher is better)"), (ax2, "p99 latency, ms (lower is better)")):
        ax.set_xticks(x, [f"c={c}" for c in levels])
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    ax2.set_yscale("log")
    fig.suptitle(
        f"Forecast over HTTP: same ONNX forecaster, same client ({res.get('client', 'httpx').split(' [')[0]})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests per level (a smoke run)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrency levels (default 1,16,64)")
    ap.add_argument(
        "--rounds", type=int, help="rounds per level, servers alternating; medians reported (default 3, 1 with --quick)"
    )
    ap.add_argument(
        "--client",
        choices=("auto", "wrk", "httpx"),
        default="auto",
        help="load generator (default: wrk when on PATH, else httpx; scripts/install_wrk.sh installs wrk)",
    )
    ap.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    ap.add_argument(
        "--no-pin",
        action="store_true",
        help="let server and client share all CPUs (default: the client "
        "gets a quarter of them, at least one, the server the rest)",
    )
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="rnnops-bench-http-"))
    res = run(
        args.quick,
        work,
        tuple(int(x) for x in args.levels.split(",")),
        pin=not args.no_pin,
        rounds=args.rounds,
        client=args.client,
    )
    print(markdown(res))
    C.write_json(args.json, res)


if __name__ == "__main__":
    main()
