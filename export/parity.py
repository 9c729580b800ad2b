"""The parity gate: exported models must compute what the trained module computes.

Reference: the training module's own ``forward(x, state)`` in eager PyTorch (fp32, CPU). Each
backend (TorchScript, the ONNX file in onnxruntime, onnxruntime's optimised graph) runs the same
inputs and every output is compared element by element:

    |backend - eager| <= atol + rtol * |eager|

with ``atol = 1e-4`` for every output and ``rtol = 0`` except for a forecaster's ``forecast``
(raw units, so its scale is the data's: ``rtol = 1e-4`` there, i.e. 1e-4 relative once
|y| > 1). Cases: batch {1, 2, 8} x time {1, 7, 64} x initial state {zero, random}
(a windowed forecaster needs ``lookback`` rows, so its times are lookback + {0, 6, 63}: the
window plus older rows it must ignore). Stateful models also run **stepwise**: the 64-step
sequence fed one step at a time, carrying the state, must match the whole-sequence call
(all logits, or the last forecast, and the final state). Windowed forecasters are not stateful
by design (their normalisation depends on the whole window), so that case is skipped and the
report says so.

The report (max abs diff per output per case) is a JSON-able dict; :func:`check` raises
:class:`ParityGateFailed` naming the worst case when any case fails.

The int8 file has a gate of its own, :func:`run_int8_gate` (bitwise batch invariance, chunked ==
whole, close to the fp32 file): a failure there drops the int8 file, never the export.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from rnnops import contract
from rnnops.errors import RnnopsError
from rnnops.export import wrappers
from rnnops.training import intervals

Backend = Callable[[dict[str, np.ndarray]], list[np.ndarray]]  # feeds by name -> outputs in contract order

BATCHES = (1, 2, 8)
TIMES = (1, 7, 64)
INITS = ("zero", "random")
# The modern cells train in one form (fused scan, chunkwise parallel) and export another (a
# stepped Loop): a long sequence checks the two stay together, whole and fed in chunks.
LONG_TIME, LONG_BATCH, LONG_CHUNK = 2048, 2, 256


@dataclass
class Tolerance:
    atol: float = 1e-4
    # relative part, only for outputs without a fixed scale: the forecaster's raw-unit
    # ``forecast`` and mLSTM's matrix memory ``C`` / ``n`` (sums over the whole sequence)
    rtol_forecast: float = 1e-4

    def bound(self, output: str, ref: np.ndarray, relative: bool | None = None):
        relative = output == contract.FORECAST_OUTPUT if relative is None else relative
        return self.atol + (self.rtol_forecast if relative else 0.0) * np.abs(ref)


class ParityGateFailed(RnnopsError):
    """The exported model does not compute what the trained model computes."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


# ----------------------------------------------------------------------------- backends


def eager_backend(model: nn.Module) -> Backend:
    """The training module's ``forward(x, state)``: the reference."""
    names = [t.input for t in wrappers.state_spec(model)]
    with_bands = intervals.has_intervals(model)

    def run(feeds):
        with torch.no_grad():
            x = torch.from_numpy(feeds[contract.INPUT])
            out, state = model(x, tuple(torch.from_numpy(feeds[n]) for n in names))
            extra = [intervals.bands(model, x, out).numpy()] if with_bands else []  # last, as in the graph
        return [out.numpy(), *(s.numpy() for s in state), *extra]

    return run


def torchscript_backend(module) -> Backend:
    def run(feeds):
        with torch.no_grad():
            outs = module(*(torch.from_numpy(v) for v in feeds.values()))
        return [o.numpy() for o in outs]

    return run


def onnxruntime_backend(sess) -> Backend:
    names = [o.name for o in sess.get_outputs()]

    def run(feeds):
        return sess.run(names, feeds)

    return run


# ----------------------------------------------------------------------------- the gate


