"""The M4 Hourly table (issue 25, section 5): our global forecaster beside NeuralForecast, statsforecast
and GluonTS, all run here, in one run, and all scored by the same code (``forecast_metrics``).

    python benchmarks/m4_peers.py --write-doc     # everything (~50 min here), then docs/forecasting.md's table
    python benchmarks/m4_peers.py --skip-venv-builds --peers statsforecast --seeds 0 --budget-s 30   # a smoke run
    python benchmarks/m4_peers.py --preset full --seeds 0,1,2 --peers none   # ours on the full preset (3 x 30 min)

**Contestants**, back to back and interleaved (ours seed 0, NeuralForecast, ours seed 1, GluonTS,
ours seed 2, statsforecast, then the throughput figure), so load changes on a shared machine fall
on every side:

- **ours**: ``rnnops train forecast --data m4-hourly --preset quick --seed S`` (one MLflow run per
  seed in a throw-away tracking store under ``--work``; one torch thread, ``OMP_NUM_THREADS=1``),
  its model loaded back from the run and its test forecast written in the peers' format. The
  median of the seeds with their range, and the seeds' ensemble (the mean of their quantiles:
  three budgets, not one, and said so in its row).
- **peers**, each in a virtualenv of its own that this script makes under
  ``~/.cache/rnnops/peers/<peer>-venv`` (never in our ``.venv``) from PyPI, as its documentation
  recommends, with torch pinned to our CPU build so pip does not fetch a CUDA one; each runner
  names the page it follows: ``peers/m4_neuralforecast.py`` (LSTM, DeepAR, NHITS, NeuralForecast's
  M4-Hourly tutorial; the same wall-clock budget as ours), ``peers/m4_statsforecast.py``
  (SeasonalNaive, AutoETS, AutoTheta, season 24; local models, no budget), ``peers/m4_gluonts.py``
  (DeepAR, torch; the same budget). They read the training part we write (``train.csv``) and write
  quantile forecasts (``peers/m4_peer_io.py``), which are scored here.
- **throughput**: training windows per second of our quick model (a GRU, 2 x 128, 336-step window
  in 24-step segments, 256 windows a step) and of NeuralForecast's GRU at the same size, window
  and batch (stepping hour by hour, as NeuralForecast's recurrent models do), one torch thread each.

The load average is sampled every 5 s for the whole run and reported per contestant: on a shared
machine the same budget buys fewer steps, so it belongs beside the figures. Data: ``m4-hourly``
(``RNNOPS_DATA_DIR/m4/`` or downloaded with its sha256).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))

from rnnops.training import forecast_metrics as fm  # noqa: E402
from rnnops.training.m4 import HORIZON, M4_HOURLY_ANCHORS, SEASON, load_m4_hourly  # noqa: E402

DOC = HERE.parent / "docs" / "forecasting.md"
DOC_BEGIN, DOC_END = "<!-- m4-peers:begin -->", "<!-- m4-peers:end -->"
TORCH = "torch==2.13.0"  # our CPU build (pip's find-links hold its wheel): no CUDA torch in the peers' venvs
# peer -> (pip requirements for its own virtualenv, its runner, whether it trains on the budget)
PEERS = {
    "neuralforecast": (["neuralforecast==3.3.0", TORCH], "m4_neuralforecast.py", True),
    "gluonts": (["gluonts[torch]==0.17.0", TORCH], "m4_gluonts.py", True),
    "statsforecast": (["statsforecast==2.1.1"], "m4_statsforecast.py", False),
}
METRICS = ("smape", "mase", "owa", "msis", "coverage")


# ----------------------------------------------------------------------------- load


class LoadSampler:
    """The 1-minute load average every ``every`` seconds, in a thread, tagged by the contestant running."""

    def __init__(self, every: float = 5.0):
        self.every, self.label, self.samples = every, "start", []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((self.label, os.getloadavg()[0]))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def of(self, label: str) -> dict:
        xs = [v for name, v in self.samples if name == label]
        if not xs:
            return {}
        return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


# ----------------------------------------------------------------------------- data and scoring


class M4:
    """M4 Hourly's training part (written once for the peers), test values and baselines."""

    def __init__(self, work: Path):
        panel = load_m4_hourly()
        self.ids = list(panel.ids)
        self.insample, self.actual = panel.insample(), panel.test_values()
        self.baselines = fm.baseline_scores(self.insample, self.actual, SEASON)
        self.train_csv = work / "train.csv"
        train = panel.frame[panel.frame["split"] == "train"]
        ds = train.groupby("id", sort=False).cumcount() + 1
        train.assign(ds=ds)[["id", "ds", "value"]].rename(columns={"id": "unique_id", "value": "y"}).to_csv(
            self.train_csv, index=False
        )

    def read_forecasts(self, path: Path) -> dict[float, np.ndarray]:
        """A forecast file (``peers/m4_peer_io.py``'s format) -> level -> [series, H] in our series order."""
        import pandas as pd

        df = pd.read_csv(path, dtype={"unique_id": str})
        missing = set(self.ids) - set(df["unique_id"])
        if missing or len(df) != len(self.ids) * HORIZON:
            raise ValueError(
                f"{path.name}: {len(missing)} series missing, {len(df)} rows (expected {len(self.ids) * HORIZON})"
            )
        df = df.set_index(["unique_id", "step"]).loc[[(i, s) for i in self.ids for s in range(1, HORIZON + 1)]]
        return {float(c): df[c].to_numpy(np.float64).reshape(len(self.ids), HORIZON) for c in df.columns}

    def score(self, q: dict[float, np.ndarray]) -> dict:
        kwargs = {}
        if 0.025 in q and 0.975 in q:
            kwargs.update(lower=q[0.025], upper=q[0.975])
        if all(level in q for level in fm.GLUONTS_QUANTILES):
            kwargs.update(quantile_forecasts=np.stack([q[level] for level in fm.GLUONTS_QUANTILES], -1))
        s = fm.evaluate(self.insample, self.actual, q[0.5], SEASON, naive2=self.baselines["naive2"], **kwargs)
        return s.as_dict()


