"""Transport: the HTTP endpoints, a small Starlette app that BentoML mounts (thin: it validates,
translates and frames; the scheduler, batcher and sessions do the work).

- ``POST /generate``  Server-Sent Events: ``chunk`` events ``{"text"}`` (characters gathered over
  ``RNNOPS_COALESCE_MS`` go out together), then one ``done`` event with the stats, or one
  ``error`` event: a stream never ends silently.
- ``POST /complete``  the same request, one JSON answer.
- ``POST /forecast``  ``context`` (T x F) or ``contexts`` (N windows) -> forecasts, raw units.
- ``POST /sessions``, ``POST /sessions/{id}``, ``GET /sessions/{id}``, ``DELETE /sessions/{id}``:
  stateful forecast sessions.
- ``GET /models``  what is served, draining and failed.

Errors are JSON ``{"error": message, "type": ...}``: 400 bad input, 404 unknown model/session,
429 queue or session cap full and 503 queue timeout / not loaded (both with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, Router

from rnnops.serving.config import ServeConfig
from rnnops.serving.forecast.batcher import InputError, check_rows, future_timestamps, parse_timestamps, step_of
from rnnops.serving.models import ModelManager, UnknownModel
from rnnops.serving.generate.sampling import SamplingParams
from rnnops.serving.generate.scheduler import GenerationRequest, Overloaded, Stream
from rnnops.serving.http.schemas import ForecastBody, GenerateBody, ObserveBody, OpenSessionBody
from rnnops.serving.forecast.sessions import SessionStore, UnknownSession

log = logging.getLogger("rnnops.serving")


@dataclass
class Serving:
    """Everything a request needs: limits, models, sessions."""

    config: ServeConfig
    models: ModelManager
    sessions: SessionStore


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, **extra):
        super().__init__(message)
        self.status, self.kind, self.message, self.extra = status, kind, message, extra


class ClientGone(Exception):
    pass


class JSONResponse(Response):
    """JSON via orjson: numpy arrays go out as they are (float32 in its shortest form), about
    20x faster than ``json.dumps`` over a forecast's Python floats. NaN/inf become ``null``."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _error(status: int, kind: str, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, "type": kind, **extra}, status_code=status, headers=headers)


