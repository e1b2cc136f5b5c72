"""What every benchmark shares, in one place (no benchmark imports another):

- paths: REPO (this checkout, put first on sys.path once, here) and shared_data(name);
- the machine: cpu_line() (the CPU, its core count, its bf16/AVX flags) and runtime_line()
  (Python, NumPy and its BLAS, numba, the kernels, the thread count);
- one timer: now() and timed(fn);
- the steady state: warm_up(step) runs a step until two consecutive calls agree within 5 %
  (at least 3 calls, at most 12), and steady_times(step, n) then times n more;
- the limit: the step's GEMM FLOPs from the model config (step_flops), its memory traffic
  (adamw_bytes, activation_bytes), and this CPU's peak GEMM rate and copy bandwidth.
"""
import os
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:                  # this checkout's tinygrad_gpt, not an installed one
    sys.path.insert(0, str(REPO))


# ----------------------------------------------------------------------------- paths
def shared_data(name):
    """Path of shared/data/<name> (the book's files that are never committed, e.g.
    the-verdict.txt) or None: $TINYGRAD_GPT_SHARED_DATA, then shared/data/ beside the checkout or
    beside any folder above it (the rule tests/helpers.py follows)."""
    env = os.environ.get("TINYGRAD_GPT_SHARED_DATA")
    places = ([Path(env)] if env else []) + [d / "shared" / "data" for d in REPO.parents]
    return next((p / name for p in places if (p / name).is_file()), None)


# ----------------------------------------------------------------------------- the machine
def cpu_info():
    """(model name with its family/model numbers, the flags of /proc/cpuinfo as a set); ("?", set())
    where it cannot be read. A bare "AMD EPYC" has been both a Zen 3 (family 25, AVX2 only) and a
    Zen 5 (family 26, AVX-512) here: the numbers tell them apart."""
    model, family, number, flags = "?", None, None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key == "cpu family" and family is None:
                    family = line.split(":", 1)[1].strip()
                if key == "model" and number is None:
                    number = line.split(":", 1)[1].strip()
                if line.startswith("model name") and model == "?":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    if family is not None and number is not None:
        model += f" (family {family}, model {number})"
    return model, flags


