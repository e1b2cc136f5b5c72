"""Plain-NumPy kernels: the readable specification of every fused op.

Each layer is a `*_forward` / `*_backward` pair, as in llm.c. The forward returns
what the backward needs (mean, rstd, probabilities, log-sum-exp), the backward
quotes the forward line it inverts. `numba_cpu.py` has the same functions with the
same signatures, compiled; `tinygrad_gpt.kernels` picks one of the two.

Every function works for float32 and float64 alike and never changes the dtype:
constants are Python floats, which NumPy does not let upcast an array.

Letters in the shape comments: N rows, C channels, V vocabulary,
B batch, H heads, T time, D head size.
"""
import math

import numpy as np

from .buffers import SCRATCH

GELU_C = 0.7978845608028654  # sqrt(2 / pi), a Python float so float32 stays float32


# ----------------------------------------------------------------------------- layer norm
def layernorm_forward(x, w, b, eps=1e-5):     # x: (N, C)  w, b: (C,)
    mean = x.mean(axis=1)                      # (N,)
    xc = x - mean[:, None]                     # (N, C)
    var = (xc * xc).mean(axis=1)               # (N,) biased, as PyTorch
    rstd = 1.0 / np.sqrt(var + eps)            # (N,)
    xhat = xc * rstd[:, None]                  # (N, C)
    y = xhat * w + b                           # (N, C)
    return y, mean, rstd


def layernorm_backward(dy, x, w, mean, rstd, params=True):  # dy, x: (N, C)
    # forward: xhat = (x - mean) * rstd ; y = xhat * w + b
    xhat = (x - mean[:, None]) * rstd[:, None]               # (N, C)
    dw = (dy * xhat).sum(axis=0) if params else None         # (C,)  params=False: w, b frozen
    db = dy.sum(axis=0) if params else None                  # (C,)
    dxhat = dy * w                                           # (N, C)
    # d/dx of (x - mean) * rstd, where mean and rstd depend on every x of the row:
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dx = rstd[:, None] * (dxhat - dxhat.mean(axis=1, keepdims=True)
                          - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
    return dx, dw, db


# ----------------------------------------------------------------------------- GELU (tanh form)
def gelu_forward(x):                           # x: any shape
    # y = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
    return 0.5 * x * (1.0 + np.tanh(GELU_C * (x + 0.044715 * x * x * x)))


def gelu_backward(dy, x):                      # dy, x: same shape
    u = GELU_C * (x + 0.044715 * x * x * x)
    t = np.tanh(u)
    # dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) du/dx,  du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    dudx = GELU_C * (1.0 + 0.134145 * x * x)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dudx)


# ----------------------------------------------------------------------------- softmax over the last axis
def softmax_forward(x):                        # x: (N, C)
    z = x - x.max(axis=1, keepdims=True)       # shift by the max: exp never overflows
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)    # (N, C)


def softmax_backward(dy, y):                   # forward: y_i = exp(x_i) / sum_j exp(x_j)
    # dx_i = y_i * (dy_i - sum_j dy_j y_j)     (the Jacobian diag(y) - y y^T applied to dy)
    return y * (dy - (dy * y).sum(axis=1, keepdims=True))


def log_softmax_forward(x):                    # x: (N, C)
    m = x.max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(x - m).sum(axis=1, keepdims=True))   # log-sum-exp, (N, 1)
    return x - lse                             # (N, C)


def log_softmax_backward(dy, y):               # forward: y = x - lse(x)
    # dx_i = dy_i - softmax_i * sum_j dy_j,  softmax = exp(y)
    return dy - np.exp(y) * dy.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- cross-entropy
def cross_entropy_forward(logits, targets, ignore_index=-100):
    """logits: (N, V) float, targets: (N,) int. Returns (losses (N,), lse (N,)).

    loss_n = lse(logits_n) - logits_n[target_n], 0 where target_n == ignore_index.
    """
    m = logits.max(axis=1)                                           # (N,)
    lse = m + np.log(np.exp(logits - m[:, None]).sum(axis=1))        # (N,)
    valid = targets != ignore_index                                  # (N,)
    safe = np.where(valid, targets, 0)
    picked = logits[np.arange(logits.shape[0]), safe]                # (N,)
    losses = np.where(valid, lse - picked, 0.0).astype(logits.dtype)
    return losses, lse


def cross_entropy_backward(logits, targets, lse, scale, ignore_index=-100):
    """d(scale * sum_n loss_n)/dlogits = scale * (softmax(logits_n) - onehot(target_n)), rows
    with an ignored target get 0. `scale` is dloss / (number of valid rows) for a mean."""
    dlogits = np.exp(logits - lse[:, None])                          # softmax, (N, V)
    valid = targets != ignore_index
    rows = np.flatnonzero(valid)
    dlogits[rows, targets[rows]] -= 1.0                              # minus the one-hot
    dlogits *= np.where(valid, scale, 0.0).astype(logits.dtype)[:, None]   # ignored rows -> 0
    return dlogits


