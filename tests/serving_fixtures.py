"""The registry and the ``bentoml serve`` launcher the serving tests share (tests/test_service.py,
tests/test_protocols.py): tiny models trained, exported, registered and promoted once per test
session (``registry``, made a session fixture for every module by conftest.py), and real servers
on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from servers import free_port, tail

REPO = Path(__file__).resolve().parents[1]
TEXT = "\n".join(
    f"{['the quick brown fox', 'jumps over', 'the lazy dog', 'and runs away'][i % 4]} {i % 7}" for i in range(400)
)


# ---------------------------------------------------------------- models: train, export, register


def export(run_id: str) -> None:
    from rnnops.export.pipeline import export_run

    export_run(run_id, formats=("onnx",), quantize=False, progress=False)


@dataclass
class Registry:
    root: Path
    env: dict
    char_runs: list[str]
    csv: Path


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Registry:
    """Three tiny runs (char, windowed and stateful forecasters) trained, exported, registered and
    promoted, plus a second char run for the hot-reload test (exported, not registered)."""
    import mlflow
    import pandas as pd

    from rnnops.registry import api
    from rnnops.training import jobs

    root = tmp_path_factory.mktemp("serving")
    # Both URIs pinned: earlier test modules in this process pointed MLflow at other stores.
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{root / 'mlflow.db'}",
        "RNNOPS_CACHE": str(root / "cache"),
        "RNNOPS_CHECKPOINTS": str(root / "checkpoints"),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    mp.chdir(root)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        text = root / "small.txt"
        text.write_text(TEXT)
        n = 600
        t = np.arange(n)
        csv = root / "small.csv"
        pd.DataFrame(
            {
                "date": pd.date_range("2024-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
                "a": np.sin(t / 8.0),
                "b": np.cos(t / 13.0) + 0.001 * t,
                "OT": np.sin(t / 8.0 + 1.0) * 2 + 5,
            }
        ).to_csv(csv, index=False)
        quick = {"train.steps": 4, "train.eval_every": 4}
        char1 = jobs.run_job(jobs.char_job(str(text), "lstm", "tiny", {**quick, "model.hidden_size": 32}))
        char2 = jobs.run_job(
            jobs.char_job(str(text), "gru", "tiny", {**quick, "model.hidden_size": 32, "train.seed": 2})
        )
        fw = jobs.run_job(jobs.forecast_job(str(csv), "gru", "tiny", {**quick, "lookback": 24, "horizon": 6}))
        fs = jobs.run_job(
            jobs.forecast_job(str(csv), "gru", "tiny", {**quick, "lookback": 24, "horizon": 6, "model.norm": "fixed"})
        )
        for r in (char1, char2, fw, fs):
            export(r)
        for run, name in ((char1, "char-rnn"), (fw, "forecaster"), (fs, "forecaster-stateful")):
            v = api.register_run(run, name=name)
            api.promote(name, v.version, force=True)
        yield Registry(root, env, [char1, char2], csv)
    finally:
        mp.undo()


# ---------------------------------------------------------------- servers


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path

    def get(self, path: str, **kw):
        import httpx

        return httpx.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, body=None, **kw):
        import httpx

        if body is not None and not isinstance(body, (bytes, str)):
            kw["json"] = body
        elif body is not None:
            kw["content"] = body
        return httpx.post(self.url + path, timeout=60, **kw)

    def delete(self, path: str):
        import httpx

        return httpx.delete(self.url + path, timeout=30)

    def models(self) -> dict:
        return self.get("/models").json()


def _launch(name: str, env: dict, root: Path) -> Server:
    port = free_port()
    log = root / f"serve-{name}.log"
    full = {
        **os.environ,
        **env,
        "BENTOML_HOME": str(root / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "PYTHONUNBUFFERED": "1",
        "RNNOPS_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "rnnops.serving.service:RnnopsService",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=root,
            start_new_session=True,
        )
    return Server(f"http://127.0.0.1:{port}", proc, log)


def _wait_ready(server: Server, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with {server.proc.returncode}\n{tail(server.log)}")
        with contextlib.suppress(httpx.HTTPError):
            if server.get("/readyz").status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{server.url} not ready after {timeout:.0f}s\n{tail(server.log)}")
