"""The fused layer ops (import as F): one forward and one analytic backward each.

Composing softmax or layer norm from tiny ops would work, but it would keep a dozen
intermediate arrays alive and walk them all again in backward. Here each layer is one
Function whose backward is the derivative written out once (the math is in
kernels/reference.py, next to the code that computes it). `K` is the active kernel backend.
"""
import sys
import weakref

import numpy as np

from . import amp
from .kernels import K
from .tensor import Function, Tensor, _axis, default_rng, is_grad_enabled


def _rows(x, axis):
    """View x with `axis` last, as a 2-D (rows, C) array the kernels understand."""
    x = np.moveaxis(x, axis, -1)
    return np.ascontiguousarray(x).reshape(-1, x.shape[-1]), x.shape


def _unrows(y2, shape, axis):
    return np.moveaxis(y2.reshape(shape), -1, axis)


# ----------------------------------------------------------------------------- softmax
class Softmax(Function):
    def forward(ctx, x, axis=-1):
        x2, shape = _rows(x, axis)             # (N, C)
        y2 = K.softmax_forward(x2)             # (N, C)
        ctx.save_for_backward(y2)
        ctx.axis, ctx.shape = axis, shape
        return _unrows(y2, shape, axis)

    def backward(ctx, grad):                   # dx = y * (dy - sum(dy * y))
        y2, = ctx.saved
        dy2, _ = _rows(grad, ctx.axis)
        return _unrows(K.softmax_backward(dy2, y2), ctx.shape, ctx.axis)


def softmax(x, axis=-1, *, dim=None):
    return Softmax.apply(x, axis=_axis(axis, dim))


class LogSoftmax(Function):
    def forward(ctx, x, axis=-1):
        x2, shape = _rows(x, axis)
        y2 = K.log_softmax_forward(x2)
        ctx.save_for_backward(y2)
        ctx.axis, ctx.shape = axis, shape
        return _unrows(y2, shape, axis)

    def backward(ctx, grad):                   # dx = dy - softmax * sum(dy)
        y2, = ctx.saved
        dy2, _ = _rows(grad, ctx.axis)
        return _unrows(K.log_softmax_backward(dy2, y2), ctx.shape, ctx.axis)


def log_softmax(x, axis=-1, *, dim=None):
    return LogSoftmax.apply(x, axis=_axis(axis, dim))


# ----------------------------------------------------------------------------- layer norm
class LayerNorm(Function):
    def forward(ctx, x, w, b, eps=1e-5):       # x: (..., C)  w, b: (C,)
        C = x.shape[-1]
        x2 = np.ascontiguousarray(x).reshape(-1, C)            # (N, C)
        y2, mean, rstd = K.layernorm_forward(x2, w, b, eps)
        ctx.save_for_backward(x2, w, mean, rstd)
        return y2.reshape(x.shape)

    def backward(ctx, grad):                   # forward was y = (x - mean) * rstd * w + b
        x2, w, mean, rstd = ctx.saved
        dy2 = np.ascontiguousarray(grad).reshape(x2.shape)
        dx2, dw, db = K.layernorm_backward(dy2, x2, w, mean, rstd)
        return dx2.reshape(grad.shape), dw, db


def layer_norm(x, weight, bias, eps=1e-5):
    """PyTorch's layer norm over the last axis (biased variance), y = xhat * weight + bias."""
    return LayerNorm.apply(x, weight, bias, eps=eps)


# ----------------------------------------------------------------------------- GELU
class GELU(Function):
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return K.gelu_forward(x)

    def backward(ctx, grad):
        x, = ctx.saved
        return K.gelu_backward(grad, x)


