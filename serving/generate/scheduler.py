"""Policy: continuous batching of streamed generation for one char model (the step scheduler).

One loop per served char-model version per worker, in its own thread. Each step:

1. retire streams that were cancelled (a client went away) and expire queued ones that waited
   longer than the queue timeout; admit waiting streams while there are free slots (FIFO);
2. **decode**: one batched ORT call at T=1 for every stream past its prompt, with the state it
   carried from the last step; sample each stream with its own seeded generator; deliver the
   characters; retire the ones that finished (length, stop string);
3. **prefill**: advance every stream still reading its prompt by its next chunk (up to
   ``prefill_chunk`` characters, so a long prompt cannot stall the others), batched: one call
   per distinct chunk length over all streams with that length, no padding, so each state is
   exactly the unpadded one; a stream whose prompt is done samples its first character from the
   prefill logits and joins the decode batch at the next step.

Every active stream gets exactly one character per step (fair by construction); waiting streams
are admitted in arrival order. The queue is bounded: :meth:`StepScheduler.submit` raises
:class:`Overloaded` (429) when it is full; a stream that waits longer than the timeout finishes
with ``queue_timeout`` (503). Errors inside a step fail only the streams in that call and the loop
carries on. :class:`NaiveGenerator` is the baseline the benchmark compares against: each request
calls ORT on its own, one character per call.

The scheduler is transport-agnostic: a :class:`Stream` is filled by the loop thread and read by
one consumer, either an asyncio task (woken once per step through ``call_soon_threadsafe``) or a
plain thread (:meth:`Stream.result`). The runtime is anything with the :class:`runtime.Runtime`
char API (``zero_state``, ``step``, ``take``, ``concat``, ``vocab``), so tests drive it with a fake.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from rnnops.serving.generate.sampling import SamplingParams, new_rng, sample_batch

log = logging.getLogger("rnnops.serving")

_ids = itertools.count(1)


class Overloaded(Exception):
    """No room for a stream: answered 429 (queue full) or 503 (waited too long, draining)."""

    def __init__(self, reason: str, message: str, retry_after: int, status: int = 429):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.status = status


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: np.ndarray  # int64 token ids, at least one
    max_chars: int = 200
    params: SamplingParams = SamplingParams()
    seed: int | None = None  # None: a random seed (reported in the stats, so a text can be replayed)
    stop: tuple[str, ...] = ()


@dataclass
class _Timing:
    enqueued: float = field(default_factory=time.monotonic)
    admitted: float | None = None
    first_char: float | None = None
    finished: float | None = None


class Stream:
    """One generation in flight. Written by the scheduler thread, read by one consumer."""

    def __init__(self, request: GenerationRequest):
        self.id = next(_ids)
        self.request = request
        self.seed = request.seed if request.seed is not None else secrets.randbits(63)
        self.rng = new_rng(self.seed)
        self.phase = "queued"  # queued -> prefill -> decode -> done
        self.timing = _Timing()
        self.cursor = 0  # prompt characters prefilled so far
        self.state = None  # this stream's state while it prefills (batch of one)
        self.generated: list[str] = []  # every sampled character (stop string included)
        self._released = 0  # characters handed to the output queue
        self._out: deque[str] = deque()
        self.finish_reason: str | None = None  # length | stop | cancelled | queue_timeout | error | shutdown
        self.error: str | None = None
        self.cancelled = False
        self._done = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._waiting = False  # a consumer is blocked in wait()
        self._wake_on_output = True
        self._window = 0.0  # coalescing: seconds between wake-ups for characters
        self._last_wake = 0.0
        self._seen_phase = "queued"
        self._scheduler: "StepScheduler | NaiveGenerator | None" = None

    # ---- consumer side ---------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> "Stream":
        """Deliver wake-ups to an asyncio consumer on ``loop`` (call before submitting)."""
        self._loop = loop
        self._event = asyncio.Event()
        return self

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def admitted(self) -> bool:
        return self.phase != "queued"

    def drain(self) -> str:
        """Characters produced since the last drain (never part of a pending stop string)."""
        out = []
        q = self._out
        while q:
            out.append(q.popleft())
        return "".join(out)

    async def wait(self, timeout: float | None = None, output: bool = True, window: float = 0.0) -> None:
        """Until something new happened or ``timeout``: admission, the end, or characters (unless
        ``output`` is False), the latter at most once per ``window`` seconds.

        Coalescing happens on the scheduler's side: at a step boundary it wakes a waiting
        consumer with characters only once its window since the last wake-up has passed, so a
        streaming consumer needs no timer of its own (with hundreds of streams, timers are what
        an event loop spends its time on). The first characters and the end wake it at once.
        """
        assert self._event is not None, "bind() the stream to the event loop first"
        self._wake_on_output = output
        self._window = window
        self._event.clear()
        self._waiting = True
        try:
            if self.done or self.phase != self._seen_phase or (
                    output and self._out and time.monotonic() - self._last_wake >= window):
                return
            if timeout is None:
                await self._event.wait()
            else:
                async with asyncio.timeout(timeout):  # no extra task per wait (unlike wait_for)
                    await self._event.wait()
        except TimeoutError:
            pass
        finally:
            self._waiting = False
            self._seen_phase = self.phase
            self._last_wake = time.monotonic()

    def cancel(self) -> None:
        """The client went away: the slot is freed at the next step boundary."""
        if not self.done:
            self.cancelled = True
            if self._scheduler is not None:
                self._scheduler.wakeup()

    def result(self, timeout: float | None = None) -> str:
        """Block until finished (threads, tests); returns the whole text."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"stream {self.id} not finished after {timeout}s")
        return self.text

    @property
    def text(self) -> str:
        """What was delivered (a pending stop-string prefix is not)."""
        return "".join(self.generated[: self._released])

    def stats(self) -> dict:
        t = self.timing
        end = t.finished or time.monotonic()
        n = len(self.text)
        ttfc = (t.first_char - t.enqueued) if t.first_char else None
        busy = end - t.enqueued
        return {
            "chars": n,
            "finish_reason": self.finish_reason,
            "seed": self.seed,
            "ttfc_ms": round(ttfc * 1e3, 3) if ttfc is not None else None,
            "queue_ms": round(((t.admitted or end) - t.enqueued) * 1e3, 3),
            "duration_ms": round(busy * 1e3, 3),
            "chars_per_s": round(n / busy, 2) if busy > 0 else None,
            "prompt_chars": int(len(self.request.prompt_ids)),
        }

    # ---- scheduler side ----------------------------------------------------------------

    def _push(self, ch: str) -> bool:
        """Add a sampled character; returns True when the stream is finished."""
        now = time.monotonic()
        if self.timing.first_char is None:
            self.timing.first_char = now
        self.generated.append(ch)
        req = self.request
        if req.stop:
            text = "".join(self.generated[-max(len(s) for s in req.stop):])
            for s in req.stop:
                if text.endswith(s):
                    self._release(len(self.generated) - len(s))
                    self._finish("stop")
                    return True
        if len(self.generated) >= req.max_chars:
            self._release(len(self.generated))
            self._finish("length")
            return True
        hold = _pending_stop_prefix(self.generated, req.stop) if req.stop else 0
        self._release(len(self.generated) - hold)
        return False

    def _release(self, upto: int) -> None:
        if upto > self._released:
            self._out.extend(self.generated[self._released:upto])
            self._released = upto

    def _finish(self, reason: str, error: str | None = None) -> None:
        if self.finish_reason is not None:
            return
        self.error = error
        self.timing.finished = time.monotonic()
        self.phase = "done"
        self.state = None
        self.finish_reason = reason
        self._done.set()


