"""The numba kernels of the modern cells (imported on first use, only where numba is installed).

Plain loops, one direction each, parallel over independent rows (``numba.prange``): what they
compute is documented beside the autograd Functions that call them, in ``fused.py`` (RMSNorm,
mLSTM) and ``scan.py`` (the minGRU / minLSTM scan). Module-level functions, and closures over
ints only: what numba's disk cache can find again in the next process.
"""

import math

import numba
import numpy as np

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


# ------------------------------------------------------------- mLSTM, recurrent form
# Each (batch row, head) is independent: the parallel loop hands them out; one's memory
# C [d, d] and n [d] stay in the thread's cache for the whole sequence. The backward pass
# walks the chunks of ``L`` steps in reverse, recomputing each chunk's states from the
# checkpoint the forward pass left at its start (C, n, m every L steps), so memory stays
# O(T/L d^2) instead of O(T d^2). What keeps the loops over d vectorised: scalars cast to the
# arrays' dtype (``_as``: a float64 scalar against float32 rows halves the vector width),
# rows indexed as C[kk, j] and sums into small local arrays, and no transcendental function
# per element (sigmoid(o) comes in precomputed, vectorised by torch).


@numba.njit(cache=True, nogil=True, inline="always")
def _as(x, like):
    return like.dtype.type(x)


@numba.njit(cache=True, nogil=True, inline="always")
def _gates(gates, b, t, h, H, m, like):
    """The step's stabiliser and decays: (m', f, a, log f), m' / f / a in the arrays' dtype."""
    i, x = gates[b, t, h], gates[b, t, H + h]
    lf = min(x, 0.0) - math.log1p(math.exp(-abs(x)))  # log sigmoid(f~)
    mn = max(lf + m, i)
    return _as(mn, like), _as(math.exp(lf + m - mn), like), _as(math.exp(i - mn), like), lf


@numba.njit(cache=True, nogil=True, fastmath=REASSOC)
def _advance(C, n, Cout, nout, f, a, k, v):
    """Cout = f C + a k v^T, nout = f n + a k (Cout may be C)."""
    for kk in range(k.shape[0]):
        ak = a * k[kk]
        nout[kk] = f * n[kk] + ak
        for j in range(v.shape[0]):
            Cout[kk, j] = f * C[kk, j] + ak * v[j]


@numba.njit(cache=True, nogil=True, fastmath=REASSOC)
def _den(n, q, mn, scale, eps):
    """(max(|n . q|, exp(-m)) + eps, n . q) with q scaled."""
    s = _as(0.0, n)
    for kk in range(q.shape[0]):
        s += scale * q[kk] * n[kk]
    return _as(max(abs(s), math.exp(-mn)) + eps, n), s


@numba.njit(cache=True, nogil=True, fastmath=REASSOC)
def _layer_norm(hv):
    """(mean, 1/sigma) of one head's h, as torch's layer norm (biased variance, eps 1e-5)."""
    mu = _as(0.0, hv)
    for j in range(hv.shape[0]):
        mu += hv[j]
    mu /= hv.shape[0]
    var = _as(0.0, hv)
    for j in range(hv.shape[0]):
        var += (hv[j] - mu) * (hv[j] - mu)
    return mu, _as(1.0 / math.sqrt(var / hv.shape[0] + 1e-5), hv)


