"""torch.nn.utils: clip_grad_norm_ (appendix D), the engine's optim.clip_grad_norm_."""
import math

import numpy as np

from ... import optim as _optim
from ...tensor import Tensor
from ..semantics import MissingFeature


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False, foreach=None):
    """Scale every gradient so that their global L2 norm is at most max_norm; returns the norm
    before clipping, a float32 tensor as torch's. Parameters without a gradient are skipped."""
    if float(norm_type) != 2.0:
        raise MissingFeature(f"torch.nn.utils.clip_grad_norm_(norm_type={norm_type}): only the L2 norm "
                             f"is implemented")
    total = _optim.clip_grad_norm_(list(parameters), float(max_norm))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order 2.0 for gradients from `parameters` is non-finite "
                           f"({total}), so it cannot be clipped")
    return Tensor(np.float32(total))


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingFeature(f"torch.nn.utils.{name} is not implemented by tinygrad_gpt.torch (clip_grad_norm_ is)")
