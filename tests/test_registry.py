"""Registry flows against a real temporary MLflow sqlite store (no torch on these paths).

Fixture runs log a tiny ONNX graph with ``mlflow.onnx.log_model`` and the tags export writes;
the registry never looks inside the network, so they stand in for real exports (one test at the
end goes through the real ``export_run``). Each test gets its own store: a copy of a template
database (creating one costs seconds of schema migrations; copying it costs milliseconds).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rnnops import contract as C
from rnnops.errors import RnnopsError

mlflow = pytest.importorskip("mlflow")
onnx = pytest.importorskip("onnx")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mlflow-template")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()  # creates the schema
    return folder / "mlflow.db"


@pytest.fixture
def reg(tmp_path, monkeypatch, template_db) -> Path:
    """A fresh registry store + resolve cache in tmp_path (cwd too, so artifacts land there)."""
    shutil.copyfile(template_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("RNNOPS_CACHE", str(tmp_path / "cache"))
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("registry-tests")
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


def tiny_onnx(meta: dict, bias: float):
    """y = x + bias: a valid graph whose bytes differ with ``bias``, carrying rnnops metadata."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "T"])
    b = numpy_helper.from_array(np.array([bias], dtype=np.float32), "bias")
    graph = helper.make_graph([helper.make_node("Add", ["x", "bias"], ["logits"])], "tiny", [x], [y], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    helper.set_model_props(model, C.encode_metadata(meta))
    return model


def exported_run(
    kind: str = "char",
    val: float = 1.5,
    parity: bool | None = True,
    cell: str = "lstm",
    sha: str | None = None,
    export: bool = True,
    int8: bool = False,
    int8_sha: str | None = None,
) -> str:
    """A finished run as training + export leave it: val metric, rnnops.task, export tags (and with
    ``int8``, a model.int8.onnx beside model.onnx in the logged model, with its sha256 tag)."""
    import hashlib

    with mlflow.start_run() as run:
        rid = run.info.run_id
        mlflow.set_tags({"rnnops.task": "char" if kind == "char" else "forecast", "rnnops.version": "0.1.0"})
        import time

        # as training logs it: step-numbered evaluations, then the final value without a step
        mlflow.log_metric(C.VAL_METRIC[kind], val + 1.0, step=10, timestamp=int(time.time() * 1000) - 5000)
        mlflow.log_metric(C.VAL_METRIC[kind], val)
        if not export:
            return rid
        meta = {
            "kind": kind,
            "cell": cell,
            "layers": 1,
            "hidden_size": 4,
            "source_run": rid,
            "version": "0.1.0",
            "state_inputs": C.state_inputs(cell),
            "state_outputs": C.state_outputs(cell),
            "stateful": True,
            "vocab": ["a", "b", "\n"] if kind == "char" else None,
        }
        model = tiny_onnx(meta, val)
        info = mlflow.onnx.log_model(model, name="onnx", pip_requirements=["onnxruntime"], save_as_external_data=False)
        tags = {
            C.TAG_ONNX_URI: info.model_uri,
            C.TAG_ONNX_SHA256: sha or hashlib.sha256(model.SerializeToString()).hexdigest(),
            C.TAG_PARITY_MAX_DIFF: "3.1e-06",
        }
        if parity is not None:
            tags[C.TAG_PARITY_PASSED] = "true" if parity else "false"
        if int8:
            q = tiny_onnx({**meta, "precision": "int8"}, val + 0.5)
            folder = Path(f"int8-{rid}")
            folder.mkdir()
            onnx.save(q, str(folder / C.INT8_FILE))
            mlflow.MlflowClient().log_model_artifact(info.model_id, str(folder / C.INT8_FILE))
            tags[C.TAG_INT8_SHA256] = int8_sha or hashlib.sha256(q.SerializeToString()).hexdigest()
        mlflow.set_tags(tags)
    return rid


def artifact_file(name: str, version: int, file: str = C.ONNX_FILE) -> Path:
    """The model.onnx (or ``file``) inside the MLflow artifact store (local for a sqlite store)."""
    uri = mlflow.MlflowClient().get_model_version_download_uri(name, str(version))
    return Path(uri.removeprefix("file://")) / file


# ----------------------------------------------------------------------------- register


def test_register_tags_version_and_is_idempotent(reg):
    from rnnops.registry import api

    rid = exported_run("char", val=1.25, cell="gru")
    v = api.register_run(rid)
    assert (v.name, v.version, v.created) == ("char-rnn", 1, True)
    t = v.tags
    assert t[C.VTAG_KIND] == "char" and t[C.VTAG_CELL] == "gru" and t[C.VTAG_VERSION] == "0.1.0"
    assert t[C.VTAG_SOURCE_RUN] == rid and t[C.VTAG_PARITY_PASSED] == "true" and t[C.VTAG_PARITY_MAX_DIFF] == "3.1e-06"
    # the final value (logged last, at step 0), not MLflow's "latest" (highest step: 2.25)
    assert t[C.VTAG_VAL_METRIC] == "val_loss" and float(t["rnnops.val_loss"]) == 1.25 and v.val_value == 1.25
    run_tags = mlflow.get_run(rid).data.tags
    assert v.sha256 == run_tags[C.TAG_ONNX_SHA256] and v.source == run_tags[C.TAG_ONNX_URI]
    assert v.run_id == rid
    again = api.register_run(rid)  # same run, same file: no duplicate version
    assert (again.version, again.created) == (1, False)

    fid = exported_run("forecaster", val=0.3)
    f = api.register_run(fid)
    assert (f.name, f.version, f.tags[C.VTAG_VAL_METRIC], f.kind) == ("forecaster", 1, "val_mse", "forecaster")
    custom = api.register_run(exported_run("char", val=1.0), name="my-char")
    assert custom.name == "my-char"

    models = {m.name: m for m in api.list_models()}
    assert set(models) == {"char-rnn", "forecaster", "my-char"}
    assert models["char-rnn"].kind == "char" and models["char-rnn"].versions == 1
    with pytest.raises(RnnopsError, match="holds char models and this run is a forecaster"):
        api.register_run(exported_run("forecaster", val=0.2), name="char-rnn")


def test_register_refuses_runs_without_a_passed_export(reg):
    from rnnops.registry import api

    with pytest.raises(RnnopsError, match="has no ONNX export"):
        api.register_run(exported_run(export=False))
    with pytest.raises(RnnopsError, match="parity gate failed .*not registered"):
        api.register_run(exported_run(parity=False))
    with pytest.raises(RnnopsError, match="parity gate has no recorded result"):
        api.register_run(exported_run(parity=None))
    with pytest.raises(RnnopsError, match="hashes to .* not the .* export recorded"):
        api.register_run(exported_run(sha="0" * 64))
    with pytest.raises(RnnopsError, match="no MLflow run 'f+'"):
        api.register_run("f" * 32)
    assert api.list_models() == []  # nothing half-made along the way


def test_register_is_all_or_nothing(reg, monkeypatch):
    from rnnops.registry import api

    rid = exported_run()

    def tagging_fails(c, mv, vtags):
        raise RnnopsError("simulated: tags could not be written")

    complete = api._complete_version
    monkeypatch.setattr(api, "_complete_version", tagging_fails)
    with pytest.raises(RnnopsError, match="simulated"):
        api.register_run(rid)
    client = mlflow.MlflowClient()
    assert client.search_model_versions("name='char-rnn'") == []
    assert client.search_registered_models() == []  # the model it created for this version is gone too
    monkeypatch.setattr(api, "_complete_version", complete)
    assert api.register_run(rid).created  # and a later attempt starts clean

    # a store that drops tags on create (some remote registries): the missing ones are set after
    create = mlflow.MlflowClient.create_model_version
    monkeypatch.setattr(
        mlflow.MlflowClient, "create_model_version", lambda self, *a, tags=None, **k: create(self, *a, **k)
    )
    v = api.register_run(exported_run(val=1.1))
    assert client.get_model_version("char-rnn", str(v.version)).tags[C.VTAG_ONNX_SHA256] == v.sha256


# ----------------------------------------------------------------------------- promote / rollback


def test_promote_gate_force_history_and_rollback(reg):
    from rnnops.registry import api, resolve

    v1, v2, v3 = (api.register_run(exported_run(val=x)).version for x in (1.5, 1.4, 1.6))
    p = api.promote("char-rnn", v1)
    assert p.changed and p.previous is None and "no current champion" in p.reason
    assert api.promote("char-rnn", v2).previous == v1  # 1.4 <= 1.5
    assert not api.promote("char-rnn", v2).changed

    with pytest.raises(
        RnnopsError, match=r"refused: char-rnn version 3 val_loss 1.6 is worse than champion version 2's 1.4.*--force"
    ):
        api.promote("char-rnn", v3)
    assert resolve.current_version("char-rnn") == v2
    assert "rnnops.forced_promotion" not in api.get_version("char-rnn", v3).tags

    forced = api.promote("char-rnn", v3, force=True)
    assert forced.forced and forced.previous == v2
    record = json.loads(api.get_version("char-rnn", v3).tags[C.VTAG_FORCED])
    assert record["over"] == v2 and record["alias"] == "champion" and "worse" in record["reason"] and record["at"]
    details = api.show("char-rnn")
    assert details.aliases == {"champion": v3} and [v.aliases for v in details.versions] == [[], [], ["champion"]]
    assert [(h["version"], h["forced"]) for h in details.champion_history] == [(1, False), (2, False), (3, True)]

    assert api.rollback("char-rnn").version == v2
    assert resolve.current_version("char-rnn") == v2
    assert api.rollback("char-rnn").version == v1
    with pytest.raises(RnnopsError, match="no previous champion"):
        api.rollback("char-rnn")
    assert resolve.current_version("char-rnn") == v1


def test_challenger_alias_and_champion_set_outside_rnnops(reg):
    from rnnops.registry import api, resolve

    v1, v2 = (api.register_run(exported_run(val=x)).version for x in (1.5, 1.3))
    mlflow.MlflowClient().set_registered_model_alias("char-rnn", "champion", str(v1))  # e.g. set in the MLflow UI
    ch = api.promote("char-rnn", v2, alias="challenger")
    assert ch.changed and ch.reason == "parity passed"
    assert resolve.current_version("char-rnn", "challenger") == v2
    api.promote("char-rnn", v2)  # the challenger wins: it loses the challenger alias
    assert api.show("char-rnn").aliases == {"champion": v2}
    assert api.rollback("char-rnn").version == v1  # the champion found in place is on the stack
    with pytest.raises(RnnopsError, match="invalid alias"):
        api.promote("char-rnn", v1, alias="latest")


def test_promote_refuses_a_failed_gate_even_with_force(reg):
    from rnnops.registry import api

    v = api.register_run(exported_run()).version
    mlflow.MlflowClient().set_model_version_tag("char-rnn", str(v), C.VTAG_PARITY_PASSED, "false")
    for force in (False, True):
        with pytest.raises(RnnopsError, match="no passed parity gate .*not even with --force"):
            api.promote("char-rnn", v, force=force)
    assert api.show("char-rnn").aliases == {}


def test_unknown_names_versions_aliases_are_one_clear_line(reg):
    from rnnops.registry import api, resolve

    with pytest.raises(RnnopsError, match=r"no registered model 'nope' .*registered: none yet"):
        api.promote("nope", 1)
    api.register_run(exported_run())
    with pytest.raises(RnnopsError, match=r"no registered model 'nope' .*registered: char-rnn\)"):
        api.show("nope")
    with pytest.raises(RnnopsError, match=r"char-rnn has no version 9 \(versions: 1\)"):
        api.promote("char-rnn", 9)
    with pytest.raises(RnnopsError, match=r"char-rnn has no alias 'champion' \(aliases: none\)"):
        resolve.resolve("char-rnn@champion")
    with pytest.raises(RnnopsError, match="char-rnn has no version 4"):
        resolve.resolve("models:/char-rnn/4")
    with pytest.raises(RnnopsError, match="no registered model 'forecaster'"):
        resolve.current_version("forecaster")
    for bad in ("", "char-rnn@", "models:/", "a/b/c"):
        with pytest.raises(RnnopsError, match="cannot read model reference|invalid registered model name"):
            resolve.parse_ref(bad)
    with pytest.raises(RnnopsError, match="is a logged model, not a registered one"):
        resolve.parse_ref("models:/m-0123abcd")


def test_registry_unreachable_is_one_clear_line(reg, monkeypatch):
    from rnnops.registry import api, resolve

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(RnnopsError, match="127.0.0.1:9 is unreachable"):
        api.list_models()
    with pytest.raises(RnnopsError, match="unreachable"):
        resolve.resolve("char-rnn@champion")


# ----------------------------------------------------------------------------- resolve


def test_resolve_forms_verify_and_cache(reg, monkeypatch):
    from rnnops.registry import api, resolve, store

    rid = exported_run(val=1.2, cell="lstm")
    v = api.register_run(rid)
    api.promote("char-rnn", v.version)
    refs = [
        "char-rnn@champion",
        "char-rnn@1",
        "models:/char-rnn@champion",
        "models:/char-rnn/1",
        "char-rnn",
        "char-rnn@latest",
    ]
    # register put the verified file in the cache, so none of these downloads anything
    monkeypatch.setattr(store, "download_onnx", lambda *a, **k: pytest.fail("cache hit expected"))
    got = [resolve.resolve(r) for r in refs]
    assert {(g.name, g.version, g.path, g.sha256, g.source_run) for g in got} == {
        ("char-rnn", 1, reg / "cache" / "models" / "char-rnn" / "1" / "model.onnx", v.sha256, rid)
    }
    assert [g.alias for g in got] == ["champion", None, "champion", None, "champion", "latest"]
    r = got[0]
    assert r.metadata["kind"] == "char" and r.metadata["cell"] == "lstm" and r.metadata["vocab"] == ["a", "b", "\n"]
    assert r.metadata["state_inputs"] == ["h0", "c0"] and r.uri == "models:/char-rnn/1"

    import numpy as np
    import onnxruntime as ort

    out = ort.InferenceSession(str(r.path), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.zeros((1, 2), np.float32)}
    )
    assert out[0][0, 0] == pytest.approx(1.2)


