"""Open Inference Protocol: our ``/v2/models/{name}/infer`` vs MLServer's, same bodies, same client, same model file.

The fairest comparison the suite has: both servers speak the same protocol (OIP, the KServe v2 /
Triton HTTP API), take the same request bytes from the same load generator and run the same ONNX
file (``forecaster@champion``, made by the project's pipeline in a throwaway MLflow store as
``forecast_http.py`` makes it: ETTh1's 7 features, lookback 96, horizon 96, GRU 1x64).

- **rnnops**: ``rnnops serve --models forecaster@champion`` (``forecast_http.start``: BentoML +
  onnxruntime, one worker); an OIP request for a forecaster goes through the same
  ``ForecastBatcher`` as ``/forecast``.
- **MLServer** 1.7.1 (its own virtualenv, ``~/.cache/rnnops/peers/mlserver-venv``: MLServer 1.7
  wants a FastAPI older than our pins), ``mlserver start <repository>`` with the files this
  script writes into its working folder:

  - ``settings.json``: loopback host, free HTTP/gRPC/metrics ports, everything else MLServer's
    default, including ``parallel_workers: 1`` (one inference worker process; docs.seldon.ai/
    mlserver/user-guide/parallel-inference): one worker, as ours (``--parallel-workers 0`` runs
    inference in the HTTP process instead, MLServer's other mode);
  - ``forecaster/model-settings.json``: ``implementation: mlserver_runtime.OnnxForecaster``
    (``mlserver_runtime.py`` beside this file, copied next to it: a custom runtime, the
    docstring there says why not ``mlserver-mlflow``), ``parameters.uri`` = the champion's ONNX
    file, ``parameters.extra.threads`` = the intra-op threads our service uses, and adaptive
    batching on (docs.seldon.ai/mlserver/user-guide/adaptive-batching): ``max_batch_size`` 64
    (the top concurrency level: a full batch can form there) and ``max_batch_time`` 0.01 s.
    The guide gives no numbers ("usually found through experimentation"); these are the
    values a user who read it would try first for a model that runs in about a millisecond,
    and ``--max-batch-size`` / ``--max-batch-time`` change them.

The request is OIP JSON, one window per request: ``{"inputs": [{"name": "x", "shape": [1, 96, 7],
"datatype": "FP32", "data": [...672 values...]}]}`` on ``POST /v2/models/forecaster/infer``;
both answer ``outputs[0]`` = ``forecast`` FP32 ``[1, 96, 7]``. Before the load both answer the
same window and their forecasts are compared. Both run the same onnxruntime version with the
same intra-op thread count (``ServeConfig.ort_threads`` for one worker on the server's CPUs),
pinned to the same CPUs (three quarters, at least one; ``wrk`` gets the rest); one server
under load at a time, the order alternating over rounds (``peerlib.wrk_compare``); medians of
the rounds: inferences/s, p50/p99 latency, server CPU per request (also split by process:
MLServer's HTTP process against its inference worker).

Goal (issue 15): at concurrency 64, rnnops >= 2x MLServer's inferences/s with a lower p99.

    python benchmarks/peers/mlserver_oip.py --quick --json out.json   # smoke: c=64, 5 s, 1 round
    python benchmarks/peers/mlserver_oip.py --json mlserver_oip.json  # c=1,16,64, 15 s, 3 rounds
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common as C  # noqa: E402
import forecast_http as FH  # noqa: E402
import peerlib as P  # noqa: E402  (puts benchmarks/ on sys.path)

# MLServer pins FastAPI below 0.116 (ours is newer): its own virtualenv, with the resolved
# FastAPI pinned too so that the environment does not drift between runs. uvloop 0.22+ raises
# from ``asyncio.get_event_loop()`` without a running loop, which MLServer 1.7.1's inference
# worker calls as it starts (mlserver/parallel/worker.py, ``_ignore_signals``): the worker dies
# and the model never loads; 0.21 is the uvloop MLServer 1.7 was released with.
MLSERVER_PINS = ["mlserver==1.7.1", "fastapi==0.115.14", "uvloop==0.21.0", f"onnxruntime=={P.ORT}", f"numpy=={P.NUMPY}"]
NAMES = ("rnnops", "mlserver")
MODEL = "forecaster"  # the name both serve it under: the same URL path on both


def oip_body(window: np.ndarray) -> bytes:
    x = np.asarray(window, np.float32)[None]
    return json.dumps(
        {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    ).encode()


def write_repository(
    repo: Path, onnx: Path, threads: int, max_batch_size: int, max_batch_time: float, parallel_workers: int = 1
) -> dict:
    """MLServer's model repository: settings.json at the root, one folder per model."""
    model_dir = repo / MODEL
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "mlserver_runtime.py", model_dir / "mlserver_runtime.py")  # on sys.path for its model
    settings = {
        "host": "127.0.0.1",
        "http_port": C.free_port(),
        "grpc_port": C.free_port(),
        "metrics_port": C.free_port(),
        "parallel_workers": parallel_workers,
    }
    model_settings = {
        "name": MODEL,
        "implementation": "mlserver_runtime.OnnxForecaster",
        "max_batch_size": max_batch_size,
        "max_batch_time": max_batch_time,
        "parameters": {"uri": str(onnx), "extra": {"threads": threads}},
    }
    (repo / "settings.json").write_text(json.dumps(settings, indent=1))
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=1))
    return {"settings": settings, "model_settings": model_settings}


