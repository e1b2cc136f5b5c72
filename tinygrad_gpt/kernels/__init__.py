"""The kernel backend: one switch picks the plain-NumPy twins or the numba ones.

    TINYGRAD_GPT_KERNELS=numpy   reference.py, readable, the test oracle
    TINYGRAD_GPT_KERNELS=numba   numba_cpu.py, compiled (the default)

Code calls kernels through `K`, e.g. `K.layernorm_forward(x, w, b, eps)`, so switching
takes effect at once everywhere:

    with kernels.use("numpy"):      # for a block; the previous backend comes back after
        ...
    kernels.set_backend("numba")    # the plain setter, for a whole program (a CLI flag)

The bf16 GEMM has its one switch beside it: `kernels.gemm_backend("reference")` (precision.py).

The environment variable is read once, at import, for the default; nothing here writes it.
"""
import contextlib
import os

from . import reference

_BACKENDS = ("numpy", "numba")


class _Kernels:
    """Forwards attribute lookups to the active backend module."""

    def __init__(self):
        self.name = None
        self.module = None

    def __getattr__(self, attr):
        return getattr(self.module, attr)


K = _Kernels()


def set_backend(name):
    """Select "numpy" (reference.py) or "numba" (numba_cpu.py) for every fused op."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}: expected one of {', '.join(_BACKENDS)}")
    if name == "numba":
        from . import numba_cpu
        K.module = numba_cpu
    else:
        K.module = reference
    K.name = name


def get_backend():
    return K.name


@contextlib.contextmanager
def use(name=None):
    """`with use("numpy"):` runs the block on that backend and puts the previous one back,
    even on an error. `use(None)` keeps the current backend and restores it on exit (for
    code that may call set_backend inside)."""
    previous = K.name
    if name is not None:
        set_backend(name)
    try:
        yield K
    finally:
        set_backend(previous)


def environment_choice():
    """The backend $TINYGRAD_GPT_KERNELS asks for, or None when it is unset or empty."""
    name = os.environ.get("TINYGRAD_GPT_KERNELS", "").strip().lower()
    return name or None


def _default_backend():
    name = environment_choice() or "numba"
    if name not in _BACKENDS:
        raise ValueError(f"TINYGRAD_GPT_KERNELS={name!r}: expected one of {', '.join(_BACKENDS)}")
    if name == "numba":
        try:
            import numba  # noqa: F401
        except ImportError:          # numba is a dependency, but keep the engine usable without it
            return "numpy"
    return name


set_backend(_default_backend())


# The machine under the layers, reached through K like every kernel: the Linear products (dtype,
# GEMM, output buffers), the embedding's reused gradient, AdamW's pass (kernels/layers.py).
from . import layers as _layers  # noqa: E402

K.linear, K.linear_backward = _layers.linear, _layers.linear_backward
K.embedding_grad, K.adamw_update = _layers.embedding_backward, _layers.adamw_update
from .precision import gemm_backend, get_gemm_backend  # noqa: E402,F401  the bf16 GEMM switch, beside K
