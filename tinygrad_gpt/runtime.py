"""What is process-wide, in one object: `runtime`.

    runtime.kernels        "numba" (kernels/numba_cpu.py) or "numpy" (kernels/reference.py)  $TINYGRAD_GPT_KERNELS
    runtime.gemm           the bf16 GEMM: "auto", "mkl", "avx512_bf16" or "reference"       (kernels/precision.py)
    runtime.float32_gemm   the float32 stacked products (attention's) of numba_cpu.matmul: "openblas" or "mkl"
    runtime.autocast       None, or "bfloat16" inside `with autocast("bfloat16"):`          (amp.py)
    runtime.threads        one count for OpenBLAS, numba and MKL (and the dropout masks)  (kernels/threads.py)
    runtime.allocator      "system" (glibc as it is) or "keep" (freed memory kept)         (memory.py)
                           $TINYGRAD_GPT_NO_MEMORY_CACHING=1 keeps it "system"
    runtime.profile        an observe.Profile collecting op times, or None                 (observe.py)
                           $TINYGRAD_GPT_DEBUG=1: one for the whole process, its table printed at exit

Each is read from the environment (or its default) on first use and changed in one of two ways:

    with runtime.use(threads=1, kernels="numpy"):   # for a block; the previous values come back after
        ...
    runtime.set(threads=2, allocator="keep")        # the plain setter, for a whole program (the commands)

`kernels.use`, `autocast`, `gemm_backend` and `observe.profile` are the same switches, spelled for their
rooms. Nothing here writes the environment.

The float32 products run on OpenBLAS (split by kernels/threads.py) unless `float32_gemm` says "mkl": a
bf16 run on oneMKL's AMX GEMM sets it (cli.setup_threads), so that attention's float32 products do not
wake OpenBLAS's spinning threads between MKL's GEMMs (benchmarks/RESULTS.md). It is a setting, never a
consequence of what ran before: a float32 step gives the same bits before and after an autocast block.

This module is the floor's floor: it imports nothing of the package. What a change does beyond being
recorded (point `kernels.K` at a module, set the thread pools, ask glibc) is done by the room that owns
the effect, which names its function in `APPLY` when it is imported (kernels/__init__.py, kernels/threads.py,
memory.py, amp.py).
"""
from __future__ import annotations

import contextlib
import os

CHOICES = {"kernels": ("numpy", "numba"), "gemm": ("auto", "mkl", "avx512_bf16", "reference"),
           "float32_gemm": ("openblas", "mkl"), "autocast": (None, "bfloat16"), "allocator": ("system", "keep")}

APPLY = {}      # setting -> function(new value, old value) of the room that owns its effect


def _from_environment():
    """The first values: the environment's where it has a switch, the defaults elsewhere."""
    kernels = os.environ.get("TINYGRAD_GPT_KERNELS", "").strip().lower() or None
    if kernels is not None and kernels not in CHOICES["kernels"]:
        raise ValueError(f"TINYGRAD_GPT_KERNELS={kernels!r}: expected one of {', '.join(CHOICES['kernels'])}")
    if kernels is None:
        try:
            import numba  # noqa: F401
            kernels = "numba"
        except ImportError:          # numba is a dependency, but keep the engine usable without it
            kernels = "numpy"
    return {"kernels": kernels, "gemm": "auto", "float32_gemm": "openblas", "autocast": None,
            "threads": os.cpu_count() or 1, "allocator": "system", "profile": None,
            "debug": os.environ.get("TINYGRAD_GPT_DEBUG", "0") not in ("", "0"),   # observe.py profiles all
            "keep_refused": os.environ.get("TINYGRAD_GPT_NO_MEMORY_CACHING", "").strip() not in ("", "0")}


class Runtime:
    """The process-wide settings (the module docstring lists them). Read as plain attributes."""

    def __getattr__(self, name):        # only until the first use has read the environment
        if name.startswith("__") or "kernels" in self.__dict__:
            raise AttributeError(f"runtime has no setting {name!r}")
        self.__dict__.update(_from_environment())
        return getattr(self, name)

    def environment_choice(self):
        """The kernel backend $TINYGRAD_GPT_KERNELS asks for, or None when it is unset or empty."""
        return os.environ.get("TINYGRAD_GPT_KERNELS", "").strip().lower() or None

    def set(self, **changes):
        """Change settings for the rest of the process (or until a `use` block around it ends).
        Each value is checked before any is changed; returns the values they replaced."""
        for name, value in changes.items():
            if name not in ("threads", "profile") and name not in CHOICES:
                raise ValueError(f"runtime has no setting {name!r}: "
                                 f"{', '.join(list(CHOICES) + ['threads', 'profile'])}")
            if name in CHOICES and value not in CHOICES[name]:
                what = "kernel backend" if name == "kernels" else name
                raise ValueError(f"unknown {what} {value!r}: expected one of "
                                 f"{', '.join(str(c) for c in CHOICES[name])}")
        previous = {}
        for name, value in changes.items():
            if name == "threads":
                value = max(1, int(value or os.cpu_count() or 1))
            if name == "allocator" and value == "keep" and self.keep_refused:
                value = "system"        # $TINYGRAD_GPT_NO_MEMORY_CACHING=1 is obeyed
            old = previous[name] = getattr(self, name)
            effect = APPLY.get(name)
            if effect is not None:
                effect(value, old)      # may refuse (an error), before the value is recorded
            self.__dict__[name] = value
        return previous

    @contextlib.contextmanager
    def use(self, **changes):
        """`with runtime.use(threads=1):` the block runs with these settings, and the previous
        ones come back after it, even on an error. A value None keeps the current one."""
        changes = {k: v for k, v in changes.items() if v is not None or k == "autocast"}
        previous = self.set(**changes)
        try:
            yield self
        finally:
            self.set(**previous)


runtime = Runtime()
