"""The Open Inference Protocol's binary tensor extension, fuzzed against a real ``bentoml serve``
(docs/security.md): hypothesis builds requests from the malformed shapes the issue lists and
more (header lengths past the body, negative, not a number; binary sizes that disagree with the
shape, the datatype or the bytes left; shapes with zeros, negatives or products that overflow;
datatypes the service does not take; headers that are not JSON; extra bytes) and every answer
must be a 4xx with a JSON error or a 200, never a 5xx, never a hang, with the worker still up
and its memory not grown by what a request declared (declared lengths are checked against the
bytes actually received, and ``RNNOPS_MAX_BODY_BYTES`` bounds those before they are read)."""

from __future__ import annotations

import json
import socket
import time

import pytest

pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")

import psutil  # noqa: E402  (BentoML depends on it)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from servers import descendants, serve_bentoml  # noqa: E402
from test_runtime import export_char, export_forecaster  # noqa: E402

HEADER = "Inference-Header-Content-Length"
MAX_BODY = 1 << 20  # RNNOPS_MAX_BODY_BYTES for this server
DTYPES = ["BOOL", "UINT8", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "FP8", "", "fp32"]
ITEMSIZE = {"BOOL": 1, "UINT8": 1, "INT8": 1, "INT32": 4, "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("oip-fuzz")
    export_char(root / "char.onnx", "lstm", hidden=16)
    export_forecaster(root / "fc.onnx", norm="fixed", lookback=12, horizon=4)
    env = {
        "RNNOPS_MODELS": f"char={root / 'char.onnx'},fc={root / 'fc.onnx'}",
        "RNNOPS_MAX_BODY_BYTES": str(MAX_BODY),
        "RNNOPS_WORKERS": "1",
    }
    with serve_bentoml(root, env, "oip-fuzz") as (proc, url, log):
        with httpx.Client(base_url=url, timeout=30) as client:
            yield proc, url, client, log


def rss_mb(proc) -> float:
    procs = [psutil.Process(proc.pid), *descendants(proc.pid)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


dims = st.one_of(st.integers(1, 16), st.integers(-3, 0), st.sampled_from([2**31, 2**32 + 1, 2**62, 10**30]))
sizes = st.one_of(
    st.none(),
    st.integers(-8, 4096),
    st.sampled_from([2**31, 2**63, 10**20]),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
)


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(dims, max_size=4))
    t = {"name": draw(st.sampled_from(["x", "h0", "c0", "nope", "x"])), "shape": shape, "datatype": dtype}
    size = draw(sizes)
    if draw(st.booleans()):  # the right size for its shape, most of the time a real binary tensor
        n = 1
        for d in shape:
            n *= max(d, 0)
        size = n * ITEMSIZE.get(dtype, 4) if n * ITEMSIZE.get(dtype, 4) <= 4096 else size
    if size is not None:
        t["parameters"] = {"binary_data_size": size}
    if draw(st.integers(0, 5)) == 0:
        t["data"] = draw(
            st.lists(st.one_of(st.integers(-2, 70), st.floats(), st.text(max_size=2), st.none()), max_size=8)
        )
    return t


@st.composite
def requests(draw):
    """(header bytes, blob, value of Inference-Header-Content-Length or None)."""
    if draw(st.integers(0, 9)) == 0:
        head = draw(st.binary(max_size=64))  # not JSON at all, or JSON that is no object
    else:
        body = {"inputs": draw(st.lists(tensors(), max_size=3))}
        if draw(st.booleans()):
            body["parameters"] = draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "binary_data_output": st.one_of(st.booleans(), st.text(max_size=3)),
                        "sequence_id": st.one_of(
                            st.integers(-5, 2**70), st.text(max_size=5), st.lists(st.integers(), max_size=2)
                        ),
                        "sequence_start": st.one_of(st.booleans(), st.integers()),
                    },
                )
            )
        if draw(st.booleans()):
            body["outputs"] = [
                {"name": n} for n in draw(st.lists(st.sampled_from(["logits", "hn", "forecast", "zz"]), max_size=2))
            ]
        head = json.dumps(body).encode()
    # the bytes after the header: what the sizes claim (often), or any
    need = 0
    try:
        need = sum(
            t.get("parameters", {}).get("binary_data_size") or 0
            for t in json.loads(head)["inputs"]
            if isinstance(t.get("parameters", {}).get("binary_data_size"), int)
        )
    except Exception:
        pass
    blob = bytes(min(max(need, 0), 8192)) if draw(st.booleans()) else draw(st.binary(max_size=256))
    length = draw(
        st.one_of(
            st.just(str(len(head))),
            st.integers(-5, len(head) + len(blob) + 5).map(str),
            st.sampled_from(["", "abc", "1e3", "0x10", str(2**64), "9" * 50, "+" + str(len(head)), "1_0"]),
            st.none(),
        )
    )
    return head, blob, length


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
@given(req=requests(), model=st.sampled_from(["char", "fc", "nope"]))
def _fuzz_one(client, req, model):
    head, blob, length = req
    headers = {"content-type": "application/octet-stream"}
    if length is not None:
        headers[HEADER] = length
    t = time.monotonic()
    r = client.post(f"/v2/models/{model}/infer", content=head + blob, headers=headers)  # times out in 30 s: a hang
    assert time.monotonic() - t < 30  # generous: a shared CI machine, yet far from a hang
    assert r.status_code < 500, (r.status_code, r.text[:300], head[:300], length)
    if r.status_code >= 400:
        err = r.json()
        assert isinstance(err.get("error"), str) and err["error"], r.text[:300]
    else:
        assert r.status_code == 200 and "outputs" in r.json()


