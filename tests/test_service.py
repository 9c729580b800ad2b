"""The service as users meet it: real ``bentoml serve`` processes on free loopback ports, real
HTTP, models trained (tiny), exported, registered and promoted in a session fixture.

Server A serves ``char-rnn@champion``, ``forecaster@champion`` (windowed, RevIN) and
``forecaster-stateful@champion`` from the registry and polls the aliases every second (hot reload).
Server B serves two local ONNX files with tiny limits (2 streams, queue of 1, 1 s queue timeout,
2 sessions, 1 s session TTL) for the overload, disconnect, failed-reload and session-cap paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("bentoml")
pytest.importorskip("torch")
pytest.importorskip("rnnops.export.pipeline", reason="export stage not built")

from servers import sessions_open, stop, tail  # noqa: E402
from serving_fixtures import TEXT, Registry, Server, _launch, _wait_ready  # noqa: E402  (registry: conftest.py)

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def servers(registry: Registry):
    files = registry.root / "files"
    files.mkdir(exist_ok=True)
    cache = Path(registry.env["RNNOPS_CACHE"]) / "models"
    shutil.copy(cache / "char-rnn" / "1" / "model.onnx", files / "small.onnx")
    shutil.copy(cache / "forecaster-stateful" / "1" / "model.onnx", files / "fc.onnx")
    a = _launch(
        "A",
        {
            **registry.env,
            "RNNOPS_MODELS": "char-rnn@champion,forecaster@champion,forecaster-stateful@champion",
            "RNNOPS_POLL_SECONDS": "1",
            "RNNOPS_MAX_CHARS": "300000",
            "RNNOPS_MAX_STREAMS": "128",
        },
        registry.root,
    )
    b = _launch(
        "B",
        {
            **registry.env,
            "RNNOPS_MODELS": f"small={files / 'small.onnx'},fc={files / 'fc.onnx'}",
            "RNNOPS_POLL_SECONDS": "0.5",
            "RNNOPS_MAX_STREAMS": "2",
            "RNNOPS_MAX_QUEUE": "1",
            "RNNOPS_QUEUE_TIMEOUT": "1",
            "RNNOPS_MAX_CHARS": "1000000",
            "RNNOPS_MAX_SESSIONS": "2",
            "RNNOPS_SESSION_TTL": "1",
        },
        registry.root,
    )
    try:
        _wait_ready(a)
        _wait_ready(b)
        yield a, b, files
    finally:
        for s in (a, b):
            stop(s.proc, signal.SIGTERM, group=True)


@pytest.fixture(scope="module")
def A(servers) -> Server:
    return servers[0]


@pytest.fixture(scope="module")
def B(servers) -> Server:
    return servers[1]


def sse(lines) -> list[tuple[str, dict]]:
    events, name = [], None
    for line in lines:
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: ") :])))
    return events


def stream_text(server: Server, body: dict) -> tuple[str, list, httpx.Headers]:
    with httpx.stream("POST", server.url + "/generate", json=body, timeout=60) as r:
        assert r.status_code == 200, r.read()
        events = sse(r.iter_lines())
        headers = r.headers
    return "".join(d["text"] for e, d in events if e == "chunk"), events, headers


# ---------------------------------------------------------------- generation


def test_health_and_models(A, registry):
    assert A.get("/livez").status_code == 200 and A.get("/readyz").status_code == 200
    d = A.models()
    by = {m["name"]: m for m in d["models"]}
    assert set(by) == {"char-rnn", "forecaster", "forecaster-stateful"}
    c = by["char-rnn"]
    assert c["version"] == "1" and c["alias"] == "champion" and c["kind"] == "char" and c["cell"] == "lstm"
    assert c["providers"] == ["CPUExecutionProvider"] and len(c["sha256"]) == 64
    assert c["source_run"] == registry.char_runs[0]
    assert by["forecaster"]["stateful"] is False and by["forecaster-stateful"]["stateful"] is True
    assert d["errors"] == [] and d["limits"]["max_streams"] == 128


def test_generate_streams_coalesced_chunks_then_stats(A):
    body = {"prompt": "the ", "max_chars": 3000, "seed": 5, "temperature": 0.9}
    text, events, headers = stream_text(A, body)
    assert headers["content-type"].startswith("text/event-stream") and headers["x-model-version"] == "1"
    chunks = [d for e, d in events if e == "chunk"]
    assert events[-1][0] == "done" and len(text) == 3000
    stats = events[-1][1]
    assert stats["chars"] == 3000 and stats["finish_reason"] == "length" and stats["seed"] == 5
    assert stats["ttfc_ms"] > 0 and stats["chars_per_s"] > 0 and stats["version"] == "1"
    assert 1 < len(chunks) < 3000 / 4  # characters travel in coalesced events, not one by one
    done = A.post("/complete", body).json()
    assert done["text"] == text and done["finish_reason"] == "length"


def test_stop_strings_and_greedy(A):
    full = A.post("/complete", {"prompt": "the", "max_chars": 200, "temperature": 0}).json()["text"]
    stop = full[30:33]
    cut = A.post("/complete", {"prompt": "the", "max_chars": 200, "temperature": 0, "stop": [stop]}).json()
    assert cut["finish_reason"] == "stop" and cut["text"] == full[: full.find(stop)]


@pytest.mark.parametrize("n", [64])
def test_same_seed_same_text_alone_or_among_concurrent_streams(A, n):
    words = TEXT.split()
    bodies = [
        {
            "prompt": " ".join(words[i : i + 1 + i % 5]),
            "max_chars": 150,
            "seed": 1000 + i,
            "temperature": [0.6, 1.0, 1.4][i % 3],
            "top_k": [0, 8][i % 2],
            "top_p": [1.0, 0.9][i % 2],
        }
        for i in range(n)
    ]
    alone = [A.post("/complete", b).json()["text"] for b in bodies]

    async def together():
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=n + 8)) as client:

            async def one(b, i):
                if i % 2:  # half of them stream
                    async with client.stream("POST", A.url + "/generate", json=b) as r:
                        lines = [line async for line in r.aiter_lines()]
                    return "".join(d["text"] for e, d in sse(lines) if e == "chunk")
                return (await client.post(A.url + "/complete", json=b)).json()["text"]

            return await asyncio.gather(*(one(b, i) for i, b in enumerate(bodies)))

    assert asyncio.run(together()) == alone
    m = A.get("/metrics").text
    count = float(_metric(m, "rnnops_step_batch_size_count", 'model="char-rnn"'))
    total = float(_metric(m, "rnnops_step_batch_size_sum", 'model="char-rnn"'))
    assert total / count > 1.5  # the decode steps really were batched


def _metric(text: str, name: str, label: str) -> str:
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            return line.rsplit(" ", 1)[1]
    raise AssertionError(f"{name}{{{label}}} not in /metrics")


BAD_GENERATE = [
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": "the", "max_chars": 0}, 400, "max_chars"),
    ({"prompt": "the", "max_chars": 10**7}, 400, "RNNOPS_MAX_CHARS"),
    ({"prompt": "t" * 5000}, 400, "RNNOPS_MAX_PROMPT_CHARS"),
    ({"prompt": "the Zebra é"}, 400, "'Z' (U+005A)"),
    ({"prompt": "the", "temperature": -0.1}, 400, "temperature"),
    ({"prompt": "the", "temperature": 99}, 400, "temperature"),
    ({"prompt": "the", "top_p": 0}, 400, "top_p"),
    ({"prompt": "the", "top_k": -1}, 400, "top_k"),
    ({"prompt": "the", "seed": -5}, 400, "seed"),
    ({"prompt": "the", "stop": [""]}, 400, "stop"),
    ({"prompt": "the", "max_tokens": 5}, 400, "max_tokens"),
    ({"prompt": "the", "model": "nope"}, 404, "unknown model 'nope'"),
    ({"prompt": "the", "model": "forecaster"}, 404, "not a char model"),
    ('{"prompt": "the", ', 400, "JSON"),
    ('{"prompt": "the", "temperature": NaN}', 400, "temperature"),
]


@pytest.mark.parametrize("body,status,fragment", BAD_GENERATE, ids=[str(i) for i in range(len(BAD_GENERATE))])
def test_bad_generation_requests_are_4xx_with_a_reason(A, body, status, fragment):
    for path in ("/complete", "/generate"):
        r = A.post(path, body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        assert fragment in r.json()["error"], r.json()


def test_out_of_vocabulary_lists_the_characters(A):
    r = A.post("/complete", {"prompt": "the Zebra é"}).json()
    assert r["type"] == "out_of_vocabulary" and r["characters"] == ["Z", "é"]


# ---------------------------------------------------------------- forecasts


def _rows(csv: Path, start: int, n: int) -> tuple[list[list[float]], list[str]]:
    import pandas as pd

    df = pd.read_csv(csv).iloc[start : start + n]
    return df[["a", "b", "OT"]].values.tolist(), df["date"].tolist()


def test_forecast_single_and_batched_with_timestamps(A, registry):
    rows, dates = _rows(registry.csv, 100, 30)
    r = A.post("/forecast", {"context": rows, "timestamps": dates, "model": "forecaster"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["version"] == "1" and d["targets"] == ["a", "b", "OT"] and d["horizon"] == 6
    y = np.array(d["forecast"])
    assert y.shape == (6, 3) and np.isfinite(y).all()
    assert d["timestamps"][0] == "2024-01-06T10:00:00" and d["timestamps"][-1] == "2024-01-06T15:00:00"
    # several windows in one request and many concurrent requests: same numbers as one by one
    windows = [_rows(registry.csv, s, 24 + s % 5)[0] for s in range(0, 200, 10)]
    singles = [np.array(A.post("/forecast", {"context": w}).json()["forecast"]) for w in windows]
    many = A.post("/forecast", {"contexts": windows}).json()["forecasts"]
    np.testing.assert_allclose(np.array(many), np.array(singles), atol=1e-5)

    async def concurrent():
        async with httpx.AsyncClient(timeout=60) as client:
            rs = await asyncio.gather(*(client.post(A.url + "/forecast", json={"context": w}) for w in windows * 3))
            return [np.array(r.json()["forecast"]) for r in rs]

    np.testing.assert_allclose(np.array(asyncio.run(concurrent())), np.array(singles * 3), atol=1e-5)
    batching = {m["name"]: m for m in A.models()["models"]}["forecaster"]["batching"]
    assert batching["windows"] > batching["calls"]  # requests shared ORT calls


def test_stateful_forecaster_takes_any_window_length(A, registry):
    rows, _ = _rows(registry.csv, 0, 5)
    r = A.post("/forecast", {"context": rows, "model": "forecaster-stateful"})
    assert r.status_code == 200 and len(r.json()["forecast"]) == 6


BAD_FORECAST = [
    ({"context": [[1.0, 2.0]] * 30}, 400, "expects 3 features (a, b, OT)"),
    ({"context": [[1.0, 2.0, 3.0]] * 10}, 400, "needs at least 24 rows"),
    ({"context": [[1.0, 2.0, 3.0]] * 30, "contexts": [[[1.0, 2.0, 3.0]] * 30]}, 400, "exactly one of"),
    ({}, 400, "exactly one of"),
    ('{"context": [[1, 2, NaN]]}', 400, "finite"),
    ('{"context": [[1, 2, Infinity]]}', 400, "finite"),
    ({"context": [[1.0, 2.0, 1e39]] * 30}, 400, "not a finite float32"),
    ({"context": [[1.0, 2.0, 3.0]] * 30, "timestamps": ["2024-01-01T00:00:00"] * 2}, 400, "2 timestamps for 30 rows"),
    (
        {"context": [[1.0, 2.0, 3.0]] * 2, "timestamps": ["yesterday", "today"], "model": "forecaster-stateful"},
        400,
        "ISO 8601",
    ),
    ({"context": [["a", 2.0, 3.0]] * 30}, 400, "context.0.0"),
    ({"context": [[1.0, 2.0, 3.0]] * 30, "model": "char-rnn"}, 404, "not a forecaster"),
    ({"context": [[1.0, 2.0, 3.0]] * 30, "model": "nope"}, 404, "unknown model"),
]


@pytest.mark.parametrize("body,status,fragment", BAD_FORECAST, ids=[str(i) for i in range(len(BAD_FORECAST))])
def test_bad_forecast_requests_are_4xx_with_a_reason(A, body, status, fragment):
    r = A.post("/forecast", body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"], r.json()


def test_stateful_session_steps_only_new_observations(A, registry):
    rows, dates = _rows(registry.csv, 50, 40)
    r = A.post("/sessions", {"model": "forecaster-stateful", "context": rows[:30], "timestamps": dates[:30]})
    assert r.status_code == 201, r.text
    s = r.json()
    sid = s["session_id"]
    assert s["stateful"] and s["observations"] == 30 and len(s["forecast"]) == 6
    for i in range(30, 40):
        u = A.post(f"/sessions/{sid}", {"observations": [rows[i]], "timestamps": [dates[i]]}).json()
    assert u["observations"] == 40 and u["timestamps"][0] == "2024-01-04T18:00:00"
    whole = A.post("/forecast", {"model": "forecaster-stateful", "context": rows}).json()["forecast"]
    np.testing.assert_allclose(u["forecast"], whole, atol=1e-5)  # carried state == the whole history
    assert A.get(f"/sessions/{sid}").json()["observations"] == 40
    bad = A.post(f"/sessions/{sid}", {"observations": [[1.0, 2.0]]})
    assert bad.status_code == 400 and "3 features" in bad.json()["error"]
    assert A.delete(f"/sessions/{sid}").json()["closed"]
    gone = A.post(f"/sessions/{sid}", {"observations": [rows[0]]})
    assert gone.status_code == 404 and "unknown session" in gone.json()["error"]


def test_windowed_session_keeps_the_last_lookback_rows(A, registry):
    rows, _ = _rows(registry.csv, 0, 60)
    s = A.post("/sessions", {"context": rows[:10]}).json()  # default forecaster: windowed, lookback 24
    assert not s["stateful"] and s["forecast"] is None and s["needs"] == 14
    u = A.post(f"/sessions/{s['session_id']}", {"observations": rows[10:60]}).json()
    ref = A.post("/forecast", {"context": rows[36:60]}).json()["forecast"]
    assert u["needs"] == 0 and u["observations"] == 60
    np.testing.assert_allclose(u["forecast"], ref, atol=1e-5)
    assert A.delete(f"/sessions/{s['session_id']}").status_code == 200
    assert A.delete("/sessions/nope").status_code == 404 and A.get("/sessions/nope").status_code == 404


def test_metrics_expose_our_gauges_and_histograms(A):
    m = A.get("/metrics").text
    for name in (
        "rnnops_active_streams",
        "rnnops_queue_depth",
        "rnnops_step_batch_size_bucket",
        "rnnops_step_seconds_bucket",
        "rnnops_generated_chars_total",
        "rnnops_chars_per_second",
        "rnnops_time_to_first_char_seconds_bucket",
        "rnnops_forecast_batch_size_bucket",
        "rnnops_model_reloads_total",
        "rnnops_sessions_open",
        "rnnops_session_step_batch_size_bucket",
        "rnnops_http_requests_total",  # our request metrics (BentoML's are off: they labelled by raw path)
        "rnnops_http_request_duration_seconds_bucket",
    ):
        assert name in m, name


# ---------------------------------------------------------------- limits (server B)


def _open_stream(server: Server, body: dict):
    """Start an SSE stream and read its first chunk; returns (client, context, line iterator).
    Keep the iterator: dropping it closes the connection (httpcore closes on GeneratorExit)."""
    client = httpx.Client(timeout=60)
    ctx = client.stream("POST", server.url + "/generate", json=body)
    r = ctx.__enter__()
    assert r.status_code == 200, r.read()
    lines = r.iter_lines()
    for line in lines:
        if line.startswith("data: "):
            break
    return client, ctx, lines


def _close(client, ctx) -> None:
    with contextlib.suppress(Exception):
        ctx.__exit__(None, None, None)
    client.close()


def _scheduler(server: Server, name: str = "small") -> dict:
    return {m["name"]: m for m in server.models()["models"]}[name]["scheduler"]


def test_overload_answers_429_then_503_and_disconnect_frees_the_slot(B):
    long = {"prompt": "the", "max_chars": 1_000_000}
    s1 = _open_stream(B, long)
    s2 = _open_stream(B, long)
    try:
        assert _scheduler(B)["active"] == 2
        queued: dict = {}
        t = threading.Thread(target=lambda: queued.update(r=B.post("/complete", {"prompt": "the", "max_chars": 5})))
        t.start()
        deadline = time.monotonic() + 5
        while _scheduler(B)["queued"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        full = B.post("/generate", {"prompt": "the", "max_chars": 5})
        assert full.status_code == 429 and full.json()["type"] == "queue_full"
        assert "RNNOPS_MAX_QUEUE" in full.json()["error"] and int(full.headers["retry-after"]) >= 1
        t.join(10)
        late = queued["r"]
        assert late.status_code == 503 and late.json()["type"] == "queue_timeout"
        assert "RNNOPS_QUEUE_TIMEOUT" in late.json()["error"] and int(late.headers["retry-after"]) >= 1
        # a client that goes away frees its slot within a step: the next request is admitted
        _close(*s1[:2])
        deadline = time.monotonic() + 5
        while _scheduler(B)["active"] > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _scheduler(B)["active"] == 1
        ok = B.post("/complete", {"prompt": "the", "max_chars": 5})
        assert ok.status_code == 200 and len(ok.json()["text"]) == 5
    finally:
        _close(*s1[:2])
        _close(*s2[:2])
    m = B.get("/metrics").text
    assert float(_metric(m, "rnnops_streams_total", 'finish_reason="cancelled"')) >= 1
    assert float(_metric(m, "rnnops_rejected_total", 'reason="queue_full"')) >= 1


def test_session_cap_and_idle_ttl(B):
    rows = [[0.1, 0.2, 0.3]] * 3
    a = B.post("/sessions", {"context": rows})
    b = B.post("/sessions", {"context": rows})
    assert a.status_code == b.status_code == 201
    c = B.post("/sessions", {"context": rows})
    assert c.status_code == 429 and "RNNOPS_MAX_SESSIONS" in c.json()["error"] and "retry-after" in c.headers
    deadline = time.monotonic() + 15  # TTL is 1 s: the sweeper drops both within a second or two
    while sessions_open(B, "fc") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)  # reading the gauge does not touch the sessions
    r = B.post(f"/sessions/{a.json()['session_id']}", {"observations": rows})
    assert r.status_code == 404 and "expired" in r.json()["error"]
    assert B.post("/sessions", {"context": rows}).status_code == 201


def test_a_new_file_version_that_fails_to_load_leaves_the_old_one_serving(B, servers):
    files = servers[2]
    path = files / "small.onnx"
    good = path.read_bytes()
    before = {m["name"]: m for m in B.models()["models"]}["small"]["version"]
    try:
        path.write_bytes(b"definitely not onnx")
        deadline = time.monotonic() + 15
        while not B.models()["errors"] and time.monotonic() < deadline:
            time.sleep(0.2)
        d = B.models()
        err = {e["model"]: e for e in d["errors"]}["small"]
        assert "cannot load" in err["error"] and err["serving"] == before
        assert {m["name"]: m for m in d["models"]}["small"]["version"] == before
        assert B.post("/complete", {"prompt": "the", "max_chars": 20}).json()["version"] == before
        assert B.get("/readyz").status_code == 200
    finally:
        path.write_bytes(good)
    deadline = time.monotonic() + 15
    while B.models()["errors"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert B.models()["errors"] == []


# ---------------------------------------------------------------- hot reload (last: moves the champion)


def test_hot_reload_new_requests_move_in_flight_streams_finish_on_the_old_version(A, registry):
    from rnnops.registry import api

    client, ctx, lines = _open_stream(A, {"prompt": "the", "max_chars": 300000, "seed": 1})
    try:
        assert _scheduler(A, "char-rnn")["active"] == 1
        v2 = api.register_run(registry.char_runs[1], name="char-rnn").version
        api.promote("char-rnn", v2, force=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            d = A.models()
            if {m["name"]: m for m in d["models"]}["char-rnn"]["version"] == str(v2):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"champion v{v2} not picked up: {A.models()}\n{tail(A.log)}")
        new = {m["name"]: m for m in d["models"]}["char-rnn"]
        assert new["cell"] == "gru"
        assert A.post("/complete", {"prompt": "the", "max_chars": 10}).json()["version"] == str(v2)
        draining = [m for m in d["draining"] if m["name"] == "char-rnn"]
        assert draining and draining[0]["version"] == "1" and draining[0]["scheduler"]["active"] == 1
        # the old stream is still flowing on version 1
        got = 0
        for line in lines:
            if line.startswith("data: "):
                got += 1
                if got == 5:
                    break
        assert got == 5
    finally:
        _close(client, ctx)
    deadline = time.monotonic() + 10
    while A.models()["draining"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert A.models()["draining"] == []  # its scheduler ended once its last stream did


def test_a_registry_version_that_fails_verification_is_reported_and_not_served(A, registry):
    """Point champion back at version 1 after corrupting its stored artifact and the cached copy:
    resolve refuses it (sha256), the service keeps serving version 2 and says why."""
    import mlflow

    from rnnops.registry import api

    uri = mlflow.MlflowClient().get_model_version_download_uri("char-rnn", "1")
    artifact = Path(uri.removeprefix("file://")) / "model.onnx"
    artifact.write_bytes(artifact.read_bytes() + b"tampered")
    shutil.rmtree(Path(registry.env["RNNOPS_CACHE"]) / "models" / "char-rnn" / "1")
    api.promote("char-rnn", 1, force=True)
    deadline = time.monotonic() + 20
    while not A.models()["errors"] and time.monotonic() < deadline:
        time.sleep(0.2)
    d = A.models()
    err = {e["model"]: e for e in d["errors"]}["char-rnn"]
    assert err["version"] == "1" and err["serving"] == "2" and "hashes to" in err["error"], err
    assert {m["name"]: m for m in d["models"]}["char-rnn"]["version"] == "2"
    assert A.post("/complete", {"prompt": "the", "max_chars": 5}).json()["version"] == "2"
    assert math.isfinite(float(_metric(A.get("/metrics").text, "rnnops_model_reloads_total", 'result="failed"')))
