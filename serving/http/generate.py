"""Streamed generation over HTTP: ``POST /generate`` (Server-Sent Events) and ``POST /complete``.

Translation only: a body becomes a :class:`GenerationRequest`; the one streaming path
(:mod:`.streaming`: submission, hot-reload resubmission, admission, coalescing, stalled and
departed clients) turns the stream into ``chunk`` events ``{"text"}`` then one ``done`` event with
the stats, or one ``error`` event (a stream never ends silently); ``/complete`` answers once, at
the end, with the text and the stats.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from rnnops.serving.generate.sampling import SamplingParams
from rnnops.serving.generate.stream import GenerationRequest, Stream
from rnnops.serving.http.errors import ApiError, ClientGone, JSONResponse, error_response, parse_body
from rnnops.serving.http.schemas import GenerateBody
from rnnops.serving.http.streaming import Generation, SSEResponse, StreamWatch, wake_watchers, watch  # noqa: F401

if TYPE_CHECKING:
    from rnnops.serving.config import ServeConfig
    from rnnops.serving.http.app import Serving
    from rnnops.serving.models import LoadedModel

log = logging.getLogger("rnnops.serving")


# --------------------------------------------------------------------------------- requests


def _show(chars: list[str]) -> str:
    return ", ".join(f"{c!r} (U+{ord(c):04X})" for c in chars[:20]) + (" ..." if len(chars) > 20 else "")


def generation_request(body: GenerateBody, model: LoadedModel, cfg: ServeConfig) -> GenerationRequest:
    """Check a body against the server's limits and the model's vocabulary."""
    if len(body.prompt) > cfg.max_prompt_chars:
        raise ApiError(
            400,
            "invalid_request",
            f"prompt has {len(body.prompt)} characters; the limit is {cfg.max_prompt_chars} (RNNOPS_MAX_PROMPT_CHARS)",
            field="prompt",
        )
    if body.max_chars > cfg.max_chars:
        raise ApiError(
            400,
            "invalid_request",
            f"max_chars is {body.max_chars}; the limit is {cfg.max_chars} (RNNOPS_MAX_CHARS)",
            field="max_chars",
        )
    try:
        ids = model.runtime.encode(body.prompt)
    except ValueError as exc:
        unknown = exc.args[0]
        raise ApiError(
            400,
            "out_of_vocabulary",
            f"prompt has characters outside the vocabulary of model "
            f"{model.name!r} (version {model.version}): {_show(unknown)}; remove or replace them",
            field="prompt",
            characters=unknown,
        ) from None
    return GenerationRequest(
        ids, body.max_chars, SamplingParams(body.temperature, body.top_k, body.top_p), body.seed, tuple(body.stop)
    )


async def start(serving: Serving, request: Request) -> Generation:
    """Parse, submit, and wait until the stream has a slot (429/503 before any byte is sent)."""
    body = await parse_body(request, GenerateBody)
    return await Generation.start(
        request,
        lambda: serving.models.get(body.model, "char"),
        lambda model: [generation_request(body, model, serving.config)],
    )


def final_stats(stream: Stream, model: LoadedModel) -> dict[str, Any]:
    return {**stream.stats(), "model": model.name, "version": model.version}


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def generate(serving: Serving, request: Request) -> Response:
    try:
        g = await start(serving, request)
    except ClientGone:
        return Response(status_code=499)
    cfg, model, stream = serving.config, g.model, g.streams[0]

    async def events() -> AsyncGenerator[str, None]:
        try:
            async for deltas in g.deltas(cfg.coalesce_ms / 1000.0, cfg.sse_events_per_s):
                (d,) = deltas
                if d.text:
                    yield sse("chunk", {"text": d.text})
            info = final_stats(stream, model)
            if stream.finish_reason in ("length", "stop"):
                yield sse("done", info)
            else:
                yield sse(
                    "error", {"error": stream.error or stream.finish_reason, "type": stream.finish_reason, **info}
                )
        except Exception as exc:  # never a silent cut
            log.exception("stream %s failed", stream.id)
            yield sse("error", {"error": f"internal error: {exc}", "type": "internal"})
        finally:
            g.cancel()  # no-op when finished; frees the slot when the client went away

    headers = {"X-Model": model.name, "X-Model-Version": model.version}
    return SSEResponse(events(), g, cfg.stall_s, headers=headers)


async def complete(serving: Serving, request: Request) -> Response:
    try:
        g = await start(serving, request)
    except ClientGone:
        return Response(status_code=499)
    try:
        if not await g.finished():
            return Response(status_code=499)
    finally:
        g.cancel()
    stream = g.streams[0]
    info = final_stats(stream, g.model)
    assert stream.finish_reason is not None, "finished() waited for its end"
    if stream.finish_reason not in ("length", "stop"):
        status = 503 if stream.finish_reason == "shutdown" else 500
        return error_response(status, stream.finish_reason, stream.error or stream.finish_reason, **info)
    return JSONResponse({"text": stream.text, **info})
