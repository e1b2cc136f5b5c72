"""bf16 GEMM on the CPU's matrix units: oneMKL's `cblas_gemm_bf16bf16f32` through ctypes.

    C (M, N) float32 = op(A) @ op(B),   A, B bfloat16 stored as uint16, float32 accumulation

The readable twin is `reference.gemm_bf16` (widen the bf16 bits to float32, np.matmul);
`gemm_bf16` here has the same signature. MKL comes from the PyPI `mkl` wheel (x86_64 Linux);
on an AMX-BF16 CPU it runs this model's shapes at 3-5x NumPy's float32 OpenBLAS rate
(benchmarks/RESULTS.md). `available()` says whether the fast path is usable; where it is
not, `tinygrad_gpt.autocast` falls back to the twin and says so once.

Thread pools. NumPy's OpenBLAS, numba's workqueue/OpenMP and MKL's Intel OpenMP share the
cores. Intel OpenMP threads spin for KMP_BLOCKTIME (200 ms) after each parallel region, and
while they spin NumPy's GEMMs on the same two cores run 3-4x slower. So before loading MKL
we load its OpenMP runtime and set the block time to 0 with `kmp_set_blocktime` (no
environment variable is written); MKL's thread count is runtime.threads, applied when MKL loads
and whenever the runtime's count changes (kernels/threads.py sets all three pools).
"""
import ctypes
import glob
import os
import sys
import types

import numpy as np
from numba import njit, prange

from ..runtime import APPLY, runtime

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_THREADING_INTEL, _THREADING_SEQUENTIAL = 0, 1    # MKL_THREADING_* in mkl_service.h

_mkl = types.SimpleNamespace(
    lib=None,          # the loaded libmkl_rt, or False after a failed attempt
    omp=None,          # libiomp5, loaded before MKL so that its block time can be set
    why=None,          # why the fast path is unavailable (a sentence), or None
    single=None,       # why MKL runs on one thread (a sentence), or None
    without_amx=False,  # allow_without_amx(): load MKL on any CPU (for tests)
    opened=None,       # (libmkl_rt or False, why): MKL is opened and set up once per process
    chunk=np.empty(0, dtype=np.float32))   # _gemm_long's chunk of C^T, kept (up to CHUNK x 4096 floats)


def _candidate_dirs():
    """Where pip puts the mkl wheel's libraries: <prefix>/lib of this interpreter or the user's."""
    dirs = [os.path.join(sys.prefix, "lib"), os.path.join(sys.base_prefix, "lib")]
    try:
        from importlib import metadata
        for f in metadata.files("mkl") or ():
            if "libmkl_rt" in f.name:
                dirs.insert(0, os.path.dirname(str(f.locate())))
    except Exception:               # mkl not installed through pip: try the prefixes
        pass
    dirs.append(os.path.expanduser("~/.local/lib"))
    return list(dict.fromkeys(os.path.abspath(d) for d in dirs))


def _cpuinfo(field):
    """The first value of `field` in /proc/cpuinfo, or "" where there is no such file or line."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field) and line[len(field):].lstrip(" \t").startswith(":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def installed():
    """True when a libmkl_rt is where pip puts it (found without loading it)."""
    return any(glob.glob(os.path.join(d, "libmkl_rt.so*")) for d in _candidate_dirs())


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (a set; empty where there is no such file)."""
    return set(_cpuinfo("flags").split())


def cpu_vendor():
    """/proc/cpuinfo's vendor_id: "GenuineIntel", "AuthenticAMD", or "" where there is none."""
    return _cpuinfo("vendor_id")


def cpu_has_amx_bf16():
    """True when /proc/cpuinfo lists amx_bf16 (Sapphire Rapids and later). Only AMX: on an AMD
    EPYC with avx512_bf16 but no AMX, MKL's bf16 GEMM ran the step's products at 0.34-0.61x
    NumPy's float32 rate (benchmarks/RESULTS.md, "An AMD EPYC without AMX")."""
    return "amx_bf16" in cpu_flags()


