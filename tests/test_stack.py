"""The compose stack for real, with podman: what ``make stack-test`` runs after the unit suite
(skipped in it: ``RNNOPS_STACK_TEST=1`` turns it on; it needs the images of ``make images``).

1. the images: the serving image has no torch, the training image has torch's CPU build, all
   three end as a non-root user and keep their HEALTHCHECK;
2. ``podman-compose`` on the real ``docker-compose.yml`` (+ ``docker-compose.ci.yml``: local
   stand-ins for the two third-party images): PostgreSQL, Redis, the MLflow server on PostgreSQL
   and the serving container, each started once what it depends on is healthy, ports on
   127.0.0.1 only; serving is up but not ready while nothing is registered;
3. on the host (the project's venv), against the containerised server: train a tiny char model
   through docker/pipeline.sh and a tiny forecaster, export, register, promote; the rows are in
   the PostgreSQL container, the artifacts in the MLflow container's volume;
4. the serving container picks both champions up by itself, passes its healthcheck, answers
   /generate, /complete and /forecast, and keeps forecast sessions in the Redis container;
5. the training image runs a job against the server over the compose network;
6. the BentoML path: ``bentoml build`` + ``bentoml containerize --backend podman`` on the same
   local base; that image serves the same models (same seeded text, same forecast);
7. ``podman-compose down`` leaves no container, volume or published port behind.

Timings (container start-ups, time to pick up a champion, the Bento build) go to
``$RNNOPS_STACK_REPORT`` (JSON) and are printed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = os.environ.get("RNNOPS_STACK_PROJECT", "rnnops-ci")
TAG = os.environ.get("RNNOPS_TAG", "latest")
BASE_IMAGE = os.environ.get("RNNOPS_BASE_IMAGE", "localhost/rnnops-python:3.11-bookworm")
COMPOSE_FILES = ["-f", "docker-compose.yml", "-f", "docker-compose.ci.yml"]
TIMINGS: dict[str, float | str] = {}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("RNNOPS_STACK_TEST"),
        reason="the compose stack test runs under `make stack-test` (RNNOPS_STACK_TEST=1)",
    ),
]


# ---------------------------------------------------------------- helpers


def run(
    cmd: list[str], *, env: dict | None = None, timeout: float = 600, check: bool = True, cwd: Path = REPO
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}", pytrace=False
        )
    return proc


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return run(["podman", *args], check=check, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http(method: str, url: str, body: dict | None = None, timeout: float = 60) -> tuple[int, str, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("content-type", ""), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read().decode()


def sse_text(body: str) -> str:
    return "".join(
        json.loads(d)["text"] for e, d in re.findall(r"^event: (\w+)\ndata: (.*)$", body, re.M) if e == "chunk"
    )


class Stack:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.mlflow_port = free_port()
        self.serving_port = free_port()
        self.mlflow = f"http://127.0.0.1:{self.mlflow_port}"
        self.serving = f"http://127.0.0.1:{self.serving_port}"
        # what compose interpolates: free loopback ports, a quick alias poll, a password of our own
        self.env = {
            **os.environ,
            "RNNOPS_PORT": str(self.serving_port),
            "RNNOPS_MLFLOW_PORT": str(self.mlflow_port),
            "RNNOPS_POLL_SECONDS": "2",
            "POSTGRES_PASSWORD": "ci-" + os.urandom(6).hex(),
            "RNNOPS_TAG": TAG,
        }

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return run(["podman-compose", "-p", PROJECT, *COMPOSE_FILES, *args], env=self.env, timeout=timeout, check=check)

    def container(self, service: str) -> str:
        return f"{PROJECT}_{service}_1"

    def logs(self, service: str) -> str:
        return podman("logs", "--tail", "60", self.container(service), check=False).stdout[-4000:]

    def state(self, service: str) -> str:
        return podman("inspect", "--format", "{{.State.Status}}", self.container(service), check=False).stdout.strip()

    def healthy(self, service: str) -> bool:
        """Run the container's own healthcheck (the compose file's test) once: True when it passes."""
        return podman("healthcheck", "run", self.container(service), check=False, timeout=60).returncode == 0

    def wait_healthy(self, service: str, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.healthy(service):
                return time.monotonic() - start
            state = self.state(service)
            if state not in ("running", "created", "configured", "initialized"):
                pytest.fail(f"{service} is {state!r} before it turned healthy\n{self.logs(service)}", pytrace=False)
            time.sleep(1)
        pytest.fail(f"{service} not healthy after {timeout:.0f} s\n{self.logs(service)}", pytrace=False)

    def up(self, *services: str) -> float:
        """Start services and return the time `up` took. Debian's podman-compose 1.0.3 ignores
        health conditions, profiles and --no-deps: the order is kept here (each `up` once what it
        depends on is healthy; running dependencies are left as they are), and mlflow's optional
        dependency minio-init (profile s3) is created and exits at once without MinIO."""
        start = time.monotonic()
        self.compose("up", "-d", "--no-build", "--no-deps", *services)
        return time.monotonic() - start

    def client_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        return {
            **env,
            "MLFLOW_TRACKING_URI": self.mlflow,
            "RNNOPS_CACHE": str(self.tmp / "cache"),
            "RNNOPS_CHECKPOINTS": str(self.tmp / "checkpoints"),
            "BENTOML_HOME": str(self.tmp / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "true",
            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        }

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=io.podman.compose.project={PROJECT}"
        return {
            "containers": podman("ps", "-a", "--filter", label, "--format", "{{.Names}}").stdout.split(),
            "volumes": [
                v for v in podman("volume", "ls", "--format", "{{.Name}}").stdout.split() if v.startswith(PROJECT + "_")
            ],
        }

    def down(self) -> None:
        self.compose("down", "-v", "-t", "20", check=False, timeout=300)
        for v in self.leftovers()["volumes"]:  # podman-compose 1.0.3 `down -v` leaves named volumes
            podman("volume", "rm", "-f", v, check=False)
        podman("network", "rm", "-f", f"{PROJECT}_default", check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    for tool in ("podman", "podman-compose"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: run `make stack-test` (it installs it)", pytrace=False)
    for image in (f"rnnops-serving:{TAG}", f"rnnops-mlflow:{TAG}", f"rnnops-training:{TAG}"):
        if podman("image", "exists", image, check=False).returncode != 0:
            pytest.fail(f"image {image} not built: run `make images`", pytrace=False)
    s = Stack(tmp_path_factory.mktemp("stack"))
    s.down()  # what an interrupted earlier run left
    start = time.monotonic()
    try:
        TIMINGS["up postgres+redis (s)"] = round(s.up("postgres", "redis"), 1)
        TIMINGS["postgres healthy after (s)"] = round(s.wait_healthy("postgres", 120), 1)
        TIMINGS["redis healthy after (s)"] = round(s.wait_healthy("redis", 60), 1)
        TIMINGS["up mlflow (s)"] = round(s.up("mlflow"), 1)
        TIMINGS["mlflow healthy after (s)"] = round(s.wait_healthy("mlflow", 300), 1)  # migrations on first start
        TIMINGS["up serving (s)"] = round(s.up("serving"), 1)
        TIMINGS["serving live after (s)"] = round(wait_live(s.serving, 180, lambda: s.logs("serving")), 1)
        TIMINGS["stack up, total (s)"] = round(time.monotonic() - start, 1)
        yield s
    finally:
        s.down()
        report()


def wait_live(url: str, timeout: float, logs) -> float:
    """Seconds until ``url``/livez answers 200 (the server is up, whether or not models are loaded)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        with contextlib.suppress(urllib.error.URLError, OSError):
            if http("GET", url + "/livez", timeout=5)[0] == 200:
                return time.monotonic() - start
        time.sleep(0.5)
    pytest.fail(f"{url} never answered /livez\n{logs()}", pytrace=False)


