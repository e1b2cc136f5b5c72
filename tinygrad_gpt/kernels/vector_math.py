"""exp and tanh that vectorize inside numba kernels (numba_cpu.py's elementwise math),
and the float32 bit reinterpretation its bf16 rounding uses.

numba lowers math.exp / math.tanh to one scalar libm call per element (no SVML here), so a
loop around them runs one element at a time while NumPy's own exp and tanh use AVX-512.
For float32 we inline Cephes' expf and tanhf, written without branches so that LLVM
vectorizes them (8 float32 lanes: LLVM picks 256-bit AVX here); float64 (gradient checks)
keeps math.exp / math.tanh. Kernels call `_exp` and `_tanh`, which pick by dtype at compile
time.

numba's cache: numba_cpu.py's kernels are cached with `cache=True`, and the cache does not
notice edits to *this* file; after changing it, delete tinygrad_gpt/kernels/__pycache__
(or touch numba_cpu.py). Nothing here is cached itself: `inline="always"` puts these
functions into each kernel's IR, where they get the caller's fastmath flags.
"""
import math

import llvmlite.ir as llvm_ir
import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload


# Worst relative error against float64 on a sweep of float32 inputs: exp 1.2e-7 on [-20, 0]
# and 3e-7 on [-86.6, 88.7], tanh 1.4e-7 (NumPy's float32 exp 2.1e-7, tanh 1.1e-7).
# `inline="always"` inlines them into numba's IR, where they get the caller's fastmath flags.
@intrinsic
def _select(typingctx, cond, a, b):
    """`a if cond else b` as one LLVM select: no branch in numba's IR, so a loop around it
    still vectorizes (and inlining it does not trip numba's SSA checks)."""
    if cond != types.boolean or a != b:
        return None

    def codegen(context, builder, sig, args):
        return builder.select(args[0], args[1], args[2])
    return a(cond, a, b), codegen


@intrinsic
def _ldexp_f32(typingctx, y, n):
    """y * 2**n for float32 y and an integer n, by adding n to y's exponent field (valid while
    the result is a normal float32; `_exp_f32` only uses it there)."""
    if y != types.float32 or not isinstance(n, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        i32 = llvm_ir.IntType(32)
        e = args[1]
        if n.bitwidth != 32:
            e = builder.trunc(e, i32) if n.bitwidth > 32 else builder.sext(e, i32)
        bits = builder.add(builder.bitcast(args[0], i32), builder.shl(e, llvm_ir.Constant(i32, 23)))
        return builder.bitcast(bits, llvm_ir.FloatType())
    return types.float32(y, n), codegen


@intrinsic
def _f32_bits(typingctx, x):
    """A float32's bits as uint32 (a bitcast, no conversion): the bf16 rounding in numba_cpu."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], llvm_ir.IntType(32))
    return types.uint32(x), codegen


@njit(inline="always")
def _exp_f32(x):
    # exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 split in
    # a short exact part and a correction), exp(r) a degree-7 polynomial (Cephes expf).
    # Results below 2.5e-38 (x < -86.6) flush to 0 where NumPy returns subnormals.
    f = np.float32
    xc = min(f(89.0), max(f(-87.0), x))      # max(c, NaN) is c: the float -> int conversion stays defined
    n = math.floor(xc * f(1.44269504088896341) + f(0.5))
    nf = f(n)
    r = xc - nf * f(0.693359375)
    r = r - nf * f(-2.12194440e-4)
    p = f(1.9875691500e-4)
    p = p * r + f(1.3981999507e-3)
    p = p * r + f(8.3334519073e-3)
    p = p * r + f(4.1665795894e-2)
    p = p * r + f(1.6666665459e-1)
    p = p * r + f(5.0000001201e-1)
    y = _ldexp_f32(p * (r * r) + r + f(1.0), n)
    y = _select(x > f(-86.6), y, f(0.0))
    y = _select(x < f(88.7228394), y, f(np.inf))
    return _select(x == x, y, x)             # NaN in, NaN out


@njit(inline="always")
def _tanh_f32(x):
    # Cephes tanhf: below |x| = 0.625 an odd polynomial x + x^3 P(x^2); above it
    # sign(x) (1 - 2 / (exp(2|x|) + 1)), which has no cancellation there and tends to +-1
    # (exp overflows to inf: 2 / inf = 0). NaN goes the exp way and stays NaN.
    f = np.float32
    a = abs(x)
    z = x * x
    p = f(-5.70498872745e-3)
    p = p * z + f(2.06390887954e-2)
    p = p * z + f(-5.37397155531e-2)
    p = p * z + f(1.33314422036e-1)
    p = p * z + f(-3.33332819422e-1)
    small = p * z * x + x
    big = f(1.0) - f(2.0) / (_exp_f32(f(2.0) * a) + f(1.0))
    return _select(a < f(0.625), small, _select(x < f(0.0), -big, big))


def _exp(x):
    """exp for kernels: the vectorizable `_exp_f32` for float32, math.exp for float64."""
    return math.exp(x)


@overload(_exp, inline="always")
def _exp_by_dtype(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    return lambda x: math.exp(x)


def _tanh(x):
    """tanh for kernels: the vectorizable `_tanh_f32` for float32, math.tanh for float64."""
    return math.tanh(x)


@overload(_tanh, inline="always")
def _tanh_by_dtype(x):
    if x == types.float32:
        return lambda x: _tanh_f32(x)
    return lambda x: math.tanh(x)
