"""The modern cells: minGRU, minLSTM (fused scan, log-space scan, stepped loop) and mLSTM
(chunkwise parallel, recurrent loop), with and without an initial state; gradients; the stack's
state layout; bad options; tiny char and forecast runs per cell."""

import pytest
import torch

from rnnops.errors import RnnopsError
from rnnops.training import cells, fused
from rnnops.training import mingru as G
from rnnops.training import mlstm as X
from rnnops.training import scan as S
from rnnops.training.models import CharModel, CharModelConfig, Forecaster, ForecasterConfig

F64 = torch.float64
needs_numba = pytest.mark.skipif(S._numba_kernels() is None, reason="numba not installed (the fused kernel)")


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=0)


def _inputs(width, batch=3, time=150, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, time, width, generator=g, dtype=F64) * scale, torch.randn(
        batch, width, generator=g, dtype=F64
    )


@pytest.mark.parametrize("cls", [G.MinGRU, G.MinLSTM])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("impl", [pytest.param("fused", marks=needs_numba), "torch"])
def test_min_cells_parallel_equals_sequential(cls, with_state, impl):
    torch.manual_seed(0)
    layer = cls(8).to(F64)
    x, h0 = _inputs(8)
    state = (h0,) if with_state else None
    ref, (ref_h,) = G.sequential(layer, x, state)
    out, (h,) = G._gated(layer, x, state, recurrent=False, impl=impl)
    _close(out, ref)
    _close(h, ref_h)
    loop, (loop_h,) = layer(x, state, recurrent=True)  # the scripted loop export uses
    _close(loop, ref)
    _close(loop_h, ref_h)


@needs_numba
@pytest.mark.parametrize("cls", [G.MinGRU, G.MinLSTM])
def test_fused_kernel_gradients_equal_the_log_space_form(cls):
    torch.manual_seed(0)
    layer = cls(6).to(F64)
    x, h0 = _inputs(6, time=40)
    grads = {}
    for impl in ("fused", "torch"):
        xx, hh = x.clone().requires_grad_(), h0.clone().requires_grad_()
        out, _ = G._gated(layer, xx, (hh,), recurrent=False, impl=impl)
        loss = (out * torch.cos(out)).sum()
        grads[impl] = torch.autograd.grad(loss, [xx, hh, *layer.parameters()])
    for a, b in zip(grads["fused"], grads["torch"]):
        _close(a, b, 1e-9)
    pre = torch.randn(2, 5, 3 * 3, dtype=F64, requires_grad=True)
    h = torch.randn(2, 3, dtype=F64, requires_grad=True)
    p = pre if cls is G.MinLSTM else pre[..., :6]
    assert torch.autograd.gradcheck(lambda p_, h_: S.fused_scan(cls.kernel, p_, h_), (p, h))


@needs_numba
def test_fused_kernel_in_float32_matches_float64():
    torch.manual_seed(0)
    layer = G.MinGRU(16)
    x, h0 = _inputs(16, time=300)
    out32, _ = G._gated(layer, x.float(), (h0.float(),), recurrent=False, impl="fused")
    out64, _ = G._gated(layer.to(F64), x, (h0,), recurrent=False, impl="fused")
    _close(out32.double(), out64, 1e-5)


def _mlstm(width=16, heads=4):
    layer = X.MLSTM(width, heads).to(F64)
    with torch.no_grad():  # the init zeroes the gate weights: give the gates something to do
        layer.gates.weight.normal_(0.0, 0.3)
    return layer


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("time", [1, 37, 150])  # within one chunk, and across chunks of 64
def test_mlstm_chunkwise_equals_recurrent(with_state, time):
    torch.manual_seed(0)
    layer = _mlstm()
    x, _ = _inputs(16, batch=2, time=time)
    state = tuple(0.5 * torch.randn_like(t) for t in layer.zero_state(2, F64)) if with_state else None
    ref, ref_state = X.sequential(layer, x, state)
    for recurrent in (False, True):
        out, new = layer(x, state, recurrent=recurrent)
        _close(out, ref)
        for a, b in zip(new, ref_state):
            _close(a, b)


def test_mlstm_stabiliser_keeps_large_gates_finite():
    layer = _mlstm()
    with torch.no_grad():
        layer.gates.bias[:4] = 60.0  # exp(60) would overflow float32 without the stabiliser m
    out, (C, n, m) = layer.float()(torch.randn(2, 80, 16))
    assert torch.isfinite(out).all() and torch.isfinite(C).all() and float(m.max()) > 50


