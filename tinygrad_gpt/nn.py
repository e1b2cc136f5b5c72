"""Modules: PyTorch's nn.Module shape, the book's layers and parameter names.

A Module finds its parameters and sub-modules by looking at its own attributes in the
order they were set, so `named_parameters()` yields the book's names in PyTorch's order:
`tok_emb.weight`, `trf_blocks.0.att.W_query.weight`, ..., `out_head.weight`.
"""
import math
from collections import OrderedDict

import numpy as np

from . import amp
from . import functional as F
from .tensor import Tensor, default_rng


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates: requires_grad by default."""

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter" + super().__repr__()[len("Tensor"):]


class Module:
    def __init__(self):
        self.training = True

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- the tree of modules and parameters
    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self):
        return (m for _, m in self.named_children())

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix=""):
        """(name, Parameter) pairs, each parameter once, in the order they were created."""
        seen = set()
        for module_name, module in self.named_modules(prefix):
            for name, value in vars(module).items():
                if isinstance(value, Parameter) and id(value) not in seen:
                    seen.add(id(value))
                    yield (f"{module_name}.{name}" if module_name else name), value

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    # ---- state
    def state_dict(self):
        """name -> the parameter's array (not a copy, as PyTorch's tensors share storage)."""
        return OrderedDict((name, p.data) for name, p in self.named_parameters())

    _ignored_keys = ()   # entries the PyTorch twin of a module carries that we do not need (buffers)

    def load_state_dict(self, state_dict, strict=True):
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
                np.copyto(params[name].data, value, casting="same_kind")
        amp.invalidate(params.values())       # their bf16 copies (autocast) are stale now
        return missing, unexpected

    # ---- modes
    def train(self, mode=True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.fill(0)

    def extra_repr(self):
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

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(_uniform((out_features, in_features), bound))
        self.bias = Parameter(_uniform((out_features,), bound)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table (num_embeddings, embedding_dim), initialised N(0, 1) as PyTorch."""

    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(default_rng().standard_normal((num_embeddings, embedding_dim),
                                                              dtype=np.float32))

    def forward(self, ids):
        return F.embedding(self.weight, ids)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """The book's LayerNorm: parameters `scale` (ones) and `shift` (zeros), eps 1e-5."""

    def __init__(self, emb_dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.scale = Parameter(np.ones(emb_dim, dtype=np.float32))
        self.shift = Parameter(np.zeros(emb_dim, dtype=np.float32))

    def forward(self, x):
        return F.layer_norm(x, self.scale, self.shift, self.eps)


class Dropout(Module):
    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:                # as torch: at construction, not at the first forward
            raise ValueError(f"dropout probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, training=self.training)

    def extra_repr(self):
        return f"p={self.p}"


class GELU(Module):
    def forward(self, x):
        return F.gelu(x)


class FeedForward(Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg["emb_dim"]
        self.layers = Sequential(Linear(C, 4 * C), GELU(), Linear(4 * C, C))

    def forward(self, x):                      # (B, T, C) -> (B, T, 4C) -> (B, T, C)
        return self.layers(x)


class MultiHeadAttention(Module):
    """Causal multi-head self-attention, the book's names: W_query, W_key, W_value, out_proj,
    dropout on the attention weights. The book's `mask` buffer is not needed: the fused
    attention op skips the upper triangle (a state dict's `mask` is accepted and ignored)."""

    _ignored_keys = ("mask",)

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
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

    def split_heads(self, x):                  # (B, T, C) -> (B, H, T, D)
        B, T, _ = x.shape
        return x.reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x):                      # x: (B, T, C)
        B, T, _ = x.shape
        q = self.split_heads(self.W_query(x))  # (B, H, T, D)
        k = self.split_heads(self.W_key(x))    # (B, H, T, D)
        v = self.split_heads(self.W_value(x))  # (B, H, T, D)
        p = self.dropout.p if self.training else 0.0
        ctx = F.scaled_dot_product_attention(q, k, v, causal=True, dropout_p=p)   # (B, H, T, D)
        ctx = ctx.transpose(1, 2).reshape(B, T, self.d_out)                        # (B, T, C)
        return self.out_proj(ctx)


class TransformerBlock(Module):
    """Pre-norm block: x + drop(att(norm1(x))), then x + drop(ff(norm2(x)))."""

    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(d_in=cfg["emb_dim"], d_out=cfg["emb_dim"],
                                      context_length=cfg["context_length"], num_heads=cfg["n_heads"],
                                      dropout=cfg["drop_rate"], qkv_bias=cfg["qkv_bias"])
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_resid = Dropout(cfg["drop_rate"])

    def forward(self, x):                      # (B, T, C)
        x = x + self.drop_resid(self.att(self.norm1(x)))    # shortcut around attention
        x = x + self.drop_resid(self.ff(self.norm2(x)))     # shortcut around the feed-forward
        return x