def start_mlserver(py: Path, repo: Path, port: int, work: Path, cpus: set[int] | None):
    log = work / "mlserver.log"
    env = {"PATH": f"{py.parent}:/usr/bin:/bin", "HOME": str(Path.home()), "PYTHONUNBUFFERED": "1"}
    # cwd: MLServer keeps its metrics and environments folders (.metrics, .envs) in it
    proc = C.start_process([str(py.parent / "mlserver"), "start", str(repo)], env, log, cwd=work, cpus_allowed=cpus)
    base = f"http://127.0.0.1:{port}"
    try:
        C.wait_http(f"{base}/v2/models/{MODEL}/ready", proc, log, timeout=240)
    except BaseException:
        C.stop_process(proc)
        raise
    return proc, f"{base}/v2/models/{MODEL}/infer"


def forecast_of(body: dict) -> np.ndarray:
    out = next(o for o in body["outputs"] if o["name"] == "forecast")
    return np.asarray(out["data"], np.float32).reshape(-1)


def run(
    quick: bool,
    work: Path,
    levels,
    rounds: int,
    seconds: float,
    pin: bool,
    threads: int | None,
    max_batch_size: int,
    max_batch_time: float,
    parallel_workers: int = 1,
) -> dict:
    import httpx

    py = P.ensure_venv("mlserver", MLSERVER_PINS)
    server_cpus, client_cpus = P.cpu_split(pin)
    threads = threads or P.server_threads(server_cpus)
    print("building forecaster@champion (train -> export -> register -> promote)…", file=sys.stderr)
    champ = C.champion_forecaster(work / "registry")
    champ.env["RNNOPS_THREADS"] = str(threads)
    meta = champ.metadata
    bodies = [oip_body(w) for w in FH.windows_pool(meta)]
    files = P.write_bodies(work, "oip", bodies)
    repo_cfg = write_repository(
        work / "mlserver-repo", champ.onnx, threads, max_batch_size, max_batch_time, parallel_workers
    )
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
            **repo_cfg,
            "versions": P.venv_versions(py, ["mlserver", "fastapi", "uvicorn", "onnxruntime", "numpy"]),
        },
        "machine": C.machine(),
    }
    procs, urls, answers = {}, {}, {}
    try:
        for name in NAMES:
            print(f"starting {name}…", file=sys.stderr, flush=True)
            if name == "rnnops":
                procs[name], forecast_url = FH.start("rnnops", champ, work, server_cpus)
                urls[name] = forecast_url.replace("/forecast", f"/v2/models/{MODEL}/infer")
            else:
                procs[name], urls[name] = start_mlserver(
                    py, work / "mlserver-repo", repo_cfg["settings"]["http_port"], work, server_cpus
                )
            r = httpx.post(
                urls[name], content=bodies[0], headers={"content-type": "application/json"}, timeout=60, trust_env=False
            )
            r.raise_for_status()
            answers[name] = forecast_of(r.json())
        out["same_forecast_max_abs_diff"] = float(np.abs(answers[NAMES[0]] - answers[NAMES[1]]).max())
        if out["same_forecast_max_abs_diff"] > 1e-3:
            raise RuntimeError(f"the servers disagree on the same window: {out['same_forecast_max_abs_diff']}")
        out["affinity"] = {n: P.tree_affinity(procs[n].pid) for n in NAMES}
        targets = {n: (urls[n], procs[n].pid, files) for n in NAMES}
        out["servers"], out["rounds_raw"] = P.wrk_compare(targets, levels, rounds, seconds, work, client_cpus)
        out["rss_mb"] = {n: round(C.tree_rss_mb(procs[n].pid), 1) for n in NAMES}
        out["processes"] = {n: P.process_names(procs[n].pid) for n in NAMES}
    finally:
        for proc in procs.values():
            C.stop_process(proc)
    by = {s: {r["concurrency"]: r for r in rows} for s, rows in out["servers"].items()}
    out["goal"] = P.goal(by["rnnops"], by["mlserver"], 64, 2.0)
    return out


