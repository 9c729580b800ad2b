"""Forecast sessions in Redis (RNNOPS_SESSION_STORE=redis://...): a real ``redis-server`` and two
``bentoml serve`` replicas. Any replica continues any session, a session survives the restart
of the replica that opened it, concurrent updates are applied exactly once each, and the idle
TTL is the key's Redis expiry."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")
redis = pytest.importorskip("redis")

from servers import serve_bentoml, start_redis  # noqa: E402
from test_runtime import export_forecaster  # noqa: E402

TTL = 60


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("redis-sessions")
    export_forecaster(root / "stateful.onnx", norm="fixed", lookback=12, horizon=4)
    export_forecaster(root / "windowed.onnx", norm="revin", lookback=12, horizon=4)
    with start_redis(root / "redis") as r:
        env = {
            "RNNOPS_MODELS": f"fc={root / 'stateful.onnx'},fcw={root / 'windowed.onnx'}",
            "RNNOPS_SESSION_STORE": r.url,
            "RNNOPS_SESSION_TTL": str(TTL),
        }
        with serve_bentoml(root, env, "a") as a, serve_bentoml(root, env, "b") as b:
            yield root, r, env, a, b


def _rows(n: int, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(n, 3)).round(4).tolist()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["fc", "fcw"])
def test_any_replica_continues_any_session(setup, model):
    _, r, _, (_, a, _), (_, b, _) = setup
    rows = _rows(30)
    s = httpx.post(a + "/sessions", json={"model": model, "context": rows[:10]}).json()
    sid = s["session_id"]
    u = httpx.post(b + f"/sessions/{sid}", json={"observations": rows[10:20]}).json()
    u = httpx.post(a + f"/sessions/{sid}", json={"observations": rows[20:]}).json()
    assert u["observations"] == 30
    whole = httpx.post(b + "/forecast", json={"model": model, "context": rows}).json()["forecast"]
    np.testing.assert_allclose(u["forecast"], whole, atol=1e-5)
    assert httpx.get(b + f"/sessions/{sid}").json()["observations"] == 30
    ttl = redis.Redis.from_url(r.url).ttl(f"rnnops:session:{sid}")
    assert 0 < ttl <= TTL  # the idle TTL is the key's Redis expiry
    assert httpx.delete(a + f"/sessions/{sid}").status_code == 200
    assert httpx.get(b + f"/sessions/{sid}").status_code == 404


@pytest.mark.slow
def test_concurrent_updates_are_applied_exactly_once_each(setup):
    _, _, _, (_, a, _), (_, b, _) = setup
    rows = _rows(41, seed=1)
    sid = httpx.post(a + "/sessions", json={"model": "fc", "context": rows[:1]}).json()["session_id"]

    async def race():
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(
                *(c.post((a, b)[i % 2] + f"/sessions/{sid}", json={"observations": [rows[1 + i]]}) for i in range(40))
            )

    answers = asyncio.run(race())
    assert all(x.status_code == 200 for x in answers), [x.text for x in answers if x.status_code != 200][:3]
    seen = sorted(x.json()["observations"] for x in answers)
    assert seen == list(range(2, 42))  # each update saw a distinct count: serialised, none lost or doubled
    assert httpx.get(b + f"/sessions/{sid}").json()["observations"] == 41


@pytest.mark.slow
def test_a_session_survives_the_restart_of_the_replica_that_opened_it(setup):
    root, _, env, _, (_, b, _) = setup
    rows = _rows(20, seed=2)
    with serve_bentoml(root, env, "c") as (_, c, _):
        sid = httpx.post(c + "/sessions", json={"model": "fc", "context": rows[:10]}).json()["session_id"]
    # c is gone (stopped, its memory with it); b and a new c both continue the session
    u = httpx.post(b + f"/sessions/{sid}", json={"observations": rows[10:15]}).json()
    with serve_bentoml(root, env, "c2") as (_, c2, _):
        u = httpx.post(c2 + f"/sessions/{sid}", json={"observations": rows[15:]}).json()
    assert u["observations"] == 20
    whole = httpx.post(b + "/forecast", json={"model": "fc", "context": rows}).json()["forecast"]
    np.testing.assert_allclose(u["forecast"], whole, atol=1e-5)


# ---------------------------------------------------------------- in process: the store on a real Redis


@pytest.fixture(scope="module")
def redis_store_parts(tmp_path_factory):
    from test_sessions import BANDED

    from rnnops.serving.config import ServeConfig
    from rnnops.serving.models import ModelManager

    root = tmp_path_factory.mktemp("redis-store")
    manager = ModelManager(ServeConfig(models=f"fcq={BANDED}", poll_seconds=0))
    asyncio.run(manager.start())
    with start_redis(root / "redis") as r:
        yield r, manager
    asyncio.run(manager.stop())


def test_redis_sessions_are_stepped_together_and_keep_their_quantiles(redis_store_parts):
    from rnnops.serving.forecast.redis_store import RedisSessionStore

    r, manager = redis_store_parts
    m = manager.get("fcq", "forecaster")
    rows = np.random.default_rng(3).normal(size=(8, 1, 3)).astype(np.float32)

    async def go():
        store = RedisSessionStore(r.url, manager, ttl_s=TTL)
        ids = [(await store.open(m)).id for _ in rows]
        inside, ready = [], asyncio.Event()

        async def update(sid, x):
            async def apply(sess):  # after the read (a Redis round trip, in any order)
                inside.append(sid)
                if len(inside) == len(ids):
                    ready.set()
                await ready.wait()  # every update has read its session: they reach the stepper together
                return await sess.observe(x)

            await store.update(sid, apply)
            return await store.read(sid)  # as saved

        before = m.stepper.calls
        try:
            return await asyncio.gather(*(update(s, x) for s, x in zip(ids, rows))), m.stepper.calls - before
        finally:
            await store.aclose()

    saved, calls = asyncio.run(go())
    assert calls == 1  # eight sessions, one runtime call
    for sess, x in zip(saved, rows):
        alone = m.runtime.run(x[None])
        assert sess.observations == 1
        np.testing.assert_array_equal(sess.last_forecast, alone.output[0])
        np.testing.assert_array_equal(sess.last_quantiles, alone.quantiles[0])


def test_the_redis_index_expires_on_the_stores_clock_and_the_key_on_redis(redis_store_parts):
    from test_sessions import FakeClock

    from rnnops.serving.errors import Overloaded
    from rnnops.serving.forecast.redis_store import RedisSessionStore

    r, manager = redis_store_parts
    m = manager.get("fcq", "forecaster")
    clock = FakeClock()

    async def go():
        store = RedisSessionStore(r.url, manager, max_sessions=1, ttl_s=30, clock=clock)
        try:
            await store.redis.delete("rnnops:sessions")  # this test's sessions only
            sid = (await store.open(m)).id
            ttl_ms = await store.redis.pttl(f"rnnops:session:{sid}")
            with pytest.raises(Overloaded, match="RNNOPS_MAX_SESSIONS"):
                await store.open(m)  # the cap counts it
            clock.now += 31  # idle past the TTL on the store's clock: the index lets it go
            assert await store.count() == 0
            await store.open(m)
            return ttl_ms
        finally:
            await store.aclose()

    ttl_ms = asyncio.run(go())
    assert 0 < ttl_ms <= 30_000  # the key's own expiry is Redis' (renewed on every use)


def test_a_write_that_lost_the_race_is_applied_again_to_the_winners_session(redis_store_parts):
    """Optimistic concurrency: two stores (two workers) update one session; the first reads it,
    the second reads, applies and saves before the first writes. The first's write is refused
    (the session's write version moved), so it reads again and applies its update to what the
    second saved: both updates applied once each, in the order they were saved."""
    from rnnops.serving.forecast.redis_store import RedisSessionStore

    r, manager = redis_store_parts
    m = manager.get("fcq", "forecaster")
    x1, x2 = np.random.default_rng(4).normal(size=(2, 1, 3)).astype(np.float32)

    async def go():
        a, b = RedisSessionStore(r.url, manager, ttl_s=TTL), RedisSessionStore(r.url, manager, ttl_s=TTL)
        try:
            sid = (await a.open(m)).id
            read, other_saved, seen = asyncio.Event(), asyncio.Event(), []

            async def slow(sess):
                seen.append(sess.observations)
                if len(seen) == 1:
                    read.set()
                    await other_saved.wait()  # b saves between this read and this write
                return await sess.observe(x1)

            first = asyncio.create_task(a.update(sid, slow))
            await read.wait()
            await b.update(sid, lambda sess: sess.observe(x2))
            other_saved.set()
            sess, _ = await first
            return seen, a.conflicts, sess, await b.read(sid)
        finally:
            await a.aclose()
            await b.aclose()

    seen, conflicts, sess, saved = asyncio.run(go())
    assert seen == [0, 1] and conflicts == 1  # the retry read b's update
    assert sess.observations == saved.observations == 2
    both = m.runtime.run(np.concatenate([x2, x1])[None])  # x2 (b's), then x1 (a's), from the zero state
    np.testing.assert_allclose(saved.last_forecast, both.output[0], atol=1e-5)


def test_a_key_the_store_did_not_write_is_a_clear_409(redis_store_parts):
    from rnnops.serving.errors import SessionModelGone
    from rnnops.serving.forecast.redis_store import PREFIX, RedisSessionStore

    r, manager = redis_store_parts
    client = redis.Redis.from_url(r.url)
    client.hset(PREFIX + "old-hash", mapping={"meta": b"{}", "a:window": b""})  # an older rnnops' session
    client.set(PREFIX + "junk", b"not a session")

    async def go():
        store = RedisSessionStore(r.url, manager, ttl_s=TTL)
        errors = []
        try:
            for sid in ("old-hash", "junk"):
                for call in (
                    store.read(sid),
                    store.update(sid, lambda sess: sess.observe(np.zeros((1, 3), np.float32))),
                ):
                    with pytest.raises(SessionModelGone) as exc:
                        await call
                    errors.append(str(exc.value))
            return errors
        finally:
            await store.aclose()

    for message in asyncio.run(go()):
        assert "was not written by this server's session store" in message and "open the session again" in message
    assert client.type(PREFIX + "old-hash") == b"hash"  # left as it was


def test_an_update_saves_after_redis_forgot_the_write_script(redis_store_parts):
    """EVALSHA of a script a restarted (or flushed) Redis does not hold: the store loads it and saves."""
    from rnnops.serving.forecast.redis_store import RedisSessionStore

    r, manager = redis_store_parts
    m = manager.get("fcq", "forecaster")
    x = np.ones((1, 3), np.float32)

    async def go():
        store = RedisSessionStore(r.url, manager, ttl_s=TTL)
        try:
            sid = (await store.open(m)).id
            await store.update(sid, lambda sess: sess.observe(x))
            await store.redis.script_flush()
            await store.update(sid, lambda sess: sess.observe(x))
            return (await store.read(sid)).observations
        finally:
            await store.aclose()

    assert asyncio.run(go()) == 2
