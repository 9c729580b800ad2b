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

Over 400 lines on purpose: this is the completions protocol itself (its request fields,
the refusals of what rnnops does not do, the stream and whole answer shapes); the streaming
underneath is ``http/streaming.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from rnnops import refs
from rnnops.errors import RnnopsError
from rnnops.serving.errors import InputError, Overloaded, UnknownModel
from rnnops.serving.http import generate as G
from rnnops.serving.http.errors import ApiError, ClientGone, JSONResponse, validation_error
from rnnops.serving.http.schemas import GenerateBody
from rnnops.serving.http.streaming import Generation, SSEResponse

if TYPE_CHECKING:
    from rnnops.serving.config import ServeConfig
    from rnnops.serving.generate.stream import GenerationRequest, Logprob
    from rnnops.serving.http.app import Handler, Serving
    from rnnops.serving.models import LoadedModel

log = logging.getLogger("rnnops.serving")

MAX_LOGPROBS = 5  # as OpenAI's API
Stop = Annotated[str, Field(min_length=1, max_length=64)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = Field(None, description="A last chunk with `usage` and no choices.")


class CompletionBody(BaseModel):
    """POST /v1/completions (OpenAI's legacy completions API; a character is a token)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(
        ...,
        min_length=1,
        description="A served char model (GET /v1/models), optionally `name@alias` or `name@version`.",
    )
    prompt: (
        Annotated[str, Field(min_length=1)] | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
    ) = Field(..., description="Text to continue (or several: at most RNNOPS_OPENAI_MAX_PROMPTS).")
    max_tokens: int | None = Field(
        16, ge=1, description="Characters to generate per choice (at most RNNOPS_MAX_CHARS)."
    )
    temperature: float | None = Field(1.0, ge=0.0, le=2.0, description="0 = greedy.")
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    n: int | None = Field(
        1, ge=1, description="Choices per prompt (at most RNNOPS_OPENAI_MAX_N); choice j uses seed + j."
    )
    stream: bool | None = Field(False, description="Server-Sent Events `data:` chunks, then `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_LOGPROBS,
        description="Per generated character its "
        "log-probability and the top k characters' (the model's raw distribution).",
    )
    echo: bool | None = Field(False, description="Prepend the prompt to each choice's text.")
    stop: Stop | Annotated[list[Stop], Field(max_length=8)] | None = Field(
        None, description="Stop when one of these strings is generated (not returned)."
    )
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


def error(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status, headers=headers
    )


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


def openai_errors(handler: Handler) -> Handler:
    """Answer every failure of ``handler`` in OpenAI's error shape."""

    async def wrapped(serving: Serving, request: Request) -> Response:
        try:
            return await handler(serving, request)
        except ClientGone:
            return Response(status_code=499)
        except Exception as exc:
            return to_openai(request, exc)

    wrapped.__name__ = handler.__name__
    return wrapped


# --------------------------------------------------------------------------------- models


def char_models(serving: Serving) -> list[LoadedModel]:
    return [m for m in serving.models.current.values() if m.kind == "char"]


def resolve(serving: Serving, spec: str) -> LoadedModel:
    """``name``, ``name@alias`` or ``name@version`` (also ``name/version``: the one grammar of
    :mod:`rnnops.refs`) -> the loaded model; a 404 listing the loaded char models when it is not
    one of them."""
    loaded = (
        ", ".join(
            f"{m.name} (version {m.version}" + (f", alias {m.resolved.alias})" if m.resolved.alias else ")")
            for m in char_models(serving)
        )
        or "none yet"
    )
    name, sel = spec, None  # a bare name is a served name (whatever version it serves now)
    if "@" in spec or "/" in spec:
        body = spec.removeprefix("models:/")
        try:  # read as a registry reference, whatever files this server's folder holds
            name = refs.parse_ref("models:/" + body).name
        except RnnopsError:
            raise UnknownModel(
                f"model {spec!r} is not a served name, name@alias or name@version; loaded char models: {loaded}"
            ) from None
        sel = body[len(name) + 1 :]  # the alias or version as written (a file's version is its sha256 prefix)
    try:
        m = serving.models.get(name, "char")
    except UnknownModel:
        raise UnknownModel(f"model {spec!r} is not loaded here; loaded char models: {loaded}") from None
    if sel and sel not in (m.version, m.resolved.alias):
        raise UnknownModel(
            f"model {spec!r} is not loaded here ({name} serves version {m.version}); loaded char models: {loaded}"
        )
    return m


@openai_errors
async def list_models(serving: Serving, request: Request) -> Response:
    data = [
        {
            "id": m.name,
            "object": "model",
            "created": int(m.loaded_at),
            "owned_by": "rnnops",
            "precision": m.runtime.info.precision,
        }
        for m in char_models(serving)
    ]
    return JSONResponse({"object": "list", "data": data})


# --------------------------------------------------------------------------------- requests


def _unsupported(body: CompletionBody) -> None:
    neutral = {
        "best_of": body.best_of in (None, body.n or 1),
        "suffix": not body.suffix,
        "logit_bias": not body.logit_bias,
        "frequency_penalty": not body.frequency_penalty,
        "presence_penalty": not body.presence_penalty,
    }
    for param, ok in neutral.items():
        if not ok:
            raise ApiError(
                400,
                "unsupported_parameter",
                f"{param} is not supported by this server (char models, one sample per choice); leave it out",
                field=param,
            )
    if body.echo and body.logprobs is not None:
        raise ApiError(
            400,
            "unsupported_parameter",
            "logprobs together with echo (log-probabilities of the prompt) is not supported; drop one of them",
            field="echo",
        )


def _requests(body: CompletionBody, model: LoadedModel, cfg: ServeConfig) -> list[GenerationRequest]:
    """The generation requests, in choice order (prompt-major): choice j of a prompt uses seed + j."""
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if len(prompts) > cfg.openai_max_prompts:
        raise ApiError(
            400,
            "invalid_request",
            f"prompt lists {len(prompts)} prompts; the limit is {cfg.openai_max_prompts} (RNNOPS_OPENAI_MAX_PROMPTS)",
            field="prompt",
        )
    if (body.n or 1) > cfg.openai_max_n:
        raise ApiError(
            400, "invalid_request", f"n is {body.n}; the limit is {cfg.openai_max_n} (RNNOPS_OPENAI_MAX_N)", field="n"
        )
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    if max_tokens > cfg.max_chars:
        raise ApiError(
            400,
            "invalid_request",
            f"max_tokens is {max_tokens}; the limit is {cfg.max_chars} (RNNOPS_MAX_CHARS)",
            field="max_tokens",
        )
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    seed = body.seed if body.seed is not None else secrets.randbits(62)
    n = body.n or 1
    reqs = []
    for p in prompts:
        for j in range(n):
            try:
                g = GenerateBody(
                    model=model.name,
                    prompt=p,
                    max_chars=max_tokens,
                    seed=(seed + j) % 2**63,
                    stop=stop,
                    temperature=1.0 if body.temperature is None else body.temperature,
                    top_p=1.0 if body.top_p is None else body.top_p,
                )
            except ValidationError as exc:
                raise validation_error(exc) from None
            reqs.append(dataclasses.replace(G.generation_request(g, model, cfg), logprobs=body.logprobs))
    return reqs


def _logprobs(got: list[Logprob], text: str, offset: int) -> dict[str, Any]:
    """OpenAI's logprobs object for ``text`` (its characters' entries in ``got``, from ``offset``)."""
    return {
        "tokens": list(text),
        "token_logprobs": [lp for lp, _ in got],
        "top_logprobs": [top for _, top in got],
        "text_offset": list(range(offset, offset + len(text))),
    }


def _usage(prompts: list[str], n: int, g: Generation) -> dict[str, int]:
    p = sum(len(t) for t in prompts[::n])
    gen = sum(len(s.text) for s in g.streams)
    return {"prompt_tokens": p, "completion_tokens": gen, "total_tokens": p + gen}


@openai_errors
async def completions(serving: Serving, request: Request) -> Response:
    try:
        body = CompletionBody.model_validate_json((await request.body()) or b"{}")
    except ValidationError as exc:
        raise validation_error(exc) from None
    _unsupported(body)
    g = await Generation.start(
        request, lambda: resolve(serving, body.model), lambda model: _requests(body, model, serving.config)
    )
    model = g.model
    n = body.n or 1
    prompts = [body.prompt] * n if isinstance(body.prompt, str) else [p for p in body.prompt for _ in range(n)]
    head = {
        "id": f"cmpl-{secrets.token_hex(12)}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.model,
        "system_fingerprint": f"{model.name}-v{model.version}",
    }
    headers = {"X-Model": model.name, "X-Model-Version": model.version}
    if body.stream:
        return SSEResponse(_events(serving, body, g, head, prompts, n), g, serving.config.stall_s, headers=headers)
    try:
        if not await g.finished():
            return Response(status_code=499)
    finally:
        g.cancel()
    bad = g.failed()
    if bad is not None:
        assert bad.finish_reason is not None, "a failed stream has ended"
        status = 503 if bad.finish_reason == "shutdown" else 500
        return error(status, bad.error or bad.finish_reason, "server_error", code=bad.finish_reason)
    choices = []
    for i, (s, p) in enumerate(zip(g.streams, prompts)):
        lp = _logprobs(s.logprobs, s.text, 0) if body.logprobs is not None else None
        choices.append(
            {"text": (p if body.echo else "") + s.text, "index": i, "logprobs": lp, "finish_reason": s.finish_reason}
        )
    seed = g.streams[0].seed
    return JSONResponse({**head, "seed": seed, "choices": choices, "usage": _usage(prompts, n, g)}, headers=headers)


def _data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _events(
    serving: Serving, body: CompletionBody, g: Generation, head: dict[str, Any], prompts: list[str], n: int
) -> AsyncGenerator[bytes, None]:
    cfg = serving.config
    try:
        if body.echo:
            yield _data(
                {
                    **head,
                    "choices": [
                        {"text": p, "index": i, "logprobs": None, "finish_reason": None} for i, p in enumerate(prompts)
                    ],
                }
            )
        async for deltas in g.deltas(cfg.coalesce_ms / 1000.0, cfg.sse_events_per_s):
            failed = next((d for d in deltas if d.failed), None)
            if failed is not None:
                yield _data(
                    {
                        "error": {
                            "message": failed.error or failed.finish_reason,
                            "type": "server_error",
                            "param": None,
                            "code": failed.finish_reason,
                        }
                    }
                )
                return
            # the last piece of a choice's text carries its finish reason
            yield _data(
                {
                    **head,
                    "choices": [
                        {
                            "text": d.text,
                            "index": d.index,
                            "finish_reason": d.finish_reason,
                            "logprobs": _logprobs(d.logprobs, d.text, d.offset)
                            if body.logprobs is not None and d.text
                            else None,
                        }
                        for d in deltas
                    ],
                }
            )
        if body.stream_options is not None and body.stream_options.include_usage:
            yield _data({**head, "choices": [], "usage": _usage(prompts, n, g)})
        yield b"data: [DONE]\n\n"
    except Exception as exc:  # never a silent cut
        log.exception("completion %s failed", head["id"])
        yield _data(
            {"error": {"message": f"internal error: {exc}", "type": "server_error", "param": None, "code": "internal"}}
        )
    finally:
        g.cancel()  # no-op for finished streams; frees the slots when the client went away
