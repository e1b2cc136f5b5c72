"""Which dtype a product runs in, and on which GEMM: the machine under `autocast`.

amp.autocast (the user's switch) sets `runtime.autocast`; functional.Linear reads it. Under it
every Linear multiplies bf16 inputs with float32 accumulation and a float32 result
(numba_cpu.linear_forward / linear_backward on bf16 operands call `gemm` here; reference.py's
twins call reference.gemm_bf16); everything else stays float32.

The GEMM: oneMKL's cblas_gemm_bf16bf16f32 on a CPU with AMX-BF16 (kernels/bf16_mkl.py); our
own VDPBF16PS kernel on an AMD CPU with AVX512-BF16 (kernels/bf16_avx512.py: Zen 4 and 5);
on any other machine the readable twin (kernels/reference.gemm_bf16) computes the same
numbers slowly, and a warning says so once. `gemm_backend("reference")` forces the twin.
This is the one switch beside `K`: `K` picks the kernels, this picks the bf16 GEMM (`runtime.gemm`).
"""
import types
import warnings

from ..runtime import APPLY, runtime
from . import bf16_avx512, bf16_mkl, reference

DTYPES = ("bfloat16",)
_warning = types.SimpleNamespace(given=False)   # gemm's one warning that the twin runs


def _check_gemm(name, old=None):     # runtime.set(gemm=...) calls it: a fast path asked by name must exist
    if name == "mkl" and not bf16_mkl.available():
        raise RuntimeError(f"gemm_backend('mkl'): {bf16_mkl.unavailable_reason()}")
    if name == "avx512_bf16" and not bf16_avx512.available():
        raise RuntimeError(f"gemm_backend('avx512_bf16'): {bf16_avx512.unavailable_reason()}")


APPLY["gemm"] = _check_gemm


class gemm_backend:
    """`with gemm_backend("reference"):` forces the NumPy twin (as on a CPU with neither AMX nor
    AVX512-BF16); "mkl" and "avx512_bf16" require that fast path, "auto" picks the one this
    CPU has (MKL on AMX). Also a plain setter call. The choice is `runtime.gemm`."""

    def __init__(self, name):
        if name not in ("auto", "mkl", "avx512_bf16", "reference"):
            raise ValueError(f"gemm_backend: expected one of 'auto', 'mkl', 'avx512_bf16', 'reference', got {name!r}")
        self._prev = runtime.set(gemm=name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        runtime.set(**self._prev)
        return False


def get_gemm_backend():
    """"mkl", "avx512_bf16" or "reference": what a bf16 product runs on now."""
    if runtime.gemm != "auto":
        return runtime.gemm
    if bf16_mkl.available():
        return "mkl"
    return "avx512_bf16" if bf16_avx512.faster_than_float32() else "reference"


def unavailable_reason():
    """Why a bf16 product runs through the twin here: no AVX512-BF16 either, or (Intel without
    a usable AMX: MKL not loaded, or Cooper Lake) our VDPBF16PS GEMM is slower than the twin."""
    if bf16_mkl.available() or bf16_avx512.faster_than_float32():
        return ""
    if not bf16_avx512.available():
        return bf16_avx512.unavailable_reason()
    return (f"{bf16_mkl.unavailable_reason()}, and our AVX512-BF16 GEMM is slower than NumPy's "
            f"float32 on this {bf16_mkl.cpu_vendor() or 'non-AMD'} CPU (benchmarks/RESULTS.md)")


def fallback_reported():
    """The caller has told the user that the bf16 products run through the NumPy twin (pretrain's
    "Precision:" line says it): gemm's one-time warning is not repeated."""
    _warning.given = True


def gemm(a, b, trans_a=False, trans_b=False, out=None):
    """float32 (M, N) = op(a) @ op(b) for bf16 bits (uint16) a, b, on the chosen backend."""
    backend = get_gemm_backend()
    if backend == "mkl":
        return bf16_mkl.gemm_bf16(a, b, trans_a, trans_b, out)
    if backend == "avx512_bf16":
        return bf16_avx512.gemm_bf16(a, b, trans_a, trans_b, out)
    if runtime.gemm == "auto" and not _warning.given:
        _warning.given = True
        warnings.warn(f"autocast('bfloat16'): {unavailable_reason()}; the bf16 products run "
                      f"through the NumPy twin (same numbers, not faster than float32)", RuntimeWarning,
                      stacklevel=4)
    return reference.gemm_bf16(a, b, trans_a, trans_b, out)
