"""The BentoML service: ``bentoml serve rnnops.serving.service:RnnopsService`` (or ``rnnops serve``).

Thin wiring. BentoML gives the process model (workers), ``/livez`` ``/readyz``, the traffic
timeout and the lifecycle hooks; our endpoints (``/metrics`` too: see :mod:`metrics`) are a
Starlette app mounted on the service (BentoML's own ``@bentoml.api`` methods cannot stream
Server-Sent Events with our framing, answer 429 with ``Retry-After``, or batch a streaming
endpoint). Per worker, the service holds one :class:`ModelManager` (one runtime + step scheduler
or forecast batcher per served model version, hot reload) and one :class:`SessionStore`.

Configuration is read from the environment once, at import (see :mod:`config`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from typing import TYPE_CHECKING, Any

import bentoml

from rnnops.serving.config import ServeConfig
from rnnops.serving.drain import Drainer
from rnnops.serving.forecast.sessions import SessionStore
from rnnops.serving.http.app import Serving, create_app
from rnnops.serving.http.auth import middlewares as access_middlewares
from rnnops.serving.http.headers import SecurityHeadersMiddleware
from rnnops.serving.http.limits import BodyLimitMiddleware, bound_send_buffers
from rnnops.serving.http.streaming import wake_watchers
from rnnops.serving.models import ModelManager

if TYPE_CHECKING:
    from rnnops.serving.forecast.redis_store import RedisSessionStore
    from rnnops.serving.metrics import Metrics

CONFIG = ServeConfig.from_env()
log = logging.getLogger("rnnops.serving")

# Built at import (BentoML mounts it on the class below); each worker hands it its own state in
# RnnopsService.__init__, and until then it answers 503.
app = create_app()


def _tracing_sample_rate() -> float:
    """BentoML's effective ``tracing.sample_rate`` (0 when unset or unreadable)."""
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer

        return float(BentoMLContainer.tracing.sample_rate.get() or 0.0)
    except Exception:  # an internal API: never let it stop the service
        return 0.0


# BentoML's OpenTelemetry middleware opens a span for the request and one more for every ASGI
# message it receives or sends: for an SSE stream one per event, which costs more than the
# event itself, and on /forecast about a third of the worker's CPU per request. It does so even
# under BentoML's default `tracing.sample_rate` of 0, when no span is ever recorded. The two
# hot data paths are left out of tracing unless RNNOPS_TRACE_HOT_PATHS=1 (their access log and
# request metrics stay); the service warns at startup if tracing is on while they are left out.
HOT_PATHS = ["/generate", "/forecast", "/v1/completions", "/v2/models/.*/infer", "/sessions"]
_TRACING = {} if CONFIG.trace_hot_paths else {"tracing": {"excluded_urls": HOT_PATHS}}
# BentoML's access log wraps every request, and for an SSE stream every `send`, of the same hot
# paths: a log line per request costs more CPU than the forecast itself. Our request metrics count
# and time every request (rnnops_http_*), so by default the access log skips the hot paths (its
# skip_paths match by prefix); RNNOPS_LOG_HOT_PATHS=1 brings their log lines back.
HOT_PATH_PREFIXES = ["/generate", "/complete", "/forecast", "/v1/completions", "/v2/models/", "/sessions"]
_LOGGING = {} if CONFIG.log_hot_paths else {"logging": {"access": {"skip_paths": HOT_PATH_PREFIXES}}}
# BentoML's request metrics are off: its middleware labels every request by the path the client
# sent, so each session id and each random 404 path made new series, without bound (300 session
# GETs took /metrics from 10 KB to 1.1 MB), and its skip_paths spared only a gauge, not the
# counters. Our router counts requests under route templates and serves /metrics itself (http/app.py).
# `bentoml serve` still gives every worker PROMETHEUS_MULTIPROC_DIR, which our metrics add up across.
_METRICS = {"metrics": {"enabled": False}}


def session_store(config: ServeConfig, models: ModelManager, metrics: Metrics) -> SessionStore | RedisSessionStore:
    """In this worker's memory (the default), or shared in Redis (RNNOPS_SESSION_STORE=redis://...)."""
    if config.session_store == "memory":
        return SessionStore(config.max_sessions, config.session_ttl_s, metrics)
    from rnnops.serving.forecast.redis_store import RedisSessionStore

    return RedisSessionStore(
        config.session_store, models, config.max_sessions, config.session_ttl_s, metrics, lock_s=config.session_lock_s
    )