def _pending_stop_prefix(generated: list[str], stops: tuple[str, ...]) -> int:
    """Length of the longest tail of ``generated`` that could still become a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(generated)), best, -1):
            if "".join(generated[-n:]) == s[:n]:
                best = n
                break
    return best


class SchedulerMetrics:
    """Where the scheduler reports; the default does nothing (see :mod:`metrics`)."""

    def step(self, batch: int, seconds: float, chars: int) -> None: ...
    def depth(self, active: int, queued: int) -> None: ...
    def finished(self, stream: Stream) -> None: ...
    def rejected(self, reason: str) -> None: ...


def _notify(streams) -> None:
    """Wake the asyncio consumers of ``streams``: one call_soon_threadsafe per event loop."""
    by_loop: dict = {}
    now = time.monotonic()
    for s in streams:
        if s._loop is None or not s._waiting:
            continue
        if s.done or s.phase != s._seen_phase or (
                s._wake_on_output and s._out and now - s._last_wake >= s._window):
            s._waiting = False  # one wake-up per wait
            by_loop.setdefault(s._loop, []).append(s._event)
    for loop, events in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_all, events)
        except RuntimeError:  # the loop closed (shutdown)
            pass


def _set_all(events) -> None:
    for e in events:
        e.set()


class StepScheduler:
    """Continuous batching for one char-model runtime (see the module docstring)."""

    def __init__(self, runtime, *, max_active: int = 256, max_queue: int = 256, queue_timeout: float = 30.0,
                 prefill_chunk: int = 256, metrics: SchedulerMetrics | None = None, name: str = "char"):
        self.runtime = runtime
        self.vocab = list(runtime.vocab)
        self.max_active = max_active
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.prefill_chunk = prefill_chunk
        self.metrics = metrics or SchedulerMetrics()
        self.name = name
        self._cv = threading.Condition()
        self._queue: deque[Stream] = deque()
        self._prefill: list[Stream] = []
        self._decode: list[Stream] = []
        self._state = runtime.zero_state(0)
        self._tokens = np.zeros(0, np.int64)
        self._temp = np.zeros(0)
        self._topk = np.zeros(0, np.int64)
        self._topp = np.zeros(0)
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
        return not (self._queue or self._prefill or self._decode)

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: the queue ahead of it, drained at the current pace."""
        est = self._avg_stream_s * (len(self._queue) + 1) / max(1, self.max_active)
        return int(min(60, max(1, math.ceil(est))))

    def submit(self, request: GenerationRequest, stream: Stream | None = None) -> Stream:
        """Queue a generation; raises :class:`Overloaded` when the queue is full or closed."""
        s = stream or Stream(request)
        s._scheduler = self
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
        left = list(self._queue) + self._prefill + self._decode
        for s in left:
            s._finish("shutdown", "the server is shutting down")
        self._queue.clear()
        self._prefill, self._decode = [], []
        _notify(left)

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
                self._fail(self._prefill + self._decode, f"internal error: {exc}")
                self._prefill, self._decode = [], []
                self._reset_decode()

    def step(self) -> None:
        """One scheduling step (see the module docstring)."""
        t0 = time.perf_counter()
        touched: list[Stream] = []
        now = time.monotonic()
        touched.extend(self._retire_cancelled())  # first, so their slots are reused this step
        with self._cv:
            if self._queue:
                # cancelled ones leave; free slots go in arrival order; whoever still waits
                # past the timeout is answered instead of waiting on
                waiting = [s for s in self._queue if not s.cancelled]
                for s in self._queue:
                    if s.cancelled:
                        s._finish("cancelled")
                        touched.append(s)
                free = max(0, self.max_active - self.active)
                admitted, rest = waiting[:free], waiting[free:]
                self._queue = deque()
                for s in rest:
                    if now - s.timing.enqueued > self.queue_timeout:
                        s._finish("queue_timeout", f"no free slot within {self.queue_timeout:g}s "
                                                   "(RNNOPS_QUEUE_TIMEOUT)")
                        self.metrics.rejected("queue_timeout")
                        touched.append(s)
                    else:
                        self._queue.append(s)
            else:
                admitted = []
        for s in admitted:
            s.phase = "prefill"
            s.timing.admitted = now
            touched.append(s)
        self._prefill.extend(admitted)

        decoded = 0
        if self._decode:
            decoded = len(self._decode)
            touched.extend(self._decode_step())
        if self._prefill:
            touched.extend(self._prefill_step())

        self.steps += 1
        dt = time.perf_counter() - t0
        self.chars += decoded
        if decoded:
            self.metrics.step(decoded, dt, decoded)
        self.metrics.depth(self.active, len(self._queue))
        for s in touched:
            if s.done:
                self._finished(s)
        _notify(touched)

    def _finished(self, s: Stream) -> None:
        t = s.timing
        if t.admitted is not None and t.finished is not None:
            self._avg_stream_s = 0.9 * self._avg_stream_s + 0.1 * (t.finished - t.admitted)
        self.metrics.finished(s)

    # ------------------------------------------------------------------ decode batch

    def _reset_decode(self) -> None:
        self._state = self.runtime.zero_state(0)
        self._tokens = np.zeros(0, np.int64)
        self._params()

    def _params(self) -> None:
        ps = [s.request.params for s in self._decode]
        self._temp = np.array([p.temperature for p in ps], dtype=np.float64)
        self._topk = np.array([p.top_k for p in ps], dtype=np.int64)
        self._topp = np.array([p.top_p for p in ps], dtype=np.float64)

    def _keep(self, keep: list[int]) -> None:
        """Shrink the decode batch to positions ``keep`` (state, tokens, sampling params)."""
        self._decode = [self._decode[j] for j in keep]
        self._state = self.runtime.take(self._state, keep) if keep else self.runtime.zero_state(0)
        self._tokens = self._tokens[keep]
        self._params()

    def _retire_cancelled(self) -> list[Stream]:
        gone = []
        for s in [s for s in self._prefill if s.cancelled]:
            self._prefill.remove(s)
            s._finish("cancelled")
            gone.append(s)
        if any(s.cancelled for s in self._decode):
            keep = [j for j, s in enumerate(self._decode) if not s.cancelled]
            for s in self._decode:
                if s.cancelled:
                    s._finish("cancelled")
                    gone.append(s)
            self._keep(keep)
        return gone

    def _decode_step(self) -> list[Stream]:
        streams = self._decode
        try:
            logits, state = self.runtime.step(self._tokens[:, None], self._state)
        except Exception as exc:
            log.exception("scheduler %s: decode step failed for %d streams", self.name, len(streams))
            self._fail(streams, f"model step failed: {exc}")
            self._decode = []
            self._reset_decode()
            return streams
        u = np.fromiter((s.rng.random() for s in streams), dtype=np.float64, count=len(streams))
        ids = sample_batch(logits, self._temp, self._topk, self._topp, u)
        self._state, self._tokens = state, ids
        vocab = self.vocab
        finished = [j for j, (s, t) in enumerate(zip(streams, ids.tolist())) if s._push(vocab[t])]
        if finished:
            done = set(finished)
            self._keep([j for j in range(len(streams)) if j not in done])
        return streams

    # ------------------------------------------------------------------ prefill

    def _prefill_step(self) -> list[Stream]:
        rt = self.runtime
        chunk = {s.id: min(self.prefill_chunk, len(s.request.prompt_ids) - s.cursor) for s in self._prefill}
        ready: list[tuple[Stream, np.ndarray, object]] = []  # prompt done: (stream, logits row, state)
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
                        ready.append((s, logits[j], s.state))
        except Exception as exc:
            log.exception("scheduler %s: prefill failed for %d streams", self.name, len(self._prefill))
            failed = list(self._prefill)
            self._fail(failed, f"prompt prefill failed: {exc}")
            self._prefill = []
            return failed
        if not ready:
            return []
        streams = [r[0] for r in ready]
        ps = [s.request.params for s in streams]
        u = np.array([s.rng.random() for s in streams])
        ids = sample_batch(np.stack([r[1] for r in ready]), np.array([p.temperature for p in ps]),
                           np.array([p.top_k for p in ps]), np.array([p.top_p for p in ps]), u)
        joining, joining_states, joining_ids = [], [], []
        for s, st, t in zip(streams, [r[2] for r in ready], ids.tolist()):
            self._prefill.remove(s)
            s.state = None
            if not s._push(self.vocab[t]):
                s.phase = "decode"
                joining.append(s)
                joining_states.append(st)
                joining_ids.append(t)
        if joining:
            self._decode.extend(joining)
            self._state = rt.concat([self._state, *joining_states])
            self._tokens = np.concatenate([self._tokens, np.array(joining_ids, np.int64)])
            self._params()
        return streams

    def _fail(self, streams: list[Stream], message: str) -> None:
        self._last_error = message
        for s in streams:
            s._finish("error", message)
        _notify(streams)

    def describe(self) -> dict:
        return {"mode": "batched", "active": self.active, "queued": self.queued, "steps": self.steps,
                "chars": self.chars, "max_streams": self.max_active, "max_queue": self.max_queue,
                "closed": self._closed, "last_error": self._last_error}


