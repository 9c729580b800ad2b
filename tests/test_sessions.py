"""The one session path, in process over a real ModelManager and onnxruntime (no BentoML process):
concurrent updates of many sessions are stepped in one runtime call, each row as it would be
alone; ``/sessions`` and OIP sequences both return the quantiles of a model with prediction
intervals; the store's idle TTL runs on an injected clock (no sleeps).

A fast serving test (conftest.FAST): no torch, the tiny stateful forecaster with intervals of
tests/assets/ (scripts/make_test_assets.py).
"""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import numpy as np
import pytest

from rnnops.serving.config import ServeConfig
from rnnops.serving.errors import UnknownSession
from rnnops.serving.forecast.sessions import SessionStore
from rnnops.serving.models import ModelManager

BANDED = Path(__file__).resolve().parent / "assets" / "forecaster-bands.onnx"  # stateful GRU, 3 features
LEVELS = [0.1, 0.5, 0.9]
HORIZON = 4


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def manager():
    cfg = ServeConfig(models=f"fc={BANDED}", poll_seconds=0)
    m = ModelManager(cfg)
    asyncio.run(m.start())
    yield m
    asyncio.run(m.stop())


def _rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


def test_concurrent_updates_of_many_sessions_share_one_runtime_call(manager):
    m = manager.get("fc", "forecaster")
    rt = m.runtime
    calls: list[int] = []
    run = rt.run

    def counting(inputs, *args, **kwargs):  # the real runtime, counted
        calls.append(len(inputs))
        return run(inputs, *args, **kwargs)

    rows = _rows(16)

    async def go():
        store = SessionStore()
        sessions = [await store.open(m) for _ in range(16)]

        async def update(s, r):
            async with store.updating(s.id) as sess:
                return await sess.observe(r)

        rt.run = counting
        try:
            ys = await asyncio.gather(*(update(s, rows[k : k + 1]) for k, s in enumerate(sessions)))
        finally:
            del rt.run
        return sessions, ys

    steps_before = m.stepper.calls
    sessions, ys = asyncio.run(go())
    assert calls == [16]  # sixteen sessions, one call
    assert m.stepper.calls == steps_before + 1 and m.describe()["session_steps"]["updates"] >= 16
    for k, (s, y) in enumerate(zip(sessions, ys)):
        alone = rt.run(rows[k : k + 1][None])  # batch invariance: each row as it is alone, bit for bit
        assert np.array_equal(y, alone.output[0]) and np.array_equal(s.last_quantiles, alone.quantiles[0])
        assert s.observations == 1 and rt.batch_of(s.state) == 1


def test_a_failed_step_leaves_the_session_as_it_was(manager):
    m = manager.get("fc", "forecaster")

    async def go():
        store = SessionStore()
        s = await store.open(m)
        async with store.updating(s.id) as sess:
            y = await sess.observe(_rows(3))
        state = m.runtime.state_numpy(sess.state)[0].copy()
        with pytest.raises(ValueError, match="windows must be"):  # the runtime's message, from the step's thread
            async with store.updating(s.id) as sess:
                await sess.observe(np.zeros((1, 4), np.float32))  # one value too many per row
        assert sess.observations == 3 and np.array_equal(sess.last_forecast, y)
        assert np.array_equal(m.runtime.state_numpy(sess.state)[0], state)

    asyncio.run(go())


def test_a_session_keeps_its_version_after_the_version_is_reaped():
    """A hot reload reaps the old version (its stepper closed) while sessions pinned to it are
    still open: their next update is answered, the same as before (the soak test's reload once
    made it 'cannot schedule new futures after shutdown', a 500)."""
    cfg = ServeConfig(models=f"fc={BANDED}", poll_seconds=0)
    mgr = ModelManager(cfg)

    async def go():
        await mgr.start()
        try:
            m = mgr.get("fc", "forecaster")
            store = SessionStore()
            a, b = await store.open(m), await store.open(m)
            for s in (a, b):
                async with store.updating(s.id) as sess:
                    await sess.observe(_rows(3))
            async with store.updating(a.id) as sess:
                want = await sess.observe(_rows(1, seed=5))
            m.stop()  # what _reap does to a drained version
            async with store.updating(b.id) as sess:
                got = await sess.observe(_rows(1, seed=5))
            np.testing.assert_array_equal(got, want)
            assert sess.last_quantiles is not None
        finally:
            await mgr.stop()

    asyncio.run(go())


