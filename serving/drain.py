"""Graceful shutdown of a worker on SIGTERM: unready at once, in-flight work finishes, then exit.

Left to itself, uvicorn stops accepting on SIGTERM while BentoML's arbiter keeps the listening
socket open: new connections then queue unanswered, a request on an idle keep-alive connection
hangs, and in-flight streams run to their end however long that takes. Instead, each worker puts
its own handler in front of uvicorn's (:meth:`Drainer.install`, at startup):

1. at once: ``/readyz`` answers 503 (``__is_ready__``), so a load balancer stops sending; every
   new request that still reaches the worker (a new connection, or an open keep-alive one) gets
   **503 with ``Retry-After``** and ``Connection: close`` (health routes excepted);
2. in-flight streams, forecasts and session updates finish, for at most ``RNNOPS_DRAIN_S``;
   whatever is still running then ends with an ``error`` event of type ``shutdown``;
3. uvicorn's own handler runs: it closes the connections, the shutdown hooks stop the models,
   and the process exits 0. BentoML's arbiter exits once its workers have.

A second SIGTERM (or SIGINT) while draining goes straight to uvicorn's handler: exit now.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rnnops.serving.http.app import Serving

log = logging.getLogger("rnnops.serving")


class Drainer:
    def __init__(self, serving: Serving, drain_s: float) -> None:
        self.serving = serving
        self.drain_s = drain_s
        self._previous: Any = None  # signal.getsignal's: a handler, SIG_DFL/SIG_IGN, or None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None

    def install(self) -> None:
        """Put the handler in front of the current SIGTERM handler (call on the event loop, in the
        main thread, after uvicorn installed its own)."""
        self._loop = asyncio.get_running_loop()
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.serving.draining:  # asked twice: stop waiting
            self._hand_over(signum, frame)
            return
        self.serving.draining = True
        log.warning("SIGTERM: draining (unready now; in-flight work gets up to %gs, RNNOPS_DRAIN_S)", self.drain_s)
        assert self._loop is not None, "install() sets the loop before the handler can run"
        self._loop.call_soon_threadsafe(self._start, signum, frame)

    def _start(self, signum: int, frame: FrameType | None) -> None:
        assert self._loop is not None, "install() sets the loop before the handler can run"
        self.task = self._loop.create_task(self._drain(signum, frame))

    async def _drain(self, signum: int, frame: FrameType | None) -> None:
        deadline = time.monotonic() + self.drain_s
        models = self.serving.models
        while self.serving.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        left = self.serving.in_flight()
        if left:
            log.warning("drain: %d requests still running after %gs; ending them", left, self.drain_s)
        await models.stop()  # unfinished streams end with a `shutdown` error event
        await asyncio.sleep(0.05)  # let their last events go out
        self._hand_over(signum, frame)

    def _hand_over(self, signum: int, frame: FrameType | None) -> None:
        prev = self._previous
        if callable(prev):
            prev(signum, frame)
        elif prev == signal.SIG_DFL:
            raise SystemExit(0)
