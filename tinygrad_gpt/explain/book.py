"""The book's own GPTModel (llms_from_scratch.ch04) on the engine, and the engine's backward
trace over it: every op of one backward pass, named by the book's modules.

    from tinygrad_gpt.explain.book import explain_book_backward
    explain_book_backward(depth=40)          # the tiny config, 1 x 32 tokens of text

    python examples/explain_backward.py --book --depth 40          # the same, from the command line

The book's model composes its layers from small ops (mean, var, sqrt for layer norm; tanh and
x ** 3 for GELU; matmul, masked_fill_, softmax for attention), so its trace shows those where
the engine's own GPTModel shows one fused op per layer.
"""
import difflib
import math
import sys

import numpy as np

from ..data import load_text, one_batch
from ..model import get_config
from ..tensor import Tensor
from ..torch.binding import BOOK_PACKAGE, load_book_modules
from .render_dot import to_dot, write_dot
from .render_text import Listing, chain_lines, totals
from .trace import trace_backward


class BookError(ValueError):
    """What the book's model cannot trace as asked: one line (the explain command prints it)."""


def book_gpt_model(cfg, seed=123):
    """llms_from_scratch.ch04.GPTModel(cfg), its `torch` bound to tinygrad_gpt.torch, seeded by
    its own torch.manual_seed: the initial weights (and dropout masks) PyTorch's would be."""
    ch04, = load_book_modules("ch04")
    ch04.torch.manual_seed(seed)
    return ch04.GPTModel(cfg)


def trace_book_backward(model, input_ids, target_ids, on_op=None, on_forward=None):
    """explain's trace_backward (tinygrad_gpt/explain/trace.py) on a book model (any
    tinygrad_gpt.torch.nn.Module taking (B, T) token ids): forward, cross-entropy against
    target_ids (B, T), backward with the engine's backward hook recording each op and the
    book's module that made it. Returns an explain.Trace."""
    ids = input_ids if isinstance(input_ids, Tensor) else Tensor(np.asarray(input_ids, dtype=np.int64))
    return trace_backward(model, ids, np.asarray(target_ids), on_op=on_op, on_forward=on_forward)


def explain_book_backward(model="tiny", context_length=32, batch_size=1, seed=123, depth=None,
                          data=None, file=None, drop_rate=None, param=None, dot=None, expand=None):
    """Print the backward of the book's ch04.GPTModel, op by op (as `python -m
    tinygrad_gpt.explain` does for the engine's model), then the totals; with param=NAME the
    chain of ops from the loss down to that parameter instead; with dot=FILE the graph too.
    model: a config name of tinygrad_gpt.model.CONFIGS. Returns (trace, model)."""
    from ..kernels import get_backend
    from ..tokenizer import tokenizer_for
    out = sys.stdout if file is None else file
    cfg = get_config(model)
    cfg["context_length"] = context_length
    if drop_rate is not None:
        cfg["drop_rate"] = drop_rate
    gpt = book_gpt_model(cfg, seed).train()
    names = [name for name, _ in gpt.named_parameters()]
    if param is not None and param not in names:
        close = difflib.get_close_matches(param, names, n=3, cutoff=0.5)
        raise BookError(f"--param {param!r} is not a parameter of the book's {model} GPTModel"
                         + (f"; did you mean {', '.join(close)}?" if close else f"; e.g. {names[2]}"))
    try:
        text, description = load_text(data, cfg, download=False)             # micro: its own sentence
        x, y = one_batch(text, tokenizer_for(cfg), batch_size, context_length)   # BPE, or micro's characters
    except ValueError as e:                          # DataError: a bad file, a text too short; unknown characters
        raise BookError(str(e)) from None
    print(description, file=out)
    print(f"the book's llms_from_scratch.ch04.GPTModel ({model}) on tinygrad_gpt's engine: "
          f"{gpt.num_parameters():,} parameters in {len(names)} tensors, dropout {cfg['drop_rate']}, "
          f"kernels {get_backend()}, one batch of {batch_size} x {context_length} tokens", file=out)
    listing = Listing(gpt, depth=depth, file=out)

    def forward_done(loss):
        print(f"forward: loss {loss:.4f} (ln {cfg['vocab_size']} = {math.log(cfg['vocab_size']):.4f})", file=out)
        if param is None:
            print(listing.header(), file=out, flush=True)

    trace = trace_book_backward(gpt, x, y, on_op=listing if param is None else None, on_forward=forward_done)
    if param is not None:
        print("", file=out)
        print("\n".join(chain_lines(trace, param, gpt)), file=out)
    else:
        if depth is not None and len(trace.ops) > depth:
            print(f"  ... {len(trace.ops) - depth} more ops not listed (depth={depth})", file=out)
        print("", file=out)
        print("\n".join(totals(trace, gpt)), file=out)
    if dot:
        title = (f"backward through the book's GPTModel ({model}) on the engine: loss {trace.loss:.4f}, "
                 f"{len(trace.ops)} ops, {gpt.num_parameters():,} parameters")
        write_dot(to_dot(trace, gpt, expand=expand, title=title), dot, file=out)
    return trace, gpt


# what `explain_backward.py --book` passes on to explain_book_backward; any other flag given
# (one the explain command has for its own model only) is refused rather than ignored
_BOOK_FLAGS = {"book": None, "model": "model", "context_length": "context_length", "batch_size": "batch_size",
               "data": "data", "drop_rate": "drop_rate", "seed": "seed", "kernels": None, "param": "param",
               "depth": "depth", "dot": "dot", "expand": "expand"}


def run_book(args, defaults, file=None):
    """`explain_backward.py --book ...` (tinygrad_gpt/explain/cli.py): the explain command's
    flags, already checked, on the book's model; defaults: the flags' defaults (to tell the
    ones given). A usage error (exit 2) without the book's package."""
    from ..kernels import use
    try:
        import llms_from_scratch  # noqa: F401
    except ImportError:
        raise BookError(f"--book traces the book's own {BOOK_PACKAGE}.ch04.GPTModel, and the package "
                         f"{BOOK_PACKAGE} is not installed: pip install --no-deps llms-from-scratch==1.0.19"
                         ) from None
    other = [k for k, v in vars(args).items() if k not in _BOOK_FLAGS and v != defaults.get(k, v)]
    if other:
        raise BookError(f"--book does not take {', '.join('--' + k.replace('_', '-') for k in other)}")
    options = {mine: getattr(args, flag) for flag, mine in _BOOK_FLAGS.items() if mine is not None}
    with use(args.kernels):                          # in-process callers (tests) keep theirs
        explain_book_backward(file=file, **options)
    return 0
