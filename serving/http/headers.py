"""Security headers on every answer: ASGI middleware for the *outer* app (BentoML's
``add_asgi_middleware``, added first so that it wraps the body limit, the key check and
BentoML's own routes as well as ours; docs/security.md).

- ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer`` on every response:
  a browser never guesses a type (a JSON error echoing a request is never run as HTML), and no
  URL of the service leaks to another site through ``Referer``.
- ``Content-Security-Policy`` (:data:`CSP`) on every response but the Swagger UI page and its
  assets (``/docs``, ``/static_content/``: an inline bootstrap script of its own). The playground
  loads only its own ES modules and CSS, so nothing it shows (a model's metadata, generated
  text, an error message) can run as script even if it ever reached markup.
- ``Cache-Control: no-store`` on answers to requests that carry ``Authorization``: what a key
  unlocks is kept by no cache, shared or private.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
NO_CSP_PATHS = frozenset({"/docs"})  # Swagger UI: its page bootstraps with an inline script
NO_CSP_PREFIXES = ("/static_content/",)
ALWAYS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"))


def headers_for(path: str, authenticated: bool) -> list[tuple[bytes, bytes]]:
    """The security headers an answer to ``path`` carries (see the module docstring)."""
    out = list(ALWAYS)
    if path not in NO_CSP_PATHS and not path.startswith(NO_CSP_PREFIXES):
        out.append((b"content-security-policy", CSP.encode()))
    if authenticated:
        out.append((b"cache-control", b"no-store"))
    return out


class SecurityHeadersMiddleware:
    """Adds :func:`headers_for` to every HTTP response start, replacing any same-named header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        authenticated = any(name == b"authorization" for name, _ in scope.get("headers", ()))
        extra = headers_for(scope.get("path", ""), authenticated)
        names = {name for name, _ in extra}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(n, v) for n, v in message.get("headers", ()) if n.lower() not in names]
                message = {**message, "headers": kept + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)
