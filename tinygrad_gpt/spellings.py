"""torch's spellings of the engine's operations: a mixin on Tensor, as tinygrad keeps its
method families out of the engine file.

Names the book's PyTorch code calls on a tensor (`view`, `transpose`, `flatten`, `split`,
`dim=`/`keepdim=`, `numel`, `copy_`, comparisons) over the engine's own methods. Nothing here
adds math and nothing here imports the engine: every method calls a method of `self`.

What is PyTorch's semantics rather than a spelling (in-place `masked_fill_` and the aliasing
it must refuse, `var`, `.to()`, `device`, `MissingFeature`) lives in the torch wing,
tinygrad_gpt/torch/semantics.py, which registers those attributes here (`register_attributes`)
when it is imported; the plain engine's Tensor does not have them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


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
        return tuple(i.data if isinstance(i, TorchSpellings) else i for i in index)
    return index.data if isinstance(index, TorchSpellings) else index


def _data(other):
    """The array of a Tensor; anything else as it is (NumPy compares it)."""
    return other.data if isinstance(other, TorchSpellings) else other


# Lookups of attributes a Tensor does not have, tried in order: lookup(tensor, name) returns
# the attribute or raises AttributeError. The torch wing adds one (torch/semantics.py).
_attribute_lookups = []


def register_attributes(lookup) -> None:
    """Let `lookup(tensor, name)` answer for the attributes Tensor's class does not define."""
    if lookup not in _attribute_lookups:
        _attribute_lookups.append(lookup)


class SizeNumber(int):
    """Tensor.size: NumPy's number of elements (an int), which also answers torch's size()
    (the shape) and size(dim) (one axis), as the book's code calls it (`keys.size(2)`)."""

    def __new__(cls, shape):
        n = 1
        for k in shape:
            n *= k
        number = super().__new__(cls, n)
        number.shape = tuple(shape)
        return number

    def __call__(self, dim=None):
        return self.shape if dim is None else self.shape[dim]


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
            raise NotImplementedError(f"indexed assignment into a tensor that requires grad (shape {self.shape}) "
                                      f"is not implemented; assign into a tensor without a graph (e.g. targets)")
        self.data[_plain_index(index)] = _data(value)
        self._version = self._version + 1

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
        self._shared = True          # the caller now sees this array: torch/semantics.py's in-place ops refuse it
        return self.data

    def requires_grad_(self, mode: bool = True):
        self.requires_grad = bool(mode)
        return self

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    def bool(self):
        return self.detach().astype(np.bool_)          # no gradient, as in PyTorch

    def numel(self):
        return self.data.size

    # ---- comparisons give plain boolean arrays: they have no gradient
    def __lt__(self, other):
        return self.data < _data(other)

    def __le__(self, other):
        return self.data <= _data(other)

    def __gt__(self, other):
        return self.data > _data(other)

    def __ge__(self, other):
        return self.data >= _data(other)

    def __eq__(self, other):                           # like <, a plain boolean array
        return False if other is None else self.data == _data(other)

    def __ne__(self, other):
        return True if other is None else self.data != _data(other)

    __hash__ = object.__hash__

    def __bool__(self):                                # one element only, as torch
        if self.data.size != 1:
            raise RuntimeError(f"the truth value of a tensor of shape {self.shape} is ambiguous")
        return bool(self.data)

    def __format__(self, spec):                        # f"{loss:.2f}" on a one-element tensor, as torch
        if spec and self.data.size == 1:
            return format(self.data.item(), spec)
        return format(str(self), spec)

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __getattr__(self, name):                       # only reached when the name is not found
        if not name.startswith("_"):
            for lookup in _attribute_lookups:          # the torch wing's, once it is imported
                return lookup(self, name)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
