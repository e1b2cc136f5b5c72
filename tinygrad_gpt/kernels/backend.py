"""The switch itself: `K`, and the module it forwards to (kernels/__init__.py says how to use it
and re-exports every name here: `kernels.K`, `kernels.use`, `kernels.set_backend` ...).

The kernel modules that call `K` (layers.py, bf16_mkl.py) import it from here, not from the
package, so no module of kernels/ imports the package that imports it. For the same reason this
module does not import numba_cpu.py (which imports bf16_mkl.py, whose long GEMM calls
`K.transpose_into`): kernels/__init__.py adds the "numba" entry to `MODULES`.
"""
import contextlib
import os

from . import reference

_BACKENDS = ("numpy", "numba")
MODULES = {"numpy": lambda: reference}     # name -> a function returning the backend's module


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
    K.module = MODULES[name]()
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
