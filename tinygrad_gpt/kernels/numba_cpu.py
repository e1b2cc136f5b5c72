"""numba twins of reference.py: same names, signatures, return values and in-place semantics.

Each public function is a thin wrapper (argument checks, None handling, output allocation)
around an `@njit` kernel named like it with a leading underscore. Kernels are row-local and
fused: every `prange` iteration owns its output rows, so there are no races and no atomics.
Matrix products stay in NumPy (BLAS); numba never calls BLAS inside `prange` (nested thread
pools oversubscribe the cores).

dtype discipline: float32 in, float32 out, and no float64 arithmetic in between. Inside a
kernel every constant goes through `dt = x.dtype.type` (a bare `0.5` is float64 in numba and
would promote the whole expression); scalars from Python are cast by the wrapper. A test
reads the float32 LLVM IR of every kernel and fails on any float -> double conversion.

The first call compiles (about 15 s for all kernels here, once); `cache=True` stores the
machine code in __pycache__ and later processes load it in well under a second. The cache
does not notice edits to *other* files (vector_math.py, whose exp and tanh are inlined into
these kernels, included: touch this file after editing it) and freezes module globals, so
the constants live here. `warmup()` compiles everything up front.

Letters in the shape comments: N rows, C channels, V vocabulary,
B batch, H heads, T time, D head size, M any number of elements (a flat view).
"""
import math
import os
import platform
import time

import numpy as np
from numba import njit, prange

from ..runtime import runtime
from . import bf16_avx512, bf16_mkl, precision, reference, threads
from .buffers import SCRATCH

# numba's threading layer: kernels/threads.py picks it (TBB, else workqueue; OpenMP last).

# fastmath without 'nnan'/'ninf': with those two, LLVM may assume no NaN/inf and np.isnan
# silently returns False inside a kernel. Reassociation lets reductions vectorize.
SAFE = {"nsz", "arcp", "contract", "afn", "reassoc"}
GELU_C = 0.7978845608028654      # sqrt(2 / pi), as in reference.py
LN_ROWS_PER_CHUNK = 16           # layernorm_backward: rows per dw/db partial (fixed => deterministic sums)
EMB_COLS_PER_BLOCK = 64          # embedding_backward: columns owned by one prange iteration


# ----------------------------------------------------------------------------- argument checks
def _floats(fn, **arrays):
    """C-contiguous float32/float64 arrays, all of the first one's dtype, or an error naming them."""
    names = list(arrays)
    out = [np.ascontiguousarray(a) for a in arrays.values()]
    dt = out[0].dtype
    if dt != np.float32 and dt != np.float64:
        raise TypeError(f"{fn}: {names[0]} must be float32 or float64, found {dt}")
    for name, a in zip(names[1:], out[1:]):
        if a.dtype != dt:
            raise TypeError(f"{fn}: {name} is {a.dtype} but {names[0]} is {dt}; "
                            f"cast both to one float dtype")
    return out


def _shape(fn, name, a, shape):
    if a.shape != tuple(shape):
        raise ValueError(f"{fn}: {name} must have shape {tuple(shape)}, found {a.shape}")


def _ndim(fn, name, a, letters):
    if a.ndim != len(letters):
        raise ValueError(f"{fn}: {name} must be {len(letters)}-D ({', '.join(letters)}), "
                         f"found shape {a.shape}")


def _mask(fn, keep, shape, dt):
    """The 0/1 dropout mask: a bool one (what functional draws) is read in place as uint8,
    any other is converted to the data's dtype."""
    keep = np.ascontiguousarray(keep)
    keep = keep.view(np.uint8) if keep.dtype == np.bool_ else keep.astype(dt, copy=False)
    _shape(fn, "keep", keep, shape)
    return keep


def _indices(fn, name, idx, n, limit, ignore=None):
    """int64 indices of shape (n,), each in [0, limit) (or == ignore). numba does not
    bounds-check, so an out-of-range index would read or write outside the array."""
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    _shape(fn, name, idx, (n,))
    live = idx if ignore is None else idx[idx != ignore]
    if live.size and (live.min() < 0 or live.max() >= limit):
        bad = live[(live < 0) | (live >= limit)][0]
        raise IndexError(f"{fn}: {name} contains {bad}, outside [0, {limit})"
                         + ("" if ignore is None else f" and not ignore_index={ignore}"))
    return idx


# exp and tanh that vectorize (Cephes expf/tanhf as LLVM-level code): vector_math.py
from .vector_math import _exp, _exp_f32, _f32_bits, _tanh, _tanh_f32  # noqa: E402,F401  (the tests inspect them here)


# ----------------------------------------------------------------------------- layer norm
@njit(parallel=True, cache=True, fastmath=SAFE)
def _layernorm_forward(x, w, b, eps, y, mean, rstd):   # x, y: (N, C)  w, b: (C,)  mean, rstd: (N,)
    # mean = x.mean(1); var = ((x - mean)^2).mean(1); rstd = 1/sqrt(var + eps); y = xhat * w + b
    N, C = x.shape
    dt = x.dtype.type
    for n in prange(N):
        s = dt(0.0)
        for c in range(C):
            s += x[n, c]
        mu = s / dt(C)
        s2 = dt(0.0)
        for c in range(C):                      # second pass: the two-pass variance is stable
            d = x[n, c] - mu
            s2 += d * d
        r = dt(1.0) / math.sqrt(s2 / dt(C) + eps)
        for c in range(C):
            y[n, c] = (x[n, c] - mu) * r * w[c] + b[c]
        mean[n] = mu
        rstd[n] = r


