"""What the peer benchmarks share: the peers' own virtualenvs, CPU pinning, the side-by-side table.

- :func:`ensure_venv` makes ``~/.cache/rnnops/peers/<peer>-venv`` with exact pins, once (a
  ``pins.txt`` inside records what it was made with; a change of pins makes it again), never in
  our ``.venv`` and never in a serving image;
- :func:`pinned` runs a block with this process pinned to some CPUs, so that a server started
  inside it (and every process it starts) inherits them, whoever builds its argv;
- :func:`server_threads` is the onnxruntime thread count our service picks for one worker on
  the server's CPUs (``ServeConfig.ort_threads``): every peer gets the same;
- :func:`tree_usage`, :func:`tree_affinity`, :func:`process_names` say where a server's CPU and
  memory go (Ray's services, MLServer's inference worker are processes of their own) and which
  CPUs its threads were allowed (what the pinning actually gave);
- :class:`StallMeter` measures how long the load generator's own process went unscheduled in a
  round: on a shared machine a frozen round shows there, not only as a huge p99;
- :func:`wrk_compare` drives request/response servers with ``forecast_http.py``'s wrk load,
  rounds alternating; :func:`goal`, :func:`rounds_note`, :func:`side_by_side` and
  :func:`plot_requests` make the figure: ours against the peer, with ratios.

Everything else (statistics, processes, the load generators, the models) comes from the
benchmarks one folder up: ``common``, ``streaming``, ``forecast_http``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common as C  # noqa: E402

CACHE = Path(os.environ.get("RNNOPS_PEERS_CACHE", Path.home() / ".cache" / "rnnops" / "peers"))
ORT = version("onnxruntime")  # every peer runs the onnxruntime our service runs
NUMPY = version("numpy")


def ensure_venv(peer: str, pins: list[str], constraints: Path | None = None, timeout: float = 1800) -> Path:
    """The peer's own virtualenv (made with this interpreter's base Python), its python path.

    Made once: ``pins.txt`` in it records the pins (and the constraints file's text, when one
    is given) it was made with; other pins make it again. pip from PyPI. ``constraints`` (pip's
    ``-c``) holds the peer's dependencies at the versions of a file such as our
    ``constraints.txt``, for a peer that should differ from our service only in its own code."""
    venv = CACHE / f"{peer}-venv"
    py = venv / "bin" / "python"
    stamp = venv / "pins.txt"
    want = "\n".join(pins) + "\n" + (f"# constrained by:\n{constraints.read_text()}" if constraints else "")
    if py.is_file() and stamp.is_file() and stamp.read_text() == want:
        return py
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / f"{peer}-venv.log"
    print(f"making {venv} ({' '.join(pins)}; log {log})…", file=sys.stderr, flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    with open(log, "w") as fh:
        for argv in (
            [base, "-m", "venv", "--clear", str(venv)],
            [*pip, "--upgrade", "pip"],
            [*pip, *pins, *(["-c", str(constraints)] if constraints else [])],
        ):
            fh.write("$ " + " ".join(argv) + "\n")
            fh.flush()
            rc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout).returncode
            if rc != 0:
                raise RuntimeError(f"{argv[2:5]} failed ({rc}) making {venv}:\n{C.tail(log)}")
        # what was resolved, for the record (the log sits beside the venv)
        fh.write("$ pip freeze\n")
        fh.flush()
        subprocess.run([str(py), "-m", "pip", "freeze"], stdout=fh, stderr=subprocess.STDOUT, timeout=120)
    stamp.write_text(want)
    return py


def venv_versions(py: Path, dists: list[str]) -> dict[str, str]:
    """Installed versions of ``dists`` in the environment of ``py``."""
    code = (
        f"import json, importlib.metadata as m\nout = {{}}\nfor d in {dists!r}:\n    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: out[d] = '-'\nprint(json.dumps(out))"
    )
    res = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120)
    import json

    return json.loads(res.stdout) if res.returncode == 0 else {d: "?" for d in dists}


@contextlib.contextmanager
def pinned(cpus: set[int] | None):
    """This process on ``cpus`` for the block (children started inside inherit them), then back."""
    if not cpus:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def cpu_split(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, client CPUs) as the other benchmarks split them, or (None, None)."""
    split = C.split_cpus() if pin else None
    return split if split else (None, None)


