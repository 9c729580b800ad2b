"""The step scheduler alone, driven by a fake numpy runtime: admission, fairness, cancellation,
bounds, determinism, stop strings, errors. No onnxruntime, no HTTP."""

from __future__ import annotations

import asyncio
import os
import string
import subprocess
import sys
import threading

import numpy as np
import pytest

from rnnops.serving.generate.naive import NaiveGenerator
from rnnops.serving.generate.sampling import SamplingParams, sample_batch
from rnnops.serving.generate.scheduler import GenerationRequest, Overloaded, StepScheduler, Stream
from rnnops.serving.http.generate import wake_watchers, watch
from rnnops.serving.runtime import RunResult

VOCAB = list(string.ascii_lowercase + " .\n")


class FakeRuntime:
    """A tiny elementwise 'RNN' in numpy: h' = tanh(0.9 h + E[token]); logits = 3 h'.

    Elementwise, so every row is computed the same way whatever the batch (like the real kernels).
    Records every call's shape; ``poison`` makes any call that sees that token raise.
    """

    kind = "char"

    def __init__(self, vocab=VOCAB, poison: int | None = None):
        self.vocab = list(vocab)
        v = len(vocab)
        self.emb = np.random.default_rng(0).standard_normal((v, v)).astype(np.float32)
        self.calls: list[tuple[int, int]] = []
        self.poison = poison
        self.lock = threading.Lock()

    def zero_state(self, batch):
        return (np.zeros((1, batch, len(self.vocab)), np.float32),)

    def run(self, tokens, state=None, outputs="all"):  # the Runtime.run of a char model, as decoding calls it
        if state is None:
            state = self.zero_state(len(tokens))
        tokens = np.asarray(tokens)
        with self.lock:
            self.calls.append(tokens.shape)
        if self.poison is not None and (tokens == self.poison).any():
            raise RuntimeError("poisoned token")
        h = state[0][0]
        for t in range(tokens.shape[1]):
            h = np.tanh(0.9 * h + self.emb[tokens[:, t]])
        return RunResult((3 * h).astype(np.float32), (h[None].copy(),))

    def take(self, state, idx):
        return (state[0][:, np.asarray(idx, dtype=np.int64)].copy(),)

    def concat(self, states):
        states = [s for s in states if s[0].shape[1]]
        if not states:
            return self.zero_state(0)
        return (np.concatenate([s[0] for s in states], axis=1),)

    def encode(self, text):
        return np.array([self.vocab.index(c) for c in text], np.int64)


def req(rt, prompt="hello", n=20, seed=1, temperature=0.8, top_k=0, top_p=1.0, stop=()):
    return GenerationRequest(rt.encode(prompt), n, SamplingParams(temperature, top_k, top_p), seed, tuple(stop))


def alone(prompt, **kw) -> str:
    rt = FakeRuntime()
    s = StepScheduler(rt)
    st = s.submit(req(rt, prompt, **kw))
    s.run_until_idle()
    return st.text


def test_single_stream_generates_max_chars_and_stats():
    rt = FakeRuntime()
    s = StepScheduler(rt)
    st = s.submit(req(rt, "the cat", n=25, seed=3))
    s.run_until_idle()
    assert st.finish_reason == "length" and len(st.text) == 25
    assert st.drain() == st.text  # everything was delivered
    stats = st.stats()
    assert stats["chars"] == 25 and stats["seed"] == 3 and stats["ttfc_ms"] is not None
    # one prefill call over the whole prompt, then T=1 decode calls, batch 1
    assert rt.calls[0] == (1, 7) and all(c == (1, 1) for c in rt.calls[1:])
    assert len(rt.calls) == 25  # first char comes from the prefill logits


