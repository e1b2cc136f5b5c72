"""LoRA, the book's appendix E: a trainable low-rank update beside each frozen Linear.

    y = x W^T + b  +  alpha * (x A B)          A: (in, r) kaiming-uniform, B: (r, out) zeros

B starts at zero, so the adapted model starts as the model it adapts; only A and B train
(r * (in + out) numbers per layer instead of in * out). The names are the book's
(`LoRALayer`, `LinearWithLoRA`, `replace_linear_with_lora`), and so are the parameter
names they give (`...W_query.linear.weight`, `...W_query.lora.A`). `merge_lora` folds the
update back into plain Linears (W' = W + alpha (A B)^T) for saving and generation.
"""
import math

import numpy as np

from . import amp
from .nn import Linear, Module, Parameter, _uniform
from .tensor import Tensor


class LoRALayer(Module):
    def __init__(self, in_dim: int, out_dim: int, rank: int, alpha: float):
        super().__init__()
        # torch.nn.init.kaiming_uniform_(A, a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and
        # torch's fan_in of an (in, r) tensor is its second axis, r (as the book's code has it)
        self.A = Parameter(_uniform((in_dim, rank), 1.0 / math.sqrt(rank)))
        self.B = Parameter(np.zeros((rank, out_dim), dtype=np.float32))
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:                     # x: (..., in)
        x2 = x.reshape(-1, x.shape[-1])                          # (N, in): two 2-D GEMMs, not batched
        y2 = (x2 @ self.A) @ self.B                              # (N, r) -> (N, out)
        return self.alpha * y2.reshape(x.shape[:-1] + (self.B.shape[1],))

    def extra_repr(self):
        return f"rank={self.A.shape[1]}, alpha={self.alpha}"


class LinearWithLoRA(Module):
    def __init__(self, linear: Linear, rank: int, alpha: float):
        super().__init__()
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x) + self.lora(x)


def replace_linear_with_lora(model: Module, rank: int, alpha: float) -> Module:
    """Wrap every Linear of the model (found through named_children, as the book) in place."""
    for name, module in list(model.named_children()):
        if isinstance(module, Linear):
            setattr(model, name, LinearWithLoRA(module, rank, alpha))
        else:
            replace_linear_with_lora(module, rank, alpha)
    return model


def merge_lora(model: Module) -> Module:
    """Replace every LinearWithLoRA by its Linear with the update folded in:
    W' = W + alpha (A B)^T, so x W'^T = x W^T + alpha x A B. In place; returns the model."""
    for name, module in list(model.named_children()):
        if isinstance(module, LinearWithLoRA):
            lora, linear = module.lora, module.linear
            delta = lora.alpha * (lora.A.data @ lora.B.data)     # (in, out)
            linear.weight.data += delta.T.astype(linear.weight.dtype)
            amp.invalidate([linear.weight])                      # its bf16 copy (autocast) is stale
            setattr(model, name, linear)
        else:
            merge_lora(module)
    return model
