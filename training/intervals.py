"""Prediction intervals: split-conformal quantiles per horizon step, calibrated on the validation split.

Why conformal and not quantile heads trained with the pinball loss: the point model is left
exactly as it is (its median *is* the point forecast, so the median's MSE is the point model's,
not "within 2 %"), it costs one pass over the validation windows after training instead of a
multi-output training run, it works for every architecture and cell without touching their
heads, and on exchangeable data the coverage is guaranteed in finite samples rather than hoped
for from a training loss that the training split (seen, hence under-dispersed) biases low.

The method (split-conformal with a scale, per horizon step and target):

- score of a validation window, step ``h``, target ``t``: ``s = (y - yhat) / scale``, where
  ``scale`` is the window's own std of that target (the RevIN statistic the model already
  computes) for windowed models, or the training split's std for fixed-scaler models: a calm
  window gets a narrow band, a volatile one a wide band;
- for each level ``tau``, the offset ``q[h, t, tau]`` is the conformal quantile of the scores:
  the ``ceil((n + 1) tau)``-th smallest for ``tau > 0.5``, the ``floor((n + 1) tau)``-th for
  ``tau < 0.5``; the level 0.5 is the point forecast itself (offset 0);
- served: ``quantiles[b, h, t, k] = forecast[b, h, t] + scale[b, t] * q[h, t, k]``, computed
  inside the ONNX graph (an extra output, ``quantiles``, named in the ``rnnops.quantiles``
  metadata with the levels and this calibration's record).

The offsets live in the model as the buffer ``interval_offsets [H, targets, levels]`` (saved with
the weights); ``config.quantiles`` holds the levels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from rnnops.errors import RnnopsError

DEFAULT_LEVELS = (0.1, 0.5, 0.9)
BUFFER = "interval_offsets"


def parse_levels(text) -> list[float]:
    """``"0.1,0.5,0.9"`` (or a list) -> sorted levels; one-line RnnopsError for anything else."""
    if text is None:
        return []
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            levels = [float(p) for p in parts]
        except ValueError:
            raise RnnopsError(
                f"--quantiles {text!r}: give comma-separated numbers in (0, 1), e.g. 0.1,0.5,0.9"
            ) from None
    else:
        levels = [float(v) for v in text]
    if not levels:
        return []
    bad = [v for v in levels if not 0.0 < v < 1.0 or not math.isfinite(v)]
    if bad:
        raise RnnopsError(
            f"--quantiles: {', '.join(f'{v:g}' for v in bad)} outside (0, 1); levels are probabilities, "
            "e.g. 0.1,0.5,0.9"
        )
    if len(set(levels)) != len(levels):
        dup = sorted({v for v in levels if levels.count(v) > 1})
        raise RnnopsError(f"--quantiles: {', '.join(f'{v:g}' for v in dup)} given twice; list each level once")
    if levels != sorted(levels):
        raise RnnopsError(
            f"--quantiles {','.join(f'{v:g}' for v in levels)}: list the levels in increasing order "
            f"({','.join(f'{v:g}' for v in sorted(levels))})"
        )
    if len(levels) < 2 or levels[0] >= 0.5 or levels[-1] <= 0.5:
        raise RnnopsError("--quantiles: an interval needs a level below 0.5 and one above (e.g. 0.1,0.5,0.9)")
    return levels


def column_name(level: float) -> str:
    """The batch job's column for a level: 0.1 -> forecast_p10, 0.025 -> forecast_p2.5."""
    return f"forecast_p{level * 100:g}"


# ----------------------------------------------------------------------------- in the model


def add_buffer(model) -> None:
    """Give a forecaster whose config lists quantile levels its (zero) offsets buffer."""
    levels = list(getattr(model.config, "quantiles", None) or [])
    if levels:
        c = model.config
        model.register_buffer(BUFFER, torch.zeros(c.horizon, len(c.target_indices), len(levels)))


def has_intervals(model) -> bool:
    return hasattr(model, BUFFER) and bool(getattr(model.config, "quantiles", None))


def window_scale(model, x: Tensor) -> Tensor:
    """``[B, 1, targets]``: each window's std (windowed models, as their RevIN computes it) or the
    training split's std (fixed scaler)."""
    c = model.config
    if c.norm == "revin":
        w = x[:, -c.lookback :]
        std = torch.sqrt(w.var(dim=1, keepdim=True, unbiased=False) + 1e-5)
    else:  # one per window too, so that batches of windows concatenate (calibrate, scores)
        std = model.std.view(1, 1, -1).expand(x.shape[0], 1, -1)
    return std.index_select(2, model.targets)