def test_resolve_fetches_a_missing_or_corrupted_cached_copy_again(reg):
    from rnnops.registry import api, resolve

    v = api.register_run(exported_run())
    api.promote("char-rnn", v.version)
    cached = resolve.resolve("char-rnn@champion").path
    shutil.rmtree(cached.parent)  # cold cache: download, verify, read metadata with onnxruntime
    r = resolve.resolve("char-rnn@champion")
    assert r.path.is_file() and r.metadata["kind"] == "char"
    good = r.path.read_bytes()
    r.path.write_bytes(good[:-7] + b"garbage")  # bit rot in the cache
    again = resolve.resolve("char-rnn@1")
    assert again.path.read_bytes() == good
    (again.path.parent / resolve.SIDECAR).write_text("{not json")  # a damaged sidecar is a miss too
    assert resolve.resolve("char-rnn@1").path.read_bytes() == good


def test_resolve_refuses_a_file_that_does_not_match_the_registry(reg):
    from rnnops.registry import api, resolve

    v = api.register_run(exported_run())
    cached = resolve.resolve("char-rnn@1").path
    stored = artifact_file("char-rnn", v.version)
    stored.write_bytes(stored.read_bytes() + b"\x00tampered")  # the artifact changed after registration
    assert resolve.resolve("char-rnn@1").path == cached  # the verified cached copy is still fine
    cached.write_bytes(b"corrupt")  # now the cache is bad and the re-fetch does not match either
    with pytest.raises(RnnopsError, match=r"hashes to .*not the registered .*refusing it"):
        resolve.resolve("char-rnn@1")
    assert not cached.exists()  # nothing unverified left where serving would look

    client = mlflow.MlflowClient()  # a version whose tag disagrees with its (intact) file
    v2 = api.register_run(exported_run(val=1.1))
    client.set_model_version_tag("char-rnn", str(v2.version), C.VTAG_ONNX_SHA256, "ab" * 32)
    with pytest.raises(RnnopsError, match="refusing it"):
        resolve.resolve("char-rnn/2")
    client.delete_model_version_tag("char-rnn", str(v2.version), C.VTAG_ONNX_SHA256)
    with pytest.raises(RnnopsError, match="no rnnops.onnx_sha256 tag .*cannot be verified"):
        resolve.resolve("char-rnn/2")