def run_gate(
    model: nn.Module,
    backends: dict[str, Backend],
    tol: Tolerance | None = None,
    batches=BATCHES,
    times=TIMES,
    seed: int = 0,
    long_time: int | None = LONG_TIME,
) -> dict:
    """Compare every backend with eager on the case grid; returns the report (see module doc).

    ``long_time``: the long-sequence cases of the modern cells (None or 0: skipped).
    """
    tol = tol or Tolerance()
    model = model.eval()
    with one_torch_thread():
        return _run(model, backends, tol, batches, times, seed, long_time)


def _run(model, backends, tol, batches, times, seed, long_time) -> dict:
    eager = eager_backend(model)
    outs = wrappers.output_names(model)
    rel = set(wrappers.relative_outputs(model))
    _compare = functools.partial(_compare_one, relative=rel)
    rng = np.random.default_rng(seed)
    windowed = wrappers.is_windowed(model)
    offset = wrappers.min_time(model) - 1 if windowed else 0
    cases, skipped = [], []

    for batch in batches:
        for t in times:
            for init in INITS:
                feeds = wrappers.make_inputs(model, batch, t + offset, rng, init == "random")
                ref = eager(feeds)
                for name, backend in backends.items():
                    cases.append(_compare(name, "whole", batch, t + offset, init, outs, ref, backend(feeds), tol))

    stateful = not windowed
    if stateful:
        t = max(times)
        for batch in batches:
            for init in INITS:
                feeds = wrappers.make_inputs(model, batch, t, rng, init == "random")
                ref = eager(feeds)
                for name, backend in {"eager": eager, **backends}.items():
                    got = _stepwise(backend, feeds, model.kind)
                    cases.append(_compare(name, "stepwise", batch, t, init, outs, ref, got, tol))
    else:
        skipped.append(
            {
                "mode": "stepwise",
                "reason": "windowed forecaster (rnnops.stateful=false): it normalises "
                "each window by that window's statistics, so stepping with carried state is not its contract",
            }
        )
    if stateful and wrappers.is_modern(model) and long_time:
        for init in INITS:
            feeds = wrappers.make_inputs(model, LONG_BATCH, long_time, rng, init == "random")
            ref = eager(feeds)
            for name, backend in backends.items():
                cases.append(_compare(name, "whole", LONG_BATCH, long_time, init, outs, ref, backend(feeds), tol))
            for name, backend in {"eager": eager, **backends}.items():
                got = _stepwise(backend, feeds, model.kind, LONG_CHUNK)
                cases.append(
                    _compare(name, f"chunks of {LONG_CHUNK}", LONG_BATCH, long_time, init, outs, ref, got, tol)
                )
    return _summarise(cases, skipped, tol, list(backends), model.kind, model.config.cell, not windowed)


