"""What lets tools watch the engine without patching it: the op profiler, the op hooks and
the module scope with its hooks (nn.Module.__call__ keeps them; nn.py re-exports those names).

Function.apply and Tensor.backward (tensor.py) call the three small steps at the bottom
(`timing`, `after_forward`, `after_backward`); explain.py, the benchmarks and the tests use the
rest. tensor.py re-exports every public name, so `tinygrad_gpt.tensor.profile` still works.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Callable

from .runtime import runtime


# ----------------------------------------------------------------------------- profiling
class Profile:
    """Seconds and calls per op, forward and backward (tinygrad's DEBUG idea).

        with profile() as prof:
            loss = model(x) ...; loss.backward()
        print(prof.table())

    TINYGRAD_GPT_DEBUG=1 profiles the whole process and prints the table at exit.
    """

    def __init__(self):
        self.seconds = defaultdict(float)      # (op name, "forward" | "backward") -> seconds
        self.calls = defaultdict(int)

    def add(self, name, phase, seconds):
        self.seconds[name, phase] += seconds
        self.calls[name, phase] += 1

    def table(self):
        total = sum(self.seconds.values()) or 1.0
        rows = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        lines = [f"{'op':24s} {'phase':9s} {'calls':>7s} {'ms':>10s} {'share':>7s}"]
        for (name, phase), sec in rows:
            lines.append(f"{name:24s} {phase:9s} {self.calls[name, phase]:7d} {sec * 1e3:10.1f} "
                         f"{100 * sec / total:6.1f}%")
        lines.append(f"{'total':24s} {'':9s} {'':7s} {total * 1e3:10.1f}")
        return "\n".join(lines)


@contextlib.contextmanager
def profile():
    """`with profile() as prof:` collects the block's op times (runtime.profile, put back after)."""
    with runtime.use(profile=Profile()):
        yield runtime.profile


if runtime.debug:                              # TINYGRAD_GPT_DEBUG=1: the whole process, printed at exit
    import atexit
    runtime.set(profile=Profile())
    atexit.register(lambda p=runtime.profile: print(p.table()))


class _Timer:
    __slots__ = ("name", "phase", "start")

    def __init__(self, name, phase):
        self.name, self.phase = name, phase

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        if runtime.profile is not None:
            runtime.profile.add(self.name, self.phase, time.perf_counter() - self.start)
        return False


_NOT_TIMED = contextlib.nullcontext()


def timing(name, phase):
    """`with timing(op, "forward"):` adds the block's seconds to the active profile, if any."""
    return _NOT_TIMED if runtime.profile is None else _Timer(name, phase)


# ----------------------------------------------------------------------------- hooks
_forward_hooks = []      # callables hook(ctx, inputs, output), after every Function.apply
_backward_hooks = []     # callables hook(node, ctx, grad, input_grads), after every op's backward
_semantics_hooks = []    # hook(ctx, inputs, output) of a wing that adds semantics to the engine's ops:
                         # the torch shim's record of shared memory (torch/semantics.py), once imported


class RemovableHandle:
    """What a register_*_hook returns, as torch's: `.remove()` takes the hook out again; as a
    context manager it removes the hook on exit (`with register_forward_hook(f): ...`)."""

    def __init__(self, hooks: list, hook: Callable):
        self._hooks, self.hook = hooks, hook

    def remove(self) -> None:
        if self.hook in self._hooks:
            self._hooks.remove(self.hook)

    def __enter__(self) -> "RemovableHandle":
        return self

    def __exit__(self, *exc) -> bool:
        self.remove()
        return False


def register_forward_hook(hook: Callable) -> RemovableHandle:
    """Call hook(ctx, inputs, output) after every op's forward: ctx is the Function (its
    class is the op), inputs the Tensors it was given, output the Tensor it made (recorded in
    the graph or not). For tracing and checks; a hook must not change what it sees."""
    _forward_hooks.append(hook)
    return RemovableHandle(_forward_hooks, hook)


def register_backward_hook(hook: Callable) -> RemovableHandle:
    """Call hook(node, ctx, grad, input_grads) right after an op's backward ran and before its
    gradients are added into its inputs: node is the op's output Tensor, grad dL/d(node),
    input_grads what backward returned, one per input (None where it gives none)."""
    _backward_hooks.append(hook)
    return RemovableHandle(_backward_hooks, hook)


def register_semantics_hook(hook: Callable) -> RemovableHandle:
    """As register_forward_hook, for a wing that extends what the engine's ops mean (the torch
    shim) rather than a tool that watches them; kept apart from the users' hooks."""
    if hook not in _semantics_hooks:
        _semantics_hooks.append(hook)
    return RemovableHandle(_semantics_hooks, hook)


def after_forward(ctx, inputs, result):
    for hook in _semantics_hooks:
        hook(ctx, inputs, result)
    for hook in _forward_hooks:
        hook(ctx, inputs, result)


def after_backward(node, ctx, grad, input_grads):
    for hook in _backward_hooks:
        hook(node, ctx, grad, input_grads)


# ----------------------------------------------------------------------------- module scope and hooks (nn.Module.__call__)
_scope = []                  # [[module, qualified name or None until asked]], innermost last
_module_pre_hooks = []       # hook(module, args) before every module's forward
_module_hooks = []           # hook(module, args, output) after every module's forward


def register_module_forward_pre_hook(hook: Callable) -> RemovableHandle:
    """Call hook(module, args) before the forward of every module (torch's global twin)."""
    _module_pre_hooks.append(hook)
    return RemovableHandle(_module_pre_hooks, hook)


def register_module_forward_hook(hook: Callable) -> RemovableHandle:
    """Call hook(module, args, output) after the forward of every module."""
    _module_hooks.append(hook)
    return RemovableHandle(_module_hooks, hook)


def _child_name(parent, child):
    for name, value in vars(parent).items():       # a direct attribute: the usual case
        if value is child:
            return name
    for name, m in parent.named_modules():         # deeper (a block calling a grandchild)
        if m is child and name:
            return name
    return type(child).__name__                    # not in the tree: its class


def module_stack() -> list:
    """[(qualified name, module)] of the modules whose forward is running, outermost first.
    Names are relative to the outermost one ("" for it): "trf_blocks.0.att.W_query" inside
    model(x). Computed when asked, so a forward without anyone asking pays nothing for them."""
    for i, entry in enumerate(_scope):
        if entry[1] is None:
            if i == 0:
                entry[1] = ""
            else:
                parent_name = _scope[i - 1][1]
                name = _child_name(_scope[i - 1][0], entry[0])
                entry[1] = f"{parent_name}.{name}" if parent_name else name
    return [(name, module) for module, name in _scope]


def current_module():
    """(qualified name, module) of the innermost running module, or (None, None) outside any."""
    if not _scope:
        return None, None
    return module_stack()[-1]
