"""The decode graph (serving/generate/decode_graph.py): sampling and several decode steps in one
onnxruntime call, built from a char model's file when it loads.

On tiny exported models of every char cell (classic: LSTM, GRU, RNN, each fp32 and its fixed-scale
int8 file; modern: minGRU, minLSTM, mLSTM, fp32: they have no int8 form), with real onnxruntime:

- the wrapped file is valid ONNX (onnx.checker, full check) and one call of K steps gives exactly
  what K model steps and the numpy sampler give (tokens, the logits they were drawn from, the state);
- through the scheduler, the same seed gives the same text alone or among 64 streams, and the same
  text as the numpy path (greedy, plain, top-k and top-p rows mixed), stop strings included;
- a file the graph cannot wrap (opset 12) keeps the numpy path, and says so;
- the CUDA provider runs it (skipped without a GPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from rnnops import contract as C  # noqa: E402
from rnnops.export import int8  # noqa: E402
from rnnops.export.onnx_export import export_onnx  # noqa: E402
from rnnops.serving.generate import decode_graph as D  # noqa: E402
from rnnops.serving.generate.sampling import SamplingParams, sample_batch  # noqa: E402
from rnnops.serving.generate.scheduler import GenerationRequest, StepScheduler  # noqa: E402
from rnnops.serving.runtime import Runtime  # noqa: E402
from rnnops.training.models import CharModel, CharModelConfig  # noqa: E402

VOCAB = list("abcdefghij klmnop.\n")
CLASSIC = ("lstm", "gru", "rnn")
MODERN = ("mingru", "minlstm", "mlstm")
CASES = [(c, "fp32") for c in CLASSIC + MODERN] + [(c, "int8") for c in CLASSIC]


def _model(cell: str) -> CharModel:
    torch.manual_seed(0)
    cfg = CharModelConfig(
        vocab_size=len(VOCAB),
        cell=cell,
        hidden_size=16,
        num_layers=2,
        embed_dim=8,
        heads=2 if cell == "mlstm" else None,
    )
    model = CharModel(cfg).eval()
    with torch.no_grad():  # peakier logits than the init's, so top-k / top-p cut something
        for p in model.parameters():
            p.mul_(3.0)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[tuple[str, str], Path]:
    out = {}
    for cell in CLASSIC + MODERN:
        folder = tmp_path_factory.mktemp(cell)
        fp32 = export_onnx(_model(cell), {"vocab": VOCAB}, folder / C.ONNX_FILE)
        out[cell, "fp32"] = fp32
        if cell in CLASSIC:
            out[cell, "int8"] = int8.quantize_file(fp32, folder / C.INT8_FILE)
    return out


# rows: greedy, plain temperature, top-k, top-p, both, top-k >= vocabulary (plain)
TEMPERATURE = np.array([0.0, 0.8, 1.0, 1.3, 0.7, 1.0])
TOP_K = np.array([0, 0, 3, 0, 5, 100])
TOP_P = np.array([1.0, 1.0, 1.0, 0.6, 0.8, 1.0])


@pytest.mark.parametrize(("cell", "precision"), CASES)
def test_one_call_of_k_steps_equals_k_model_steps_and_the_numpy_sampler(files, cell, precision):
    rt = Runtime(files[cell, precision])
    graph, why = D.build(rt)
    assert graph is not None, why
    onnx.checker.check_model(onnx.load_from_string(D.wrap(rt.path.read_bytes(), rt.info.state, len(VOCAB))), True)
    rows = len(TEMPERATURE)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, len(VOCAB), rows)
    state = rt.run(rng.integers(0, len(VOCAB), (rows, 5))).state  # some history first
    u = rng.random((rows, 7))
    got = graph.run(tokens, state, TEMPERATURE, TOP_K, TOP_P, u, logits=True)
    assert got.tokens.shape == (7, rows) and got.logits is not None
    t, s = tokens, state
    for k in range(7):
        r = rt.run(t[:, None], s, "last")
        np.testing.assert_array_equal(got.logits[k], r.output)
        t, s = sample_batch(r.output, TEMPERATURE, TOP_K, TOP_P, u[:, k]), r.state
        np.testing.assert_array_equal(got.tokens[k], t)
    for a, b in zip(got.state, s):
        np.testing.assert_array_equal(a, b)
    # a lone row runs as two (batch invariance): the same as its row in the batch
    one = graph.run(tokens[2:3], rt.take(state, [2]), TEMPERATURE[2:3], TOP_K[2:3], TOP_P[2:3], u[2:3])
    np.testing.assert_array_equal(one.tokens[:, 0], got.tokens[:, 2])
    assert one.logits is None


def _requests(n: int, stop: tuple[str, ...] = ()) -> list[GenerationRequest]:
    out = []
    for i in range(n):
        params = SamplingParams(float(TEMPERATURE[i % 6]), int(TOP_K[i % 6]), float(TOP_P[i % 6]))
        prompt = np.array([(i * 7 + j) % len(VOCAB) for j in range(1 + i % 5)], np.int64)
        out.append(GenerationRequest(prompt, 20 + i % 13, params, seed=1000 + i, stop=stop))
    return out


def _generate(
    rt: Runtime, requests: list[GenerationRequest], steps: int, lanes: int = 1
) -> list[tuple[str, str | None]]:
    sched = StepScheduler(rt, decode_steps=steps, lanes=lanes)
    if lanes > 1:
        sched.executor.start()  # the runner thread: one lane's call overlaps the other's Python
    streams = [sched.submit(r) for r in requests]
    try:
        sched.run_until_idle()
    finally:
        sched.executor.stop()
    return [(s.text, s.finish_reason) for s in streams]


@pytest.mark.parametrize(("cell", "precision"), CASES)
def test_same_seed_same_text_alone_or_among_64_and_as_the_numpy_path(files, cell, precision):
    rt = Runtime(files[cell, precision])
    requests = _requests(64)
    among = _generate(rt, requests, steps=8)
    assert StepScheduler(rt, decode_steps=8).executor.graph is not None
    for i in (0, 3, 4, 37):  # greedy, top-p, top-k + top-p, a top-k row further down
        assert _generate(rt, [requests[i]], steps=8)[0] == among[i]
    assert _generate(rt, requests, steps=0) == among  # the numpy sampler, one step per call
    assert len({t for t, _ in among}) > 32  # the seeds and parameters do make different texts


def test_stop_strings_on_a_chunk_drop_the_text_after_the_stop_as_the_numpy_path(files):
    rt = Runtime(files["lstm", "fp32"])
    requests = _requests(24, stop=("e", "k."))
    graph = _generate(rt, requests, steps=16)
    assert graph == _generate(rt, requests, steps=0)
    assert sum(reason == "stop" for _, reason in graph) >= 4  # some stopped in the middle of a chunk


def test_steps_per_call_run_until_a_stream_could_join_or_reaches_its_length(files):
    rt = Runtime(files["gru", "int8"])
    sched = StepScheduler(rt, decode_steps=16, call_budget_s=1e9)  # the step count alone decides here
    launched: list[int] = []
    launch = sched.executor.launch
    sched.executor.launch = lambda lane, lanes, steps=1: (launched.append(steps), launch(lane, lanes, steps))[1]  # type: ignore[method-assign]
    a = sched.submit(GenerationRequest(np.array([1, 2], np.int64), 40, seed=1))
    sched.step()  # a prefills
    sched.step()  # a decodes alone: 16 steps (its length allows)
    b = sched.submit(GenerationRequest(np.array([3], np.int64), 5, seed=2))
    sched.run_until_idle()
    assert a.text and len(a.text) == 40 and len(b.text) == 5
    # a's first call ran 16; while b was prefilling/joining, one step at a time; b's length (4 left
    # after its first character) bounds the call after it joined; then a alone again
    assert launched[0] == 16 and 1 in launched and 4 in launched
    assert sum(launched) == 39  # every character after the first of a (the rest came from the calls)
    assert sched.executor.step_s is not None and sched.executor.step_s > 0


def test_a_call_stays_within_its_time_budget(files):
    rt = Runtime(files["lstm", "fp32"])
    sched = StepScheduler(rt, decode_steps=16, call_budget_s=1e9)
    s = sched.submit(GenerationRequest(np.array([1, 2], np.int64), 40, seed=1))
    sched.run_until_idle()
    assert sched.executor.step_s is not None and sched.steps == 2 + 3  # prefill, launch, calls of 16 + 16 + 7
    # the decision alone, at a given time per step: as many steps as fit in the budget
    lane = sched._lanes[0]
    t = sched.submit(GenerationRequest(np.array([1, 2], np.int64), 40, seed=1))
    sched.step()  # prefill
    sched.step()  # joins the lane (and its first call runs)
    sched.executor.step_s, sched.call_budget_s = 0.001, 0.0045
    assert sched._steps(lane) == 4
    sched.call_budget_s = 1e-12  # less than a step: one step per call, whatever the measurement
    before = sched.steps
    sched.run_until_idle()
    assert t.text == s.text and sched.steps - before >= 39 - 16  # the same text, from one-step calls


def test_logprobs_through_the_graph_are_the_numpy_paths(files):
    rt = Runtime(files["mingru", "fp32"])
    requests = [
        GenerationRequest(np.array([1, 2, 3], np.int64), 30, SamplingParams(0.9, 4, 1.0), seed=s, logprobs=2)
        for s in range(5)
    ] + _requests(5)
    runs = {}
    for steps in (0, 8):
        sched = StepScheduler(rt, decode_steps=steps)
        streams = [sched.submit(r) for r in requests]
        sched.run_until_idle()
        runs[steps] = [(s.text, s.logprobs) for s in streams]
    assert runs[0] == runs[8]
    assert all(len(lp) == len(text) for text, lp in runs[8][:5])


def test_two_lanes_and_iobinding_give_the_same_texts(files):
    """The graph's call on the runner thread (two lanes), and through IOBinding (the state bound as
    OrtValues between calls: the CUDA provider's path, run here on the CPU)."""
    path = files["gru", "fp32"]
    requests = _requests(64)
    expected = _generate(Runtime(path), requests, steps=0)
    assert _generate(Runtime(path), requests, steps=8, lanes=2) == expected
    bound = Runtime(path, iobinding="1")
    assert bound.iobinding and D.build(bound)[0] is not None
    assert _generate(bound, requests, steps=8) == expected


