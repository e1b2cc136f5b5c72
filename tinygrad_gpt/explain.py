"""Watch backpropagation run: every op of one backward pass through GPT-2, as it happens.

    python -m tinygrad_gpt.explain                        # the tiny model, 1 x 32 tokens
    python -m tinygrad_gpt.explain --model 124M           # the book's GPT-2, 1 x 256 tokens
    python -m tinygrad_gpt.explain --param trf_blocks.0.att.W_query.weight
    python -m tinygrad_gpt.explain --depth 12 --dot graph.dot

One forward and one backward on one batch of text, observed through the engine's hooks:
a forward hook (`tensor.register_forward_hook`) names each op by the module running when it
was made ("Linear trf_blocks.0.att.W_query", from `nn.module_stack()`), and a backward hook
(`tensor.register_backward_hook`), called right after an op's backward ran and before its
gradients are added into the inputs, is where each line is printed. Nothing is patched.
"""
import argparse
import contextlib
import difflib
import inspect
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .tensor import Function, register_backward_hook, unbroadcast

USAGE_ERROR = 2
ROOT = Path(__file__).resolve().parent.parent   # paths are printed relative to the repository
EXPAND_AT_MOST_OPS = 150                         # --dot draws blocks expanded up to this many ops


class UsageError(ValueError):
    """A mistake in what the user asked for: one line, exit code 2."""


# ----------------------------------------------------------------------------- what a trace holds
@dataclass
class Input:
    shape: tuple
    dtype: str
    node: int                 # id() of the tensor (unique while the graph is alive)
    param: str = None         # the parameter's name, when the input is one
    grad_shape: tuple = None  # what the op's backward returned for this input (None: no gradient)
    grad_norm: float = None   # the norm of what the input receives (summed back to its shape)


@dataclass
class Op:
    step: int                 # 1 is the first op backward runs: the loss
    name: str                 # the Function: Linear, LayerNorm, Attention, ...
    module: str               # the module whose forward made it: "trf_blocks.0.att.W_query"
    block: str                # the transformer block it ran in ("trf_blocks.0"), or None
    node: int                 # id() of the tensor it made
    out_shape: tuple
    out_grad_norm: float      # the norm of dL/d(its output), the gradient it was handed
    inputs: list              # [Input]
    backward_at: str          # file:line of its backward code

    def params(self):
        """Names of the parameters this op hands a gradient to."""
        return [i.param for i in self.inputs if i.param is not None and i.grad_shape is not None]


@dataclass
class Trace:
    ops: list = field(default_factory=list)          # [Op], in the order backward ran them
    loss: float = None
    seconds: float = 0.0                              # backward's wall time, printing included
    received: Counter = field(default_factory=Counter)   # parameter name -> ops that fed it


# ----------------------------------------------------------------------------- where code lives
_locations = {}


def _shown(path):
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def source_location(fn):
    """'tinygrad_gpt/functional.py:101' for a function (the line of its `def`)."""
    fn = getattr(fn, "py_func", fn)                  # a numba dispatcher: its Python source
    if fn not in _locations:
        try:
            _, line = inspect.getsourcelines(fn)
            _locations[fn] = f"{_shown(inspect.getsourcefile(fn))}:{line}"
        except (OSError, TypeError):
            _locations[fn] = "?"
    return _locations[fn]


def kernel_locations(function_class):
    """The kernels (kernels/reference.py or numba_cpu.py) an op's backward calls as K.name."""
    from .kernels import K
    try:
        source = inspect.getsource(function_class.backward)
    except (OSError, TypeError):
        return []
    found = []
    for name in dict.fromkeys(re.findall(r"\bK\.(\w+)", source)):
        fn = getattr(K.module, name, None)
        if fn is not None:
            found.append((name, source_location(fn)))
    return found


