"""The fused layer ops (import as F): one forward and one analytic backward each.

Composing softmax or layer norm from tiny ops would work, but it would keep a dozen
intermediate arrays alive and walk them all again in backward. Here each layer is one
Function whose backward is the derivative written out once (the math is in
kernels/reference.py, next to the code that computes it). `kernels.K` is the active kernel
module, reference.py or numba_cpu.py: each `kernels.K.name(...)` is a function of both, with
the same parameters, arrays in and out (GEMM library and thread split are the kernels' own).
What lives across steps (Linear output buffers, the operands' low-precision copies, the
embedding's gradient buffer) is the weight's `workspace` (workspace.py), passed as arrays.
"""
import numpy as np

from . import kernels, workspace
from .tensor import Function, Tensor, _axis, default_rng


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
        y2 = kernels.K.softmax_forward(x2)             # (N, C)
        ctx.save_for_backward(y2)
        ctx.axis, ctx.shape = axis, shape
        return _unrows(y2, shape, axis)

    def backward(ctx, grad):                   # dx = y * (dy - sum(dy * y))
        y2, = ctx.saved
        dy2, _ = _rows(grad, ctx.axis)
        return _unrows(kernels.K.softmax_backward(dy2, y2), ctx.shape, ctx.axis)


def softmax(x, axis=-1, *, dim=None):
    return _op(Softmax).apply(x, axis=_axis(axis, dim))


class LogSoftmax(Function):
    def forward(ctx, x, axis=-1):
        x2, shape = _rows(x, axis)
        y2 = kernels.K.log_softmax_forward(x2)
        ctx.save_for_backward(y2)
        ctx.axis, ctx.shape = axis, shape
        return _unrows(y2, shape, axis)

    def backward(ctx, grad):                   # dx = dy - softmax * sum(dy)
        y2, = ctx.saved
        dy2, _ = _rows(grad, ctx.axis)
        return _unrows(kernels.K.log_softmax_backward(dy2, y2), ctx.shape, ctx.axis)


def log_softmax(x, axis=-1, *, dim=None):
    return _op(LogSoftmax).apply(x, axis=_axis(axis, dim))


# ----------------------------------------------------------------------------- layer norm
class LayerNorm(Function):
    def forward(ctx, x, w, b, eps=1e-5):       # x: (..., C)  w, b: (C,)
        C = x.shape[-1]
        x2 = np.ascontiguousarray(x).reshape(-1, C)            # (N, C)
        y2, mean, rstd = kernels.K.layernorm_forward(x2, w, b, eps)
        ctx.save_for_backward(x2, w, mean, rstd)
        return y2.reshape(x.shape)

    def backward(ctx, grad):                   # forward was y = (x - mean) * rstd * w + b
        x2, w, mean, rstd = ctx.saved
        dy2 = np.ascontiguousarray(grad).reshape(x2.shape)
        dx2, dw, db = kernels.K.layernorm_backward(dy2, x2, w, mean, rstd, params=any(ctx.needs_input_grad[1:]))
        return dx2.reshape(grad.shape), dw, db     # dw, db None when w and b are frozen


def layer_norm(x, weight, bias, eps=1e-5):
    """PyTorch's layer norm over the last axis (biased variance), y = xhat * weight + bias."""
    return _op(LayerNorm).apply(x, weight, bias, eps=eps)


# ----------------------------------------------------------------------------- GELU
class GELU(Function):
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return kernels.K.gelu_forward(x)

    def backward(ctx, grad):
        x, = ctx.saved
        return kernels.K.gelu_backward(grad, x)