# ----------------------------------------------------------------------------- CLI + BentoML


def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    from rnnops import cli

    monkeypatch.setattr(sys, "argv", ["rnnops", *args])
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_version_carries_both_files_and_resolve_verifies_both(reg):
    from rnnops.registry import api, resolve

    v = api.register_run(exported_run(int8=True))
    run_tags = mlflow.get_run(v.run_id).data.tags
    assert v.int8_sha256 == run_tags[C.TAG_INT8_SHA256] and v.sha256 == run_tags[C.TAG_ONNX_SHA256]
    r = resolve.resolve("char-rnn/1")
    assert r.int8_sha256 == v.int8_sha256 and r.int8_path.name == C.INT8_FILE and r.int8_path.parent == r.path.parent
    from rnnops.onnx_metadata import read_metadata
    from rnnops.util import sha256_file

    assert sha256_file(r.int8_path) == v.int8_sha256 and read_metadata(r.int8_path)["precision"] == "int8"
    shutil.rmtree(r.path.parent)  # cold cache: both fetched and verified
    assert resolve.resolve("char-rnn/1").int8_path.is_file()
    assert resolve.resolve("char-rnn/1", int8=False).int8_path is None
    assert api.register_run(exported_run(val=1.0)).int8_sha256 is None  # a run whose export kept no int8

    stored = artifact_file("char-rnn", 1, C.INT8_FILE)
    stored.write_bytes(stored.read_bytes() + b"\x00tampered")  # the int8 artifact changed after registration
    assert resolve.resolve("char-rnn/1").int8_path.is_file()  # the verified cached copy is still fine
    r.int8_path.write_bytes(b"corrupt")
    with pytest.raises(RnnopsError, match=rf"{C.INT8_FILE} hashes to .*not the registered .*refusing it"):
        resolve.resolve("char-rnn/1")
    assert not r.int8_path.exists()  # nothing unverified where serving would look
    assert resolve.resolve("char-rnn/1", int8=False).path.is_file()  # fp32 serving does not need it


