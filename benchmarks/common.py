"""Shared pieces of the benchmark suite: the machine, statistics, markdown, processes, a model.

- :func:`machine` describes where the figures come from (CPU model, cores, RAM, load, versions);
- :func:`median`, :func:`pct`, :func:`ratio`, :func:`md_table` keep every figure's table alike;
- :func:`start_process` / :func:`stop_process` / :func:`wait_http` run servers on loopback in
  their own process groups and always stop them; :func:`tree_rss_mb` measures a process tree;
- :func:`champion_forecaster` makes a *real* registered forecaster through the project's own
  pipeline (train -> export -> register -> promote) in a throwaway MLflow store, for the
  benchmarks that need one (forecast over HTTP, batch jobs).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ETT_FEATURES = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


# ----------------------------------------------------------------------------- the machine


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in (
        "rnnops",
        "numpy",
        "torch",
        "onnxruntime",
        "mlflow",
        "bentoml",
        "pyarrow",
        "pandas",
        "pyspark",
        "httpx",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "-"
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=20).stderr.splitlines()
        out["java"] = java[0].split('"')[1] if java and '"' in java[0] else "-"
    except (OSError, subprocess.SubprocessError):
        out["java"] = "-"
    return out


def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "cpus": cpus(),
        "ram_gb": round(ram_gb(), 1),
        "os": platform.platform(),
        "load_avg_1m": round(load[0], 2),
        "versions": versions(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def machine_markdown(m: dict) -> str:
    v = m["versions"]
    return "\n".join(
        [
            f"- **CPU**: {m['cpu']}, {m['cpus']} cores available to the benchmark; **RAM** {m['ram_gb']} GiB; {m['os']}",
            f"- **Load** at start: {m['load_avg_1m']} (1-min average; above {m['cpus']} means other work shared the cores)",
            "- **Versions**: " + ", ".join(f"{k} {val}" for k, val in v.items()),
            f"- **Run at** {m['when']}",
        ]
    )


# ----------------------------------------------------------------------------- statistics + markdown


def median(xs) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def pct(xs, q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation, as numpy's default."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def ratio(a, b) -> str:
    try:
        if a is None or b is None or b == 0 or a != a or b != b:
            return "-"
        return f"{a / b:.1f}x"
    except TypeError:
        return "-"


def fmt(x, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    if isinstance(x, (int,)) or (isinstance(x, float) and abs(x) >= 1000):
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def md_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A markdown table; ``align`` is one letter per column (l or r), default: first l, rest r."""
    align = align or ("l" + "r" * (len(headers) - 1))
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: Path | None, data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str))


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(
    argv: list[str], env: dict, log: Path, cwd: Path | None = None, cpus_allowed: set[int] | None = None
) -> subprocess.Popen:
    """Start ``argv`` in its own process group (so stopping it stops its workers too),
    optionally pinned to ``cpus_allowed`` (inherited by its children)."""
    out = open(log, "ab")
    pin = (lambda: os.sched_setaffinity(0, cpus_allowed)) if cpus_allowed else None
    return subprocess.Popen(
        argv,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=cwd,
        preexec_fn=pin,
    )


