"""The ecosystem's protocols against a real ``bentoml serve``, with the official clients: the
OpenAPI contract (schemathesis), OpenAI completions (the ``openai`` SDK), the Open Inference
Protocol with sequences (``tritonclient[http]``), API keys, per-key stream bounds and CORS.

Server C serves three local ONNX files from the tiny registry (a char LSTM ``char``, the stateful
forecaster ``fc`` and the windowed one ``fw``) behind two API keys, with ``/metrics`` behind the
keys too, 4 streams per key and one allowed browser origin.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

httpx = pytest.importorskip("httpx")
pytest.importorskip("bentoml")
pytest.importorskip("torch")
openai = pytest.importorskip("openai")
httpclient = pytest.importorskip("tritonclient.http")
schemathesis = pytest.importorskip("schemathesis")

from servers import sessions_open, stop, tail  # noqa: E402
from serving_fixtures import Registry, Server, _launch, _wait_ready  # noqa: E402

pytestmark = pytest.mark.slow

KEY, OTHER = "key-one-0123456789", "key-two-9876543210"
AUTH = {"Authorization": f"Bearer {KEY}"}
ORIGIN = "http://app.example.test"
PER_KEY = 4


@pytest.fixture(scope="session")
def C(registry: Registry):
    files = registry.root / "protocol-files"
    files.mkdir(exist_ok=True)
    cache = Path(registry.env["RNNOPS_CACHE"]) / "models"
    for name, src in (("char", "char-rnn"), ("fc", "forecaster-stateful"), ("fw", "forecaster")):
        shutil.copy(cache / src / "1" / "model.onnx", files / f"{name}.onnx")
    keys = files / "keys.txt"
    keys.write_text(f"# API keys, one a line\n{KEY}\n{OTHER}\n")
    server = _launch(
        "C",
        {
            **registry.env,
            "RNNOPS_MODELS": ",".join(f"{n}={files / (n + '.onnx')}" for n in ("char", "fc", "fw")),
            "RNNOPS_POLL_SECONDS": "0",
            "RNNOPS_API_KEYS": f"@{keys}",
            "RNNOPS_METRICS_AUTH": "1",
            "RNNOPS_MAX_STREAMS_PER_KEY": str(PER_KEY),
            "RNNOPS_CORS_ORIGINS": ORIGIN,
            "RNNOPS_MAX_CHARS": "100000",
            "RNNOPS_MAX_PROMPT_CHARS": "64",
            "RNNOPS_MAX_CONTEXT_ROWS": "64",
            "RNNOPS_FORECAST_MAX_WINDOWS": "8",
            "RNNOPS_SESSION_TTL": "3",
        },
        registry.root,
    )
    try:
        _wait_ready(server)
        yield server
    finally:
        stop(server.proc, signal.SIGTERM, group=True)


def _rows(csv: Path, start: int, n: int) -> np.ndarray:
    import pandas as pd

    return pd.read_csv(csv).iloc[start : start + n][["a", "b", "OT"]].to_numpy(np.float32)


def _complete(C: Server, body: dict) -> dict:
    r = C.post("/complete", body, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


# ---------------------------------------------------------------- API keys, CORS


def test_keys_guard_every_route_but_health_docs(C):
    for path in (
        "/livez",
        "/readyz",
        "/v2/health/live",
        "/v2/health/ready",
        "/docs",
        "/docs.json",
        "/static_content/swagger-ui-bundle.js",
    ):
        assert C.get(path).status_code == 200, path
    for path in ("/models", "/metrics", "/v1/models", "/v2", "/v2/models/fc"):
        r = C.get(path)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), path
        assert C.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert C.get(path, headers=AUTH).status_code == 200, path
    r = C.post("/generate", {"prompt": "the", "max_chars": 5})
    assert r.status_code == 401 and "API key" in r.json()["error"]
    r = C.post("/v1/completions", {"model": "char", "prompt": "the"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"  # OpenAI's shape under /v1
    assert KEY not in C.log.read_text(errors="replace")  # never logged
    pre = httpx.options(
        C.url + "/v1/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(
        C.url + "/generate", headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in other.headers


def test_one_key_cannot_take_every_slot(C):
    held = []
    try:
        for _ in range(PER_KEY):
            client = httpx.Client(timeout=30, headers={"Authorization": f"Bearer {OTHER}"})
            ctx = client.stream("POST", C.url + "/generate", json={"prompt": "the", "max_chars": 100000})
            r = ctx.__enter__()
            assert r.status_code == 200
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            held.append((client, ctx, lines))
        r = httpx.post(
            C.url + "/complete",
            json={"prompt": "the", "max_chars": 5},
            timeout=30,
            headers={"Authorization": f"Bearer {OTHER}"},
        )
        assert r.status_code == 429 and "RNNOPS_MAX_STREAMS_PER_KEY" in r.json()["error"] and r.headers["retry-after"]
        oa = openai.OpenAI(base_url=C.url + "/v1", api_key=OTHER, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            oa.completions.create(model="char", prompt="the", max_tokens=5)
        assert C.post("/complete", {"prompt": "the", "max_chars": 5}, headers=AUTH).status_code == 200  # other key
    finally:
        for client, ctx, _ in held:
            with contextlib.suppress(Exception):
                ctx.__exit__(None, None, None)
            client.close()


# ---------------------------------------------------------------- OpenAI


@pytest.fixture(scope="module")
def oa(C):
    return openai.OpenAI(base_url=C.url + "/v1", api_key=KEY, max_retries=0)


def test_openai_models_and_completion_match_generate(C, oa):
    assert [m.id for m in oa.models.list().data] == ["char"]
    c = oa.completions.create(model="char", prompt="the ", max_tokens=60, seed=7, temperature=0.9)
    native = _complete(C, {"prompt": "the ", "max_chars": 60, "seed": 7, "temperature": 0.9, "top_p": 1.0})
    assert c.object == "text_completion" and c.choices[0].text == native["text"]
    assert c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 60 and c.usage.prompt_tokens == 4
    again = oa.completions.create(
        model="char@" + native["version"], prompt="the ", max_tokens=60, seed=7, temperature=0.9
    )
    assert again.choices[0].text == c.choices[0].text  # name@version, same seed, same text
    chunks = list(
        oa.completions.create(
            model="char",
            prompt="the ",
            max_tokens=60,
            seed=7,
            temperature=0.9,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == c.choices[0].text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 60 and 1 < len(chunks) < 60  # coalesced, usage last


def test_openai_n_choices_use_seed_plus_i_and_echo(C, oa):
    c = oa.completions.create(model="char", prompt="the", max_tokens=30, n=3, seed=100, echo=True)
    assert [ch.index for ch in c.choices] == [0, 1, 2]
    for i, ch in enumerate(c.choices):
        assert (
            ch.text
            == "the" + _complete(C, {"prompt": "the", "max_chars": 30, "seed": 100 + i, "temperature": 1.0})["text"]
        )
    streamed = list(oa.completions.create(model="char", prompt=["the", "a"], max_tokens=20, n=2, seed=5, stream=True))
    texts = {}
    for ch in streamed:
        for choice in ch.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts[3] == _complete(C, {"prompt": "a", "max_chars": 20, "seed": 6, "temperature": 1.0})["text"]


def test_openai_stop_and_logprobs(oa):
    full = oa.completions.create(model="char", prompt="the", max_tokens=120, temperature=0).choices[0].text
    stop = full[40:43]
    cut = oa.completions.create(model="char", prompt="the", max_tokens=120, temperature=0, stop=stop).choices[0]
    assert cut.finish_reason == "stop" and cut.text == full[: full.find(stop)]
    lp = oa.completions.create(model="char", prompt="the", max_tokens=25, temperature=0, logprobs=3).choices[0].logprobs
    assert lp.tokens == list(full[:25]) and len(lp.token_logprobs) == 25 and lp.text_offset == list(range(25))
    for tok, p, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert p <= 0 and len(top) == 3 and top[tok] == pytest.approx(p) and max(top.values()) == pytest.approx(p)


def test_openai_errors_are_the_clients_exceptions(C):
    oa = openai.OpenAI(base_url=C.url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError, match="loaded char models: char"):
        oa.completions.create(model="nope", prompt="the")
    with pytest.raises(openai.NotFoundError):
        oa.completions.create(model="char@999", prompt="the")
    for kw, param in (
        ({"best_of": 3}, "best_of"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"suffix": "x"}, "suffix"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            oa.completions.create(model="char", prompt="the", **kw)
        assert e.value.param == param or param in str(e.value), (kw, e.value)
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        oa.completions.create(model="char", prompt="the Zebra")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=C.url + "/v1", api_key="wrong", max_retries=0).completions.create(
            model="char", prompt="a"
        )


# ---------------------------------------------------------------- Open Inference Protocol


@pytest.fixture(scope="module")
def triton(C):
    return httpclient.InferenceServerClient(C.url.removeprefix("http://"))


def _infer(triton, model, x, binary=True, **kw):
    dtype = "FP32" if x.dtype == np.float32 else "INT64"
    inp = httpclient.InferInput("x", list(x.shape), dtype)
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = kw.pop("outputs", None)
    return triton.infer(model, [inp], outputs=outputs, headers=dict(AUTH), **kw)  # it adds to the dict


def test_oip_health_metadata_and_forecasts_binary_and_json(C, triton, registry):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("fc", headers=AUTH) and triton.is_model_ready("fw", headers=AUTH)
    meta = triton.get_model_metadata("fw", headers=AUTH)
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 24, 3]}]  # windowed: what runs
    assert meta["outputs"] == [{"name": "forecast", "datatype": "FP32", "shape": [-1, 6, 3]}]
    assert triton.get_model_metadata("fc", headers=AUTH)["inputs"][0]["shape"] == [-1, -1, 3]
    char = triton.get_model_metadata("char", headers=AUTH)
    state = {m["name"]: m for m in C.get("/models", headers=AUTH).json()["models"]}["char"]["state"]
    assert [t["name"] for t in char["inputs"][1:]] == [t["input"] for t in state]
    assert [t["name"] for t in char["outputs"][1:]] == [t["output"] for t in state]

    x = np.stack([_rows(registry.csv, 100, 30), _rows(registry.csv, 200, 30)])
    for model in ("fc", "fw"):
        ref = np.array(
            [C.post("/forecast", {"model": model, "context": w.tolist()}, headers=AUTH).json()["forecast"] for w in x],
            np.float32,
        )
        y = _infer(triton, model, x).as_numpy("forecast")  # binary in, binary out (no outputs named)
        np.testing.assert_allclose(y, ref, atol=1e-5)
        out = httpclient.InferRequestedOutput("forecast", binary_data=False)
        y = _infer(triton, model, x, binary=False, outputs=[out]).as_numpy("forecast")  # JSON both ways
        np.testing.assert_allclose(y, ref, atol=1e-5)
    with pytest.raises(httpclient.InferenceServerException, match="unknown model"):
        _infer(triton, "nope", x)
    with pytest.raises(httpclient.InferenceServerException, match="shape"):
        _infer(triton, "fw", x[:, :10])  # a windowed model needs its lookback


def test_oip_char_logits_and_state_tensors(C, triton):
    x = np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]], np.int64)
    state = {m["name"]: m for m in C.get("/models", headers=AUTH).json()["models"]}["char"]["state"]
    whole = _infer(triton, "char", x).as_numpy("logits")
    assert whole.shape[:2] == (2, 5)
    outs = [httpclient.InferRequestedOutput(n) for n in ["logits", *(t["output"] for t in state)]]
    first = _infer(triton, "char", x[:, :3], outputs=outs)
    inputs = [httpclient.InferInput("x", [2, 2], "INT64")]
    inputs[0].set_data_from_numpy(x[:, 3:])
    for t in state:
        s = first.as_numpy(t["output"])
        i = httpclient.InferInput(t["input"], list(s.shape), "FP32")
        i.set_data_from_numpy(s)
        inputs.append(i)
    rest = triton.infer("char", inputs, headers=dict(AUTH)).as_numpy("logits")
    np.testing.assert_allclose(rest, whole[:, 3:], atol=1e-5)  # carried state == one call


def test_oip_sequences_step_one_observation_at_a_time(C, triton, registry):
    rows = _rows(registry.csv, 50, 30)
    whole = _infer(triton, "fc", rows[None]).as_numpy("forecast")[0]
    errors: list = []

    def run(seq_id):
        own = httpclient.InferenceServerClient(C.url.removeprefix("http://"))  # a client is not thread-safe
        try:
            for i, row in enumerate(rows):
                r = _infer(
                    own,
                    "fc",
                    row[None, None],
                    sequence_id=seq_id,
                    sequence_start=i == 0,
                    sequence_end=i == len(rows) - 1,
                )
            np.testing.assert_allclose(r.as_numpy("forecast")[0], whole, atol=1e-5)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=run, args=(sid,)) for sid in (7, "seven", 8, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with pytest.raises(httpclient.InferenceServerException, match="not active"):
        _infer(triton, "fc", rows[:1][None], sequence_id=7)  # ended
    # a windowed sequence: no forecast until it holds lookback rows, then the same as /forecast
    w = _rows(registry.csv, 0, 24)
    for i, row in enumerate(w):
        r = _infer(triton, "fw", row[None, None], sequence_id=11, sequence_start=i == 0)
        if i < 23:
            assert r.as_numpy("forecast") is None and r.get_response()["parameters"]["needs"] == 23 - i
    ref = C.post("/forecast", {"model": "fw", "context": w.tolist()}, headers=AUTH).json()["forecast"]
    np.testing.assert_allclose(r.as_numpy("forecast")[0], ref, atol=1e-5)
    deadline = time.monotonic() + 20  # RNNOPS_SESSION_TTL=3: the sweeper drops the idle sequence
    while sessions_open(C, "fw", headers=AUTH) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)  # reading the gauge does not touch the sequence
    with pytest.raises(httpclient.InferenceServerException, match="expired"):
        _infer(triton, "fw", w[:1][None], sequence_id=11)


# ---------------------------------------------------------------- the contract


def test_docs_cover_every_route_and_carry_the_limits(C):
    from rnnops.serving.http.app import ROUTES

    doc = C.get("/docs.json").json()
    assert doc["openapi"].startswith("3.1")
    for method, path, _ in ROUTES:
        if not path.startswith("/static_content/"):  # the Swagger UI's files, not an API
            assert method.lower() in doc["paths"][path], (method, path)
    for path in ("/livez", "/readyz", "/metrics"):
        assert path in doc["paths"]
    gen = doc["components"]["schemas"]["GenerateBody"]["properties"]
    assert gen["max_chars"]["maximum"] == 100000 and gen["model"]["anyOf"][0]["enum"] == ["char"]
    assert doc["components"]["schemas"]["ForecastBody"]["properties"]["context"]["anyOf"][0]["maxItems"] == 64
    page = C.get("/docs").text
    assert "swagger-ui-bundle.js" in page and "http://" not in page and "https://" not in page  # offline


def _contract_schema(C):
    doc = C.get("/docs.json").json()
    s = doc["components"]["schemas"]
    # bounded generation so the suite stays fast: short texts, few rows
    s["GenerateBody"]["properties"]["max_chars"]["maximum"] = 40
    s["CompletionBody"]["properties"]["max_tokens"]["anyOf"][0]["maximum"] = 40
    return schemathesis.openapi.from_dict(doc)


CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_contract_no_server_error_and_conformance(C, mode):
    """schemathesis over every operation of /docs.json, a few examples each (bounded, so fast)."""
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable
    from schemathesis import checks as core
    from schemathesis.specs.openapi import checks as oas

    checks = [getattr(core, name, None) or getattr(oas, name) for name in CHECKS]
    schema = _contract_schema(C)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) >= 20
    failures = []
    for op in ops:

        @settings(
            max_examples=6 if mode == "positive" else 3,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        @given(case=op.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
        def run(case):
            case.call_and_validate(base_url=C.url, headers=dict(AUTH), timeout=30, checks=checks)

        try:
            run()
        except Unsatisfiable:  # nothing to break in an operation without inputs (negative mode)
            assert mode == "negative" and not op.body and not op.path_parameters, op.path
        except Exception as exc:  # noqa: BLE001 (all operations run, then every failure is shown)
            failures.append(f"{op.method.upper()} {op.path}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_server_log_is_clean(C):
    log = C.log.read_text(errors="replace")
    assert "Traceback" not in log, tail(C.log, 80)
