"""The numba kernels of :mod:`rnnops.training.fused` (imported only where numba is installed).

Plain loops, one direction each, parallel over independent rows (``numba.prange``): what they
compute is documented beside the autograd Functions that call them, in ``fused.py``.
"""

import numba

REASSOC = {"reassoc", "contract"}  # sums may be vectorised (reordered); no assumptions about inf/nan


# ------------------------------------------------------------- RMSNorm over rows of [R, D]
# Sums in float64 (a row is one pass over memory whatever the width of its arithmetic).


@numba.njit(cache=True, nogil=True, fastmath=REASSOC, parallel=True)
def norm_forward(x, w, eps, y, rstd):  # x, y [R, D]; w [D]; rstd [R]
    R, D = x.shape
    for r in numba.prange(R):
        s = 0.0
        for d in range(D):
            s += x[r, d] * x[r, d]
        inv = 1.0 / (s / D + eps) ** 0.5
        rstd[r] = inv
        for d in range(D):
            y[r, d] = x[r, d] * inv * w[d]


@numba.njit(cache=True, nogil=True, fastmath=REASSOC, parallel=True)
def norm_backward(x, w, rstd, gy, gx, gw):  # gw [blocks, D] float64: one partial sum per block of rows
    R, D = x.shape
    blocks = gw.shape[0]
    for b in numba.prange(blocks):
        for r in range(b * R // blocks, (b + 1) * R // blocks):
            inv = rstd[r]
            dot = 0.0
            for d in range(D):
                dot += gy[r, d] * w[d] * x[r, d]
            c = dot * inv * inv * inv / D
            for d in range(D):
                gx[r, d] = inv * gy[r, d] * w[d] - c * x[r, d]
                gw[b, d] += gy[r, d] * x[r, d] * inv
