import pytest
import torch

from rnnops.errors import RnnopsError
from rnnops.training.models import CharModel, CharModelConfig, Forecaster, ForecasterConfig, build_model


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_char_model_stepwise_equals_whole_sequence(cell, layers):
    torch.manual_seed(0)
    model = CharModel(CharModelConfig(vocab_size=11, cell=cell, hidden_size=24, num_layers=layers, embed_dim=8)).eval()
    x = torch.randint(0, 11, (3, 17))
    full, full_state = model(x)
    assert full.shape == (3, 17, 11)
    assert len(full_state) == (2 if cell == "lstm" else 1) and full_state[0].shape == (layers, 3, 24)
    state, steps = None, []
    for t in range(x.shape[1]):
        out, state = model(x[:, t : t + 1], state)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    for a, b in zip(state, full_state):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def _forecaster(norm, cell="gru", **kw):
    cfg = ForecasterConfig(
        n_features=3,
        target_indices=[0, 2],
        lookback=12,
        horizon=5,
        cell=cell,
        hidden_size=16,
        norm=norm,
        scaler_mean=[1.0, -2.0, 10.0],
        scaler_std=[2.0, 0.5, 3.0],
        **kw,
    )
    return Forecaster(cfg).eval()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stateful_forecaster_stepwise_equals_whole_window(cell):
    torch.manual_seed(0)
    model = _forecaster("fixed", cell)
    x = torch.randn(4, 12, 3) * 3 + 5
    full, _ = model(x)
    assert full.shape == (4, 5, 2)
    state = None
    for t in range(12):
        out, state = model(x[:, t : t + 1], state)
    torch.testing.assert_close(out, full, atol=1e-5, rtol=1e-5)


def test_forecasters_take_and_return_raw_units():
    torch.manual_seed(0)
    for norm in ("fixed", "revin"):
        model = _forecaster(norm)
        x = torch.randn(2, 12, 3)
        y, _ = model(x)
        shifted, _ = model(x + 1000.0)
        # RevIN is shift-equivariant on the targets; the fixed scaler is not (it is fitted).
        if norm == "revin":
            torch.testing.assert_close(shifted, y + 1000.0, atol=1e-2, rtol=1e-4)
        else:
            assert not torch.allclose(shifted, y + 1000.0, atol=1e-2)


def test_revin_reads_only_the_last_lookback_rows():
    model = _forecaster("revin")
    x = torch.randn(2, 12, 3)
    longer = torch.cat([torch.randn(2, 30, 3), x], dim=1)
    torch.testing.assert_close(model(longer)[0], model(x)[0])


def test_bad_configs():
    with pytest.raises(RnnopsError, match="unknown cell"):
        CharModel(CharModelConfig(vocab_size=5, cell="transformer"))
    with pytest.raises(RnnopsError, match="unknown forecaster cell .rnn.: use one of lstm, gru, mingru"):
        _forecaster("fixed", cell="rnn")
    with pytest.raises(RnnopsError, match="unknown model kind"):
        build_model("diffusion", {})
