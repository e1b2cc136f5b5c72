"""One thread count for the three pools that share the cores: NumPy's OpenBLAS (through
threadpoolctl), numba's parallel kernels, and oneMKL's OpenMP (the bf16 GEMMs, when loaded).

Each pool left at its own default would start one thread per core, and two pools busy at
once oversubscribe the cores. The pools also hand over cleanly: MKL's OpenMP threads sleep
as soon as a GEMM ends (bf16_mkl sets its block time to 0), numba's libgomp threads sleep
at once (OMP_WAIT_POLICY=PASSIVE, numba_cpu.py). OpenBLAS's workers spin for a while after
each call: MKL's GEMMs right after one ran 2-4x slower, so while MKL is in the process the
attention's float32 products run on MKL too (bf16_mkl.matmul; benchmarks/RESULTS.md).

`get_num_threads()` is the count the last `set_num_threads` chose (default: every core); the
dropout masks are drawn by that many threads (numba_cpu.keep_mask)."""
import os
from concurrent.futures import ThreadPoolExecutor

from . import bf16_mkl

_threads = None                                # the count set_num_threads chose, or None
_pool = None                                   # (count, ThreadPoolExecutor) for Python-level work


def set_num_threads(threads=None, load_mkl=True):
    """Use `threads` (default: every core) in OpenBLAS, numba and MKL. Returns the count."""
    global _threads
    threads = int(threads or os.cpu_count() or 1)
    _threads = threads
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


def get_num_threads():
    """The thread count of the last set_num_threads (every core before the first call)."""
    return _threads or os.cpu_count() or 1


def pool():
    """A thread pool of get_num_threads() workers for NumPy calls that release the GIL."""
    global _pool
    n = get_num_threads()
    if _pool is None or _pool[0] != n:
        if _pool is not None:
            _pool[1].shutdown(wait=False)       # its idle threads end; a new count, a new pool
        _pool = (n, ThreadPoolExecutor(max_workers=n, thread_name_prefix="tinygrad_gpt"))
    return _pool[1]


def _forget_pool_in_child():
    global _pool
    _pool = None                               # a forked child has none of the parent's threads


os.register_at_fork(after_in_child=_forget_pool_in_child)
