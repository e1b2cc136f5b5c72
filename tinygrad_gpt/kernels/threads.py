"""One thread count for the three pools that share the cores: NumPy's OpenBLAS (through
threadpoolctl), numba's parallel kernels, and oneMKL's OpenMP (the bf16 GEMMs, when loaded).

Each pool left at its own default would start one thread per core, and two pools busy at
once oversubscribe the cores. The pools also hand over cleanly: MKL's OpenMP threads sleep
as soon as a GEMM ends (bf16_mkl sets its block time to 0), numba's libgomp threads sleep
at once (numba's threading layer, chosen below). OpenBLAS's workers spin for a while after each call: MKL's GEMMs
right after one ran 2-4x slower, so a bf16 run on MKL sets `runtime.float32_gemm = "mkl"` and
the attention's float32 products run on MKL too (bf16_mkl.matmul; benchmarks/RESULTS.md).

The count is `runtime.threads` (default: every core), set with `runtime.set(threads=n)` or
`with runtime.use(threads=n):`, which call `_apply_threads` here; the dropout masks are drawn by
that many threads (numba_cpu.keep_mask)."""
import contextlib
import os
import threading
import types
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from ..runtime import APPLY, runtime
from . import bf16_mkl

# numba's threading layer: TBB where it is installed, else workqueue, and OpenMP (libgomp) last.
# After a parallel region libgomp's workers keep spinning (~300k iterations) waiting for more work,
# and on a 2-core machine that steals a core from the OpenBLAS matmul that comes next: a GPT-2
# 124M training step took 3.1-3.4 s instead of 2.4-2.6 (benchmarks/RESULTS.md). Only
# OMP_WAIT_POLICY=PASSIVE in the environment before libgomp loads would stop that, and nothing
# here writes the environment; workqueue's idle workers sleep at once, as TBB's do (measured:
# a layer norm, GEMM, GELU, softmax sequence as fast as OpenMP with PASSIVE, RESULTS.md). The
# user's NUMBA_THREADING_LAYER or NUMBA_THREADING_LAYER_PRIORITY, read by numba, wins.
# Set here, at import: before numba starts its threads (numba_cpu's first parallel call, or
# _apply_threads below), which is when it picks the layer.
if "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    try:
        import numba
        numba.config.THREADING_LAYER_PRIORITY = ["tbb", "workqueue", "omp"]
    except ImportError:                        # numba is a dependency; stay usable without
        pass


def _apply_threads(threads, old=None):
    """runtime.set(threads=n) calls it: n threads in OpenBLAS, numba and MKL (when loaded; it
    reads runtime.threads when it loads)."""
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
    bf16_mkl.set_num_threads(threads)


APPLY["threads"] = _apply_threads


def set_num_threads(threads=None, load_mkl=True):
    """runtime.set(threads=...) (default: every core), after loading MKL (on an AMX-BF16 CPU)
    when `load_mkl`. Returns the count."""
    if load_mkl:
        bf16_mkl.available()
    runtime.set(threads=threads)
    return runtime.threads


def get_num_threads():
    """runtime.threads: every core unless set."""
    return runtime.threads


_state = types.SimpleNamespace(
    openblas=None,                             # threadpoolctl's OpenBLAS controllers, found once
    blas_depth=0,                              # one_blas_thread blocks open now, in any thread
    blas_saved=None,                           # the counts the first of them found, restored by the last
    pool=None,                                 # (count, ThreadPoolExecutor) for Python-level work
    blas_lock=threading.Lock(),                # guards blas_depth and blas_saved
    pool_lock=threading.Lock())


def _openblas_controllers():
    """threadpoolctl's controllers of the OpenBLAS libraries in the process (found once)."""
    if _state.openblas is None:
        try:
            from threadpoolctl import ThreadpoolController
            _state.openblas = ThreadpoolController().select(internal_api="openblas").lib_controllers
        except ImportError:
            _state.openblas = []
    return _state.openblas


