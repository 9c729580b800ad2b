"""Peak memory of panel training, streamed and in memory (issue 25: "measure peak RSS while training
on a generated panel of 100,000 series x 1,000 steps").

    python benchmarks/panel_memory.py                          # 100,000 x 1,000 days; ~20 min here
    python benchmarks/panel_memory.py --series 20000 --compare 1000,4000 --budget-s 30   # smaller
    python benchmarks/panel_memory.py --report results.json    # the tables of an earlier --json

What it does, in a work folder under /tmp (deleted at the end unless ``--keep``):

1. Generates the retail panel of ``benchmarks/retail_panel.py`` (daily sales, store and category
   static, promotions and prices as future covariates; every series the full ``--days`` long) as ``--files`` Parquet files of row groups
   of 65,536 rows, each series' rows together (as Spark or Dask write a panel sorted by id).
2. Trains on it with ``rnnops train forecast --stream`` (the quick preset's model, ``--budget-s`` of
   training) in a child process, sampling the resident memory of its process tree every 50 ms
   (the trainer's RSS, plus its ranks' under ``--nproc``).
3. For comparison, trains the in-memory path (``--no-stream``) and the streamed path on smaller
   panels of the same generator (``--compare`` series each), and fits the in-memory peak to a line
   in the number of rows to project it to the large panel.

Reported per run, for each of its phases (reading or indexing the panel; training, located by the
run's first ``train_loss`` and the loop's ``train_seconds``, read back from its MLflow store; the
final scores of every series): peak RSS and seconds; windows per second (the median of the run's
``windows_per_s``) and the time the sampler waited for a buffer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common as C  # noqa: E402
import retail_panel  # noqa: E402

ROW_GROUP_ROWS = 1 << 16
HORIZON, LOOKBACK = 14, 56
BATCH = 256  # the quick preset's
FLAGS = [
    "--id-column",
    "item_id",
    "--date-column",
    "date",
    "--target",
    "sales",
    "--static-columns",
    "store,category",
    "--future-covariates",
    "promo,price",
    "--freq",
    "D",
    "--horizon",
    str(HORIZON),
    "--lookback",
    str(LOOKBACK),
    "--preset",
    "quick",
]


def generate(folder: Path, series: int, days: int, files: int) -> dict:
    t0 = time.perf_counter()
    # every series full length (no short histories): the panel is exactly series x days, and each
    # series' validation window has the history MASE needs
    rows = retail_panel.write_parts(
        folder, files=files, row_group_rows=ROW_GROUP_ROWS, series=series, days=days, short_fraction=0.0
    )
    size = sum(f.stat().st_size for f in folder.iterdir())
    return {
        "series": series,
        "rows": rows,
        "files": files,
        "mb_on_disk": size / 2**20,
        "seconds": time.perf_counter() - t0,
    }


def tree_rss_mb(root: int, settled_s: float = 1.0) -> float:
    """Resident memory of a process tree: the RSS of ``root`` and of its descendants that have run
    for ``settled_s`` or more (the ranks of ``--nproc``). A child forked for a moment (``git
    rev-parse`` for the run's tags) shares its parent's pages until it execs, and counting its RSS
    would add a spike of the parent's whole size that is no memory at all."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime") as f:
        now = float(f.read().split()[0])
    total = 0
    for pid in C.process_tree(root):
        try:
            if pid != root:
                with open(f"/proc/{pid}/stat") as f:
                    started = int(f.read().rsplit(")", 1)[1].split()[19]) / ticks
                if now - started < settled_s:
                    continue
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError, IndexError):
            continue
    return total / 1024


def measured_run(argv: list[str], env: dict, log: Path, timeout: float) -> tuple[dict, list[tuple[float, float]]]:
    """Run to completion sampling the process tree's memory (:func:`tree_rss_mb`) every 50 ms:
    (wall seconds and exit status, [(unix time, MB)])."""
    samples = []
    t0 = time.perf_counter()
    proc = C.start_process(argv, env, log)
    try:
        while proc.poll() is None:
            samples.append((time.time(), tree_rss_mb(proc.pid)))
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{argv[:4]} ran past {timeout:.0f} s:\n{C.tail(log)}")
            time.sleep(0.05)
    finally:
        C.stop_process(proc)
    return {"seconds": time.perf_counter() - t0, "rc": proc.returncode}, samples


