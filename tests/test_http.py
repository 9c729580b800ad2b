"""The HTTP layer alone: handlers driven by Starlette's test client over a real ModelManager that
serves real ONNX files (no BentoML process), and the one time system seen from every path:
the same history gives the same future timestamps over /forecast, in a session and in a batch
job (`rnnops forecast`), for hourly, daily, business-day, weekly and monthly series."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import warnings

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("torch")

from test_runtime import export_forecaster  # noqa: E402

LOOKBACK, HORIZON = 12, 4
FREQS = ["h", "D", "B", "W-SUN", "W-MON", "MS", "ME"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    windowed, _ = export_forecaster(root / "windowed.onnx", norm="revin", lookback=LOOKBACK, horizon=HORIZON)
    stateful, _ = export_forecaster(root / "stateful.onnx", norm="fixed", lookback=LOOKBACK, horizon=HORIZON, freq=None)
    return root, windowed, stateful


@pytest.fixture(scope="module")
def client(files):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's notice about httpx
        from starlette.testclient import TestClient

    from rnnops.serving.config import ServeConfig
    from rnnops.serving.forecast.sessions import SessionStore
    from rnnops.serving.http.app import Serving, create_app
    from rnnops.serving.models import ModelManager

    _, windowed, stateful = files
    cfg = ServeConfig(models=f"windowed={windowed},stateful={stateful}", poll_seconds=0)
    manager = ModelManager(cfg)
    asyncio.run(manager.start())
    with TestClient(create_app(Serving(cfg, manager, SessionStore()))) as c:
        yield c
    asyncio.run(manager.stop())


def _series(freq: str, n: int = LOOKBACK + 8, seed: int = 0):
    dates = pd.date_range("2024-01-01", periods=n, freq=freq)
    rows = np.random.default_rng(seed).normal(size=(n, 3)).round(4)
    return dates, rows


def _iso(dates) -> list[str]:
    return [d.strftime("%Y-%m-%dT%H:%M:%S") for d in dates]


def _want(dates, freq: str) -> list[str]:
    return _iso(pd.date_range(dates[-1], periods=HORIZON + 1, freq=freq)[1:])


@pytest.mark.parametrize("freq", FREQS)
def test_forecast_and_session_continue_the_calendar(client, freq):
    dates, rows = _series(freq)
    want = _want(dates, freq)
    for model in ("windowed", "stateful"):
        r = client.post("/forecast", json={"model": model, "context": rows.tolist(), "timestamps": _iso(dates)})
        assert r.status_code == 200, r.text
        assert r.json()["timestamps"] == want, (model, freq)
    # a session fed the same history in three pieces ends with the same timestamps
    s = client.post(
        "/sessions", json={"model": "stateful", "context": rows[:5].tolist(), "timestamps": _iso(dates[:5])}
    ).json()
    sid = s["session_id"]
    client.post(f"/sessions/{sid}", json={"observations": rows[5:9].tolist(), "timestamps": _iso(dates[5:9])})
    u = client.post(f"/sessions/{sid}", json={"observations": rows[9:].tolist(), "timestamps": _iso(dates[9:])})
    assert u.status_code == 200, u.text
    assert u.json()["timestamps"] == want
    assert client.delete(f"/sessions/{sid}").status_code == 200


def test_the_batch_job_gives_the_same_timestamps(client, files, tmp_path):
    root, windowed, _ = files
    frames, http = [], {}
    for k, freq in enumerate(FREQS):
        dates, rows = _series(freq, seed=k)
        frames.append(
            pd.DataFrame({"id": freq, "date": _iso(dates), "a": rows[:, 0], "b": rows[:, 1], "OT": rows[:, 2]})
        )
        r = client.post("/forecast", json={"model": "windowed", "context": rows.tolist(), "timestamps": _iso(dates)})
        http[freq] = r.json()["timestamps"]
    data = tmp_path / "series.csv"
    pd.concat(frames).to_csv(data, index=False)
    out = tmp_path / "out.csv"
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "from rnnops.cli import main; main()",
            "forecast",
            "--model",
            str(windowed),
            "--input",
            str(data),
            "--output",
            str(out),
            "--id-column",
            "id",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    got = pd.read_csv(out)
    for freq in FREQS:
        rows = got[got["id"] == freq].sort_values("step")
        batch = [pd.Timestamp(t).strftime("%Y-%m-%dT%H:%M:%S") for t in rows["date"]]
        assert batch == http[freq], freq


def test_irregular_timestamps_get_a_clear_error_and_freq_is_the_way_out(client):
    dates, rows = _series("h")
    bad = list(dates[:-1]) + [dates[-1] + pd.Timedelta(minutes=17)]
    r = client.post("/forecast", json={"model": "windowed", "context": rows.tolist(), "timestamps": _iso(bad)})
    assert r.status_code == 400 and r.json()["field"] == "timestamps"
    assert "irregular" in r.json()["error"] and "freq" in r.json()["error"]
    # two month starts cannot tell the frequency (31 days apart is not "monthly" yet): freq says it
    two = pd.date_range("2024-01-01", periods=2, freq="MS")
    body = {"model": "stateful", "context": rows[:2].tolist(), "timestamps": _iso(two)}
    assert client.post("/forecast", json=body).json()["timestamps"][0] == "2024-03-03T00:00:00"  # 31 days on
    r = client.post("/forecast", json={**body, "freq": "MS"})
    assert r.status_code == 200 and r.json()["timestamps"] == _want(two, "MS")
    r = client.post("/forecast", json={**body, "freq": "fortnightly"})
    assert r.status_code == 400 and "not a pandas frequency" in r.json()["error"]
    # a session refuses an irregular update before applying it: nothing is lost
    s = client.post(
        "/sessions", json={"model": "stateful", "context": rows[:5].tolist(), "timestamps": _iso(dates[:5])}
    ).json()
    late = _iso([dates[5] + pd.Timedelta(minutes=5)])
    r = client.post(f"/sessions/{s['session_id']}", json={"observations": rows[5:6].tolist(), "timestamps": late})
    assert r.status_code == 400 and "irregular" in r.json()["error"]
    assert client.get(f"/sessions/{s['session_id']}").json()["observations"] == 5


def test_fast_path_body_is_the_pydantic_model_with_every_field():
    import orjson

    from rnnops.serving.http.forecast import _fast_forecast_body
    from rnnops.serving.http.schemas import ForecastBody

    body = _fast_forecast_body(orjson.dumps({"context": [[1.0, 2.0, 3.0]], "freq": "MS"}))
    assert isinstance(body, ForecastBody) and body.freq == "MS" and body.context.shape == (1, 3)
    assert set(body.model_dump()) == set(ForecastBody.model_fields)  # a new field arrives with its default
    assert _fast_forecast_body(orjson.dumps({"context": [[1.0]], "freq": 3})) is None  # pydantic's rules


def test_the_app_answers_503_until_its_worker_hands_it_the_state():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from rnnops.serving.http.app import create_app

    with TestClient(create_app()) as c:
        r = c.post("/forecast", json={"context": [[1.0]]})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1" and r.json()["type"] == "not_ready"


def test_a_stream_whose_client_stopped_reading_is_cancelled_after_the_stall_bound():
    from rnnops.serving.generate.stream import GenerationRequest, Stream
    from rnnops.serving.http.generate import SSEResponse

    stream = Stream(GenerationRequest(np.array([1]), 10))

    async def events():
        try:
            while True:
                yield "event: chunk\ndata: {}\n\n"
        finally:
            events.closed = True

    async def scenario():
        sent = []
        blocked = asyncio.Event()

        async def send(message):  # the socket's buffers are full after three messages
            sent.append(message)
            if len(sent) > 3:
                await blocked.wait()

        async def receive():
            await asyncio.sleep(3600)

        scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
        t0 = asyncio.get_running_loop().time()
        await SSEResponse(events(), stream, stall_s=0.2)(scope, receive, send)
        return asyncio.get_running_loop().time() - t0, sent

    took, sent = asyncio.run(scenario())
    assert 0.2 <= took < 2 and len(sent) == 4
    assert stream.cancelled and events.closed  # the slot is freed at the next step; the generator ran its finally
