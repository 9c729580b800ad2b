"""What the HTTP layer sees of a generator (:class:`GenerationClient`) and the one admission rule
every generator applies (:class:`Admission`).

Three generators implement the protocol: the step scheduler in this process
(:class:`~rnnops.serving.generate.scheduler.StepScheduler`, ``RNNOPS_ENGINE=thread``), its client
in the worker when it runs in an engine process of its own
(:class:`~rnnops.serving.generate.engine.EngineClient`, the default), and the per-request baseline
(:class:`~rnnops.serving.generate.naive.NaiveGenerator`, ``RNNOPS_SCHEDULER=naive``, benchmarks).
A consumer submits a :class:`~rnnops.serving.generate.stream.Stream`, is woken through the
``on_step`` hook each generator is given, reads the stream's output as an async iteration of
typed :class:`Delta` s (one implementation for all three, over the :class:`Stream` they share:
:meth:`rnnops.serving.http.streaming.Generation.deltas`, beside the event loop), and cancels it
with :meth:`Stream.cancel`, which calls the generator's :meth:`GenerationClient.cancel`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from rnnops.serving.errors import Overloaded
from rnnops.serving.generate.stream import GenerationRequest, Logprob, Stream

OnStep = Callable[[list[Stream]], None]  # the streams a step touched (the transport wakes their consumers)


class SchedulerMetrics:
    """Where a generator reports; the default does nothing (see :mod:`rnnops.serving.metrics`)."""

    def step(self, batch: int, seconds: float, chars: int) -> None: ...
    def depth(self, active: int, queued: int) -> None: ...
    def finished(self, stream: Stream) -> None: ...
    def rejected(self, reason: str) -> None: ...


def no_one(streams: list[Stream]) -> None:
    """The ``on_step`` hook of a generator nobody watches (tests, benchmarks)."""


@dataclass(slots=True)
class Delta:
    """What one stream of a request produced since the last delta."""

    index: int  # the stream's position in the request (OpenAI's choice index)
    text: str
    offset: int  # characters of this stream delivered before ``text``
    logprobs: list[Logprob]  # per character of ``text`` (empty unless the request asked for them)
    finish_reason: str | None  # set on a stream's last delta: length | stop | cancelled | error | ...
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.finish_reason is not None and self.finish_reason not in ("length", "stop")


@runtime_checkable
class GenerationClient(Protocol):
    """A generator of streams for one char-model version, as the HTTP layer uses it."""

    name: str
    max_active: int
    max_queue: int

    @property
    def active(self) -> int: ...  # streams with a slot (prefilling or decoding)
    @property
    def queued(self) -> int: ...  # streams waiting for one
    @property
    def running(self) -> bool: ...  # still has work or can take some (False once drained or stopped)

    def submit(self, request: GenerationRequest, stream: Stream | None = None) -> Stream:
        """Queue a generation; raises :class:`Overloaded` (429 queue full, 503 draining or down)."""
        ...

    def cancel(self, stream: Stream) -> None:
        """The stream's client went away (called by :meth:`Stream.cancel`): free its slot soon."""
        ...

    def retry_after(self) -> int: ...
    def describe(self) -> dict[str, Any]: ...
    def close(self) -> None: ...  # take no new streams; finish the ones in flight (hot reload)
    def stop(self, timeout: float = 5.0) -> None: ...  # end now: what is unfinished ends with `shutdown`


class Admission:
    """Who may queue (the bounds ``RNNOPS_MAX_STREAMS`` and ``RNNOPS_MAX_QUEUE``), how long a
    refused client should wait (``Retry-After``: the queue ahead of it drained at the pace streams
    have been finishing), and the refusal itself. One rule for every generator, so a 429 reads and
    counts the same whichever runs. (The per-API-key bound is the auth middleware's
    :class:`~rnnops.serving.http.auth.KeyBudget`: it is per key, not per model.)"""

    def __init__(self, max_active: int, max_queue: int, metrics: SchedulerMetrics):
        self.max_active = max_active
        self.max_queue = max_queue
        self.metrics = metrics
        self.avg_stream_s = 1.0  # moving average of a stream's time from admission to its end

    def check(self, active: int, queued: int, closed: bool) -> None:
        """Raise :class:`Overloaded` unless one more stream may queue now. A queue holds
        ``max_queue`` streams beyond the free slots (those are taken at the next step)."""
        if closed:
            raise Overloaded("draining", "this model version is being replaced; retry", 1, status=503)
        if queued >= self.max_queue + max(0, self.max_active - active):
            self.metrics.rejected("queue_full")
            raise Overloaded(
                "queue_full",
                f"{active} streams are generating and {queued} are waiting (limits "
                f"RNNOPS_MAX_STREAMS={self.max_active}, RNNOPS_MAX_QUEUE={self.max_queue}); retry later",
                self.retry_after(queued),
                status=429,
            )

    def retry_after(self, queued: int) -> int:
        """Seconds a rejected client should wait: the queue ahead of it, drained at the current pace."""
        est = self.avg_stream_s * (queued + 1) / max(1, self.max_active)
        return int(min(60, max(1, math.ceil(est))))

    def finished(self, stream: Stream) -> None:
        """A stream ended: its time feeds the pace (and the metrics)."""
        t = stream.timing
        if t.admitted is not None and t.finished is not None:
            self.avg_stream_s = 0.9 * self.avg_stream_s + 0.1 * (t.finished - t.admitted)
        self.metrics.finished(stream)
