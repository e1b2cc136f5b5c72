"""torch.utils: only torch.utils.data."""
from . import data  # noqa: F401
from ..semantics import MissingFeature


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingFeature(f"torch.utils.{name} is not implemented by tinygrad_gpt.torch (utils.data is)")
