"""``rnnops export RUN_ID | URI``: TorchScript + ONNX, the parity gate, int8, logged to the run.

With ``--register`` the passed export becomes a registry version; ``--promote`` also moves
``champion`` to it through the registry's gate. A failed parity gate stops before either. Those two
steps are the registry stage's (:func:`rnnops.registry.cli.publish_export`), handed to
:func:`register` by the root command: export never imports the registry (docs/architecture.md).
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Protocol

import typer

Opt = typer.Option


class Exporter(str, Enum):
    legacy = "legacy"
    dynamo = "dynamo"


class Publish(Protocol):
    """What ``--register`` / ``--promote`` do with a passed export: register its run as a new
    version, then (``promote``) move ``alias`` to it through the gate; returns the summary's
    ``registered`` (and ``promoted``) entries."""

    def __call__(self, run_id: str, *, name: str | None, promote: bool, alias: str, force: bool) -> dict: ...


def register(app: typer.Typer, publish: Publish | None = None) -> None:
    """Wire ``rnnops export`` into the root command; ``publish`` carries out ``--register`` /
    ``--promote`` (the command reads it from its Click context)."""
    app.command("export", context_settings={"obj": publish})(export)


def export(
    ctx: typer.Context,
    ref: Annotated[
        str, typer.Argument(help="Run id, runs:/… or models:/… URI, or a folder with config.json + model.safetensors.")
    ],
    formats: Annotated[str, Opt(help="Comma-separated formats: onnx, torchscript.")] = "onnx,torchscript",
    opset: Annotated[int, Opt(help="ONNX opset (legacy exporter 11-20, dynamo 18-23).")] = 18,
    exporter: Annotated[
        Exporter, Opt(help="legacy: torch.onnx TorchScript-based exporter (fast); dynamo: torch.export-based.")
    ] = Exporter.legacy,
    skip_quantize: Annotated[
        bool, Opt("--skip-quantize", help="Do not make the int8 variant (fixed scales; LSTM, GRU, RNN).")
    ] = False,
    out: Annotated[Path | None, Opt("--out", help="Write the files to DIR (default: the rnnops cache).")] = None,
    tolerance: Annotated[
        float, Opt(min=0.0, help="Parity gate tolerance: absolute, plus relative on a forecaster's raw output.")
    ] = 1e-4,
    register_version: Annotated[bool, Opt("--register", help="Register the export as a new model version.")] = False,
    promote: Annotated[
        bool, Opt("--promote", help="Register, then promote to --alias through the registry gate.")
    ] = False,
    name: Annotated[
        str | None, Opt(help="Registered model name (default char-rnn / forecaster / panel-forecaster).")
    ] = None,
    alias: Annotated[str, Opt(help="Alias for --promote.")] = "champion",
    force: Annotated[bool, Opt("--force", help="With --promote: skip the metric comparison (recorded).")] = False,
    as_json: Annotated[bool, Opt("--json", help="Print the result as JSON.")] = False,
):
    """Export a trained model: TorchScript + ONNX (+ onnxruntime optimised / int8), parity-gated, logged to its run."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from rnnops.errors import RnnopsError
    from rnnops.export.parity import Tolerance
    from rnnops.export.pipeline import export_run

    result = export_run(
        ref,
        formats=formats,
        opset=opset,
        quantize=not skip_quantize,
        out_dir=out,
        exporter=exporter.value,
        tolerance=Tolerance(atol=tolerance, rtol_forecast=tolerance),
    )
    summary = result.to_dict()
    if register_version or promote:
        if not result.run_id or not result.onnx_uri:
            raise RnnopsError(
                "--register needs an ONNX export logged to an MLflow run (a run id or model URI, with onnx in --formats)"
            )
        publish: Publish | None = ctx.obj
        if publish is None:
            raise RnnopsError(
                "this export command was wired without the registry stage; register later with "
                f"`rnnops registry register {result.run_id}`"
            )
        summary.update(publish(result.run_id, name=name, promote=promote, alias=alias, force=force))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print(summary)


def _print(s: dict) -> None:
    par = s["parity"]
    typer.echo(
        f"exported {s['kind']} {s['cell']} model"
        + (f" of run {s['run_id']}" if s["run_id"] else "")
        + f" to {s['folder']}"
    )
    typer.echo(
        f"  parity: passed, max abs diff {par['max_abs_diff']:.3g} over {', '.join(par['backends'])}"
        + ("; stepwise skipped (windowed model)" if par.get("skipped") else "")
    )
    quality = par.get("quality")  # a panel model's validation MASE, through onnxruntime
    if quality and quality.get("logged") is not None:
        typer.echo(
            f"  validation MASE: {quality['onnx']:.4f} (the run logged {quality['logged']:.4f}; {quality['reason']})"
        )
    elif quality:
        typer.echo(f"  validation MASE: {quality['reason']}")
    if s.get("onnx_uri"):
        typer.echo(f"  onnx: {s['onnx_uri']} (sha256 {s['sha256']})")
    q = s.get("quantization")
    if q:
        if "delta" in q:
            delta = f"{q['delta']:+.2%}" if q["bound"]["mode"] == "rel" else f"{q['delta']:+.4f}"
            gate = "gate passed" if q["gate"]["passed"] else f"gate failed ({', '.join(q['gate']['failed'])})"
            typer.echo(
                f"  int8: {gate}; {q['metric']} {q['fp32']:.4f} -> {q['int8']:.4f} (delta {delta}, "
                f"bound {q['bound']['rule']}); {q['latency_ms']['batch64']['speedup']:.2f}x at batch 64: "
                f"{'kept' if q['keep'] else 'dropped: ' + q['reason']}"
            )
        else:
            typer.echo(f"  int8: {q['reason']}")
    if "registered" in s:
        r = s["registered"]
        typer.echo(
            f"  registered: {r['name']} version {r['version']}" + ("" if r["created"] else " (already registered)")
        )
    if "promoted" in s:
        p = s["promoted"]
        typer.echo(
            f"  promoted: {s['registered']['name']}@{p['alias']} -> version {p['version']}"
            + (f" (was {p['previous']})" if p["previous"] is not None else "")
            + f": {p['reason']}"
        )
