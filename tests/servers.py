"""Real servers for integration tests: a throwaway PostgreSQL cluster and an ``mlflow server``
backed by it, both on loopback, both stopped at the end.

Use the fixtures (``from servers import postgres, mlflow_server``) or the context managers
(``with start_postgres(tmp) as pg, start_mlflow_server(pg, tmp) as server: ...``).

- PostgreSQL comes from Debian's package (``bash scripts/install_postgres.sh``): ``initdb`` and
  ``postgres`` from ``/usr/lib/postgresql/*/bin``. The server refuses to run as root, so as root
  (CI) the cluster is created and run as the ``postgres`` OS user that the package creates, in a
  directory of its own under the system temp dir (pytest's ``/tmp/pytest-of-root`` is 0700).
  Trust authentication, loopback only, a free port, the unix socket in the cluster's directory,
  fsync off: a test database, not a durable one.
- ``mlflow server --backend-store-uri postgresql://... --serve-artifacts --artifacts-destination
  DIR --host 127.0.0.1 --port FREE``, started in its own process group and polled on ``/health``.
  Needs the ``psycopg`` driver (``psycopg[binary]``, PostgreSQL's Python driver) installed.

When a prerequisite is missing the fixtures skip with the reason, except under ``CI`` (the
variable CI sets), where they fail: the real-server path must not turn green by being skipped.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PG_USER = "rnnops"  # the database superuser initdb creates (trust auth on loopback)


def missing(reason: str):
    """Skip a test whose prerequisite is missing, but fail under CI."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: CI has what this test needs, so it must run there)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None, log: Path | None, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail early with the log tail if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s ({last})\n{tail(log)}")


def tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.is_file():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last lines of {log} ---\n" + "\n".join(text)


