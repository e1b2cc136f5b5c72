"""A torch-shaped namespace over the engine: the part of PyTorch the book's code uses.

    import tinygrad_gpt.torch as torch          # in a notebook: the book's calls, on our engine
    python -m tinygrad_gpt.torch script.py      # a script's own `import torch` gets this

Every name here maps onto the engine (tensor.py, ops.py, functional.py, nn.py, optim.py,
data.py); nothing computes twice. A name PyTorch has and this namespace does not raises
NotImplementedError naming it (an AttributeError too, so hasattr() still answers False).

torch.save(model.state_dict(), "model.pth") writes safetensors, whatever the file's name, and
torch.load reads only such files: nothing is ever pickled (serialization.py).
"""
import math as _math

import numpy as _np

from .semantics import Device as device
from .semantics import MissingFeature as _Missing
from .semantics import Where as _Where, check_device as _check_device
from . import semantics as _semantics
from ..tensor import Tensor
from . import random as _random
from ..tensor import cat as _cat
from ..tensor import enable_grad, is_grad_enabled, no_grad
from ..tensor import manual_seed as _manual_seed

inf = _math.inf
nan = _math.nan
pi = _math.pi
e = _math.e

# dtypes are NumPy's: x.dtype == torch.float32 holds for a float32 tensor
float32 = float = _np.dtype("float32")
float64 = double = _np.dtype("float64")
int64 = long = _np.dtype("int64")
int32 = int = _np.dtype("int32")
bool = _np.dtype("bool")
_builtin_int = type(1)                            # `int` above is now torch.int
_builtin_bool = type(True)
from .semantics import bfloat16  # noqa: E402  (float32 storage, values rounded to bf16: semantics.py)


class Size(tuple):
    """torch.Size: a shape, a tuple (x.shape == torch.Size([2, 3]) holds for a tuple shape)."""

    def numel(self):
        n = 1
        for k in self:
            n *= k
        return n

    def __repr__(self):
        return f"torch.Size({list(self)})"


def equal(input, other):
    """True when both have the same shape and the same values."""
    a, b = _t(input).data, _t(other).data
    return a.shape == b.shape and _np.array_equal(a, b)


# ----------------------------------------------------------------------------- making tensors
def _torch_dtype(data):
    """The dtype torch.tensor gives: bools stay bool, Python ints int64, Python floats float32,
    NumPy arrays keep theirs (torch.tensor(np.float64 array) is float64)."""
    if isinstance(data, (_np.ndarray, _np.generic)):
        return data.dtype
    flat = _np.asarray(data)
    if flat.dtype == _np.bool_:
        return bool
    if _np.issubdtype(flat.dtype, _np.integer):
        return int64
    if _np.issubdtype(flat.dtype, _np.floating):
        return float32
    raise TypeError(f"torch.tensor: cannot make a tensor from {type(data).__name__} of {flat.dtype}")


def tensor(data, dtype=None, device=None, requires_grad=False):
    """A new tensor holding a copy of data (a list, a number, a NumPy array or a Tensor)."""
    _check_device(device, "torch.tensor")
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, (list, tuple)) and any(isinstance(x, Tensor) for x in data):
        data = [x.data if isinstance(x, Tensor) else x for x in data]
    if dtype is bfloat16:
        return Tensor(bfloat16.round(_np.array(data, dtype=_np.float32)), requires_grad=requires_grad)
    dtype = _torch_dtype(data) if dtype is None else _np.dtype(dtype)
    return Tensor(_np.array(data, dtype=dtype), requires_grad=requires_grad)


def _size(size):
    return tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else tuple(size)


def ones(*size, dtype=None, device=None, requires_grad=False):
    _check_device(device, "torch.ones")
    return Tensor(_np.ones(_size(size), dtype=dtype or float32), requires_grad=requires_grad)


def zeros(*size, dtype=None, device=None, requires_grad=False):
    _check_device(device, "torch.zeros")
    return Tensor(_np.zeros(_size(size), dtype=dtype or float32), requires_grad=requires_grad)


def empty(*size, dtype=None, device=None, requires_grad=False):
    """Uninitialised memory, as torch: fill it before reading it (nn.init does)."""
    _check_device(device, "torch.empty")
    return Tensor(_np.empty(_size(size), dtype=dtype or float32), requires_grad=requires_grad)


def rand(*size, dtype=None, device=None, requires_grad=False, generator=None):
    """U[0, 1): PyTorch's numbers for the same seed (torch/random.py)."""
    _check_device(device, "torch.rand")
    return empty(*size, dtype=dtype).uniform_(0.0, 1.0, generator=generator).requires_grad_(requires_grad)


def randn(*size, dtype=None, device=None, requires_grad=False, generator=None):
    """N(0, 1): PyTorch's numbers for the same seed (torch/random.py)."""
    _check_device(device, "torch.randn")
    return empty(*size, dtype=dtype).normal_(0.0, 1.0, generator=generator).requires_grad_(requires_grad)


