"""Serving a panel model (issue 26, section 1): the runtime runs a graph whose inputs are the
contract's, and ``/forecast`` with ``series`` over a real ``bentoml serve``: per-series forecasts,
timestamps, quantiles and warnings, batched across clients, every bad entry a one-line 400.

The model is tests/panel_graph.py's hand-written graph (a formula recomputed here in numpy),
so a wrong input, order or shape anywhere between the request and the graph shows."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from panel_fixtures import tiny_panel  # noqa: E402
from panel_graph import H, expected, request_entry, tiny_contract, write_tiny_panel_model  # noqa: E402
from servers import serve_bentoml  # noqa: E402

from rnnops import panel_contract as pc  # noqa: E402
from rnnops import timeseries  # noqa: E402
from rnnops.errors import RnnopsError  # noqa: E402
from rnnops.panel_features import SeriesEntry, build_feeds  # noqa: E402
from rnnops.serving.runtime import ModelInfo, Runtime  # noqa: E402

ASSETS = Path(__file__).parent / "assets"


def series(sid: str, n: int, start: str = "2024-03-01", store: str = "north", size: float = 2.0, k: int = 0) -> dict:
    """A request entry of ``n`` daily steps (values depend on ``k``, so entries differ)."""
    days = timeseries.iso(timeseries.parse_iso([start])[0] + timeseries.DAY_NS * np.arange(n + H, dtype=np.int64))
    return {
        "id": sid,
        "timestamps": days[:n],
        "context": [float((i * 3 + k) % 7) for i in range(n)],
        "past_covariates": {"temp": [10.0 + (i + k) % 5 for i in range(n)]},
        "future_covariates": {"promo": [float((i + k) % 3 == 0) for i in range(n + H)]},
        "static": {"store": store, "size": size},
    }


def entry(d: dict) -> SeriesEntry:
    return SeriesEntry(
        d["id"], d["timestamps"], d["context"], d["past_covariates"], d["future_covariates"], d["static"]
    )


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return write_tiny_panel_model(tmp_path_factory.mktemp("panel") / "retail.onnx")


# ------------------------------------------------------------------------------ the runtime


def test_runtime_runs_the_contracts_inputs(model_file):
    rt = Runtime(model_file)
    assert rt.kind == "panel" and rt.info.graph_inputs == tuple(tiny_contract().inputs)
    assert rt.describe()["panel"]["target"] == "sales" and rt.describe()["quantiles"] == [0.1, 0.5, 0.9]
    feeds = build_feeds([entry(series(f"s{k}", 3 + 2 * k, k=k)) for k in range(5)], tiny_contract()).feeds
    r = rt.run(feeds)
    f, q = expected(feeds)
    assert r.output.shape == (5, H, 1) and r.quantiles is not None and r.quantiles.shape == (5, H, 1, 3)
    np.testing.assert_allclose(r.output[:, :, 0], f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r.quantiles[:, :, 0, :], q, rtol=1e-5, atol=1e-5)
    # batch invariance: a row alone (run as a pair) and in chunks is bitwise the row in the batch
    alone = rt.run({k: v[2:3] for k, v in feeds.items()})
    np.testing.assert_array_equal(alone.output[0], r.output[2])
    np.testing.assert_array_equal(rt.run(feeds, max_batch=2).output, r.output)
    assert rt.run({k: v[:0] for k, v in feeds.items()}).output.shape == (0, H, 1)
    with pytest.raises(ValueError, match="a panel model takes the feeds"):
        rt.run({pc.PAST_TARGET: feeds[pc.PAST_TARGET]})
    with pytest.raises(ValueError, match=r"known_future must be \[B, 3, 2\], got \[5, 2, 2\]"):
        rt.run({**feeds, pc.KNOWN_FUTURE: feeds[pc.KNOWN_FUTURE][:, :2]})


def test_panel_metadata_is_checked():
    with pytest.raises(RnnopsError, match="lacks rnnops.panel"):
        ModelInfo.from_metadata({"kind": "panel"}, "m.onnx")
    bad = tiny_contract().to_json() | {"lookback": 0}
    with pytest.raises(RnnopsError, match=r"m.onnx: rnnops.panel.lookback must be an integer"):
        ModelInfo.from_metadata({"kind": "panel", "panel": bad}, "m.onnx")


# ------------------------------------------------------------------------------ over HTTP


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The exporter's tiny panel model (export/panel_export.py; tests/panel_fixtures.py)."""
    from panel_fixtures import export_tiny_panel

    return export_tiny_panel(tmp_path_factory.mktemp("panel-export") / "tiny.onnx")


