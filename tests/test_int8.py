"""The fixed-scale int8 file (rnnops.export.int8) end to end, with real files and real onnxruntime:

- the rewrite keeps the scheduler's guarantees: stepping one character at a time equals one call
  (exactly), and a row's result does not depend on its batch neighbours (bitwise), for LSTM, GRU
  and RNN char models and stateful LSTM / GRU forecasters, through the serving runtime too;
- its gate catches a wrong rewrite;
- the export pipeline keeps it when its gate and quality bound pass and drops it (never fp32)
  when they do not, saying why; the kept file is logged beside model.onnx with its sha256;
- a registry version carries both files, resolve verifies both and refuses a corrupt int8 file;
- serving picks the file by RNNOPS_PRECISION and says which is live (/models, /v1/models, /v2).
"""

from __future__ import annotations

import asyncio
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
mlflow = pytest.importorskip("mlflow")

from test_runtime import step  # noqa: E402

from rnnops import contract as C  # noqa: E402
from rnnops.errors import RnnopsError  # noqa: E402
from rnnops.export import int8, parity  # noqa: E402
from rnnops.export.onnx_export import export_onnx  # noqa: E402
from rnnops.training.models import CharModel, CharModelConfig, Forecaster, ForecasterConfig  # noqa: E402

VOCAB = [chr(32 + i) for i in range(40)]


def _char(cell: str, layers: int = 2, hidden: int = 24):
    torch.manual_seed(0)
    return CharModel(
        CharModelConfig(vocab_size=len(VOCAB), cell=cell, hidden_size=hidden, num_layers=layers, embed_dim=8)
    ).eval()


def _forecaster(cell: str):
    torch.manual_seed(0)
    return Forecaster(
        ForecasterConfig(
            n_features=3,
            target_indices=[0, 2],
            lookback=12,
            horizon=4,
            cell=cell,
            hidden_size=16,
            num_layers=2,
            norm="fixed",
            scaler_mean=[1.0, -2.0, 10.0],
            scaler_std=[2.0, 0.5, 3.0],
            feature_names=["a", "b", "OT"],
            target_names=["a", "OT"],
        )
    ).eval()


MODELS = {
    "char-lstm": lambda: _char("lstm"),
    "char-gru": lambda: _char("gru"),
    "char-rnn": lambda: _char("rnn", 1),
    "fc-lstm": lambda: _forecaster("lstm"),
    "fc-gru": lambda: _forecaster("gru"),
}


def _files(model, folder: Path) -> tuple[Path, Path]:
    spec = {"vocab": VOCAB} if model.kind == "char" else {"freq": "h", "stateful": True}
    fp32 = export_onnx(model, spec, folder / "model.onnx")
    return fp32, int8.quantize_file(fp32, folder / C.INT8_FILE)


def _session(path, threads: int = 2):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- the file itself


@pytest.mark.parametrize("name", list(MODELS))
def test_int8_file_keeps_chunked_equal_whole_and_batch_invariance(name, tmp_path):
    model = MODELS[name]()
    fp32, q = _files(model, tmp_path)
    proto_ops = {n.op_type for n in __import__("onnx").load(str(q)).graph.node}
    assert not proto_ops & {"LSTM", "GRU", "RNN"} and {"Scan", "MatMulIntegerToFloat"} <= proto_ops
    from rnnops.onnx_metadata import read_metadata

    meta, meta8 = read_metadata(fp32), read_metadata(q)
    assert meta["precision"] == "fp32" and meta8 == {**meta, "precision": "int8"}

    sess = _session(q)
    names = [i.name for i in sess.get_inputs()]
    rng = np.random.default_rng(1)
    B, T = 6, 17
    x = rng.integers(0, len(VOCAB), (B, T)) if model.kind == "char" else rng.normal(3, 2, (B, T, 3)).astype(np.float32)
    state = [
        np.tanh(rng.normal(0, 1, (2 if name != "char-rnn" else 1, B, 24 if model.kind == "char" else 16))).astype(
            np.float32
        )
        for _ in names[1:]
    ]
    whole = sess.run(None, {"x": x, **dict(zip(names[1:], state))})
    # one step at a time, carrying the state == one call: exactly (the issue measured 0.137 for dynamic int8)
    s, mains = state, []
    for t in range(T):
        out = sess.run(None, {"x": x[:, t : t + 1], **dict(zip(names[1:], s))})
        mains.append(out[0])
        s = out[1:]
    main = np.concatenate(mains, 1) if model.kind == "char" else mains[-1]
    assert np.array_equal(main, whole[0]) and all(np.array_equal(a, b) for a, b in zip(s, whole[1:]))
    # a row does not depend on its neighbours: rows 1..3 alone, and reversed, equal the full call bitwise
    for rows in ([1, 2, 3], [5, 4, 3, 2, 1, 0], [4, 4]):
        sub = sess.run(None, {"x": x[rows], **{n: v[:, rows] for n, v in zip(names[1:], state)}})
        assert np.array_equal(sub[0], whole[0][rows])
        assert all(np.array_equal(a, b[:, rows]) for a, b in zip(sub[1:], whole[1:]))
    # close to the fp32 file it came from
    ref = _session(fp32).run(None, {"x": x, **dict(zip(names[1:], state))})
    assert 0 < np.abs(whole[0] - ref[0]).max() < 0.1


