"""The step's matrix products in float32 (NumPy's OpenBLAS) and bf16 (oneMKL on AMX, ours on
AVX512-BF16), the float32 -> bf16 conversion, and the two thread pools taking turns.

    python benchmarks/bench_bf16_gemm.py                 # 124M, batch 2 x 256, autocast's GEMM
    python benchmarks/bench_bf16_gemm.py --threads 2
    python benchmarks/bench_bf16_gemm.py --without-amx   # MKL's bf16 GEMM on a CPU without AMX
    python benchmarks/bench_bf16_gemm.py --gemm avx512_bf16   # ours (kernels/bf16_avx512.py)

Each product is timed in the layout the step uses: y = x W^T (W transposed), dx = dy W,
dW = dy^T x (dy transposed); the attention's products plainly.

Prints GFLOP/s per shape (best of --repeats), the whole step's GEMM time in each precision
(common.step_gemms), the conversion's cost per element (NumPy twin vs numba),
and "alternating": a float32 NumPy GEMM and a bf16 MKL GEMM called in turn, as a training
step does, each timed alone (if an idle pool spun, the other one would slow down).
"""
import argparse
import statistics
import sys
import time

import numpy as np

import common as bench  # benchmarks/common.py: the machine line, the timer, the warm-up rule, the step's GEMMs


