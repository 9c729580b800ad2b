"""The CPU one request's metrics cost, alone: BentoML's request-metrics middleware (off since its
labels were the raw path) against ours (the router's counted wrapper), each around the same
trivial answer, in prometheus_client's multiprocess mode as under ``bentoml serve``.

    python benchmarks/request_metrics_cost.py [--requests 20000] [--rounds 3]

Requests cycle over 64 session paths (compare_revisions.py's sessions load). Prints microseconds
per request for the bare route, with BentoML's middleware and with ours.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid

os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()  # before prometheus_client is imported

from starlette.responses import Response  # noqa: E402
from starlette.routing import Route, Router  # noqa: E402

ROUTE = "/sessions/{session_id}"


async def answer(request):
    return Response(b"{}", media_type="application/json")


def bare():
    return Router(routes=[Route(ROUTE, answer, methods=["POST"])])


def bentoml_middleware():
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    return RunnerTrafficMetricsMiddleware(bare(), namespace="bentoml_service", skip_paths=["/sessions"])


def ours():
    from rnnops.serving.http.app import RnnopsApp
    from rnnops.serving.metrics import get_metrics

    class Counted:  # the part of Serving the wrapper reads
        metrics = get_metrics()

    app = RnnopsApp()
    app.serving = Counted()  # type: ignore[assignment]
    return Router(routes=[Route(ROUTE, app._counted(ROUTE, answer), methods=["POST"])])


async def per_request_us(app, paths: list[str]) -> float:
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    def scope(path):
        return {
            "type": "http",
            "method": "POST",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [],
            "scheme": "http",
            "server": ("127.0.0.1", 1),
        }

    for p in paths[:200]:  # warm: label sets created
        await app(scope(p), receive, send)
    start = time.perf_counter()
    for p in paths:
        await app(scope(p), receive, send)
    return (time.perf_counter() - start) / len(paths) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sessions = [f"/sessions/{uuid.uuid4().hex}" for _ in range(64)]
    paths = [sessions[i % 64] for i in range(args.requests)]
    apps = {"bare route": bare(), "BentoML's middleware": bentoml_middleware(), "ours": ours()}
    times: dict[str, list[float]] = {name: [] for name in apps}
    for _ in range(args.rounds):  # alternating, so that a neighbour's load falls on all alike
        for name, app in apps.items():
            times[name].append(asyncio.run(per_request_us(app, paths)))
    base = statistics.median(times["bare route"])
    for name, ts in times.items():
        us = statistics.median(ts)
        print(f"{name:22s} {us:6.1f} us/request  (metrics: {us - base:5.1f} us)")


if __name__ == "__main__":
    main()
