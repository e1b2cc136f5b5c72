"""Time every kernel twin: reference.py (NumPy) against numba_cpu.py, at GPT-2 124M sizes.

    python benchmarks/bench_kernels.py [--dtype float32|float64] [--min-time 0.3]

Prints one row per kernel: shape, median ms of each backend (after warm-up), the speedup
(numpy / numba) and the largest difference between the two outputs, relative to the
output's largest magnitude. Sizes: N = B*T = 512 rows, C = 768, V = 50257, attention
B=2, H=12, T=256, D=64, GELU on (512, 4*768), AdamW on 10M parameters (x12.4 for 124M),
the dropout masks of one layer.
"""
import argparse
import os
import statistics

import numpy as np

import common as bench  # benchmarks/common.py: paths, the machine line, the timer, the warm-up rule

from tinygrad_gpt.kernels import numba_cpu as NB      # noqa: E402
from tinygrad_gpt.kernels import reference as R       # noqa: E402

N, C, V = 512, 768, 50257
B, H, T, D = 2, 12, 256, 64
ADAMW_N, GPT2_PARAMS = 10_000_000, 124_000_000


def median_ms(fn, args, min_time, min_runs=5):
    """Median milliseconds of fn(*args) at its steady state (common.warm_up's rule), over at least
    min_runs calls and min_time seconds (at most 50 calls)."""
    bench.warm_up(lambda: fn(*args))
    times = []
    t_end = bench.now() + min_time
    while len(times) < min_runs or bench.now() < t_end:
        times.append(bench.timed(fn, *args)[0])
        if len(times) >= 50:
            break
    return 1e3 * statistics.median(times)


def max_rel_diff(a, b):
    """Largest |a - b| over all outputs, relative to the largest |a|."""
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    worst = 0.0
    for x, y in zip(a, b):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        worst = max(worst, float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-30)))
    return worst


