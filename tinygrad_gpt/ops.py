"""The small ops: each forward with its backward directly underneath.

A backward receives d(loss)/d(output) and returns d(loss)/d(input) for each input, by the
chain rule. It may return a gradient in the broadcast shape; the engine sums it back to the
input's shape (tensor.unbroadcast). A backward never writes into the gradient it receives.
"""
import numpy as np

from . import kernels
from .tensor import Function


# ----------------------------------------------------------------------------- arithmetic
class Add(Function):
    def forward(ctx, a, b):                    # a, b: broadcastable
        return a + b

    def backward(ctx, grad):                   # d(a+b)/da = 1, d(a+b)/db = 1
        return grad, grad


class Sub(Function):
    def forward(ctx, a, b):
        return a - b

    def backward(ctx, grad):                   # d(a-b)/da = 1, d(a-b)/db = -1
        return grad, -grad


class Mul(Function):
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    def backward(ctx, grad):                   # d(a*b)/da = b, d(a*b)/db = a
        a, b = ctx.saved
        return (grad * b if ctx.needs_input_grad[0] else None,
                grad * a if ctx.needs_input_grad[1] else None)


class Div(Function):
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    def backward(ctx, grad):                   # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
        a, b = ctx.saved
        return (grad / b if ctx.needs_input_grad[0] else None,
                -grad * a / (b * b) if ctx.needs_input_grad[1] else None)


class Pow(Function):
    def forward(ctx, a, exponent):             # exponent: a Python float
        ctx.save_for_backward(a)
        ctx.exponent = exponent
        return a ** exponent

    def backward(ctx, grad):                   # d(a^n)/da = n a^(n-1)
        a, = ctx.saved
        n = ctx.exponent
        return grad * (n * a ** (n - 1.0))


class Neg(Function):
    def forward(ctx, a):
        return -a

    def backward(ctx, grad):
        return -grad


class MatMul(Function):
    def forward(ctx, a, b):                    # a: (..., n, k)  b: (..., k, m), batch dims broadcast
        ctx.save_for_backward(a, b)
        return kernels.K.matmul(a, b)                  # (..., n, m), np.matmul (kernels/threads.py)

    def backward(ctx, grad):                   # c = a @ b  ->  da = dc @ b^T, db = a^T @ dc
        a, b = ctx.saved
        # A 1-D operand is a row (a) or a column (b) vector; make it 2-D, then undo that.
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g = grad
        # b's axis first: a dot product's grad is 0-d, and the row axis goes before the last one
        if b.ndim == 1:
            g = g[..., None]                   # (..., n) -> (..., n, 1)
        if a.ndim == 1:
            g = g[..., None, :]                # (..., m) -> (..., 1, m)
        da = db = None
        if ctx.needs_input_grad[0]:
            da = kernels.K.matmul(g, np.swapaxes(b2, -1, -2))          # (..., n, k)
            if a.ndim == 1:
                da = da.squeeze(-2)
        if ctx.needs_input_grad[1]:
            db = kernels.K.matmul(np.swapaxes(a2, -1, -2), g)          # (..., k, m)
            if b.ndim == 1:
                db = db.squeeze(-1)
        return da, db                          # batch dims that broadcast are summed by the engine


# ----------------------------------------------------------------------------- reductions
def _expand_to(grad, shape, axis, keepdims):
    """Undo a reduction's shape: put the reduced axes back as size 1, then broadcast."""
    if axis is not None and not keepdims:
        axes = (axis,) if isinstance(axis, int) else axis
        grad = np.expand_dims(grad, tuple(ax % len(shape) for ax in axes))
    elif axis is None and not keepdims:
        grad = np.reshape(grad, (1,) * len(shape))
    return np.broadcast_to(grad, shape)


class Sum(Function):
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        return np.asarray(a.sum(axis=axis, keepdims=keepdims))

    def backward(ctx, grad):                   # every summed element gets the sum's gradient
        return _expand_to(grad, ctx.shape, ctx.axis, ctx.keepdims)


class Mean(Function):
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        out = np.asarray(a.mean(axis=axis, keepdims=keepdims))
        ctx.count = a.size // max(out.size, 1)
        return out

    def backward(ctx, grad):                   # mean = sum / count
        return _expand_to(grad / ctx.count, ctx.shape, ctx.axis, ctx.keepdims)