# ----------------------------------------------------------------------------- tracing
@contextlib.contextmanager
def record_modules(model):
    """While inside, every op that records a graph node is tagged with the module whose forward
    made it and the transformer block around it, read from the engine's module scope through a
    forward hook. Yields (tags, scope): tags maps id(output tensor) -> (module name, block);
    `with scope(name):` tags ops made outside the model, such as the loss."""
    from .nn import TransformerBlock, module_stack
    from .tensor import register_forward_hook
    tags, labels = {}, []                            # labels: names given with scope(), innermost last

    def hook(ctx, inputs, out):
        if out._ctx is None:                         # no graph node: backward will never see it
            return
        stack = module_stack()
        if stack:
            name = stack[-1][0]
            block = next((n for n, m in stack if isinstance(m, TransformerBlock)), None)
        else:
            name, block = (labels[-1] if labels else None), None
        tags[id(out)] = (name, block)

    @contextlib.contextmanager
    def scope(name):
        labels.append(name)
        try:
            yield
        finally:
            labels.pop()

    with register_forward_hook(hook):
        yield tags, scope


def _norm(a):
    a = np.ascontiguousarray(a).ravel()
    return math.sqrt(float(np.dot(a, a)))


def trace_backward(model, input_ids, target_ids, on_op=None, on_forward=None):
    """Forward `model` on input_ids (B, T), cross-entropy against target_ids (B, T), then
    backward with a hook that records every op as it runs. `on_forward(loss)` is called between
    the two, `on_op(op)` for each op as backward runs it (to print them). The model's gradients
    are reset first. Returns a Trace."""
    from . import functional as F
    names = {id(p): name for name, p in model.named_parameters()}
    model.zero_grad()
    with record_modules(model) as (tags, scope):
        logits = model(input_ids)                               # (B, T, V)
        with scope("loss"):
            loss = F.cross_entropy(logits, target_ids)
    del logits
    trace = Trace(loss=loss.item())
    if on_forward is not None:
        on_forward(trace.loss)

    def hook(node, ctx, grad, input_grads):
        module, block = tags.get(id(node), (None, None))
        inputs = []
        grads = tuple(input_grads) + (None,) * (len(ctx.parents) - len(input_grads))
        for parent, pg in zip(ctx.parents, grads):
            inp = Input(parent.shape, str(parent.dtype), id(parent),
                        names.get(id(parent)) if parent._ctx is None else None)
            if pg is not None and parent.requires_grad:          # what the engine will add in
                inp.grad_shape = tuple(np.shape(pg))
                inp.grad_norm = _norm(unbroadcast(np.asarray(pg), parent.shape))
                if inp.param is not None:
                    trace.received[inp.param] += 1
            inputs.append(inp)
        op = Op(step=len(trace.ops) + 1, name=ctx.name, module=module, block=block, node=id(node),
                out_shape=node.shape, out_grad_norm=_norm(grad), inputs=inputs,
                backward_at=source_location(type(ctx).backward))
        trace.ops.append(op)
        if on_op is not None:
            on_op(op)

    start = time.perf_counter()
    with register_backward_hook(hook):
        loss.backward()
    trace.seconds = time.perf_counter() - start
    return trace


# ----------------------------------------------------------------------------- the listing
def _dims(shape):
    return "x".join(map(str, shape)) if len(shape) else "scalar"


def _module_label(op):
    if op.module is None:
        return "-"
    return op.module or "(model)"


class Listing:
    """Prints one line per op, and one per parameter that an op hands its gradient to."""

    def __init__(self, model, depth=None, file=None):
        self.depth, self.file = depth, file
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
        return lines

    def __call__(self, op):
        if self.depth is not None and op.step > self.depth:
            return
        print("\n".join(self.op_lines(op)), file=self.file, flush=True)


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


# ----------------------------------------------------------------------------- one parameter's chain
def consumers(trace):
    """tensor id -> [(step, input index)]: the ops that read it, in the order backward ran them."""
    readers = defaultdict(list)
    for op in trace.ops:
        for k, i in enumerate(op.inputs):
            if i.grad_shape is not None:
                readers[i.node].append((op.step, k))
    return readers


def chain(trace, name):
    """The shortest chain of ops from the loss down to parameter `name`: [(op, input index)],
    loss first, and how many chains there are in all."""
    readers = consumers(trace)
    root = trace.ops[0].node
    length, via, paths = {root: 0}, {}, {root: 1}
    # backward ran every op after all the ops that read its output: one pass settles each tensor
    for op in trace.ops:
        if op.node != root and op.node in readers:
            _settle(op.node, readers, trace, length, via, paths)
    param_node = next((i.node for op in trace.ops for i in op.inputs if i.param == name), None)
    if param_node is None:
        return [], 0
    _settle(param_node, readers, trace, length, via, paths)
    steps, node = [], param_node
    while node != root:
        step, k = via[node]
        steps.append((trace.ops[step - 1], k))
        node = trace.ops[step - 1].node
    return steps[::-1], paths[param_node]


