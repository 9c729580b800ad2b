"""The wheel ships every subpackage: pyproject.toml lists packages explicitly (the repo's
top-level folders map to ``rnnops.*``), so a new folder left off the list would install from a
checkout (editable) but be missing from the wheel, the serving image and a built Bento."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {
    "rnnops": "rnnops",
    "training": "rnnops.training",
    "export": "rnnops.export",
    "registry": "rnnops.registry",
    "serving": "rnnops.serving",
}


def _source_packages() -> set[str]:
    found = set()
    for folder, package in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((package, *rel)))
    return found


def test_the_wheel_holds_and_imports_every_subpackage(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(REPO)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("rnnops-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n[: -len("/__init__.py")].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    want = _source_packages()
    assert want - shipped == set(), f"missing from the wheel (add them to pyproject.toml's packages): {want - shipped}"
    # package data: the playground's page, modules and vendored uPlot (with its license)
    static = REPO / "serving" / "http" / "static"
    files = {f"rnnops/serving/{p.relative_to(REPO / 'serving').as_posix()}" for p in static.rglob("*") if p.is_file()}
    assert "rnnops/serving/http/static/playground/vendor/uplot/LICENSE" in files
    assert files - set(names) == set(), f"missing from the wheel (pyproject.toml's package-data): {files - set(names)}"
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import importlib, rnnops, sys; assert rnnops.__file__.startswith(sys.argv[1]), rnnops.__file__\n"
        "for p in sys.argv[2:]: importlib.import_module(p)"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    skip = {"rnnops.training", "rnnops.export"}  # import torch, which the serving image does not have
    mods = sorted(m for m in want if not any(m == s or m.startswith(s + ".") for s in skip))
    p = subprocess.run(
        [sys.executable, "-c", code, str(target), *mods], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr[-2000:]
    # and the installed service finds them (importlib.resources, not a path into the checkout)
    code = (
        "from rnnops.serving.http import playground as P; f = P._files(); "
        "assert {'index.html', 'app.js', 'vendor/uplot/uPlot.esm.js'} <= set(f), sorted(f)"
    )
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