async def _handle_errors(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        return _error(exc.status, exc.kind, exc.message, **exc.extra)
    if isinstance(exc, InputError):
        return _error(400, "invalid_input", str(exc), field=exc.field)
    if isinstance(exc, Overloaded):
        return _error(exc.status, exc.reason, exc.message, headers={"Retry-After": str(exc.retry_after)},
                      retry_after=exc.retry_after)
    if isinstance(exc, UnknownModel):
        return _error(404, "unknown_model", str(exc.args[0]))
    if isinstance(exc, UnknownSession):
        return _error(404, "unknown_session", f"unknown session {exc.args[0]!r}: it was closed, expired after "
                      "RNNOPS_SESSION_TTL idle, or never opened on this server; open one with POST /sessions")
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _error(500, "internal", f"internal error: {type(exc).__name__}: {exc}")


async def _parse(request: Request, model: type[BaseModel]):
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        details = [{"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
                   for e in exc.errors(include_url=False, include_input=False)[:20]]
        text = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        raise ApiError(400, "invalid_request", text, details=details) from None


_FORECAST_FIELDS = frozenset(ForecastBody.model_fields)


def _window_array(rows) -> np.ndarray | None:
    """A JSON window (T rows of F numbers) as an array, or None if it is anything else."""
    if type(rows) is not list:
        return None
    try:
        a = np.array(rows)
    except ValueError:  # ragged
        return None
    return a if a.ndim == 2 and a.dtype.kind in "fi" else None


def _fast_forecast_body(raw: bytes) -> SimpleNamespace | None:
    """The usual well-formed /forecast body, decoded with orjson straight into arrays.

    Pydantic spends ~0.4 ms building and checking a Python float for each value of a 96x7
    window; this path takes a tenth of that. It takes only bodies that ``ForecastBody`` takes
    and reads them to the same values (tests/test_routes.py checks both on good and bad bodies);
    anything else returns None, so every bad body still gets pydantic's error message.
    """
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(d) is not dict or not d.keys() <= _FORECAST_FIELDS:
        return None
    model, context, contexts, stamps = (d.get(k) for k in ("model", "context", "contexts", "timestamps"))
    if model is not None and type(model) is not str:
        return None
    if context is not None and (context := _window_array(context)) is None:
        return None
    if contexts is not None:
        if type(contexts) is not list:
            return None
        contexts = [_window_array(w) for w in contexts]
        if any(w is None for w in contexts):
            return None
    if stamps is not None:
        if type(stamps) is not list or not (all(type(t) is str for t in stamps) or all(
                type(t) is list and all(type(v) is str for v in t) for t in stamps)):
            return None
    return SimpleNamespace(model=model, context=context, contexts=contexts, timestamps=stamps)


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _show(chars: list[str]) -> str:
    return ", ".join(f"{c!r} (U+{ord(c):04X})" for c in chars[:20]) + (" ..." if len(chars) > 20 else "")


def create_app(get: Callable[[], Serving]) -> Router:
    """The endpoints, reading the serving state through ``get`` (the BentoML service instance)."""

    # ------------------------------------------------------------------ generation

    def generation(body: GenerateBody, model, cfg: ServeConfig) -> GenerationRequest:
        if len(body.prompt) > cfg.max_prompt_chars:
            raise ApiError(400, "invalid_request", f"prompt has {len(body.prompt)} characters; the limit is "
                           f"{cfg.max_prompt_chars} (RNNOPS_MAX_PROMPT_CHARS)", field="prompt")
        if body.max_chars > cfg.max_chars:
            raise ApiError(400, "invalid_request", f"max_chars is {body.max_chars}; the limit is {cfg.max_chars} "
                           "(RNNOPS_MAX_CHARS)", field="max_chars")
        try:
            ids = model.runtime.encode(body.prompt)
        except ValueError as exc:
            unknown = exc.args[0]
            raise ApiError(400, "out_of_vocabulary", f"prompt has characters outside the vocabulary of model "
                           f"{model.name!r} (version {model.version}): {_show(unknown)}; remove or replace them",
                           field="prompt", characters=unknown) from None
        return GenerationRequest(ids, body.max_chars, SamplingParams(body.temperature, body.top_k, body.top_p),
                                 body.seed, tuple(body.stop))

    async def start_stream(request: Request) -> tuple[Stream, object]:
        s = get()
        body = await _parse(request, GenerateBody)
        model = s.models.get(body.model, "char")
        stream = Stream(generation(body, model, s.config)).bind(asyncio.get_running_loop())
        try:
            model.scheduler.submit(stream.request, stream)  # Overloaded -> 429/503
        except Overloaded as exc:
            if exc.reason != "draining":
                raise
            # a hot reload swapped the version between lookup and submit: take the new one
            model = s.models.get(body.model, "char")
            stream = Stream(generation(body, model, s.config)).bind(asyncio.get_running_loop())
            model.scheduler.submit(stream.request, stream)
        try:
            while not stream.admitted and not stream.done:
                await stream.wait(0.25, output=False)
                if not stream.admitted and not stream.done and await request.is_disconnected():
                    raise ClientGone
        except BaseException:
            stream.cancel()
            raise
        if stream.finish_reason in ("queue_timeout", "shutdown"):
            raise Overloaded(stream.finish_reason, stream.error or stream.finish_reason,
                             model.scheduler.retry_after(), status=503)
        return stream, model

    def final(stream: Stream, model) -> dict:
        return {**stream.stats(), "model": model.name, "version": model.version}

    async def generate(request: Request) -> Response:
        try:
            stream, model = await start_stream(request)
        except ClientGone:
            return Response(status_code=499)
        cfg = get().config
        coalesce, rate = cfg.coalesce_ms / 1000.0, max(1.0, cfg.sse_events_per_s)
        sched = model.scheduler

        async def events():
            try:
                while True:
                    done = stream.done
                    text = stream.drain()
                    if text:
                        yield _sse("chunk", {"text": text})
                    if done:
                        break
                    # Every event costs the worker the same (framing, middlewares, a socket
                    # write): characters gathered over a window go out together, and with many
                    # streams each one's window widens so the total event rate stays near
                    # RNNOPS_SSE_EVENTS_PER_S. The scheduler does the waiting (see Stream.wait).
                    await stream.wait(window=max(coalesce, sched.active / rate))
                info = final(stream, model)
                if stream.finish_reason in ("length", "stop"):
                    yield _sse("done", info)
                else:
                    yield _sse("error", {"error": stream.error or stream.finish_reason, "type": stream.finish_reason,
                                         **info})
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:  # never a silent cut
                log.exception("stream %s failed", stream.id)
                yield _sse("error", {"error": f"internal error: {exc}", "type": "internal"})
            finally:
                stream.cancel()  # no-op when finished; frees the slot when the client went away

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Model": model.name,
                   "X-Model-Version": model.version}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def complete(request: Request) -> Response:
        try:
            stream, model = await start_stream(request)
        except ClientGone:
            return Response(status_code=499)
        try:
            while not stream.done:
                await stream.wait(0.5, output=False)  # woken at the end, not per character
                if not stream.done and await request.is_disconnected():
                    return Response(status_code=499)
        finally:
            stream.cancel()
        info = final(stream, model)
        if stream.finish_reason not in ("length", "stop"):
            status = 503 if stream.finish_reason == "shutdown" else 500
            return _error(status, stream.finish_reason, stream.error or stream.finish_reason, **info)
        return JSONResponse({"text": stream.text, **info})

    # ------------------------------------------------------------------ forecasts

    def timestamps_for(ts_list, rows: np.ndarray, info, field: str, horizon: int) -> list[str]:
        if len(ts_list) != len(rows):
            raise InputError(f"{field} has {len(ts_list)} timestamps for {len(rows)} rows", field)
        ts = parse_timestamps(ts_list, field)
        return future_timestamps(ts[-1], step_of(ts, info, field), horizon)

    async def forecast(request: Request) -> Response:
        s = get()
        cfg = s.config
        body = _fast_forecast_body(await request.body()) or await _parse(request, ForecastBody)
        model = s.models.get(body.model, "forecaster")
        info = model.runtime.info
        if (body.context is None) == (body.contexts is None):
            raise InputError("give exactly one of `context` (T rows of F values) or `contexts` (a list of them)")
        single = body.context is not None
        raw = [body.context] if single else body.contexts
        if not raw:
            raise InputError("contexts is empty", "contexts")
        if len(raw) > cfg.forecast_max_windows:
            raise InputError(f"{len(raw)} windows; the limit per request is {cfg.forecast_max_windows} "
                             "(RNNOPS_FORECAST_MAX_WINDOWS)", "contexts")
        min_rows = 1 if info.stateful else info.lookback
        names = ["context"] if single else [f"contexts[{i}]" for i in range(len(raw))]
        windows = [check_rows(w, info, n, min_rows, cfg.max_context_rows) for w, n in zip(raw, names)]
        stamps = None
        if body.timestamps is not None:
            ts = [body.timestamps] if single else body.timestamps
            if single and (not ts[0] or not isinstance(ts[0][0], str)):
                raise InputError("timestamps must be a list of strings, one per context row", "timestamps")
            if not single and (len(ts) != len(windows) or any(not isinstance(t, list) for t in ts)):
                raise InputError("timestamps must hold one list per window in contexts", "timestamps")
            stamps = [timestamps_for(t, w, info, "timestamps" if single else f"timestamps[{i}]", info.horizon)
                      for i, (t, w) in enumerate(zip(ts, windows))]
        if not info.stateful:
            windows = [w[-info.lookback:] for w in windows]
        groups: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            groups.setdefault(len(w), []).append(i)
        outs = await asyncio.gather(*(model.batcher.forecast(np.stack([windows[i] for i in idx]))
                                      for idx in groups.values()))
        y: list = [None] * len(windows)
        for idx, out in zip(groups.values(), outs):
            for i, row in zip(idx, out):
                y[i] = row  # [horizon, F_out] float32, serialised by orjson as it is
        resp = {"model": model.name, "version": model.version, "targets": list(info.target_names),
                "horizon": info.horizon}
        if single:
            resp["forecast"] = y[0]
            if stamps:
                resp["timestamps"] = stamps[0]
        else:
            resp["forecasts"] = y
            if stamps:
                resp["timestamps"] = stamps
        return JSONResponse(resp)

    # ------------------------------------------------------------------ sessions

    def session_view(sess, forecast) -> dict:
        info = sess.model.runtime.info
        d = {"session_id": sess.id, "model": sess.model.name, "version": sess.model.version,
             "stateful": sess.stateful, "observations": sess.observations, "needs": sess.needs,
             "targets": list(info.target_names), "forecast": None if forecast is None else forecast.tolist(),
             "expires_in_s": get().sessions.ttl_s}
        if forecast is not None and sess.last_timestamp is not None and sess.step_s:
            d["timestamps"] = future_timestamps(sess.last_timestamp, sess.step_s, info.horizon)
        return d

    async def observe(sess, rows_raw, ts_raw, field: str):
        cfg = get().config
        info = sess.model.runtime.info
        rows = check_rows(rows_raw, info, field, 1, cfg.max_context_rows)
        if ts_raw is not None:
            if len(ts_raw) != len(rows):
                raise InputError(f"timestamps has {len(ts_raw)} entries for {len(rows)} rows", "timestamps")
            ts = parse_timestamps(ts_raw, "timestamps")
            if sess.last_timestamp is not None:
                if ts[0] <= sess.last_timestamp:
                    raise InputError(f"timestamps must come after the session's last one ({sess.last_timestamp})",
                                     "timestamps")
                ts = np.concatenate([[sess.last_timestamp], ts])
            try:
                sess.step_s = step_of(ts, info, "timestamps")
            except InputError:
                sess.step_s = None
            sess.last_timestamp = ts[-1]
        return await asyncio.to_thread(sess.observe, rows)

    async def open_session(request: Request) -> Response:
        s = get()
        body = await _parse(request, OpenSessionBody)
        model = s.models.get(body.model, "forecaster")
        sess = s.sessions.open(model)
        y = None
        try:
            if body.context:
                async with sess.lock:
                    y = await observe(sess, body.context, body.timestamps, "context")
        except BaseException:
            s.sessions.close(sess.id)
            raise
        return JSONResponse(session_view(sess, y), status_code=201)

    async def update_session(request: Request) -> Response:
        s = get()
        sess = s.sessions.get(request.path_params["session_id"])
        body = await _parse(request, ObserveBody)
        async with sess.lock:
            y = await observe(sess, body.observations, body.timestamps, "observations")
        return JSONResponse(session_view(sess, y))

    async def get_session(request: Request) -> Response:
        sess = get().sessions.get(request.path_params["session_id"])
        return JSONResponse(session_view(sess, sess.last_forecast))

    async def close_session(request: Request) -> Response:
        sess = get().sessions.close(request.path_params["session_id"])
        return JSONResponse({"session_id": sess.id, "closed": True, "observations": sess.observations})

    # ------------------------------------------------------------------ info

    async def models(request: Request) -> Response:
        s = get()
        c = s.config
        d = s.models.describe()
        d["limits"] = {"max_streams": c.max_streams, "max_queue": c.max_queue, "queue_timeout_s": c.queue_timeout_s,
                       "max_prompt_chars": c.max_prompt_chars, "max_chars": c.max_chars,
                       "max_sessions": c.max_sessions, "session_ttl_s": c.session_ttl_s,
                       "forecast_max_windows": c.forecast_max_windows, "max_context_rows": c.max_context_rows}
        d["sessions_open"] = len(s.sessions)
        d["scheduler"] = c.scheduler
        return JSONResponse(d)

    def guarded(endpoint):
        async def run(request: Request) -> Response:
            try:
                return await endpoint(request)
            except Exception as exc:  # every failure becomes a JSON answer; none reaches the server loop
                return await _handle_errors(request, exc)

        return run

    routes = [
        Route("/generate", guarded(generate), methods=["POST"]),
        Route("/complete", guarded(complete), methods=["POST"]),
        Route("/forecast", guarded(forecast), methods=["POST"]),
        Route("/sessions", guarded(open_session), methods=["POST"]),
        Route("/sessions/{session_id}", guarded(update_session), methods=["POST"]),
        Route("/sessions/{session_id}", guarded(get_session), methods=["GET"]),
        Route("/sessions/{session_id}", guarded(close_session), methods=["DELETE"]),
        Route("/models", guarded(models), methods=["GET"]),
    ]
    # A bare Router, not a Starlette app: BentoML's app around it already has the error and
    # exception middlewares (and `guarded` answers every failure), so a second set is pure cost.
    return Router(routes=routes)
