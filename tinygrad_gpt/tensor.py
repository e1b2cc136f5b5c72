"""Tensor, Function and backward(): the whole autodiff engine.

A Tensor wraps a NumPy array. Every op is a Function with a `forward` that computes on
arrays and a `backward` that maps the output's gradient to its inputs' gradients (see
ops.py and functional.py). `Function.apply` records the op in the graph; `backward()`
walks that graph once, from the output back to the leaves, without recursion.

This room owns the engine and its extension points: grad mode (`no_grad`), the random
generator, the op profiler, and the hooks that let tools observe every op without patching
it (`register_forward_hook`, `register_backward_hook`; explain.py and the tests use them).
"""
from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from . import memory

Axis = "int | tuple[int, ...] | list[int] | None"   # an axis argument, as NumPy's

# ----------------------------------------------------------------------------- grad mode
_grad_enabled = True


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def _set_grad_enabled(mode):
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, mode
    try:
        yield
    finally:
        _grad_enabled = previous


def no_grad() -> contextlib.AbstractContextManager:
    """`with no_grad():` records no graph: for evaluation and generation, as torch.no_grad()."""
    return _set_grad_enabled(False)


def enable_grad() -> contextlib.AbstractContextManager:
    return _set_grad_enabled(True)


# ----------------------------------------------------------------------------- random numbers
_rng = np.random.default_rng(0)


def manual_seed(seed: int) -> np.random.Generator:
    """Seed the generator behind parameter initialisation and dropout, as torch.manual_seed."""
    global _rng
    _rng = np.random.default_rng(seed)
    return _rng


def default_rng() -> np.random.Generator:
    """The global generator (initialisation, dropout). Its `bit_generator.state` is a plain dict."""
    return _rng


# ----------------------------------------------------------------------------- profiling
class Profile:
    """Seconds and calls per op, forward and backward (tinygrad's DEBUG idea).

        with profile() as prof:
            loss = model(x) ...; loss.backward()
        print(prof.table())

    TINYGRAD_GPT_DEBUG=1 profiles the whole process and prints the table at exit.
    """

    def __init__(self):
        self.seconds = defaultdict(float)      # (op name, "forward" | "backward") -> seconds
        self.calls = defaultdict(int)

    def add(self, name, phase, seconds):
        self.seconds[name, phase] += seconds
        self.calls[name, phase] += 1

    def table(self):
        total = sum(self.seconds.values()) or 1.0
        rows = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        lines = [f"{'op':24s} {'phase':9s} {'calls':>7s} {'ms':>10s} {'share':>7s}"]
        for (name, phase), sec in rows:
            lines.append(f"{name:24s} {phase:9s} {self.calls[name, phase]:7d} {sec * 1e3:10.1f} "
                         f"{100 * sec / total:6.1f}%")
        lines.append(f"{'total':24s} {'':9s} {'':7s} {total * 1e3:10.1f}")
        return "\n".join(lines)


_profile = None


@contextlib.contextmanager
def profile():
    global _profile
    previous, _profile = _profile, Profile()
    try:
        yield _profile
    finally:
        _profile = previous


if os.environ.get("TINYGRAD_GPT_DEBUG", "0") not in ("", "0"):
    import atexit
    _profile = Profile()
    atexit.register(lambda: print(_profile.table()))


# ----------------------------------------------------------------------------- hooks
_forward_hooks = []      # callables hook(ctx, inputs, output), after every Function.apply
_backward_hooks = []     # callables hook(node, ctx, grad, input_grads), after every op's backward


class RemovableHandle:
    """What a register_*_hook returns, as torch's: `.remove()` takes the hook out again; as a
    context manager it removes the hook on exit (`with register_forward_hook(f): ...`)."""

    def __init__(self, hooks: list, hook: Callable):
        self._hooks, self.hook = hooks, hook

    def remove(self) -> None:
        if self.hook in self._hooks:
            self._hooks.remove(self.hook)

    def __enter__(self) -> "RemovableHandle":
        return self

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False


def register_forward_hook(hook: Callable[["Function", tuple, "Tensor"], None]) -> RemovableHandle:
    """Call hook(ctx, inputs, output) after every op's forward: ctx is the Function (its
    class is the op), inputs the Tensors it was given, output the Tensor it made (recorded in
    the graph or not). For tracing and checks; a hook must not change what it sees."""
    _forward_hooks.append(hook)
    return RemovableHandle(_forward_hooks, hook)


