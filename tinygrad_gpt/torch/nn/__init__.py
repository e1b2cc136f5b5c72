"""torch.nn over the engine's nn.py: Module with buffers and .to(), and the layers the book uses.

A book module (`class GPTModel(nn.Module)`) becomes an engine Module: named_parameters,
state_dict, train/eval and whatever the engine's Module.__call__ records (scopes, hooks)
work on it unchanged. Layers are the engine's, with torch's constructor signatures.
"""
import math
from collections import OrderedDict, namedtuple

import numpy as np

from ... import functional as _F
from ... import nn as _engine
from ...tensor import Tensor
from ..semantics import Device, MissingFeature, bfloat16, check_device
from . import functional, init, utils  # noqa: F401  (torch.nn.functional, .init, .utils)

class _Grad(np.ndarray):
    """A parameter's gradient as the book's code reads it: the engine's array (a view of it,
    no copy), whose `.data` is itself, as torch's `p.grad.data` is the gradient's tensor
    (appendix D's find_highest_gradient: `param.grad.data.flatten().max()`)."""

    @property
    def data(self):
        return self


class Parameter(_engine.Parameter):
    """torch.nn.Parameter: the engine's Parameter; `.grad` reads as the gradient array with
    torch's `.data` (see _Grad). The engine stores and updates the plain array."""

    @property
    def grad(self):
        g = self.__dict__["_grad"]
        return None if g is None else g.view(_Grad)

    @grad.setter
    def grad(self, value):
        self.__dict__["_grad"] = value


def _torch_parameters(module, *names):
    """Re-wrap the engine layer's parameters (the same arrays) as torch.nn.Parameters."""
    for name in names:
        p = getattr(module, name)
        if p is not None:
            setattr(module, name, Parameter(p.data, requires_grad=p.requires_grad))

_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])

# torch.nn.Module methods outside the book's surface: a clear error instead of "no attribute"
# (register_forward_hook and register_forward_pre_hook are the engine Module's own, see nn.py)
_TORCH_MODULE_METHODS = frozenset("""
    add_module apply bfloat16 compile cpu cuda double float get_buffer get_parameter get_submodule half
    ipu load_state_dict_post_hook register_backward_hook
    register_full_backward_hook register_full_backward_pre_hook register_module register_parameter
    register_state_dict_pre_hook set_extra_state share_memory to_empty type xpu
""".split())


