"""Rendering a trace as text: the op-by-op listing printed while backward runs, the totals
at its end (ops by kind, parameters reached, by part of GPT-2), and one parameter's chain.

The listing shows, under an op whose output several ops read, that its gradient is the sum
of their contributions; with values=True (explain --values) it prints the arrays: what the
op received, dL/d(its output), and what it sent back to each input, dL/d(input), summed to
the input's shape. Arrays of more than MAX_PRINTED numbers are shown by their norm. A model
with frozen parameters (explain --lora, --finetune classifier) gets each one named where an op
read it, and at the end two lists: the trainable parameters with the step that fed each, the
frozen ones with the evidence that no gradient was computed for them (frozen_lines).
"""
from __future__ import annotations

import math
import os
import re
import sys
import textwrap
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


def terminal_width(file=None):
    """The width to print arrays at: COLUMNS when set, else the terminal's columns when `file`
    (default stdout) is a terminal, else 120 (a pipe, a file, a test's StringIO)."""
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    file = sys.stdout if file is None else file
    try:
        if file.isatty():
            return os.get_terminal_size(file.fileno()).columns
    except (AttributeError, OSError, ValueError):
        pass
    return 120


CELL = 11                     # one number: a space, then 4 significant digits right-aligned in 10


def array_lines(a, norm, shape, indent, width=None, axis_names=None):
    """An array as printed lines, or its norm alone when it has more than MAX_PRINTED numbers or
    was not kept. A matrix is printed row by row, each row labelled by its index (the leading
    axes of size 1 dropped: (1, 8, 17) has rows 0..7; (1, 2, 8, 4) rows 'head, position'), under
    a line of column indices; a row wider than the terminal is cut into column groups, each
    printed whole, never wrapped. axis_names: a name for each axis but the last (the heading
    of the row labels), e.g. ("batch", "head", "pos") for attention's (B, H, T, D)."""
    size = int(np.prod(shape)) if len(shape) else 1
    if a is None or size > MAX_PRINTED:
        why = f"{size:,} numbers, more than {MAX_PRINTED}" if size > MAX_PRINTED else "not kept"
        return [f"{indent}norm {norm:.4g} ({why}: not printed)"]
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        return [f"{indent}{f'{float(a):.4g}':>10s}"]
    lead = [(k, n) for k, n in enumerate(a.shape[:-1]) if n != 1]
    rows = a.reshape(-1, a.shape[-1])
    labels = [",".join(str(idx[k]) for k, _ in lead) for idx in np.ndindex(*a.shape[:-1])] or [""]
    if axis_names is not None and lead:              # the heading of the row labels ("col": a vector)
        axes = ",".join(axis_names[k] for k, _ in lead)
    else:
        axes = {0: "col", 1: "row"}.get(len(lead), "axes " + ",".join(str(k) for k, _ in lead))
    label_w = max(len(axes), max(len(t) for t in labels))
    width = terminal_width() if width is None else width
    per = max(1, (width - len(indent) - label_w - 2) // CELL)
    C = rows.shape[1]
    lines = []
    for c0 in range(0, C, per):
        c1 = min(C, c0 + per)
        if C > per:
            lines.append(f"{indent}columns {c0}-{c1 - 1} of {C}:")
        lines.append(f"{indent}{axes:>{label_w}s} |" + "".join(f" {j:>{CELL - 1}d}" for j in range(c0, c1)))
        for label, row in zip(labels, rows):
            lines.append(f"{indent}{label:>{label_w}s} |" + "".join(f" {v:>{CELL - 1}.4g}" for v in row[c0:c1]))
    return lines


def fit(lines, width):
    """Lines cut at `width` columns between words, each continuation indented under its line's
    text (4 more); lines that fit are left as they are (an array's rows are cut by array_lines)."""
    out = []
    for line in lines:
        if len(line) <= width:
            out.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()) + 4)
        if re.match(r"^ *\d+  [A-Z]\w* ", line):       # an op's row: its inputs continue under the inputs column
            column = len(line) - len(line.split("  ")[-1])
            indent = " " * column if column < width - 30 else indent
        out += textwrap.wrap(line, width=width, subsequent_indent=indent, break_long_words=False,
                             break_on_hyphens=False) or [line]
    return out


