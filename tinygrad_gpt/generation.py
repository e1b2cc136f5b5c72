"""Text generation: the book's `generate` (chapter 5) with a KV cache (the book's kv_cache bonus).

    generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None,
             rng=None, use_cache=True)  ->  integer array (B, T + new)

Without the cache every new token runs the whole window through the model again: position t
costs a forward over t positions. With it, each layer keeps the keys and values of the
positions it has seen (`KVCache`, preallocated (B, H, context, D) per layer), and a new token
costs one position's forward: its own q, k, v, and attention over the cached k, v.

`forward_cached` runs the model's own modules (block.norm1, att.W_query, block.ff, ...) one
step at a time; only the attention over the cache is written here, in plain NumPy, because
the fused attention op in functional.py takes as many keys as queries. nn.py is unchanged.

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
import sys

import numpy as np

from .tensor import Tensor, default_rng, no_grad


@contextlib.contextmanager
def cpu_threads(n):
    """At most n BLAS and numba threads inside the block, restored after it (None: unchanged).
    BLAS is limited through threadpoolctl (the dev extra); without it, only numba is."""
    if n is None:
        yield
        return
    n = max(1, int(n))
    stack = contextlib.ExitStack()
    try:
        from threadpoolctl import threadpool_limits
        stack.enter_context(threadpool_limits(limits=n, user_api="blas"))
    except ImportError:
        pass
    numba = sys.modules.get("numba")
    previous = numba.get_num_threads() if numba is not None else None
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        with stack:
            yield
    finally:
        if previous is not None:
            numba.set_num_threads(previous)


# ----------------------------------------------------------------------------- sampling
def as_generator(rng=None):
    """None -> the engine's global generator (seeded by manual_seed); an int -> a new
    np.random.Generator seeded with it; a Generator -> itself."""
    if rng is None:
        return default_rng()
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a numpy.random.Generator, not {type(rng).__name__}")


def top_k_filter(logits, top_k):
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


def sample_next_token(logits, temperature=0.0, top_k=None, rng=None):
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

    def __init__(self, n_layers, batch_size, n_heads, capacity, head_dim, dtype=np.float32):
        shape = (batch_size, n_heads, capacity, head_dim)                # (B, H, context, D)
        self.keys = [np.zeros(shape, dtype=dtype) for _ in range(n_layers)]
        self.values = [np.zeros(shape, dtype=dtype) for _ in range(n_layers)]
        self.capacity = capacity
        self.length = 0

    @classmethod
    def for_model(cls, model, batch_size, capacity=None):
        cfg = model.cfg
        H = cfg["n_heads"]
        capacity = cfg["context_length"] if capacity is None else capacity
        dtype = model.tok_emb.weight.data.dtype
        return cls(cfg["n_layers"], batch_size, H, capacity, cfg["emb_dim"] // H, dtype)

    def reset(self):
        self.length = 0                                        # stale entries are overwritten


def _attend(q, keys, values, start):
    """Causal attention of Tn new queries at window positions [start, start + Tn) over the
    keys/values of positions [0, start + Tn). q: (B, H, Tn, D), keys/values: (B, H, L, D)."""
    Tn, D = q.shape[-2], q.shape[-1]
    L = keys.shape[-2]
    s = q @ keys.swapaxes(-1, -2)                              # (B, H, Tn, L) scores
    s *= 1.0 / float(np.sqrt(D))                               # a Python float keeps float32
    if Tn > 1:                                                 # query i sees keys j <= start + i
        future = np.arange(L)[None, :] > (start + np.arange(Tn))[:, None]   # (Tn, L)
        s[..., future] = -np.inf
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=-1, keepdims=True)                         # (B, H, Tn, L) attention weights
    return s @ values                                          # (B, H, Tn, D)


def forward_cached(model, idx, cache):
    """Run tokens idx (B, Tn) at window positions [cache.length, cache.length + Tn) through the
    model, appending their keys and values to the cache. Returns the last position's logits
    (B, V). Inference only: dropout is skipped (the model must be in eval mode to match)."""
    B, Tn = idx.shape
    start, end = cache.length, cache.length + Tn
    if end > cache.capacity:
        raise ValueError(f"KV cache holds {cache.capacity} positions; {end} were asked for")
    with no_grad():
        x = model.tok_emb(idx).data + model.pos_emb(np.arange(start, end)).data   # (B, Tn, C)
        for layer, block in enumerate(model.trf_blocks):
            att = block.att
            H, D = att.num_heads, att.head_dim
            h = block.norm1(Tensor(x))                                          # (B, Tn, C)
            q = att.W_query(h).data.reshape(B, Tn, H, D).transpose(0, 2, 1, 3)  # (B, H, Tn, D)
            k = att.W_key(h).data.reshape(B, Tn, H, D).transpose(0, 2, 1, 3)    # (B, H, Tn, D)
            v = att.W_value(h).data.reshape(B, Tn, H, D).transpose(0, 2, 1, 3)  # (B, H, Tn, D)
            cache.keys[layer][:, :, start:end] = k
            cache.values[layer][:, :, start:end] = v
            ctx = _attend(q, cache.keys[layer][:, :, :end], cache.values[layer][:, :, :end], start)
            ctx = ctx.transpose(0, 2, 1, 3).reshape(B, Tn, H * D)              # (B, Tn, C)
            x = x + att.out_proj(Tensor(ctx)).data                             # shortcut around attention
            x = x + block.ff(block.norm2(Tensor(x))).data                      # shortcut around the MLP
        cache.length = end
        x = model.final_norm(Tensor(x[:, -1:, :]))                             # (B, 1, C)
        return model.out_head(x).data[:, -1, :]                                # (B, V)


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


def generate_stream(model, idx, max_new_tokens, context_size=None, temperature=0.0, top_k=None,
                    eos_id=None, rng=None, use_cache=True):
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
                with no_grad():
                    logits = model(window, last_only=True).data[:, -1, :]       # (B, V)
            elif seq.shape[1] <= context_size and cache.length == seq.shape[1] - 1:
                logits = forward_cached(model, seq[:, -1:], cache)              # one new position
            else:                                                               # first step, or the window slid
                cache.reset()
                logits = forward_cached(model, window, cache)                   # (re-)prefill the window
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


def generate(model, idx, max_new_tokens, context_size=None, temperature=0.0, top_k=None,
             eos_id=None, rng=None, use_cache=True):
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