@pytest.fixture(scope="module")
def served(model_file, exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("panel-serve")
    env = {"RNNOPS_MODELS": f"retail={model_file},fc={ASSETS / 'forecaster-fixed.onnx'},tiny={exported}"}
    with serve_bentoml(root, env, "panel") as (_, url, _):
        yield url


def test_an_exported_model_serves_what_it_computes_in_torch(served):
    """The exporter's model, trained-network and all: /forecast by series, built from the panel's
    own rows, equals the eager PyTorch graph on training's windows at the same cutoffs (the
    test split's origin of each series, and a short history of one)."""
    import httpx
    import torch
    from panel_fixtures import LOOKBACK, tiny_panel_model

    from rnnops.export.panel_export import PanelGraph, eager
    from rnnops.training.panel_train import PanelWindows

    model, _ = tiny_panel_model()
    panel = tiny_panel()
    info = httpx.get(f"{served}/models", timeout=10).json()["models"]
    contract = pc.PanelContract.from_json(next(m for m in info if m["name"] == "tiny")["panel"])
    series_ix = np.arange(panel.n_series)
    cutoffs = panel.lengths - panel.spec.horizon
    cutoffs[1] = 5  # a history shorter than the lookback: padded as training pads it
    body = {"model": "tiny", "series": [request_entry(panel, int(i), int(c)) for i, c in zip(series_ix, cutoffs)]}
    r = httpx.post(f"{served}/forecast", json=body, timeout=60)
    assert r.status_code == 200, r.text
    batch = PanelWindows(panel, LOOKBACK).batch(series_ix, cutoffs)
    feeds = {name: getattr(batch, name).numpy() for name in contract.inputs}
    with torch.no_grad():
        want_f, want_q = eager(PanelGraph(model, contract), feeds)
    got = r.json()["series"]
    for k, s in enumerate(got):
        assert s["id"] == panel.ids[k]
        np.testing.assert_allclose(s["forecast"]["sales"], want_f[k], rtol=1e-4, atol=1e-3)
        for j, level in enumerate(contract.quantiles):
            np.testing.assert_allclose(s["quantiles"][f"{level:g}"]["sales"], want_q[k, :, j], rtol=1e-4, atol=1e-3)
        want_t = panel.timestamps[panel.rows(k)][cutoffs[k] : cutoffs[k] + panel.spec.horizon]
        assert s["timestamps"] == timeseries.iso(want_t.view(np.int64))


def test_forecast_by_series(served):
    import httpx

    body = {
        "model": "retail",
        "series": [
            series("item042", 10, k=1),
            series("short", 2, start="2024-03-05", store="south", size=0.5, k=2),  # padded: 2 of 6 steps
            series("newshop", 7, store="east", k=3),  # a category the model never saw
        ],
    }
    r = httpx.post(f"{served}/forecast", json=body, timeout=30)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["model"] == "retail" and got["targets"] == ["sales"] and got["horizon"] == H
    assert [s["id"] for s in got["series"]] == ["item042", "short", "newshop"]
    feeds = build_feeds([entry(s) for s in body["series"]], tiny_contract())
    f, q = expected(feeds.feeds)
    for k, s in enumerate(got["series"]):
        np.testing.assert_allclose(s["forecast"]["sales"], f[k], rtol=1e-5, atol=1e-5)
        for j, level in enumerate(("0.1", "0.5", "0.9")):
            np.testing.assert_allclose(s["quantiles"][level]["sales"], q[k, :, j], rtol=1e-5, atol=1e-5)
        assert s["timestamps"] == timeseries.iso(feeds.future[k])
    assert got["series"][0]["timestamps"][0] == "2024-03-11T00:00:00"  # the day after the last of 10
    assert got["series"][0]["warnings"] == [] and got["series"][1]["warnings"] == []
    assert "'store' = 'east'" in got["series"][2]["warnings"][0]
    assert feeds.feeds[pc.STATIC_CAT][2, 0] == 0  # the unknown bucket


def test_series_are_batched_across_clients(served):
    import httpx

    def batching() -> dict:
        models = httpx.get(f"{served}/models", timeout=10).json()["models"]
        return next(m for m in models if m["name"] == "retail")["batching"]

    before = batching()
    bodies = [{"model": "retail", "series": [series(f"c{k}", 4 + k % 5, k=k)]} for k in range(48)]
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda b: client.post(f"{served}/forecast", json=b), bodies))
    assert all(a.status_code == 200 for a in answers), answers[0].text
    for b, a in zip(bodies, answers):  # each client got its own series' forecast
        f, _ = expected(build_feeds([entry(b["series"][0])], tiny_contract()).feeds)
        np.testing.assert_allclose(a.json()["series"][0]["forecast"]["sales"], f[0], rtol=1e-5, atol=1e-5)
    after = batching()
    assert after["windows"] - before["windows"] == 48
    assert after["calls"] - before["calls"] < 48  # some calls carried several clients' series


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda b: b["series"].append(dict(b["series"][0])),
            "series id 'a' is given twice (entries 0 and 1); give each series once",
        ),
        (
            lambda b: b["series"][0]["future_covariates"].update(promo=[0.0] * 5),
            "series 'a': future covariate 'promo' has 5 values; it needs 8 values: one per context step (5) "
            "and per forecast step (3)",
        ),
        (
            lambda b: b["series"][0]["future_covariates"].update(price=[1.0] * 8),
            "series 'a': future_covariates 'price' is not one the model knows (it takes promo)",
        ),
        (
            lambda b: b["series"][0].update(
                timestamps=[t[:10] + "T01:00:00" if i == 4 else t for i, t in enumerate(b["series"][0]["timestamps"])]
            ),
            "series 'a': timestamps are not D apart: 25h from 2024-03-04 00:00:00 to 2024-03-05 01:00:00, "
            "within the last 5 rows that the model reads",
        ),
        (
            lambda b: b["series"][0].update(context=[]),
            "series 'a': 5 timestamps for 0 context values",
        ),
        (
            lambda b: b["series"][0].update(
                context=[], timestamps=[], past_covariates={"temp": []}, future_covariates={"promo": [0.0] * 3}
            ),
            "series 'a' has 0 observed values in the last 6 steps; the model needs at least one observed value "
            "(it was not trained to forecast a series from its statics alone)",
        ),
        (
            lambda b: b.update(model="fc"),
            "model 'fc' is a forecaster model (a forecaster takes `context`), not a "
            "panel forecaster; this server serves retail (panel), fc (forecaster), tiny (panel)",
        ),
        (
            lambda b: b.update(context=[[1.0, 2.0, 3.0]]),
            "give either `series` (a panel model) or "
            "`context`/`contexts`, not both (this body also has `context`; a series' timestamps go inside its entry)",
        ),
    ],
)
def test_bad_series_are_one_line_400s(served, change, message):
    import httpx

    body = {"model": "retail", "series": [series("a", 5)]}
    change(body)
    r = httpx.post(f"{served}/forecast", json=body, timeout=30)
    assert r.status_code in (400, 404), r.text
    assert r.json()["error"] == message


