"""A bf16 GEMM of our own for AMD CPUs with AVX512-BF16 (Zen 4 and Zen 5): out (M, N) float32 =
op(a) @ op(b) for bf16 bits a, b (uint16), as kernels/bf16_mkl.py computes on AMX and
kernels/reference.gemm_bf16 (the readable twin) everywhere. It runs on any AVX512-BF16 CPU, but
on Intel's it was slower than NumPy's float32 (faster_than_float32).

Why: oneMKL's bf16 GEMM does not use AVX512-BF16 on these CPUs (it ran the step's products at
0.34-0.61x NumPy's float32 rate, benchmarks/RESULTS.md), while one VDPBF16PS instruction does
32 multiply-adds, twice an AVX-512 float32 FMA. PyTorch's oneDNN uses it; NumPy has no bf16.

How, in the layout BLIS made standard (Goto's algorithm):
  - op(b) is copied ("packed") in blocks of KC rows and NC columns into panels of NR = 32
    columns, each row pair (k, k+1) of a panel interleaved: b[k, n], b[k+1, n], b[k, n+1], ...
    -- one 64-byte vector holds rows k, k+1 of 16 columns, the operand VDPBF16PS wants;
  - op(a) is read in MR-row strips, the pair a[m, k], a[m, k+1] one 32-bit word broadcast to
    every lane: in place from a's rows, or packed (MC rows at a time) when a is transposed;
  - the micro-kernel keeps an MR x 32 tile of C in 2*MR vector registers and, for each row pair
    of the block, does 2*MR VDPBF16PS: acc[m, n] += a[m, k] b[k, n] + a[m, k+1] b[k+1, n].
The micro-kernel is a few lines of LLVM IR (`micro_kernel_ir`), compiled by llvmlite (numba's
own compiler, no new dependency) for this CPU; the loops around it and the packing are numba
(`_gemm`), numba's threads sharing out the column panels; a transposed a is packed (by each
thread), a plain one read in place. A portable variant of the same IR (plain
float multiplies and adds instead of the instruction) lets every CPU run and test the loops.

Numbers: each bf16 x bf16 product is exact in float32; the sums are float32, in an order that
differs from NumPy's, as with any BLAS. The instruction flushes subnormals, inputs and results
(below 1.2e-38), to 0; the twin and the portable kernel keep them. Tests: tests/test_bf16_avx512.py.
"""
import threading

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from . import bf16_mkl

MR, NR = 8, 32          # the micro-tile: 8 rows x 32 columns of C = 16 accumulator registers
MC, KC, NC = 512, 768, 4096     # blocks: a's MC x KC rows stay in L2, b's KC x NR panel in L1/L2

_lock = threading.Lock()
_kernels = {}           # "avx512_bf16" / "portable" -> (llvmlite engine, address), built once
class _cpu:             # why this GEMM cannot run here ("" where it can), found once
    why = None


