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
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _too_large(limit: int, got: int | None) -> bytes:
    seen = f"{got:,} bytes" if got is not None else "more than that"
    return orjson.dumps(
        {
            "error": f"request body is {seen}; the limit is {limit:,} bytes (RNNOPS_MAX_BODY_BYTES)",
            "type": "body_too_large",
        }
    )


async def _reply_413(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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

        async def counted_receive() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > limit:
                    refused = True
                    await _reply_413(send, _too_large(limit, None))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted_receive, guarded_send)


# --------------------------------------------------------------------------------- send buffers


def bound_send_buffers(limit: int) -> int:
    """Bound what each connection's kernel buffer holds unsent: ``TCP_NOTSENT_LOWAT`` on this
    process's listening sockets (accepted connections inherit it). Returns how many were set.

    Why: a client that stops reading is noticed when a send blocks for ``RNNOPS_STALL_S`` (see
    ``SSEResponse`` in :mod:`rnnops.serving.http.generate`). Left alone, Linux lets a connection
    queue megabytes unsent (2.8 MB measured on loopback for a reader with a 4 KiB receive buffer),
    so a slow stream went on holding its slot for minutes until those filled. With the bound the
    socket stops taking data at ``limit`` unsent bytes, the transport's own small buffer fills,
    and the send blocks: a stalled stream is noticed within seconds, and a stuck client holds a
    bounded amount of memory. BentoML opens the listening socket and hands its descriptor to the
    workers, so it is found among this process's descriptors."""
    import os
    import socket

    if limit <= 0 or not hasattr(socket, "TCP_NOTSENT_LOWAT"):
        return 0
    done = 0
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else []:
        try:
            fd = os.dup(int(name))
        except (OSError, ValueError):
            continue
        try:
            s = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            continue
        with s:
            try:
                listening = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            except OSError:
                continue
            if listening and s.type == socket.SOCK_STREAM and s.family in (socket.AF_INET, socket.AF_INET6):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, int(limit))
                done += 1
    return done