def test_same_seed_same_text_alone_or_among_64():
    rng = np.random.default_rng(7)
    prompts = ["".join(rng.choice(VOCAB[:27], size=int(rng.integers(1, 40)))) for _ in range(64)]
    configs = [
        dict(
            seed=i,
            n=30 + i % 7,
            temperature=[0.0, 0.5, 1.0, 1.3][i % 4],
            top_k=[0, 5][i % 2],
            top_p=[1.0, 0.9, 0.5][i % 3],
        )
        for i in range(64)
    ]
    expected = [alone(p, **c) for p, c in zip(prompts, configs)]
    rt = FakeRuntime()
    s = StepScheduler(rt, max_active=64, prefill_chunk=16)
    # arrive in three waves so admission, prefill and decode interleave
    streams = []
    for wave in (range(0, 20), range(20, 50), range(50, 64)):
        streams += [s.submit(req(rt, prompts[i], **configs[i])) for i in wave]
        s.step()
        s.step()
    s.run_until_idle()
    assert [st.text for st in streams] == expected
    # the decode batch really was batched: some T=1 call had dozens of rows
    assert max(b for b, t in rt.calls if t == 1) >= 40


def test_one_call_per_decode_step_for_all_active_streams():
    rt = FakeRuntime()
    s = StepScheduler(rt, max_active=8)
    for i in range(8):
        s.submit(req(rt, "ab", n=10, seed=i))
    s.step()  # admit + prefill all 8 (one call: same length)
    assert rt.calls == [(8, 2)]
    rt.calls.clear()
    s.step()
    assert rt.calls == [(8, 1)]


def test_prefill_groups_by_length_without_padding():
    rt = FakeRuntime()
    s = StepScheduler(rt, max_active=8)
    for p in ["a", "bb", "cc", "dddd"]:
        s.submit(req(rt, p, n=3))
    s.step()
    assert sorted(rt.calls) == [(1, 1), (1, 4), (2, 2)]


def test_long_prompts_prefill_in_chunks_and_match_unchunked():
    prompt = "the quick brown fox jumps over the lazy dog " * 3
    rt = FakeRuntime()
    s = StepScheduler(rt, prefill_chunk=10)
    st = s.submit(req(rt, prompt, n=15, seed=5))
    s.run_until_idle()
    assert [t for _, t in rt.calls[:14]] == [10] * 13 + [2]
    assert st.text == alone(prompt, n=15, seed=5)


def test_bounds_queue_full_is_429_with_retry_after():
    rt = FakeRuntime()
    s = StepScheduler(rt, max_active=2, max_queue=1)
    a = [s.submit(req(rt, n=50, seed=i)) for i in range(3)]  # 2 free slots + 1 queue place
    with pytest.raises(Overloaded) as exc:
        s.submit(req(rt))
    assert exc.value.status == 429 and exc.value.reason == "queue_full" and exc.value.retry_after >= 1
    s.step()
    assert s.active == 2 and s.queued == 1
    with pytest.raises(Overloaded):
        s.submit(req(rt))
    s.run_until_idle()
    assert all(st.finish_reason == "length" for st in a)


@pytest.mark.parametrize(
    "make",
    [lambda rt: StepScheduler(rt, max_active=1, max_queue=0), lambda rt: NaiveGenerator(rt, max_active=1, max_queue=0)],
    ids=["step", "naive"],
)
def test_every_generator_refuses_with_the_one_admission_rule(make):
    """The same bounds, message and Retry-After whichever generator runs (generate/client.py)."""
    rt = FakeRuntime()
    g = make(rt)
    hog = g.submit(req(rt, n=10**6))  # the one slot (taken at the next step; the naive one at once)
    with pytest.raises(Overloaded) as exc:
        g.submit(req(rt))
    assert exc.value.status == 429 and exc.value.reason == "queue_full" and 1 <= exc.value.retry_after <= 60
    assert "RNNOPS_MAX_STREAMS=1" in exc.value.message and "RNNOPS_MAX_QUEUE=0" in exc.value.message
    g.close()
    with pytest.raises(Overloaded) as exc:
        g.submit(req(rt))
    assert exc.value.status == 503 and exc.value.reason == "draining"
    hog.cancel()  # the naive generator's thread ends at its next character
    g.stop()


