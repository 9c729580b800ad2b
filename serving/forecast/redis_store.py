"""Forecast sessions in Redis (``RNNOPS_SESSION_STORE=redis://host:6379/0``): any worker or
replica continues any session, and a session outlives the worker that opened it.

A recurrent model's session is small (its state is a few kilobytes, a windowed model's tail a
few more; a panel series' last lookback steps about 2 KB), so each update reads the whole
session, applies the observations and writes it back, in two Redis round trips:

- one Redis **string** per session, ``rnnops:session:<id>`` (:func:`encode`): a fixed header
  (format tag, the session's write version, the JSON's length), a small JSON of what
  varies (model and version, counters, each array's length, a panel series' statics), then the
  arrays' raw bytes one after the other. Their dtypes and trailing shapes come from the model's
  contract (``rnnops.state``, the feature and target counts, the panel contract), not from the
  key. The idle TTL is the key's Redis expiry, renewed on every use;
- **optimistic concurrency**: an update reads the key (``GETEX``, which renews its expiry in the
  same command), applies the observations in the worker, and writes the result with a Lua script
  (:data:`WRITE_IF_UNCHANGED`) only if the key's write version is still the one it read; if
  another worker wrote in between, it reads again and applies the update to what that worker
  wrote (:meth:`RedisSessionStore.update`; up to ``RNNOPS_SESSION_LOCK_S`` of retries, then 503
  ``session_busy``). An update is applied exactly once or, if its worker dies before the write,
  not at all (and the client, which got no answer, retries); nothing is locked, so a dead worker
  holds nothing up. The two commands go out in one pipeline with those of the worker's other
  updates in the same event-loop turn (:class:`Pipeliner`);
- the open sessions are counted in a sorted set of ids scored by expiry time on the store's
  clock (the cap and the gauge), renewed by the same write script and trimmed of expired ids as
  it is read.

A session is pinned to the model version that opened it: a worker that does not have that
version loaded answers 409 and the client opens a new session. A key this code did not write (an
older rnnops' hash, or anything else) is refused with a 409 that says so.
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import orjson

from rnnops.errors import RnnopsError
from rnnops.serving.errors import Overloaded, SessionModelGone, UnknownSession
from rnnops.serving.forecast.sessions import ForecastSession, PanelSeries, sessions_full

if TYPE_CHECKING:
    from rnnops.serving.metrics import Metrics
    from rnnops.serving.models import LoadedModel, ModelManager

PREFIX = "rnnops:session:"
INDEX = "rnnops:sessions"

# The key's fixed header: format tag, write version (bytes 4-11: what the write script compares),
# the JSON header's length.
MAGIC = b"RNS1"
HEAD = struct.Struct("<4sQI")

# KEYS: the session, the index. ARGV: the write version read, the new value, the TTL in ms, the
# index score (expiry on the store's clock), the session id. 1: written; 0: another write came
# first (or the session was closed or expired): read it again.
WRITE_IF_UNCHANGED = """
if redis.call('GETRANGE', KEYS[1], 4, 11) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
return 1
"""

T = TypeVar("T")


class NotASession(SessionModelGone):
    """A key under the sessions' prefix that this code did not write (409: open the session again)."""


@dataclass(frozen=True)
class Slot:
    """One array of a stored session. Its dtype and the shape after its first axis come from the
    model's contract; the key stores only the first axis' length (0 or 1 for an optional array
    of fixed shape, such as the state or the last forecast)."""

    name: str
    dtype: np.dtype
    tail: tuple[int, ...]
    per_row: int = 0  # values per first-axis step (set by __post_init__)

    def __post_init__(self) -> None:
        object.__setattr__(self, "per_row", math.prod(self.tail))

    def nbytes(self, n: int) -> int:
        return n * self.per_row * self.dtype.itemsize


F32, I64 = np.dtype(np.float32), np.dtype(np.int64)
_LAYOUTS: dict[tuple[str, str, tuple[str, ...], tuple[str, ...], bool], tuple[Slot, ...]] = {}


def slots(
    model: LoadedModel, past: tuple[str, ...] = (), future: tuple[str, ...] = (), panel: bool = False
) -> tuple[Slot, ...]:
    """The arrays of a session of ``model``, in the order the key holds them (a panel session's
    series last: its past and future covariates by name, as the header lists them). Computed
    once per model version and covariate names (every update reads and writes a session)."""
    key = (model.name, model.version, past, future, panel)
    layout = _LAYOUTS.get(key)
    if layout is None:
        if len(_LAYOUTS) > 1024:  # versions come and go in a long-lived worker
            _LAYOUTS.clear()
        layout = _LAYOUTS[key] = _layout(model, past, future, panel)
    return layout


