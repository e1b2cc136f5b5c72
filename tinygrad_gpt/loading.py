"""A saved model back as a GPTModel, for inference: `load_model(path)` reads any of them.

    from tinygrad_gpt import load_model, from_pretrained, save_pretrained
    model = load_model("runs/pretrain")          # what examples/pretrain.py saved (--out)
    model = load_model("runs/ckpt")              # a --save-dir: its newest checkpoint
    model = from_pretrained("gpt2")              # OpenAI's GPT-2 in Hugging Face's layout
    save_pretrained(model, "out")                # and back, for transformers

Three layouts: a training checkpoint (checkpoint.py's, verified), a Hugging Face GPT-2
directory (pretrained.from_pretrained), or a plain directory of the book's parameter names
with the book's config dict. This room sits above both formats' rooms and owns only the
choice between them.
"""
from pathlib import Path
from typing import Type, Union

import numpy as np

from . import configcheck
from .checkpoint import LATEST, STATE_FILE, load_checkpoint
from .model import CONFIG_KEYS, GPTModel
from .pretrained import (CONFIG_FILE, WEIGHTS_FILE, SafetensorsReader, WeightsError, from_pretrained, listing,
                         read_json, set_layer_norm_eps, verify_checksums_or_raise, warn_nonfinite)

PathLike = Union[str, Path]


def _book_config(obj, depth=2):
    """The book's config dict in obj: at the top level, or nested up to `depth` levels down
    (a training checkpoint's state.json keeps it at ["config"]["model_config"])."""
    if not isinstance(obj, dict):
        return None
    if all(k in obj for k in CONFIG_KEYS):
        return obj
    if depth:
        for value in obj.values():
            found = _book_config(value, depth - 1)
            if found is not None:
                return found
    return None


def _is_training_checkpoint(path):
    """This module's layout: a step directory with state.json, a save directory of them,
    its `latest` pointer, or a file inside a step directory."""
    d = path.parent if path.is_file() else path
    return ((d / STATE_FILE).is_file() or (d / LATEST).is_file() or path.name == LATEST
            or any(d.glob("step-*/state.json")))


def load_model(path: PathLike, cls: Type[GPTModel] = GPTModel) -> GPTModel:
    """A model this package trained, for inference (returned in eval mode). Two layouts:

    - a training checkpoint written by save_checkpoint (pretrain.py): a step directory
      (model.safetensors, optimizer.safetensors, state.json), its save directory (the
      newest step) or the `latest` pointer; the files are verified (sizes, sha256) and the
      config is state.json's config["model_config"];
    - a plain directory: model.safetensors with the book's parameter names (tok_emb.weight,
      trf_blocks.0.att.W_query.weight, ..., out_head.weight; other tensors ignored) and the
      book's config dict (vocab_size, context_length, emb_dim, n_heads, n_layers, drop_rate,
      qkv_bias) in config.json, at its top level or nested; a Hugging Face config.json
      (model_type "gpt2") goes to pretrained.from_pretrained instead.
    Missing or mis-shaped tensors raise WeightsError naming them."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    if _is_training_checkpoint(path):
        ckpt = load_checkpoint(path)                            # verified (sizes, sha256)
        cfg = _book_config(ckpt.config)
        if cfg is None:
            raise WeightsError(f"checkpoint {ckpt.path}: state.json has no model config "
                               f"(expected config.model_config with {', '.join(CONFIG_KEYS)})")
        return _model_from_book_tensors(cls, cfg, ckpt.model, ckpt.path / WEIGHTS_FILE)
    directory, weights = (path.parent, path) if path.is_file() else (path, path / WEIGHTS_FILE)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing (a checkpoint is a directory with "
                                f"{WEIGHTS_FILE} and {CONFIG_FILE}, or a pretrain.py save directory)")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: it should hold the model config "
                                f"({', '.join(CONFIG_KEYS)})")
    obj = read_json(config_path)
    if obj.get("model_type") == "gpt2" and weights.name == WEIGHTS_FILE:
        return from_pretrained(directory, cls=cls)
    cfg = _book_config(obj)
    if cfg is None:
        raise WeightsError(f"{config_path} has no model config: expected {', '.join(CONFIG_KEYS)}")
    with SafetensorsReader(weights) as f:
        verify_checksums_or_raise(directory, (CONFIG_FILE, weights.name))   # when SHA256SUMS is there
        tensors = {k: f.get(k) for k in f.keys}
    return _model_from_book_tensors(cls, cfg, tensors, weights)


def _model_from_book_tensors(cls, cfg, tensors, source):
    # the tokenizer's keys must survive: micro's "char", and a --tokenizer char run's "alphabet"
    keep = CONFIG_KEYS + tuple(k for k in ("tokenizer", "alphabet") if k in cfg)
    try:                                      # types, ranges, memory: before the model is built
        configcheck.check_book_config(cfg, f"{source.parent}: model config")
    except configcheck.ConfigError as e:
        raise WeightsError(str(e)) from None
    model = cls({k: cfg[k] for k in keep})
    params = dict(model.named_parameters())
    missing = [n for n in params if n not in tensors]
    wrong = [f"{n} {tuple(tensors[n].shape)} (expected {p.shape})"
             for n, p in params.items() if n in tensors and tuple(tensors[n].shape) != p.shape]
    if missing or wrong:
        parts = ([f"missing tensors: {listing(missing)}"] if missing else []) + \
                ([f"mis-shaped tensors: {listing(wrong, 6)}"] if wrong else [])
        raise WeightsError(f"{source} does not fit its config: {'; '.join(parts)}")
    for n, p in params.items():
        np.copyto(p.data, tensors[n], casting="unsafe")
    if "layer_norm_epsilon" in cfg:
        set_layer_norm_eps(model, cfg["layer_norm_epsilon"])
    warn_nonfinite(model, source)
    return model.eval()
