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
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

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


_openblas = None                               # threadpoolctl's OpenBLAS controllers, found once
_blas_lock = threading.Lock()                  # one one_blas_thread block at a time (they nest)
_blas_depth = 0


@contextlib.contextmanager
def one_blas_thread():
    """NumPy's OpenBLAS runs each call of this block in its calling thread alone; its previous
    thread count comes back at the end (of the outermost block, when they nest)."""
    global _openblas, _blas_depth
    with _blas_lock:
        if _openblas is None:
            try:
                from threadpoolctl import ThreadpoolController
                _openblas = ThreadpoolController().select(internal_api="openblas").lib_controllers
            except ImportError:
                _openblas = []
        saved = [c.num_threads for c in _openblas]
        _blas_depth += 1
        for c in _openblas:
            c.set_num_threads(1)
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                for c, n in zip(_openblas, saved):
                    c.set_num_threads(n)


def matmul(a, b):
    """np.matmul(a, b) of two stacks of matrices (..., M, K) @ (..., K, N), the stack split
    between get_num_threads() Python threads, each calling OpenBLAS in one thread. Same numbers.

    Why: OpenBLAS's own workers spin for a while after each call, and the numba kernel or bf16
    GEMM that comes next loses a core to them (a 512x768x3072 bf16 GEMM ran 1.7x slower right
    after one); the attention's batched products (24 x 256x64x256) also ran faster this way:
    1.38 ms, against 1.78 ms with OpenBLAS's two threads, 2.45 ms in one (benchmarks/RESULTS.md,
    "Our own bf16 GEMM"). Used under autocast on bf16_avx512 (numba_cpu._matmul)."""
    n = get_num_threads()
    if n < 2 or a.ndim < 3 or a.ndim != b.ndim or a.shape[:-2] != b.shape[:-2] or a.dtype != b.dtype:
        return np.matmul(a, b)                 # broadcasting, mixed dtypes: NumPy's own rules
    lead = a.shape[:-2]
    axis = int(np.argmax(lead))                # split the longest stacking axis
    if lead[axis] < 2:
        return np.matmul(a, b)
    out = np.empty(lead + (a.shape[-2], b.shape[-1]), dtype=a.dtype)
    cuts = np.linspace(0, lead[axis], min(n, lead[axis]) + 1).astype(int)
    pieces = [tuple([slice(None)] * axis + [slice(lo, hi)]) for lo, hi in zip(cuts[:-1], cuts[1:])]
    with one_blas_thread():
        jobs = [pool().submit(np.matmul, a[s], b[s], out=out[s]) for s in pieces[1:]]
        try:
            np.matmul(a[pieces[0]], b[pieces[0]], out=out[pieces[0]])
        finally:
            wait(jobs)                         # none still inside OpenBLAS when its count comes back
        for job in jobs:
            job.result()                       # their errors too
    return out


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