def _settle(node, readers, trace, length, via, paths):
    best = None
    paths[node] = 0
    for step, k in readers[node]:
        out = trace.ops[step - 1].node
        if out not in length:                        # read by an op that does not reach the loss
            continue
        paths[node] += paths[out]
        if best is None or length[out] + 1 < best[0]:
            best = (length[out] + 1, (step, k))
    if best is not None:
        length[node], via[node] = best


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
    return lines


# ----------------------------------------------------------------------------- Graphviz
def _q(text):
    """A DOT quoted string; '\\n' in labels is DOT's line break."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(**kw):
    return "[" + ", ".join(f"{k}={_q(v)}" for k, v in kw.items()) + "]"


def to_dot(trace, model, expand=None, title=None):
    """The computation graph in Graphviz DOT, drawn bottom-up as the book draws GPT-2: token ids
    at the bottom, the loss at the top; an edge is a tensor (its shape, and the norm of the
    gradient that went back along it). Each transformer block is a cluster, or one node when
    collapsed (the default above EXPAND_AT_MOST_OPS ops; expand=True/False forces it)."""
    if expand is None:
        expand = len(trace.ops) <= EXPAND_AT_MOST_OPS
    made_by = {op.node: op.step for op in trace.ops}
    param_block = {}
    for op in trace.ops:
        for i in op.inputs:
            if i.param is not None:
                param_block.setdefault(i.param, op.block)
    params = dict(model.named_parameters())

    def where(node_id, block):                       # the drawn node, after collapsing
        return f"block:{block}" if block is not None and not expand else node_id

    nodes = {}                                       # drawn id -> (block or None, attrs)
    edges = {}                                       # (from, to) -> attrs, the first one kept
    for op in trace.ops:
        label = f"{op.name}\n{_module_label(op)}\n{op.backward_at}\ndL/d(out) {op.out_grad_norm:.3g}"
        nodes.setdefault(where(f"op{op.step}", op.block), (op.block, _attrs(shape="box", label=label)))
        for k, i in enumerate(op.inputs):
            if i.node in made_by:
                src = where(f"op{made_by[i.node]}", trace.ops[made_by[i.node] - 1].block)
            elif i.param is not None:
                src = where(f"param:{i.param}", param_block[i.param])
                nodes.setdefault(src, (param_block[i.param], _attrs(
                    shape="ellipse", style="filled", fillcolor="lightyellow",
                    label=f"{i.param}\n{_dims(i.shape)}\ngrad {i.grad_norm:.3g}")))
            elif "int" in i.dtype:                   # token ids, targets: inputs with no gradient
                src = f"input{op.step}_{k}"
                what = "targets" if op.name == "CrossEntropy" else "ids"
                nodes[src] = (None, _attrs(shape="plaintext", label=f"{what} {_dims(i.shape)}"))
            else:                                    # a dropout mask: no gradient, not drawn
                continue
            dst = where(f"op{op.step}", op.block)
            if src == dst:
                continue
            norm = i.grad_norm
            if (src.startswith("block:") or dst.startswith("block:")) and i.node in made_by:
                norm = trace.ops[made_by[i.node] - 1].out_grad_norm   # edges merged: the whole gradient
            grad = "" if norm is None else f"\ngrad {norm:.3g}"
            edges.setdefault((src, dst), _attrs(label=f"{_dims(i.shape)}{grad}"))
    nodes["loss"] = (None, _attrs(shape="doublecircle", label=f"loss\n{trace.loss:.4f}"))
    edges[(where("op1", trace.ops[0].block), "loss")] = _attrs(label="scalar")

    blocks = {}
    for op in trace.ops:
        if op.block is not None:
            blocks.setdefault(op.block, []).append(op)
    for block, ops in blocks.items():
        if not expand:
            names = [n for n, b in param_block.items() if b == block]
            norm = math.sqrt(sum(_norm(params[n].grad) ** 2 for n in names))
            size = sum(params[n].size for n in names)
            nodes[f"block:{block}"] = (None, _attrs(
                shape="box3d", style="filled", fillcolor="lightblue",
                label=f"{block} (TransformerBlock)\n{len(ops)} ops, {len(names)} parameter tensors\n"
                      f"{size:,} parameters, grad norm {norm:.3g}"))

    out = ["digraph backward {",
           "  " + "graph " + _attrs(rankdir="BT", fontname="Helvetica", labelloc="t",
                                     label=title or f"backward: loss {trace.loss:.4f}, {len(trace.ops)} ops") + ";",
           "  node " + _attrs(fontname="Helvetica", fontsize="10") + ";",
           "  edge " + _attrs(fontname="Helvetica", fontsize="8") + ";"]
    for block in blocks if expand else ():
        out.append(f"  subgraph {_q('cluster_' + block)} {{")
        out.append("    graph " + _attrs(label=f"{block} (TransformerBlock)", style="rounded", color="gray") + ";")
        out += [f"    {_q(n)} {a};" for n, (b, a) in nodes.items() if b == block]
        out.append("  }")
    out += [f"  {_q(n)} {a};" for n, (b, a) in nodes.items() if b is None or not expand]
    out += [f"  {_q(s)} -> {_q(d)} {a};" for (s, d), a in edges.items()]
    out.append("}")
    return "\n".join(out) + "\n"


def write_dot(text, path, file=None):
    """Write the DOT file, and a PNG next to it when Graphviz's `dot` is installed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"graph written to {path}", file=file)
    dot = shutil.which("dot")
    if dot is None:
        print("  (no PNG: Graphviz's `dot` is not installed; render later with dot -Tpng "
              f"{path} -o {path.with_suffix('.png')})", file=file)
        return None
    png = path.with_suffix(".png")
    done = subprocess.run([dot, "-Tpng", str(path), "-o", str(png)], capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        print(f"  dot failed on {path}: {done.stderr.strip()[:300]}", file=file)
        return None
    print(f"picture written to {png}", file=file)
    return png


# ----------------------------------------------------------------------------- the command line
def build_parser():
    p = argparse.ArgumentParser(prog="explain_backward.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="tiny (default), 124M, 355M, 774M or 1558M")
    p.add_argument("--context-length", type=int, default=None,
                   help="tokens per row of the batch (default: 32 for tiny, else 256)")
    p.add_argument("--batch-size", type=int, default=1, help="rows in the batch (default: 1)")
    p.add_argument("--data", default=None,
                   help="a UTF-8 text file (default: the-verdict.txt if cached, else the bundled sample)")
    p.add_argument("--drop-rate", type=float, default=None, help="dropout (default: the config's, 0.1)")
    p.add_argument("--seed", type=int, default=123, help="initialisation and dropout seed (default: 123)")
    p.add_argument("--kernels", choices=["numpy", "numba"], default="numpy",
                   help="kernel backend (default: numpy, kernels/reference.py: the readable one)")
    p.add_argument("--param", default=None, metavar="NAME",
                   help="follow one parameter: the chain of ops from the loss down to it")
    p.add_argument("--depth", type=int, default=None, metavar="N",
                   help="list only the N ops nearest the loss (the first N that backward runs, "
                        "the last N of the forward); the totals still count them all")
    p.add_argument("--dot", default=None, metavar="FILE",
                   help="write the computation graph in Graphviz DOT (and FILE.png if `dot` is installed)")
    p.add_argument("--expand", action=argparse.BooleanOptionalAction, default=None,
                   help=f"--dot: draw every op of every block (default: when there are at most "
                        f"{EXPAND_AT_MOST_OPS} ops, as in the tiny model; else one node per block)")
    return p


def check_args(args):
    from .model import CONFIGS
    if args.model not in CONFIGS:
        raise UsageError(f"unknown --model {args.model!r}; choose one of {', '.join(CONFIGS)}")
    limit = CONFIGS[args.model]["context_length"]
    if args.context_length is None:
        args.context_length = min(32 if args.model == "tiny" else 256, limit)
    if not 1 <= args.context_length <= limit:
        raise UsageError(f"--context-length {args.context_length} must be in [1, {limit}] for {args.model}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} must be at least 1")
    if args.depth is not None and args.depth < 0:
        raise UsageError(f"--depth {args.depth} must be at least 0")
    if args.drop_rate is not None and not 0 <= args.drop_rate < 1:
        raise UsageError(f"--drop-rate {args.drop_rate} must be in [0, 1)")


def one_batch(text, tokenizer, batch_size, context_length):
    """The first batch_size windows of the text: inputs (B, T) and targets shifted by one."""
    ids = np.array(tokenizer.encode(text, allowed_special={"<|endoftext|>"}), dtype=np.int64)
    need = batch_size * context_length + 1
    if len(ids) < need:
        raise UsageError(f"the text has {len(ids)} tokens; {batch_size} x {context_length} needs {need}: "
                         f"use a longer --data or a smaller --context-length")
    x = ids[:need - 1].reshape(batch_size, context_length)               # (B, T)
    y = ids[1:need].reshape(batch_size, context_length)                  # (B, T)
    return x, y


def main(argv=None, file=None):
    try:
        return run(build_parser().parse_args(argv), file=file)
    except UsageError as e:
        print(f"explain_backward.py: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except BrokenPipeError:                          # `... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def run(args, file=None):
    check_args(args)
    from . import data
    from .kernels import use
    from .model import GPTModel, get_config
    from .tensor import manual_seed
    from .tokenizer import get_gpt2_tokenizer
    out = sys.stdout if file is None else file

    try:
        text, description = data.load_training_text(args.data, download=False)
    except data.DataError as e:
        raise UsageError(str(e)) from None
    tokenizer = get_gpt2_tokenizer()
    x, y = one_batch(text, tokenizer, args.batch_size, args.context_length)

    cfg = get_config(args.model)
    cfg["context_length"] = args.context_length
    if args.drop_rate is not None:
        cfg["drop_rate"] = args.drop_rate
    manual_seed(args.seed)
    model = GPTModel(cfg).train()
    names = [name for name, _ in model.named_parameters()]
    if args.param is not None and args.param not in names:
        close = difflib.get_close_matches(args.param, names, n=3, cutoff=0.5)
        raise UsageError(f"--param {args.param!r} is not a parameter of the {args.model} model"
                         + (f"; did you mean {', '.join(close)}?" if close else f"; e.g. {names[2]}"))

    with use(args.kernels):                          # in-process callers (tests) keep theirs
        report(args, out, model, cfg, description, tokenizer, x, y)
    return 0


def report(args, out, model, cfg, description, tokenizer, x, y):
    from .kernels import get_backend
    print(description, file=out)
    print(f"GPT-2 {args.model}: {model.num_parameters():,} parameters in {len(model.parameters())} "
          f"tensors, {cfg['n_layers']} blocks, dropout {cfg['drop_rate']}, kernels {get_backend()}", file=out)
    preview = tokenizer.decode(x[0, :12].tolist()).replace("\n", " ")
    print(f"one batch of {args.batch_size} x {args.context_length} tokens: {preview!r}...", file=out)
    listing = Listing(model, depth=args.depth, file=out)

    def forward_done(loss):
        print(f"forward: loss {loss:.4f} (a uniform guess over {cfg['vocab_size']} tokens "
              f"would give ln {cfg['vocab_size']} = {math.log(cfg['vocab_size']):.4f})", file=out)
        if args.param is None:
            print("\nbackward, op by op in the order it runs: each op receives dL/d(its output) "
                  "and returns dL/d(each input)", file=out)
            print(listing.header(), file=out, flush=True)

    trace = trace_backward(model, x, y, on_op=listing if args.param is None else None,
                           on_forward=forward_done)
    if args.param is not None:
        print("", file=out)
        print("\n".join(chain_lines(trace, args.param, model)), file=out)
    else:
        if args.depth is not None and len(trace.ops) > args.depth:
            print(f"  ... {len(trace.ops) - args.depth} more ops not listed (--depth {args.depth})", file=out)
        print("", file=out)
        print("\n".join(totals(trace, model)), file=out)
    if args.dot:
        title = (f"backward through GPT-2 {args.model}: loss {trace.loss:.4f}, {len(trace.ops)} ops, "
                 f"{model.num_parameters():,} parameters")
        write_dot(to_dot(trace, model, expand=args.expand, title=title), args.dot, file=out)
    return trace


if __name__ == "__main__":
    sys.exit(main())
