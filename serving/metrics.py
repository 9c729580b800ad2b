"""Our Prometheus metrics and their ``GET /metrics`` text (:func:`exposition`).

``prometheus_client`` is imported on first use, never at module import: it picks its storage
(in-process, or the multiprocess files under ``PROMETHEUS_MULTIPROC_DIR`` that ``bentoml serve``
sets for its workers) when it is imported. With that directory set, :func:`exposition` reads every
worker's files, so counters and histograms add up across ``--workers N``; gauges use ``livesum``
(or ``livemin``/``livemax``) so several workers combine too.

Labels stay few and bounded, never taken from a request: ``model`` (the served name) everywhere,
``version`` on the gauges a draining old version and its successor report at the same time, and on
the request metrics the route *template* (``/sessions/{session_id}``, never the path a client sent),
the method and the status code.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Literal

from rnnops.serving.generate.scheduler import SchedulerMetrics, Stream  # noqa: F401 (Stream: type of finished())

_lock = threading.Lock()
_metrics: Metrics | None = None

STEP_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
LATENCY_BUCKETS = (1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REQUEST_BUCKETS = (5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0)
UNMATCHED_ROUTE = "unmatched"  # the one route label of every path no route matches (404s, scanners)


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

        self.http_requests = Counter(
            "rnnops_http_requests",
            'HTTP requests answered, by route template (unmatched paths: route="unmatched"), method, status',
            ["route", "method", "status"],
        )
        self.http_seconds = Histogram(
            "rnnops_http_request_duration_seconds",
            "Time to answer an HTTP request (to the start of the answer: a stream's length is not in it)",
            ["route", "method"],
            buckets=REQUEST_BUCKETS,
        )
        # label children by (route, method, status): a bounded set (routes x methods x the
        # statuses we answer), looked up without prometheus_client's label validation and lock
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request. ``route`` is a route template or :data:`UNMATCHED_ROUTE`."""
        key = (route, method, status)
        children = self._http_children.get(key)
        if children is None:
            children = (self.http_requests.labels(route, method, str(status)), self.http_seconds.labels(route, method))
            self._http_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

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


def exposition() -> tuple[bytes, str]:
    """The Prometheus text of every metric in this process, or of every worker's when
    ``PROMETHEUS_MULTIPROC_DIR`` is set (prometheus_client's documented multiprocess collector),
    and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead() -> None:
    """At this worker's shutdown, drop its live gauges (``livesum``, ``livemin``, ``livemax``) from
    the shared files, so that workers serving on no longer count it (prometheus_client's clean-up
    for multiprocess servers)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def get_metrics() -> Metrics:
    """The process's metrics (created once, on first use)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics()
        return _metrics
