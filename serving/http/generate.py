"""Streamed generation over HTTP: ``POST /generate`` (Server-Sent Events) and ``POST /complete``.

Transport only. The step scheduler decides what each stream gets; this module turns a request
into a :class:`GenerationRequest`, waits for the scheduler without a timer per stream, frames
the characters as SSE events (coalesced), and notices clients that went away.

- ``chunk`` events ``{"text"}`` (characters gathered over ``RNNOPS_COALESCE_MS`` go out
  together, and with many streams each one's window widens so the worker's total event rate
  stays near ``RNNOPS_SSE_EVENTS_PER_S``), then one ``done`` event with the stats, or one
  ``error`` event: a stream never ends silently.
- Wake-ups: the scheduler hands the streams it touched to :func:`wake_watchers` after each
  step; a stream's :class:`StreamWatch` is woken only when its coalescing window has passed (or
  it was admitted, or it ended), with one ``call_soon_threadsafe`` per event loop per step. With
  hundreds of streams, timers are what an event loop would spend its time on otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from rnnops.serving.errors import Overloaded
from rnnops.serving.generate.sampling import SamplingParams
from rnnops.serving.generate.stream import GenerationRequest, Stream
from rnnops.serving.http.errors import ApiError, ClientGone, JSONResponse, error_response, parse_body
from rnnops.serving.http.schemas import GenerateBody

log = logging.getLogger("rnnops.serving")


# --------------------------------------------------------------------------------- waking consumers


class StreamWatch:
    """The asyncio side of one stream: an event the scheduler's thread sets, coalesced."""

    __slots__ = ("_stream", "loop", "event", "waiting", "output", "window", "last_wake", "seen_phase")

    def __init__(self, stream: Stream, loop: asyncio.AbstractEventLoop):
        # A weak reference: the stream holds its watcher, and a cycle between the two would keep
        # every finished stream (its text, its timings) alive until a full garbage collection,
        # which the service makes rare (gc.freeze + a large first generation): the soak saw RSS
        # grow by a third over ten minutes that way.
        self._stream = weakref.ref(stream)
        self.loop = loop
        self.event = asyncio.Event()
        self.waiting = False  # the consumer is blocked in wait()
        self.output = True  # wake for characters too (False: only admission and the end)
        self.window = 0.0  # seconds between wake-ups for characters
        self.last_wake = 0.0
        self.seen_phase = "queued"
        stream.watcher = self

    @property
    def stream(self) -> Stream:
        return self._stream()

    def due(self, now: float) -> bool:
        s = self.stream
        return s.done or s.phase != self.seen_phase or (
            self.output and s.has_output and now - self.last_wake >= self.window)

    async def wait(self, timeout: float | None = None, output: bool = True, window: float = 0.0) -> None:
        """Until something new happened or ``timeout``: admission, the end, or characters (unless
        ``output`` is False), the latter at most once per ``window`` seconds."""
        self.output = output
        self.window = window
        self.event.clear()
        self.waiting = True
        try:
            if self.due(time.monotonic()):
                return
            if timeout is None:
                await self.event.wait()
            else:
                async with asyncio.timeout(timeout):  # no extra task per wait (unlike wait_for)
                    await self.event.wait()
        except TimeoutError:
            pass
        finally:
            self.waiting = False
            self.seen_phase = self.stream.phase
            self.last_wake = time.monotonic()


def watch(stream: Stream) -> StreamWatch:
    """Attach a watcher on the running event loop (before the stream is submitted)."""
    return StreamWatch(stream, asyncio.get_running_loop())


def wake_watchers(streams: list[Stream]) -> None:
    """The schedulers' ``on_step`` hook (runs on their thread): wake the consumers that are due."""
    by_loop: dict = {}
    now = time.monotonic()
    for s in streams:
        w = s.watcher
        if w is None or not w.waiting:
            continue
        if w.due(now):
            w.waiting = False  # one wake-up per wait
            by_loop.setdefault(w.loop, []).append(w.event)
    for loop, events in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_all, events)
        except RuntimeError:  # the loop closed (shutdown)
            pass


def _set_all(events) -> None:
    for e in events:
        e.set()


# --------------------------------------------------------------------------------- requests


def _show(chars: list[str]) -> str:
    return ", ".join(f"{c!r} (U+{ord(c):04X})" for c in chars[:20]) + (" ..." if len(chars) > 20 else "")


def generation_request(body: GenerateBody, model, cfg) -> GenerationRequest:
    """Check a body against the server's limits and the model's vocabulary."""
    if len(body.prompt) > cfg.max_prompt_chars:
        raise ApiError(400, "invalid_request", f"prompt has {len(body.prompt)} characters; the limit is "
                       f"{cfg.max_prompt_chars} (RNNOPS_MAX_PROMPT_CHARS)", field="prompt")
    if body.max_chars > cfg.max_chars:
        raise ApiError(400, "invalid_request", f"max_chars is {body.max_chars}; the limit is {cfg.max_chars} "
                       "(RNNOPS_MAX_CHARS)", field="max_chars")
    try:
        ids = model.runtime.encode(body.prompt)
    except ValueError as exc:
        unknown = exc.args[0]
        raise ApiError(400, "out_of_vocabulary", f"prompt has characters outside the vocabulary of model "
                       f"{model.name!r} (version {model.version}): {_show(unknown)}; remove or replace them",
                       field="prompt", characters=unknown) from None
    return GenerationRequest(ids, body.max_chars, SamplingParams(body.temperature, body.top_k, body.top_p),
                             body.seed, tuple(body.stop))


