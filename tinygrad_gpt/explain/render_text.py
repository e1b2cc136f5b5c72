"""Rendering a trace as text: the op-by-op listing printed while backward runs, the totals
at its end (ops by kind, parameters reached, by part of GPT-2), and one parameter's chain.

The listing shows, under an op whose output several ops read, that its gradient is the sum
of their contributions; with values=True (explain --values) it prints the arrays: what the
op received, dL/d(its output), and what it sent back to each input, dL/d(input), summed to
the input's shape. Arrays of more than MAX_PRINTED numbers are shown by their norm.
"""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

from ..tensor import Function
from .trace import _norm, chain, chain_counts, consumers, kernel_locations

MAX_PRINTED = 256             # numbers; micro's biggest gradient (8x32, its feed-forward) prints whole


# ----------------------------------------------------------------------------- the listing
def _dims(shape):
    return "x".join(map(str, shape)) if len(shape) else "scalar"


def _module_label(op):
    if op.module is None:
        return "-"
    return op.module or "(model)"


def short_label(name, module):
    """How a sum's contribution is named: the module's own name (W_query, norm1), else the op
    and its module (Add trf_blocks.1)."""
    if not module:
        return name
    last = module.rsplit(".", 1)[-1]
    return f"{name} {module}" if last.isdigit() else last


def contributions_line(op):
    """'norm1 output: sum of 3 contributions: W_value 0.0102 (step 18), ...', or None where
    one op read the output (nothing was added up)."""
    if len(op.contributions) < 2:
        return None
    parts = ", ".join(f"{short_label(c.name, c.module)} {c.norm:.3g} (step {c.step})" for c in op.contributions)
    return f"{short_label(op.name, op.module)} output: sum of {len(op.contributions)} contributions: {parts}"


def array_lines(a, norm, shape, indent):
    """An array as printed lines (np.array2string, 4 significant digits), or its norm alone when
    it has more than MAX_PRINTED numbers or was not kept."""
    size = int(np.prod(shape)) if len(shape) else 1
    if a is None or size > MAX_PRINTED:
        why = f"{size:,} numbers, more than {MAX_PRINTED}" if size > MAX_PRINTED else "not kept"
        return [f"{indent}norm {norm:.4g} ({why}: not printed)"]
    text = np.array2string(np.asarray(a, dtype=np.float64), max_line_width=120, threshold=MAX_PRINTED + 1,
                           formatter={"float_kind": lambda v: f"{v:.4g}".rjust(10)})
    return [indent + line for line in text.splitlines()]


class Listing:
    """Prints one line per op, and one per parameter that an op hands its gradient to; with
    values=True the arrays after each op; `pause(op)`, when given, runs after each op's lines."""

    def __init__(self, model, depth=None, file=None, values=False, pause=None):
        self.depth, self.file, self.values, self.pause = depth, file, values, pause
        self.module_width = max(18, max(len(n) for n, _ in model.named_modules()) + 2)

    def header(self):
        return (f"{'step':>5}  {'op':13s} {'module':{self.module_width}s} {'backward code':31s} "
                f"inputs: shape (norm of the gradient it gets back, same shape)")

    @staticmethod
    def input_text(i):
        if i.grad_shape is None:
            return f"{_dims(i.shape)} (no grad)"
        if i.grad_shape != tuple(i.shape):           # a broadcast input: the engine sums it back
            return f"{_dims(i.shape)} ({i.grad_norm:.3g}, returned {_dims(i.grad_shape)}, summed)"
        return f"{_dims(i.shape)} ({i.grad_norm:.3g})"

    def op_lines(self, op):
        lines = [f"{op.step:5d}  {op.name:13s} {_module_label(op):{self.module_width}s} {op.backward_at:31s} "
                 + ", ".join(self.input_text(i) for i in op.inputs)]
        for i in op.inputs:
            if i.param is not None and i.grad_shape is not None:
                lines.append(f"{'':21s}-> {i.param} ({_dims(i.shape)}) receives its gradient, "
                             f"norm {i.grad_norm:.4g}")
        added = contributions_line(op)
        if added:
            lines.append(f"{'':21s}<- {added}")
        if self.values:
            lines += self.value_lines(op)
        return lines

    @staticmethod
    def value_lines(op):
        pad = " " * 21
        if len(op.contributions) > 1:
            origin = f" (the sum of the {len(op.contributions)} contributions above)"
        elif op.contributions:
            origin = f" (what step {op.contributions[0].step} returned for it)"
        else:
            origin = " (dL/dL = 1: backward starts here)"
        lines = [f"{pad}received dL/d(output) {_dims(op.out_shape)}{origin}:"]
        lines += array_lines(op.out_grad, op.out_grad_norm, op.out_shape, pad + "  ")
        for i in op.inputs:
            if i.grad_shape is None:
                continue
            what = i.param or i.arg or "input"
            summed = f", returned {_dims(i.grad_shape)} and summed" if i.grad_shape != tuple(i.shape) else ""
            lines.append(f"{pad}returned dL/d{what if len(what) == 1 else '(' + what + ')'} {_dims(i.shape)}{summed}:")
            lines += array_lines(i.grad, i.grad_norm, i.shape, pad + "  ")
        return lines

    def __call__(self, op):
        if self.depth is not None and op.step > self.depth:
            return
        print("\n".join(self.op_lines(op)), file=self.file, flush=True)
        if self.pause is not None:
            self.pause(op)