# ----------------------------------------------------------------------------- the micro-kernel
def micro_kernel_ir(portable=False, mr=MR):
    """LLVM IR of `void kernel(a, b_panel, c, ldc, pairs, accumulate, a_row, a_pair)`:
    c[m, n] (+)= sum over p < pairs of a[m, 2p] b[2p, n] + a[m, 2p+1] b[2p+1, n], m < mr, n < 32,
    where the pair a[m, 2p], a[m, 2p+1] is the 32-bit word at a + m a_row + p a_pair (in bf16
    elements: a's own rows have a_row = K, a_pair = 2; a packed strip (pairs, mr, 2) has 2, 2 mr),
    b_panel is packed (pairs, 32, 2), and c is float32 with row stride ldc.
    accumulate=0 starts from zero, 1 adds to what c holds. portable=True spells the instruction
    out (widen to float32, multiply, add the odd then the even products): any x86-64 runs it."""
    dot = "@llvm.x86.avx512bf16.dpbf16ps.512"
    L = [f"declare <16 x float> {dot}(<16 x float>, <32 x bfloat>, <32 x bfloat>)" if not portable else "",
         "define void @kernel(ptr noalias %A, ptr noalias %B, ptr noalias %C, i64 %ldc, i64 %kp, i64 %acc, "
         "i64 %arow, i64 %apair) {",
         "entry:",
         "  %load = icmp ne i64 %acc, 0"]
    for r in range(mr):
        L += [f"  %cr{r} = mul i64 {r}, %ldc", f"  %ar{r} = mul i64 {r}, %arow"]
        for h in range(2):
            L += [f"  %co{r}_{h} = add i64 %cr{r}, {16 * h}",
                  f"  %cp{r}_{h} = getelementptr float, ptr %C, i64 %co{r}_{h}",
                  f"  %cl{r}_{h} = load <16 x float>, ptr %cp{r}_{h}, align 4",
                  f"  %c0_{r}_{h} = select i1 %load, <16 x float> %cl{r}_{h}, <16 x float> zeroinitializer"]
    L += ["  %none = icmp eq i64 %kp, 0", "  br i1 %none, label %exit, label %loop", "loop:",
          "  %p = phi i64 [0, %entry], [%pn, %loop]"]
    for r in range(mr):
        for h in range(2):
            L.append(f"  %acc{r}_{h} = phi <16 x float> [%c0_{r}_{h}, %entry], [%n{r}_{h}, %loop]")
    L.append("  %bo = mul i64 %p, 64")                      # 32 columns x 2 rows of bf16 per pair
    for h in range(2):
        L += [f"  %bo{h} = add i64 %bo, {32 * h}",
              f"  %bp{h} = getelementptr i16, ptr %B, i64 %bo{h}",
              f"  %b{h} = load <32 x bfloat>, ptr %bp{h}, align 2"]
        if portable:
            L.append(f"  %bf{h} = fpext <32 x bfloat> %b{h} to <32 x float>")
    L.append("  %ao = mul i64 %p, %apair")
    odd = ", ".join(f"i32 {2 * i + 1}" for i in range(16))
    even = ", ".join(f"i32 {2 * i}" for i in range(16))
    for r in range(mr):
        L += [f"  %ao{r} = add i64 %ao, %ar{r}",
              f"  %ap{r} = getelementptr i16, ptr %A, i64 %ao{r}",
              f"  %as{r} = load i32, ptr %ap{r}, align 2",     # the pair a[m, 2p], a[m, 2p+1]
              f"  %av{r} = insertelement <16 x i32> poison, i32 %as{r}, i64 0",
              f"  %aw{r} = shufflevector <16 x i32> %av{r}, <16 x i32> poison, <16 x i32> zeroinitializer",
              f"  %ab{r} = bitcast <16 x i32> %aw{r} to <32 x bfloat>"]
        if portable:
            L.append(f"  %af{r} = fpext <32 x bfloat> %ab{r} to <32 x float>")
        for h in range(2):
            if not portable:
                L.append(f"  %n{r}_{h} = call <16 x float> {dot}(<16 x float> %acc{r}_{h}, "
                         f"<32 x bfloat> %ab{r}, <32 x bfloat> %b{h})")
                continue
            L += [f"  %pr{r}_{h} = fmul <32 x float> %af{r}, %bf{h}",
                  f"  %po{r}_{h} = shufflevector <32 x float> %pr{r}_{h}, <32 x float> poison, <16 x i32> <{odd}>",
                  f"  %pe{r}_{h} = shufflevector <32 x float> %pr{r}_{h}, <32 x float> poison, <16 x i32> <{even}>",
                  f"  %t{r}_{h} = fadd <16 x float> %acc{r}_{h}, %po{r}_{h}",
                  f"  %n{r}_{h} = fadd <16 x float> %t{r}_{h}, %pe{r}_{h}"]
    L += ["  %pn = add i64 %p, 1", "  %done = icmp eq i64 %pn, %kp",
          "  br i1 %done, label %exit, label %loop", "exit:"]
    tile = [(r, h) for r in range(mr) for h in range(2)]
    L += [f"  %f{r}_{h} = phi <16 x float> [%c0_{r}_{h}, %entry], [%n{r}_{h}, %loop]" for r, h in tile]
    L += [f"  store <16 x float> %f{r}_{h}, ptr %cp{r}_{h}, align 4" for r, h in tile]
    L.append("  ret void\n}")
    return "\n".join(line for line in L if line)


def _build(kind):
    """Compile the micro-kernel for this CPU; returns its address (kept alive in _kernels)."""
    from numba.core.compiler_lock import global_compiler_lock
    with _lock, global_compiler_lock:         # LLVM's context is numba's too: not while it compiles
        if kind in _kernels:
            return _kernels[kind][1]
        import llvmlite.binding as llvm
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        module = llvm.parse_assembly(micro_kernel_ir(portable=(kind == "portable")))
        module.verify()
        machine = llvm.Target.from_default_triple().create_target_machine(
            cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3)
        builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
        builder.getModulePassManager().run(module, builder)
        engine = llvm.create_mcjit_compiler(module, machine)
        engine.finalize_object()
        _kernels[kind] = (engine, engine.get_function_address("kernel"))
        return _kernels[kind][1]


def cpu_has_avx512_bf16():
    """True when /proc/cpuinfo lists avx512_bf16 (and LLVM agrees this CPU has it)."""
    return not _missing()