def has_bf16_units():
    """True where the CPU multiplies bf16 in hardware (AMX-BF16 or AVX512-BF16): elsewhere
    torch's bf16 autocast ran a 124M step in 240 s against 4.1 s in float32 (RESULTS.md)."""
    flags = cpu_info()[1]
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_line():
    """The CPU model, its core count and which of amx_bf16, amx_tile, avx512_bf16, avx512f, avx2 it has
    (and OPENBLAS_CORETYPE when it is set: it picks NumPy's GEMM kernel)."""
    model, flags = cpu_info()
    have = [f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2") if f in flags]
    line = f"CPU: {model}, {os.cpu_count()} cores, flags: {' '.join(have) or 'no amx_bf16/avx512_bf16/avx512f/avx2'}"
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return line + (f"; OPENBLAS_CORETYPE={forced}" if forced else "")


def blas_info():
    """threadpoolctl's record of NumPy's BLAS (numba may load another one: NumPy's is the one
    under numpy.libs), {} without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {}
    blases = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    numpy_libs = os.path.dirname(np.__file__)
    return next((i for i in blases if i.get("filepath", "").startswith(numpy_libs)),
                next((i for i in blases if "numpy" in i.get("filepath", "")), blases[0] if blases else {}))


def runtime_line(threads=None, precision=None):
    """Python, NumPy with its BLAS (library, version, kernel, threads), numba (version, threading
    layer, threads), the kernel backend, the thread count and the precision: one line, the same
    in every benchmark."""
    import numba
    blas = blas_info()
    try:
        layer = numba.threading_layer()        # only known after numba's pool has started
    except ValueError:
        layer = "not started"
    try:
        from tinygrad_gpt.kernels import get_backend
        kernels = get_backend()
    except ImportError:
        kernels = "?"
    line = (f"Runtime: Python {platform.python_version()}, numpy {np.__version__} ({blas.get('internal_api', '?')} "
            f"{blas.get('version') or ''} {blas.get('architecture') or ''}, {blas.get('num_threads', '?')} threads), "
            f"numba {numba.__version__} ({layer}, {numba.get_num_threads()} threads), kernels {kernels}")
    if threads is not None:
        line += f", {threads} threads"
    return line + (f", {precision}" if precision else "")


# ----------------------------------------------------------------------------- one timer
now = time.perf_counter


def timed(fn, *args):
    """(seconds, fn(*args)) on the one clock every benchmark uses."""
    t = now()
    out = fn(*args)
    return now() - t, out


def stats(times):
    """(min, median, max) of a list of seconds."""
    return min(times), statistics.median(times), max(times)


def fmt_stats(times, digits=3):
    lo, med, hi = stats(times)
    return f"{lo:.{digits}f} / {med:.{digits}f} / {hi:.{digits}f}"


# ----------------------------------------------------------------------------- the steady state
WARMUP_MIN, WARMUP_MAX, WARMUP_TOLERANCE = 3, 12, 0.05


def is_steady(times, tolerance=WARMUP_TOLERANCE, min_steps=WARMUP_MIN):
    """True when at least min_steps calls have run and the last two agree within `tolerance`
    (|a - b| <= tolerance x the smaller of the two)."""
    if len(times) < max(2, min_steps):
        return False
    a, b = times[-2], times[-1]
    return abs(a - b) <= tolerance * min(a, b)


class Warmup:
    """The warm-up calls' seconds, and whether the rule was met (else the cap was hit)."""

    def __init__(self, times, steady, cap):
        self.times, self.steady, self.cap = times, steady, cap

    def describe(self, unit="steps"):
        took = " ".join(f"{t:.2f}" for t in self.times)
        if self.steady:
            return f"warm-up {len(self.times)} {unit} ({took} s), steady: the last two within {WARMUP_TOLERANCE:.0%}"
        return (f"warm-up {len(self.times)} {unit} ({took} s): cap of {self.cap} hit, NOT steady "
                f"(no two consecutive {unit} within {WARMUP_TOLERANCE:.0%})")


def warm_up(step, min_steps=WARMUP_MIN, max_steps=WARMUP_MAX, tolerance=WARMUP_TOLERANCE, clock=None):
    """Call step() until two consecutive calls agree within `tolerance` (at least min_steps calls,
    at most max_steps): compiling, allocators and thread pools settle in the first few steps
    (PyTorch's bf16 step: 2.46, 3.39, 2.42, 1.89, 2.03 ... s; ours: 5.2, 1.9, 1.7, 1.6 ... s), and
    a ratio taken before both are steady is not the engines' ratio. `clock` (a callable timing
    one call, default timed(step)[0]) lets a test feed a fixed sequence of durations."""
    clock = clock or (lambda: timed(step)[0])
    times = []
    while len(times) < max_steps:
        times.append(clock())
        if is_steady(times, tolerance, min_steps):
            return Warmup(times, True, max_steps)
    print(f"warning: warm-up cap of {max_steps} steps hit without two consecutive steps within "
          f"{tolerance:.0%}: {' '.join(f'{t:.3f}' for t in times)} s", file=sys.stderr, flush=True)
    return Warmup(times, False, max_steps)


def steady_times(step, n, max_warmup=WARMUP_MAX):
    """(Warmup, [seconds of n calls]) : step() warmed to its steady state, then timed n times."""
    warm = warm_up(step, max_steps=max_warmup)
    return warm, [timed(step)[0] for _ in range(n)]


def best_time(fn, repeats, max_warmup=WARMUP_MAX):
    """The fastest of `repeats` calls of fn after its warm-up: for kernels and GEMMs, whose
    best call is the measure of what the hardware does."""
    return min(steady_times(fn, repeats, max_warmup)[1])


def run_worker(cmd, label, env=None):
    """Run one benchmark worker process (cmd: its argv) and return the JSON of its last stdout
    line; a failed worker stops the benchmark with its stderr, and its warnings (the warm-up
    cap's, for one) are passed on under `label`."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"the {label} worker failed:\n{out.stderr[-3000:]}")
    for line in out.stderr.splitlines():
        if line.startswith("warning:"):
            print(f"{label}: {line}", file=sys.stderr, flush=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the step's work
def step_gemms(cfg, B, T):
    """(count, M, K, N) for every matrix product in a GPT training step (forward + backward), with
    N_tok = B*T tokens, C = emb_dim, V = vocab, L layers, H heads of D = C/H: each Linear's
    y = x W^T forward and dx = dy W, dW = dy^T x backward; attention's S = Q K^T and O = A V
    forward and dA, dV, dQ, dK backward (as full T x T products, the shapes a GEMM-based attention
    runs; step_flops counts only the causal half); the output head's three."""
    C, V, L, H = cfg["emb_dim"], cfg["vocab_size"], cfg["n_layers"], cfg["n_heads"]
    D, N = C // H, B * T
    linears = [(N, C, C)] * 4 + [(N, C, 4 * C), (N, 4 * C, C)]          # q, k, v, out, ff1, ff2
    gemms = []
    for (m, k, n) in linears:                 # y = x W^T: forward, dx = dy W, dW = dy^T x
        gemms += [(L, m, k, n), (L, m, n, k), (L, n, m, k)]
    bh = B * H * L                            # attention: s = q k^T, out = a v; 4 products back
    gemms += [(bh, T, D, T), (bh, T, T, D)] + [(bh, T, T, D), (bh, T, D, T), (bh, T, T, D), (bh, T, T, D)]
    gemms += [(1, N, C, V), (1, N, V, C), (1, V, N, C)]                 # the output head
    return gemms


def step_flops(cfg, B, T):
    """The GEMM FLOPs one training step (forward + backward) cannot do without, written out:

        forward  = L * (24 * N * C^2                # per layer: q, k, v, out (4 x 2*N*C*C)
                                                    #   + the feed-forward (2 x 2*N*C*4C)
                        + 2 * B * C * T * (T + 1))  # attention: S = Q K^T and O = A V over the causal
                                                    #   pairs only (query t sees t + 1 keys): 2 products
                                                    #   x 2*B*H*D * T(T+1)/2 FLOPs, H*D = C
                   + 2 * N * C * V                  # the output head
        backward = 2 * forward                      # each product's two gradients (dx and dW; dA and
                                                    #   dV; dQ and dK), each as many FLOPs as its forward
        step     = 3 * forward

    with N = B*T tokens, C = emb_dim, V = vocab_size, L = n_layers; a multiply-add is 2 FLOPs.
    (For GPT-2 124M at B=2, T=256: 386.8 GFLOP; with attention's full T x T products, as
    step_gemms lists them, 394.0.) The embeddings, layer norms, GELU, softmax and AdamW are not
    GEMMs: they are memory-bound and counted in bytes (adamw_bytes, activation_bytes)."""
    C, V, L = cfg["emb_dim"], cfg["vocab_size"], cfg["n_layers"]
    N = B * T
    forward = L * (24 * N * C * C + 2 * B * C * T * (T + 1)) + 2 * N * C * V
    return 3 * forward


def adamw_bytes(n_params, bf16_copy=False):
    """Bytes AdamW's one pass moves: reads the weight, its gradient and both moments, writes the
    weight and both moments (float32: 7 x 4 bytes a parameter), plus the weight's bf16 copy
    (2 bytes) when a bf16 step keeps one."""
    return n_params * (7 * 4 + (2 if bf16_copy else 0))


def activation_bytes(cfg, B, T):
    """Bytes of the activations backward reads again, each written once in forward and read once
    in backward, in float32 (a lower bound: what a step cannot avoid moving). Per layer and
    token: layer norm 1's output (C), q, k, v (3C), attention's output (C), layer norm 2's output
    (C), the feed-forward's hidden layer before and after GELU (4C + 4C): 14C; attention's
    probabilities, H x T a token; after the blocks the final norm (C) and the logits (V)."""
    C, V, L, H = cfg["emb_dim"], cfg["vocab_size"], cfg["n_layers"], cfg["n_heads"]
    N = B * T
    floats = L * (14 * N * C + B * H * T * T) + N * (C + V)
    return 2 * 4 * floats


def count_params(cfg):
    """Parameters of GPTModel(cfg) from its config (the book's: no weight tying, biases on every
    Linear but q, k, v unless qkv_bias)."""
    C, V, L, T = cfg["emb_dim"], cfg["vocab_size"], cfg["n_layers"], cfg["context_length"]
    qkv = 3 * C * C + (3 * C if cfg.get("qkv_bias") else 0)
    block = qkv + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C) + 2 * 2 * C
    return V * C + T * C + L * block + 2 * C + C * V