def carries(op, i):
    """What an input carries, for an Add (the residual stream, a branch's output, the token or
    positional embeddings): None for other ops, whose arguments' names say it (q, k, v; x, w, b)."""
    if op.name != "Add" or i.made_by is None:
        return None
    name, module = i.made_by
    module = module or ""
    if op.block and op.module == op.block:             # a residual add: x = x + branch(x)
        if module.startswith(op.block + "."):
            branch = "attention" if ".att" in module else "feed-forward" if ".ff" in module else None
            if branch is None:                         # drop_resid: which add tells which branch
                other = next((j for j in op.inputs if j is not i), None)
                after_att = other is not None and other.made_by is not None and other.made_by[1] == op.block
                branch = "feed-forward" if after_att else "attention"
            return f"the {branch} branch's output ({name} {module})"
        if module == op.block:
            return "the residual stream after the attention shortcut (this block's first Add)"
        who = "the embeddings' Add" if (name, module) == ("Add", "") else f"{name} {module}"
        return f"the residual stream: the block's input ({who})"
    if module in ("tok_emb", "pos_emb"):
        return {"tok_emb": "the token embeddings", "pos_emb": "the positional embeddings"}[module] + f" ({module})"
    return f"the output of {name} {module or '-'}"


class Listing:
    """Prints one line per op, and one per parameter that an op hands its gradient to; with
    values=True the arrays after each op; `pause(op)`, when given, runs after each op's lines."""

    def __init__(self, model, depth=None, file=None, values=False, pause=None, op=None, module=None,
                 worked=None, width=None):
        self.depth, self.file, self.values, self.pause = depth, file, values, pause
        self.op, self.module = op, module
        self.width = terminal_width(file) if width is None else width
        self.worked = worked              # callable(op) -> [lines] or None (explain/worked.py), or None
        self.listed = 0
        self.printed = {}                 # --values: the bytes of each array printed -> (where, its shape)
        self.module_width = max(18, max(len(n) for n, _ in model.named_modules()) + 2)

    def header(self):
        return (f"{'step':>5}  {'op':13s} {'module':{self.module_width}s} {'backward code':31s} "
                f"inputs: shape (norm of its gradient)")

    @staticmethod
    def input_text(i):
        if i.grad_shape is None:
            return f"{_dims(i.shape)} ({'frozen' if i.param is not None and i.needed is False else 'no grad'})"
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
            elif i.param is not None and i.needed is False:      # requires_grad False: frozen
                done = ("its gradient was computed anyway, and dropped" if i.computed
                        else "no gradient computed (needs_input_grad False)")
                lines.append(f"{'':21s}-> {i.param} ({_dims(i.shape)}) frozen: {done}")
        added = contributions_line(op)
        if added:
            lines.append(f"{'':21s}<- {added}")
        if self.values:
            lines += self.value_lines(op)
        return lines

    def shown(self, op):
        """Whether --op / --module let this op through (--module: the module or one inside it)."""
        if self.op is not None and op.name.lower() != self.op.lower():
            return False
        if self.module is not None:
            m = op.module or ""
            if not (m == self.module or m.startswith(self.module + ".")):
                return False
        return True

    def _array(self, label, a, norm, shape, where, pad, axes=None):
        """`label:` and the array under it, or, when the same numbers were printed before, `label:
        as printed at ...` (each array once); `where` names this one for later mentions."""
        key = None
        if a is not None and np.size(a) <= MAX_PRINTED:
            key = np.ascontiguousarray(a, dtype=np.float64).tobytes()   # the numbers, in order
        if key is not None and key in self.printed:
            first, first_shape = self.printed[key]
            again = f", there {_dims(first_shape)}" if tuple(first_shape) != tuple(shape) else ""
            return [f"{label}:", f"{pad}  the same numbers as printed at {first}{again}"]
        if key is not None:
            self.printed[key] = (where, tuple(shape))
        return [f"{label}:"] + array_lines(a, norm, shape, pad + "  ", self.width, axes)

    def value_lines(self, op):
        pad = " " * 18                               # under the op's name: a label and its array fit in 120
        if len(op.contributions) > 1:
            origin = f" (the sum of the {len(op.contributions)} contributions above)"
        elif op.contributions:
            origin = f" (what step {op.contributions[0].step} returned for it)"
        else:
            origin = " (dL/dL = 1: backward starts here)"
        axes = ("batch", "head", "pos") if op.name == "Attention" else None   # (B, H, T, D): rows by head, position
        lines = self._array(f"{pad}received dL/d(output) {_dims(op.out_shape)}{origin}", op.out_grad,
                            op.out_grad_norm, op.out_shape, f"step {op.step} (received)", pad, axes)
        for sv in op.saved:                          # what forward saved and this backward reads
            value, shape = sv.value, sv.shape
            if value is not None and value.ndim >= 2 and value.shape[-1] == 1:   # mean, rstd: one per row
                value, shape = value[..., 0], sv.shape[:-1]
            norm = float(np.linalg.norm(value)) if value is not None else 0.0
            what = f"the weight {sv.param}" if sv.param is not None else "forward kept it for backward"
            lines += self._array(f"{pad}saved {sv.name} {_dims(sv.shape)} ({what})",
                                 value, norm, shape, f"step {op.step} (saved {sv.param or sv.name})", pad,
                                 axes if len(shape) == 4 else None)
        for i in op.inputs:
            if i.grad_shape is None:
                continue
            what = i.param or i.arg or "input"
            summed = f", returned {_dims(i.grad_shape)} and summed" if i.grad_shape != tuple(i.shape) else ""
            carried = carries(op, i)
            carried = f", {what} = {carried}" if carried else ""
            name = what if len(what) == 1 else "(" + what + ")"
            lines += self._array(f"{pad}returned dL/d{name} {_dims(i.shape)}{summed}{carried}", i.grad,
                                 i.grad_norm, i.shape, f"step {op.step} (dL/d{name})", pad, axes)
            if op.name == "Attention" and i.arg == "q" and i.grad is not None and len(i.shape) == 4 \
                    and i.shape[-2] > 1 and not np.any(np.asarray(i.grad)[..., 0, :]):
                lines += textwrap.wrap("dq's row 0 is zero in every head: position 0 attends to itself alone, its "
                                       "softmax has one element (att[0, 0] = 1 whatever the score), so its query "
                                       "gets no gradient", width=max(60, self.width - len(pad) - 2),
                                       initial_indent=pad + "  ", subsequent_indent=pad + "  ")
        if self.worked is not None:
            lines += [pad + line if line else "" for line in (self.worked(op) or [])]
        return lines

    def __call__(self, op):
        if self.depth is not None and op.step > self.depth:
            return
        if not self.shown(op):
            return
        self.listed += 1
        lines = self.op_lines(op)
        print("\n".join(fit(lines, self.width) if self.values else lines), file=self.file, flush=True)
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