def report() -> None:
    path = os.environ.get("RNNOPS_STACK_REPORT")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(TIMINGS, indent=1) + "\n")


def rnnops(stack: Stack, *args: str, timeout: float = 900) -> str:
    proc = run(
        [sys.executable, "-c", "from rnnops.cli import main; main()", *args],
        env=stack.client_env(),
        cwd=stack.tmp,
        timeout=timeout,
    )
    return proc.stdout


def run_id_of(stdout: str) -> str:
    m = re.search(r"^run id: (\w+)$", stdout, re.M)
    assert m, stdout[-2000:]
    return m.group(1)


# ---------------------------------------------------------------- 1. the images


def test_serving_image_has_no_torch_and_imports_the_service():
    image = f"rnnops-serving:{TAG}"
    proc = podman("run", "--rm", "--network", "none", image, "python", "-c", "import torch", check=False)
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr, proc.stdout + proc.stderr
    proc = podman(
        "run",
        "--rm",
        "--network",
        "none",
        image,
        "python",
        "-c",
        "import onnxruntime, bentoml, rnnops.serving.service; print(onnxruntime.__version__)",
    )
    assert re.fullmatch(r"1\.\d+\.\d+", proc.stdout.strip()), proc.stdout


def test_training_image_has_torch_cpu_build():
    proc = podman(
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "python",
        f"rnnops-training:{TAG}",
        "-c",
        "import torch, onnx, rnnops.training.jobs; print(torch.__version__, torch.version.cuda)",
    )
    assert proc.stdout.split() == ["2.13.0+cpu", "None"], proc.stdout


