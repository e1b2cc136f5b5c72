"""torch.nn.functional: the engine's fused ops (functional.py) under torch's names and arguments."""
import numpy as np

from ... import functional as _F
from ... import ops as _ops
from ...tensor import Tensor
from .. import random as _random
from ..semantics import MissingFeature


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """Softmax cross-entropy of logits (N, V) (or (..., V)) against int64 targets, one fused op."""
    for name, value, default in (("weight", weight, None), ("size_average", size_average, None),
                                 ("reduce", reduce, None), ("label_smoothing", label_smoothing, 0.0)):
        if value != default:
            raise MissingFeature(f"torch.nn.functional.cross_entropy({name}=...) is not implemented")
    return _F.cross_entropy(input, target, ignore_index=ignore_index, reduction=reduction)


def softmax(input, dim=None, dtype=None):
    """Also torch.softmax (the torch package imports it from here)."""
    if dim is None:
        raise TypeError("torch.softmax: give dim= (the axis to normalise over)")
    x = input if dtype is None else input.astype(dtype)
    return _F.softmax(x, dim)


def log_softmax(input, dim=None, dtype=None):
    """Also torch.log_softmax."""
    if dim is None:
        raise TypeError("torch.log_softmax: give dim= (the axis to normalise over)")
    x = input if dtype is None else input.astype(dtype)
    return _F.log_softmax(x, dim)


def gelu(input, approximate="none"):
    if approximate != "tanh":
        raise MissingFeature("torch.nn.functional.gelu(approximate='none') (the erf form) is not "
                             "implemented; approximate='tanh' is the book's")
    return _F.gelu(input)


def dropout(input, p=0.5, training=True, inplace=False):
    """The engine's Dropout op over PyTorch's mask: bernoulli_(1 - p) from PyTorch's stream
    (torch/random.py), so the same seed drops the same elements as torch."""
    if inplace:
        raise MissingFeature("torch.nn.functional.dropout(inplace=True) is not implemented")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input * 0.0
    keep = _random.default_generator.bernoulli(input.data.size, 1.0 - p).reshape(input.shape)
    return _F.Dropout.apply(input, Tensor(keep), p=float(p))


def relu(input, inplace=False):
    return _ops.Relu.apply(input)


def silu(input, inplace=False):
    """x * sigmoid(x) (Llama's and Qwen's feed-forward gate), the engine's Silu op."""
    if inplace:
        raise MissingFeature("torch.nn.functional.silu(inplace=True) is not implemented")
    return _ops.Silu.apply(input)


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis, one fused op (ops.RMSNorm);
    eps=None is the dtype's machine epsilon, as torch."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if len(shape) != 1 or input.shape[-1:] != shape:
        raise MissingFeature(f"torch.nn.functional.rms_norm: only the last axis is implemented "
                             f"(normalized_shape {shape}, input {input.shape})")
    if weight is None:
        weight = Tensor(np.ones(shape, dtype=input.dtype))
    eps = float(np.finfo(input.dtype).eps) if eps is None else float(eps)
    return _ops.RMSNorm.apply(input, weight, eps=eps)


def linear(input, weight, bias=None):
    return _F.linear(input, weight, bias)


def embedding(input, weight):
    return _F.embedding(weight, input)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """The engine's fused attention, for the causal case without a mask (the book's bonus)."""
    if attn_mask is not None or scale is not None or not is_causal:
        raise MissingFeature("torch.nn.functional.scaled_dot_product_attention: only is_causal=True "
                             "without attn_mask or scale is implemented")
    if 0.0 < dropout_p < 1.0:                          # PyTorch's mask over the weights (B, H, Tq, Tk)
        shape = query.shape[:-1] + (key.shape[-2],)
        keep = _random.default_generator.bernoulli(int(np.prod(shape)), 1.0 - dropout_p).reshape(shape)
        return _F.Attention.apply(query, key, value, Tensor(keep), causal=True, p=float(dropout_p))
    return _F.scaled_dot_product_attention(query, key, value, causal=True, dropout_p=dropout_p)


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingFeature(f"torch.nn.functional.{name} is not implemented by tinygrad_gpt.torch")