def _shapes_text(shapes, grouped=False):
    """[(64, 64)] * 3 + [(64,)] -> '3 x 64 x 64 + 64' (model.summary's style). grouped: equal
    shapes counted wherever they are, in the order they first appear (LoRA's Q/K/V: each
    weight with its A and B, '3 x 8 x 8 + 3 x 8 x 2 + 3 x 2 x 8')."""
    if grouped:
        counts = Counter(map(tuple, shapes))
        return " + ".join((" x ".join(map(str, s)) or "1") if n == 1 else f"{n} x " + (" x ".join(map(str, s)) or "1")
                          for s, n in counts.items())
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
    """The end of the listing: ops visited, parameters reached, where the parameters are; with
    frozen parameters, which ones trained and which did not (frozen_lines)."""
    params = list(model.named_parameters())
    total = model.num_parameters()
    frozen = {f.name for f in trace.frozen}
    reached = [name for name, _ in params if trace.received[name]]
    numbers = sum(p.size for name, p in params if trace.received[name])
    once = all(trace.received[name] == 1 for name in reached)
    lines = [f"ops visited: {len(trace.ops)} (backward took {trace.seconds:.2f} s, printing included)"]
    lines += ["  " + line for line in ops_table(trace)]
    if frozen:
        lines += frozen_lines(trace, model)
    else:
        lines.append(f"parameters reached: {len(reached)} of {len(params)} tensors, "
                     f"{numbers:,} of {total:,} numbers" + (", each tensor once" if once else ""))
        for name, _ in params:
            if trace.received[name] != 1:
                lines.append(f"  {name}: received a gradient from {trace.received[name]} ops")
    width = max(28, max(len(g) for g, _ in parameter_groups(model)) + 2)
    trainable = f" {'trainable':>13s}" if frozen else ""
    shapes = {group: _shapes_text([tuple(p.shape) for _, p in members], grouped=bool(frozen))
              for group, members in parameter_groups(model)}
    sw = max(22, max(map(len, shapes.values()))) if frozen else 22   # LoRA's parts: three shapes each
    lines.append(f"  {'part':{width}s} {'shape':>{sw}s} {'parameters':>13s}{trainable} {'share':>7s} {'grad norm':>10s}")
    added = 0
    for group, members in parameter_groups(model):
        n = sum(p.size for _, p in members)
        added += n
        norm = math.sqrt(sum(_norm(p.grad) ** 2 for _, p in members if p.grad is not None))
        norm_text = f"{norm:10.4g}"
        if frozen:
            n_trainable = sum(p.size for name, p in members if name not in frozen)
            trainable = f" {n_trainable:>13,}"
            norm_text = f"{'frozen':>10s}" if not n_trainable else norm_text
        lines.append(f"  {group:{width}s} {shapes[group]:>{sw}s} {n:>13,}{trainable} {100 * n / total:6.2f}% {norm_text}")
    global_norm = math.sqrt(sum(_norm(p.grad) ** 2 for _, p in params if p.grad is not None))
    assert added == total
    if frozen:
        trainable = f" {sum(p.size for name, p in params if name not in frozen):>13,}"
    lines.append(f"  {'total = model.num_parameters()':{width}s} {'':>{sw}s} {total:>13,}{trainable} "
                 f"{100.0:6.2f}% {global_norm:10.4g}")
    return lines