@needs_numba
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("time,chunk", [(1, 32), (37, 8), (70, 32)])  # checkpoints that do not divide T
def test_mlstm_fused_kernel_equals_the_recurrence_values_and_gradients(with_state, time, chunk):
    torch.manual_seed(0)
    layer = _mlstm()
    x, _ = _inputs(16, batch=2, time=time)
    state = (
        tuple(0.5 * torch.randn_like(t) for t in layer.zero_state(2, F64)) if with_state else layer.zero_state(2, F64)
    )

    def loss(out, C, n, m):  # every output, the state included, feeds the loss
        return (out * torch.cos(out)).sum() + (0.3 * C).sum() + n.sin().sum() + (0.7 * m).sum()

    grads = []
    for fused_form in (False, True):
        xs, st = x.clone().requires_grad_(), [t.clone().requires_grad_() for t in state]
        if fused_form:
            y, *new = fused.mlstm(layer.qkvo(xs), layer.gates(xs), *st, layer.norm_weight, X.EPS, chunk)
            out = layer.out(y)
        else:
            out, new = X.sequential(layer, xs, tuple(st))
        grads.append([out, *new, *torch.autograd.grad(loss(out, *new), [xs, *st, *layer.parameters()])])
    for a, b in zip(*grads):
        _close(a, b, 1e-9)


@needs_numba
def test_mlstm_fused_kernel_below_the_normaliser_floor():
    """|n . q| < exp(-m): the max(., exp(-m)) takes its other branch, gradients too."""
    torch.manual_seed(0)
    layer = _mlstm()
    with torch.no_grad():
        layer.qkvo.weight[:16].mul_(1e-4)  # tiny q
    x, _ = _inputs(16, batch=2, time=40)
    xs = x.clone().requires_grad_()
    ref, _ = X.sequential(layer, xs)
    g_ref = torch.autograd.grad((ref * ref.cos()).sum(), [xs, *layer.parameters()])
    out, _ = layer(xs)  # the fused kernel: float64 on the CPU
    g_new = torch.autograd.grad((out * out.cos()).sum(), [xs, *layer.parameters()])
    _close(out, ref)
    for a, b in zip(g_new, g_ref):
        _close(a, b, 1e-6)


@pytest.mark.parametrize("with_state", [False, True])
def test_mlstm_chunkwise_torch_form_equals_recurrent(monkeypatch, with_state):
    """The plain PyTorch chunkwise form (no numba, or not a CPU tensor) against the recurrence."""
    monkeypatch.setenv("RNNOPS_SCAN", "torch")
    torch.manual_seed(0)
    layer = _mlstm()
    x, _ = _inputs(16, batch=2, time=150)
    state = tuple(0.5 * torch.randn_like(t) for t in layer.zero_state(2, F64)) if with_state else None
    ref, ref_state = X.sequential(layer, x, state)
    out, new = layer(x, state)
    _close(out, ref)
    for a, b in zip(new, ref_state):
        _close(a, b)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fused_rms_norm_equals_torch(dtype):
    torch.manual_seed(0)
    x = torch.randn(3, 7, 33, dtype=dtype, requires_grad=True)
    w = (torch.rand(33, dtype=dtype) + 0.5).requires_grad_()
    y, ref = fused.rms_norm(x, w, 1e-6), torch.nn.functional.rms_norm(x, (33,), w, 1e-6)
    g = torch.randn_like(y)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    _close(y, ref, tol)
    for a, b in zip(torch.autograd.grad(y, [x, w], g), torch.autograd.grad(ref, [x, w], g)):
        _close(a, b, tol)
    if dtype == F64:
        assert torch.autograd.gradcheck(lambda a, b: fused.rms_norm(a, b, 1e-6), (x, w))


@pytest.mark.parametrize("cls", [G.MinGRU, G.MinLSTM])
def test_min_cells_one_step_form_equals_sequential(cls):
    """T = 1 (a step of served generation) through the exported, linear-space form."""
    torch.manual_seed(0)
    layer = cls(8).to(F64)
    x, h0 = _inputs(8, time=1)
    ref, (ref_h,) = G.sequential(layer, x, (h0,))
    out, (h,) = layer(x, (h0,), recurrent=True)
    _close(out, ref)
    _close(h, ref_h)