def test_register_refuses_an_int8_file_that_does_not_match_the_export(reg):
    from rnnops.registry import api

    rid = exported_run(int8=True, int8_sha="0" * 64)
    with pytest.raises(RnnopsError, match=rf"{C.INT8_FILE} logged by run .* hashes to .*refusing to register"):
        api.register_run(rid)
    assert not mlflow.MlflowClient().search_model_versions(f"run_id='{rid}'")


def test_cli_register_promote_rollback_and_errors(reg, monkeypatch, capsys):
    r1, r2 = exported_run(val=1.5), exported_run(val=1.7)
    code, out, _ = _cli(monkeypatch, capsys, "registry", "register", r1)
    assert code == 0 and "registered char-rnn version 1" in out
    _cli(monkeypatch, capsys, "registry", "register", r2)
    code, out, _ = _cli(monkeypatch, capsys, "registry", "promote", "char-rnn", "1")
    assert code == 0 and "char-rnn@champion -> version 1" in out
    code, out, err = _cli(monkeypatch, capsys, "registry", "promote", "char-rnn", "2")
    assert (
        code == 2
        and err.count("\n") == 1
        and err.startswith("error: refused: char-rnn version 2 val_loss 1.7 is worse")
    )
    code, out, _ = _cli(monkeypatch, capsys, "registry", "promote", "char-rnn", "2", "--force")
    assert code == 0 and "FORCED" in out
    code, out, _ = _cli(monkeypatch, capsys, "registry", "show", "char-rnn")
    assert code == 0 and "champion history 1 -> 2(forced)" in out and "forced" in out.splitlines()[-1]
    code, out, _ = _cli(monkeypatch, capsys, "registry", "rollback", "char-rnn")
    assert code == 0 and "version 1 (rolled back from version 2)" in out
    code, out, _ = _cli(monkeypatch, capsys, "registry", "list", "--json")
    assert json.loads(out)[0]["aliases"] == {"champion": 1}
    code, out, _ = _cli(monkeypatch, capsys, "registry", "resolve", "char-rnn@champion", "--json")
    assert json.loads(out)["version"] == 1
    for args, msg in (
        (("promote", "nope", "1"), "error: no registered model 'nope'"),
        (("promote", "char-rnn", "7"), "error: char-rnn has no version 7 (versions: 1, 2)"),
        (("pull", "char-rnn@challenger"), "error: char-rnn has no alias 'challenger'"),
        (("register", exported_run(parity=False)), "error: run "),
    ):
        code, out, err = _cli(monkeypatch, capsys, "registry", *args)
        assert code == 2 and err.startswith(msg) and err.count("\n") == 1, (args, err)


