"""Policy: continuous batching of streamed generation for one char model (the step scheduler).

One loop per served char-model version per worker, in its own thread. Each step:

1. retire streams that were cancelled (a client went away) and expire queued ones that waited
   longer than the queue timeout; admit waiting streams while there are free slots (FIFO);
2. **decode**: one batched runtime call at T=1 for every stream past its prompt
   (:class:`DecodeBatch`), with the state it carried from the last step; sample each stream
   with its own seeded generator; deliver the characters; retire the ones that finished
   (length, stop string);
3. **prefill**: advance every stream still reading its prompt by its next chunk (up to
   ``prefill_chunk`` characters, so a long prompt cannot stall the others), batched: one call
   per distinct chunk length over all streams with that length, no padding, so each state is
   exactly the unpadded one; a stream whose prompt is done samples its first character from the
   prefill logits and joins the decode batch at the next step.

Every active stream gets exactly one character per step (fair by construction); waiting streams
are admitted in arrival order. The queue is bounded: :meth:`StepScheduler.submit` raises
:class:`Overloaded` (429) when it is full; a stream that waits longer than the timeout finishes
with ``queue_timeout`` (503). Errors inside a step fail only the streams in that call and the loop
carries on.

The scheduler decides; the runtime executes; the transport reads. The runtime is anything with
the :class:`~rnnops.serving.runtime.Runtime` char API (``zero_state``, ``step``, ``take``,
``concat``, ``vocab``), so tests drive it with a fake. After each step the scheduler hands the
streams it touched to ``on_step`` (the HTTP layer wakes its consumers there, see
:mod:`rnnops.serving.http.generate`); it never sees an event loop.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from typing import Callable

import numpy as np

from rnnops.serving.errors import Overloaded
from rnnops.serving.generate.sampling import sample_batch
from rnnops.serving.generate.stream import GenerationRequest, Stream

log = logging.getLogger("rnnops.serving")

__all__ = ["DecodeBatch", "GenerationRequest", "Overloaded", "SchedulerMetrics", "StepScheduler", "Stream"]

OnStep = Callable[[list[Stream]], None]


def _no_one(streams: list[Stream]) -> None:
    pass


class SchedulerMetrics:
    """Where the scheduler reports; the default does nothing (see :mod:`metrics`)."""

    def step(self, batch: int, seconds: float, chars: int) -> None: ...
    def depth(self, active: int, queued: int) -> None: ...
    def finished(self, stream: Stream) -> None: ...
    def rejected(self, reason: str) -> None: ...


class DecodeBatch:
    """The streams past their prompt, with their batched state, last tokens and sampling
    parameters: one object, so the rows can never fall out of line."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.clear()

    def clear(self) -> None:
        self.streams: list[Stream] = []
        self.state = self.runtime.zero_state(0)
        self.tokens = np.zeros(0, np.int64)
        self._params()

    def __len__(self) -> int:
        return len(self.streams)

    def _params(self) -> None:
        ps = [s.request.params for s in self.streams]
        self.temperature = np.array([p.temperature for p in ps], dtype=np.float64)
        self.top_k = np.array([p.top_k for p in ps], dtype=np.int64)
        self.top_p = np.array([p.top_p for p in ps], dtype=np.float64)
        self.logprobs = any(s.request.logprobs is not None for s in self.streams)

    def add(self, streams: list[Stream], states: list, tokens: list[int]) -> None:
        """Streams joining after their prefill, each with its own state (batch of one)."""
        self.streams.extend(streams)
        self.state = self.runtime.concat([self.state, *states])
        self.tokens = np.concatenate([self.tokens, np.array(tokens, np.int64)])
        self._params()

    def keep(self, rows: list[int]) -> None:
        """Shrink the batch to ``rows`` (positions, in order)."""
        if not rows:
            self.clear()
            return
        self.streams = [self.streams[j] for j in rows]
        self.state = self.runtime.take(self.state, rows)
        self.tokens = self.tokens[rows]
        self._params()

    def advance(self, state, tokens: np.ndarray) -> None:
        self.state, self.tokens = state, tokens


