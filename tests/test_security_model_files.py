"""Hostile model files and metadata are refused before onnxruntime opens them, in one line
(docs/security.md): not ONNX at all, external data outside the model's folder or at an absolute
path, a file far larger than its metadata describes, names that are not bounded printable text.
A version refused on reload leaves the one already serving in place."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from test_runtime import export_char, export_forecaster  # noqa: E402

from rnnops import contract  # noqa: E402
from rnnops.contract import MetadataError, check_metadata  # noqa: E402
from rnnops.errors import RnnopsError  # noqa: E402
from rnnops.model_file_checks import ModelFileError, check_model_file  # noqa: E402
from rnnops.onnx_metadata import read_metadata  # noqa: E402

HOSTILE = "<img src=x onerror=\"document.title='XSS-'+document.title\"> & 'quotes'"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("model-files")
    char, _ = export_char(d / "char.onnx", "lstm", hidden=16)
    fc, _ = export_forecaster(d / "fc.onnx", norm="fixed", features=(HOSTILE, "b", "OT"))
    return char, fc


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


def test_honest_files_pass_and_their_metadata_is_read(files):
    char, fc = files
    for path in files:
        props = check_model_file(path)
        assert props["rnnops.kind"] in ('"char"', '"forecaster"')
        check_metadata(read_metadata(path))
    assert read_metadata(fc)["feature_names"][0] == HOSTILE  # printable: kept as it is, shown as text


@pytest.mark.parametrize(
    "content",
    [b"", b"# not a model\nat all\n", bytes(range(256)) * 8, b"PK\x03\x04zipfile"],
    ids=["empty", "text", "binary", "zip"],
)
def test_a_file_that_is_not_onnx_fails_in_one_line(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelFileError) as e:
        read_metadata(path)  # the registry's and serving's reader: refused before onnxruntime sees it
    assert "not an ONNX model" in one_line_error(e)


def test_a_truncated_model_is_not_onnx(files, tmp_path):
    data = files[0].read_bytes()
    path = tmp_path / "model.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError) as e:
        check_model_file(path)
    assert "not an ONNX model" in one_line_error(e)


def _with_external(src: Path, dst: Path, location: str) -> Path:
    """``src`` with its first initializer's data moved to ``location`` (as external data)."""
    proto = onnx.load(str(src))
    t = proto.graph.initializer[0]
    raw = onnx.numpy_helper.to_array(t).tobytes()
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(len(raw)))):
        e = t.external_data.add()
        e.key, e.value = k, v
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize(
    "location,why",
    [
        ("/etc/passwd", "absolute path"),
        ("../../secret.bin", "outside"),
        ("sub/../../x.bin", "outside"),
        ("w\0.bin", "NUL byte"),
    ],
)
def test_external_data_outside_the_folder_is_refused_before_onnxruntime_opens_it(files, tmp_path, location, why):
    path = _with_external(files[1], tmp_path / "model.onnx", location)
    with pytest.raises(ModelFileError) as e:
        read_metadata(path)
    msg = one_line_error(e)
    assert why in msg and ("external data" in msg or "external-data" in msg)


def test_external_data_through_a_symlink_out_of_the_folder_is_refused(files, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "weights.bin").write_bytes(b"\0" * 4096)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    os.symlink(outside / "weights.bin", model_dir / "weights.bin")
    path = _with_external(files[1], model_dir / "model.onnx", "weights.bin")
    with pytest.raises(ModelFileError, match="outside the model's folder"):
        check_model_file(path)


def test_external_data_inside_the_folder_passes_the_check(files, tmp_path):
    path = _with_external(files[1], tmp_path / "model.onnx", "weights.bin")
    check_model_file(path)  # where it points is the model's own business (onnxruntime reads it)


def test_a_file_far_larger_than_its_metadata_describes_fails_verification(files, tmp_path):
    proto = onnx.load(str(files[1]))
    ballast = onnx.numpy_helper.from_array(np.zeros(12 << 20, np.float32), "ballast")  # 48 MiB, used by nothing
    proto.graph.initializer.append(ballast)
    path = tmp_path / "model.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ModelFileError) as e:
        read_metadata(path)
    assert "far more than its metadata describes" in one_line_error(e)