# ----------------------------------------------------------------------------- causal attention
def attention_forward(q, k, v, causal=True, keep=None, p=0.0):
    """q: (B, H, Tq, D), k, v: (B, H, Tk, D). keep: None or a 0/1 mask (B, H, Tq, Tk) for
    dropout on the attention weights, scaled by 1/(1-p). Returns (out (B, H, Tq, D),
    att (B, H, Tq, Tk)), att being the softmax probabilities before dropout (what the
    backward needs).

    Causal: the queries are the last Tq of the Tk positions (Tq == Tk in training; Tq < Tk
    when the keys of earlier positions come from a KV cache), so query i sits at position
    Tk - Tq + i and sees the keys j <= Tk - Tq + i."""
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D)
    s = (q @ k.swapaxes(-1, -2)) * scale                  # (B, H, Tq, Tk) scores
    if causal:
        Tq, Tk = q.shape[-2], k.shape[-2]
        if Tk < Tq:
            raise ValueError(f"attention_forward: causal attention needs at least as many keys as "
                             f"queries (the queries are the last positions), found q {q.shape} "
                             f"and k {k.shape}")
        future = np.triu(np.ones((Tq, Tk), dtype=bool), Tk - Tq + 1)   # j > Tk - Tq + i
        s = np.where(future, -np.inf, s)
    s = s - s.max(axis=-1, keepdims=True)
    att = np.exp(s)
    att /= att.sum(axis=-1, keepdims=True)                # (B, H, Tq, Tk)
    a = att if keep is None else att * keep * (1.0 / (1.0 - p))
    out = a @ v                                           # (B, H, Tq, D)
    return out.astype(q.dtype, copy=False), att.astype(q.dtype, copy=False)


def attention_backward(dout, q, k, v, att, keep=None, p=0.0):
    """Inverts out = dropout(softmax(q k^T / sqrt(D) + mask)) @ v. Returns dq, dk, dv."""
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D)
    drop = None if keep is None else keep * att.dtype.type(1.0 / (1.0 - p))   # keep may be bool
    a = att if drop is None else att * drop               # what multiplied v
    dv = a.swapaxes(-1, -2) @ dout                        # out = a @ v      -> dv = a^T dout
    da = dout @ v.swapaxes(-1, -2)                        #                  -> da = dout v^T
    datt = da if drop is None else da * drop              # a = att * drop   -> datt = da * drop
    # att = softmax(s): ds = att * (datt - sum(datt * att)); masked entries have att = 0
    ds = att * (datt - (datt * att).sum(axis=-1, keepdims=True))
    ds = ds * scale                                       # s = q k^T * scale
    dq = ds @ k                                           # (B, H, Tq, D)
    dk = ds.swapaxes(-1, -2) @ q                          # (B, H, Tk, D)
    dt = q.dtype
    return dq.astype(dt, copy=False), dk.astype(dt, copy=False), dv.astype(dt, copy=False)


# ----------------------------------------------------------------------------- embedding
def embedding_backward(dout, ids, num_embeddings):
    """dout: (N, C), ids: (N,) int. Forward was out = W[ids]; a repeated id receives the sum."""
    dW = np.zeros((num_embeddings, dout.shape[1]), dtype=dout.dtype)
    np.add.at(dW, ids, dout)                              # scatter-add: right for repeated ids
    return dW


# ----------------------------------------------------------------------------- dropout
def dropout_forward(x, keep, p):
    """Inverted dropout: y = x * keep / (1 - p), keep a 0/1 mask of x's shape."""
    return x * keep * (1.0 / (1.0 - p))


def dropout_backward(dy, keep, p):
    return dy * keep * (1.0 / (1.0 - p))


def keep_mask(rng, shape, p):
    """Dropout's keep mask, bool: True where a uniform draw in [0, 1) is >= p, so each element
    is kept with probability 1 - p. The draws are rng.random(shape, float32) in C order, and rng
    ends where that call leaves it; numba_cpu.keep_mask computes the same bits (for numpy's
    default generator, PCG64) without making the float32 array. One byte an element: the masks
    are saved for backward (37 of them in a 124M step: 29 MB as bool, 115 MB as float32)."""
    return rng.random(shape, dtype=np.float32) >= np.float32(p)


# ----------------------------------------------------------------------------- AdamW
def adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, copy=None):
    """One torch.optim.AdamW step, in place on p, m, v (all the same shape).

    p -= lr * wd * p                       decoupled weight decay, before the Adam update
    m = beta1 m + (1 - beta1) g ;  v = beta2 v + (1 - beta2) g^2
    p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    copy: None, or a uint16 array of p's shape that receives the new weight's bf16 bits in the
    same pass (autocast's copy, kept by AdamW: adamw_step_bf16)."""
    if copy is not None:
        return adamw_step_bf16(p, g, m, v, copy, lr, beta1, beta2, eps, weight_decay, step)
    p *= 1.0 - lr * weight_decay
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * (g * g)
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    denom = np.sqrt(v) / math.sqrt(bc2) + eps
    p -= (lr / bc1) * (m / denom)


