"""Tracing one backward pass: the data structure a trace is, and how it is recorded.

A Trace is a list of Op records in the order backward ran them. Each Op keeps the op's
name, the module path whose forward made it (from the engine's module scope) and its
transformer block, the shape of its output and the norm of the gradient it was handed, the
file:line of its backward code, and one Input per operand: its shape and dtype, the
parameter's name when it is one, and the shape and norm of the gradient it gets back.
With `keep_values`, the arrays themselves too (dL/d(output), each input's gradient), for a
model small enough to print (micro). Where a tensor was read by several ops its gradient is
their sum: the op that made it lists those contributions (Contribution), in the order they
were added. A frozen parameter (requires_grad False: explain --lora, --finetune classifier)
gets a Frozen record: each op that read it in forward, and what that op's backward did about it
(none ran: the op was not recorded, no input of it needed a gradient; or it ran and returned
no gradient for the parameter, which needs_input_grad told it not to compute). Renderers
(render_text.py, render_dot.py, render_html.py) read only these records. Recorded through the
engine's hooks (tensor.register_forward_hook, tensor.register_backward_hook): nothing is patched.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..tensor import register_backward_hook, unbroadcast

ROOT = Path(__file__).resolve().parent.parent.parent   # paths are printed relative to the repository


# ----------------------------------------------------------------------------- what a trace holds
@dataclass
class Input:
    shape: tuple
    dtype: str
    node: int                 # id() of the tensor (unique while the graph is alive)
    param: str = None         # the parameter's name, when the input is one
    grad_shape: tuple = None  # what the op's backward returned for this input (None: no gradient)
    grad_norm: float = None   # the norm of what the input receives (summed back to its shape)
    arg: str = None           # the name forward gives it ("x", "w", "b", "q", ...)
    grad: np.ndarray = None   # what it receives, summed to its shape (kept with keep_values, when small)
    made_by: tuple = None     # (op name, module) of the op whose output it is; None for a leaf
    needed: bool = None       # ctx.needs_input_grad for it: whether the op's backward was asked for its gradient
    computed: bool = None     # whether the op's backward returned a gradient for it (not None)


@dataclass
class Contribution:
    """One reader's share of a tensor's gradient: what op `step` sent back to it."""
    step: int
    name: str                 # the reading op: Linear, Add, LayerNorm, ...
    module: str
    norm: float
    grad: np.ndarray = None   # kept with keep_values, when small


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
    out_grad: np.ndarray = None   # dL/d(its output) itself (kept with keep_values, when small)
    contributions: list = field(default_factory=list)   # [Contribution] summed into dL/d(its output)
    saved: list = field(default_factory=list)   # [Saved]: what forward saved for this backward (keep_values)

    def params(self):
        """Names of the parameters this op hands a gradient to."""
        return [i.param for i in self.inputs if i.param is not None and i.grad_shape is not None]


@dataclass
class Saved:
    """One array an op's forward saved for its backward (ctx.saved), named as forward names it."""
    name: str                 # "x2", "mean", "rstd", "att", ... (forward's save_for_backward arguments)
    shape: tuple
    value: np.ndarray = None  # a copy (kept with keep_values, when small)
    param: str = None         # the parameter whose value it is, when it is one (a weight)


@dataclass
class Read:
    """One op that read a frozen parameter in forward, and what its backward did about it."""
    name: str                 # the op: Linear, Embedding, MatMul, ...
    module: str
    block: str
    step: int = None          # the step at which its backward ran; None: it never ran
    recorded: bool = False    # the op is in the graph (some input of it needed a gradient)
    computed: bool = False    # its backward returned a gradient for the parameter anyway (then dropped)


@dataclass
class Frozen:
    """A parameter with requires_grad False: no gradient is computed for it."""
    name: str
    shape: tuple
    reads: list = field(default_factory=list)         # [Read], in forward's order

    @property
    def size(self):
        return int(np.prod(self.shape)) if len(self.shape) else 1

    def computed(self):
        """The ops whose backward computed a gradient for it anyway (an engine bug: wasted work)."""
        return [r for r in self.reads if r.computed]


@dataclass
class Trace:
    ops: list = field(default_factory=list)          # [Op], in the order backward ran them
    loss: float = None
    seconds: float = 0.0                              # backward's wall time, printing included
    received: Counter = field(default_factory=Counter)   # parameter name -> ops that fed it
    frozen: list = field(default_factory=list)       # [Frozen], in the model's order (empty: none frozen)


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
    """The kernels (kernels/reference.py or numba_cpu.py, whichever `kernels.K` is now) an op's
    backward calls as `kernels.K.name`: the functions that run."""
    from .. import kernels
    try:
        source = inspect.getsource(function_class.backward)
    except (OSError, TypeError):
        return []
    found = []
    for name in dict.fromkeys(re.findall(r"\bK\.(\w+)", source)):
        fn = getattr(kernels.K, name, None)
        if fn is not None:
            found.append((name, source_location(fn)))
    return found


