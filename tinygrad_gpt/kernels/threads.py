"""One thread count for the three pools that share the cores: NumPy's OpenBLAS (through
threadpoolctl), numba's parallel kernels, and oneMKL's OpenMP (the bf16 GEMMs, when loaded).

Each pool left at its own default would start one thread per core, and two pools busy at
once oversubscribe the cores. The pools also hand over cleanly: MKL's OpenMP threads sleep
as soon as a GEMM ends (bf16_mkl sets its block time to 0), OpenBLAS's and numba's do by
themselves within milliseconds (benchmarks/RESULTS.md, "alternating GEMMs")."""
import os

from . import bf16_mkl


def set_num_threads(threads=None, load_mkl=True):
    """Use `threads` (default: every core) in OpenBLAS, numba and MKL. Returns the count."""
    threads = int(threads or os.cpu_count() or 1)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)              # every BLAS and OpenMP library loaded now
    except ImportError:                        # threadpoolctl is a dependency; stay usable without
        pass
    try:
        import numba
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):
        pass
    if load_mkl:
        bf16_mkl.available()                   # loads it (on an AMX-BF16 CPU) so the count applies
    bf16_mkl.set_num_threads(threads)
    return threads
