"""Stepping many forecast sessions of one model version together: one batched call per step.

Triton's sequence batcher for recurrent models: concurrent sequences (OIP ``sequence_id`` s,
which are :class:`~rnnops.serving.forecast.sessions.ForecastSession` s in the one session store)
each send their next observations; while one call runs, updates queue; the next call takes
everything queued, grouped by the number of new rows, joins the carried states along their batch
axis (:meth:`Runtime.concat`, from the ``rnnops.state`` description), runs the model once and
hands each session its row of the forecast and of the new state. Each row is computed as it
would be alone (batch invariance, see :mod:`rnnops.serving.runtime`), so a sequence's forecast
does not depend on what else was stepped with it.

Windowed sessions (RevIN) have no state to carry: they append to their window and forecast it
through the model's :class:`ForecastBatcher`, batched with the other forecast traffic.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class SessionStepper:
    def __init__(self, model, max_batch: int = 256):
        self.model = model  # a LoadedModel (runtime + batcher)
        self.runtime = model.runtime
        self.max_batch = max_batch
        self._pending: list[tuple[object, np.ndarray, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"rnnops-steps-{model.name}")
        self.calls = 0
        self.updates = 0

    async def observe(self, sess, rows: np.ndarray) -> np.ndarray | None:
        """Apply ``rows`` ``[n, F]`` (float32) to ``sess``; its new forecast ``[horizon, F_out]``
        (None: a windowed session without ``lookback`` rows yet). One update per session at a
        time: hold ``sess.lock``."""
        if not sess.stateful:
            sess.window = np.concatenate([sess.window, rows])[-sess.lookback:]
            out = None
            if len(sess.window) >= sess.lookback:
                out = (await self.model.batcher.forecast([sess.window]))[0]
            sess.observations += len(rows)
            sess.last_forecast = out
            return out
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((sess, rows, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        rt = self.runtime
        while self._pending:
            take, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            by_len: dict[int, list] = {}
            for item in take:
                by_len.setdefault(len(item[1]), []).append(item)
            for items in by_len.values():
                x = np.stack([rows for _, rows, _ in items])
                state = rt.concat([s.state if s.state is not None else rt.zero_state(1) for s, _, _ in items])
                try:
                    y, new = await loop.run_in_executor(self._executor, rt.forecast_step, x, state)
                except Exception as exc:
                    for _, _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                self.calls += 1
                self.updates += len(items)
                for j, (s, rows, fut) in enumerate(items):
                    s.state = rt.take(new, [j]) if len(items) > 1 else new
                    s.observations += len(rows)
                    s.last_forecast = y[j]
                    if not fut.done():
                        fut.set_result(y[j])

    def close(self) -> None:
        self._executor.shutdown(wait=False)
