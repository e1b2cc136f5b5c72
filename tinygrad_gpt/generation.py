"""Text generation: the book's `generate` (chapter 5) with a KV cache (the book's kv_cache bonus).

    generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None,
             rng=None, use_cache=True)  ->  integer array (B, T + new)

Without the cache every new token runs the whole window through the model again: position t
costs a forward over t positions. With it, each layer keeps the keys and values of the
positions it has seen (`KVCache`, preallocated (B, H, context, D) per layer), and a new token
costs one position's forward: its own q, k, v, and attention over the cached k, v.

This room owns sampling (greedy, temperature, top-k, eos), the generate loop and the cache
object; it has no forward of its own. The cached step is the model's one forward,
`model(new_ids, last_only=True, kv_cache=cache)`: each MultiHeadAttention appends its keys
and values to the cache and the fused attention op attends with queries shorter than keys.

The sliding window. The book's model has learned absolute positions, and the uncached path
crops the sequence to its last `context_size` tokens, so once the sequence is longer than the
window every token moves down one position at each step, and with it every key and value of
every layer. No cached entry survives that; to give exactly what the uncached path gives, the
cached path then re-prefills the whole window at each step (costing what the uncached path
costs). Below the window length, each step is one position.

Threads. A one-position step is a string of tiny ops (a (1, C) layer norm, (1, C) x (C, C)
matmuls); splitting each across threads gains little, and on a machine busy with other work
every parallel region waits for its second thread to be scheduled, which can cost far more
than the work itself. `with cpu_threads(1): generate(...)` decodes on one thread.
"""
import contextlib
from typing import Iterator, Optional, Tuple, Union

import numpy as np

from .model import GPTModel
from .runtime import runtime
from .tensor import Tensor, default_rng, no_grad


def cpu_threads(n: Optional[int]) -> contextlib.AbstractContextManager:
    """`runtime.use(threads=n)`: n threads in every pool inside the block, the previous count
    after it (None: unchanged)."""
    return runtime.use(threads=n)


# ----------------------------------------------------------------------------- sampling
def as_generator(rng: Union[None, int, np.random.Generator] = None) -> np.random.Generator:
    """None -> the engine's global generator (seeded by manual_seed); an int -> a new
    np.random.Generator seeded with it; a Generator -> itself."""
    if rng is None:
        return default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, not {type(rng).__name__}")


def top_k_filter(logits: np.ndarray, top_k: int) -> np.ndarray:
    """The book's top-k: keep the logits >= the k-th largest of each row, set the rest to -inf.

    Exactly k candidates survive when the k-th largest value is unique in its row. As in the
    book (`logits < min_val` -> -inf), a tie at the k-th value keeps every tied entry, so a row
    can keep more than k; top_k >= V keeps everything."""
    logits = np.asarray(logits)                                # (B, V)
    V = logits.shape[-1]
    if top_k >= V:
        return logits.copy()
    kth = np.partition(logits, V - top_k, axis=-1)[..., V - top_k : V - top_k + 1]   # (B, 1) k-th largest
    return np.where(logits < kth, -np.inf, logits).astype(logits.dtype, copy=False)


def sample_next_token(logits: np.ndarray, temperature: float = 0.0, top_k: Optional[int] = None,
                      rng: Union[None, int, np.random.Generator] = None) -> np.ndarray:
    """One step of the book's `generate`: logits (B, V) -> next token ids (B,) int64.

    top-k filtering first, then: temperature 0 -> argmax (greedy); temperature > 0 ->
    softmax(logits / temperature) and one draw per row from `rng` (inverse CDF, so a filtered
    -inf logit, with probability exactly 0, is never drawn)."""
    logits = np.asarray(logits)                                # (B, V)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if temperature <= 0.0:
        return np.argmax(logits, axis=-1).astype(np.int64)     # (B,)
    z = logits.astype(np.float64) / temperature                # float64: exp of small probabilities
    z -= z.max(axis=-1, keepdims=True)
    cdf = np.cumsum(np.exp(z), axis=-1)                        # (B, V) unnormalised
    u = as_generator(rng).random(len(cdf)) * cdf[:, -1]        # (B,) uniform in [0, total)
    nxt = (cdf <= u[:, None]).sum(axis=-1)                     # first index whose cdf exceeds u
    return np.minimum(nxt, logits.shape[-1] - 1).astype(np.int64)


