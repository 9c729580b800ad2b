"""The production shape, for real: PostgreSQL + ``mlflow server`` on loopback (tests/servers.py),
the CLI pointed at it with ``MLFLOW_TRACKING_URI``, and ``bentoml serve`` resolving models
through it.

1. train (tiny) against the server: the run lands in PostgreSQL, its artifacts in the server's
   proxied artifact store, and the MLflow UI (page + its ajax API) shows it;
2. train both kinds -> ``rnnops export RUN --register --promote`` (for the char model through
   ``docker/pipeline.sh``, what the compose ``train`` job runs) -> ``bentoml serve`` with
   ``RNNOPS_MODELS=char-rnn@champion,forecaster@champion`` -> HTTP generate and forecast.

Slow (a server start runs MLflow's migrations on PostgreSQL, ~40 s here). Without PostgreSQL
or psycopg the tests skip with the reason; under CI they fail instead (see servers.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from servers import free_port, mlflow_server, postgres, stop, wait_http  # noqa: F401  (fixtures used by name)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def rnnops(*args: str, env: dict, cwd: Path, timeout: float = 600) -> str:
    """Run the ``rnnops`` CLI; return stdout, or fail with both streams."""
    cmd = [sys.executable, "-c", "from rnnops.cli import main; main()", *args]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"rnnops {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc.stdout


def run_id_of(stdout: str) -> str:
    m = re.search(r"^run id: (\w+)$", stdout, re.M)
    assert m, stdout
    return m.group(1)


def client_env(server, tmp_path: Path) -> dict:
    """What a user sets to use the server: MLFLOW_TRACKING_URI (and their own cache dirs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {
        **env,
        **server.env,
        "RNNOPS_CACHE": str(tmp_path / "cache"),
        "RNNOPS_CHECKPOINTS": str(tmp_path / "checkpoints"),
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
    }


def get(url: str, timeout: float = 30) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.headers.get("content-type", ""), resp.read().decode()


def post(url: str, body: dict, timeout: float = 60) -> tuple[int, str, str]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.headers.get("content-type", ""), resp.read().decode()


def test_training_logs_to_the_postgres_backed_server_and_the_ui_shows_it(mlflow_server, postgres, tmp_path, small_text):
    env = client_env(mlflow_server, tmp_path)
    run_id = run_id_of(rnnops("train", "char", "--preset", "tiny", "--data", str(small_text), env=env, cwd=tmp_path))

    # the run, its params and metrics are rows in PostgreSQL
    [[status, experiment_id]] = postgres.query(f"SELECT status, experiment_id FROM runs WHERE run_uuid = '{run_id}'")
    assert status == "FINISHED"
    [[name]] = postgres.query(f"SELECT name FROM experiments WHERE experiment_id = {experiment_id}")
    assert name == "rnnops-char"
    [[n_loss]] = postgres.query(f"SELECT count(*) FROM metrics WHERE run_uuid = '{run_id}' AND key = 'train_loss'")
    assert int(n_loss) >= 3
    [[seq_len]] = postgres.query(f"SELECT value FROM params WHERE run_uuid = '{run_id}' AND key = 'seq_len'")
    assert seq_len == "32"
    # its artifacts went through the server into the proxied artifact store
    jobs = list(mlflow_server.artifacts.rglob("config/job.json"))
    assert any(run_id in str(p) for p in jobs), jobs
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()  # nothing local

    # the MLflow UI: the page, and the ajax API its JavaScript calls
    status, ctype, page = get(mlflow_server.url + "/")
    assert status == 200 and "text/html" in ctype and "<title>MLflow</title>" in page
    status, _, body = get(mlflow_server.url + "/ajax-api/2.0/mlflow/experiments/search?max_results=100")
    assert status == 200 and "rnnops-char" in [e["name"] for e in json.loads(body)["experiments"]]
    status, _, body = get(f"{mlflow_server.url}/ajax-api/2.0/mlflow/runs/get?run_id={run_id}")
    assert json.loads(body)["run"]["info"]["status"] == "FINISHED"


@pytest.fixture
def bentoml_serve(tmp_path):
    """Start ``bentoml serve`` with an env; yields the base URL; stops the whole process group."""
    procs = []

    def start(env: dict) -> str:
        port = free_port()
        log = tmp_path / "bentoml.log"
        cmd = [
            str(Path(sys.executable).parent / "bentoml"),
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
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/readyz", proc, log, timeout=240)  # ready = both models resolved and loaded
        return url

    yield start
    for proc in procs:
        stop(proc, signal.SIGTERM, group=True)


def test_train_export_register_promote_then_serve_through_the_server(
    mlflow_server, tmp_path, small_text, small_csv, bentoml_serve
):
    env = client_env(mlflow_server, tmp_path)
    # the char model through docker/pipeline.sh, the script the compose `train` job runs ...
    bindir = str(Path(sys.executable).parent)
    proc = subprocess.run(
        ["bash", str(REPO / "docker" / "pipeline.sh"), "char", "--preset", "tiny", "--data", str(small_text)],
        env={**env, "PATH": bindir + os.pathsep + env.get("PATH", "")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    char_run = run_id_of(proc.stdout)
    # ... the forecaster step by step
    fc_run = run_id_of(
        rnnops(
            "train",
            "forecast",
            "--preset",
            "tiny",
            "--data",
            str(small_csv),
            "--lookback",
            "24",
            "--horizon",
            "6",
            env=env,
            cwd=tmp_path,
        )
    )
    rnnops("export", fc_run, "--register", "--promote", env=env, cwd=tmp_path)

    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url, registry_uri=mlflow_server.url)
    for name, run in (("char-rnn", char_run), ("forecaster", fc_run)):
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.run_id == run, (name, champion.run_id, run)

    url = bentoml_serve(
        {
            **env,
            "RNNOPS_MODELS": "char-rnn@champion,forecaster@champion",
            "RNNOPS_WORKERS": "1",
            "RNNOPS_POLL_SECONDS": "0",
        }
    )

    status, _, body = get(url + "/models")
    served = json.dumps(json.loads(body))
    assert status == 200 and "char-rnn" in served and "forecaster" in served

    status, _, body = post(url + "/complete", {"model": "char-rnn", "prompt": "the ", "max_chars": 40, "seed": 1})
    text = json.loads(body)
    assert status == 200 and len(text["text"]) == 40, text

    status, ctype, body = post(url + "/generate", {"model": "char-rnn", "prompt": "the ", "max_chars": 20, "seed": 1})
    assert status == 200 and "text/event-stream" in ctype
    events = re.findall(r"^event: (\w+)$", body, re.M)
    assert events[-1] == "done" and "chunk" in events, body[-500:]
    streamed = "".join(
        json.loads(d)["text"] for e, d in re.findall(r"^event: (\w+)\ndata: (.*)$", body, re.M) if e == "chunk"
    )
    assert len(streamed) == 20, body[-500:]

    import numpy as np
    import pandas as pd

    df = pd.read_csv(small_csv)
    context = df.drop(columns=["date"]).to_numpy(dtype=float)[-24:].tolist()
    status, _, body = post(url + "/forecast", {"model": "forecaster", "context": context})
    answer = json.loads(body)
    assert status == 200, answer
    forecast = np.asarray(answer["forecast"], dtype=float)
    assert forecast.shape == (6, 3) and np.isfinite(forecast).all(), answer
