"""Request limits that must act before a handler runs: the body size, on the outer ASGI app.

``RNNOPS_MAX_BODY_BYTES`` bounds a request body. A body that announces more with
``Content-Length`` is refused with 413 at once, before a byte of it is read (a client that
announces 50 MB and withholds it gets its answer immediately, not after a read timeout). A
chunked body with no length is counted as it arrives and refused with 413 the moment it passes
the bound; the handler then sees the client disconnect, and whatever it would still send is
dropped. The default (8 MiB) takes the largest window ``RNNOPS_MAX_CONTEXT_ROWS`` allows at
typical widths with room to spare; raise both together for wider data.

Installed with BentoML's ``add_asgi_middleware`` (see :mod:`rnnops.serving.service`), so it
covers every route, BentoML's own included.
"""

from __future__ import annotations

import orjson


def _too_large(limit: int, got: int | None) -> bytes:
    seen = f"{got:,} bytes" if got is not None else "more than that"
    return orjson.dumps({"error": f"request body is {seen}; the limit is {limit:,} bytes (RNNOPS_MAX_BODY_BYTES)",
                         "type": "body_too_large"})


async def _reply_413(send, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                break
        if declared is not None:
            if declared > self.max_bytes:
                await _reply_413(send, _too_large(self.max_bytes, declared))
                return
            await self.app(scope, receive, send)  # the server reads no more than it announced
            return

        limit, seen, refused = self.max_bytes, 0, False

        async def counted_receive():
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused = True
                    await _reply_413(send, _too_large(limit, None))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not refused:
                await send(message)

        await self.app(scope, counted_receive, guarded_send)
