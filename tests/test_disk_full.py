"""No space left on device, for real: ``rnnops export`` and ``rnnops forecast`` write into a small
tmpfs that this test mounts in a namespace of its own (``unshare --user --map-root-user --mount``,
or ``unshare --mount`` as root where user namespaces are off). Each must fail with one line that
says the disk is full, and leave nothing that looks complete: no ``model.onnx`` / ``export.json``
and no MLflow tags saying exported; no output under its final name and no temporary file.

The tmpfs only exists inside the namespace, so the command that runs there lists what is left
on it (``find``) before the namespace goes away.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from servers import missing

torch = pytest.importorskip("torch")

CLI = [sys.executable, "-c", "from rnnops.cli import main; main()"]


@functools.cache
def _unshare() -> tuple[str, ...]:
    """The unshare prefix that works here: a user + mount namespace, else (root) a mount one."""
    if shutil.which("unshare") is None:
        missing("unshare (util-linux) is not installed")
    with tempfile.TemporaryDirectory() as probe_dir:
        for prefix in (("unshare", "--user", "--map-root-user", "--mount"), ("unshare", "--mount")):
            probe = subprocess.run(
                [*prefix, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe_dir], capture_output=True, timeout=30
            )
            if probe.returncode == 0:
                return prefix
    missing("cannot mount a tmpfs in a private namespace here (no user namespaces and not root)")


def _in_small_fs(size: str, mount: Path, cmd: list[str], env: dict, cwd: Path, timeout: float = 300):
    """Run ``cmd`` with a ``size`` tmpfs mounted on ``mount``; returns (rc, output, files left on
    the tmpfs as {relative path: size})."""
    mount.mkdir(parents=True, exist_ok=True)
    listing = cwd / f"{mount.name}.left"
    script = (
        f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(mount))} || exit 99; "
        f'"$@"; rc=$?; find {shlex.quote(str(mount))} -mindepth 1 -printf "%P\\t%s\\n" '
        f"> {shlex.quote(str(listing))}; exit $rc"
    )
    p = subprocess.run(
        [*_unshare(), "sh", "-c", script, "sh", *cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert p.returncode != 99, p.stderr
    left = {}
    for line in listing.read_text().splitlines():
        name, _, size_ = line.partition("\t")
        left[name] = int(size_)
    return p.returncode, p.stdout + p.stderr, left


def _one_error_line(out: str) -> str:
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out, out[-4000:]
    assert "no space left" in errors[0].lower(), errors[0]
    return errors[0]


@pytest.fixture
def char_run(mlflow_env, small_text, monkeypatch):
    """A tiny trained char model (an LSTM 1x64: too narrow for the int8 form, so the export's files
    are the same on every machine, busy or not)."""
    from rnnops.training import jobs

    monkeypatch.setenv("RNNOPS_SYSTEM_METRICS", "0")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return jobs.run_job(jobs.char_job(str(small_text), "lstm", "tiny", {"train.steps": 10}))


# The export writes model.pt (~104 KiB), model.onnx (~96 KiB), model.ort-optimized.onnx (~96 KiB),
# parity_report.json (~24 KiB), quantization.json (int8 not made: 64 hidden units), then, while
# logging to MLflow, downloads the stored model.onnx back (~96 KiB) to hash it. 256k: full after a
# complete model.onnx, at the optimised graph (onnxruntime's writer: no errno, a failed protobuf);
# 384k: every local file fits, full while logging to MLflow (the download back).
@pytest.mark.slow
@pytest.mark.parametrize("size, stage", [("256k", "onnxruntime-optimised graph"), ("384k", "logging to MLflow")])
def test_export_into_a_full_disk_fails_in_one_line_and_leaves_nothing_exported(char_run, mlflow_env, size, stage):
    import mlflow

    from rnnops import contract

    env = {**os.environ, "TQDM_DISABLE": "1"}
    small = mlflow_env / "small"
    rc, out, left = _in_small_fs(
        size, small, [*CLI, "export", char_run, "--out", str(small / "export")], env, mlflow_env
    )
    assert rc == 2, out[-4000:]
    line = _one_error_line(out)
    started = [ln for ln in out.splitlines() if ln.startswith("[export] ") and ln.endswith("…")]
    assert started and stage in started[-1], out[-4000:]  # where the disk filled up
    assert set(left) <= {"export"}, left  # the folder at most, empty: no model.onnx, no export.json
    tags = mlflow.MlflowClient().get_run(char_run).data.tags
    assert not [k for k in tags if k.startswith("rnnops.export.")], tags
    assert contract.TAG_ONNX_URI not in tags
    models = mlflow.search_logged_models(
        experiment_ids=[mlflow.get_run(char_run).info.experiment_id], output_format="list"
    )
    assert all(m.status != "READY" for m in models if m.name == "onnx"), [(m.name, m.status) for m in models]
    print(f"export into {size} (full at: {started[-1]}): rc {rc}; {line}")


@pytest.mark.slow
def test_batch_forecast_into_a_full_disk_fails_in_one_line_and_leaves_no_output(tmp_path):
    import numpy as np
    import pandas as pd
    from test_runtime import export_forecaster

    model, _ = export_forecaster(tmp_path / "fc.onnx", norm="fixed", lookback=12, horizon=4)
    series, rows = 20_000, 12
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "id": np.repeat([f"s{i:05d}" for i in range(series)], rows),
            "date": np.tile(pd.date_range("2024-01-01", periods=rows, freq="h").strftime("%Y-%m-%d %H:%M:%S"), series),
            "a": rng.standard_normal(series * rows),
            "b": rng.standard_normal(series * rows),
            "OT": rng.standard_normal(series * rows),
        }
    )
    data = tmp_path / "in.csv"
    frame.to_csv(data, index=False)
    small = tmp_path / "small"
    env = {**os.environ, "RNNOPS_CACHE": str(tmp_path / "cache")}
    rc, out, left = _in_small_fs(
        "128k",
        small,
        [
            *CLI,
            "forecast",
            "--model",
            str(model),
            "--input",
            str(data),
            "--output",
            str(small / "out.parquet"),
            "--id-column",
            "id",
            "--no-progress",
        ],
        env,
        tmp_path,
    )
    assert rc == 2, out[-4000:]
    line = _one_error_line(out)
    assert left == {}, left  # neither out.parquet nor .out.parquet.<pid>.tmp
    print(f"forecast into 128k: rc {rc}; {line}")