def frozen_why(record):
    """Why no gradient was computed for a frozen parameter, from the ops that read it: one that
    was never recorded (no input of it needed a gradient) never ran backward; one that ran was
    told needs_input_grad False for it and returned None. An op that returned a gradient for it
    anyway is named: that gradient was computed and dropped, the work frozen should save."""
    if not record.reads:
        return "no op read it"
    parts = []
    for r in record.reads:
        who = f"{r.name} {_module_label(r)}"
        if r.computed:
            parts.append(f"{who} at step {r.step} computed its gradient anyway (dropped)")
        elif r.step is not None:
            parts.append(f"{who} ran backward at step {r.step} with needs_input_grad False for it")
        elif r.recorded:
            parts.append(f"{who} was recorded but its backward did not run")
        else:
            parts.append(f"{who} never ran backward (none of its inputs needed a gradient)")
    return "; ".join(parts)


def frozen_lines(trace, model):
    """The trainable parameters, each with the step(s) that fed it its gradient and the norm,
    then the frozen ones, each 'frozen: no gradient computed' with the ops that read it and
    what their backward did (frozen_why)."""
    params = list(model.named_parameters())
    total = model.num_parameters()
    frozen = {f.name: f for f in trace.frozen}
    trainable = [(name, p) for name, p in params if name not in frozen]
    fed = {}
    for op in trace.ops:
        for name in op.params():
            fed.setdefault(name, []).append(op)
    reached = [name for name, _ in trainable if trace.received[name]]
    n_trainable = sum(p.size for _, p in trainable)
    n_frozen = sum(f.size for f in frozen.values())
    wasted = [f for f in frozen.values() if f.computed()]
    once = all(trace.received[name] == 1 for name in reached)
    lines = [f"parameters reached: {len(reached)} of {len(trainable)} trainable tensors, "
             f"{sum(p.size for name, p in trainable if trace.received[name]):,} of {n_trainable:,} trainable numbers"
             + (", each tensor once" if once else ""),
             f"parameters frozen: {len(frozen)} of {len(params)} tensors, {n_frozen:,} of {total:,} numbers "
             f"({100 * n_frozen / total:.2f}%): "
             + (f"a gradient was computed anyway for {len(wasted)} of them" if wasted
                else "no gradient computed for any of them")]
    width = max(len(name) for name, _ in params) + 2
    lines.append(f"trainable ({len(trainable)} tensors):")
    for name, p in trainable:
        ops = fed.get(name, [])
        if not ops:
            lines.append(f"  {name:{width}s} {_dims(p.shape):>11s}  trainable, but no op fed it a gradient")
            continue
        steps = ", ".join(f"step {op.step} {op.name} {_module_label(op)}" for op in ops)
        lines.append(f"  {name:{width}s} {_dims(p.shape):>11s}  receives its gradient, norm {_norm(p.grad):.4g} ({steps})")
    lines.append(f"frozen ({len(frozen)} tensors):")
    for record in frozen.values():
        state = "frozen: a gradient was computed" if record.computed() else "frozen: no gradient computed"
        lines.append(f"  {record.name:{width}s} {_dims(record.shape):>11s}  {state}: {frozen_why(record)}")
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