def _layout(model: LoadedModel, past: tuple[str, ...], future: tuple[str, ...], panel: bool) -> tuple[Slot, ...]:
    info = model.runtime.info
    h, f_out = info.horizon, len(info.target_names)
    out = [Slot(f"state{k}", np.dtype(t.dtype), t.shape_for(1)) for k, t in enumerate(info.state)]
    out += [
        Slot("window", F32, (len(info.feature_names),)),
        Slot("timestamps", I64, ()),
        Slot("last_forecast", F32, (h, f_out)),
        Slot("last_quantiles", F32, (h, f_out, len(info.quantiles))),
    ]
    if panel:
        out += [Slot("p:timestamps", I64, ()), Slot("p:context", F32, ())]
        out += [Slot(f"p:past:{n}", F32, ()) for n in past]
        out += [Slot(f"p:known:{n}", F32, ()) for n in future]
        out += [Slot(f"p:ahead:{n}", F32, ()) for n in future]
        out += [Slot("p:future", I64, ())]
    return tuple(out)


def encode(sess: ForecastSession, state: tuple[np.ndarray, ...] | None, version: int) -> bytes:
    """The session as its Redis value, at write version ``version``."""

    def one(a: np.ndarray | None) -> np.ndarray | None:  # an optional array of fixed shape: 0 or 1 of it
        return None if a is None else a[None]

    n_state = len(sess.model.runtime.info.state)
    arrays: list[np.ndarray | None] = [one(a) for a in state] if state is not None else [None] * n_state
    arrays += [sess.window, sess.timestamps, one(sess.last_forecast), one(sess.last_quantiles)]
    head: dict[str, Any] = {"m": sess.model.name, "v": sess.model.version, "o": sess.observations}
    if sess.freq is not None:
        head["f"] = sess.freq
    p = sess.panel
    past: tuple[str, ...] = ()
    future: tuple[str, ...] = ()
    if p is not None:
        past, future = tuple(p.past), tuple(p.ahead)
        head.update(p=1, pc=past, fc=future, s=dict(p.static))
        if p.start is not None:
            head["st"] = p.start
        if sess.warnings:
            head["w"] = list(sess.warnings)
        arrays += [p.timestamps, p.context, *p.past.values(), *(p.known[n] for n in future), *p.ahead.values()]
        arrays.append(p.future)
    layout = slots(sess.model, past, future, panel=p is not None)
    parts, counts = [], []
    for slot, a in zip(layout, arrays, strict=True):
        if a is None:
            counts.append(0)
            continue
        a = np.ascontiguousarray(a, slot.dtype)
        if a.shape[1:] != slot.tail:  # a model whose outputs disagree with its contract: refuse to store it
            raise RnnopsError(
                f"session {sess.id!r}: {slot.name} has shape {list(a.shape)}; the contract says [n, {slot.tail}]"
            )
        counts.append(len(a))
        parts.append(a.tobytes())
    head["n"] = counts
    js = orjson.dumps(head)
    return b"".join([HEAD.pack(MAGIC, version, len(js)), js, *parts])