@pytest.mark.parametrize(
    "meta,field",
    [
        ({"feature_names": ["ok", "bell\x07"]}, "rnnops.feature_names[1]"),
        ({"target_names": ["x" * 201]}, "rnnops.target_names[0]"),
        ({"covariate_names": [3]}, "rnnops.covariate_names[0]"),
        ({"feature_names": "not-a-list"}, "rnnops.feature_names"),
        ({"state_inputs": ["h0\n"]}, "rnnops.state_inputs[0]"),
        ({"state": [{"input": "h0", "output": "hn\r", "shape": [1, "batch", 8]}]}, "rnnops.state[0].output"),
        ({"state": [{"input": "h0", "output": "hn", "shape": [1 << 14, "batch", 1 << 14]}]}, "rnnops.state[0].shape"),
        ({"hidden_size": 10**9}, "rnnops.hidden_size"),
        ({"freq": "h\x00"}, "rnnops.freq"),
        ({"vocab": ["a", "bc"]}, "rnnops.vocab[1]"),
        ({"quantiles": {"output": "q\x1b[2J", "levels": [0.1, 0.9]}}, "rnnops.quantiles.output"),
    ],
)
def test_metadata_that_breaks_the_contract_is_refused_naming_the_field(meta, field):
    with pytest.raises(MetadataError) as e:
        check_metadata({"kind": "forecaster", **meta}, "fc version 2")
    msg = one_line_error(e)
    assert msg.startswith(f"fc version 2: metadata {field} "), msg


def test_printable_markup_and_quotes_are_valid_names():
    check_metadata(
        {
            "feature_names": [HOSTILE, "température", "日本"],
            "vocab": list("<>\"'&\n\t ab"),
            "freq": "15min",
            "source_run": HOSTILE[:40],
        }
    )


def test_training_keeps_printable_column_names_and_refuses_control_characters(tmp_path):
    pd = pytest.importorskip("pandas")
    from rnnops.training.data import load_series

    n = 50
    good = tmp_path / "good.csv"
    pd.DataFrame({HOSTILE: np.arange(n, dtype=float), "OT": np.arange(n, dtype=float)}).to_csv(good, index=False)
    assert load_series(str(good)).feature_names == [HOSTILE, "OT"]
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"a\tb": np.arange(n, dtype=float), "OT": np.arange(n, dtype=float)}).to_csv(bad, index=False)
    with pytest.raises(RnnopsError, match=r"column names\[0\] must be a printable string"):
        load_series(str(bad))


def test_a_hostile_reload_is_refused_in_one_line_and_the_served_version_keeps_serving(files, tmp_path):
    from rnnops.serving.config import ServeConfig
    from rnnops.serving.models import ModelManager

    path = tmp_path / "fc.onnx"
    shutil.copy(files[1], path)
    manager = ModelManager(ServeConfig(models=f"fc={path}", poll_seconds=0))

    async def scenario():
        await manager.start()
        before = manager.current["fc"].version
        export_forecaster(path, norm="fixed", features=("a", "b\x1b[31m", "OT"), seed=1)  # a new version, hostile
        await manager.poll_once()
        return before

    try:
        before = asyncio.run(scenario())
        assert manager.current["fc"].version == before  # still serving the old version
        err = manager.errors["fc"]
        assert "rnnops.feature_names[1]" in err["error"] and "\n" not in err["error"] and err["serving"] == before
    finally:
        asyncio.run(manager.stop())


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '"a string"'])
def test_a_malformed_embedded_sample_is_no_sample_not_a_500(files, tmp_path, raw):
    from types import SimpleNamespace

    from rnnops.serving.http.playground import model_sample
    from rnnops.serving.runtime import Runtime

    proto = onnx.load(str(files[1]))
    p = proto.metadata_props.add()
    p.key, p.value = contract.META_SAMPLE, raw
    path = tmp_path / "model.onnx"
    onnx.save(proto, str(path))
    assert (
        model_sample(SimpleNamespace(runtime=Runtime(path), playground_sample="unread")) is None
    )  # GET /models/{name}/sample: 404
