"""Our Prometheus metrics, served on BentoML's ``/metrics`` beside its own.

``prometheus_client`` is imported on first use, never at module import: BentoML workers set
``PROMETHEUS_MULTIPROC_DIR`` after importing the service module, and the client picks its storage
(in-process or the multiprocess files BentoML's ``/metrics`` reads) when it is imported. Gauges
use ``livesum`` so several workers add up.

Labels stay few: ``model`` (the served name) everywhere, plus ``version`` on the gauges a
draining old version and its successor report at the same time.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

from rnnops.serving.generate.scheduler import SchedulerMetrics, Stream  # noqa: F401 (Stream: type of finished())

_lock = threading.Lock()
_metrics: Metrics | None = None

STEP_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# prometheus_client's multiprocess modes that we use (how the workers' values combine)
GaugeMode = Literal["livesum", "livemin", "livemax"]


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def gauge(name: str, doc: str, labels: list[str], mode: GaugeMode = "livesum") -> Gauge:
            return Gauge(name, doc, labels, multiprocess_mode=mode)

        self.active = gauge("rnnops_active_streams", "Streams generating (prefill or decode)", ["model", "version"])
        self.queue = gauge("rnnops_queue_depth", "Streams waiting for a slot", ["model", "version"])
        self.chars_per_s = gauge(
            "rnnops_chars_per_second", "Characters generated per second (last second)", ["model", "version"]
        )
        self.batch = Histogram(
            "rnnops_step_batch_size", "Streams in each decode step", ["model"], buckets=BATCH_BUCKETS
        )
        self.step = Histogram(
            "rnnops_step_seconds",
            "Duration of a scheduler step (decode + prefill + sampling)",
            ["model"],
            buckets=STEP_BUCKETS,
        )
        self.chars = Counter("rnnops_generated_chars", "Characters generated", ["model"])
        self.ttfc = Histogram(
            "rnnops_time_to_first_char_seconds",
            "Queue + prefill until the first character",
            ["model"],
            buckets=LATENCY_BUCKETS,
        )
        self.streams = Counter("rnnops_streams", "Finished streams by reason", ["model", "finish_reason"])
        self.rejected = Counter(
            "rnnops_rejected", "Requests turned away (queue full, queue timeout, sessions full)", ["model", "reason"]
        )
        self.sessions = gauge("rnnops_sessions_open", "Open forecast sessions", ["model"])
        self.forecast_batch = Histogram(
            "rnnops_forecast_batch_size", "Windows in each forecast call", ["model"], buckets=BATCH_BUCKETS
        )
        self.forecast_seconds = Histogram(
            "rnnops_forecast_seconds", "Duration of each batched forecast call", ["model"], buckets=STEP_BUCKETS
        )
        self.session_batch = Histogram(
            "rnnops_session_step_batch_size",
            "Session updates (/sessions, OIP sequences) in each batched step",
            ["model"],
            buckets=BATCH_BUCKETS,
        )
        self.session_seconds = Histogram(
            "rnnops_session_step_seconds", "Duration of each batched session step", ["model"], buckets=STEP_BUCKETS
        )
        self.reloads = Counter("rnnops_model_reloads", "Model (re)loads by result", ["model", "result"])
        self.registry_up = gauge(
            "rnnops_registry_up", "1 while alias polls reach the model registry, 0 while they fail", [], mode="livemin"
        )
        self.version = gauge(
            "rnnops_served_version", "Registry version being served (new requests)", ["model"], mode="livemax"
        )

    def for_scheduler(self, model: str, version: str) -> SchedulerPrometheus:
        return SchedulerPrometheus(self, model, str(version))


class SchedulerPrometheus(SchedulerMetrics):
    """The scheduler's reports, bound to one model version."""

    def __init__(self, m: Metrics, model: str, version: str) -> None:
        self.m, self.model, self.version = m, model, version
        self._active = m.active.labels(model, version)
        self._queue = m.queue.labels(model, version)
        self._cps = m.chars_per_s.labels(model, version)
        self._batch = m.batch.labels(model)
        self._step = m.step.labels(model)
        self._chars = m.chars.labels(model)
        self._ttfc = m.ttfc.labels(model)
        self._window_start = time.monotonic()
        self._window_chars = 0

    def step(self, batch: int, seconds: float, chars: int) -> None:
        self._batch.observe(batch)
        self._step.observe(seconds)
        self._chars.inc(chars)
        self._window_chars += chars
        now = time.monotonic()
        if now - self._window_start >= 1.0:
            self._cps.set(self._window_chars / (now - self._window_start))
            self._window_start, self._window_chars = now, 0

    def depth(self, active: int, queued: int) -> None:
        self._active.set(active)
        self._queue.set(queued)
        if active == 0:
            self._cps.set(0)
            self._window_start, self._window_chars = time.monotonic(), 0

    def finished(self, stream: Stream) -> None:
        t = stream.timing
        if t.first_char is not None:
            self._ttfc.observe(t.first_char - t.enqueued)
        self.m.streams.labels(self.model, stream.finish_reason or "unknown").inc()

    def rejected(self, reason: str) -> None:
        self.m.rejected.labels(self.model, reason).inc()


def get_metrics() -> Metrics:
    """The process's metrics (created once, on first use)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics()
        return _metrics