@contextlib.contextmanager
def one_torch_thread():
    """Small models, many tiny calls: one intra-op thread is faster and spares a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check(report: dict) -> None:
    """Raise :class:`ParityGateFailed` naming the worst case unless every case passed."""
    if report["passed"]:
        return
    w = report["worst_case"]
    raise ParityGateFailed(
        f"parity gate failed: {report['failures']} of {len(report['cases'])} cases out of tolerance; worst: "
        f"{w['case']}, output {w['output']!r} max abs diff {w['max_abs_diff']:.3g} "
        f"(atol {report['tolerance']['atol']:g}); nothing was logged as passed or registered",
        report,
    )


def _stepwise(backend: Backend, feeds: dict[str, np.ndarray], kind: str, chunk: int = 1) -> list[np.ndarray]:
    """Run the sequence ``chunk`` steps at a time (default one), carrying the state; outputs as one call would give."""
    names = list(feeds)
    x = feeds[contract.INPUT]
    state = [feeds[n] for n in names[1:]]
    mains = []
    for t in range(0, x.shape[1], chunk):
        out = backend({contract.INPUT: np.ascontiguousarray(x[:, t : t + chunk]), **dict(zip(names[1:], state))})
        mains.append(out[0])
        state = out[1:]
    main = np.concatenate(mains, axis=1) if kind == "char" else mains[-1]
    return [main, *state]


def _compare_one(backend, mode, batch, time, init, outs, ref, got, tol: Tolerance, relative=()) -> dict:
    diffs, ratios, ok = {}, {}, True
    for name, r, g in zip(outs, ref, got):
        g = np.asarray(g)
        if g.shape != r.shape:
            diffs[name], ratios[name], ok = math.inf, math.inf, False
            continue
        d = np.abs(g.astype(np.float64) - r.astype(np.float64))
        bound = tol.bound(name, r.astype(np.float64), name in relative or name == contract.FORECAST_OUTPUT)
        finite = bool(np.isfinite(d).all())
        passed = finite and bool((d <= bound).all())
        diffs[name] = float(d.max()) if finite else math.inf
        ratios[name] = float((d / np.maximum(bound, 1e-30)).max()) if finite else math.inf
        ok = ok and passed
    return {
        "case": f"{backend} {mode} batch={batch} time={time} state={init}",
        "backend": backend,
        "mode": mode,
        "batch": batch,
        "time": time,
        "init": init,
        "passed": ok,
        "max_abs_diff": diffs,
        "_ratio": ratios,
    }


def _summarise(cases, skipped, tol: Tolerance, backends, kind: str, cell: str, stateful: bool, rule: str = "") -> dict:
    worst_case, worst_out, worst_ratio = None, None, -1.0
    by_output: dict[str, float] = {}
    for c in cases:
        for out, d in c["max_abs_diff"].items():
            by_output[out] = max(by_output.get(out, 0.0), d)
        for out, r in c.pop("_ratio").items():
            if r > worst_ratio:
                worst_case, worst_out, worst_ratio = c, out, r
    failures = sum(not c["passed"] for c in cases)
    return {
        "passed": failures == 0 and bool(cases),
        "failures": failures,
        "reference": "eager PyTorch: the training module's forward(x, state), fp32 CPU",
        "backends": backends,
        "kind": kind,
        "cell": cell,
        "stateful": stateful,
        "tolerance": {
            **asdict(tol),
            "rule": rule
            or "|backend - eager| <= atol + rtol * |eager| element-wise; "
            "rtol applies to the forecaster's raw-unit 'forecast' output and mLSTM's memory (C, n) only",
        },
        "max_abs_diff": max(by_output.values(), default=0.0),
        "max_abs_diff_by_output": by_output,
        "worst_case": {
            "case": worst_case["case"],
            "output": worst_out,
            "passed": worst_case["passed"],
            "max_abs_diff": worst_case["max_abs_diff"][worst_out],
        }
        if worst_case
        else None,
        "skipped": skipped,
        "cases": cases,
    }


# ----------------------------------------------------------------------------- panel forecasters

# A panel model (rnnops.kind "panel", export/panel_export.py) has no state and one window per row:
# its gate runs the contract's inputs, drawn at random as training builds windows
# (panel_export.make_inputs: each row its own level, history and covariates, NaN before the
# series starts, static codes over the vocabulary, the unknown bucket and one past it):
# - eager vs each backend, batch {1, 2, 8} x histories: every row a full lookback ("full"), half
#   of them starting somewhere inside it ("mixed"), every row the shortest history the model
#   accepts ("shortest", rnnops.panel.min_history);
# - batch invariance: each row of an 8-row call against that row in other compositions (pairs,
#   threes, reversed, a lone row, a row twice), for eager and every backend.
# Both outputs are raw units, so rtol applies to both. A negative binomial head's quantiles are
# whole counts, a step function of float32 parameters: a level that falls within rounding of
# CDF(k) may flip by one count between backends, which its bound allows (atol 1).
PANEL_HISTORIES = ("full", "mixed", "shortest")
PANEL_COMPOSITIONS = ((0, 1), (2, 3, 4), (5, 6, 7), (7, 6, 5, 4, 3, 2, 1, 0), (3,), (3, 3))


def run_panel_gate(graph, backends: dict[str, Backend], tol: Tolerance | None = None, seed: int = 0) -> dict:
    """The parity gate of a panel model's graph (:class:`rnnops.export.panel_export.PanelGraph`):
    every backend against eager on the case grid, then batch invariance; the report has the
    keys of :func:`run_gate`'s."""
    from rnnops.export import panel_export

    tol = tol or Tolerance()
    contract = graph.panel
    counts = graph.kind == "negbin"
    if counts:
        tol = Tolerance(atol=max(tol.atol, 1.0), rtol_forecast=tol.rtol_forecast)
    outs = list(contract.outputs)  # forecast, quantiles: the graph's order
    rng = np.random.default_rng(seed)
    shortest = contract.min_history or 1
    histories = {"full": contract.lookback, "mixed": None, "shortest": shortest}

    def eager(feeds):
        return panel_export.eager(graph, feeds)

    def compare(backend, mode, batch, ref, got):
        c = _compare_one(backend, mode, batch, contract.lookback, "none", outs, ref, got, tol, relative=set(outs))
        c["case"] = f"{backend} {mode} batch={batch}"
        return c

    cases = []
    with one_torch_thread():
        for batch in BATCHES:
            for name in PANEL_HISTORIES:
                feeds = panel_export.make_inputs(contract, batch, rng, counts=counts, history=histories[name])
                ref = eager(feeds)
                for backend, run in backends.items():
                    cases.append(compare(backend, f"{name} histories", batch, ref, run(feeds)))
        feeds = panel_export.make_inputs(contract, 8, rng, counts=counts)
        for backend, run in {"eager": eager, **backends}.items():
            full = run(feeds)
            for rows in PANEL_COMPOSITIONS:
                idx = np.asarray(rows)
                got = run({k: np.ascontiguousarray(v[idx]) for k, v in feeds.items()})
                cases.append(
                    compare(backend, f"batch invariance rows {list(rows)} of 8", len(rows), [o[idx] for o in full], got)
                )
    rule = (
        "|backend - eager| <= atol + rtol * |eager| element-wise on both raw-unit outputs (forecast, "
        "quantiles); batch invariance: a row alone or in any composition == that row of an 8-row call"
        + ("; negbin: atol 1 count (integer quantiles)" if counts else "")
    )
    return _summarise(cases, [], tol, list(backends), "panel", graph.model.config.cell, False, rule)