def _load():
    """libmkl_rt where the fast path may run (an AMX-BF16 CPU, or after allow_without_amx()),
    else False with the reason in _why."""
    if _mkl.lib is not None:
        return _mkl.lib
    if not cpu_has_amx_bf16() and not _mkl.without_amx:
        _mkl.lib, _mkl.why = False, "this CPU has no AMX-BF16 (amx_bf16 not in /proc/cpuinfo)"
        return _mkl.lib
    _mkl.lib, _mkl.why = _open()
    if _mkl.lib:
        set_num_threads(runtime.threads)
    return _mkl.lib


def _open():
    if _mkl.opened is not None:
        return _mkl.opened
    why = None
    for d in _candidate_dirs():
        paths = sorted(glob.glob(os.path.join(d, "libmkl_rt.so*")))
        if not paths:
            continue
        omp = os.path.join(d, "libiomp5.so")
        try:
            if os.path.exists(omp):
                _mkl.omp = ctypes.CDLL(omp)            # local: numba keeps its own libgomp
                _mkl.omp.kmp_set_blocktime(ctypes.c_int(0))   # idle threads sleep at once
            lib = ctypes.CDLL(paths[0], mode=ctypes.RTLD_GLOBAL)
            fn = lib.cblas_gemm_bf16bf16f32
        except (OSError, AttributeError) as e:
            why = f"{paths[0]} did not load ({e})"
            continue
        fn.restype = None
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                       ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
        # mkl_rt would pick GNU OpenMP when numba has loaded libgomp (measured: the bf16 GEMMs
        # then ran at one core's speed); Intel OpenMP is the layer whose block time we set.
        # Before MKL's first call, so once per process.
        lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
        lib.MKL_Set_Threading_Layer.restype = ctypes.c_int
        lib.MKL_Set_Threading_Layer(_THREADING_SEQUENTIAL if _gnu_openmp_is_global() else _THREADING_INTEL)
        lib.MKL_Set_Num_Threads.argtypes = [ctypes.c_int]
        lib.MKL_Get_Max_Threads.restype = ctypes.c_int
        batch = getattr(lib, "cblas_sgemm_batch_strided", None)
        if batch is not None:
            batch.restype = None
            batch.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64,
                              ctypes.c_void_p, ctypes.c_int, ctypes.c_int64,
                              ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int]
        _mkl.opened = (lib, None)
        return _mkl.opened
    _mkl.opened = (False, why or "oneMKL (libmkl_rt) is not installed: pip install mkl")
    return _mkl.opened


def _gnu_openmp_is_global():
    """True when GNU OpenMP's omp_* functions are in the process's global symbol scope (torch
    puts its libgomp there: `import torch` before the first bf16 GEMM). MKL's Intel-OpenMP
    layer would then call libgomp's omp_get_thread_num from Intel OpenMP threads, and its
    threads split the work wrongly: measured, 1 in 90 GEMMs off by 70% with torch imported.
    MKL then runs sequentially (correct, one core). numba keeps its libgomp local: no conflict."""
    scope = ctypes.CDLL(None)
    if hasattr(scope, "omp_get_thread_num") and not hasattr(scope, "kmp_set_blocktime"):
        _mkl.single = ("GNU OpenMP (libgomp) is loaded globally, e.g. by torch, so MKL's bf16 GEMM "
                   "runs on one thread")
        return True
    return False


def single_thread_reason():
    """Why MKL runs on one thread whatever set_num_threads says (a sentence), or None."""
    _load()
    return _mkl.single


def available():
    """True when libmkl_rt loaded and the CPU has AMX-BF16 (or allow_without_amx() is on)."""
    return bool(_load())


def unavailable_reason():
    _load()
    return _mkl.why


