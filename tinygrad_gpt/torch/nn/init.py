"""torch.nn.init: fill a parameter in place (LoRALayer's kaiming_uniform_ of appendix E).

The random ones draw PyTorch's numbers (torch/random.py through the tensor's in-place
uniform_/normal_, torch/semantics.py): after the same torch.manual_seed, the same weights as
PyTorch. Each writes into the tensor's own array, so an optimizer or a module that holds the
parameter sees the new values.
"""
import math

import numpy as np

from ... import amp
from ...tensor import no_grad
from ..semantics import MissingFeature


def _fill(tensor, values):
    np.copyto(tensor.data, values, casting="same_kind")
    amp.invalidate([tensor])                   # a bf16 copy of the old values is stale
    return tensor


def calculate_gain(nonlinearity, param=None):
    """torch's gains: linear and sigmoid 1, tanh 5/3, relu sqrt(2), leaky_relu sqrt(2 / (1 + a^2))."""
    if nonlinearity in ("linear", "conv1d", "conv2d", "conv3d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        a = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + a ** 2))
    raise MissingFeature(f"torch.nn.init.calculate_gain({nonlinearity!r}) is not implemented")


def _fans(shape):
    """(fan_in, fan_out) as torch: a 2-D (rows, cols) tensor has fan_in = cols, fan_out = rows."""
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out cannot be computed for a tensor of shape {tuple(shape)} "
                         f"(fewer than 2 dimensions)")
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def uniform_(tensor, a=0.0, b=1.0, generator=None):
    with no_grad():
        return tensor.uniform_(a, b, generator=generator)


def normal_(tensor, mean=0.0, std=1.0, generator=None):
    with no_grad():
        return tensor.normal_(mean, std, generator=generator)


def constant_(tensor, val):
    return _fill(tensor, np.full(tensor.shape, val))


def zeros_(tensor):
    return _fill(tensor, np.zeros(tensor.shape))


def ones_(tensor):
    return _fill(tensor, np.ones(tensor.shape))


def kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """U(-bound, bound), bound = gain * sqrt(3 / fan): with a = sqrt(5) (nn.Linear's and the
    book's LoRA A) that is 1 / sqrt(fan_in), fan_in being the tensor's second axis."""
    fan_in, fan_out = _fans(tensor.shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming_uniform_: mode must be 'fan_in' or 'fan_out', not {mode!r}")
    fan = fan_in if mode == "fan_in" else fan_out
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    bound = math.sqrt(3.0) * std                       # torch's own expression, to the last bit
    return uniform_(tensor, -bound, bound, generator)


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingFeature(f"torch.nn.init.{name} is not implemented by tinygrad_gpt.torch (kaiming_uniform_, "
                         f"uniform_, normal_, constant_, zeros_, ones_ are)")
