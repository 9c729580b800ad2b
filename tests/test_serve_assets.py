"""The serving path without torch: a real ``bentoml serve`` on the tiny ONNX files of tests/assets/.

One of the fast serving tests (conftest.FAST): ``make check`` runs it in a venv with the ``serve``
extra alone, as the serving image has, so a torch import anywhere on the serving path fails here.
The files are made by scripts/make_test_assets.py (the real exporter, tiny seeded models); the
first test says when the contract moved on and they need making again.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from servers import stop
from serving_fixtures import Server, _launch, _wait_ready

from rnnops import contract
from rnnops.onnx_metadata import read_metadata

ASSETS = Path(__file__).resolve().parent / "assets"
FILES = {"char": "char-lstm.onnx", "fc": "forecaster-revin.onnx", "fc-stateful": "forecaster-fixed.onnx"}
LOOKBACK, HORIZON = 12, 4  # what the script exports


def _rows(n: int, start: int = 0) -> list[list[float]]:
    t = np.arange(start, start + n)
    return np.stack([np.sin(t / 8.0), np.cos(t / 13.0), np.sin(t / 8.0 + 1.0) * 2 + 5], axis=1).round(6).tolist()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    root = tmp_path_factory.mktemp("assets-serve")
    models = ",".join(f"{name}={ASSETS / file}" for name, file in FILES.items())
    s = _launch("assets", {"RNNOPS_MODELS": models, "RNNOPS_CACHE": str(root / "cache")}, root)
    try:
        _wait_ready(s)
        yield s
    finally:
        stop(s.proc, signal.SIGTERM, group=True)


def test_the_assets_are_tiny_and_follow_the_current_contract():
    for file in FILES.values():
        path = ASSETS / file
        assert path.stat().st_size < 100_000, f"{file} is not tiny any more"
        meta = read_metadata(path)
        assert set(meta) == set(contract.META_KEYS), (
            f"{file} predates the contract's metadata keys: run scripts/make_test_assets.py in the full venv"
        )


def test_the_server_serves_every_file(server):
    assert server.get("/readyz").status_code == 200
    served = server.models()
    text = str(served)
    assert all(name in text for name in FILES), served


def test_seeded_generation_is_the_same_on_every_text_endpoint(server):
    body = {"model": "char", "prompt": "the ", "max_chars": 40, "seed": 7, "temperature": 1.0}
    first = server.post("/complete", body)
    assert first.status_code == 200, first.text
    text = first.json()["text"]
    assert len(text) == 40 and first.json()["finish_reason"] == "length"
    assert server.post("/complete", body).json()["text"] == text  # same seed, same text
    openai = server.post(
        "/v1/completions", {"model": "char", "prompt": "the ", "max_tokens": 40, "seed": 7, "temperature": 1.0}
    )
    assert openai.status_code == 200, openai.text
    assert openai.json()["choices"][0]["text"] == text


def test_a_forecast_has_the_models_horizon(server):
    r = server.post("/forecast", {"model": "fc", "context": _rows(LOOKBACK)})
    assert r.status_code == 200, r.text
    y = np.array(r.json()["forecast"])
    assert y.shape == (HORIZON, 1) and np.isfinite(y).all()


def test_a_stateful_session_stepped_one_observation_at_a_time_equals_the_whole_history(server):
    rows = _rows(20)
    r = server.post("/sessions", {"model": "fc-stateful", "context": rows[:10]})
    assert r.status_code == 201, r.text
    sid = r.json()["session_id"]
    for row in rows[10:]:
        u = server.post(f"/sessions/{sid}", {"observations": [row]})
        assert u.status_code == 200, u.text
    whole = server.post("/forecast", {"model": "fc-stateful", "context": rows}).json()["forecast"]
    np.testing.assert_allclose(u.json()["forecast"], whole, atol=1e-5)