# ----------------------------------------------------------------------------- the KV cache
class KVCache:
    """Keys and values of every layer for the first `length` positions of the window.

    keys[l], values[l]: (B, H, capacity, D), allocated once; positions [0, length) are valid."""

    def __init__(self, n_layers: int, batch_size: int, n_heads: int, capacity: int, head_dim: int,
                 dtype=np.float32):
        shape = (batch_size, n_heads, capacity, head_dim)                # (B, H, context, D)
        self.keys = [np.zeros(shape, dtype=dtype) for _ in range(n_layers)]
        self.values = [np.zeros(shape, dtype=dtype) for _ in range(n_layers)]
        self.capacity = capacity
        self.length = 0

    @classmethod
    def for_model(cls, model: GPTModel, batch_size: int, capacity: Optional[int] = None) -> "KVCache":
        """A cache for `model` (its layers, heads, head size, dtype), `capacity` positions
        (default: its context length)."""
        cfg = model.cfg
        H = cfg["n_heads"]
        capacity = cfg["context_length"] if capacity is None else capacity
        dtype = model.tok_emb.weight.data.dtype
        return cls(cfg["n_layers"], batch_size, H, capacity, cfg["emb_dim"] // H, dtype)

    def reset(self) -> None:
        self.length = 0                                        # stale entries are overwritten

    def layer(self, i: int) -> "LayerKV":
        """Layer i's keys and values, for its MultiHeadAttention (nn.LayerKV)."""
        return LayerKV(self.keys[i], self.values[i])


class LayerKV:
    """One layer's slice of a KVCache: MultiHeadAttention appends its new keys and values and
    attends over the first start_pos + T positions (views, no copy)."""

    def __init__(self, keys: np.ndarray, values: np.ndarray):
        self.keys, self.values = keys, values                  # (B, H, capacity, D) each

    def append(self, k: np.ndarray, v: np.ndarray, start_pos: int) -> Tuple[np.ndarray, np.ndarray]:
        end = start_pos + k.shape[-2]
        self.keys[:, :, start_pos:end] = k                     # (B, H, T, D) new positions
        self.values[:, :, start_pos:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]  # (B, H, end, D)


# ----------------------------------------------------------------------------- generate
def _check_args(model, idx, max_new_tokens, context_size, temperature, top_k):
    idx = idx.data if isinstance(idx, Tensor) else idx
    idx = np.asarray(idx)
    if idx.ndim != 2 or idx.shape[1] == 0:
        raise ValueError(f"generate expects token ids of shape (batch, tokens) with at least one "
                         f"token, got shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"generate expects integer token ids, got {idx.dtype}")
    if int(max_new_tokens) < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    limit = model.cfg["context_length"]
    context_size = limit if context_size is None else int(context_size)
    if context_size < 1:
        raise ValueError(f"context_size must be >= 1, got {context_size}")
    temperature = float(temperature)
    if not np.isfinite(temperature) or temperature < 0.0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    # the model has no positions beyond its context length: a longer window cannot run
    return idx, int(max_new_tokens), min(context_size, limit), temperature, \
        None if top_k is None else int(top_k)


def generate_stream(model: GPTModel, idx, max_new_tokens: int, context_size: Optional[int] = None,
                    temperature: float = 0.0, top_k: Optional[int] = None, eos_id: Optional[int] = None,
                    rng: Union[None, int, np.random.Generator] = None,
                    use_cache: bool = True) -> Iterator[np.ndarray]:
    """`generate`, one step at a time: yields each new column of token ids, (B,) int64.

    Stopping at eos_id, as the book: when the sampled token equals eos_id, stop without
    appending it. With a batch, a row that has sampled eos_id keeps eos_id from then on
    (padding), and generation stops, without appending, at the step where every row is eos_id.
    The model is put in eval mode for the duration (dropout off) and restored afterwards."""
    idx, max_new_tokens, context_size, temperature, top_k = _check_args(
        model, idx, max_new_tokens, context_size, temperature, top_k)
    rng = as_generator(rng) if temperature > 0.0 else rng
    was_training = model.training
    model.eval()
    try:
        B = idx.shape[0]
        cache = KVCache.for_model(model, B, capacity=context_size) if use_cache else None
        finished = np.zeros(B, dtype=bool)
        seq = idx.astype(np.int64)                                              # (B, N)
        for _ in range(max_new_tokens):
            window = seq[:, -context_size:]                                     # (B, W) the book's crop
            if cache is None:
                new = window                                                    # the book's loop
            elif seq.shape[1] <= context_size and cache.length == seq.shape[1] - 1:
                new = seq[:, -1:]                                               # one new position
            else:                                                               # first step, or the window slid
                cache.reset()
                new = window                                                    # (re-)prefill the window
            with no_grad():
                logits = model(new, last_only=True, kv_cache=cache).data[:, -1, :]   # (B, V)
            nxt = sample_next_token(logits, temperature, top_k, rng)           # (B,)
            if eos_id is not None:
                nxt = np.where(finished, eos_id, nxt)
                is_eos = nxt == eos_id
                if is_eos.all():
                    return
                finished |= is_eos
            seq = np.concatenate([seq, nxt[:, None]], axis=1)                   # (B, N + 1)
            yield nxt
    finally:
        model.train(was_training)


def generate(model: GPTModel, idx, max_new_tokens: int, context_size: Optional[int] = None, temperature: float = 0.0,
             top_k: Optional[int] = None, eos_id: Optional[int] = None,
             rng: Union[None, int, np.random.Generator] = None, use_cache: bool = True) -> np.ndarray:
    """The book's generate (chapter 5), on NumPy, with a KV cache.

    idx: integer token ids (B, T). Returns (B, T + new) in idx's integer dtype: greedy at
    temperature 0; otherwise top-k filtering (the book's rule, see `top_k_filter`), then
    temperature scaling and a draw from `rng` (an int seed or np.random.Generator; None uses
    the engine's global generator). Stops early at eos_id (not appended, as the book).
    context_size defaults to the model's context length and is capped by it. use_cache=False
    is the book's loop: every step reruns the cropped window; both give the same tokens."""
    arr = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
    out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.integer) else np.int64
    columns = list(generate_stream(model, arr, max_new_tokens, context_size, temperature, top_k,
                                   eos_id, rng, use_cache))
    if not columns:
        return arr.astype(out_dtype, copy=True)
    return np.concatenate([arr, np.stack(columns, axis=1)], axis=1).astype(out_dtype, copy=False)
