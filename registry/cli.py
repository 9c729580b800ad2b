"""``rnnops registry register|list|show|promote|rollback|resolve|pull``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="MLflow Model Registry: register exported runs, promote through a gate, roll back, pull verified ONNX.",
    no_args_is_help=True,
)

Opt = typer.Option
Arg = typer.Argument
Json = Annotated[bool, Opt("--json", help="Print JSON instead of a table.")]


def register(root: typer.Typer) -> None:
    """Wire ``rnnops registry`` into the root command."""
    root.add_typer(app, name="registry")


def source_run(ref: str) -> str:
    """The training run of a registry version (``NAME@ALIAS``): ``rnnops train forecast --init-from``
    fine-tunes its model (the root command hands this to the training stage, which never imports
    the registry)."""
    from rnnops.registry.resolve import source_run as lookup

    return lookup(ref)


def publish_export(run_id: str, *, name: str | None, promote: bool, alias: str, force: bool) -> dict[str, Any]:
    """``rnnops export --register [--promote]``: register the export's run as a new version and
    optionally promote it through the gate (the root command hands this to the export stage, which
    never imports the registry). Returns the export summary's ``registered`` / ``promoted`` entries."""
    from rnnops.registry import api

    version = api.register_run(run_id, name=name)
    out: dict[str, Any] = {"registered": {"name": version.name, "version": version.version, "created": version.created}}
    if promote:
        p = api.promote(version.name, version.version, alias=alias, force=force)
        out["promoted"] = {
            "alias": alias,
            "version": p.version,
            "previous": p.previous,
            "changed": p.changed,
            "forced": p.forced,
            "reason": p.reason,
        }
    return out


@app.command("register")
def register_cmd(
    run_id: Annotated[str, Arg(help="MLflow run id that `rnnops export` passed (its parity gate).")],
    name: Annotated[
        str | None, Opt(help="Registered model name (default char-rnn / forecaster / panel-forecaster by kind).")
    ] = None,
    metric: Annotated[
        str | None,
        Opt(
            help="Validation metric the promotion gate compares (default by kind: val_loss, val_mse, val_mase; "
            "a panel model may use val_wql)."
        ),
    ] = None,
) -> None:
    """Register the run's exported ONNX as a new model version (with sha256, parity, metric tags)."""
    from rnnops.registry.api import register_run

    v = register_run(run_id, name, metric)
    verb = "registered" if v.created else "already registered as"
    typer.echo(
        f"{verb} {v.name} version {v.version} ({v.val_metric} {_num(v.val_value)}, sha256 {(v.sha256 or '?')[:12]}…, "
        f"{v.kind}/{v.cell}); promote it with `rnnops registry promote {v.name} {v.version}`"
    )


@app.command("list")
def list_cmd(as_json: Json = False) -> None:
    """Registered models: kind, aliases, versions."""
    from dataclasses import asdict

    from rnnops.registry.api import list_models

    models = list_models()
    if as_json:
        typer.echo(json.dumps([asdict(m) for m in models], indent=2))
        return
    if not models:
        typer.echo("no registered models yet: `rnnops registry register RUN_ID`")
        return
    rows = [
        (
            m.name,
            m.kind or "-",
            str(m.versions),
            str(m.latest or "-"),
            ", ".join(f"{a}->{v}" for a, v in sorted(m.aliases.items())) or "-",
        )
        for m in models
    ]
    _table(("NAME", "KIND", "VERSIONS", "LATEST", "ALIASES"), rows)


