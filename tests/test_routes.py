"""The /forecast fast path (orjson straight into arrays) against the pydantic model it shortcuts,
and the orjson response. Unit tests: no server (tests/test_service.py covers the HTTP side)."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from pydantic import ValidationError

from rnnops.serving.http.errors import JSONResponse
from rnnops.serving.http.forecast import _fast_forecast_body
from rnnops.serving.http.schemas import ForecastBody

W = [[1.5, 2, -3e-5], [4.0, 5.25, 6.0]]

BODIES = [
    {"context": W},
    {"context": W, "model": "forecaster", "timestamps": ["2024-01-01T00:00:00", "2024-01-01T01:00:00"]},
    {"contexts": [W, W[:1]]},
    {"contexts": [W, W], "timestamps": [["2024-01-01T00:00:00"] * 2, ["2024-01-02T00:00:00"] * 2]},
    {"contexts": []},
    {"context": [[1, 2], [3, 4]]},  # ints are numbers
    {"context": [[1.0, True]]},  # pydantic (lax) reads true as 1.0: either path must agree
    {"context": [[1.0, "2.5"]]},  # and numeric strings as numbers
    {"context": [[1.0, 2.0], [3.0]]},  # ragged: the handler names the short row
    {"context": []},
    {"context": [[]]},
    {},
    {"model": None, "context": W},
    # bodies pydantic refuses: the fast path must not take them either
    {"context": W, "horizon": 5},  # unknown field
    {"context": [[1.0, None]]},
    {"context": [[1.0, "a"]]},
    {"context": [1.0, 2.0]},
    {"context": "1,2"},
    {"context": W, "model": 3},
    {"contexts": [W, "x"]},
    {"contexts": W[0]},
    {"context": W, "timestamps": [1, 2]},
    {"context": [[1.0, 1e400]]},
    [W],
]


def _pydantic(raw: bytes):
    try:
        return ForecastBody.model_validate_json(raw)
    except ValidationError:
        return None


def _same(fast, slow) -> None:
    assert fast.model == slow.model and fast.timestamps == slow.timestamps
    for a, b in ((fast.context, slow.context), *zip(fast.contexts or [], slow.contexts or [])):
        if a is None:
            assert b is None
        else:
            assert isinstance(a, np.ndarray) and a.ndim == 2
            np.testing.assert_array_equal(a.astype(np.float64), np.asarray(b, np.float64))
    assert (fast.contexts is None) == (slow.contexts is None)


@pytest.mark.parametrize("body", BODIES, ids=[str(i) for i in range(len(BODIES))])
def test_fast_path_takes_only_what_pydantic_takes_and_reads_the_same_values(body):
    raw = json.dumps(body).encode()
    fast, slow = _fast_forecast_body(raw), _pydantic(raw)
    if slow is None:
        assert fast is None, f"fast path took a body pydantic refuses: {body}"
    elif fast is not None:
        _same(fast, slow)


def test_fast_path_takes_the_usual_request():
    raw = json.dumps({"context": np.random.default_rng(0).normal(size=(96, 7)).tolist()}).encode()
    fast = _fast_forecast_body(raw)
    assert fast is not None and fast.context.shape == (96, 7) and fast.context.dtype == np.float64
    _same(fast, _pydantic(raw))
    for bad in (b"", b"{", b'{"context": [[1, NaN]]}', b"null"):
        assert _fast_forecast_body(bad) is None


def test_json_response_keeps_float32_values_exactly():
    y = np.random.default_rng(1).normal(size=(96, 7)).astype(np.float32) * 1e3
    body = JSONResponse({"forecast": y, "version": "3"}).body
    back = orjson.loads(body)
    assert back["version"] == "3"
    np.testing.assert_array_equal(np.asarray(back["forecast"], np.float32), y)  # shortest repr round-trips
    assert len(body) < len(json.dumps(y.tolist()))  # and is shorter than float64 repr of float32s