class allow_without_amx:
    """`with bf16_mkl.allow_without_amx():` loads MKL on a CPU without AMX-BF16 too, so that this
    module's own code (the chunked head products, the batched float32 products, the thread pool
    hand-over) can be tested on any x86_64 machine. MKL's bf16 GEMM is correct there but slow:
    0.34-0.61x NumPy's float32 rate on a 2-core AMD EPYC with avx512_bf16 (benchmarks/RESULTS.md,
    "An AMD EPYC without AMX"), which is why the fast path otherwise needs amx_bf16. On exit the
    module's choice is what it was before the block (MKL stays loaded, its threads asleep). As a
    plain call it holds for the rest of the process (or until an enclosing block exits)."""

    def __init__(self):
        self._saved = (_mkl.lib, _mkl.why, _mkl.without_amx)
        _mkl.without_amx = True
        if _mkl.lib is False:                 # refused, perhaps for want of AMX: decide again
            _mkl.lib = None
        _load()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _mkl.lib, _mkl.why, _mkl.without_amx = self._saved
        return False


def set_num_threads(n):
    """MKL's thread count (its OpenMP pool); no-op when MKL is not loaded or runs sequentially."""
    if _mkl.lib and _mkl.single is None:
        _mkl.lib.MKL_Set_Num_Threads(int(n))
        if _mkl.omp is not None:      # a new team must not spin either
            _mkl.omp.kmp_set_blocktime(ctypes.c_int(0))


def get_num_threads():
    return int(_mkl.lib.MKL_Get_Max_Threads()) if _mkl.lib else 0


def library_path():
    return _mkl.lib._name if _mkl.lib else None


def _check(name, a, trans):
    if a.dtype != np.uint16 or a.ndim != 2 or not a.flags.c_contiguous:
        raise TypeError(f"gemm_bf16: {name} must be a C-contiguous 2-D uint16 (bf16) array, "
                        f"got {a.dtype} {a.shape} contiguous={a.flags.c_contiguous}")
    return (a.shape[1], a.shape[0]) if trans else a.shape


def check_gemm(a, b, trans_a, trans_b, out):
    """(M, N, K, out) of a bf16 GEMM's arguments, or a clear error; out allocated when None,
    zeroed when K = 0 (the one answer then). Shared by bf16_avx512.gemm_bf16."""
    m, k = _check("a", a, trans_a)
    k2, n = _check("b", b, trans_b)
    if k != k2:
        raise ValueError(f"gemm_bf16: op(a) is {m}x{k} but op(b) is {k2}x{n}")
    if out is None:
        out = np.empty((m, n), dtype=np.float32)
    elif out.shape != (m, n) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"gemm_bf16: out must be a C-contiguous float32 ({m}, {n}) array, "
                         f"got {out.dtype} {out.shape}")
    if k == 0:
        out.fill(0.0)
    return m, n, k, out


def gemm_bf16(a, b, trans_a=False, trans_b=False, out=None):
    """out (M, N) float32 = op(a) @ op(b), a and b bf16 bits (uint16), op = transpose if trans_*.
    a: (M, K), or (K, M) with trans_a;  b: (K, N), or (N, K) with trans_b."""
    lib = _load()
    if not lib:
        raise RuntimeError(f"gemm_bf16: the MKL fast path is unavailable: {_mkl.why}")
    m, n, k, out = check_gemm(a, b, trans_a, trans_b, out)
    if m == 0 or n == 0 or k == 0:
        return out
    if max(m, n) >= WIDE and min(m, n) <= CHUNK:
        _gemm_long(lib, a, b, trans_a, trans_b, m, n, k, out)
        return out
    lib.cblas_gemm_bf16bf16f32(_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS,
                               m, n, k, 1.0, a.ctypes.data, a.shape[1], b.ctypes.data, b.shape[1],
                               0.0, out.ctypes.data, n)
    return out


# An output this long on one side (the output head's: 512 x 50257 forward, 50257 x 768 for dW)
# is computed as its transpose, CHUNK rows at a time. MKL ran both products 2-3x slower in one
# call than as C^T = op(b)^T op(a)^T in chunks, plus a transpose of each chunk into place
# (benchmarks/RESULTS.md, "bf16 autocast, third session").
WIDE = 16384
CHUNK = 4096