def test_pull_into_bentoml_store_without_torch(reg, tmp_path):
    """A fresh process (as `rnnops registry pull` runs): verified file in $BENTOML_HOME, no torch imported."""
    pytest.importorskip("bentoml")
    from rnnops.registry import api

    v = api.register_run(exported_run(val=1.2, int8=True))
    api.promote("char-rnn", v.version)
    home = tmp_path / "bentoml"
    script = textwrap.dedent("""
        import sys
        from rnnops.cli import main
        sys.argv = ["rnnops", "registry", "pull", "char-rnn@champion"]
        try:
            main()
        except SystemExit as exc:
            if exc.code:
                raise
        sys.argv = ["rnnops", "registry", "pull", "char-rnn@champion"]
        try:
            main()
        except SystemExit as exc:
            if exc.code:
                raise
        assert "torch" not in sys.modules, "the registry/pull path imported torch"
    """)
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    tag = f"char-rnn:v1-{v.sha256[:12]}"
    assert lines[0].startswith(f"imported {tag}") and lines[1].startswith(f"already in the BentoML store: {tag}")
    folder = home / "models" / "char-rnn" / f"v1-{v.sha256[:12]}"
    from rnnops.util import sha256_file

    assert sha256_file(folder / "model.onnx") == v.sha256 and sha256_file(folder / C.INT8_FILE) == v.int8_sha256
    info = (folder / "model.yaml").read_text()
    assert f"sha256: {v.sha256}" in info and "registry_version: '1'" in info and "kind: char" in info
    assert f"int8_sha256: {v.int8_sha256}" in info