def split_cpus() -> tuple[set[int], set[int]] | None:
    """(server CPUs, client CPUs) for a load test on one machine: the client gets a quarter of the
    CPUs (at least one), the server the rest, so neither steals the other's cores. None when
    there is only one CPU or affinity is not supported."""
    try:
        mine = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None
    if len(mine) < 2:
        return None
    k = max(1, len(mine) // 4)
    return set(mine[:-k]), set(mine[-k:])


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s:\n{tail(log)}")


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(log).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (BentoML's workers run in process groups of their own)."""
    parents: dict[int, int] = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parents[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parents.items() if pp in frontier]
        tree += frontier
    return tree


def tree_rss_mb(root: int) -> float:
    """Resident memory of a server: its supervisor process and every worker below it."""
    total = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def run_measured(argv: list[str], env: dict, log: Path, timeout: float) -> dict:
    """Run a command to completion; wall seconds, exit status and the peak RSS of its process tree."""
    t0 = time.perf_counter()
    proc = start_process(argv, env, log)
    peak = 0.0
    try:
        while proc.poll() is None:
            peak = max(peak, tree_rss_mb(proc.pid))
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{argv[:3]} ran past {timeout:.0f} s:\n{tail(log)}")
            time.sleep(0.05)
    finally:
        stop_process(proc)
    return {"seconds": time.perf_counter() - t0, "rc": proc.returncode, "peak_rss_mb": peak}


# ----------------------------------------------------------------------------- a real champion


@dataclass
class Champion:
    env: dict  # MLFLOW_TRACKING_URI, RNNOPS_CACHE, ... for subprocesses
    run_id: str
    name: str
    version: int
    onnx: Path  # the verified file serving resolves
    metadata: dict


def champion_forecaster(
    work: Path, hidden: int = 64, steps: int = 20, lookback: int = 96, horizon: int = 96, layers: int = 1
) -> Champion:
    """Train (a few steps: speed does not depend on what the weights learnt) -> export ->
    register -> promote ``forecaster@champion`` in an MLflow store under ``work``.

    ETTh1 from ``RNNOPS_DATA_DIR`` when present (7 features), else a generated CSV with the same
    columns. Runs in a subprocess so that this process stays free of torch state and MLflow
    globals, and the benchmarks see exactly what a user's servers would.
    """
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "champion.json"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "RNNOPS_CACHE": str(work / "cache"),
        "RNNOPS_CHECKPOINTS": str(work / "checkpoints"),
        "BENTOML_DO_NOT_TRACK": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "TQDM_DISABLE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    if saved.is_file():  # made earlier in this working folder (run_all shares one between benchmarks)
        info = json.loads(saved.read_text())
        if Path(info["onnx"]).is_file():
            env.update(info["env"])
            return Champion(
                env=env,
                run_id=info["run_id"],
                name=info["name"],
                version=info["version"],
                onnx=Path(info["onnx"]),
                metadata=info["metadata"],
            )
    data_dir = os.environ.get("RNNOPS_DATA_DIR") or str(REPO.parent / "shared" / "data")
    if (Path(data_dir) / "ETTh1.csv").is_file():
        env["RNNOPS_DATA_DIR"] = data_dir
        data = "etth1"
    else:
        data = str(work / "ett_like.csv")
        generate_long_csv(Path(data), series=1, rows=4000, id_column=None)
    script = f"""
import json
from rnnops.training.jobs import forecast_job, run_job
from rnnops.export.pipeline import export_run
from rnnops.registry.api import register_run, promote
from rnnops.registry.resolve import resolve
run_id = run_job(forecast_job({data!r}, "gru", "tiny", {{"lookback": {lookback}, "horizon": {horizon},
                 "model.hidden_size": {hidden}, "model.num_layers": {layers}, "train.steps": {steps}, "train.eval_every": {steps}}}), "rnnops-bench")
export_run(run_id, progress=False)
v = register_run(run_id)
promote(v.name, v.version, force=True)
r = resolve(v.name + "@champion")
print("CHAMPION " + json.dumps({{"run_id": run_id, "name": r.name, "version": r.version, "onnx": str(r.path),
                                "metadata": r.metadata}}))
"""
    log = work / "champion.log"
    res = subprocess.run([sys.executable, "-c", script], env=env, cwd=work, capture_output=True, text=True, timeout=900)
    log.write_text(res.stdout + res.stderr)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("CHAMPION ")), None)
    if res.returncode != 0 or line is None:
        raise RuntimeError(f"building the champion forecaster failed ({res.returncode}):\n{tail(log)}")
    info = json.loads(line[len("CHAMPION ") :])
    keep = ("MLFLOW_TRACKING_URI", "RNNOPS_CACHE", "RNNOPS_CHECKPOINTS", "RNNOPS_DATA_DIR")
    saved.write_text(json.dumps({**info, "env": {k: env[k] for k in keep if k in env}}, indent=1))
    return Champion(
        env=env,
        run_id=info["run_id"],
        name=info["name"],
        version=info["version"],
        onnx=Path(info["onnx"]),
        metadata=info["metadata"],
    )


def generate_long_csv(
    path: Path,
    series: int,
    rows: int,
    features=ETT_FEATURES,
    id_column: str | None = "id",
    seed: int = 0,
    chunk_series: int = 200,
) -> Path:
    """A long-format CSV (id, date, features...): ``series`` hourly series of ``rows`` rows each,
    sines plus noise, written in chunks (memory stays small for files of any size)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv

    rng = np.random.default_rng(seed)
    base = np.datetime64("2020-01-01T00:00:00", "s")
    fields = (
        ([(id_column, pa.string())] if id_column else [])
        + [("date", pa.string())]
        + [(f, pa.float64()) for f in features]
    )
    with pcsv.CSVWriter(str(path), pa.schema(fields)) as w:
        for lo in range(0, series, chunk_series):
            k = min(chunk_series, series - lo)
            ids = np.repeat(np.arange(lo, lo + k), rows)
            t = np.tile(np.arange(rows), k)
            cols = [pa.array(np.char.add("s", ids.astype(str)))] if id_column else []
            cols.append(pa.array((base + t.astype("timedelta64[h]")).astype("datetime64[s]")).cast(pa.string()))
            for j, _ in enumerate(features):
                v = np.sin(t / (8.0 + j) + ids * 0.1) * (1 + j) + 5 + 0.1 * rng.standard_normal(len(t))
                cols.append(pa.array(np.round(v, 3)))
            w.write_table(pa.Table.from_arrays(cols, schema=pa.schema(fields)))
    return path


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) used so far by a process tree: a cost per request or
    character that holds up when the machine is shared, unlike wall-clock throughput."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / tck
