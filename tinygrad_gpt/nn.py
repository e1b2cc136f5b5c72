"""Modules: PyTorch's nn.Module shape, the book's layers and parameter names.

This room owns the layers (Linear, Embedding, LayerNorm, Dropout, FeedForward,
MultiHeadAttention, TransformerBlock) built on the fused ops of functional.py, and the
interface a KV cache offers attention (`LayerKV`); it knows nothing of GPT-2's files,
training or sampling.

A Module finds its parameters and sub-modules by looking at its own attributes in the
order they were set, so `named_parameters()` yields the book's names in PyTorch's order:
`tok_emb.weight`, `trf_blocks.0.att.W_query.weight`, ..., `out_head.weight`.

This room owns Module (the tree of parameters, state dicts, train/eval modes) and the book's
layers. `Module.__call__` keeps the module scope, the stack of modules whose forward is
running (`module_stack()`, with qualified names), and calls the module hooks
(`register_module_forward_hook`, `Module.register_forward_hook`, and the pre-hooks; the
global ones live in observe.py): tracing observes modules through these, never by replacing a `forward`.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Callable, Iterator, List, Optional, Protocol, Tuple

import numpy as np

from . import functional as F
from .observe import (_module_hooks, _module_pre_hooks, _scope, current_module, module_stack,  # noqa: F401
                      register_module_forward_hook, register_module_forward_pre_hook)
from .tensor import RemovableHandle, Tensor, default_rng, is_grad_enabled
from .workspace import Workspace


class LayerKV(Protocol):
    """What MultiHeadAttention needs from a KV cache: one layer's keys and values.
    generation.KVCache.layer(i) gives one; anything with this method will do."""

    def append(self, k: np.ndarray, v: np.ndarray, start_pos: int) -> Tuple[np.ndarray, np.ndarray]:
        """Store k, v (B, H, T, D) at positions [start_pos, start_pos + T); return the keys
        and values of positions [0, start_pos + T), (B, H, start_pos + T, D) each."""
        ...


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates: requires_grad by default. It owns
    the buffers the engine reuses for it from step to step (`workspace`: workspace.py)."""

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)
        self.workspace = Workspace()

    def __repr__(self):
        return "Parameter" + super().__repr__()[len("Tensor"):]


class Module:
    """PyTorch's nn.Module shape: sub-modules and Parameters as attributes, `forward` called
    through `__call__`, which keeps the module scope and calls the hooks."""

    def __init__(self) -> None:
        self.training = True

    def forward(self, *args, **kwargs) -> Any:
        raise NotImplementedError

    def __call__(self, *args, **kwargs) -> Any:
        own = self.__dict__.get("_hooks")
        if _module_pre_hooks or own:
            for hook in _module_pre_hooks + (own["pre"] if own else []):
                hook(self, args)
        _scope.append([self, None])
        try:
            out = self.forward(*args, **kwargs)
        finally:
            _scope.pop()
        if _module_hooks or own:
            for hook in _module_hooks + (own["post"] if own else []):
                hook(self, args, out)
        return out

    def _own_hooks(self):
        return self.__dict__.setdefault("_hooks", {"pre": [], "post": []})

    def register_forward_pre_hook(self, hook: Callable[["Module", tuple], None]) -> RemovableHandle:
        """Call hook(module, args) before this module's forward, as torch's."""
        hooks = self._own_hooks()["pre"]
        hooks.append(hook)
        return RemovableHandle(hooks, hook)

    def register_forward_hook(self, hook: Callable[["Module", tuple, Any], None]) -> RemovableHandle:
        """Call hook(module, args, output) after this module's forward, as torch's."""
        hooks = self._own_hooks()["post"]
        hooks.append(hook)
        return RemovableHandle(hooks, hook)

    # ---- the tree of modules and parameters
    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self) -> Iterator["Module"]:
        return (m for _, m in self.named_children())

    def named_modules(self, prefix: str = "") -> Iterator[Tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix: str = "") -> Iterator[Tuple[str, Parameter]]:
        """(name, Parameter) pairs, each parameter once, in the order they were created."""
        seen = set()
        for module_name, module in self.named_modules(prefix):
            for name, value in vars(module).items():
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{module_name}.{name}" if module_name else name), value

    def parameters(self) -> List[Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(p.size for p in self.parameters())

    # ---- state
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """name -> the parameter's array (not a copy, as PyTorch's tensors share storage)."""
        return OrderedDict((name, p.data) for name, p in self.named_parameters())

    _ignored_keys = ()   # entries the PyTorch twin of a module carries that we do not need (buffers)

    def load_state_dict(self, state_dict, strict: bool = True) -> Tuple[List[str], List[str]]:
        """Copy arrays into the parameters, in place. With strict=True, missing or unexpected
        keys are an error; a wrong shape always is. Returns (missing, unexpected)."""
        params = dict(self.named_parameters())
        # each sub-module's ignorable entries under its own prefix: "trf_blocks.0.att.mask" for
        # a GPTModel, "att.mask" for a TransformerBlock, "mask" for a MultiHeadAttention alone
        ignored = {f"{prefix}.{k}" if prefix else k
                   for prefix, m in self.named_modules() for k in m._ignored_keys}
        unexpected = [k for k in state_dict if k not in params and k not in ignored]
        missing = [k for k in params if k not in state_dict]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
            if unexpected:
                parts.append(f"unexpected keys: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
            raise KeyError(f"load_state_dict: {'; '.join(parts)}")
        for name, value in state_dict.items():
            if name not in params:
                continue
            value = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
            if value.shape != params[name].shape:
                raise ValueError(f"load_state_dict: {name} has shape {value.shape}, "
                                 f"the model expects {params[name].shape}")
        for name, value in state_dict.items():
            if name in params:
                value = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
                params[name].copy_(value)     # in place, and its version goes up
        return missing, unexpected

    # ---- modes
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.fill(0)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        children = list(self.named_children())
        for name, child in children:
            lines.append(f"  ({name}): " + repr(child).replace("\n", "\n  "))
        return lines[0] + (")" if not children else "\n" + "\n".join(lines[1:]) + "\n)")


class Sequential(Module):
    """Modules applied in order; their names are "0", "1", ..., as torch.nn.Sequential."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)

    def __getitem__(self, i):
        return list(self.children())[i]

    def __len__(self):
        return sum(1 for _ in self.children())

    def __iter__(self):
        return self.children()

    def forward(self, x):
        for m in self.children():
            x = m(x)
        return x


# ----------------------------------------------------------------------------- layers
def _uniform(shape, bound, rng=None):
    rng = default_rng() if rng is None else rng
    u = rng.random(shape, dtype=np.float32)                   # U[0, 1), drawn in float32: fast
    u *= np.float32(2.0 * bound)
    u -= np.float32(bound)
    return u                                                  # U[-bound, bound)


class Linear(Module):
    """y = x W^T + b, W: (out_features, in_features). PyTorch's initialisation:
    W and b ~ U(-1/sqrt(in), 1/sqrt(in))."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(_uniform((out_features, in_features), bound))
        self.bias = Parameter(_uniform((out_features,), bound)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table (num_embeddings, embedding_dim), initialised N(0, 1) as PyTorch."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(default_rng().standard_normal((num_embeddings, embedding_dim),
                                                              dtype=np.float32))

    def forward(self, ids) -> Tensor:
        return F.embedding(self.weight, ids)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """The book's LayerNorm: parameters `scale` (ones) and `shift` (zeros), eps 1e-5."""

    def __init__(self, emb_dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.scale = Parameter(np.ones(emb_dim, dtype=np.float32))
        self.shift = Parameter(np.zeros(emb_dim, dtype=np.float32))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.scale, self.shift, self.eps)


class Dropout(Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:                # as torch: at construction, not at the first forward
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, training=self.training)

    def extra_repr(self):
        return f"p={self.p}"


class GELU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x)


