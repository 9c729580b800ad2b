"""The API contract: ``GET /docs.json`` (OpenAPI 3.1) and ``GET /docs`` (Swagger UI, offline).

The document is generated from the pydantic models the handlers validate with (request bodies in
:mod:`.schemas`, :mod:`.openai`, :mod:`.oip`) and the response models in :mod:`.answers`: no
hand-kept copy. It covers every route: bodies, answers (SSE responses as ``text/event-stream``
with the per-event schema, which schemathesis checks event by event on 3.0/3.1), status codes,
the error bodies, and the headers (``Retry-After`` on 429/503, ``WWW-Authenticate`` on 401).

The runtime limits go into the schema, so a body the schema allows is one this server can take:
``max_chars``/``max_tokens`` up to ``RNNOPS_MAX_CHARS``, prompts up to
``RNNOPS_MAX_PROMPT_CHARS`` characters of the served vocabularies (a ``pattern``), context rows
up to ``RNNOPS_MAX_CONTEXT_ROWS`` (and the feature count when the forecasters agree on one),
``model`` one of the served names. It is rebuilt when the served versions change.

The Swagger UI page uses the assets BentoML ships (``bentoml/_internal/server/static_content``),
found without importing BentoML and served at ``/static_content/...``: nothing from the internet.

Over 400 lines on purpose: the document is declarative, one entry per operation with its
bodies, answers and limits; splitting it would scatter one contract.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

from rnnops import __version__
from rnnops.serving.http import answers as A
from rnnops.serving.http import oip, openai, playground
from rnnops.serving.http.errors import JSONResponse
from rnnops.serving.http.schemas import ForecastBody, GenerateBody, ObserveBody, OpenSessionBody, SessionUpdatesBody

if TYPE_CHECKING:
    from rnnops.serving.http.app import Serving

Json = dict[str, Any]  # a piece of the OpenAPI document

REF = "#/components/schemas/{model}"
REQUESTS: tuple[type[BaseModel], ...] = (  # request bodies: their schemas as validated
    GenerateBody,
    ForecastBody,
    OpenSessionBody,
    ObserveBody,
    SessionUpdatesBody,
    openai.CompletionBody,
    oip.InferRequest,
)
MODELS: list[type[BaseModel]] = [
    *REQUESTS,
    A.ErrorBody,
    A.Chunk,
    A.Done,
    A.StreamError,
    A.Completed,
    A.Forecast,
    A.Session,
    A.SessionClosed,
    A.SessionUpdates,
    A.Models,
    openai.Completion,
    openai.ModelList,
    openai.OpenAIError,
    oip.InferResponse,
    oip.ModelMetadata,
    oip.ServerMetadata,
    oip.OIPError,
    A.Live,
    A.Ready,
    A.ModelReady,
]


def _ref(model: type[BaseModel]) -> Json:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: Json | type[BaseModel]) -> Json:
    return {"application/json": {"schema": schema if isinstance(schema, dict) else _ref(schema)}}


def _sse(events: list[tuple[str | None, Json | None]]) -> Json:
    """A ``text/event-stream`` answer: each event's ``data`` is JSON (or the literal ``[DONE]``)."""
    alts = []
    for name, data in events:
        ev: Json = {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data}
                if data
                else {"const": "[DONE]"}
            },
        }
        if name:
            ev["properties"]["event"] = {"const": name}
        alts.append(ev)
    return {"text/event-stream": {"schema": {"oneOf": alts} if len(alts) > 1 else alts[0]}}


RETRY = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}}
}


def _errors(error_model: type[BaseModel], codes: tuple[int, ...], auth: bool) -> Json:
    text = {
        400: "Bad input (each bad field named).",
        401: "Missing or unknown API key.",
        404: "Unknown model, version, session or sequence.",
        429: "A queue, a cap or this key's streams are full.",
        503: "Not loaded yet, queue timeout, draining or shutting down.",
    }
    out = {}
    for c in (*codes, *((401,) if auth else ())):
        r: Json = {"description": text[c], "content": _json(error_model)}
        if c == 429:
            r["headers"] = {"Retry-After": {**RETRY["Retry-After"], "required": True}}
        elif c == 503:
            r["headers"] = RETRY
        elif c == 401:
            r["headers"] = {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}}
        out[str(c)] = r
    return out


