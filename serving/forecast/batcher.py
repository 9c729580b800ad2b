"""Dynamic batching of forecast windows across requests, for one forecaster runtime.

Why our own batcher rather than ``@bentoml.api(batchable=True)``: BentoML's adaptive batcher
stacks one ndarray argument of a uniform shape, but our windows differ in length (stateful
models take any number of rows), requests name different models and versions (a hot reload
must not mix them in one call), and a bad window must answer its own request with a 400 rather
than fail a batch. :class:`ForecastBatcher` is the simple dynamic-batching policy Triton uses
without a delay (:class:`~rnnops.serving.batching.BatchQueue`): while one call runs, requests
queue; the next call takes everything that queued (up to ``max_batch`` windows), grouped by the
length the model reads. An idle model answers at once; a busy one batches exactly as much as the
load brings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rnnops.serving.batching import BatchQueue, observer

if TYPE_CHECKING:
    from rnnops.serving.metrics import Metrics
    from rnnops.serving.runtime import Runtime

Bands = tuple[np.ndarray, "np.ndarray | None"]  # a forecast [horizon, F_out] and its quantiles (None: no intervals)


class ForecastBatcher:
    def __init__(
        self, runtime: Runtime, max_batch: int = 256, metrics: Metrics | None = None, model: str = "forecaster"
    ) -> None:
        self.runtime = runtime
        self.max_batch = max_batch
        on_call = (
            None
            if metrics is None
            else observer(metrics.forecast_batch.labels(model), metrics.forecast_seconds.labels(model))
        )
        self._queue: BatchQueue[np.ndarray, Bands] = BatchQueue(
            self._forecast, key=len, max_batch=max_batch, name=f"rnnops-forecast-{model}", on_call=on_call
        )

    @property
    def calls(self) -> int:
        return self._queue.calls

    @property
    def windows(self) -> int:
        return self._queue.items

    async def forecast(self, windows: list[np.ndarray]) -> list[np.ndarray]:
        """float32 windows ``[T_i, F]`` (any lengths) -> their forecasts ``[horizon, F_out]``,
        batched with whatever else is waiting."""
        return [y for y, _ in await self.forecast_bands(windows)]

    async def forecast_bands(self, windows: list[np.ndarray]) -> list[Bands]:
        """:meth:`forecast` with each window's quantiles ``[horizon, F_out, levels]`` beside its
        forecast (``None`` for a model without prediction intervals); one batched call either way."""
        return await self._queue.submit([self.runtime.reads(w) for w in windows])

    def _forecast(self, windows: list[np.ndarray]) -> list[Bands]:
        """One runtime call over windows of one length (on the queue's thread)."""
        r = self.runtime.run(np.stack(windows), max_batch=self.max_batch)
        q = r.quantiles
        return [(r.output[k], None if q is None else q[k]) for k in range(len(windows))]

    @property
    def busy(self) -> bool:
        return self._queue.busy

    def close(self) -> None:
        self._queue.close()
