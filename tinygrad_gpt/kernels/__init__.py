"""The kernels: arrays in, arrays out. `K` is the active backend module itself:

    reference.py   plain NumPy, readable, the test oracle           (kernels.use("numpy"))
    numba_cpu.py   the same functions and parameters, compiled      (kernels.use("numba"), the default)

The engine calls `kernels.K.layernorm_forward(x, w, b, eps)`. `K` is a plain module-level name
that `set_backend` and `use` point at reference or numba_cpu, and nothing else is ever set on it:
go-to-definition, the explain command's table and a learner's pdb all land on the function that
runs. Callers write `kernels.K.x`, not `from .kernels import K`: a name imported once would keep
the module it found at import and miss a switch.

    with kernels.use("numpy"):      # for a block; the previous backend comes back after
        ...
    kernels.set_backend("numba")    # the plain setter, for a whole program (a CLI flag)

The choice is the runtime's (`runtime.kernels`, read once from $TINYGRAD_GPT_KERNELS); the bf16
GEMM's choice is beside it (`kernels.gemm_backend`, precision.py). The modules both backends share
are reached by their own names: precision.py (the bf16 GEMM), threads.py (the float32 products'
thread split), bf16_mkl.py, bf16_avx512.py, buffers.py (memory reused across steps).
"""
import contextlib

from ..runtime import APPLY, runtime
from . import reference, threads  # noqa: F401  threads: runtime.set(threads=...) acts through it


def _module(name):
    if name == "numba":
        from . import numba_cpu      # imported only when chosen (numba compiles on first call)
        return numba_cpu
    return reference


K = _module(runtime.kernels)


def _point_k_at(name, old=None):     # runtime.set(kernels=...) calls it
    global K
    K = _module(name)


APPLY["kernels"] = _point_k_at


def set_backend(name):
    """Select "numpy" (reference.py) or "numba" (numba_cpu.py) for every kernel."""
    runtime.set(kernels=name)


def get_backend():
    return runtime.kernels


@contextlib.contextmanager
def use(name=None):
    """`with use("numpy"):` runs the block on that backend and puts the previous one back,
    even on an error. `use(None)` keeps the current backend and restores it on exit (for
    code that may call set_backend inside). Yields the module."""
    previous = runtime.kernels
    if name is not None:
        runtime.set(kernels=name)
    try:
        yield K
    finally:
        runtime.set(kernels=previous)


def environment_choice():
    """The backend $TINYGRAD_GPT_KERNELS asks for, or None when it is unset or empty."""
    return runtime.environment_choice()


def _default_backend():
    """What a process starts with: $TINYGRAD_GPT_KERNELS, else numba (numpy without numba)."""
    from ..runtime import _from_environment
    return _from_environment()["kernels"]


from .precision import gemm_backend, get_gemm_backend  # noqa: E402,F401  the bf16 GEMM switch, beside K