def _op(
    summary: str,
    ok: Json,
    errors: Json,
    body: type[BaseModel] | None = None,
    params: list[Json] | None = None,
    open_route: bool = False,
    tag: str = "rnnops",
    body_types: Json | None = None,
) -> Json:
    op: Json = {"summary": summary, "tags": [tag], "responses": {**ok, **errors}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": body_types or _json(body)}
    if params:
        op["parameters"] = params
    if open_route:
        op["security"] = []
    return op


def _path_param(name: str, enum: list[str] | None = None) -> Json:
    schema: Json = {"type": "string", "minLength": 1}
    if enum:
        schema["enum"] = enum
    return {"name": name, "in": "path", "required": True, "schema": schema}


# --------------------------------------------------------------------------------- limits


def _strings(schema: Json) -> Iterator[Json]:
    """The string sub-schemas of a property (itself, its anyOf branches, their array items)."""
    for s in schema.get("anyOf", [schema]):
        if s.get("type") == "string":
            yield s
        elif s.get("type") == "array" and s.get("items", {}).get("type") == "string":
            yield s["items"]


def _class(chars: set[str]) -> str:
    return "^[" + "".join("\\" + c if c in "\\]^-[" else c for c in sorted(chars)) + "]+$"


def _set_model(schema: Json, names: list[str]) -> None:
    for s in _strings(schema):
        if names:
            s["enum"] = names


def _rows(schema: Json, max_rows: int, min_rows: int, width: int | None, depth: int) -> None:
    """Bound the rows of a window property (``depth`` 1: a window, 2: a list of windows)."""
    for s in schema.get("anyOf", [schema]):
        if s.get("type") != "array":
            continue
        window = s if depth == 1 else s.get("items", {})
        window.update(maxItems=max_rows, minItems=min_rows)
        if width:
            window.get("items", {}).update(minItems=width, maxItems=width)


def _limited(components: Json, serving: Serving) -> None:
    cfg = serving.config
    current = list(getattr(serving.models, "current", {}).values())
    chars = [m for m in current if m.kind == "char"]
    fcs = [m for m in current if m.kind == "forecaster"]
    vocab = set.intersection(*(set(m.runtime.info.vocab) for m in chars)) if chars else set()
    g = components["GenerateBody"]["properties"]
    g["max_chars"]["maximum"] = cfg.max_chars
    for s in _strings(g["prompt"]):
        s["maxLength"] = cfg.max_prompt_chars
        if vocab:
            s["pattern"] = _class(vocab)
    _set_model(g["model"], [m.name for m in chars])
    c = components["CompletionBody"]["properties"]
    c["max_tokens"]["anyOf"][0]["maximum"] = cfg.max_chars
    c["n"]["anyOf"][0]["maximum"] = cfg.openai_max_n
    c["prompt"]["anyOf"][1]["maxItems"] = cfg.openai_max_prompts
    for s in _strings(c["prompt"]):
        s["maxLength"] = cfg.max_prompt_chars
        if vocab:
            s["pattern"] = _class(vocab)
    c["model"]["enum"] = sorted(
        {
            spec
            for m in chars
            for spec in (
                m.name,
                f"{m.name}@{m.version}",
                *([f"{m.name}@{m.resolved.alias}"] if m.resolved.alias else []),
            )
        }
    )
    widths = {len(m.runtime.info.feature_names) for m in fcs}
    width = widths.pop() if len(widths) == 1 else None
    min_rows = max([1] + [m.runtime.info.lookback for m in fcs if not m.runtime.info.stateful])
    f = components["ForecastBody"]["properties"]
    _rows(f["context"], cfg.max_context_rows, min_rows, width, 1)
    _rows(f["contexts"], cfg.max_context_rows, min_rows, width, 2)
    for s in f["contexts"].get("anyOf", []):
        if s.get("type") == "array":
            s["maxItems"] = cfg.forecast_max_windows
    names = [m.name for m in fcs]
    panels = [m.name for m in current if m.kind == "panel"]  # /forecast's `series` form
    _set_model(f["model"], names + panels)
    _set_model(components["OpenSessionBody"]["properties"]["model"], names)
    for s in f["series"].get("anyOf", []):
        if s.get("type") == "array":
            s["maxItems"] = cfg.forecast_max_windows
    for s in components["SeriesItem"]["properties"]["context"].get("anyOf", []):
        s["maxItems"] = cfg.max_context_rows
    _rows(components["OpenSessionBody"]["properties"]["context"], cfg.max_context_rows, 1, width, 1)
    _rows(components["ObserveBody"]["properties"]["observations"], cfg.max_context_rows, 1, width, 1)
    _rows(components["SessionUpdate"]["properties"]["observations"], cfg.max_context_rows, 1, width, 1)
    components["SessionUpdatesBody"]["properties"]["updates"]["maxItems"] = cfg.forecast_max_windows


# --------------------------------------------------------------------------------- the document


def document(serving: Serving) -> Json:
    _, defs = models_json_schema(
        [(m, "validation" if m in REQUESTS else "serialization") for m in MODELS],
        ref_template=REF,
    )
    components = copy.deepcopy(defs["$defs"])
    _limited(components, serving)
    auth = bool(serving.config.api_keys)
    names = sorted(getattr(serving.models, "current", {}).keys())
    std = (400, 404, 429, 503)
    E, O, K = A.ErrorBody, openai.OpenAIError, oip.OIPError

    def ok(model: Json | type[BaseModel], code: str = "200", text: str = "OK", headers: Json | None = None) -> Json:
        return {code: {"description": text, "content": _json(model), **({"headers": headers} if headers else {})}}

    model_headers = {"X-Model": {"schema": {"type": "string"}}, "X-Model-Version": {"schema": {"type": "string"}}}
    sse_generate = {
        "200": {
            "description": "Server-Sent Events: `chunk` events, then one `done` or `error`.",
            "headers": model_headers,
            "content": _sse([("chunk", _ref(A.Chunk)), ("done", _ref(A.Done)), ("error", _ref(A.StreamError))]),
        }
    }
    chunk = {"allOf": [_ref(openai.Completion)]}
    sse_openai = {
        "description": "JSON (`stream` false) or Server-Sent Events `data:` chunks ending with "
        "`data: [DONE]` (`stream` true).",
        "headers": model_headers,
        "content": {
            **_json(openai.Completion),
            **_sse(
                [
                    (None, chunk),
                    (
                        None,
                        {
                            "type": "object",
                            "required": ["error"],
                            "properties": {"error": {"$ref": REF.format(model="ErrorDetail")}},
                        },
                    ),
                    (None, None),
                ]
            ),
        },
    }
    seq = _path_param("name", names)
    ver = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    sid = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    infer_ok = {
        "200": {
            "description": "Output tensors (JSON, or binary after a JSON header of "
            "`Inference-Header-Content-Length` bytes when binary outputs were asked for).",
            "content": {**_json(oip.InferResponse), **binary},
        }
    }
    infer_body = {**_json(oip.InferRequest), **binary}
    paths = {
        "/generate": {"post": _op("Stream generated text (SSE)", sse_generate, _errors(E, std, auth), GenerateBody)},
        "/complete": {
            "post": _op("Generate text (one JSON answer)", ok(A.Completed), _errors(E, std, auth), GenerateBody)
        },
        "/forecast": {
            "post": _op("Forecast one window or several", ok(A.Forecast), _errors(E, std, auth), ForecastBody)
        },
        "/sessions": {
            "post": _op(
                "Open a forecast session", ok(A.Session, "201", "Created"), _errors(E, std, auth), OpenSessionBody
            )
        },
        "/session-updates": {
            "post": _op(
                "Add observations to several sessions; per session its updated forecast or its error",
                ok(A.SessionUpdates),
                _errors(E, std, auth),
                SessionUpdatesBody,
            )
        },
        "/sessions/{session_id}": {
            "post": _op(
                "Add observations; the updated forecast", ok(A.Session), _errors(E, std, auth), ObserveBody, [sid]
            ),
            "get": _op("A session and its last forecast", ok(A.Session), _errors(E, (404, 503), auth), params=[sid]),
            "delete": _op("Close a session", ok(A.SessionClosed), _errors(E, (404, 503), auth), params=[sid]),
        },
        "/models": {
            "get": _op("What is served, draining and failed; the limits", ok(A.Models), _errors(E, (503,), auth))
        },
        "/v1/models": {
            "get": _op("OpenAI: the char models", ok(openai.ModelList), _errors(O, (503,), auth), tag="openai")
        },
        "/v1/completions": {
            "post": _op(
                "OpenAI: completions (a character is a token)",
                {"200": sse_openai},
                _errors(O, std, auth),
                openai.CompletionBody,
                tag="openai",
            )
        },
        "/v2": {"get": _op("OIP: server metadata", ok(oip.ServerMetadata), _errors(K, (503,), auth), tag="oip")},
        "/v2/health/live": {"get": _op("OIP: liveness", ok(A.Live), {}, open_route=True, tag="oip")},
        "/v2/health/ready": {
            "get": _op(
                "OIP: readiness",
                {**ok(A.Ready), "503": {"description": "Not ready", "headers": RETRY, "content": _json(A.Ready)}},
                {},
                open_route=True,
                tag="oip",
            )
        },
        "/v2/models/{name}": {
            "get": _op(
                "OIP: model metadata", ok(oip.ModelMetadata), _errors(K, (404, 503), auth), params=[seq], tag="oip"
            )
        },
        "/v2/models/{name}/versions/{version}": {
            "get": _op(
                "OIP: model metadata (one version)",
                ok(oip.ModelMetadata),
                _errors(K, (404, 503), auth),
                params=[seq, ver],
                tag="oip",
            )
        },
        "/v2/models/{name}/ready": {
            "get": _op("OIP: model readiness", ok(A.ModelReady), _errors(K, (404, 503), auth), params=[seq], tag="oip")
        },
        "/v2/models/{name}/versions/{version}/ready": {
            "get": _op(
                "OIP: model readiness (one version)",
                ok(A.ModelReady),
                _errors(K, (404, 503), auth),
                params=[seq, ver],
                tag="oip",
            )
        },
        "/v2/models/{name}/infer": {
            "post": _op(
                "OIP: inference (JSON or binary tensors; sequences)",
                infer_ok,
                _errors(K, std, auth),
                oip.InferRequest,
                [seq],
                tag="oip",
                body_types=infer_body,
            )
        },
        "/v2/models/{name}/versions/{version}/infer": {
            "post": _op(
                "OIP: inference (one version)",
                infer_ok,
                _errors(K, std, auth),
                oip.InferRequest,
                [seq, ver],
                tag="oip",
                body_types=infer_body,
            )
        },
        "/docs.json": {
            "get": _op(
                "This document",
                {"200": {"description": "OpenAPI 3.1", "content": _json({"type": "object"})}},
                {},
                open_route=True,
                tag="meta",
            )
        },
        "/docs": {
            "get": _op(
                "Swagger UI",
                {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
                {},
                open_route=True,
                tag="meta",
            )
        },
        "/livez": {"get": _op("Liveness (BentoML)", {"200": {"description": "live"}}, {}, open_route=True, tag="meta")},
        "/readyz": {
            "get": _op(
                "Readiness (BentoML): every configured model loaded once",
                {"200": {"description": "ready"}, "503": {"description": "not ready"}},
                {},
                open_route=True,
                tag="meta",
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics (BentoML's and ours)",
                {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                _errors(E, (), auth and serving.config.metrics_auth),
                open_route=not serving.config.metrics_auth,
                tag="meta",
            )
        },
    }
    paths.update(playground.openapi_paths(serving, _op, _errors, _path_param, E, auth))
    doc: Json = {
        "openapi": "3.1.0",
        "info": {
            "title": "rnnops",
            "version": __version__,
            "description": "Char models and forecasters on onnxruntime: native endpoints, OpenAI-compatible "
            "completions (/v1) and the Open Inference Protocol (/v2).",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
    if auth:
        doc["components"]["securitySchemes"] = {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "One of RNNOPS_API_KEYS."}
        }
        doc["security"] = [{"apiKey": []}]
    return doc


_cache: Json = {}  # the document, and the loaded versions it was made for ("key")


async def docs_json(serving: Serving, request: Request) -> Response:
    current = getattr(serving.models, "current", {})
    key = tuple((n, m.version) for n, m in current.items())
    if _cache.get("key") != key:
        _cache.update(key=key, doc=document(serving))
    return JSONResponse(_cache["doc"])


def assets_dir() -> Path | None:
    """BentoML's bundled Swagger UI (located, not imported: http/ never imports BentoML)."""
    spec = importlib.util.find_spec("bentoml")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "_internal" / "server" / "static_content"
    return d if (d / "swagger-ui-bundle.js").is_file() else None


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="UTF-8"><title>rnnops API</title>
<link rel="stylesheet" type="text/css" href="/static_content/swagger-ui.css" /></head>
<body><div id="swagger-ui"></div>
<script src="/static_content/swagger-ui-bundle.js" charset="UTF-8"></script>
<script src="/static_content/swagger-ui-standalone-preset.js" charset="UTF-8"></script>
<script>window.ui = SwaggerUIBundle({url: "/docs.json", dom_id: "#swagger-ui", deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "StandaloneLayout"});</script>
</body></html>
"""


async def docs_page(serving: Serving, request: Request) -> Response:
    return HTMLResponse(PAGE)


_ASSET = re.compile(r"^[A-Za-z0-9_.-]+\.(js|css|png)$")


async def asset(serving: Serving, request: Request) -> Response:
    name = request.path_params["file"]
    d = assets_dir()
    if d is None or not _ASSET.match(name) or not (d / name).is_file():
        return JSONResponse({"error": f"no asset {name!r}", "type": "not_found"}, status_code=404)
    return FileResponse(d / name)