def _gemm_long(lib, a, b, ta, tb, m, n, k, out):
    """out = op(a) @ op(b), one side of out >= WIDE, the other <= CHUNK: each block of CHUNK
    columns (rows) of out is the transpose of op(b)^T[block] @ op(a)^T (of op(b)^T @ op(a)^T[:,
    block]), which is a product of the same operands with the transpose flags flipped."""
    if _mkl.chunk.size < CHUNK * min(m, n):
        _mkl.chunk = np.empty(CHUNK * min(m, n), dtype=np.float32)
    _chunk = _mkl.chunk
    lda, ldb, item = a.shape[1], b.shape[1], a.itemsize
    flip_a, flip_b = (_NO_TRANS if ta else _TRANS), (_NO_TRANS if tb else _TRANS)   # op(x)^T of x
    if n >= m:                # out (m, long n): op(b)^T's rows are b's rows (tb) or b's columns
        for s in range(0, n, CHUNK):
            r = min(CHUNK, n - s)
            t = _chunk[:r * m].reshape(r, m)               # (r, m) = op(b)^T[s:s+r] @ op(a)^T
            lib.cblas_gemm_bf16bf16f32(_ROW_MAJOR, flip_b, flip_a, r, m, k, 1.0,
                                       b.ctypes.data + (s * ldb if tb else s) * item, ldb,
                                       a.ctypes.data, lda, 0.0, t.ctypes.data, m)
            transpose_into(t, out[:, s:s + r])
    else:                     # out (long m, n): op(a)^T's columns are a's columns (ta) or a's rows
        for s in range(0, m, CHUNK):
            r = min(CHUNK, m - s)
            t = _chunk[:n * r].reshape(n, r)               # (n, r) = op(b)^T @ op(a)^T[:, s:s+r]
            lib.cblas_gemm_bf16bf16f32(_ROW_MAJOR, flip_b, flip_a, n, r, k, 1.0, b.ctypes.data, ldb,
                                       a.ctypes.data + (s if ta else s * lda) * item, lda,
                                       0.0, t.ctypes.data, r)
            transpose_into(t, out[s:s + r])


# ----------------------------------------------------------------------------- the chunks' transpose
TRANSPOSE_TILE = 32                            # transpose_into: a 32 x 32 float32 tile is 4 KiB


