"""The command-line layer: what the pretrain, generate and explain commands share.

This room owns argument-parsing conventions (a mistake is one line on stderr and exit code 2,
never argparse's usage block or a traceback) and the runtime set-up a command does once for
its process: one thread count for BLAS, numba and MKL, glibc's allocator tuned (memory.py), the
kernel backend chosen: the runtime's settings (runtime.py), set once here. The
commands sit beside it, each a `main(argv)` over a `build_parser()`: cli/pretrain/ (a package:
run, flags, config, corpus, saving), cli/generate.py, cli/prepare_data.py, cli/plot.py, and
explain/cli.py (beside the tracer it drives); examples/*.py are two-line wrappers over them.
Nothing below the CLI imports this package.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ..runtime import runtime

USAGE_ERROR = 2


class UsageError(ValueError):
    """A mistake in what the user asked for: one line, exit code 2, nothing written."""


class Parser(argparse.ArgumentParser):
    def error(self, message):                  # one line, not argparse's usage block
        raise UsageError(f"{message} (see --help)")


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):        # no "(default: None)" after a help that says it
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def usage_error(prog: str, error: Exception) -> int:
    """Print `prog: error: message` on one line of stderr; the exit code for it."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return USAGE_ERROR


def add_runtime_flags(p: argparse.ArgumentParser, threads_help: str, kernels_help: str,
                      kernels_default: str | None = None) -> None:
    """--threads and --kernels, the same two flags in every command."""
    p.add_argument("--threads", type=int, default=None, help=threads_help)
    p.add_argument("--kernels", choices=["numpy", "numba"], default=kernels_default, help=kernels_help)


def select_kernels(name: str | None) -> None:
    """A command owns its process: the plain setter (None keeps the default from the environment)."""
    if name:
        from ..kernels import set_backend
        set_backend(name)


def setup_threads(threads: int | None = None, warm_up: bool = False, precision: str = "float32") -> str:
    """The runtime a command's process runs with, set once: one thread count for the pools
    (OpenBLAS, numba, and oneMKL's when precision is "bfloat16": kernels/threads.py), freed memory
    kept (memory.py), the kernels compiled (when warm_up), and for a bf16 run on oneMKL the
    float32 stacks on MKL too (runtime.py says why); returns a line describing the runtime."""
    import numba
    from ..kernels import bf16_mkl, get_backend, precision as bf16
    runtime.set(threads=threads, allocator="keep")
    layer = ""
    if warm_up and get_backend() == "numba":
        from ..kernels import numba_cpu
        numba_cpu.warmup(verbose=True)
        layer = f" ({numba.threading_layer()} threading layer)"
    if precision == "bfloat16" and bf16.get_gemm_backend() == "mkl":   # loads MKL, after numba's pool
        runtime.set(threads=runtime.threads)   # started; then the same count everywhere
        if bf16_mkl.pool_active():
            runtime.set(float32_gemm="mkl")
    return runtime_line(runtime.threads, precision, layer)


def runtime_line(threads: int, precision: str, layer: str = "") -> str:
    """The runtime a command prints at start: numpy and its BLAS kernel, numba, the kernels,
    the thread count and the precision (benchmarks print it for the plain API too)."""
    import numba
    from threadpoolctl import threadpool_info
    from ..kernels import get_backend
    blases = [i for i in threadpool_info() if i.get("user_api") == "blas"]   # numba may load scipy's too
    blas = next((i for i in blases if "numpy" in i.get("filepath", "")), blases[0] if blases else {})
    arch = blas.get("architecture", "")
    return (f"Runtime: numpy {np.__version__} ({blas.get('internal_api', '?')} {blas.get('version', '')} "
            f"{arch}{blas_kernel_note(arch)}), numba {numba.__version__}{layer}, kernels {get_backend()}, "
            f"{threads} threads, {precision}")


# OpenBLAS's kernel families with AVX-512 GEMM kernels (its names, as threadpoolctl reports them)
_AVX512_KERNELS = {"skylakex", "cooperlake", "sapphirerapids"}


def blas_kernel_note(architecture: str, environ=None, flags=None) -> str:
    """", forced by OPENBLAS_CORETYPE=X ..." when that variable picked NumPy's BLAS kernel
    (", OPENBLAS_CORETYPE=X is set" when OpenBLAS reports another kernel), else "".

    The variable is the user's (we never change it), but it can cost a lot: on a 2-core AMD EPYC
    with AVX-512, OPENBLAS_CORETYPE=Haswell ran the step's float32 GEMMs at 206 GFLOP/s, the kernel
    OpenBLAS picks by itself there (SkylakeX) at 399 (benchmarks/RESULTS.md, "An AMD EPYC without
    AMX"). So the runtime line says so, and says when the CPU could run faster kernels."""
    environ = os.environ if environ is None else environ
    forced = environ.get("OPENBLAS_CORETYPE")
    if not forced:
        return ""
    if forced.lower() != architecture.lower():
        return f", OPENBLAS_CORETYPE={forced} is set"
    if flags is None:
        from ..kernels.bf16_mkl import cpu_flags
        flags = cpu_flags()
    note = f", forced by OPENBLAS_CORETYPE={forced}"
    if "avx512f" in flags and architecture.lower() not in _AVX512_KERNELS:
        note += " on a CPU with AVX-512: unset it for faster float32 GEMMs"
    return note