def descendants(pid: int) -> list:
    """Child processes of ``pid``, recursively (psutil processes; [] without psutil)."""
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:
        return []


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0, group: bool = False) -> None:
    """Signal ``proc`` (or its whole process group), wait, then SIGKILL what is left, including
    children that moved to process groups of their own (BentoML's workers do)."""
    children = descendants(proc.pid)
    if proc.poll() is None:

        def send(s: int) -> None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if group:
                    os.killpg(proc.pid, s)
                else:
                    proc.send_signal(s)

        send(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            proc.wait(10)
    for child in children:  # psutil checks identity (pid + start time): never a reused pid
        with contextlib.suppress(Exception):
            child.wait(5)
        with contextlib.suppress(Exception):
            child.kill()


# ---------------------------------------------------------------- PostgreSQL


def sessions_open(client, model: str, **kw) -> float:
    """A server's ``rnnops_sessions_open`` gauge for ``model`` from ``GET /metrics`` (0 if not set yet).
    Reading it touches no session, so a test can wait on it for an idle TTL to pass."""
    for line in client.get("/metrics", **kw).text.splitlines():
        if line.startswith("rnnops_sessions_open") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL server bin dir (``/usr/lib/postgresql/<major>/bin``)."""
    candidates = [
        p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists() and (p / "postgres").exists()
    ]
    if candidates:
        return max(candidates, key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))
    initdb = shutil.which("initdb")
    return Path(os.path.realpath(initdb)).parent if initdb else None


@dataclass
class Postgres:
    bindir: Path
    root: Path  # the cluster's directory: data/, sock/, postgres.log
    port: int
    proc: subprocess.Popen | None = None
    user: str | None = None  # OS user the server runs as (None: the current user)

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def uri(self, database: str = "mlflow") -> str:
        """SQLAlchemy URI for MLflow's ``--backend-store-uri`` (psycopg 3 driver, named explicitly:
        SQLAlchemy 2.0 defaults ``postgresql://`` to psycopg2, 2.1 to psycopg)."""
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def client(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a client tool (psql, createdb, pg_isready) over TCP as the database superuser."""
        return subprocess.run(
            [str(self.bindir / tool), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def query(self, sql: str, database: str = "mlflow") -> list[list[str]]:
        """Rows of ``sql`` as lists of strings (psql unaligned, tuples only)."""
        out = self.client("psql", "-d", database, "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def createdb(self, name: str) -> None:
        self.client("createdb", name)


def _run_as(user: str | None) -> dict:
    """``subprocess`` arguments that run a child as ``user`` (postgres refuses to run as root)."""
    if user is None:
        return {}
    pw = pwd.getpwnam(user)
    return {
        "user": pw.pw_uid,
        "group": pw.pw_gid,
        "extra_groups": [],
        "env": {**os.environ, "HOME": pw.pw_dir, "USER": user},
    }


@contextlib.contextmanager
def start_postgres(base: Path | None = None, timeout: float = 60.0) -> Iterator[Postgres]:
    """initdb a fresh cluster, start ``postgres`` on a free loopback port, create ``mlflow``."""
    bindir = postgres_bindir()
    if bindir is None:
        missing("PostgreSQL server binaries not found (run `bash scripts/install_postgres.sh`)")
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing(
                "running as root but there is no `postgres` OS user to run the server as (run `bash scripts/install_postgres.sh`)"
            )
        user = "postgres"
    as_user = _run_as(user)

    def own(path: Path) -> Path:
        if user:
            pw = pwd.getpwnam(user)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        return path

    # Under the system temp dir, not pytest's tmp_path (0700 for root): the postgres user must reach it.
    root = own(Path(tempfile.mkdtemp(prefix="rnnops-pg-", dir=base)))
    pg = Postgres(bindir=bindir, root=root, port=free_port(), user=user)
    cleanup = lambda: pg.proc and stop(pg.proc, signal.SIGINT)  # noqa: E731 (SIGINT: "fast" shutdown)
    atexit.register(cleanup)
    try:
        sock = root / "sock"
        sock.mkdir()
        own(sock)
        init = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(root / "data"),
                "-U",
                PG_USER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=root,
            **as_user,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}")
        pg.log.touch()
        own(pg.log)
        with open(pg.log, "ab") as log:
            pg.proc = subprocess.Popen(
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(root / "data"),
                    "-p",
                    str(pg.port),
                    "-k",
                    str(sock),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=60",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=root,
                **as_user,
            )
        deadline = time.monotonic() + timeout
        while pg.client("pg_isready", "-d", "postgres", check=False).returncode != 0:
            if pg.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {pg.proc.returncode}\n{tail(pg.log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres did not accept connections within {timeout:.0f}s\n{tail(pg.log)}")
            time.sleep(0.2)
        pg.createdb("mlflow")
        yield pg
    finally:
        cleanup()
        atexit.unregister(cleanup)
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- MLflow server


@dataclass
class MlflowServer:
    url: str
    artifacts: Path
    log: Path
    proc: subprocess.Popen
    backend_uri: str
    env: dict = field(default_factory=dict)  # what a client needs: MLFLOW_TRACKING_URI


@contextlib.contextmanager
def start_mlflow_server(pg: Postgres, base: Path, timeout: float = 240.0) -> Iterator[MlflowServer]:
    """``mlflow server`` on the Postgres backend with proxied artifacts, until ``/health`` answers.

    The first start creates MLflow's tables in Postgres (migrations): that takes a while on a
    small machine, hence the generous timeout.
    """
    try:
        import psycopg  # noqa: F401  (the driver named in the backend URI)
    except ImportError:
        missing("psycopg is not installed (pip install 'psycopg[binary]'): mlflow server cannot reach PostgreSQL")
    base.mkdir(parents=True, exist_ok=True)
    artifacts = base / "mlartifacts"
    artifacts.mkdir(exist_ok=True)
    port = free_port()
    log = base / "mlflow-server.log"
    backend = pg.uri("mlflow")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    # No server-side job runner (GenAI scorers): it forks eight more Python processes.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=base,
            env=env,
            start_new_session=True,
        )
    cleanup = lambda: stop(proc, signal.SIGTERM, group=True)  # noqa: E731 (uvicorn + its worker)
    atexit.register(cleanup)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc, log, timeout)
        yield MlflowServer(
            url=url, artifacts=artifacts, log=log, proc=proc, backend_uri=backend, env={"MLFLOW_TRACKING_URI": url}
        )
    finally:
        cleanup()
        atexit.unregister(cleanup)


@dataclass
class Redis:
    url: str  # redis://127.0.0.1:PORT/0
    port: int
    proc: subprocess.Popen
    dir: Path


@contextlib.contextmanager
def start_redis(base: Path, port: int | None = None, timeout: float = 20.0) -> Iterator[Redis]:
    """Debian's ``redis-server`` (``bash scripts/install_redis.sh``) on a free loopback port, its
    data in ``base``, no persistence; stopped at the end."""
    exe = shutil.which("redis-server")
    if exe is None:
        missing("redis-server is not installed (bash scripts/install_redis.sh)")
    base.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = base / "redis.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(base),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=base,
            start_new_session=True,
        )
    cleanup = lambda: stop(proc, signal.SIGTERM)  # noqa: E731
    atexit.register(cleanup)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}\n{tail(log)}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                c.sendall(b"PING\r\n")
                if c.recv(64).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server did not answer within {timeout:.0f}s\n{tail(log)}")
            time.sleep(0.1)
        yield Redis(url=f"redis://127.0.0.1:{port}/0", port=port, proc=proc, dir=base)
    finally:
        cleanup()
        atexit.unregister(cleanup)


@contextlib.contextmanager
def serve_bentoml(tmp: Path, env: dict, name: str = "server", timeout: float = 120.0):
    """``bentoml serve`` of the rnnops service on a free loopback port, with ``env`` on top of this
    process's environment (tiny models, 1 ORT thread, no alias polling unless asked); yields
    ``(process, base URL, log)`` once ``/readyz`` answers, and stops the whole tree after."""
    port = free_port()
    log = tmp / f"{name}.log"
    full = {
        **os.environ,
        "BENTOML_HOME": str(tmp / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "RNNOPS_POLL_SECONDS": "0",
        "RNNOPS_THREADS": "1",
        "RNNOPS_MAX_CHARS": "1000000",
        **env,
    }
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bentoml",
                "serve",
                "rnnops.serving.service:RnnopsService",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tmp,
            start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, log, timeout)
        yield proc, f"http://127.0.0.1:{port}", log
    finally:
        stop(proc, signal.SIGTERM, group=True)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with start_postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def mlflow_server(postgres: Postgres, tmp_path_factory) -> Iterator[MlflowServer]:
    with start_mlflow_server(postgres, tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server