def gelu(x):
    """GELU, tanh approximation (the book's): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return _op(GELU).apply(x)


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
        losses, lse = kernels.K.cross_entropy_forward(z, t, ignore_index)
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
            dz = kernels.K.cross_entropy_backward(z, t, lse, 1.0, ctx.ignore_index)   # head's backward ran
            dz *= grad.reshape(-1, 1)
        else:
            scale = float(grad) / (ctx.count if ctx.reduction == "mean" and ctx.count else 1)
            dz = kernels.K.cross_entropy_backward(z, t, lse, scale, ctx.ignore_index)
        return dz.reshape(ctx.shape), None


def cross_entropy(logits, targets, ignore_index=-100, reduction="mean"):
    """Softmax cross-entropy of logits (..., V) against integer targets (...), one fused op.
    Log-sum-exp keeps it exact for logits of any magnitude."""
    if not isinstance(targets, Tensor):
        targets = Tensor(np.asarray(targets))
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    return _op(CrossEntropy).apply(logits, targets, ignore_index=ignore_index, reduction=reduction)


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
        ids, = ctx.saved                       # dW[ids[n]] += dy[n]
        g2 = np.ascontiguousarray(grad).reshape(-1, grad.shape[-1])       # (N, C)
        ws = ctx.parents[0].workspace          # the weight's gradient buffer (workspace.py), or None
        dw, stale = (None, None) if ws is None else ws.embedding_grad((ctx.V, g2.shape[1]), g2.dtype)
        if dw is None:                         # a fresh (V, C) array
            return kernels.K.embedding_backward(g2, ids.reshape(-1), ctx.V), None
        ws.grad_rows = kernels.K.embedding_backward_into(g2, ids.reshape(-1), dw, stale)   # zero stale rows, add
        return dw, None                        # (V, C)


def embedding(weight, ids):
    if not isinstance(ids, Tensor):
        ids = Tensor(np.asarray(ids))
    return _op(Embedding).apply(weight, ids)


# ----------------------------------------------------------------------------- linear
class Linear(Function):
    def forward(ctx, x, w, b=None):            # x: (..., in)  w: (out, in)  b: (out,)
        x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])  # (N, in)
        # the operands as the product takes them (under autocast: their copies), the output buffer
        x2, w, out = workspace.linear_operands(ctx.parents[0], x2, ctx.parents[1], w)
        y2 = kernels.K.linear_forward(x2, w, b, out=out)       # y = x W^T + b   (N, out)
        ctx.save_for_backward(x2, w)           # the operands as the product used them
        ctx.in_shape = x.shape
        return y2.reshape(x.shape[:-1] + (w.shape[0],))

    def backward(ctx, grad):                   # y = x W^T + b
        x2, w = ctx.saved
        g2 = np.ascontiguousarray(grad).reshape(-1, w.shape[0])   # (N, out)
        dx, dw = kernels.K.linear_backward(g2, x2, w, *ctx.needs_input_grad[:2])   # dx = dy W, dW = dy^T x
        dx = None if dx is None else dx.reshape(ctx.in_shape)
        if len(ctx.needs_input_grad) == 3:
            db = g2.sum(axis=0) if ctx.needs_input_grad[2] else None   # db = sum of dy over rows
            return dx, dw, db
        return dx, dw


def linear(x, weight, bias=None):
    """y = x @ weight.T + bias, weight laid out (out_features, in_features) as PyTorch."""
    if bias is None:
        return _op(Linear).apply(x, weight)
    return _op(Linear).apply(x, weight, bias)


# ----------------------------------------------------------------------------- dropout
class Dropout(Function):
    def forward(ctx, x, keep, p):              # keep: 0/1 mask of x's shape
        ctx.save_for_backward(keep)
        ctx.p = p
        return kernels.K.dropout_forward(x, keep, p)

    def backward(ctx, grad):                   # the same mask, the same 1/(1-p)
        keep, = ctx.saved
        return kernels.K.dropout_backward(grad, keep, ctx.p), None


def _keep_mask(shape, p, rng):
    """True where U[0, 1) >= p: rng.random(shape, float32) >= p (kernels' keep_mask; the
    numba one computes the very same bits, in several threads for a big mask)."""
    return kernels.K.keep_mask(default_rng() if rng is None else rng, tuple(shape), p)


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
        # q, k, v: views of the projections' outputs (or of a KV cache), read in place, not copied
        out, att = kernels.K.attention_forward(q, k, v, causal, keep, p)
        ctx.save_for_backward(q, k, v, att, keep)
        ctx.p = p
        return out                                              # (B, H, Tq, D)

    def backward(ctx, grad):
        q, k, v, att, keep = ctx.saved
        dq, dk, dv = kernels.K.attention_backward(np.ascontiguousarray(grad), q, k, v, att, keep, ctx.p)
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
        return _op(Attention).apply(q, k, v, Tensor(keep), causal=causal, p=float(dropout_p))
    return _op(Attention).apply(q, k, v, causal=causal)


# ----------------------------------------------------------------------------- replacing an op
_in_place_of = {}     # an op above -> the Function subclass that runs instead of it (use_op)


def _op(cls):
    """The class a call site above applies: cls itself, or what use_op put in its place."""
    return _in_place_of.get(cls, cls)


class use_op:
    """`with use_op(MyLayerNorm):` the op named cls.__name__ (LayerNorm, GELU, Softmax, Linear,
    ...) runs as cls, your Function subclass with its own forward and backward: the call sites
    above apply _op(LayerNorm), not LayerNorm, and this registry is what they read (explain
    --use-op). The engine's class comes back on leaving, also after an error."""

    def __init__(self, cls):
        engine = REPLACEABLE.get(getattr(cls, "__name__", None))
        if engine is None or not (isinstance(cls, type) and issubclass(cls, Function)):
            raise ValueError(f"use_op: {cls!r} must be a Function subclass named after one of "
                             f"{', '.join(REPLACEABLE)}")
        self.engine, self.cls, self.previous = engine, cls, None

    def __enter__(self):
        self.previous = _in_place_of.get(self.engine)
        _in_place_of[self.engine] = self.cls
        return self.cls

    def __exit__(self, *exc):
        if self.previous is None:
            del _in_place_of[self.engine]
        else:
            _in_place_of[self.engine] = self.previous
        return False


REPLACEABLE = {c.__name__: c for c in (Softmax, LogSoftmax, LayerNorm, GELU, CrossEntropy, Embedding, Linear,
                                       Attention)}   # what use_op can replace, by name
