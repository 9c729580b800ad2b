"""The ``rnnops`` command: a thin shell that wires each stage's CLI.

Each stage keeps its commands beside its code (``training/cli.py``, ``export/cli.py``, ...);
heavy imports (torch, MLflow, onnxruntime) happen inside the commands, so ``--help`` is quick.
Errors a user can fix print one line and exit 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from rnnops.errors import RnnopsError, Terminated

app = typer.Typer(
    help="Train, export, register and serve recurrent sequence models (char-RNNs, forecasters).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _wire() -> None:
    from rnnops.training import cli as training_cli

    app.add_typer(training_cli.app, name="train")
    app.command("sample")(training_cli.sample)
    for module, name in (("rnnops.training.tune_cli", "tune"), ("rnnops.export.cli", "export"), ("rnnops.registry.cli", "registry"),
                         ("rnnops.serving.cli", "serving"), ("rnnops.serving.batch.cli", "forecast")):
        try:
            mod = __import__(module, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("rnnops."):
                continue  # that stage is not built yet
            raise
        mod.register(app)


@app.command()
def version():
    """Print the rnnops version."""
    import rnnops

    typer.echo(rnnops.__version__)


_wire()


def main() -> None:
    debug = "--debug" in sys.argv or os.environ.get("RNNOPS_DEBUG") == "1"
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        app()
    except RnnopsError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Terminated:  # 128 + SIGTERM, as a shell reports it
        sys.exit(143)