# ----------------------------------------------------------------------------- the int8 file

# The int8 file (rnnops.export.int8) is served by the same scheduler, so it must keep the same
# guarantees; it is compared with the fp32 ONNX file, not eager (the fp32 file passed the gate above).
# - batch invariance, bitwise: each row of a batch-8 call equals that row run in other
#   compositions (pairs, threes, reversed, a lone row run as a pair as the runtime does);
# - chunked == whole: the 64-step sequence fed one step at a time and in chunks of 7, carrying the
#   state, against one call (stateful models). Fixed scales make each step the same arithmetic
#   whatever the chunking: measured 0.0; the bound only allows for a float32 rounding difference;
# - closeness to fp32 on the grid above: |int8 - fp32| <= 0.5 + 0.05 * |fp32| on every output. This
#   catches a wrong rewrite (a swapped gate moves logits by whole units); what the rounding costs
#   is the quality bound's to judge (rnnops.export.quality). Measured on the quick-preset char
#   LSTM (1x384): logits 0.10, h 0.06, c 0.15 at worst (batch 8, 64 steps from a random state).
INT8_COMPOSITIONS = ((0, 1), (2, 3, 4), (5, 6, 7), (7, 6, 5, 4, 3, 2, 1, 0), (3, 3))
INT8_INVARIANCE = Tolerance(atol=0.0, rtol_forecast=0.0)
INT8_CHUNKED = Tolerance(atol=1e-6, rtol_forecast=1e-6)
INT8_CHUNK = 7
INT8_CLOSE = Tolerance(atol=0.5, rtol_forecast=0.05)  # rtol on every output here


