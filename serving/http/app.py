"""The HTTP endpoints: a small Starlette router that BentoML mounts at ``/`` (see :mod:`service`).

Thin: it validates, translates and frames; the scheduler, batcher and sessions do the work.

- ``POST /generate``  Server-Sent Events (:mod:`.generate`); ``POST /complete``  one JSON answer.
- ``POST /forecast``  ``context`` (T x F) or ``contexts`` (N windows) -> forecasts, raw units.
- ``POST /sessions``, ``POST|GET|DELETE /sessions/{id}``: stateful forecast sessions (:mod:`.forecast`).
- ``POST /session-updates``: several series' session updates in one request, each as ``POST /sessions/{id}``.
- ``GET /models``  what is served, draining and failed, and the limits.
- ``/v1/models``, ``/v1/completions``: OpenAI-compatible completions (:mod:`.openai`).
- ``/v2/...``: the Open Inference Protocol, KServe v2 / Triton HTTP, with sequences (:mod:`.oip`).
- ``GET /docs.json`` (OpenAPI 3.1 of all of the above), ``GET /docs`` (Swagger UI): :mod:`.openapi`.
- ``GET /playground`` (``/`` redirects there): the browser playground (:mod:`.playground`).
- ``GET /metrics``: Prometheus text of our metrics, every worker's (:func:`~rnnops.serving.metrics.exposition`).

Every answered request is counted and timed (``rnnops_http_requests_total``,
``rnnops_http_request_duration_seconds``) under its route *template* (``/sessions/{session_id}``),
so the label sets stay bounded whatever paths clients send; paths no route matches count under
``route="unmatched"``.

Every handler takes the serving state explicitly (:class:`Serving`: config, model manager,
sessions), so a handler can be tested with Starlette's test client and a fake model manager.
The app is built before its worker's state exists (BentoML wants it at import), so
:class:`RnnopsApp` holds the state the service hands it when the worker starts; until then
requests get a 503. Errors map to answers in :mod:`.errors`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from rnnops.serving.config import ServeConfig
from rnnops.serving.errors import Overloaded
from rnnops.serving.forecast.sessions import SessionStore
from rnnops.serving.http import forecast as F
from rnnops.serving.http import generate as G
from rnnops.serving.http import oip as OIP
from rnnops.serving.http import openai as OA
from rnnops.serving.http import openapi as DOCS
from rnnops.serving.http import playground as PLAY
from rnnops.serving.http.errors import ApiError, JSONResponse, to_response
from rnnops.serving.metrics import UNMATCHED_ROUTE, exposition

if TYPE_CHECKING:
    from rnnops.serving.forecast.redis_store import RedisSessionStore
    from rnnops.serving.metrics import Metrics
    from rnnops.serving.models import ModelManager


@dataclass
class Serving:
    """Everything a request needs: limits, models, sessions."""

    config: ServeConfig
    models: ModelManager  # or, in tests, anything with its get/describe API
    sessions: SessionStore | RedisSessionStore
    draining: bool = False  # SIGTERM received (drain.py): new requests get 503
    requests: int = 0  # requests inside a handler now
    metrics: Metrics | None = None  # counts and times every answered request (None: not counted)

    def in_flight(self) -> int:
        """Requests being handled plus streams still generating (what a drain waits for)."""
        return self.requests + self.models.in_flight()


async def models(serving: Serving, request: Request) -> Response:
    c = serving.config
    d = serving.models.describe()
    d["limits"] = {
        "max_streams": c.max_streams,
        "max_queue": c.max_queue,
        "queue_timeout_s": c.queue_timeout_s,
        "max_prompt_chars": c.max_prompt_chars,
        "max_chars": c.max_chars,
        "max_sessions": c.max_sessions,
        "session_ttl_s": c.session_ttl_s,
        "forecast_max_windows": c.forecast_max_windows,
        "max_context_rows": c.max_context_rows,
    }
    d["sessions_open"] = len(serving.sessions)
    d["scheduler"] = c.scheduler
    return JSONResponse(d)


async def metrics(request: Request) -> Response:
    """Prometheus text; answered before the worker is ready and while it drains, like a probe."""
    try:
        body, content_type = await asyncio.to_thread(exposition)  # reads every worker's files
    except Exception as exc:
        return to_response(request, exc)
    return Response(body, media_type=content_type)


Handler = Callable[[Serving, Request], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]
METRICS_PATH = "/metrics"
# the methods a request's label may name; any other (a client's invention) counts as "other"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
HEALTH_PREFIX = "/v2/health/"  # answered while draining too (the protocol's own liveness/readiness)

ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/generate", G.generate),
    ("POST", "/complete", G.complete),
    ("POST", "/forecast", F.forecast),
    ("POST", "/sessions", F.open_session),
    ("POST", "/session-updates", F.update_sessions),
    ("POST", "/sessions/{session_id}", F.update_session),
    ("GET", "/sessions/{session_id}", F.get_session),
    ("DELETE", "/sessions/{session_id}", F.close_session),
    ("GET", "/models", models),
    # the ecosystem's protocols and the contract (issue 11): OpenAI completions, KServe v2 / Triton
    ("GET", "/v1/models", OA.list_models),
    ("POST", "/v1/completions", OA.completions),
    ("GET", "/v2", OIP.server_metadata),
    ("GET", "/v2/health/live", OIP.live),
    ("GET", "/v2/health/ready", OIP.ready),
    *(
        (method, prefix + tail, handler)
        for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
        for method, tail, handler in (
            ("GET", "", OIP.metadata),
            ("GET", "/ready", OIP.model_ready),
            ("POST", "/infer", OIP.infer),
        )
    ),
    ("GET", "/docs.json", DOCS.docs_json),
    ("GET", "/docs", DOCS.docs_page),
    ("GET", "/static_content/{file}", DOCS.asset),
    *PLAY.ROUTES,  # the browser playground (issue 16): /, /playground and its files, vocab, samples
]


class RnnopsApp(Router):
    """The routes, bound to a :class:`Serving` (given now, or set later by the service).

    A bare Router, not a Starlette app: BentoML's app around it already has the error and
    exception middlewares (and every handler's failure becomes a JSON answer here), so a second
    set would be pure cost.
    """

    def __init__(self, serving: Serving | None = None):
        self.serving = serving
        routes = [
            Route(path, self._counted(path, self._bind(handler)), methods=[method]) for method, path, handler in ROUTES
        ]
        routes.append(Route(METRICS_PATH, self._counted(METRICS_PATH, metrics), methods=["GET"]))
        super().__init__(routes=routes, default=self._unmatched)

    def _count(self, route: str, method: str, status: int, start: float) -> None:
        serving = self.serving
        if serving is not None and serving.metrics is not None:
            serving.metrics.request(route, method, status, time.perf_counter() - start)

    def _counted(self, route: str, endpoint: Endpoint) -> Endpoint:
        """``endpoint``, counted and timed under its route template (never the path a client sent)
        and the request's method (one of the route's: GET routes answer HEAD too)."""

        async def counted(request: Request) -> Response:
            start = time.perf_counter()
            response = await endpoint(request)
            self._count(route, request.method, response.status_code, start)
            return response

        counted.__name__ = endpoint.__name__
        return counted

    async def _unmatched(self, scope: Scope, receive: Receive, send: Send) -> None:
        """No route matched: Starlette's 404, counted under one fixed label (paths are untrusted)."""
        start = time.perf_counter()
        try:
            await self.not_found(scope, receive, send)
        finally:
            if scope["type"] == "http":
                method = scope.get("method", "")
                self._count(UNMATCHED_ROUTE, method if method in KNOWN_METHODS else "other", 404, start)

    def _bind(self, handler: Handler) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            serving = self.serving
            try:
                if serving is None:
                    raise Overloaded("not_ready", "the worker is starting; retry", 1, status=503)
                if serving.draining and not request.url.path.startswith(HEALTH_PREFIX):
                    raise Overloaded(
                        "draining", "this server is shutting down; retry (another replica will answer)", 1, status=503
                    )
                serving.requests += 1
                try:
                    # a streaming handler returns once its stream is admitted: the deadline bounds
                    # the wait for an answer, never a stream's length
                    async with asyncio.timeout(serving.config.request_deadline_s):
                        return await handler(serving, request)
                except TimeoutError:
                    raise ApiError(
                        504,
                        "deadline",
                        f"no answer within {serving.config.request_deadline_s:g}s (RNNOPS_REQUEST_DEADLINE_S)",
                    ) from None
                finally:
                    serving.requests -= 1
            except Exception as exc:  # every failure becomes a JSON answer; none reaches the server loop
                response = to_response(request, exc)
                if serving is not None and serving.draining:
                    response.headers["Connection"] = "close"
                return response

        endpoint.__name__ = handler.__name__
        return endpoint


def create_app(serving: Serving | None = None) -> RnnopsApp:
    return RnnopsApp(serving)
