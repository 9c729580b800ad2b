"""Policy: continuous batching of streamed generation for one char model (the step scheduler).

One loop per served char-model version, on its own thread (in the engine process, see
:mod:`rnnops.serving.generate.engine`). Each step:

1. retire streams that were cancelled (a client went away) and expire queued ones that waited
   longer than the queue timeout; admit waiting streams while there are free slots (FIFO);
2. **decode**, lane by lane (:class:`DecodeBatch`): collect the lane's last model call (T=1 for
   every stream in it, with the state it carried), sample each stream with its own seeded
   generator, deliver the characters, retire the ones that finished (length, stop string); then
   let streams join the lane and launch its next call;
3. **prefill**: advance every stream still reading its prompt by its next chunk (up to
   ``prefill_chunk`` characters, so a long prompt cannot stall the others), batched: one call
   per distinct chunk length over all streams with that length, no padding, so each state is
   exactly the unpadded one; a stream whose prompt is done samples its first character from the
   prefill logits and joins a lane at the next step.

**Lanes** (``lanes=2``, ``RNNOPS_DECODE_LANES``): model calls run on a :class:`Runner` thread, and
once the batch is large enough it is cut in two lanes. While the runner computes one lane's
step, this thread samples and delivers the other's, so the model is busy nearly all the time
instead of idling through the Python part of every step. It pays only where handing work between
two threads is cheap: on a small VM, waking a thread costs more than the overlap wins, so the
service runs one lane by default (docs/serving.md has both measurements).
Results do not depend on the cut: the runtime is batch-invariant (a row's output is the same
whatever shares the call) and each stream draws its uniforms from its own generator, so a seed
gives the same text alone, among 64 streams, in either lane or moved between them. Small
batches stay in one lane: below ``2 * LANE_MIN_ROWS`` rows a kernel costs about the same for
half the rows, and two calls would cost twice.

Every active stream gets exactly one character per step (fair by construction); waiting streams
are admitted in arrival order. The queue is bounded: :meth:`StepScheduler.submit` raises
:class:`Overloaded` (429) when it is full; a stream that waits longer than the timeout finishes
with ``queue_timeout`` (503). Errors inside a model call fail only the streams in that call and
the loop carries on.

The step in vLLM's shape: this module **decides** (who is admitted, who prefills which chunk
(:meth:`StepScheduler._chunks`), which lane each stream decodes in (:meth:`StepScheduler._fill`));
the :class:`~rnnops.serving.generate.executor.Executor` **executes** (the model calls on the
runner, the sampling) and returns typed outputs; the scheduler then **updates from the output**
(:meth:`StepScheduler._decoded`, :meth:`StepScheduler._prefill_step`: characters delivered,
finished streams retired). The lanes' rows are data (:mod:`rnnops.serving.generate.lanes`).
Admission (the queue bound, ``Retry-After``) is the shared
:class:`~rnnops.serving.generate.client.Admission`. The runtime is anything with the
:class:`~rnnops.serving.runtime.Runtime` char API (``zero_state``, ``run``, ``take``,
``concat``, ``vocab``), so tests drive it with a fake. After each step the scheduler hands the
streams it touched to ``on_step`` (the engine forwards them to the HTTP process, which wakes its
consumers, see :mod:`rnnops.serving.http.streaming`); it never sees an event loop.

Over 400 lines on purpose: a step's three parts (decide, hand the calls to the executor,
update from the output) are one loop a reader follows top to bottom; the lanes' data
(lanes.py), the execution (executor.py) and admission (client.py) already live apart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnops.serving.batching import group_by
from rnnops.serving.errors import Overloaded
from rnnops.serving.generate.client import Admission, OnStep, SchedulerMetrics, no_one
from rnnops.serving.generate.executor import DecodeOutput, Executor, PrefillOutput
from rnnops.serving.generate.lanes import LANE_MIN_ROWS, UNIFORM_BLOCK, DecodeBatch, Row
from rnnops.serving.generate.stream import GenerationRequest, Stream

if TYPE_CHECKING:
    from rnnops.serving.generate.runner import Runner
    from rnnops.serving.runtime import Runtime

log = logging.getLogger("rnnops.serving")

# A decode-graph call runs at most about this long (its steps x the measured time per step): a
# stream that arrives during a call waits for its end to join, and a stream's characters come one
# call apart, so K adapts to the step time (fewer steps for a big batch or a busy machine).
CALL_BUDGET_S = 0.04

__all__ = ["DecodeBatch", "GenerationRequest", "Overloaded", "SchedulerMetrics", "StepScheduler", "Stream"]


class StepScheduler:
    """Continuous batching for one char-model runtime (see the module docstring)."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        max_active: int = 256,
        max_queue: int = 256,
        queue_timeout: float = 30.0,
        prefill_chunk: int = 256,
        metrics: SchedulerMetrics | None = None,
        name: str = "char",
        on_step: OnStep | None = None,
        lanes: int = 1,
        decode_steps: int = 0,
        call_budget_s: float = CALL_BUDGET_S,
    ) -> None:
        self.runtime = runtime
        self.vocab = list(runtime.vocab)
        self.max_active = max_active
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.prefill_chunk = prefill_chunk
        self.metrics = metrics or SchedulerMetrics()
        self.admission = Admission(max_active, max_queue, self.metrics)
        self.name = name
        self.on_step = on_step or no_one
        self.executor = Executor(runtime, name, decode_steps)
        self.call_budget_s = call_budget_s
        # characters by token id, for turning a call's [steps, rows] ids into one string per row
        # at once (numpy's fixed-width strings drop trailing NULs: a vocabulary with one keeps the
        # plain join)
        single = all(len(c) == 1 and c != "\x00" for c in self.vocab) and self.vocab
        self._chars = np.array(self.vocab, dtype="<U1") if single else None
        self._cv = threading.Condition()
        self._queue: deque[Stream] = deque()
        self._prefill: list[Stream] = []
        self._lanes = [DecodeBatch(runtime) for _ in range(max(1, int(lanes)))]
        self._joining: list[Row] = []  # past their prompt (or moved), waiting for a lane's turn
        self._thread: threading.Thread | None = None
        self._closed = False  # no new streams (draining after a reload)
        self._stopping = False
        self.steps = 0
        self.chars = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ public API

    @property
    def runner(self) -> Runner:
        return self.executor.runner

    @property
    def active(self) -> int:
        return sum(len(lane) for lane in self._lanes) + len(self._joining) + len(self._prefill)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def idle(self) -> bool:
        return not (self._queue or self._prefill or self._joining or any(len(lane) for lane in self._lanes))

    @property
    def lane_sizes(self) -> list[int]:
        return [len(lane) for lane in self._lanes]

    def retry_after(self) -> int:
        return self.admission.retry_after(len(self._queue))

    def submit(self, request: GenerationRequest, stream: Stream | None = None) -> Stream:
        """Queue a generation; raises :class:`Overloaded` when the queue is full or closed."""
        s = stream or Stream(request)
        s.scheduler = self
        with self._cv:
            self.admission.check(self.active, len(self._queue), self._closed)
            self._queue.append(s)
            self.metrics.depth(self.active, len(self._queue))
            self._cv.notify()
        return s

    def wakeup(self) -> None:
        with self._cv:
            self._cv.notify()

    def cancel(self, stream: Stream) -> None:
        """A stream's client went away: it leaves at the next step boundary."""
        self.wakeup()

    def start(self) -> StepScheduler:
        if self._thread is None:
            self.executor.start()
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
        self.executor.stop(timeout)
        left = list(self._queue) + self._prefill + [r.stream for r in self._joining]
        for lane in self._lanes:
            left += lane.streams
            lane.clear()
            lane.pending = None
        for s in left:
            s.finish("shutdown", "the server is shutting down")
        self._queue.clear()
        self._prefill = []
        self._joining = []
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
                        self.executor.stop()
                        return  # drained
                    self._cv.wait(1.0)
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as exc:  # a bug in the step itself: fail what is in flight, keep serving
                log.exception("scheduler %s: step failed", self.name)
                failed = self._prefill + [r.stream for r in self._joining]
                for lane in self._lanes:
                    if lane.pending is not None:
                        try:
                            lane.pending.result()  # let its call end before the lane is reused
                        except Exception:
                            pass
                    failed += lane.streams
                    lane.clear()
                    lane.pending = None
                self._fail(failed, f"internal error: {exc}")
                self._prefill = []
                self._joining = []

    def step(self) -> None:
        """One scheduling step: decide, execute, update from the output (see the module docstring)."""
        t0 = time.perf_counter()
        touched: list[Stream] = self._retire_cancelled()  # first, so their slots are reused this step
        admitted = self._admit(touched)
        self._prefill.extend(admitted)
        touched.extend(admitted)

        decoded = rows = 0
        for k, lane in enumerate(self._lanes):
            if lane.pending is not None:
                rows += len(lane)
                streams, chars = self._decoded(lane)
                decoded += chars
                touched.extend(streams)
            self._fill(k, lane)
            if len(lane):
                self.executor.launch(lane, self._lanes, self._steps(lane))
        if self._prefill:
            touched.extend(self._prefill_step())

        self.steps += 1
        self.chars += decoded
        if decoded:
            self.metrics.step(rows, time.perf_counter() - t0, decoded)
        self.metrics.depth(self.active, len(self._queue))
        for s in touched:
            if s.done:
                self.admission.finished(s)
        self.on_step(touched)

    # ------------------------------------------------------------------ deciding

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
            # A cancelled stream in a lane leaves at its lane's turn, later in this step, before
            # the lane's next call: its slot is free for whoever is admitted now.
            leaving = sum(s.cancelled for lane in self._lanes for s in lane.streams)
            free = max(0, self.max_active - self.active + leaving)
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

    def _retire_cancelled(self) -> list[Stream]:
        """Cancelled streams that are not in a lane (lanes drop theirs at their turn)."""
        gone = []
        for s in [s for s in self._prefill if s.cancelled]:
            self._prefill.remove(s)
            s.finish("cancelled")
            gone.append(s)
        if any(r.stream.cancelled for r in self._joining):
            for r in self._joining:
                if r.stream.cancelled:
                    r.stream.finish("cancelled")
                    gone.append(r.stream)
            self._joining = [r for r in self._joining if not r.stream.done]
        return gone

    def _fill(self, k: int, lane: DecodeBatch) -> None:
        """Move rows so the lanes stay near their target sizes: the joining streams first, and a
        lane far above its share gives rows to the others (they take them at their turn)."""
        total = sum(len(x) for x in self._lanes) + len(self._joining)
        target = self._targets(total)[k]
        last = k == len(self._lanes) - 1
        if len(lane) > target + max(2, target // 4):  # well above its share: hand the excess on
            self._joining.extend(lane.remove(list(range(target, len(lane)))))
        elif self._joining and (last or len(lane) < target):
            n = len(self._joining) if last else min(len(self._joining), target - len(lane))
            rows, self._joining = self._joining[:n], self._joining[n:]
            lane.add(rows)

    def _steps(self, lane: DecodeBatch) -> int:
        """How many decode steps the lane's next call runs: up to the executor's cap, but only
        until the next stream could join (none is prefilling, waiting to join a lane, or queued
        for a free slot: else one step, so it joins as soon as it would today) or the first
        stream in the lane reaches its length, and within :data:`CALL_BUDGET_S` at the measured time
        per step. A stream that ends on a stop string within the call frees its slot at the call's
        end."""
        cap, step_s = self.executor.max_steps, self.executor.step_s
        if step_s:
            cap = min(cap, int(self.call_budget_s / step_s))
        if cap <= 1 or self._prefill or self._joining or (self._queue and self.active < self.max_active):
            return 1
        left = min(s.request.max_chars - len(s.generated) for s in lane.streams)
        return max(1, min(cap, left))

    def _targets(self, total: int) -> list[int]:
        """How many rows each lane should hold: all in the first below ``2 * LANE_MIN_ROWS`` (or
        with one lane), else an even split."""
        n = len(self._lanes)
        if n == 1 or total < 2 * LANE_MIN_ROWS:
            return [total] + [0] * (n - 1)
        return [total // n + (1 if k < total % n else 0) for k in range(n)]

    def _chunks(self) -> dict[int, list[tuple[Stream, int]]]:
        """Each prefilling stream's next prompt chunk (at most ``prefill_chunk`` characters), grouped
        by length, shortest first: ``{length: [(stream, cursor), ...]}``."""
        groups = group_by(self._prefill, lambda s: min(self.prefill_chunk, len(s.request.prompt_ids) - s.cursor))
        return {b: [(s, s.cursor) for s in groups[b]] for b in sorted(groups)}

    # ------------------------------------------------------------------ updating from the output

    def _decoded(self, lane: DecodeBatch) -> tuple[list[Stream], int]:
        """The lane's last call: deliver each stream's characters, drop those that finished or
        left. Returns the lane's streams and the characters the call produced."""
        streams = lane.streams
        try:
            out: DecodeOutput = self.executor.collect(lane)
        except Exception as exc:
            log.exception("scheduler %s: decode step failed for %d streams", self.name, len(streams))
            self._fail(streams, f"model step failed: {exc}", notify=False)
            lane.clear()
            return streams, 0
        vocab = self.vocab
        texts = self._texts(out.ids)
        keep = []
        for j, (s, text) in enumerate(zip(streams, texts)):
            if s.cancelled:
                s.finish("cancelled")
            elif s.request.logprobs is not None and out.logits is not None:  # OpenAI `logprobs`: per character
                if not self._push_with_logprobs(s, out.logits[:, j], out.ids[:, j].tolist(), vocab):
                    keep.append(j)
            elif not s.push_text(text):
                keep.append(j)
        lane.keep(keep)
        return streams, out.ids.size

    @staticmethod
    def _push_with_logprobs(s: Stream, logits: np.ndarray, ids: list[int], vocab: list[str]) -> bool:
        """A stream that asked for log-probabilities: each character's, then the character, until
        one ends the stream. Returns True when it finished."""
        for row, t in zip(logits, ids):
            s.note_logprobs(row, t, vocab)
            if s.push(vocab[t]):
                return True
        return False

    def _texts(self, ids: np.ndarray) -> list[str]:
        """One string per row of a call's ``[steps, rows]`` token ids."""
        steps = ids.shape[0]
        if self._chars is not None:  # [rows, steps] one-character strings, read as [rows] strings of `steps`
            return np.ascontiguousarray(self._chars[ids.T]).view(f"<U{steps}").ravel().tolist()
        vocab = self.vocab
        return ["".join(vocab[t] for t in row) for row in ids.T.tolist()]

    def _prefill_step(self) -> list[Stream]:
        try:
            outs: list[PrefillOutput] = self.executor.prefill(self._chunks(), self._lanes)
        except Exception as exc:
            log.exception("scheduler %s: prefill failed for %d streams", self.name, len(self._prefill))
            failed = list(self._prefill)
            self._fail(failed, f"prompt prefill failed: {exc}", notify=False)
            self._prefill = []
            return failed
        ready = []  # prompt done: (stream, logits row)
        for o in outs:
            o.stream.cursor += o.chars
            o.stream.state = o.state
            if o.logits is not None:
                ready.append((o.stream, o.logits))
        if not ready:
            return []
        streams = [s for s, _ in ready]
        ids = self.executor.first_tokens(streams, [row for _, row in ready])
        for (s, row), t in zip(ready, ids.tolist()):
            self._prefill.remove(s)
            state, s.state = s.state, None
            assert state is not None, "its prefill set it"
            s.note_logprobs(row, t, self.vocab)
            if not s.push(self.vocab[t]):
                s.phase = "decode"
                # its next uniforms, drawn ahead in one block: the same sequence as one at a time
                self._joining.append(Row(s, state, t, s.rng.random(UNIFORM_BLOCK), 0))
        return streams

    def _fail(self, streams: list[Stream], message: str, notify: bool = True) -> None:
        self.last_error = message
        for s in streams:
            s.finish("error", message)
        if notify:
            self.on_step(streams)

    def describe(self) -> dict[str, Any]:
        return {
            "mode": "batched",
            "active": self.active,
            "queued": self.queued,
            "steps": self.steps,
            "chars": self.chars,
            "max_streams": self.max_active,
            "max_queue": self.max_queue,
            "lanes": self.lane_sizes,
            "decode": self.executor.decode_path,
            "decode_steps": self.executor.max_steps,
            "closed": self._closed,
            "last_error": self.last_error,
        }