def _missing():
    if "avx512_bf16" not in bf16_mkl.cpu_flags():
        return "this CPU has neither AMX-BF16 nor AVX512-BF16 (avx512_bf16 not in /proc/cpuinfo)"
    try:
        import llvmlite.binding as llvm
        if llvm.get_host_cpu_features().get("avx512bf16"):
            return ""
    except RuntimeError:                      # llvmlite cannot read this host's features
        pass
    return "/proc/cpuinfo lists avx512_bf16 but LLVM does not see it on this CPU"


def available():
    """True where this GEMM runs: AVX512-BF16 in the CPU (the fast path where also
    faster_than_float32(); AMX CPUs use MKL)."""
    if _cpu.why is None:
        _cpu.why = _missing()
    return not _cpu.why


def unavailable_reason():
    available()
    return _cpu.why


def faster_than_float32():
    """True on AMD (Zen 4, Zen 5), where VDPBF16PS does twice the work of a float32 FMA and this
    GEMM ran the step's products at 1.4x NumPy's float32 OpenBLAS. On Intel it does the same
    work as two FMA ports: on an AMX Xeon it ran them at 0.3-0.7x NumPy's float32, slower
    than the twin (benchmarks/RESULTS.md), so autocast's "auto" does not pick it there."""
    return available() and bf16_mkl.cpu_vendor() == "AuthenticAMD"


# ----------------------------------------------------------------------------- packing and the loops
@intrinsic
def _call(typingctx, addr, a_ptr, b_ptr, c_ptr, ldc, pairs, accumulate, a_row, a_pair):
    """Call the micro-kernel at address `addr` (an int): numba has no function pointers of its
    own, and passing the address keeps `_gemm` cacheable (the address changes every process)."""
    sig = types.void(*([types.int64] * 9))

    def codegen(context, builder, signature, args):
        import llvmlite.ir as ir
        i64, ptr = ir.IntType(64), ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [ptr, ptr, ptr, i64, i64, i64, i64, i64])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        builder.call(fn, [builder.inttoptr(args[1], ptr), builder.inttoptr(args[2], ptr),
                          builder.inttoptr(args[3], ptr)] + list(args[4:]))
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _widen(typingctx, bits):
    """bf16 bits (uint16) -> float32: the bits become the float's upper half (a bitcast)."""
    def codegen(context, builder, signature, args):
        import llvmlite.ir as ir
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(wide, ir.FloatType())
    return types.float32(types.uint16), codegen


@njit(cache=True)
def _pack(x, k_major, r0, rows, k0, kc, out, out32):
    """out (pairs, W, 2) <- rows r0:r0+rows, columns k0:k0+kc of an operand in bf16, its pairs
    (k, k+1) side by side, zeros past the edges. The operand is x itself, or x^T when k_major
    (x indexed [k, row]): op(a) is a, or a^T when a is transposed; op(b)^T is b when b is."""
    W = out.shape[1]
    pairs = (kc + 1) // 2
    if k_major and rows == W and kc % 2 == 0:  # interleave rows k and k+1 of x: one 32-bit word
        for p in range(pairs):                 # a pair, x[k] its low half
            for r in range(W):
                out32[p, r] = np.uint32(x[k0 + 2 * p, r0 + r]) | (np.uint32(x[k0 + 2 * p + 1, r0 + r]) << 16)
        return
    for p in range(pairs):                     # edges, odd kc, and a strip of a itself
        for r in range(W):
            for e in range(2):
                k = 2 * p + e
                if r < rows and k < kc:
                    out[p, r, e] = x[k0 + k, r0 + r] if k_major else x[r0 + r, k0 + k]
                else:
                    out[p, r, e] = 0