# ----------------------------------------------------------------------------- the limit
def bf16_gemm():
    """(gemm(a, b, trans_a, trans_b, out) on bf16 bits, its backend's name) for the fast bf16
    GEMM this CPU has, or (None, why) where only the NumPy twin exists. The one place that knows
    where the choice lives: kernels/precision.py (where the engine's bf16 GEMM switch moves, beside
    K), else amp.py (before that move); both offer gemm, get_gemm_backend, unavailable_reason."""
    try:
        from tinygrad_gpt.kernels import precision as where
        where.gemm, where.get_gemm_backend, where.unavailable_reason
    except (ImportError, AttributeError):
        from tinygrad_gpt import amp as where
    name = where.get_gemm_backend()
    if name == "reference":
        return None, where.unavailable_reason() or "no fast bf16 GEMM on this CPU"
    return where.gemm, name


def peak_gemm_gflops(n=2048, repeats=3, bf16=False):
    """GFLOP/s of one n x n x n product at its best (after warm-up): float32 through NumPy's BLAS,
    or bf16 through the fast bf16 GEMM (None where there is none)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    if bf16:
        from tinygrad_gpt.kernels import reference as R
        gemm, _ = bf16_gemm()
        if gemm is None:
            return None
        a, b = R.to_bf16(a), R.to_bf16(b)
        fn = lambda: gemm(a, b, False, False, out)       # noqa: E731
    else:
        fn = lambda: np.matmul(a, b, out=out)            # noqa: E731
    return 2.0 * n ** 3 / best_time(fn, repeats) / 1e9


def copy_bandwidth_gbs(mib=128, repeats=3):
    """GB/s of a streaming copy of `mib` MiB (float32, far beyond the caches): bytes read + written
    over the best call's seconds."""
    src = np.ones(mib * 2 ** 20 // 4, np.float32)
    dst = np.empty_like(src)
    return 2 * src.nbytes / best_time(lambda: np.copyto(dst, src), repeats) / 1e9


def step_bound(cfg, B, T, gemm_gflops, bandwidth_gbs, bf16=False):
    """(seconds, parts) of a step's lower bound: its GEMM FLOPs at the peak GEMM rate plus AdamW's
    and the activations' bytes at the copy bandwidth. No engine's step on this CPU can be faster."""
    flops = step_flops(cfg, B, T)
    moved = adamw_bytes(count_params(cfg), bf16) + activation_bytes(cfg, B, T)
    gemm_s, bytes_s = flops / (gemm_gflops * 1e9), moved / (bandwidth_gbs * 1e9)
    return gemm_s + bytes_s, {"gflop": flops / 1e9, "gemm_s": gemm_s, "gbytes": moved / 1e9, "bytes_s": bytes_s}
