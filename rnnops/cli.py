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
    # Each stage's CLI module imports only typer at its top: the stages' heavy imports wait for a command.
    from rnnops.export import cli as export_cli
    from rnnops.registry import cli as registry_cli
    from rnnops.serving import cli as serving_cli
    from rnnops.serving.batch import cli as batch_cli
    from rnnops.training import cli as training_cli
    from rnnops.training import tune_cli

    # `rnnops train forecast --init-from NAME@ALIAS` looks the version's run up in the registry,
    # handed over here as well (ctx.obj of the train commands)
    app.add_typer(training_cli.app, name="train", context_settings={"obj": registry_cli.source_run})
    app.command("sample")(training_cli.sample)
    tune_cli.register(app)
    # `rnnops export --register/--promote` run the registry's step, handed over here: the export
    # stage never imports the registry (docs/architecture.md, the dependency rule)
    export_cli.register(app, publish=registry_cli.publish_export)
    registry_cli.register(app)
    serving_cli.register(app)
    batch_cli.register(app)


@app.command()
def version() -> None:
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