def register_backward_hook(hook: Callable[["Tensor", "Function", np.ndarray, tuple], None]) -> RemovableHandle:
    """Call hook(node, ctx, grad, input_grads) right after an op's backward ran and before its
    gradients are added into its inputs: node is the op's output Tensor, grad dL/d(node),
    input_grads what backward returned, one per input (None where it gives none)."""
    _backward_hooks.append(hook)
    return RemovableHandle(_backward_hooks, hook)


# ----------------------------------------------------------------------------- helpers
def _as_array(data, dtype=None):
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, np.ndarray):
        return data if dtype is None else data.astype(dtype, copy=False)
    if isinstance(data, np.generic):                   # a NumPy scalar keeps its dtype
        return np.asarray(data, dtype=dtype)
    return np.asarray(data, dtype=np.float32 if dtype is None else dtype)   # numbers, lists


def unbroadcast(grad: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The adjoint of broadcasting is summing: reduce `grad` back to an operand's `shape`."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra < 0:                                      # e.g. () for a (1,) operand: _accumulate reshapes
        return grad
    if extra > 0:                                      # leading axes that broadcasting added
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:                                           # axes of size 1 that were stretched
        grad = grad.sum(axis=axes, keepdims=True)
    return grad


# ----------------------------------------------------------------------------- Function
class Function:
    """One op. Subclasses write `forward(ctx, *arrays, **options) -> array` and
    `backward(ctx, grad) -> gradient of each input` (None where an input needs none).
    A backward may return a gradient of a broadcast shape: the engine sums it back."""

    def __init__(self, *parents: "Tensor") -> None:
        self.parents = parents                         # the input Tensors, in order
        self.needs_input_grad = tuple(p.requires_grad for p in parents)
        self.parent_versions = tuple(p._version for p in parents)   # see Tensor.masked_fill_
        self.saved = ()

    def save_for_backward(self, *arrays: np.ndarray) -> None:
        self.saved = arrays

    def forward(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise NotImplementedError

    def backward(self, grad: np.ndarray) -> Any:
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs: "Tensor", **options: Any) -> "Tensor":
        """Run forward on the inputs' arrays; record the op if any input needs a gradient."""
        ctx = cls(*inputs)
        start = time.perf_counter() if _profile is not None else 0.0
        out = ctx.forward(*[t.data for t in inputs], **options)
        if _profile is not None:
            _profile.add(cls.__name__, "forward", time.perf_counter() - start)
        requires_grad = _grad_enabled and any(ctx.needs_input_grad)
        result = Tensor(out, requires_grad=requires_grad)
        if requires_grad:
            result._ctx = ctx
        for hook in _forward_hooks:
            hook(ctx, inputs, result)
        return result

    @property
    def name(self) -> str:
        return type(self).__name__


# ----------------------------------------------------------------------------- the graph walk
def topological_order(root: "Tensor") -> list:
    """Every tensor that `root` depends on and that needs a gradient, inputs before outputs.
    An explicit stack instead of recursion: a 12-layer GPT graph has thousands of nodes."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            order.append(node)                         # post-order: after all its inputs
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._ctx is not None:
            for parent in node._ctx.parents:
                if parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    return order


def _accumulate(tensor, g, grad_in, siblings, op="backward"):
    """tensor.grad += g, as PyTorch: a tensor used twice gets the sum of both gradients."""
    if g.dtype != tensor.data.dtype:
        g = g.astype(tensor.data.dtype)
    if g.shape != tensor.data.shape:                   # e.g. a (1,) bias seen as ()
        # Only size-1 axes may differ: reshaping any other mismatch would silently scramble
        # a wrong backward's gradient into the right shape (it hid Permute's, see ops.py).
        if [n for n in g.shape if n != 1] != [n for n in tensor.data.shape if n != 1]:
            raise RuntimeError(f"{op}.backward returned a gradient of shape {g.shape} "
                               f"for an input of shape {tensor.data.shape}")
        g = g.reshape(tensor.data.shape)
    if tensor.grad is None:
        if tensor._ctx is None:
            # A leaf keeps its .grad after backward() and later calls add into it in place:
            # it must own that array, not share it with the output's grad or a sibling.
            shared = g is grad_in or g.base is not None or sum(s is g for s in siblings) > 1
            tensor.grad = g.copy() if shared else g
        else:
            tensor.grad = g
    elif tensor._ctx is None:
        tensor.grad += g                               # the leaf owns its grad: in place
    else:
        tensor.grad = tensor.grad + g


def _check_versions(ctx):
    """PyTorch's version counter: an input changed in place (masked_fill_) after this op read it
    means the op's edge now leads to the new value, so its gradient would go to the wrong place."""
    for parent, version in zip(ctx.parents, ctx.parent_versions):
        if parent._version != version:
            raise RuntimeError(f"backward(): an input of {ctx.name} (shape {parent.shape}) was modified by an "
                               f"in-place operation after {ctx.name} used it: it is at version "
                               f"{parent._version}, {ctx.name} saw version {version}; do the in-place op "
                               f"before the tensor is used, or use the out-of-place masked_fill")


_FREED_MESSAGE = ("backward(): this graph was already freed by an earlier backward() (each one "
                  "frees the graph it walks); pass retain_graph=True to the first call to backward "
                  "through it twice, or recompute the forward")


# ----------------------------------------------------------------------------- Tensor
class Tensor:
    """A NumPy array plus what autodiff needs: `.grad`, `.requires_grad` and, for a tensor
    made by an op, `._ctx` (the Function that made it, which knows its inputs)."""

    __array_priority__ = 1000                          # ndarray + Tensor -> Tensor.__radd__

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None) -> None:
        self.data = _as_array(data, dtype)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx = None
        self._graph_freed = False                      # made by an op whose graph backward() freed

    # ---- what a Tensor is
    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    dtype = property(lambda self: self.data.dtype)
    size = property(lambda self: self.data.size)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        op = f", op={self._ctx.name}" if self._ctx is not None else ""
        return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}{grad}{op})"

    def item(self) -> Any:
        return self.data.item()

    def numpy(self) -> np.ndarray:
        return self.data

    def tolist(self) -> Any:
        return self.data.tolist()

    def detach(self) -> "Tensor":
        """The same array, cut from the graph."""
        return Tensor(self.data)

    def requires_grad_(self, mode: bool = True) -> "Tensor":
        self.requires_grad = bool(mode)
        return self

    def astype(self, dtype: Any) -> "Tensor":
        """A cast that stays in the graph (a new leaf would silently stop the gradient);
        the same dtype gives self, as torch's .float() on a float tensor."""
        if np.dtype(dtype) == self.dtype:
            return self
        return ops.Cast.apply(self, dtype=np.dtype(dtype))

    def float(self) -> "Tensor":
        return self.astype(np.float32)

    def double(self) -> "Tensor":
        return self.astype(np.float64)

    # ---- backward
    def backward(self, grad: Any = None, retain_graph: bool = False) -> None:
        """Fill `.grad` of every leaf this tensor depends on with d(self)/d(leaf), adding
        to what is there. Intermediate gradients are freed as soon as they are used, and
        so is the graph (unless retain_graph=True)."""
        if not self.requires_grad:
            raise RuntimeError("backward(): this tensor does not require grad and has no graph "
                               "(was it computed under no_grad(), or from tensors without requires_grad=True?)")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward(): grad can be implicitly created only for a scalar output, "
                                   f"this one has shape {self.shape}; pass grad= of that shape")
            grad = np.ones_like(self.data)
        else:
            grad = _as_array(grad, self.data.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): grad has shape {grad.shape}, expected {self.shape}")
        if self._graph_freed:
            raise RuntimeError(_FREED_MESSAGE)
        if self._ctx is None:                          # a leaf: d(self)/d(self) = 1
            _accumulate(self, grad, grad, ())          # grad_in=grad: never keep the caller's array
            return
        memory.keep_freed_memory(once=True)            # a training process: reuse the step's pages
        order = topological_order(self)
        if any(node._graph_freed for node in order):   # walking on would treat it as a leaf and
            raise RuntimeError(_FREED_MESSAGE)          # silently drop everything before it
        self.grad = grad
        while order:                                   # outputs first; popped, so that a node no one
            node = order.pop()                         # else holds is freed once its backward has run
            ctx = node._ctx
            if ctx is None:                            # a leaf: its .grad is final
                continue
            g = node.grad
            _check_versions(ctx)
            start = time.perf_counter() if _profile is not None else 0.0
            input_grads = ctx.backward(g)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            for hook in _backward_hooks:
                hook(node, ctx, g, input_grads)
            for parent, pg in zip(ctx.parents, input_grads):
                if pg is None or not parent.requires_grad:
                    continue
                _accumulate(parent, unbroadcast(pg, parent.shape), g, input_grads, ctx.name)
            if _profile is not None:
                _profile.add(ctx.name, "backward", time.perf_counter() - start)
            node.grad = None                           # non-leaf grads are not kept, as PyTorch
            if not retain_graph:
                node._ctx = None                       # free the graph (and saved arrays) as we go
                node._graph_freed = True

    # ---- arithmetic (ops.py)
    def _lift(self, other):
        """A number takes this tensor's dtype if that is a float (x32 * 0.5 stays float32);
        an integer tensor and a float number meet in NumPy's common type, as in PyTorch."""
        if isinstance(other, Tensor):
            return other
        dtype = self.dtype if np.issubdtype(self.dtype, np.floating) else np.result_type(self.dtype, other)
        return Tensor(_as_array(other, dtype))

    def __add__(self, other: Any) -> "Tensor":
        return ops.Add.apply(self, self._lift(other))

    def __radd__(self, other: Any) -> "Tensor":
        return ops.Add.apply(self._lift(other), self)

    def __sub__(self, other: Any) -> "Tensor":
        return ops.Sub.apply(self, self._lift(other))

    def __rsub__(self, other: Any) -> "Tensor":
        return ops.Sub.apply(self._lift(other), self)

    def __mul__(self, other: Any) -> "Tensor":
        return ops.Mul.apply(self, self._lift(other))

    def __rmul__(self, other: Any) -> "Tensor":
        return ops.Mul.apply(self._lift(other), self)

    def __truediv__(self, other: Any) -> "Tensor":
        return ops.Div.apply(self, self._lift(other))

    def __rtruediv__(self, other: Any) -> "Tensor":
        return ops.Div.apply(self._lift(other), self)

    def __pow__(self, exponent: float) -> "Tensor":
        if isinstance(exponent, Tensor):
            raise TypeError("x ** y: the exponent must be a Python number, not a Tensor")
        return ops.Pow.apply(self, exponent=float(exponent))

    def __neg__(self) -> "Tensor":
        return ops.Neg.apply(self)

    def __matmul__(self, other: Any) -> "Tensor":
        return ops.MatMul.apply(self, self._lift(other))

    def __rmatmul__(self, other: Any) -> "Tensor":
        return ops.MatMul.apply(self._lift(other), self)

    # comparisons give plain boolean arrays: they have no gradient
    def __lt__(self, other):
        return self.data < _as_array(other)

    def __le__(self, other):
        return self.data <= _as_array(other)

    def __gt__(self, other):
        return self.data > _as_array(other)

    def __ge__(self, other):
        return self.data >= _as_array(other)

    __hash__ = object.__hash__

    # ---- reductions
    def sum(self, axis: Axis = None, keepdims: bool = False, *, dim: Axis = None,
            keepdim: bool | None = None) -> "Tensor":
        return ops.Sum.apply(self, axis=_axis(axis, dim), keepdims=_keep(keepdims, keepdim))

    def mean(self, axis: Axis = None, keepdims: bool = False, *, dim: Axis = None,
             keepdim: bool | None = None) -> "Tensor":
        return ops.Mean.apply(self, axis=_axis(axis, dim), keepdims=_keep(keepdims, keepdim))

    def max(self, axis: Axis = None, keepdims: bool = False, *, dim: Axis = None,
            keepdim: bool | None = None) -> "Tensor":
        return ops.Max.apply(self, axis=_axis(axis, dim), keepdims=_keep(keepdims, keepdim))

    def argmax(self, axis: Axis = None, keepdims: bool = False, *, dim: Axis = None,
               keepdim: bool | None = None) -> np.ndarray:
        return np.argmax(self.data, axis=_axis(axis, dim), keepdims=_keep(keepdims, keepdim))

    # ---- shapes
    def reshape(self, *shape: int | Sequence[int]) -> "Tensor":
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return ops.Reshape.apply(self, shape=tuple(shape))

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> "Tensor":
        s = self.shape
        end = end_dim % self.ndim if self.ndim else 0
        return self.reshape(s[:start_dim] + (-1,) + s[end + 1:])

    def unsqueeze(self, axis: int) -> "Tensor":
        axis = axis % (self.ndim + 1)
        return self.reshape(self.shape[:axis] + (1,) + self.shape[axis:])

    def permute(self, *axes: int | Sequence[int]) -> "Tensor":
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return ops.Permute.apply(self, axes=tuple(axes))

    def transpose(self, axis0: int = -2, axis1: int = -1) -> "Tensor":
        axes = list(range(self.ndim))
        axes[axis0], axes[axis1] = axes[axis1], axes[axis0]
        return self.permute(axes)

    @property
    def T(self) -> "Tensor":
        return self.permute(tuple(reversed(range(self.ndim))))

    def __getitem__(self, index: Any) -> "Tensor":
        return ops.GetItem.apply(self, index=_plain_index(index))

    def split(self, split_size: int | Sequence[int], axis: int = -1, *, dim: int | None = None) -> list:
        """Views along `axis`: an int gives pieces of that size, a list gives the sizes."""
        axis = _axis(axis, dim) % self.ndim
        n = self.shape[axis]
        sizes = [split_size] * (n // split_size) + ([n % split_size] if n % split_size else []) \
            if isinstance(split_size, int) else list(split_size)
        if sum(sizes) != n:
            raise ValueError(f"split: sizes {sizes} do not add up to {n}, the length of axis {axis}")
        pieces, start = [], 0
        for size in sizes:
            index = (slice(None),) * axis + (slice(start, start + size),)
            pieces.append(self[index])
            start += size
        return pieces

    def chunk(self, chunks: int, axis: int = -1, *, dim: int | None = None) -> list:
        axis = _axis(axis, dim)
        n = self.shape[axis]
        return self.split(-(-n // chunks), axis)

    # ---- elementwise
    def exp(self) -> "Tensor":
        return ops.Exp.apply(self)

    def log(self) -> "Tensor":
        return ops.Log.apply(self)

    def tanh(self) -> "Tensor":
        return ops.Tanh.apply(self)

    def sqrt(self) -> "Tensor":
        return ops.Sqrt.apply(self)

    def masked_fill(self, mask: Any, value: float) -> "Tensor":
        """Where mask is True, `value`; elsewhere self. mask broadcasts against self."""
        mask = mask.data if isinstance(mask, Tensor) else np.asarray(mask)
        return ops.MaskedFill.apply(self, mask=mask.astype(bool, copy=False), value=float(value))

    def softmax(self, axis: int = -1, *, dim: int | None = None) -> "Tensor":
        return F.softmax(self, _axis(axis, dim))

    def log_softmax(self, axis: int = -1, *, dim: int | None = None) -> "Tensor":
        return F.log_softmax(self, _axis(axis, dim))

    # ---- torch's spellings: what the book's PyTorch code calls on a tensor (tinygrad_gpt/torch)
    _version = 0             # bumped by each in-place op; every Function records its inputs' versions

    def var(self, axis=None, keepdims=False, *, dim=None, keepdim=None, unbiased=True, correction=None):
        """Variance; unbiased=True (torch's default) divides by n - 1, unbiased=False by n."""
        ddof = (1 if unbiased else 0) if correction is None else int(correction)
        return ops.Var.apply(self, axis=_axis(axis, dim), keepdims=_keep(keepdims, keepdim), ddof=ddof)

    def masked_fill_(self, mask, value):
        """masked_fill in place, as the book's attention does to its scores. The graph records it
        as PyTorch does: the old value moves to a new node (the fill's input), self becomes the
        fill's output and its version goes up. An op that read self before still has an edge to
        self, which now means the new value, so a backward through it errors (_check_versions)
        instead of sending its gradient through the fill. The result is a new array, so refuse
        when anything else can see the old one (a view of this tensor, a value saved for
        backward, .numpy()): in PyTorch that memory would change too."""
        if _grad_enabled and self.requires_grad and self._ctx is None:
            raise RuntimeError(f"masked_fill_: a leaf tensor that requires grad (shape {self.shape}) cannot "
                               f"be changed in place (as in PyTorch); use masked_fill, or no_grad()")
        _refuse_if_shared(self, "masked_fill_")
        if not _grad_enabled:                          # nothing to record: just the new value
            self.data = self.masked_fill(mask, value).data
        else:
            old = Tensor.__new__(Tensor)
            old.__dict__.update(self.__dict__)         # takes over self's node in the graph
            new = old.masked_fill(mask, value)
            self.data, self._ctx, self.requires_grad = new.data, new._ctx, new.requires_grad
        self._version = self._version + 1
        return self

    def bool(self):
        return Tensor(self.data.astype(bool))          # no gradient, as in PyTorch

    device = property(lambda self: CPU)

    def to(self, *args, **kwargs):
        """.to("cpu") is this tensor (the only device); .to(dtype) casts. Other devices: an error."""
        out = self
        for arg in args + tuple(v for k, v in kwargs.items() if k in ("device", "dtype")):
            if isinstance(arg, (str, Device)):
                check_device(arg, "Tensor.to")
            elif arg is not None:
                out = out.astype(arg)
        return out

    def numel(self):
        return self.data.size

    def squeeze(self, dim=None):
        """Drop axes of size 1 (only `dim`, if given and of size 1, as torch)."""
        if dim is None:
            return self.reshape(tuple(n for n in self.shape if n != 1))
        dim = dim % max(self.ndim, 1)
        if self.ndim == 0 or self.shape[dim] != 1:
            return self
        return self.reshape(self.shape[:dim] + self.shape[dim + 1:])

    def contiguous(self):
        return self                                    # NumPy arrays need no such call here

    def __setitem__(self, index, value):
        """x[index] = value in place, on a tensor outside any graph (the book's
        `targets[indices[1:]] = ignore_index`); into one that autodiff tracks it is refused."""
        if self.requires_grad or self._ctx is not None:
            raise MissingFeature(f"indexed assignment into a tensor that requires grad (shape {self.shape}) "
                                 f"is not implemented; assign into a tensor without a graph (e.g. targets)")
        self.data[_plain_index(index)] = value.data if isinstance(value, Tensor) else value
        self._version = self._version + 1

    def __eq__(self, other):                           # like <, a plain boolean array
        return False if other is None else self.data == _as_array(other)

    def __ne__(self, other):
        return True if other is None else self.data != _as_array(other)

    def __bool__(self):                                # one element only, as torch
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor of shape {self.shape} is ambiguous")
        return bool(self.data)

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __getattr__(self, name):                       # only reached when the name is not found
        if name.startswith("_"):
            raise AttributeError(name)
        raise MissingFeature(f"Tensor.{name} is not implemented: tinygrad_gpt's Tensor has the part of "
                             f"torch.Tensor that the book's code uses (see tinygrad_gpt/torch)")


class MissingFeature(NotImplementedError, AttributeError):
    """A part of PyTorch that tinygrad_gpt does not have. An AttributeError too, so hasattr()
    and getattr(obj, name, default) keep working."""


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


def _refuse_if_shared(tensor, op):
    """An in-place op gives a tensor a new array; refuse if any other object can see the old one.
    NumPy does not list an array's views, but each view holds a reference to the array that owns
    the memory, so a reference count above the tensor's own says someone else is looking."""
    import sys
    a = tensor.data
    # references to a: the tensor's, `a` here, getrefcount's argument; to the memory's owner
    # when a is a view: a's own link (its .base) and getrefcount's argument
    if sys.getrefcount(a) > 3 or (a.base is not None and sys.getrefcount(a.base) > 2):
        raise MissingFeature(f"{op}: this tensor's memory is shared (with a view of it, a value saved for "
                             f"backward, or an array from .numpy()); in PyTorch the in-place change "
                             f"would show through all of them, here it cannot: use the out-of-place "
                             f"{op.rstrip('_')} and assign the result")


def _axis(axis, dim):
    """PyTorch readers write dim=; NumPy readers write axis=. Both mean the same."""
    if dim is not None:
        if axis is not None and axis != -1 and axis != dim:
            raise TypeError("give either axis= or dim=, not both")
        return tuple(dim) if isinstance(dim, list) else dim
    return tuple(axis) if isinstance(axis, list) else axis


def _keep(keepdims, keepdim):
    """NumPy's keepdims= and PyTorch's keepdim= mean the same."""
    return keepdims if keepdim is None else keepdim


def _plain_index(index):
    """Indices may hold Tensors (e.g. integer ids): use their arrays."""
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index.data if isinstance(index, Tensor) else index


def tensor(data: Any, requires_grad: bool = False, dtype: Any = None) -> Tensor:
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def concatenate(tensors: Iterable[Tensor], axis: int | None = None, *, dim: int | None = None) -> Tensor:
    """Join tensors along an existing axis (torch.cat), axis 0 unless told."""
    axis = _axis(axis, dim)                            # a default of 0 here made dim= a conflict
    return ops.Concatenate.apply(*tensors, axis=0 if axis is None else axis)


cat = concatenate

# The engine's one circle, by one mechanism: ops.py and functional.py subclass Function, and
# Tensor's methods build their ops; so both are imported here, after Function and Tensor exist,
# and looked up when a method is called.
from . import ops  # noqa: E402
from . import functional as F  # noqa: E402