def test_the_generators_are_generation_clients():
    from rnnops.serving.generate.client import GenerationClient
    from rnnops.serving.generate.engine import EngineClient, EngineSpec

    rt = FakeRuntime()
    for g in (StepScheduler(rt), NaiveGenerator(rt), EngineClient(EngineSpec("unused.onnx"))):  # none started
        assert isinstance(g, GenerationClient), type(g).__name__


def test_queue_timeout_finishes_waiting_stream():
    rt = FakeRuntime()
    s = StepScheduler(rt, max_active=1, max_queue=4, queue_timeout=0.0)
    first = s.submit(req(rt, n=5))
    s.step()
    waiting = s.submit(req(rt, n=5))
    s.step()
    assert waiting.finish_reason == "queue_timeout" and "RNNOPS_QUEUE_TIMEOUT" in waiting.error
    s.run_until_idle()
    assert first.finish_reason == "length"


def test_fifo_admission_and_equal_progress():
    rt = FakeRuntime()
    s = StepScheduler(rt, max_active=3)
    streams = [s.submit(req(rt, "x", n=10, seed=i)) for i in range(5)]
    for _ in range(4):
        s.step()
    assert [st.admitted for st in streams] == [True, True, True, False, False]
    assert len({len(st.generated) for st in streams[:3]}) == 1  # one char per stream per step
    s.run_until_idle()
    # the first three finished together; 4 and 5 took their slots, in order
    assert streams[3].timing.admitted <= streams[4].timing.admitted
    assert all(st.finish_reason == "length" for st in streams)


def test_cancel_frees_slot_within_a_step():
    rt = FakeRuntime()
    s = StepScheduler(rt, max_active=2, max_queue=2)
    a, b = s.submit(req(rt, n=1000, seed=1)), s.submit(req(rt, n=1000, seed=2))
    c = s.submit(req(rt, n=5, seed=3))
    s.step()
    s.step()
    assert s.active == 2 and not c.admitted
    a.cancel()
    rt.calls.clear()
    s.step()  # a is retired before the decode call; c takes its slot in the same step
    assert a.finish_reason == "cancelled" and c.admitted
    assert rt.calls[0] == (1, 1)  # the decode batch no longer holds a
    b.cancel()
    s.run_until_idle()
    assert b.finish_reason == "cancelled" and c.finish_reason == "length"


def test_cancel_while_queued():
    rt = FakeRuntime()
    s = StepScheduler(rt, max_active=1)
    s.submit(req(rt, n=3))
    q = s.submit(req(rt, n=3))
    q.cancel()
    s.run_until_idle()
    assert q.finish_reason == "cancelled" and not q.generated


def test_stop_string_is_not_delivered_and_prefix_is_held_back():
    full = alone("the ", n=200, seed=11, temperature=1.0)
    stop = full[20:23]
    first = full.find(stop)
    rt = FakeRuntime()
    s = StepScheduler(rt)
    st = s.submit(req(rt, "the ", n=200, seed=11, temperature=1.0, stop=[stop]))
    delivered = ""
    while not st.done:
        s.step()
        delivered += st.drain()
        assert stop not in delivered
    delivered += st.drain()
    assert st.finish_reason == "stop" and delivered == full[:first] == st.text


def test_a_failing_model_call_fails_its_streams_only_and_the_loop_goes_on():
    rt = FakeRuntime(poison=VOCAB.index("z"))
    s = StepScheduler(rt)
    bad = s.submit(req(rt, "zzz", n=5))
    s.run_until_idle()
    assert bad.finish_reason == "error" and "prefill failed" in bad.error
    good = s.submit(req(rt, "abc", n=5, temperature=0.0))
    s.run_until_idle()
    assert good.finish_reason in ("length", "error")  # may sample 'z' greedily; must not hang
    ok = s.submit(req(rt, "abc", n=1, temperature=0.0))
    s.run_until_idle()
    assert ok.done


