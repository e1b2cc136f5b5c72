"""explain --break MODE: find a wrong backward in a whole model, the way a learner's bug hides.

A wrong backward in a GPT does not crash: the loss curve is a little off. This module runs
the model's backward twice on one batch, once as the engine has it and once with one op's
backward sabotaged, and compares the two op by op in the order backward runs them: the
first op whose returned gradients differ while the gradient it received was the same is
where the bug is. Then gradcheck, on that op alone, names it.

The sabotage never touches the engine or its kernels: each mode is a subclass of the public
Function (functional.LayerNorm, Embedding, Attention) whose backward is written here, from
the op's inputs (ctx.parents) in plain NumPy, with one mistake. A forward hook
(tensor.register_forward_hook) swaps each op of that class, once its forward has run, for
the subclass: the forward and every other op stay the engine's own.

    layernorm-mean     layer norm's dx without the - mean(dx̂) term
    embedding-assign   the embedding's dW[ids] = dout, not +=: a repeated id keeps one row
    attention-scale    attention's dq, dk without the 1/sqrt(d_head) of the scores
    none               a correct layer norm backward written here: nothing departs
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from .. import functional as F
from ..gradcheck import GradcheckError, gradcheck
from ..tensor import Tensor, register_forward_hook

RTOL = 1e-4          # two gradients "part" when max |a - b| > RTOL * max |b|: float32 rounding is ~1e-7


# ----------------------------------------------------------------------------- the sabotaged backwards
def _layer_norm_pieces(ctx):
    x, w = (np.asarray(t.data, dtype=np.float64) for t in ctx.parents[:2])
    C = x.shape[-1]
    x2 = x.reshape(-1, C)                                      # (N, C)
    mean = x2.mean(axis=1, keepdims=True)                      # (N, 1)
    rstd = 1.0 / np.sqrt(((x2 - mean) ** 2).mean(axis=1, keepdims=True) + getattr(ctx, "sabotage_eps", 1e-5))
    return x2, w, (x2 - mean) * rstd, rstd                     # xhat: (N, C)


class LayerNormCorrect(F.LayerNorm):
    """The right layer norm backward, written here: dx = rstd (dx̂ - mean(dx̂) - x̂ mean(dx̂ x̂))."""
    def backward(ctx, grad):
        x2, w, xhat, rstd = _layer_norm_pieces(ctx)
        dy = np.asarray(grad, dtype=np.float64).reshape(x2.shape)
        dxhat = dy * w
        dx = rstd * (dxhat - dxhat.mean(axis=1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
        dt = grad.dtype
        return dx.reshape(grad.shape).astype(dt), (dy * xhat).sum(0).astype(dt), dy.sum(0).astype(dt)


class LayerNormMeanDropped(F.LayerNorm):
    """Layer norm's backward with the mean term forgotten: as if mean(x) were a constant."""
    def backward(ctx, grad):
        x2, w, xhat, rstd = _layer_norm_pieces(ctx)
        dy = np.asarray(grad, dtype=np.float64).reshape(x2.shape)
        dxhat = dy * w
        dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))   # BUG: - mean(dxhat) dropped
        dt = grad.dtype
        return dx.reshape(grad.shape).astype(dt), (dy * xhat).sum(0).astype(dt), dy.sum(0).astype(dt)


class EmbeddingAssigned(F.Embedding):
    """The embedding's scatter with `=`: a row read at several positions keeps only the last."""
    def backward(ctx, grad):
        weight, ids = ctx.parents[0], np.asarray(ctx.parents[1].data).reshape(-1)
        g2 = np.asarray(grad).reshape(-1, grad.shape[-1])      # (N, C)
        dW = np.zeros(weight.shape, dtype=grad.dtype)
        dW[ids] = g2                                           # BUG: should be np.add.at(dW, ids, g2)
        return dW, None


class AttentionUnscaled(F.Attention):
    """Causal attention's backward with the 1/sqrt(d_head) of the scores forgotten in dq, dk."""
    def backward(ctx, grad):
        if len(ctx.parents) > 3:
            raise ValueError("--break attention-scale runs without dropout (the sabotage takes no keep mask)")
        q, k, v = (np.asarray(t.data, dtype=np.float64) for t in ctx.parents)   # (B, H, T, D)
        D, T = q.shape[-1], q.shape[-2]
        s = q @ k.swapaxes(-1, -2) / math.sqrt(D)              # the forward, as it ran
        s = np.where(np.triu(np.ones((T, k.shape[-2]), dtype=bool), 1), -np.inf, s)
        att = np.exp(s - s.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)                      # (B, H, T, T)
        dout = np.asarray(grad, dtype=np.float64)
        dv = att.swapaxes(-1, -2) @ dout
        datt = dout @ v.swapaxes(-1, -2)
        ds = att * (datt - (datt * att).sum(-1, keepdims=True))  # BUG: ds *= 1/sqrt(D) forgotten
        dt = grad.dtype
        return (ds @ k).astype(dt), (ds.swapaxes(-1, -2) @ q).astype(dt), dv.astype(dt)


