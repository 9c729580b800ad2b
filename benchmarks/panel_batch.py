"""Batch jobs over a panel (issue 26, section 4): rows/s and peak RSS of ``rnnops forecast`` with a
panel model on a generated panel of N series (local and Spark engines), against NeuralForecast's
``predict`` and Darts' ONNX prediction path with models of the same size, each in its own process
and virtualenv, side by side in one run.

    python benchmarks/panel_batch.py --series 10000,100000            # writes docs/benchmarks.md's section
    python benchmarks/panel_batch.py --series 2000 --no-doc            # a smoke run

The panel (benchmarks/retail_panel.py's generator, seeded): per series the model's lookback (14
days) of history, sorted by id then date, in PANEL (Parquet); the 7 days after it, with the
future covariate ``promo``, in FUTURE. Our model: tests/panel_fixtures.py's (GRU, hidden 16,
context 4, decoder 8, lookback 14, horizon 7, quantiles 0.1/0.5/0.9; past ``price``, future
``promo``, statics ``store`` and ``size``), random weights: prediction speed does not depend on them.
NeuralForecast: its GRU with the same lookback, horizon, hidden sizes and quantile loss (MQLoss),
the same covariates (``store`` left out: its statics must be numbers), trained 5 steps on 1,000
series of 60 days in its own virtualenv (``~/.cache/rnnops/peers/neuralforecast-venv``, the recipe
of benchmarks/m4_peers.py: neuralforecast 3.3.0, our CPU torch 2.13.0), then ``predict`` on PANEL
and FUTURE; its time and RSS are of ``predict`` alone (reading the files and training excluded),
ours of the whole ``rnnops forecast`` process (start, read, forecast, write). Darts: a
``BlockRNNModel`` (GRU, hidden 16, a fully connected layer of 8, the same covariates and quantiles)
trained one epoch on the same training panel in ``~/.cache/rnnops/peers/darts-venv`` (darts 0.48.1,
torch 2.13.0 CPU), exported with ``to_onnx`` and run torch-free by
``darts.utils.onnx.run_onnx_prediction`` (its documented path, onnxruntime underneath); its time and
RSS are of that call alone (building its ``TimeSeries`` from the files is timed apart).

rows/s: PANEL rows per second. Peak RSS: the process tree's (ours: the CLI, Spark's JVM and
workers included; NeuralForecast: the runner during ``predict``). ``uptime``'s load average is
recorded with each figure: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path.home() / ".cache" / "rnnops" / "peers"
NF_PINS = ["neuralforecast==3.3.0", "torch==2.13.0"]  # benchmarks/m4_peers.py's (our CPU torch build)
# Darts with its torch models (the extra), our CPU torch, and what its ONNX export and inference need
DARTS_PINS = [
    "darts[torch]==0.48.1",
    "torch==2.13.0",
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
    "onnxscript==0.7.2",
    "pyarrow==26.0.1",  # the Parquet files (NeuralForecast has it through its own requirements)
]
LOOKBACK, HORIZON = 14, 7
DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- panel-batch:begin -->", "<!-- panel-batch:end -->"

T = TypeVar("T")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def load_average() -> str:
    return uptime().rsplit("load average:", 1)[-1].strip()


# ----------------------------------------------------------------------------- data and model


def write_panel(folder: Path, series: int, seed: int = 0) -> tuple[Path, Path, int]:
    """PANEL (lookback days per series) and FUTURE (the horizon's promo) as Parquet; PANEL rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(HERE))
    import retail_panel

    panel_path, future_path = folder / f"panel-{series}.parquet", folder / f"future-{series}.parquet"
    if panel_path.is_file() and future_path.is_file():
        return panel_path, future_path, pq.ParquetFile(panel_path).metadata.num_rows
    days = LOOKBACK + HORIZON
    pw = fw = None
    rows = 0
    for b in retail_panel.blocks(series=series, days=days, seed=seed, short_fraction=0.0, block=5000):
        n = len(b["item_id"]) // days
        day = np.tile(np.arange(days), n)
        b["size"] = np.array([float(len(s)) for s in b["store"]])  # as tests/panel_fixtures.py adds it
        b["date"] = b["date"].astype("datetime64[D]")  # a date column (Spark reads no nanosecond timestamps)
        hist, fut = day < LOOKBACK, day >= LOOKBACK
        cols = ["item_id", "date", "sales", "price", "promo", "store", "size"]
        p = pa.table({c: b[c][hist] for c in cols})
        f = pa.table({c: b[c][fut] for c in ("item_id", "date", "promo")})
        pw = pw or pq.ParquetWriter(str(panel_path) + ".tmp", p.schema)
        fw = fw or pq.ParquetWriter(str(future_path) + ".tmp", f.schema)
        pw.write_table(p)
        fw.write_table(f)
        rows += p.num_rows
    assert pw is not None and fw is not None
    pw.close()
    fw.close()
    os.replace(str(panel_path) + ".tmp", panel_path)
    os.replace(str(future_path) + ".tmp", future_path)
    return panel_path, future_path, rows


def write_train(folder: Path) -> Path:
    """NeuralForecast's training panel: 1,000 series of 60 days (it needs lookback + horizon rows)."""
    sys.path.insert(0, str(HERE))
    import retail_panel

    path = folder / "nf-train.parquet"
    if not path.is_file():
        df = retail_panel.generate(series=1000, days=60, seed=1, short_fraction=0.0)
        df["size"] = df["store"].map(lambda s: float(len(str(s))))
        df.to_parquet(path, index=False)
    return path


def export_model(folder: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from panel_fixtures import export_tiny_panel

    path = folder / "panel.onnx"
    if not path.is_file():
        export_tiny_panel(path)
    return path


# ----------------------------------------------------------------------------- measuring


def tree_rss_mb(root: int) -> float:
    sys.path.insert(0, str(HERE))
    import common

    return common.tree_rss_mb(root)


def own_rss_mb(pid: int) -> float:
    """The resident memory of process ``pid`` alone (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measured(argv: list[str], log: Path, timeout: float, env: dict | None = None) -> dict:
    """Run ``argv`` to completion: wall seconds, exit status, the peak RSS of its process tree and
    of its own process (ours: the CLI, which is Spark's driver; the JVM and its workers are below)."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env or os.environ.copy())
        peak = own = 0.0
        try:
            while proc.poll() is None:
                peak = max(peak, tree_rss_mb(proc.pid))
                own = max(own, own_rss_mb(proc.pid))
                if time.perf_counter() - t0 > timeout:
                    proc.kill()
                    raise TimeoutError(f"{argv[:3]} ran past {timeout:.0f} s (log {log})")
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
    return {"seconds": time.perf_counter() - t0, "rc": proc.returncode, "peak_rss_mb": peak, "own_rss_mb": own}


def run_ours(engine: str, model: Path, panel: Path, future: Path, rows: int, work: Path, timeout: float) -> dict:
    out = work / f"out-{engine}-{panel.stem}.parquet"
    argv = [
        str(REPO / ".venv" / "bin" / "rnnops"),
        "forecast",
        "--model", str(model),
        "--input", str(panel),
        "--future", str(future),
        "--id-column", "item_id",
        "--date-column", "date",
        "--output", str(out),
        "--engine", engine,
        "--no-progress",
    ]  # fmt: skip
    load = load_average()
    r = measured(argv, work / f"{engine}-{panel.stem}.log", timeout)
    if r["rc"] != 0:
        raise RuntimeError(f"rnnops forecast --engine {engine} failed: see {work / f'{engine}-{panel.stem}.log'}")
    import re

    import pyarrow.parquet as pq

    # the job's own time (after the interpreter started and imported): the CLI's summary line
    said = re.search(r"\(([\d.]+) s, [\d,]+ rows/s\)", (work / f"{engine}-{panel.stem}.log").read_text())
    r["engine_s"] = float(said.group(1)) if said else None
    return {**r, "rows": rows, "rows_per_s": rows / r["seconds"], "output_rows": pq.ParquetFile(out).metadata.num_rows, "load": load}  # fmt: skip


def ensure_venv(name: str, pins: list[str]) -> Path:
    """A peer's virtualenv under ~/.cache/rnnops/peers, as benchmarks/m4_peers.py makes them
    (peerlib.ensure_venv's recipe): made again when its pins change."""
    venv = CACHE / f"{name}-venv"
    py = venv / "bin" / "python"
    stamp = venv / "pins.txt"
    want = "\n".join(pins) + "\n"
    if py.is_file() and stamp.is_file() and stamp.read_text() == want:
        return py
    CACHE.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    with open(CACHE / f"{name}-venv.log", "w") as fh:
        for argv in ([base, "-m", "venv", "--clear", str(venv)], [*pip, "--upgrade", "pip"], [*pip, *pins]):
            subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, check=True, timeout=1800)
    stamp.write_text(want)
    return py


def ensure_nf_venv() -> Path:
    return ensure_venv("neuralforecast", NF_PINS)


def run_peer(name: str, runner: str, extra: list[str], py: Path, train: Path, panel: Path, future: Path, rows: int, work: Path, timeout: float) -> dict:  # fmt: skip
    """One peer's runner (this file, ``runner`` subcommand) in its own venv; its timed prediction."""
    out, log = work / f"{runner}-{panel.stem}.json", work / f"{runner}-{panel.stem}.log"
    argv = [str(py), __file__, runner, str(train), str(panel), str(future), *extra, str(out)]
    load = load_average()
    r = measured(argv, log, timeout, env={**os.environ, "PYTHONPATH": ""})
    if r["rc"] != 0:
        raise RuntimeError(f"the {name} runner failed: see {log}")
    got = json.loads(out.read_text())
    s = got["predict_s"]
    return {**got, "seconds": s, "rows": rows, "rows_per_s": rows / s, "peak_rss_mb": got["predict_peak_rss_mb"], "load": load}  # fmt: skip


def run_nf(py: Path, train: Path, panel: Path, future: Path, rows: int, work: Path, timeout: float) -> dict:
    return run_peer("NeuralForecast", "nf-runner", [], py, train, panel, future, rows, work, timeout)


def run_darts(py: Path, train: Path, panel: Path, future: Path, rows: int, work: Path, timeout: float) -> dict:
    return run_peer("Darts", "darts-runner", [str(work / "darts.onnx")], py, train, panel, future, rows, work, timeout)


# ----------------------------------------------------------------------------- NeuralForecast's side


def nf_runner(train_path: str, panel_path: str, future_path: str, out: str) -> None:
    """In NeuralForecast's venv: train a GRU of our model's size 5 steps, time ``predict`` on PANEL."""
    import logging

    import pandas as pd
    from neuralforecast import NeuralForecast
    from neuralforecast.losses.pytorch import MQLoss
    from neuralforecast.models import GRU

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)

    def frames(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
        df = pd.read_parquet(path).rename(columns={"item_id": "unique_id", "date": "ds", "sales": "y"})
        df["ds"] = pd.to_datetime(df["ds"])
        static = df.groupby("unique_id", sort=False)["size"].first().reset_index()
        return df[["unique_id", "ds", "y", "price", "promo"]], static

    train, train_static = frames(train_path)
    model = GRU(
        h=HORIZON,
        input_size=LOOKBACK,
        encoder_n_layers=1,
        encoder_hidden_size=16,
        context_size=4,
        decoder_hidden_size=8,
        decoder_layers=1,
        futr_exog_list=["promo"],
        hist_exog_list=["price"],
        stat_exog_list=["size"],
        loss=MQLoss(quantiles=[0.1, 0.5, 0.9]),
        max_steps=5,
        batch_size=256,
        valid_batch_size=1024,
        inference_windows_batch_size=1024,
        scaler_type="robust",
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        accelerator="cpu",
    )
    nf = NeuralForecast(models=[model], freq="D")
    t0 = time.perf_counter()
    nf.fit(train, static_df=train_static)
    fit_s = time.perf_counter() - t0
    panel, static = frames(panel_path)
    fut = pd.read_parquet(future_path).rename(columns={"item_id": "unique_id", "date": "ds"})
    fut["ds"] = pd.to_datetime(fut["ds"])
    fc, predict_s, peak_mb, rss_before = timed_peak(lambda: nf.predict(df=panel, static_df=static, futr_df=fut))
    Path(out).write_text(
        json.dumps(
            {
                "fit_s": fit_s,
                "predict_s": predict_s,
                "predict_peak_rss_mb": peak_mb,
                "rss_before_predict_mb": rss_before,
                "output_rows": len(fc),
                "series": int(panel["unique_id"].nunique()),
            }
        )
    )


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def timed_peak(predict: Callable[[], T]) -> tuple[T, float, float, float]:
    """A peer's prediction timed: (its result, seconds, peak RSS MB while it ran (sampled every
    50 ms), RSS MB before it)."""
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    rss_before = _rss_mb()
    sampler.start()
    t0 = time.perf_counter()
    result = predict()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    return result, seconds, peak[0], rss_before


# ----------------------------------------------------------------------------- Darts' side


def darts_runner(train_path: str, panel_path: str, future_path: str, onnx_path: str, out: str) -> None:
    """In Darts' venv: a ``BlockRNNModel`` (GRU) of our model's size with the same covariates and
    quantiles, trained one epoch, exported with ``to_onnx`` and run torch-free by
    ``darts.utils.onnx.run_onnx_prediction`` (Darts' documented ONNX path) on PANEL; the time is
    of that call alone (building Darts' ``TimeSeries`` from the files is timed apart)."""
    import logging

    import onnxruntime as ort
    import pandas as pd
    from darts import TimeSeries
    from darts.models import BlockRNNModel
    from darts.utils.likelihood_models import QuantileRegression
    from darts.utils.onnx import run_onnx_prediction

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)

    def load(path: str) -> pd.DataFrame:
        df = pd.read_parquet(path)
        df["date"] = pd.to_datetime(df["date"])
        for col in ("sales", "price", "promo", "size"):
            if col in df:
                df[col] = df[col].astype("float32")
        return df

    def series(df: pd.DataFrame, horizon: pd.DataFrame | None) -> tuple[list, list, list]:
        """Per series: the target (static ``size``), past ``price``, future ``promo`` (its history
        and, with ``horizon``, the steps ahead), in the file's order of ids. Built with
        ``TimeSeries.from_times_and_values`` on each series' slice of the sorted columns:
        ``from_group_dataframe`` took ~10 ms a series here (1,000 s for 100,000)."""
        import numpy as np

        def cuts(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
            frame = frame.sort_values(["item_id", "date"], kind="stable").reset_index(drop=True)
            ids = frame["item_id"].to_numpy()
            starts = np.r_[0, np.flatnonzero(ids[1:] != ids[:-1]) + 1, len(ids)]
            return frame, starts

        df, starts = cuts(df)
        times = pd.DatetimeIndex(df["date"])
        sales, price, size = (df[c].to_numpy() for c in ("sales", "price", "size"))
        target, past = [], []
        for lo, hi in zip(starts[:-1], starts[1:]):
            static = pd.DataFrame({"size": [size[lo]]})
            target.append(TimeSeries.from_times_and_values(times[lo:hi], sales[lo:hi], static_covariates=static))
            past.append(TimeSeries.from_times_and_values(times[lo:hi], price[lo:hi]))
        promo_df = df[["item_id", "date", "promo"]]
        if horizon is not None:
            promo_df = pd.concat([promo_df, horizon[["item_id", "date", "promo"]]], ignore_index=True)
        promo_df, p_starts = cuts(promo_df)
        p_times, promo = pd.DatetimeIndex(promo_df["date"]), promo_df["promo"].to_numpy()
        future = [
            TimeSeries.from_times_and_values(p_times[lo:hi], promo[lo:hi])
            for lo, hi in zip(p_starts[:-1], p_starts[1:])
        ]
        return target, past, future

    train = load(train_path)
    t0 = time.perf_counter()
    tr_target, tr_past, tr_future = series(train, None)
    model = BlockRNNModel(
        model="GRU",
        input_chunk_length=LOOKBACK,
        output_chunk_length=HORIZON,
        hidden_dim=16,
        n_rnn_layers=1,
        hidden_fc_sizes=[8],
        likelihood=QuantileRegression([0.1, 0.5, 0.9]),
        batch_size=256,
        n_epochs=1,
        random_state=0,
        pl_trainer_kwargs={
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
        },
    )
    model.fit(tr_target, past_covariates=tr_past, future_covariates=tr_future, max_samples_per_ts=4)
    model.to_onnx(onnx_path)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    target, past, future = series(load(panel_path), load(future_path))
    build_s = time.perf_counter() - t0
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    fc, predict_s, peak_mb, rss_before = timed_peak(
        lambda: run_onnx_prediction(
            n=HORIZON, session=session, series=target, past_covariates=past, future_covariates=future, verbose=False
        )
    )
    Path(out).write_text(
        json.dumps(
            {
                "fit_s": fit_s,
                "timeseries_s": build_s,
                "predict_s": predict_s,
                "predict_peak_rss_mb": peak_mb,
                "rss_before_predict_mb": rss_before,
                "output_rows": sum(len(f) for f in fc),
                "series": len(fc),
                "quantile_columns": list(fc[0].components) if fc else [],
            }
        )
    )


# ----------------------------------------------------------------------------- report


def markdown(res: dict) -> str:
    lines = [
        "| series | PANEL rows | contestant | seconds | rows/s | x NeuralForecast | in the job alone | peak RSS (MB) "
        "| of it, the command's own process (MB) | load (1, 5, 15 min) |",
        "|---:|---:|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for n, by in res["runs"].items():
        nf = by.get("NeuralForecast predict")
        for name, r in by.items():
            vs = f"{r['rows_per_s'] / nf['rows_per_s']:.1f}x" if nf else "-"
            alone = f"{r['engine_s']:.1f} s, {r['rows'] / r['engine_s']:,.0f} rows/s" if r.get("engine_s") else "-"
            own = f"{r['own_rss_mb']:,.0f}" if r.get("own_rss_mb") else "-"
            lines.append(
                f"| {int(n):,} | {r['rows']:,} | {name} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {vs} | "
                f"{alone} | {r['peak_rss_mb']:,.0f} | {own} | {r['load']} |"
            )
    return "\n".join(lines)


def write_doc(text: str, command: str) -> None:
    doc = DOC.read_text()
    block = f"{BEGIN}\n`{command}` ({time.strftime('%Y-%m-%d')}):\n\n{text}\n{END}"
    if BEGIN in doc:
        doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END) :]
    else:
        doc = doc.rstrip() + "\n\n## Batch jobs over a panel\n\n" + block + "\n"
    DOC.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "nf-runner":
        nf_runner(*argv[1:5])
        return 0
    if argv and argv[0] == "darts-runner":
        darts_runner(*argv[1:6])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", default="10000,100000", help="comma-separated panel sizes")
    ap.add_argument("--contestants", default="local,spark,neuralforecast,darts")
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "rnnops" / "bench" / "panel_batch")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    ap.add_argument("--no-doc", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    contestants = args.contestants.split(",")
    nf_py = ensure_nf_venv() if "neuralforecast" in contestants else None  # before any timing
    darts_py = ensure_venv("darts", DARTS_PINS) if "darts" in contestants else None
    model = export_model(args.work)
    train = write_train(args.work) if nf_py or darts_py else None
    res: dict = {"uptime_start": uptime(), "runs": {}}
    for n in (int(s) for s in args.series.split(",")):
        panel, future, rows = write_panel(args.work, n)
        by: dict = {}
        for who in contestants:
            print(f"{n} series: {who}…  ({uptime()})", file=sys.stderr, flush=True)
            if who == "neuralforecast":
                assert nf_py is not None and train is not None
                by["NeuralForecast predict"] = run_nf(nf_py, train, panel, future, rows, args.work, args.timeout)
            elif who == "darts":
                assert darts_py is not None and train is not None
                by["Darts ONNX run_onnx_prediction"] = run_darts(
                    darts_py, train, panel, future, rows, args.work, args.timeout
                )
            else:
                by[f"rnnops forecast --engine {who}"] = run_ours(
                    who, model, panel, future, rows, args.work, args.timeout
                )
            print(json.dumps({k: v for k, v in by[list(by)[-1]].items()}), file=sys.stderr, flush=True)
        res["runs"][n] = by
    res["uptime_end"] = uptime()
    text = markdown(res)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if not args.no_doc:
        write_doc(text, "python benchmarks/panel_batch.py " + " ".join(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