# ----------------------------------------------------------------------------- end to end


def _trained_run(model, spec: dict, task: str, metric: str, value: float, tmp: Path) -> str:
    """A run as training leaves it (the logged model, rnnops.task, the final val metric), minus the training."""
    from rnnops.training.logged_model import log_model

    with mlflow.start_run() as run:
        mlflow.set_tags({"rnnops.task": task, "rnnops.version": "0.1.0"})
        mlflow.log_metric(metric, value)
        log_model(model, {**spec, "run_id": run.info.run_id}, tmp / "logged" / run.info.run_id)
    return run.info.run_id


def test_end_to_end_with_the_real_export(reg):
    """logged model -> the real export_run -> register -> promote -> resolve, for both kinds."""
    pipeline = pytest.importorskip(
        "rnnops.export.pipeline", reason="export stage (rnnops.export.pipeline) not built yet"
    )
    torch = pytest.importorskip("torch")
    from rnnops.registry import api, resolve
    from rnnops.training.models import CharModel, CharModelConfig, Forecaster, ForecasterConfig

    torch.manual_seed(0)
    vocab = list("\n abcdefgh")
    char = CharModel(CharModelConfig(vocab_size=len(vocab), cell="lstm", hidden_size=8, embed_dim=4))
    fc = Forecaster(
        ForecasterConfig(
            n_features=2,
            target_indices=[1],
            lookback=6,
            horizon=3,
            cell="gru",
            hidden_size=8,
            norm="fixed",
            linear_skip=False,
            scaler_mean=[0.0, 1.0],
            scaler_std=[1.0, 2.0],
            feature_names=["a", "OT"],
            target_names=["OT"],
        )
    )
    runs = {
        "char": _trained_run(
            char, {"kind": "char", "config": char.config.to_dict(), "vocab": vocab}, "char", "val_loss", 2.3, reg
        ),
        "forecaster": _trained_run(
            fc, {"kind": "forecaster", "config": fc.config.to_dict(), "stateful": True}, "forecast", "val_mse", 0.7, reg
        ),
    }
    for kind, run_id in runs.items():
        exported = pipeline.export_run(run_id, formats=("onnx",), quantize=False, progress=False)
        v = api.register_run(run_id)
        assert (v.name, v.kind, v.parity_passed) == (C.DEFAULT_NAMES[kind], kind, True)
        assert (
            v.val_metric == C.VAL_METRIC[kind] and v.sha256 == exported.sha256 and v.tags[C.VTAG_SOURCE_RUN] == run_id
        )
        api.promote(v.name, v.version)
        r = resolve.resolve(f"{v.name}@champion")
        assert r.path.read_bytes() == exported.onnx_path.read_bytes()
        assert r.metadata["kind"] == kind and r.metadata["source_run"] == run_id
    assert resolve.resolve("char-rnn@champion").metadata["vocab"] == vocab
    assert resolve.resolve("forecaster@champion").metadata["target_names"] == ["OT"]


