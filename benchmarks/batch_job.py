"""Batch forecast job: ``rnnops forecast`` (local engine, Spark engine) vs a plain PyTorch eager loop.

The same long-format CSV (``series`` hourly series x ``rows`` rows, ETTh1's 7 columns, ~75
bytes a row) and the same registered forecaster (``forecaster@champion``: GRU 1x64, lookback
96, horizon 96, 7 targets; made by the project's pipeline in a throwaway MLflow store) go
through three jobs, each a separate process, each writing one Parquet file of forecasts:

- **rnnops local**: ``rnnops forecast --model forecaster@champion --input data.csv --output
  out.parquet --id-column id`` (streaming reader, windows batched into large ORT calls,
  threads = cores);
- **PyTorch eager loop**: what one writes without the tool: ``pandas.read_csv`` of the whole
  file, ``groupby`` the id, and for each series the logged PyTorch model (the same weights) on
  its last 96 rows, one window per call under ``torch.no_grad()``, output rows built in Python;
- **rnnops spark**: the same command with ``--engine spark`` (Spark local mode, ``local[*]``;
  the time includes starting the JVM).

Reported: input rows/s over the whole command (process start to exit: what a nightly job
costs), the engine's own rows/s where it reports one, peak RSS of the process tree, and whether
the outputs agree (local vs Spark: identical tables; local vs eager: max abs difference, ORT vs
PyTorch). ``--rss-rows N`` also runs the local engine on an N-row file (default 10 million in
a full run) to show that its memory does not grow with the file.

    python benchmarks/batch_job.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

SUMMARY = re.compile(r"in (\S+) \(([\d.]+) s, ([\d,]+) rows/s\)")


def rnnops_cli() -> list[str]:
    cli = Path(sys.executable).parent / "rnnops"
    return [str(cli)] if cli.is_file() else [sys.executable, "-c", "from rnnops.cli import main; main()"]


def forecast_cmd(champ: C.Champion, data: Path, out: Path, log: Path, timeout: float, engine: str = "local") -> dict:
    argv = [
        *rnnops_cli(),
        "forecast",
        "--model",
        f"{champ.name}@champion",
        "--input",
        str(data),
        "--output",
        str(out),
        "--id-column",
        "id",
        "--engine",
        engine,
        "--no-progress",
    ]
    res = C.run_measured(argv, {**champ.env, "PYTHONWARNINGS": "ignore"}, log, timeout)
    if res["rc"] != 0:
        raise RuntimeError(f"`rnnops forecast --engine {engine}` failed ({res['rc']}):\n{C.tail(log)}")
    m = SUMMARY.search(log.read_text(errors="replace"))
    res["engine_seconds"] = float(m.group(2)) if m else None
    res["engine_rows_per_s_reported"] = float(m.group(3).replace(",", "")) if m else None
    return res


def eager_cmd(champ: C.Champion, data: Path, out: Path, log: Path, timeout: float) -> dict:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "_eager",
        "--run",
        champ.run_id,
        "--input",
        str(data),
        "--output",
        str(out),
    ]
    res = C.run_measured(argv, {**champ.env, "PYTHONWARNINGS": "ignore"}, log, timeout)
    if res["rc"] != 0:
        raise RuntimeError(f"the eager loop failed ({res['rc']}):\n{C.tail(log)}")
    m = re.search(r"EAGER_SECONDS ([\d.]+)", log.read_text(errors="replace"))
    res["engine_seconds"] = float(m.group(1)) if m else None
    return res


def eager_loop(run_id: str, inp: Path, out: Path) -> None:
    """The baseline: a plain per-window PyTorch eager loop (what one writes without the tool)."""
    import numpy as np
    import pandas as pd
    import torch

    from rnnops.training.logged_model import load_model

    t0 = time.perf_counter()
    loaded = load_model(run_id)
    model = loaded.model.eval()
    cfg = model.config
    feats, targets = list(cfg.feature_names), list(cfg.target_names)
    L, H = cfg.lookback, cfg.horizon
    df = pd.read_csv(inp)
    rows = []
    with torch.no_grad():
        for sid, g in df.groupby("id", sort=False):
            window = torch.tensor(g[feats].to_numpy(np.float32)[-L:]).unsqueeze(0)
            y, _ = model(window)
            last = pd.Timestamp(g["date"].iloc[-1])
            step = last - pd.Timestamp(g["date"].iloc[-2])
            y = y[0].numpy()
            for h in range(H):
                for t, name in enumerate(targets):
                    rows.append((sid, last + step * (h + 1), h + 1, name, float(y[h, t])))
    pd.DataFrame(rows, columns=["id", "date", "step", "target", "forecast"]).to_parquet(out)
    print(f"EAGER_SECONDS {time.perf_counter() - t0:.3f}")


def compare(local: Path, other: Path, exact: bool) -> dict:
    import numpy as np
    import pyarrow.parquet as pq

    a, b = pq.read_table(local), pq.read_table(other)
    if exact:
        return {"identical": a.equals(b), "rows": a.num_rows}
    fa = a.select(["id", "step", "target", "forecast"]).to_pandas().sort_values(["id", "step", "target"])
    fb = b.select(["id", "step", "target", "forecast"]).to_pandas().sort_values(["id", "step", "target"])
    same_rows = len(fa) == len(fb) and (fa["id"].to_numpy() == fb["id"].to_numpy()).all()
    diff = (
        float(np.abs(fa["forecast"].to_numpy(np.float64) - fb["forecast"].to_numpy(np.float64)).max())
        if same_rows
        else None
    )
    return {"same_rows": bool(same_rows), "max_abs_diff": diff, "rows": a.num_rows}


def run(quick: bool, work: Path, rss_rows: int = 0, spark: bool = True) -> dict:
    series, rows = (200, 1000) if quick else (2000, 1000)
    timeout = 1200 if quick else 3600
    print("building forecaster@champion (train -> export -> register -> promote)…", file=sys.stderr)
    champ = C.champion_forecaster(work / "registry")
    data = work / f"batch_{series}x{rows}.csv"
    if not data.is_file() or data.stat().st_size == 0:
        C.generate_long_csv(data, series, rows)
    n = series * rows
    out: dict = {
        "quick": quick,
        "series": series,
        "rows_per_series": rows,
        "rows": n,
        "file_mb": data.stat().st_size / 1e6,
        "model": {k: champ.metadata[k] for k in ("cell", "hidden_size", "lookback", "horizon")},
        "jobs": {},
    }
    jobs = [
        ("rnnops local", lambda o, lg: forecast_cmd(champ, data, o, lg, timeout)),
        ("PyTorch eager loop", lambda o, lg: eager_cmd(champ, data, o, lg, timeout)),
    ]
    if spark:
        jobs.append(("rnnops spark", lambda o, lg: forecast_cmd(champ, data, o, lg, timeout, engine="spark")))
    outputs = {}
    for name, fn in jobs:
        key = name.split()[-1]
        o, lg = work / f"out_{key}.parquet", work / f"{key}.log"
        lg.write_text("")
        print(f"{name}…", file=sys.stderr)
        try:
            res = fn(o, lg)
        except (RuntimeError, TimeoutError) as exc:
            print(f"  {name} failed: {exc}", file=sys.stderr)
            out["jobs"][name] = {"error": str(exc).splitlines()[0]}
            continue
        res["rows_per_s"] = n / res["seconds"]
        res["engine_rows_per_s"] = res.get("engine_rows_per_s_reported") or (
            n / res["engine_seconds"] if res.get("engine_seconds") else None
        )
        out["jobs"][name] = res
        outputs[key] = o
        print(
            f"  {res['seconds']:.1f} s, {res['rows_per_s']:,.0f} rows/s (engine {C.fmt(res['engine_rows_per_s'])}), "
            f"peak RSS {res['peak_rss_mb']:.0f} MB",
            file=sys.stderr,
        )
    if "local" in outputs and "loop" in outputs:
        out["local_vs_eager"] = compare(outputs["local"], outputs["loop"], exact=False)
    if "local" in outputs and "spark" in outputs:
        out["local_vs_spark"] = compare(outputs["local"], outputs["spark"], exact=True)
    if rss_rows:
        big = work / "big.csv"
        per = 1000
        print(f"generating a {rss_rows:,}-row file…", file=sys.stderr)
        C.generate_long_csv(big, max(1, rss_rows // per), per)
        size = big.stat().st_size / 1e6
        try:
            res = forecast_cmd(champ, big, work / "out_big.parquet", work / "big.log", timeout * 3)
            out["big_file"] = {
                "rows": (rss_rows // per) * per,
                "series": rss_rows // per,
                "file_mb": size,
                "seconds": res["seconds"],
                "rows_per_s": (rss_rows // per) * per / res["seconds"],
                "peak_rss_mb": res["peak_rss_mb"],
            }
            print(
                f"  {size:,.0f} MB file: {res['seconds']:.1f} s, peak RSS {res['peak_rss_mb']:.0f} MB", file=sys.stderr
            )
        finally:
            big.unlink(missing_ok=True)
            (work / "out_big.parquet").unlink(missing_ok=True)
    return out


def markdown(res: dict) -> str:
    rows = []
    base = res["jobs"].get("PyTorch eager loop", {}).get("rows_per_s")
    for name, r in res["jobs"].items():
        if "error" in r:
            rows.append([name, "failed", "-", "-", "-", "-", r["error"][:80]])
            continue
        rows.append(
            [
                name,
                f"{r['seconds']:.1f}",
                C.fmt(r["rows_per_s"]),
                C.fmt(r.get("engine_rows_per_s")),
                C.ratio(r["rows_per_s"], base),
                f"{r['peak_rss_mb']:.0f}",
                "",
            ]
        )
    m = res["model"]
    lines = [
        f"Input: {res['rows']:,} rows ({res['series']:,} series x {res['rows_per_series']:,} rows, 7 features, "
        f"{res['file_mb']:.0f} MB CSV); model GRU 1x{m['hidden_size']}, lookback {m['lookback']}, horizon {m['horizon']}, "
        f"7 targets -> {res['series'] * m['horizon'] * 7:,} output rows" + (" (--quick)" if res["quick"] else "") + ".",
        "",
        C.md_table(
            ["job", "wall s", "rows/s (whole command)", "rows/s (engine)", "vs eager loop", "peak RSS MB", "note"], rows
        ),
        "",
    ]
    lv = res.get("local_vs_eager")
    if lv:
        lines.append(
            f"Local engine vs eager loop: same rows {'yes' if lv['same_rows'] else 'NO'}, max abs difference "
            f"{C.fmt(lv['max_abs_diff'], 6) if lv['max_abs_diff'] is not None else '-'} (onnxruntime vs PyTorch)."
        )
    ls = res.get("local_vs_spark")
    if ls:
        lines.append(
            f"Local engine vs Spark engine: {'identical output tables' if ls['identical'] else 'outputs DIFFER'}."
        )
    big = res.get("big_file")
    if big:
        lines.append(
            f"Memory on a large file: {big['rows']:,} rows ({big['file_mb']:,.0f} MB CSV, {big['series']:,} series): "
            f"peak RSS **{big['peak_rss_mb']:.0f} MB**, {big['seconds']:.0f} s ({big['rows_per_s']:,.0f} rows/s)."
        )
    lines.append(
        "\nWhole-command times include interpreter start, imports and resolving the model (a few seconds); "
        "Spark's include starting the JVM and its Python workers."
    )
    return "\n".join(lines)


def plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in res["jobs"].items() if "error" not in r]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    colors = {"rnnops local": "tab:orange", "PyTorch eager loop": "tab:gray", "rnnops spark": "tab:blue"}
    vals = [res["jobs"][n]["rows_per_s"] for n in names]
    ax.barh(names, vals, color=[colors.get(n, "tab:green") for n in names])
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
    ax.set_xlabel("input rows/s, whole command (higher is better)")
    ax.set_title(f"Batch forecast job: {res['rows']:,} rows, {res['series']:,} series", fontsize=10)
    ax.margins(x=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_eager":
        ap = argparse.ArgumentParser()
        ap.add_argument("--run", required=True)
        ap.add_argument("--input", type=Path, required=True)
        ap.add_argument("--output", type=Path, required=True)
        a = ap.parse_args(argv[1:])
        return eager_loop(a.run, a.input, a.output)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 series x 1000 rows instead of 2000 x 1000")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    ap.add_argument(
        "--rss-rows",
        type=int,
        default=None,
        help="also run the local engine on a file this many rows "
        "long and report its peak RSS (default: 10,000,000 in a full run, 0 with --quick)",
    )
    ap.add_argument("--no-spark", action="store_true", help="skip the Spark engine")
    ap.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="rnnops-bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    rss_rows = args.rss_rows if args.rss_rows is not None else (0 if args.quick else 10_000_000)
    res = run(args.quick, work, rss_rows, spark=not args.no_spark)
    print(markdown(res))
    C.write_json(args.json, res)
    return None


if __name__ == "__main__":
    main()