def test_context_form_to_a_panel_model_and_openapi(served):
    import httpx

    r = httpx.post(f"{served}/forecast", json={"model": "retail", "context": [[1.0, 2.0, 3.0]]}, timeout=30)
    assert (
        r.status_code == 404 and "model 'retail' is a panel model (a panel model takes `series`)" in r.json()["error"]
    )
    r = httpx.post(f"{served}/forecast", json={"model": "retail", "series": [{"id": "a", "context": [1, None]}]})
    assert r.status_code == 400  # null is no number (pydantic, before the model sees it)
    doc = httpx.get(f"{served}/docs.json", timeout=30).json()
    schemas = doc["components"]["schemas"]
    assert (
        "series" in schemas["ForecastBody"]["properties"] and "future_covariates" in schemas["SeriesItem"]["properties"]
    )
    assert "retail" in schemas["ForecastBody"]["properties"]["model"]["anyOf"][0]["enum"]
    assert "SeriesForecast" in schemas


# ------------------------------------------------------------------------------ Open Inference Protocol


def test_oip_metadata_and_infer(served):
    """/v2/models/{name}: the contract's inputs with their datatypes and shapes; infer takes them
    (binary tensors through tritonclient, and JSON) and answers the graph's outputs, the same
    numbers as /forecast's series form for the same series."""
    import httpx

    httpclient = pytest.importorskip("tritonclient.http")
    meta = httpx.get(f"{served}/v2/models/retail", timeout=10).json()
    c = tiny_contract()
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        (name, {"float32": "FP32", "int64": "INT64"}[dtype], [-1, *shape[1:]])
        for name, (shape, dtype) in c.inputs.items()
    ]
    assert [t["name"] for t in meta["outputs"]] == ["forecast", "quantiles"]
    assert meta["parameters"]["panel"]["static_categorical"][0]["vocabulary"] == ["north", "south"]

    body = {"model": "retail", "series": [series("a", 9, k=1), series("b", 3, store="south", k=4)]}
    over_http = httpx.post(f"{served}/forecast", json=body, timeout=30).json()["series"]
    feeds = build_feeds([entry(s) for s in body["series"]], c).feeds
    client = httpclient.InferenceServerClient(served.removeprefix("http://"))
    inputs = []
    for name, a in feeds.items():
        t = httpclient.InferInput(name, list(a.shape), "FP32" if a.dtype == np.float32 else "INT64")
        t.set_data_from_numpy(a, binary_data=True)
        inputs.append(t)
    result = client.infer("retail", inputs)
    np.testing.assert_array_equal(result.as_numpy("forecast")[0], np.float32(over_http[0]["forecast"]["sales"]))
    np.testing.assert_array_equal(
        result.as_numpy("quantiles")[1, :, 2], np.float32(over_http[1]["quantiles"]["0.9"]["sales"])
    )

    def infer_json(tensors: dict, parameters: dict | None = None) -> httpx.Response:
        inputs = [
            {"name": n, "datatype": "FP32" if a.dtype == np.float32 else "INT64", "shape": list(a.shape),
             "data": np.where(np.isnan(a), 0, a).ravel().tolist()}
            for n, a in tensors.items()
        ]  # fmt: skip
        body = {"inputs": inputs, **({"parameters": parameters} if parameters else {})}
        return httpx.post(f"{served}/v2/models/retail/infer", json=body, timeout=30)

    r = infer_json(feeds)
    assert r.status_code == 200, r.text
    assert [o["shape"] for o in r.json()["outputs"]] == [[2, H], [2, H, 3]]
    # bad tensors: a missing input, an unknown category code, a NaN where none may be
    r = infer_json({k: v for k, v in feeds.items() if k != pc.STATIC_REAL})
    assert r.status_code == 400 and "input 'static_real' is missing" in r.json()["error"]
    r = infer_json({**feeds, pc.STATIC_CAT: np.array([[3], [1]], np.int64)})
    assert r.status_code == 400 and "codes outside 0..2" in r.json()["error"]
    r = infer_json(feeds, {"sequence_id": 7})
    assert r.status_code == 400 and "sequences of panel models are not served yet" in r.json()["error"]