# ----------------------------------------------------------------------------- ours


def run_ours(m4: M4, preset: str, seed: int, work: Path, log) -> dict:
    """One seed of ``rnnops train forecast --data m4-hourly --preset P``, its test forecast written
    and scored as the peers' are."""
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "RNNOPS_CHECKPOINTS": str(work / "checkpoints"),
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
    }
    rnnops = shutil.which("rnnops", path=str(Path(sys.executable).parent)) or "rnnops"
    argv = [rnnops, "train", "forecast", "--data", "m4-hourly", "--preset", preset, "--seed", str(seed)]
    log.write(f"$ {' '.join(argv[1:])}\n")
    log.flush()
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=work, stdout=subprocess.PIPE, stderr=log, text=True)
    wall = time.perf_counter() - t0
    log.write(proc.stdout)
    found = re.search(r"run id: (\w+)", proc.stdout)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"rnnops train forecast --seed {seed} failed ({proc.returncode}); see {log.name}")
    run_id = found.group(1)
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    import mlflow

    metrics = mlflow.get_run(run_id).data.metrics
    q, predict_s = forecast_ours(run_id, m4.ids)
    path = work / f"ours-{preset}-seed{seed}.csv"
    write_forecasts(path, m4.ids, q)
    return {
        "seed": seed,
        "run_id": run_id,
        "wall_s": wall,
        "train_s": metrics.get("train_seconds"),
        "steps": metrics.get("steps"),
        "windows_per_s": metrics.get("windows_per_s"),
        "predict_s": predict_s,
        "cli_test_owa": metrics.get("test_owa"),  # the run's own scoring, as a cross-check of ours here
        "forecasts": path.name,
    }


def forecast_ours(run_id: str, ids: list[str]) -> tuple[dict[float, np.ndarray], float]:
    """The logged model's test forecast (the 48 steps after each series' training part), series in
    ``ids`` order."""
    from rnnops.training.logged_model import load_model
    from rnnops.training.panel import PanelSpec, read_panel
    from rnnops.training.panel_train import PanelWindows, forecast

    model = load_model(run_id).model
    lookback = model.config.lookback
    panel = read_panel("m4-hourly", PanelSpec("id", "timestamp", ("value",), horizon=HORIZON, lookback=lookback))
    windows = PanelWindows(panel, lookback)
    t0 = time.perf_counter()
    fc = forecast(model, windows, panel.splits().val_end)
    predict_s = time.perf_counter() - t0
    row_of = {panel.ids[int(s)]: r for r, s in enumerate(fc.series)}
    rows = [row_of[i] for i in ids]
    return {float(lv): fc.quantiles[rows, :, k] for k, lv in enumerate(fc.levels)}, predict_s


