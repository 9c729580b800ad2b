"""OpenAI-compatible completions for char models: ``GET /v1/models``, ``POST /v1/completions``.

A character is a token. Every choice is a stream on the same step scheduler as ``/generate``
(continuous batching, one seeded generator per stream): with ``n`` = 1 the same seed gives the
same text on both endpoints, and choice ``j`` of a prompt uses ``seed + j``. Transport only:
the body is translated into :class:`GenerationRequest` s, the streams are framed as OpenAI's
``text_completion`` objects (or SSE ``data:`` chunks ending with ``data: [DONE]``), and every
failure is answered in OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``
with its status codes (400, 401, 404, 429 with ``Retry-After``), which the OpenAI SDKs turn
into their own exception classes.

Parameters this server does not implement (``best_of`` other than ``n``, ``suffix``,
``logit_bias``, frequency/presence penalties, ``logprobs`` together with ``echo``) get a 400
naming the parameter: a client must never believe something was honoured that was not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from rnnops.serving.errors import InputError, Overloaded, UnknownModel
from rnnops.serving.generate.stream import Stream
from rnnops.serving.http import generate as G
from rnnops.serving.http.errors import ApiError, ClientGone, JSONResponse, validation_error
from rnnops.serving.http.schemas import GenerateBody

log = logging.getLogger("rnnops.serving")

MAX_N = 16  # choices per prompt
MAX_PROMPTS = 16  # prompts per request
MAX_LOGPROBS = 5  # as OpenAI's API
Stop = Annotated[str, Field(min_length=1, max_length=64)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = Field(None, description="A last chunk with `usage` and no choices.")


class CompletionBody(BaseModel):
    """POST /v1/completions (OpenAI's legacy completions API; a character is a token)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(..., min_length=1, description="A served char model (GET /v1/models), optionally "
                       "`name@alias` or `name@version`.")
    prompt: Annotated[str, Field(min_length=1)] | Annotated[list[Annotated[str, Field(min_length=1)]], Field(
        min_length=1, max_length=MAX_PROMPTS)] = Field(..., description="Text to continue (or several).")
    max_tokens: int | None = Field(16, ge=1, description="Characters to generate per choice (at most RNNOPS_MAX_CHARS).")
    temperature: float | None = Field(1.0, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    n: int | None = Field(1, ge=1, le=MAX_N, description="Choices per prompt; choice j uses seed + j.")
    stream: bool | None = Field(False, description="Server-Sent Events `data:` chunks, then `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="Per generated character its "
                                 "log-probability and the top k characters' (the model's raw distribution).")
    echo: bool | None = Field(False, description="Prepend the prompt to each choice's text.")
    stop: Stop | Annotated[list[Stop], Field(max_length=8)] | None = Field(
        None, description="Stop when one of these strings is generated (not returned).")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Same seed, same text (as /generate).")
    user: str | None = Field(None, max_length=256, description="An end-user id (accepted, not used).")
    # not implemented: accepted only at their neutral values, a 400 naming them otherwise
    best_of: int | None = Field(None, ge=1, description="Not implemented: only null or equal to n.")
    suffix: str | None = Field(None, description="Not implemented: only null or empty.")
    logit_bias: dict[str, float] | None = Field(None, description="Not implemented: only null or {}.")
    frequency_penalty: float | None = Field(None, description="Not implemented: only null or 0.")
    presence_penalty: float | None = Field(None, description="Not implemented: only null or 0.")


class Logprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class Choice(BaseModel):
    text: str
    index: int
    logprobs: Logprobs | None
    finish_reason: Literal["length", "stop"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    """A `text_completion` object (and, streamed, each `data:` chunk: `usage` only on the last)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    seed: int | None = None
    choices: list[Choice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    precision: str = Field("fp32", description="rnnops: fp32 or int8, the file this model runs (RNNOPS_PRECISION)")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: ErrorDetail


# --------------------------------------------------------------------------------- errors


def error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
          code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


def to_openai(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        param = exc.extra.get("field") or (exc.extra.get("details") or [{}])[0].get("field")
        return error(exc.status, exc.message, param=param, code=exc.kind)
    if isinstance(exc, InputError):
        return error(400, str(exc), param=exc.field, code="invalid_input")
    if isinstance(exc, UnknownModel):
        return error(404, str(exc.args[0]), param="model", code="model_not_found")
    if isinstance(exc, Overloaded):
        kind = "rate_limit_exceeded" if exc.status == 429 else "server_error"
        return error(exc.status, exc.message, kind, code=exc.reason, headers={"Retry-After": str(exc.retry_after)})
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", code="internal")


def openai_errors(handler):
    """Answer every failure of ``handler`` in OpenAI's error shape."""

    async def wrapped(serving, request: Request) -> Response:
        try:
            return await handler(serving, request)
        except ClientGone:
            return Response(status_code=499)
        except Exception as exc:
            return to_openai(request, exc)

    wrapped.__name__ = handler.__name__
    return wrapped


# --------------------------------------------------------------------------------- models


def char_models(serving) -> list:
    return [m for m in serving.models.current.values() if m.kind == "char"]


def resolve(serving, spec: str):
    """``name``, ``name@alias`` or ``name@version`` (also ``name/version``) -> the loaded model;
    a 404 listing the loaded char models when it is not one of them."""
    name, sel = spec, None
    for sep in ("@", "/"):
        if sep in spec:
            name, sel = spec.rsplit(sep, 1)
            break
    loaded = ", ".join(f"{m.name} (version {m.version}" + (f", alias {m.resolved.alias})" if m.resolved.alias else ")")
                       for m in char_models(serving)) or "none yet"
    try:
        m = serving.models.get(name, "char")
    except UnknownModel:
        raise UnknownModel(f"model {spec!r} is not loaded here; loaded char models: {loaded}") from None
    if sel and sel not in (m.version, m.resolved.alias):
        raise UnknownModel(f"model {spec!r} is not loaded here ({name} serves version {m.version}); "
                           f"loaded char models: {loaded}")
    return m


@openai_errors
async def list_models(serving, request: Request) -> Response:
    data = [{"id": m.name, "object": "model", "created": int(m.loaded_at), "owned_by": "rnnops",
             "precision": m.runtime.info.precision} for m in char_models(serving)]
    return JSONResponse({"object": "list", "data": data})


# --------------------------------------------------------------------------------- requests


def _unsupported(body: CompletionBody) -> None:
    neutral = {"best_of": body.best_of in (None, body.n or 1), "suffix": not body.suffix,
               "logit_bias": not body.logit_bias, "frequency_penalty": not body.frequency_penalty,
               "presence_penalty": not body.presence_penalty}
    for param, ok in neutral.items():
        if not ok:
            raise ApiError(400, "unsupported_parameter", f"{param} is not supported by this server (char models, "
                           "one sample per choice); leave it out", field=param)
    if body.echo and body.logprobs is not None:
        raise ApiError(400, "unsupported_parameter", "logprobs together with echo (log-probabilities of the "
                       "prompt) is not supported; drop one of them", field="echo")


def _requests(body: CompletionBody, model, cfg) -> tuple[list, list[str], int]:
    """The generation requests, in choice order (prompt-major), their prompts, and the base seed."""
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    if max_tokens > cfg.max_chars:
        raise ApiError(400, "invalid_request", f"max_tokens is {max_tokens}; the limit is {cfg.max_chars} "
                       "(RNNOPS_MAX_CHARS)", field="max_tokens")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    seed = body.seed if body.seed is not None else secrets.randbits(62)
    n = body.n or 1
    reqs, texts = [], []
    for p in prompts:
        for j in range(n):
            try:
                g = GenerateBody(model=model.name, prompt=p, max_chars=max_tokens, seed=(seed + j) % 2**63, stop=stop,
                                 temperature=1.0 if body.temperature is None else body.temperature,
                                 top_p=1.0 if body.top_p is None else body.top_p)
            except ValidationError as exc:
                raise validation_error(exc) from None
            reqs.append(dataclasses.replace(G.generation_request(g, model, cfg), logprobs=body.logprobs))
            texts.append(p)
    return reqs, texts, seed


def _logprobs(stream: Stream, start: int, text: str, offset: int) -> dict:
    got = stream.logprobs[start:start + len(text)]
    return {"tokens": list(text), "token_logprobs": [lp for lp, _ in got], "top_logprobs": [top for _, top in got],
            "text_offset": list(range(offset, offset + len(text)))}


class Choices:
    """The streams of one request and the budget they hold (per-key stream bound, see auth)."""

    def __init__(self, request: Request, streams: list[Stream], model):
        self.streams = streams
        self.model = model
        self.event = asyncio.Event()  # one event for all: woken when any stream is due
        self.watches = [G.watch(s) for s in streams]
        for w in self.watches:
            w.event = self.event
        self.budget = request.scope.get("rnnops.budget")
        self.extra = len(streams) - 1  # the auth middleware holds one slot for the request itself

    def cancel(self) -> None:
        for s in self.streams:
            s.cancel()
        if self.budget is not None and self.extra > 0:
            self.budget.give(self.extra)
            self.extra = 0

    async def wait(self, watches, timeout: float | None, output: bool, window: float = 0.0) -> None:
        """Until one of ``watches`` is due (see :class:`StreamWatch`) or ``timeout``."""
        if len(watches) == 1:
            w = watches[0]
            w.event = self.event
            await w.wait(timeout, output=output, window=window)
            return
        self.event.clear()
        for w in watches:
            w.output, w.window, w.waiting = output, window, True
        try:
            if not any(w.due(time.monotonic()) for w in watches):
                async with asyncio.timeout(timeout):
                    await self.event.wait()
        except TimeoutError:
            pass
        finally:
            now = time.monotonic()
            for w in watches:
                w.waiting, w.seen_phase, w.last_wake = False, w.stream.phase, now


async def _start(serving, request: Request, body: CompletionBody) -> Choices:
    model = resolve(serving, body.model)
    reqs, _, _ = _requests(body, model, serving.config)
    budget = request.scope.get("rnnops.budget")
    if budget is not None and len(reqs) > 1:
        budget.take(len(reqs) - 1)  # Overloaded (429) when the key has no room for them
    c = Choices(request, [Stream(r) for r in reqs], model)
    try:
        for s in c.streams:
            model.scheduler.submit(s.request, s)  # Overloaded -> 429/503
        while not all(s.admitted or s.done for s in c.streams):
            await c.wait([w for w in c.watches if not (w.stream.admitted or w.stream.done)], 0.25, output=False)
            if not all(s.admitted or s.done for s in c.streams) and await request.is_disconnected():
                raise ClientGone
        bad = [s for s in c.streams if s.finish_reason in ("queue_timeout", "shutdown")]
        if bad:
            raise Overloaded(bad[0].finish_reason, bad[0].error or bad[0].finish_reason,
                             model.scheduler.retry_after(), status=503)
    except BaseException:
        c.cancel()
        raise
    return c


def _usage(prompts: list[str], n: int, c: Choices) -> dict:
    p = sum(len(t) for t in prompts[::n])
    gen = sum(len(s.text) for s in c.streams)
    return {"prompt_tokens": p, "completion_tokens": gen, "total_tokens": p + gen}


def _failed(c: Choices) -> Stream | None:
    return next((s for s in c.streams if s.finish_reason not in ("length", "stop")), None)


@openai_errors
async def completions(serving, request: Request) -> Response:
    try:
        body = CompletionBody.model_validate_json((await request.body()) or b"{}")
    except ValidationError as exc:
        raise validation_error(exc) from None
    _unsupported(body)
    c = await _start(serving, request, body)
    model = c.model
    n = body.n or 1
    prompts = [body.prompt] * n if isinstance(body.prompt, str) else [p for p in body.prompt for _ in range(n)]
    head = {"id": f"cmpl-{secrets.token_hex(12)}", "object": "text_completion", "created": int(time.time()),
            "model": body.model, "system_fingerprint": f"{model.name}-v{model.version}"}
    headers = {"X-Model": model.name, "X-Model-Version": model.version}
    if body.stream:
        return StreamingResponse(_events(serving, request, body, c, head, prompts, n), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})
    try:
        while not all(s.done for s in c.streams):
            await c.wait([w for w in c.watches if not w.stream.done], 0.5, output=False)
            if not all(s.done for s in c.streams) and await request.is_disconnected():
                return Response(status_code=499)
    finally:
        c.cancel()
    bad = _failed(c)
    if bad is not None:
        status = 503 if bad.finish_reason == "shutdown" else 500
        return error(status, bad.error or bad.finish_reason, "server_error", code=bad.finish_reason)
    choices = []
    for i, (s, p) in enumerate(zip(c.streams, prompts)):
        lp = _logprobs(s, 0, s.text, 0) if body.logprobs is not None else None
        choices.append({"text": (p if body.echo else "") + s.text, "index": i, "logprobs": lp,
                        "finish_reason": s.finish_reason})
    seed = c.streams[0].seed
    return JSONResponse({**head, "seed": seed, "choices": choices, "usage": _usage(prompts, n, c)}, headers=headers)


def _data(obj) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _events(serving, request, body: CompletionBody, c: Choices, head: dict, prompts: list[str], n: int):
    cfg = serving.config
    coalesce, rate = cfg.coalesce_ms / 1000.0, max(1.0, cfg.sse_events_per_s)
    sched = c.model.scheduler
    sent = [0] * len(c.streams)  # characters delivered per choice
    open_ = list(range(len(c.streams)))
    try:
        if body.echo:
            yield _data({**head, "choices": [{"text": p, "index": i, "logprobs": None, "finish_reason": None}
                                             for i, p in enumerate(prompts)]})
        while open_:
            out, still = [], []
            for i in open_:
                s = c.streams[i]
                done = s.done
                text = s.drain()
                if done and s.finish_reason not in ("length", "stop"):
                    yield _data({"error": {"message": s.error or s.finish_reason, "type": "server_error",
                                           "param": None, "code": s.finish_reason}})
                    return
                if text or done:  # the last piece of text carries the finish reason
                    lp = _logprobs(s, sent[i], text, sent[i]) if body.logprobs is not None and text else None
                    sent[i] += len(text)
                    out.append({"text": text, "index": i, "logprobs": lp, "finish_reason": s.finish_reason if done
                                else None})
                if not done:
                    still.append(i)
            if out:
                yield _data({**head, "choices": out})
            open_ = still
            if open_:
                await c.wait([c.watches[i] for i in open_], None, output=True, window=max(coalesce, sched.active / rate))
        if body.stream_options is not None and body.stream_options.include_usage:
            yield _data({**head, "choices": [], "usage": _usage(prompts, n, c)})
        yield b"data: [DONE]\n\n"
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except Exception as exc:  # never a silent cut
        log.exception("completion %s failed", head["id"])
        yield _data({"error": {"message": f"internal error: {exc}", "type": "server_error", "param": None,
                               "code": "internal"}})
    finally:
        c.cancel()  # no-op for finished streams; frees the slots when the client went away
