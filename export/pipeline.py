"""``export_run``: one logged model in, TorchScript + ONNX (+ onnxruntime variants) out, gated.

Stages, in order (each prints one progress line to stderr):

1. rebuild the model from the run (``training.logged_model.load_model``);
2. TorchScript (scripted, frozen) and ONNX (contract inputs/outputs, metadata) files; a
   forecaster's ONNX also carries a window of its validation data (:mod:`.sample`, for the playground);
3. onnxruntime's optimised graph;
4. the parity gate (:mod:`rnnops.export.parity`): on failure the report is logged, the run's
   export tags say ``parity_passed=false`` (the ONNX URI / sha256 tags are removed, so nothing
   registrable is left behind) and :class:`ParityGateFailed` names the worst case;
5. int8 with fixed scales (LSTM, GRU, RNN: :mod:`rnnops.export.int8`), kept only if its own gate
   passes (batch invariance, chunked == whole, close to fp32: :func:`parity.run_int8_gate`) and its
   validation quality is within the bound (:mod:`rnnops.export.quality`); otherwise dropped, never
   blocking fp32, with the reason in ``quantization.json``;
6. logging, linked to the **source run itself** (the registry reads the export's tags there,
   and one run then holds training and its exports): the ONNX as an ``mlflow.onnx`` logged model
   whose ``source_run_id`` is the run (signature + input example, so ``mlflow models serve`` can
   serve it) with the kept int8 file beside ``model.onnx`` in the same logged model (a registry
   version then carries both), the other files as run artifacts under ``export/``, then the
   contract tags (sha256 of each file) in one write. The run is not reopened, so its status and
   end time stay as training left them. A re-export replaces the tags (they describe the latest
   ONNX export; a TorchScript-only export leaves them alone) and adds a new logged model.

A **panel** model (``rnnops.kind`` "panel") takes its own path (:func:`_export_panel`): the
``rnnops.panel`` ONNX (:mod:`.panel_export`, no TorchScript, no int8) with a few series as its
sample, the ORT graph, and :func:`parity.run_panel_gate` with the validation-MASE check folded
in (:func:`quality.check_panel`); logging is the same.

The local files go to ``out_dir`` (default ``$RNNOPS_CACHE/exports/<run id>/``); ``onnx_path`` is
byte-identical to the logged ``model.onnx``, so ``ExportResult.sha256`` is what the registry
checks.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import shutil
import sys
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rnnops import contract, settings
from rnnops.contract import INT8_FILE, ONNX_FILE
from rnnops.errors import RnnopsError
from rnnops.export import int8, onnx_export, ort_tools, parity, quality, sample, wrappers
from rnnops.export.torchscript import export_torchscript, load_torchscript
from rnnops.training import cells
from rnnops.util import sha256_file

FORMATS = ("onnx", "torchscript")
TS_FILE = "model.pt"
OPT_FILE = "model.ort-optimized.onnx"
PARITY_FILE = "parity_report.json"
QUANT_FILE = "quantization.json"
ARTIFACT_DIR = "export"


@dataclass
class ExportResult:
    run_id: str | None
    kind: str
    cell: str
    folder: Path  # local files (``out_dir``, or the cache)
    onnx_path: Path | None = None  # byte-identical to the logged model's model.onnx
    torchscript_path: Path | None = None
    optimized_path: Path | None = None
    int8_path: Path | None = None  # None unless made and kept
    int8_sha256: str | None = None  # of int8_path as logged beside model.onnx
    sha256: str | None = None  # of onnx_path
    onnx_uri: str | None = None  # models:/m-… of the mlflow.onnx logged model
    parity: dict = field(default_factory=dict)
    quantization: dict | None = None
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> artifact URI in the source run
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["parity"] = {k: v for k, v in self.parity.items() if k != "cases"}  # the summary; cases are in the file
        if self.quantization:
            d["quantization"] = {k: v for k, v in self.quantization.items() if k != "gate_cases"}
        return json.loads(json.dumps(d, default=str))


class Progress:
    """One line per stage on stderr: what runs, then how it ended and how long it took."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.seconds: dict[str, float] = {}

    def say(self, text: str) -> None:
        if self.enabled:
            print(f"[export] {text}", file=sys.stderr, flush=True)

    @contextmanager
    def stage(self, name: str, what: str):
        self.say(f"{what}…")
        note: dict = {}
        t = time.perf_counter()
        yield note
        self.seconds[name] = round(time.perf_counter() - t, 3)
        self.say(f"{what}: {note.get('done', 'done')} ({self.seconds[name]:.1f}s)")


