"""Forecasts over HTTP: our ``/forecast`` vs a plain BentoML service with ``@bentoml.api(batchable=True)``.

The same ONNX forecaster file (``forecaster@champion``, made by the project's pipeline in a
throwaway MLflow store as ``forecast_http.py`` makes it: ETTh1's 7 features, lookback 96,
horizon 96, GRU 1x64) is served by

- **rnnops**: ``rnnops serve --models forecaster@champion`` (``forecast_http.start``: BentoML +
  onnxruntime, one worker, our forecast batcher);
- **BentoML adaptive batching**: ``bentoml serve bentoml_peer_service:Forecaster`` (the file
  beside this one), what a BentoML user writes after BentoML's "Adaptive batching" guide
  (docs.bentoml.com/en/latest/get-started/adaptive-batching.html): one worker, an ORT session in
  ``__init__``, ``@bentoml.api(batchable=True, batch_dim=0, max_batch_size=256,
  max_latency_ms=1000)`` on ``forecast(contexts: np.ndarray) -> np.ndarray``. It runs from its
  own virtualenv (``~/.cache/rnnops/peers/bentoml-venv``: BentoML, onnxruntime and numpy at the
  versions our service runs, their dependencies held at ``constraints.txt``'s versions), so
  what differs is only the serving code, and nothing of rnnops is importable there.

Both take the same request bytes, ``{"contexts": [window]}`` (one 96x7 window of real rows) on
``POST /forecast``, run the same ONNX file with the same onnxruntime intra-op thread count
(``ServeConfig.ort_threads`` for one worker on the server's CPUs), pinned to the same CPUs (three
quarters, at least one; the load generator gets the rest). Before the load both answer the same
window and their forecasts are compared. The load generator is ``wrk`` with
``forecast_http.py``'s Lua script (closed loop, 32 pre-encoded bodies); one server under load at
a time, the order alternating over rounds; medians of the rounds: requests/s, p50/p99 latency,
server CPU per request. Concurrency 1, 16, 64.

Goal (issue 15): at concurrency 64, rnnops >= 2x BentoML's requests/s with a lower p99.

    python benchmarks/peers/bentoml_batching.py --quick --json out.json   # smoke: c=64, 5 s, 1 round
    python benchmarks/peers/bentoml_batching.py --json bentoml_batching.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common as C  # noqa: E402
import forecast_http as FH  # noqa: E402
import peerlib as P  # noqa: E402  (puts benchmarks/ on sys.path)

NAMES = ("rnnops", "bentoml-batching")
# the BentoML our service runs, in a virtualenv of its own (the rule for every peer)
BENTOML_PINS = [f"bentoml=={version('bentoml')}", f"onnxruntime=={P.ORT}", f"numpy=={P.NUMPY}"]


def start_peer(py: Path, champ: C.Champion, work: Path, threads: int, cpus: set[int] | None):
    port = C.free_port()
    log = work / "bentoml-batching.log"
    env = {
        "PATH": f"{py.parent}:/usr/bin:/bin",
        "HOME": str(Path.home()),
        "PEER_ONNX": str(champ.onnx),
        "PEER_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
        "BENTOML_HOME": str(work / "bentoml-peer"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    argv = [
        str(py),
        "-m",
        "bentoml",
        "serve",
        "bentoml_peer_service:Forecaster",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = C.start_process(argv, env, log, cwd=HERE, cpus_allowed=cpus)
    C.wait_http(f"http://127.0.0.1:{port}/readyz", proc, log, timeout=240)
    return proc, f"http://127.0.0.1:{port}/forecast"


def answer(name: str, body: dict) -> np.ndarray:
    if name == "rnnops":
        return np.asarray(body["forecasts"][0], np.float32).reshape(-1)
    return np.asarray(body, np.float32).reshape(-1)


def run(quick: bool, work: Path, levels, rounds: int, seconds: float, pin: bool, threads: int | None) -> dict:
    import httpx

    py = P.ensure_venv("bentoml", BENTOML_PINS, constraints=C.REPO / "constraints.txt")
    server_cpus, client_cpus = P.cpu_split(pin)
    threads = threads or P.server_threads(server_cpus)
    print("building forecaster@champion (train -> export -> register -> promote)…", file=sys.stderr)
    champ = C.champion_forecaster(work / "registry")
    champ.env["RNNOPS_THREADS"] = str(threads)
    meta = champ.metadata
    bodies = [json.dumps({"contexts": [w.tolist()]}).encode() for w in FH.windows_pool(meta)]
    files = P.write_bodies(work, "contexts", bodies)
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
            "onnx": str(champ.onnx),
        },
        "levels": list(levels),
        "rounds": rounds,
        "seconds_per_level": seconds,
        "ort_threads": threads,
        "client": FH.wrk_version(),
        "cpus": {
            "server": sorted(server_cpus) if server_cpus else "all",
            "client": sorted(client_cpus) if client_cpus else "all",
        },
        "peer": {
            "decorator": "@bentoml.api(batchable=True, batch_dim=0, max_batch_size=256, max_latency_ms=1000)",
            "workers": 1,
            "versions": P.venv_versions(py, ["bentoml", "onnxruntime", "numpy", "starlette", "uvicorn"]),
        },
        "machine": C.machine(),
    }
    procs, urls, answers = {}, {}, {}
    try:
        for name in NAMES:
            print(f"starting {name}…", file=sys.stderr, flush=True)
            if name == "rnnops":
                procs[name], urls[name] = FH.start("rnnops", champ, work, server_cpus)
            else:
                procs[name], urls[name] = start_peer(py, champ, work, threads, server_cpus)
            r = httpx.post(
                urls[name], content=bodies[0], headers={"content-type": "application/json"}, timeout=60, trust_env=False
            )
            r.raise_for_status()
            answers[name] = answer(name, r.json())
        out["same_forecast_max_abs_diff"] = float(np.abs(answers[NAMES[0]] - answers[NAMES[1]]).max())
        out["affinity"] = {n: P.tree_affinity(procs[n].pid) for n in NAMES}
        targets = {n: (urls[n], procs[n].pid, files) for n in NAMES}
        out["servers"], out["rounds_raw"] = P.wrk_compare(targets, levels, rounds, seconds, work, client_cpus)
        out["rss_mb"] = {n: round(C.tree_rss_mb(procs[n].pid), 1) for n in NAMES}
    finally:
        for proc in procs.values():
            C.stop_process(proc)
    by = {s: {r["concurrency"]: r for r in rows} for s, rows in out["servers"].items()}
    out["goal"] = P.goal(by["rnnops"], by["bentoml-batching"], 64, 2.0)
    return out


def markdown(res: dict) -> str:
    m = res["model"]
    by = {s: {r["concurrency"]: r for r in rows} for s, rows in res["servers"].items()}
    return "\n".join(
        [
            f"Model: `{m['name']}` v{m['version']} ({m['cell'].upper()} {m['hidden_size']} hidden, {m['features']} "
            f"features, lookback {m['lookback']}, horizon {m['horizon']}), the same ONNX file in both; one window per "
            f'request, the same bytes (`{{"contexts": [window]}}` on /forecast); {res["ort_threads"]} ORT thread(s) '
            f"and one worker each; server CPUs {res['cpus']['server']}, client CPUs {res['cpus']['client']}; "
            f"{(res.get('client') or 'wrk').split(' Copyright')[0]}; {res['seconds_per_level']:.0f} s per level and round, "
            f"{res['rounds']} round(s), medians" + (" (--quick)" if res["quick"] else "") + ". Peer: "
            f"`{res['peer']['decorator']}`. Same forecast from both: max abs difference "
            f"{res['same_forecast_max_abs_diff']:.2g}.",
            "",
            P.side_by_side(
                "concurrency", res["levels"], by["rnnops"], by["bentoml-batching"], P.REQ_METRICS, "BentoML"
            ),
            "",
            "x: how many times better rnnops is (rnnops/BentoML for req/s, BentoML/rnnops for the rest). RSS after the "
            "load: " + ", ".join(f"{k} {v:.0f} MB" for k, v in res["rss_mb"].items()) + ".",
            "",
            P.rounds_note(res, {"rnnops": "rnnops", "bentoml-batching": "BentoML"}),
            "",
            P.goal_line(res["goal"], 2.0, "BentoML adaptive batching"),
        ]
    )


def plot(res: dict, path: Path) -> Path:
    return P.plot_requests(
        res,
        path,
        "bentoml-batching",
        "BentoML @bentoml.api(batchable=True)",
        "Forecast over HTTP: rnnops /forecast vs BentoML adaptive batching (same ONNX file, same bytes, wrk)",
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: concurrency 64, 5 s, one round")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    ap.add_argument("--levels", help="concurrency levels (default 1,16,64; --quick: 64)")
    ap.add_argument("--rounds", type=int, help="rounds per level, servers alternating (default 3; --quick: 1)")
    ap.add_argument("--seconds", type=float, help="seconds per level and round (default 15; --quick: 5)")
    ap.add_argument("--threads", type=int, help="ORT intra-op threads for both (default: what our service picks)")
    ap.add_argument("--no-pin", action="store_true", help="servers and client share all CPUs")
    ap.add_argument("--work", type=Path, help="working folder (default: a new temporary one; reuses a champion in it)")
    a = ap.parse_args(argv)
    levels = tuple(int(x) for x in (a.levels or ("64" if a.quick else "1,16,64")).split(","))
    work = a.work or Path(tempfile.mkdtemp(prefix="rnnops-bench-bentoml-"))
    work.mkdir(parents=True, exist_ok=True)
    res = run(
        a.quick,
        work,
        levels,
        a.rounds or (1 if a.quick else 3),
        a.seconds or (5.0 if a.quick else 15.0),
        not a.no_pin,
        a.threads,
    )
    print(markdown(res))
    C.write_json(a.json, res)


if __name__ == "__main__":
    main()