@app.command()
def show(name: Annotated[str, Arg(help="Registered model name, e.g. char-rnn.")], as_json: Json = False) -> None:
    """One registered model: aliases, champion history and every version's tags."""
    from rnnops.registry.api import show as show_model

    d = show_model(name)
    if as_json:
        typer.echo(json.dumps(d.to_dict(), indent=2))
        return
    aliases = ", ".join(f"{a}->{v}" for a, v in sorted(d.aliases.items())) or "none"
    history = (
        " -> ".join(f"{h['version']}{'(forced)' if h.get('forced') else ''}" for h in d.champion_history) or "none"
    )
    typer.echo(f"{d.name} ({d.kind or 'unknown kind'}): aliases {aliases}; champion history {history}")
    rows = [
        (
            str(v.version),
            ",".join(v.aliases) or "-",
            v.cell or "-",
            f"{v.val_metric or '-'} {_num(v.val_value)}",
            "passed" if v.parity_passed else "FAILED",
            v.tags.get("rnnops.parity_max_diff", "-") or "-",
            (v.sha256 or "-")[:12],
            (v.run_id or "-")[:12],
            "forced" if "rnnops.forced_promotion" in v.tags else "",
        )
        for v in d.versions
    ]
    _table(("VERSION", "ALIASES", "CELL", "VAL METRIC", "PARITY", "MAX DIFF", "SHA256", "RUN", ""), rows)


@app.command()
def promote(
    name: Annotated[str, Arg(help="Registered model name.")],
    version: Annotated[int, Arg(min=1, help="Version number to promote.")],
    alias: Annotated[str, Opt(help="Alias to move: champion (gated) or challenger.")] = "champion",
    force: Annotated[
        bool, Opt("--force", help="Promote even if the metric is worse than the champion's (recorded).")
    ] = False,
) -> None:
    """Point ALIAS at VERSION. champion needs parity passed and a validation metric no worse than the current champion's."""
    from rnnops.registry.api import promote as promote_version

    p = promote_version(name, version, alias=alias, force=force)
    if not p.changed:
        typer.echo(f"{name} version {version} is already {alias}")
        return
    before = f" (was version {p.previous})" if p.previous is not None else ""
    note = f"; FORCED past: {p.reason} (recorded on the version)" if p.forced else f" ({p.reason})"
    typer.echo(f"{name}@{alias} -> version {p.version}{before}{note}")


@app.command()
def rollback(name: Annotated[str, Arg(help="Registered model name.")]) -> None:
    """Move champion back to the previous champion."""
    from rnnops.registry.api import rollback as rollback_model

    p = rollback_model(name)
    typer.echo(f"{name}@champion -> version {p.version} (rolled back from version {p.previous})")


@app.command("resolve")
def resolve_cmd(
    ref: Annotated[str, Arg(help="char-rnn@champion, char-rnn@3, models:/char-rnn/3 ...")],
    as_json: Json = False,
) -> None:
    """Download (or find in the cache) the sha256-verified ONNX for REF and print its path (and the
    verified int8 file's, on a second line, when the version carries one)."""
    from rnnops.registry.resolve import resolve

    r = resolve(ref)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "name": r.name,
                    "version": r.version,
                    "alias": r.alias,
                    "path": str(r.path),
                    "sha256": r.sha256,
                    "int8_path": str(r.int8_path) if r.int8_path else None,
                    "int8_sha256": r.int8_sha256,
                    "source_run": r.source_run,
                    "metadata": r.metadata,
                },
                indent=2,
            )
        )
    else:
        typer.echo(str(r.path))
        if r.int8_path:
            typer.echo(str(r.int8_path))


@app.command()
def pull(
    ref: Annotated[str, Arg(help="char-rnn@champion, char-rnn@3, models:/char-rnn/3 ...")],
    bento_name: Annotated[
        str | None, Opt("--bento-name", help="BentoML model name (default: the registry name).")
    ] = None,
) -> None:
    """Import the verified ONNX into the BentoML model store ($BENTOML_HOME) to build a Bento from."""
    from rnnops.registry.bento import pull as pull_model

    p = pull_model(ref, bento_name)
    state = "imported" if p.created else "already in the BentoML store:"
    typer.echo(f"{state} {p.tag} ({p.resolved.uri}, sha256 {p.resolved.sha256[:12]}…) at {p.path}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in (header, *rows):
        typer.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
