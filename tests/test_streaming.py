"""The one streaming path (``serving/http/streaming.py``) on every text endpoint: ``/generate``,
``/complete`` and ``/v1/completions`` (through the official ``openai`` client where a client is
used).

Over a real ``bentoml serve`` (the behaviours that need sockets): a client that stops reading a
stream loses its slot after ``RNNOPS_STALL_S`` (``/complete`` has no stream to stall: one answer at
the end, bounded by the deadline instead), and a client that goes away frees its slot.
In-process, over a real ModelManager and onnxruntime (Starlette's test client): hot-reload
resubmission, coalescing, the request deadline and the drain's refusal of new requests.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import warnings
from pathlib import Path

import httpx
import openai
import pytest
from servers import serve_bentoml, tail

# the tiny char LSTM of tests/assets (scripts/make_test_assets.py): no torch needed here
CHAR = Path(__file__).resolve().parent / "assets" / "char-lstm.onnx"

ENDPOINTS = ["/generate", "/complete", "/v1/completions"]
STREAMING = ["/generate", "/v1/completions"]


def _body(endpoint: str, prompt: str = "ab", n: int = 900000, seed: int = 3) -> dict:
    if endpoint == "/v1/completions":
        return {"model": "char", "prompt": prompt, "max_tokens": n, "seed": seed, "stream": True}
    return {"model": "char", "prompt": prompt, "max_chars": n, "seed": seed}


def _until(cond, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return cond()


@pytest.fixture(scope="module")
def char_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("streaming") / "char.onnx"  # a copy: the hot-reload test loads it again
    path.write_bytes(CHAR.read_bytes())
    return path


# ---------------------------------------------------------------- over HTTP: stall and disconnect


@pytest.fixture(scope="module")
def server(char_file, tmp_path_factory):
    env = {"RNNOPS_MODELS": f"char={char_file}", "RNNOPS_STALL_S": "1", "RNNOPS_COALESCE_MS": "0"}
    with serve_bentoml(tmp_path_factory.mktemp("streaming-server"), env) as (proc, url, log):
        yield url, log


def _active(url: str) -> int:
    d = httpx.get(url + "/models", timeout=10).json()
    return sum(m["scheduler"]["active"] + m["scheduler"]["queued"] for m in d["models"] if m.get("scheduler"))


def _raw_post(url: str, path: str, body: dict, rcvbuf: int = 4096) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((host, int(port)))
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: "
        f"{len(payload)}\r\n\r\n".encode()
        + payload
    )
    return s


@pytest.mark.parametrize("endpoint", STREAMING)
def test_a_client_that_stops_reading_loses_its_slot(server, endpoint):
    url, log = server
    s = _raw_post(url, endpoint, _body(endpoint))  # then never reads
    try:
        assert _until(lambda: _active(url) == 1, 20), f"the stream never started\n{tail(log)}"
        assert _until(lambda: _active(url) == 0, 60, 0.5), f"the stalled stream still holds its slot\n{tail(log)}"
        assert "RNNOPS_STALL_S" in log.read_text()
    finally:
        s.close()


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_client_that_goes_away_frees_its_slot(server, endpoint):
    url, log = server
    s = _raw_post(url, endpoint, _body(endpoint), rcvbuf=1 << 20)
    try:
        assert _until(lambda: _active(url) == 1, 20), f"the stream never started\n{tail(log)}"
    finally:
        s.close()
    assert _until(lambda: _active(url) == 0, 20), f"the departed client's stream still holds its slot\n{tail(log)}"


# ---------------------------------------------------------------- in-process: reload, coalescing, deadline, drain


@pytest.fixture(scope="module")
def manager(char_file):
    from rnnops.serving.config import ServeConfig
    from rnnops.serving.http.streaming import wake_watchers
    from rnnops.serving.models import ModelManager

    cfg = ServeConfig(
        models=f"char={char_file}", poll_seconds=0, engine="thread", max_streams=2, max_queue=4, threads=1
    )
    m = ModelManager(cfg, on_step=wake_watchers)
    asyncio.run(m.start())
    yield m
    asyncio.run(m.stop())


def _client(manager, **config):
    """A test client over ``manager`` with these settings for the HTTP side (the openai SDK takes it
    as its HTTP client: a TestClient is an httpx.Client)."""
    import dataclasses

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's notice about httpx
        from starlette.testclient import TestClient

    from rnnops.serving.forecast.sessions import SessionStore
    from rnnops.serving.http.app import Serving, create_app

    serving = Serving(dataclasses.replace(manager.config, **config), manager, SessionStore())
    return serving, TestClient(create_app(serving), base_url="http://testserver")


def _oa(client) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="none", max_retries=0, http_client=client)


def _ask(client, endpoint: str, n: int = 40, seed: int = 7, stream: bool = True):
    """One request; returns (text, number of streamed events)."""
    if endpoint == "/v1/completions":
        if not stream:
            r = _oa(client).completions.create(model="char", prompt="ab", max_tokens=n, seed=seed)
            return r.choices[0].text, 1
        chunks = list(_oa(client).completions.create(model="char", prompt="ab", max_tokens=n, seed=seed, stream=True))
        return "".join(c.choices[0].text for c in chunks if c.choices), len(chunks)
    r = client.post(endpoint, json=_body(endpoint, n=n, seed=seed))
    assert r.status_code == 200, r.text
    if endpoint == "/complete":
        return r.json()["text"], 1
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.text.rstrip().splitlines()[-2] == "event: done", r.text[-300:]
    return "".join(e.get("text", "") for e in events[:-1]), len(events) - 1


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_hot_reload_racing_the_request_is_resubmitted_on_the_new_version(manager, endpoint):
    want, _ = _ask(_client(manager)[1], endpoint)  # the same request, no reload
    old = manager.current["char"]
    new = manager._load(manager.refs[0])  # the same file: a new version object, as a reload makes
    manager.current["char"] = new
    old.close()  # draining: it refuses new streams with 503 "draining"
    real_get, looked = manager.get, []

    def get(name, kind=None):  # the lookup happened just before the swap: the old version comes back once
        looked.append(name)
        return old if len(looked) == 1 else real_get(name, kind)

    manager.get = get
    try:
        text, _ = _ask(_client(manager)[1], endpoint)
    finally:
        del manager.get
    assert len(looked) == 2 and text == want  # resubmitted, same seed, same text
    assert _until(lambda: not old.scheduler.running, 10)  # the old version drained and ended


@pytest.mark.parametrize("endpoint", STREAMING)
def test_coalescing_bounds_the_event_rate(manager, endpoint):
    _, client = _client(manager, coalesce_ms=200.0)
    t0 = time.monotonic()
    text, events = _ask(client, endpoint, n=4000)
    took = time.monotonic() - t0
    assert len(text) == 4000
    assert events <= took / 0.2 + 3, (events, took)  # one event per 200 ms window at most, and the end
    _, client = _client(manager, coalesce_ms=0.0, sse_events_per_s=1e9)
    _, uncoalesced = _ask(client, endpoint, n=400)
    assert uncoalesced > 1  # without a window the same stream comes in pieces


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_the_deadline_answers_504_and_frees_the_queued_stream(manager, endpoint):
    from rnnops.serving.generate.stream import GenerationRequest

    sched = manager.current["char"].scheduler
    rt = manager.current["char"].runtime
    hogs = [sched.submit(GenerationRequest(rt.encode("ab"), 10**8)) for _ in range(sched.max_active)]
    try:
        assert _until(lambda: sched.active == sched.max_active, 10)
        _, client = _client(manager, request_deadline_s=1.0)
        t0 = time.monotonic()
        if endpoint == "/v1/completions":
            with pytest.raises(openai.APIStatusError) as e:
                _oa(client).completions.create(model="char", prompt="ab", max_tokens=5)
            status = e.value.status_code
        else:
            status = client.post(endpoint, json=_body(endpoint, n=5)).status_code
        assert status == 504 and 1.0 <= time.monotonic() - t0 < 5
        assert _until(lambda: sched.queued == 0, 5)  # the waiting stream left the queue
    finally:
        for h in hogs:
            h.cancel()
    assert _until(lambda: sched.active == 0, 10)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_draining_refuses_new_requests_and_lets_the_ones_in_flight_finish(manager, endpoint):
    serving, client = _client(manager, max_chars=20000)
    got: dict = {}
    flight = threading.Thread(target=lambda: got.update(text=_ask(client, endpoint, n=20000)[0]))
    flight.start()
    assert _until(lambda: manager.current["char"].scheduler.active == 1, 10)
    serving.draining = True  # what SIGTERM sets (serving/drain.py)
    if endpoint == "/v1/completions":
        with pytest.raises(openai.APIStatusError) as e:
            _oa(client).completions.create(model="char", prompt="ab", max_tokens=5)
        r = e.value.response
    else:
        r = client.post(endpoint, json=_body(endpoint, n=5))
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "draining" in r.text
    flight.join(30)
    assert len(got.get("text", "")) == 20000  # the stream in flight finished, whole


def test_the_openai_limits_are_settings(manager):
    _, client = _client(manager, openai_max_n=2, openai_max_prompts=2)
    oa = _oa(client)
    with pytest.raises(openai.BadRequestError, match="RNNOPS_OPENAI_MAX_N") as e:
        oa.completions.create(model="char", prompt="ab", max_tokens=3, n=3)
    assert e.value.param == "n"
    with pytest.raises(openai.BadRequestError, match="RNNOPS_OPENAI_MAX_PROMPTS") as e:
        oa.completions.create(model="char", prompt=["ab", "ba", "aa"], max_tokens=3)
    assert e.value.param == "prompt"
    r = oa.completions.create(model="char", prompt=["ab", "ba"], max_tokens=3, n=2, seed=1)
    assert len(r.choices) == 4  # at the limits: served
    with pytest.raises(openai.NotFoundError, match="not a served name"):
        oa.completions.create(model="char@", prompt="ab", max_tokens=3)
