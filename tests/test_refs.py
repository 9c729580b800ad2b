"""The one model-reference grammar (rnnops/refs.py): every form, and one message for a bad one
whichever command reads it (serve, forecast, the registry)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rnnops import refs
from rnnops.errors import RnnopsError


@pytest.mark.parametrize(
    "text,source,target,watched",
    [
        ("char-rnn@champion", "registry", "char-rnn@champion", True),
        ("models:/char-rnn@challenger", "registry", "char-rnn@challenger", True),
        ("char-rnn", "registry", "char-rnn@champion", True),
        ("char-rnn/3", "registry", "char-rnn/3", False),
        ("models:/char-rnn/3", "registry", "char-rnn/3", False),
        ("char-rnn@3", "registry", "char-rnn/3", False),
        ("bentoml:char-rnn:v3-abc", "bentoml", "char-rnn:v3-abc", False),
        ("bentoml:forecaster", "bentoml", "forecaster", False),
    ],
)
def test_every_form_parses(text, source, target, watched):
    r = refs.parse_ref(text)
    assert (r.source, r.target, r.watched) == (source, target, watched)


def test_files_are_refs_and_name_themselves(tmp_path):
    r = refs.parse_ref(str(tmp_path / "exports" / "model.onnx"))
    assert r.source == "file" and r.name == "exports" and r.watched and r.path.is_absolute()
    assert refs.parse_ref("small.onnx").name == "small"


BAD = ["", "char-rnn@", "models:/", "a/b/c", "char-rnn/latest", "bentoml:", "bentoml:a:b:c", "@champion", "a b"]


@pytest.mark.parametrize("text", BAD)
def test_a_bad_reference_is_one_message(text):
    with pytest.raises(RnnopsError, match="cannot read model reference .*use NAME@ALIAS, NAME@VERSION"):
        refs.parse_ref(text)


def test_served_names_and_duplicates():
    pairs = refs.parse_served("char-rnn@champion, fc=forecaster/2, x.onnx")
    assert [(s, r.source) for s, r in pairs] == [("char-rnn", "registry"), ("fc", "registry"), ("x", "file")]
    with pytest.raises(RnnopsError, match="serves char-rnn twice"):
        refs.parse_served("char-rnn@champion,char-rnn/2")
    with pytest.raises(RnnopsError, match="RNNOPS_MODELS: cannot read model reference 'a/b/c'"):
        refs.parse_served("a/b/c")


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from rnnops.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_forecast_and_the_registry_say_the_same(tmp_path):
    from rnnops.registry.resolve import parse_ref as registry_parse

    data = tmp_path / "in.csv"
    data.write_text("date,a\n2024-01-01,1\n")
    msg = "cannot read model reference 'a/b/c'"
    serve = _cli("serve", "--models", "a/b/c")
    forecast = _cli("forecast", "--model", "a/b/c", "--input", str(data), "--output", str(tmp_path / "o.csv"))
    assert serve.returncode == 2 and msg in serve.stderr, serve.stderr
    assert forecast.returncode == 2 and msg in forecast.stderr, forecast.stderr
    with pytest.raises(RnnopsError, match=msg):
        registry_parse("a/b/c")
    with pytest.raises(RnnopsError, match="names no registry version"):
        registry_parse(str(Path("x.onnx")))
