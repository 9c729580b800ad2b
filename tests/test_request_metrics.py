"""Request metrics against one real ``bentoml serve`` with two workers: labelled by route
template, never by the path a client sent (so session ids and random paths cannot grow the
server's memory or ``/metrics``), and added up across the workers."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import pytest

pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")

from servers import serve_bentoml  # noqa: E402
from test_runtime import export_forecaster  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("request-metrics")
    export_forecaster(root / "fc.onnx", norm="fixed")
    env = {"RNNOPS_MODELS": f"fc={root / 'fc.onnx'}", "RNNOPS_WORKERS": "2"}
    with serve_bentoml(root, env, "request-metrics") as (_, url, _):
        yield url, root / "bentoml" / "prometheus_multiproc_dir"


def series(text: str) -> set[str]:
    """Every sample's name and labels (one per line of the Prometheus text, comments aside)."""
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def value(text: str, name: str, **labels: str) -> float:
    """The sample of ``name`` with exactly these labels (in any order)."""
    want = sorted(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        sample, _, number = line.rpartition(" ")
        head, _, rest = sample.partition("{")
        if head == name and sorted(rest.rstrip("}").split(",")) == want:
            return float(number)
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_label_sets_do_not_grow_with_session_ids_or_unknown_paths(served):
    url, _ = served

    def probe(c: httpx.Client, n: int) -> None:
        for _ in range(n):
            sid = uuid.uuid4().hex
            assert c.get(f"/sessions/{sid}").status_code == 404
            assert c.delete(f"/sessions/{sid}").status_code == 404
            assert c.get(f"/no/such/{sid}").status_code == 404
            assert c.request("PROPFIND", f"/{sid}").status_code == 404  # a method we never route

    with httpx.Client(base_url=url, timeout=30) as c:
        probe(c, 3)  # every label set these requests make exists now (/metrics's own too)
        c.get("/metrics")
        before = c.get("/metrics").text
        probe(c, 150)
        after = c.get("/metrics").text
    assert series(after) == series(before)
    assert abs(len(after) - len(before)) < 200  # only digits changed
    sessions = {"route": "/sessions/{session_id}", "method": "GET", "status": "404"}
    total = "rnnops_http_requests_total"
    assert value(after, total, **sessions) == value(before, total, **sessions) + 150
    assert value(after, total, route="unmatched", method="GET", status="404") == 153
    assert value(after, total, route="unmatched", method="other", status="404") == 153
    assert not re.search(r"[0-9a-f]{32}", after)  # no session id or path a client sent


def _workers_that_counted(multiproc_dir: Path, route: str) -> int:
    """How many workers' counter files hold a request of ``route`` (prometheus_client's own reader)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    n = 0
    for f in multiproc_dir.glob("counter_*.db"):
        samples = [s for m in MultiProcessCollector.merge([str(f)]) for s in m.samples]
        n += any(s.name == "rnnops_http_requests_total" and s.labels["route"] == route and s.value for s in samples)
    return n


def test_request_counters_add_up_across_workers(served):
    url, multiproc_dir = served

    async def burst(n: int) -> None:
        # a connection per request, many at once: the workers share the listening socket
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            answers = await asyncio.gather(*(c.get("/models") for _ in range(n)))
        assert all(a.status_code == 200 for a in answers)

    sent = 0
    while _workers_that_counted(multiproc_dir, "/models") < 2 and sent < 640:
        asyncio.run(burst(32))
        sent += 32
    assert _workers_that_counted(multiproc_dir, "/models") == 2, "every request went to one worker"
    text = httpx.get(url + "/metrics", timeout=30).text
    assert value(text, "rnnops_http_requests_total", route="/models", method="GET", status="200") == sent
    assert value(text, "rnnops_http_request_duration_seconds_count", route="/models", method="GET") == sent
