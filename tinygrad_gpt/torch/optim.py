"""torch.optim: the engine's hand-written AdamW (optim.py), which follows torch.optim.AdamW."""
from ..optim import AdamW  # noqa: F401
from .semantics import MissingFeature


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingFeature(f"torch.optim.{name} is not implemented by tinygrad_gpt.torch (AdamW is)")