def test_a_file_the_graph_cannot_wrap_keeps_the_numpy_path(tmp_path):
    path = export_onnx(_model("lstm"), {"vocab": VOCAB}, tmp_path / "old.onnx", opset=12)
    rt = Runtime(path)
    sched = StepScheduler(rt, decode_steps=16)
    assert sched.executor.graph is None and sched.executor.max_steps == 1
    assert "opset 12" in sched.describe()["decode"] and sched.describe()["decode"].startswith("python")
    s = sched.submit(GenerationRequest(np.array([1], np.int64), 12, seed=3))
    sched.run_until_idle()
    assert len(s.text) == 12 and sched.steps == 13  # one step per call, as before
    assert D.build(Runtime(path))[0] is None


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA (onnxruntime-gpu and a GPU)"
)
def test_the_decode_graph_on_the_cuda_provider(files):
    rt = Runtime(files["lstm", "fp32"], providers="cuda")
    assert rt.device == "cuda" and rt.iobinding
    graph, why = D.build(rt)
    assert graph is not None, why
    requests = _requests(16)
    texts = _generate(rt, requests, steps=8)
    assert all(len(t) > 0 for t, _ in texts)
    # on the GPU a seed reproduces a text at the same concurrency (cuBLAS picks kernels by batch)
    assert _generate(rt, requests, steps=8) == texts


def test_the_engine_process_decodes_through_the_graph_with_the_numpy_paths_texts(files):
    from rnnops.serving.generate import engine as E

    path = files["rnn", "int8"]
    rt = Runtime(path)
    requests = _requests(12, stop=("k.",))
    client = E.EngineClient(E.EngineSpec(str(path), name="graph", decode_steps=8)).start()
    try:
        assert client.describe()["decode"].startswith("graph:"), client.describe()
        streams = [client.submit(r) for r in requests]
        got = [(s.result(60), s.finish_reason) for s in streams]
    finally:
        client.stop()
    assert got == _generate(rt, requests, steps=0)