def write_forecasts(path: Path, ids, q: dict[float, np.ndarray]) -> None:
    import m4_peer_io

    m4_peer_io.write_forecasts(path, ids, HORIZON, q)


def our_throughput(steps: int, hidden: int, layers: int, lookback: int, batch: int) -> dict:
    """Training windows per second of our panel model at this size: the quick preset's step (sampling,
    forward, pinball loss, backward, clipping, AdamW) timed over ``steps`` after 5 warm-up steps,
    one torch thread."""
    import torch

    from rnnops.training.panel import PanelSpec, read_panel
    from rnnops.training.panel_model import PanelForecaster
    from rnnops.training.panel_train import PanelTrainConfig, PanelWindows, model_config, training_origins

    torch.set_num_threads(1)
    torch.manual_seed(0)
    panel = read_panel("m4-hourly", PanelSpec("id", "timestamp", ("value",), horizon=HORIZON, lookback=lookback))
    config = PanelTrainConfig(lookback=lookback, hidden_size=hidden, num_layers=layers, batch_size=batch)
    windows = PanelWindows(panel, lookback)
    model = PanelForecaster(model_config(config, panel, windows))
    series, low, high = training_origins(panel, lookback)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(0)
    times = []
    for _ in range(steps + 6):
        pick = rng.integers(0, len(series), batch)
        loss = model.loss(windows.batch(series[pick], rng.integers(low[pick], high[pick] + 1)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        opt.step()
        times.append(time.perf_counter())
    t = times[5:]
    return {
        "model": f"GRU {layers}x{hidden}, {lookback}-step window in {config.segment_length}-step segments, "
        f"{batch} windows per step",
        "steps": len(t) - 1,
        "seconds": t[-1] - t[0],
        "windows_per_s": (len(t) - 1) * batch / (t[-1] - t[0]),
    }


# ----------------------------------------------------------------------------- peers


def peer_python(peer: str, build: bool) -> Path | None:
    """The peer's virtualenv's python, made first when ``build`` (None when absent and not built)."""
    from peerlib import CACHE, ensure_venv

    pins = PEERS[peer][0]
    py = CACHE / f"{peer}-venv" / "bin" / "python"
    if build:
        return ensure_venv(peer, pins)
    stamp = py.parent.parent / "pins.txt"
    if py.is_file() and stamp.is_file() and stamp.read_text() == "\n".join(pins) + "\n":
        return py
    return None


def run_peer(peer: str, py: Path, args, work: Path, log, extra: list[str] = ()) -> dict:
    runner = HERE / "peers" / PEERS[peer][1]
    argv = [str(py), str(runner), "--train", str(work / "train.csv"), "--out", str(work)]
    if PEERS[peer][2]:
        argv += ["--budget-s", str(args.budget_s), "--seed", str(args.peer_seed)]
    argv += list(extra)
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "RAY_DISABLE_USAGE_STATS": "1"}
    rc = subprocess.run(argv, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"{peer} runner failed ({rc}); see {log.name}")
    return json.loads((work / f"{peer}.json").read_text())


# ----------------------------------------------------------------------------- the run


def run(args) -> dict:
    work = args.work or Path(tempfile.mkdtemp(prefix="rnnops-m4-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    m4 = M4(work)
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    peers = [] if args.peers == "none" else [p for p in args.peers.split(",") if p]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peer(s) {unknown}: use {', '.join(PEERS)} or none")
    pythons, skipped = {}, {}
    for peer in peers:  # venvs first, so their builds do not fall inside anyone's timings
        py = peer_python(peer, build=not args.skip_venv_builds)
        if py is None:
            skipped[peer] = "no virtualenv (run once without --skip-venv-builds to make it)"
        else:
            pythons[peer] = py
    # interleave: ours, a peer, ours, a peer, ...; then the rest of either
    order: list[tuple[str, object]] = []
    queue = [p for p in peers if p in pythons]
    for i in range(max(len(seeds), len(queue))):
        if i < len(seeds):
            order.append(("ours", seeds[i]))
        if i < len(queue):
            order.append(("peer", queue[i]))
    result = {
        "preset": args.preset,
        "budget_s": args.budget_s,
        "cores": os.cpu_count(),
        "ours": [],
        "peers": {},
        "skipped": skipped,
        "scores": {},
        "load": {},
        "uptime_before": _uptime(),
    }
    log_path = work / "m4_peers.log"
    with LoadSampler() as load, open(log_path, "a") as log:
        for kind, what in order:
            label = f"ours seed {what}" if kind == "ours" else str(what)
            load.label = label
            print(f"[m4] {label} …", file=sys.stderr, flush=True)
            try:
                if kind == "ours":
                    r = run_ours(m4, args.preset, what, work, log)
                    result["ours"].append(r)
                    result["scores"][f"ours-seed{what}"] = m4.score(m4.read_forecasts(work / r["forecasts"]))
                else:
                    extra = []
                    if what == "neuralforecast" and args.throughput_steps:
                        extra = ["--throughput-steps", str(args.throughput_steps)]
                    if what == "statsforecast":
                        extra = ["--models", args.statsforecast_models]
                    rep = run_peer(what, pythons[what], args, work, log, extra)
                    result["peers"][what] = rep
                    for row in rep["rows"]:
                        result["scores"][row] = m4.score(m4.read_forecasts(work / f"{row}.csv"))
            except (RuntimeError, ValueError, KeyError, OSError) as exc:
                result["skipped"][label] = f"failed: {exc}"
                print(f"[m4] {label} FAILED: {exc}", file=sys.stderr, flush=True)
            result["load"][label] = load.of(label)
        if args.throughput_steps:
            load.label = "throughput (ours)"
            result["throughput_ours"] = our_throughput(args.throughput_steps, 128, 2, 336, 256)
            result["load"]["throughput (ours)"] = load.of("throughput (ours)")
    if len(result["ours"]) > 1:  # the seeds' ensemble: the mean of their quantile forecasts
        qs = [m4.read_forecasts(work / r["forecasts"]) for r in result["ours"]]
        mean = {lv: np.mean([q[lv] for q in qs], axis=0) for lv in qs[0]}
        result["scores"]["ours-ensemble"] = m4.score(mean)
    result["baselines"] = {k: v.as_dict() for k, v in m4.baselines.items()}
    result["uptime_after"] = _uptime()
    result["work"] = str(work)
    return result


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())


# ----------------------------------------------------------------------------- the table


def _f(v, digits: int = 3) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _load(res: dict, label: str) -> str:
    x = res["load"].get(label) or {}
    return f"{x['min']:.1f}–{x['max']:.1f}" if x else ""


PEER_NAMES = {
    "neuralforecast-LSTM": ("NeuralForecast LSTM", "neuralforecast"),
    "neuralforecast-DeepAR": ("NeuralForecast DeepAR", "neuralforecast"),
    "neuralforecast-NHITS": ("NeuralForecast NHITS", "neuralforecast"),
    "gluonts-DeepAR": ("GluonTS DeepAR (torch)", "gluonts"),
    "statsforecast-SeasonalNaive": ("statsforecast SeasonalNaive", "statsforecast"),
    "statsforecast-AutoETS": ("statsforecast AutoETS", "statsforecast"),
    "statsforecast-AutoTheta": ("statsforecast AutoTheta", "statsforecast"),
}


def markdown(res: dict) -> str:
    head = "| method | sMAPE | MASE | OWA | MSIS | coverage (95 %) | training s | prediction s | steps | load (1-min) |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    s = res["scores"]

    def row(name, sc, train_s="", pred_s="", steps="", load=""):
        cells = [_f(sc.get(m)) for m in METRICS] if sc else [""] * len(METRICS)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {train_s} | {pred_s} | {steps} | {load} |")

    ours = res["ours"]
    for r in ours:
        sc = s.get(f"ours-seed{r['seed']}")
        row(
            f"rnnops `--preset {res['preset']}`, seed {r['seed']}",
            sc,
            _f(r["train_s"], 0),
            _f(r["predict_s"], 2),
            f"{int(r['steps']):,}" if r["steps"] else "",
            _load(res, f"ours seed {r['seed']}"),
        )
    if len(ours) > 1:
        per = [s[f"ours-seed{r['seed']}"] for r in ours if f"ours-seed{r['seed']}" in s]
        cells = []
        for m in METRICS:
            xs = [p[m] for p in per if p.get(m) is not None and not math.isnan(p[m])]
            cells.append(f"**{_f(statistics.median(xs))}** ({_f(min(xs))}–{_f(max(xs))})" if xs else "")
        lines.append(f"| **rnnops, median of {len(per)} seeds** (range) | " + " | ".join(cells) + " | | | | |")
        row(f"rnnops, the {len(ours)} seeds' ensemble (mean of quantiles; {len(ours)} budgets)", s.get("ours-ensemble"))
    for peer, rep in res["peers"].items():
        for key, r in rep["rows"].items():
            name = PEER_NAMES.get(key, (key, peer))[0]
            row(
                f"{name} {rep.get('version', '')}",
                s.get(key),
                _f(r["train_s"], 0),
                _f(r["predict_s"], 2),
                f"{r['steps']:,}" if r.get("steps") else "",
                _load(res, peer),
            )
    for name, key in (("seasonal naive (this run)", "seasonal_naive"), ("Naive2 (this run)", "naive2")):
        row(name, res["baselines"][key])
    for name in ("Smyl (ES-RNN, M4 winner)", "Doornik et al. (best hourly)"):
        sm, ma, ow, ms = M4_HOURLY_ANCHORS[name]
        lines.append(f"| {name} (published) | {_f(sm)} | {_f(ma)} | {_f(ow)} | {_f(ms)} | | | | | |")
    out = ["\n".join(lines)]
    t_ours, t_nf = res.get("throughput_ours"), (res["peers"].get("neuralforecast") or {}).get("throughput")
    if t_ours or t_nf:
        tl = ["| training throughput (one torch thread) | model | windows/s |", "|---|---|---:|"]
        if t_ours:
            tl.append(f"| rnnops panel model | {t_ours['model']} | {t_ours['windows_per_s']:,.0f} |")
        if t_nf:
            tl.append(f"| NeuralForecast GRU | {t_nf['model']} | {t_nf['windows_per_s']:,.0f} |")
        if t_ours and t_nf:
            tl.append(f"| ratio | | {t_ours['windows_per_s'] / t_nf['windows_per_s']:.1f}x |")
        out.append("\n".join(tl))
    if res["skipped"]:
        out.append("Not in this run: " + "; ".join(f"{k}: {v}" for k, v in res["skipped"].items()) + ".")
    out.append(f"`uptime` before: `{res['uptime_before']}`; after: `{res['uptime_after']}` ({res['cores']} cores).")
    return "\n\n".join(out)


def write_doc(text: str, command: str) -> None:
    doc = DOC.read_text()
    if DOC_BEGIN not in doc or DOC_END not in doc:
        raise SystemExit(f"{DOC} has no {DOC_BEGIN} … {DOC_END} block to replace")
    before, rest = doc.split(DOC_BEGIN, 1)
    _, after = rest.split(DOC_END, 1)
    block = f"{DOC_BEGIN}\n_Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}._\n\n{text}\n{DOC_END}"
    DOC.write_text(before + block + after)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="quick", choices=("tiny", "quick", "full"), help="our preset")
    ap.add_argument("--seeds", default="0,1,2", help="our seeds (comma-separated)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="the neural peers' wall-clock training budget (the quick preset's 300 s)",
    )
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated: {', '.join(PEERS)}, or none")
    ap.add_argument("--peer-seed", type=int, default=1, help="the neural peers' random seed (their default 1)")
    ap.add_argument(
        "--statsforecast-models",
        default="SeasonalNaive,AutoETS,AutoTheta",
        help="statsforecast's models (AutoETS takes ~7 min here: a smoke run keeps SeasonalNaive)",
    )
    ap.add_argument(
        "--skip-venv-builds",
        action="store_true",
        help="use the peers' virtualenvs already made; a peer without one is left out (and said so)",
    )
    ap.add_argument("--throughput-steps", type=int, default=20, help="steps timed per side (0: no throughput figure)")
    ap.add_argument("--work", type=Path, help="forecasts, logs, the MLflow store (default: a new temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--write-doc", action="store_true", help=f"replace the table in {DOC.relative_to(HERE.parent)}")
    args = ap.parse_args(argv)
    res = run(args)
    text = markdown(res)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    if args.write_doc:
        shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--write-doc"]
        shown = [
            a
            for i, a in enumerate(shown)
            if a not in ("--json", "--work") and (i == 0 or shown[i - 1] not in ("--json", "--work"))
        ]
        write_doc(text, " ".join(["python benchmarks/m4_peers.py", *shown]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
