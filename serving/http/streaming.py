"""The one path from a generation client's streams to an HTTP answer, shared by ``/generate``,
``/complete`` and ``/v1/completions`` (each endpoint only translates its protocol).

- :class:`Generation`: one request's streams (one for ``/generate`` and ``/complete``, ``n`` per
  prompt for ``/v1/completions``) on one model version, from submission to the last delta. It
  submits them (a hot reload that swapped the version between lookup and submit is answered by
  submitting again on the new version, never with a 503), waits for their slots (429/503 before any
  byte is sent; a client that leaves while queued frees its place), hands out coalesced
  :class:`Delta` s, waits for the end for the one-answer endpoints, and cancels (a client gone,
  stalled or past its deadline frees its slots and its API key's budget).
- :class:`SSEResponse`: the streamed answer, whose sends are bounded by ``RNNOPS_STALL_S``: a client
  that stops reading loses its streams.
- Waking consumers without a timer per stream: the client hands the streams it touched to
  :func:`wake_watchers` after each step; a stream's :class:`StreamWatch` is woken only when its
  coalescing window has passed (or it was admitted, or it ended), with one
  ``call_soon_threadsafe`` per event loop per step. With hundreds of streams, timers are what an
  event loop would spend its time on otherwise. The window widens with the number of streams so
  the worker's total event rate stays near ``RNNOPS_SSE_EVENTS_PER_S`` (every event costs the
  worker the same: framing, middlewares, a socket write), and is at least ``RNNOPS_COALESCE_MS``.

The request deadline (``RNNOPS_REQUEST_DEADLINE_S``) and the drain after SIGTERM are the app's
(:mod:`.app`, :mod:`rnnops.serving.drain`): they cancel this path's awaits, whose ``finally``
cancels the streams, or refuse new requests before they get here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Message, Send

from rnnops.serving.errors import Overloaded
from rnnops.serving.generate.client import Delta, GenerationClient
from rnnops.serving.generate.stream import GenerationRequest, Stream
from rnnops.serving.http.errors import ClientGone

if TYPE_CHECKING:
    from rnnops.serving.models import LoadedModel

log = logging.getLogger("rnnops.serving")

ADMISSION_POLL_S = 0.25  # how often a queued request checks that its client is still there
END_POLL_S = 0.5  # the same while a one-answer request waits for its streams to end


# --------------------------------------------------------------------------------- waking consumers


class StreamWatch:
    """The asyncio side of one stream: an event the client's thread sets, coalesced. The watches
    of one request share one event (:func:`wait_any` waits for whichever is due first)."""

    __slots__ = ("_stream", "loop", "event", "waiting", "output", "window", "last_wake", "seen_phase")

    def __init__(self, stream: Stream, loop: asyncio.AbstractEventLoop, event: asyncio.Event | None = None):
        # A weak reference: the stream holds its watcher, and a cycle between the two would keep
        # every finished stream (its text, its timings) alive until a full garbage collection,
        # which the service makes rare (gc.freeze + a large first generation): the soak saw RSS
        # grow by a third over ten minutes that way.
        self._stream = weakref.ref(stream)
        self.loop = loop
        self.event = event or asyncio.Event()
        self.waiting = False  # the consumer is blocked in wait_any()
        self.output = True  # wake for characters too (False: only admission and the end)
        self.window = 0.0  # seconds between wake-ups for characters
        self.last_wake = 0.0
        self.seen_phase = "queued"
        stream.watcher = self

    @property
    def stream(self) -> Stream:
        s = self._stream()
        assert s is not None, "a stream outlives its watch"
        return s

    def due(self, now: float) -> bool:
        s = self.stream
        return (
            s.done
            or s.phase != self.seen_phase
            or (self.output and s.has_output and now - self.last_wake >= self.window)
        )

    async def wait(self, timeout: float | None = None, output: bool = True, window: float = 0.0) -> None:
        await wait_any([self], timeout, output, window)


async def wait_any(
    watches: list[StreamWatch], timeout: float | None = None, output: bool = True, window: float = 0.0
) -> None:
    """Until one of ``watches`` (sharing one event) has something new, or ``timeout``: admission,
    the end, or characters (unless ``output`` is False), the latter at most once per ``window``."""
    event = watches[0].event
    event.clear()
    for w in watches:
        w.output, w.window, w.waiting = output, window, True
    try:
        if any(w.due(time.monotonic()) for w in watches):
            return
        if timeout is None:
            await event.wait()
        else:
            async with asyncio.timeout(timeout):  # no extra task per wait (unlike wait_for)
                await event.wait()
    except TimeoutError:
        pass
    finally:
        now = time.monotonic()
        for w in watches:
            w.waiting, w.seen_phase, w.last_wake = False, w.stream.phase, now


def watch(stream: Stream, event: asyncio.Event | None = None) -> StreamWatch:
    """Attach a watcher on the running event loop (before the stream is submitted)."""
    return StreamWatch(stream, asyncio.get_running_loop(), event)


def wake_watchers(streams: list[Stream]) -> None:
    """The clients' ``on_step`` hook (runs on their thread): wake the consumers that are due."""
    by_loop: dict[asyncio.AbstractEventLoop, set[asyncio.Event]] = {}
    now = time.monotonic()
    for s in streams:
        w = s.watcher
        if w is None or not w.waiting:
            continue
        if w.due(now):
            w.waiting = False  # one wake-up per wait
            by_loop.setdefault(w.loop, set()).add(w.event)
    for loop, events in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_all, events)
        except RuntimeError:  # the loop closed (shutdown)
            pass


