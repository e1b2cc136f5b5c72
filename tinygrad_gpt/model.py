"""GPT-2 as the book builds it (chapter 4), on this engine, with the book's configs.

This room owns the model: `GPTModel` (its one forward, for training, evaluation and cached
generation alike), the named configs, and the book's chapter-4 greedy loop. It builds on nn.py
and knows nothing of files: Hugging Face weights are pretrained.py's, this project's own
checkpoints checkpoint.py's, sampling and the KV cache object generation.py's.
"""
import copy
from typing import Optional, Protocol

import numpy as np

from .nn import Dropout, Embedding, LayerKV, LayerNorm, Linear, Module, Sequential, TransformerBlock
from .tensor import Tensor, no_grad


class KVCacheLike(Protocol):
    """What GPTModel.forward needs from a KV cache (generation.KVCache is one)."""
    length: int                                  # positions already cached: the next one's offset
    capacity: int

    def layer(self, i: int) -> LayerKV: ...

GPT_CONFIG_124M = {
    "vocab_size": 50257,     # GPT-2's BPE vocabulary
    "context_length": 1024,  # the book's chapter 4; chapter 5 trains with 256
    "emb_dim": 768,
    "n_heads": 12,
    "n_layers": 12,
    "drop_rate": 0.1,
    "qkv_bias": False,
}

# micro: every array small enough to print. One sentence, one character per token (17 of them,
# char_tokenizer.py), 8 wide, 8 positions, 2 heads of 4, 1 block, no dropout: 1,200 parameters.
GPT_CONFIG_MICRO = {
    "vocab_size": 17,        # len(char_tokenizer.micro_tokenizer().alphabet)
    "context_length": 8,
    "emb_dim": 8,
    "n_heads": 2,
    "n_layers": 1,
    "drop_rate": 0.0,        # deterministic, so the numbers of a trace can be checked by hand
    "qkv_bias": False,
    "tokenizer": "char",     # tokenizer.tokenizer_for(cfg); the other configs use GPT-2's BPE
}