def randint(low=0, high=None, size=None, *, dtype=None, device=None, generator=None, requires_grad=False):
    """Integers in [low, high) (randint(high, size) too), int64: PyTorch's numbers for the same seed."""
    _check_device(device, "torch.randint")
    if size is None:                                   # randint(high, size)
        low, high, size = 0, low, high
    out = empty(*((size,) if isinstance(size, _builtin_int) else tuple(size)), dtype=dtype or int64)
    return out.random_(low, high, generator=generator)


def randperm(n, *, generator=None, dtype=None, device=None, requires_grad=False):
    """A permutation of 0 .. n-1, int64: PyTorch's (Fisher-Yates over its words, torch/random.py)."""
    _check_device(device, "torch.randperm")
    g = _random.default_generator if generator is None else generator
    return Tensor(g.randperm(_builtin_int(n)).astype(dtype or int64, copy=False))


def arange(start, end=None, step=1, dtype=None, device=None, requires_grad=False):
    """int64 for integer arguments, float32 otherwise, as torch."""
    _check_device(device, "torch.arange")
    if end is None:
        start, end = 0, start
    if dtype is None:
        integral = all(isinstance(v, (_builtin_int, _np.integer)) for v in (start, end, step))
        dtype = int64 if integral else float32
    return Tensor(_np.arange(start, end, step, dtype=dtype), requires_grad=requires_grad)


def linspace(start, end, steps, dtype=None, device=None):
    _check_device(device, "torch.linspace")
    return Tensor(_np.linspace(start, end, steps, dtype=dtype or float32))


def manual_seed(seed):
    """Seed PyTorch's CPU generator (torch/random.py: initialisation, dropout, rand, randn,
    multinomial and the DataLoader's shuffle then give PyTorch's numbers) and the engine's
    own NumPy generator (for whatever the engine draws itself)."""
    _manual_seed(seed)
    return _random.default_generator.manual_seed(seed)


def initial_seed():
    return _random.default_generator.initial_seed()


default_generator = _random.default_generator


class Generator(_random.Generator):
    """torch.Generator(): its own Mersenne Twister, for DataLoader(generator=...), multinomial,
    randperm; seeded by .manual_seed(s) as torch's."""

    def __init__(self, device="cpu"):
        _check_device(device, "torch.Generator")
        super().__init__()


def inference_mode(mode=True):
    """torch.inference_mode(): no graph recorded, as no_grad (a context manager and a decorator)."""
    return no_grad() if mode else enable_grad()


def is_tensor(obj):
    return isinstance(obj, Tensor)


# ----------------------------------------------------------------------------- ops
def _t(x):
    return x if isinstance(x, Tensor) else Tensor(_np.asarray(x))


def cat(tensors, dim=0):
    return _cat([_t(t) for t in tensors], dim=dim)


concat = cat


def stack(tensors, dim=0):
    return cat([_t(t).unsqueeze(dim) for t in tensors], dim=dim)


def nonzero(input, as_tuple=False):
    """The indices of the non-zero (True) elements, one row each: int64 (N, input.ndim); with
    as_tuple=True one (N,) tensor per axis. No gradient (indices have none)."""
    rows = _np.argwhere(_t(input).data).astype(_np.int64)         # (N, ndim)
    return tuple(Tensor(rows[:, i].copy()) for i in range(rows.shape[1])) if as_tuple else Tensor(rows)


def squeeze(input, dim=None):
    return _t(input).squeeze(dim)


def numel(input):
    return _t(input).numel()


from .nn.functional import log_softmax, softmax  # noqa: E402,F401  (torch.softmax is F.softmax)


def argmax(input, dim=None, keepdim=False):
    """The index of the largest value, an int64 tensor (no gradient)."""
    return Tensor(_np.asarray(_np.argmax(_t(input).data, axis=dim, keepdims=keepdim), dtype=int64))


def gather(input, dim, index):
    """input's values at `index` along dim, as one differentiable GetItem (semantics.gather)."""
    return _semantics.gather(_t(input), dim, index)


def topk(input, k, dim=-1, largest=True, sorted=True):
    """(values, indices) of the k largest along dim, largest first; values keep the gradient."""
    x = _t(input)
    keys = -x.data if largest else x.data
    indices = _np.take(_np.argsort(keys, axis=dim, kind="stable"), _np.arange(k), axis=dim)
    return _TopK(gather(x, dim, indices), Tensor(indices.astype(_np.int64)))


class _TopK(tuple):
    """torch.return_types.topk: a pair with names."""
    def __new__(cls, values, indices):
        return super().__new__(cls, (values, indices))
    values = property(lambda self: self[0])
    indices = property(lambda self: self[1])