class Max(Function):
    def forward(ctx, a, axis=None, keepdims=False):
        out = np.asarray(a.max(axis=axis, keepdims=keepdims))
        ctx.save_for_backward(a, a.max(axis=axis, keepdims=True))
        ctx.axis, ctx.keepdims = axis, keepdims
        return out

    def backward(ctx, grad):                   # the gradient flows to the maximum; ties share it
        a, m = ctx.saved
        hit = (a == m).astype(a.dtype)
        hit /= hit.sum(axis=ctx.axis, keepdims=True)
        return _expand_to(grad, a.shape, ctx.axis, ctx.keepdims) * hit


# ----------------------------------------------------------------------------- shapes
class Reshape(Function):
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return a.reshape(shape)

    def backward(ctx, grad):
        return grad.reshape(ctx.shape)


class Permute(Function):
    def forward(ctx, a, axes):
        axes = tuple(ax % a.ndim for ax in axes)   # argsort of (0, -1, 1) is not the inverse of it
        ctx.axes = axes
        return np.transpose(a, axes)

    def backward(ctx, grad):                   # the inverse permutation
        return np.transpose(grad, np.argsort(ctx.axes))


def _is_basic(index):
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is None or i is Ellipsis for i in parts)


class GetItem(Function):
    def forward(ctx, a, index):
        ctx.shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
        return np.asarray(a[index])

    def backward(ctx, grad):                   # scatter the gradient back where it was read
        out = np.zeros(ctx.shape, dtype=ctx.dtype)
        if _is_basic(ctx.index):
            out[ctx.index] = grad              # a slice reads each element at most once
        else:
            np.add.at(out, ctx.index, grad)    # fancy indices may repeat: add, don't overwrite
        return out


class Concatenate(Function):
    def forward(ctx, *arrays, axis=0):
        ctx.axis = axis
        ctx.offsets = np.cumsum([x.shape[axis] for x in arrays])[:-1]
        return np.concatenate(arrays, axis=axis)

    def backward(ctx, grad):                   # each input gets its own slab of the gradient
        return tuple(np.split(grad, ctx.offsets, axis=ctx.axis))


class Cast(Function):
    def forward(ctx, a, dtype):
        ctx.dtype = a.dtype
        return a.astype(dtype)

    def backward(ctx, grad):                   # the identity, back in the input's dtype
        return grad.astype(ctx.dtype, copy=False)


# ----------------------------------------------------------------------------- elementwise
class Exp(Function):
    def forward(ctx, a):
        y = np.exp(a)
        ctx.save_for_backward(y)
        return y

    def backward(ctx, grad):                   # d(e^a)/da = e^a
        y, = ctx.saved
        return grad * y


class Log(Function):
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.log(a)

    def backward(ctx, grad):                   # d(log a)/da = 1/a
        a, = ctx.saved
        return grad / a


class Tanh(Function):
    def forward(ctx, a):
        y = np.tanh(a)
        ctx.save_for_backward(y)
        return y

    def backward(ctx, grad):                   # d(tanh a)/da = 1 - tanh(a)^2
        y, = ctx.saved
        return grad * (1.0 - y * y)


class Sqrt(Function):
    def forward(ctx, a):
        y = np.sqrt(a)
        ctx.save_for_backward(y)
        return y

    def backward(ctx, grad):                   # d(sqrt a)/da = 1 / (2 sqrt a)
        y, = ctx.saved
        return grad * (0.5 / y)


class Relu(Function):
    def forward(ctx, a):
        ctx.save_for_backward(a > 0)
        return np.maximum(a, a.dtype.type(0))

    def backward(ctx, grad):                   # d(max(a, 0))/da = 1 where a > 0, else 0
        positive, = ctx.saved
        return grad * positive


class MaskedFill(Function):
    def forward(ctx, a, mask, value):          # mask: bool, broadcastable to a
        ctx.mask = mask
        return np.where(mask, value, a).astype(a.dtype, copy=False)

    def backward(ctx, grad):                   # filled positions no longer depend on a
        return np.where(ctx.mask, 0.0, grad).astype(grad.dtype, copy=False)