def bands(model, x: Tensor, forecast: Tensor) -> Tensor:
    """``[B, H, targets, levels]`` raw units: forecast + scale x calibrated offset."""
    return forecast.unsqueeze(-1) + window_scale(model, x).unsqueeze(-1) * getattr(model, BUFFER)


# ----------------------------------------------------------------------------- calibration


def conformal_offsets(scores: np.ndarray, levels) -> np.ndarray:
    """``scores [n, H, T]`` -> offsets ``[H, T, levels]`` (see the module doc; 0.5 -> 0)."""
    n = scores.shape[0]
    s = np.sort(scores, axis=0)
    out = np.zeros(scores.shape[1:] + (len(levels),), np.float32)
    for k, tau in enumerate(levels):
        if tau == 0.5:
            continue
        rank = math.ceil((n + 1) * tau) if tau > 0.5 else math.floor((n + 1) * tau)
        out[..., k] = s[min(max(rank, 1), n) - 1]
    return out


@torch.no_grad()
def predict(model, windows, idx: np.ndarray, chunk: int = 512):
    """(forecast, scale, y) for the windows starting at ``idx`` (``windows(idx) -> (x, y)``)."""
    model.eval()
    preds, scales, ys = [], [], []
    for i in range(0, len(idx), chunk):
        x, y = windows(torch.from_numpy(idx[i : i + chunk]))
        p, _ = model(x)
        preds.append(p)
        scales.append(window_scale(model, x))
        ys.append(y)
    return torch.cat(preds), torch.cat(scales), torch.cat(ys)


@torch.no_grad()
def calibrate(model, windows, val_starts: np.ndarray) -> dict:
    """Fit the offsets on the validation windows (in place) and return the calibration record."""
    levels = list(model.config.quantiles)
    pred, scale, y = predict(model, windows, val_starts)
    scores = ((y - pred) / scale).numpy().astype(np.float64)
    offsets = conformal_offsets(scores, levels)
    getattr(model, BUFFER).copy_(torch.from_numpy(offsets))
    return {
        "method": "split-conformal",
        "split": "val",
        "windows": int(len(val_starts)),
        "per": "horizon step x target",
        "score": "(actual - forecast) / scale",
        "scale": "window std of the target (RevIN)" if model.config.norm == "revin" else "training-split std",
        "median": "the point forecast (offset 0)" if 0.5 in levels else None,
        "levels": levels,
    }


def interval_pair(levels) -> tuple[int, int]:
    """Indices of the outermost symmetric pair of levels (e.g. 0.1 and 0.9: the 80 % interval)."""
    return 0, len(levels) - 1


@torch.no_grad()
def scores(model, windows, starts: np.ndarray, std_t: Tensor, split: str) -> dict:
    """Coverage (whole horizon and per quarter, pooled over targets), mean width and mean pinball
    loss on ``split``; widths and pinball on the z-scored scale (divided by the training std, as MSE)."""
    levels = list(model.config.quantiles)
    pred, scale, y = predict(model, windows, starts)
    q = pred.unsqueeze(-1) + scale.unsqueeze(-1) * getattr(model, BUFFER)  # [N, H, T, Q]
    lo_i, hi_i = interval_pair(levels)
    lo, hi = q[..., lo_i], q[..., hi_i]
    inside = ((y >= lo) & (y <= hi)).float()
    pct = round((levels[hi_i] - levels[lo_i]) * 100)
    out = {
        f"{split}_coverage_{pct}": inside.mean().item(),
        f"{split}_interval_width_{pct}": ((hi - lo) / std_t).mean().item(),
    }
    H = y.shape[1]
    for k in range(4):
        a, b = (k * H) // 4, ((k + 1) * H) // 4
        if b > a:
            out[f"{split}_coverage_{pct}_q{k + 1}"] = inside[:, a:b].mean().item()
    tau = torch.tensor(levels, dtype=q.dtype)
    err = (y.unsqueeze(-1) - q) / std_t.unsqueeze(-1)
    out[f"{split}_pinball"] = torch.maximum(tau * err, (tau - 1) * err).mean().item()
    return out
