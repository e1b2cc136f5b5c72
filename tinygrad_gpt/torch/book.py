"""The book's own GPTModel (llms_from_scratch.ch04) on the engine, and the engine's backward
trace over it: every op of one backward pass, named by the book's modules.

    from tinygrad_gpt.torch.book import explain_book_backward
    explain_book_backward(depth=40)          # the tiny config, 1 x 32 tokens of text

The book's model composes its layers from small ops (mean, var, sqrt for layer norm; tanh and
x ** 3 for GELU; matmul, masked_fill_, softmax for attention), so its trace shows those where
the engine's own GPTModel shows one fused op per layer.
"""
import math
import sys

import numpy as np

from ..explain import Listing, one_batch, totals, trace_backward
from ..model import get_config
from ..tensor import Tensor, manual_seed
from .binding import load_book_modules


def book_gpt_model(cfg, seed=123):
    """llms_from_scratch.ch04.GPTModel(cfg), its `torch` bound to tinygrad_gpt.torch, seeded."""
    ch04, = load_book_modules("ch04")
    manual_seed(seed)
    return ch04.GPTModel(cfg)


def trace_book_backward(model, input_ids, target_ids, on_op=None, on_forward=None):
    """explain's trace_backward (tinygrad_gpt/explain/trace.py) on a book model (any
    tinygrad_gpt.torch.nn.Module taking (B, T) token ids): forward, cross-entropy against
    target_ids (B, T), backward with the engine's backward hook recording each op and the
    book's module that made it. Returns an explain.Trace."""
    ids = input_ids if isinstance(input_ids, Tensor) else Tensor(np.asarray(input_ids, dtype=np.int64))
    return trace_backward(model, ids, np.asarray(target_ids), on_op=on_op, on_forward=on_forward)


def explain_book_backward(model="tiny", context_length=32, batch_size=1, seed=123, depth=None,
                          data=None, file=None):
    """Print the backward of the book's ch04.GPTModel, op by op (as `python -m
    tinygrad_gpt.explain` does for the engine's model), then the totals. model: a config name
    of tinygrad_gpt.model.CONFIGS. Returns (trace, model)."""
    from ..data import load_training_text
    from ..tokenizer import get_gpt2_tokenizer
    out = sys.stdout if file is None else file
    cfg = get_config(model)
    cfg["context_length"] = context_length
    gpt = book_gpt_model(cfg, seed).train()
    text, description = load_training_text(data, download=False)
    x, y = one_batch(text, get_gpt2_tokenizer(), batch_size, context_length)
    print(description, file=out)
    print(f"the book's llms_from_scratch.ch04.GPTModel ({model}) on tinygrad_gpt's engine: "
          f"{sum(p.numel() for p in gpt.parameters()):,} parameters, one batch of {batch_size} x "
          f"{context_length} tokens", file=out)
    listing = Listing(gpt, depth=depth, file=out)

    def forward_done(loss):
        print(f"forward: loss {loss:.4f} (ln {cfg['vocab_size']} = {math.log(cfg['vocab_size']):.4f})", file=out)
        print(listing.header(), file=out, flush=True)

    trace = trace_book_backward(gpt, x, y, on_op=listing, on_forward=forward_done)
    if depth is not None and len(trace.ops) > depth:
        print(f"  ... {len(trace.ops) - depth} more ops not listed (depth={depth})", file=out)
    print("", file=out)
    print("\n".join(totals(trace, gpt)), file=out)
    return trace, gpt