class _Started(threading.local):
    """The folder the running export writes to and what was in it before (for a full disk)."""

    folder: Path | None = None
    before: frozenset = frozenset()

    def start(self, folder: Path) -> None:
        self.folder, self.before = folder, frozenset(folder.iterdir())


_started = _Started()


def _complete_or_nothing(export):
    """A full disk (ENOSPC, EDQUOT, or a writer that failed on a full disk without saying so, as
    onnxruntime's and onnx's C++ writers do) becomes one line, and every file this export wrote
    is removed: nothing half-written is left beside files that look complete, and as the run's
    export tags are set last, none says exported."""

    @functools.wraps(export)
    def guarded(*args, **kwargs):
        _started.folder = None
        try:
            return export(*args, **kwargs)
        except RnnopsError:
            raise
        except Exception as exc:
            folder = _started.folder
            why = _no_space(exc, folder)
            if why is None:
                raise
            if folder is not None:
                for path in set(folder.iterdir()) - _started.before:
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
            raise RnnopsError(
                f"no space left on device while exporting ({why}); the export is not complete: its files "
                f"were removed from {folder} and nothing was logged as exported. Free some space, or "
                "export elsewhere with --out DIR"
            ) from None
        finally:
            _started.folder = None

    return guarded


def _no_space(exc: BaseException, folder: Path | None) -> str | None:
    """Why ``exc`` is a full disk, or None when it is not one."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"{e.filename or folder}: {e.strerror or e}"
        lines = [ln.strip() for ln in str(e).splitlines() if "no space left on device" in ln.lower()]
        if lines:
            return lines[0][:400]
        e = e.__cause__ or e.__context__
    if folder is None:
        return None
    try:  # a C++ writer that wrote a short file, or failed without errno: is the disk full?
        free = shutil.disk_usage(folder).free
        biggest = max((p.stat().st_size for p in folder.rglob("*") if p.is_file()), default=0)
    except OSError:
        return None
    if free < max(1 << 20, 2 * biggest):
        first = (str(exc).splitlines() or [""])[0][:200]
        return f"{folder} has {free // 1024} KiB free; {type(exc).__name__}: {first}"
    return None


@_complete_or_nothing
def export_run(
    ref: str,
    formats=FORMATS,
    opset: int | None = None,
    quantize: bool = True,
    out_dir: str | Path | None = None,
    exporter: str = "legacy",
    tolerance=None,
    log: bool = True,
    progress: bool = True,
) -> ExportResult:
    """Export the model of ``ref`` (run id, ``runs:/``, ``models:/`` URI or folder); see the module doc.

    ``tolerance``: a :class:`rnnops.export.parity.Tolerance` (default atol 1e-4).
    ``log``: log files and tags back to the source run (skipped for a local folder).
    """
    from rnnops.training.logged_model import load_model

    formats = _check_formats(formats)
    opset = opset or onnx_export.DEFAULT_OPSET
    if "onnx" in formats:
        onnx_export.check_exporter(exporter, opset)
    p = Progress(progress)
    with p.stage("load", f"loading {ref}") as note:
        loaded = load_model(ref)
        model, spec, run_id = loaded.model.eval(), loaded.spec, loaded.run_id
        kind = loaded.kind
        cell = model.config.cell
        note["done"] = f"{kind} {cell}, {model.config.num_layers}x{model.config.hidden_size}" + (
            f", run {run_id}" if run_id else ""
        )
    if kind == "panel":
        formats = _panel_formats(formats, exporter, p)
    log = log and run_id is not None and not Path(ref).is_dir()  # a local folder is not linked to a run here
    folder = Path(out_dir) if out_dir else settings.cache_dir() / "exports" / (run_id or _digest(str(ref)))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in (ONNX_FILE, TS_FILE, OPT_FILE, INT8_FILE, PARITY_FILE, QUANT_FILE, sample.SAMPLE_FILE, "export.json"):
        (folder / stale).unlink(missing_ok=True)  # only this export's files, never an older one's
    _started.start(folder)  # a full disk from here on: what this export wrote is removed
    result = ExportResult(run_id, kind, cell, folder)
    recipe_of_run = _RunRecipe(run_id, spec)  # the run's data, rebuilt once if a stage needs it
    with parity.one_torch_thread():
        if kind == "panel":
            _export_panel(model, spec, result, recipe_of_run, opset, tolerance, p, log)
        else:
            _export_sequence_model(
                model, spec, result, formats, recipe_of_run, opset, exporter, tolerance, quantize, p, log
            )

    if log:
        with p.stage("mlflow", f"logging to MLflow run {run_id}") as note:
            _log(result, model)
            note["done"] = f"{result.onnx_uri or 'no ONNX'}, sha256 {(result.sha256 or '-')[:12]}…"
    elif result.onnx_path:
        result.sha256 = sha256_file(result.onnx_path)
        result.int8_sha256 = sha256_file(result.int8_path) if result.int8_path else None
        if run_id is None or Path(ref).is_dir():
            p.say(f"{ref} is a local folder, not an MLflow run: nothing logged")
    result.seconds = p.seconds
    (folder / "export.json").write_text(json.dumps(result.to_dict(), indent=1))
    p.say(f"files in {folder}")
    return result


def _export_sequence_model(
    model, spec, result: ExportResult, formats, recipe_of_run, opset, exporter, tolerance, quantize, p: Progress, log
) -> None:
    """A char model's or a forecaster's files: TorchScript, ONNX (+ sample), the ORT graph, the
    parity gate, int8."""
    backends = {}
    if "torchscript" in formats:
        with p.stage("torchscript", "TorchScript (scripted, frozen)"):
            result.torchscript_path = export_torchscript(model, result.folder / TS_FILE)
            backends["torchscript"] = parity.torchscript_backend(load_torchscript(result.torchscript_path))
    if "onnx" in formats:
        with p.stage("onnx", f"ONNX ({exporter} exporter, opset {opset})") as note:
            result.onnx_path = onnx_export.export_onnx(
                model, spec, result.folder / ONNX_FILE, opset=opset, exporter=exporter, source_run=result.run_id
            )
            # a forecaster's window of validation data for the playground, in the file itself
            note["done"] = sample.write(model, recipe_of_run, result.onnx_path, result.folder)
            backends["onnxruntime"] = parity.onnxruntime_backend(ort_tools.session(result.onnx_path))
        with p.stage("optimize", "onnxruntime-optimised graph (ORT_ENABLE_EXTENDED)"):
            result.optimized_path = ort_tools.optimise(result.onnx_path, result.folder / OPT_FILE)
            backends["onnxruntime-optimized"] = parity.onnxruntime_backend(ort_tools.session(result.optimized_path))

    with p.stage("parity", f"parity gate ({', '.join(backends)} vs eager)") as note:
        report = parity.run_gate(model, backends, tolerance)
        result.parity = report
        (result.folder / PARITY_FILE).write_text(json.dumps(report, indent=1))
        w = report["worst_case"]
        note["done"] = (
            f"{'passed' if report['passed'] else 'FAILED'}, {len(report['cases'])} cases, "
            f"max abs diff {report['max_abs_diff']:.2g} (worst: {w['case']}, {w['output']})"
        )
    if not report["passed"]:
        _failed_gate(result, log, tags="onnx" in formats)

    if "onnx" in formats:
        result.quantization = _int8(model, recipe_of_run, result, quantize, p)
    if result.quantization and not result.quantization.get("keep"):
        (result.folder / INT8_FILE).unlink(missing_ok=True)
        result.int8_path = None
    if result.quantization:
        (result.folder / QUANT_FILE).write_text(json.dumps(result.quantization, indent=1))


def _export_panel(model, spec, result: ExportResult, recipe_of_run, opset, tolerance, p: Progress, log) -> None:
    """A panel model's files (``rnnops.panel``, :mod:`.panel_export`): the ONNX (+ a few series
    as its sample), the ORT graph, the panel parity gate with the validation-MASE check folded in
    (a file that does not score what the run logged fails the gate). No int8 form (fp32 only)."""
    from rnnops.export import panel_export

    folder = result.folder
    with p.stage("onnx", f"ONNX (panel contract, legacy exporter, opset {opset})") as note:
        result.onnx_path = panel_export.export_panel_onnx(
            model, spec, folder / ONNX_FILE, opset=opset, source_run=result.run_id
        )
        contract = panel_export.panel_contract_of(model, spec)
        note["done"] = sample.write_panel(contract, recipe_of_run, result.onnx_path, folder)
    with p.stage("optimize", "onnxruntime-optimised graph (ORT_ENABLE_EXTENDED)"):
        result.optimized_path = ort_tools.optimise(result.onnx_path, folder / OPT_FILE)
    sessions = {
        "onnxruntime": ort_tools.session(result.onnx_path),
        "onnxruntime-optimized": ort_tools.session(result.optimized_path),
    }
    backends = {name: parity.onnxruntime_backend(sess) for name, sess in sessions.items()}
    graph = panel_export.PanelGraph(model, contract)
    with p.stage("parity", f"parity gate ({', '.join(backends)} vs eager; validation MASE)") as note:
        report = parity.run_panel_gate(graph, backends, tolerance)
        try:
            _, panel = recipe_of_run()
        except RnnopsError as exc:
            report["quality"] = {"passed": True, "reason": f"not measured: {exc}"}
        else:
            report["quality"] = quality.check_panel(
                sessions["onnxruntime"], contract, graph.kind, panel, spec.get("metrics") or {}
            )
        if not report["quality"]["passed"]:
            report.update(passed=False, failures=report["failures"] + 1)
        result.parity = report
        (folder / PARITY_FILE).write_text(json.dumps(report, indent=1))
        w, q = report["worst_case"], report["quality"]
        note["done"] = (
            f"{'passed' if report['passed'] else 'FAILED'}, {len(report['cases'])} cases, "
            f"max abs diff {report['max_abs_diff']:.2g} (worst: {w['case']}, {w['output']}); "
            + (f"val_mase {q['onnx']:.4f} vs logged {q['logged']:.4f}" if q.get("logged") is not None else q["reason"])
        )
    if not report["passed"]:
        _failed_gate(result, log, tags=True)
    result.quantization = {
        "made": False,
        "keep": False,
        "reason": "panel models stay fp32: no int8 form is built for them",
    }
    (folder / QUANT_FILE).write_text(json.dumps(result.quantization, indent=1))


def _failed_gate(result: ExportResult, log: bool, tags: bool) -> None:
    """Log the failed report (and ``parity_passed=false``), then raise :class:`ParityGateFailed`."""
    if log:
        _log_failed_gate(result.run_id, result.folder / PARITY_FILE, result.parity, tags=tags)
    if not result.parity.get("quality", {"passed": True})["passed"]:
        q = result.parity["quality"]
        raise parity.ParityGateFailed(
            f"quality gate failed: the ONNX file's validation MASE {q['onnx']:.6g} is not the run's logged "
            f"{q['logged']:.6g} ({q['reason']}); nothing was logged as passed or registered",
            result.parity,
        )
    parity.check(result.parity)  # raises ParityGateFailed naming the worst case


def _panel_formats(formats: tuple[str, ...], exporter: str, p: Progress) -> tuple[str, ...]:
    """A panel model exports to ONNX only (legacy exporter): TorchScript is skipped with a note."""
    if "onnx" not in formats:
        raise RnnopsError("a panel model exports to ONNX only: use --formats onnx")
    if exporter != "legacy":
        raise RnnopsError("a panel model is exported with the legacy exporter only: drop --exporter dynamo")
    if "torchscript" in formats:
        p.say("panel model: ONNX only (no TorchScript form; serving runs the ONNX)")
    return ("onnx",)


# ----------------------------------------------------------------------------- int8


def _int8(model, recipe_of_run, result: ExportResult, quantize: bool, p: Progress) -> dict:
    """Make the fixed-scale int8 file, gate it, measure its quality; keep it only if all pass.

    A failure drops the int8 file, never the export: ``quantization.json`` says why."""
    cell = cells.get(model.config.cell)
    if cell.family == "modern":
        return {
            "made": False,
            "keep": False,
            "reason": f"{model.config.cell} stays fp32: its recurrence is "
            "element-wise (no recurrent weight matrix to quantise), and the products that do the work read "
            "normalised activations with no fixed bound, so fixed scales would need calibrating; a per-call "
            "scale would break batch invariance",
        }
    if not cell.int8:
        return {"made": False, "keep": False, "reason": f"{model.config.cell} stays fp32: no int8 form for it"}
    if not quantize:
        return {"made": False, "keep": False, "reason": "skipped (--skip-quantize)"}
    if model.config.hidden_size < int8.MIN_HIDDEN:
        return {
            "made": False,
            "keep": False,
            "reason": f"{model.config.hidden_size} hidden units: stays fp32 (int8 "
            f"pays from {int8.MIN_HIDDEN}: below, the int8 form's per-step cost outweighs its cheaper products; "
            "rnnops.export.int8.MIN_HIDDEN)",
        }
    with p.stage("int8", "int8 (fixed scales): its gate + validation quality through onnxruntime") as note:
        try:
            path = int8.quantize_file(result.onnx_path, result.folder / INT8_FILE)
        except ValueError as exc:  # a graph the rewrite does not know (see rnnops.export.int8)
            note["done"] = f"not made: {exc}"
            return {"made": False, "keep": False, "reason": f"{model.config.cell} stays fp32: {exc}"}
        gate = parity.run_int8_gate(
            model,
            parity.onnxruntime_backend(ort_tools.session(result.onnx_path)),
            parity.onnxruntime_backend(ort_tools.session(path, threads=2)),
        )
        data, why = None, None
        try:
            data = quality.load_eval_data(model, *recipe_of_run())
        except RnnopsError as exc:
            why = str(exc)
        q = {
            "made": True,
            "form": "fixed scales: h quantised at 1/127, int8 weights (7-bit range) per column (rnnops.export.int8)",
            **quality.compare_int8(model, result.onnx_path, path, data, why),
        }
        q["gate"] = {k: v for k, v in gate.items() if k != "cases"}
        q["gate_cases"] = gate["cases"]
        if not gate["passed"]:
            checks = gate["checks"]
            q.update(
                keep=False,
                reason="int8 gate failed: "
                + "; ".join(
                    f"{name} max abs diff {checks[name]['max_abs_diff']:.3g} ({checks[name]['worst_case']})"
                    for name in gate["failed"]
                ),
            )
        if q["keep"]:
            result.int8_path = path
        speed = q["latency_ms"]["batch64"]["speedup"]
        gate_line = "gate passed" if gate["passed"] else f"gate FAILED ({', '.join(gate['failed'])})"
        if "delta" in q:
            delta = f"{q['delta']:+.2%}" if q["bound"]["mode"] == "rel" else f"{q['delta']:+.4f}"
            note["done"] = (
                f"{gate_line}; {q['metric']} fp32 {q['fp32']:.4f} -> int8 {q['int8']:.4f} (delta {delta}), "
                f"{speed:.2f}x at batch 64: " + ("kept" if q["keep"] else f"dropped ({q['reason']})")
            )
        else:
            note["done"] = f"{gate_line}; dropped: {q['reason']}"
    return q


class _RunRecipe:
    """``()`` -> the run's data recipe and data (:func:`rnnops.training.recipe.run_recipe`), read on
    first use and kept, or the RnnopsError that says why they cannot be rebuilt."""

    def __init__(self, run_id: str | None, spec: dict):
        self.run_id, self.spec = run_id, spec
        self._done: tuple | RnnopsError | None = None

    def __call__(self) -> tuple:
        from rnnops.training.recipe import run_recipe

        if self._done is None:
            try:
                self._done = run_recipe(self.run_id, self.spec)
            except RnnopsError as exc:
                self._done = exc
        if isinstance(self._done, RnnopsError):
            raise self._done
        return self._done


# ----------------------------------------------------------------------------- MLflow


def _log(result: ExportResult, model) -> None:
    """Log the files to the source run and set the contract tags last, in one write."""
    import mlflow
    from mlflow.entities import RunTag

    from rnnops.tracking import connect

    connect()
    client = mlflow.MlflowClient()
    run_id = result.run_id
    run = client.get_run(run_id)
    if result.onnx_path:  # the contract tags describe the ONNX: a TorchScript-only export leaves them be
        _clear_export_tags(client, run_id)
        result.onnx_uri, result.sha256, result.int8_sha256 = _log_onnx(result, model, run)
        if result.int8_sha256:
            result.artifacts[INT8_FILE] = f"{result.onnx_uri}/{INT8_FILE}"
    for path, sub in ((result.torchscript_path, "torchscript"), (result.optimized_path, "onnxruntime")):
        if path:
            client.log_artifact(run_id, str(path), f"{ARTIFACT_DIR}/{sub}")
            result.artifacts[path.name] = f"runs:/{run_id}/{ARTIFACT_DIR}/{sub}/{path.name}"
    # A TorchScript-only export keeps its report beside its file, not over the ONNX export's.
    reports = ARTIFACT_DIR if result.onnx_path else f"{ARTIFACT_DIR}/torchscript"
    for name in (PARITY_FILE, QUANT_FILE, sample.SAMPLE_FILE):
        if (result.folder / name).exists():
            client.log_artifact(run_id, str(result.folder / name), reports)
            result.artifacts[name] = f"runs:/{run_id}/{reports}/{name}"
    if result.onnx_uri:
        tags = {
            contract.TAG_ONNX_URI: result.onnx_uri,
            contract.TAG_ONNX_SHA256: result.sha256,
            contract.TAG_PARITY_PASSED: "true",
            contract.TAG_PARITY_MAX_DIFF: repr(float(result.parity["max_abs_diff"])),
        }
        if result.int8_sha256:
            tags[contract.TAG_INT8_SHA256] = result.int8_sha256
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def _log_onnx(result: ExportResult, model, run) -> tuple[str, str, str | None]:
    """Log model.onnx with mlflow.onnx, and the kept int8 file beside it in the same logged model (so
    a registry version carries both); return the models:/ URI and the sha256 of each stored file."""
    import mlflow
    import onnx

    signature, example = _panel_signature(result.onnx_path) if result.kind == "panel" else _signature(model)
    logged = mlflow.initialize_logged_model(
        name="onnx",
        source_run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        model_type="onnx",
        tags={"rnnops.kind": result.kind, "rnnops.cell": result.cell},
    )
    try:
        info = mlflow.onnx.log_model(
            onnx.load(str(result.onnx_path)),
            name="onnx",
            model_id=logged.model_id,
            run_id=run.info.run_id,
            signature=signature,
            input_example=example,
            save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],
            pip_requirements=[f"onnxruntime>={_version('onnxruntime')}", f"onnx>={_version('onnx')}"],
        )
        # mlflow.onnx re-serialises the graph: hash the file exactly as stored, and keep that copy.
        location = mlflow.get_logged_model(logged.model_id).artifact_location
        stored = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location.rstrip('/')}/{ONNX_FILE}", dst_path=str(result.folder / ".stored")
            )
        )
        if stored.read_bytes() != result.onnx_path.read_bytes():
            shutil.copyfile(stored, result.onnx_path)
        int8_sha = None
        if result.int8_path:
            mlflow.MlflowClient().log_model_artifact(logged.model_id, str(result.int8_path))
            stored = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{location.rstrip('/')}/{INT8_FILE}", dst_path=str(result.folder / ".stored")
                )
            )
            int8_sha = sha256_file(stored)
            if int8_sha != sha256_file(result.int8_path):
                raise RnnopsError(
                    f"the logged {INT8_FILE} does not hash like the local one: the artifact store "
                    "changed it; export again"
                )
    except BaseException:  # e.g. a full disk: the logged model says FAILED, not READY
        with suppress(Exception):
            mlflow.MlflowClient().finalize_logged_model(logged.model_id, "FAILED")
        raise
    finally:
        shutil.rmtree(result.folder / ".stored", ignore_errors=True)
    return info.model_uri, sha256_file(result.onnx_path), int8_sha


def _signature(model):
    """Tensor signature with -1 for the dynamic batch and time axes, and a batch-2 example."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    c = model.config
    if model.kind == "char":
        x, main = TensorSpec(np.dtype(np.int64), (-1, -1), contract.INPUT), (-1, -1, c.vocab_size)
    else:
        x, main = (
            TensorSpec(np.dtype(np.float32), (-1, -1, c.n_features), contract.INPUT),
            (-1, c.horizon, len(c.target_indices)),
        )
    f32 = np.dtype(np.float32)
    spec = wrappers.state_spec(model)
    shape = lambda t: tuple(-1 if d == contract.BATCH_DIM else int(d) for d in t.shape)  # noqa: E731
    inputs = Schema([x, *(TensorSpec(f32, shape(t), t.input) for t in spec)])
    bands = (
        [TensorSpec(f32, (*main, len(c.quantiles)), contract.QUANTILES_OUTPUT)]
        if wrappers.intervals.has_intervals(model)
        else []
    )
    outputs = Schema(
        [
            TensorSpec(f32, main, wrappers.output_names(model)[0]),
            *(TensorSpec(f32, shape(t), t.output) for t in spec),
            *bands,
        ]
    )
    t = wrappers.min_time(model) if wrappers.is_windowed(model) else 8
    example = wrappers.make_inputs(model, 2, t, np.random.default_rng(0), random_state=False)
    return ModelSignature(inputs=inputs, outputs=outputs), example


