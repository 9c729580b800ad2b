"""Execution off the scheduler's thread: model calls run on a runner thread, one at a time, in order.

Why a thread of its own: a decode step is a model call (onnxruntime, which releases the GIL)
followed by Python work on its result (sampling, handing characters to streams). Done on one
thread the two add up, and on a CPU where the kernel itself takes a few hundred microseconds the
Python part is a large share of every step. With the batch cut in two *lanes*, the scheduler
works on one lane's result while the runner computes the other's next step, so the model is
busy nearly all the time (see :class:`~rnnops.serving.generate.scheduler.StepScheduler`).

Calls run strictly in submission order, one at a time: the runner adds no parallelism to the
model (its intra-op threads are what they were), it only overlaps Python with the model.

Without :meth:`start` every call runs at once on the caller's thread (tests, and a scheduler that
steps on the calling thread): the same results, in the same order, with no thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Pending(Generic[T]):
    """The result of one submitted call, when it is ready (:meth:`result` blocks until then)."""

    __slots__ = ("_fn", "_args", "_value", "_error", "_ready")

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...]) -> None:
        self._fn: Callable[..., T] | None
        self._args: tuple[Any, ...] | None
        self._fn, self._args = fn, args
        self._value: Any = None
        self._error: BaseException | None = None
        # A lock held until the call is done: the cheapest cross-thread signal in CPython
        # (threading.Event is a Condition underneath, several times dearer per wait).
        self._ready = threading.Lock()
        self._ready.acquire()

    def _execute(self) -> None:
        assert self._fn is not None and self._args is not None, "a call runs once"
        try:
            self._value = self._fn(*self._args)
        except BaseException as exc:  # handed to whoever waits for the result
            self._error = exc
        self._fn = self._args = None
        self._ready.release()

    @property
    def done(self) -> bool:
        """The call ran (its result is ready)."""
        return not self._ready.locked()

    def result(self) -> T:
        """The call's return value (blocks until it ran); re-raises what the call raised."""
        self._ready.acquire()
        self._ready.release()  # stays readable: a second result() returns at once
        if self._error is not None:
            raise self._error
        value: T = self._value
        return value


class Runner:
    """Runs submitted calls one at a time, in order, on its own thread once started."""

    def __init__(self, name: str = "rnnops-runner") -> None:
        self.name = name
        self._queue: queue.SimpleQueue[Pending[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def threaded(self) -> bool:
        return self._thread is not None

    def start(self) -> Runner:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def submit(self, fn: Callable[..., T], *args: Any) -> Pending[T]:
        """Queue ``fn(*args)``; without a thread it runs now, on the caller's thread."""
        p = Pending(fn, args)
        if self._thread is None:
            p._execute()
        else:
            self._queue.put(p)
        return p

    def run_now(self, fn: Callable[..., T], *args: Any) -> Pending[T]:
        """Run ``fn(*args)`` on the caller's thread, now: for a call with nothing to overlap, a
        hand-off to the thread and back would only add two thread wake-ups (tens of microseconds
        each). The caller makes sure no submitted call is still running."""
        p = Pending(fn, args)
        p._execute()
        return p

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread after the calls already queued (their results stay readable)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while True:
            p = self._queue.get()
            if p is None:
                return
            p._execute()
