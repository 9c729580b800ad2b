"""Training faults, with real processes: a run killed with SIGKILL resumes to the same bits as a run
never stopped, and a run whose MLflow tracking server goes away fails in one line, keeps its
checkpoint and finishes with ``--resume`` (same run id) once the server is back.

Each job is small (a tiny model on a generated text or CSV, a checkpoint every 10 steps) and
runs in its own ``rnnops train`` process, with its own sqlite MLflow store and checkpoint folder.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from servers import free_port, stop, tail, wait_http  # noqa: E402

CLI = [sys.executable, "-c", "from rnnops.cli import main; main()"]
STEPS = 60


def _env(root: Path, tracking: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "RNNOPS_DEBUG"}
    env.update(
        MLFLOW_TRACKING_URI=tracking or f"sqlite:///{root / 'mlflow.db'}",
        RNNOPS_CACHE=str(root / "cache"),
        RNNOPS_CHECKPOINTS=str(root / "checkpoints"),
        TQDM_DISABLE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _start(args: list[str], root: Path, env: dict, name: str) -> tuple[subprocess.Popen, Path]:
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [*CLI, *args], env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return proc, log


def _run(args: list[str], root: Path, env: dict, name: str, timeout: float = 300) -> tuple[int, str]:
    proc, log = _start(args, root, env, name)
    try:
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, log.read_text(errors="replace")


def _run_id(log: Path) -> str:
    m = re.search(r"MLflow run ([0-9a-f]{32})", log.read_text(errors="replace"))
    assert m, tail(log)
    return m.group(1)


def _checkpoint_at_least(root: Path, step: int, seen: dict) -> bool:
    """A checkpoint under ``root`` is at ``step`` or later (read only when it changed)."""
    for path in root.glob("*/trainer.pt"):
        try:
            stamp = path.stat().st_mtime_ns
            if seen.get("stamp") != stamp:
                seen.update(stamp=stamp, step=_checkpoint_step(path.parent))
        except Exception:  # replaced while read: look again
            return False
        return seen["step"] >= step
    return False


def _checkpoint_step(folder: Path) -> int:
    return torch.load(folder / "trainer.pt", weights_only=True)["trainer"]["step"]


def _final_state(root: Path, run_id: str, monkeypatch) -> dict:
    """What a run ends with: the last and best weights and AdamW's state (checkpoint), the
    logged model's weights, its metrics and their history."""
    import mlflow
    from safetensors.torch import load_file

    from rnnops.training.logged_model import load_model

    folder = root / "checkpoints" / run_id
    saved = torch.load(folder / "trainer.pt", weights_only=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    logged = load_model(run_id).model.state_dict()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(run_id)
    history = {}
    for key in ("train_loss", "lr", "val_loss", "val_mse", "val_mae"):
        for m in client.get_metric_history(run_id, key):
            history.setdefault((key, m.step), set()).add(m.value)
    return {
        "last": load_file(str(folder / "model.safetensors")),
        "best": load_file(str(folder / "best.safetensors")),
        "logged": logged,
        "optimizer": saved["optimizer"],
        "trainer": saved["trainer"],
        "status": run.info.status,
        "metrics": {
            k: v
            for k, v in run.data.metrics.items()  # less what measures time or the machine
            if not (k.endswith("_per_s") or k == "train_seconds" or k.startswith("system/"))
        },
        "stop": run.data.tags.get("rnnops.stop_reason"),
        "history": history,
    }


def _assert_same_tensors(a, b, where: str) -> int:
    """Every tensor in ``a`` and ``b`` (nested dicts / lists) bitwise equal; returns the count."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: max abs diff {(a.double() - b.double()).abs().max().item():.3g}"
        return 1
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        return sum(_assert_same_tensors(a[k], b[k], f"{where}.{k}") for k in a)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        return sum(_assert_same_tensors(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    assert a == b, f"{where}: {a!r} != {b!r}"
    return 0


def _char_job(small_text: Path) -> list[str]:
    # dropout before the head: the masks come from torch's global generator, which must resume too
    return [
        "train",
        "char",
        "--data",
        str(small_text),
        "--preset",
        "tiny",
        "--steps",
        str(STEPS),
        "--eval-every",
        "5",
        "--dropout",
        "0.2",
        "--time-budget",
        "0",
        "--patience",
        "1000",
        "--seed",
        "7",
    ]


def _forecast_job(small_csv: Path) -> list[str]:
    return [
        "train",
        "forecast",
        "--data",
        str(small_csv),
        "--preset",
        "tiny",
        "--lookback",
        "24",
        "--horizon",
        "6",
        "--steps",
        str(STEPS),
        "--eval-every",
        "5",
        "--dropout",
        "0.3",
        "--time-budget",
        "0",
        "--patience",
        "1000",
        "--seed",
        "7",
    ]


@pytest.mark.parametrize(
    "task,sig",
    [("char", signal.SIGKILL), ("forecast", signal.SIGKILL), ("char", signal.SIGTERM)],
    ids=["char-sigkill", "forecast-sigkill", "char-sigterm"],
)
def test_killed_run_resumes_to_the_same_bits(task, sig, tmp_path, small_text, small_csv, monkeypatch):
    """SIGKILL loses the steps since the last checkpoint; SIGTERM (``docker stop``) saves one where
    it lands and exits 143. Either way ``--resume`` ends bitwise where the uninterrupted run does."""
    args = _char_job(small_text) if task == "char" else _forecast_job(small_csv)
    whole, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    t0 = time.monotonic()
    ref, ref_log = _start(args, whole, _env(whole), "train")  # runs beside the one we kill
    proc, log = _start(args, killed, _env(killed), "train")
    try:
        deadline = time.monotonic() + 300
        seen: dict = {}
        while not _checkpoint_at_least(killed / "checkpoints", STEPS // 3, seen):  # a few evaluations in
            assert proc.poll() is None, f"training ended ({proc.returncode}) before step {STEPS // 3}\n{tail(log)}"
            assert time.monotonic() < deadline, tail(log)
            time.sleep(0.01)
        proc.send_signal(sig)  # lands in the steps (or the evaluation) after that checkpoint
        proc.wait(30)
        run_id = _run_id(log)
        if sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL
        else:
            assert proc.returncode == 143, tail(log)
            assert "terminated (SIGTERM): checkpoint saved" in log.read_text(), tail(log)
            import mlflow

            run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{killed / 'mlflow.db'}").get_run(run_id)
            assert run.info.status == "KILLED"
        at = _checkpoint_step(killed / "checkpoints" / run_id)
        assert STEPS // 3 <= at < STEPS, f"killed at checkpoint step {at}: not mid-run\n{tail(log)}"
        rc, out = _run(["train", task, "--resume", run_id], killed, _env(killed), "resume")
        assert rc == 0, out[-3000:]
        assert f"resuming at step {at} of {STEPS}" in out
        assert ref.wait(300) == 0, tail(ref_log)
    finally:
        for p in (ref, proc):
            if p.poll() is None:
                p.kill()
                p.wait()
    seconds = time.monotonic() - t0
    a = _final_state(whole, _run_id(ref_log), monkeypatch)
    b = _final_state(killed, run_id, monkeypatch)
    assert a["status"] == b["status"] == "FINISHED"
    assert a["trainer"]["step"] == b["trainer"]["step"] == STEPS and a["stop"] == b["stop"] == "steps done"
    n = sum(_assert_same_tensors(a[k], b[k], k) for k in ("last", "best", "logged", "optimizer"))
    assert a["trainer"] | {"elapsed": 0} == b["trainer"] | {"elapsed": 0}  # best, best step, early-stopping count
    assert a["metrics"] == b["metrics"]  # exactly: final val/test metrics, baselines, steps
    # every metric logged at every step: the steps logged before the kill and again after it agree
    assert all(len(v) == 1 for v in b["history"].values()), {k: v for k, v in b["history"].items() if len(v) > 1}
    assert a["history"] == b["history"]
    print(f"{task}: killed at checkpoint step {at} of {STEPS}; {n} tensors bitwise equal; {seconds:.1f}s")


# ---------------------------------------------------------------- the tracking server goes away


def _mlflow_server(root: Path, port: int) -> subprocess.Popen:
    """A real ``mlflow server`` (sqlite backend, proxied artifacts) on loopback ``port``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner (it forks eight more processes)
    with open(root / "mlflow-server.log", "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{root / 'server.db'}",
                "--serve-artifacts",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=root,
            env=env,
            start_new_session=True,
        )
    wait_http(f"http://127.0.0.1:{port}/health", proc, root / "mlflow-server.log", 180)
    return proc


@pytest.mark.slow
def test_tracking_server_down_mid_training_keeps_the_checkpoint_and_resume_finishes(tmp_path, small_text):
    import mlflow

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _mlflow_server(tmp_path, port)
    env = _env(tmp_path, url)
    args = [
        "train",
        "char",
        "--data",
        str(small_text),
        "--preset",
        "tiny",
        "--steps",
        "400",
        "--eval-every",
        "10",
        "--time-budget",
        "0",
        "--patience",
        "1000",
        "--seed",
        "3",
    ]
    proc, log = _start(args, tmp_path, env, "train")
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "checkpoints").glob("*/trainer.pt")):
            assert proc.poll() is None, tail(log)
            assert time.monotonic() < deadline, tail(log)
            time.sleep(0.01)
        stop(server, signal.SIGTERM, group=True)
        down = time.monotonic()
        rc = proc.wait(90)
        failed_in = time.monotonic() - down
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop(server, signal.SIGTERM, group=True)
    out = log.read_text(errors="replace")
    run_id = _run_id(log)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert rc == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert len(errors) == 1 and "stopped answering" in errors[0] and f"--resume {run_id}" in errors[0], out[-3000:]
    assert failed_in < 30, f"took {failed_in:.1f}s to give up"
    folder = tmp_path / "checkpoints" / run_id
    at = _checkpoint_step(folder)
    assert 0 < at < 400 and (folder / "model.safetensors").is_file()

    # still down: --resume says so in one line, before any training
    rc, out2 = _run(["train", "char", "--resume", run_id], tmp_path, env, "resume-down", timeout=60)
    assert rc == 2 and "unreachable" in out2 and "Traceback" not in out2, out2[-2000:]
    assert _checkpoint_step(folder) == at

    server = _mlflow_server(tmp_path, port)  # back, same port, same store
    try:
        rc, out3 = _run(["train", "char", "--resume", run_id], tmp_path, env, "resume")
        assert rc == 0, out3[-3000:]
        assert f"resuming at step {at} of 400" in out3
        client = mlflow.MlflowClient(tracking_uri=url)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.metrics["steps"] == 400
        assert run.data.tags["rnnops.model_uri"]
        steps = sorted({m.step for m in client.get_metric_history(run_id, "val_loss")})
        assert steps == list(range(10, 401, 10)), steps  # one run, every evaluation, none skipped
    finally:
        stop(server, signal.SIGTERM, group=True)
    print(f"tracking server down at checkpoint step {at}: failed in {failed_in:.1f}s with: {errors[0]}")
