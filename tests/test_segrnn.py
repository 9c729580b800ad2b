"""SegRNN (training/segrnn.py) and prediction intervals (training/intervals.py): the model, its
state in the contract's terms, export through the parity gate, and every bad flag as one line.
Small and fast: tiny models, no MLflow (tests/test_intervals.py runs the whole flow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rnnops.errors import RnnopsError
from rnnops.training import intervals
from rnnops.training.models import ForecasterConfig, build_model


def config(cell="gru", arch="segrnn", quantiles=(0.1, 0.5, 0.9), norm="revin", **kw) -> ForecasterConfig:
    base = dict(
        n_features=3,
        target_indices=[0, 2],
        lookback=24,
        horizon=10,
        cell=cell,
        hidden_size=16,
        arch=arch,
        segment_length=6,
        quantiles=list(quantiles),
        norm=norm,
        scaler_mean=[1.0, 2.0, 3.0],
        scaler_std=[2.0, 1.0, 0.5],
        feature_names=["a", "b", "c"],
        target_names=["a", "c"],
        heads=4 if cell == "mlstm" else None,
        ff_mult=1.0 if cell in ("mingru", "minlstm", "mlstm") else None,
        linear_skip=arch == "rnn",
    )
    base.update(kw)
    return ForecasterConfig(**base)


def tiny(cell="gru", **kw):
    torch.manual_seed(0)
    m = build_model("forecaster", config(cell, **kw).to_dict())
    if intervals.has_intervals(m):  # a calibration's shape: increasing offsets, 0 at the median
        off = torch.randn_like(m.interval_offsets).abs().cumsum(-1)
        m.interval_offsets.copy_(off - off[..., 1:2])
    return m.eval()


@pytest.mark.parametrize("cell", ["gru", "lstm", "mingru", "mlstm"])
def test_segrnn_shapes_state_and_recurrent_form(cell):
    m = tiny(cell)
    x = torch.randn(3, 30, 3) * 2 + 1  # longer than the lookback: the last 24 rows are read
    y, state = m(x)
    assert y.shape == (3, 10, 2)  # a horizon of 10 decoded as 2 segments of 6, cut to 10
    spec = m.state_tensors()
    assert [tuple(s.shape) for s in state] == [t.shape_for(3) for t in spec]
    assert all(t.shape[t.batch_axis + 1] == 3 for t in spec)  # channels right after the batch axis
    zero, _ = m(x, m.init_state(3))
    torch.testing.assert_close(zero, y)  # no state = zeros
    rec, _ = m(x, state, recurrent=True)
    par, _ = m(x, state)
    torch.testing.assert_close(rec, par, atol=1e-5, rtol=1e-5)
    assert torch.equal(m(x[:, -24:])[0], y)  # windowed: older rows are ignored


def test_segrnn_is_channel_independent_and_normalised_per_window():
    m = tiny()
    x = torch.randn(2, 24, 3)
    y, _ = m(x)
    scaled, _ = m(x * 10 + 5)  # instance normalisation: the forecast follows the window's scale
    torch.testing.assert_close(scaled, y * 10 + 5, atol=1e-4, rtol=1e-4)
    x2 = x.clone()
    x2[:, :, 1] += torch.randn(2, 24)  # channel b is not a target and no target reads it
    torch.testing.assert_close(m(x2)[0], y)


def test_bands_are_forecast_plus_scale_times_offsets():
    m = tiny()
    x = torch.randn(4, 24, 3)
    y, _ = m(x)
    q = intervals.bands(m, x, y)
    assert q.shape == (4, 10, 2, 3)
    torch.testing.assert_close(q[..., 1], y)  # the 0.5 level is the point forecast
    assert bool((q[..., 0] <= q[..., 2]).all())


def test_conformal_offsets_cover_fresh_draws():
    rng = np.random.default_rng(0)
    cal = rng.standard_normal((2000, 5, 2)) * np.array([1.0, 3.0])
    off = intervals.conformal_offsets(cal, [0.1, 0.5, 0.9])
    assert off.shape == (5, 2, 3) and np.all(off[..., 1] == 0)
    test = rng.standard_normal((20000, 5, 2)) * np.array([1.0, 3.0])
    cover = ((test >= off[..., 0]) & (test <= off[..., 2])).mean()
    assert 0.78 < cover < 0.82


@pytest.mark.parametrize(
    "cell,arch,norm",
    [("gru", "segrnn", "revin"), ("lstm", "segrnn", "revin"), ("mingru", "segrnn", "revin"), ("gru", "rnn", "fixed")],
)
def test_export_passes_the_parity_gate_with_the_quantiles_output(cell, arch, norm, tmp_path):
    import onnx
    import onnxruntime as ort

    from rnnops import contract
    from rnnops.export.pipeline import export_run
    from rnnops.training.logged_model import save_model_files

    m = tiny(cell, arch=arch, norm=norm)
    c = m.config
    save_model_files(
        m,
        {
            "kind": "forecaster",
            "config": c.to_dict(),
            "stateful": norm == "fixed",
            "intervals": {"method": "split-conformal"},
        },
        tmp_path / "m",
    )
    r = export_run(
        str(tmp_path / "m"),
        formats=("onnx", "torchscript"),
        quantize=False,
        out_dir=tmp_path / "out",
        progress=False,
        log=False,
    )
    assert r.parity["passed"], r.parity["worst_case"]
    assert contract.QUANTILES_OUTPUT in r.parity["max_abs_diff_by_output"]
    assert bool(r.parity["skipped"]) == (norm == "revin")  # windowed: no stepwise case; fixed: stepwise gated
    meta = contract.decode_metadata({p.key: p.value for p in onnx.load(str(r.onnx_path)).metadata_props})
    assert meta["arch"] == arch and meta["stateful"] == (norm == "fixed")
    assert contract.quantiles_of(meta) == ("quantiles", (0.1, 0.5, 0.9))
    assert meta["quantiles"]["calibration"] == {"method": "split-conformal"}
    sess = ort.InferenceSession(str(r.onnx_path))
    assert [o.name for o in sess.get_outputs()][-1] == "quantiles"
    assert sess.get_outputs()[-1].shape == ["batch", 10, 2, 3]


def test_a_model_without_intervals_exports_as_before(tmp_path):
    from rnnops import contract
    from rnnops.export import wrappers

    m = tiny(quantiles=())
    assert not intervals.has_intervals(m) and not hasattr(m, intervals.BUFFER)
    assert contract.QUANTILES_OUTPUT not in wrappers.output_names(m)
    assert contract.quantiles_of({"kind": "forecaster"}) is None  # an older file: no key, no intervals


# ----------------------------------------------------------------------------- bad input: one line each


@pytest.mark.parametrize(
    "text,msg",
    [
        ("0.1,1.2", "outside (0, 1)"),
        ("0,0.5,0.9", "outside (0, 1)"),
        ("0.9,0.5,0.1", "increasing order"),
        ("0.1,0.1,0.9", "given twice"),
        ("0.6,0.9", "below 0.5 and one above"),
        ("a,b", "comma-separated numbers"),
    ],
)
def test_bad_quantile_levels(text, msg):
    with pytest.raises(RnnopsError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        intervals.parse_levels(text)


def test_bad_segrnn_flags_fail_before_training():
    from rnnops.training.job_config import to_dict
    from rnnops.training.jobs import forecast_job

    with pytest.raises(RnnopsError, match="does not divide --lookback 96"):
        forecast_job("etth1", "gru", "tiny", {"model.segment_length": 25}, arch="segrnn")
    with pytest.raises(RnnopsError, match="--norm revin"):
        forecast_job("etth1", "gru", "tiny", {"model.norm": "fixed"}, arch="segrnn")
    with pytest.raises(RnnopsError, match="applies to --arch segrnn only"):
        forecast_job("etth1", "gru", "tiny", {"model.segment_length": 24})
    with pytest.raises(RnnopsError, match="given twice"):
        forecast_job("etth1", "gru", "tiny", {"model.quantiles": "0.1,0.9,0.9"}, arch="segrnn")
    job = forecast_job("etth1", "gru", "quick", {"model.quantiles": "0.1,0.5,0.9"}, arch="segrnn")
    assert job.model.arch == "segrnn" and job.model.quantiles == [0.1, 0.5, 0.9]
    json.dumps(to_dict(job))  # the job stays JSON (params, config/job.json, --resume)


def test_a_horizon_longer_than_the_test_split_is_one_line(small_csv):
    from rnnops.training.jobs import forecast_job
    from rnnops.training.tasks import setup

    job = forecast_job(
        str(small_csv), "gru", "tiny", {"lookback": 24, "horizon": 200, "model.segment_length": 6}, arch="segrnn"
    )
    with pytest.raises(RnnopsError, match="too few for lookback 24 \\+ horizon 200"):
        setup(job)