def test_threaded_loop_and_async_consumers():
    rt = FakeRuntime()
    s = StepScheduler(rt, max_active=16, on_step=wake_watchers).start()
    try:

        async def consume(i):
            st = Stream(req(rt, "ab" * (i + 1), n=40, seed=i))
            w = watch(st)  # the HTTP layer's waiter: woken by the scheduler's on_step hook
            s.submit(st.request, st)
            out = ""
            while True:
                done = st.done
                out += st.drain()
                if done:
                    return out, st
                await w.wait(1.0)

        async def main():
            return await asyncio.gather(*(consume(i) for i in range(32)))

        results = asyncio.run(main())
        for i, (out, st) in enumerate(results):
            assert out == st.text == alone("ab" * (i + 1), n=40, seed=i)
    finally:
        s.stop()
    assert not s.running


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "runner-thread"])
def test_two_lanes_give_the_same_texts_and_split_the_batch(threaded):
    """With two lanes (the service's setting) a big batch is cut in two calls per step, streams
    join, leave and move between lanes as lengths differ, and every text is the one it gets alone."""
    rng = np.random.default_rng(3)
    prompts = ["".join(rng.choice(VOCAB[:27], size=int(rng.integers(1, 30)))) for _ in range(80)]
    configs = [
        dict(
            seed=100 + i,
            n=int(rng.integers(5, 150)),
            temperature=[0.0, 0.7, 1.2][i % 3],
            top_k=[0, 4][i % 2],
            stop=["xyz"] if i % 11 == 0 else (),
        )
        for i in range(80)
    ]
    expected = [alone(p, **c) for p, c in zip(prompts, configs)]
    rt = FakeRuntime()
    s = StepScheduler(rt, max_active=64, prefill_chunk=8, lanes=2)
    if threaded:
        s.start()
    try:
        streams = []
        for wave in (range(0, 40), range(40, 80)):
            streams += [s.submit(req(rt, prompts[i], **configs[i])) for i in wave]
            if not threaded:
                for _ in range(3):
                    s.step()
        if threaded:
            texts = [st.result(30) for st in streams]
        else:
            s.run_until_idle()
            texts = [st.text for st in streams]
    finally:
        s.stop()
    assert texts == expected
    decode = [b for b, t in rt.calls if t == 1]
    # the 64-row batch ran as two calls per step: never one call of 64, many of half of it
    assert max(decode) < 64 and sum(24 <= b <= 40 for b in decode) > 20


def test_close_drains_then_ends_the_loop():
    rt = FakeRuntime()
    s = StepScheduler(rt).start()
    st = s.submit(req(rt, n=200))
    s.close()
    with pytest.raises(Overloaded) as exc:
        s.submit(req(rt))
    assert exc.value.status == 503
    assert len(st.result(5)) == 200
    s._thread.join(5)
    assert not s.running


def test_naive_generator_matches_scheduler():
    rt = FakeRuntime()
    n = NaiveGenerator(rt, max_active=4)
    streams = [n.submit(req(rt, "hello", n=30, seed=i)) for i in range(6)]
    texts = [st.result(10) for st in streams]
    assert texts == [alone("hello", n=30, seed=i) for i in range(6)]


# ---------------------------------------------------------------- sampling


def test_sampling_greedy_topk_topp():
    logits = np.array([[0.0, 2.0, 1.0, 2.0], [5.0, 0.0, 0.0, 0.0]], np.float32)
    u = np.array([0.99, 0.99])
    # greedy: first maximum
    assert sample_batch(logits, np.zeros(2), np.zeros(2, int), np.ones(2), u).tolist() == [1, 0]
    # top_k=1 is greedy at any temperature
    assert sample_batch(logits, np.ones(2), np.ones(2, int), np.ones(2), u).tolist() == [1, 0]
    # top_p tiny keeps only the most likely
    assert sample_batch(logits, np.ones(2), np.zeros(2, int), np.full(2, 1e-6), u).tolist() == [1, 0]
    # top_k=2 never picks outside the two best
    rng = np.random.default_rng(0)
    picks = {
        int(sample_batch(logits[:1], np.array([5.0]), np.array([2]), np.ones(1), rng.random(1))[0]) for _ in range(200)
    }
    assert picks == {1, 3}


