"""torch.optim: the engine's hand-written AdamW (optim.py), which follows torch.optim.AdamW, and
plain SGD (appendix A's optimizer)."""
from ..optim import AdamW  # noqa: F401
from .semantics import MissingFeature


class SGD:
    """torch.optim.SGD without momentum or weight decay: p <- p - lr * grad, in p's dtype."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 maximize=False):
        if momentum or dampening or weight_decay or nesterov or maximize:
            raise MissingFeature("torch.optim.SGD: momentum, dampening, weight_decay, nesterov and maximize "
                                 "are not implemented (plain SGD is)")
        self.param_groups = [{"params": list(params), "lr": float(lr)}]
        self.state = {}

    def zero_grad(self, set_to_none=True):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self):
        for group in self.param_groups:
            step = -group["lr"]
            for p in group["params"]:
                if p.grad is not None:
                    p.data += (p.data.dtype.type(step) * p.grad).astype(p.data.dtype, copy=False)
                    p._version = p._version + 1


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingFeature(f"torch.optim.{name} is not implemented by tinygrad_gpt.torch (AdamW and SGD are)")
