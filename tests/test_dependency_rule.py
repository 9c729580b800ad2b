"""docs/architecture.md's dependency rule, checked on the source: every ``import`` in the package,
function-level and ``TYPE_CHECKING`` ones included (a cycle hidden in a function is still a cycle).

Static (``ast``), so it needs no stage installed and runs in ``make check``'s torch-free venv. The
folders are read from pyproject's ``package-dir`` (``training/`` is ``rnnops.training``, ...).
import-linter would be the library for this, but it finds a package's modules by walking the
package's folder, and here ``rnnops.training`` and its siblings live outside ``rnnops/``.
"""

from __future__ import annotations

import ast
import tomllib
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("training", "export", "registry", "serving")
SHELL = "rnnops.cli"  # the root command: the one module that wires every stage

# What each part may never import (a prefix forbids the package and everything under it).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    # the shared core (contract, refs, ONNX metadata, settings...): every stage imports it
    "core": ("rnnops.training", "rnnops.export", "rnnops.registry", "rnnops.serving", SHELL, "torch"),
    "training": ("rnnops.export", "rnnops.registry", "rnnops.serving", SHELL),
    # export may import training (to rebuild a model from its config), never what comes after it
    "export": ("rnnops.registry", "rnnops.serving", SHELL),
    # registry: MLflow, never torch (serving imports it)
    "registry": ("rnnops.training", "rnnops.export", "rnnops.serving", SHELL, "torch"),
    # serving: registry, the core, onnxruntime/numpy/pandas/pyarrow; no torch on the serving path
    "serving": ("rnnops.training", "rnnops.export", SHELL, "torch"),
    # inside serving: the engines never import the HTTP layer, which never imports BentoML
    "serving.generate": ("rnnops.serving.http",),
    "serving.forecast": ("rnnops.serving.http",),
    "serving.http": ("bentoml",),
}

# Cycles of modules inside one stage that predate this test (function-level imports). A new one
# fails; when one of these is gone, delete its line.
KNOWN_CYCLES = {
    frozenset({"rnnops.training.models", "rnnops.training.segrnn"}),
    # distributed.launch runs jobs (a function-level import of jobs); the panel tasks, which jobs
    # reaches through tasks, ask distributed for their rank and shard (function-level imports too)
    frozenset(
        {
            "rnnops.training.distributed",
            "rnnops.training.jobs",
            "rnnops.training.tasks",
            "rnnops.training.panel_task",
            "rnnops.training.panel_stream_task",
        }
    ),
    frozenset({"rnnops.export.bands", "rnnops.export.wrappers"}),
    # spark.py imports the package facade (`from rnnops.serving import batch as B`), which imports its modules;
    # job.run picks the engine (local, spark, panel; panel streams through panel_stream) with function-level
    # imports of the modules that import job
    frozenset(
        {
            "rnnops.serving.batch",
            *(f"rnnops.serving.batch.{m}" for m in ("job", "local", "panel", "panel_stream", "spark", "write")),
        }
    ),
}


@cache
def modules() -> dict[str, Path]:
    """Every module of the distribution: dotted name -> file."""
    dirs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    out = {}
    for package, folder in dirs.items():
        if "." in package:  # the stages; "rnnops" itself maps to rnnops/
            out.update(_modules_in(REPO / folder, package))
    out.update({n: p for n, p in _modules_in(REPO / dirs["rnnops"], "rnnops").items() if n.count(".") <= 1})
    return out


def _modules_in(folder: Path, package: str) -> dict[str, Path]:
    out = {}
    for path in folder.rglob("*.py"):
        parts = list(path.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join([package, *parts])] = path
    return out


def _is_main_block(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``: a script's entry point (it may call the root command)."""
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def _is_type_checking_block(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:``: imports for the type checker alone, never run."""
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


@cache
def imports_of(name: str, types_too: bool = True) -> frozenset[str]:
    """What module ``name`` imports, anywhere in it but a ``__main__`` block (and, unless
    ``types_too``, an ``if TYPE_CHECKING:`` block): modules of this distribution by their full
    name, others by their top-level package."""
    path = modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text(), str(path))]
    while stack:
        node = stack.pop()
        if _is_main_block(node) or (not types_too and _is_type_checking_block(node)):
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules() else base)
    return frozenset(m if m.startswith("rnnops") else m.split(".")[0] for m in found)


def part_of(name: str) -> list[str]:
    """The rule keys that apply to module ``name`` (a stage, and a room of serving)."""
    parts = name.split(".")
    if name == SHELL:
        return []
    if len(parts) < 2 or parts[1] not in STAGES:
        return ["core"]
    keys = [parts[1]]
    if len(parts) > 2 and f"{parts[1]}.{parts[2]}" in FORBIDDEN:
        keys.append(f"{parts[1]}.{parts[2]}")
    return keys


def _matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_walk_finds_every_stage_and_the_imports_it_must():
    names = modules()
    for stage in STAGES:
        assert f"rnnops.{stage}" in names, f"rnnops.{stage} not found: pyproject's package-dir changed?"
    # the walk sees function-level imports: the root command wires every stage inside a function
    assert {"rnnops.export.cli", "rnnops.registry.cli"} <= imports_of(SHELL)
    assert "torch" in imports_of("rnnops.training.models")
    # an `if TYPE_CHECKING:` import counts for the rule, not for cycles
    assert "rnnops.serving.models" in imports_of("rnnops.serving.forecast.sessions")
    assert "rnnops.serving.models" not in imports_of("rnnops.serving.forecast.sessions", types_too=False)


def test_no_module_imports_what_its_part_of_the_code_must_not():
    broken = sorted(
        f"{name} imports {imp} ({key} must not import {prefix})"
        for name in modules()
        for key in part_of(name)
        for imp in imports_of(name)
        for prefix in FORBIDDEN[key]
        if _matches(imp, prefix)
    )
    assert not broken, "the dependency rule (docs/architecture.md) is broken:\n" + "\n".join(broken)


def _cycles() -> list[frozenset[str]]:
    """The strongly connected groups of modules (Tarjan), those of more than one module."""
    # type-only imports are not cycles: nothing runs them (a session's annotations name its LoadedModel)
    graph = {n: sorted(i for i in imports_of(n, types_too=False) if i in modules()) for n in modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(frozenset(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    new = [sorted(c) for c in _cycles() if c not in KNOWN_CYCLES]
    assert not new, "import cycles (move the shared part into a module both import):\n" + "\n".join(map(str, new))


def test_a_forbidden_import_is_caught(tmp_path, monkeypatch):
    """The check can fail: a registry module that imports torch inside a function is reported."""
    fake = tmp_path / "leak.py"
    fake.write_text("def f():\n    import torch.nn\n    from rnnops.serving import runtime\n")
    monkeypatch.setitem(modules(), "rnnops.registry.leak", fake)
    imports_of.cache_clear()
    try:
        with pytest.raises(AssertionError) as caught:
            test_no_module_imports_what_its_part_of_the_code_must_not()
        assert "rnnops.registry.leak imports torch (registry must not import torch)" in str(caught.value)
        assert "rnnops.registry.leak imports rnnops.serving.runtime (registry must not" in str(caught.value)
    finally:
        imports_of.cache_clear()
