"""Sampling the next character for a whole batch of streams at once, in numpy.

Each stream brings its own temperature, top-k, top-p and one uniform number drawn from its own
seeded generator. Every operation works row by row along the vocabulary axis, and which path a
row takes (greedy, plain temperature, or sorted for top-k/top-p) depends only on that row's own
parameters, so a stream's choice depends only on its logits row and its uniform: the same
request with the same seed gives the same text alone or batched with 63 others (the ORT kernels
are batch-invariant for these shapes, which the tests check).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off


def new_rng(seed: int) -> np.random.Generator:
    """The per-stream generator: one uniform per character, whatever else runs beside it."""
    return np.random.Generator(np.random.PCG64(seed))


def _inverse_cdf(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Index per row where the cumulative (unnormalised) mass first exceeds u * total."""
    cdf = np.cumsum(p, axis=1)
    target = u * cdf[:, -1]
    out: np.ndarray = np.minimum((cdf <= target[:, None]).sum(axis=1), p.shape[1] - 1)
    return out


def sample_batch(
    logits: np.ndarray, temperature: np.ndarray, top_k: np.ndarray, top_p: np.ndarray, uniforms: np.ndarray
) -> np.ndarray:
    """Next token per row.

    logits ``[B, V]``; temperature, top_p ``[B]`` float; top_k ``[B]`` int (0 = all);
    uniforms ``[B]`` in [0, 1). Returns int64 ``[B]``. Temperature 0 is greedy (argmax).
    """
    logits = np.asarray(logits)
    b, v = logits.shape
    temp = np.asarray(temperature, dtype=np.float64)
    k = np.asarray(top_k, dtype=np.int64)
    tp = np.asarray(top_p, dtype=np.float64)
    u = np.asarray(uniforms, dtype=np.float64)
    if ((temp > 0) & (tp >= 1.0) & ((k <= 0) | (k >= v))).all():  # every row plain: the common case,
        z = logits.astype(np.float64) / temp[:, None]  # without the masks' copies (same arithmetic)
        return _inverse_cdf(np.exp(z - z.max(axis=1, keepdims=True)), u)
    out = np.empty(b, dtype=np.int64)
    greedy = temp <= 0
    if greedy.any():
        out[greedy] = np.argmax(logits[greedy], axis=1)
    filtered = ~greedy & (((k > 0) & (k < v)) | (tp < 1.0))
    plain = ~greedy & ~filtered
    if plain.any():  # temperature only: no sort needed
        z = logits[plain].astype(np.float64) / temp[plain, None]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        out[plain] = _inverse_cdf(p, u[plain])
    if filtered.any():  # top-k / top-p: work in sorted order, most likely first (ties by index)
        z = logits[filtered].astype(np.float64) / temp[filtered, None]
        order = np.argsort(-z, axis=1, kind="stable")
        zs = np.take_along_axis(z, order, axis=1)
        p = np.exp(zs - zs[:, :1])
        kk, pp = k[filtered], tp[filtered]
        keep = (kk[:, None] <= 0) | (np.arange(v)[None, :] < kk[:, None])
        p = p * keep
        cum = np.cumsum(p, axis=1)
        before = cum - p  # mass strictly before each candidate
        keep &= (pp[:, None] >= 1.0) | (before < pp[:, None] * cum[:, -1:])
        pick = _inverse_cdf(p * keep, u[filtered])
        out[filtered] = order[np.arange(len(pick)), pick]
    return out
