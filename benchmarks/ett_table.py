"""The standard ETT table: ETTh1 / ETTh2, multivariate (M), lookback 96, horizons 96-720, test MSE
and MAE on the protocol of ../shared/data/README.md, median of seeds with the spread, beside
published figures (each with its source and lookback) and our repeat-last baseline; plus the
univariate cell (ETTh1 S, target OT, lookback 336, H 96).

Every cell is one ordinary training run (``rnnops train forecast ...``, a subprocess, into the
MLflow experiment ``ett-table``), so any figure can be reproduced with the command the table
prints beside it. Results are kept in ``--out``/results.json as they arrive: an interrupted
run continues where it stopped (cells already there are skipped).

    python benchmarks/ett_table.py                      # the whole table: 27 runs, over an hour
    python benchmarks/ett_table.py --datasets etth1 --horizons 96 --seeds 1 --time-budget 20   # one cell, a check
    python benchmarks/ett_table.py --write-docs         # also put the table into docs/training.md

``--jobs N`` runs N cells at once, each pinned to its own cores (``taskset``) when the machine has
enough of them; on a shared 2-core machine keep the default 1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "training.md"
MARK_START, MARK_END = "<!-- ett-table:start -->", "<!-- ett-table:end -->"

# Published test MSE / MAE, multivariate, lookback 96 unless said. SegRNN: its README's table for
# L = 96 (after its drop-last fix; the other models' figures there are iTransformer's table).
# TimeMixer: its paper (Wang et al., ICLR 2024), unified L = 96. DLinear and PatchTST: the
# iTransformer paper's table (L = 96), as quoted by SegRNN's README.
PUBLISHED = {
    "SegRNN (README, L 96)": {
        ("etth1", 96): (0.368, 0.395),
        ("etth1", 192): (0.408, 0.419),
        ("etth1", 336): (0.444, 0.440),
        ("etth1", 720): (0.446, 0.457),
        ("etth2", 96): (0.278, 0.335),
        ("etth2", 192): (0.359, 0.389),
        ("etth2", 336): (0.421, 0.436),
        ("etth2", 720): (0.432, 0.455),
    },
    "TimeMixer (paper, L 96)": {
        ("etth1", 96): (0.375, 0.400),
        ("etth1", 192): (0.429, 0.421),
        ("etth1", 336): (0.484, 0.458),
        ("etth1", 720): (0.498, 0.482),
        ("etth2", 96): (0.289, 0.341),
        ("etth2", 192): (0.372, 0.392),
        ("etth2", 336): (0.386, 0.414),
        ("etth2", 720): (0.412, 0.434),
    },
    "DLinear (iTransformer, L 96)": {
        ("etth1", 96): (0.386, 0.400),
        ("etth1", 192): (0.437, 0.432),
        ("etth1", 336): (0.481, 0.459),
        ("etth1", 720): (0.519, 0.516),
        ("etth2", 96): (0.333, 0.387),
        ("etth2", 192): (0.477, 0.476),
        ("etth2", 336): (0.594, 0.541),
        ("etth2", 720): (0.831, 0.657),
    },
    "PatchTST (iTransformer, L 96)": {
        ("etth1", 96): (0.414, 0.419),
        ("etth1", 192): (0.460, 0.445),
        ("etth1", 336): (0.501, 0.466),
        ("etth1", 720): (0.500, 0.488),
        ("etth2", 96): (0.302, 0.348),
        ("etth2", 192): (0.388, 0.400),
        ("etth2", 336): (0.426, 0.433),
        ("etth2", 720): (0.431, 0.446),
    },
}
# The univariate cell (ETTh1 S, OT, L 336, H 96): NLinear from the DLinear paper (L 336).
PUBLISHED_S = {"NLinear (DLinear paper, L 336)": (0.053, 0.177)}


def cell_command(dataset: str, horizon: int, seed: int, args, features: str = "M", lookback: int = 96) -> list[str]:
    cmd = [
        "rnnops",
        "train",
        "forecast",
        "--data",
        dataset,
        "--features",
        features,
        "--lookback",
        str(lookback),
        "--horizon",
        str(horizon),
        "--arch",
        args.arch,
        "--preset",
        args.preset,
        "--seed",
        str(seed),
        "--experiment",
        args.experiment,
    ]
    if args.time_budget is not None:
        cmd += ["--time-budget", f"{args.time_budget:g}"]
    if args.quantiles:
        cmd += ["--quantiles", args.quantiles]
    return cmd + shlex.split(args.extra or "")


def run_cell(key: str, cmd: list[str], cores: list[int] | None, log_dir: Path) -> dict:
    exe = [str(Path(sys.executable).with_name("rnnops"))] + cmd[1:]
    if cores and _has("taskset"):
        exe = ["taskset", "-c", ",".join(map(str, cores)), *exe]
    env = {**os.environ, "RNNOPS_SYSTEM_METRICS": os.environ.get("RNNOPS_SYSTEM_METRICS", "1")}
    t0 = time.time()
    log = log_dir / f"{key}.log"
    with open(log, "w") as fh:
        proc = subprocess.run(exe, stdout=subprocess.PIPE, stderr=fh, text=True, env=env)
    out = proc.stdout
    (log_dir / f"{key}.out").write_text(out)
    m = re.search(r"run id: ([0-9a-f]{32})", out)
    if proc.returncode or not m:
        raise RuntimeError(f"{key}: {' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    import mlflow

    from rnnops.tracking import connect

    connect()  # the store the subprocess used (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db here)
    metrics = mlflow.get_run(m.group(1)).data.metrics
    keep = {k: v for k, v in metrics.items() if k.startswith(("test_", "val_")) or k in ("train_seconds", "steps")}
    return {"run_id": m.group(1), "command": " ".join(shlex.quote(c) for c in cmd), "wall_s": time.time() - t0, **keep}


def _has(tool: str) -> bool:
    from shutil import which

    return which(tool) is not None


def summarise(results: dict, args) -> str:
    """The markdown table: one row per dataset x horizon; ours as median [min-max] over seeds."""
    lines = [
        "| data | H | ours: test MSE (median [min-max] of seeds) | test MAE | repeat-last MSE / MAE | "
        + " | ".join(PUBLISHED)
        + " | gap to SegRNN (MSE) |",
        "|---|---:|---|---|---|" + "---|" * len(PUBLISHED) + "---:|",
    ]
    cmds = []
    for ds in args.datasets:
        for h in args.horizons:
            runs = [r for k, r in results.items() if k.startswith(f"{ds}-M-H{h}-s")]
            pub = [PUBLISHED[name].get((ds, h)) for name in PUBLISHED]
            pub_txt = " | ".join(f"{p[0]:.3f} / {p[1]:.3f}" if p else "-" for p in pub)
            if not runs:
                lines.append(f"| {ds} | {h} | (not run) | | | {pub_txt} | |")
                continue
            mse = [r["test_mse"] for r in runs]
            mae = [r["test_mae"] for r in runs]
            seg = PUBLISHED["SegRNN (README, L 96)"].get((ds, h))
            gap = f"{statistics.median(mse) - seg[0]:+.3f}" if seg else "-"
            lines.append(
                f"| {ds} | {h} | **{statistics.median(mse):.3f}** [{min(mse):.3f}-{max(mse):.3f}] "
                f"(n={len(runs)}) | {statistics.median(mae):.3f} | {runs[0]['test_repeat_last_mse']:.3f} / "
                f"{runs[0]['test_repeat_last_mae']:.3f} | {pub_txt} | {gap} |"
            )
            seeds = sorted(k.rsplit("-s", 1)[1] for k in results if k.startswith(f"{ds}-M-H{h}-s"))
            cmds.append(f"{ds} H {h}: `{runs[0]['command']}` (seeds {', '.join(seeds)})")
    s_runs = [r for k, r in results.items() if k.startswith("etth1-S-")]
    if s_runs:
        mse = [r["test_mse"] for r in s_runs]
        mae = [r["test_mae"] for r in s_runs]
        name, (pm, pa) = next(iter(PUBLISHED_S.items()))
        lines += [
            "",
            "| data | H | ours: test MSE | test MAE | repeat-last | " + name + " |",
            "|---|---:|---|---|---|---|",
            f"| etth1 S (OT), L 336 | 96 | **{statistics.median(mse):.4f}** [{min(mse):.4f}-{max(mse):.4f}] "
            f"(n={len(s_runs)}) | {statistics.median(mae):.4f} | {s_runs[0]['test_repeat_last_mse']:.4f} | "
            f"{pm:.3f} / {pa:.3f} |",
        ]
        cmds.append(f"etth1 S: `{s_runs[0]['command']}`")
    cover = [(k, r) for k, r in results.items() if "test_coverage_80" in r]
    if cover:
        lines += [
            "",
            "80 % interval coverage on test (steps in quarters of the horizon, pooled over channels; "
            "goal 0.77-0.83 each):",
            "",
            "| cell | whole | q1 | q2 | q3 | q4 | width (z) | pinball |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for k, r in sorted(cover):
            lines.append(
                f"| {k} | {r['test_coverage_80']:.3f} | "
                + " | ".join(f"{r.get(f'test_coverage_80_q{q}', float('nan')):.3f}" for q in range(1, 5))
                + f" | {r.get('test_interval_width_80', float('nan')):.3f} | {r.get('test_pinball', float('nan')):.4f} |"
            )
    return "\n".join(
        lines + ["", "Commands (one seed shown; the others differ only in `--seed`):", ""] + [f"- {c}" for c in cmds]
    )


def write_docs(table: str, header: str) -> None:
    text = DOC.read_text()
    block = f"{MARK_START}\n{header}\n\n{table}\n{MARK_END}"
    if MARK_START in text:
        text = re.sub(re.escape(MARK_START) + r".*?" + re.escape(MARK_END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## The ETT table (`benchmarks/ett_table.py`)\n\n" + block + "\n"
    DOC.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["etth1", "etth2"])
    ap.add_argument("--horizons", nargs="+", type=int, default=[96, 192, 336, 720])
    ap.add_argument("--seeds", type=int, default=3, help="seeds per cell (1337, 1338, ...)")
    ap.add_argument("--no-univariate", action="store_true", help="skip the ETTh1 S, L 336 cell")
    ap.add_argument("--arch", default="segrnn")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--time-budget", type=float, default=None, help="seconds per run (default: the preset's)")
    ap.add_argument("--quantiles", default="0.1,0.5,0.9", help="interval levels ('' for none)")
    ap.add_argument("--extra", default="", help="more rnnops train flags, quoted")
    ap.add_argument("--experiment", default="ett-table")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ett_table")
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    cells = [
        (f"{ds}-M-H{h}-s{1337 + s}", cell_command(ds, h, 1337 + s, args))
        for ds in args.datasets
        for h in args.horizons
        for s in range(args.seeds)
    ]
    if not args.no_univariate and "etth1" in args.datasets:
        cells += [
            (f"etth1-S-L336-H96-s{1337 + s}", cell_command("etth1", 96, 1337 + s, args, "S", 336))
            for s in range(args.seeds)
        ]
    todo = [(k, c) for k, c in cells if k not in results]
    print(
        f"{len(cells)} runs, {len(cells) - len(todo)} already in {results_path}; running {len(todo)}", file=sys.stderr
    )
    ncpu = len(os.sched_getaffinity(0))
    per = max(1, ncpu // max(1, args.jobs))
    cores = (
        [list(range(i * per, (i + 1) * per)) for i in range(args.jobs)]
        if args.jobs > 1 and ncpu >= 2 * args.jobs
        else [None] * args.jobs
    )

    def work(i, key, cmd):
        r = run_cell(key, cmd, cores[i % args.jobs], args.out / "logs")
        print(f"{key}: test MSE {r['test_mse']:.4f} / MAE {r['test_mae']:.4f} ({r['wall_s']:.0f} s)", file=sys.stderr)
        return key, r

    with ThreadPoolExecutor(args.jobs) as pool:
        for key, r in pool.map(lambda a: work(*a), [(i, k, c) for i, (k, c) in enumerate(todo)]):
            results[key] = r
            results_path.write_text(json.dumps(results, indent=1))
    table = summarise(results, args)
    header = (
        f"Generated by `python benchmarks/ett_table.py` ({args.arch}, preset {args.preset}"
        + (f", time budget {args.time_budget:g} s" if args.time_budget else "")
        + f", {args.seeds} seeds) on "
        f"{ncpu} CPUs, {time.strftime('%Y-%m-%d')}."
    )
    (args.out / "table.md").write_text(header + "\n\n" + table + "\n")
    print(table)
    if args.write_docs:
        write_docs(table, header)


if __name__ == "__main__":
    main()
