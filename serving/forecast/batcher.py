"""Dynamic batching of forecast windows across requests, for one forecaster runtime.

Why our own batcher rather than ``@bentoml.api(batchable=True)``: BentoML's adaptive batcher
stacks one ndarray argument of a uniform shape, but our windows differ in length (stateful
models take any number of rows), requests name different models and versions (a hot reload
must not mix them in one call), and a bad window must answer its own request with a 400 rather
than fail a batch. :class:`ForecastBatcher` is the simple dynamic-batching policy Triton uses
without a delay: while one call runs, requests queue; the next call takes everything that
queued (up to ``max_batch`` windows), grouped by the length the model reads. An idle model
answers at once; a busy one batches exactly as much as the load brings.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class ForecastBatcher:
    def __init__(self, runtime, max_batch: int = 256, metrics=None, model: str = "forecaster"):
        self.runtime = runtime
        self.max_batch = max_batch
        self._pending: list[tuple[np.ndarray, asyncio.Future]] = []  # one window [T, F] each
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"rnnops-forecast-{model}")
        self._batch_hist = metrics.forecast_batch.labels(model) if metrics else None
        self._seconds_hist = metrics.forecast_seconds.labels(model) if metrics else None
        self.calls = 0
        self.windows = 0

    async def forecast(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """float32 windows ``[T_i, F]`` (any lengths) -> their forecasts ``[horizon, F_out]``,
        batched with whatever else is waiting."""
        return [y for y, _ in await self.forecast_bands(windows)]

    async def forecast_bands(self, windows: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """:meth:`forecast` with each window's quantiles ``[horizon, F_out, levels]`` beside its
        forecast (``None`` for a model without prediction intervals); one batched call either way."""
        loop = asyncio.get_running_loop()
        futures = []
        for w in windows:
            fut = loop.create_future()
            self._pending.append((self.runtime.reads(w), fut))
            futures.append(fut)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        if len(futures) == 1:  # the usual request: no gather machinery
            return [await futures[0]]
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            take, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            by_len: dict[int, list] = {}
            for w, fut in take:
                by_len.setdefault(len(w), []).append((w, fut))
            for items in by_len.values():
                x = np.stack([w for w, _ in items])
                t0 = time.perf_counter()
                try:
                    y, q = await loop.run_in_executor(self._executor, self.runtime.forecast_bands, x, self.max_batch)
                except Exception as exc:
                    for _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.calls += 1
                self.windows += len(x)
                if self._batch_hist is not None:
                    self._batch_hist.observe(len(x))
                    self._seconds_hist.observe(time.perf_counter() - t0)
                for k, (_, fut) in enumerate(items):
                    if not fut.done():
                        fut.set_result((y[k], None if q is None else q[k]))

    @property
    def busy(self) -> bool:
        return bool(self._pending) or (self._task is not None and not self._task.done())

    def close(self) -> None:
        self._executor.shutdown(wait=False)