# ----------------------------------------------------------------------------- bfloat16
# bf16 is the top half of a float32: same sign and 8-bit exponent, 7 mantissa bits. We store
# it as uint16 bits (no extra dependency); widening is exact, narrowing rounds.
def to_bf16(x, out=None):
    """float32 -> bf16 bits (uint16), round to nearest, ties to even; NaN stays a (quiet) NaN,
    +-inf stays inf, a float32 above the largest bf16 rounds to inf (as IEEE rounding does).
    `out`: a uint16 array of x's shape to write into (a kept buffer), returned."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    lsb = (u >> 16) & 1                                   # the last bit kept: ties go to where it is 0
    rounded = ((u + 0x7FFF + lsb) >> 16).astype(np.uint16)
    quiet_nan = ((u >> 16) | 0x0040).astype(np.uint16)    # keep sign and payload top, set the quiet bit
    bits = np.where((u & 0x7FFFFFFF) > 0x7F800000, quiet_nan, rounded)
    return _into(out, bits, "to_bf16")


def _into(out, result, name):
    """result, or result copied into the caller's `out` (a kept buffer the fast twin writes
    in place; here the copy keeps the formula above readable)."""
    if out is None:
        return result
    _check_out(name, out, result.shape, result.dtype)
    out[...] = result
    return out


def _check_out(name, out, shape, dtype):
    if not isinstance(out, np.ndarray) or out.shape != tuple(shape) or out.dtype != dtype \
            or not out.flags.c_contiguous:
        raise ValueError(f"{name}: out must be a C-contiguous {np.dtype(dtype)} array of shape "
                         f"{tuple(shape)}, got {getattr(out, 'dtype', type(out).__name__)} "
                         f"{getattr(out, 'shape', '')}")


def from_bf16(b):
    """bf16 bits (uint16) -> float32, exact: the bits become the top half."""
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def transpose_into(src, dst):
    """dst[...] = src.T: dst may be a strided view (a block of columns of a bigger array)."""
    np.copyto(dst, src.T)


def matmul(a, b, out=None):
    """a @ b (into out): the twin of numba_cpu.matmul, which computes it with OpenBLAS in one
    thread for each piece, without waking OpenBLAS's own workers (kernels/threads.py says why
    and where the last bits can differ)."""
    return np.matmul(a, b, out=out)


def gemm_bf16(a, b, trans_a=False, trans_b=False, out=None):
    """out (M, N) float32 = op(a) @ op(b) for bf16 bits a, b: the spec of kernels/bf16_mkl.py.
    Every product of two bf16 numbers is exact in float32; only the sum order differs."""
    A = from_bf16(a)
    B = from_bf16(b)
    A = A.T if trans_a else A                             # (M, K)
    B = B.T if trans_b else B                             # (K, N)
    if out is None:
        return np.matmul(A, B)
    np.matmul(A, B, out=out)
    return out


def adamw_step_bf16(p, g, m, v, pb, lr, beta1, beta2, eps, weight_decay, step):
    """adamw_step, and pb = to_bf16(p) of the updated weight: autocast's bf16 copy, written in
    the same pass (once per optimizer step, not once per GEMM)."""
    adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step)
    pb[...] = to_bf16(p)


def embedding_backward_into(dout, ids, dW, stale_rows):
    """embedding_backward into a kept (V, C) buffer: dW holds a previous step's gradient, which
    is nonzero only in stale_rows; zero those, scatter-add dout. Touches O(N) rows, not V.
    Returns the rows now nonzero (the next call's stale_rows)."""
    dW[stale_rows] = 0.0
    np.add.at(dW, ids, dout)                              # scatter-add, as embedding_backward
    return np.unique(ids)


# ----------------------------------------------------------------------------- linear
def linear_forward(x, w, b=None, out=None):    # x: (N, in)  w: (out, in)  b: (out,)  out: (N, out)
    """y = x w^T + b (into out when given). Under autocast x and w are bf16 bits (uint16):
    the same product of the bf16 numbers, accumulated in float32 (gemm_bf16)."""
    if x.dtype == np.uint16:
        y = gemm_bf16(x, w, trans_b=True, out=out)           # (N, out) float32
    else:
        y = matmul(x, w.T, out=out)                          # (N, out), np.matmul
    if b is not None:
        y += b
    return y


def linear_backward(dy, x, w, need_dx=True, need_dw=True):   # dy: (N, out)
    # forward: y = x w^T + b   (db = dy summed over rows: functional.Linear, beside the call)
    if x.dtype == np.uint16:                   # bf16 operands: dy is rounded to bf16 as well
        dy = to_bf16(dy, out=SCRATCH.take_or_new("dy bf16", dy.shape, np.uint16))   # (a kept buffer)
        dx = gemm_bf16(dy, w) if need_dx else None           # (N, in)
        dw = gemm_bf16(dy, x, trans_a=True) if need_dw else None   # (out, in)
        return dx, dw
    dx = matmul(dy, w) if need_dx else None                  # (N, in)     dx = dy W
    dw = matmul(dy.T, x) if need_dw else None                # (out, in)   dW = dy^T x
    return dx, dw