def test_the_binary_extension_answers_any_request_with_a_4xx_or_a_result(server):
    proc, url, client, log = server
    before = rss_mb(proc)
    _fuzz_one(client)
    assert client.get("/v2/health/live").status_code == 200 and proc.poll() is None
    assert client.get("/v2/health/ready").status_code == 200  # the worker did not die and restart
    assert rss_mb(proc) - before < 150, "memory grew by more than the fuzzed requests could explain"


@pytest.mark.parametrize(
    "head,blob,length,status",
    [
        (b'{"inputs":[]}', b"", "1000000000000000", 400),  # header length past the body
        (b'{"inputs":[]}', b"", "-1", 400),  # negative
        (b'{"inputs":[]}', b"", "twelve", 400),  # not a number
        (
            b'{"inputs":[{"name":"x","shape":[1,12,3],"datatype":"FP32","parameters":{"binary_data_size":4611686018427387904}}]}',
            bytes(144),
            None,
            400,
        ),  # binary size far past the data
        (b"not json", b"", None, 400),
        (
            b'{"inputs":[{"name":"x","shape":[4294967296,4294967296,3],"datatype":"FP32","parameters":{"binary_data_size":0}}]}',
            b"",
            None,
            400,
        ),  # a shape whose product overflows
        (
            b'{"inputs":[{"name":"x","shape":[1,12,3],"datatype":"INT64","parameters":{"binary_data_size":288}}]}',
            bytes(288),
            None,
            400,
        ),  # a datatype the model does not take
        (
            b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"BYTES","parameters":{"binary_data_size":2}}]}',
            b"ab",
            None,
            400,
        ),
        (
            b'{"inputs":[{"name":"x","shape":[1,0,3],"datatype":"FP32","parameters":{"binary_data_size":0}}]}',
            b"",
            None,
            400,
        ),
        (
            b'{"inputs":[{"name":"x","shape":[0,1000000000000000000000000000000],"datatype":"FP32","data":[]}]}',
            b"",
            None,
            400,
        ),
    ],
)
def test_the_malformed_requests_of_issue_24_each_get_a_4xx(server, head, blob, length, status):
    proc, url, client, log = server
    headers = {HEADER: length if length is not None else str(len(head))} if length is not None or blob else {}
    r = client.post("/v2/models/fc/infer", content=head + blob, headers=headers)
    assert r.status_code == status and isinstance(r.json()["error"], str), r.text
    assert client.get("/v2/health/live").status_code == 200


def test_a_declared_body_past_the_limit_is_refused_before_it_is_read(server):
    """Content-Length of a terabyte, nothing sent: 413 at once, nothing allocated for it."""
    proc, url, client, log = server
    before = rss_mb(proc)
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /v2/models/fc/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            b'Inference-Header-Content-Length: 13\r\nContent-Length: 1000000000000\r\n\r\n{"inputs":[]}'
        )
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # a body that streams past the limit without declaring it is cut off too
    big = b'{"inputs":[{"name":"x","shape":[1,12,3],"datatype":"FP32","parameters":{"binary_data_size":144}}]}'
    r = client.post("/v2/models/fc/infer", content=iter([big, bytes(MAX_BODY)]), headers={HEADER: str(len(big))})
    assert r.status_code == 413
    assert rss_mb(proc) - before < 50
