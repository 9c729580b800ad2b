"""The browser playground: a page served by the service itself (``GET /playground``; ``/``
redirects to it), with its static files and two small read-only answers it needs.

- ``GET /playground`` the page; ``GET /playground/static/{file}`` its ES modules, CSS and the
  vendored plotting library (uPlot, pinned, with its license: ``static/playground/vendor/``;
  ``scripts/fetch_playground_assets.sh`` fetches it again from npm). Nothing is loaded from a
  CDN: the page works offline. The files are package data, read once and kept in memory.
- ``GET /playground/config.json`` what the page cannot know: the MLflow UI to link runs to
  (``RNNOPS_MLFLOW_UI``, else ``MLFLOW_TRACKING_URI`` when it is an http(s) server).
- ``GET /models/{name}/vocab`` a char model's vocabulary (id = position): the page encodes text
  for the Open Inference Protocol (``/v2/models/{name}/infer``) to trace the state per character.
- ``GET /models/{name}/sample`` a forecaster's window of validation data, embedded in its ONNX
  file by ``rnnops export`` (metadata key ``contract.META_SAMPLE``): ``lookback`` rows of context
  and the ``horizon`` rows that followed, raw units; for a panel model (``"kind": "panel"``) a few
  series, each with its id, statics, timestamps, history, covariates and the actual values that
  followed (``export/sample.py``). A 404 saying so when the file has none. The page checks the
  sample's shape before it uses it (``static/playground/panel.js``): it is the file's metadata.

Everything the page shows comes from the public API (``/models``, ``/generate``,
``/v1/completions``, ``/v2/.../infer``, ``/forecast``, ``/sessions``, ``/metrics``): it adds
nothing to the hot paths.
"""

from __future__ import annotations

import json
import mimetypes
import os
from collections.abc import Callable
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from rnnops import __version__, contract
from rnnops.serving.errors import UnknownModel
from rnnops.serving.http.errors import ApiError, JSONResponse

if TYPE_CHECKING:
    from rnnops.serving.http.app import Serving
    from rnnops.serving.models import LoadedModel

PACKAGE = "rnnops.serving.http"
STATIC = ("static", "playground")
TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
}


@cache
def _files() -> dict[str, bytes]:
    """Every static file of the page by its path under ``static/playground/`` (read once)."""
    out: dict[str, bytes] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, name + "/")
            elif not child.name.startswith("."):
                out[name] = child.read_bytes()

    root = resources.files(PACKAGE).joinpath(*STATIC)
    if root.is_dir():
        walk(root, "")
    return out


def _file(name: str, cache: str) -> Response:
    data = _files().get(name)
    if data is None:
        raise ApiError(404, "not_found", f"no playground file {name!r}")
    ext = os.path.splitext(name)[1]
    media = TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Response(data, media_type=media, headers={"Cache-Control": cache})  # nosniff + CSP: http/headers.py


async def root(serving: Serving, request: Request) -> Response:
    return RedirectResponse("/playground", status_code=307)


async def page(serving: Serving, request: Request) -> Response:
    return _file("index.html", "no-cache")


async def asset(serving: Serving, request: Request) -> Response:
    # no-cache: the browser revalidates, so a new release's files are picked up at once
    return _file(request.path_params["file"], "no-cache")


def mlflow_ui() -> str | None:
    url = os.environ.get("RNNOPS_MLFLOW_UI") or os.environ.get("MLFLOW_TRACKING_URI") or ""
    return url.rstrip("/") if url.startswith(("http://", "https://")) else None


async def config(serving: Serving, request: Request) -> Response:
    return JSONResponse({"mlflow_ui": mlflow_ui(), "rnnops_version": __version__})


def _model(serving: Serving, request: Request, *kinds: str) -> LoadedModel:
    name = request.path_params["name"]
    m = serving.models.current.get(name)
    if m is None:
        m = serving.models.get(name, kinds[0])  # 503 while it loads, 404 when it is not configured
    if m.kind not in kinds:
        raise UnknownModel(f"model {name!r} is a {m.kind} model; this answer is for {' and '.join(kinds)} models")
    return m


async def vocab(serving: Serving, request: Request) -> Response:
    m = _model(serving, request, "char")
    return JSONResponse({"model": m.name, "version": m.version, "vocab": list(m.runtime.vocab)})


def model_sample(m: LoadedModel) -> dict[str, Any] | None:
    """The validation window embedded in the model's ONNX file (decoded once per version)."""
    cached = m.playground_sample
    if not isinstance(cached, str):  # "unread" is the one string it holds
        return cached
    raw = None
    try:
        raw = dict(m.runtime.session.get_modelmeta().custom_metadata_map).get(contract.META_SAMPLE)
    except AttributeError:  # a runtime without an onnxruntime session (tests' fakes)
        pass
    try:
        sample = json.loads(raw) if raw else None
    except ValueError:  # a model file is untrusted input: a malformed sample is no sample (404), not a 500
        sample = None
    if not isinstance(sample, dict):
        sample = None
    m.playground_sample = sample
    return sample


async def sample(serving: Serving, request: Request) -> Response:
    m = _model(serving, request, "forecaster", "panel")
    s = model_sample(m)
    if s is None:
        raise ApiError(
            404,
            "no_sample",
            f"model {m.name!r} (version {m.version}) carries no validation sample: "
            "it was exported before `rnnops export` embedded one, or its data could not be read "
            "at export; "
            + (
                "export it again to embed one, or ask /forecast with your own series"
                if m.kind == "panel"
                else "paste or upload a CSV instead"
            ),
        )
    return JSONResponse({"model": m.name, "version": m.version, **s})


