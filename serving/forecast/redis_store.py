"""Forecast sessions in Redis (``RNNOPS_SESSION_STORE=redis://host:6379/0``): any worker or
replica continues any session, and a session outlives the worker that opened it.

A recurrent model's session is small (its state is a few kilobytes, a windowed model's tail a
few more), so each update reads the whole session, applies the observations and writes it back:

- one Redis hash per session, ``rnnops:session:<id>``: a JSON ``meta`` field (model, version,
  counters, the dtype and shape of each array) and one field of raw bytes per array (the state
  tensors as the model's ``rnnops.state`` describes them, the window tail, the timestamps, the
  last forecast; a panel session's series: its last lookback steps and covariates). The idle TTL
  is the key's Redis expiry, renewed on every use;
- updates of one session are serialised by a per-session Redis lock (``SET NX PX``, released
  only by its holder; it expires on its own if a worker dies holding it): read, apply, write,
  release. An update is applied exactly once or, if its worker dies before the write, not at
  all (and the client, which got no answer, retries);
- the open sessions are counted in a sorted set of ids scored by expiry time (the cap and the
  gauge), trimmed of expired ids as it is read.

A session is pinned to the model version that opened it: a worker that does not have that
version loaded answers 409 and the client opens a new session.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnops.errors import RnnopsError
from rnnops.serving.errors import Overloaded, SessionModelGone, UnknownSession
from rnnops.serving.forecast.sessions import ForecastSession, PanelSeries, sessions_full

if TYPE_CHECKING:
    from rnnops.serving.metrics import Metrics
    from rnnops.serving.models import LoadedModel, ModelManager

PREFIX = "rnnops:session:"
INDEX = "rnnops:sessions"


def encode(sess: ForecastSession, state_arrays: tuple[np.ndarray, ...] | None) -> dict[str, bytes]:
    arrays: dict[str, np.ndarray] = {"window": sess.window, "timestamps": sess.timestamps}
    if state_arrays is not None:
        arrays.update({f"state{k}": a for k, a in enumerate(state_arrays)})
    if sess.last_forecast is not None:
        arrays["last_forecast"] = sess.last_forecast
    if sess.last_quantiles is not None:
        arrays["last_quantiles"] = sess.last_quantiles
    p = sess.panel
    if p is not None:
        arrays.update({"p:timestamps": p.timestamps, "p:context": p.context, "p:future": p.future})
        for role, columns in (("past", p.past), ("known", p.known), ("ahead", p.ahead)):
            arrays.update({f"p:{role}:{name}": v for name, v in columns.items()})
    meta: dict[str, Any] = {
        "model": sess.model.name,
        "version": sess.model.version,
        "freq": sess.freq,
        "observations": sess.observations,
        "created": sess.created_wall,
        "stateful": sess.stateful,
        "n_state": 0 if state_arrays is None else len(state_arrays),
        "arrays": {k: [str(a.dtype), list(a.shape)] for k, a in arrays.items()},
    }
    if p is not None:
        meta["panel"] = {"id": p.id, "static": dict(p.static), "start": p.start, "warnings": list(sess.warnings)}
    out = {"meta": json.dumps(meta).encode()}
    out.update({f"a:{k}": np.ascontiguousarray(a).tobytes() for k, a in arrays.items()})
    return out


def decode(sid: str, fields: dict[bytes, bytes], model: LoadedModel) -> ForecastSession:
    meta = json.loads(fields[b"meta"])
    arrays = {
        k: np.frombuffer(fields[f"a:{k}".encode()], dtype=dt).reshape(shape).copy()
        for k, (dt, shape) in meta["arrays"].items()
    }
    sess = ForecastSession(model, sid, meta["freq"])
    sess.window = arrays["window"]
    sess.timestamps = arrays["timestamps"]
    sess.observations = int(meta["observations"])
    sess.last_forecast = arrays.get("last_forecast")
    sess.last_quantiles = arrays.get("last_quantiles")
    sess.created_wall = float(meta["created"])
    if "panel" in meta:
        pm = meta["panel"]

        def role(name: str) -> dict[str, np.ndarray]:
            return {k.split(":", 2)[2]: v for k, v in arrays.items() if k.startswith(f"p:{name}:")}

        sess.panel = PanelSeries(
            id=pm["id"],
            static=pm["static"],
            timestamps=arrays["p:timestamps"],
            context=arrays["p:context"],
            past=role("past"),
            known=role("known"),
            ahead=role("ahead"),
            start=pm["start"],
            future=arrays["p:future"],
        )
        sess.warnings = tuple(pm["warnings"])
    if meta["n_state"]:
        rt = model.runtime
        sess.state = tuple(rt.to_device(arrays[f"state{k}"]) for k in range(meta["n_state"]))
    sess.created = sess.last_used = time.monotonic()
    return sess


class RedisSessionStore:
    """The session store's API (see :class:`~rnnops.serving.forecast.sessions.SessionStore`) on Redis."""

    shared = True

    def __init__(
        self,
        url: str,
        models: ModelManager,
        max_sessions: int = 1024,
        ttl_s: float = 600.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        lock_s: float = 30.0,
    ) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise RnnopsError("RNNOPS_SESSION_STORE=redis://... needs the redis client: pip install redis") from None
        self.url = url
        self.redis = aioredis.from_url(url)
        self.models = models  # the ModelManager: a session's model version is looked up there
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        # wall-clock seconds, shared by the replicas: the index's expiry scores (tests pass one they
        # move). A session's own expiry is its key's, on the Redis server's clock.
        self.clock = clock
        self.lock_s = lock_s  # RNNOPS_SESSION_LOCK_S: the longest wait for, and hold of, a session's lock
        self._metrics = metrics
        self._open = 0  # as last counted (len() must not block)
        self.expired = 0

    def __len__(self) -> int:
        return self._open

    async def count(self) -> int:
        async with self.redis.pipeline(transaction=True) as p:
            p.zremrangebyscore(INDEX, "-inf", self.clock())
            p.zcard(INDEX)
            _, n = await p.execute()
        self._open = int(n)
        return self._open

    async def _touch(self, p: Any, sid: str) -> None:  # p: a redis pipeline (the client is untyped)
        p.expire(PREFIX + sid, int(max(1, self.ttl_s)))
        p.zadd(INDEX, {sid: self.clock() + self.ttl_s})

    def _state(self, sess: ForecastSession) -> tuple[np.ndarray, ...] | None:
        if sess.state is None:
            return None
        return tuple(np.asarray(a) for a in sess.model.runtime.state_numpy(sess.state))

    async def save(self, sess: ForecastSession) -> None:
        async with self.redis.pipeline(transaction=True) as p:
            p.hset(PREFIX + sess.id, mapping=encode(sess, self._state(sess)))
            await self._touch(p, sess.id)
            await p.execute()

    async def open(self, model: LoadedModel, freq: str | None = None, session_id: str | None = None) -> ForecastSession:
        if await self.count() >= self.max_sessions:
            raise sessions_full(self._open, self.max_sessions, self.ttl_s, model.name, self._metrics)
        sess = ForecastSession(model, session_id or secrets.token_hex(12), freq)
        await self.save(sess)
        return sess

    async def get(self, sid: str) -> ForecastSession:
        fields = await self.redis.hgetall(PREFIX + sid)
        if not fields:
            raise UnknownSession(sid)
        meta = json.loads(fields[b"meta"])
        model = self.models.version_of(meta["model"], str(meta["version"]))
        if model is None:
            raise SessionModelGone(
                f"session {sid!r} was opened on {meta['model']} version {meta['version']}, which "
                "this server no longer serves; open a new session (POST /sessions)"
            )
        async with self.redis.pipeline(transaction=True) as p:
            await self._touch(p, sid)
            await p.execute()
        return decode(sid, fields, model)

    async def read(self, sid: str) -> ForecastSession:
        """The session as last saved (no lock: a read never blocks an update)."""
        return await self.get(sid)

    @asynccontextmanager
    async def updating(self, sid: str) -> AsyncIterator[ForecastSession]:
        """The session, exclusively (across every worker and replica), saved when the block ends
        without an error."""
        lock = self.redis.lock(f"rnnops:lock:{sid}", timeout=self.lock_s, blocking_timeout=self.lock_s)
        if not await lock.acquire():
            raise Overloaded(
                "session_busy",
                f"session {sid!r} is being updated elsewhere (waited RNNOPS_SESSION_LOCK_S={self.lock_s:g}s); retry",
                1,
                status=503,
            )
        try:
            sess = await self.get(sid)
            yield sess
            await self.save(sess)
        finally:
            try:
                await lock.release()
            except Exception:  # expired under a very slow update: the next holder has it now
                pass

    async def close(self, sid: str) -> ForecastSession:
        sess = await self.get(sid)
        async with self.redis.pipeline(transaction=True) as p:
            p.delete(PREFIX + sid)
            p.zrem(INDEX, sid)
            await p.execute()
        return sess

    async def sweep(self) -> int:
        before = self._open
        n = await self.count()
        return max(0, before - n)

    async def aclose(self) -> None:
        await self.redis.aclose()
