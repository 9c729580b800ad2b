"""The engine process (``serving/generate/engine.py``) through its client, on a real ONNX file:
the texts are the in-process scheduler's, a stream's end arrives without waiting for the engine's
idle poll, admission is decided in the worker, cancel and stop end streams the usual way."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("torch")

from test_runtime import export_char  # noqa: E402

from rnnops.serving.errors import Overloaded  # noqa: E402
from rnnops.serving.generate import engine as E  # noqa: E402
from rnnops.serving.generate.sampling import SamplingParams  # noqa: E402
from rnnops.serving.generate.scheduler import StepScheduler  # noqa: E402
from rnnops.serving.generate.stream import GenerationRequest  # noqa: E402
from rnnops.serving.runtime import Runtime  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path, _ = export_char(tmp_path_factory.mktemp("engine") / "char.onnx", "lstm", hidden=32)
    return path


def _req(rt, prompt: str, n: int, seed: int, **kw) -> GenerationRequest:
    return GenerationRequest(
        rt.encode(prompt), n, SamplingParams(kw.pop("temperature", 0.9), kw.pop("top_k", 0)), seed, **kw
    )


@pytest.fixture
def engine(model):
    client = E.EngineClient(E.EngineSpec(str(model), max_active=8, max_queue=2, name="test")).start()
    yield client
    client.stop()


def test_the_engine_gives_the_in_process_schedulers_texts(model, engine):
    rt = Runtime(model)
    reqs = [
        _req(rt, p, n, seed, stop=stop)
        for p, n, seed, stop in [
            ("ab", 40, 1, ()),
            ("the cat", 25, 2, ()),
            ("x", 60, 3, ("ab",)),
            ("hello there", 33, 4, ()),
        ]
    ]
    local = StepScheduler(rt)
    expected = [local.submit(r) for r in reqs]
    local.run_until_idle()
    streams = [engine.submit(r) for r in reqs]
    texts = [s.result(30) for s in streams]
    assert texts == [s.text for s in expected]
    assert [s.finish_reason for s in streams] == [s.finish_reason for s in expected]
    assert all(s.timing.first_char is not None and s.timing.finished >= s.timing.admitted for s in streams)
    assert engine.active == 0 and engine.queued == 0 and engine.describe()["steps"] > 0


def test_log_probabilities_and_timings_cross_the_pipe_with_the_text(model, engine):
    rt = Runtime(model)
    req = _req(rt, "the cat", 30, 5, logprobs=2)
    local = StepScheduler(rt)
    want = local.submit(req)
    local.run_until_idle()
    s = engine.submit(req)
    assert s.result(30) == want.text and s.finish_reason == "length"
    assert len(s.logprobs) == 30 and s.logprobs == want.logprobs  # each character's, in order, the same
    t = s.timing
    assert t.enqueued <= t.admitted <= t.first_char <= t.finished  # one clock: the engine's is the worker's


def test_a_streams_end_goes_out_when_the_engine_goes_idle(model, engine):
    """Ten short streams one after another: each ends as soon as it is done, not when the idle
    engine's wait for commands times out (0.5 s each: the bug this guards against)."""
    rt = Runtime(model)
    t0 = time.monotonic()
    for seed in range(10):
        assert len(engine.submit(_req(rt, "ab", 5, seed)).result(30)) == 5
    assert time.monotonic() - t0 < 2.5


def test_admission_is_decided_in_the_worker_and_cancel_frees_the_slot(model, engine):
    rt = Runtime(model)
    long = [engine.submit(_req(rt, "ab", 10**6, s)) for s in range(8)]  # every slot
    queued = [engine.submit(_req(rt, "ab", 5, 10 + s)) for s in range(2)]  # the queue
    with pytest.raises(Overloaded) as exc:
        engine.submit(_req(rt, "ab", 5, 99))
    assert exc.value.status == 429 and exc.value.reason == "queue_full"
    for s in long:
        s.cancel()
    for s in long:
        s.result(30)
    assert [s.finish_reason for s in long] == ["cancelled"] * 8
    assert all(len(s.result(30)) == 5 for s in queued)  # the freed slots took the queued streams
    deadline = time.monotonic() + 10
    while (engine.active or engine.queued) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.active == 0 and engine.queued == 0


def test_stop_ends_unfinished_streams_with_shutdown_and_the_process(model):
    rt = Runtime(model)
    client = E.EngineClient(E.EngineSpec(str(model), name="stop")).start()
    s = client.submit(_req(rt, "ab", 10**6, 1))
    deadline = time.monotonic() + 30
    while not s.generated and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.generated, "the engine process generated nothing in 30 s"
    client.stop()
    assert s.done and s.finish_reason == "shutdown" and not client.running
    assert client._proc.poll() is not None  # the engine process is gone
    with pytest.raises(Overloaded):
        client.submit(_req(rt, "ab", 5, 2))


def test_an_engine_that_cannot_load_its_model_says_why(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(RuntimeError, match="could not start.*onnxruntime cannot load it"):
        E.EngineClient(E.EngineSpec(str(bad), name="bad")).start()