@pytest.mark.parametrize(
    "name, port_path", [("serving", ":3000/readyz"), ("mlflow", ":5000/health"), ("training", None)]
)
def test_images_are_non_root_and_keep_their_healthcheck(name, port_path):
    info = json.loads(podman("image", "inspect", f"rnnops-{name}:{TAG}").stdout)[0]
    user = info["Config"].get("User", "")
    assert user and user not in ("root", "0"), f"rnnops-{name} runs as {user!r}"
    health = info.get("Healthcheck") or info["Config"].get("Healthcheck")
    if port_path:
        assert health and port_path in " ".join(health["Test"]), health  # docker format keeps HEALTHCHECK
    size_mb = info["Size"] / 1e6
    TIMINGS[f"image rnnops-{name} (MB)"] = round(size_mb)
    if name == "serving":
        assert size_mb <= 700, f"the serving image is {size_mb:.0f} MB (goal: 700)"


# ---------------------------------------------------------------- 2. the stack


def test_ports_are_published_on_loopback_only(stack):
    for service, port in (("mlflow", stack.mlflow_port), ("serving", stack.serving_port)):
        ports = json.loads(
            podman("inspect", "--format", "{{json .HostConfig.PortBindings}}", stack.container(service)).stdout
        )
        hosts = {b["HostIp"] for bindings in ports.values() for b in bindings or []}
        assert hosts == {"127.0.0.1"}, (service, ports)
        assert port_open(port), (service, port)
    for service in ("postgres", "redis"):
        ports = (
            json.loads(
                podman("inspect", "--format", "{{json .HostConfig.PortBindings}}", stack.container(service)).stdout
            )
            or {}
        )
        published = {k: v for k, v in ports.items() if v}  # an EXPOSEd port without a binding shows as null
        assert not published, f"{service} publishes {published}"


def test_mlflow_server_is_on_postgres(stack):
    status, _, body = http("GET", stack.mlflow + "/health")
    assert status == 200 and body.strip() == "OK", body
    tables = podman(
        "exec",
        stack.container("postgres"),
        "psql",
        "-U",
        "mlflow",
        "-d",
        "mlflow",
        "-tAc",
        "SELECT count(*) FROM information_schema.tables WHERE table_name IN "
        "('experiments', 'runs', 'registered_models', 'model_versions')",
    ).stdout.strip()
    assert tables == "4", tables  # MLflow's migrations ran on the PostgreSQL container


def test_serving_is_up_but_not_ready_before_a_champion(stack):
    status, _, _ = http("GET", stack.serving + "/readyz")
    assert status == 503
    assert not stack.healthy("serving")


# ---------------------------------------------------------------- 3. train, export, register, promote


