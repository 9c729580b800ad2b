"""The onnxruntime runtime with real tiny ONNX files (exported here with torch, as export does),
and the step scheduler on top of it: parity with torch, batch invariance (what makes seeded
generation reproducible among concurrent streams), IOBinding, providers, forecasters.

The helpers ``export_char`` / ``export_forecaster`` write contract-conforming ONNX files from
freshly initialised models; test_service.py reuses them.
"""

from __future__ import annotations

import logging
import string
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from rnnops import contract  # noqa: E402
from rnnops.errors import RnnopsError  # noqa: E402
from rnnops.serving.generate.sampling import SamplingParams  # noqa: E402
from rnnops.serving.generate.scheduler import GenerationRequest, StepScheduler  # noqa: E402
from rnnops.serving.runtime import Runtime  # noqa: E402

VOCAB = list("\n " + string.ascii_letters + ".,;:!?'-")


def step(rt: Runtime, tokens, state):
    """A char model's decode call, as the scheduler makes it: the last logits and the new state."""
    r = rt.run(tokens, state, outputs="last")
    return r.output, r.state


class _Wrap(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, *state):
        out, new = self.model(x, tuple(state))
        return (out, *new)


def _export(model, example, n_state: int, path: Path, meta: dict, main_output: str) -> Path:
    import onnx

    model.eval()
    ins = [contract.INPUT, *["h0", "c0"][:n_state]]
    outs = [main_output, *["hn", "cn"][:n_state]]
    axes = {contract.INPUT: {0: "B", 1: "T"}, main_output: {0: "B"}}
    if main_output == contract.CHAR_OUTPUT:
        axes[main_output][1] = "T"
    for n in ins[1:] + outs[1:]:
        axes[n] = {1: "B"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Wrap(model),
            example,
            str(path),
            input_names=ins,
            output_names=outs,
            dynamic_axes=axes,
            dynamo=False,
            opset_version=17,
        )
    proto = onnx.load(str(path))
    for k, v in contract.encode_metadata(meta).items():
        p = proto.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(proto, str(path))
    return path


def export_char(path: Path, cell: str = "lstm", hidden: int = 32, layers: int = 1, vocab=VOCAB, seed: int = 0):
    """A randomly initialised CharModel as contract ONNX; returns (path, torch model)."""
    from rnnops.training.models import CharModel, CharModelConfig

    torch.manual_seed(seed)
    m = CharModel(CharModelConfig(vocab_size=len(vocab), cell=cell, hidden_size=hidden, num_layers=layers, embed_dim=8))
    n = 2 if cell == "lstm" else 1
    example = (torch.zeros(2, 3, dtype=torch.long), *m.init_state(2))
    meta = {
        "kind": "char",
        "cell": cell,
        "layers": layers,
        "hidden_size": hidden,
        "state_inputs": contract.state_inputs(cell),
        "state_outputs": contract.state_outputs(cell),
        "stateful": True,
        "vocab": list(vocab),
        "source_run": None,
        "version": "test",
    }
    return _export(m, example, n, path, meta, contract.CHAR_OUTPUT), m.eval()


def export_forecaster(
    path: Path,
    norm: str = "revin",
    cell: str = "gru",
    features=("a", "b", "OT"),
    lookback: int = 12,
    horizon: int = 4,
    hidden: int = 16,
    seed: int = 0,
    freq: str | None = "h",
):
    """A randomly initialised Forecaster (windowed revin or stateful fixed) as contract ONNX."""
    from rnnops.training.models import Forecaster, ForecasterConfig

    torch.manual_seed(seed)
    f = len(features)
    cfg = ForecasterConfig(
        n_features=f,
        target_indices=[f - 1],
        lookback=lookback,
        horizon=horizon,
        cell=cell,
        hidden_size=hidden,
        norm=norm,
        scaler_mean=[1.0] * f,
        scaler_std=[2.0] * f,
        feature_names=list(features),
        target_names=[features[-1]],
    )
    m = Forecaster(cfg)
    n = 2 if cell == "lstm" else 1
    example = (torch.zeros(2, lookback, f), *m.init_state(2))
    meta = {
        "kind": "forecaster",
        "cell": cell,
        "layers": 1,
        "hidden_size": hidden,
        "state_inputs": contract.state_inputs(cell),
        "state_outputs": contract.state_outputs(cell),
        "stateful": cfg.stateful,
        "feature_names": list(features),
        "target_names": [features[-1]],
        "lookback": lookback,
        "horizon": horizon,
        "freq": freq,
        "source_run": None,
        "version": "test",
    }
    return _export(m, example, n, path, meta, contract.FORECAST_OUTPUT), m.eval()