def gelu(x):
    """GELU, tanh approximation (the book's): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return GELU.apply(x)


# ----------------------------------------------------------------------------- cross-entropy
class CrossEntropy(Function):
    def forward(ctx, logits, targets, ignore_index=-100, reduction="mean"):
        V = logits.shape[-1]                                   # logits: (..., V)  targets: (...)
        if targets.shape != logits.shape[:-1]:
            raise ValueError(f"cross_entropy: targets have shape {targets.shape}, "
                             f"expected {logits.shape[:-1]} for logits of shape {logits.shape}")
        if not np.issubdtype(targets.dtype, np.integer):
            raise TypeError(f"cross_entropy: targets must be integer class ids, got {targets.dtype}")
        t = targets.reshape(-1).astype(np.int64, copy=False)   # (N,)
        bad = (t != ignore_index) & ((t < 0) | (t >= V))
        if bad.any():
            raise IndexError(f"cross_entropy: target {t[bad][0]} is out of range for {V} classes")
        z = np.ascontiguousarray(logits).reshape(-1, V)        # (N, V)
        losses, lse = K.cross_entropy_forward(z, t, ignore_index)
        ctx.save_for_backward(z, t, lse)
        ctx.shape, ctx.ignore_index, ctx.reduction = logits.shape, ignore_index, reduction
        ctx.count = int((t != ignore_index).sum())
        if reduction == "none":
            return losses.reshape(targets.shape)
        total = losses.sum(dtype=logits.dtype)
        if reduction == "sum":
            return np.asarray(total)
        # mean over the positions not ignored; 0/0 = nan when all are ignored, as PyTorch
        return np.asarray(total / ctx.count if ctx.count else np.nan, dtype=logits.dtype)

    def backward(ctx, grad):                   # d loss / d logits = softmax - onehot(target), per row
        z, t, lse = ctx.saved
        if ctx.reduction == "none":            # a fresh (N, V) array: 103 MB for GPT-2, freed once the
            dz = K.cross_entropy_backward(z, t, lse, 1.0, ctx.ignore_index)   # head's backward ran
            dz *= grad.reshape(-1, 1)
        else:
            scale = float(grad) / (ctx.count if ctx.reduction == "mean" and ctx.count else 1)
            dz = K.cross_entropy_backward(z, t, lse, scale, ctx.ignore_index)
        return dz.reshape(ctx.shape), None


def cross_entropy(logits, targets, ignore_index=-100, reduction="mean"):
    """Softmax cross-entropy of logits (..., V) against integer targets (...), one fused op.
    Log-sum-exp keeps it exact for logits of any magnitude."""
    if not isinstance(targets, Tensor):
        targets = Tensor(np.asarray(targets))
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    return CrossEntropy.apply(logits, targets, ignore_index=ignore_index, reduction=reduction)


# ----------------------------------------------------------------------------- embedding
class Embedding(Function):
    def forward(ctx, weight, ids):             # weight: (V, C)  ids: (...) int
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"embedding: ids must be integers, got {ids.dtype}")
        V = weight.shape[0]
        if ids.size and (ids.min() < 0 or ids.max() >= V):
            raise IndexError(f"embedding: id {ids.max() if ids.max() >= V else ids.min()} "
                             f"is out of range for {V} embeddings")
        ctx.save_for_backward(ids)
        ctx.V = V
        return weight[ids]                     # (..., C): a gather

    def backward(ctx, grad):                   # scatter-add: a repeated id receives the sum
        ids, = ctx.saved
        C = grad.shape[-1]
        g2, ids = np.ascontiguousarray(grad).reshape(-1, C), ids.reshape(-1)    # (N, C), (N,)
        kept = _embedding_grad_buffer(ctx.parents[0].data, g2.dtype)
        if kept is None:
            return K.embedding_backward(g2, ids, ctx.V), None
        kept[2] = K.embedding_backward_into(g2, ids, kept[1], kept[2])
        return kept[1], None


# weight array id -> [weakref to it, a kept (V, C) gradient buffer, its nonzero rows]. A fresh
# (V, C) array every step (154 MB for GPT-2) costs the kernel's page zeroing; the kept one
# only zeroes the rows the previous step wrote. Reused only while no one else holds it (it
# is not still some parameter's .grad, e.g. when gradients accumulate over micro-batches).
_embedding_grads = {}


def _embedding_grad_buffer(weight, dtype):
    key = (id(weight), np.dtype(dtype).str)
    kept = _embedding_grads.get(key)
    if kept is not None and kept[0]() is weight and sys.getrefcount(kept[1]) <= 2:  # the list + the call
        return kept
    if kept is not None and kept[0]() is weight:
        return None                            # still in use: this backward gets a fresh array
    kept = [weakref.ref(weight, lambda _r, d=_embedding_grads: d.pop(key, None)),   # d: alive at exit too
            np.zeros(weight.shape, dtype=dtype), np.zeros(0, dtype=np.int64)]
    _embedding_grads[key] = kept
    return kept


def embedding(weight, ids):
    if not isinstance(ids, Tensor):
        ids = Tensor(np.asarray(ids))
    return Embedding.apply(weight, ids)


# ----------------------------------------------------------------------------- linear
class Linear(Function):
    def forward(ctx, x, w, b=None):            # x: (..., in)  w: (out, in)  b: (out,)
        x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])  # (N, in)
        ctx.bf16 = amp.is_autocast_enabled() and x2.dtype == np.float32 and w.dtype == np.float32
        y2 = _kept_buffer(w, "y", (x2.shape[0], w.shape[0]), np.result_type(x2, w))   # (N, out)
        if ctx.bf16:                           # bf16 inputs, float32 accumulation and result
            xb = _kept_buffer(w, "x bf16", x2.shape, np.uint16)        # saved for backward
            x2, wb = amp.to_bf16(x2, out=xb), amp.weight_bf16(w)   # (N, in), (out, in) uint16 bits
            amp.gemm(x2, wb, trans_b=True, out=y2)             # (N, out) float32
            w = wb                             # backward multiplies the same bf16 numbers
        else:
            K.matmul(x2, w.T, out=y2)                          # (N, out), np.matmul (kernels/threads.py)
        if b is not None:
            y2 += b
        ctx.save_for_backward(x2, w)
        ctx.in_shape = x.shape
        return y2.reshape(x.shape[:-1] + (w.shape[0],))

    def backward(ctx, grad):                   # y = x W^T + b
        x2, w = ctx.saved
        g2 = np.ascontiguousarray(grad).reshape(-1, w.shape[0])   # (N, out)
        dw = None
        if ctx.needs_input_grad[1]:            # a fresh (out, in) array, the parameter's .grad until
            dw = np.empty(w.shape, g2.dtype)   # zero_grad() drops it (memory.py keeps its pages)
        if ctx.bf16:                           # the same two products, bf16 in, float32 out
            # one scratch per shape, not per layer: it is dead once this backward returns
            gb = amp.to_bf16(g2, out=_kept_buffer(_SCRATCH, ("dy bf16", g2.shape), g2.shape, np.uint16))
            dx = amp.gemm(gb, w).reshape(ctx.in_shape) if ctx.needs_input_grad[0] else None
            if dw is not None:
                amp.gemm(gb, x2, trans_a=True, out=dw)
        else:
            dx = K.matmul(g2, w).reshape(ctx.in_shape) if ctx.needs_input_grad[0] else None   # dx = dy W
            if dw is not None:
                K.matmul(g2.T, x2, out=dw)                         # dW = dy^T x   (out, in)
        if len(ctx.needs_input_grad) == 3:
            db = g2.sum(axis=0) if ctx.needs_input_grad[2] else None   # db = sum of dy over rows
            return dx, dw, db
        return dx, dw


# (id(owner array), tag) -> [weakref to the owner, a kept array]: an array a layer writes every
# step (Linear's output, its bf16 input), reused while nobody else holds it (not kept by the
# caller); otherwise the layer gets a fresh one. Linear's dW and cross-entropy's dlogits are not
# kept: a kept dW would hold its 0.6 GiB (GPT-2 124M) while the next forward's activations pile
# up, and a step's peak memory is there (benchmarks/RESULTS.md, "Gradients not kept between
# steps"). The embedding's gradient is (_embedding_grads): it saves zeroing all but the stale rows.
_kept = {}


def _kept_buffer(owner, tag, shape, dtype):
    key = (id(owner), tag)
    entry = _kept.get(key)
    if entry is not None and entry[0]() is owner:
        a = entry[1]
        if a.shape == tuple(shape) and a.dtype == dtype and sys.getrefcount(a) <= 3:   # entry, a, call
            return a
        if a.shape == tuple(shape) and a.dtype == dtype:
            return np.empty(shape, dtype=dtype)                # in use: a fresh one this time
    a = np.empty(shape, dtype=dtype)
    _kept[key] = [weakref.ref(owner, lambda _r, d=_kept: d.pop(key, None)), a]   # d: alive at exit too
    return a


_SCRATCH = np.empty(0)                         # the owner of buffers no single layer owns


def linear(x, weight, bias=None):
    """y = x @ weight.T + bias, weight laid out (out_features, in_features) as PyTorch."""
    if bias is None:
        return Linear.apply(x, weight)
    return Linear.apply(x, weight, bias)


# ----------------------------------------------------------------------------- dropout
class Dropout(Function):
    def forward(ctx, x, keep, p):              # keep: 0/1 mask of x's shape
        ctx.save_for_backward(keep)
        ctx.p = p
        return K.dropout_forward(x, keep, p)

    def backward(ctx, grad):                   # the same mask, the same 1/(1-p)
        keep, = ctx.saved
        return K.dropout_backward(grad, keep, ctx.p), None


def _keep_mask(shape, p, rng):
    """True where U[0, 1) >= p: rng.random(shape, float32) >= p (kernels' keep_mask; the
    numba one computes the very same bits, in several threads for a big mask)."""
    return K.keep_mask(default_rng() if rng is None else rng, tuple(shape), p)


def dropout(x, p=0.5, training=True, rng=None):
    """Inverted dropout: zero each element with probability p and scale the rest by 1/(1-p),
    so evaluation needs no rescaling. Identity when not training or p == 0."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    keep = _keep_mask(x.shape, p, rng)
    return Dropout.apply(x, Tensor(keep), p=float(p))


