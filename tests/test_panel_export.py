"""A global panel forecaster exported to the ``rnnops.panel`` ONNX contract
(export/panel_export.py): the graph's inputs and outputs are exactly the contract's, its metadata
passes the checks serving runs on an untrusted file, and onnxruntime computes what eager PyTorch
computes, for every head, on random covariates, short histories and unknown categories."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from panel_fixtures import export_tiny_panel, tiny_panel_model  # noqa: E402

from rnnops import panel_contract as P  # noqa: E402
from rnnops.contract import check_metadata, decode_metadata  # noqa: E402
from rnnops.export import ort_tools  # noqa: E402
from rnnops.export import panel_export as PE  # noqa: E402
from rnnops.model_file_checks import check_model_file  # noqa: E402

HEADS = ("pinball", "normal", "studentt", "negbin")


@pytest.mark.parametrize("head", HEADS)
def test_the_exported_graph_is_the_contract_and_matches_eager(head, tmp_path):
    path = export_tiny_panel(tmp_path / "model.onnx", head)
    meta = decode_metadata(check_model_file(path))  # what serving checks before onnxruntime opens it
    check_metadata(meta)
    contract = P.panel_contract(meta)
    assert meta["kind"] == "panel" and meta["precision"] == "fp32" and meta["source_run"] == "tiny-panel"
    assert meta["cell"] == "gru" and meta["version"] and meta["stateful"] is False
    assert contract.past_covariates == ("price",) and contract.future_covariates == ("promo",)
    assert contract.calendar == ("day_of_week", "day_of_month", "day_of_year")
    assert [s.name for s in contract.static_categorical] == ["store"] and contract.static_real == ("size",)
    assert contract.static_categorical[0].vocabulary and contract.min_history == 1
    assert (contract.lookback, contract.horizon, contract.season) == (14, 7, 7)

    sess = ort_tools.session(path)
    signature = {i.name: (tuple(i.shape), i.type) for i in sess.get_inputs()}
    dtype = {"float32": "tensor(float)", "int64": "tensor(int64)"}
    assert signature == {n: (tuple(s), dtype[d]) for n, (s, d) in contract.inputs.items()}
    assert [(o.name, tuple(o.shape)) for o in sess.get_outputs()] == [
        (n, tuple(s)) for n, (s, _) in contract.outputs.items()
    ]

    model, _ = tiny_panel_model(head)
    graph = PE.PanelGraph(model, contract)
    rng = np.random.default_rng(1)
    for batch in (1, 5, 16):
        feeds = PE.make_inputs(contract, batch, rng, counts=head == "negbin")
        want, got = PE.eager(graph, feeds), sess.run(None, feeds)
        for w, g in zip(want, got):
            assert g.shape == w.shape and np.isfinite(g).all()
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-3)
        forecast, quantiles = got
        assert (np.diff(quantiles, axis=-1) >= 0).all()  # ordered levels
        np.testing.assert_array_equal(forecast, quantiles[..., contract.median_index()])
        if head == "negbin":
            assert (quantiles == np.round(quantiles)).all() and (quantiles >= 0).all()


def test_absent_roles_have_no_graph_input(tmp_path):
    """A panel of the target alone (no covariates, no statics, no calendar): one input."""
    model, spec = tiny_panel_model("pinball")
    from rnnops.training.panel_model import PanelForecaster, PanelModelConfig

    config = PanelModelConfig(lookback=14, horizon=7, segment_length=7, season=7, hidden_size=8, num_layers=1)
    bare = PanelForecaster(config).eval()
    inputs = {**spec["inputs"], "past_covariates": [], "future_covariates": [], "calendar": [], "static": []}
    from dataclasses import asdict

    path = PE.export_panel_onnx(bare, {**spec, "config": asdict(config), "inputs": inputs}, tmp_path / "bare.onnx")
    sess = ort_tools.session(path)
    assert [i.name for i in sess.get_inputs()] == [P.PAST_TARGET]
    contract = P.panel_contract(decode_metadata(check_model_file(path)))
    feeds = PE.make_inputs(contract, 3, np.random.default_rng(0))
    np.testing.assert_allclose(sess.run(None, feeds)[1], PE.eager(PE.PanelGraph(bare, contract), feeds)[1], atol=1e-3)


@pytest.mark.parametrize("head", ["studentt", "negbin"])
def test_deterministic_quantiles_agree_with_the_heads_sampler(head):
    """The graph's quantile function against the eager head's sampler with many draws: within the
    sampler's own Monte-Carlo error (what docs/export.md quotes)."""
    model, spec = tiny_panel_model(head)
    contract = PE.panel_contract_of(model, spec)
    graph = PE.PanelGraph(model, contract)
    feeds = PE.make_inputs(contract, 6, np.random.default_rng(3), counts=head == "negbin")
    exact = PE.eager(graph, feeds)[1]
    model.head.samples = 100_000
    torch.manual_seed(0)
    with torch.no_grad():
        sampled = model.quantiles(graph.batch(*(torch.from_numpy(feeds[n]) for n in graph.names))).numpy()
    spread = exact[..., -1] - exact[..., 0]  # the 95 % interval's width
    # a sampled count quantile may sit one count off where CDF(k) is within noise of the level
    slack = 1.0 if head == "negbin" else 0.0
    error = (np.abs(exact - sampled) - slack) / np.maximum(spread[..., None], 1.0)
    assert error.max() < 0.03, error.max()


def test_the_student_t_table_is_exact_to_1e4():
    assert PE.studentt_error() < 1e-4
