"""Stateful forecast sessions: state kept server-side between requests, with an idle TTL and a cap.

A client opens a session (optionally with a first context), sends observations as they arrive
and gets the updated forecast each time, then closes it. What a session keeps depends on the
model (its ``rnnops.stateful`` metadata):

- **stateful** (fixed scaler): the recurrent state. An update runs the model over the new rows
  only, from the carried state: O(new rows), however long the history.
- **windowed** (per-window normalisation, e.g. RevIN): the last ``lookback`` rows. An update
  appends and re-forecasts the window; until ``lookback`` rows have arrived there is no forecast.

A session is pinned to the model version that opened it (its state means nothing to another
version), so a hot reload never breaks open sessions. It keeps the timestamps of the rows the
model reads (at most ``lookback``), so its forecast's timestamps are those the batch job and
``/forecast`` give for the same history (:mod:`rnnops.timeseries`). :class:`SessionStore` keeps them
in this worker's memory (the default); ``RNNOPS_SESSION_STORE=redis://...`` keeps them in Redis
instead (:mod:`.redis_store`), where any worker or replica continues any session.
Like Triton's ``max_sequence_idle_microseconds``, an idle session is dropped after the TTL,
measured on the store's clock (injectable: tests move it instead of sleeping).

A panel model's session (``rnnops.kind`` = ``"panel"``) is named by the client's series id and
keeps a :class:`PanelSeries`: what the model reads of the series (the last ``lookback`` steps of
its target, timestamps and covariates), its statics, and the future covariates of the ``H`` steps
ahead. An update brings new observations and the future covariates of the ``H`` steps after them,
and is forecast exactly as ``/forecast`` forecasts the same history and covariates
(:mod:`rnnops.panel_features`, through the version's batcher).

This module keeps sessions; it does not step them: every update, whichever store holds the
session, goes through the :class:`~rnnops.serving.forecast.stepper.SessionStepper` of its
version (:meth:`ForecastSession.observe`), batched with the other sessions' updates.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from rnnops.panel_features import SeriesEntry, SeriesError
from rnnops.serving.errors import Overloaded, UnknownSession

if TYPE_CHECKING:
    from rnnops.serving.metrics import Metrics
    from rnnops.serving.models import LoadedModel
    from rnnops.serving.runtime import State

T = TypeVar("T")


@dataclass(frozen=True)
class PanelSeries:
    """A panel session's series: the last ``lookback`` steps the model reads (timestamps int64 ns,
    target and covariates float32, what the graph reads, so a stored session is half the size
    and forecasts exactly as the request would; NaN where missing; the future covariates' values at those
    steps), its statics, and the future covariates of the ``horizon`` steps ahead. Immutable: an
    update makes a new one (:meth:`advanced`), kept only once it has been forecast."""

    id: str
    static: Mapping[str, Any]
    timestamps: np.ndarray
    context: np.ndarray
    past: Mapping[str, np.ndarray]
    known: Mapping[str, np.ndarray]  # future covariates over the history
    ahead: Mapping[str, np.ndarray]  # future covariates over the horizon
    start: int | None = None  # the first forecast step of a series with no history yet (cold start)
    future: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # the last forecast's steps

    def entry(self) -> SeriesEntry:
        """What ``/forecast`` would be sent for this series now."""
        return SeriesEntry(
            self.id,
            self.timestamps,
            self.context,
            dict(self.past),
            {n: np.concatenate([self.known[n], self.ahead[n]]) for n in self.known},
            dict(self.static),
            self.start,
        )

    def advanced(
        self,
        lookback: int,
        timestamps: np.ndarray,
        observations: np.ndarray,
        past: Mapping[str, np.ndarray],
        ahead: Mapping[str, np.ndarray],
    ) -> PanelSeries:
        """The series after ``n`` new observations at ``timestamps`` (int64 ns), their past
        covariates (``n`` values each) and the future covariates of the ``H`` steps after them;
        a :class:`SeriesError` (one line) when they do not continue it."""
        n, sid = len(observations), self.id
        if len(timestamps) != n:
            raise SeriesError(f"series {sid!r}: {len(timestamps)} timestamps for {n} observations", sid, "timestamps")
        if len(self.future) and int(timestamps[0]) != int(self.future[0]):
            from rnnops.timeseries import ts

            raise SeriesError(
                f"series {sid!r}: the observations must continue the series: its next step is "
                f"{ts(self.future[0])}, not {ts(timestamps[0])}",
                sid,
                "timestamps",
            )
        horizon = len(next(iter(self.ahead.values()))) if self.ahead else n
        if n > horizon:
            raise SeriesError(
                f"series {sid!r}: {n} observations in one update, but the session knows the future covariates "
                f"of the next {horizon} steps only; send at most {horizon} at a time",
                sid,
                "observations",
            )
        for name, given in (("past_covariates", past), ("future_covariates", ahead)):
            want = self.past if name == "past_covariates" else self.ahead
            unknown = sorted(set(given) - set(want))
            missing = sorted(set(want) - set(given))
            if unknown or missing:
                what = f"{unknown[0]!r} is not one the model knows" if unknown else f"{missing[0]!r} is missing"
                raise SeriesError(f"series {sid!r}: {name} {what} (it takes {', '.join(want)})", sid, name)
        for name, v in ahead.items():
            if len(v) != horizon:
                raise SeriesError(
                    f"series {sid!r}: future covariate {name!r} has {len(v)} values; it needs {horizon}, one per "
                    "step after the last observation",
                    sid,
                    "future_covariates",
                )
        for name, v in past.items():
            if len(v) != n:
                raise SeriesError(
                    f"series {sid!r}: past covariate {name!r} has {len(v)} values; it needs {n}, one per observation",
                    sid,
                    "past_covariates",
                )

        def keep(old: np.ndarray, new: np.ndarray) -> np.ndarray:
            return np.concatenate([old, np.asarray(new, old.dtype)])[-lookback:]

        return PanelSeries(
            id=sid,
            static=self.static,
            timestamps=keep(self.timestamps, timestamps),
            context=keep(self.context, observations),
            past={k: keep(v, past[k]) for k, v in self.past.items()},
            known={k: keep(v, self.ahead[k][:n]) for k, v in self.known.items()},
            ahead={k: np.asarray(v, np.float32) for k, v in ahead.items()},
            start=None,
            future=self.future,
        )


class ForecastSession:
    """One session's data; updates go through its model's stepper (:meth:`observe`)."""

    def __init__(self, model: LoadedModel, session_id: str, freq: str | None = None, now: float | None = None) -> None:
        self.id = session_id
        self.model = model  # the LoadedModel it was opened on (pinned)
        info = model.runtime.info
        self.stateful = info.stateful
        self.lookback = info.lookback
        self.state: State | None = None  # None: zeros (a stateful session that has seen no rows)
        self.window = np.zeros((0, len(info.feature_names)), np.float32)
        self.observations = 0
        self.last_forecast: np.ndarray | None = None
        self.last_quantiles: np.ndarray | None = None  # [horizon, F_out, levels] for models with intervals
        self.freq = freq  # the client's explicit frequency, if any
        self.timestamps = np.zeros(0, np.int64)  # ns, of the last rows the model reads (oldest first)
        self.created = self.last_used = time.monotonic() if now is None else now  # the store's clock
        self.created_wall = time.time()
        self.lock = asyncio.Lock()  # one update at a time per session
        self.panel: PanelSeries | None = None  # a panel model's series (None: any other model)
        self.warnings: tuple[str, ...] = ()  # the last forecast's, for a panel session

    def add_timestamps(self, ts: np.ndarray) -> None:
        keep = max(self.lookback, 3)  # 3: enough for pandas to tell a calendar frequency
        self.timestamps = np.concatenate([self.timestamps, ts])[-keep:]

    async def observe(self, rows: np.ndarray) -> np.ndarray | None:
        """Take new rows ``[n, F]``; the forecast ``[horizon, F_out]`` (None: window not full yet),
        stepped together with the other sessions of the version (hold the session exclusively)."""
        stepper = self.model.stepper
        assert stepper is not None, "sessions are opened on forecasters, which all have a stepper"
        return await stepper.observe(self, rows)

    @property
    def needs(self) -> int:
        """Rows still missing before a windowed session can forecast (0 when it can)."""
        return 0 if self.stateful else max(0, self.lookback - len(self.window))


def sessions_full(open_now: int, limit: int, ttl_s: float, model: str, metrics: Metrics | None = None) -> Overloaded:
    """The 429 of a full store (every store's cap), counted in the metrics."""
    if metrics:
        metrics.rejected.labels(model, "sessions_full").inc()
    return Overloaded(
        "sessions_full",
        f"{open_now} forecast sessions are open (limit RNNOPS_MAX_SESSIONS={limit}); "
        f"close unused ones (DELETE /sessions/ID) or wait for idle ones to expire ({ttl_s:g}s)",
        retry_after=int(min(60, max(1, ttl_s / 10))),
        status=429,
    )


class SessionStore:
    """The in-process store (the default): sessions live in this worker's memory.

    Its API is the one every store has (``RedisSessionStore`` too), async because a shared store
    does I/O: :meth:`open`, :meth:`read`, :meth:`update` (apply an update exactly once),
    :meth:`close`, :meth:`sweep`, ``len()``; and, in this worker only, :meth:`updating`
    (exclusive access while a block runs).
    """

    shared = False  # sessions are visible to this worker only

    def __init__(
        self,
        max_sessions: int = 1024,
        ttl_s: float = 600.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.clock = clock  # seconds; the idle TTL is measured on it (tests pass one they move)
        self._sessions: OrderedDict[str, ForecastSession] = OrderedDict()  # least recently used first
        self._metrics = metrics
        self._labels: set[str] = set()  # models whose gauge we have set (to zero them later)
        self.expired = 0

    def __len__(self) -> int:
        return len(self._sessions)

    async def open(self, model: LoadedModel, freq: str | None = None, session_id: str | None = None) -> ForecastSession:
        """A new session; ``session_id`` names it (an OIP sequence: ``seq:<model>:<id>``), replacing
        an open one of that name, otherwise a random id is drawn."""
        self._sweep()
        if session_id is not None:
            self._sessions.pop(session_id, None)
        if len(self._sessions) >= self.max_sessions:
            raise sessions_full(len(self._sessions), self.max_sessions, self.ttl_s, model.name, self._metrics)
        s = ForecastSession(model, session_id or secrets.token_hex(12), freq, now=self.clock())
        self._sessions[s.id] = s
        self._gauge()
        return s

    async def read(self, session_id: str) -> ForecastSession:
        return self._get(session_id)

    @asynccontextmanager
    async def updating(self, session_id: str) -> AsyncIterator[ForecastSession]:
        """The session, one update at a time (its lock held while the block runs)."""
        s = self._get(session_id)
        async with s.lock:
            yield s

    async def update(
        self, session_id: str, apply: Callable[[ForecastSession], Awaitable[T]]
    ) -> tuple[ForecastSession, T]:
        """``apply`` an update to the session (one at a time per session) and keep it; the
        session and what ``apply`` returned. Every store has it: the Redis store may run ``apply``
        more than once (a conflicting write came first) and saves only the last run."""
        async with self.updating(session_id) as s:
            return s, await apply(s)

    def _get(self, session_id: str) -> ForecastSession:
        self._sweep()
        s = self._sessions.get(session_id)
        if s is None:
            raise UnknownSession(session_id)
        s.last_used = self.clock()
        self._sessions.move_to_end(session_id)
        return s

    async def close(self, session_id: str) -> ForecastSession:
        s = self._sessions.pop(session_id, None)
        if s is None:
            raise UnknownSession(session_id)
        self._gauge()
        return s

    async def sweep(self) -> int:
        return self._sweep()

    def _sweep(self) -> int:
        """Drop sessions idle longer than the TTL (oldest first); returns how many."""
        now = self.clock()
        n = 0
        while self._sessions:
            sid, s = next(iter(self._sessions.items()))
            if now - s.last_used <= self.ttl_s:
                break
            del self._sessions[sid]
            n += 1
        if n:
            self.expired += n
            self._gauge()
        return n

    def _gauge(self) -> None:
        if self._metrics is None:
            return
        counts: dict[str, int] = {}
        for s in self._sessions.values():
            counts[s.model.name] = counts.get(s.model.name, 0) + 1
        self._labels |= set(counts)
        for name in self._labels:
            self._metrics.sessions.labels(name).set(counts.get(name, 0))