def _panel_signature(onnx_path: Path):
    """A panel model's tensor signature (-1 for the batch axis) from its contract, and a batch-2
    example with full histories (an input example holds no NaN)."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from rnnops.export.panel_export import make_inputs
    from rnnops.onnx_metadata import metadata_props
    from rnnops.panel_contract import panel_contract

    panel = panel_contract(contract.decode_metadata(metadata_props(onnx_path)))

    def schema(shapes) -> Schema:
        return Schema(
            [TensorSpec(np.dtype(d), tuple(-1 if x == "batch" else x for x in s), n) for n, (s, d) in shapes.items()]
        )

    example = make_inputs(panel, 2, np.random.default_rng(0), history=panel.lookback)
    example = {n: np.nan_to_num(v) if v.dtype.kind == "f" else v for n, v in example.items()}
    return ModelSignature(inputs=schema(panel.inputs), outputs=schema(panel.outputs)), example


def _log_failed_gate(run_id: str, report_path: Path, report: dict, tags: bool) -> None:
    """A failed gate leaves its report and a ``parity_passed=false`` tag, and nothing registrable."""
    import mlflow
    from mlflow.entities import RunTag

    from rnnops.tracking import connect

    connect()
    client = mlflow.MlflowClient()
    client.log_artifact(run_id, str(report_path), ARTIFACT_DIR)
    if not tags:
        return
    _clear_export_tags(client, run_id)
    client.log_batch(
        run_id,
        tags=[
            RunTag(contract.TAG_PARITY_PASSED, "false"),
            RunTag(contract.TAG_PARITY_MAX_DIFF, repr(float(report["max_abs_diff"]))),
        ],
    )


def _clear_export_tags(client, run_id: str) -> None:
    tags = client.get_run(run_id).data.tags
    for key in (
        contract.TAG_ONNX_URI,
        contract.TAG_ONNX_SHA256,
        contract.TAG_PARITY_PASSED,
        contract.TAG_PARITY_MAX_DIFF,
        contract.TAG_INT8_SHA256,
    ):
        if key in tags:
            client.delete_tag(run_id, key)


# ----------------------------------------------------------------------------- helpers


def _check_formats(formats) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f for f in formats.split(",")]
    formats = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise RnnopsError(
            f"unknown export format(s) {', '.join(bad) or '(none)'}: use one or more of {', '.join(FORMATS)}"
        )
    return formats


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist).split("+")[0]
