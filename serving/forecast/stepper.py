"""Applying observations to forecast sessions: the one session path, batched across sessions.

Every update of a session, from ``/sessions`` (either store) or an OIP sequence, goes through
the :class:`SessionStepper` of the model version the session is pinned to (a field of its
``LoadedModel``, closed with it). It is Triton's sequence batcher for recurrent models:
concurrent sessions each send their next observations; while one call runs, updates queue
(:class:`~rnnops.serving.batching.BatchQueue`); the next call takes everything queued, grouped
by the number of new rows, joins the carried states along their batch axis
(:meth:`Runtime.concat`, from the ``rnnops.state`` description), runs the model once
(:meth:`Runtime.run`) and hands each session its row of the forecast, of the quantiles (a model
with prediction intervals) and of the new state. Each row is computed as it would be alone
(batch invariance, see :mod:`rnnops.serving.runtime`), so a session's forecast does not depend on
what else was stepped with it.

Windowed sessions (RevIN) have no state to carry: they append to their window and forecast it
through the model's :class:`~rnnops.serving.forecast.batcher.ForecastBatcher`, batched with the
other forecast traffic.

The caller holds the session exclusively while it awaits (``store.updating``). A session is
changed only once its step has succeeded: an update that fails or whose request is cancelled
leaves it as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rnnops.serving.batching import BatchQueue, observer

if TYPE_CHECKING:
    from rnnops.serving.forecast.batcher import ForecastBatcher
    from rnnops.serving.forecast.sessions import ForecastSession
    from rnnops.serving.metrics import Metrics
    from rnnops.serving.runtime import Runtime, State

Update = tuple["State | None", np.ndarray]  # a session's carried state (None: zeros) and its new rows [n, F]
Stepped = tuple[np.ndarray, "np.ndarray | None", "State"]  # forecast [horizon, F_out], quantiles or None, new state


class SessionStepper:
    def __init__(
        self,
        runtime: Runtime,
        batcher: ForecastBatcher,
        max_batch: int = 256,
        model: str = "forecaster",
        metrics: Metrics | None = None,
    ) -> None:
        self.runtime = runtime
        self.batcher = batcher  # the version's ForecastBatcher (windowed sessions)
        on_call = (
            None
            if metrics is None
            else observer(metrics.session_batch.labels(model), metrics.session_seconds.labels(model))
        )
        self._queue: BatchQueue[Update, Stepped] = BatchQueue(
            self._step, key=lambda u: len(u[1]), max_batch=max_batch, name=f"rnnops-steps-{model}", on_call=on_call
        )

    @property
    def calls(self) -> int:
        return self._queue.calls

    @property
    def updates(self) -> int:
        return self._queue.items

    async def observe(self, sess: ForecastSession, rows: np.ndarray) -> np.ndarray | None:
        """Apply ``rows`` ``[n, F]`` (float32) to ``sess``; its new forecast ``[horizon, F_out]``
        (None: a windowed session without ``lookback`` rows yet). Its quantiles, if the model has
        them, go to ``sess.last_quantiles``."""
        y = q = None
        if sess.stateful:
            y, q, sess.state = (await self._queue.submit([(sess.state, rows)]))[0]
        else:
            window = np.concatenate([sess.window, rows])[-sess.lookback :]
            if len(window) >= sess.lookback:
                y, q = (await self.batcher.forecast_bands([window]))[0]
            sess.window = window
        sess.observations += len(rows)
        sess.last_forecast = y
        sess.last_quantiles = q
        return y

    def _step(self, updates: list[Update]) -> list[Stepped]:
        """One runtime call over sessions with the same number of new rows (on the queue's thread)."""
        rt = self.runtime
        state = rt.concat([s if s is not None else rt.zero_state(1) for s, _ in updates])
        r = rt.run(np.stack([rows for _, rows in updates]), state)
        n = len(updates)
        if n == 1:
            states = [r.state]
        else:
            new = rt.state_numpy(r.state)  # to the host once, not once per session
            states = [rt.take(new, [j]) for j in range(n)]
        q = r.quantiles
        return [(r.output[j], None if q is None else q[j], states[j]) for j in range(n)]

    @property
    def busy(self) -> bool:
        return self._queue.busy

    def close(self) -> None:
        self._queue.close()
