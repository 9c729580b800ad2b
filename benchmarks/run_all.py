"""Run the whole benchmark suite and regenerate ``docs/benchmarks.md`` and its plots (``docs/img/``).

    python benchmarks/run_all.py            # full figures (run on a quiet machine: tens of minutes)
    python benchmarks/run_all.py --quick    # smoke run of every figure (a few minutes each)
    python benchmarks/run_all.py --only http,batch

Figures, each run as its own process (``python benchmarks/<script>.py [--quick] --json OUT``)
so that torch threads, servers and MLflow state never leak from one into the next:

1. ``kernel``    benchmarks/kernel.py: eager vs TorchScript vs ORT vs ORT-int8, with the roofline
2. ``streaming`` benchmarks/streaming.py: continuous-batching scheduler vs naive, over HTTP
3. ``http``      benchmarks/forecast_http.py: our /forecast vs ``mlflow models serve``
4. ``batch``     benchmarks/batch_job.py: ``rnnops forecast`` (local, Spark) vs a PyTorch eager loop
5. ``training``  benchmarks/training_throughput.py: our training loops vs tutorial loops
6. ``ray``       benchmarks/peers/ray_serve.py: streamed generation vs Ray Serve's ``@serve.batch``
7. ``bentoml``   benchmarks/peers/bentoml_batching.py: /forecast vs BentoML adaptive batching
8. ``mlserver``  benchmarks/peers/mlserver_oip.py: our OIP endpoint vs MLServer's, same bodies
9. ``workers``   benchmarks/workers.py: streaming and forecasts at ``--workers`` 1 and 2
10. ``m4``       benchmarks/m4_peers.py: our global forecaster on M4 Hourly (quick preset, 3 seeds) vs
   NeuralForecast, statsforecast and GluonTS, all scored by ``forecast_metrics`` (~50 min); a full
   run also rewrites the table in ``docs/forecasting.md``
11. ``series``   benchmarks/series_http.py: /forecast by series (a panel model) vs single-window requests
12. ``sessions`` benchmarks/series_sessions.py: 100,000 panel sessions by series id in Redis, 1 and 2 workers

The peers (6-8, 10) run in virtualenvs of their own that their scripts make from PyPI, once, under
``~/.cache/rnnops/peers`` (never in ours, never in a serving image): the first run downloads them;
``--skip-venv-builds`` uses the ones already made and leaves out a peer that has none.

The page starts with the machine (CPU, cores, RAM, load, versions) and a summary of each
figure's headline ratio and goal; every figure's inputs ran side by side in one run. A figure
that fails is reported as failed (with its log) and the others still run. Raw results go to
``--work`` (default: a temporary folder): ``<figure>.json`` and ``<figure>.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "peers"))
import common as C  # noqa: E402

DOCS = C.REPO / "docs"
IMG = DOCS / "img"
FIGURES = (
    "kernel",
    "streaming",
    "http",
    "batch",
    "training",
    "ray",
    "bentoml",
    "mlserver",
    "workers",
    "m4",
    "series",
    "sessions",
)
TITLES = {
    "kernel": "1. Kernel: eager vs TorchScript vs onnxruntime (fp32, int8), with the roofline",
    "streaming": "2. Streaming generation: continuous batching vs naive, over HTTP",
    "http": "3. Forecast over HTTP: rnnops vs MLflow's model server",
    "batch": "4. Batch forecast job: rnnops forecast (local, Spark) vs a PyTorch eager loop",
    "training": "5. Training throughput: our loops vs the tutorial loops",
    "ray": "6. Streamed generation with mixed lengths: rnnops vs Ray Serve's @serve.batch",
    "bentoml": "7. Forecast over HTTP: rnnops vs a plain BentoML service with adaptive batching",
    "mlserver": "8. Open Inference Protocol: rnnops vs MLServer with adaptive batching",
    "workers": "9. One machine, more workers: streaming and forecasts at --workers 1 and 2",
    "m4": "10. M4 Hourly: our global forecaster vs NeuralForecast, statsforecast and GluonTS",
    "series": "11. Forecast by series: /forecast's series form vs single-window requests",
    "sessions": "12. Sessions by series id: 100,000 open series in Redis, 1 and 2 workers",
}


def command(fig: str, quick: bool, out: Path, work: Path, skip_venv_builds: bool = False) -> list[str]:
    py = sys.executable
    q = ["--quick"] if quick else []
    if fig == "m4":
        # --quick: the tiny preset, one seed, statsforecast's SeasonalNaive; a full run rewrites forecasting.md's table
        skip = ["--skip-venv-builds"] if skip_venv_builds else []
        size = (
            ["--preset", "tiny", "--seeds", "0", "--peers", "statsforecast", "--statsforecast-models", "SeasonalNaive"]
            + ["--throughput-steps", "5"]
            if quick
            else ["--write-doc"]
        )
        return [py, str(HERE / "m4_peers.py"), *size, *skip, "--json", str(out), "--work", str(work / "m4")]
    if fig == "kernel":
        return [py, str(HERE / "kernel.py"), *q, "--json", str(out)]
    if fig == "streaming":  # its own flag for the JSON file is --out; the quick preset's LSTM, both precisions
        return [py, str(HERE / "streaming.py"), *q, "--hidden", "384", "--precisions", "fp32,int8", "--out", str(out)]
    if fig == "http":
        return [py, str(HERE / "forecast_http.py"), *q, "--json", str(out), "--work", str(work / "shared")]
    if fig == "batch":
        return [py, str(HERE / "batch_job.py"), *q, "--json", str(out), "--work", str(work / "shared")]
    if fig == "training":
        return [py, str(HERE / "training_throughput.py"), *q, "--json", str(out)]
    if fig == "ray":
        return [py, str(HERE / "peers" / "ray_serve.py"), *q, "--json", str(out), "--work", str(work / "ray")]
    if fig == "workers":
        return [py, str(HERE / "workers.py"), *q, "--json", str(out), "--work", str(work / "shared")]
    if fig == "bentoml":  # the champion forecaster of `http` and `batch` (work/shared): the same ONNX file
        return [py, str(HERE / "peers" / "bentoml_batching.py"), *q, "--json", str(out), "--work", str(work / "shared")]
    if fig == "mlserver":
        return [py, str(HERE / "peers" / "mlserver_oip.py"), *q, "--json", str(out), "--work", str(work / "shared")]
    if fig == "series":  # the panel model is made once in work/panel and shared with `sessions`
        return [py, str(HERE / "series_http.py"), *q, "--json", str(out), "--work", str(work / "panel")]
    if fig == "sessions":  # 3,000 series opened over HTTP, cloned in Redis to 100,000 (opening is the slow part)
        return [
            py,
            str(HERE / "series_sessions.py"),
            *q,
            *([] if quick else ["--open-http", "3000", "--connections", "16,64"]),
            "--json",
            str(out),
            "--work",
            str(work / "panel"),
        ]
    raise ValueError(fig)


def run_figure(
    fig: str, quick: bool, work: Path, timeout: float, skip_venv_builds: bool = False
) -> tuple[dict | None, str | None, float]:
    out, log = work / f"{fig}.json", work / f"{fig}.log"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1", "BENTOML_DO_NOT_TRACK": "true"}
    if not env.get("RNNOPS_DATA_DIR") and (C.REPO.parent / "shared" / "data").is_dir():
        env["RNNOPS_DATA_DIR"] = str(C.REPO.parent / "shared" / "data")
    argv = command(fig, quick, out, work, skip_venv_builds)
    print(f"[{fig}] {' '.join(argv[1:])}  (log: {log})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        try:
            proc = subprocess.Popen(
                argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=C.REPO, start_new_session=True
            )
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            C.stop_process(proc)
            return None, f"ran past {timeout:.0f} s", time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    if rc != 0 or not out.is_file():
        return None, f"exit status {rc}: {C.tail(log, 3).strip()[-300:]}", seconds
    return json.loads(out.read_text()), None, seconds


# ----------------------------------------------------------------------------- sections


def kernel_section(res: dict) -> tuple[str, dict]:
    import kernel

    rows = res["rows"]
    top = max(r["batch"] for r in rows)
    b1 = [r for r in rows if r["batch"] == 1]
    big = [r for r in rows if r["batch"] == top]
    head = {
        "ORT vs eager at batch 1": ", ".join(
            f"{r['model']} {r['latency_ms']['eager'] / r['latency_ms']['ort']:.1f}x" for r in b1
        ),
        "goal_1": "ORT >= 5x eager at batch 1",
        "met_1": all(r["latency_ms"]["eager"] / r["latency_ms"]["ort"] >= 5 for r in b1),
        f"ORT / roofline at batch {top}": ", ".join(
            f"{r['model']} {r['latency_ms']['ort'] / r['roofline_ms']:.2f}x" for r in big
        ),
        "goal_2": f"ORT within 2x of the roofline at batch {top}",
        "met_2": all(r["latency_ms"]["ort"] / r["roofline_ms"] <= 2 for r in big),
    }
    summary = {
        "figure": "kernel",
        "headline": f"ORT vs eager at batch 1: {head['ORT vs eager at batch 1']}; "
        f"ORT / roofline at batch {top}: {head[f'ORT / roofline at batch {top}']}",
        "goal": f"{head['goal_1']}; {head['goal_2']}",
        "met": "yes" if head["met_1"] and head["met_2"] else ("partly" if head["met_1"] or head["met_2"] else "no"),
    }
    return kernel.markdown(res), summary


def kernel_plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in res["rows"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    colors = {"eager": "tab:gray", "torchscript": "tab:purple", "ort": "tab:orange", "ort_int8": "tab:green"}
    for ax, m in zip(axes[0], models):
        rows = [r for r in res["rows"] if r["model"] == m]
        b = [r["batch"] for r in rows]
        for k, color in colors.items():
            ax.plot(b, [r["latency_ms"][k] for r in rows], "o-", color=color, label=k, ms=4)
        ax.plot(b, [r["roofline_ms"] for r in rows], "k--", label="roofline", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch (streams), one T=1 step")
        ax.set_ylabel("ms per step (lower is better)")
        ax.set_title(f"char LSTM {m}", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pct(x) -> str:
    return f"{round(100 * x)}%" if x is not None else "-"


def streaming_section(res: dict) -> tuple[str, dict]:
    rows = []
    modes = res.get("modes", {})
    for mode, levels in modes.items():
        for r in levels:
            rows.append(
                [
                    mode,
                    r["concurrency"],
                    C.fmt(r["chars_per_s"]),
                    f"{C.fmt(r['ttfc_ms_p50'])} / {C.fmt(r['ttfc_ms_p99'])}",
                    f"{C.fmt(r['inter_chunk_ms_p50'])} / {C.fmt(r['inter_chunk_ms_p99'])}",
                    C.fmt(r.get("server_cpu_ms_per_1k_chars")),
                    r["requests"],
                    r["errors"],
                ]
            )
    by = {m: {r["concurrency"]: r for r in levels} for m, levels in modes.items()}
    ratio_lines = []
    for c in res.get("levels", []):
        if "batched" in by and "naive" in by and c in by["batched"] and c in by["naive"]:
            ratio_lines.append(f"{c} streams {C.ratio(by['batched'][c]['chars_per_s'], by['naive'][c]['chars_per_s'])}")
    kern = res.get("kernel", {})
    text = "\n".join(
        [
            f"{res.get('chars_per_request', '?')} characters per request; {res.get('cpus', '?')} CPUs.",
            "",
            C.md_table(
                [
                    "mode",
                    "streams",
                    "chars/s",
                    "time to first chunk p50 / p99 ms",
                    "inter-chunk p50 / p99 ms",
                    "server CPU ms / 1k chars",
                    "requests",
                    "errors",
                ],
                rows,
            ),
            "",
            "Batched / naive chars/s: " + (", ".join(ratio_lines) or "-") + ".",
            "Raw ORT kernel in one process (T=1 steps): "
            + (
                "; ".join(
                    f"{p}: " + ", ".join(f"batch {b}: {C.fmt(k['chars_per_s'])} chars/s" for b, k in ks.items())
                    for p, ks in (res.get("kernels") or {"fp32": kern}).items()
                )
                or "-"
            )
            + ".",
            f"Goals: batched >= 8x naive at 64 streams: **{res.get('batched_over_naive_at_64', '-')}x**; served >= 90% of "
            f"the raw kernel at batch 64, each precision against its own: fp32 **{pct(res.get('served_over_kernel_at_64'))}**, "
            f"int8 **{pct(res.get('int8_served_over_kernel_at_64'))}**; int8 >= 1.5x fp32's chars/s served at 64 streams: "
            f"**{res.get('int8_over_fp32_served_at_64', '-')}x** (raw kernels: {res.get('int8_over_fp32_kernel_at_64', '-')}x).",
        ]
    )
    r64 = res.get("batched_over_naive_at_64")
    frac, frac8 = res.get("served_over_kernel_at_64"), res.get("int8_served_over_kernel_at_64")
    i8 = res.get("int8_over_fp32_served_at_64")
    met = [
        r64 is not None and r64 >= 8,
        frac is not None and frac >= 0.9,
        frac8 is not None and frac8 >= 0.9,
        i8 is not None and i8 >= 1.5,
    ]
    summary = {
        "figure": "streaming",
        "headline": f"batched / naive at 64 streams: {r64}x; served / kernel: fp32 "
        f"{pct(frac)}, int8 {pct(frac8)}; int8 / fp32 served: {i8}x",
        "goal": "batched >= 8x naive at 64; served >= 90% of the kernel (each precision); int8 >= 1.5x fp32",
        "met": "yes" if all(met) else ("partly" if any(met) else "no"),
    }
    return text, summary


def streaming_plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for mode, color in (("batched", "tab:orange"), ("naive", "tab:gray")):
        levels = res.get("modes", {}).get(mode, [])
        ax.plot([r["concurrency"] for r in levels], [r["chars_per_s"] for r in levels], "o-", color=color, label=mode)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("chars/s served (higher is better)")
    ax.set_title("Streaming generation over HTTP", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def http_summary(res: dict) -> dict:
    g = res["goal"]
    return {
        "figure": "http",
        "headline": f"rnnops / MLflow requests/s at concurrency {g['concurrency']}: "
        f"{C.ratio(g['rps_ratio'], 1) if g['rps_ratio'] else '-'}; p99 {'lower' if g['p99_lower'] else 'not lower'}",
        "goal": ">= 5x MLflow's requests/s at concurrency 64, lower p99",
        "met": "yes" if g["met"] else "no",
    }


def batch_summary(res: dict) -> dict:
    jobs = res["jobs"]
    local, eager, spark = (jobs.get(k, {}) for k in ("rnnops local", "PyTorch eager loop", "rnnops spark"))
    head = f"local engine {C.ratio(local.get('rows_per_s'), eager.get('rows_per_s'))} the eager loop's rows/s"
    if spark and "error" not in spark:
        head += f"; Spark (local mode) {C.fmt(spark.get('rows_per_s'))} rows/s"
    if res.get("local_vs_spark"):
        head += ", output identical" if res["local_vs_spark"]["identical"] else ", output DIFFERS"
    if res.get("big_file"):
        head += f"; {res['big_file']['rows']:,} rows in {res['big_file']['peak_rss_mb']:.0f} MB peak RSS"
    return {
        "figure": "batch",
        "headline": head,
        "goal": "(no numeric goal) faster than the eager loop; Spark == local",
        "met": "yes"
        if (local.get("rows_per_s") or 0) > (eager.get("rows_per_s") or 0)
        and (not res.get("local_vs_spark") or res["local_vs_spark"]["identical"])
        else "no",
    }


def ray_summary(res: dict) -> dict:
    g = res.get("goal") or {}
    goal = ">= 3x Ray Serve's chars/s at 64 streams, lower TTFC p99"
    if not g or g.get("streams") != 64:
        return {"figure": "ray", "headline": "64 streams not run (--quick runs 8)", "goal": goal, "met": "-"}
    by = {s: {r["streams"]: r for r in rows} for s, rows in res["servers"].items()}
    cpu = C.ratio(by["ray"][64].get("server_cpu_s_per_1k_chars"), by["rnnops"][64].get("server_cpu_s_per_1k_chars"))
    return {
        "figure": "ray",
        "headline": f"rnnops / Ray Serve chars/s at 64 streams (max_chars 50-800): "
        f"{C.ratio(g['chars_per_s_ratio'], 1)}; TTFC p99 {'lower' if g['ttfc_p99_lower'] else 'not lower'}; "
        f"server CPU per char {cpu} less",
        "goal": goal,
        "met": "yes" if g["met"] else "no",
    }


def peer_summary(fig: str, res: dict, peer: str, unit: str) -> dict:
    g = res.get("goal") or {}
    goal = f">= 2x {peer}'s {unit} at concurrency 64, lower p99"
    if g.get("met") is None:
        return {"figure": fig, "headline": "concurrency 64 not run", "goal": goal, "met": "-"}
    by = {s: {r["concurrency"]: r for r in rows} for s, rows in res["servers"].items()}
    other = next(s for s in by if s != "rnnops")
    # CPU per request holds when neighbours share the cores; requests/s does not
    cpu = C.ratio(by[other][64].get("server_cpu_ms_per_request"), by["rnnops"][64].get("server_cpu_ms_per_request"))
    return {
        "figure": fig,
        "headline": f"rnnops / {peer} {unit} at concurrency 64: {C.ratio(g['rps_ratio'], 1)}; "
        f"p99 {'lower' if g['p99_lower'] else 'not lower'}; server CPU per request {cpu} less",
        "goal": goal,
        "met": "yes" if g["met"] else "no",
    }


def workers_summary(res: dict) -> dict:
    by = {r["workers"]: r for r in res["rows"]}
    head = "; ".join(
        f"{n} worker(s): {C.fmt(r['chars_per_s'], 0)} chars/s at 64 streams, {C.fmt(r['forecast_rps'], 0)} "
        f"forecasts/s at 64"
        for n, r in sorted(by.items())
    )
    return {
        "figure": "workers",
        "headline": head,
        "goal": "(no numeric goal) requests/s and chars/s at 1 and 2 workers",
        "met": "-",
    }


def training_summary(res: dict) -> dict:
    parts = [f"{t} {C.ratio(r['ours']['median'], r['reference']['median'])}" for t, r in res["tasks"].items()]
    return {
        "figure": "training",
        "headline": "rnnops loop / reference loop: " + ", ".join(parts),
        "goal": "(no numeric goal) same model size and batch",
        "met": "-",
    }


def m4_summary(res: dict) -> dict:
    s = res["scores"]
    ours = [s[k]["owa"] for k in s if k.startswith("ours-seed")]
    peers = {k: v["owa"] for k, v in s.items() if not k.startswith("ours")}
    best = min(peers, key=peers.get) if peers else None
    med = sorted(ours)[len(ours) // 2] if ours else float("nan")
    head = f"rnnops {res['preset']} preset OWA {med:.3f} (median of {len(ours)} seeds)"
    if best:
        head += f"; best peer {best} {peers[best]:.3f}"
    met = bool(ours) and med <= 0.48 and all(med < v for v in peers.values())
    return {
        "figure": "m4",
        "headline": head,
        "goal": "quick preset OWA <= 0.48 and ahead of every peer",
        "met": "yes" if met else "no",
    }


# ----------------------------------------------------------------------------- page


def build_page(machine: dict, results: dict, errors: dict, seconds: dict, quick: bool, work: Path) -> str:
    import batch_job
    import bentoml_batching
    import forecast_http
    import m4_peers
    import mlserver_oip
    import ray_serve
    import series_http
    import series_sessions
    import training_throughput
    import workers

    IMG.mkdir(parents=True, exist_ok=True)
    sections, summaries = [], []
    for fig in FIGURES:
        if fig not in results and fig not in errors:
            continue
        title = TITLES[fig]
        if fig in errors:
            sections.append(f"## {title}\n\n**Failed** in this run ({errors[fig]}); log: `{work / (fig + '.log')}`.\n")
            summaries.append({"figure": fig, "headline": "failed", "goal": "-", "met": "-"})
            continue
        res = results[fig]
        png = IMG / f"{fig}.png"
        try:
            if fig == "kernel":
                text, summary = kernel_section(res)
                kernel_plot(res, png)
            elif fig == "streaming":
                text, summary = streaming_section(res)
                streaming_plot(res, png)
            elif fig == "http":
                text, summary = forecast_http.markdown(res), http_summary(res)
                forecast_http.plot(res, png)
            elif fig == "batch":
                text, summary = batch_job.markdown(res), batch_summary(res)
                batch_job.plot(res, png)
            elif fig == "training":
                text, summary = training_throughput.markdown(res), training_summary(res)
                training_throughput.plot(res, png)
            elif fig == "ray":
                text, summary = ray_serve.markdown(res), ray_summary(res)
                ray_serve.plot(res, png)
            elif fig == "bentoml":
                text = bentoml_batching.markdown(res)
                summary = peer_summary(fig, res, "BentoML adaptive batching", "requests/s")
                bentoml_batching.plot(res, png)
            elif fig == "mlserver":
                text, summary = mlserver_oip.markdown(res), peer_summary(fig, res, "MLServer", "inferences/s")
                mlserver_oip.plot(res, png)
            elif fig == "m4":
                text, summary, png = m4_peers.markdown(res), m4_summary(res), None
            elif fig == "series":
                text, summary = series_http.markdown(res), series_http.summary(res)
                png = None
            elif fig == "sessions":
                text, summary = series_sessions.markdown(res), series_sessions.summary(res)
                png = None
            else:
                text, summary = workers.markdown(res), workers_summary(res)
                workers.plot(res, png)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:  # a script changed its JSON
            sections.append(
                f"## {title}\n\n**Could not be summarised** ({type(exc).__name__}: {exc}); raw results: "
                f"`{work / (fig + '.json')}`.\n"
            )
            summaries.append({"figure": fig, "headline": "unreadable results", "goal": "-", "met": "-"})
            continue
        summaries.append(summary)
        ran = (
            f"Ran in {seconds[fig]:.0f} s."
            if seconds[fig] == seconds[fig]
            else "From an earlier run in the same --work folder."
        )
        image = f"![{fig}](img/{fig}.png)\n\n" if png is not None else ""
        sections.append(f"## {title}\n\n{image}{text}\n\n_{ran}_\n")
    rows = [[s["figure"], s["headline"], s["goal"], s["met"]] for s in summaries]
    head = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/run_all.py" + (" --quick" if quick else "") + "`: do not edit by hand; "
        "run it again (on a quiet machine for figures worth quoting). Every figure compares its inputs side by "
        "side in one run, on this machine, with medians (or percentiles) and ratios.",
        "",
    ]
    if quick:
        head += [
            "> **--quick run**: short timings on a possibly busy machine; a smoke test of the suite, not figures "
            "to quote.",
            "",
        ]
    head += [
        "## Machine",
        "",
        C.machine_markdown(machine),
        "",
        "## Summary",
        "",
        C.md_table(["figure", "headline", "goal", "met"], rows, "llll"),
        "",
    ]
    tail = [
        "## Reproduce",
        "",
        "```bash",
        "make bench                              # set up, install wrk, all figures",
        "python benchmarks/run_all.py            # all figures (the HTTP one uses wrk when on PATH)",
        "python benchmarks/run_all.py --only batch --work DIR  # one figure again; the others from DIR's last run",
        "python benchmarks/batch_job.py --quick    # any script alone; each takes --json OUT",
        "python benchmarks/peers/mlserver_oip.py --quick  # a peer alone (its virtualenv is made on first use)",
        "python benchmarks/series_http.py --profile-s 10  # /forecast by series vs single windows (py-spy on PATH)",
        "python benchmarks/series_sessions.py --open-http 3000  # 100,000 series sessions (3,000 opened over HTTP)",
        "```",
        "",
    ]
    return "\n".join(head + sections + tail)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run of every figure")
    ap.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated figures ({', '.join(FIGURES)})")
    ap.add_argument("--work", type=Path, help="where raw results and logs go (default: a new temporary folder)")
    ap.add_argument("--output", type=Path, default=DOCS / "benchmarks.md", help="the page to write")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rebuild the page and plots from the results already in --work",
    )
    ap.add_argument(
        "--skip-venv-builds",
        action="store_true",
        help="peers (m4): use the virtualenvs already made, leave out a peer without one",
    )
    args = ap.parse_args(argv)
    if args.report_only and not args.work:
        ap.error("--report-only needs --work (the folder of an earlier run)")
    figures = [] if args.report_only else [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = [f for f in figures if f not in FIGURES]
    if unknown:
        ap.error(f"unknown figure(s) {unknown}: use {', '.join(FIGURES)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="rnnops-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    saved_machine = work / "machine.json"
    if args.report_only and saved_machine.is_file():
        machine = json.loads(saved_machine.read_text())
    else:
        machine = C.machine()
        saved_machine.write_text(json.dumps(machine, indent=1))
    quick = args.quick
    if args.report_only and (work / "quick").exists():
        quick = True
    elif not args.report_only:
        (work / "quick").unlink(missing_ok=True)
        if quick:
            (work / "quick").write_text("results in this folder come from a --quick run\n")
    timeout = 1800 if args.quick else 5400
    results, errors, seconds = {}, {}, {}
    for fig in figures:
        res, err, secs = run_figure(fig, args.quick, work, timeout, args.skip_venv_builds)
        seconds[fig] = secs
        (work / f"{fig}.seconds").write_text(f"{secs:.1f}\n")
        if err:
            errors[fig] = err
            print(f"[{fig}] FAILED: {err}", file=sys.stderr, flush=True)
        else:
            results[fig] = res
            print(f"[{fig}] done in {secs:.0f} s", file=sys.stderr, flush=True)
    for fig in FIGURES:  # figures not run now: reuse an earlier run's results in the same --work folder
        earlier = work / f"{fig}.json"
        if fig not in figures and earlier.is_file():
            results[fig] = json.loads(earlier.read_text())
            took = work / f"{fig}.seconds"
            seconds[fig] = float(took.read_text()) if args.report_only and took.is_file() else float("nan")
    page = build_page(machine, results, errors, seconds, quick, work)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_text(page)
    os.replace(tmp, args.output)
    print(f"wrote {args.output} and {len(results)} plot(s) in {IMG}; raw results in {work}", file=sys.stderr)
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
