"""GPT-2 weights in the Hugging Face layout: load them, save them, fetch them.

A Hugging Face GPT-2 directory holds two files (`transformers` writes exactly these):

    config.json         n_embd, n_layer, n_head, n_positions, vocab_size, layer_norm_epsilon, ...
    model.safetensors   wte.weight (V, C), wpe.weight (P, C), ln_f.{weight,bias},
                        h.N.ln_1.*, h.N.attn.c_attn.{weight (C, 3C), bias (3C)}, h.N.attn.c_proj.*,
                        h.N.ln_2.*, h.N.mlp.c_fc.{weight (C, 4C)}, h.N.mlp.c_proj.{weight (4C, C)},
                        optionally lm_head.weight (V, C); keys with or without `transformer.`

GPT-2's `Conv1D` computes x @ W + b with W laid out (in, out); the book's Linear computes
x @ W^T + b with W (out, in). So every Conv1D weight is transposed, and c_attn, which packs
query, key and value side by side, is split in three first, as the book's
`load_weights_into_gpt` does. The output head is tied to wte in GPT-2: we copy wte into
`out_head` (the book's way), or take lm_head.weight when the file has one.

Only the safetensors format is read (through its NumPy API): never a pickle.
"""
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .model import GPTModel, _REQUIRED_KEYS
from .nn import LayerNorm

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HF_URL = "https://huggingface.co/{name}/resolve/main/{file}"
GPT2_MODELS = {"gpt2": "124M", "gpt2-medium": "355M", "gpt2-large": "774M", "gpt2-xl": "1558M"}
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")     # causal-mask buffers, not weights


class WeightsError(ValueError):
    """A weights or config file that does not fit: the message names the file and tensors."""


class DownloadError(OSError):
    """Fetching GPT-2's files failed (offline, or the server refused)."""


