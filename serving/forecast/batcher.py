"""Forecast requests: input checks, timestamps, and dynamic batching across requests.

Why our own batcher rather than ``@bentoml.api(batchable=True)``: BentoML's adaptive batcher
stacks one ndarray argument of a uniform shape, but our windows differ in length (stateful
models take any number of rows), requests name different models and versions (a hot reload
must not mix them in one call), and a bad window must answer its own request with a 400 rather
than fail a batch. :class:`ForecastBatcher` is the simple dynamic-batching policy Triton uses
without a delay: while one call runs, requests queue; the next call takes everything that
queued (up to ``max_batch`` windows), grouped by window length. An idle model answers at once;
a busy one batches exactly as much as the load brings.
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from rnnops.serving.runtime import ModelInfo


class InputError(ValueError):
    """A request the model cannot take; the message says what to change (HTTP 400)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def check_rows(rows: list[list[float]] | np.ndarray, info: ModelInfo, field: str, min_rows: int,
               max_rows: int) -> np.ndarray:
    """``rows`` (T lists of F raw values, or a ``[T, F]`` array) -> float32 ``[T, F]``, or an
    :class:`InputError`."""
    f = len(info.feature_names)
    if len(rows) < min_rows:
        need = (f"this windowed model needs at least {min_rows} rows (its lookback)" if not info.stateful
                else f"at least {min_rows} row is needed")
        raise InputError(f"{field} has {len(rows)} rows; {need}", field)
    if len(rows) > max_rows:
        raise InputError(f"{field} has {len(rows)} rows; the limit is {max_rows} (RNNOPS_MAX_CONTEXT_ROWS)", field)
    if not (isinstance(rows, np.ndarray) and rows.ndim == 2 and rows.shape[1] == f):
        for i, r in enumerate(rows):
            if len(r) != f:
                raise InputError(f"{field}[{i}] has {len(r)} values; the model expects {f} features "
                                 f"({', '.join(info.feature_names)}) in that order", field)
    x = np.asarray(rows, dtype=np.float64).reshape(len(rows), f)
    x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():
        i, j = np.argwhere(~np.isfinite(x32))[0]
        raise InputError(f"{field}[{i}][{j}] = {x[i, j]!r} is not a finite float32 value", field)
    return x32


# --------------------------------------------------------------------------------- timestamps

_FREQ = re.compile(r"^(\d*)\s*([A-Za-z]+)$")
_UNITS = {"s": 1, "S": 1, "sec": 1, "min": 60, "T": 60, "h": 3600, "H": 3600, "D": 86400, "d": 86400,
          "W": 7 * 86400, "ms": 0.001, "L": 0.001}


def freq_seconds(freq: str | None) -> float | None:
    """Seconds per step of a fixed pandas frequency string ('h', '15min', 'D'); None if not fixed."""
    if not freq:
        return None
    m = _FREQ.match(freq.strip().split("-")[0])
    if not m or m.group(2) not in _UNITS:
        return None
    return (int(m.group(1)) if m.group(1) else 1) * _UNITS[m.group(2)]


def parse_timestamps(values: list[str], field: str) -> np.ndarray:
    out = []
    for i, v in enumerate(values):
        s = v.strip().replace(" ", "T")
        if s.endswith("Z"):
            s = s[:-1]
        try:
            out.append(np.datetime64(s, "s"))
        except ValueError:
            raise InputError(f"{field}[{i}] = {v!r} is not an ISO 8601 timestamp like 2024-01-31T13:00:00 "
                             "(no time zone offset)", field) from None
    ts = np.array(out, dtype="datetime64[s]")
    if len(ts) > 1 and (np.diff(ts) <= np.timedelta64(0, "s")).any():
        raise InputError(f"{field} must increase strictly", field)
    return ts


def future_timestamps(last: np.datetime64, step_s: float, horizon: int) -> list[str]:
    step = np.timedelta64(int(round(step_s)), "s")
    return [str(t) for t in last + step * np.arange(1, horizon + 1)]


def step_of(ts: np.ndarray, info: ModelInfo, field: str) -> float:
    """Seconds between observations: the model's frequency, else the last gap of ``ts``."""
    fixed = freq_seconds(info.freq)
    if fixed:
        return fixed
    if len(ts) < 2:
        raise InputError(f"{field}: give at least two timestamps so the forecast's can be spaced like them "
                         f"(the model's frequency {info.freq!r} is not a fixed one)", field)
    return float((ts[-1] - ts[-2]) / np.timedelta64(1, "s"))


# --------------------------------------------------------------------------------- batching


class ForecastBatcher:
    """Dynamic batching of forecast windows for one forecaster runtime (see the module docstring)."""

    def __init__(self, runtime, max_batch: int = 256, metrics=None, model: str = "forecaster"):
        self.runtime = runtime
        self.max_batch = max_batch
        self._pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"rnnops-forecast-{model}")
        self._batch_hist = metrics.forecast_batch.labels(model) if metrics else None
        self._seconds_hist = metrics.forecast_seconds.labels(model) if metrics else None
        self.calls = 0
        self.windows = 0

    async def forecast(self, windows: np.ndarray) -> np.ndarray:
        """float32 ``[N, T, F]`` -> ``[N, horizon, F_out]``, batched with whatever else is waiting."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((windows, fut))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            take, n = [], 0
            while self._pending and (not take or n + len(self._pending[0][0]) <= self.max_batch):
                item = self._pending.pop(0)
                take.append(item)
                n += len(item[0])
            by_len: dict[int, list] = {}
            for w, fut in take:
                by_len.setdefault(w.shape[1], []).append((w, fut))
            for items in by_len.values():
                x = np.concatenate([w for w, _ in items]) if len(items) > 1 else items[0][0]
                t0 = time.perf_counter()
                try:
                    y = await loop.run_in_executor(self._executor, self.runtime.forecast, x, self.max_batch)
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
                lo = 0
                for w, fut in items:
                    if not fut.done():
                        fut.set_result(y[lo:lo + len(w)])
                    lo += len(w)

    @property
    def busy(self) -> bool:
        return bool(self._pending) or (self._task is not None and not self._task.done())

    def close(self) -> None:
        self._executor.shutdown(wait=False)
