"""PyTorch's semantics, where they differ from the plain engine's: what a tensor is to torch.

The engine (tensor.py, ops.py) computes out of place on NumPy arrays. The book's code also
relies on what PyTorch adds around that, and this module adds it, for the shim only:

- in-place `masked_fill_` on a graph node, with the aliasing PyTorch would show refused here
  (a view, a value saved for backward, an array from `.numpy()`): the record of which arrays
  are shared is a semantics hook on every op's forward (observe.register_semantics_hook),
  registered when this module is imported, so the plain engine's ops never pay for it;
- `Tensor.var(unbiased=)`, `.to(...)`, `.device`, and `MissingFeature` for the rest of
  torch.Tensor: the engine's Tensor looks them up here (spellings.register_attributes);
- `Device` (torch.device) and the check that refuses any device but the CPU;
- the ops only the book's torch code needs: `Var` and `Where`, each backward under its forward.
"""
from __future__ import annotations

import numpy as np

from .. import amp, observe, ops, spellings
from ..ops import _expand_to
from ..tensor import Function, Tensor, is_grad_enabled
from . import random as _random


class MissingFeature(NotImplementedError, AttributeError):
    """A part of PyTorch that tinygrad_gpt does not have. An AttributeError too, so hasattr()
    and getattr(obj, name, default) keep working."""


# ----------------------------------------------------------------------------- devices
class Device:
    """torch.device: "cpu" is the only one that computes here; others can be named, not used."""

    def __init__(self, type="cpu", index=None):
        if isinstance(type, Device):
            type, index = type.type, type.index
        if not isinstance(type, str):
            raise TypeError(f"device: expected a string such as 'cpu', got {type!r}")
        if ":" in type:
            type, _, number = type.partition(":")
            index = int(number)
        self.type, self.index = type, index

    def __str__(self):
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self):
        return f"device(type={self.type!r}" + ("" if self.index is None else f", index={self.index}") + ")"

    def __eq__(self, other):
        if isinstance(other, str):
            other = Device(other)
        return isinstance(other, Device) and (self.type, self.index) == (other.type, other.index)

    def __hash__(self):
        return hash((self.type, self.index))


CPU = Device("cpu")


def check_device(device, where):
    """None and "cpu" pass; any other device is a clear error (the engine computes with NumPy)."""
    if device is None:
        return CPU
    device = Device(device)
    if device.type != "cpu":
        raise MissingFeature(f"{where}: device {str(device)!r} is not available: tinygrad_gpt computes "
                             f"on the CPU with NumPy; use 'cpu'")
    return device


# ----------------------------------------------------------------------------- the ops of the book's torch code
class Var(Function):
    def forward(ctx, a, axis=None, keepdims=False, ddof=0):
        centered = a - a.mean(axis=axis, keepdims=True)                    # a - mean
        count = a.size // max(np.asarray(a.sum(axis=axis, keepdims=True)).size, 1)
        ctx.save_for_backward(centered)
        ctx.axis, ctx.keepdims, ctx.denom = axis, keepdims, count - ddof
        return np.asarray((centered * centered).sum(axis=axis, keepdims=keepdims) / (count - ddof))

    def backward(ctx, grad):                   # var = sum((a - mean)^2) / (n - ddof)
        centered, = ctx.saved                  # d var/da = 2 (a - mean) / (n - ddof); the mean's own
        g = _expand_to(grad, centered.shape, ctx.axis, ctx.keepdims)     # term drops: sum(a - mean) = 0
        return g * centered * (2.0 / ctx.denom)


class Where(Function):
    def forward(ctx, a, b, condition):         # condition: bool, broadcastable with a and b
        ctx.condition = condition
        return np.where(condition, a, b)

    def backward(ctx, grad):                   # each element came from a or from b
        zero = np.zeros((), dtype=grad.dtype)
        return (np.where(ctx.condition, grad, zero) if ctx.needs_input_grad[0] else None,
                np.where(ctx.condition, zero, grad) if ctx.needs_input_grad[1] else None)


# ----------------------------------------------------------------------------- shared memory
def note_shared(ctx, inputs, result) -> None:
    """After an op's forward (a semantics hook): an input whose array the op kept (saved for
    backward) or returned a view of is marked shared, so masked_fill_ refuses to swap it."""
    out, saved = result.data, ctx.saved
    for t in inputs:
        d = t.data
        root = d.base if isinstance(d.base, np.ndarray) else d   # what views of d point to
        base = out.base
        if (base is not None and (base is d or base is root)) or \
                any(a is d or (isinstance(a, np.ndarray) and a.base is not None and (a.base is d or a.base is root))
                    for a in saved):
            t._shared = True


# ----------------------------------------------------------------------------- torch.Tensor's own attributes
def masked_fill_(self, mask, value):
    """masked_fill in place, as the book's attention does to its scores (see _in_place)."""
    return _in_place(self, "masked_fill_", lambda old: old.masked_fill(mask, value))