# ----------------------------------------------------------------------------- Llama 3.2 / Qwen3 (the book's bonus models)
class Sin(Function):
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.sin(a)

    def backward(ctx, grad):                   # d(sin a)/da = cos a
        a, = ctx.saved
        return grad * np.cos(a)


class Cos(Function):
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.cos(a)

    def backward(ctx, grad):                   # d(cos a)/da = -sin a
        a, = ctx.saved
        return -grad * np.sin(a)


class Abs(Function):
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.abs(a)

    def backward(ctx, grad):                   # d|a|/da = sign(a) (0 at 0, as PyTorch)
        a, = ctx.saved
        return grad * np.sign(a)


class Rsqrt(Function):
    def forward(ctx, a):
        y = (1.0 / np.sqrt(a)).astype(a.dtype, copy=False)
        ctx.save_for_backward(y)
        return y

    def backward(ctx, grad):                   # d(a^-1/2)/da = -1/2 a^-3/2 = -y^3 / 2
        y, = ctx.saved
        return grad * (-0.5 * y * y * y)


class PowOfBase(Function):
    def forward(ctx, a, base):                 # base ** a, base a Python number (RoPE's theta ** (2i / D))
        y = np.power(a.dtype.type(base), a)
        ctx.save_for_backward(y)
        ctx.log_base = np.log(base)
        return y

    def backward(ctx, grad):                   # d(c^a)/da = c^a ln c
        y, = ctx.saved
        return grad * (y * y.dtype.type(ctx.log_base))


class Silu(Function):
    def forward(ctx, a):                       # silu(a) = a * sigmoid(a)
        s = 1.0 / (1.0 + np.exp(-a))
        ctx.save_for_backward(a, s)
        return a * s

    def backward(ctx, grad):                   # d(a s)/da = s + a s (1 - s)
        a, s = ctx.saved
        return grad * (s * (1.0 + a * (1.0 - s)))


class RepeatInterleave(Function):
    def forward(ctx, a, repeats, axis):        # each slice along axis, `repeats` times in a row
        ctx.shape, ctx.repeats, ctx.axis = a.shape, repeats, axis % a.ndim
        return np.repeat(a, repeats, axis=axis)

    def backward(ctx, grad):                   # each input slice gets the sum of its copies' gradients
        ax, n = ctx.axis, ctx.shape[ctx.axis]
        return grad.reshape(grad.shape[:ax] + (n, ctx.repeats) + grad.shape[ax + 1:]).sum(axis=ax + 1)


class Expand(Function):
    def forward(ctx, a, shape):                # a view with size-1 axes repeated (torch's expand)
        return np.broadcast_to(a, shape)

    def backward(ctx, grad):                   # the adjoint of broadcast is sum: the engine sums back
        return grad


class Scatter(Function):
    def forward(ctx, a, src, index, axis):     # a with src's values written at `index` along axis
        ctx.index, ctx.axis = index, axis
        out = a.copy()
        np.put_along_axis(out, index, src, axis=axis)
        return out

    def backward(ctx, grad):                   # overwritten places no longer depend on a; src reads them
        da = grad.copy()
        np.put_along_axis(da, ctx.index, 0.0, axis=ctx.axis)
        return da, np.take_along_axis(grad, ctx.index, axis=ctx.axis)


class RMSNorm(Function):
    def forward(ctx, x, w, eps):               # x: (..., C)  w: (C,)
        rstd = (1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + x.dtype.type(eps))).astype(x.dtype)
        xhat = x * rstd                        # (..., C)
        ctx.save_for_backward(xhat, w, rstd)
        return xhat * w

    def backward(ctx, grad):                   # y = xhat w, xhat = x rstd, rstd = (mean(x^2) + eps)^-1/2
        xhat, w, rstd = ctx.saved
        dxhat = grad * w                       # (..., C)
        # dx = rstd (dxhat - xhat mean(dxhat xhat)): the second term is rstd's share of the chain rule
        dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
        dw = (grad * xhat).reshape(-1, xhat.shape[-1]).sum(axis=0)
        return dx, dw