# ----------------------------------------------------------------------------- tracing
class _Tags(dict):
    """id(op) -> (module name, block), .made: id(output Tensor) -> (op name, module), who made it,
    and .reads: id(frozen parameter) -> [(op name, module, block, id(op) or None when the op made
    no graph node)], the ops that read it."""
    def __init__(self):
        super().__init__()
        self.made = {}
        self.reads = defaultdict(list)


@contextlib.contextmanager
def record_modules(model):
    """While inside, every op that records a graph node is tagged with the module whose forward
    made it and the transformer block around it, read from the engine's module scope through a
    forward hook. Yields (tags, scope): tags maps id(op) -> (module name, block), the op being
    the output's ctx (the node's own key: an in-place masked_fill_ moves a node to a new Tensor
    object, its ctx goes with it); `with scope(name):` tags ops made outside the model. The ops
    that read a frozen parameter (requires_grad False) are kept in tags.reads, graph node or not."""
    from ..nn import TransformerBlock, module_stack
    from ..tensor import register_forward_hook
    tags, labels = _Tags(), []                       # labels: names given with scope(), innermost last
    made = tags.made
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}

    def hook(ctx, inputs, out):
        read = [t for t in inputs if id(t) in frozen]
        if out._ctx is None and not read:            # no graph node: backward will never see it
            return
        stack = module_stack()
        if stack:
            name = stack[-1][0]
            block = next((n for n, m in stack if isinstance(m, TransformerBlock)   # or the book's
                          or type(m).__name__ == "TransformerBlock"), None)        # (ch04, --book)
        else:
            name, block = (labels[-1] if labels else None), None
        for t in read:
            tags.reads[id(t)].append((ctx.name, name, block, None if out._ctx is None else id(out._ctx)))
        if out._ctx is None:
            return
        tags[id(out._ctx)] = (name, block)
        made[id(out)] = (ctx.name, name)

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


_arg_names = {}


def argument_names(function_class, n):
    """The names forward gives its first n tensor arguments: Linear -> x, w, b."""
    if function_class not in _arg_names:
        try:
            params = list(inspect.signature(function_class.forward).parameters.values())[1:]   # after ctx
        except (TypeError, ValueError):
            params = []
        _arg_names[function_class] = params
    params, names = _arg_names[function_class], []
    for k in range(n):
        if params and params[-1].kind is inspect.Parameter.VAR_POSITIONAL and k >= len(params) - 1:
            names.append(f"{params[-1].name}[{k - len(params) + 1}]")
        else:
            names.append(params[k].name if k < len(params) else f"input {k}")
    return names


_saved_names = {}


def saved_names(function_class, n):
    """The names forward gives the arrays it saves: LayerNorm -> x2, w, mean, rstd (read from its
    `ctx.save_for_backward(...)` line); 'saved[k]' where the source does not say."""
    if function_class not in _saved_names:
        try:
            source = inspect.getsource(function_class.forward)
            m = re.search(r"save_for_backward\(([^)]*)\)", source)
            _saved_names[function_class] = [a.strip() for a in m.group(1).split(",")] if m else []
        except (OSError, TypeError):
            _saved_names[function_class] = []
    names = _saved_names[function_class]
    return [names[k] if k < len(names) and names[k].isidentifier() else f"saved[{k}]" for k in range(n)]


def _kept(a, limit):
    """A float copy of a gradient for the trace, or None when values are not kept or it is big."""
    if limit is None or np.size(a) > limit:
        return None
    return np.array(a, copy=True)


