"""Forecast by series over HTTP: ``/forecast``'s ``series`` form (a global panel model) vs today's
single-window requests (a forecaster of the same size), side by side on one server (issue 26, §1).

Two models of the same size (lookback 56, horizon 14, GRU 2x64), one ``rnnops serve`` (one
worker, both models loaded; only one is under load at a time):

- **single window**: ``forecaster@champion`` made by the project's pipeline (train -> export ->
  register -> promote, a few steps; ETTh1's 7 features), a request is ``{"model": "fc",
  "context": window}`` (56 x 7 values);
- **series**: a panel forecaster trained for a few seconds on the generated retail panel
  (benchmarks/retail_panel.py: sales, future covariates promo and price, statics store and
  category, daily calendar) and exported by export/panel_export.py, a request is ``{"model":
  "retail", "series": [entry]}``: one series with its 56 timestamps, 56 sales, promo and price
  over 56 + 14 steps, its statics; the answer has its timestamps, forecast and its quantiles.

The load generator is ``wrk`` (forecast_http.py's Lua script: closed loop, 32 bodies cycled) or,
without it, httpx. Concurrency 1 and 64, ``--rounds`` rounds per level, the forms alternating;
medians of requests/s, p50/p99 and server CPU per request, the load average at each round.
Goal: at concurrency 64 the series form's requests/s within 10 % of the single-window form's.

    python benchmarks/series_http.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common as C  # noqa: E402
import forecast_http as FH  # noqa: E402

LOOKBACK, HORIZON, HIDDEN, LAYERS = 56, 14, 64, 2
LEVELS = (1, 64)
# the parts of a /forecast request in py-spy's stacks, first match wins (frame substrings)
FORECAST_PARTS = (
    ("model run (onnxruntime)", ("onnxruntime",)),
    ("panel features", ("panel_features", "rnnops/calendar")),
    ("body parsing", ("forecast_body", "pydantic")),
    ("batcher", ("batcher.py", "batching.py", "concurrent/futures")),
    ("answer (timestamps, JSON)", ("timeseries", "orjson", "errors.py", "responses.py")),
    ("forecast handler (other)", ("serving/http/forecast",)),
    ("HTTP stack (uvicorn, starlette, BentoML)", ("starlette", "bentoml", "uvicorn", "httptools")),
)
FORMS = ("window", "series")

# Runs in a subprocess (torch stays out of the benchmark's process): train the retail panel model
# for a few seconds at the realistic size, export it as the rnnops.panel ONNX file.
_PANEL_SCRIPT = """
import json, sys
from dataclasses import asdict
sys.path.insert(0, {here!r})
import retail_panel
import torch
from rnnops.export.panel_export import export_panel_onnx
from rnnops.training.panel import PanelSpec, read_panel
from rnnops.training.panel_task import model_inputs
from rnnops.training.panel_train import PanelTrainConfig, train_panel

df = retail_panel.generate(series={series}, days={days}, seed=0)
spec = PanelSpec(retail_panel.ID, retail_panel.DATE, retail_panel.TARGET, horizon={horizon}, lookback={lookback},
                 static_columns=retail_panel.STATIC, future_covariates=retail_panel.FUTURE, freq="D")
panel = read_panel(df, spec)
config = PanelTrainConfig(lookback={lookback}, segment_length=7, hidden_size={hidden}, num_layers={layers},
                          batch_size=128, threads=1, budget_s={budget}, progress=False)
result = train_panel(config, panel)
model = result.model.eval()
meta = {{"kind": "panel", "config": json.loads(json.dumps(asdict(model.config))), "inputs": model_inputs(panel),
        "stateful": False, "freq": panel.freq}}
export_panel_onnx(model, meta, {path!r}, source_run="bench-retail-panel")
print("PANEL " + json.dumps({{"parameters": sum(p.numel() for p in model.parameters()), "steps": result.steps,
      "seconds": round(result.seconds, 1), "val_mase": result.best_val_mase, "series": {series}, "days": {days},
      "config": {{k: getattr(config, k) for k in ("lookback", "segment_length", "hidden_size", "num_layers",
      "context_size", "decoder_hidden", "quantiles")}}}}))
