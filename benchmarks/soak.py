"""Soak: mixed load on one real ``bentoml serve`` for minutes, with hot reloads, watched per minute.

The load (all at once, each client looping until the end):

- ``--streams`` generation streams (``/generate``, SSE) with random lengths (50-800 chars); a
  fifth of them drop the connection mid-stream;
- ``--forecast-clients`` clients posting one window each to ``/forecast``, back to back;
- ``--sessions`` forecast sessions opened before the load starts, each updated at random with
  one observation (``POST /sessions/{id}``) during it, closed at the end;
- every ``--reload-every`` seconds the served model files are replaced by another version
  (what a promotion of the champion does to an alias-watched model: the manager loads the new
  version, new requests go there, in-flight streams finish on the old one).

Reported (JSON and a table; ``docs/reliability.md`` keeps a run): requests by outcome per
endpoint (200, 4xx by kind, 429/503 by design, anything else = unexpected), p50/p99 latency per
endpoint per minute (time to first chunk for streams), the server's RSS per minute, and, once
the load has stopped, the active and queued streams and open sessions (leaks). Goals: 0
unexpected errors, 0 leaked slots, RSS growth after the first minute <= 10 %, p99 within 2x from
the first to the last minute.

    python benchmarks/soak.py --minutes 10 --json soak.json

The 60-second version in the tests (tests/test_soak.py) runs :func:`soak` with smaller numbers.
Loopback only; every loop ends at the deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

EXPECTED = {200, 201, 429, 503}  # 429/503: overload answered by design (queue/session caps, reload drain)


class Log:
    """Every request's outcome and latency, by endpoint and minute of the run."""

    def __init__(self, t0: float, bucket_s: float = 60.0):
        self.t0, self.bucket_s = t0, bucket_s
        self.outcomes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.latency: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.unexpected: list[str] = []

    def add(self, endpoint: str, outcome: str, latency_s: float | None = None, detail: str = "") -> None:
        self.outcomes[endpoint][outcome] += 1
        if latency_s is not None:
            self.latency[endpoint][int((time.monotonic() - self.t0) // self.bucket_s)].append(latency_s)
        if not outcome.startswith(("200", "201", "429", "503", "dropped")) and len(self.unexpected) < 20:
            self.unexpected.append(f"{endpoint}: {outcome} {detail[:300]}")


async def _stream(port: int, body: dict, drop_after: int | None, log: Log) -> None:
    """One /generate stream over a raw connection (cheap for the load generator)."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        log.add("generate", "connect_error", detail=str(exc))
        return
    try:
        payload = json.dumps(body).encode()
        writer.write(
            b"POST /generate HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + payload
        )
        await writer.drain()
        status_line = await reader.readline()
        status = int(status_line.split()[1]) if status_line else 0
        if status != 200:
            rest = await reader.read()
            kind = ""
            try:
                kind = json.loads(rest.split(b"\r\n\r\n", 1)[-1] or b"{}").get("type", "")
            except ValueError:
                pass
            log.add("generate", f"{status} {kind}".strip(), time.monotonic() - t0, rest[-200:].decode(errors="replace"))
            return
        first, chars, buf = None, 0, b""
        while True:
            data = await reader.read(65536)
            if not data:
                log.add("generate", "cut", detail="the stream ended without a done or error event")
                return
            buf += data
            if first is None and b"event: chunk" in buf:
                first = time.monotonic() - t0
            chars += buf.count(b"event: chunk")
            if b"event: done" in buf:
                log.add("generate", "200", first)
                return
            if b"event: error" in buf:
                log.add("generate", "error_event", first, buf[-300:].decode(errors="replace"))
                return
            if drop_after is not None and chars >= drop_after:
                log.add("generate", "dropped", first)
                return  # the connection closes under the server: it must free the slot
            buf = buf[-4096:]
    except (OSError, asyncio.IncompleteReadError) as exc:
        log.add("generate", "connection_error", detail=str(exc))
    finally:
        writer.close()


async def _generators(port: int, n: int, deadline: float, log: Log, rng: random.Random) -> None:
    prompts = ["\nFirst Citizen:\n", "ROMEO: ", "To be, or not to be", "the "]

    async def loop(i: int):
        while time.monotonic() < deadline:
            body = {"prompt": rng.choice(prompts), "max_chars": rng.randint(50, 800), "seed": rng.randrange(2**31)}
            drop = rng.randint(1, 20) if rng.random() < 0.2 else None
            await _stream(port, body, drop, log)

    await asyncio.gather(*(loop(i) for i in range(n)))


async def _forecasters(client, n: int, windows: list[list], deadline: float, log: Log, rng: random.Random) -> None:
    async def loop(i: int):
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                r = await client.post("/forecast", json={"context": rng.choice(windows)})
                log.add(
                    "forecast",
                    str(r.status_code) + ("" if r.status_code < 400 else " " + r.json().get("type", "")),
                    time.monotonic() - t0,
                    r.text if r.status_code >= 400 else "",
                )
            except Exception as exc:  # counted as unexpected
                log.add("forecast", type(exc).__name__, detail=str(exc))

    await asyncio.gather(*(loop(i) for i in range(n)))


async def _open_sessions(client, n: int, rows: list[list], log: Log) -> list[str]:
    """Open the sessions before the load starts (their count is part of the setup, not the soak)."""
    ids: list[str] = []
    for _ in range(n):
        try:
            r = await client.post("/sessions", json={"context": rows[:8]})
        except Exception as exc:
            log.add("sessions", f"open_failed {type(exc).__name__}", detail=str(exc))
            continue
        log.add("sessions", str(r.status_code), None, r.text if r.status_code >= 400 else "")
        if r.status_code == 201:
            ids.append(r.json()["session_id"])
    return ids


async def _sessions(client, ids: list[str], rows: list[list], deadline: float, log: Log, rng: random.Random) -> None:
    async def loop(k: int):
        while time.monotonic() < deadline and ids:
            sid = rng.choice(ids)
            t0 = time.monotonic()
            try:
                r = await client.post(f"/sessions/{sid}", json={"observations": [rng.choice(rows)]})
                log.add(
                    "sessions",
                    str(r.status_code) + ("" if r.status_code < 400 else " " + r.json().get("type", "")),
                    time.monotonic() - t0,
                    r.text if r.status_code >= 400 else "",
                )
            except Exception as exc:
                log.add("sessions", type(exc).__name__, detail=str(exc))
            await asyncio.sleep(rng.random() * 0.05)

    await asyncio.gather(*(loop(k) for k in range(min(8, max(1, len(ids) // 25)))))


async def soak(
    port: int,
    server_pid: int,
    seconds: float,
    reload: Callable[[], None],
    reload_every: float,
    streams: int = 256,
    forecast_clients: int = 64,
    sessions: int = 200,
    windows: list | None = None,
    rows: list | None = None,
    seed: int = 0,
    bucket_s: float = 60.0,
) -> dict:
    """Run the mixed load for ``seconds`` against the server on ``port``; returns the figures."""
    import httpx

    rng = random.Random(seed)
    rss: list[tuple[float, float]] = []
    reloads = 0
    # keep-alive connections are dropped by the client before the server's keep-alive timeout
    # (uvicorn: 5 s) could close them under a request in flight
    limits = httpx.Limits(
        max_connections=forecast_clients + 16, max_keepalive_connections=forecast_clients + 16, keepalive_expiry=2.0
    )
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits, trust_env=False
    ) as client:
        log = Log(time.monotonic(), bucket_s)
        ids = await _open_sessions(client, sessions, rows, log)
        t0 = time.monotonic()
        log.t0 = t0
        deadline = t0 + seconds

        async def watch():
            nonlocal reloads
            next_reload = t0 + reload_every
            while time.monotonic() < deadline:
                rss.append((time.monotonic() - t0, C.tree_rss_mb(server_pid)))
                if time.monotonic() >= next_reload:
                    # its own thread: the event loop's default executor may be busy with the
                    # clients' connection set-up (getaddrinfo), and a reload must come on time
                    threading.Thread(target=reload, name="soak-reload", daemon=True).start()
                    reloads += 1
                    next_reload += reload_every
                await asyncio.sleep(min(2.0, bucket_s / 6))

        await asyncio.gather(
            watch(),
            _generators(port, streams, deadline, log, rng),
            _forecasters(client, forecast_clients, windows, deadline, log, rng),
            _sessions(client, ids, rows, deadline, log, rng),
        )
        for sid in ids:
            r = await client.delete(f"/sessions/{sid}")
            if r.status_code != 200:
                log.add("sessions", f"close {r.status_code}", None, r.text)
        # leaks: once the load has stopped, every slot must come free (dropped streams included)
        settle = time.monotonic() + 15
        while True:
            d = (await client.get("/models")).json()
            active = sum(
                m.get("scheduler", {}).get("active", 0) + m.get("scheduler", {}).get("queued", 0)
                for m in d["models"] + d["draining"]
            )
            if active == 0 or time.monotonic() > settle:
                break
            await asyncio.sleep(0.2)
    minutes = sorted({k for lat in log.latency.values() for k in lat})
    per_minute = {
        ep: {
            m: {
                "n": len(lat[m]),
                "p50_ms": round(1e3 * float(np.percentile(lat[m], 50)), 1),
                "p99_ms": round(1e3 * float(np.percentile(lat[m], 99)), 1),
            }
            for m in minutes
            if lat.get(m)
        }
        for ep, lat in log.latency.items()
    }
    rss_by_min: dict[int, float] = {}
    for t, mb in rss:
        k = int(t // bucket_s)
        rss_by_min[k] = max(rss_by_min.get(k, 0.0), mb)
    unexpected = sum(
        n
        for ep in log.outcomes.values()
        for o, n in ep.items()
        if not o.startswith(("200", "201", "429", "503", "dropped"))
    )
    first, last = (min(rss_by_min), max(rss_by_min)) if rss_by_min else (0, 0)
    growth = (rss_by_min[last] / rss_by_min[first] - 1) if len(rss_by_min) > 1 and rss_by_min[first] else 0.0
    p99_ratio = {
        ep: round(pm[max(pm)]["p99_ms"] / pm[min(pm)]["p99_ms"], 2)
        for ep, pm in per_minute.items()
        if len(pm) > 1 and pm[min(pm)]["p99_ms"]
    }
    return {
        "seconds": seconds,
        "reloads": reloads,
        "outcomes": {k: dict(v) for k, v in log.outcomes.items()},
        "unexpected": unexpected,
        "unexpected_examples": log.unexpected,
        "per_minute": per_minute,
        "rss_mb_per_minute": rss_by_min,
        "rss_growth_after_first_minute": round(growth, 4),
        "p99_last_over_first": p99_ratio,
        "active_after": active,
        "sessions_open_after": d["sessions_open"],
        "goals": {
            "no_unexpected": unexpected == 0,
            "no_leaked_slots": active == 0,
            "no_leaked_sessions": d["sessions_open"] == 0,
            "rss_growth_le_10pct": growth <= 0.10,
            "p99_flat_2x": all(v <= 2.0 for v in p99_ratio.values()),
        },
    }


def markdown(res: dict) -> str:
    lines = ["| endpoint | outcome | requests |", "| --- | --- | ---: |"]
    for ep, outs in res["outcomes"].items():
        for o, n in sorted(outs.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {ep} | {o} | {n:,} |")
    lines += ["", "| endpoint | minute | requests | p50 ms | p99 ms |", "| --- | ---: | ---: | ---: | ---: |"]
    for ep, pm in res["per_minute"].items():
        for m, r in sorted(pm.items()):
            lines.append(f"| {ep} | {int(m) + 1} | {r['n']:,} | {r['p50_ms']} | {r['p99_ms']} |")
    lines += ["", "| minute | server RSS MB |", "| ---: | ---: |"]
    lines += [f"| {int(m) + 1} | {mb:.1f} |" for m, mb in sorted(res["rss_mb_per_minute"].items())]
    lines += [
        "",
        f"Reloads: {res['reloads']}. After the load: {res['active_after']} active or queued streams, "
        f"{res['sessions_open_after']} open sessions. Unexpected outcomes: {res['unexpected']}. RSS growth after "
        f"the first minute: {100 * res['rss_growth_after_first_minute']:.1f} %. p99 last / first minute: "
        + ", ".join(f"{ep} {v}x" for ep, v in res["p99_last_over_first"].items())
        + ".",
        "Goals: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in res["goals"].items()) + ".",
    ]
    return "\n".join(lines)


def prepare(work: Path) -> tuple[dict, Callable[[], None], list, list]:
    """Two versions of a char model and a forecaster as files; RNNOPS_MODELS watching them; a
    reload swaps each file for its other version (os.replace: readers never see half a file)."""
    sys.path.insert(0, str(C.REPO / "tests"))
    from streaming import build_model  # noqa: E402  (benchmarks/streaming.py)
    from test_runtime import export_forecaster  # noqa: E402

    versions = {}
    for v in (0, 1):
        char = build_model(work / f"char-v{v}.onnx", 256, 1, "lstm")
        if v == 1:  # a different file (another version): same graph, other metadata bytes
            import onnx

            proto = onnx.load(str(char))
            proto.doc_string = "v1"
            onnx.save(proto, str(char))
        fc, _ = export_forecaster(work / f"fc-v{v}.onnx", norm="revin", lookback=24, horizon=12, seed=v)
        versions[v] = (char, fc)
    served = {"char": work / "serve" / "char.onnx", "fc": work / "serve" / "fc.onnx"}
    served["char"].parent.mkdir(exist_ok=True)
    state = {"v": 0}

    def install(v: int) -> None:
        for key, src in zip(("char", "fc"), versions[v]):
            tmp = served[key].with_suffix(".tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, served[key])

    def reload() -> None:
        state["v"] = 1 - state["v"]
        install(state["v"])

    install(0)
    env = {
        "RNNOPS_MODELS": f"char={served['char']},fc={served['fc']}",
        "RNNOPS_POLL_SECONDS": "1",
        "RNNOPS_MAX_STREAMS": "256",
        "RNNOPS_MAX_QUEUE": "256",
        "RNNOPS_MAX_SESSIONS": "1024",
    }
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(64, 3)).round(3).tolist()
    windows = [rng.normal(size=(24, 3)).round(3).tolist() for _ in range(16)]
    return env, reload, windows, rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--reload-every", type=float, default=120.0, help="seconds between hot reloads")
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--forecast-clients", type=int, default=64)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rnnops-soak-"))
    env, reload, windows, rows = prepare(work)
    port = C.free_port()
    log = work / "server.log"
    proc = C.start_process(
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "rnnops.serving.service:RnnopsService",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        {**os.environ, **env, "BENTOML_HOME": str(work / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"},
        log,
        cwd=work,
    )
    try:
        C.wait_http(f"http://127.0.0.1:{port}/readyz", proc, log)
        print(
            f"soak: {args.minutes:g} min, {args.streams} streams, {args.forecast_clients} forecast clients, "
            f"{args.sessions} sessions, reload every {args.reload_every:g} s; server log {log}",
            file=sys.stderr,
        )
        res = asyncio.run(
            soak(
                port,
                proc.pid,
                60 * args.minutes,
                reload,
                args.reload_every,
                args.streams,
                args.forecast_clients,
                args.sessions,
                windows,
                rows,
            )
        )
    finally:
        C.stop_process(proc)
    print(C.machine_markdown(C.machine()))
    print(markdown(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