def where(condition, input, other):
    """input where condition holds, else other; gradients go to the side each element came from."""
    cond = condition.data if isinstance(condition, Tensor) else _np.asarray(condition)
    a, b = _t(input), _t(other)
    if a.dtype != b.dtype and a.ndim == 0 and not a.requires_grad:
        a = Tensor(a.data.astype(b.dtype))                 # a scalar such as tensor(-inf) meets b's dtype
    elif a.dtype != b.dtype and b.ndim == 0 and not b.requires_grad:
        b = Tensor(b.data.astype(a.dtype))
    return _Where.apply(a, b, condition=cond.astype(_np.bool_, copy=False))


def multinomial(input, num_samples, replacement=False, generator=None):
    """Category indices drawn from each row of probabilities (int64, no gradient), as PyTorch
    draws them for one sample or without replacement: q ~ Exp(1) in the input's dtype, the
    indices of the largest p / q (the argmax for one sample, topk for more): PyTorch's tokens.
    With replacement and several samples: the inverse CDF over the stream's double uniforms
    (the right distribution; PyTorch's own draws there are not reproduced)."""
    p = _t(input).data
    g = _random.default_generator if generator is None else generator
    if replacement and num_samples > 1:               # inverse CDF, one double uniform per draw
        rows = p.reshape(-1, p.shape[-1]).astype(_np.float64)
        cdf = _np.cumsum(rows, axis=-1) / rows.sum(axis=-1, keepdims=True)
        u = g.uniform_float64(rows.shape[0] * num_samples).reshape(rows.shape[0], num_samples)
        out = _np.stack([_np.minimum(_np.searchsorted(c, r, side="right"), len(c) - 1) for c, r in zip(cdf, u)])
        return Tensor(out.reshape(p.shape[:-1] + (num_samples,)).astype(_np.int64))
    q = g.exponential_float64(p.size).astype(p.dtype).reshape(p.shape)
    ratio = p / q                                      # in p's dtype, as at::div_out
    if num_samples == 1:
        out = _np.argmax(ratio, axis=-1)[..., None]
    else:
        out = _np.argsort(-ratio, axis=-1, kind="stable")[..., :num_samples]
    return Tensor(out.astype(_np.int64))


def triu(input, diagonal=0):
    """The upper triangle (from `diagonal` up) of the last two axes; zeros below. Differentiable."""
    x = _t(input)
    below = ~_np.triu(_np.ones(x.shape[-2:], dtype=_np.bool_), diagonal)
    return x.masked_fill(below, 0.0)


def tril(input, diagonal=0):
    x = _t(input)
    above = ~_np.tril(_np.ones(x.shape[-2:], dtype=_np.bool_), diagonal)
    return x.masked_fill(above, 0.0)


def relu(input):
    return nn.functional.relu(input)


def tanh(input):
    return input.tanh()


def sqrt(input):
    return input.sqrt()


def rsqrt(input):
    return _t(input).rsqrt()


def sin(input):
    return _t(input).sin()


def cos(input):
    return _t(input).cos()


def abs(input):
    return _t(input).abs()


def repeat_interleave(input, repeats, dim=None):
    return _t(input).repeat_interleave(repeats, dim=dim)


def allclose(input, other, rtol=1e-05, atol=1e-08, equal_nan=False):
    """|input - other| <= atol + rtol |other| everywhere (shapes broadcast), as torch."""
    return _builtin_bool(_np.allclose(_t(input).data, _t(other).data, rtol=rtol, atol=atol, equal_nan=equal_nan))


def exp(input):
    return input.exp()


def log(input):
    return input.log()


def pow(input, exponent):
    return input ** exponent


def mean(input, dim=None, keepdim=False):
    return input.mean(dim=dim, keepdim=keepdim)


def sum(input, dim=None, keepdim=False):
    return input.sum(dim=dim, keepdim=keepdim)


def var(input, dim=None, keepdim=False, unbiased=True):
    return input.var(dim=dim, keepdim=keepdim, unbiased=unbiased)


def ones_like(input, dtype=None):
    return Tensor(_np.ones_like(_t(input).data, dtype=dtype))


def zeros_like(input, dtype=None):
    return Tensor(_np.zeros_like(_t(input).data, dtype=dtype))


# ----------------------------------------------------------------------------- devices
class _Backend:
    """torch.cuda, torch.backends.mps: not here, so scripts that ask pick "cpu"."""

    def __init__(self, name):
        self._name = name

    def is_available(self):
        return False

    def device_count(self):
        return 0

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        raise _Missing(f"torch.{self._name}.{name}: tinygrad_gpt.torch has no {self._name} (CPU only)")


cuda = _Backend("cuda")


class _Backends:
    mps = _Backend("backends.mps")
    cuda = _Backend("backends.cuda")


backends = _Backends()

from . import nn, optim, testing, utils  # noqa: E402  (they import the names above)
from .serialization import load, save  # noqa: E402


def __getattr__(name):
    """Any other torch name: not part of the surface the book uses."""
    if name.startswith("__"):
        raise AttributeError(name)
    raise _Missing(f"torch.{name} is not implemented by tinygrad_gpt.torch, which maps the part of "
                   f"PyTorch that the book's code uses onto the engine")
