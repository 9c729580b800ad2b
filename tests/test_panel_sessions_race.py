"""Panel sessions by series id in Redis under concurrent updates (issue 26, §2): two ``bentoml
serve`` replicas on one real ``redis-server``, one series updated from both at once. Nothing is
lost or applied twice: of the same update delivered many times exactly one is applied, and
updates racing each other are applied once each, in the series' order, to the forecast a single
``/forecast`` over the whole history gives.

The model is tests/panel_graph.py's hand-written panel graph (no torch needed)."""

from __future__ import annotations

import asyncio

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("redis")

from panel_graph import H, write_tiny_panel_model  # noqa: E402
from servers import serve_bentoml, start_redis  # noqa: E402
from test_panel_serving import series  # noqa: E402


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    root = tmp_path_factory.mktemp("panel-race")
    model = write_tiny_panel_model(root / "retail.onnx")
    with start_redis(root / "redis") as r:
        env = {"RNNOPS_MODELS": f"retail={model}", "RNNOPS_SESSION_STORE": r.url}
        with serve_bentoml(root, env, "a") as (_, a, _), serve_bentoml(root, env, "b") as (_, b, _):
            yield a, b


def _upto(whole: dict, n: int) -> dict:
    return {
        **whole,
        "timestamps": whole["timestamps"][:n],
        "context": whole["context"][:n],
        "past_covariates": {k: v[:n] for k, v in whole["past_covariates"].items()},
        "future_covariates": {k: v[: n + H] for k, v in whole["future_covariates"].items()},
    }


def _update(whole: dict, t: int) -> dict:
    """The observation of step ``t`` and the future covariates of the H steps after it."""
    return {
        "observations": whole["context"][t : t + 1],
        "timestamps": whole["timestamps"][t : t + 1],
        "past_covariates": {k: v[t : t + 1] for k, v in whole["past_covariates"].items()},
        "future_covariates": {k: v[t + 1 : t + 1 + H] for k, v in whole["future_covariates"].items()},
    }


@pytest.mark.slow
def test_concurrent_updates_of_one_series_are_applied_exactly_once(replicas):
    a, b = replicas
    n0, k = 4, 8
    whole = series("race-1", n0 + k + 1, k=3)
    opened = httpx.post(f"{a}/sessions", json={"model": "retail", **_upto(whole, n0)}, timeout=30)
    assert opened.status_code == 201, opened.text
    sid = opened.json()["session_id"]

    async def duplicates() -> list[httpx.Response]:
        """The same update (step n0) delivered 12 times at once, to both replicas."""
        async with httpx.AsyncClient(timeout=60) as c:
            body = _update(whole, n0)
            return await asyncio.gather(*(c.post(f"{(a, b)[i % 2]}/sessions/{sid}", json=body) for i in range(12)))

    answers = asyncio.run(duplicates())
    ok = [x for x in answers if x.status_code == 200]
    assert len(ok) == 1 and ok[0].json()["observations"] == n0 + 1, [x.text for x in answers][:3]
    assert all(
        x.status_code == 400 and "the observations must continue the series" in x.json()["error"]
        for x in answers
        if x.status_code != 200
    )

    async def racing() -> list[dict]:
        """Steps n0+1 .. n0+k sent at once, each retried (as a client would on a 400 that says the
        series is not there yet) until applied; the answers the clients kept."""
        async with httpx.AsyncClient(timeout=60) as c:

            async def send(t: int) -> dict:
                for attempt in range(400):
                    r = await c.post(f"{(a, b)[t % 2]}/sessions/{sid}", json=_update(whole, t))
                    if r.status_code == 200:
                        return r.json()
                    assert r.status_code == 400 and "must continue the series" in r.json()["error"], r.text
                    await asyncio.sleep(0.01 * (attempt % 10))
                raise AssertionError(f"step {t} was never applied")

            return await asyncio.gather(*(send(t) for t in range(n0 + 1, n0 + 1 + k)))

    got = asyncio.run(racing())
    assert sorted(x["observations"] for x in got) == list(range(n0 + 2, n0 + 2 + k))  # once each, none lost
    last = max(got, key=lambda x: x["observations"])
    whole_forecast = httpx.post(
        f"{b}/forecast", json={"model": "retail", "series": [_upto(whole, n0 + 1 + k)]}, timeout=30
    ).json()["series"][0]
    assert last["forecast"] == whole_forecast["forecast"] and last["timestamps"] == whole_forecast["timestamps"]
    now = httpx.get(f"{a}/sessions/{sid}", timeout=30).json()
    assert now["observations"] == n0 + 1 + k and now["forecast"] == whole_forecast["forecast"]