@njit(cache=True)
def _pack_b(b, b32, tb, n0, cols, k0, kc, out, out32):   # out: (pairs, NR, 2) <- op(b)[k0:k0+kc, n0:n0+cols]
    if tb and b32.shape[0] > 0 and cols == NR and kc % 2 == 0:   # b is (N, K), K even: the pairs
        for c in range(NR):                                       # are b's own 32-bit words
            for p in range(kc // 2):
                out32[p, c] = b32[n0 + c, k0 // 2 + p]
        return
    _pack(b, not tb, n0, cols, k0, kc, out, out32)


@njit(cache=True, parallel=True)
def _gemm(kernel, a, ta, b, b32, tb, out, apack, apack32, bpack, bpack32, tiles):
    """out = op(a) @ op(b). One parallel region: thread t owns the column panels j = t, t + T, ...
    (T threads), packs them, and multiplies every row strip of op(a) into them. op(a) is read in
    place when a is not transposed (a pair a[m, k], a[m, k+1] is adjacent in memory; an odd K's
    last column is added at the end, a rank-1 update); a transposed a is packed, by each thread."""
    M, N = out.shape
    K = a.shape[0] if ta else a.shape[1]
    T = apack.shape[0]
    direct = not ta
    kd = K - K % 2 if direct else K           # the columns the micro-kernel covers
    lda = np.int64(a.shape[1])
    base, abase = out.ctypes.data, a.ctypes.data
    for t in prange(T):
        tile = tiles[t]
        for jc in range(0, N, NC):
            nc = min(NC, N - jc)
            panels = (nc + NR - 1) // NR
            for pc in range(0, kd, KC):
                kc = min(KC, kd - pc)
                pairs = np.int64((kc + 1) // 2)
                accumulate = np.int64(1 if pc > 0 else 0)
                for j in range(t, panels, T):
                    _pack_b(b, b32, tb, jc + j * NR, min(NR, nc - j * NR), pc, kc, bpack[j], bpack32[j])
                for ic in range(0, M, MC):
                    mc = min(MC, M - ic)
                    strips = (mc + MR - 1) // MR
                    if not direct:
                        for i in range(strips):
                            _pack(a, ta, ic + i * MR, min(MR, mc - i * MR), pc, kc, apack[t, i], apack32[t, i])
                    for j in range(t, panels, T):
                        bp = np.int64(bpack[j].ctypes.data)
                        cols = min(NR, nc - j * NR)
                        for i in range(strips):
                            rows = min(MR, mc - i * MR)
                            r0, c0 = ic + i * MR, jc + j * NR
                            if direct and rows == MR:      # pairs straight from a's rows
                                ap, a_row, a_pair = np.int64(abase + (r0 * lda + pc) * 2), lda, np.int64(2)
                            else:
                                if direct:                 # a last, short strip: packed, zero rows below
                                    _pack(a, False, r0, rows, pc, kc, apack[t, i], apack32[t, i])
                                ap, a_row, a_pair = np.int64(apack[t, i].ctypes.data), np.int64(2), np.int64(2 * MR)
                            if rows == MR and cols == NR:
                                _call(kernel, ap, bp, np.int64(base + (r0 * N + c0) * 4), np.int64(N), pairs,
                                      accumulate, a_row, a_pair)
                            else:                          # an edge tile: through a full MR x NR scratch
                                tile[:] = 0
                                if accumulate:
                                    tile[:rows, :cols] = out[r0:r0 + rows, c0:c0 + cols]
                                _call(kernel, ap, bp, np.int64(tile.ctypes.data), np.int64(NR), pairs,
                                      np.int64(1), a_row, a_pair)
                                out[r0:r0 + rows, c0:c0 + cols] = tile[:rows, :cols]
            if kd == 0:                                    # K = 1: only the rank-1 update below
                for j in range(t, panels, T):
                    out[:, jc + j * NR:jc + min(nc, (j + 1) * NR)] = 0
            if kd < K:                                     # odd K, a in place: + a[:, K-1] b[K-1, :]
                for j in range(t, panels, T):
                    for m in range(M):
                        x = _widen(a[m, K - 1])
                        for n in range(jc + j * NR, jc + min(nc, (j + 1) * NR)):
                            out[m, n] += x * _widen(b[n, K - 1] if tb else b[K - 1, n])


def gemm_bf16(a, b, trans_a=False, trans_b=False, out=None, kernel="auto"):
    """out (M, N) float32 = op(a) @ op(b), a and b bf16 bits (uint16), op = transpose if trans_*.
    a: (M, K), or (K, M) with trans_a;  b: (K, N), or (N, K) with trans_b.
    kernel="auto" runs VDPBF16PS where the CPU has it, "portable" the same loops on any CPU."""
    if kernel == "auto":
        if not available():
            raise RuntimeError(f"gemm_bf16: {_cpu.why}")
        kernel = "avx512_bf16"
    elif kernel != "portable":
        raise ValueError(f"gemm_bf16: kernel must be 'auto' or 'portable', got {kernel!r}")
    m, n, k, out = bf16_mkl.check_gemm(a, b, trans_a, trans_b, out)
    if m == 0 or n == 0 or k == 0:
        return out
    from numba import get_num_threads
    threads = get_num_threads()
    pairs = (min(KC, k) + 1) // 2
    panels = (min(NC, n) + NR - 1) // NR
    apack = np.empty((threads, (min(MC, m) + MR - 1) // MR, pairs, MR, 2), np.uint16)
    bpack = np.empty((panels, pairs, NR, 2), np.uint16)
    b32 = b.view(np.uint32) if trans_b and k % 2 == 0 else np.empty((0, 0), np.uint32)
    tiles = np.empty((threads, MR, NR), np.float32)
    _gemm(np.int64(_build(kernel)), a, bool(trans_a), b, b32, bool(trans_b), out,
          apack, apack.view(np.uint32).reshape(apack.shape[:-1]),
          bpack, bpack.view(np.uint32).reshape(bpack.shape[:-1]), tiles)
    return out