@pytest.mark.parametrize("cell", cells.names(family="modern"))
def test_gradients_flow_to_every_parameter(cell):
    torch.manual_seed(0)
    model = CharModel(CharModelConfig(vocab_size=11, cell=cell, hidden_size=16, num_layers=2, embed_dim=8, ff_mult=1.0))
    x = torch.randint(0, 11, (2, 20))
    logits, _ = model(x)
    logits.logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(float(p.grad.abs().sum()) > 0 for n, p in model.named_parameters() if "gates.weight" not in n)


@pytest.mark.parametrize("cell", cells.names(family="modern"))
def test_models_step_equals_whole_sequence_and_state_layout(cell):
    torch.manual_seed(0)
    model = CharModel(CharModelConfig(vocab_size=11, cell=cell, hidden_size=16, num_layers=2, embed_dim=8)).eval()
    spec = model.state_tensors()
    if cell == "mlstm":
        assert [t.input for t in spec] == ["C0_l0", "n0_l0", "m0_l0", "C0_l1", "n0_l1", "m0_l1"]
        assert [t.shape for t in spec[:3]] == [("batch", 4, 4, 4), ("batch", 4, 4), ("batch", 4)]
    else:
        assert [(t.input, t.output, t.shape) for t in spec] == [("h0", "hn", (2, "batch", 16))]
    x = torch.randint(0, 11, (3, 17))
    with torch.no_grad():
        full, full_state = model(x)
        assert [tuple(s.shape) for s in full_state] == [t.shape_for(3) for t in spec]
        assert all(tuple(s.shape) == t.shape_for(3) for s, t in zip(model.init_state(3), spec))
        state, steps = None, []
        for t in range(x.shape[1]):
            out, state = model(x[:, t : t + 1], state)
            steps.append(out)
    _close(torch.cat(steps, 1), full)
    for a, b in zip(state, full_state):
        _close(a, b)


@pytest.mark.parametrize("cell", cells.names(family="modern"))
def test_stateful_forecaster_steps_like_the_window(cell):
    torch.manual_seed(0)
    cfg = ForecasterConfig(
        n_features=3,
        target_indices=[0, 2],
        lookback=12,
        horizon=5,
        cell=cell,
        hidden_size=16,
        num_layers=2,
        norm="fixed",
        scaler_mean=[1.0, -2.0, 10.0],
        scaler_std=[2.0, 0.5, 3.0],
    )
    model = Forecaster(cfg).eval()
    x = torch.randn(4, 12, 3) * 3 + 5
    with torch.no_grad():
        full, _ = model(x)
        state = None
        for t in range(12):
            out, state = model(x[:, t : t + 1], state)
    assert full.shape == (4, 5, 2)
    _close(out, full, 1e-4)


def test_bad_options_are_one_line_errors():
    with pytest.raises(RnnopsError, match="heads .*does not divide"):
        CharModel(CharModelConfig(vocab_size=5, cell="mlstm", hidden_size=30, heads=4))
    with pytest.raises(RnnopsError, match="--heads applies to mlstm only"):
        CharModel(CharModelConfig(vocab_size=5, cell="mingru", heads=2))
    with pytest.raises(RnnopsError, match="--ff-mult applies to"):
        CharModel(CharModelConfig(vocab_size=5, cell="lstm", ff_mult=2.0))
    with pytest.raises(RnnopsError, match="out of range for minlstm: use 1-12"):
        CharModel(CharModelConfig(vocab_size=5, cell="minlstm", num_layers=13))
    with pytest.raises(RnnopsError, match="out of range for gru: use 1-3"):
        CharModel(CharModelConfig(vocab_size=5, cell="gru", num_layers=4))
    with pytest.raises(RnnopsError, match="unknown cell 'mamba': use one of lstm, gru, rnn, mingru, minlstm, mlstm"):
        CharModel(CharModelConfig(vocab_size=5, cell="mamba"))


def test_cli_refuses_bad_cell_options_before_training(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "RNNOPS_CACHE": str(tmp_path)}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-c", "from rnnops.cli import main; main()", "train", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )

    r = cli("char", "--cell", "mlstm", "--hidden-size", "30", "--heads", "4", "--data", "nope.txt")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --heads 4 does not divide --hidden-size 30")
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("forecast", "--cell", "gru", "--heads", "2")
    assert r.returncode == 2 and r.stderr.strip() == "error: --heads applies to mlstm only, not gru"
    r = cli("char", "--cell", "lstm", "--layers", "5")
    assert r.returncode == 2 and "out of range for lstm: use 1-3" in r.stderr
    r = cli("char", "--cell", "transformer")
    assert r.returncode == 2 and "mingru" in r.stderr and "mlstm" in r.stderr  # the valid names are listed