"""


def panel_model(work: Path, budget_s: float = 20.0, series: int = 200, days: int = 240) -> tuple[Path, dict]:
    """The retail panel model's ONNX file (made once per working folder) and what it is."""
    work.mkdir(parents=True, exist_ok=True)
    path, saved = work / "retail_panel.onnx", work / "retail_panel.json"
    if path.is_file() and saved.is_file():
        return path, json.loads(saved.read_text())
    script = _PANEL_SCRIPT.format(
        here=str(HERE),
        series=series,
        days=days,
        horizon=HORIZON,
        lookback=LOOKBACK,
        hidden=HIDDEN,
        layers=LAYERS,
        budget=budget_s,
        path=str(path),
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    (work / "retail_panel.log").write_text(res.stdout + res.stderr)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("PANEL ")), None)
    if res.returncode != 0 or line is None:
        raise RuntimeError(f"training/exporting the panel model failed ({res.returncode}):\n{res.stderr[-2000:]}")
    info = json.loads(line[len("PANEL ") :])
    info["onnx_bytes"] = path.stat().st_size
    saved.write_text(json.dumps(info, indent=1))
    return path, info


def series_entries(n: int = 32, seed: int = 1, lookback: int = LOOKBACK, horizon: int = HORIZON) -> list[dict]:
    """``n`` /forecast entries from a fresh retail panel (not the training one): each series' last
    ``lookback`` days as history, promo and price over those days and the ``horizon`` after."""
    import retail_panel

    days = lookback + horizon + 7
    df = retail_panel.generate(series=n * 2, days=days, seed=seed, short_fraction=0.0)
    out = []
    for sid, g in df.groupby(retail_panel.ID, sort=True):
        g = g.sort_values(retail_panel.DATE)
        hist, fut = g.iloc[-(lookback + horizon) : -horizon], g.iloc[-(lookback + horizon) :]
        out.append(
            {
                "id": str(sid),
                "timestamps": [d.strftime("%Y-%m-%d") for d in hist[retail_panel.DATE]],
                "context": [float(v) for v in hist[retail_panel.TARGET]],
                "future_covariates": {c: [float(v) for v in fut[c]] for c in retail_panel.FUTURE},
                "static": {c: str(hist[c].iloc[0]) for c in retail_panel.STATIC},
            }
        )
        if len(out) == n:
            break
    return out


def in_process_costs(
    panel_path: Path, window_model: Path, entries: list[dict], windows: np.ndarray, bodies: dict[str, list[bytes]]
) -> dict:
    """What one request costs the server beside HTTP, measured in this process (median CPU us over
    the bodies): the series form's feature building (rnnops.panel_features), each model's ORT run at
    batch 1, and each answer's JSON (orjson, as the server writes it)."""
    import orjson

    from rnnops import panel_features
    from rnnops.serving.http.forecast import _fast_forecast_body
    from rnnops.serving.http.schemas import ForecastBody
    from rnnops.serving.runtime import Runtime

    def parse(raw: bytes) -> ForecastBody:  # as forecast_body does: the fast path, else pydantic's
        return _fast_forecast_body(raw) or ForecastBody.model_validate_json(raw)

    def median_us(fn, items, reps: int = 20) -> float:
        times = []
        for _ in range(reps):
            for it in items:
                t = time.process_time()  # CPU time: wall time on a shared machine counts the neighbours
                fn(it)
                times.append(time.process_time() - t)
        return round(1e6 * float(np.median(times)), 1)

    panel_rt, window_rt = Runtime(panel_path, threads=1), Runtime(window_model, threads=1)
    contract = panel_rt.info.panel
    assert contract is not None
    series = [
        panel_features.SeriesEntry(e["id"], e["timestamps"], e["context"], {}, e["future_covariates"], e["static"])
        for e in entries
    ]
    feats = [panel_features.series_features(s, contract) for s in series]

    def features_uncached(s):
        panel_features._axis_of_iso.cache_clear()  # noqa: SLF001  # the cache's cost is what this measures
        return panel_features.series_features(s, contract)

    batched = [{k: v[None] for k, v in f.inputs.items()} for f in feats]  # one series a call, as batch 1
    run = panel_rt.run(batched[0])
    answer = {
        "id": "x",
        "timestamps": ["2024-01-01T00:00:00"] * contract.horizon,
        "forecast": {"sales": np.ascontiguousarray(run.output[0, :, 0])},
        "quantiles": {
            f"{q:g}": {"sales": np.ascontiguousarray(run.quantiles[0, :, 0, k])}
            for k, q in enumerate(contract.quantiles)
        }
        if run.quantiles is not None
        else {},
    }
    return {
        "window_body_parse_us": median_us(parse, bodies["window"]),
        "series_body_parse_us": median_us(parse, bodies["series"]),
        "series_features_us": median_us(lambda s: panel_features.series_features(s, contract), series),
        # every series with timestamps of its own: the time axis (parsing, continuing, calendar) is
        # computed, not found in panel_features' cache (series of one panel usually share their dates)
        "series_features_uncached_us": median_us(features_uncached, series),
        "series_ort_run_us": median_us(panel_rt.run, batched[:8]),
        "window_ort_run_us": median_us(lambda w: window_rt.run(w[None].astype(np.float32)), windows[:8]),
        # per row at batch 64, as the batcher runs them under load
        "series_ort_b64_us_per_row": median_us(
            panel_rt.run, [{k: np.concatenate([b[k] for b in (batched * 2)[:64]]) for k in batched[0]}], 5
        )
        / 64,
        "window_ort_b64_us_per_row": median_us(window_rt.run, [np.resize(windows, (64, *windows.shape[1:]))], 5) / 64,
        "series_answer_json_us": median_us(lambda a: orjson.dumps(a, option=orjson.OPT_SERIALIZE_NUMPY), [answer]),
    }