@numba.njit(cache=True, nogil=True, fastmath=REASSOC)
def _forward_one(b, h, qkvo, gates, og, C0, n0, m0, w, scale, eps, L, y, hs, Ck, nk, mk, Cn, nn_, mn_, acc):
    T, H, d = qkvo.shape[1], C0.shape[1], C0.shape[2]
    D = H * d
    C, n, m = C0[b, h].copy(), n0[b, h].copy(), m0[b, h]
    for t in range(T):
        if t % L == 0:
            Ck[b, h, t // L], nk[b, h, t // L], mk[b, h, t // L] = C, n, m
        q, k, v = (
            qkvo[b, t, h * d : (h + 1) * d],
            qkvo[b, t, D + h * d : D + (h + 1) * d],
            qkvo[b, t, 2 * D + h * d : 2 * D + (h + 1) * d],
        )
        m, f, a, _ = _gates(gates, b, t, h, H, m, C)
        acc[:] = 0.0
        for kk in range(d):  # C = f C + a k v^T and acc = C^T q in one pass over C
            ak, qk = a * k[kk], scale * q[kk]
            n[kk] = f * n[kk] + ak
            for j in range(d):
                c = f * C[kk, j] + ak * v[j]
                C[kk, j] = c
                acc[j] += qk * c
        den, _ = _den(n, q, m, scale, eps)
        hv, out, g = hs[b, t, h * d : (h + 1) * d], y[b, t, h * d : (h + 1) * d], og[b, t, h * d : (h + 1) * d]
        for j in range(d):
            hv[j] = acc[j] / den
        mu, inv = _layer_norm(hv)
        for j in range(d):  # per-head layer norm, its weight, the output gate sigmoid(o)
            out[j] = (hv[j] - mu) * inv * w[h * d + j] * g[j]
    Cn[b, h], nn_[b, h], mn_[b, h] = C, n, m


@numba.njit(cache=True, nogil=True, fastmath=REASSOC, parallel=True)
def mlstm_forward(qkvo, gates, og, C0, n0, m0, w, scale, eps, L, workers, y, hs, Ck, nk, mk, Cn, nn_, mn_):
    # qkvo [B, T, 4D] ([q | k | v | o], o unused here); gates [B, T, 2H]; og = sigmoid(o) [B, T, D];
    # C0 [B, H, d, d], n0 [B, H, d], m0 [B, H]; w [D]. Out: y [B, T, D] (normed, gated), hs
    # [B, T, D] (h before the norm), checkpoints Ck [B, H, nc, d, d], nk [B, H, nc, d],
    # mk [B, H, nc]; the final state Cn, nn_, mn_
    B, H, d = qkvo.shape[0], C0.shape[1], C0.shape[2]
    scale, eps = _as(scale, qkvo), _as(eps, qkvo)
    for worker in numba.prange(workers):
        acc = np.empty(d, qkvo.dtype)
        for bh in range(worker, B * H, workers):
            _forward_one(
                bh // H, bh % H, qkvo, gates, og, C0, n0, m0, w, scale, eps, L, y, hs, Ck, nk, mk, Cn, nn_, mn_, acc
            )


@numba.njit(cache=True, nogil=True, fastmath=REASSOC)
def _backward_one(
    b,
    h,
    qkvo,
    gates,
    og,
    w,
    scale,
    eps,
    L,
    hs,
    Ck,
    nk,
    mk,
    gy,
    gCn,
    gnn,
    gmn,
    gqkvo,
    ggates,
    gC0,
    gn0,
    gm0,
    gw,
    Cs,
    ns,
    ms,
    fs,
    as_,
    lfs,
    dh,
    dnum,
    dv,
):
    T, H, d = qkvo.shape[1], gC0.shape[1], gC0.shape[2]
    D = H * d
    dC, dn, dm = gCn[b, h].copy(), gnn[b, h].copy(), gmn[b, h]
    for c in range(Ck.shape[2] - 1, -1, -1):
        t0 = c * L
        Cs[0], ns[0], ms[0] = Ck[b, h, c], nk[b, h, c], mk[b, h, c]
        for s in range(min(L, T - t0)):  # recompute the chunk's states: Cs[s + 1] is C after step t0 + s
            t = t0 + s
            ms[s + 1], fs[s], as_[s], lfs[s] = _gates(gates, b, t, h, H, ms[s], dC)
            _advance(
                Cs[s],
                ns[s],
                Cs[s + 1],
                ns[s + 1],
                fs[s],
                as_[s],
                qkvo[b, t, D + h * d : D + (h + 1) * d],
                qkvo[b, t, 2 * D + h * d : 2 * D + (h + 1) * d],
            )
        for s in range(min(L, T - t0) - 1, -1, -1):
            t = t0 + s
            f, a, mn = fs[s], as_[s], ms[s + 1]
            q, k, v = (
                qkvo[b, t, h * d : (h + 1) * d],
                qkvo[b, t, D + h * d : D + (h + 1) * d],
                qkvo[b, t, 2 * D + h * d : 2 * D + (h + 1) * d],
            )
            gq, gk, gv = (
                gqkvo[b, t, h * d : (h + 1) * d],
                gqkvo[b, t, D + h * d : D + (h + 1) * d],
                gqkvo[b, t, 2 * D + h * d : 2 * D + (h + 1) * d],
            )
            go, g, hv = (
                gqkvo[b, t, 3 * D + h * d : 3 * D + (h + 1) * d],
                og[b, t, h * d : (h + 1) * d],
                hs[b, t, h * d : (h + 1) * d],
            )
            g_y, g_w = gy[b, t, h * d : (h + 1) * d], gw[b, h * d : (h + 1) * d]
            # the read-out y = z w g, z the per-head layer norm of h: dh, and o's gradient
            mu, inv = _layer_norm(hv)
            mdz, mdzz = _as(0.0, hv), _as(0.0, hv)
            for j in range(d):
                z = (hv[j] - mu) * inv
                dz = g_y[j] * w[h * d + j] * g[j]
                g_w[j] += g_y[j] * z * g[j]
                go[j] = dz * z * (1 - g[j])
                dh[j] = dz
                mdz += dz
                mdzz += dz * z
            mdz, mdzz = mdz / d, mdzz / d
            for j in range(d):
                dh[j] = (dh[j] - mdz - (hv[j] - mu) * inv * mdzz) * inv
            # h = num / den with num = C^T q (= h den), den = max(|n . q|, exp(-m)) + eps
            n = ns[s + 1]
            den, sq = _den(n, q, mn, scale, eps)
            dden = _as(0.0, hv)
            for j in range(d):
                dnum[j] = dh[j] / den
                dden -= dh[j] * hv[j]
            dden /= den
            thr = _as(math.exp(-mn), hv)
            sign = _as(1.0 if sq > 0 else (-1.0 if sq < 0 else 0.0), hv)
            ds, dthr = _as(0.0, hv), _as(0.0, hv)
            if abs(sq) > thr:
                ds = dden * sign
            elif abs(sq) < thr:
                dthr = dden
            else:  # a tie: torch.maximum splits the gradient
                ds, dthr = dden * sign / 2, dden / 2
            dmn = dm - thr * dthr
            # C' = f C + a k v^T, n' = f n + a k, walked back one row of C at a time
            C, Cp, np_ = Cs[s + 1], Cs[s], ns[s]
            df, da = _as(0.0, hv), _as(0.0, hv)
            dv[:] = 0.0
            for kk in range(d):
                qk, kv = scale * q[kk], k[kk]
                dq, dcv, dfr = _as(0.0, hv), _as(0.0, hv), _as(0.0, hv)
                for j in range(d):
                    gc = dC[kk, j] + qk * dnum[j]
                    dq += C[kk, j] * dnum[j]
                    dfr += gc * Cp[kk, j]
                    dcv += gc * v[j]
                    dv[j] += gc * kv
                    dC[kk, j] = f * gc
                dnk = dn[kk] + ds * qk
                gq[kk] = scale * (dq + ds * n[kk])
                gk[kk] = a * (dcv + dnk)
                df += dfr + dnk * np_[kk]
                da += kv * (dcv + dnk)
                dn[kk] = f * dnk
            for j in range(d):
                gv[j] = a * dv[j]
            # f = exp(lf + m - m'), a = exp(i - m'), m' = max(lf + m, i), lf = log sigmoid(f~)
            dlf, dmp, di = df * f, df * f, da * a
            dmn -= df * f + da * a
            i, lf = gates[b, t, h], lfs[s]
            if lf + ms[s] > i:
                dlf, dmp = dlf + dmn, dmp + dmn
            elif lf + ms[s] < i:
                di += dmn
            else:
                dlf, dmp, di = dlf + dmn / 2, dmp + dmn / 2, di + dmn / 2
            ggates[b, t, h] = di
            ggates[b, t, H + h] = dlf / (1.0 + math.exp(gates[b, t, H + h]))  # d log sigmoid(x) = sigmoid(-x)
            dm = dmp
    gC0[b, h], gn0[b, h], gm0[b, h] = dC, dn, dm


@numba.njit(cache=True, nogil=True, fastmath=REASSOC, parallel=True)
def mlstm_backward(
    qkvo, gates, og, w, scale, eps, L, workers, hs, Ck, nk, mk, gy, gCn, gnn, gmn, gqkvo, ggates, gC0, gn0, gm0, gw
):
    # gw [B, D]: each batch row's share of the norm weight's gradient (summed by the caller)
    B, H, d = qkvo.shape[0], gC0.shape[1], gC0.shape[2]
    scale, eps = _as(scale, qkvo), _as(eps, qkvo)
    for worker in numba.prange(workers):  # scratch once per thread (0.5 MB: an mmap if per (b, h))
        Cs = np.empty((L + 1, d, d), qkvo.dtype)  # C before the chunk's first step, then after each step
        ns, ms = np.empty((L + 1, d), qkvo.dtype), np.empty(L + 1, qkvo.dtype)
        fs, as_, lfs = np.empty(L, qkvo.dtype), np.empty(L, qkvo.dtype), np.empty(L)
        dh, dnum, dv = np.empty(d, qkvo.dtype), np.empty(d, qkvo.dtype), np.empty(d, qkvo.dtype)
        for bh in range(worker, B * H, workers):
            _backward_one(
                bh // H,
                bh % H,
                qkvo,
                gates,
                og,
                w,
                scale,
                eps,
                L,
                hs,
                Ck,
                nk,
                mk,
                gy,
                gCn,
                gnn,
                gmn,
                gqkvo,
                ggates,
                gC0,
                gn0,
                gm0,
                gw,
                Cs,
                ns,
                ms,
                fs,
                as_,
                lfs,
                dh,
                dnum,
                dv,
            )


# ------------------------------------------------------------- the minGRU / minLSTM scan
# The formulas are documented in rnnops.training.scan. One pair of kernels per cell (0 minGRU,
# 1 minLSTM), made by a factory so that ``cell`` is a constant numba folds (a runtime argument
# kept the loops from vectorising: 3x slower). The closures capture that int and nothing else:
# numba then finds them in its disk cache (closures over a dispatcher or a module never were,
# and each process compiled them again).
MINGRU = 0


@numba.njit(cache=True, nogil=True, inline="always")
def _scan_gates(cell, pre_t, sig_t, d, D):
    """(a, g, dg/dp) at one element: a is the decay of h_{t-1}, g = h~."""
    k = 2 if cell == MINGRU else 3
    p, s = pre_t[(k - 1) * D + d], sig_t[(k - 1) * D + d]
    pos = p >= 0
    g = p + 0.5 if pos else s
    dg = 1.0 if pos else s * (1.0 - s)
    if cell == MINGRU:
        a = 1.0 - sig_t[d]
    else:  # sigmoid(f~) / (sigmoid(f~) + sigmoid(i~)); both underflowed (pre-activations < -88): a = 0
        sf, si = sig_t[d], sig_t[D + d]
        a = sf / max(sf + si, 1e-37)
    return a, g, dg


def _scan_kernels(cell: int):
    k = 2 if cell == MINGRU else 3

    @numba.njit(cache=True, nogil=True, parallel=True)
    def forward(pre, sig, h0, out):  # pre, sig [B, T, k*D]; h0 [B, D]; out [B, T, D]
        B, T, D = out.shape
        for i in numba.prange(B):
            h = h0[i].copy()  # h_{t-1} in its own buffer: reading it back from `out`, which the loop
            for t in range(T):  # writes, would keep LLVM from vectorising the loop over d (5x slower)
                pre_t, sig_t, out_t = pre[i, t], sig[i, t], out[i, t]
                for d in range(D):
                    a, g, _ = _scan_gates(cell, pre_t, sig_t, d, D)
                    h[d] = a * h[d] + (1.0 - a) * g
                    out_t[d] = h[d]

    @numba.njit(cache=True, nogil=True, parallel=True)
    def backward(pre, sig, h0, h, grad_h, grad_pre, grad_h0):
        # g_t = dL/dh_t, direct plus through h_{t+1} (carried in grad_h0 while walking back);
        # u = dL/dk for minGRU's a = sigmoid(-k); minLSTM's a = sigmoid(log sigmoid(f~) - log sigmoid(i~))
        B, T, D = h.shape
        for i in numba.prange(B):
            carry = grad_h0[i]
            carry[:] = 0.0
            for t in range(T - 1, -1, -1):
                prev = h0[i] if t == 0 else h[i, t - 1]
                pre_t, sig_t, gh_t, gp_t = pre[i, t], sig[i, t], grad_h[i, t], grad_pre[i, t]
                for d in range(D):
                    a, g, dg = _scan_gates(cell, pre_t, sig_t, d, D)
                    gt = gh_t[d] + carry[d]
                    u = gt * (g - prev[d]) * a * (1.0 - a)
                    if cell == MINGRU:
                        gp_t[d] = u
                    else:
                        gp_t[d] = -u * (1.0 - sig_t[d])
                        gp_t[D + d] = u * (1.0 - sig_t[D + d])
                    gp_t[(k - 1) * D + d] = gt * (1.0 - a) * dg
                    carry[d] = gt * a

    return forward, backward


SCAN = {cell: _scan_kernels(cell) for cell in (0, 1)}  # {cell: (forward, backward)}
