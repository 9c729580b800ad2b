"""Dynamic batching of forecast windows across requests, for one forecaster runtime.

Why our own batcher rather than ``@bentoml.api(batchable=True)``: BentoML's adaptive batcher
stacks one ndarray argument of a uniform shape, but our windows differ in length (stateful
models take any number of rows), requests name different models and versions (a hot reload
must not mix them in one call), and a bad window must answer its own request with a 400 rather
than fail a batch. :class:`ForecastBatcher` is the simple dynamic-batching policy Triton uses
without a delay (:class:`~rnnops.serving.batching.BatchQueue`): while one call runs, requests
queue; the next call takes everything that queued (up to ``max_batch`` windows), grouped by the
length the model reads. An idle model answers at once; a busy one batches exactly as much as the
load brings. A panel model's series (their graph inputs, :mod:`rnnops.panel_features`) batch the
same way: all of one model's share their shapes, so any number of requests' series go in one call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rnnops.serving.batching import BatchQueue, observer

if TYPE_CHECKING:
    from rnnops.serving.metrics import Metrics
    from rnnops.serving.runtime import Runtime

Bands = tuple[np.ndarray, "np.ndarray | None"]  # a forecast [horizon, F_out] and its quantiles (None: no intervals)
SeriesInputs = dict[str, np.ndarray]  # one series' panel graph inputs, no batch axis (rnnops.panel_features)
Item = np.ndarray | SeriesInputs  # what is queued: a window [T, F] or a series' inputs


def _group(item: Item) -> int:
    """Items of one call share a shape: windows by the rows the model reads; a panel model's
    series all have its contract's shapes (one group)."""
    return len(item) if isinstance(item, np.ndarray) else 0


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
        self._queue: BatchQueue[Item, Bands] = BatchQueue(
            self._forecast, key=_group, max_batch=max_batch, name=f"rnnops-forecast-{model}", on_call=on_call
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

    async def forecast_series(self, series: list[SeriesInputs]) -> list[Bands]:
        """A panel model's series (each its graph inputs without the batch axis) -> each one's
        forecast ``[horizon, 1]`` and quantiles ``[horizon, 1, levels]``, batched with whatever
        else is waiting (other requests' series)."""
        return await self._queue.submit(series)

    def _forecast(self, items: list[Item]) -> list[Bands]:
        """One runtime call over windows of one length or over series (on the queue's thread)."""
        first = items[0]
        if isinstance(first, dict):
            feeds = {name: np.stack([s[name] for s in items]) for name in first}
            r = self.runtime.run(feeds, max_batch=self.max_batch)
        else:
            r = self.runtime.run(np.stack(items), max_batch=self.max_batch)  # type: ignore[arg-type]
        q = r.quantiles
        return [(r.output[k], None if q is None else q[k]) for k in range(len(items))]

    @property
    def busy(self) -> bool:
        return self._queue.busy

    def close(self) -> None:
        self._queue.close()