async def vendor_asset(serving: Serving, request: Request) -> Response:
    return _file(f"vendor/uplot/{request.path_params['file']}", "no-cache")


ROUTES = [
    ("GET", "/", root),
    ("GET", "/playground", page),
    ("GET", "/playground/", page),
    ("GET", "/playground/config.json", config),
    ("GET", "/playground/static/{file}", asset),
    ("GET", "/playground/static/vendor/uplot/{file}", vendor_asset),
    ("GET", "/models/{name}/vocab", vocab),
    ("GET", "/models/{name}/sample", sample),
]


# op, errors and path_param: openapi.py's builders of an operation, its error answers and a path parameter
def openapi_paths(
    serving: Serving,
    op: Callable[..., dict[str, Any]],
    errors: Callable[..., dict[str, Any]],
    path_param: Callable[..., dict[str, Any]],
    error_model: type[BaseModel],
    auth: bool,
) -> dict[str, Any]:
    """The playground's routes in ``/docs.json`` (built by :mod:`.openapi` with its helpers)."""
    current = getattr(serving.models, "current", {})
    chars = sorted(n for n, m in current.items() if m.kind == "char")
    fcs = sorted(n for n, m in current.items() if m.kind in ("forecaster", "panel"))
    html = {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}
    static = {
        "200": {
            "description": "A file of the page (JavaScript, CSS, license)",
            "content": {"*/*": {"schema": {"type": "string"}}},
        }
    }
    names = sorted(_files())
    top = path_param("file", [n for n in names if "/" not in n])
    vendor = path_param("file", [n.rsplit("/", 1)[1] for n in names if n.startswith("vendor/uplot/")])

    def obj(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
        return {"type": "object", "required": required, "properties": props}

    strings = {"type": "array", "items": {"type": "string"}}
    vocab_answer = obj(
        {
            "model": {"type": "string"},
            "version": {"type": "string"},
            "vocab": {**strings, "description": "id = position"},
        },
        ["model", "version", "vocab"],
    )
    rows = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
    sample_answer = obj(
        {
            "model": {"type": "string"},
            "version": {"type": "string"},
            "features": strings,
            "targets": strings,
            "lookback": {"type": "integer"},
            "horizon": {"type": "integer"},
            "context_rows": {"type": "integer"},
            "rows": rows,
            "timestamps": {"anyOf": [strings, {"type": "null"}]},
        },
        ["model", "version", "features", "targets", "context_rows", "rows"],
    )
    values = {"type": "array", "items": {"type": ["number", "null"]}}
    columns = {"type": "object", "additionalProperties": values}
    panel_series = obj(
        {
            "id": {"type": "string"},
            "static": {"type": "object", "additionalProperties": {"type": ["string", "number", "null"]}},
            "timestamps": {**strings, "description": "the history's, then the horizon's"},
            "context": {"type": "integer", "description": "how many of the timestamps are history"},
            "target": values,
            "actual": {**values, "description": "what followed the history"},
            "past_covariates": columns,
            "future_covariates": {**columns, "description": "over the history and the horizon"},
        },
        ["id", "timestamps", "context", "target", "actual"],
    )
    panel_answer = obj(
        {
            "model": {"type": "string"},
            "version": {"type": "string"},
            "kind": {"const": "panel"},
            "target": {"type": "string"},
            "freq": {"type": "string"},
            "lookback": {"type": "integer"},
            "horizon": {"type": "integer"},
            "series": {"type": "array", "items": panel_series},
        },
        ["model", "version", "kind", "series"],
    )

    def ok(schema: dict[str, Any]) -> dict[str, Any]:
        return {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}}

    t = "playground"
    return {
        "/": {
            "get": op(
                "Redirects to the playground", {"307": {"description": "to /playground"}}, {}, open_route=True, tag=t
            )
        },
        "/playground": {"get": op("The browser playground", html, {}, open_route=True, tag=t)},
        "/playground/": {"get": op("The browser playground", html, {}, open_route=True, tag=t)},
        "/playground/config.json": {
            "get": op(
                "What the page links to (the MLflow UI)",
                ok(
                    obj(
                        {"mlflow_ui": {"type": ["string", "null"]}, "rnnops_version": {"type": "string"}}, ["mlflow_ui"]
                    )
                ),
                errors(error_model, (503,), auth),
                tag=t,
            )
        },
        "/playground/static/{file}": {
            "get": op(
                "The page's files", static, errors(error_model, (404,), False), params=[top], open_route=True, tag=t
            )
        },
        "/playground/static/vendor/uplot/{file}": {
            "get": op(
                "uPlot (vendored, pinned, MIT)",
                static,
                errors(error_model, (404,), False),
                params=[vendor],
                open_route=True,
                tag=t,
            )
        },
        "/models/{name}/vocab": {
            "get": op(
                "A char model's vocabulary (to encode text for /v2 infer)",
                ok(vocab_answer),
                errors(error_model, (404, 503), auth),
                params=[path_param("name", chars)],
                tag=t,
            )
        },
        "/models/{name}/sample": {
            "get": op(
                "A forecaster's window of validation data, or a panel model's few series (embedded at export)",
                ok({"anyOf": [sample_answer, panel_answer]}),
                errors(error_model, (404, 503), auth),
                params=[path_param("name", fcs)],
                tag=t,
            )
        },
    }