def start_server(env: dict, models: str, work: Path, workers: int = 1, cpus: set[int] | None = None, name="server"):
    """``rnnops serve`` with ``models`` (RNNOPS_MODELS) and ``env`` on top; (process, base URL)."""
    port = C.free_port()
    log = work / f"{name}.log"
    env = {**env, "RNNOPS_MODELS": models, "RNNOPS_POLL_SECONDS": "0", "BENTOML_HOME": str(work / "bentoml")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    cli = Path(sys.executable).parent / "rnnops"
    head = [str(cli)] if cli.is_file() else [sys.executable, "-c", "from rnnops.cli import main; main()"]
    argv = [*head, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    proc = C.start_process(argv, env, log, cwd=work, cpus_allowed=cpus)
    C.wait_http(f"http://127.0.0.1:{port}/readyz", proc, log, timeout=300)
    return proc, f"http://127.0.0.1:{port}"


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def run(
    quick: bool,
    work: Path,
    levels=LEVELS,
    rounds: int | None = None,
    client: str = "auto",
    pin=True,
    profile_s: float = 0.0,
) -> dict:
    import httpx

    rounds = rounds or (1 if quick else 3)
    seconds = 6.0 if quick else 15.0
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "httpx"
    work.mkdir(parents=True, exist_ok=True)
    print("building the single-window forecaster (GRU 2x64, lookback 56, horizon 14)…", file=sys.stderr)
    champ = C.champion_forecaster(work / "registry", hidden=HIDDEN, lookback=LOOKBACK, horizon=HORIZON, layers=LAYERS)
    print("training + exporting the retail panel model…", file=sys.stderr)
    panel_path, panel_info = panel_model(work / "panel", budget_s=8.0 if quick else 20.0)
    windows = FH.windows_pool(champ.metadata)
    entries = series_entries(32)
    bodies = {
        "window": [json.dumps({"model": "fc", "context": w.tolist()}).encode() for w in windows],
        "series": [json.dumps({"model": "retail", "series": [e]}).encode() for e in entries],
    }
    files: dict[str, list[Path]] = {}
    for form, bs in bodies.items():
        files[form] = []
        for i, b in enumerate(bs):
            f = work / f"body_{form}_{i:02d}.json"
            f.write_bytes(b)
            files[form].append(f)
    split = C.split_cpus() if pin else None
    server_cpus, client_cpus = split if split else (None, None)
    out: dict = {
        "quick": quick,
        "models": {
            "window": {
                "name": champ.name,
                "version": champ.version,
                "cell": champ.metadata["cell"],
                "hidden_size": champ.metadata["hidden_size"],
                "layers": champ.metadata.get("layers"),
                "lookback": champ.metadata["lookback"],
                "horizon": champ.metadata["horizon"],
                "features": len(champ.metadata["feature_names"]),
            },
            "series": panel_info,
        },
        "body_bytes": {form: int(np.median([len(b) for b in bs])) for form, bs in bodies.items()},
        "levels": list(levels),
        "seconds_per_level": seconds,
        "rounds": rounds,
        "client": FH.wrk_version() if client == "wrk" else f"httpx {httpx.__version__} (Python)",
        "cpus": {
            "server": sorted(server_cpus) if server_cpus else "all",
            "client": sorted(client_cpus) if client_cpus else "all",
        },
        "load_start": load1(),
        "machine_cpus": C.cpus(),  # before this process is pinned to the client's CPUs
    }
    try:
        out["in_process_us"] = in_process_costs(panel_path, champ.onnx, entries, windows, bodies)
    except Exception as exc:  # a figure beside the goal: the load test still runs without it
        out["in_process_us"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    print(f"in-process costs: {out['in_process_us']}", file=sys.stderr)
    script = work / "wrk_forecast.lua"
    script.write_text(FH.WRK_LUA)
    models = f"fc={champ.name}@champion,retail={panel_path}"
    proc, base = start_server({**champ.env, "RNNOPS_THREADS": "1"}, models, work, cpus=server_cpus, name="series-http")
    url = base + "/forecast"
    try:
        first = {}
        for form in FORMS:
            r = httpx.post(url, content=bodies[form][0], headers={"content-type": "application/json"}, timeout=60)
            r.raise_for_status()
            first[form] = r.json()
        s0 = first["series"]["series"][0]
        out["series_answer"] = {
            "horizon": len(s0["forecast"]["sales"]),
            "quantile_levels": list(s0["quantiles"]),
            "warnings": s0["warnings"],
        }
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)

        def level(form: str, c: int, secs: float, pid: int | None) -> dict:
            if client == "wrk":
                return FH.wrk_load(url, files[form], c, 10**7, secs, pid, script)
            return asyncio.run(FH.httpx_load(url, bodies[form], c, 10**7, secs, pid))

        for form in FORMS:  # warm-up
            level(form, 4, 2.0, None)
        raw: dict[str, dict[int, list[dict]]] = {f: {c: [] for c in levels} for f in FORMS}
        profiles: dict[str, dict[str, float]] = {}
        for c in levels:
            for k in range(rounds):
                for form in FORMS if k % 2 == 0 else FORMS[::-1]:
                    before = load1()
                    prof = None
                    if profile_s and k == 0 and c == max(levels) and shutil.which("py-spy"):
                        import series_sessions  # its profiler (imported here: it imports this module)

                        prof = series_sessions.profile_workers(proc.pid, work / f"profile-{form}", profile_s)
                    row = level(form, c, seconds, proc.pid)
                    if prof:
                        for p in prof:
                            p.wait(profile_s + 60)
                        stacks = sorted(work.glob(f"profile-{form}-*.txt"))
                        profiles[form] = series_sessions.profile_parts(stacks, FORECAST_PARTS)
                    row["load_1m"] = [before, load1()]
                    raw[form][c].append(row)
                    print(
                        f"  {form:6s} c={c:3d} round {k + 1}/{rounds}: {row['rps']:8.1f} req/s  p50 "
                        f"{row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  server cpu "
                        f"{C.fmt(row['server_cpu_ms_per_request'], 2)} ms/req  load {row['load_1m']}  "
                        f"({row['requests']} ok, {row['errors']} errors)",
                        file=sys.stderr,
                    )
                    if row["first_error"]:
                        print(f"    first error: {row['first_error']}", file=sys.stderr)
        out["rss_mb"] = C.tree_rss_mb(proc.pid)
        out["profile"] = profiles
    finally:
        C.stop_process(proc)
    out["forms"] = {f: [FH.median_row(raw[f][c]) for c in levels] for f in FORMS}
    for f in FORMS:
        for row, c in zip(out["forms"][f], levels):
            row["load_1m"] = [r["load_1m"] for r in raw[f][c]]
    out["rounds_raw"] = raw
    top = max(levels)
    by = {f: {r["concurrency"]: r for r in rows} for f, rows in out["forms"].items()}
    w, s = by["window"][top], by["series"][top]
    # each round's ratio (the two forms ran back to back in it): robust to the load changing between rounds
    per_round = [
        rs["rps"] / rw["rps"] for rw, rs in zip(raw["window"][top], raw["series"][top]) if rw["rps"] and rs["rps"]
    ]
    ratio = s["rps"] / w["rps"] if w["rps"] else None
    out["goal"] = {
        "concurrency": top,
        "rps_ratio": ratio,
        "rps_ratio_per_round": [round(x, 3) for x in per_round],
        "cpu_ratio": (
            s["server_cpu_ms_per_request"] / w["server_cpu_ms_per_request"]
            if s["server_cpu_ms_per_request"] and w["server_cpu_ms_per_request"]
            else None
        ),
        "met": bool(ratio is not None and ratio >= 0.9),
    }
    out["load_end"] = load1()
    return out


def markdown(res: dict) -> str:
    mw, ms = res["models"]["window"], res["models"]["series"]
    cfg = ms.get("config", {})
    by = {f: {r["concurrency"]: r for r in rows} for f, rows in res["forms"].items()}
    rows = []
    for c in res["levels"]:
        w, s = by["window"][c], by["series"][c]
        rows.append(
            [
                c,
                C.fmt(w["rps"]),
                C.fmt(s["rps"]),
                f"{s['rps'] / w['rps']:.2f}" if w["rps"] else "-",
                f"{C.fmt(w['p50_ms'])} / {C.fmt(w['p99_ms'])}",
                f"{C.fmt(s['p50_ms'])} / {C.fmt(s['p99_ms'])}",
                f"{C.fmt(w['server_cpu_ms_per_request'], 2)} / {C.fmt(s['server_cpu_ms_per_request'], 2)}",
                f"{w['errors']} / {s['errors']}",
                ", ".join(f"{a:.1f}-{b:.1f}" for a, b in w.get("load_1m", []) + s.get("load_1m", [])),
            ]
        )
    g = res["goal"]
    top = g["concurrency"]
    lines = [
        f"One `rnnops serve` (one worker, 1 ORT thread), both models loaded; server CPUs {res['cpus']['server']}, "
        f"client CPUs {res['cpus']['client']}; client {res['client'].split(' Copyright')[0]}; "
        f"{res['seconds_per_level']:.0f} s per level and round, {res['rounds']} round(s), the forms alternating"
        + (", medians" if res["rounds"] > 1 else "")
        + (" (--quick)" if res["quick"] else "")
        + ".",
        "",
        f"- **single window**: `{mw['name']}` v{mw['version']}, {mw['cell'].upper()} {mw.get('layers') or 1}x"
        f"{mw['hidden_size']}, {mw['features']} features, lookback {mw['lookback']}, horizon {mw['horizon']}; "
        f'`{{"context": 56 x 7 values}}`, {res["body_bytes"]["window"]:,} bytes a body.',
        f"- **series**: the retail panel model (export/panel_export.py), GRU {cfg.get('num_layers')}x"
        f"{cfg.get('hidden_size')}, lookback {cfg.get('lookback')} in segments of {cfg.get('segment_length')}, "
        f"horizon {res['series_answer']['horizon']}, {len(res['series_answer']['quantile_levels'])} quantiles, "
        f"{ms.get('parameters', 0):,} parameters ({ms.get('onnx_bytes', 0) / 1e6:.1f} MB ONNX), trained "
        f"{ms.get('seconds')} s ({ms.get('steps')} steps) on {ms.get('series')} generated series; one series a "
        f"request (56 timestamps and sales, promo and price over 70 days, 2 statics), "
        f"{res['body_bytes']['series']:,} bytes a body.",
        "",
        C.md_table(
            [
                "concurrency",
                "window req/s",
                "series req/s",
                "series / window",
                "window p50 / p99 ms",
                "series p50 / p99 ms",
                "server CPU ms/req (window / series)",
                "errors (window / series)",
                "load 1-min (each run, before-after)",
            ],
            rows,
        ),
        "",
        f"Goal at concurrency {top}: the series form within 10 % of the single-window requests/s: "
        f"**{g['rps_ratio']:.2f}** (rounds: {', '.join(f'{x:.2f}' for x in g['rps_ratio_per_round'])}) -> "
        f"**{'met' if g['met'] else 'not met'}**. Server CPU per request, series / window: "
        f"{g['cpu_ratio']:.2f}."
        if g["rps_ratio"] is not None and g["cpu_ratio"] is not None
        else f"Goal at concurrency {top}: not measured.",
    ]
    cost = res.get("in_process_us") or {}
    if "series_features_us" in cost:
        lines += [
            "",
            f"In one process (median CPU time, this machine): parsing a body (/forecast's decoder): window "
            f"{cost['window_body_parse_us']:.0f} us, series {cost['series_body_parse_us']:.0f} us; "
            f"the series form's feature building (rnnops.panel_features) "
            f"{cost['series_features_us']:.0f} us per series"
            + (
                f" ({cost['series_features_uncached_us']:.0f} us for a series whose timestamps no other series "
                "shares: its time axis is computed, not found in the cache)"
                if "series_features_uncached_us" in cost
                else ""
            )
            + f"; ORT at batch 1: panel model "
            f"{cost['series_ort_run_us']:.0f} us, single-window model {cost['window_ort_run_us']:.0f} us; at batch 64, "
            f"per row: {cost.get('series_ort_b64_us_per_row', float('nan')):.0f} us and "
            f"{cost.get('window_ort_b64_us_per_row', float('nan')):.0f} us; the series "
            f"answer's JSON {cost['series_answer_json_us']:.0f} us. Requests are batched, so the ORT runs are shared; "
            "feature building and the answer are per series.",
        ]
    prof = res.get("profile") or {}
    if not g["met"] and g["cpu_ratio"] is not None:
        why = (
            f"Why the goal is missed: a series request costs the server {g['cpu_ratio']:.2f}x the CPU of a "
            "single-window one (the robust figure on shared cores; requests/s also moves with the neighbours' load "
            "from round to round)"
        )
        if "series" in prof and "window" in prof:
            why += (
                f": building the series' features (rnnops.panel_features, Python per series) takes "
                f"{100 * prof['series'].get('panel features', 0):.0f}% of the server's samples, while the model run, "
                f"{100 * prof['window'].get('model run (onnxruntime)', 0):.0f}% for the single-window GRU over 56 "
                f"steps, is {100 * prof['series'].get('model run (onnxruntime)', 0):.0f}% for the panel graph "
                f"({cfg.get('lookback', 0) // max(1, cfg.get('segment_length') or 1)} segments); the HTTP stack, "
                "batcher and answer cost both forms alike"
            )
        lines += ["", why + "."]
    for form, parts in prof.items():
        lines += [
            "",
            f"Where the server's time goes, {form} form at concurrency {max(res['levels'])} (py-spy, share of the "
            "sampled stacks; py-spy at 200 Hz slows the server a little in that round): "
            + ", ".join(f"{k} {100 * v:.0f}%" for k, v in parts.items())
            + ".",
        ]
    lines += [
        "",
        f"Load average (1 min) at the start / end of the run: {res['load_start']} / {res.get('load_end', '-')} "
        f"({res.get('machine_cpus', C.cpus())} CPUs, shared with other work: above "
        f"{res.get('machine_cpus', C.cpus())} means others used the cores too).",
    ]
    return "\n".join(lines)


def summary(res: dict) -> dict:
    """run_all's summary row."""
    g = res["goal"]
    ratio = f"{g['rps_ratio']:.2f}" if g["rps_ratio"] is not None else "-"
    cpu = f"{g['cpu_ratio']:.2f}" if g["cpu_ratio"] is not None else "-"
    return {
        "figure": "series",
        "headline": f"series / single-window requests/s at concurrency {g['concurrency']}: {ratio}; "
        f"server CPU per request {cpu}x",
        "goal": "series form within 10 % of the single-window requests/s at concurrency 64",
        "met": "yes" if g["met"] else "no",
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter levels, one round (a smoke run)")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="concurrency levels (default 1,64)")
    ap.add_argument("--rounds", type=int, help="rounds per level, forms alternating (default 3, 1 with --quick)")
    ap.add_argument("--client", choices=("auto", "wrk", "httpx"), default="auto", help="load generator")
    ap.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    ap.add_argument(
        "--profile-s", type=float, default=0.0, help="py-spy the server for N s of each form at the top level"
    )
    ap.add_argument("--no-pin", action="store_true", help="let server and client share all CPUs")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="rnnops-bench-series-"))
    t0 = time.time()
    res = run(
        args.quick,
        work,
        tuple(int(x) for x in args.levels.split(",")),
        rounds=args.rounds,
        client=args.client,
        pin=not args.no_pin,
        profile_s=args.profile_s,
    )
    res["seconds"] = round(time.time() - t0, 1)
    print(markdown(res))
    C.write_json(args.json, res)


if __name__ == "__main__":
    main()