def markdown(res: dict) -> str:
    m = res["model"]
    ms = res["peer"]["model_settings"]
    by = {s: {r["concurrency"]: r for r in rows} for s, rows in res["servers"].items()}
    v = res["peer"]["versions"]
    return "\n".join(
        [
            f"Model: `{m['name']}` v{m['version']} ({m['cell'].upper()} {m['hidden_size']} hidden, {m['features']} "
            f"features, lookback {m['lookback']}, horizon {m['horizon']}), the same ONNX file in both; the same OIP JSON "
            f"bodies (one window, `x` FP32 [1, {m['lookback']}, {m['features']}]) on `/v2/models/{MODEL}/infer`; "
            f"{res['ort_threads']} ORT thread(s) and one inference worker each; server CPUs {res['cpus']['server']}, "
            f"client CPUs {res['cpus']['client']}; {(res.get('client') or 'wrk').split(' Copyright')[0]}; "
            f"{res['seconds_per_level']:.0f} s per level and round, {res['rounds']} round(s), medians"
            + (" (--quick)" if res["quick"] else "")
            + f". MLServer {v.get('mlserver')} (FastAPI {v.get('fastapi')}), a "
            f"custom runtime, adaptive batching `max_batch_size={ms['max_batch_size']}`, `max_batch_time="
            f"{ms['max_batch_time']}`, `parallel_workers={res['peer']['settings']['parallel_workers']}`. Same forecast "
            f"from both: max abs difference {res['same_forecast_max_abs_diff']:.2g}.",
            "",
            P.side_by_side("concurrency", res["levels"], by["rnnops"], by["mlserver"], P.REQ_METRICS, "MLServer"),
            "",
            "x: how many times better rnnops is (rnnops/MLServer for req/s, MLServer/rnnops for the rest). RSS after the "
            "load: "
            + ", ".join(f"{k} {val:.0f} MB" for k, val in res["rss_mb"].items())
            + "; processes: "
            + "; ".join(
                f"{k}: " + ", ".join(f"{p} x{c}" if c > 1 else p for p, c in sorted(procs.items()))
                for k, procs in res.get("processes", {}).items()
            )
            + ".",
            "",
            P.rounds_note(res, {"rnnops": "rnnops", "mlserver": "MLServer"}),
            "",
            by_process_note(res),
            "",
            P.goal_line(res["goal"], 2.0, "MLServer", "inferences/s"),
        ]
    )


def by_process_note(res: dict) -> str:
    """Server CPU per request split by process at the top level (first round): MLServer's HTTP
    process (``mlserver``: FastAPI, the adaptive batcher) against its inference worker."""
    top = str(max(res["levels"]))
    parts = []
    for name, label in (("rnnops", "rnnops"), ("mlserver", "MLServer")):
        rounds = res.get("rounds_raw", {}).get(name, {}).get(top) or res.get("rounds_raw", {}).get(name, {}).get(
            int(top)
        )
        split = (rounds or [{}])[0].get("cpu_ms_per_request_by_process")
        if split:
            parts.append(
                f"{label}: " + ", ".join(f"{p} {ms:.2f}" for p, ms in sorted(split.items(), key=lambda kv: -kv[1]))
            )
    return (
        (
            f"Server CPU ms per request by process at concurrency {top} (first round; `python` is MLServer's inference "
            "worker, or BentoML's worker for rnnops): " + "; ".join(parts) + "."
        )
        if parts
        else ""
    )


def plot(res: dict, path: Path) -> Path:
    return P.plot_requests(
        res,
        path,
        "mlserver",
        "MLServer (adaptive batching)",
        "Open Inference Protocol: rnnops vs MLServer (same OIP bodies, same ONNX file, wrk)",
        unit="inferences/s",
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: concurrency 64, 5 s, one round")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    ap.add_argument("--levels", help="concurrency levels (default 1,16,64; --quick: 64)")
    ap.add_argument("--rounds", type=int, help="rounds per level, servers alternating (default 3; --quick: 1)")
    ap.add_argument("--seconds", type=float, help="seconds per level and round (default 15; --quick: 5)")
    ap.add_argument("--threads", type=int, help="ORT intra-op threads for both (default: what our service picks)")
    ap.add_argument("--max-batch-size", type=int, default=64, help="MLServer's max_batch_size (default 64)")
    ap.add_argument("--max-batch-time", type=float, default=0.01, help="MLServer's max_batch_time, s (default 0.01)")
    ap.add_argument(
        "--parallel-workers",
        type=int,
        default=1,
        help="MLServer's parallel_workers (default 1, its "
        "default: one inference worker process; 0 runs inference in the HTTP process)",
    )
    ap.add_argument("--no-pin", action="store_true", help="servers and client share all CPUs")
    ap.add_argument("--work", type=Path, help="working folder (default: a new temporary one; reuses a champion in it)")
    a = ap.parse_args(argv)
    levels = tuple(int(x) for x in (a.levels or ("64" if a.quick else "1,16,64")).split(","))
    work = a.work or Path(tempfile.mkdtemp(prefix="rnnops-bench-mlserver-"))
    work.mkdir(parents=True, exist_ok=True)
    res = run(
        a.quick,
        work,
        levels,
        a.rounds or (1 if a.quick else 3),
        a.seconds or (5.0 if a.quick else 15.0),
        not a.no_pin,
        a.threads,
        a.max_batch_size,
        a.max_batch_time,
        a.parallel_workers,
    )
    print(markdown(res))
    C.write_json(a.json, res)


if __name__ == "__main__":
    main()
