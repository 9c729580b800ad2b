"""The baseline the streaming benchmark compares the step scheduler with (``RNNOPS_SCHEDULER=naive``).

Every request generates on its own thread, one runtime call per character at batch 1: what a
plain request -> response handler does. Same :class:`Stream` API, same bounds and errors as
:class:`~rnnops.serving.generate.scheduler.StepScheduler`, so the service and the benchmark can
swap one for the other; never the default.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnops.serving.generate.client import Admission, OnStep, SchedulerMetrics, no_one
from rnnops.serving.generate.sampling import sample_batch
from rnnops.serving.generate.stream import GenerationRequest, Stream

if TYPE_CHECKING:
    from rnnops.serving.runtime import Runtime

log = logging.getLogger("rnnops.serving")


class NaiveGenerator:
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
    ) -> None:
        self.runtime = runtime
        self.vocab = list(runtime.vocab)
        self.max_active = max_active
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.metrics = metrics or SchedulerMetrics()
        self.name = name
        self.on_step = on_step or no_one
        self.admission = Admission(max_active, max_queue, self.metrics)
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
        return self.admission.retry_after(self._waiting)

    def start(self) -> NaiveGenerator:
        return self

    def cancel(self, stream: Stream) -> None:  # its thread sees the flag at the next character
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
        s.scheduler = self
        with self._lock:
            self.admission.check(self._running, self._waiting, self._closed)
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
            s.finish("queue_timeout", f"no free slot within {self.queue_timeout:g}s")
            self.on_step([s])
            return
        try:
            s.phase = "prefill"
            s.timing.admitted = time.monotonic()
            self.on_step([s])
            rt, req = self.runtime, s.request
            r = rt.run(req.prompt_ids[None, :], outputs="last")
            logits, state = r.output, r.state
            p = req.params
            temp, topk, topp = np.array([p.temperature]), np.array([p.top_k]), np.array([p.top_p])
            s.phase = "decode"
            while not s.cancelled:
                t = int(sample_batch(logits, temp, topk, topp, np.array([s.rng.random()]))[0])
                s.note_logprobs(logits[0], t, self.vocab)
                finished = s.push(self.vocab[t])
                self.chars += 1
                self.on_step([s])
                if finished:
                    break
                r = rt.run(np.array([[t]], np.int64), state, "last")
                logits, state = r.output, r.state
            if s.cancelled:
                s.finish("cancelled")
        except Exception as exc:
            log.exception("naive generation failed")
            s.finish("error", f"model step failed: {exc}")
        finally:
            with self._lock:
                self._running -= 1
            self._slots.release()
            self.admission.finished(s)
            self.on_step([s])

    def describe(self) -> dict[str, Any]:
        return {
            "mode": "naive",
            "active": self._running,
            "queued": self._waiting,
            "chars": self.chars,
            "max_streams": self.max_active,
            "max_queue": self.max_queue,
            "closed": self._closed,
        }