# ----------------------------------------------------------------------------- totals
_GROUPS = [   # parameter name -> the part of GPT-2 it belongs to (model.summary's parts)
    (r"tok_emb\.", "token embedding"),
    (r"pos_emb\.", "positional embedding"),
    (r"(trf_blocks\.\d+)\.att\.W_(query|key|value)\.", r"\1 attention Q/K/V"),
    (r"(trf_blocks\.\d+)\.att\.out_proj\.", r"\1 attention output"),
    (r"(trf_blocks\.\d+)\.ff\.layers\.0\.", r"\1 feed-forward expansion"),
    (r"(trf_blocks\.\d+)\.ff\.layers\.2\.", r"\1 feed-forward contraction"),
    (r"(trf_blocks\.\d+)\.norm[12]\.", r"\1 layer norms"),
    (r"final_norm\.", "final layer norm"),
    (r"out_head\.", "output head"),
]


def parameter_group(name):
    for pattern, label in _GROUPS:
        m = re.match(pattern, name)
        if m:
            return m.expand(label)
    return name                                      # a part this table does not know: itself


def _shapes_text(shapes):
    """[(64, 64)] * 3 + [(64,)] -> '3 x 64 x 64 + 64' (model.summary's style)."""
    parts, i = [], 0
    while i < len(shapes):
        j = i
        while j < len(shapes) and shapes[j] == shapes[i]:
            j += 1
        dims = " x ".join(map(str, shapes[i])) or "1"
        parts.append(dims if j - i == 1 else f"{j - i} x {dims}")
        i = j
    return " + ".join(parts)


def parameter_groups(model):
    """[(part, [(name, Parameter)])] in the model's order."""
    groups = {}
    for name, p in model.named_parameters():
        groups.setdefault(parameter_group(name), []).append((name, p))
    return list(groups.items())


def ops_table(trace):
    """Each kind of op: how many ran, where its backward is, which kernels that calls."""
    first = {}
    for op in trace.ops:
        first.setdefault(op.name, op)
    counts = Counter(op.name for op in trace.ops)
    classes = {c.__name__: c for c in _all_functions()}
    lines = [f"{'op':13s} {'count':>5s}  {'backward code':36s} kernels it calls"]
    for name, n in counts.most_common():
        kernels = kernel_locations(classes[name]) if name in classes else []
        kernel_text = ", ".join(f"{k} ({loc})" for k, loc in kernels)
        lines.append(f"{name:13s} {n:5d}  {first[name].backward_at:36s} {kernel_text}".rstrip())
    return lines


def _all_functions():
    seen, todo = [], [Function]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return seen