def test_sessions_and_oip_sequences_give_the_quantiles(manager):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's notice about httpx
        from starlette.testclient import TestClient

    from rnnops.serving.http.app import Serving, create_app

    m = manager.get("fc", "forecaster")
    rows = _rows(10, seed=1)
    want = m.runtime.run(rows[None])
    with TestClient(create_app(Serving(manager.config, manager, SessionStore()))) as c:
        opened = c.post("/sessions", json={"model": "fc", "context": rows[:6].tolist()}).json()
        upd = c.post(f"/sessions/{opened['session_id']}", json={"observations": rows[6:].tolist()}).json()
        np.testing.assert_allclose(upd["forecast"], want.output[0], rtol=1e-5, atol=1e-5)
        assert set(upd["quantiles"]) == {"0.1", "0.5", "0.9"}
        np.testing.assert_allclose(upd["quantiles"]["0.9"], want.quantiles[0, ..., 2], rtol=1e-5, atol=1e-5)
        assert (np.array(upd["quantiles"]["0.1"]) < np.array(upd["quantiles"]["0.9"])).all()

        meta = c.get("/v2/models/fc").json()
        assert {"name": "quantiles", "datatype": "FP32", "shape": [-1, HORIZON, 1, 3]} in meta["outputs"]
        assert meta["parameters"]["quantiles"] == LEVELS
        for i, chunk in enumerate((rows[:6], rows[6:])):
            body = {
                "inputs": [
                    {"name": "x", "shape": [1, len(chunk), 3], "datatype": "FP32", "data": chunk.ravel().tolist()}
                ],
                "parameters": {"sequence_id": 5, "sequence_start": i == 0},
            }
            r = c.post("/v2/models/fc/infer", json=body)
            assert r.status_code == 200, r.text
        out = {o["name"]: o for o in r.json()["outputs"]}
        assert out["quantiles"]["shape"] == [1, HORIZON, 1, 3]
        np.testing.assert_allclose(
            np.reshape(out["quantiles"]["data"], (HORIZON, 1, 3)), want.quantiles[0], rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(
            np.reshape(out["forecast"]["data"], (HORIZON, 1)), want.output[0], rtol=1e-5, atol=1e-5
        )


def test_the_memory_store_expires_idle_sessions_on_its_clock(manager):
    m = manager.get("fc", "forecaster")
    clock = FakeClock()

    async def go():
        store = SessionStore(max_sessions=2, ttl_s=10, clock=clock)
        a = await store.open(m)
        clock.now += 6
        b = await store.open(m)
        clock.now += 6  # a idle 12 s (expired), b 6 s
        async with store.updating(b.id):  # a use renews b
            pass
        with pytest.raises(UnknownSession):
            await store.read(a.id)
        assert len(store) == 1 and store.expired == 1
        clock.now += 10.5
        assert await store.sweep() == 1 and len(store) == 0

    asyncio.run(go())


def test_one_runtime_call_gives_the_quantiles_with_iobinding_and_in_chunks(manager):
    import onnxruntime as ort

    from rnnops.serving.runtime import Runtime

    path = manager.get("fc", "forecaster").runtime.path
    plain, bound = Runtime(path), Runtime(path, iobinding="1")
    x = _rows(15, seed=2).reshape(5, 3, 3)
    a = plain.run(x)
    b = bound.run(x[:, :2])  # carried on the device between calls ...
    assert isinstance(b.state[0], ort.OrtValue)
    b = bound.run(x[:, 2:], b.state)  # ... gives what one call gives
    np.testing.assert_allclose(b.output, a.output, atol=1e-5)
    np.testing.assert_allclose(b.quantiles, a.quantiles, atol=1e-5)
    c = plain.run(x, max_batch=2)  # chunks of 2, 2, 1 (the lone row as a pair): the same bytes
    assert np.array_equal(c.output, a.output) and np.array_equal(c.quantiles, a.quantiles)
    assert np.array_equal(plain.state_numpy(c.state)[0], a.state[0])