CONFIGS = {
    "micro": GPT_CONFIG_MICRO,
    "tiny": {**GPT_CONFIG_124M, "context_length": 64, "emb_dim": 64, "n_heads": 4, "n_layers": 2},
    "124M": GPT_CONFIG_124M,
    "355M": {**GPT_CONFIG_124M, "emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "774M": {**GPT_CONFIG_124M, "emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "1558M": {**GPT_CONFIG_124M, "emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}

CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias")


def get_config(name: str) -> dict:
    """A copy of a named config: "micro", "tiny", "124M", "355M", "774M" or "1558M"."""
    if name not in CONFIGS:
        raise KeyError(f"unknown model {name!r}: choose one of {', '.join(CONFIGS)}")
    return copy.deepcopy(CONFIGS[name])


def _check_config(cfg):
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    if missing:
        raise KeyError(f"GPT config is missing {', '.join(missing)}")
    if cfg["emb_dim"] % cfg["n_heads"]:
        raise ValueError(f"emb_dim {cfg['emb_dim']} is not divisible by n_heads {cfg['n_heads']}")


class GPTModel(Module):
    # the book's causal-mask buffers, trf_blocks.N.att.mask, are accepted and ignored:
    # MultiHeadAttention._ignored_keys

    def __init__(self, cfg: dict):
        super().__init__()
        _check_config(cfg)
        self.cfg = dict(cfg)
        self.tok_emb = Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = Dropout(cfg["drop_rate"])
        self.trf_blocks = Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        self.out_head = Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def set_drop_rate(self, p: float) -> "GPTModel":
        """Every dropout of the model at rate p (embeddings, attention weights, residuals), and
        cfg["drop_rate"] saying so: a loaded model finetuned or traced at another rate."""
        for m in self.modules():
            if isinstance(m, Dropout):
                m.p = p
        self.cfg["drop_rate"] = p
        return self

    def forward(self, in_idx, last_only: bool = False, kv_cache: Optional["KVCacheLike"] = None) -> Tensor:
        """in_idx: integer (B, T) -> logits (B, T, V); with last_only, (B, 1, V) for the last
        position alone (generation needs no more, and the output head is the biggest matmul).

        The one forward of the model: training, evaluation and cached generation all run it.
        With a kv_cache (generation.KVCache, under no_grad) the T tokens sit at positions
        [kv_cache.length, kv_cache.length + T): their positional embeddings start there, every
        layer appends their keys and values to the cache and attends over all cached ones, and
        kv_cache.length advances by T."""
        idx = in_idx.data if isinstance(in_idx, Tensor) else np.asarray(in_idx)
        if idx.ndim != 2:
            raise ValueError(f"GPTModel expects token ids of shape (batch, tokens), got {idx.shape}")
        B, T = idx.shape
        start = 0 if kv_cache is None else kv_cache.length       # position offset of the first token
        if kv_cache is not None and start + T > kv_cache.capacity:
            raise ValueError(f"KV cache holds {kv_cache.capacity} positions; {start + T} were asked for")
        if start + T > self.cfg["context_length"]:
            raise ValueError(f"{start + T} tokens exceed the model's context length {self.cfg['context_length']}")
        tok_embeds = self.tok_emb(idx)                           # (B, T, C)
        pos_embeds = self.pos_emb(np.arange(start, start + T))   # (T, C)
        x = self.drop_emb(tok_embeds + pos_embeds)               # (B, T, C)
        for i, block in enumerate(self.trf_blocks):
            x = block(x, None if kv_cache is None else kv_cache.layer(i), start)   # (B, T, C)
        if kv_cache is not None:
            kv_cache.length = start + T
        if last_only:
            x = x[:, -1:, :]                                     # (B, 1, C)
        x = self.final_norm(x)
        return self.out_head(x)                                  # (B, T, V)

    # ---- where the parameters are
    def summary(self) -> str:
        """The parameter count, taken apart: where GPT-2's parameters come from. Shapes are the
        weights' own, (out, in) as nn.Linear stores them: the output head is V x C."""
        cfg = self.cfg
        C, V, L = cfg["emb_dim"], cfg["vocab_size"], cfg["n_layers"]
        blk = self.trf_blocks[0]
        count = lambda m: sum(p.size for p in m.parameters())          # noqa: E731
        rows = [("token embedding", f"{V} x {C}", self.tok_emb.weight.size),
                ("positional embedding", f"{cfg['context_length']} x {C}", self.pos_emb.weight.size)]
        per_block = [
            ("  attention query/key/value", f"3 x {C} x {C}" + (" + bias" if cfg["qkv_bias"] else ""),
             count(blk.att.W_query) + count(blk.att.W_key) + count(blk.att.W_value)),
            ("  attention output projection", f"{C} x {C} + {C}", count(blk.att.out_proj)),
            ("  feed-forward expansion", f"{4 * C} x {C} + {4 * C}", count(blk.ff.layers[0])),
            ("  feed-forward contraction", f"{C} x {4 * C} + {C}", count(blk.ff.layers[2])),
            ("  two layer norms", f"2 x 2 x {C}", count(blk.norm1) + count(blk.norm2)),
        ]
        block_total = sum(n for _, _, n in per_block)
        rows.append((f"transformer block (x {L})", "", block_total))
        rows += per_block
        rows += [(f"all {L} blocks", f"{L} x {block_total:,}", L * block_total),
                 ("final layer norm", f"2 x {C}", count(self.final_norm)),
                 ("output head (untied)", f"{V} x {C}", self.out_head.weight.size)]
        total = self.num_parameters()
        assert total == rows[0][2] + rows[1][2] + L * block_total + rows[-2][2] + rows[-1][2]
        lines = [f"{'part':32s} {'shape':>22s} {'parameters':>14s}"]
        lines += [f"{name:32s} {shape:>22s} {n:>14,}" for name, shape, n in rows]
        lines.append(f"{'total':32s} {'':>22s} {total:>14,}")
        lines.append(f"{'total with the head tied to tok_emb':32s} {'':>22s} "
                     f"{total - self.out_head.weight.size:>14,}")
        return "\n".join(lines)


def generate_text_simple(model: GPTModel, idx, max_new_tokens: int, context_size: int) -> np.ndarray:
    """Greedy decoding, the book's chapter 4: append the most likely next token, repeatedly."""
    idx = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]                        # crop to the context window
        with no_grad():
            logits = model(idx_cond, last_only=True).data[:, -1, :]   # (B, V)
        idx_next = np.argmax(logits, axis=-1)[:, None]           # (B, 1)
        idx = np.concatenate([idx, idx_next.astype(idx.dtype)], axis=1)
    return idx