# ------------------------------------------------------------------------------ sessions by series id


@pytest.fixture(scope="module")
def served_redis(model_file, tmp_path_factory):
    """The panel model served with its sessions in a real Redis."""
    from servers import start_redis

    root = tmp_path_factory.mktemp("panel-redis")
    with start_redis(root / "redis") as r:
        env = {"RNNOPS_MODELS": f"retail={model_file}", "RNNOPS_SESSION_STORE": r.url}
        with serve_bentoml(root, env, "panel-redis") as (_, url, _):
            yield url


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_sessions_by_series_id(request, store):
    """Open by the series' id, update with observations and the next horizon's covariates: each
    answer equals /forecast over the same history and covariates; a bad update changes nothing."""
    import httpx

    url = request.getfixturevalue("served" if store == "memory" else "served_redis")
    whole = series(f"sess-{store}", 10, k=5)  # the series' first 6 steps open it, 2 + 2 arrive later
    n0 = 6

    def upto(n: int) -> dict:
        """/forecast's entry for the first n steps (future covariates: n + H)."""
        return {
            **whole,
            "timestamps": whole["timestamps"][:n],
            "context": whole["context"][:n],
            "past_covariates": {"temp": whole["past_covariates"]["temp"][:n]},
            "future_covariates": {"promo": whole["future_covariates"]["promo"][: n + H]},
        }

    def forecast(n: int) -> dict:
        r = httpx.post(f"{url}/forecast", json={"model": "retail", "series": [upto(n)]}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["series"][0]

    with httpx.Client(base_url=url, timeout=30) as client:
        opened = client.post("/sessions", json={"model": "retail", **upto(n0)})
        assert opened.status_code == 201, opened.text
        sid = opened.json()["session_id"]
        assert sid == whole["id"] and opened.json()["observations"] == n0
        want = forecast(n0)
        assert opened.json()["forecast"] == want["forecast"] and opened.json()["timestamps"] == want["timestamps"]
        assert opened.json()["quantiles"] == want["quantiles"]

        for n in (n0 + 2, n0 + 4):

            def update(n: int = n, **change) -> httpx.Response:
                new = slice(n - 2, n)
                body = {
                    "observations": whole["context"][new],
                    "timestamps": whole["timestamps"][new],
                    "past_covariates": {"temp": whole["past_covariates"]["temp"][new]},
                    "future_covariates": {"promo": whole["future_covariates"]["promo"][n : n + H]},
                    **change,
                }
                return client.post(f"/sessions/{sid}", json=body)

            before = client.get(f"/sessions/{sid}").json()
            bad = update(future_covariates={"promo": [1.0]})
            assert bad.status_code == 400
            assert bad.json()["error"] == (
                f"series '{sid}': future covariate 'promo' has 1 values; it needs {H}, one per step after the last "
                "observation"
            )
            late = update(timestamps=whole["timestamps"][n - 3 : n - 1])  # a step the session has
            assert late.status_code == 400 and "the observations must continue the series" in late.json()["error"]
            assert client.get(f"/sessions/{sid}").json() == before  # nothing half-applied
            r = update()
            assert r.status_code == 200, r.text
            want = forecast(n)
            got = r.json()
            assert got["observations"] == n and got["forecast"] == want["forecast"]
            assert got["timestamps"] == want["timestamps"] and got["quantiles"] == want["quantiles"]
        assert client.get(f"/sessions/{sid}").json()["forecast"] == want["forecast"]
        assert client.delete(f"/sessions/{sid}").status_code == 200


def test_same_numbers_over_http_in_a_session_and_in_a_batch_job(served, exported, tmp_path):
    """Issue 26's "done": the exported model forecasts a series alike by /forecast, by a session
    opened and fed step by step, and by a batch job over the panel's files. The session's
    forecast is /forecast's bit for bit (one series per call both ways); the batch job's calls
    hold other series, and the panel graph is not batch-invariant on ORT CPU (docs/serving.md),
    so it agrees to float32 rounding."""
    import httpx
    import pandas as pd
    from panel_graph import write_panel_files

    from rnnops.serving import batch as B

    panel = tiny_panel()
    H_ = panel.spec.horizon
    i = 4
    end = int(panel.lengths[i]) - H_
    whole = request_entry(panel, i, end)
    future = whole["future_covariates"]
    r = httpx.post(f"{served}/forecast", json={"model": "tiny", "series": [whole]}, timeout=30)
    assert r.status_code == 200, r.text
    over_http = r.json()["series"][0]

    start = end - 3  # open the session 3 steps earlier, then feed them one by one
    first = request_entry(panel, i, start)
    opened = httpx.post(f"{served}/sessions", json={"model": "tiny", **first}, timeout=30)
    assert opened.status_code == 201, opened.text
    sid = opened.json()["session_id"]
    for t in range(start, end):
        body = {
            "observations": whole["context"][t : t + 1],
            "timestamps": whole["timestamps"][t : t + 1],
            "past_covariates": {k: v[t : t + 1] for k, v in whole["past_covariates"].items()},
            "future_covariates": {k: v[t + 1 : t + 1 + H_] for k, v in future.items()},
        }
        step = httpx.post(f"{served}/sessions/{sid}", json=body, timeout=30)
        assert step.status_code == 200, step.text
    in_session = step.json()
    assert in_session["forecast"] == over_http["forecast"] and in_session["quantiles"] == over_http["quantiles"]
    assert in_session["timestamps"] == over_http["timestamps"]

    write_panel_files(panel, tmp_path)
    B.run(
        B.ForecastJob(
            model=str(exported),
            input=tmp_path / "panel.csv",
            output=tmp_path / "out.csv",
            id_column="item_id",
            date_column="date",
            future=tmp_path / "future.parquet",
            progress=False,
        )
    )
    out = pd.read_csv(tmp_path / "out.csv")
    rows = out[out["item_id"] == panel.ids[i]].sort_values("step")
    np.testing.assert_allclose(rows["forecast"], over_http["forecast"]["sales"], rtol=1e-5)
    np.testing.assert_allclose(rows["forecast_p90"], over_http["quantiles"]["0.9"]["sales"], rtol=1e-5)
    assert list(pd.to_datetime(rows["date"])) == list(pd.to_datetime(over_http["timestamps"]))