def test_the_serving_runtime_steps_the_int8_file_like_one_call(tmp_path):
    """What the scheduler relies on: chunked prefill == whole prefill, a stream alone == among others."""
    from rnnops.serving.runtime import Runtime

    _, q = _files(_char("lstm"), tmp_path)
    rt = Runtime(q, threads=2)
    assert rt.describe()["precision"] == "int8"
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, len(VOCAB), (5, 17))
    whole, state_w = step(rt, tokens, rt.zero_state(5))
    state, last = rt.zero_state(5), None
    for lo in (0, 3, 4, 11):  # chunks of 3, 1, 7, 6
        hi = {0: 3, 3: 4, 4: 11, 11: 17}[lo]
        last, state = step(rt, tokens[:, lo:hi], state)
    assert np.array_equal(last, whole) and all(np.array_equal(a, b) for a, b in zip(state, state_w))
    alone, _ = step(rt, tokens[2:3], rt.zero_state(1))  # a lone row (run as a pair by the runtime)
    assert np.array_equal(alone[0], whole[2])


def test_the_scheduler_on_the_int8_file_gives_a_seed_the_same_text_alone_or_among_64_streams(tmp_path):
    """The guarantee dynamic quantisation broke: each stream's text alone, prompt prefilled whole,
    equals its text among 64 streams with prompts prefilled in chunks of 8."""
    from rnnops.serving.generate.sampling import SamplingParams
    from rnnops.serving.generate.scheduler import GenerationRequest, StepScheduler
    from rnnops.serving.runtime import Runtime

    model = _char("lstm", layers=2)
    with torch.no_grad():  # sharper distributions than a fresh model's, so a changed logit shows in the text
        model.head.weight.mul_(20.0)
    _, q = _files(model, tmp_path)
    rt = Runtime(q, threads=2)
    rng = np.random.default_rng(3)
    prompts = ["".join(rng.choice(VOCAB, size=int(rng.integers(1, 30)))) for _ in range(64)]

    def request(i):
        return GenerationRequest(rt.encode(prompts[i]), 40, SamplingParams(1.0, 0, 0.95), seed=i)

    alone = []
    for i in range(64):
        s = StepScheduler(rt)
        st = s.submit(request(i))
        s.run_until_idle()
        alone.append(st.text)
    s = StepScheduler(rt, max_active=64, prefill_chunk=8)
    streams = [s.submit(request(i)) for i in range(64)]
    s.run_until_idle()
    assert [st.text for st in streams] == alone


def test_the_int8_gate_passes_the_rewrite_and_catches_a_wrong_one(tmp_path):
    import onnx
    from onnx import numpy_helper

    model = _char("lstm", layers=1)
    with torch.no_grad():  # weights as large as a trained model's (saturating gates, logits of several units)
        for name, w in model.named_parameters():
            w.mul_(30.0 if name.startswith("head") else 4.0)
    fp32, q = _files(model, tmp_path)
    report = parity.run_int8_gate(
        model, parity.onnxruntime_backend(_session(fp32, 1)), parity.onnxruntime_backend(_session(q))
    )
    assert report["passed"] and not report["failed"]
    checks = report["checks"]
    assert checks["batch_invariance"]["max_abs_diff"] == 0.0 and checks["chunked"]["max_abs_diff"] == 0.0
    assert 0 < checks["fp32"]["max_abs_diff"] < 0.5 and checks["chunked"]["cases"] == 4

    proto = onnx.load(str(q))  # a wrong rewrite: the recurrent weights of two gates swapped
    init = next(t for t in proto.graph.initializer if t.name.endswith("/r_q"))
    w = numpy_helper.to_array(init).copy()
    H = w.shape[0]
    w[:, :H], w[:, 2 * H : 3 * H] = w[:, 2 * H : 3 * H].copy(), w[:, :H].copy()
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    bad = parity.run_int8_gate(
        model,
        parity.onnxruntime_backend(_session(fp32, 1)),
        parity.onnxruntime_backend(_session(tmp_path / "bad.onnx")),
    )
    assert not bad["passed"] and bad["failed"] == ["fp32"]  # still batch-invariant, just wrong