class FeedForward(Module):
    def __init__(self, cfg: dict):
        super().__init__()
        C = cfg["emb_dim"]
        self.layers = Sequential(Linear(C, 4 * C), GELU(), Linear(4 * C, C))

    def forward(self, x: Tensor) -> Tensor:    # (B, T, C) -> (B, T, 4C) -> (B, T, C)
        return self.layers(x)


class MultiHeadAttention(Module):
    """Causal multi-head self-attention, the book's names: W_query, W_key, W_value, out_proj,
    dropout on the attention weights. The book's `mask` buffer is not needed: the fused
    attention op skips the upper triangle (a state dict's `mask` is accepted and ignored)."""

    _ignored_keys = ("mask",)

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int,
                 qkv_bias: bool = False):
        super().__init__()
        if d_out % num_heads:
            raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.context_length = context_length
        self.W_query = Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = Linear(d_out, d_out)
        self.dropout = Dropout(dropout)

    def split_heads(self, x: Tensor) -> Tensor:                  # (B, T, C) -> (B, H, T, D)
        B, T, _ = x.shape
        return x.reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, kv_cache: Optional["LayerKV"] = None, start_pos: int = 0) -> Tensor:
        """x: (B, T, C) at positions [start_pos, start_pos + T) -> (B, T, C).

        Without a cache the T positions attend to each other (training, evaluation). With one
        (inference, under no_grad), this layer's keys and values are written into it at
        start_pos and the T queries attend to every cached position before and up to their
        own: the same causal attention, with queries shorter than keys."""
        B, T, _ = x.shape
        q = self.split_heads(self.W_query(x))  # (B, H, T, D)
        k = self.split_heads(self.W_key(x))    # (B, H, T, D)
        v = self.split_heads(self.W_value(x))  # (B, H, T, D)
        if kv_cache is not None:
            if is_grad_enabled():
                raise RuntimeError("a KV cache is for inference: run the model under no_grad()")
            keys, values = kv_cache.append(k.data, v.data, start_pos)   # (B, H, start_pos + T, D)
            k, v = Tensor(keys), Tensor(values)
        p = self.dropout.p if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, causal=True, dropout_p=p)   # (B, H, T, D)
        ctx = ctx.transpose(1, 2).reshape(B, T, self.d_out)                        # (B, T, C)
        return self.out_proj(ctx)


class TransformerBlock(Module):
    """Pre-norm block: x + drop(att(norm1(x))), then x + drop(ff(norm2(x)))."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.att = MultiHeadAttention(d_in=cfg["emb_dim"], d_out=cfg["emb_dim"],
                                      context_length=cfg["context_length"], num_heads=cfg["n_heads"],
                                      dropout=cfg["drop_rate"], qkv_bias=cfg["qkv_bias"])
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_resid = Dropout(cfg["drop_rate"])

    def forward(self, x: Tensor, kv_cache: Optional["LayerKV"] = None, start_pos: int = 0) -> Tensor:
        """x: (B, T, C) at positions [start_pos, start_pos + T); kv_cache: see MultiHeadAttention."""
        x = x + self.drop_resid(self.att(self.norm1(x), kv_cache, start_pos))   # shortcut around attention
        x = x + self.drop_resid(self.ff(self.norm2(x)))     # shortcut around the feed-forward
        return x