@pytest.fixture(scope="module")
def champions(stack):
    """Train on the host against the containerised server: the char model through
    docker/pipeline.sh (what the compose `train` job runs), the forecaster step by step."""
    small = stack.tmp / "small.txt"
    words = ["the quick brown fox", "jumps over", "the lazy dog", "and runs away"]
    small.write_text("\n".join(f"{words[i % 4]} {i % 7}" for i in range(400)), encoding="utf-8")
    import numpy as np
    import pandas as pd

    t = np.arange(600)
    csv = stack.tmp / "small.csv"
    pd.DataFrame(
        {
            "date": pd.date_range("2024-01-01", periods=600, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
            "a": np.sin(t / 8.0),
            "b": np.cos(t / 13.0) + 0.001 * t,
            "OT": np.sin(t / 8.0 + 1.0) * 2 + 5,
        }
    ).to_csv(csv, index=False)
    start = time.monotonic()
    proc = run(
        ["bash", str(REPO / "docker" / "pipeline.sh"), "char", "--preset", "tiny", "--data", str(small)],
        env=stack.client_env(),
        cwd=stack.tmp,
        timeout=900,
    )
    char_run = run_id_of(proc.stdout)
    fc_run = run_id_of(
        rnnops(stack, "train", "forecast", "--preset", "tiny", "--data", str(csv), "--lookback", "24", "--horizon", "6")
    )
    rnnops(stack, "export", fc_run, "--register", "--promote")
    promoted = time.monotonic()
    TIMINGS["host: train+export+register+promote both (s)"] = round(promoted - start, 1)
    return {"char-rnn": char_run, "forecaster": fc_run, "promoted_at": promoted, "csv": csv}


def test_champions_are_registered_on_the_server(stack, champions):
    from mlflow import MlflowClient

    client = MlflowClient(stack.mlflow, registry_uri=stack.mlflow)
    for name in ("char-rnn", "forecaster"):
        v = client.get_model_version_by_alias(name, "champion")
        assert v.run_id == champions[name], (name, v.run_id)
        # the run is a row in the PostgreSQL container, its artifacts in the MLflow container's volume
        status = podman(
            "exec",
            stack.container("postgres"),
            "psql",
            "-U",
            "mlflow",
            "-d",
            "mlflow",
            "-tAc",
            f"SELECT status FROM runs WHERE run_uuid = '{v.run_id}'",
        ).stdout.strip()
        assert status == "FINISHED"
        files = podman(
            "exec", stack.container("mlflow"), "find", "/mlartifacts", "-path", f"*{v.run_id}*", "-name", "*.onnx"
        ).stdout.split()
        assert files, f"no ONNX of run {v.run_id} in the mlflow container's /mlartifacts"


# ---------------------------------------------------------------- 4. serving picks them up


@pytest.fixture(scope="module")
def ready(stack, champions):
    waited = stack.wait_healthy("serving", 240)
    TIMINGS["serving healthy after the promotion (s)"] = round(time.monotonic() - champions["promoted_at"], 1)
    TIMINGS["serving healthcheck polled for (s)"] = round(waited, 1)
    return stack


def test_serving_loads_the_champions_and_passes_its_healthcheck(ready, champions):
    from mlflow import MlflowClient

    client = MlflowClient(ready.mlflow, registry_uri=ready.mlflow)
    status, _, body = http("GET", ready.serving + "/models")
    assert status == 200, body
    served = {m["name"]: m for m in json.loads(body)["models"]}
    for name in ("char-rnn", "forecaster"):
        v = client.get_model_version_by_alias(name, "champion")
        assert str(served[name]["version"]) == str(v.version), served[name]
        assert served[name]["sha256"] == v.tags["rnnops.onnx_sha256"], served[name]
    assert ready.healthy("serving")


def test_serving_answers_generate_complete_and_forecast(ready, champions):
    status, ctype, body = http(
        "POST", ready.serving + "/generate", {"model": "char-rnn", "prompt": "the ", "max_chars": 30, "seed": 7}
    )
    assert status == 200 and "text/event-stream" in ctype, body[-500:]
    assert re.findall(r"^event: (\w+)$", body, re.M)[-1] == "done", body[-500:]
    assert len(sse_text(body)) == 30, body[-500:]
    status, _, body = http(
        "POST", ready.serving + "/complete", {"model": "char-rnn", "prompt": "the ", "max_chars": 30, "seed": 7}
    )
    assert status == 200 and json.loads(body)["text"] == sse_text(_generate(ready.serving)), body
    import numpy as np

    forecast = np.asarray(_forecast(ready.serving, champions["csv"]), dtype=float)
    assert forecast.shape == (6, 3) and np.isfinite(forecast).all()


def _generate(url: str) -> str:
    status, _, body = http(
        "POST", url + "/generate", {"model": "char-rnn", "prompt": "the ", "max_chars": 30, "seed": 7}
    )
    assert status == 200, body
    return body


def _forecast(url: str, csv: Path) -> list:
    import pandas as pd

    context = pd.read_csv(csv).drop(columns=["date"]).to_numpy(dtype=float)[-24:].tolist()
    status, _, body = http("POST", url + "/forecast", {"model": "forecaster", "context": context})
    assert status == 200, body
    return json.loads(body)["forecast"]


def test_forecast_sessions_live_in_the_redis_container(ready, champions):
    status, _, body = http("POST", ready.serving + "/sessions", {"model": "forecaster"})
    assert status == 201, body
    sid = json.loads(body)["session_id"]
    keys = podman("exec", ready.container("redis"), "redis-cli", "--scan", "--pattern", "rnnops:session:*").stdout
    assert f"rnnops:session:{sid}" in keys.split(), keys
    status, _, body = http("DELETE", f"{ready.serving}/sessions/{sid}")
    assert status == 200, body
    keys = podman("exec", ready.container("redis"), "redis-cli", "--scan", "--pattern", "rnnops:session:*").stdout
    assert f"rnnops:session:{sid}" not in keys.split(), keys


# ---------------------------------------------------------------- 5. the training image


def test_training_image_runs_a_job_against_the_server(ready):
    """`rnnops train sine` in the training container, on the compose network, logs to mlflow:5000."""
    start = time.monotonic()
    proc = ready.compose(
        "run", "--rm", "--no-deps", "--entrypoint", "rnnops", "train", "train", "sine", "--steps", "30", timeout=900
    )
    TIMINGS["training container: train sine (s)"] = round(time.monotonic() - start, 1)
    run_id = run_id_of(proc.stdout)
    from mlflow import MlflowClient

    assert MlflowClient(ready.mlflow).get_run(run_id).info.status == "FINISHED"


# ---------------------------------------------------------------- 6. the Bento


def test_bento_containerized_with_podman_serves_the_same_model(ready, champions, request):
    env = ready.client_env()
    yaml = pytest.importorskip("yaml")
    start = time.monotonic()
    dist = ready.tmp / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)], env=env)
    for ref in ("char-rnn@champion", "forecaster@champion"):
        rnnops(ready, "registry", "pull", ref)
    # the repo's bentofile with the local base image (no registry here); the wheel from dist/.
    # `bentoml build` refuses a context with a hidden folder in its path (ready.tmp is under
    # podman's ~/.cache folder), so the context is a folder of its own in /var/tmp.
    ctx = Path(tempfile.mkdtemp(prefix="rnnops-bento-ctx-", dir="/var/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(ctx, ignore_errors=True))
    bento = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    bento["docker"]["base_image"] = BASE_IMAGE
    (ctx / "dist").mkdir()
    for whl in dist.glob("rnnops-*.whl"):
        shutil.copy(whl, ctx / "dist" / whl.name)
    (ctx / "bentofile.yaml").write_text(yaml.safe_dump(bento, sort_keys=False))
    bentoml = str(Path(sys.executable).parent / "bentoml")
    out = run([bentoml, "build", "--output", "tag", str(ctx)], env=env, cwd=ctx).stdout
    tag = re.search(r"(rnnops:\w+)", out.splitlines()[-1]).group(1)
    image = f"localhost/rnnops-bento:{tag.split(':')[1]}"
    # pip and uv in BentoML's generated Dockerfile trust this machine's CA file (mounted over the
    # image's own bundle during the RUN steps only)
    ca = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
    opts = (
        [
            "--opt",
            f"volume={ca}:/etc/ssl/certs/ca-certificates.crt:ro",
            "--opt",
            "env=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
            "--opt",
            "env=PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
        ]
        if Path(ca).is_file()
        else []
    )
    run([bentoml, "containerize", "--backend", "podman", tag, "-t", image, *opts], env=env, timeout=1500)
    TIMINGS["bento: wheel+pull+build+containerize (s)"] = round(time.monotonic() - start, 1)
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    TIMINGS["image rnnops-bento (MB)"] = round(info["Size"] / 1e6)
    port = free_port()
    name = f"{PROJECT}-bento"
    podman("rm", "-f", name, check=False)
    t = time.monotonic()
    podman("run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:3000", image)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            with contextlib.suppress(urllib.error.URLError, OSError):
                if http("GET", url + "/readyz", timeout=5)[0] == 200:
                    break
            if time.monotonic() - t > 240:
                pytest.fail(
                    "the Bento container never turned ready\n"
                    + podman("logs", "--tail", "60", name, check=False).stdout,
                    pytrace=False,
                )
            time.sleep(1)
        TIMINGS["bento container ready after (s)"] = round(time.monotonic() - t, 1)
        # the same models: the same seeded text and the same forecast as the compose service
        assert sse_text(_generate(url)) == sse_text(_generate(ready.serving))
        import numpy as np

        np.testing.assert_allclose(
            _forecast(url, champions["csv"]), _forecast(ready.serving, champions["csv"]), rtol=1e-5, atol=1e-6
        )
    finally:
        podman("rm", "-f", "-t", "10", name, check=False)
        podman("rmi", "-f", image, check=False)  # 1.3 GB a run: a test leaves no image behind


# ---------------------------------------------------------------- 7. down


def test_compose_down_leaves_nothing_running(stack):
    t = time.monotonic()
    stack.compose("down", "-v", "-t", "20", timeout=300)
    TIMINGS["compose down (s)"] = round(time.monotonic() - t, 1)
    assert stack.leftovers()["containers"] == []
    stack.down()  # volumes, network
    assert stack.leftovers() == {"containers": [], "volumes": []}
    assert not port_open(stack.mlflow_port) and not port_open(stack.serving_port)
