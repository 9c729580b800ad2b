"""The BentoML service: ``bentoml serve rnnops.serving.service:RnnopsService`` (or ``rnnops serve``).

Thin wiring. BentoML gives the process model (workers), ``/livez`` ``/readyz`` ``/metrics``, the
traffic timeout and the lifecycle hooks; our endpoints are a Starlette app mounted on the
service (BentoML's own ``@bentoml.api`` methods cannot stream Server-Sent Events with our
framing, answer 429 with ``Retry-After``, or batch a streaming endpoint). Per worker, the service
holds one :class:`ModelManager` (one runtime + step scheduler or forecast batcher per served
model version, hot reload) and one :class:`SessionStore`.

Configuration is read from the environment once, at import (see :mod:`config`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

import bentoml

from rnnops.serving.config import ServeConfig
from rnnops.serving.models import ModelManager
from rnnops.serving.routes import Serving, create_app
from rnnops.serving.sessions import SessionStore

CONFIG = ServeConfig.from_env()
log = logging.getLogger("rnnops.serving")


def _serving() -> Serving:
    return bentoml.get_current_service().serving


app = create_app(_serving)


# BentoML's OpenTelemetry middleware opens a span for every message a response sends: for an
# SSE stream, one per event, which costs more than the event itself. Streams are left out of
# tracing unless RNNOPS_TRACE_STREAMS=1 (their request logs and metrics stay).
_TRACING = {} if CONFIG.trace_streams else {"tracing": {"excluded_urls": ["/generate"]}}


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="rnnops", workers=CONFIG.workers, traffic={"timeout": CONFIG.request_timeout_s}, **_TRACING)
class RnnopsService:
    def __init__(self) -> None:
        from rnnops.serving.metrics import get_metrics  # after BentoML set up multiprocess metrics

        logging.getLogger("rnnops").setLevel(logging.INFO)
        # The scheduler thread comes back from each ORT call (which releases the GIL) needing
        # the GIL while the event loop holds it; Python's default 5 ms switch interval would
        # add up to 5 ms to every step.
        sys.setswitchinterval(CONFIG.gil_switch_ms / 1000.0)
        metrics = get_metrics()
        self.serving = Serving(CONFIG, ModelManager(CONFIG, metrics),
                               SessionStore(CONFIG.max_sessions, CONFIG.session_ttl_s, metrics))
        self._sweeper: asyncio.Task | None = None

    @bentoml.on_startup
    async def start_models(self) -> None:
        await self.serving.models.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_sessions())

    async def _sweep_sessions(self) -> None:
        every = max(1.0, min(30.0, self.serving.sessions.ttl_s / 4))
        while True:
            await asyncio.sleep(every)
            self.serving.sessions.sweep()

    @bentoml.on_shutdown
    async def stop_models(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        await self.serving.models.stop()

    def __is_ready__(self) -> bool:
        return self.serving.models.ready