def server_threads(server_cpus: set[int] | None, workers: int = 1) -> int:
    """The ORT intra-op threads our service picks for a worker on these CPUs (ServeConfig.ort_threads)."""
    n = len(server_cpus) if server_cpus else C.cpus()
    return min(8, max(1, n // max(1, workers) - 1))


def process_names(root: int) -> dict[str, int]:
    """How many processes of each name a server's tree has (Ray's services, MLServer's workers)."""
    out: dict[str, int] = {}
    for pid in C.process_tree(root):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        out[name] = out.get(name, 0) + 1
    return out


def tree_usage(root: int) -> dict[str, dict]:
    """CPU seconds so far and resident MB of a server's tree by process name: where a server's
    cost goes (Ray's GCS, raylet, Serve controller, proxy and replica are separate processes).
    Two calls around a level give each service's share of the CPU over it."""
    tck = os.sysconf("SC_CLK_TCK")
    out: dict[str, dict] = {}
    for pid in C.process_tree(root):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            rss = next(
                (
                    int(ln.split()[1])
                    for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if ln.startswith("VmRSS:")
                ),
                0,
            )
        except (OSError, IndexError, ValueError):
            continue
        u = out.setdefault(name, {"processes": 0, "cpu_s": 0.0, "rss_mb": 0.0})
        u["processes"] += 1
        u["cpu_s"] += (int(fields[11]) + int(fields[12])) / tck
        u["rss_mb"] += rss / 1024
    return out


def usage_delta(before: dict, after: dict, wall_s: float) -> dict[str, dict]:
    """Per process name: the share of one CPU used between two :func:`tree_usage` calls, and the
    resident MB at the second."""
    return {
        name: {
            "processes": a["processes"],
            "cpu_pct": round(100 * (a["cpu_s"] - before.get(name, {}).get("cpu_s", 0.0)) / wall_s, 1)
            if wall_s
            else None,
            "rss_mb": round(a["rss_mb"], 1),
        }
        for name, a in sorted(after.items())
    }


def tree_affinity(root: int) -> list[int]:
    """The CPUs any thread of a server's tree may run on (the union of their affinity masks): what
    pinning actually gave, since a library may set its threads' affinity itself (onnxruntime's
    default thread pool does)."""
    cpus: set[int] = set()
    for pid in C.process_tree(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                cpus |= os.sched_getaffinity(int(tid))
            except OSError:
                continue
    return sorted(cpus)


class StallMeter:
    """The longest the benchmark's own process went unscheduled during a block: a thread that
    sleeps 5 ms at a time and keeps its largest oversleep. On a shared machine a round whose
    load generator (or the whole machine) froze for seconds shows here, not only as a p99:
    such a round measures the neighbours, not the servers.

        with StallMeter() as stall:
            ...
        stall.max_ms
    """

    def __init__(self, every_s: float = 0.005):
        self.every_s, self.max_ms = every_s, 0.0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            time.sleep(self.every_s)
            self.max_ms = max(self.max_ms, 1e3 * (time.perf_counter() - t - self.every_s))

    def __enter__(self) -> StallMeter:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.max_ms = round(self.max_ms, 1)


def wait_until(pred, timeout: float, what: str, proc=None, log: Path | None = None, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited ({proc.returncode}):\n{C.tail(log) if log else ''}")
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(every)
    raise TimeoutError(f"{what}: not ready within {timeout:.0f} s:\n{C.tail(log) if log else ''}")


def side_by_side(
    level_key: str, levels, ours: dict, peer: dict, metrics: list[tuple[str, str, bool, int]], peer_name: str
) -> str:
    """One row per level: for each metric (key, label, higher_is_better, digits) ours, the peer's,
    and the ratio that reads "how many times better ours is" (ours/peer when higher is better,
    peer/ours when lower is better)."""
    headers = [level_key]
    for _, label, higher, _ in metrics:
        headers += [f"{label} rnnops", f"{label} {peer_name}", f"{label} x" + ("" if higher else " (peer/ours)")]
    rows = []
    for lv in levels:
        a, b = ours.get(lv, {}), peer.get(lv, {})
        row = [lv]
        for key, _, higher, digits in metrics:
            x, y = a.get(key), b.get(key)
            row += [C.fmt(x, digits), C.fmt(y, digits), C.ratio(x, y) if higher else C.ratio(y, x)]
        rows.append(row)
    return C.md_table(headers, rows)


# ----------------------------------------------------------------------------- request/response load (wrk)


def wrk_compare(
    targets: dict,
    levels,
    rounds: int,
    seconds: float,
    work: Path,
    client_cpus: set[int] | None,
    max_requests: int = 10**7,
) -> tuple[dict, dict]:
    """Each target (name -> (url, server pid, body files)) under ``forecast_http.py``'s wrk load
    (its Lua script: cycles the bodies, counts non-200 answers), one at a time: a short warm-up
    each, then at each concurrency level ``rounds`` rounds, the targets' order alternating. The
    per-level figure is the median over rounds (``forecast_http.median_row``). Returns
    (name -> rows, name -> level -> raw rounds)."""
    import shutil

    import forecast_http as FH

    if not shutil.which("wrk"):
        raise SystemExit("error: no `wrk` on PATH; install it with scripts/install_wrk.sh")
    script = work / "wrk_bodies.lua"
    script.write_text(FH.WRK_LUA)
    names = list(targets)
    with pinned(client_cpus):
        for name in names:
            url, _, files = targets[name]
            FH.wrk_load(url, files, 4, 10**6, 2.0, None, script)
        raw = {n: {c: [] for c in levels} for n in names}
        for c in levels:
            for k in range(rounds):
                for name in names if k % 2 == 0 else names[::-1]:
                    url, pid, files = targets[name]
                    use0 = tree_usage(pid)
                    with StallMeter() as stall:
                        row = FH.wrk_load(url, files, c, max_requests, seconds, pid, script)
                    row["stall_ms"] = stall.max_ms
                    # CPU ms per request of each of the server's processes (MLServer's HTTP process and its
                    # inference worker; BentoML's supervisor and worker): where a server's cost goes
                    row["cpu_ms_per_request_by_process"] = {
                        name: round(
                            1e3 * (u["cpu_s"] - use0.get(name, {}).get("cpu_s", 0.0)) / max(1, row["requests"]), 3
                        )
                        for name, u in tree_usage(pid).items()
                    }
                    raw[name][c].append(row)
                    print(
                        f"  {name:16s} c={c:3d} round {k + 1}/{rounds}: {row['rps']:8.1f} req/s  p50 "
                        f"{row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  server CPU "
                        f"{C.fmt(row['server_cpu_ms_per_request'], 2)} ms/req  ({row['requests']} ok, "
                        f"{row['errors']} errors; longest stall of this process {row['stall_ms']:.0f} ms)",
                        file=sys.stderr,
                        flush=True,
                    )
                    if row["stall_ms"] > 1000:
                        print(
                            f"    warning: this process went {row['stall_ms'] / 1e3:.1f} s unscheduled during the "
                            "round: the machine was frozen or overloaded, and the round measures that",
                            file=sys.stderr,
                            flush=True,
                        )
                    if row["first_error"]:
                        print(f"    first error: {row['first_error']}", file=sys.stderr)
    rows = {n: [FH.median_row(raw[n][c]) for c in levels] for n in names}
    for n in names:
        for row in rows[n]:
            row["stall_ms_max"] = max(r["stall_ms"] for r in raw[n][row["concurrency"]])
    return rows, raw


def write_bodies(work: Path, prefix: str, bodies: list[bytes]) -> list[Path]:
    files = []
    for i, b in enumerate(bodies):
        f = work / f"body_{prefix}_{i:02d}.json"
        f.write_bytes(b)
        files.append(f)
    return files


def goal(ours: dict, peer: dict, at: int, factor: float) -> dict:
    """ours >= factor x the peer's requests/s at concurrency ``at`` with a lower p99."""
    o, p = ours.get(at), peer.get(at)
    if not o or not p:
        return {"concurrency": at, "rps_ratio": None, "p99_lower": None, "met": None}
    r = o["rps"] / p["rps"] if p["rps"] else None
    lower = o["p99_ms"] < p["p99_ms"]
    return {"concurrency": at, "rps_ratio": r, "p99_lower": lower, "met": bool(r and r >= factor and lower)}


def goal_line(g: dict, factor: float, peer: str, unit: str = "requests/s") -> str:
    if g["met"] is None:
        return (
            f"Goal (at concurrency {g['concurrency']}: rnnops >= {factor:g}x {peer}'s {unit}): not run at that level."
        )
    return (
        f"Goal at concurrency {g['concurrency']}: rnnops >= {factor:g}x {peer}'s {unit} with a lower p99: "
        f"**{C.ratio(g['rps_ratio'], 1)}**, p99 {'lower' if g['p99_lower'] else 'NOT lower'} -> "
        f"**{'met' if g['met'] else 'not met'}**."
    )


REQ_METRICS = [
    ("rps", "req/s", True, 1),
    ("p50_ms", "p50 ms", False, 1),
    ("p99_ms", "p99 ms", False, 1),
    ("server_cpu_ms_per_request", "server CPU ms/req", False, 2),
    ("errors", "errors", False, 0),
]


def rounds_note(res: dict, names: dict[str, str]) -> str:
    """Each round's requests/s at the top level and the longest stall of the load generator's
    process over the rounds: what a reader needs to judge a median on a shared machine."""
    top = max(res["levels"])
    by = {s: {r["concurrency"]: r for r in rows} for s, rows in res["servers"].items()}
    parts = [
        f"{label} {', '.join(C.fmt(v) for v in by[key][top].get('rounds_rps', []))}" for key, label in names.items()
    ]
    stall = max((by[key][top].get("stall_ms_max") or 0) for key in names)
    return (
        f"Requests/s of each round at concurrency {top}: " + "; ".join(parts) + f". Longest stall of the load "
        f"generator's process in a round: {C.fmt(stall, 0)} ms"
        + (
            " (**the machine froze or was overloaded during a round: compare the other rounds**)"
            if stall > 1000
            else ""
        )
        + "."
    )


def plot_requests(res: dict, path: Path, peer: str, peer_label: str, title: str, unit: str = "requests/s") -> Path:
    """Two bar panels, ours against the peer at each concurrency: throughput and p99 latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    levels = res["levels"]
    by = {s: {r["concurrency"]: r for r in rows} for s, rows in res["servers"].items()}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.arange(len(levels))
    for k, (name, label, color) in enumerate(((peer, peer_label, "tab:gray"), ("rnnops", "rnnops", "tab:orange"))):
        ax1.bar(x + (k - 0.5) * 0.38, [by[name][c]["rps"] for c in levels], 0.38, label=label, color=color)
        ax2.bar(x + (k - 0.5) * 0.38, [by[name][c]["p99_ms"] for c in levels], 0.38, label=label, color=color)
    for ax, what in ((ax1, f"{unit} (higher is better)"), (ax2, "p99 latency, ms (lower is better)")):
        ax.set_xticks(x, [f"c={c}" for c in levels])
        ax.set_title(what, fontsize=10)
        ax.legend(fontsize=8)
    ax2.set_yscale("log")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