@contextlib.contextmanager
def one_blas_thread():
    """NumPy's OpenBLAS runs each call of this block in its calling thread alone. OpenBLAS's
    count is global: blocks may nest and overlap across threads, the first to open saves the
    count and the last to close puts it back. Measured with OpenBLAS 0.3.31: once the main
    thread has set a count, a count set from another thread may be ignored, so the thread that
    opened the first block should close the last (threads.matmul's does: the pieces run inside
    its block; openblas_set_num_threads_local changed the global count too)."""
    with _state.blas_lock:
        controllers = _openblas_controllers()
        if _state.blas_depth == 0:
            _state.blas_saved = [c.num_threads for c in controllers]
            for c in controllers:
                c.set_num_threads(1)
        _state.blas_depth += 1
    try:
        yield
    finally:
        with _state.blas_lock:
            _state.blas_depth -= 1
            if _state.blas_depth == 0:
                for c, n in zip(controllers, _state.blas_saved):
                    c.set_num_threads(n)


SPLIT_ROWS = 128         # a 2-D product of fewer rows, or any product of fewer flops
SPLIT_FLOPS = 1 << 26    # than this (~0.2 ms at 300 GFLOP/s), is not cut (matmul says where it runs)
FEW_ROWS = 32            # generation's: a 2-D product of fewer rows goes to np.matmul as it is
TINY_FLOPS = 1 << 19     # OpenBLAS's own one-thread limit (M*N*K <= 4 * 65536): as it is, too