class Module(_engine.Module):
    """torch.nn.Module: the engine's Module plus buffers (register_buffer) and .to()."""

    def __init__(self):
        super().__init__()
        self._buffer_names = {}                 # name -> persistent, in registration order

    def register_buffer(self, name, tensor, persistent=True):
        """A tensor the module owns that is not a parameter (the book's causal `mask`): it is in
        state_dict() (when persistent) and not in parameters(), so no optimizer updates it."""
        if "_buffer_names" not in vars(self):
            raise AttributeError("cannot assign buffer before Module.__init__() call")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer({name!r}): expected a Tensor or None, got {type(tensor).__name__}")
        setattr(self, name, tensor)
        self._buffer_names[name] = persistent

    def named_buffers(self, prefix=""):
        for module_name, module in self.named_modules(prefix):
            for name in vars(module).get("_buffer_names", {}):
                value = getattr(module, name)
                if value is not None:
                    yield (f"{module_name}.{name}" if module_name else name), value

    def buffers(self):
        return (b for _, b in self.named_buffers())

    def parameters(self, recurse=True):
        return iter(super().parameters())       # torch gives a generator

    def _state_entries(self):
        """(name, tensor) in torch's state_dict order: each module's parameters, then its
        persistent buffers, module by module from the top."""
        seen = set()
        for module_name, module in self.named_modules():
            own = [(n, v) for n, v in vars(module).items() if isinstance(v, _engine.Parameter)]
            own += [(n, getattr(module, n)) for n, keep in vars(module).get("_buffer_names", {}).items()
                    if keep and getattr(module, n) is not None]
            for name, value in own:
                if id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{module_name}.{name}" if module_name else name), value

    def state_dict(self):
        """name -> Tensor, sharing memory with the module's own (as torch), buffers included."""
        return OrderedDict((name, Tensor(t.data)) for name, t in self._state_entries())

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Copy arrays (torch tensors, our Tensors or NumPy arrays) into parameters and buffers,
        in place; checked first, so a bad one changes nothing. Returns (missing, unexpected)."""
        if assign:
            raise MissingFeature("Module.load_state_dict(assign=True) is not implemented")
        own = dict(self._state_entries())
        unexpected = [k for k in state_dict if k not in own]
        missing = [k for k in own if k not in state_dict]
        if strict and (missing or unexpected):
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}: "
                               f"missing keys {missing}, unexpected keys {unexpected}")
        arrays = {}
        for name, value in state_dict.items():
            if name in own:
                array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
                if array.shape != own[name].shape:
                    raise RuntimeError(f"load_state_dict: {name} has shape {array.shape}, "
                                       f"the model's is {own[name].shape}")
                arrays[name] = array
        for name, array in arrays.items():
            np.copyto(own[name].data, array, casting="same_kind")
        return _IncompatibleKeys(missing, unexpected)

    def requires_grad_(self, requires_grad=True):
        """Set requires_grad on every parameter (freeze or unfreeze the module), as torch."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def to(self, *args, **kwargs):
        """.to("cpu") / .to(torch.device("cpu")) is the module itself; other devices are an error."""
        for arg in args + tuple(kwargs.values()):
            if isinstance(arg, (str, Device)):
                check_device(arg, f"{type(self).__name__}.to")
            elif arg is not None:
                raise MissingFeature(f"{type(self).__name__}.to({arg!r}): changing a module's dtype is not "
                                     f"implemented (the engine trains in float32)")
        return self

    def __getattr__(self, name):                # only reached when the name is not found
        if name in _TORCH_MODULE_METHODS:
            raise MissingFeature(f"torch.nn.Module.{name} is not implemented by tinygrad_gpt.torch")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


class Linear(_engine.Linear, Module):
    """torch.nn.Linear. dtype=torch.bfloat16: float32 storage holding bf16 values (see
    semantics.BFloat16); device="meta": zeros, and nothing drawn (see _meta)."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        meta = _meta(device, "nn.Linear")
        bf16 = _float32_or_bfloat16(dtype, "nn.Linear")
        super().__init__(in_features, out_features, bias=bias)   # the engine's, then Module's
        _torch_parameters(self, "weight", "bias")
        if meta:
            _zero(self.weight, self.bias)
        else:
            self.reset_parameters()
        if bf16:
            _round_to_bfloat16(self.weight, self.bias)

    def reset_parameters(self):
        """torch's: kaiming_uniform_(a=sqrt(5)) for the weight, U(+-1/sqrt(fan_in)) for the bias,
        drawn from PyTorch's stream (the same weights as torch after the same manual_seed)."""
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)


class Embedding(_engine.Embedding, Module):
    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, device=None, dtype=None):
        if padding_idx is not None:
            raise MissingFeature("nn.Embedding(padding_idx=...) is not implemented")
        meta = _meta(device, "nn.Embedding")
        bf16 = _float32_or_bfloat16(dtype, "nn.Embedding")
        super().__init__(num_embeddings, embedding_dim)
        _torch_parameters(self, "weight")
        if meta:
            _zero(self.weight)
        else:
            self.reset_parameters()
        if bf16:
            _round_to_bfloat16(self.weight)

    def reset_parameters(self):
        """torch's: N(0, 1) from PyTorch's stream."""
        init.normal_(self.weight)


class Dropout(_engine.Dropout, Module):
    """torch.nn.Dropout: the engine's Dropout op over PyTorch's mask (functional.dropout)."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__(p)

    def forward(self, x):
        return functional.dropout(x, self.p, training=self.training)


class ReLU(Module):
    def __init__(self, inplace=False):
        super().__init__()

    def forward(self, x):
        return functional.relu(x)


class LayerNorm(Module):
    """torch.nn.LayerNorm over the last axis: parameters `weight` (ones) and `bias` (zeros)."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, device=None, dtype=None):
        super().__init__()
        check_device(device, "nn.LayerNorm")
        _not_float32(dtype, "nn.LayerNorm")
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if len(shape) != 1 or not elementwise_affine or not bias:
            raise MissingFeature("nn.LayerNorm: only one normalized axis with weight and bias is implemented")
        self.eps = eps
        self.weight = Parameter(np.ones(shape, dtype=np.float32))
        self.bias = Parameter(np.zeros(shape, dtype=np.float32))

    def forward(self, x):
        return _F.layer_norm(x, self.weight, self.bias, self.eps)


