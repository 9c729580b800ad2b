"""A global panel forecaster exported to the ``rnnops.panel`` ONNX contract
(export/panel_export.py): the graph's inputs and outputs are exactly the contract's, its metadata
passes the checks serving runs on an untrusted file, and onnxruntime computes what eager PyTorch
computes, for every head, on random covariates, short histories and unknown categories."""

from __future__ import annotations

import json
from pathlib import Path

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


@pytest.mark.parametrize("head", HEADS)
def test_a_series_has_the_same_bits_alone_and_in_a_batch_of_64(head, tmp_path):
    """Served on CPU (rnnops' Runtime: one thread, a lone row run as a pair), each series of a
    batch of 64 gets bit for bit the forecast it gets alone and as the last of three: the graph's
    sums, logs, square roots and softplus run on rows padded to whole SIMD packets
    (training/panel_model.py's simd_last and row_sum); without that, ~1e-7 relative apart."""
    from rnnops.serving.runtime import Runtime

    path = export_tiny_panel(tmp_path / "model.onnx", head)
    contract = P.panel_contract(decode_metadata(check_model_file(path)))
    feeds = PE.make_inputs(contract, 64, np.random.default_rng(3), counts=head == "negbin")
    runtime = Runtime(path, threads=1)
    full = runtime.run(feeds)
    assert full.quantiles is not None
    for i in range(64):
        for rows in ([i], [(i + 1) % 64, (i + 2) % 64, i]):
            got = runtime.run({k: np.ascontiguousarray(v[rows]) for k, v in feeds.items()})
            assert got.quantiles is not None
            assert np.array_equal(got.output[-1], full.output[i]), f"forecast of row {i} in rows {rows}"
            assert np.array_equal(got.quantiles[-1], full.quantiles[i]), f"quantiles of row {i} in rows {rows}"


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


# ----------------------------------------------------------------------------- a trained run, end to end

RETAIL = dict(series=12, days=60, seed=5)
TRAIN = [
    *("--id-column", "item_id", "--date-column", "date", "--target", "sales"),
    *("--static-columns", "store,category", "--future-covariates", "promo", "--past-covariates", "price"),
    *("--freq", "D", "--horizon", "7", "--lookback", "28", "--preset", "tiny"),
]


def rnnops_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """The root command as a user runs it: (exit code, stdout, stderr)."""
    import sys

    from rnnops.cli import main

    monkeypatch.setattr(sys, "argv", ["rnnops", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def panel_run(mlflow_env, monkeypatch, capsys):
    """A tiny panel run trained through the CLI: its run id."""
    import sys

    import mlflow
    from panel_fixtures import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import retail_panel

    csv = mlflow_env / "retail.csv"
    retail_panel.write(csv, **RETAIL)
    code, _, err = rnnops_cli(monkeypatch, capsys, "train", "forecast", "--data", str(csv), *TRAIN)
    assert code == 0, err
    (run,) = mlflow.search_runs(experiment_names=["rnnops-forecast"], output_format="list")
    return run.info.run_id


def test_rnnops_export_takes_a_panel_run_end_to_end(panel_run, monkeypatch, capsys, tmp_path):
    import mlflow

    from rnnops import contract as C
    from rnnops.export import sample
    from rnnops.registry import store

    code, out, err = rnnops_cli(monkeypatch, capsys, "export", panel_run, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["kind"] == "panel" and summary["parity"]["passed"]
    assert "ONNX only" in err  # the default formats name torchscript: skipped, said so
    report = json.loads((Path(summary["folder"]) / "parity_report.json").read_text())
    cases = {c["case"] for c in report["cases"]}
    assert {"onnxruntime shortest histories batch=8", "onnxruntime batch invariance rows [3] of 8 batch=1"} <= cases
    # the quality gate: the file's validation MASE is the run's, within float rounding (pinball head)
    q = report["quality"]
    assert (
        q["passed"]
        and abs(q["onnx"] / q["logged"] - 1) < 1e-3
        and q["logged"] == pytest.approx(mlflow.get_run(panel_run).data.metrics["val_mase"])
    )
    # logged back to the run as every export is: the ONNX logged model, the reports, the tags
    tags = mlflow.get_run(panel_run).data.tags
    assert tags[C.TAG_PARITY_PASSED] == "true" and tags[C.TAG_ONNX_SHA256] == summary["sha256"]
    stored = store.download_logged_onnx(store.client(), tags[C.TAG_ONNX_URI], tmp_path)
    meta = decode_metadata(check_model_file(stored))
    contract = P.panel_contract(meta)
    assert contract.past_covariates == ("price",) and contract.static_real == ()
    assert [s.name for s in contract.static_categorical] == ["store", "category"]
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(panel_run, "export")}
    assert {"export/parity_report.json", "export/sample.json", "export/quantization.json"} <= files
    # the sample: a few series' validation windows, enough to call the model from the playground
    s = sample.read(stored)
    assert s["kind"] == "panel" and 1 <= len(s["series"]) <= sample.PANEL_SERIES
    one = s["series"][0]
    assert len(one["timestamps"]) == one["context"] + 7 == len(one["target"]) + len(one["actual"])
    assert set(one["static"]) == {"store", "category"} and set(one["future_covariates"]) == {"promo"}
    assert len(one["future_covariates"]["promo"]) == len(one["timestamps"])


def test_a_file_that_does_not_score_what_the_run_logged_fails_the_gate(panel_run, tmp_path):
    """The quality gate compares the file's validation MASE with the logged one: a model folder
    whose recorded val_mase is not what its weights score is refused."""
    from rnnops.export.parity import ParityGateFailed
    from rnnops.export.pipeline import export_run
    from rnnops.training.logged_model import CONFIG_FILE, load_model, save_model_files

    loaded = load_model(panel_run)
    spec = {**loaded.spec, "metrics": {**loaded.spec["metrics"], "val_mase": loaded.spec["metrics"]["val_mase"] * 1.2}}
    folder = save_model_files(loaded.model, spec, tmp_path / "model")
    assert json.loads((folder / CONFIG_FILE).read_text())["run_id"] == panel_run
    with pytest.raises(ParityGateFailed, match="quality gate failed: the ONNX file's validation MASE"):
        export_run(str(folder), out_dir=tmp_path / "out", progress=False)


def test_the_committed_panel_asset_follows_the_contract():
    """tests/assets/panel-retail.onnx (scripts/make_test_assets.py), what the torch-free serving
    tests can load: the current contract, and onnxruntime answers ordered quantiles."""
    from panel_fixtures import REPO

    from rnnops import contract as C

    path = REPO / "tests" / "assets" / "panel-retail.onnx"
    meta = decode_metadata(check_model_file(path))
    assert set(meta) == set(C.META_KEYS), "regenerate it: .venv/bin/python scripts/make_test_assets.py"
    contract = P.panel_contract(meta)
    assert set(contract.inputs) == {
        P.PAST_TARGET,
        P.PAST_COVARIATES,
        P.KNOWN_PAST,
        P.KNOWN_FUTURE,
        P.STATIC_CAT,
        P.STATIC_REAL,
    }
    forecast, quantiles = ort_tools.session(path).run(None, PE.make_inputs(contract, 4, np.random.default_rng(0)))
    assert forecast.shape == (4, 7) and quantiles.shape == (4, 7, 3)
    assert np.isfinite(quantiles).all() and (np.diff(quantiles, axis=-1) >= 0).all()
