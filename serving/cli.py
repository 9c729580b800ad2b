"""``rnnops serve``: a thin wrapper over ``bentoml serve rnnops.serving.service:RnnopsService``.

Flags become the ``RNNOPS_*`` variables the service reads (so ``bentoml serve`` with the same
environment behaves the same), then BentoML takes over the process.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

SERVICE = "rnnops.serving.service:RnnopsService"
Opt = typer.Option


def serve(
    port: Annotated[int, Opt(min=1, max=65535, help="Port to listen on.")] = 3000,
    host: Annotated[str, Opt(help="Interface to bind (0.0.0.0 for all).")] = "127.0.0.1",
    workers: Annotated[
        int, Opt(min=1, help="Worker processes; each runs its own schedulers (one is best for batching).")
    ] = 1,
    models: Annotated[
        str | None,
        Opt(
            help="Models to serve (RNNOPS_MODELS): name@alias, name/version, file.onnx or bentoml:tag, comma-separated."
        ),
    ] = None,
    providers: Annotated[str | None, Opt(help="onnxruntime providers (RNNOPS_PROVIDERS): cpu or cuda.")] = None,
    precision: Annotated[
        str | None,
        Opt(
            help="Which file runs (RNNOPS_PRECISION): auto (default: the int8 file "
            "when the export's gates kept one and the provider is cpu, else "
            "fp32), fp32, or int8 (a model without an int8 file then fails to "
            "load). GET /models says which is live."
        ),
    ] = None,
    poll_seconds: Annotated[
        float | None,
        Opt(min=0.0, help="Check model aliases every N seconds for hot reload (RNNOPS_POLL_SECONDS; 0 = never)."),
    ] = None,
    scheduler: Annotated[
        str | None, Opt(help="batched (continuous batching) or naive (per-request; benchmarks only).")
    ] = None,
) -> None:
    """Serve char models (streamed generation) and forecasters over HTTP with BentoML + onnxruntime."""
    env = {
        "RNNOPS_WORKERS": str(workers),
        "RNNOPS_MODELS": models,
        "RNNOPS_PROVIDERS": providers,
        "RNNOPS_PRECISION": precision,
        "RNNOPS_POLL_SECONDS": None if poll_seconds is None else str(poll_seconds),
        "RNNOPS_SCHEDULER": scheduler,
    }
    for key, value in env.items():
        if value is not None:
            os.environ[key] = value
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    from rnnops.serving.config import ServeConfig
    from rnnops.serving.models import parse_refs

    parse_refs(ServeConfig.from_env().models)  # a bad setting is one clear line here, not a worker traceback
    argv = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--port", str(port), "--host", host]
    sys.stdout.flush()
    os.execv(sys.executable, argv)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