def layernorm_forward(x, w, b, eps=1e-5):     # x: (N, C)  w, b: (C,)
    x, w, b = _floats("layernorm_forward", x=x, w=w, b=b)
    _ndim("layernorm_forward", "x", x, "NC")
    N, C = x.shape
    _shape("layernorm_forward", "w", w, (C,))
    _shape("layernorm_forward", "b", b, (C,))
    y = np.empty_like(x)                                   # (N, C)
    mean = np.empty(N, dtype=x.dtype)                      # (N,)
    rstd = np.empty(N, dtype=x.dtype)                      # (N,)
    _layernorm_forward(x, w, b, x.dtype.type(eps), y, mean, rstd)
    return y, mean, rstd


@njit(parallel=True, cache=True, fastmath=SAFE)
def _layernorm_backward(dy, x, w, mean, rstd, dx, dw_part, db_part, params):   # dy, x, dx: (N, C)
    # xhat = (x - mean) * rstd; dxhat = dy * w
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    # dw, db = sum over rows of dy * xhat, dy: chunk k of LN_ROWS_PER_CHUNK rows adds into
    # dw_part[k], db_part[k] (K, C) only, so threads never share an output row.
    N, C = x.shape
    dt = x.dtype.type
    K = dw_part.shape[0]
    for k in prange(K):
        for n in range(k * LN_ROWS_PER_CHUNK, min(N, (k + 1) * LN_ROWS_PER_CHUNK)):
            mu = mean[n]
            r = rstd[n]
            s1 = dt(0.0)                        # sum(dxhat)
            s2 = dt(0.0)                        # sum(dxhat * xhat)
            for c in range(C):
                xhat = (x[n, c] - mu) * r
                g = dy[n, c] * w[c]
                s1 += g
                s2 += g * xhat
                if params:                      # False: w and b are frozen, no dw, db
                    dw_part[k, c] += dy[n, c] * xhat
                    db_part[k, c] += dy[n, c]
            m1 = s1 / dt(C)
            m2 = s2 / dt(C)
            for c in range(C):
                xhat = (x[n, c] - mu) * r
                dx[n, c] = r * (dy[n, c] * w[c] - m1 - xhat * m2)