def _set_all(events: set[asyncio.Event]) -> None:
    for e in events:
        e.set()


# --------------------------------------------------------------------------------- one request's streams


class Generation:
    """One request's streams on one model version (see the module docstring)."""

    def __init__(self, request: Request, model: LoadedModel, requests: list[GenerationRequest]) -> None:
        self.request = request
        self.model = model
        self.streams = [Stream(r) for r in requests]
        event = asyncio.Event()  # one for all: woken when any stream is due
        self.watches = [watch(s, event) for s in self.streams]
        self.budget = request.scope.get("rnnops.budget")
        self.extra = 0  # slots taken from the key's budget beyond the one the auth middleware holds

    @property
    def id(self) -> int:
        return self.streams[0].id

    @property
    def client(self) -> GenerationClient:
        """The version's generator (every char model has one)."""
        client = self.model.scheduler
        assert client is not None, "a char model without its generator"
        return client

    @classmethod
    async def start(
        cls,
        request: Request,
        lookup: Callable[[], LoadedModel],
        build: Callable[[LoadedModel], list[GenerationRequest]],
    ) -> Generation:
        """``lookup()`` -> the model version now served; ``build(model)`` -> its generation
        requests (validated against its vocabulary). Returns once every stream has a slot;
        raises :class:`Overloaded` (429/503) or :class:`ClientGone` before any byte is sent."""
        model = lookup()
        g = cls(request, model, build(model))
        try:
            g._take_budget()
            try:
                g._submit()
            except Overloaded as exc:
                if exc.reason != "draining":
                    raise
                # a hot reload swapped the version between lookup and submit: take the new one
                g.cancel()
                model = lookup()
                g = cls(request, model, build(model))
                g._take_budget()
                g._submit()
            await g._admitted()
        except BaseException:
            g.cancel()
            raise
        return g

    def _take_budget(self) -> None:
        if self.budget is not None and len(self.streams) > 1:
            self.budget.take(len(self.streams) - 1)  # Overloaded (429) when the key has no room for them
            self.extra = len(self.streams) - 1

    def _submit(self) -> None:
        client = self.client
        for s in self.streams:
            client.submit(s.request, s)  # Overloaded -> 429/503

    async def _admitted(self) -> None:
        def waiting() -> list[StreamWatch]:
            return [w for w in self.watches if not (w.stream.admitted or w.stream.done)]

        while left := waiting():
            await wait_any(left, ADMISSION_POLL_S, output=False)
            if waiting() and await self.request.is_disconnected():
                raise ClientGone
        bad = next((s for s in self.streams if s.finish_reason in ("queue_timeout", "shutdown")), None)
        if bad is not None and bad.finish_reason is not None:
            raise Overloaded(bad.finish_reason, bad.error or bad.finish_reason, self.client.retry_after(), status=503)

    async def deltas(self, coalesce_s: float, events_per_s: float) -> AsyncIterator[list[Delta]]:
        """The streams' output as it comes, coalesced; each stream's last delta has its finish
        reason (a failed one stops the iteration after it: the answer ends with its error)."""
        sent = [0] * len(self.streams)
        open_ = list(range(len(self.streams)))
        client = self.client
        rate = max(1.0, events_per_s)
        while open_:
            out, still = [], []
            for i in open_:
                s = self.streams[i]
                done = s.done  # read before draining: what came before the end is all drained now
                text = s.drain()
                if text or done:
                    lp = s.logprobs[sent[i] : sent[i] + len(text)] if s.request.logprobs is not None else []
                    out.append(
                        Delta(i, text, sent[i], lp, s.finish_reason if done else None, s.error if done else None)
                    )
                    sent[i] += len(text)
                if not done:
                    still.append(i)
            if out:
                yield out
                if any(d.failed for d in out):
                    return
            open_ = still
            if open_:
                await wait_any(
                    [self.watches[i] for i in open_], None, output=True, window=max(coalesce_s, client.active / rate)
                )

    async def finished(self) -> bool:
        """Until every stream ended (woken at the end, not per character); False when the client
        went away first (its streams are cancelled)."""

        def open_() -> list[StreamWatch]:
            return [w for w in self.watches if not w.stream.done]

        while left := open_():
            await wait_any(left, END_POLL_S, output=False)
            if open_() and await self.request.is_disconnected():
                self.cancel()
                return False
        return True

    def failed(self) -> Stream | None:
        return next((s for s in self.streams if s.finish_reason not in ("length", "stop")), None)

    def cancel(self) -> None:
        """Free the slots (no-op for finished streams) and the key's budget; idempotent."""
        for s in self.streams:
            s.cancel()
        if self.budget is not None and self.extra > 0:
            self.budget.give(self.extra)
            self.extra = 0


