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
# saved models: functions, not GPTModel methods (model.py imports nothing above it)
from .pretrained import WeightsError, from_pretrained, save_pretrained
from .loading import load_model

__version__ = "0.1.0"