def test_graphs_the_rewrite_does_not_know_are_refused(tmp_path):
    import onnx
    from onnx import helper

    fp32, _ = _files(_char("gru", layers=1), tmp_path)
    proto = onnx.load(str(fp32))
    gru = next(n for n in proto.graph.node if n.op_type == "GRU")
    for a in gru.attribute:
        if a.name == "linear_before_reset":
            a.CopyFrom(helper.make_attribute("linear_before_reset", 0))
    onnx.save(proto, str(tmp_path / "lbr0.onnx"))
    with pytest.raises(ValueError, match="linear_before_reset=0"):
        int8.quantize_file(tmp_path / "lbr0.onnx", tmp_path / "out.onnx")


# ----------------------------------------------------------------------------- export, registry, serving


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared_data):
    """Two char runs exported in a real MLflow store: a GRU wide enough for the int8 form (1x256),
    its int8 kept; an LSTM (1x128) whose int8 is made and dropped (the quality bound set below any
    delta)."""
    from test_export import make_run

    from rnnops.export import pipeline, quality

    data = shared_data
    root = tmp_path_factory.mktemp("int8")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mp.setenv("RNNOPS_CACHE", str(root / "cache"))
        mp.setenv("RNNOPS_DATA_DIR", str(data))
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        mlflow.set_experiment("int8-tests")
        kept = pipeline.export_run(
            make_run("char", "gru", hidden=256), formats=("onnx",), out_dir=root / "kept", progress=False
        )
        with pytest.MonkeyPatch.context() as bound:
            bound.setitem(quality.BOUNDS, "char", ("val_loss", "abs", -1.0))  # no delta can meet it
            dropped = pipeline.export_run(
                make_run("char", "lstm", layers=1, hidden=128),
                formats=("onnx",),
                out_dir=root / "dropped",
                progress=False,
            )
        yield root, kept, dropped


def test_export_keeps_int8_when_its_gates_pass_and_logs_it_beside_model_onnx(exported):
    from rnnops.util import sha256_file

    _, r, _ = exported
    q = r.quantization
    assert q["made"] and q["keep"] and q["gate"]["passed"] and q["delta"] <= q["bound"]["value"]
    assert q["latency_ms"]["batch64"]["speedup"] > 0  # measured and reported; the width decides (int8.MIN_HIDDEN)
    assert set(q["gate"]["checks"]) == {"batch_invariance", "chunked", "fp32"}
    assert q["gate"]["checks"]["batch_invariance"]["max_abs_diff"] == 0.0
    assert r.int8_path == r.folder / C.INT8_FILE and r.int8_path.is_file()
    tags = mlflow.get_run(r.run_id).data.tags
    assert tags[C.TAG_INT8_SHA256] == r.int8_sha256 == sha256_file(r.int8_path)
    logged = mlflow.get_logged_model(r.onnx_uri.removeprefix("models:/"))
    stored = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{logged.artifact_location}/{C.INT8_FILE}"))
    assert sha256_file(stored) == r.int8_sha256
    report = mlflow.artifacts.load_dict(f"runs:/{r.run_id}/export/quantization.json")
    assert report["keep"] and len(report["gate_cases"]) == report["gate"]["checks"]["fp32"]["cases"] + 10 + 4


def test_export_drops_int8_when_a_gate_fails_and_fp32_is_untouched(exported):
    _, _, r = exported
    q = r.quantization
    assert q["made"] and not q["keep"] and "exceeds the bound" in q["reason"] and q["gate"]["passed"]
    assert r.int8_path is None and not (r.folder / C.INT8_FILE).exists()
    tags = mlflow.get_run(r.run_id).data.tags
    assert C.TAG_INT8_SHA256 not in tags and tags[C.TAG_PARITY_PASSED] == "true" and tags[C.TAG_ONNX_SHA256] == r.sha256
    assert not mlflow.artifacts.load_dict(f"runs:/{r.run_id}/export/quantization.json")["keep"]