def totals(trace, model):
    """The end of the listing: ops visited, parameters reached, where the parameters are."""
    params = list(model.named_parameters())
    total = model.num_parameters()
    reached = [name for name, _ in params if trace.received[name]]
    numbers = sum(p.size for name, p in params if trace.received[name])
    once = all(trace.received[name] == 1 for name in reached)
    lines = [f"ops visited: {len(trace.ops)} (backward took {trace.seconds:.2f} s, printing included)"]
    lines += ["  " + line for line in ops_table(trace)]
    lines.append(f"parameters reached: {len(reached)} of {len(params)} tensors, "
                 f"{numbers:,} of {total:,} numbers" + (", each tensor once" if once else ""))
    for name, _ in params:
        if trace.received[name] != 1:
            lines.append(f"  {name}: received a gradient from {trace.received[name]} ops")
    width = max(28, max(len(g) for g, _ in parameter_groups(model)) + 2)
    lines.append(f"  {'part':{width}s} {'shape':>22s} {'parameters':>13s} {'share':>7s} {'grad norm':>10s}")
    added = 0
    for group, members in parameter_groups(model):
        n = sum(p.size for _, p in members)
        added += n
        norm = math.sqrt(sum(_norm(p.grad) ** 2 for _, p in members if p.grad is not None))
        shape = _shapes_text([tuple(p.shape) for _, p in members])
        lines.append(f"  {group:{width}s} {shape:>22s} {n:>13,} {100 * n / total:6.2f}% {norm:10.4g}")
    global_norm = math.sqrt(sum(_norm(p.grad) ** 2 for _, p in params if p.grad is not None))
    assert added == total
    lines.append(f"  {'total = model.num_parameters()':{width}s} {'':>22s} {total:>13,} "
                 f"{100.0:6.2f}% {global_norm:10.4g}")
    return lines


def chain_lines(trace, name, model):
    ops, n = chain(trace, name)
    p = dict(model.named_parameters())[name]
    lines = [f"the gradient of {name} ({_dims(p.shape)}, {p.size:,} numbers), from the loss down: "
             f"{len(ops)} ops, the shortest of {n:,} chains through the graph",
             f"{'step':>5}  {'op':13s} {'module':32s} {'gradient it returns on this path (norm)':42s} backward code"]
    for op, k in ops:
        i = op.inputs[k]
        lines.append(f"{op.step:5d}  {op.name:13s} {_module_label(op):32s} "
                     f"{_dims(i.grad_shape) + f' ({i.grad_norm:.4g})':42s} {op.backward_at}")
    lines.append(f"{'':7s}-> {name} ({_dims(p.shape)}): gradient norm {_norm(p.grad):.4g}")
    lines += why_chains_lines(trace, name, n)
    return lines


def why_chains_lines(trace, name, n):
    """Why there are n chains: where a tensor on the shortest chain is read by several ops, a
    chain to it goes through one of them, so its count is the sum of theirs."""
    if n <= 1:
        return [f"why {n:,} chain: no tensor on the way is read by more than one op"]
    readers = consumers(trace)
    lines = [f"why {n:,} chains: a chain may leave this one wherever a tensor is read by several ops "
             "(a residual's two branches; Q, K and V reading one input), and each reader leads its own "
             "chains back to the loss: a tensor's count is the sum of its readers'"]

    def reader_text(s, c):
        r = trace.ops[s - 1]
        text = f"{c:,} through step {s} {r.name} {_module_label(r)}"
        if c > 1:
            n_readers = len(readers[r.node])
            if n_readers > 1:
                text += f" (whose output {n_readers} ops read)"
        return text

    for op, k, through in chain_counts(trace, name):
        total = sum(c for _, c in through)
        lines.append(f"  the input of step {op.step} {op.name} {_module_label(op)}: {total:,} = "
                     + " + ".join(reader_text(s, c) for s, c in through))
    lines.append(f"  below the last of these every tensor on the chain has one reader: {n:,} chains reach {name}")
    return lines
