"""API keys, per-key fairness and CORS: ASGI middleware for the *outer* app (BentoML's
``add_asgi_middleware``), so they cover BentoML's own routes (``/livez``, ``/readyz``) as well as ours.

- ``RNNOPS_API_KEYS``: a comma-separated list, or ``@FILE`` with one key per line (``#``
  comments). Only SHA-256 digests are kept, compared in constant time against every key; a key
  is never logged. When set, every route needs ``Authorization: Bearer <key>`` (the OpenAI
  client's ``api_key`` and tritonclient's ``headers`` send it) except the health endpoints
  (``/livez``, ``/readyz``, ``/v2/health/*``), the API contract (``/docs``, ``/docs.json``, its
  assets), the playground's page and files (``/``, ``/playground``, ``/playground/static/``) and
  ``/metrics`` unless ``RNNOPS_METRICS_AUTH=1``; otherwise 401 with
  ``WWW-Authenticate: Bearer`` and the error in the shape of the API asked (OpenAI's under
  ``/v1``).
- ``RNNOPS_MAX_STREAMS_PER_KEY``: at most this many concurrent generation streams per key **per
  worker** (each worker counts its own; with N workers a key may hold up to N times as many):
  429 with ``Retry-After`` beyond, so one client cannot take every slot. A request holds one
  stream while it runs; ``/v1/completions`` with several choices takes the rest from
  ``scope["rnnops.budget"]``.
- ``RNNOPS_CORS_ORIGINS``: allowed browser origins (comma-separated, ``*`` for any); none by
  default. Starlette's CORS middleware, outside the key check so that preflights pass.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from rnnops.errors import RnnopsError

if TYPE_CHECKING:
    from rnnops.serving.config import ServeConfig

OPEN_PATHS = frozenset(
    {
        "/livez",
        "/readyz",
        "/healthz",
        "/v2/health/live",
        "/v2/health/ready",
        "/docs",
        "/docs.json",
        "/",
        "/playground",
        "/playground/",
    }
)
# the playground's page and static files are open (the page then asks for a key: its requests need one)
OPEN_PREFIXES = ("/static_content/", "/playground/static/")
STREAM_PATHS = frozenset({"/generate", "/complete", "/v1/completions"})


def load_keys(spec: str) -> list[bytes]:
    """``RNNOPS_API_KEYS`` -> SHA-256 digests of the keys (never the keys)."""
    spec = (spec or "").strip()
    if not spec:
        return []
    if spec.startswith("@"):
        path = Path(spec[1:]).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise RnnopsError(f"RNNOPS_API_KEYS={spec}: cannot read the key file ({exc.strerror})") from None
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    else:
        keys = [k.strip() for k in spec.split(",") if k.strip()]
    if not keys:
        raise RnnopsError(f"RNNOPS_API_KEYS={spec[:1]}...: no keys in it")
    return [hashlib.sha256(k.encode()).digest() for k in keys]


class KeyBudget:
    """One key's concurrent streams in this worker."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0

    def take(self, n: int = 1) -> None:
        from rnnops.serving.errors import Overloaded

        if self.limit and self.held + n > self.limit:
            raise Overloaded(
                "key_streams",
                f"this API key holds {self.held} streams; the limit is {self.limit} per "
                "key per worker (RNNOPS_MAX_STREAMS_PER_KEY)",
                1,
                status=429,
            )
        self.held += n

    def give(self, n: int = 1) -> None:
        self.held = max(0, self.held - n)


def _error_body(path: str, status: int, kind: str, message: str) -> bytes:
    if path.startswith("/v1/"):
        return orjson.dumps(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error" if status == 401 else "rate_limit_exceeded",
                    "param": None,
                    "code": kind,
                }
            }
        )
    return orjson.dumps({"error": message, "type": kind})


class ApiKeyMiddleware:
    """Bearer keys and the per-key stream bound (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, keys: list[bytes], metrics_auth: bool = False, max_streams_per_key: int = 0
    ) -> None:
        self.app = app
        self.keys = keys
        self.metrics_auth = metrics_auth
        self.max_streams = max_streams_per_key
        self.budgets: dict[bytes, KeyBudget] = {}

    def _open(self, path: str) -> bool:
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return True
        return path == "/metrics" and not self.metrics_auth

    def _key(self, scope: Scope) -> bytes | None:
        """The digest of the presented key when it is one of ours, else None (constant time over all keys)."""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    return None
                digest = hashlib.sha256(token.strip().encode()).digest()
                found = None
                for k in self.keys:  # no early exit: the time does not depend on which key matched
                    if hmac.compare_digest(k, digest):
                        found = k
                return found
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        key = None
        if self.keys and not self._open(path):
            key = self._key(scope)
            if key is None:
                await _reply(
                    send,
                    path,
                    401,
                    "invalid_api_key",
                    "missing or unknown API key: send `Authorization: Bearer <key>` (one of RNNOPS_API_KEYS)",
                    {b"www-authenticate": b'Bearer realm="rnnops"'},
                )
                return
        budget = None
        if self.max_streams and path in STREAM_PATHS:
            budget = self.budgets.setdefault(key or b"", KeyBudget(self.max_streams))
            try:
                budget.take(1)
            except Exception as exc:  # Overloaded
                await _reply(send, path, 429, "key_streams", str(exc), {b"retry-after": b"1"})
                return
            scope = {**scope, "rnnops.budget": budget}
        try:
            await self.app(scope, receive, send)
        finally:
            if budget is not None:
                budget.give(1)


async def _reply(send: Send, path: str, status: int, kind: str, message: str, headers: dict[bytes, bytes]) -> None:
    body = _error_body(path, status, kind, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers.items(),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def middlewares(config: ServeConfig) -> list[tuple[type, dict[str, Any]]]:
    """What the service adds to BentoML's app, outermost first: CORS (when origins are set),
    then keys and the per-key bound (when either is configured)."""
    out: list[tuple[type, dict[str, Any]]] = []
    origins = [o.strip() for o in (config.cors_origins or "").split(",") if o.strip()]
    if origins:
        from starlette.middleware.cors import CORSMiddleware

        out.append(
            (
                CORSMiddleware,
                {
                    "allow_origins": origins,
                    "allow_methods": ["GET", "POST", "DELETE", "OPTIONS"],
                    "allow_headers": ["authorization", "content-type", "inference-header-content-length"],
                    "expose_headers": ["retry-after", "x-model", "x-model-version", "inference-header-content-length"],
                    "max_age": 600,
                },
            )
        )
    keys = load_keys(config.api_keys)
    if keys or config.max_streams_per_key:
        out.append(
            (
                ApiKeyMiddleware,
                {"keys": keys, "metrics_auth": config.metrics_auth, "max_streams_per_key": config.max_streams_per_key},
            )
        )
    return out