class RMSNorm(Module):
    """torch.nn.RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight, one fused op
    (ops.RMSNorm, its backward under its forward); `weight` starts at ones. eps=None is the
    dtype's machine epsilon, as torch. dtype=torch.bfloat16: ones are bf16 values already."""

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, device=None, dtype=None):
        super().__init__()
        check_device(device, "nn.RMSNorm")
        _float32_or_bfloat16(dtype, "nn.RMSNorm")
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if len(shape) != 1 or not elementwise_affine:
            raise MissingFeature("nn.RMSNorm: only one normalized axis with a weight is implemented")
        self.normalized_shape, self.eps = shape, eps
        self.weight = Parameter(np.ones(shape, dtype=np.float32))

    def forward(self, x):
        return functional.rms_norm(x, self.normalized_shape, self.weight, self.eps)


class SiLU(Module):
    def __init__(self, inplace=False):
        super().__init__()

    def forward(self, x):
        return functional.silu(x)


class GELU(_engine.GELU, Module):
    """torch.nn.GELU(approximate="tanh"): the engine's GELU is the tanh form the book uses."""

    def __init__(self, approximate="none"):
        if approximate != "tanh":
            raise MissingFeature("nn.GELU(approximate='none') (the erf form) is not implemented; "
                                 "nn.GELU(approximate='tanh') is the book's")
        super().__init__()


class Sequential(_engine.Sequential, Module):
    def __init__(self, *modules):
        super().__init__(*modules)


class ModuleList(Module):
    """Modules held in a list, named "0", "1", ... (no forward of its own), as torch."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        setattr(self, str(len(self)), module)
        return self

    def __len__(self):
        return sum(1 for _ in self.children())

    def __iter__(self):
        return self.children()

    def __getitem__(self, i):
        children = list(self.children())
        return ModuleList(children[i]) if isinstance(i, slice) else children[i]


def _float32_or_bfloat16(dtype, where):
    """True for torch.bfloat16 (parameters then hold bf16 values in float32 storage), False for
    float32 or None; other dtypes are not implemented."""
    if dtype is bfloat16:
        return True
    _not_float32(dtype, where)
    return False


def _round_to_bfloat16(*params):
    """Round a bf16 layer's float32 draws to bf16 in place. PyTorch draws a bf16 tensor's values
    in bf16 (an 8-bit uniform, a bf16 Box-Muller), so these are not its numbers; each element
    still takes the same words from the stream, so later draws stay PyTorch's."""
    for p in params:
        if p is not None:
            flat = p.data.reshape(-1)                  # a view: rounded a slice at a time, in place
            for start in range(0, flat.size, 1 << 22):
                flat[start:start + (1 << 22)] = bfloat16.round(flat[start:start + (1 << 22)])


def _meta(device, where):
    """device="meta" in PyTorch makes a tensor with a shape and no values, and draws nothing.
    The shim has only the CPU: a meta parameter is a CPU one filled with zeros, and nothing is
    drawn, so the random stream stays PyTorch's. Load real weights before using it."""
    if device is not None and Device(device).type == "meta":
        return True
    check_device(device, where)
    return False


def _zero(*params):
    for p in params:
        if p is not None:
            p.data[...] = 0.0


def _not_float32(dtype, where):
    if dtype is not None and np.dtype(dtype) != np.float32:
        raise MissingFeature(f"{where}(dtype={dtype}): only float32 parameters are implemented")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingFeature(f"torch.nn.{name} is not implemented by tinygrad_gpt.torch, which maps the part of "
                         f"PyTorch that the book's code uses onto the engine")
