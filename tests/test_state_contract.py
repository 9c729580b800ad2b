"""The general state contract (``rnnops.state``) end to end in serving, with a model whose state
looks nothing like an LSTM's: one batch-first tensor ``S [batch, 4, 3]`` and one ``[2, batch]``
counter. If the runtime, the step scheduler or the HTTP path held any cell-specific shape, this
model would fail there; it must stream, batch and reproduce exactly like the classic cells."""

from __future__ import annotations

import string
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from test_runtime import step  # noqa: E402

from rnnops import contract  # noqa: E402
from rnnops.serving.generate.sampling import SamplingParams  # noqa: E402
from rnnops.serving.generate.scheduler import GenerationRequest, StepScheduler  # noqa: E402
from rnnops.serving.runtime import Runtime  # noqa: E402

VOCAB = list(" " + string.ascii_lowercase)


class OddStateModel(torch.nn.Module):
    """S_t = S_0 * 0.9^t + running sum of embeddings (batch first); k_t counts the steps in a
    [2, batch] tensor. Stepping one token at a time equals one call over the sequence."""

    def __init__(self, vocab: int):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, 12)
        self.out = torch.nn.Linear(12 + 2, vocab)

    def forward(self, x, S0, k0):
        e = self.embed(x).view(x.shape[0], x.shape[1], 4, 3)  # [B, T, 4, 3]
        t = torch.arange(1, x.shape[1] + 1, dtype=torch.float32).view(1, -1, 1, 1)
        decay = torch.pow(torch.tensor(0.9), t)
        # S_t = 0.9^t S_0 + sum_{j<=t} 0.9^(t-j) e_j  ==  0.9^t (S_0 + cumsum(e_j / 0.9^j))
        S = decay * (S0.unsqueeze(1) + torch.cumsum(e / decay, dim=1))
        k = k0.t().unsqueeze(1) + t.view(1, -1, 1)  # [B, T, 2]
        logits = self.out(torch.cat([S.flatten(2), torch.tanh(k / 10.0)], dim=-1))
        return logits, S[:, -1], k[:, -1].t().contiguous()


STATE = [
    {"input": "S0", "output": "Sn", "shape": ["batch", 4, 3], "dtype": "float32"},
    {"input": "k0", "output": "kn", "shape": [2, "batch"], "dtype": "float32"},
]


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory):
    import onnx

    path = tmp_path_factory.mktemp("state") / "odd.onnx"
    m = OddStateModel(len(VOCAB)).eval()
    example = (torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, 3), torch.zeros(2, 2))
    axes = {
        "x": {0: "batch", 1: "time"},
        "logits": {0: "batch", 1: "time"},
        "S0": {0: "batch"},
        "Sn": {0: "batch"},
        "k0": {1: "batch"},
        "kn": {1: "batch"},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            m,
            example,
            str(path),
            input_names=["x", "S0", "k0"],
            output_names=["logits", "Sn", "kn"],
            dynamic_axes=axes,
            dynamo=False,
            opset_version=17,
        )
    proto = onnx.load(str(path))
    meta = {
        "kind": "char",
        "cell": "odd",
        "layers": 1,
        "hidden_size": 12,
        "state": STATE,
        "state_inputs": ["S0", "k0"],
        "state_outputs": ["Sn", "kn"],
        "stateful": True,
        "vocab": VOCAB,
        "source_run": None,
        "version": "test",
    }
    for k, v in contract.encode_metadata(meta).items():
        p = proto.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(proto, str(path))
    return path, m


def test_the_runtime_zeroes_takes_and_joins_along_each_tensors_batch_axis(odd_model):
    path, _ = odd_model
    rt = Runtime(path)
    assert [t.batch_axis for t in rt.info.state] == [0, 1]
    S, k = rt.zero_state(5)
    assert S.shape == (5, 4, 3) and k.shape == (2, 5)
    rng = np.random.default_rng(0)
    state = (rng.normal(size=(5, 4, 3)).astype(np.float32), rng.normal(size=(2, 5)).astype(np.float32))
    S2, k2 = rt.take(state, [3, 1])
    np.testing.assert_array_equal(S2, state[0][[3, 1]])
    np.testing.assert_array_equal(k2, state[1][:, [3, 1]])
    S3, k3 = rt.concat([rt.take(state, [0]), rt.take(state, [1, 2])])
    np.testing.assert_array_equal(S3, state[0][:3])
    np.testing.assert_array_equal(k3, state[1][:, :3])
    assert rt.batch_of(state) == 5