def trace_backward(model, input_ids, target_ids, on_op=None, on_forward=None, keep_values=None,
                   logits_of=None):
    """Forward `model` on input_ids (B, T), cross-entropy against target_ids (B, T), then
    backward with a hook that records every op as it runs. `on_forward(loss)` is called between
    the two, `on_op(op)` for each op as backward runs it (to print them; an exception it raises
    stops backward there). The model's gradients are reset first. keep_values: None (norms
    only), or keep every gradient array of at most this many numbers. logits_of(model,
    input_ids): the logits the loss reads, when not model(input_ids) (a classifier's last
    token, finetune.classifier_logits, with target_ids (B,) its labels); ops it makes outside
    the model are tagged with its name. Returns a Trace."""
    from .. import functional as F
    named = list(model.named_parameters())
    names = {id(p): name for name, p in named}
    model.zero_grad()
    with record_modules(model) as (tags, scope):
        if logits_of is None:
            logits = model(input_ids)                           # (B, T, V)
        else:
            with scope(logits_of.__name__):
                logits = logits_of(model, input_ids)            # e.g. (B, num_classes)
        with scope("loss"):
            loss = F.cross_entropy(logits, target_ids)
    del logits
    made = tags.made
    trace = Trace(loss=loss.item())
    if on_forward is not None:
        on_forward(trace.loss)

    values_of = {id(p.data): name for name, p in named}    # a saved array that is a weight's value
    pending = defaultdict(list)      # tensor id -> [Contribution]: the readers that already ran
    step_of = {}                     # id(op) -> the step at which its backward ran

    def hook(node, ctx, grad, input_grads):
        module, block = tags.get(id(ctx), (None, None))
        step = len(trace.ops) + 1
        step_of[id(ctx)] = step
        inputs = []
        grads = tuple(input_grads) + (None,) * (len(ctx.parents) - len(input_grads))
        args = argument_names(type(ctx), len(ctx.parents))
        for parent, pg, arg, needed in zip(ctx.parents, grads, args, ctx.needs_input_grad):
            inp = Input(parent.shape, str(parent.dtype), id(parent),
                        names.get(id(parent)) if parent._ctx is None else None, arg=arg,
                        made_by=made.get(id(parent)) if parent._ctx is not None else None,
                        needed=bool(needed), computed=pg is not None)
            if pg is not None and parent.requires_grad:          # what the engine will add in
                inp.grad_shape = tuple(np.shape(pg))
                summed = unbroadcast(np.asarray(pg), parent.shape)
                inp.grad_norm = _norm(summed)
                inp.grad = _kept(summed, keep_values)
                pending[id(parent)].append(Contribution(step, ctx.name, module, inp.grad_norm, inp.grad))
                if inp.param is not None:
                    trace.received[inp.param] += 1
            inputs.append(inp)
        op = Op(step=step, name=ctx.name, module=module, block=block, node=id(node),
                out_shape=node.shape, out_grad_norm=_norm(grad), inputs=inputs,
                backward_at=source_location(type(ctx).backward), out_grad=_kept(grad, keep_values),
                contributions=pending.pop(id(node), []))
        if keep_values is not None:                 # what forward saved, which this backward read
            for name, a in zip(saved_names(type(ctx), len(ctx.saved)), ctx.saved):
                if isinstance(a, np.ndarray):
                    op.saved.append(Saved(name, a.shape, _kept(a, keep_values), values_of.get(id(a))))
        trace.ops.append(op)
        if on_op is not None:
            on_op(op)

    start = time.perf_counter()
    with register_backward_hook(hook):
        loss.backward()
    trace.seconds = time.perf_counter() - start
    trace.frozen = frozen_records(trace, named, tags.reads, step_of)
    return trace


def frozen_records(trace, named, reads, step_of):
    """[Frozen] for each parameter without requires_grad: the ops that read it in forward,
    joined with what backward did (its step, whether it returned a gradient for it)."""
    frozen = []
    for name, p in named:
        if p.requires_grad:
            continue
        record = Frozen(name, tuple(p.shape))
        for op_name, module, block, ctx_id in reads.get(id(p), []):
            read = Read(op_name, module, block, recorded=ctx_id is not None)
            read.step = step_of.get(ctx_id) if ctx_id is not None else None
            if read.step is not None:
                op = trace.ops[read.step - 1]
                read.computed = any(i.computed for i in op.inputs if i.node == id(p))
            record.reads.append(read)
        frozen.append(record)
    return frozen


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
    steps, n, _ = _chain_and_counts(trace, name)
    return steps, n


def chain_counts(trace, name):
    """Why `name` has as many chains as it has: along its shortest chain, each tensor read by
    several ops, with the chains that reach it through each reader. [(op, input index,
    [(reader step, chains through it)])]: op reads the tensor on the chain; the tensor's
    count is the sum of its readers' (a chain to it goes through exactly one of them)."""
    steps, _, paths = _chain_and_counts(trace, name)
    readers = consumers(trace)
    out = []
    for op, k in steps:
        node = op.inputs[k].node
        through = [(s, paths.get(trace.ops[s - 1].node, 0)) for s, _ in readers[node]]
        through = [(s, c) for s, c in through if c]                  # readers that reach the loss
        if len(through) > 1:
            out.append((op, k, through))
    return out


def _chain_and_counts(trace, name):
    readers = consumers(trace)
    root = trace.ops[0].node
    length, via, paths = {root: 0}, {}, {root: 1}
    # backward ran every op after all the ops that read its output: one pass settles each tensor
    for op in trace.ops:
        if op.node != root and op.node in readers:
            _settle(op.node, readers, trace, length, via, paths)
    param_node = next((i.node for op in trace.ops for i in op.inputs if i.param == name), None)
    if param_node is None:
        return [], 0, paths
    _settle(param_node, readers, trace, length, via, paths)
    steps, node = [], param_node
    while node != root:
        step, k = via[node]
        steps.append((trace.ops[step - 1], k))
        node = trace.ops[step - 1].node
    return steps[::-1], paths[param_node], paths


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