MODES = {   # mode -> (the engine's Function, its sabotaged subclass, what is wrong)
    "layernorm-mean": (F.LayerNorm, LayerNormMeanDropped,
                       "every LayerNorm's backward drops the - mean(dx̂) term of dx"),
    "embedding-assign": (F.Embedding, EmbeddingAssigned,
                         "every Embedding's backward writes dW[ids] = dout (not +=): a repeated id keeps one row"),
    "attention-scale": (F.Attention, AttentionUnscaled,
                        "every Attention's backward forgets the 1/sqrt(d_head) of the scores in dq and dk"),
    "none": (F.LayerNorm, LayerNormCorrect,
             "every LayerNorm's backward is a correct one written in explain/sabotage.py (a no-op sabotage)"),
}


@contextlib.contextmanager
def swapped(mode, seen=None):
    """While inside, each op of the mode's Function class becomes its sabotaged subclass once
    its forward ran (a forward hook; the forward itself is the engine's). seen, a list, gets
    (ctx, copies of its input arrays) for each op swapped: what gradcheck reruns."""
    from ..nn import module_stack
    original, broken, _ = MODES[mode]

    def hook(ctx, inputs, out):
        if type(ctx) is not original or out._ctx is not ctx:
            return
        stack = module_stack()
        if stack and hasattr(stack[-1][1], "eps"):
            ctx.sabotage_eps = stack[-1][1].eps             # the LayerNorm module's eps
        ctx.__class__ = broken
        if seen is not None:
            seen.append((ctx, [np.array(t.data, copy=True) for t in inputs]))

    with register_forward_hook(hook):
        yield


# ----------------------------------------------------------------------------- comparing two traces
def parted(a, b):
    """Whether gradient a (the sabotaged run's) differs from b (the correct run's)."""
    if a is None or b is None:
        return (a is None) != (b is None)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(np.abs(a - b).max(initial=0.0) > RTOL * max(np.abs(b).max(initial=0.0), 1e-30))


def _ratio(a, b):
    if a is None or b is None:
        return "-"
    return "1" if a == b else (f"{a / b:.4g}" if b else "inf")


def compare(clean, broken):
    """[(clean op, broken op, received parted, [input parted])] step by step, and the step of
    the first departure: the first op whose received gradient agrees and whose returned one
    does not (None when nothing parts)."""
    rows, first = [], None
    for c, b in zip(clean.ops, broken.ops):
        if c.module != b.module or len(c.inputs) != len(b.inputs):
            raise RuntimeError(f"the two backwards ran different ops at step {c.step}: "
                               f"{c.name} {c.module} and {b.name} {b.module}")
        got = parted(b.out_grad, c.out_grad)
        returned = [parted(bi.grad, ci.grad) for ci, bi in zip(c.inputs, b.inputs)]
        if first is None and not got and any(returned):
            first = c.step
        rows.append((c, b, got, returned))
    return rows, first


def comparison_lines(rows, first, module_width=28):
    lines = [f"{'step':>5}  {'op':13s} {'module':{module_width}s} {'received':>9s}  "
             "returned, per input (norm in the sabotaged run / in the correct one; * = the arrays part)"]
    for c, b, got, returned in rows:
        parts = []
        for ci, bi, bad in zip(c.inputs, b.inputs, returned):
            if ci.grad_shape is None:
                continue
            parts.append(f"{ci.param or ci.arg} {_ratio(bi.grad_norm, ci.grad_norm)}{'*' if bad else ''}")
        mark = "   <- first departure" if c.step == first else ""
        received = _ratio(b.out_grad_norm, c.out_grad_norm) + ("*" if got else "")
        lines.append(f"{c.step:5d}  {c.name:13s} {c.module or '-':{module_width}s} {received:>9s}  "
                     f"{', '.join(parts)}{mark}")
    return lines