def read_header(sid: str, raw: bytes) -> tuple[int, dict[str, Any]]:
    """The write version and the JSON header of a stored session (a :class:`NotASession` 409 for
    bytes this code did not write)."""
    try:
        magic, version, n = HEAD.unpack_from(raw)
        if magic != MAGIC:
            raise ValueError("no session header")
        head = orjson.loads(raw[HEAD.size : HEAD.size + n])
        if not isinstance(head, dict):
            raise ValueError("the header is not an object")
        return version, head
    except (struct.error, ValueError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise _not_a_session(sid, f"its value is not a stored session ({exc})") from None


def decode(sid: str, raw: bytes, model: LoadedModel, head: dict[str, Any]) -> ForecastSession:
    """The session stored in ``raw`` (its header already read: :func:`read_header`)."""
    panel = bool(head.get("p"))
    c = model.runtime.info.panel
    past, future = tuple(head.get("pc", ())), tuple(head.get("fc", ()))
    names_ok = all(type(n) is str for n in past + future)
    if panel and (
        c is None or not names_ok or not {*past} <= {*c.past_covariates} or not {*future} <= {*c.future_covariates}
    ):
        raise _not_a_session(sid, f"its covariates are not model {model.name} version {model.version}'s")
    layout = slots(model, past, future, panel)
    counts = head.get("n")
    start = HEAD.size + HEAD.unpack_from(raw)[2]
    if not isinstance(counts, list) or len(counts) != len(layout) or any(type(n) is not int or n < 0 for n in counts):
        raise _not_a_session(sid, f"its header does not match model {model.name} version {model.version}")
    if start + sum(s.nbytes(n) for s, n in zip(layout, counts)) != len(raw):
        raise _not_a_session(sid, f"its arrays are not the size its header and model {model.name} say")
    data = bytearray(raw[start:])  # one copy: the arrays below are writable views of it
    arrays: dict[str, np.ndarray] = {}
    at = 0
    for s, n in zip(layout, counts):
        arrays[s.name] = np.frombuffer(data, s.dtype, n * s.per_row, at).reshape((n, *s.tail))
        at += s.nbytes(n)

    def one(name: str) -> np.ndarray | None:
        a = arrays[name]
        return a[0] if len(a) else None

    sess = ForecastSession(model, sid, head.get("f"))
    sess.window = arrays["window"]
    sess.timestamps = arrays["timestamps"]
    sess.observations = int(head["o"])
    sess.last_forecast = one("last_forecast")
    sess.last_quantiles = one("last_quantiles")
    if panel:
        sess.panel = PanelSeries(
            id=sid,
            static=head.get("s", {}),
            timestamps=arrays["p:timestamps"],
            context=arrays["p:context"],
            past={n: arrays[f"p:past:{n}"] for n in past},
            known={n: arrays[f"p:known:{n}"] for n in future},
            ahead={n: arrays[f"p:ahead:{n}"] for n in future},
            start=head.get("st"),
            future=arrays["p:future"],
        )
        sess.warnings = tuple(head.get("w", ()))
    state = [arrays[f"state{k}"] for k in range(len(model.runtime.info.state))]
    if state and all(len(a) for a in state):  # none stored: zeros (no rows seen yet)
        sess.state = tuple(model.runtime.to_device(a[0]) for a in state)
    return sess


def _not_a_session(sid: str, why: str) -> NotASession:
    return NotASession(
        f"session {sid!r} cannot be read: its Redis key {PREFIX + sid!r} was not written by this server's "
        f"session store ({why}; an older rnnops kept sessions as hashes); open the session again (POST /sessions) "
        "or delete the key"
    )


class Pipeliner:
    """Redis commands issued in one turn of the event loop, sent as one pipeline: one socket write
    and one read for all of them instead of one each. Under load a worker has many updates in
    flight, and redis-py spends more CPU on a command's send and reply than Redis takes to run it
    (measured: 0.25 ms of client CPU per update's two commands one by one, 0.08 ms pipelined 64 at
    a time). Each caller gets its own reply, or its own error as an exception."""

    def __init__(self, redis: Any) -> None:  # a redis.asyncio.Redis (the client is untyped)
        self.redis = redis
        self._queue: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # held until done (the loop keeps weak references)

    def call(self, *command: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if not self._queue:
            loop.call_soon(self._flush)  # after every callback ready now: the updates of this turn
        fut = loop.create_future()
        self._queue.append((command, fut))
        return fut

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.ensure_future(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as p:
                for command, _ in batch:
                    p.execute_command(*command)
                replies = await p.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed: every caller gets the error
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, fut), reply in zip(batch, replies):
            if fut.done():  # its caller was cancelled (the client went away)
                continue
            if isinstance(reply, Exception):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)


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
            from redis.exceptions import NoScriptError, ResponseError
        except ImportError:
            raise RnnopsError("RNNOPS_SESSION_STORE=redis://... needs the redis client: pip install redis") from None
        self.url = url
        self.redis = aioredis.from_url(url)
        self._response_error = ResponseError  # WRONGTYPE: a key of another type under the prefix
        self._write = self.redis.register_script(WRITE_IF_UNCHANGED)  # EVALSHA, loaded on first use
        self._no_script = NoScriptError  # EVALSHA of a script this Redis has not loaded (restarted, flushed)
        self._pipeline = Pipeliner(self.redis)  # an update's two commands, batched with other updates'
        self.models = models  # the ModelManager: a session's model version is looked up there
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self._ttl_ms = max(1, int(ttl_s * 1000))
        # wall-clock seconds, shared by the replicas: the index's expiry scores (tests pass one they
        # move). A session's own expiry is its key's, on the Redis server's clock.
        self.clock = clock
        # RNNOPS_SESSION_LOCK_S: how long an update keeps retrying while other writes of the same
        # session come first (503 session_busy beyond)
        self.lock_s = lock_s
        self._metrics = metrics
        self._open = 0  # as last counted (len() must not block)
        self.expired = 0
        self.conflicts = 0  # writes that found the session changed since their read (then retried)

    def __len__(self) -> int:
        return self._open

    async def count(self) -> int:
        async with self.redis.pipeline(transaction=True) as p:
            p.zremrangebyscore(INDEX, "-inf", self.clock())
            p.zcard(INDEX)
            _, n = await p.execute()
        self._open = int(n)
        return self._open

    def _state(self, sess: ForecastSession) -> tuple[np.ndarray, ...] | None:
        if sess.state is None:
            return None
        return tuple(np.asarray(a) for a in sess.model.runtime.state_numpy(sess.state))

    async def open(self, model: LoadedModel, freq: str | None = None, session_id: str | None = None) -> ForecastSession:
        if await self.count() >= self.max_sessions:
            raise sessions_full(self._open, self.max_sessions, self.ttl_s, model.name, self._metrics)
        sess = ForecastSession(model, session_id or secrets.token_hex(12), freq)
        # a random first write version: an update that read a closed session of the same id
        # cannot mistake this one for it
        value = encode(sess, None, secrets.randbits(63))
        async with self.redis.pipeline(transaction=True) as p:
            p.set(PREFIX + sess.id, value, px=self._ttl_ms)
            p.zadd(INDEX, {sess.id: self.clock() + self.ttl_s})
            await p.execute()
        return sess

    async def _getex(self, sid: str) -> bytes:
        """The session's bytes, its expiry renewed in the same command."""
        try:
            raw = await self._pipeline.call("GETEX", PREFIX + sid, "PX", self._ttl_ms)
        except self._response_error as exc:
            raw = exc
        return self._checked(sid, raw)

    async def _write_if_unchanged(self, sid: str, version: int, value: bytes) -> bool:
        """Save ``value`` if the session is still at write ``version`` (renewing its expiry and its
        index entry); False if another write came first or the session is gone."""
        keys = [PREFIX + sid, INDEX]
        args = [struct.pack("<Q", version), value, self._ttl_ms, self.clock() + self.ttl_s, sid]
        try:
            try:
                return bool(await self._pipeline.call("EVALSHA", self._write.sha, 2, *keys, *args))
            except self._no_script:  # a restarted or flushed Redis: redis-py loads it and runs it
                return bool(await self._write(keys=keys, args=args))
        except self._response_error as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            raise _not_a_session(sid, "it is not a string") from None

    def _checked(self, sid: str, raw: bytes | None | Exception) -> bytes:
        """A GETEX's answer: the bytes, or the 404 of a missing key, or the 409 of a key of another type."""
        if isinstance(raw, self._response_error) and "WRONGTYPE" in str(raw):
            raise _not_a_session(sid, "it is not a string") from None
        if isinstance(raw, Exception):
            raise raw
        if raw is None:
            raise UnknownSession(sid)
        return raw

    def _decode(self, sid: str, raw: bytes) -> tuple[ForecastSession, int]:
        version, head = read_header(sid, raw)
        model = self.models.version_of(str(head.get("m")), str(head.get("v")))
        if model is None:
            raise SessionModelGone(
                f"session {sid!r} was opened on {head.get('m')} version {head.get('v')}, which "
                "this server no longer serves; open a new session (POST /sessions)"
            )
        try:
            return decode(sid, raw, model, head), version
        except (TypeError, KeyError, ValueError) as exc:  # a header of the right shape with wrong contents
            raise _not_a_session(sid, f"its header is not one this store writes ({exc!r})") from None

    async def read(self, sid: str) -> ForecastSession:
        """The session as last saved (a read renews its TTL and never blocks an update)."""
        async with self.redis.pipeline(transaction=False) as p:  # one round trip
            p.getex(PREFIX + sid, px=self._ttl_ms)
            p.zadd(INDEX, {sid: self.clock() + self.ttl_s}, xx=True)  # renewed in the index if still there
            raw, _ = await p.execute(raise_on_error=False)
        sess, _ = self._decode(sid, self._checked(sid, raw))
        return sess

    async def update(self, sid: str, apply: Callable[[ForecastSession], Awaitable[T]]) -> tuple[ForecastSession, T]:
        """``apply`` the update to the session and save the result, exactly once across every
        worker and replica: if another write of the session came between this read and this
        write, the update is applied again to what that write left (so ``apply`` may run more than
        once; only the run that is saved counts). An error in ``apply`` saves nothing."""
        deadline = time.monotonic() + self.lock_s
        attempt = 0
        while True:
            sess, version = self._decode(sid, await self._getex(sid))
            result = await apply(sess)
            value = encode(sess, self._state(sess), (version + 1) % (1 << 64))
            written = await self._write_if_unchanged(sid, version, value)
            if written:
                return sess, result
            self.conflicts += 1
            if time.monotonic() > deadline:
                raise Overloaded(
                    "session_busy",
                    f"session {sid!r} is being updated elsewhere: {attempt + 1} tries in RNNOPS_SESSION_LOCK_S="
                    f"{self.lock_s:g}s each found another update saved first; retry",
                    1,
                    status=503,
                )
            # racing writers spread out (a few ms at most), so one of them wins each round
            await asyncio.sleep(random.random() * 0.001 * min(32, 2**attempt))
            attempt += 1

    async def close(self, sid: str) -> ForecastSession:
        sess = await self.read(sid)
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