def matmul(a, b, out=None):
    """np.matmul(a, b, out=out), the work split between get_num_threads() Python threads, each
    calling OpenBLAS in one thread. The numbers of np.matmul with OpenBLAS in one thread: every
    output element is computed by one such call, over the same K in the same order (a vector
    times a matrix, M = 1, excepted: OpenBLAS ends a slice of columns its own way, and a few
    elements differ in the last bit). OpenBLAS's own threads may differ from its one thread in
    the last bits too, where K is not a multiple of its blocking (the output head's dx, K =
    50257, by up to 1e-4 relative). Its twin is np.matmul (reference.matmul).

    2-D: the output's longer side is cut, rows of a or columns of b (the column pieces are
    strided views, which BLAS reads and writes in place). Stacks (..., M, K) @ (..., K, N) of
    one leading shape: the longest stacking axis is cut, into as many pieces as both
    get_num_threads() and OpenBLAS's own count allow (threadpool_limits(1) means one).

    Not cut: a product of fewer than SPLIT_FLOPS flops, and a 2-D one of fewer than SPLIT_ROWS
    rows. Of those, generation's (2-D, fewer than FEW_ROWS rows: 1 with the KV cache, a prompt's
    without), a 2-D one of fewer than SPLIT_ROWS rows above SPLIT_FLOPS, and one below
    TINY_FLOPS (which OpenBLAS runs in one thread itself) go to np.matmul as they are, on
    OpenBLAS's own threads: generation's products ran slower cut (20 x 768 x 3072: 2.0 ms
    against 1.1; generation 33-36 tokens/s against 44-47), and there OpenBLAS's spinning helps:
    the next product comes at once. Any other (a small model's: 768 x 128 x 128 for 4 layers of
    128 at batch 12 x 64) runs whole in the calling thread, OpenBLAS in one thread: no Python
    thread to start and wait for, no OpenBLAS worker woken (benchmarks/RESULTS.md, "The small
    model's step").
    A stack above SPLIT_FLOPS is cut whatever its matrices' rows: chapter 7's attention
    (8 x 12 matrices of ~100 x 64) once went whole to OpenBLAS, whose threads woke above T = 90
    and spun into the next products, and the whole float32 step took twice as long at T = 96 as
    at T = 88 (benchmarks/RESULTS.md, "Chapter 7 in one process or two"). Every product of a
    training step at context 256 is cut. Broadcasting, mixed dtypes, an `out` that
    broadcasts or overlaps an operand, and a NumPy built on another BLAS than OpenBLAS (whose
    thread count this cannot hold at one) go to np.matmul too.

    Why: OpenBLAS's own workers spin for a while after each call (up to ~0.1 s), and on two
    cores the numba kernel or bf16 GEMM that comes next loses a core to them. In the float32
    124M step GELU's and cross-entropy's kernels took ~1.8x their time in the bf16 step (whose
    products never touch OpenBLAS), as they did with the spin shortened (OPENBLAS_THREAD_TIMEOUT
    =4, read only when OpenBLAS starts); with every product cut this way the step took 1.73-1.86 s
    against 1.82-1.91 s (runs alternated), and a bf16 GEMM right after an OpenBLAS call ran 1.7x
    slower (benchmarks/RESULTS.md). The pieces also ran as fast as OpenBLAS's own threads: the
    attention's 24 x 256x64x256 in 1.38 ms, against 1.78 ms on OpenBLAS's two threads."""
    if (a.ndim < 2 or a.ndim != b.ndim or a.shape[:-2] != b.shape[:-2] or a.dtype != b.dtype
            or a.shape[-1] != b.shape[-2] or not a.dtype.isnative):
        return np.matmul(a, b, out=out)        # broadcasting, mixed dtypes, errors: NumPy's own rules
    lead, (m, k), n_cols = a.shape[:-2], a.shape[-2:], b.shape[-1]
    if out is None:
        out = np.empty(lead + (m, n_cols), dtype=a.dtype)
    elif out.shape != lead + (m, n_cols) or np.may_share_memory(out, a) or np.may_share_memory(out, b):
        return np.matmul(a, b, out=out)        # an out that broadcasts, or overlaps an operand
    if a.ndim == 2:
        axis, length = (0, m) if m >= n_cols else (1, n_cols)
    else:
        axis = int(np.argmax(lead))            # split the longest stacking axis
        length = lead[axis]
    controllers = _openblas_controllers()
    flops = 2.0 * out.size * k
    if out.size == 0 or not controllers:
        return np.matmul(a, b, out=out)        # (a NumPy on another BLAS: its own threads, as it is)
    few_rows = a.ndim == 2 and m < SPLIT_ROWS
    if flops < SPLIT_FLOPS or few_rows:        # not cut
        if flops < TINY_FLOPS or (a.ndim == 2 and m < FEW_ROWS) or (few_rows and flops >= SPLIT_FLOPS):
            return np.matmul(a, b, out=out)    # generation's few rows, or too small for OpenBLAS to thread
        with one_blas_thread():                # a small model's products: whole, in this thread
            return np.matmul(a, b, out=out)
    n = min(get_num_threads(), max(c.num_threads for c in controllers))
    if n < 2 or length < 2:
        with one_blas_thread():
            return np.matmul(a, b, out=out)
    pieces_n = min(n, length)
    cuts = [length * i // pieces_n for i in range(pieces_n + 1)]
    if a.ndim == 2 and axis == 0:              # rows of a, rows of out
        pieces = [(a[lo:hi], b, out[lo:hi]) for lo, hi in zip(cuts[:-1], cuts[1:])]
    elif a.ndim == 2:                          # columns of b, columns of out
        pieces = [(a, b[:, lo:hi], out[:, lo:hi]) for lo, hi in zip(cuts[:-1], cuts[1:])]
    else:
        cut = [tuple([slice(None)] * axis + [slice(lo, hi)]) for lo, hi in zip(cuts[:-1], cuts[1:])]
        pieces = [(a[s], b[s], out[s]) for s in cut]
    with one_blas_thread():
        jobs = [pool().submit(np.matmul, x, y, out=o) for x, y, o in pieces[1:]]
        try:
            x, y, o = pieces[0]
            np.matmul(x, y, out=o)
        finally:
            wait(jobs)                         # none still inside OpenBLAS when its count comes back
        for job in jobs:
            job.result()                       # their errors too
    return out


def pool():
    """A thread pool of get_num_threads() workers for NumPy calls that release the GIL."""
    n = get_num_threads()
    with _state.pool_lock:
        if _state.pool is None or _state.pool[0] != n:
            if _state.pool is not None:
                _state.pool[1].shutdown(wait=False)   # its queued work still runs; a new count, a new pool
            _state.pool = (n, ThreadPoolExecutor(max_workers=n, thread_name_prefix="tinygrad_gpt"))
        return _state.pool[1]


def _forget_pool_in_child():
    _state.pool = None                         # a forked child has none of the parent's threads,
    _state.pool_lock, _state.blas_lock = threading.Lock(), threading.Lock()   # nor their locks
    if _state.blas_depth:                      # forked inside a block: its count back, as the block's end would
        for c, n in zip(_state.openblas or [], _state.blas_saved or []):
            c.set_num_threads(n)
    _state.blas_depth = 0


os.register_at_fork(after_in_child=_forget_pool_in_child)
