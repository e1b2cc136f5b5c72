"""The kernel backend: one switch picks the plain-NumPy twins or the numba ones.

    TINYGRAD_GPT_KERNELS=numpy   reference.py, readable, the test oracle
    TINYGRAD_GPT_KERNELS=numba   numba_cpu.py, compiled (the default)

Code calls kernels through `K`, e.g. `K.layernorm_forward(x, w, b, eps)`, so switching
with `set_backend` takes effect at once everywhere.
"""
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


def _default_backend():
    name = os.environ.get("TINYGRAD_GPT_KERNELS", "numba").strip().lower()
    if name not in _BACKENDS:
        raise ValueError(f"TINYGRAD_GPT_KERNELS={name!r}: expected one of {', '.join(_BACKENDS)}")
    if name == "numba":
        try:
            import numba  # noqa: F401
        except ImportError:          # numba is a dependency, but keep the engine usable without it
            return "numpy"
    return name


set_backend(_default_backend())