# ----------------------------------------------------------------------------- tiny runs


@pytest.mark.parametrize("cell", cells.names(family="modern"))
def test_tiny_char_and_forecast_runs_per_cell(mlflow_env, small_text, small_csv, cell):
    import mlflow

    from rnnops.training import jobs
    from rnnops.training.logged_model import load_model

    job = jobs.char_job(str(small_text), cell, "tiny", {"train.steps": 20, "train.eval_every": 10, "seq_len": 24})
    run_id = jobs.run_job(job)
    m = mlflow.get_run(run_id).data.metrics
    assert m["val_loss"] < m["baseline_unigram_loss"]
    history = [h.value for h in mlflow.MlflowClient().get_metric_history(run_id, "train_loss")]
    assert history[-1] < history[0]
    loaded = load_model(run_id)
    assert loaded.spec["config"]["cell"] == cell and loaded.spec["config"]["ff_mult"] == 2.0
    size = sum(p.numel() for p in loaded.model.parameters())
    assert mlflow.get_run(run_id).data.params["model.parameters"] == str(size)

    job = jobs.forecast_job(
        str(small_csv), cell, "tiny", {"lookback": 24, "horizon": 6, "train.steps": 15, "model.norm": "fixed"}
    )
    run_id = jobs.run_job(job)
    m = mlflow.get_run(run_id).data.metrics
    assert m["val_mse"] == m["val_mse"] and "test_mse" in m  # finite
    fc = load_model(run_id)
    assert fc.spec["stateful"] is True
    y, state = fc.model(torch.zeros(2, 24, 3))
    assert y.shape == (2, 6, 3) and len(state) == len(fc.model.state_tensors())


# ---------------------------------------------------------------- the cell registry (training/cells.py)


def test_every_cli_cell_choice_has_a_registry_entry_and_back():
    from rnnops.training import cli as T

    assert (
        [c.value for c in T.CharCell]
        == list(cells.names("char"))
        == ["lstm", "gru", "rnn", "mingru", "minlstm", "mlstm"]
    )
    assert (
        [c.value for c in T.ForecastCell]
        == list(cells.names("forecast"))
        == ["lstm", "gru", "mingru", "minlstm", "mlstm"]
    )
    for name in cells.CELLS:
        entry = cells.get(name)
        assert entry.name == name and entry.family in ("classic", "modern")
        assert (entry.onnx_op is not None) == (entry.family == "classic")  # a classic cell exports as a native op
        assert entry.block is None or entry.family == "modern"
        assert set(entry.presets) <= set(cells.TASKS)
    assert cells.names(family="modern") == ("mingru", "minlstm", "mlstm")


def test_an_unknown_cell_lists_the_valid_ones():
    with pytest.raises(RnnopsError, match="unknown cell 'mamba': use one of lstm, gru, rnn, mingru, minlstm, mlstm"):
        cells.get("mamba")
    with pytest.raises(
        RnnopsError, match="unknown forecaster cell 'rnn': use one of lstm, gru, mingru, minlstm, mlstm"
    ):
        cells.for_task("rnn", "forecast")


def test_int8_forms_exist_exactly_for_the_ops_the_rewrite_knows():
    from rnnops.export import int8

    for entry in cells.CELLS.values():
        assert entry.int8 == (entry.onnx_op in int8.RECURRENT_OPS), entry.name


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn", "mingru", "minlstm", "mlstm"])
def test_a_cells_declared_state_is_what_its_model_returns(cell):
    model = CharModel(
        CharModelConfig(
            vocab_size=7, cell=cell, hidden_size=8, num_layers=2, embed_dim=4, heads=2 if cell == "mlstm" else None
        )
    ).eval()
    with torch.no_grad():
        _, state = model(torch.zeros(3, 5, dtype=torch.long))
    spec = cells.get(cell).state_tensors(2, 8, 2 if cell == "mlstm" else None)
    assert [tuple(s.shape) for s in state] == [t.shape_for(3) for t in spec]