def test_stepwise_equals_whole_and_a_row_alone_equals_the_row_in_a_batch(odd_model):
    path, m = odd_model
    rt = Runtime(path)
    ids = rt.encode("the quick brown fox")
    whole, s_whole = step(rt, ids[None], rt.zero_state(1))
    state = rt.zero_state(1)
    for i in ids:
        last, state = step(rt, np.array([[i]]), state)
    np.testing.assert_allclose(last, whole, atol=1e-5)
    for a, b in zip(state, s_whole):
        np.testing.assert_allclose(a, b, atol=1e-5)
    with torch.no_grad():
        ref = m(torch.tensor(ids[None]), torch.zeros(1, 4, 3), torch.zeros(2, 1))[0][:, -1].numpy()
    np.testing.assert_allclose(whole, ref, atol=1e-5)
    # batch invariance: the row alone (run as a pair) equals the same row among others
    batch = np.stack([ids, ids[::-1], ids])
    many, _ = step(rt, batch, rt.zero_state(3))
    np.testing.assert_array_equal(many[0], whole[0])


def test_the_scheduler_streams_it_like_any_cell(odd_model):
    path, _ = odd_model
    rt = Runtime(path)

    def request(i):
        return GenerationRequest(rt.encode("abc" * (i % 3 + 1)), 30 + i, SamplingParams(0.9, 0, 1.0), seed=i)

    alone = []
    for i in range(8):
        s = StepScheduler(rt)
        st = s.submit(request(i))
        s.run_until_idle()
        alone.append(st.text)
    s = StepScheduler(rt, prefill_chunk=2)  # chunked prefill too
    streams = [s.submit(request(i)) for i in range(8)]
    s.run_until_idle()
    assert [st.text for st in streams] == alone and all(len(t) == 30 + i for i, t in enumerate(alone))


def test_old_files_read_as_the_classic_layout_and_bad_entries_are_refused():
    from rnnops.errors import RnnopsError
    from rnnops.serving.runtime import ModelInfo

    old = {
        "kind": "char",
        "cell": "lstm",
        "layers": 2,
        "hidden_size": 8,
        "vocab": ["a", "b"],
        "state_inputs": ["h0", "c0"],
        "state_outputs": ["hn", "cn"],
    }
    info = ModelInfo.from_metadata(old)
    assert [t.to_json() for t in info.state] == [
        {"input": "h0", "output": "hn", "shape": [2, "batch", 8], "dtype": "float32"},
        {"input": "c0", "output": "cn", "shape": [2, "batch", 8], "dtype": "float32"},
    ]
    with pytest.raises(RnnopsError, match="must name 'batch' exactly once"):
        ModelInfo.from_metadata({**old, "state": [{"input": "h0", "output": "hn", "shape": [2, 8]}]})


def test_it_is_served_over_http_through_the_same_code(odd_model):
    import asyncio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from rnnops.serving.config import ServeConfig
    from rnnops.serving.forecast.sessions import SessionStore
    from rnnops.serving.http.app import Serving, create_app
    from rnnops.serving.http.generate import wake_watchers
    from rnnops.serving.models import ModelManager

    path, _ = odd_model
    cfg = ServeConfig(models=f"odd={path}", poll_seconds=0)
    manager = ModelManager(cfg, on_step=wake_watchers)
    asyncio.run(manager.start())
    try:
        with TestClient(create_app(Serving(cfg, manager, SessionStore()))) as c:
            r = c.post("/complete", json={"prompt": "abc", "max_chars": 25, "seed": 7})
            assert r.status_code == 200 and len(r.json()["text"]) == 25
            with c.stream("POST", "/generate", json={"prompt": "abc", "max_chars": 25, "seed": 7}) as s:
                lines = [line for line in s.iter_lines() if line.startswith("data: ")]
            import json

            chunks = [json.loads(line[6:]) for line in lines]
            assert "".join(d.get("text", "") for d in chunks[:-1]) == r.json()["text"]  # same seed, same text
            assert c.get("/models").json()["models"][0]["state"] == STATE
    finally:
        asyncio.run(manager.stop())