# ----------------------------------------------------------------------------- where files live
def cache_root():
    """$TINYGRAD_GPT_CACHE, else $XDG_CACHE_HOME/tinygrad_gpt, else ~/.cache/tinygrad_gpt."""
    if os.environ.get("TINYGRAD_GPT_CACHE"):
        return Path(os.environ["TINYGRAD_GPT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tinygrad_gpt"


def cache_dir(name):
    """Where `download(name)` puts a model's two files: <cache_root>/<name>/."""
    return cache_root() / name


def _manual_instructions(name, directory):
    urls = " and ".join(HF_URL.format(name=name, file=f) for f in (CONFIG_FILE, WEIGHTS_FILE))
    return (f"put {CONFIG_FILE} and {WEIGHTS_FILE} in {directory}/ (from {urls}), "
            f"or pass that directory to --pretrained")


def download(name, directory=None, timeout=20.0, progress=None):
    """Fetch GPT-2's config.json and model.safetensors from the Hugging Face hub into
    `directory` (default: cache_dir(name)). Files already there are kept. Returns the directory.
    `progress`: a file to print one line per download to (None: quiet)."""
    if name not in GPT2_MODELS:
        raise ValueError(f"unknown GPT-2 model {name!r}: choose one of {', '.join(GPT2_MODELS)}")
    directory = Path(directory) if directory is not None else cache_dir(name)
    directory.mkdir(parents=True, exist_ok=True)
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        target = directory / file
        if target.is_file() and target.stat().st_size > 0:
            continue
        url = HF_URL.format(name=name, file=file)
        if progress is not None:
            print(f"downloading {url} -> {target}", file=progress, flush=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{file}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, out, length=1 << 20)
            os.replace(tmp, target)        # whole file or nothing: no half-written weights
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise DownloadError(f"could not download {url} ({reason}); offline? "
                                f"{_manual_instructions(name, directory)}") from None
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    return directory


def resolve(path_or_name, download_missing=False, progress=None):
    """A directory with config.json and model.safetensors: `path_or_name` itself, or for
    "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl" its cache directory (downloaded there
    first with download_missing=True)."""
    path = Path(path_or_name).expanduser()
    if path.is_file() and path.name == WEIGHTS_FILE:
        path = path.parent
    if not path.is_dir() and str(path_or_name) in GPT2_MODELS:
        name = str(path_or_name)
        path = cache_dir(name)
        have = all((path / f).is_file() for f in (CONFIG_FILE, WEIGHTS_FILE))
        if not have:
            if download_missing:
                return download(name, path, progress=progress)
            raise FileNotFoundError(f"GPT-2 {name!r} is not in the cache: fetch it with --download "
                                    f"{name}, or {_manual_instructions(name, path)}")
    if not path.is_dir():
        raise FileNotFoundError(f"{path_or_name}: no such directory (expected a directory with "
                                f"{CONFIG_FILE} and {WEIGHTS_FILE}, or one of {', '.join(GPT2_MODELS)})")
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / f).is_file():
            hint = ""
            if f == WEIGHTS_FILE and any((path / p).exists() for p in ("pytorch_model.bin", "model.bin")):
                hint = (" (there is a pytorch_model.bin: a pickle, which we do not load; convert it "
                        "with transformers' save_pretrained(dir, safe_serialization=True))")
            raise FileNotFoundError(f"{path / f} is missing{hint}")
    return path


# ----------------------------------------------------------------------------- reading
def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise WeightsError(f"{path} should hold a JSON object, found {type(cfg).__name__}")
    return cfg


def config_from_hf(hf, source="config.json"):
    """HF GPT-2 config dict -> (the book's cfg dict, layer-norm eps, tie_word_embeddings)."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise WeightsError(f"{source}: model_type is {hf['model_type']!r}, not 'gpt2'")
    missing = [k for k in ("n_embd", "n_layer", "n_head", "vocab_size") if k not in hf]
    if "n_positions" not in hf and "n_ctx" not in hf:
        missing.append("n_positions (or n_ctx)")
    if missing:
        raise WeightsError(f"{source} is missing {', '.join(missing)}")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise WeightsError(f"{source}: activation_function {act!r} is not supported; the book's "
                           "GELU is the tanh approximation ('gelu_new')")
    C = int(hf["n_embd"])
    n_inner = hf.get("n_inner")
    unsupported = [(n_inner is not None and int(n_inner) != 4 * C,
                    f"n_inner {n_inner} (the book's MLP is 4 x n_embd = {4 * C})"),
                   (hf.get("scale_attn_by_inverse_layer_idx", False), "scale_attn_by_inverse_layer_idx true"),
                   (not hf.get("scale_attn_weights", True), "scale_attn_weights false"),
                   (hf.get("add_cross_attention", False), "add_cross_attention true")]
    bad = [what for cond, what in unsupported if cond]
    if bad:
        raise WeightsError(f"{source}: {', '.join(bad)}: not the book's GPT-2")
    cfg = {
        "vocab_size": int(hf["vocab_size"]),
        "context_length": int(hf.get("n_positions", hf.get("n_ctx"))),
        "emb_dim": C,
        "n_heads": int(hf["n_head"]),
        "n_layers": int(hf["n_layer"]),
        "drop_rate": float(hf.get("resid_pdrop", 0.1)),
        "qkv_bias": True,                  # GPT-2's c_attn has a bias (the book sets this for loading)
    }
    if cfg["emb_dim"] % cfg["n_heads"]:
        raise WeightsError(f"{source}: n_embd {C} is not divisible by n_head {cfg['n_heads']}")
    eps = float(hf.get("layer_norm_epsilon", 1e-5))
    return cfg, eps, bool(hf.get("tie_word_embeddings", True))


def hf_shapes(cfg):
    """The tensors a GPT-2 model.safetensors must hold (names without `transformer.`) and
    their shapes, Conv1D weights as (in, out). lm_head.weight is optional, (V, C)."""
    C, V, P, L = cfg["emb_dim"], cfg["vocab_size"], cfg["context_length"], cfg["n_layers"]
    shapes = {"wte.weight": (V, C), "wpe.weight": (P, C)}
    for i in range(L):
        h = f"h.{i}."
        shapes.update({
            h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
            h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),
            h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
            h + "mlp.c_fc.weight": (C, 4 * C), h + "mlp.c_fc.bias": (4 * C,),
            h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,),
        })
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def _listing(items, n=8):
    items = list(items)
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _not_safetensors(path, err):
    with open(path, "rb") as f:
        head = f.read(200)
    if head.startswith(b"version https://git-lfs"):
        return WeightsError(f"{path} is a Git LFS pointer, not the weights: download the file "
                            "itself (git lfs pull, or the resolve/main URL)")
    return WeightsError(f"{path} is not a readable safetensors file ({err}); it may be truncated "
                        "or corrupted: download it again")


class _SafetensorsReader:
    """safetensors' NumPy API, errors turned into WeightsError naming the file."""

    def __init__(self, path):
        from safetensors import SafetensorError, safe_open
        self.path, self._err = Path(path), SafetensorError
        try:
            self._file = safe_open(str(path), framework="np")
            self._handle = self._file.__enter__()
            self.keys = list(self._handle.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise _not_safetensors(path, e) from None

    def shape(self, key):
        return tuple(self._handle.get_slice(key).get_shape())

    def dtype(self, key):
        return self._handle.get_slice(key).get_dtype()

    def metadata(self):
        return self._handle.metadata() or {}

    def get(self, key):
        try:
            value = self._handle.get_tensor(key)
        except (self._err, OSError, ValueError, TypeError) as e:
            raise WeightsError(f"{self.path}: cannot read tensor {key} "
                               f"(dtype {self.dtype(key)}): {e}") from None
        if not np.issubdtype(value.dtype, np.floating):
            raise WeightsError(f"{self.path}: tensor {key} has dtype {value.dtype}, expected floats")
        return value

    def close(self):
        self._file.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def set_layer_norm_eps(model, eps):
    """The book's LayerNorm keeps eps on the module: set it on every one."""
    for m in model.modules():
        if isinstance(m, LayerNorm):
            m.eps = float(eps)


def from_pretrained(path_or_name, download_missing=False, cls=GPTModel, progress=None):
    """Build a GPTModel from a Hugging Face GPT-2 directory (config.json + model.safetensors)
    or a GPT-2 name in the cache; returned in eval mode. Missing, unexpected or mis-shaped
    tensors raise WeightsError naming them; a damaged file raises WeightsError naming it."""
    directory = resolve(path_or_name, download_missing, progress=progress)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    cfg, eps, tied = config_from_hf(_read_json(config_path), str(config_path))
    with _SafetensorsReader(weights_path) as f:
        names = {}                                             # HF name without prefix -> key in file
        for key in f.keys:
            name = key[len("transformer."):] if key.startswith("transformer.") else key
            if name in names:
                raise WeightsError(f"{weights_path}: {name} appears twice ({names[name]} and {key})")
            names[name] = key
        expected = hf_shapes(cfg)
        optional = {"lm_head.weight": (cfg["vocab_size"], cfg["emb_dim"])}
        if not tied:                                           # an untied head must be in the file
            expected.update(optional)
            optional = {}
        missing = [n for n in expected if n not in names]
        unexpected = [names[n] for n in names
                      if n not in expected and n not in optional and not n.endswith(_IGNORED_SUFFIXES)]
        wrong = [f"{names[n]} {f.shape(names[n])} (expected {shape})"
                 for n, shape in {**expected, **optional}.items() if n in names and f.shape(names[n]) != shape]
        problems = []
        if missing:
            problems.append(f"missing tensors: {_listing(missing)}")
        if wrong:
            problems.append(f"mis-shaped tensors: {_listing(wrong, 6)}")
        if unexpected:
            problems.append(f"unexpected tensors: {_listing(unexpected)}")
        if problems:
            raise WeightsError(f"{weights_path} does not fit {config_path.name} (n_layer "
                               f"{cfg['n_layers']}, n_embd {cfg['emb_dim']}, vocab {cfg['vocab_size']}, "
                               f"n_positions {cfg['context_length']}): {'; '.join(problems)}")

        model = cls(cfg)

        def get(name):
            return f.get(names[name])

        def put(param, value):                                 # copy in place, cast to float32
            np.copyto(param.data, value, casting="unsafe")

        put(model.tok_emb.weight, get("wte.weight"))
        put(model.pos_emb.weight, get("wpe.weight"))
        for i, blk in enumerate(model.trf_blocks):
            h = f"h.{i}."
            q_w, k_w, v_w = np.split(get(h + "attn.c_attn.weight"), 3, axis=-1)   # 3 x (C, C) (in, out)
            q_b, k_b, v_b = np.split(get(h + "attn.c_attn.bias"), 3, axis=-1)     # 3 x (C,)
            put(blk.att.W_query.weight, q_w.T)
            put(blk.att.W_key.weight, k_w.T)
            put(blk.att.W_value.weight, v_w.T)
            put(blk.att.W_query.bias, q_b)
            put(blk.att.W_key.bias, k_b)
            put(blk.att.W_value.bias, v_b)
            put(blk.att.out_proj.weight, get(h + "attn.c_proj.weight").T)
            put(blk.att.out_proj.bias, get(h + "attn.c_proj.bias"))
            put(blk.ff.layers[0].weight, get(h + "mlp.c_fc.weight").T)            # (4C, C)
            put(blk.ff.layers[0].bias, get(h + "mlp.c_fc.bias"))
            put(blk.ff.layers[2].weight, get(h + "mlp.c_proj.weight").T)          # (C, 4C)
            put(blk.ff.layers[2].bias, get(h + "mlp.c_proj.bias"))
            put(blk.norm1.scale, get(h + "ln_1.weight"))
            put(blk.norm1.shift, get(h + "ln_1.bias"))
            put(blk.norm2.scale, get(h + "ln_2.weight"))
            put(blk.norm2.shift, get(h + "ln_2.bias"))
        put(model.final_norm.scale, get("ln_f.weight"))
        put(model.final_norm.shift, get("ln_f.bias"))
        # GPT-2 ties the output head to the token embedding; the book copies wte into out_head
        put(model.out_head.weight, get("lm_head.weight") if "lm_head.weight" in names else get("wte.weight"))
    set_layer_norm_eps(model, eps)
    return model.eval()


# ----------------------------------------------------------------------------- writing
def hf_config(model):
    """config.json for GPT2LMHeadModel describing `model`."""
    cfg = model.cfg
    tied = bool(np.array_equal(model.out_head.weight.data, model.tok_emb.weight.data))
    out = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": cfg["vocab_size"],
        "n_positions": cfg["context_length"],
        "n_ctx": cfg["context_length"],
        "n_embd": cfg["emb_dim"],
        "n_layer": cfg["n_layers"],
        "n_head": cfg["n_heads"],
        "n_inner": None,
        "layer_norm_epsilon": float(model.final_norm.eps),
        "resid_pdrop": cfg["drop_rate"],
        "embd_pdrop": cfg["drop_rate"],
        "attn_pdrop": cfg["drop_rate"],
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": tied,
        "use_cache": True,
    }
    # GPT-2's <|endoftext|> is 50256; a smaller vocabulary has none (transformers defaults to 50256)
    eot = 50256 if cfg["vocab_size"] > 50256 else None
    out.update(bos_token_id=eot, eos_token_id=eot)
    return out


def hf_state_dict(model):
    """The model's weights as GPT2LMHeadModel names them (`transformer.` prefix, Conv1D (in, out)
    layout). Without qkv bias, c_attn.bias is written as zeros (the same function); an untied
    head is written as lm_head.weight, a tied one is left out, as transformers does."""
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)      # noqa: E731
    C = model.cfg["emb_dim"]
    t = "transformer."
    sd = {t + "wte.weight": f32(model.tok_emb.weight.data),
          t + "wpe.weight": f32(model.pos_emb.weight.data)}
    for i, blk in enumerate(model.trf_blocks):
        h = f"{t}h.{i}."
        att = blk.att
        biases = [lin.bias.data if lin.bias is not None else np.zeros(C, np.float32)
                  for lin in (att.W_query, att.W_key, att.W_value)]
        sd.update({
            h + "ln_1.weight": f32(blk.norm1.scale.data), h + "ln_1.bias": f32(blk.norm1.shift.data),
            h + "attn.c_attn.weight": f32(np.concatenate(
                [att.W_query.weight.data.T, att.W_key.weight.data.T, att.W_value.weight.data.T], axis=1)),  # (C, 3C)
            h + "attn.c_attn.bias": f32(np.concatenate(biases)),                                           # (3C,)
            h + "attn.c_proj.weight": f32(att.out_proj.weight.data.T),
            h + "attn.c_proj.bias": f32(att.out_proj.bias.data),
            h + "ln_2.weight": f32(blk.norm2.scale.data), h + "ln_2.bias": f32(blk.norm2.shift.data),
            h + "mlp.c_fc.weight": f32(blk.ff.layers[0].weight.data.T),                                   # (C, 4C)
            h + "mlp.c_fc.bias": f32(blk.ff.layers[0].bias.data),
            h + "mlp.c_proj.weight": f32(blk.ff.layers[2].weight.data.T),                                 # (4C, C)
            h + "mlp.c_proj.bias": f32(blk.ff.layers[2].bias.data),
        })
    sd.update({t + "ln_f.weight": f32(model.final_norm.scale.data),
               t + "ln_f.bias": f32(model.final_norm.shift.data)})
    if not np.array_equal(model.out_head.weight.data, model.tok_emb.weight.data):
        sd["lm_head.weight"] = f32(model.out_head.weight.data)
    return sd