async def start_stream(serving, request: Request) -> tuple[Stream, StreamWatch, object]:
    """Parse, submit, and wait until the stream has a slot (429/503 before any byte is sent)."""
    body = await parse_body(request, GenerateBody)
    model = serving.models.get(body.model, "char")
    stream = Stream(generation_request(body, model, serving.config))
    w = watch(stream)
    try:
        model.scheduler.submit(stream.request, stream)  # Overloaded -> 429/503
    except Overloaded as exc:
        if exc.reason != "draining":
            raise
        # a hot reload swapped the version between lookup and submit: take the new one
        model = serving.models.get(body.model, "char")
        stream = Stream(generation_request(body, model, serving.config))
        w = watch(stream)
        model.scheduler.submit(stream.request, stream)
    try:
        while not stream.admitted and not stream.done:
            await w.wait(0.25, output=False)
            if not stream.admitted and not stream.done and await request.is_disconnected():
                raise ClientGone
    except BaseException:
        stream.cancel()
        raise
    if stream.finish_reason in ("queue_timeout", "shutdown"):
        raise Overloaded(stream.finish_reason, stream.error or stream.finish_reason,
                         model.scheduler.retry_after(), status=503)
    return stream, w, model


def final_stats(stream: Stream, model) -> dict:
    return {**stream.stats(), "model": model.name, "version": model.version}


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def generate(serving, request: Request) -> Response:
    try:
        stream, w, model = await start_stream(serving, request)
    except ClientGone:
        return Response(status_code=499)
    cfg = serving.config
    coalesce, rate = cfg.coalesce_ms / 1000.0, max(1.0, cfg.sse_events_per_s)
    sched = model.scheduler

    async def events():
        try:
            while True:
                done = stream.done
                text = stream.drain()
                if text:
                    yield sse("chunk", {"text": text})
                if done:
                    break
                # Every event costs the worker the same (framing, middlewares, a socket write):
                # the window widens with the number of streams (see the module docstring).
                await w.wait(window=max(coalesce, sched.active / rate))
            info = final_stats(stream, model)
            if stream.finish_reason in ("length", "stop"):
                yield sse("done", info)
            else:
                yield sse("error", {"error": stream.error or stream.finish_reason, "type": stream.finish_reason,
                                    **info})
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # never a silent cut
            log.exception("stream %s failed", stream.id)
            yield sse("error", {"error": f"internal error: {exc}", "type": "internal"})
        finally:
            stream.cancel()  # no-op when finished; frees the slot when the client went away

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Model": model.name,
               "X-Model-Version": model.version}
    return SSEResponse(events(), stream, cfg.stall_s, headers=headers)


class ClientStalled(Exception):
    pass


class SSEResponse(StreamingResponse):
    """A Server-Sent Events response that gives up on a client that stopped reading.

    Buffering is bounded by the socket: once the kernel's and the transport's buffers are full,
    a send blocks. A send blocked for ``stall_s`` (``RNNOPS_STALL_S``) cancels the stream (its
    slot is free at the next step) and closes the connection, so a stuck client holds neither a
    slot nor more memory than its socket buffers.
    """

    def __init__(self, content, stream: Stream, stall_s: float, headers: dict | None = None):
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.stream = stream
        self.stall_s = stall_s

    async def stream_response(self, send) -> None:
        async def bounded_send(message) -> None:
            try:
                async with asyncio.timeout(self.stall_s):
                    await send(message)
            except TimeoutError:
                raise ClientStalled from None

        try:
            await super().stream_response(bounded_send)
        except ClientStalled:
            self.stream.cancel()
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()  # its `finally` runs now, not at garbage collection
            log.warning("stream %s: the client read nothing for %gs (RNNOPS_STALL_S); cancelled", self.stream.id,
                        self.stall_s)


async def complete(serving, request: Request) -> Response:
    try:
        stream, w, model = await start_stream(serving, request)
    except ClientGone:
        return Response(status_code=499)
    try:
        while not stream.done:
            await w.wait(0.5, output=False)  # woken at the end, not per character
            if not stream.done and await request.is_disconnected():
                return Response(status_code=499)
    finally:
        stream.cancel()
    info = final_stats(stream, model)
    if stream.finish_reason not in ("length", "stop"):
        status = 503 if stream.finish_reason == "shutdown" else 500
        return error_response(status, stream.finish_reason, stream.error or stream.finish_reason, **info)
    return JSONResponse({"text": stream.text, **info})