def cases(dt, rng):
    def randn(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(dt)

    x, dy = randn(N, C), randn(N, C)
    w, b = randn(C, scale=0.1) + dt(1.0), randn(C, scale=0.1)
    _, mean, rstd = R.layernorm_forward(x, w, b)
    yield "layernorm_forward", f"({N}, {C})", R.layernorm_forward, NB.layernorm_forward, (x, w, b)
    yield ("layernorm_backward", f"({N}, {C})", R.layernorm_backward, NB.layernorm_backward,
           (dy, x, w, mean, rstd))

    h, dh = randn(N, 4 * C), randn(N, 4 * C)
    yield "gelu_forward", f"({N}, {4 * C})", R.gelu_forward, NB.gelu_forward, (h,)
    yield "gelu_backward", f"({N}, {4 * C})", R.gelu_backward, NB.gelu_backward, (dh, h)

    logits, dlog = randn(N, V, scale=2.0), randn(N, V)
    y = R.softmax_forward(logits)
    ly = R.log_softmax_forward(logits)
    yield "softmax_forward", f"({N}, {V})", R.softmax_forward, NB.softmax_forward, (logits,)
    yield "softmax_backward", f"({N}, {V})", R.softmax_backward, NB.softmax_backward, (dlog, y)
    yield ("log_softmax_forward", f"({N}, {V})", R.log_softmax_forward, NB.log_softmax_forward,
           (logits,))
    yield ("log_softmax_backward", f"({N}, {V})", R.log_softmax_backward,
           NB.log_softmax_backward, (dlog, ly))
    del y, ly, dlog

    targets = rng.integers(0, V, N)
    targets[::17] = -100
    _, lse = R.cross_entropy_forward(logits, targets)
    yield ("cross_entropy_forward", f"({N}, {V})", R.cross_entropy_forward,
           NB.cross_entropy_forward, (logits, targets))
    yield ("cross_entropy_backward", f"({N}, {V})", R.cross_entropy_backward,
           NB.cross_entropy_backward, (logits, targets, lse, 1.0 / N))
    del logits

    q, k, v, dout = (randn(B, H, T, D) for _ in range(4))
    keep = (rng.random((B, H, T, T)) >= 0.1).astype(dt)
    shape = f"({B}, {H}, {T}, {D})"
    _, att = R.attention_forward(q, k, v)
    yield "attention_forward causal", shape, R.attention_forward, NB.attention_forward, (q, k, v)
    yield ("attention_backward causal", shape, R.attention_backward, NB.attention_backward,
           (dout, q, k, v, att))
    _, att = R.attention_forward(q, k, v, True, keep, 0.1)
    yield ("attention_forward +dropout", shape, R.attention_forward, NB.attention_forward,
           (q, k, v, True, keep, 0.1))
    yield ("attention_backward +dropout", shape, R.attention_backward, NB.attention_backward,
           (dout, q, k, v, att, keep, 0.1))

    ids = rng.integers(0, V, N)
    yield ("embedding_backward", f"({N}, {C}) -> ({V}, {C})", R.embedding_backward,
           NB.embedding_backward, (dy, ids, V))

    xk = (rng.random((N, C)) >= 0.1).astype(dt)
    yield "dropout_forward", f"({N}, {C})", R.dropout_forward, NB.dropout_forward, (x, xk, 0.1)
    yield "dropout_backward", f"({N}, {C})", R.dropout_backward, NB.dropout_backward, (dy, xk, 0.1)
    hk = (rng.random((N, 4 * C)) >= 0.1).astype(dt)
    yield "dropout_forward", f"({N}, {4 * C})", R.dropout_forward, NB.dropout_forward, (h, hk, 0.1)

    # the masks themselves (a 124M step draws 25 of the first shape and 12 of the second); a
    # generator seeded afresh in each call, so that both backends draw the same numbers
    for mask in ((2, T, C), (B, H, T, T)):
        yield ("keep_mask p=0.1", str(mask), lambda s: R.keep_mask(np.random.default_rng(5), s, 0.1),
               lambda s: NB.keep_mask(np.random.default_rng(5), s, 0.1), (mask,))


def adamw_case(dt, rng):
    p = rng.standard_normal(ADAMW_N).astype(dt)
    g = rng.standard_normal(ADAMW_N).astype(dt)
    state = {name: (p.copy(), np.zeros_like(p), np.zeros_like(p)) for name in ("numpy", "numba")}
    hyper = (6e-4, 0.9, 0.95, 1e-8, 0.1, 10)
    R.adamw_step(*state["numpy"][:1], g, *state["numpy"][1:], *hyper)
    NB.adamw_step(*state["numba"][:1], g, *state["numba"][1:], *hyper)
    diff = max_rel_diff(state["numpy"], state["numba"])
    fns = (lambda: R.adamw_step(state["numpy"][0], g, *state["numpy"][1:], *hyper),
           lambda: NB.adamw_step(state["numba"][0], g, *state["numba"][1:], *hyper))
    return fns, diff


def header():
    import numba
    from threadpoolctl import threadpool_info
    print(bench.cpu_line())
    print(bench.runtime_line())
    for lib in threadpool_info():              # every pool, not only NumPy's BLAS: which one is whose
        print(f"threadpool: {lib.get('internal_api')} {lib.get('version') or ''} "
              f"({lib.get('architecture') or '-'}, {lib.get('threading_layer') or '-'}), "
              f"{lib.get('num_threads')} threads: {lib.get('filepath', '')}")
    print(f"numba threading layer: {numba.threading_layer()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds of timed runs per kernel")
    args = ap.parse_args()
    dt = np.dtype(args.dtype).type
    rng = np.random.default_rng(0)

    NB.warmup()
    header()
    print(f"dtype {args.dtype}; median of >= 5 runs after each kernel's warm-up (two consecutive calls "
          f"within {bench.WARMUP_TOLERANCE:.0%}, {bench.WARMUP_MIN} to {bench.WARMUP_MAX} calls)\n")
    row = "{:<29} {:<26} {:>10} {:>10} {:>8} {:>9}"
    print(row.format("kernel", "shape", "numpy ms", "numba ms", "speedup", "max diff"))
    print("-" * 97)
    for name, shape, f_np, f_nb, fargs in cases(dt, rng):
        diff = max_rel_diff(f_np(*fargs), f_nb(*fargs))
        t_np = median_ms(f_np, fargs, args.min_time)
        t_nb = median_ms(f_nb, fargs, args.min_time)
        print(row.format(name, shape, f"{t_np:.2f}", f"{t_nb:.2f}", f"{t_np / t_nb:.2f}x", f"{diff:.1e}"),
              flush=True)
    (f_np, f_nb), diff = adamw_case(dt, rng)
    t_np = median_ms(f_np, (), args.min_time)
    t_nb = median_ms(f_nb, (), args.min_time)
    print(row.format("adamw_step", f"({ADAMW_N:,},)", f"{t_np:.2f}", f"{t_nb:.2f}",
                     f"{t_np / t_nb:.2f}x", f"{diff:.1e}"))
    ratio = GPT2_PARAMS / ADAMW_N
    print(f"\nadamw_step scaled to {GPT2_PARAMS / 1e6:.0f}M parameters (x{ratio:.1f}): "
          f"numpy {t_np * ratio:.0f} ms, numba {t_nb * ratio:.0f} ms per step")


if __name__ == "__main__":
    main()