def save_pretrained(model, directory):
    """Write config.json and model.safetensors as GPT2LMHeadModel.save_pretrained does, so
    transformers.GPT2LMHeadModel.from_pretrained(directory) loads the model. Returns the path."""
    from safetensors.numpy import save_file
    eps = {float(m.eps) for m in model.modules() if isinstance(m, LayerNorm)}
    if len(eps) > 1:
        raise ValueError(f"save_pretrained: the layer norms use different eps {sorted(eps)}; "
                         "GPT-2's config has one layer_norm_epsilon")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = hf_state_dict(model)
    tmp = directory / (WEIGHTS_FILE + ".part")
    save_file(sd, str(tmp), metadata={"format": "pt"})        # transformers requires format "pt"
    os.replace(tmp, directory / WEIGHTS_FILE)
    with open(directory / CONFIG_FILE, "w", encoding="utf-8") as f:
        json.dump(hf_config(model), f, indent=2)
        f.write("\n")
    return directory


# ----------------------------------------------------------------------------- our own checkpoints
def _book_config(obj, depth=2):
    """The book's config dict in obj: at the top level, or nested up to `depth` levels down
    (a training checkpoint's state.json keeps it at ["config"]["model_config"])."""
    if not isinstance(obj, dict):
        return None
    if all(k in obj for k in _REQUIRED_KEYS):
        return obj
    if depth:
        for value in obj.values():
            found = _book_config(value, depth - 1)
            if found is not None:
                return found
    return None