class NaiveGenerator:
    """The baseline: every request generates on its own thread, one ORT call per character at
    batch 1 (what a plain request->response handler does). Same Stream API, same bounds."""

    def __init__(self, runtime, *, max_active: int = 256, max_queue: int = 256, queue_timeout: float = 30.0,
                 prefill_chunk: int = 256, metrics: SchedulerMetrics | None = None, name: str = "char"):
        self.runtime = runtime
        self.vocab = list(runtime.vocab)
        self.max_active = max_active
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.metrics = metrics or SchedulerMetrics()
        self.name = name
        self._slots = threading.BoundedSemaphore(max_active)
        self._lock = threading.Lock()
        self._waiting = 0
        self._running = 0
        self._closed = False
        self.chars = 0

    @property
    def active(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return self._waiting

    @property
    def idle(self) -> bool:
        return self._running == 0 and self._waiting == 0

    def retry_after(self) -> int:
        return 1

    def start(self) -> "NaiveGenerator":
        return self

    def wakeup(self) -> None:
        pass

    def close(self) -> None:
        self._closed = True

    def stop(self, timeout: float = 5.0) -> None:
        self._closed = True

    @property
    def running(self) -> bool:
        return not self.idle

    def submit(self, request: GenerationRequest, stream: Stream | None = None) -> Stream:
        s = stream or Stream(request)
        s._scheduler = self
        with self._lock:
            if self._closed:
                raise Overloaded("draining", "this model version is being replaced; retry", 1, status=503)
            if self._waiting >= self.max_queue + max(0, self.max_active - self._running):
                self.metrics.rejected("queue_full")
                raise Overloaded("queue_full", f"{self._running} streams generating, {self._waiting} waiting; retry later",
                                 1, status=429)
            self._waiting += 1
        threading.Thread(target=self._generate, args=(s,), daemon=True).start()
        return s

    def _generate(self, s: Stream) -> None:
        got = self._slots.acquire(timeout=self.queue_timeout)
        with self._lock:
            self._waiting -= 1
            if got:
                self._running += 1
        if not got:
            s._finish("queue_timeout", f"no free slot within {self.queue_timeout:g}s")
            _notify([s])
            return
        try:
            s.phase = "prefill"
            s.timing.admitted = time.monotonic()
            _notify([s])
            rt, req = self.runtime, s.request
            logits, state = rt.step(req.prompt_ids[None, :], rt.zero_state(1))
            p = req.params
            temp, topk, topp = np.array([p.temperature]), np.array([p.top_k]), np.array([p.top_p])
            s.phase = "decode"
            while not s.cancelled:
                t = int(sample_batch(logits, temp, topk, topp, np.array([s.rng.random()]))[0])
                finished = s._push(self.vocab[t])
                self.chars += 1
                _notify([s])
                if finished:
                    break
                logits, state = rt.step(np.array([[t]], np.int64), state)
            if s.cancelled:
                s._finish("cancelled")
        except Exception as exc:
            log.exception("naive generation failed")
            s._finish("error", f"model step failed: {exc}")
        finally:
            with self._lock:
                self._running -= 1
            self._slots.release()
            self.metrics.finished(s)
            _notify([s])

    def describe(self) -> dict:
        return {"mode": "naive", "active": self._running, "queued": self._waiting, "chars": self.chars,
                "max_streams": self.max_active, "max_queue": self.max_queue, "closed": self._closed}