@njit(parallel=True, cache=True)
def _transpose_into(src, dst):                 # src: (R, C)  dst: (C, R), may be strided
    R, C = src.shape
    for bi in prange((R + TRANSPOSE_TILE - 1) // TRANSPOSE_TILE):      # one band of src rows each
        i0 = bi * TRANSPOSE_TILE
        i1 = min(R, i0 + TRANSPOSE_TILE)
        for j0 in range(0, C, TRANSPOSE_TILE):
            for j in range(j0, min(C, j0 + TRANSPOSE_TILE)):
                for i in range(i0, i1):
                    dst[j, i] = src[i, j]


def transpose_into(src, dst):
    """dst[...] = src.T in tiles, in parallel (reference.transpose_into): the long bf16 GEMMs'
    chunks (below), 7x faster than NumPy's strided copy here."""
    if src.ndim != 2 or dst.shape != src.shape[::-1] or src.dtype != dst.dtype:
        raise ValueError(f"transpose_into: dst must be {src.shape[::-1]} {src.dtype}, got {dst.shape} {dst.dtype}")
    _transpose_into(src, dst)


# ----------------------------------------------------------------------------- float32, batched
def pool_active():
    """True when MKL is loaded and runs on its own threads, with its batched float32 GEMM: what
    `runtime.float32_gemm = "mkl"` needs (cli.setup_threads asks it for a bf16 run on MKL)."""
    return bool(_mkl.lib) and _mkl.single is None and hasattr(_mkl.lib, "cblas_sgemm_batch_strided")


def _operand(a):
    """(transpose flag, leading dimension) for BLAS reading the last two axes of a in place,
    or None when neither axis has unit stride (or the strides are not whole elements)."""
    item = a.itemsize
    s_row, s_col = a.strides[-2], a.strides[-1]
    if s_row % item or s_col % item:
        return None
    rows, cols = a.shape[-2], a.shape[-1]
    if s_col == item and s_row >= max(1, cols) * item:
        return False, s_row // item
    if s_row == item and s_col >= max(1, rows) * item:
        return True, s_col // item
    return None


def matmul(a, b, out=None):
    """np.matmul(a, b, out=out) for float32 stacks of matrices with the same leading shape (B, H, M, K) @
    (B, H, K, N), through MKL's cblas_sgemm_batch_strided: one call for each index of the
    leading axes but the last, which is the batch. Operands are read in place when their last
    two axes are a BLAS matrix (a transposed view is one); otherwise they are copied.

    Why: NumPy's OpenBLAS threads spin for a while after each call, and MKL's AMX GEMMs on the
    same two cores then ran 2-4x slower (benchmarks/RESULTS.md); a step under autocast keeps
    all of its products on MKL. `out` may be strided (rows of unit-stride elements: attention's
    (B, T, H, D) output seen as (B, H, T, D)); MKL writes it in place. The twin is np.matmul."""
    lib = _mkl.lib                              # never loads MKL: a float32 run keeps it out
    if not lib or not hasattr(lib, "cblas_sgemm_batch_strided"):
        return np.matmul(a, b, out=out)
    if (a.dtype != np.float32 or b.dtype != np.float32 or a.ndim < 3 or a.ndim != b.ndim
            or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2] or a.size == 0 or b.size == 0):
        return np.matmul(a, b, out=out)
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    lead = a.shape[:-2]
    if out is None:
        out = np.empty(lead + (m, n), dtype=np.float32)
    elif (out.shape != lead + (m, n) or out.dtype != np.float32 or _operand(out) != (False, out.strides[-2] // 4)
            or out.strides[-3] % 4 or out.strides[-3] < 0 or np.shares_memory(out, a) or np.shares_memory(out, b)):
        return np.matmul(a, b, out=out)
    ops = []
    for x in (a, b):
        op = _operand(x)
        if op is None or x.strides[-3] % x.itemsize or x.strides[-3] < 0:
            x = np.ascontiguousarray(x)
            op = _operand(x)
        ops.append((x, op))
    (a, (ta, lda)), (b, (tb, ldb)) = ops
    item = a.itemsize
    sa, sb, ldc, sc = a.strides[-3] // item, b.strides[-3] // item, out.strides[-2] // item, out.strides[-3] // item
    batched = sc >= ldc * m                     # MKL refuses outputs that interleave (sc < ldc m):
    lead = lead if batched else lead + (1,)     # those go one matrix a call
    for idx in np.ndindex(*lead[:-1]):
        pa = a.ctypes.data + sum(i * s for i, s in zip(idx, a.strides))
        pb = b.ctypes.data + sum(i * s for i, s in zip(idx, b.strides))
        pc = out.ctypes.data + sum(i * s for i, s in zip(idx, out.strides))
        lib.cblas_sgemm_batch_strided(_ROW_MAJOR, _TRANS if ta else _NO_TRANS, _TRANS if tb else _NO_TRANS,
                                      m, n, k, 1.0, pa, lda, sa, pb, ldb, sb, 0.0, pc, ldc,
                                      sc if batched else ldc * m, lead[-1])
    return out


def _check_float32_gemm(name, old=None):      # runtime.set(float32_gemm=...) calls it
    if name == "mkl" and not pool_active():
        raise RuntimeError("float32_gemm='mkl': " + (unavailable_reason() or single_thread_reason()
                                                      or "this MKL has no cblas_sgemm_batch_strided"))


APPLY["float32_gemm"] = _check_float32_gemm
