"""torch's spellings of the engine's operations: a mixin on Tensor, as tinygrad keeps its
method families out of the engine file.

What the book's PyTorch code calls on a tensor (`view`, `transpose`, `masked_fill_`, `.to()`,
`dim=`/`keepdim=`, `numel`, ...) mapped onto the engine's ops, plus the names around it
(`Device`, `MissingFeature`). Nothing here adds math: every method builds one of ops.py's
Functions or reads an array. tensor.py re-exports these names.
"""
from __future__ import annotations

import inspect
import re
from typing import Sequence

import numpy as np

from . import tensor as engine


class MissingFeature(NotImplementedError, AttributeError):
    """A part of PyTorch that tinygrad_gpt does not have. An AttributeError too, so hasattr()
    and getattr(obj, name, default) keep working."""


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


class TorchSpellings:
    """Mixed into Tensor: torch.Tensor's method names over the engine's ops."""

    # ---- shapes
    def view(self, *shape):
        return self.reshape(*shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        s = self.shape
        end = end_dim % self.ndim if self.ndim else 0
        return self.reshape(s[:start_dim] + (-1,) + s[end + 1:])

    def unsqueeze(self, axis: int):
        axis = axis % (self.ndim + 1)
        return self.reshape(self.shape[:axis] + (1,) + self.shape[axis:])

    def squeeze(self, dim=None):
        """Drop axes of size 1 (only `dim`, if given and of size 1, as torch)."""
        if dim is None:
            return self.reshape(tuple(n for n in self.shape if n != 1))
        dim = dim % max(self.ndim, 1)
        if self.ndim == 0 or self.shape[dim] != 1:
            return self
        return self.reshape(self.shape[:dim] + self.shape[dim + 1:])

    def transpose(self, axis0: int = -2, axis1: int = -1):
        axes = list(range(self.ndim))
        axes[axis0], axes[axis1] = axes[axis1], axes[axis0]
        return self.permute(axes)

    @property
    def T(self):
        return self.permute(tuple(reversed(range(self.ndim))))

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

    def contiguous(self):
        return self                                    # NumPy arrays need no such call here

    def __setitem__(self, index, value):
        """x[index] = value in place, on a tensor outside any graph (the book's
        `targets[indices[1:]] = ignore_index`); into one that autodiff tracks it is refused."""
        if self.requires_grad or self._ctx is not None:
            raise MissingFeature(f"indexed assignment into a tensor that requires grad (shape {self.shape}) "
                                 f"is not implemented; assign into a tensor without a graph (e.g. targets)")
        self.data[engine._plain_index(index)] = value.data if isinstance(value, engine.Tensor) else value
        self._version = self._version + 1

    # ---- layer ops as methods
    def softmax(self, axis: int = -1, *, dim: int | None = None):
        return engine.F.softmax(self, _axis(axis, dim))

    def log_softmax(self, axis: int = -1, *, dim: int | None = None):
        return engine.F.log_softmax(self, _axis(axis, dim))

    def var(self, axis=None, keepdims=False, *, dim=None, keepdim=None, unbiased=True, correction=None):
        """Variance; unbiased=True (torch's default) divides by n - 1, unbiased=False by n."""
        ddof = (1 if unbiased else 0) if correction is None else int(correction)
        return engine.ops.Var.apply(self, axis=_axis(axis, dim), keepdims=_keep(keepdims, keepdim), ddof=ddof)

    # ---- in place
    def masked_fill_(self, mask, value):
        """masked_fill in place, as the book's attention does to its scores. The graph records it
        as PyTorch does: the old value moves to a new node (the fill's input), self becomes the
        fill's output and its version goes up. An op that read self before still has an edge to
        self, which now means the new value, so a backward through it errors (_check_versions)
        instead of sending its gradient through the fill. The result is a new array, so refuse
        when anything else can see the old one (a view of this tensor, a value saved for
        backward, .numpy()): in PyTorch that memory would change too."""
        grad_enabled = engine.is_grad_enabled()
        if grad_enabled and self.requires_grad and self._ctx is None:
            raise RuntimeError(f"masked_fill_: a leaf tensor that requires grad (shape {self.shape}) cannot "
                               f"be changed in place (as in PyTorch); use masked_fill, or no_grad()")
        if self.__dict__.get("_shared"):
            raise MissingFeature("masked_fill_: this tensor's memory is shared (with a view of it, a value saved "
                                 "for backward, or an array from .numpy()); in PyTorch the in-place change "
                                 "would show through all of them, here it cannot: use the out-of-place "
                                 "masked_fill and assign the result")
        if not grad_enabled:                           # nothing to record: just the new value
            self.data = self.masked_fill(mask, value).data
        else:
            old = engine.Tensor.__new__(engine.Tensor)
            old.__dict__.update(self.__dict__)         # takes over self's node in the graph
            new = old.masked_fill(mask, value)
            self.data, self._ctx, self.requires_grad = new.data, new._ctx, new.requires_grad
        self._version = self._version + 1
        return self

    def copy_(self, src):
        """Write src's values into this tensor's array, in place (torch's copy_); its version
        goes up, so anything derived from the old values (a saved input, a weight's bf16 copy
        in the kernel layer) knows it is stale."""
        src = src.numpy() if hasattr(src, "numpy") else src
        np.copyto(self.data, np.asarray(src), casting="same_kind")
        self._version = self._version + 1
        return self

    # ---- conversions
    def numpy(self) -> np.ndarray:
        self._shared = True                            # the caller now sees this array
        return self.data

    def requires_grad_(self, mode: bool = True):
        self.requires_grad = bool(mode)
        return self

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    def bool(self):
        return engine.Tensor(self.data.astype(bool))   # no gradient, as in PyTorch

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

    # ---- comparisons give plain boolean arrays: they have no gradient
    def __lt__(self, other):
        return self.data < engine._as_array(other)

    def __le__(self, other):
        return self.data <= engine._as_array(other)

    def __gt__(self, other):
        return self.data > engine._as_array(other)

    def __ge__(self, other):
        return self.data >= engine._as_array(other)

    def __eq__(self, other):                           # like <, a plain boolean array
        return False if other is None else self.data == engine._as_array(other)

    def __ne__(self, other):
        return True if other is None else self.data != engine._as_array(other)

    __hash__ = object.__hash__

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


def note_shared(inputs, saved, out) -> None:
    """After an op's forward (Function.apply): an input whose array the op kept (saved for
    backward) or returned a view of is marked shared, so masked_fill_ refuses to swap it."""
    for t in inputs:
        d = t.data
        root = d.base if isinstance(d.base, np.ndarray) else d   # what views of d point to
        base = getattr(out, "base", None)
        if (base is not None and (base is d or base is root)) or \
                any(a is d or (isinstance(a, np.ndarray) and a.base is not None and (a.base is d or a.base is root))
                    for a in saved):
            t._shared = True


def check_inputs(cls, inputs, tensor_type):
    """An op takes Tensors; anything else is a TypeError naming the op and the argument, as
    torch's: "gelu(): argument 'input' must be Tensor, not numpy.ndarray"."""
    for i, t in enumerate(inputs):
        if not isinstance(t, tensor_type):
            op = re.sub(r"(?<=[a-z])(?=[A-Z])", "_", cls.__name__).lower()      # CrossEntropy -> cross_entropy
            names = [n for n in inspect.signature(cls.forward).parameters][1:]  # after ctx
            name = names[i] if i < len(names) else f"#{i + 1}"
            name = "input" if i == 0 else {"w": "weight", "b": "bias" if "w" in names else "other"}.get(name, name)
            kind = type(t).__qualname__ if type(t).__module__ == "builtins" else \
                f"{type(t).__module__.split('.')[0]}.{type(t).__qualname__}"
            raise TypeError(f"{op}(): argument '{name}' must be Tensor, not {kind}")


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
