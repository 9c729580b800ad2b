"""Dynamic batching on the event loop: work that queues while one model call runs goes into the next.

The simple policy of Triton's dynamic batcher without a delay: an idle model answers at once; a
busy one batches exactly as much as the load brings. A :class:`BatchQueue` holds the pending
items and their futures; one drain task takes everything pending (up to ``max_batch``), groups
it by a key (:func:`group_by`: rows of one call must share a shape, e.g. the window length, so
nothing is padded and a row is computed as it would be alone) and runs one blocking call per
group on a thread of its own, so the event loop keeps serving. A call that raises fails its own
group's futures and no other.

Its users, one queue each per loaded version: the forecast batcher (windows ->
forecasts, :mod:`rnnops.serving.forecast.batcher`) and the session stepper (observations + the
carried states -> forecasts and new states, :mod:`rnnops.serving.forecast.stepper`). The step
scheduler's prefill groups prompt chunks by length with :func:`group_by` too, but on its own
thread, between decode steps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)


# the histograms are prometheus_client's labelled children (anything with observe(float))
def observer(batch_hist: Any, seconds_hist: Any) -> Callable[[int, float], None] | None:
    """An ``on_call`` that records each call's size and duration in two histograms (None: no metrics)."""
    if batch_hist is None:
        return None

    def on_call(n: int, seconds: float) -> None:
        batch_hist.observe(n)
        seconds_hist.observe(seconds)

    return on_call


def group_by(items: Iterable[T], key: Callable[[T], K]) -> dict[K, list[T]]:
    """``items`` grouped by ``key``, each group and the groups in first-seen order."""
    groups: dict[K, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


class BatchQueue(Generic[T, R]):
    """Items submitted from the event loop, run in batches by ``call`` on one thread.

    ``call(items)`` gets a group of items with the same ``key`` (at most ``max_batch``) and returns
    one result per item, in order; it runs on the queue's thread (a model call releases the GIL).
    ``on_call(n, seconds)``, if given, hears of every call that succeeded (metrics).
    """

    def __init__(
        self,
        call: Callable[[list[T]], Sequence[R]],
        *,
        key: Callable[[T], Hashable],
        max_batch: int,
        name: str,
        on_call: Callable[[int, float], None] | None = None,
    ) -> None:
        self._run = call
        self._key = key
        self.max_batch = max_batch
        self._on_call = on_call
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._closed = False
        self.calls = 0  # calls that succeeded
        self.items = 0  # items they carried

    async def submit(self, items: Sequence[T]) -> list[R]:
        """The results of ``items``, batched with whatever else is pending.

        After :meth:`close` (its version was reaped after a hot reload) stragglers are still
        answered, one call per submit on asyncio's default threads: a forecast session stays
        pinned to the version that opened it, and a reload must not break it."""
        if self._closed:
            return list(await asyncio.to_thread(self._run, list(items)))
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            fut = loop.create_future()
            self._pending.append((item, fut))
            futures.append(fut)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        if len(futures) == 1:  # the usual request: no gather machinery
            return [await futures[0]]
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            take, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            for group in group_by(take, lambda p: self._key(p[0])).values():
                items = [item for item, _ in group]
                t0 = time.perf_counter()
                try:
                    results = await loop.run_in_executor(self._executor, self._run, items)
                except Exception as exc:
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.calls += 1
                self.items += len(items)
                if self._on_call is not None:
                    self._on_call(len(items), time.perf_counter() - t0)
                for (_, fut), result in zip(group, results):
                    if not fut.done():  # its request may have gone (cancelled)
                        fut.set_result(result)

    @property
    def busy(self) -> bool:
        return bool(self._pending) or (self._task is not None and not self._task.done())

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False)
