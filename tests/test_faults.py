"""Faults, with real processes: a worker killed mid-stream, SIGTERM drain, the model registry
going down while serving, a client that stops reading, oversized bodies. Each test starts the
``bentoml serve`` it hurts (tiny models from files, or from a real ``mlflow server``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")

from servers import free_port, stop, tail, wait_http  # noqa: E402
from servers import serve_bentoml as serve  # noqa: E402
from test_runtime import export_char, export_forecaster  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    export_char(root / "char.onnx", "lstm", hidden=64)
    export_forecaster(root / "fc.onnx", norm="fixed", lookback=12, horizon=4)
    return root


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _workers(arbiter: int) -> list[int]:
    return [p for p in _children(arbiter) if "_bentoml_impl.worker" in Path(f"/proc/{p}/cmdline").read_text()]


async def _stream(url: str, body: dict, hold: asyncio.Event | None = None) -> tuple[list[str], float]:
    """The SSE event names of one /generate stream, and how long it took (or the error). With
    ``hold``, the client stops reading after the first event until ``hold`` is set: the server's
    socket buffers fill and the stream stays in flight, however fast the machine generates."""
    t0 = time.monotonic()
    events: list[str] = []
    async with httpx.AsyncClient(timeout=60) as c:
        try:
            async with c.stream("POST", url + "/generate", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        events.append(line[7:])
                        if hold is not None and len(events) == 1:
                            await hold.wait()
        except httpx.HTTPError as exc:
            events.append(f"!{type(exc).__name__}")
    return events, time.monotonic() - t0


@pytest.mark.slow
def test_a_worker_killed_mid_stream_closes_the_stream_and_is_started_again(files, tmp_path):
    env = {"RNNOPS_MODELS": f"char={files / 'char.onnx'}"}
    with serve(tmp_path, env) as (proc, url, log):
        (worker,) = _workers(proc.pid)
        (engine,) = _engines(worker)

        async def scenario():
            task = asyncio.create_task(_stream(url, {"prompt": "ab", "max_chars": 500000, "seed": 1}))
            await asyncio.sleep(1.0)
            os.kill(worker, signal.SIGKILL)
            killed = time.monotonic()
            events, _ = await task
            return events, time.monotonic() - killed

        events, after = asyncio.run(scenario())
        assert "chunk" in events and "done" not in events and events[-1].startswith("!"), events
        assert after < 5, f"the client waited {after:.1f}s after the worker died"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        new = _workers(proc.pid)
        assert new and worker not in new, f"BentoML did not start the worker again\n{tail(log)}"
        r = httpx.post(url + "/complete", json={"prompt": "ab", "max_chars": 20}, timeout=30)
        assert r.status_code == 200 and len(r.json()["text"]) == 20
        # the dead worker's engine process saw its pipe close and went too: no orphan
        assert _gone(engine, 10), f"engine {engine} outlived its worker"


def _engines(worker: int) -> list[int]:
    return [p for p in _children(worker) if "rnnops.serving.generate.engine" in Path(f"/proc/{p}/cmdline").read_text()]


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_a_killed_engine_ends_its_streams_with_an_error_and_is_started_again(files, tmp_path):
    """The engine process (generate/engine.py) dies mid-stream: the stream ends with an error event
    (never a silent cut), new requests get 503 until a new engine is up, then are served."""
    env = {"RNNOPS_MODELS": f"char={files / 'char.onnx'}"}
    with serve(tmp_path, env) as (proc, url, log):
        (worker,) = _workers(proc.pid)
        (engine,) = _engines(worker)

        async def scenario():
            task = asyncio.create_task(_stream(url, {"prompt": "ab", "max_chars": 500000, "seed": 1}))
            await asyncio.sleep(1.0)
            os.kill(engine, signal.SIGKILL)
            return await task

        events, took = asyncio.run(scenario())
        assert "chunk" in events and events[-1] == "error" and "done" not in events, events
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            scheduler = httpx.get(url + "/models", timeout=10).json()["models"][0]["scheduler"]
            if scheduler["running"] and scheduler["pid"] != engine:
                break
            time.sleep(0.5)
        assert scheduler["running"] and scheduler["pid"] != engine, f"no new engine\n{tail(log)}"
        assert _engines(worker) == [scheduler["pid"]] and worker in _workers(proc.pid)  # the worker lived on
        r = httpx.post(url + "/complete", json={"prompt": "ab", "max_chars": 20, "seed": 1}, timeout=30)
        assert r.status_code == 200 and len(r.json()["text"]) == 20
        assert "engine process exited unexpectedly" in log.read_text()


# ---------------------------------------------------------------- the registry goes down


def _mlflow_server(root: Path, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    out = open(root / "mlflow.log", "ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=root,
        env=env,
        start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{port}/health", proc, root / "mlflow.log", 180)
    return proc


def _register_char_model(url: str, onnx_path: Path) -> None:
    """What export + register + promote leave in the registry, for an existing ONNX file."""
    code = f"""