def test_sampling_matches_softmax_frequencies():
    logits = np.log(np.array([[0.5, 0.3, 0.2]], np.float32))
    rng = np.random.default_rng(1)
    u = rng.random(20000)
    picks = sample_batch(np.repeat(logits, 20000, 0), np.ones(20000), np.zeros(20000, int), np.ones(20000), u)
    freq = np.bincount(picks, minlength=3) / 20000
    assert np.allclose(freq, [0.5, 0.3, 0.2], atol=0.015)


def test_sampling_rows_are_independent_of_the_batch():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((64, 65)).astype(np.float32)
    t, k, p, u = rng.random(64) * 1.5, rng.integers(0, 10, 64), rng.random(64), rng.random(64)
    batch = sample_batch(logits, t, k, p, u)
    rows = [
        int(sample_batch(logits[i : i + 1], t[i : i + 1], k[i : i + 1], p[i : i + 1], u[i : i + 1])[0])
        for i in range(64)
    ]
    assert batch.tolist() == rows


# ---------------------------------------------------------------- the serving path stays light


def test_importing_the_service_never_imports_torch():
    """serving/ runs on onnxruntime + numpy: the service module (what `bentoml serve` imports) and
    the CLI must not pull torch in, directly or through another stage."""
    code = (
        "import sys; import rnnops.serving.service, rnnops.serving.cli, rnnops.serving.models; "
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
        "assert not bad, bad; print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "RNNOPS_MODELS": "char-rnn@champion"},
    )
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


# ---------------------------------------------------------------- transport, with the fake runtime


class FlakyRuntime(FakeRuntime):
    """Fails every call after the first ``ok`` ones (a model that breaks mid-stream)."""

    def __init__(self, ok: int):
        super().__init__()
        self.ok = ok

    def run(self, tokens, state=None, outputs="all"):
        if len(self.calls) >= self.ok:
            raise RuntimeError("device lost")
        return super().run(tokens, state, outputs)


def test_a_stream_that_fails_ends_with_an_error_event_not_a_silent_cut():
    import warnings
    from pathlib import Path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's notice about httpx vs httpx2
        from starlette.testclient import TestClient

    from rnnops.refs import parse_ref
    from rnnops.serving.config import ServeConfig
    from rnnops.serving.forecast.sessions import SessionStore
    from rnnops.serving.http.app import Serving, create_app
    from rnnops.serving.models import LoadedModel, ModelManager, Resolved, ServedRef

    rt = FlakyRuntime(ok=20)
    sched = StepScheduler(rt, name="flaky", on_step=wake_watchers).start()
    cfg = ServeConfig(models="fake=/nowhere/fake.onnx", poll_seconds=0)
    manager = ModelManager(cfg)
    manager.current["fake"] = LoadedModel(
        ServedRef("fake", parse_ref("/nowhere/fake.onnx")),
        "1",
        Resolved("1", Path("/nowhere/fake.onnx"), None, None),
        rt,
        scheduler=sched,
    )
    app = create_app(Serving(cfg, manager, SessionStore()))
    try:
        with TestClient(app) as client:
            with client.stream("POST", "/generate", json={"prompt": "abc", "max_chars": 100, "seed": 1}) as r:
                assert r.status_code == 200
                lines = [line for line in r.iter_lines() if line]
            events = [line.split(": ", 1)[1] for line in lines if line.startswith("event: ")]
            assert events[0] == "chunk" and events[-1] == "error" and "done" not in events
            assert "device lost" in lines[-1] and '"finish_reason": "error"' in lines[-1]
            r = client.post("/complete", json={"prompt": "abc", "max_chars": 10})
            assert r.status_code == 500 and "device lost" in r.json()["error"]
            rt.ok = 10**9  # the model recovers: the scheduler kept running
            r = client.post("/complete", json={"prompt": "abc", "max_chars": 10})
            assert r.status_code == 200 and len(r.json()["text"]) == 10
    finally:
        sched.stop()