@pytest.fixture(scope="module")
def char_lstm(tmp_path_factory):
    return export_char(tmp_path_factory.mktemp("rt") / "char.onnx", "lstm", hidden=32, layers=2)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_char_runtime_matches_torch_and_steps_like_one_call(tmp_path, cell):
    path, model = export_char(tmp_path / f"{cell}.onnx", cell)
    rt = Runtime(path)
    assert rt.kind == "char" and rt.info.cell == cell and rt.vocab == tuple(VOCAB)
    ids = rt.encode("Hello, world")
    logits, state = step(rt, ids[None], rt.zero_state(1))
    with torch.no_grad():
        ref, _ = model(torch.from_numpy(ids)[None])
    np.testing.assert_allclose(logits[0], ref[0, -1].numpy(), atol=1e-5)
    # one token at a time with carried state == one call over the sequence
    st = rt.zero_state(1)
    for t in ids:
        step_logits, st = step(rt, np.array([[t]]), st)
    np.testing.assert_allclose(step_logits, logits, atol=1e-5)
    for a, b in zip(rt.state_numpy(st), rt.state_numpy(state)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_batched_rows_equal_single_rows_exactly(char_lstm):
    """The property seeded reproducibility among concurrent streams rests on (checked bitwise)."""
    rt = Runtime(char_lstm[0], threads=2)
    rng = np.random.default_rng(0)
    n = 64
    state = tuple(rng.standard_normal((2, n, 32)).astype(np.float32) for _ in range(2))
    for T in (1, 5):
        toks = rng.integers(0, len(VOCAB), (n, T))
        batch_logits, batch_state = step(rt, toks, state)
        for b in (0, 17, 63):
            one, one_state = step(rt, toks[b : b + 1], rt.take(state, [b]))
            assert np.array_equal(one[0], batch_logits[b])
            for x, y in zip(rt.state_numpy(one_state), rt.state_numpy(batch_state)):
                assert np.array_equal(x[:, 0], y[:, b])


def test_take_and_concat(char_lstm):
    rt = Runtime(char_lstm[0])
    rng = np.random.default_rng(1)
    s = tuple(rng.standard_normal((2, 5, 32)).astype(np.float32) for _ in range(2))
    t = rt.take(s, [4, 0])
    assert rt.batch_of(t) == 2 and np.array_equal(t[0][:, 0], s[0][:, 4])
    c = rt.concat([t, rt.zero_state(1), rt.zero_state(0)])
    assert rt.batch_of(c) == 3 and not c[1][:, 2].any()


def test_iobinding_path_gives_the_same_results(char_lstm):
    plain = Runtime(char_lstm[0])
    bound = Runtime(char_lstm[0], iobinding="1")
    assert bound.iobinding and not plain.iobinding
    ids = plain.encode("To be, or not")
    a, sa = step(plain, ids[None], plain.zero_state(1))
    b, sb = step(bound, ids[None], bound.zero_state(1))
    import onnxruntime as ort

    assert isinstance(sb[0], ort.OrtValue)  # the state stays an OrtValue between steps
    np.testing.assert_array_equal(a, b)
    for _ in range(3):
        a, sa = step(plain, np.array([[3]]), sa)
        b, sb = step(bound, np.array([[3]]), sb)
    np.testing.assert_array_equal(a, b)
    merged = bound.concat([sb, bound.zero_state(2)])
    assert bound.batch_of(merged) == 3
    np.testing.assert_array_equal(bound.state_numpy(bound.take(merged, [0]))[0], sa[0])


def test_cuda_request_falls_back_to_cpu_with_a_clear_message(char_lstm, caplog):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: no fallback to test")
    with caplog.at_level(logging.WARNING, logger="rnnops.serving"):
        rt = Runtime(char_lstm[0], providers="cuda")
    assert rt.providers == ["CPUExecutionProvider"] and rt.device == "cpu" and not rt.iobinding
    assert "no CUDAExecutionProvider" in caplog.text and "onnxruntime-gpu" in caplog.text


def test_threads_and_description(char_lstm):
    rt = Runtime(char_lstm[0], threads=3)
    d = rt.describe()
    assert d["threads"] == 3 and d["vocab_size"] == len(VOCAB) and d["cell"] == "lstm" and d["layers"] == 2


def test_encode_names_unknown_characters(char_lstm):
    rt = Runtime(char_lstm[0])
    with pytest.raises(ValueError) as exc:
        rt.encode("naïve €")
    assert exc.value.args[0] == ["ï", "€"]


def test_files_that_break_the_contract_are_refused(tmp_path, char_lstm):
    import onnx

    proto = onnx.load(str(char_lstm[0]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(RnnopsError, match="rnnops.kind"):
        Runtime(bare)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(RnnopsError, match="cannot load"):
        Runtime(garbage)


def test_scheduler_on_the_real_runtime_is_reproducible_among_64_streams(char_lstm):
    rt = Runtime(char_lstm[0], threads=2)
    rng = np.random.default_rng(3)
    prompts = ["".join(rng.choice(VOCAB[2:], size=int(rng.integers(1, 30)))) for _ in range(64)]

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


@pytest.mark.parametrize("norm", ["revin", "fixed"])
def test_forecaster_runtime_matches_torch(tmp_path, norm):
    path, model = export_forecaster(tmp_path / f"{norm}.onnx", norm=norm)
    rt = Runtime(path)
    assert rt.kind == "forecaster" and rt.info.stateful == (norm == "fixed") and rt.info.lookback == 12
    x = np.random.default_rng(0).standard_normal((5, 12, 3)).astype(np.float32) * 3 + 1
    y = rt.run(x).output
    with torch.no_grad():
        ref, _ = model(torch.from_numpy(x))
    assert y.shape == (5, 4, 1)
    np.testing.assert_allclose(y, ref.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="3"):
        rt.run(x[:, :, :2])
    # batch-invariant, bit for bit: alone, in pairs, in the full batch
    for i in range(5):
        assert np.array_equal(rt.run(x[i : i + 1]).output[0], y[i])
    assert np.array_equal(rt.run(x[1:3]).output, y[1:3])
    if norm == "revin":
        # a longer window is cut to the last `lookback` rows; a shorter one is refused
        longer = np.concatenate([np.zeros((5, 7, 3), np.float32), x], axis=1)
        np.testing.assert_allclose(rt.run(longer).output, y, atol=1e-6)
        with pytest.raises(ValueError, match="needs 12 rows"):
            rt.run(x[:, :5])
    else:
        # stateful: stepping chunks of new observations with carried state == one call
        state = None
        for lo, hi in ((0, 5), (5, 6), (6, 12)):
            r = rt.run(x[:, lo:hi], state)
            out, state = r.output, r.state
        np.testing.assert_allclose(out, y, atol=1e-5)