import mlflow, onnx
from rnnops import contract as C
from rnnops.registry import api
from rnnops.util import sha256_file
mlflow.set_tracking_uri({url!r})
mlflow.set_experiment("faults")
model = onnx.load({str(onnx_path)!r})
with mlflow.start_run() as run:
    mlflow.set_tags({{"rnnops.task": "char", "rnnops.version": "0.1.0"}})
    mlflow.log_metric("val_loss", 1.5)
    info = mlflow.onnx.log_model(model, name="onnx", pip_requirements=["onnxruntime"], save_as_external_data=False)
    mlflow.set_tags({{C.TAG_ONNX_URI: info.model_uri, C.TAG_ONNX_SHA256: sha256_file({str(onnx_path)!r}),
                     C.TAG_PARITY_PASSED: "true", C.TAG_PARITY_MAX_DIFF: "1e-6"}})
v = api.register_run(run.info.run_id)
api.promote(v.name, v.version, force=True)
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MLFLOW_REGISTRY_URI": url}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


@pytest.mark.slow
def test_serving_outlives_the_registry_and_polls_back_off_and_recover(files, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_proc = _mlflow_server(tmp_path, port)
    try:
        _register_char_model(url, files / "char.onnx")
        # Both URIs pinned, and MLflow's retry settings as a fresh serving process sets them:
        # other tests in this pytest process may have left a registry URI (then the polls ask
        # another, live registry) or training's longer retries in the environment passed on
        env = {
            "RNNOPS_MODELS": "char-rnn@champion",
            "RNNOPS_POLL_SECONDS": "0.5",
            "MLFLOW_TRACKING_URI": url,
            "MLFLOW_REGISTRY_URI": url,
            "RNNOPS_CACHE": str(tmp_path / "cache"),
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
        }
        with serve(tmp_path, env) as (_, api, log):
            assert httpx.get(api + "/models").json()["registry"]["reachable"] is True
            stop(mlflow_proc, signal.SIGTERM, group=True)
            deadline = time.monotonic() + 90
            reg = {}
            while time.monotonic() < deadline:
                reg = httpx.get(api + "/models", timeout=10).json()["registry"]
                if not reg["reachable"] and reg["failed_polls"] >= 2:
                    break
                time.sleep(0.5)
            assert not reg["reachable"] and reg["error"], reg
            assert reg["next_poll_in_s"] >= 2 * 0.5, reg  # backed off (doubled per failed poll)
            assert httpx.get(api + "/readyz").status_code == 200  # what is loaded keeps serving
            r = httpx.post(api + "/complete", json={"prompt": "ab", "max_chars": 10}, timeout=30)
            assert r.status_code == 200 and r.json()["version"] == "1"
            assert "rnnops_registry_up 0.0" in httpx.get(api + "/metrics").text
            mlflow_proc = _mlflow_server(tmp_path, port)  # the registry comes back
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                reg = httpx.get(api + "/models", timeout=10).json()["registry"]
                if reg["reachable"]:
                    break
                time.sleep(0.5)
            assert reg["reachable"] and reg["failed_polls"] == 0, f"{reg}\n{tail(log)}"
            assert "rnnops_registry_up 1.0" in httpx.get(api + "/metrics").text
    finally:
        stop(mlflow_proc, signal.SIGTERM, group=True)


# ---------------------------------------------------------------- SIGTERM: drain


@pytest.mark.slow
def test_sigterm_drains_in_flight_streams_and_refuses_new_requests(files, tmp_path):
    # one event a character (no coalescing, and one decode step per call: the decode graph's
    # default 16 would send 16 characters an event), so that a held stream outgrows the socket
    # buffers and is still in flight when the signal comes
    env = {
        "RNNOPS_MODELS": f"char={files / 'char.onnx'}",
        "RNNOPS_DRAIN_S": "60",
        "RNNOPS_COALESCE_MS": "0",
        "RNNOPS_DECODE_STEPS": "1",
    }
    with serve(tmp_path, env) as (proc, url, log):
        idle = httpx.Client(base_url=url, timeout=10)

        async def scenario():
            # the clients hold their streams (stop reading) until the signal has been answered: the
            # streams are in flight then on any machine (a fast one generated 8000 chars in a second)
            hold = asyncio.Event()
            tasks = [
                asyncio.create_task(_stream(url, {"prompt": "ab", "max_chars": 20000, "seed": i}, hold))
                for i in range(8)
            ]
            await asyncio.sleep(1.0)
            # a keep-alive connection, idle when the signal comes (used just now: well inside
            # uvicorn's keep-alive timeout, which would close it on a slow machine otherwise)
            assert (await asyncio.to_thread(idle.get, "/models")).status_code == 200
            proc.send_signal(signal.SIGTERM)  # what `docker stop` / Kubernetes send to the arbiter
            await asyncio.sleep(0.5)
            new = await asyncio.to_thread(idle.post, "/complete", json={"prompt": "ab", "max_chars": 5})
            try:
                ready = (await asyncio.to_thread(httpx.get, url + "/readyz", timeout=2)).status_code
            except httpx.HTTPError as exc:
                ready = type(exc).__name__  # the listener closed: as good for a load balancer
            hold.set()
            return new, ready, await asyncio.gather(*tasks)

        new, ready, streams = asyncio.run(scenario())
        assert new.status_code == 503 and new.headers["retry-after"] == "1" and new.json()["type"] == "draining"
        assert ready != 200
        for events, _ in streams:
            assert events[-1] == "done", events[-3:]
        assert proc.wait(30) == 0, tail(log)
        idle.close()


@pytest.mark.slow
def test_sigterm_ends_what_outlasts_the_drain_bound_with_an_error_event(files, tmp_path):
    env = {"RNNOPS_MODELS": f"char={files / 'char.onnx'}", "RNNOPS_DRAIN_S": "1"}
    with serve(tmp_path, env) as (proc, url, log):

        async def scenario():
            task = asyncio.create_task(_stream(url, {"prompt": "ab", "max_chars": 900000, "seed": 1}))
            await asyncio.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            events, _ = await task
            return events, time.monotonic() - t0

        events, took = asyncio.run(scenario())
        assert events[-1] == "error" and "done" not in events, events[-3:]
        assert took < 10, took
        assert proc.wait(30) == 0, tail(log)


# ---------------------------------------------------------------- limits: body size, stalled clients


@pytest.fixture(scope="module")
def limited(files, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limited")
    env = {
        "RNNOPS_MODELS": f"char={files / 'char.onnx'},fc={files / 'fc.onnx'}",
        "RNNOPS_MAX_BODY_BYTES": "65536",
        "RNNOPS_STALL_S": "1",
        "RNNOPS_COALESCE_MS": "0",
    }
    with serve(tmp, env) as (proc, url, log):
        yield url, log


def _answer(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the 413 closes it)."""
    s.settimeout(5)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    s.close()
    return out


def _raw(url: str, head: bytes, body: bytes = b"", rcvbuf: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((host, int(port)))
    s.sendall(head + body)
    return s


def test_a_body_announced_too_big_is_refused_before_it_is_sent(limited):
    url, _ = limited
    s = _raw(
        url, b"POST /forecast HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
    )  # and not a byte of it
    t0 = time.monotonic()
    answer = _answer(s)
    assert answer.startswith(b"HTTP/1.1 413") and b"RNNOPS_MAX_BODY_BYTES" in answer, answer
    assert time.monotonic() - t0 < 2


def test_a_chunked_body_is_refused_once_it_passes_the_limit(limited):
    url, _ = limited
    chunk = b"x" * 8192
    # just past the limit, and no end: the server must answer without waiting for more
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(9))
    s = _raw(
        url,
        b"POST /forecast HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        body,
    )
    answer = _answer(s)
    assert answer.startswith(b"HTTP/1.1 413") and b"body_too_large" in answer, answer
    ok = httpx.post(url + "/forecast", json={"context": [[1.0, 2.0, 3.0]] * 12}, timeout=10)
    assert ok.status_code == 200  # a body within the limit is served as before


def test_a_client_that_stops_reading_loses_its_stream_and_slot(limited):
    url, log = limited
    payload = json.dumps({"model": "char", "prompt": "ab", "max_chars": 900000, "seed": 3}).encode()
    s = _raw(
        url,
        b"POST /generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(payload)).encode()
        + b"\r\n\r\n",
        payload,
        rcvbuf=4096,
    )  # then never reads

    def active() -> int:
        d = httpx.get(url + "/models", timeout=10).json()
        return sum(m["scheduler"]["active"] for m in d["models"] if m.get("scheduler"))

    try:
        deadline = time.monotonic() + 10
        while active() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert active() == 1
        deadline = time.monotonic() + 90
        while active() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert active() == 0, f"the stalled stream still holds its slot\n{tail(log)}"
        assert "RNNOPS_STALL_S" in log.read_text()
    finally:
        s.close()