def train(panel: Path, stream: bool, budget_s: float, nproc: int, work: Path, name: str) -> dict:
    """One ``rnnops train forecast`` run on ``panel``: its memory, throughput and scores."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "RNNOPS_CHECKPOINTS": str(work / "checkpoints"),
        "RNNOPS_CACHE": str(work / "cache"),
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
    }
    argv = [
        sys.executable,
        "-c",
        "from rnnops.cli import main; main()",
        "train",
        "forecast",
        "--data",
        str(panel),
        *FLAGS,
    ]
    argv += ["--stream" if stream else "--no-stream", "--time-budget", str(budget_s), "--experiment", name]
    if nproc > 1:
        argv += ["--nproc", str(nproc)]
    log = work / f"{name}.log"
    result, samples = measured_run(argv, env, log, timeout=7200)
    if result["rc"] != 0:
        raise RuntimeError(f"{name} failed (exit {result['rc']}):\n{C.tail(log, 40)}")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    history = {k: client.get_metric_history(run.info.run_id, k) for k in ("train_loss", "windows_per_s")}
    m = run.data.metrics
    step_s = m["train_seconds"] / max(m["steps"], 1)
    # training: from its first step (the first train_loss is logged 10 steps in) for the loop's own
    # train_seconds; before it the panel is read (or indexed), after it every series is scored
    first = min(m.timestamp / 1000 for m in history["train_loss"]) - 10 * step_s
    last = first + m["train_seconds"]
    rates = [m.value for m in history["windows_per_s"]] or [BATCH / step_s]
    start, end = samples[0][0], samples[-1][0]
    return {
        "stream": stream,
        "nproc": nproc,
        "peak_rss_before_training_mb": max([mb for t, mb in samples if t < first], default=0.0),
        "peak_rss_training_mb": max(mb for t, mb in samples if first <= t <= last),
        "peak_rss_scoring_mb": max([mb for t, mb in samples if t > last], default=0.0),
        "peak_rss_run_mb": max(mb for _, mb in samples),
        "windows_per_s": C.median(rates),
        "steps": int(m["steps"]),
        "train_seconds": m["train_seconds"],
        "seconds_before_training": first - start,
        "seconds_after_training": end - last,
        "run_seconds": result["seconds"],
        "stream_wait_seconds": m.get("stream_wait_seconds"),
        "test_mase": m.get("test_mase"),
        "test_seasonal_naive_mase": m.get("test_seasonal_naive_mase"),
        "test_n_series": m.get("test_n_series"),
    }


def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
    return my - b * mx, b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=1000)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=60.0, help="seconds of training per run")
    ap.add_argument("--compare", default="2000,8000", help="series of the smaller panels (in memory and streamed)")
    ap.add_argument("--nproc", type=int, default=1, help="processes of the large streamed run")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (panels, MLflow store, logs)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--report", type=Path, default=None, help="print the tables of an earlier run's --json, run nothing"
    )
    args = ap.parse_args(argv)
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="panel-memory-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"machine": C.machine(), "budget_s": args.budget_s, "runs": []}
    try:
        sizes = [int(s) for s in args.compare.split(",") if s.strip()]
        for series in sizes:
            folder = work / f"panel-{series}"
            panel = generate(folder, series, args.days, max(1, args.files * series // args.series))
            for stream in (False, True):
                r = train(folder, stream, args.budget_s, 1, work, f"{'stream' if stream else 'memory'}-{series}")
                out["runs"].append({**panel, **r})
                print(out["runs"][-1], file=sys.stderr)
            shutil.rmtree(folder)
        folder = work / "panel-large"
        panel = generate(folder, args.series, args.days, args.files)
        print(f"generated {panel}", file=sys.stderr)
        r = train(folder, True, args.budget_s, args.nproc, work, f"stream-{args.series}")
        out["runs"].append({**panel, **r})
    finally:
        C.write_json(args.json, out)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(report(out))
    return 0


def projection(out: dict) -> dict | None:
    """The in-memory runs' peaks (while training, and over the run: reading the panel peaks higher)
    fitted to a line in the rows, at the largest panel's rows."""
    memory = [r for r in out["runs"] if not r["stream"]]
    if len(memory) < 2:
        return None
    rows = max(r["rows"] for r in out["runs"])
    out = {"rows": rows}
    for key in ("peak_rss_training_mb", "peak_rss_run_mb"):
        a, b = line_fit([r["rows"] for r in memory], [r[key] for r in memory])
        out[key] = {"projected_mb": a + b * rows, "mb_per_million_rows": b * 1e6, "intercept_mb": a}
    return out


def report(out: dict) -> str:
    rows = []
    for r in out["runs"]:
        rows.append(
            [
                "streamed" if r["stream"] else "in memory",
                f"{r['series']:,} x {r['rows'] / r['series']:,.0f}",
                f"{r['rows'] / 1e6:.1f} M ({r['mb_on_disk']:.0f} MB, {r['files']} files)",
                " / ".join(
                    C.fmt(r.get(k), 0)
                    for k in ("peak_rss_before_training_mb", "peak_rss_training_mb", "peak_rss_scoring_mb")
                ),
                C.fmt(r["windows_per_s"], 0),
                f"{r['steps']:,}",
                " / ".join(
                    C.fmt(v, 0) for v in (r["seconds_before_training"], r["train_seconds"], r["seconds_after_training"])
                ),
                "-" if r["stream_wait_seconds"] is None else C.fmt(r["stream_wait_seconds"], 1),
            ]
        )
    text = C.md_table(
        [
            "path",
            "series x length",
            "rows",
            "peak RSS (MB): reading / training / scoring",
            "windows/s",
            "steps",
            "seconds: reading / training / scoring",
            "s waiting for buffers",
        ],
        rows,
    )
    p = projection(out)
    if p:
        text += f"\n\nIn memory, projected to {p['rows'] / 1e6:.1f} M rows (a line through the in-memory runs):"
        for key, what in (("peak_rss_training_mb", "while training"), ("peak_rss_run_mb", "over the run")):
            q = p[key]
            text += (
                f" {q['projected_mb'] / 1024:.1f} GB peak RSS {what} ({q['mb_per_million_rows']:.0f} MB per million "
                f"rows + {q['intercept_mb']:.0f} MB);"
            )
    return text + "\n\n" + C.machine_markdown(out["machine"])


if __name__ == "__main__":
    sys.exit(main())
