"""POST /session-updates (issue 26, §2): several series' session updates in one request, each
applied as POST /sessions/{id} applies it. Over a real ``bentoml serve`` with the sessions in
memory and in a real ``redis-server``: a bulk update of a few series gives what the same updates
sent one by one give (observations, forecast timestamps, forecasts, quantiles), a bad or unknown
item is its own error entry while the others apply (its session unchanged), and an id repeated in
one request or too many items refuse the whole request.

The model is tests/panel_graph.py's hand-written panel graph (no torch needed)."""

from __future__ import annotations

import pytest

httpx = pytest.importorskip("httpx")

from panel_graph import H, write_tiny_panel_model  # noqa: E402
from servers import serve_bentoml, start_redis  # noqa: E402
from test_panel_serving import series  # noqa: E402
from test_panel_sessions_race import _update, _upto  # noqa: E402

MAX_ITEMS = 4  # RNNOPS_FORECAST_MAX_WINDOWS: the bound on a bulk request's items too


@pytest.fixture(scope="module", params=["memory", "redis"])
def served(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"bulk-{request.param}")
    model = write_tiny_panel_model(root / "retail.onnx")
    env = {"RNNOPS_MODELS": f"retail={model}", "RNNOPS_FORECAST_MAX_WINDOWS": str(MAX_ITEMS)}
    if request.param == "memory":
        with serve_bentoml(root, env, "bulk") as (_, url, _):
            yield url
        return
    with (
        start_redis(root / "redis") as r,
        serve_bentoml(root, {**env, "RNNOPS_SESSION_STORE": r.url}, "bulk") as (
            _,
            url,
            _,
        ),
    ):
        yield url


def test_a_bulk_update_equals_the_same_updates_one_by_one(served):
    n0, steps = 5, 2
    wholes = [series(f"s{k}", n0 + steps + 1, k=k, store=("north", "south")[k % 2]) for k in range(3)]
    with httpx.Client(base_url=served, timeout=30) as c:
        for w in wholes:  # each series twice: "bulk-" updated in bulk, "one-" one request per update
            for prefix in ("bulk-", "one-"):
                r = c.post("/sessions", json={"model": "retail", **_upto(w, n0), "id": prefix + w["id"]})
                assert r.status_code == 201, r.text
        for t in range(n0, n0 + steps):
            updates = [{"id": "bulk-" + w["id"], **_update(w, t)} for w in wholes]
            bad = {**updates[1], "future_covariates": {"promo": [1.0]}}  # one value short of H
            before_bad = c.get("/sessions/bulk-" + wholes[1]["id"]).json()
            # a bad item and an unknown id: their own errors, the others applied
            r = c.post("/session-updates", json={"model": "retail", "updates": [bad, {**updates[0], "id": "nope"}]})
            assert r.status_code == 200, r.text
            bad_answer, unknown = r.json()["results"]
            assert bad_answer["id"] == updates[1]["id"] and bad_answer["error"]["status"] == 400
            assert bad_answer["error"]["code"] == "invalid_input"
            assert f"future covariate 'promo' has 1 values; it needs {H}" in bad_answer["error"]["message"]
            assert unknown["id"] == "nope" and unknown["error"]["status"] == 404
            assert unknown["error"]["code"] == "unknown_session"
            assert c.get("/sessions/bulk-" + wholes[1]["id"]).json() == before_bad  # nothing half-applied

            r = c.post("/session-updates", json={"model": "retail", "updates": updates})
            assert r.status_code == 200, r.text
            bulk = r.json()["results"]
            one = []
            for w in wholes:
                a = c.post("/sessions/one-" + w["id"], json=_update(w, t))
                assert a.status_code == 200, a.text
                one.append(a.json())
            assert [b["id"] for b in bulk] == [u["id"] for u in updates]  # in the request's order
            for b, o in zip(bulk, one):
                assert b["observations"] == o["observations"] == t + 1
                for key in ("timestamps", "forecast", "quantiles", "warnings"):
                    assert b[key] == o[key], key
                assert c.get(f"/sessions/{b['id']}").json()["forecast"] == b["forecast"]


def test_a_repeated_id_or_too_many_updates_refuse_the_whole_request(served):
    w = series("rep", 6, k=1)
    with httpx.Client(base_url=served, timeout=30) as c:
        assert c.post("/sessions", json={"model": "retail", **_upto(w, 4)}).status_code == 201
        before = c.get("/sessions/rep").json()
        u = {"id": "rep", **_update(w, 4)}
        r = c.post("/session-updates", json={"updates": [u, {**u, "id": "other"}, u]})
        assert r.status_code == 400
        assert r.json()["error"] == (
            "series id 'rep' is given twice (entries 0 and 2); give each series once: join its observations "
            "in one update"
        )
        r = c.post("/session-updates", json={"updates": [{**u, "id": f"x{k}"} for k in range(MAX_ITEMS + 1)]})
        assert r.status_code == 400
        assert r.json()["error"] == (
            f"{MAX_ITEMS + 1} updates; the limit per request is {MAX_ITEMS} (RNNOPS_FORECAST_MAX_WINDOWS)"
        )
        r = c.post("/session-updates", json={"model": "other", "updates": [u]})  # another model's session
        assert r.status_code == 200 and r.json()["results"][0]["error"]["status"] == 400
        assert c.get("/sessions/rep").json() == before  # none of it applied
        r = c.post("/session-updates", json={"updates": [u]})
        assert r.status_code == 200 and r.json()["results"][0]["observations"] == 5