# ----------------------------------------------------------------------------- attention
class Attention(Function):
    def forward(ctx, q, k, v, keep=None, causal=True, p=0.0):  # q: (B, H, Tq, D)  k, v: (B, H, Tk, D)
        if is_grad_enabled() and any(ctx.needs_input_grad):   # kept for backward: contiguous
            q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
        # under no_grad, k and v may stay views of a KV cache: the kernels read them in place
        out, att = K.attention_forward(q, k, v, causal, keep, p)
        ctx.save_for_backward(q, k, v, att, keep)
        ctx.p = p
        return out                                              # (B, H, Tq, D)

    def backward(ctx, grad):
        q, k, v, att, keep = ctx.saved
        dq, dk, dv = K.attention_backward(np.ascontiguousarray(grad), q, k, v, att, keep, ctx.p)
        return dq, dk, dv, None


def scaled_dot_product_attention(q, k, v, causal=True, dropout_p=0.0, rng=None):
    """softmax(q k^T / sqrt(D), causal mask) @ v, q: (B, H, Tq, D), k, v: (B, H, Tk, D), with
    dropout on the attention weights (as the book's MultiHeadAttention). One op, one analytic
    backward. Causal with Tq < Tk (a KV cache's keys before the new queries): the queries are
    the last Tq positions, query i sees keys j <= Tk - Tq + i."""
    if q.shape[-1] != k.shape[-1] or k.shape != v.shape or q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit (B, H, T, D)")
    if causal and k.shape[-2] < q.shape[-2]:
        raise ValueError(f"attention: causal attention needs at least as many keys as queries, "
                         f"found q {q.shape} and k {k.shape}")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"attention dropout probability must be in [0, 1], got {dropout_p}")
    if dropout_p == 1.0:                       # every weight dropped: the output is zero
        return q * 0.0
    if dropout_p > 0.0:
        keep = _keep_mask(q.shape[:-1] + (k.shape[-2],), dropout_p, rng)
        return Attention.apply(q, k, v, Tensor(keep), causal=causal, p=float(dropout_p))
    return Attention.apply(q, k, v, causal=causal)
