"""Auth coverage generated from the service's own route table, and the security headers on
every answer, against one real ``bentoml serve`` with API keys on (docs/security.md).

The routes are not listed here: a subprocess builds BentoML's outer ASGI app exactly as
``bentoml serve`` does and lists every route (BentoML's own ``/livez``, ``/metrics``,
``/schema.json``... and ours mounted under it), every method, and every file of every static
mount and static route. Each is requested without a key and with a wrong one: anything not in
:data:`OPEN` must answer 401, so a route added later cannot ship open by accident (to open one,
add it here and to ``serving/http/auth.py`` on purpose)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")

from servers import serve_bentoml  # noqa: E402
from test_runtime import export_char, export_forecaster  # noqa: E402

KEY = "security-test-key"
CSP = "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
# What answers without a key, on purpose: health, the API contract and its Swagger UI, the
# playground's page and files (the page then asks for a key), and /metrics (RNNOPS_METRICS_AUTH=1
# closes it). Everything else needs one.
OPEN = {
    "/livez",
    "/healthz",
    "/readyz",
    "/v2/health/live",
    "/v2/health/ready",
    "/docs",
    "/docs.json",
    "/",
    "/playground",
    "/playground/",
    "/metrics",
}
OPEN_PREFIXES = ("/playground/static/", "/static_content/")

ROUTE_TABLE = r"""
import json, os, sys
from pathlib import Path
from rnnops.serving.service import RnnopsService
from rnnops.serving.http import playground
from rnnops.serving.http.openapi import assets_dir

app = RnnopsService.to_asgi()  # the outer app, middlewares and BentoML's routes included
out = []

def walk(routes, prefix=""):
    for r in routes:
        path = prefix + getattr(r, "path", "")
        if hasattr(r, "endpoint") and hasattr(r, "methods"):
            out.append({"path": path, "methods": sorted(set(r.methods or ()) - {"HEAD"})})
        elif getattr(r, "routes", None) is not None:  # a mount of routes (ours, under BentoML's app)
            walk(r.routes, path)
        else:  # a static mount: every file under it
            root = getattr(getattr(r, "app", None), "directory", None)
            files = [p for p in Path(root).rglob("*") if p.is_file()] if root else []
            out.append({"path": path, "static": [f"{path}/{p.relative_to(root).as_posix()}" for p in files]})

walk(app.routes)
files = {"/playground/static/{file}": [n for n in playground._files() if "/" not in n],
         "/playground/static/vendor/uplot/{file}": [n.rsplit("/", 1)[1] for n in playground._files()
                                                    if n.startswith("vendor/uplot/")],
         "/static_content/{file}": sorted(p.name for p in assets_dir().iterdir() if p.is_file())}
print(json.dumps({"routes": out, "files": files}))
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("security-auth")
    export_char(root / "char.onnx", "gru", hidden=16)
    export_forecaster(root / "fc.onnx", norm="fixed")
    env = {"RNNOPS_MODELS": f"char={root / 'char.onnx'},fc={root / 'fc.onnx'}", "RNNOPS_API_KEYS": KEY}
    table = subprocess.run(
        [sys.executable, "-c", ROUTE_TABLE],
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
    )
    assert table.returncode == 0, table.stderr[-2000:]
    with serve_bentoml(root, env, "security-auth") as (_, url, _):
        yield url, json.loads(table.stdout.strip().splitlines()[-1])


def requests_of(table: dict) -> list[tuple[str, str]]:
    """(method, concrete path) for every route and method, every static file."""
    params = {"{name}": "char", "{version}": "1", "{session_id}": "no-such-session"}
    out = []
    for r in table["routes"]:
        if "static" in r:
            out += [("GET", p) for p in r["static"]]
            continue
        path = r["path"]
        if path in table["files"]:
            out += [("GET", path.replace("{file}", f)) for f in table["files"][path]]
            continue
        for k, v in params.items():
            path = path.replace(k, v)
        assert "{" not in path, f"a route parameter this test does not know: {r['path']} (add it to params)"
        out += [(m, path) for m in r["methods"]]
    return sorted(set(out))


def is_open(path: str) -> bool:
    return path in OPEN or path.startswith(OPEN_PREFIXES)


def test_every_route_and_static_file_needs_a_key_unless_open_on_purpose(served):
    url, table = served
    todo = requests_of(table)
    paths = {p for _, p in todo}
    # the table is the real one: BentoML's routes, ours, every playground file and Swagger UI's
    assert {
        "/metrics",
        "/schema.json",
        "/readyz",
        "/models",
        "/v2/models/char/infer",
        "/v1/completions",
        "/playground/static/app.js",
        "/playground/static/dom.js",
    } <= paths, sorted(paths)
    assert sum(p.startswith("/static_content/") for p in paths) >= 3 and len(todo) > 50
    wrong = {"authorization": "Bearer not-the-key"}
    failures = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for method, path in todo:
            for headers in ({}, wrong):
                r = c.request(method, path, headers=headers)
                if is_open(path):
                    if r.status_code == 401:
                        failures.append(f"{method} {path}: 401 on an open route")
                elif r.status_code != 401 or r.headers.get("www-authenticate") != 'Bearer realm="rnnops"':
                    failures.append(f"{method} {path} {'(wrong key)' if headers else '(no key)'}: {r.status_code}")
        # and the key opens what it closes (a 401 for everything would pass the loop above)
        ok = c.get("/models", headers={"authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and {m["name"] for m in ok.json()["models"]} == {"char", "fc"}
    assert failures == []


def test_every_answer_carries_the_security_headers(served):
    url, table = served
    key = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=url, timeout=30) as c:
        answers = {
            "page": c.get("/playground"),
            "module": c.get("/playground/static/dom.js"),
            "401": c.get("/models"),
            "keyed": c.get("/models", headers=key),
            "404": c.get("/no/such/route", headers=key),
            "bentoml": c.get("/readyz"),
            "413": c.post("/forecast", content=b"x" * (9 << 20), headers=key),
            "oip-400": c.post("/v2/models/char/infer", content=b"{", headers=key),
        }
        for what, r in answers.items():
            assert r.headers.get("x-content-type-options") == "nosniff", what
            assert r.headers.get("referrer-policy") == "no-referrer", what
        assert answers["413"].status_code == 413 and answers["oip-400"].status_code == 400
        assert answers["page"].headers["content-security-policy"] == CSP
        assert answers["module"].headers["content-security-policy"] == CSP
        # what a key unlocks is stored by no cache; the open page is only revalidated
        for what in ("keyed", "404", "413", "oip-400"):
            assert answers[what].headers.get("cache-control") == "no-store", what
        assert answers["page"].headers.get("cache-control") == "no-cache"
        assert "content-security-policy" not in c.get("/docs").headers  # Swagger UI's inline bootstrap