def _is_training_checkpoint(path):
    """checkpoint.py's layout: a step directory with state.json, a save directory of them,
    its `latest` pointer, or a file inside a step directory."""
    d = path.parent if path.is_file() else path
    return ((d / "state.json").is_file() or (d / "latest").is_file() or path.name == "latest"
            or any(d.glob("step-*/state.json")))


def load_checkpoint(path, cls=GPTModel):
    """A model this package trained, for inference (returned in eval mode). Two layouts:

    - a training checkpoint written by checkpoint.save_checkpoint (pretrain.py): a step
      directory (model.safetensors, optimizer.safetensors, state.json), its save directory
      (the newest step) or the `latest` pointer; checkpoint.py verifies the files and the
      config is state.json's config["model_config"];
    - a plain directory: model.safetensors with the book's parameter names (tok_emb.weight,
      trf_blocks.0.att.W_query.weight, ..., out_head.weight; other tensors ignored) and the
      book's config dict (vocab_size, context_length, emb_dim, n_heads, n_layers, drop_rate,
      qkv_bias) in config.json, at its top level or nested; a Hugging Face config.json
      (model_type "gpt2") goes to from_pretrained instead.
    Missing or mis-shaped tensors raise WeightsError naming them."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    if _is_training_checkpoint(path):
        from . import checkpoint
        ckpt = checkpoint.load_checkpoint(path)                 # verified (sizes, sha256)
        cfg = _book_config(ckpt.config)
        if cfg is None:
            raise WeightsError(f"checkpoint {ckpt.path}: state.json has no model config "
                               f"(expected config.model_config with {', '.join(_REQUIRED_KEYS)})")
        return _model_from_book_tensors(cls, cfg, ckpt.model, ckpt.path / WEIGHTS_FILE)
    directory, weights = (path.parent, path) if path.is_file() else (path, path / WEIGHTS_FILE)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing (a checkpoint is a directory with "
                                f"{WEIGHTS_FILE} and {CONFIG_FILE}, or a pretrain.py save directory)")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: it should hold the model config "
                                f"({', '.join(_REQUIRED_KEYS)})")
    obj = _read_json(config_path)
    if obj.get("model_type") == "gpt2" and weights.name == WEIGHTS_FILE:
        return from_pretrained(directory, cls=cls)
    cfg = _book_config(obj)
    if cfg is None:
        raise WeightsError(f"{config_path} has no model config: expected {', '.join(_REQUIRED_KEYS)}")
    with _SafetensorsReader(weights) as f:
        tensors = {k: f.get(k) for k in f.keys}
    return _model_from_book_tensors(cls, cfg, tensors, weights)


def _model_from_book_tensors(cls, cfg, tensors, source):
    keep = _REQUIRED_KEYS + (("tokenizer",) if "tokenizer" in cfg else ())   # micro's "char" must survive
    model = cls({k: cfg[k] for k in keep})
    params = dict(model.named_parameters())
    missing = [n for n in params if n not in tensors]
    wrong = [f"{n} {tuple(tensors[n].shape)} (expected {p.shape})"
             for n, p in params.items() if n in tensors and tuple(tensors[n].shape) != p.shape]
    if missing or wrong:
        parts = ([f"missing tensors: {_listing(missing)}"] if missing else []) + \
                ([f"mis-shaped tensors: {_listing(wrong, 6)}"] if wrong else [])
        raise WeightsError(f"{source} does not fit its config: {'; '.join(parts)}")
    for n, p in params.items():
        np.copyto(p.data, tensors[n], casting="unsafe")
    if "layer_norm_epsilon" in cfg:
        set_layer_norm_eps(model, cfg["layer_norm_epsilon"])
    return model.eval()