def test_registry_version_carries_both_files_and_resolve_refuses_a_corrupt_int8(exported):
    from rnnops.registry import api, resolve

    _, kept, dropped = exported
    v = api.register_run(kept.run_id)
    assert v.sha256 == kept.sha256 and v.int8_sha256 == kept.int8_sha256
    r = resolve.resolve(f"{v.name}/{v.version}")
    assert r.int8_path.read_bytes() == kept.int8_path.read_bytes() and r.int8_sha256 == kept.int8_sha256
    assert r.path.read_bytes() == kept.onnx_path.read_bytes()
    assert resolve.resolve(f"{v.name}/{v.version}", int8=False).int8_path is None  # fp32 serving never needs it
    w = api.register_run(dropped.run_id)
    assert w.int8_sha256 is None and resolve.resolve(f"{w.name}/{w.version}").int8_path is None

    # a damaged cached copy is fetched again; a damaged stored artifact is refused, never returned
    good = r.int8_path.read_bytes()
    r.int8_path.write_bytes(good[:-5] + b"xxxxx")
    assert resolve.resolve(f"{v.name}/{v.version}").int8_path.read_bytes() == good
    uri = mlflow.MlflowClient().get_model_version_download_uri(v.name, str(v.version))
    stored = Path(uri.removeprefix("file://")) / C.INT8_FILE
    stored.write_bytes(stored.read_bytes() + b"\x00tampered")
    r.int8_path.write_bytes(b"corrupt")
    with pytest.raises(RnnopsError, match=rf"{C.INT8_FILE} hashes to .*refusing it"):
        resolve.resolve(f"{v.name}/{v.version}")
    with pytest.raises(RnnopsError, match="refusing it"):
        resolve.resolve_ref(f"{v.name}/{v.version}")
    assert not r.int8_path.exists()
    assert resolve.resolve_ref(f"{v.name}/{v.version}", int8=False).path.read_bytes() == kept.onnx_path.read_bytes()
    stored.write_bytes(good)


def _serve(models: str, precision: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from rnnops.serving.config import ServeConfig
    from rnnops.serving.forecast.sessions import SessionStore
    from rnnops.serving.http.app import Serving, create_app
    from rnnops.serving.models import ModelManager

    cfg = ServeConfig(models=models, poll_seconds=0, precision=precision, threads=1)
    manager = ModelManager(cfg)
    asyncio.run(manager.start())
    return TestClient(create_app(Serving(cfg, manager, SessionStore()))), manager


@pytest.mark.parametrize("precision", ["auto", "fp32", "int8"])
def test_serving_picks_the_file_by_precision_and_says_which_is_live(exported, precision):
    _, kept, dropped = exported
    client, manager = _serve(f"kept={kept.onnx_path},dropped={dropped.onnx_path}", precision)
    try:
        with client as c:
            d = c.get("/models").json()
            live = {m["name"]: m for m in d["models"]}
            want = "fp32" if precision == "fp32" else "int8"
            assert live["kept"]["precision"] == want and live["kept"]["files"]["int8"] == (
                None if precision == "fp32" else kept.int8_sha256
            )
            assert live["kept"]["path"] == str(kept.int8_path if want == "int8" else kept.onnx_path)
            assert c.get("/v2/models/kept").json()["parameters"] == {"precision": want}
            cards = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
            assert cards["kept"]["precision"] == want
            if precision == "int8":  # asked for int8, none kept: not loaded, and /models says why
                assert "dropped" not in live and "has no int8 file" in d["errors"][0]["error"]
            else:
                assert live["dropped"]["precision"] == "fp32" and live["dropped"]["precision_reason"]
            one = c.post("/complete", json={"model": "kept", "prompt": "ROMEO:", "max_chars": 30, "seed": 3}).json()
            assert len(one["text"]) == 30
    finally:
        asyncio.run(manager.stop())


def test_precision_setting_is_validated(monkeypatch):
    from rnnops.serving.config import ServeConfig

    monkeypatch.setenv("RNNOPS_PRECISION", "int4")
    with pytest.raises(RnnopsError, match="RNNOPS_PRECISION must be auto, fp32, int8"):
        ServeConfig.from_env()
    monkeypatch.setenv("RNNOPS_PRECISION", "int8")
    assert ServeConfig.from_env().precision == "int8"


def test_a_file_ref_finds_its_int8_sibling(exported, tmp_path):
    from rnnops.registry.resolve import resolve_ref

    _, kept, dropped = exported
    m = resolve_ref(str(kept.onnx_path))
    assert m.int8_path == kept.int8_path and m.int8_sha256 == kept.int8_sha256
    assert resolve_ref(str(dropped.onnx_path)).int8_path is None
    assert resolve_ref(str(kept.int8_path)).int8_path is None  # the int8 file itself has no sibling
    lone = tmp_path / "m.onnx"
    shutil.copyfile(kept.onnx_path, lone)
    assert resolve_ref(str(lone)).int8_path is None
