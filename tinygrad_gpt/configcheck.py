"""Configs read from disk, checked before anything is allocated.

A few bytes of config.json (or of a checkpoint's state.json) decide how much memory a
GPTModel takes: `n_embd: 10000000` asked for 7 GB and 95 s before any error. So every config
read from a file comes through here first: each field's type and range, heads dividing the
width, and the parameters x bytes against the machine's memory. A ConfigError is one line
naming the source and the field (`config.json: n_head: 0 is out of range: at least 1`).

It imports nothing from the package: any room may use it (pretrained for Hugging Face
configs, checkpoint for state.json, corpus for manifests, the CLI for the flags' memory).
"""
import math
import os

FLOAT32_BYTES = 4
# float32 weights, their gradient, AdamW's two moments: what training holds per parameter
TRAINING_BYTES_PER_PARAMETER = 16


class ConfigError(ValueError):
    """A config field of the wrong type, out of range, or a model too big for the machine."""


def integer(cfg, key, lo, hi, source, name=None):
    """cfg[key] as an int in [lo, hi] (a JSON integer: not a bool, not 768.0)."""
    name = name or key
    if key not in cfg:
        raise ConfigError(f"{source}: {name} is missing")
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{source}: {name}: {_show(v)} is not an integer")
    if not lo <= v <= hi:
        raise ConfigError(f"{source}: {name}: {v} is out of range: it must be in [{lo}, {hi:,}]")
    return v


def number(cfg, key, lo, hi, source, name=None, default=None, hi_open=False):
    """cfg[key] (or default when absent) as a finite float in [lo, hi] (or [lo, hi))."""
    name = name or key
    if key not in cfg or (cfg[key] is None and default is not None):
        if default is None:
            raise ConfigError(f"{source}: {name} is missing")
        return float(default)
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{source}: {name}: {_show(v)} is not a finite number")
    if not (lo <= v < hi if hi_open else lo <= v <= hi):
        raise ConfigError(f"{source}: {name}: {v} is out of range: it must be in [{lo}, {hi}{')' if hi_open else ']'}")
    return float(v)


def boolean(cfg, key, source, name=None, default=None):
    name = name or key
    v = cfg.get(key, default)
    if not isinstance(v, bool):
        raise ConfigError(f"{source}: {name}: {_show(v)} is not true or false")
    return v


def _show(v):
    text = "null" if v is None else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


# generous bounds: far above GPT-2 XL (50257, 1024, 1600, 25, 48), far below what breaks int64
MAX_VOCAB = 1 << 24
MAX_CONTEXT = 1 << 20
MAX_WIDTH = 1 << 16
MAX_LAYERS = 1 << 12


def num_parameters(cfg):
    """The parameters of GPTModel(cfg) (the untied output head included), from the config alone."""
    V, P, C, L = cfg["vocab_size"], cfg["context_length"], cfg["emb_dim"], cfg["n_layers"]
    qkv = 3 * C * C + (3 * C if cfg.get("qkv_bias") else 0)
    block = 4 * C + qkv + C * C + C + 4 * C * C + 4 * C + 4 * C * C + C       # 2 norms, attention, MLP
    return V * C + P * C + L * block + 2 * C + V * C


def machine_memory():
    """Physical memory in bytes (None when the platform does not tell)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cfg, source, bytes_per_parameter=FLOAT32_BYTES, memory=None):
    """Refuse a model whose parameters x bytes exceed the machine's memory."""
    memory = machine_memory() if memory is None else memory
    n = num_parameters(cfg)
    need = n * bytes_per_parameter
    if memory is not None and need > memory:
        raise ConfigError(f"{source}: a model of {n:,} parameters needs {need / 1e9:,.1f} GB "
                          f"({bytes_per_parameter} bytes each), more than this machine's "
                          f"{memory / 1e9:,.1f} GB of memory")
    return n


def check_book_config(cfg, source, bytes_per_parameter=FLOAT32_BYTES, memory=None):
    """The book's config dict (vocab_size, context_length, emb_dim, n_heads, n_layers,
    drop_rate, qkv_bias[, tokenizer]) checked; returns a clean copy of it."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: the model config is {_show(cfg)}, not an object")
    out = {"vocab_size": integer(cfg, "vocab_size", 1, MAX_VOCAB, source),
           "context_length": integer(cfg, "context_length", 1, MAX_CONTEXT, source),
           "emb_dim": integer(cfg, "emb_dim", 1, MAX_WIDTH, source),
           "n_heads": integer(cfg, "n_heads", 1, MAX_WIDTH, source),
           "n_layers": integer(cfg, "n_layers", 1, MAX_LAYERS, source),
           "drop_rate": number(cfg, "drop_rate", 0.0, 1.0, source, hi_open=True),
           "qkv_bias": boolean(cfg, "qkv_bias", source)}
    if out["emb_dim"] % out["n_heads"]:
        raise ConfigError(f"{source}: emb_dim {out['emb_dim']} is not divisible by n_heads {out['n_heads']}")
    for key, value in cfg.items():
        if key not in out:
            out[key] = value
    if "tokenizer" in cfg and cfg["tokenizer"] not in ("char", "gpt2"):
        raise ConfigError(f"{source}: tokenizer: {_show(cfg['tokenizer'])} is not 'char' or 'gpt2'")
    check_alphabet(cfg, source)
    check_memory(out, source, bytes_per_parameter, memory)
    return out


def check_alphabet(cfg, source):
    """A character model's vocabulary (cfg["alphabet"], its text's distinct characters): a string
    of vocab_size different characters, with the "char" tokenizer."""
    if "alphabet" not in cfg:
        return
    alphabet = cfg["alphabet"]
    if not isinstance(alphabet, str) or not alphabet:
        raise ConfigError(f"{source}: alphabet: {_show(alphabet)} is not a string of characters")
    if len(set(alphabet)) != len(alphabet):
        raise ConfigError(f"{source}: alphabet repeats a character")
    if cfg.get("tokenizer") != "char":
        raise ConfigError(f"{source}: an alphabet belongs to the 'char' tokenizer, not {_show(cfg.get('tokenizer'))}")
    if len(alphabet) != cfg.get("vocab_size"):
        raise ConfigError(f"{source}: alphabet has {len(alphabet)} characters, vocab_size is {_show(cfg.get('vocab_size'))}")


def check_hf_config(hf, source, memory=None):
    """A Hugging Face GPT-2 config.json's sizes, by their own names (n_head: 0 is named as
    n_head), before the book's config is made from it."""
    if not isinstance(hf, dict):
        raise ConfigError(f"{source}: not a JSON object")
    integer(hf, "vocab_size", 1, MAX_VOCAB, source)
    integer(hf, "n_embd", 1, MAX_WIDTH, source)
    integer(hf, "n_head", 1, MAX_WIDTH, source)
    integer(hf, "n_layer", 1, MAX_LAYERS, source)
    ctx_key = "n_positions" if "n_positions" in hf else "n_ctx"
    integer(hf, ctx_key, 1, MAX_CONTEXT, source)
    if hf.get("n_inner") is not None:
        integer(hf, "n_inner", 1, 4 * MAX_WIDTH, source)
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hf.get(key) is not None:
            number(hf, key, 0.0, 1.0, source, hi_open=True)
    if hf.get("layer_norm_epsilon") is not None:
        number(hf, "layer_norm_epsilon", 0.0, 1.0, source)
    cfg = {"vocab_size": hf["vocab_size"], "context_length": hf[ctx_key], "emb_dim": hf["n_embd"],
           "n_layers": hf["n_layer"], "qkv_bias": True}
    check_memory(cfg, source, FLOAT32_BYTES, memory)