def scatter_(self, dim, index, src):
    """self[..., index[i], ...] = src[i] along dim, in place (Qwen3's MoE writes its gating
    probabilities so); src a tensor of index's shape, its gradient read back at index."""
    if not isinstance(src, Tensor):
        raise MissingFeature("Tensor.scatter_(dim, index, value) with a number is not implemented; "
                             "give src as a tensor")
    index = index.data if isinstance(index, Tensor) else np.asarray(index)
    return _in_place(self, "scatter_", lambda old: ops.Scatter.apply(old, src.astype(old.dtype), index=index,
                                                                     axis=dim % old.ndim))


def _in_place(self, what, op):
    """An out-of-place op recorded as PyTorch records it in place: the old value moves to a new
    node (the op's input), self becomes the op's output and its version goes up. An op that read
    self before still has an edge to self, which now means the new value, so a backward through
    it errors (_check_versions) instead of sending its gradient through this op. The result is
    a new array, so refuse when anything else can see the old one (a view of this tensor, a
    value saved for backward, .numpy()): in PyTorch that memory would change too."""
    grad_enabled = is_grad_enabled()
    if grad_enabled and self.requires_grad and self._ctx is None:
        raise RuntimeError(f"{what}: a leaf tensor that requires grad (shape {self.shape}) cannot "
                           f"be changed in place (as in PyTorch); use the out-of-place op, or no_grad()")
    if self.__dict__.get("_shared"):
        raise MissingFeature(f"{what}: this tensor's memory is shared (with a view of it, a value saved "
                             "for backward, or an array from .numpy()); in PyTorch the in-place change "
                             "would show through all of them, here it cannot: use the out-of-place "
                             "op and assign the result")
    old = Tensor(self.data, requires_grad=grad_enabled and self.requires_grad)
    if old.requires_grad:                              # self's place in the graph moves to old
        old._ctx, old._version, old._graph_freed = self._ctx, self._version, self._graph_freed
    new = op(old)
    self.data = new.data
    if grad_enabled and new.requires_grad:             # self is now the op's output
        self._ctx, self.requires_grad = new._ctx, True
    self._version = self._version + 1
    return self


def var(self, axis=None, keepdims=False, *, dim=None, keepdim=None, unbiased=True, correction=None):
    """Variance; unbiased=True (torch's default) divides by n - 1, unbiased=False by n."""
    ddof = (1 if unbiased else 0) if correction is None else int(correction)
    return Var.apply(self, axis=spellings._axis(axis, dim), keepdims=spellings._keep(keepdims, keepdim), ddof=ddof)


class BFloat16:
    """torch.bfloat16, as the shim understands it: the engine has no bf16 storage, so a bf16
    tensor is float32 whose values are rounded to bf16 (round to nearest even), and the
    arithmetic on it is float32 (PyTorch's bf16 ops round every result; these do not)."""

    itemsize = 2

    def __repr__(self):
        return "torch.bfloat16"

    @staticmethod
    def round(x):
        """float32 values rounded to the nearest bf16 (ties to even), kept in float32."""
        bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
        return np.where(np.isnan(x), x, rounded.view(np.float32)).astype(np.float32)


bfloat16 = BFloat16()


class RoundToBFloat16(Function):
    def forward(ctx, a):
        return bfloat16.round(a)

    def backward(ctx, grad):                   # a cast: the gradient passes as it is
        return grad


def to(self, *args, **kwargs):
    """.to("cpu") is this tensor (the only device); .to(dtype) casts (to bfloat16: float32 values
    rounded to bf16, see BFloat16). Other devices: an error."""
    out = self
    for arg in args + tuple(v for k, v in kwargs.items() if k in ("device", "dtype")):
        if isinstance(arg, (str, Device)):
            check_device(arg, "Tensor.to")
        elif arg is bfloat16:
            out = RoundToBFloat16.apply(out.astype(np.float32))
        elif arg is not None:
            out = out.astype(arg)
    return out


# ----------------------------------------------------------------------------- in-place random fills (torch/random.py)
def _fill(self, values, what):
    """Write a draw into the tensor's own array, in place: refused on a leaf that requires grad
    (as torch, outside no_grad), the version goes up and any bf16 copy of the old values is stale."""
    if is_grad_enabled() and self.requires_grad and self._ctx is None:
        raise RuntimeError(f"{what}: a leaf tensor that requires grad (shape {self.shape}) cannot be "
                           f"filled in place outside torch.no_grad() (as in PyTorch)")
    np.copyto(self.data, np.asarray(values).reshape(self.shape), casting="unsafe")
    amp.invalidate([self])
    self._version = self._version + 1
    return self


def _generator(generator):
    return _random.default_generator if generator is None else generator


def _float_kind(self, what):
    if self.dtype not in (np.float32, np.float64):
        raise MissingFeature(f"{what} of a {self.dtype} tensor is not implemented (float32 and float64 are)")
    return self.dtype == np.float32


def _contiguous(self, what):
    """PyTorch fills a strided tensor in its memory order; only contiguous ones are done here."""
    if not self.data.flags.c_contiguous:
        raise MissingFeature(f"{what} of a non-contiguous tensor (shape {self.shape}) is not implemented; "
                             f"fill a contiguous one (.contiguous() is a copy in PyTorch)")


