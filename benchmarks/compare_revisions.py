"""Before/after: this checkout's service against another checkout's, same models, same load.

For a change that must not cost speed (a restructure, a refactor), both services run side by
side in one run, and the rounds alternate between them so that a neighbour's load falls on
both alike:

- **streaming**: ``/generate`` at ``--streams`` concurrent SSE streams (the streaming
  benchmark's client and random-weight char LSTM, 400 characters per request): chars/s, time to
  first chunk p99, server CPU per 1k characters;
- **forecast**: ``/forecast`` with ``wrk`` at ``--concurrency`` (the HTTP benchmark's champion
  forecaster, ETTh1 windows, server and client pinned to their own CPUs): requests/s, p99,
  server CPU per request;
- **sessions**: ``--concurrency`` forecast sessions updated one observation per request, over
  ``/sessions`` and as OIP sequences (the protocols benchmark's client and stateful forecaster):
  updates/s, server CPU per update.

The other checkout is named by a Python whose environment has it installed, e.g. a copy of the
venv with ``pip install --no-deps -e ../baseline`` in it::

    git worktree add ../baseline <rev>
    cp -a .venv /tmp/basevenv && sed -i "s#$PWD/.venv#/tmp/basevenv#" /tmp/basevenv/bin/*
    /tmp/basevenv/bin/python -m pip install --no-deps --no-build-isolation -e ../baseline
    python benchmarks/compare_revisions.py --baseline-python /tmp/basevenv/bin/python --rounds 3

It prints medians over the rounds with their spread (min-max) and the ratio after / before.
Loopback only; every level is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import forecast_http as FH  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
import protocols as PR  # noqa: E402
import streaming as ST  # noqa: E402


def _version_of(python: str) -> str:
    code = "import rnnops, pathlib; print(pathlib.Path(rnnops.__file__).resolve().parents[1])"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


# Run everything from a scratch folder: a checkout's own ``rnnops/`` folder in the working
# directory would shadow the installed package of the other Python.


def _spread(xs: list[float]) -> str:
    return f"{C.fmt(C.median(xs))} ({C.fmt(min(xs))}-{C.fmt(max(xs))})"


def streaming(pythons: dict[str, str], work: Path, rounds: int, streams: int, seconds: float) -> dict:
    onnx = ST.build_model(work / "char.onnx", 512, 1, "lstm")
    from rnnops.serving.config import ServeConfig

    threads = ServeConfig().ort_threads
    servers = {
        name: ST.start_server(onnx, "batched", threads, 256, work / f"stream-{name}.log", python=py)
        for name, py in pythons.items()
    }
    raw: dict[str, list[dict]] = {name: [] for name in pythons}
    try:
        for proc, port in servers.values():  # warm-up
            asyncio.run(ST.run_level(port, 8, 50, 1, 10, proc.pid))
        order = list(pythons)
        for k in range(rounds):
            for name in order if k % 2 == 0 else order[::-1]:
                proc, port = servers[name]
                row = asyncio.run(ST.run_level(port, streams, 400, 2, seconds, proc.pid))
                raw[name].append(row)
                print(
                    f"  streaming {name:6s} round {k + 1}/{rounds}: {row['chars_per_s']:9.1f} chars/s  TTFC p99 "
                    f"{row['ttfc_ms_p99']} ms  server CPU {row['server_cpu_ms_per_1k_chars']} ms/1k chars "
                    f"({row['errors']} errors)",
                    file=sys.stderr,
                )
    finally:
        for proc, _ in servers.values():
            ST.stop_server(proc)
    return raw


def forecast(pythons: dict[str, str], work: Path, rounds: int, concurrency: int, seconds: float) -> dict:
    if not shutil.which("wrk"):
        raise SystemExit("error: no `wrk` on PATH; install it with scripts/install_wrk.sh")
    champ = C.champion_forecaster(work / "registry")
    windows = FH.windows_pool(champ.metadata)
    files = []
    for i, b in enumerate(FH.payloads("rnnops", windows, champ.metadata)):
        f = work / f"body_{i:02d}.json"
        f.write_bytes(b)
        files.append(f)
    script = work / "wrk_forecast.lua"
    script.write_text(FH.WRK_LUA)
    split = C.split_cpus()
    server_cpus, client_cpus = split if split else (None, None)
    procs, urls = {}, {}
    raw: dict[str, list[dict]] = {name: [] for name in pythons}
    try:
        for name, py in pythons.items():
            procs[name], urls[name] = FH.start("rnnops", champ, work, server_cpus, python=py)
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        for name in pythons:  # warm-up
            FH.wrk_load(urls[name], files, 4, 10**6, 2.0, None, script)
        order = list(pythons)
        for k in range(rounds):
            for name in order if k % 2 == 0 else order[::-1]:
                row = FH.wrk_load(urls[name], files, concurrency, 10**6, seconds, procs[name].pid, script)
                raw[name].append(row)
                print(
                    f"  forecast  {name:6s} round {k + 1}/{rounds}: {row['rps']:8.1f} req/s  p99 {row['p99_ms']:7.1f} ms  "
                    f"server CPU {C.fmt(row['server_cpu_ms_per_request'], 3)} ms/req ({row['errors']} errors)",
                    file=sys.stderr,
                )
    finally:
        for proc in procs.values():
            C.stop_process(proc)
    return raw


# wrk's side for /sessions: the forecast script with one request per session (their paths differ)
SESSIONS_LUA = FH.WRK_LUA.replace(
    """  reqs = {}
  for k = 2, #args do
    local f = assert(io.open(args[k], "rb"))
    reqs[#reqs + 1] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, f:read("*a"))
    f:close()
  end""",
    """  reqs = {}
  local f = assert(io.open(args[2], "rb"))
  local body = f:read("*a")
  f:close()
  for k = 3, #args do
    reqs[#reqs + 1] = wrk.format("POST", "/sessions/" .. args[k], {["Content-Type"] = "application/json"}, body)
  end""",
)


def sessions(pythons: dict[str, str], work: Path, rounds: int, concurrency: int, seconds: float) -> dict:
    """``concurrency`` forecast sessions, each updated with one observation per request, over
    ``/sessions`` and as OIP sequences (the protocols benchmark's stateful GRU 1x64 forecaster, 7
    features, the protocols benchmark's client; ``/sessions`` with ``wrk`` too when it is there,
    a client that costs the shared CPUs less): updates/s and server CPU per update."""
    import urllib.request

    assert SESSIONS_LUA != FH.WRK_LUA, "forecast_http.WRK_LUA changed: update SESSIONS_LUA"
    script = work / "wrk_sessions.lua"
    script.write_text(SESSIONS_LUA)
    one_obs = work / "one_observation.json"

    fc = PR.build_forecaster(work / "fc.onnx")
    obs = np.random.default_rng(0).normal(size=(concurrency, 1, PR.FEATURES)).round(4).astype(np.float32)
    updates = [orjson.dumps({"observations": o.tolist()}) for o in obs]
    one_obs.write_bytes(updates[0])
    servers, ids = {}, {}
    wrk = shutil.which("wrk") is not None
    modes = ["sessions", "oip_sequences", *(["sessions_wrk"] if wrk else [])]
    raw: dict[str, dict[str, list[dict]]] = {name: {mode: [] for mode in modes} for name in pythons}
    try:
        for name, py in pythons.items():
            proc, port = servers[name] = ST.start_server(
                fc, "batched", 0, 256, work / f"sessions-{name}.log", python=py
            )
            ids[name] = []
            for i in range(concurrency):  # open the sessions and the sequences
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/sessions",
                    data=b"{}",
                    method="POST",
                    headers={"Content-Type": "application/json"},
                )
                ids[name].append(json.loads(urllib.request.urlopen(req, timeout=30).read())["session_id"])
                body, hdr = PR.oip_binary(obs[i][None], {"sequence_id": i + 1, "sequence_start": True})
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v2/models/bench/infer",
                    data=body,
                    method="POST",
                    headers={"Inference-Header-Content-Length": hdr.split(b": ")[1].strip().decode()},
                )
                urllib.request.urlopen(req, timeout=30).read()
        clients = {
            "sessions": lambda name: lambda i, k: (f"/sessions/{ids[name][i]}", updates[i]),
            "oip_sequences": lambda name: (
                lambda i, k: ("/v2/models/bench/infer", *PR.oip_binary(obs[i][None], {"sequence_id": i + 1}))
            ),
        }
        order = list(pythons)
        for k in range(rounds):
            for name in order if k % 2 == 0 else order[::-1]:
                proc, port = servers[name]
                for mode in modes:
                    if mode == "sessions_wrk":
                        w = FH.wrk_load(
                            f"http://127.0.0.1:{port}",
                            [one_obs, *ids[name]],
                            concurrency,
                            10**6,
                            seconds,
                            proc.pid,
                            script,
                        )
                        row = {"requests_per_s": w["rps"], "cpu_ms_per_request": w["server_cpu_ms_per_request"]}
                        if w["errors"]:
                            print(f"  {w['errors']} errors, first: {w['first_error']}", file=sys.stderr)
                    else:
                        row = asyncio.run(PR.requests(port, concurrency, seconds, proc.pid, clients[mode](name)))
                    raw[name][mode].append(row)
                    print(
                        f"  {mode:13s} {name:6s} round {k + 1}/{rounds}: {row['requests_per_s']:8.1f} updates/s  "
                        f"server CPU {row['cpu_ms_per_request']:.3f} ms/update",
                        file=sys.stderr,
                    )
    finally:
        for proc, _ in servers.values():
            ST.stop_server(proc)
    return raw


def report(raw_s: dict, raw_f: dict, streams: int, concurrency: int, raw_q: dict | None = None) -> str:
    lines = []
    if raw_s:
        rows = [
            [
                name,
                _spread([r["chars_per_s"] for r in rs]),
                _spread([r["ttfc_ms_p99"] for r in rs]),
                _spread([r["server_cpu_ms_per_1k_chars"] for r in rs]),
            ]
            for name, rs in raw_s.items()
        ]
        lines += [
            f"streaming, {streams} streams, 400 chars/request (median (min-max) over rounds):",
            C.md_table(["tree", "chars/s", "TTFC p99 ms", "server CPU ms / 1k chars"], rows, "lrrr"),
        ]
    if raw_f:
        rows = [
            [
                name,
                _spread([r["rps"] for r in rs]),
                _spread([r["p99_ms"] for r in rs]),
                _spread([1e3 * r["server_cpu_ms_per_request"] for r in rs]),
            ]
            for name, rs in raw_f.items()
        ]
        lines += [
            "",
            f"/forecast, wrk at concurrency {concurrency} (median (min-max) over rounds):",
            C.md_table(["tree", "requests/s", "p99 ms", "server CPU µs / request"], rows, "lrrr"),
        ]
    if raw_s and len(raw_s) == 2:
        a, b = (C.median([r["chars_per_s"] for r in rs]) for rs in raw_s.values())
        lines.append(f"\nstreaming after / before: {b / a:.3f}x chars/s" if a else "")
    if raw_f and len(raw_f) == 2:
        a, b = (C.median([r["rps"] for r in rs]) for rs in raw_f.values())
        lines.append(f"forecast after / before: {b / a:.3f}x requests/s" if a else "")
    for mode in next(iter(raw_q.values())) if raw_q else ():
        rows = [
            [
                name,
                _spread([r["requests_per_s"] for r in rs[mode]]),
                _spread([r["cpu_ms_per_request"] for r in rs[mode]]),
            ]
            for name, rs in raw_q.items()
        ]
        lines += [
            "",
            f"{mode}, {concurrency} sessions, one observation per request (median (min-max) over rounds):",
            C.md_table(["tree", "updates/s", "server CPU ms / update"], rows, "lrr"),
        ]
        if len(raw_q) == 2:
            a, b = (C.median([r["requests_per_s"] for r in rs[mode]]) for rs in raw_q.values())
            lines.append(f"{mode} after / before: {b / a:.3f}x updates/s" if a else "")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-python", required=True, help="a Python whose environment has the other checkout")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument(
        "--seconds", type=float, default=15.0, help="per forecast round (streaming rounds: 4x this at most)"
    )
    ap.add_argument("--only", choices=("streaming", "forecast", "sessions"), help="run one of the three")
    ap.add_argument("--json", type=Path, help="write the raw rounds as JSON")
    args = ap.parse_args(argv)
    pythons = {"before": args.baseline_python, "after": sys.executable}
    work = Path(tempfile.mkdtemp(prefix="rnnops-compare-"))
    os.chdir(work)
    machine = C.machine()  # before the forecast section pins this process to the client's CPUs
    trees = {name: _version_of(py) for name, py in pythons.items()}
    if len(set(trees.values())) < 2:
        raise SystemExit(
            f"error: both Pythons import rnnops from {trees['after']}; point --baseline-python at "
            "an environment with the other checkout installed"
        )
    print(f"before: {trees['before']}\nafter:  {trees['after']}", file=sys.stderr)
    run = lambda part: args.only in (None, part)  # noqa: E731
    raw_s = streaming(pythons, work, args.rounds, args.streams, 4 * args.seconds) if run("streaming") else {}
    raw_f = forecast(pythons, work, args.rounds, args.concurrency, args.seconds) if run("forecast") else {}
    raw_q = sessions(pythons, work, args.rounds, args.concurrency, args.seconds) if run("sessions") else {}
    print(C.machine_markdown(machine))
    print(report(raw_s, raw_f, args.streams, args.concurrency, raw_q))
    if args.json:
        args.json.write_text(
            json.dumps({"trees": trees, "streaming": raw_s, "forecast": raw_f, "sessions": raw_q}, indent=1)
        )


if __name__ == "__main__":
    main()
