"""explain --use-op FILE.py:CLASS: your own op in the model, compared with the engine's, then trained.

CLASS is a Function subclass (tinygrad_gpt.Function) named after the engine op it replaces:
LayerNorm, GELU, Softmax, Linear, Embedding, Attention, CrossEntropy. It runs in the model in
the engine's place, forward and backward, through functional.use_op: the fused ops' call sites
apply `_op(LayerNorm)`, a registry that use_op fills while inside (nothing is patched). Then:

1. one forward and backward with the engine's op, one with yours, compared op by op in the order
   backward runs them (explain/sabotage.py's `compare`: the first op that received the same
   dL/d(output) in both runs and returned a different gradient is the first departure);
2. gradcheck in float64 on yours and on the engine's, on the inputs the first of your ops had in
   the model (cut small, as --break does);
3. with --train-steps N: the model trained N AdamW steps on the batch with the engine's op and,
   from the same initial weights, with yours; both loss curves, and their largest difference.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import sys
from pathlib import Path

import numpy as np

from .. import functional as F
from ..gradcheck import GradcheckError, gradcheck
from ..tensor import Function, Tensor, register_forward_hook


class UseOpError(ValueError):
    """What is wrong with --use-op's file, class or run, in one line (the command prints it, exit 2)."""


def load_op(spec):
    """FILE.py:CLASS -> the class, or a UseOpError saying what is wrong with it."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise UseOpError(f"--use-op {spec}: expected FILE.py:CLASS, e.g. examples/walkthrough_solutions.py:LayerNorm")
    file = Path(path)
    if not file.is_file():
        raise UseOpError(f"--use-op {spec}: no file {path}")
    module_spec = importlib.util.spec_from_file_location(f"_use_op_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module           # inspect finds its source (file:line of a backward)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:                           # the learner's file: say where it broke, in one line
        del sys.modules[module_spec.name]
        raise UseOpError(f"--use-op {spec}: running {path} raised {type(e).__name__}: {e}") from None
    cls = getattr(module, name, None)
    if cls is None:
        found = [n for n, v in vars(module).items() if inspect.isclass(v) and issubclass(v, Function) and v is not Function]
        raise UseOpError(f"--use-op {spec}: {path} has no {name}" + (f"; it has {', '.join(found)}" if found else ""))
    if not (inspect.isclass(cls) and issubclass(cls, Function)):
        raise UseOpError(f"--use-op {spec}: {name} is not a subclass of tinygrad_gpt.Function")
    if cls.__name__ not in F.REPLACEABLE:
        raise UseOpError(f"--use-op {spec}: the class is named {cls.__name__}; name it after the engine op it "
                         f"replaces: {', '.join(F.REPLACEABLE)}")
    return cls


@contextlib.contextmanager
def kept_inputs(cls, kept):
    """While inside, kept gets a copy of the input arrays of every op of class cls that ran."""
    def hook(ctx, inputs, out):
        if type(ctx) is cls:
            kept.append([np.array(t.data, copy=True) for t in inputs])

    with register_forward_hook(hook):
        yield


def gradcheck_lines(engine_cls, mine, arrays):
    """gradcheck of the engine's op and of yours, in float64, on one op's inputs from the model."""
    from .sabotage import small_inputs
    arrays, cut = small_inputs(engine_cls, arrays)
    lines = []
    for cls, who in ((engine_cls, "the engine's"), (mine, "yours")):
        tensors = [Tensor(a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a,
                          requires_grad=bool(np.issubdtype(a.dtype, np.floating))) for a in arrays]
        shapes = ", ".join("x".join(map(str, t.shape)) for t in tensors)
        try:
            gradcheck(lambda *ts, cls=cls: cls.apply(*ts), tensors)
            verdict = "passes"
        except GradcheckError as e:
            verdict = f"FAILS: {e}"
        except Exception as e:                      # the learner's code raised
            verdict = f"FAILS: {type(e).__name__}: {e}"
        lines.append(f"gradcheck {engine_cls.__name__} ({who}) on its inputs{cut} {shapes} in float64: {verdict}")
    return lines


def train(cfg, x, y, steps, lr, weight_decay, seed, op=None):
    """The model trained `steps` AdamW steps on one batch, with op in the engine's place (None:
    the engine's own); the losses, one per step (before its update)."""
    from ..model import GPTModel
    from ..optim import AdamW
    from ..tensor import manual_seed
    manual_seed(seed)
    model = GPTModel(cfg).train()
    opt = AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        with F.use_op(op) if op is not None else contextlib.nullcontext():
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def report_use_op(args, out, cfg, x, y, description):
    """Both backwards compared, gradcheck, and with --train-steps both loss curves. Returns 0."""
    from ..model import GPTModel
    from ..tensor import manual_seed
    from .sabotage import compare, comparison_lines
    from .trace import source_location, trace_backward
    mine = load_op(args.use_op)
    engine_cls = F.REPLACEABLE[mine.__name__]
    print(description, file=out)
    where = source_location(mine)
    print(f"--use-op {args.use_op}: your {mine.__name__} ({where}) in place of the engine's "
          f"functional.{engine_cls.__name__}, forward and backward (functional.use_op)", file=out)
    keep = 1 << 62                                   # every array: the comparison reads them whole
    manual_seed(args.seed)
    model = GPTModel(cfg).train()
    clean = trace_backward(model, x, y, keep_values=keep)
    seen = []
    try:
        with F.use_op(mine), kept_inputs(mine, seen):
            yours = trace_backward(model, x, y, keep_values=keep)
    except Exception as e:
        raise UseOpError(f"--use-op {args.use_op}: the model's forward or backward with your "
                         f"{mine.__name__} raised {type(e).__name__}: {e}") from None
    if not seen:
        raise UseOpError(f"--use-op {args.use_op}: the {args.model} model ran no {mine.__name__}")
    print(f"forward: loss {clean.loss:.7f} with the engine's {mine.__name__}, {yours.loss:.7f} with yours "
          f"(difference {abs(clean.loss - yours.loss):.2g})", file=out)
    print("\nbackward twice, op by op in the order it runs: the norm of each gradient with yours divided by "
          "the engine's", file=out)
    try:
        rows, first = compare(clean, yours)
    except RuntimeError as e:
        raise UseOpError(f"--use-op {args.use_op}: {e}") from None
    width = max(18, max(len(c.module or "-") for c, *_ in rows) + 2)
    print("\n".join(comparison_lines(rows, first, width)).replace("the sabotaged run", "your run")
          .replace("in the correct one", "in the engine's"), file=out)
    arrays = seen[0]
    if first is None:
        print("first departure: none (your backward and the engine's agree at every op)", file=out)
    else:
        c, b = clean.ops[first - 1], yours.ops[first - 1]
        print(f"first departure: step {first} {c.name} ({c.module}) {b.backward_at}", file=out)
        arrays = next((a for a in seen if a[0].shape == tuple(b.inputs[0].shape)), arrays)
        print(f"\nstep {first} received the same dL/d(output) in both runs and returned different gradients.",
              file=out)
    print(f"gradcheck on {mine.__name__} alone, on the inputs the model gave it:", file=out)
    print("\n".join(gradcheck_lines(engine_cls, mine, arrays)), file=out)
    if args.train_steps:
        lr = args.lr
        engine_losses = train(cfg, x, y, args.train_steps, lr, args.weight_decay, args.seed)
        your_losses = train(cfg, x, y, args.train_steps, lr, args.weight_decay, args.seed, op=mine)
        print(f"\ntraining {args.train_steps} AdamW steps (lr {lr:g}, weight decay {args.weight_decay:g}) on this "
              f"batch, from the same initial weights:", file=out)
        print(f"{'step':>5}  {'the engine':>12s}  {'yours':>12s}  {'difference':>10s}", file=out)
        for k, (a, b) in enumerate(zip(engine_losses, your_losses)):
            print(f"{k + 1:5d}  {a:12.7f}  {b:12.7f}  {abs(a - b):10.2g}", file=out)
        worst = max(abs(a - b) for a, b in zip(engine_losses, your_losses))
        print(f"largest loss difference over {args.train_steps} steps: {worst:.2g}", file=out)
    return 0