def uniform_(self, a=0.0, b=1.0, *, generator=None):
    """U[a, b), PyTorch's numbers (torch/random.py)."""
    g, n = _generator(generator), self.data.size
    _contiguous(self, "uniform_")
    draw = g.uniform_float32(n, a, b) if _float_kind(self, "uniform_") else g.uniform_float64(n, a, b)
    return _fill(self, draw, "uniform_")


def normal_(self, mean=0.0, std=1.0, *, generator=None):
    """N(mean, std^2), PyTorch's numbers: its 16-wide Box-Muller for a tensor of 16 elements
    or more, the cached scalar one below."""
    g, n = _generator(generator), self.data.size
    _contiguous(self, "normal_")
    draw = g.normal_float32(n, mean, std) if _float_kind(self, "normal_") else g.normal_float64(n, mean, std)
    return _fill(self, draw, "normal_")


def random_(self, from_=None, to=None, *, generator=None):
    """random_(): [0, 2^63) for int64; random_(to) / random_(from, to): integers in [from, to)."""
    g, n = _generator(generator), self.data.size
    if from_ is None and to is None:
        if self.dtype != np.int64:
            raise MissingFeature(f"random_() of a {self.dtype} tensor is not implemented (int64 is)")
        return _fill(self, g.random_int64(n), "random_")
    low, high = (0, from_) if to is None else (from_, to)
    return _fill(self, g.randint(n, int(low), int(high)), "random_")


def bernoulli_(self, p=0.5, *, generator=None):
    """1 with probability p, else 0 (p a number), in the tensor's dtype."""
    if isinstance(p, Tensor):
        raise MissingFeature("bernoulli_(p) with a tensor of probabilities is not implemented (a number is)")
    return _fill(self, _generator(generator).bernoulli(self.data.size, float(p)), "bernoulli_")


def exponential_(self, lambd=1.0, *, generator=None):
    _float_kind(self, "exponential_")
    return _fill(self, _generator(generator).exponential_float64(self.data.size, float(lambd)), "exponential_")


# ----------------------------------------------------------------------------- the Llama 3.2 / Qwen3 ops' torch names (ops.py)
def rsqrt(self):
    return ops.Rsqrt.apply(self)


def sin(self):
    return ops.Sin.apply(self)


def cos(self):
    return ops.Cos.apply(self)


def abs_value(self):
    return ops.Abs.apply(self)


def power(self, exponent):
    return self ** exponent


def repeat_interleave(self, repeats, dim=None):
    """Each slice along dim `repeats` times in a row ([K1, K2] -> [K1, K1, K2, K2]): grouped-query
    attention's keys and values; an int repeats only (dim=None flattens first, as torch)."""
    if not isinstance(repeats, (int, np.integer)):
        raise MissingFeature("Tensor.repeat_interleave(repeats=<tensor>) is not implemented; give an int")
    x = self.reshape(-1) if dim is None else self
    return ops.RepeatInterleave.apply(x, repeats=int(repeats), axis=0 if dim is None else int(dim))


def expand(self, *sizes):
    """A broadcast view: size-1 axes repeated to `sizes` (-1 keeps an axis), no copy."""
    sizes = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes
    lead = len(sizes) - self.ndim
    shape = tuple(self.shape[i - lead] if n == -1 else n for i, n in enumerate(sizes))
    return ops.Expand.apply(self, shape=shape)


def gather(self, dim, index):
    """self's values at index along dim (torch.gather): out[i][j] = self[i][index[i][j]] for dim=1."""
    index = index.data if isinstance(index, Tensor) else np.asarray(index)
    grid = list(np.ogrid[tuple(slice(n) for n in index.shape)])
    grid[dim % self.ndim] = index
    return self[tuple(grid)]


METHODS = {"masked_fill_": masked_fill_, "var": var, "to": to, "uniform_": uniform_, "normal_": normal_,
           "random_": random_, "bernoulli_": bernoulli_, "exponential_": exponential_,
           "scatter_": scatter_, "rsqrt": rsqrt, "sin": sin, "cos": cos, "abs": abs_value, "pow": power,
           "repeat_interleave": repeat_interleave, "expand": expand, "gather": gather}
PROPERTIES = {"device": lambda self: CPU}


def tensor_attribute(tensor, name):
    """What the engine's Tensor asks for a name its class does not define (spellings.__getattr__)."""
    if name in METHODS:
        return METHODS[name].__get__(tensor)
    if name in PROPERTIES:
        return PROPERTIES[name](tensor)
    raise MissingFeature(f"Tensor.{name} is not implemented: tinygrad_gpt's Tensor has the part of "
                         f"torch.Tensor that the book's code uses (see tinygrad_gpt/torch)")


# The shim comes into the process: tensors get torch's attributes, and ops record shared memory.
spellings.register_attributes(tensor_attribute)
observe.register_semantics_hook(note_shared)