# --------------------------------------------------------------------------------- the streamed answer


class ClientStalled(Exception):
    pass


class SSEResponse(StreamingResponse):
    """A Server-Sent Events response that gives up on a client that stopped reading.

    Buffering is bounded by the socket: once the kernel's and the transport's buffers are full,
    a send blocks. A send blocked for ``stall_s`` (``RNNOPS_STALL_S``) cancels the generation (its
    slots are free at the next step) and closes the connection, so a stuck client holds neither a
    slot nor more memory than its socket buffers. ``generation`` is anything with ``cancel()`` and
    ``id`` (a :class:`Generation` or one :class:`Stream`).
    """

    def __init__(
        self,
        content: AsyncGenerator[str | bytes, None],
        generation: Generation | Stream,
        stall_s: float,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
        )
        self.events = content  # the body_iterator, typed: closed at once on a stall
        self.generation = generation
        self.stall_s = stall_s

    async def stream_response(self, send: Send) -> None:
        async def bounded_send(message: Message) -> None:
            try:
                async with asyncio.timeout(self.stall_s):
                    await send(message)
            except TimeoutError:
                raise ClientStalled from None

        try:
            await super().stream_response(bounded_send)
        except ClientStalled:
            self.generation.cancel()
            with contextlib.suppress(Exception):
                await self.events.aclose()  # its `finally` runs now, not at garbage collection
            log.warning(
                "stream %s: the client read nothing for %gs (RNNOPS_STALL_S); cancelled",
                self.generation.id,
                self.stall_s,
            )
