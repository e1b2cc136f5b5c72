"""tinygrad_gpt: a from-scratch reverse-mode autodiff engine on NumPy, and GPT-2 on it."""
from . import functional
from .gradcheck import GradcheckError, gradcheck
from .tensor import (Function, Tensor, cat, concatenate, default_rng, enable_grad, is_grad_enabled,
                     manual_seed, no_grad)
# (the function tensor() is not exported here: it would hide the module tinygrad_gpt.tensor)
from . import memory, nn, optim
from .model import CONFIGS, GPT_CONFIG_124M, GPTModel, generate_text_simple, get_config
from .optim import AdamW
from .amp import autocast, set_autocast
from .generation import KVCache, generate, generate_stream
from . import pretrained as _pretrained
from .pretrained import WeightsError, from_pretrained, save_pretrained

# GPTModel.from_pretrained(DIR) and model.save_pretrained(DIR), as the README and transformers
# spell them, are pretrained.py's functions. They are bound here, at the package's face, which
# sits above every room: model.py then imports nothing from a higher room, not even lazily,
# and since importing any tinygrad_gpt module runs this file first, the methods are always there.
GPTModel.from_pretrained = classmethod(_pretrained.model_from_pretrained)
GPTModel.save_pretrained = _pretrained.save_pretrained

__version__ = "0.1.0"