class StepScheduler:
    """Continuous batching for one char-model runtime (see the module docstring)."""

    def __init__(self, runtime, *, max_active: int = 256, max_queue: int = 256, queue_timeout: float = 30.0,
                 prefill_chunk: int = 256, metrics: SchedulerMetrics | None = None, name: str = "char",
                 on_step: OnStep | None = None):
        self.runtime = runtime
        self.vocab = list(runtime.vocab)
        self.max_active = max_active
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.prefill_chunk = prefill_chunk
        self.metrics = metrics or SchedulerMetrics()
        self.name = name
        self.on_step = on_step or _no_one
        self._cv = threading.Condition()
        self._queue: deque[Stream] = deque()
        self._prefill: list[Stream] = []
        self._decode = DecodeBatch(runtime)
        self._thread: threading.Thread | None = None
        self._closed = False  # no new streams (draining after a reload)
        self._stopping = False
        self.steps = 0
        self.chars = 0
        self._avg_stream_s = 1.0
        self._last_error: str | None = None

    # ------------------------------------------------------------------ public API

    @property
    def active(self) -> int:
        return len(self._decode) + len(self._prefill)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        return not (self._queue or self._prefill or len(self._decode))

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: the queue ahead of it, drained at the current pace."""
        est = self._avg_stream_s * (len(self._queue) + 1) / max(1, self.max_active)
        return int(min(60, max(1, math.ceil(est))))

    def submit(self, request: GenerationRequest, stream: Stream | None = None) -> Stream:
        """Queue a generation; raises :class:`Overloaded` when the queue is full or closed."""
        s = stream or Stream(request)
        s.scheduler = self
        with self._cv:
            if self._closed:
                raise Overloaded("draining", "this model version is being replaced; retry", 1, status=503)
            free = self.max_active - self.active
            if len(self._queue) >= self.max_queue + max(0, free):
                self.metrics.rejected("queue_full")
                raise Overloaded(
                    "queue_full",
                    f"{self.active} streams are generating and {len(self._queue)} are waiting (limits "
                    f"RNNOPS_MAX_STREAMS={self.max_active}, RNNOPS_MAX_QUEUE={self.max_queue}); retry later",
                    self.retry_after(), status=429)
            self._queue.append(s)
            self.metrics.depth(self.active, len(self._queue))
            self._cv.notify()
        return s

    def wakeup(self) -> None:
        with self._cv:
            self._cv.notify()

    def start(self) -> "StepScheduler":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"rnnops-scheduler-{self.name}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Take no new streams; the loop ends once the ones it has are finished (hot reload)."""
        with self._cv:
            self._closed = True
            self._cv.notify()

    def stop(self, timeout: float = 5.0) -> None:
        """End now: unfinished streams finish with ``shutdown``."""
        with self._cv:
            self._closed = True
            self._stopping = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        left = list(self._queue) + self._prefill + self._decode.streams
        for s in left:
            s.finish("shutdown", "the server is shutting down")
        self._queue.clear()
        self._prefill = []
        self._decode.clear()
        self.on_step(left)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_until_idle(self, max_steps: int = 1_000_000) -> int:
        """Step on the calling thread until nothing is left (tests; no thread started)."""
        n = 0
        while not self.idle and n < max_steps:
            self.step()
            n += 1
        return n

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        while True:
            with self._cv:
                while self.idle and not self._stopping:
                    if self._closed:
                        return  # drained
                    self._cv.wait(1.0)
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as exc:  # a bug in the step itself: fail what is in flight, keep serving
                log.exception("scheduler %s: step failed", self.name)
                self._fail(self._prefill + self._decode.streams, f"internal error: {exc}")
                self._prefill = []
                self._decode.clear()

    def step(self) -> None:
        """One scheduling step (see the module docstring)."""
        t0 = time.perf_counter()
        touched: list[Stream] = self._retire_cancelled()  # first, so their slots are reused this step
        admitted = self._admit(touched)
        self._prefill.extend(admitted)
        touched.extend(admitted)

        decoded = len(self._decode)
        if decoded:
            touched.extend(self._decode_step())
        if self._prefill:
            touched.extend(self._prefill_step())

        self.steps += 1
        self.chars += decoded
        if decoded:
            self.metrics.step(decoded, time.perf_counter() - t0, decoded)
        self.metrics.depth(self.active, len(self._queue))
        for s in touched:
            if s.done:
                self._finished(s)
        self.on_step(touched)

    def _admit(self, touched: list[Stream]) -> list[Stream]:
        """Waiting streams that get a free slot now, in arrival order; cancelled ones leave and
        whoever still waits past the timeout is answered instead of waiting on."""
        now = time.monotonic()
        with self._cv:
            if not self._queue:
                return []
            waiting = [s for s in self._queue if not s.cancelled]
            for s in self._queue:
                if s.cancelled:
                    s.finish("cancelled")
                    touched.append(s)
            free = max(0, self.max_active - self.active)
            admitted, rest = waiting[:free], waiting[free:]
            self._queue = deque()
            for s in rest:
                if now - s.timing.enqueued > self.queue_timeout:
                    s.finish("queue_timeout", f"no free slot within {self.queue_timeout:g}s (RNNOPS_QUEUE_TIMEOUT)")
                    self.metrics.rejected("queue_timeout")
                    touched.append(s)
                else:
                    self._queue.append(s)
        for s in admitted:
            s.phase = "prefill"
            s.timing.admitted = now
        return admitted

    def _finished(self, s: Stream) -> None:
        t = s.timing
        if t.admitted is not None and t.finished is not None:
            self._avg_stream_s = 0.9 * self._avg_stream_s + 0.1 * (t.finished - t.admitted)
        self.metrics.finished(s)

    def _retire_cancelled(self) -> list[Stream]:
        gone = []
        for s in [s for s in self._prefill if s.cancelled]:
            self._prefill.remove(s)
            s.finish("cancelled")
            gone.append(s)
        batch = self._decode
        if any(s.cancelled for s in batch.streams):
            keep = [j for j, s in enumerate(batch.streams) if not s.cancelled]
            for s in batch.streams:
                if s.cancelled:
                    s.finish("cancelled")
                    gone.append(s)
            batch.keep(keep)
        return gone

    # ------------------------------------------------------------------ decode

    def _decode_step(self) -> list[Stream]:
        batch = self._decode
        streams = batch.streams
        try:
            logits, state = self.runtime.step(batch.tokens[:, None], batch.state)
        except Exception as exc:
            log.exception("scheduler %s: decode step failed for %d streams", self.name, len(streams))
            self._fail(streams, f"model step failed: {exc}")
            batch.clear()
            return streams
        u = np.fromiter((s.rng.random() for s in streams), dtype=np.float64, count=len(streams))
        ids = sample_batch(logits, batch.temperature, batch.top_k, batch.top_p, u)
        batch.advance(state, ids)
        vocab = self.vocab
        if batch.logprobs:  # some stream asked for log-probabilities (OpenAI `logprobs`)
            for s, row, t in zip(streams, logits, ids.tolist()):
                s.note_logprobs(row, t, vocab)
        finished = [j for j, (s, t) in enumerate(zip(streams, ids.tolist())) if s.push(vocab[t])]
        if finished:
            done = set(finished)
            batch.keep([j for j in range(len(streams)) if j not in done])
        return streams

    # ------------------------------------------------------------------ prefill

    def _prefill_step(self) -> list[Stream]:
        rt = self.runtime
        chunk = {s.id: min(self.prefill_chunk, len(s.request.prompt_ids) - s.cursor) for s in self._prefill}
        ready: list[tuple[Stream, np.ndarray]] = []  # prompt done: (stream, logits row)
        try:
            # One call per distinct chunk length, no padding: a stream's prompt is cut the same
            # way whoever else is prefilling, so its state is exactly the one it gets alone.
            for b in sorted(set(chunk.values())):
                group = [s for s in self._prefill if chunk[s.id] == b]
                state = rt.concat([s.state if s.state is not None else rt.zero_state(1) for s in group])
                toks = np.stack([s.request.prompt_ids[s.cursor: s.cursor + b] for s in group])
                logits, state = rt.step(toks, state)
                for j, s in enumerate(group):
                    s.cursor += b
                    s.state = rt.take(state, [j]) if len(group) > 1 else state
                    if s.cursor == len(s.request.prompt_ids):
                        ready.append((s, logits[j]))
        except Exception as exc:
            log.exception("scheduler %s: prefill failed for %d streams", self.name, len(self._prefill))
            failed = list(self._prefill)
            self._fail(failed, f"prompt prefill failed: {exc}")
            self._prefill = []
            return failed
        if not ready:
            return []
        streams = [s for s, _ in ready]
        ps = [s.request.params for s in streams]
        u = np.array([s.rng.random() for s in streams])
        ids = sample_batch(np.stack([row for _, row in ready]), np.array([p.temperature for p in ps]),
                           np.array([p.top_k for p in ps]), np.array([p.top_p for p in ps]), u)
        joining, states, tokens = [], [], []
        for (s, row), t in zip(ready, ids.tolist()):
            self._prefill.remove(s)
            state, s.state = s.state, None
            s.note_logprobs(row, t, self.vocab)
            if not s.push(self.vocab[t]):
                s.phase = "decode"
                joining.append(s)
                states.append(state)
                tokens.append(t)
        if joining:
            self._decode.add(joining, states, tokens)
        return streams

    def _fail(self, streams: list[Stream], message: str) -> None:
        self._last_error = message
        for s in streams:
            s.finish("error", message)
        self.on_step(streams)

    def describe(self) -> dict:
        return {"mode": "batched", "active": self.active, "queued": self.queued, "steps": self.steps,
                "chars": self.chars, "max_streams": self.max_active, "max_queue": self.max_queue,
                "closed": self._closed, "last_error": self._last_error}