def layernorm_backward(dy, x, w, mean, rstd, params=True):  # dy, x: (N, C)
    dy, x, w, mean, rstd = _floats("layernorm_backward", dy=dy, x=x, w=w, mean=mean, rstd=rstd)
    _ndim("layernorm_backward", "x", x, "NC")
    N, C = x.shape
    _shape("layernorm_backward", "dy", dy, (N, C))
    _shape("layernorm_backward", "w", w, (C,))
    _shape("layernorm_backward", "mean", mean, (N,))
    _shape("layernorm_backward", "rstd", rstd, (N,))
    K = max(1, -(-N // LN_ROWS_PER_CHUNK)) if params else 1
    dx = np.empty_like(x)                                  # (N, C)
    dw_part = np.zeros((K, C), dtype=x.dtype)              # (K, C) per-chunk partial sums
    db_part = np.zeros((K, C), dtype=x.dtype)
    _layernorm_backward(dy, x, w, mean, rstd, dx, dw_part, db_part, bool(params))
    if not params:
        return dx, None, None                              # (N, C): w and b frozen
    return dx, dw_part.sum(axis=0), db_part.sum(axis=0)    # (N, C), (C,), (C,)


# ----------------------------------------------------------------------------- GELU (tanh form)
# Measured on (512, 3072) float32, 2 cores, forward / backward ms: NumPy 4.2 / 14.0; numba
# with math.tanh (one scalar libm call per element) 12.1 / 12.1, so NumPy's SIMD tanh won the
# forward; numba with the vectorized `_tanh_f32` 1.3 / 1.3. Hence the numba twins here.
@njit(parallel=True, cache=True, fastmath=SAFE)
def _gelu_forward(x, y):                       # x, y: (M,)
    # y = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
    dt = x.dtype.type
    for i in prange(x.size):
        xi = x[i]
        u = dt(GELU_C) * (xi + dt(0.044715) * xi * xi * xi)
        y[i] = dt(0.5) * xi * (dt(1.0) + _tanh(u))


def gelu_forward(x):                           # x: any shape
    (x,) = _floats("gelu_forward", x=x)
    y = np.empty_like(x)
    _gelu_forward(x.reshape(-1), y.reshape(-1))
    return y


@njit(parallel=True, cache=True, fastmath=SAFE)
def _gelu_backward(dy, x, dx):                 # dy, x, dx: (M,)
    # dx = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) du/dx),  t = tanh(u),
    # u = sqrt(2/pi) (x + 0.044715 x^3),  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    dt = x.dtype.type
    for i in prange(x.size):
        xi = x[i]
        t = _tanh(dt(GELU_C) * (xi + dt(0.044715) * xi * xi * xi))
        dudx = dt(GELU_C) * (dt(1.0) + dt(0.134145) * xi * xi)
        dx[i] = dy[i] * (dt(0.5) * (dt(1.0) + t) + dt(0.5) * xi * (dt(1.0) - t * t) * dudx)


def gelu_backward(dy, x):                      # dy, x: same shape
    dy, x = _floats("gelu_backward", dy=dy, x=x)
    _shape("gelu_backward", "dy", dy, x.shape)
    dx = np.empty_like(x)
    _gelu_backward(dy.reshape(-1), x.reshape(-1), dx.reshape(-1))
    return dx


# ----------------------------------------------------------------------------- softmax over the last axis
@njit(parallel=True, cache=True, fastmath=SAFE)
def _softmax_forward(x, y):                    # x, y: (N, C)
    # y = exp(x - max(x)) / sum(exp(x - max(x))), row by row
    N, C = x.shape
    dt = x.dtype.type
    for n in prange(N):
        m = dt(-np.inf)
        for c in range(C):
            m = max(m, x[n, c])
        s = dt(0.0)
        for c in range(C):
            e = _exp(x[n, c] - m)
            y[n, c] = e
            s += e
        for c in range(C):
            y[n, c] = y[n, c] / s


def softmax_forward(x):                        # x: (N, C)
    (x,) = _floats("softmax_forward", x=x)
    _ndim("softmax_forward", "x", x, "NC")
    y = np.empty_like(x)                       # (N, C)
    _softmax_forward(x, y)
    return y


@njit(parallel=True, cache=True, fastmath=SAFE)
def _softmax_backward(dy, y, dx):              # dy, y, dx: (N, C)
    # dx_i = y_i * (dy_i - sum_j dy_j y_j)
    N, C = y.shape
    dt = y.dtype.type
    for n in prange(N):
        s = dt(0.0)
        for c in range(C):
            s += dy[n, c] * y[n, c]
        for c in range(C):
            dx[n, c] = y[n, c] * (dy[n, c] - s)


def softmax_backward(dy, y):                   # dy, y: (N, C)
    dy, y = _floats("softmax_backward", dy=dy, y=y)
    _ndim("softmax_backward", "y", y, "NC")
    _shape("softmax_backward", "dy", dy, y.shape)
    dx = np.empty_like(y)                      # (N, C)
    _softmax_backward(dy, y, dx)
    return dx


@njit(parallel=True, cache=True, fastmath=SAFE)
def _log_softmax_forward(x, y):                # x, y: (N, C)
    # y = x - lse(x),  lse = max + log(sum(exp(x - max)))
    N, C = x.shape
    dt = x.dtype.type
    for n in prange(N):
        m = dt(-np.inf)
        for c in range(C):
            m = max(m, x[n, c])
        s = dt(0.0)
        for c in range(C):
            s += _exp(x[n, c] - m)
        lse = m + math.log(s)
        for c in range(C):
            y[n, c] = x[n, c] - lse


def log_softmax_forward(x):                    # x: (N, C)
    (x,) = _floats("log_softmax_forward", x=x)
    _ndim("log_softmax_forward", "x", x, "NC")
    y = np.empty_like(x)                       # (N, C)
    _log_softmax_forward(x, y)
    return y


@njit(parallel=True, cache=True, fastmath=SAFE)
def _log_softmax_backward(dy, y, dx):          # dy, y, dx: (N, C)
    # dx_i = dy_i - exp(y_i) * sum_j dy_j
    N, C = y.shape
    dt = y.dtype.type
    for n in prange(N):
        s = dt(0.0)
        for c in range(C):
            s += dy[n, c]
        for c in range(C):
            dx[n, c] = dy[n, c] - _exp(y[n, c]) * s


def log_softmax_backward(dy, y):               # dy, y: (N, C)
    dy, y = _floats("log_softmax_backward", dy=dy, y=y)
    _ndim("log_softmax_backward", "y", y, "NC")
    _shape("log_softmax_backward", "dy", dy, y.shape)
    dx = np.empty_like(y)                      # (N, C)
    _log_softmax_backward(dy, y, dx)
    return dx


# ----------------------------------------------------------------------------- cross-entropy
MAX_LANES = 32                                 # _row_max: independent running maxima (SIMD lanes)


@njit(inline="always", fastmath=SAFE)
def _row_max(row):                             # row: (V,) -> its largest value (NaNs skipped)
    # one running max is a chain LLVM will not vectorize without 'nnan'; MAX_LANES of them
    # are (measured: 19 -> 9 ms for 512 rows of 50257). A NaN is never selected; it reaches
    # the loss through exp(NaN - m) in the sum, as with any max.
    lanes = np.full(MAX_LANES, -np.inf, dtype=row.dtype)
    V = row.size
    full = V - V % MAX_LANES
    for j0 in range(0, full, MAX_LANES):
        for k in range(MAX_LANES):
            a = row[j0 + k]
            lanes[k] = a if a > lanes[k] else lanes[k]
    m = row.dtype.type(-np.inf)
    for k in range(MAX_LANES):
        m = lanes[k] if lanes[k] > m else m
    for j in range(full, V):
        m = row[j] if row[j] > m else m
    return m


@njit(parallel=True, cache=True, fastmath=SAFE)
def _cross_entropy_forward(logits, targets, ignore_index, losses, lse):   # logits: (N, V)
    # lse_n = max + log(sum(exp(logits_n - max))); loss_n = lse_n - logits_n[t_n], 0 if ignored
    N, V = logits.shape
    dt = logits.dtype.type
    for n in prange(N):
        m = _row_max(logits[n])
        s = dt(0.0)
        for j in range(V):
            s += _exp(logits[n, j] - m)
        l = m + math.log(s)
        lse[n] = l
        t = targets[n]
        losses[n] = dt(0.0) if t == ignore_index else l - logits[n, t]


def cross_entropy_forward(logits, targets, ignore_index=-100):
    """logits: (N, V) float, targets: (N,) int. Returns (losses (N,), lse (N,)).

    loss_n = lse(logits_n) - logits_n[target_n], 0 where target_n == ignore_index.
    """
    (logits,) = _floats("cross_entropy_forward", logits=logits)
    _ndim("cross_entropy_forward", "logits", logits, "NV")
    N, V = logits.shape
    targets = _indices("cross_entropy_forward", "targets", targets, N, V, ignore_index)
    losses = np.empty(N, dtype=logits.dtype)               # (N,)
    lse = np.empty(N, dtype=logits.dtype)                  # (N,)
    _cross_entropy_forward(logits, targets, int(ignore_index), losses, lse)
    return losses, lse


@njit(parallel=True, cache=True, fastmath=SAFE)
def _cross_entropy_backward(logits, targets, lse, scale, ignore_index, dlogits):   # (N, V)
    # dlogits_n = scale * (softmax(logits_n) - onehot(t_n)), softmax = exp(logits - lse); 0 if ignored
    N, V = logits.shape
    dt = logits.dtype.type
    for n in prange(N):
        t = targets[n]
        if t == ignore_index:
            for j in range(V):
                dlogits[n, j] = dt(0.0)
        else:
            l = lse[n]
            for j in range(V):
                dlogits[n, j] = _exp(logits[n, j] - l) * scale
            dlogits[n, t] = (_exp(logits[n, t] - l) - dt(1.0)) * scale


def cross_entropy_backward(logits, targets, lse, scale, ignore_index=-100):
    """d(scale * sum_n loss_n)/dlogits = scale * (softmax(logits_n) - onehot(target_n)), rows
    with an ignored target get 0. `scale` is dloss / (number of valid rows) for a mean."""
    logits, lse = _floats("cross_entropy_backward", logits=logits, lse=lse)
    _ndim("cross_entropy_backward", "logits", logits, "NV")
    N, V = logits.shape
    _shape("cross_entropy_backward", "lse", lse, (N,))
    targets = _indices("cross_entropy_backward", "targets", targets, N, V, ignore_index)
    dlogits = np.empty_like(logits)                        # (N, V)
    _cross_entropy_backward(logits, targets, lse, logits.dtype.type(scale), int(ignore_index), dlogits)
    return dlogits


# ----------------------------------------------------------------------------- causal attention
@njit(parallel=True, cache=True, fastmath=SAFE)
def _attention_softmax(s, Tq, offset, scale, causal, att):   # s, att: (B*H*Tq, Tk) rows of q k^T; att may be s
    # att = softmax(s * scale) over keys 0..offset+i for query row i (causal; offset = Tk - Tq,
    # the positions before the first query) or all keys; the masked future is skipped, not
    # filled with -inf, and written as exact zeros.
    R, Tk = s.shape
    dt = s.dtype.type
    for r in prange(R):
        end = r % Tq + 1 + offset if causal else Tk
        m = dt(-np.inf)
        for j in range(end):
            m = max(m, s[r, j] * scale)
        tot = dt(0.0)
        for j in range(end):
            e = _exp(s[r, j] * scale - m)
            att[r, j] = e
            tot += e
        for j in range(end):
            att[r, j] = att[r, j] / tot
        for j in range(end, Tk):
            att[r, j] = dt(0.0)


@njit(parallel=True, cache=True, fastmath=SAFE)
def _attention_softmax_backward(da, att, scale, ds):   # da, att, ds: (B*H*T, Tk); ds may be da
    # ds = scale * att * (da - sum_j da_j att_j), the softmax Jacobian row by row
    R, Tk = att.shape
    dt = att.dtype.type
    for r in prange(R):
        s = dt(0.0)
        for j in range(Tk):
            s += da[r, j] * att[r, j]
        for j in range(Tk):
            ds[r, j] = att[r, j] * (da[r, j] - s) * scale


def matmul(a, b, out=None):
    """np.matmul (reference.matmul) for the engine's float32 products, without waking OpenBLAS's
    workers, whose spinning after a call slowed the numba kernels and bf16 GEMMs that follow
    1.7-4x: OpenBLAS in one thread for each part of the work (threads.matmul), or MKL's batched
    float32 GEMM for the attention's stacks where the runtime says so (`runtime.float32_gemm`:
    a bf16 run on MKL, bf16_mkl.matmul). The numbers of np.matmul with OpenBLAS in one thread
    (threads.matmul says where that differs from OpenBLAS's own threads, in the last bits)."""
    if a.ndim >= 3 and runtime.float32_gemm == "mkl":
        return bf16_mkl.matmul(a, b, out=out)
    return threads.matmul(a, b, out=out)


def attention_forward(q, k, v, causal=True, keep=None, p=0.0):
    """q: (B, H, Tq, D), k, v: (B, H, Tk, D). keep: None or a 0/1 mask (B, H, Tq, Tk) for
    dropout on the attention weights, scaled by 1/(1-p). Returns (out (B, H, Tq, D),
    att (B, H, Tq, Tk)), att being the softmax probabilities before dropout. Causal: the
    queries are the last Tq of the Tk positions (see reference.py).

    k and v may be strided views (a KV cache's first Tk positions): they only meet BLAS,
    which reads them in place, so they are not copied."""
    (q,) = _floats("attention_forward", q=q)
    _ndim("attention_forward", "q", q, "BHTD")
    for name, a in (("k", k), ("v", v)):
        if not isinstance(a, np.ndarray) or a.dtype != q.dtype:
            raise TypeError(f"attention_forward: {name} must be a {q.dtype} array like q, "
                            f"found {getattr(a, 'dtype', type(a).__name__)}")
        _ndim("attention_forward", name, a, "BHTD")
    B, H, T, D = q.shape
    Tk = k.shape[-2]
    if causal and Tk < T:
        raise ValueError(f"attention_forward: causal attention needs at least as many keys as "
                         f"queries (the queries are the last positions), found q {q.shape} "
                         f"and k {k.shape}")
    dt = q.dtype.type
    s = matmul(q, k.swapaxes(-1, -2))                      # (B, H, T, Tk) raw scores, BLAS
    rows = s.reshape(-1, Tk)                               # (B*H*T, Tk) view
    _attention_softmax(rows, T, Tk - T, dt(1.0 / math.sqrt(D)), bool(causal), rows)   # in place: s -> att
    att = s                                                # (B, H, T, Tk)
    if keep is None:
        a = att
    else:
        keep = _mask("attention_forward", keep, att.shape, q.dtype)
        a = np.empty_like(att)                             # (B, H, T, Tk) att * keep / (1 - p)
        _mask_scale(att.reshape(-1), keep.reshape(-1), dt(1.0 / (1.0 - p)), a.reshape(-1))
    # (B, H, T, D), laid out (B, T, H, D): merging the heads (transpose, reshape) is then a view,
    # not a second float32 copy that the graph would hold until backward
    out = np.empty((B, T, H, v.shape[-1]), q.dtype).transpose(0, 2, 1, 3)
    matmul(a, v, out=out)
    return out, att


def attention_backward(dout, q, k, v, att, keep=None, p=0.0):
    """Inverts out = dropout(softmax(q k^T / sqrt(D) + mask)) @ v. Returns dq, dk, dv."""
    dout, q, k, v, att = _floats("attention_backward", dout=dout, q=q, k=k, v=v, att=att)
    _ndim("attention_backward", "q", q, "BHTD")
    B, H, T, D = q.shape
    Tk = k.shape[-2]
    _shape("attention_backward", "att", att, (B, H, T, Tk))
    dt = q.dtype.type
    if keep is None:
        a = att
    else:
        keep = _mask("attention_backward", keep, att.shape, q.dtype)
        drop = dt(1.0 / (1.0 - p))
        a = np.empty_like(att)                             # (B, H, T, Tk) what multiplied v
        _mask_scale(att.reshape(-1), keep.reshape(-1), drop, a.reshape(-1))
    dv = matmul(a.swapaxes(-1, -2), dout)                  # out = a @ v -> dv = a^T dout  (B, H, Tk, D)
    da = matmul(dout, v.swapaxes(-1, -2))                  #             -> da = dout v^T  (B, H, T, Tk)
    if keep is not None:                                   # a = att * drop -> datt = da * drop
        _mask_scale(da.reshape(-1), keep.reshape(-1), drop, da.reshape(-1))
    rows = da.reshape(-1, Tk)
    _attention_softmax_backward(rows, att.reshape(-1, Tk), dt(1.0 / math.sqrt(D)), rows)  # da -> ds
    dq = matmul(da, k)                                     # s = q k^T * scale -> dq = ds k    (B, H, T, D)
    dk = matmul(da.swapaxes(-1, -2), q)                    #                   -> dk = ds^T q  (B, H, Tk, D)
    return dq, dk, dv


# ----------------------------------------------------------------------------- embedding
@njit(parallel=True, cache=True, fastmath=SAFE)
def _embedding_backward(dout, ids, dW):        # dout: (N, C)  ids: (N,)  dW: (V, C) zeros
    # dW[ids[n]] += dout[n]; each prange iteration owns a block of columns of every row of dW,
    # so repeated ids never race, and each element sums in row order n = 0, 1, ... as np.add.at
    N, C = dout.shape
    for blk in prange((C + EMB_COLS_PER_BLOCK - 1) // EMB_COLS_PER_BLOCK):
        c0 = blk * EMB_COLS_PER_BLOCK
        c1 = min(C, c0 + EMB_COLS_PER_BLOCK)
        for n in range(N):
            row = ids[n]
            for c in range(c0, c1):
                dW[row, c] += dout[n, c]


def embedding_backward(dout, ids, num_embeddings):
    """dout: (N, C), ids: (N,) int. Forward was out = W[ids]; a repeated id receives the sum."""
    (dout,) = _floats("embedding_backward", dout=dout)
    _ndim("embedding_backward", "dout", dout, "NC")
    N, C = dout.shape
    ids = _indices("embedding_backward", "ids", ids, N, num_embeddings)
    dW = np.zeros((num_embeddings, C), dtype=dout.dtype)   # (V, C)
    _embedding_backward(dout, ids, dW)
    return dW


# ----------------------------------------------------------------------------- dropout
@njit(parallel=True, cache=True, fastmath=SAFE)
def _mask_scale(x, keep, c, out):              # x, keep, out: (M,); out may be x; keep 0/1 (uint8 or x's dtype)
    # out = x * keep * c,  c = 1 / (1 - p)
    dt = x.dtype.type
    for i in prange(x.size):
        out[i] = x[i] * dt(keep[i]) * c


def dropout_forward(x, keep, p):
    """Inverted dropout: y = x * keep / (1 - p), keep a 0/1 mask of x's shape."""
    (x,) = _floats("dropout_forward", x=x)
    keep = _mask("dropout_forward", keep, x.shape, x.dtype)
    y = np.empty_like(x)
    _mask_scale(x.reshape(-1), keep.reshape(-1), x.dtype.type(1.0 / (1.0 - p)), y.reshape(-1))
    return y


def dropout_backward(dy, keep, p):
    (dy,) = _floats("dropout_backward", dy=dy)
    keep = _mask("dropout_backward", keep, dy.shape, dy.dtype)
    dx = np.empty_like(dy)
    _mask_scale(dy.reshape(-1), keep.reshape(-1), dy.dtype.type(1.0 / (1.0 - p)), dx.reshape(-1))
    return dx


# ----------------------------------------------------------------------------- dropout masks
# numpy's default generator is PCG64 (pcg64.h): a 128-bit state stepped as an LCG,
#   state = state * MULT + inc  (mod 2^128),   word = rotr64(hi ^ lo, hi >> 58)   (XSL-RR)
# and a float32 draw takes one 32-bit half of a word (the low half first, the high half
# next): U = (half >> 8) * 2^-24. So  U >= p  <=>  (half >> 8) >= ceil(p * 2^24): a mask
# needs neither the float32 array nor numpy's call per draw through a function pointer.
PCG64_MULT = 0x2360ED051FC65DA44385DF649FCCF645
KEEP_MASK_ONE_THREAD = 1 << 20                 # a mask of fewer elements: one piece, the calling thread (a
#   2 x 256 x 768 mask took 0.41 ms in one thread, 0.46-0.68 in two; a 2 x 12 x 256 x 256 one 1.6 and 1.1)
_M64 = (1 << 64) - 1
_MULT_HI, _MULT_LO = np.uint64(PCG64_MULT >> 64), np.uint64(PCG64_MULT & _M64)


@njit(inline="always")
def _mul_hi64(a, b):                           # the high 64 bits of the 128-bit product a * b
    m32, s = np.uint64(0xFFFFFFFF), np.uint64(32)
    a0, a1, b0, b1 = a & m32, a >> s, b & m32, b >> s
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> s) + (p01 & m32) + (p10 & m32)
    return p11 + (p01 >> s) + (p10 >> s) + (mid >> s)


@njit(nogil=True, cache=True)
def _pcg64_keep(hi, lo, mult_hi, mult_lo, inc_hi, inc_lo, thr, out):
    # out: (2 W,) uint8. The generator at state (hi, lo) makes W words; word w gives
    # out[2w] = (low half >> 8) >= thr, out[2w + 1] = (high half >> 8) >= thr
    m32, s32, s8 = np.uint64(0xFFFFFFFF), np.uint64(32), np.uint32(8)
    for w in range(out.size // 2):
        # state = state * MULT + inc (mod 2^128), in 64-bit halves
        new_hi = _mul_hi64(lo, mult_lo) + lo * mult_hi + hi * mult_lo
        new_lo = lo * mult_lo
        lo = new_lo + inc_lo
        hi = new_hi + inc_hi + np.uint64(lo < new_lo)             # the carry out of the low half
        x = hi ^ lo                                               # XSL-RR output
        r = hi >> np.uint64(58)
        word = (x >> r) | (x << ((np.uint64(64) - r) & np.uint64(63)))
        out[2 * w] = np.uint8((np.uint32(word & m32) >> s8) >= thr)
        out[2 * w + 1] = np.uint8((np.uint32(word >> s32) >> s8) >= thr)


def keep_mask(rng, shape, p):
    """reference.keep_mask, the very same bits and generator state: for a PCG64 generator the
    words are made here, in get_num_threads() pieces for a big mask (piece k starts from a copy
    of the generator advanced to its first word; _pcg64_keep releases the GIL). Any other bit
    generator takes the reference's numpy call."""
    bg = rng.bit_generator
    if type(bg) is not np.random.PCG64:
        return reference.keep_mask(rng, shape, p)
    keep = np.empty(shape, dtype=np.bool_)
    flat = keep.reshape(-1).view(np.uint8)
    n, first = flat.size, 0
    if n and bg.state["has_uint32"]:           # an odd number of float32 draws so far: the next
        flat[0] = reference.keep_mask(rng, 1, p)[0]   # is the high half numpy kept, drawn by it
        first = 1
    words = (n - first) // 2
    if words:
        state = bg.state
        p32 = float(np.float32(p))             # numpy compares with p as a float32
        if p32 <= 0.0:                         # every draw kept (p = 0, or below)
            thr = np.uint32(0)
        elif p32 <= 1.0:
            thr = np.uint32(math.ceil(p32 * 2.0 ** 24))   # exact in float64
        else:                                  # none kept (p > 1, or NaN: every comparison False)
            thr = np.uint32(1 << 24)
        parts = threads.get_num_threads() if 2 * words >= KEEP_MASK_ONE_THREAD else 1
        starts = [words * k // parts for k in range(parts)] + [words]

        def piece(k):
            g = np.random.PCG64()
            g.state = state
            g.advance(starts[k])
            at = g.state["state"]                # {"state": 128-bit int, "inc": 128-bit int}
            s, inc = at["state"], at["inc"]
            _pcg64_keep(np.uint64(s >> 64), np.uint64(s & _M64), _MULT_HI, _MULT_LO, np.uint64(inc >> 64),
                        np.uint64(inc & _M64), thr, flat[first + 2 * starts[k]:first + 2 * starts[k + 1]])

        if parts == 1:
            piece(0)
        else:
            list(threads.pool().map(piece, range(parts)))
        bg.advance(words - 1)                  # where rng.random would have left it: one word
        last = int(bg.random_raw())            # short, then the last word again, whose high half
        state = bg.state                       # numpy leaves in `uinteger` (never read again
        state["uinteger"] = last >> 32         # while has_uint32 is 0, but a checkpoint saves
        bg.state = state                       # the dict: it stays the same as numpy's)
    if (n - first) % 2:                        # an odd count left: numpy draws the last one and
        flat[-1] = reference.keep_mask(rng, 1, p)[0]   # keeps the word's high half, as serially
    return keep


# ----------------------------------------------------------------------------- AdamW
@njit(parallel=True, cache=True, fastmath=SAFE)
def _adamw_step(p, g, m, v, decay, beta1, one_m_beta1, beta2, one_m_beta2, sqrt_bc2, eps, step_size):
    # p, g, m, v: (M,) flat views, one fused pass, updated in place
    # p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
    # p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
    for i in prange(p.size):
        gi = g[i]
        mi = m[i] * beta1 + one_m_beta1 * gi
        vi = v[i] * beta2 + one_m_beta2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step_size * (mi / (math.sqrt(vi) / sqrt_bc2 + eps))


def adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, copy=None):
    """One torch.optim.AdamW step, in place on p, m, v (all the same shape).

    p -= lr * wd * p                       decoupled weight decay, before the Adam update
    m = beta1 m + (1 - beta1) g ;  v = beta2 v + (1 - beta2) g^2
    p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    copy: None, or a uint16 array that receives the new weight's bf16 bits (adamw_step_bf16)."""
    if copy is not None:
        return adamw_step_bf16(p, g, m, v, copy, lr, beta1, beta2, eps, weight_decay, step)
    if not (p.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous):
        # ravel() of a strided array is a copy and the update would be lost: the reference
        # updates any layout in place
        return reference.adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step)
    _, g, _, _ = _floats("adamw_step", p=p, g=g, m=m, v=v)
    for name, a in (("g", g), ("m", m), ("v", v)):
        _shape("adamw_step", name, a, p.shape)
    dt = p.dtype.type
    lr, beta1, beta2 = float(lr), float(beta1), float(beta2)   # NumPy scalars would be float64 in numba
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    _adamw_step(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1),
                dt(1.0 - lr * float(weight_decay)), dt(beta1), dt(1.0 - beta1), dt(beta2),
                dt(1.0 - beta2), dt(math.sqrt(bc2)), dt(eps), dt(lr / bc1))


# ----------------------------------------------------------------------------- compile everything
def warmup(verbose=True):
    """Compile (or load from the cache) every kernel for float32 and float64; returns seconds."""
    t0 = time.perf_counter()
    if verbose:
        print("numba_cpu: compiling kernels (first run only, cached afterwards) ...", flush=True)
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        x = rng.standard_normal((3, 5)).astype(dt)
        w = np.ones(5, dtype=dt)
        ids = np.array([0, 2, 0])
        y, mean, rstd = layernorm_forward(x, w, w)
        layernorm_backward(x, x, w, mean, rstd)
        softmax_backward(x, softmax_forward(x))
        log_softmax_backward(x, log_softmax_forward(x))
        losses, lse = cross_entropy_forward(x, ids)
        cross_entropy_backward(x, ids, lse, 1.0)
        gelu_backward(x, gelu_forward(x))
        embedding_backward(x, ids, 4)
        for keep in (np.ones_like(x), np.ones(x.shape, np.bool_)):     # a float mask, functional's bool one
            dropout_backward(dropout_forward(x, keep, 0.1), keep, 0.1)
        keep_mask(rng, 9, 0.1)                              # dropout's mask (no float arithmetic)
        adamw_step(x.copy(), x, np.zeros_like(x), np.zeros_like(x), 1e-3, 0.9, 0.95, 1e-8, 0.1, 1)
        q = rng.standard_normal((1, 1, 3, 2)).astype(dt)
        out, att = attention_forward(q, q, q)
        attention_backward(out, q, q, q, att)
        embedding_backward_into(x, ids, np.zeros((4, 5), dt), np.zeros(0, np.int64))
    x = rng.standard_normal(7).astype(np.float32)           # bf16 autocast's kernels
    adamw_step_bf16(x.copy(), x, np.zeros_like(x), np.zeros_like(x), to_bf16(x), 1e-3, 0.9, 0.95, 1e-8, 0.1, 1)
    t = np.zeros((3, 4), np.float32)                        # the long GEMMs' two destinations
    transpose_into(t, np.zeros((4, 6), np.float32)[:, :3])
    transpose_into(t, np.zeros((4, 3), np.float32))
    if platform.machine() in ("x86_64", "AMD64"):          # our own bf16 GEMM's loops (any x86-64)
        bits = np.zeros((3, 4), np.uint16)
        bf16_avx512.gemm_bf16(bits, bits, trans_b=True, kernel="portable")
    seconds = time.perf_counter() - t0
    if verbose:
        print(f"numba_cpu: kernels ready in {seconds:.1f} s", flush=True)
    return seconds


# ----------------------------------------------------------------------------- bfloat16
@njit(inline="always")
def _bf16_bits(x):                             # float32 -> uint16 bits, round to nearest even
    u = np.uint32(_f32_bits(x))
    if (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((u >> np.uint32(16)) | np.uint32(0x0040))       # NaN stays a quiet NaN
    return np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@njit(parallel=True, cache=True)
def _to_bf16(x, out):                          # x: (M,) float32  out: (M,) uint16
    for i in prange(x.size):
        out[i] = _bf16_bits(x[i])


def to_bf16(x, out=None):
    """float32 -> bf16 bits (uint16), round to nearest even, one parallel pass (reference.to_bf16).
    `out`: a uint16 array of x's shape to write into (a kept buffer), returned."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if out is None:
        out = np.empty(x.shape, dtype=np.uint16)
    else:
        reference._check_out("to_bf16", out, x.shape, np.uint16)
    _to_bf16(x.reshape(-1), out.reshape(-1))
    return out


transpose_into = bf16_mkl.transpose_into       # the tiled, parallel one, beside the GEMM that uses it


from_bf16 = reference.from_bf16                # a shift and a view: NumPy is already one pass
gemm_bf16 = precision.gemm                     # the bf16 GEMM the runtime chose: MKL, AVX512-BF16 or the twin


@njit(parallel=True, cache=True, fastmath=SAFE)
def _adamw_step_bf16(p, g, m, v, pb, decay, beta1, one_m_beta1, beta2, one_m_beta2, sqrt_bc2, eps,
                     step_size):
    # _adamw_step, and the bf16 copy of the new weight written from the register
    for i in prange(p.size):
        gi = g[i]
        mi = m[i] * beta1 + one_m_beta1 * gi
        vi = v[i] * beta2 + one_m_beta2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        pi = p[i] * decay - step_size * (mi / (math.sqrt(vi) / sqrt_bc2 + eps))
        p[i] = pi
        pb[i] = _bf16_bits(pi)


def adamw_step_bf16(p, g, m, v, pb, lr, beta1, beta2, eps, weight_decay, step):
    """adamw_step, and pb = to_bf16(p) of the updated weight, in the same pass."""
    if not (p.dtype == np.float32 and pb.dtype == np.uint16 and pb.shape == p.shape
            and p.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous
            and pb.flags.c_contiguous):
        return reference.adamw_step_bf16(p, g, m, v, pb, lr, beta1, beta2, eps, weight_decay, step)
    _, g, _, _ = _floats("adamw_step_bf16", p=p, g=g, m=m, v=v)
    for name, a in (("g", g), ("m", m), ("v", v)):
        _shape("adamw_step_bf16", name, a, p.shape)
    dt = np.float32
    lr, beta1, beta2 = float(lr), float(beta1), float(beta2)
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    _adamw_step_bf16(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), pb.reshape(-1),
                     dt(1.0 - lr * float(weight_decay)), dt(beta1), dt(1.0 - beta1), dt(beta2),
                     dt(1.0 - beta2), dt(math.sqrt(bc2)), dt(eps), dt(lr / bc1))


# ----------------------------------------------------------------------------- embedding, kept buffer
@njit(parallel=True, cache=True, fastmath=SAFE)
def _zero_rows(dW, rows):                      # dW: (V, C)  rows: (R,) distinct
    for r in prange(rows.size):
        dW[rows[r], :] = 0.0


def embedding_backward_into(dout, ids, dW, stale_rows):
    """embedding_backward into a kept (V, C) buffer, nonzero only in stale_rows (reference.py)."""
    (dout,) = _floats("embedding_backward_into", dout=dout)
    N, C = dout.shape
    ids = _indices("embedding_backward_into", "ids", ids, N, dW.shape[0])
    _shape("embedding_backward_into", "dW", dW, (dW.shape[0], C))
    _zero_rows(dW, np.ascontiguousarray(stale_rows, dtype=np.int64))
    _embedding_backward(dout, ids, dW)         # the same column-blocked scatter-add
    return np.unique(ids)


# ----------------------------------------------------------------------------- linear
def linear_forward(x, w, b=None, out=None):    # x: (N, in)  w: (out, in)  b: (out,)  out: (N, out)
    """y = x w^T + b (into out, a kept buffer, when given). float32 operands: through matmul
    above (OpenBLAS, one thread per piece). bf16 bits (uint16, autocast's copies): the bf16 GEMM
    the runtime chose (precision.gemm: MKL, our AVX512-BF16 kernel or the twin), float32 out."""
    if x.dtype == np.uint16:
        y = precision.gemm(x, w, trans_b=True, out=out)     # bf16 in, float32 accumulation and out
    else:
        y = matmul(x, w.T, out=out)
    if b is not None:
        y += b
    return y


def linear_backward(dy, x, w, need_dx=True, need_dw=True):   # dy: (N, out)
    """dx = dy w (N, in), dW = dy^T x (out, in), each None when not needed, for the operands
    linear_forward multiplied: float32, or bf16 bits (then dy is rounded to bf16 too, into a
    scratch buffer). dW is a fresh array: the parameter's .grad until zero_grad() drops it."""
    dw = np.empty(w.shape, dy.dtype) if need_dw else None
    if x.dtype == np.uint16:                     # the same two products, bf16 in, float32 out
        gb = to_bf16(dy, out=SCRATCH.take_or_new("dy bf16", dy.shape, np.uint16))
        dx = precision.gemm(gb, w) if need_dx else None
        if need_dw:
            precision.gemm(gb, x, trans_a=True, out=dw)
    else:
        dx = matmul(dy, w) if need_dx else None
        if need_dw:
            matmul(dy.T, x, out=dw)
    return dx, dw