@bentoml.asgi_app(app, path="/")
@bentoml.service(
    name="rnnops",
    workers=CONFIG.workers,
    traffic={"timeout": CONFIG.request_timeout_s},
    **_TRACING,
    **_LOGGING,
    **_METRICS,
)
class RnnopsService:
    def __init__(self) -> None:
        from rnnops.serving.metrics import get_metrics  # in the worker, under its PROMETHEUS_MULTIPROC_DIR

        logging.getLogger("rnnops").setLevel(logging.INFO)
        # The scheduler thread comes back from each ORT call (which releases the GIL) needing
        # the GIL while the event loop holds it; Python's default 5 ms switch interval would
        # add up to 5 ms to every step.
        sys.setswitchinterval(CONFIG.gil_switch_ms / 1000.0)
        if not CONFIG.trace_hot_paths and _tracing_sample_rate() > 0:
            log.warning(
                "BentoML tracing is on (tracing.sample_rate > 0) but %s are not traced; set "
                "RNNOPS_TRACE_HOT_PATHS=1 to trace them too (it costs CPU per request)",
                " and ".join(HOT_PATHS),
            )
        metrics = get_metrics()
        models = ModelManager(CONFIG, metrics, on_step=wake_watchers)
        self.serving = Serving(CONFIG, models, session_store(CONFIG, models, metrics), metrics=metrics)
        app.serving = self.serving
        self._sweeper: asyncio.Task[None] | None = None

    @bentoml.on_startup
    async def start_models(self) -> None:
        await self.serving.models.start()
        # Everything loaded so far (BentoML, onnxruntime, the models) lives as long as the
        # worker: move it out of the garbage collector's sight, so that a full collection
        # (triggered by the objects requests make) no longer walks it: tens of ms of pause per
        # collection otherwise, straight into the latency tail (p99 at 64 concurrent /forecast
        # requests: 450-660 ms before, 115-220 ms after). Requests make short-lived lists and
        # dicts by the thousand, freed by reference counting: a larger first generation runs
        # the cycle collector less often for nothing (~10 % more requests/s on one core).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_sessions())
        # SIGTERM: unready at once, 503 to new requests, in-flight work finishes (see drain.py)
        Drainer(self.serving, CONFIG.drain_s).install()
        # a connection's unsent backlog bounded, so a client that stops reading is noticed in seconds
        if CONFIG.send_buffer_bytes and not bound_send_buffers(CONFIG.send_buffer_bytes):
            log.warning(
                "RNNOPS_SEND_BUFFER_BYTES: no listening socket found to bound; a stalled SSE client is "
                "noticed only once the kernel's buffers fill"
            )

    async def _sweep_sessions(self) -> None:
        every = max(1.0, min(30.0, self.serving.sessions.ttl_s / 4))
        while True:
            await asyncio.sleep(every)
            try:
                await self.serving.sessions.sweep()
            except Exception as exc:  # a shared store out of reach: sessions wait, serving goes on
                log.warning("session sweep failed: %s", exc)

    @bentoml.on_shutdown
    async def stop_models(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.serving.models.stop()
        from rnnops.serving.metrics import mark_process_dead

        mark_process_dead()

    def __is_ready__(self) -> bool:
        return self.serving.models.ready and not self.serving.draining


# @bentoml.service made the class a bentoml Service, which mypy cannot see (bentoml is untyped)
_service: Any = RnnopsService

# Security headers (nosniff, no referrer, the CSP, no-store for keyed answers) on every answer:
# added first, so outermost of ours: the 413 and 401 below carry them too (see http/headers.py).
_service.add_asgi_middleware(SecurityHeadersMiddleware)

# The body limit on BentoML's outer app: a request announcing too big a body is refused before
# any of it is read, on every route (see http/limits.py).
_service.add_asgi_middleware(BodyLimitMiddleware, max_bytes=CONFIG.max_body_bytes)

# API keys, per-key stream bounds and CORS on BentoML's outer app, so that they cover its own
# routes (/livez, /readyz) too, not only our mounted router (see http/auth.py).
for _cls, _options in access_middlewares(CONFIG):
    _service.add_asgi_middleware(_cls, **_options)