def test_panel_models_register_and_promote_on_val_mase_or_val_wql(reg, monkeypatch, capsys):
    """A panel run through the real export: registered as panel-forecaster, gated on validation
    MASE by default and on WQL when registered with --metric val_wql; resolve verifies the file."""
    pipeline = pytest.importorskip("rnnops.export.pipeline")
    pytest.importorskip("torch")
    from panel_fixtures import tiny_panel_model

    from rnnops.registry import api, resolve
    from rnnops.training.logged_model import log_model

    model, spec = tiny_panel_model("pinball")

    def panel_run(mase: float, wql: float) -> str:
        with mlflow.start_run() as run:
            mlflow.set_tags({"rnnops.task": "panel", "rnnops.version": "0.1.0"})
            mlflow.log_metrics({"val_mase": mase, "val_wql": wql})
            log_model(model, {**spec, "run_id": run.info.run_id}, reg / "logged" / run.info.run_id)
        # no recipe in this run: the export measures no validation MASE and says why
        exported = pipeline.export_run(run.info.run_id, formats=("onnx",), progress=False)
        assert exported.parity["passed"] and "not measured" in exported.parity["quality"]["reason"]
        return run.info.run_id

    good, worse_mase = panel_run(0.9, 0.3), panel_run(1.1, 0.2)
    v1 = api.register_run(good)
    assert (v1.name, v1.kind, v1.val_metric, v1.val_value) == ("panel-forecaster", "panel", "val_mase", 0.9)
    api.promote(v1.name, v1.version)
    r = resolve.resolve("panel-forecaster@champion")
    assert r.metadata["kind"] == "panel" and r.metadata["panel"]["static_real"] == ["size"]
    v2 = api.register_run(worse_mase)
    with pytest.raises(RnnopsError, match="val_mase 1.1 is worse than champion version 1's 0.9"):
        api.promote(v2.name, v2.version)
    # gated on the quantiles instead: the same run is now the better one
    for run_id in (good, worse_mase):
        code, out, err = _cli(
            monkeypatch, capsys, "registry", "register", run_id, "--name", "panel-wql", "--metric", "val_wql"
        )
        assert code == 0 and "(val_wql 0." in out, err
    api.promote("panel-wql", 1)
    assert api.promote("panel-wql", 2).version == 2
    with pytest.raises(
        RnnopsError, match="--metric 'val_mse' is not one a panel model is gated on: use val_mase or val_wql"
    ):
        api.register_run(good, name="other", metric="val_mse")
