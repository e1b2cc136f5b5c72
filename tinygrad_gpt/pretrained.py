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

Every name and layout rule is in one table, `hf_to_book()` (as nanoGPT's from_pretrained
keeps one list of transposed weights): reading, writing and the expected shapes all walk it.

Only the safetensors format is read (through its NumPy API): never a pickle.

This room owns the Hugging Face format and nothing else: this project's own checkpoints are
checkpoint.py's, and loading.load_model picks between the two (this room imports neither).
"""
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, TextIO, Tuple, Type, Union

import numpy as np

from . import configcheck
from . import fileio
from .fileio import ChecksumError, atomic_replace, atomic_write, cache_root, save_safetensors, verify_checksums, \
    write_checksums
from .model import GPTModel
from .nn import LayerNorm

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HF_URL = "https://huggingface.co/{name}/resolve/main/{file}"
GPT2_MODELS = {"gpt2": "124M", "gpt2-medium": "355M", "gpt2-large": "774M", "gpt2-xl": "1558M"}
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")     # causal-mask buffers, not weights


PathLike = Union[str, Path]


class WeightsError(ValueError):
    """A weights or config file that does not fit: the message names the file and tensors."""


class DownloadError(OSError):
    """Fetching GPT-2's files failed (offline, or the server refused)."""


# ----------------------------------------------------------------------------- where files live
def cache_dir(name: str) -> Path:
    """Where `download(name)` puts a model's two files: <cache_root>/<name>/ (fileio.cache_root:
    $TINYGRAD_GPT_CACHE, else $XDG_CACHE_HOME/tinygrad_gpt, else ~/.cache/tinygrad_gpt)."""
    return cache_root() / name


def _manual_instructions(name, directory):
    urls = " and ".join(HF_URL.format(name=name, file=f) for f in (CONFIG_FILE, WEIGHTS_FILE))
    return (f"put {CONFIG_FILE} and {WEIGHTS_FILE} in {directory}/ (from {urls}), "
            f"or pass that directory to --pretrained")


