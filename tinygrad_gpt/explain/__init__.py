"""Watch backpropagation run: every op of one backward pass through GPT-2, as it happens.

    python -m tinygrad_gpt.explain                        # the tiny model, 1 x 32 tokens
    python -m tinygrad_gpt.explain --model 124M           # the book's GPT-2, 1 x 256 tokens
    python -m tinygrad_gpt.explain --param trf_blocks.0.att.W_query.weight
    python -m tinygrad_gpt.explain --depth 12 --dot graph.dot
    python -m tinygrad_gpt.explain --model micro --lora 2    # appendix E: what trains, what is frozen

One forward and one backward on one batch of text, observed through the engine's hooks:
a forward hook (`tensor.register_forward_hook`) names each op by the module running when it
was made ("Linear trf_blocks.0.att.W_query", from `nn.module_stack()`), and a backward hook
(`tensor.register_backward_hook`), called right after an op's backward ran and before its
gradients are added into the inputs, is where each line is printed. Nothing is patched.

This package owns the explain command; trace.py records a Trace (the data), render_text.py
and render_dot.py draw it, book.py traces the book's own GPTModel, cli.py is the command.
Other renderers go beside them. Beside the trace, the teaching tools: worked.py (one row of a
backward by hand), optimizer.py (one AdamW step, by hand), sabotage.py (--break) and use_op.py
(the learner's own op in the model, functional.use_op).
"""
import shutil  # noqa: F401  (tests replace shutil.which to act as if Graphviz were missing)

from .cli import USAGE_ERROR, UsageError, build_parser, check_args, main, one_batch, report, run  # noqa: F401
from .render_dot import _attrs, _q, to_dot, write_dot  # noqa: F401
from .render_text import (Listing, _dims, _module_label, _shapes_text, chain_lines, ops_table,  # noqa: F401
                          parameter_group, parameter_groups, totals)
from .trace import (ROOT, Input, Op, Trace, chain, consumers, kernel_locations, record_modules,  # noqa: F401
                    source_location, trace_backward)