def run_int8_gate(model: nn.Module, fp32: Backend, int8: Backend, seed: int = 0) -> dict:
    """The int8 file's own gate (see the comment above); a JSON-able report whose ``passed`` says
    whether the file may be kept (the quality bound decides the rest)."""
    model = model.eval()
    rng = np.random.default_rng(seed)
    outs = wrappers.output_names(model)
    rel = set(wrappers.relative_outputs(model))
    windowed = wrappers.is_windowed(model)
    offset = wrappers.min_time(model) - 1 if windowed else 0
    spec = wrappers.state_spec(model)
    axes = [0, *(t.batch_axis for t in spec), *([0] * (len(outs) - 1 - len(spec)))]  # main, state, bands
    checks: dict[str, list] = {"batch_invariance": [], "chunked": [], "fp32": []}

    def compare(check, mode, batch, time, init, ref, got, tol):
        relative = set(outs) if check == "fp32" else rel
        checks[check].append(_compare_one("int8", mode, batch, time, init, outs, ref, got, tol, relative=relative))

    for batch in BATCHES:
        for t in TIMES:
            for init in INITS:
                feeds = _int8_inputs(model, batch, t + offset, rng, init == "random")
                compare("fp32", "vs fp32", batch, t + offset, init, fp32(feeds), int8(feeds), INT8_CLOSE)
    for t in (1, 7):
        feeds = _int8_inputs(model, 8, t + offset, rng, True)
        full = int8(feeds)
        for rows in INT8_COMPOSITIONS:
            idx = np.asarray(rows)
            sub = {
                contract.INPUT: feeds[contract.INPUT][idx],
                **{s.input: np.take(feeds[s.input], idx, axis=s.batch_axis) for s in spec},
            }
            ref = [np.take(o, idx, axis=a) for o, a in zip(full, axes)]
            compare(
                "batch_invariance",
                f"rows {list(rows)} of 8",
                len(rows),
                t + offset,
                "random",
                ref,
                int8(sub),
                INT8_INVARIANCE,
            )
    if not windowed:
        for batch in (2, 8):
            feeds = _int8_inputs(model, batch, max(TIMES), rng, True)
            whole = int8(feeds)
            for chunk in (1, INT8_CHUNK):
                got = _stepwise(int8, feeds, model.kind, chunk)
                compare("chunked", f"chunks of {chunk}", batch, max(TIMES), "random", whole, got, INT8_CHUNKED)
    summary = {}
    for name, cases in checks.items():
        for c in cases:
            c.pop("_ratio", None)
        worst = max(cases, key=lambda c: max(c["max_abs_diff"].values()), default=None)
        summary[name] = {
            "passed": all(c["passed"] for c in cases),
            "cases": len(cases),
            "max_abs_diff": max((max(c["max_abs_diff"].values()) for c in cases), default=0.0),
            "max_abs_diff_by_output": {o: max(c["max_abs_diff"][o] for c in cases) for o in outs} if cases else {},
            "worst_case": worst["case"] if worst else None,
        }
    skipped = [] if not windowed else [{"check": "chunked", "reason": "windowed forecaster (rnnops.stateful=false)"}]
    failed = [n for n, s in summary.items() if not s["passed"]]
    return {
        "passed": not failed,
        "failed": failed,
        "reference": "the fp32 ONNX file in onnxruntime (which passed the parity gate against eager)",
        "tolerance": {
            "batch_invariance": "bitwise (0.0)",
            "chunked": asdict(INT8_CHUNKED) | {"chunks": [1, INT8_CHUNK]},
            "fp32": asdict(INT8_CLOSE) | {"rule": "|int8 - fp32| <= atol + rtol * |fp32| on every output"},
        },
        "checks": summary,
        "skipped": skipped,
        "cases": [c for cases in checks.values() for c in cases],
    }


def _int8_inputs(model, batch: int, time: int, rng, random_state: bool) -> dict[str, np.ndarray]:
    """:func:`wrappers.make_inputs`, with a random ``h`` drawn where the model can put it: in (-1, 1)."""
    feeds = wrappers.make_inputs(model, batch, time, rng, random_state)
    if random_state and "h0" in feeds:
        feeds["h0"] = np.tanh(2.0 * feeds["h0"]).astype(np.float32)
    return feeds