def download(name: str, directory: Optional[PathLike] = None, timeout: float = 20.0,
             progress: Optional[TextIO] = None) -> Path:
    """Fetch GPT-2's config.json and model.safetensors from the Hugging Face hub into
    `directory` (default: cache_dir(name)). Files already there are kept. Returns the directory.
    `progress`: a file to print one line per download to (None: quiet)."""
    if name not in GPT2_MODELS:
        raise ValueError(f"unknown GPT-2 model {name!r}: choose one of {', '.join(GPT2_MODELS)}")
    directory = Path(directory) if directory is not None else cache_dir(name)
    fileio.mkdir(directory, parents=True, exist_ok=True)
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        target = directory / file
        if target.is_file() and target.stat().st_size > 0:
            continue
        url = HF_URL.format(name=name, file=file)
        if progress is not None:
            print(f"downloading {url} -> {target}", file=progress, flush=True)
        try:
            with atomic_replace(target) as tmp:        # whole file or nothing: no half-written weights
                with fileio.open_write(tmp, "xb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                    shutil.copyfileobj(response, out, length=1 << 20)
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", None) or e
            raise DownloadError(f"could not download {url} ({reason}); offline? "
                                f"{_manual_instructions(name, directory)}") from None
    return directory


def resolve(path_or_name: PathLike, download_missing: bool = False,
            progress: Optional[TextIO] = None) -> Path:
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
def read_json(path: PathLike) -> dict:
    """A JSON object from a file; WeightsError naming the file if it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise WeightsError(f"{path} should hold a JSON object, found {type(cfg).__name__}")
    return cfg


def config_from_hf(hf: dict, source: str = "config.json") -> Tuple[dict, float, bool]:
    """HF GPT-2 config dict -> (the book's cfg dict, layer-norm eps, tie_word_embeddings)."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise WeightsError(f"{source}: model_type is {hf['model_type']!r}, not 'gpt2'")
    missing = [k for k in ("n_embd", "n_layer", "n_head", "vocab_size") if k not in hf]
    if "n_positions" not in hf and "n_ctx" not in hf:
        missing.append("n_positions (or n_ctx)")
    if missing:
        raise WeightsError(f"{source} is missing {', '.join(missing)}")
    try:                                   # types, ranges, memory: before anything is allocated
        configcheck.check_hf_config(hf, source)
    except configcheck.ConfigError as e:
        raise WeightsError(str(e)) from None
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
        "qkv_bias": hf.get("qkv_bias", True),   # GPT-2's c_attn has a bias; hf_config writes false for a model without
        **({"tokenizer": hf["tokenizer"]} if "tokenizer" in hf else {}),   # micro's "char" (hf_config writes it)
        **({"alphabet": hf["alphabet"]} if "alphabet" in hf else {}),      # a char model's vocabulary
    }
    if cfg["emb_dim"] % cfg["n_heads"]:
        raise WeightsError(f"{source}: n_embd {C} is not divisible by n_head {cfg['n_heads']}")
    if not isinstance(cfg["qkv_bias"], bool):
        raise WeightsError(f"{source}: qkv_bias: {cfg['qkv_bias']!r} is not true or false")
    try:
        configcheck.check_alphabet(cfg, source)
    except configcheck.ConfigError as e:
        raise WeightsError(str(e)) from None
    eps = float(hf.get("layer_norm_epsilon", 1e-5))
    return cfg, eps, bool(hf.get("tie_word_embeddings", True))


# ----------------------------------------------------------------------------- the one mapping table
class Mapping(NamedTuple):
    """One Hugging Face tensor and the book parameter(s) it holds."""
    hf: str                     # name in model.safetensors, without "transformer."
    book: Tuple[str, ...]       # the book's parameter name(s); several = packed side by side
    conv1d: bool                # a Conv1D weight: stored (in, out), the book's Linear has (out, in)


# Per block, "h.{i}." on the HF side and "trf_blocks.{i}." on the book's. c_attn packs query,
# key and value along its last axis (the book's load_weights_into_gpt splits it in three).
_BLOCK = [
    ("ln_1.weight", ("norm1.scale",), False),
    ("ln_1.bias", ("norm1.shift",), False),
    ("attn.c_attn.weight", ("att.W_query.weight", "att.W_key.weight", "att.W_value.weight"), True),
    ("attn.c_attn.bias", ("att.W_query.bias", "att.W_key.bias", "att.W_value.bias"), False),
    ("attn.c_proj.weight", ("att.out_proj.weight",), True),
    ("attn.c_proj.bias", ("att.out_proj.bias",), False),
    ("ln_2.weight", ("norm2.scale",), False),
    ("ln_2.bias", ("norm2.shift",), False),
    ("mlp.c_fc.weight", ("ff.layers.0.weight",), True),
    ("mlp.c_fc.bias", ("ff.layers.0.bias",), False),
    ("mlp.c_proj.weight", ("ff.layers.2.weight",), True),
    ("mlp.c_proj.bias", ("ff.layers.2.bias",), False),
]
# GPT-2 ties the output head to wte: lm_head.weight (no "transformer." prefix) is optional
# and, when absent, out_head takes a copy of wte (the book's way). It is handled beside the table.
LM_HEAD = Mapping("lm_head.weight", ("out_head.weight",), False)


def hf_to_book(n_layers: int) -> List[Mapping]:
    """The table for a model of n_layers blocks, in the file's order: wte, wpe, h.0 ... h.N-1, ln_f."""
    rows = [Mapping("wte.weight", ("tok_emb.weight",), False),
            Mapping("wpe.weight", ("pos_emb.weight",), False)]
    for i in range(n_layers):
        rows += [Mapping(f"h.{i}.{hf}", tuple(f"trf_blocks.{i}.{b}" for b in book), conv1d)
                 for hf, book, conv1d in _BLOCK]
    rows += [Mapping("ln_f.weight", ("final_norm.scale",), False),
             Mapping("ln_f.bias", ("final_norm.shift",), False)]
    return rows


def book_shapes(cfg: dict) -> Dict[str, Tuple[int, ...]]:
    """The shape of every book parameter the table names (qkv biases included), from cfg."""
    C, V, P, L = cfg["emb_dim"], cfg["vocab_size"], cfg["context_length"], cfg["n_layers"]
    shapes = {"tok_emb.weight": (V, C), "pos_emb.weight": (P, C), "out_head.weight": (V, C),
              "final_norm.scale": (C,), "final_norm.shift": (C,)}
    per_block = {"norm1.scale": (C,), "norm1.shift": (C,), "norm2.scale": (C,), "norm2.shift": (C,),
                 "att.out_proj.weight": (C, C), "att.out_proj.bias": (C,),
                 "ff.layers.0.weight": (4 * C, C), "ff.layers.0.bias": (4 * C,),
                 "ff.layers.2.weight": (C, 4 * C), "ff.layers.2.bias": (C,)}
    for w in ("W_query", "W_key", "W_value"):
        per_block.update({f"att.{w}.weight": (C, C), f"att.{w}.bias": (C,)})
    for i in range(L):
        shapes.update({f"trf_blocks.{i}.{k}": v for k, v in per_block.items()})
    return shapes


def _hf_shape(row: Mapping, shapes: Dict[str, Tuple[int, ...]]) -> Tuple[int, ...]:
    """The HF tensor's shape: the book's, transposed for Conv1D, packed along the last axis."""
    parts = [shapes[b][::-1] if row.conv1d else shapes[b] for b in row.book]
    return parts[0][:-1] + (sum(p[-1] for p in parts),)


def to_book(row: Mapping, value: np.ndarray) -> List[np.ndarray]:
    """HF tensor -> the book's array(s): split the packed ones, transpose Conv1D weights."""
    parts = np.split(value, len(row.book), axis=-1) if len(row.book) > 1 else [value]
    return [p.T if row.conv1d else p for p in parts]


def to_hf(row: Mapping, values: List[np.ndarray]) -> np.ndarray:
    """The book's array(s) -> the HF tensor (float32, contiguous): the inverse of to_book."""
    parts = [v.T if row.conv1d else v for v in values]
    packed = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
    return np.ascontiguousarray(packed, dtype=np.float32)


def hf_shapes(cfg: dict) -> Dict[str, Tuple[int, ...]]:
    """The tensors a GPT-2 model.safetensors must hold (names without `transformer.`) and
    their shapes, Conv1D weights as (in, out). lm_head.weight is optional, (V, C)."""
    shapes = book_shapes(cfg)
    return {row.hf: _hf_shape(row, shapes) for row in hf_to_book(cfg["n_layers"])}


def listing(items, n: int = 8) -> str:
    """The first n items, comma-separated, and how many more (for error messages)."""
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


class SafetensorsReader:
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


def set_layer_norm_eps(model: GPTModel, eps: float) -> None:
    """The book's LayerNorm keeps eps on the module: set it on every one."""
    for m in model.modules():
        if isinstance(m, LayerNorm):
            m.eps = float(eps)


def from_pretrained(path_or_name: PathLike, download_missing: bool = False, cls: Type[GPTModel] = GPTModel,
                    progress: Optional[TextIO] = None) -> GPTModel:
    """Build a GPTModel from a Hugging Face GPT-2 directory (config.json + model.safetensors)
    or a GPT-2 name in the cache; returned in eval mode. Missing, unexpected or mis-shaped
    tensors raise WeightsError naming them; a damaged file raises WeightsError naming it."""
    directory = resolve(path_or_name, download_missing, progress=progress)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    cfg, eps, tied = config_from_hf(read_json(config_path), str(config_path))
    with SafetensorsReader(weights_path) as f:     # a file that does not parse is named as such first
        verify_checksums_or_raise(directory, (CONFIG_FILE, WEIGHTS_FILE))
        names = {}                                             # HF name without prefix -> key in file
        for key in f.keys:
            name = key[len("transformer."):] if key.startswith("transformer.") else key
            if name in names:
                raise WeightsError(f"{weights_path}: {name} appears twice ({names[name]} and {key})")
            names[name] = key
        expected = hf_shapes(cfg)
        optional = {LM_HEAD.hf: (cfg["vocab_size"], cfg["emb_dim"])}
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
            problems.append(f"missing tensors: {listing(missing)}")
        if wrong:
            problems.append(f"mis-shaped tensors: {listing(wrong, 6)}")
        if unexpected:
            problems.append(f"unexpected tensors: {listing(unexpected)}")
        if problems:
            raise WeightsError(f"{weights_path} does not fit {config_path.name} (n_layer "
                               f"{cfg['n_layers']}, n_embd {cfg['emb_dim']}, vocab {cfg['vocab_size']}, "
                               f"n_positions {cfg['context_length']}): {'; '.join(problems)}")

        model = cls(cfg)
        params = dict(model.named_parameters())
        for row in hf_to_book(cfg["n_layers"]) + ([LM_HEAD] if LM_HEAD.hf in names else []):
            value = f.get(names[row.hf])
            if row.book[0] not in params:      # a model without qkv bias: its c_attn.bias, written as zeros
                if np.any(value):
                    raise WeightsError(f"{weights_path}: {names[row.hf]} is not zero, but {config_path.name} "
                                       "says qkv_bias false (a model without a query/key/value bias)")
                continue
            for book, part in zip(row.book, to_book(row, value)):
                np.copyto(params[book].data, part, casting="unsafe")     # in place, cast to float32
        if LM_HEAD.hf not in names:            # tied: the book copies wte into out_head
            np.copyto(params["out_head.weight"].data, f.get(names["wte.weight"]), casting="unsafe")
    set_layer_norm_eps(model, eps)
    warn_nonfinite(model, weights_path)
    return model.eval()


def verify_checksums_or_raise(directory: Path, names) -> None:
    """The SHA256SUMS beside the files, when there is one (save_pretrained writes it)."""
    try:
        verify_checksums(directory, only=names)
    except ChecksumError as e:
        raise WeightsError(str(e)) from None


def warn_nonfinite(model: GPTModel, source) -> None:
    """One warning line when loaded weights hold NaN or infinity (they would generate garbage)."""
    import warnings
    bad = [name for name, p in model.named_parameters() if not np.isfinite(p.data).all()]
    if bad:                                # attributed to the file itself: no source line under it
        warnings.warn_explicit(f"{len(bad)} tensors hold NaN or infinite values ({listing(bad, 3)}); text "
                               "generated from them is garbage", RuntimeWarning, str(source), 0)


# ----------------------------------------------------------------------------- writing
def hf_config(model: GPTModel) -> dict:
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
    out.update({} if cfg["qkv_bias"] else {"qkv_bias": False})   # c_attn.bias is then zeros: reload without it
    out.update({"tokenizer": cfg["tokenizer"]} if "tokenizer" in cfg else {})   # micro's "char": generate needs it
    out.update({"alphabet": cfg["alphabet"]} if "alphabet" in cfg else {})      # --tokenizer char: its text's
    return out


def hf_state_dict(model: GPTModel) -> Dict[str, np.ndarray]:
    """The model's weights as GPT2LMHeadModel names them (`transformer.` prefix, Conv1D (in, out)
    layout). Without qkv bias, c_attn.bias is written as zeros (the same function); an untied
    head is written as lm_head.weight, a tied one is left out, as transformers does."""
    params = dict(model.named_parameters())
    shapes = book_shapes(model.cfg)

    def book(name):                            # a missing qkv bias is a bias of zeros
        return params[name].data if name in params else np.zeros(shapes[name], np.float32)

    sd = {"transformer." + row.hf: to_hf(row, [book(b) for b in row.book])
          for row in hf_to_book(model.cfg["n_layers"])}
    if not np.array_equal(model.out_head.weight.data, model.tok_emb.weight.data):
        sd[LM_HEAD.hf] = to_hf(LM_HEAD, [model.out_head.weight.data])
    return sd


def save_pretrained(model: GPTModel, directory: PathLike) -> Path:
    """Write config.json and model.safetensors as GPT2LMHeadModel.save_pretrained does, so
    transformers.GPT2LMHeadModel.from_pretrained(directory) loads the model. Returns the path.
    Each file is written atomically (fileio.atomic_replace)."""
    eps = {float(m.eps) for m in model.modules() if isinstance(m, LayerNorm)}
    if len(eps) > 1:
        raise ValueError(f"save_pretrained: the layer norms use different eps {sorted(eps)}; "
                         "GPT-2's config has one layer_norm_epsilon")
    directory = Path(directory)
    fileio.mkdir(directory, parents=True, exist_ok=True)
    sd = hf_state_dict(model)
    with atomic_replace(directory / WEIGHTS_FILE) as tmp:
        save_safetensors(sd, tmp, metadata={"format": "pt"})  # transformers requires format "pt"
    atomic_write(directory / CONFIG_FILE, (json.dumps(hf_config(model), indent=2) + "\n").encode("utf-8"))
    write_checksums(directory, (WEIGHTS_FILE, CONFIG_FILE))   # loading verifies them
    return directory