def layout(index, total):
    """(trans_a, trans_b) of step_gemms' product number `index`, as the step calls it: the
    Linears' and the head's come in threes (forward y = x W^T, dx = dy W, dW = dy^T x), the
    attention's six products (before the head's three) plainly."""
    if total - 9 <= index < total - 3:
        return False, False
    return [(False, True), (False, False), (True, False)][index % 3]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="124M")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--repeats", type=int, default=30,
                   help="timed calls per product after its warm-up; the best is kept (5 varied 2x run to run)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--gemm", choices=["auto", "mkl", "avx512_bf16"], default="auto",
                   help="the bf16 GEMM: autocast's choice on this CPU (default), oneMKL, or ours")
    p.add_argument("--without-amx", action="store_true",
                   help="load MKL on a CPU without AMX-BF16 too (bf16_mkl.allow_without_amx): what its bf16 GEMM "
                        "does there")
    args = p.parse_args()
    from tinygrad_gpt.kernels import bf16_avx512, bf16_mkl, numba_cpu, reference as R
    from tinygrad_gpt.kernels.threads import set_num_threads
    from tinygrad_gpt.model import get_config
    if args.without_amx:
        bf16_mkl.allow_without_amx()
    threads = set_num_threads(args.threads)
    print(f"# {bench.cpu_line()}")
    print(f"# {bench.runtime_line(threads)}")
    fast, name = bench.bf16_gemm() if args.gemm == "auto" else (None, args.gemm)
    if fast is None and args.gemm == "auto":
        sys.exit(f"bench_bf16_gemm: no bf16 fast path: {name}")
    if (name == "mkl" and not bf16_mkl.available()) or (name == "avx512_bf16" and not bf16_avx512.available()):
        sys.exit(f"bench_bf16_gemm: no bf16 fast path: "
                 f"{bf16_mkl.unavailable_reason() if name == 'mkl' else bf16_avx512.unavailable_reason()}")
    if name == "mkl":
        print(f"# {threads} threads; bf16 GEMM: MKL {bf16_mkl.library_path()} ({bf16_mkl.get_num_threads()} threads)")
        gemm16 = bf16_mkl.gemm_bf16
    else:
        print(f"# {threads} threads; bf16 GEMM: ours, VDPBF16PS (kernels/bf16_avx512.py, numba's threads)")
        gemm16 = bf16_avx512.gemm_bf16
    cfg = get_config(args.model)
    rng = np.random.default_rng(0)
    rows, t32, t16 = [], 0.0, 0.0
    gemms = bench.step_gemms(cfg, args.batch, args.seq)
    shapes = {}                                  # (m, k, n, ta, tb) -> (a, b, their bf16 bits)
    for index, (count, m, k, n) in enumerate(gemms):
        ta, tb = layout(index, len(gemms))
        if (m, k, n, ta, tb) not in shapes:
            a = rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32)
            b = rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32)
            shapes[(m, k, n, ta, tb)] = (a.T if ta else a, b.T if tb else b, R.to_bf16(a), R.to_bf16(b),
                                         np.empty((m, n), np.float32))     # the output, written in place
    # every bf16 product first, then every float32 one: OpenBLAS's workers spin for up to ~0.1 s
    # after a NumPy float32 product and slow whatever runs next on the two cores ("alternating"
    # below shows how much), so timing each bf16 product right after its float32 twin measured
    # the spin, not MKL (this table printed 351 GFLOP/s for 512x768x768 where MKL alone does ~1,200)
    b16s = {key: bench.best_time(lambda: gemm16(ab, bb, key[3], key[4], out=c), args.repeats)
            for key, (_, _, ab, bb, c) in shapes.items()}
    time.sleep(0.5)
    f32s = {key: bench.best_time(lambda: np.matmul(a, b, out=c), args.repeats)
            for key, (a, b, _, _, c) in shapes.items()}
    for key in shapes:
        rows.append(key + (f32s[key], b16s[key]))
    for index, (count, m, k, n) in enumerate(gemms):
        key = (m, k, n) + layout(index, len(gemms))
        t32 += count * f32s[key]
        t16 += count * b16s[key]
    print(f"\n| M x K x N | layout | float32 NumPy GFLOP/s | bf16 {name} GFLOP/s | speed-up |\n|---|---|---|---|---|")
    for m, k, n, ta, tb, f32, b16 in rows:
        g = 2.0 * m * k * n / 1e9
        shape = ("a^T" if ta else "a") + " " + ("b^T" if tb else "b")
        print(f"| {m}x{k}x{n} | {shape} | {g / f32:.0f} | {g / b16:.0f} | {f32 / b16:.2f}x |")
    gflop = sum(c * 2.0 * m * k * n for c, m, k, n in gemms) / 1e9     # full T x T attention products
    print(f"\nthe step's {gflop:.0f} GFLOP: float32 {t32:.3f} s ({gflop / t32:.0f} GFLOP/s), "
          f"bf16 {t16:.3f} s ({gflop / t16:.0f} GFLOP/s), {t32 / t16:.2f}x")

    x = rng.standard_normal(512 * 3072, dtype=np.float32)
    tn = bench.best_time(lambda: R.to_bf16(x), args.repeats)
    tb = bench.best_time(lambda: numba_cpu.to_bf16(x), args.repeats)
    tc = bench.best_time(lambda: x.copy(), args.repeats)
    print(f"\nfloat32 -> bf16 of a 512x3072 activation: NumPy twin {tn * 1e3:.2f} ms, numba {tb * 1e3:.2f} ms "
          f"(a plain float32 copy: {tc * 1e3:.2f} ms)")

    m, k, n = args.batch * args.seq, cfg["emb_dim"], 4 * cfg["emb_dim"]
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    ab, bb = R.to_bf16(a), R.to_bf16(b)
    c = np.empty((m, n), np.float32)
    g = 2.0 * m * k * n / 1e9
    time.sleep(0.5)                              # OpenBLAS's workers asleep again: bf16 alone first
    alone16 = bench.best_time(lambda: gemm16(ab, bb, out=c), args.repeats)
    alone32 = bench.best_time(lambda: np.matmul(a, b, out=c), args.repeats)
    s32, s16 = [], []
    for _ in range(10 * args.repeats):
        s32.append(bench.timed(lambda: np.matmul(a, b, out=c))[0])
        s16.append(bench.timed(lambda: gemm16(ab, bb, out=c))[0])
    print(f"\nalternating {m}x{k}x{n} (median of {len(s32)} pairs) vs each alone (best):")
    print(f"  float32 NumPy: {g / statistics.median(s32):.0f} GFLOP/s alternating, {g / alone32:.0f} alone")
    print(f"  bf16 {name}: {g / statistics.median(s16):.0f} GFLOP/s alternating, {g / alone16:.0f} alone")


if __name__ == "__main__":
    main()