# ----------------------------------------------------------------------------- gradcheck on the op that parted
def gradcheck_lines(mode, seen, op=None):
    """gradcheck, in float64, on the inputs the swapped op `op` (a trace's Op; default the first
    swapped) had in the model: the engine's Function passes, the sabotaged one fails, naming the
    input and element."""
    original, broken, _ = MODES[mode]
    ctx, arrays = next(((c, a) for c, a in seen if op is not None and id(c.parents[0]) == op.inputs[0].node), seen[0])
    arrays, cut = small_inputs(original, arrays)
    tensors = [Tensor(a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a,
                      requires_grad=np.issubdtype(a.dtype, np.floating)) for a in arrays]
    lines = []
    for cls, who in ((original, "the engine's"), (broken, "the sabotaged")):
        def fn(*ts, cls=cls):
            out = cls.apply(*ts)
            if hasattr(ctx, "sabotage_eps"):
                out._ctx.sabotage_eps = ctx.sabotage_eps
            return out
        shapes = ", ".join(f"{'x'.join(map(str, t.shape))}" for t in tensors)
        try:
            gradcheck(fn, tensors)
            verdict = "passes"
        except GradcheckError as e:
            verdict = f"FAILS: {e}"
        lines.append(f"gradcheck {original.__name__} ({who}: {cls.__name__}.backward) on its inputs{cut} "
                     f"{shapes} in float64: {verdict}")
    return lines


GRADCHECK_NUMBERS = 4096     # finite differences cost two forwards a number: bigger inputs are cut


def small_inputs(original, arrays):
    """The op's inputs cut to a size gradcheck checks in a moment, and what was cut (", ..." text):
    an embedding keeps only the rows its ids read (renumbered), a layer norm its first rows,
    attention its first batch element and head."""
    if sum(a.size for a in arrays if np.issubdtype(a.dtype, np.floating)) <= GRADCHECK_NUMBERS:
        return arrays, ""
    if original is F.Embedding:
        weight, ids = arrays[:2]
        used, inverse = np.unique(ids, return_inverse=True)
        return [weight[used], inverse.reshape(ids.shape)], f" (the {len(used)} rows its ids read, renumbered)"
    if original is F.LayerNorm:
        x = arrays[0].reshape(-1, arrays[0].shape[-1])
        rows = max(1, GRADCHECK_NUMBERS // (2 * x.shape[1]))
        return [x[:rows]] + list(arrays[1:]), f" (the first {min(rows, len(x))} rows)"
    if original is F.Attention:
        return [a[:1, :1] for a in arrays[:3]], " (batch 0, head 0)"
    return arrays, ""


# ----------------------------------------------------------------------------- the command: explain --break MODE
def report_break(args, out, model, x, y):
    """Both backwards, the comparison, the first departure line, then gradcheck on that op.
    Returns the step of the first departure (None when nothing parts)."""
    from .trace import trace_backward
    _, _, what = MODES[args.break_mode]
    print(f"--break {args.break_mode}: {what}; the forward and every other op are the engine's", file=out)
    keep = 1 << 62                                  # every array: the comparison reads them whole
    clean = trace_backward(model, x, y, keep_values=keep)
    seen = []
    with swapped(args.break_mode, seen):
        broken = trace_backward(model, x, y, keep_values=keep)
    if not seen:
        raise RuntimeError(f"--break {args.break_mode}: the model ran no {MODES[args.break_mode][0].__name__}")
    print(f"forward: loss {clean.loss:.6f} in the correct run, {broken.loss:.6f} in the sabotaged one "
          f"(the forward is not touched)", file=out)
    print("\nbackward twice, op by op in the order it runs: the norm of each gradient in the sabotaged run "
          "divided by the correct run's", file=out)
    rows, first = compare(clean, broken)
    width = max(18, max(len(c.module or "-") for c, *_ in rows) + 2)
    print("\n".join(comparison_lines(rows, first, width)), file=out)
    if first is None:
        print("first departure: none (the two backwards agree at every op)", file=out)
        return None
    c, b = clean.ops[first - 1], broken.ops[first - 1]
    print(f"first departure: step {first} {c.name} ({c.module}) {b.backward_at}", file=out)
    print(f"\nstep {first} received the same dL/d(output) in both runs and returned different gradients: "
          f"its backward is wrong. gradcheck on {c.name} alone, on the inputs it had in the model:", file=out)
    print("\n".join(gradcheck_lines(args.break_mode, seen, b)), file=out)
    return first
