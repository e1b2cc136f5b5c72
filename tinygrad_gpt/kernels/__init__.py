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

The switch lives in backend.py (the kernel modules that call `K` import it from there); this
package re-exports it, hands it numba_cpu, and gives `K` the machine of layers.py.
"""
from . import backend, reference  # noqa: F401
from .backend import (K, _BACKENDS, _default_backend, environment_choice,  # noqa: F401  the switch
                      get_backend, set_backend, use)


def _numba_cpu():                    # here, not in backend.py: numba_cpu imports bf16_mkl, which imports backend
    from . import numba_cpu          # imported only when chosen (numba compiles on first call)
    return numba_cpu


backend.MODULES["numba"] = _numba_cpu
set_backend(_default_backend())


# The machine under the layers, reached through K like every kernel: the Linear products (dtype,
# GEMM, output buffers), the embedding's reused gradient, AdamW's pass (kernels/layers.py).
from . import layers as _layers  # noqa: E402

K.linear, K.linear_backward = _layers.linear, _layers.linear_backward
K.embedding_grad, K.adamw_update = _layers.embedding_backward, _layers.adamw_update
from .precision import gemm_backend, get_gemm_backend  # noqa: E402,F401  the bf16 GEMM switch, beside K
