"""One GPT-2 training step on the CPU: this engine against the book's PyTorch code.

    python benchmarks/bench_train_step.py                       # 124M, batch 2 x 256
    python benchmarks/bench_train_step.py --compare-torch       # + the book's GPTModel, alternating
    python benchmarks/bench_train_step.py --precision both --compare-torch
                     # ours float32 and bf16 autocast; torch: book default, fused AdamW,
                     # bf16 autocast + fused AdamW (the fastest eager setting on an AMX CPU)
    python benchmarks/bench_train_step.py --precision bfloat16 --compare-torch --torch-compile --rounds 3
                     # + torch.compile of the bf16 step (its compile time apart)
    python benchmarks/bench_train_step.py --compare-torch --torch-modes book,fused
                     # torch's float32 settings only (on a CPU without AVX512-BF16 or AMX,
                     # torch's bf16 autocast step took minutes: RESULTS.md)
    python benchmarks/bench_train_step.py --kernels numpy       # the plain-NumPy kernels
    python benchmarks/bench_train_step.py --no-memory-caching   # glibc trims the freed pages each step
    python benchmarks/bench_train_step.py --model tiny --steps 3

Ours is timed through the plain API, as a reader's own loop over GPTModel and AdamW runs it
(no command's set-up: `--commands-setup` adds examples/pretrain.py's). Each engine runs in
its own process (so peak memory is its own), in alternating rounds (so a busy machine slows
both alike); the table reports medians and the ratio to the fastest torch setting of the run
(the strongest peer, whichever it is on this CPU). The "GEMM floor" is the time the step's
matrix products alone take with NumPy's BLAS, in the same process: a step can't be faster,
and the ratio to it says how much the rest costs.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from machine import cpu_line, has_bf16_units  # noqa: E402  (benchmarks/machine.py)

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- the GEMMs of a step
def step_gemms(cfg, B, T):
    """(count, M, K, N) for every matrix product in a training step: forward + backward."""
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


def _floor(cfg, B, T, operand, gemm, repeats):
    """Seconds the step's GEMMs take with `gemm(a, b, out)` on `operand(shape)` inputs (best of
    `repeats` per distinct shape, preallocated outputs), and their GFLOP."""
    total, flops, cache = 0.0, 0.0, {}
    for count, m, k, n in step_gemms(cfg, B, T):
        if (m, k, n) not in cache:
            a, b = operand((m, k)), operand((k, n))
            out = np.empty((m, n), np.float32)
            gemm(a, b, out)                    # warm-up
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                gemm(a, b, out)
                times.append(time.perf_counter() - t)
            cache[(m, k, n)] = min(times)
        total += count * cache[(m, k, n)]
        flops += count * 2.0 * m * k * n
    return total, flops / 1e9


def gemm_floor(cfg, B, T, repeats=3):
    """Seconds the step's GEMMs take in NumPy (float32, preallocated outputs), and GFLOP."""
    return _floor(cfg, B, T, lambda shape: np.random.rand(*shape).astype(np.float32),
                  lambda a, b, out: np.matmul(a, b, out=out), repeats)


def gemm_floor_bf16(cfg, B, T, repeats=3):
    """Seconds the step's GEMMs take as bf16 products on autocast's fast backend (oneMKL on AMX,
    ours on AVX512-BF16; inputs already bf16), or None without a fast path."""
    from tinygrad_gpt import amp
    from tinygrad_gpt.kernels import reference as R
    if amp.get_gemm_backend() == "reference":
        return None
    return _floor(cfg, B, T, lambda shape: R.to_bf16(np.random.rand(*shape).astype(np.float32)),
                  lambda a, b, out: amp.gemm(a, b, out=out), repeats)[0]


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20     # Linux: KiB


# ----------------------------------------------------------------------------- workers
def worker_ours(args, cfg):
    import tinygrad_gpt as tg
    from tinygrad_gpt.kernels import set_backend
    set_backend(args.kernels)                  # tinygrad_gpt is already imported: switch explicitly
    from tinygrad_gpt import functional as F
    from tinygrad_gpt.cli import runtime_line, setup_threads
    from tinygrad_gpt.kernels.threads import set_num_threads
    from tinygrad_gpt.tensor import no_grad, profile
    bf16 = args.precision == "bfloat16"
    if args.commands_setup:                    # what examples/pretrain.py does before its loop
        runtime = setup_threads(args.threads, precision=args.precision)    # MKL's pool too, for bf16
    else:                                      # a user's own loop over GPTModel and AdamW: the plain API
        threads = set_num_threads(args.threads, load_mkl=bf16)
        caching = "off" if tg.memory.caching_disabled() else "on"
        runtime = f"plain API (memory caching {caching}), " + runtime_line(threads, args.precision)
    if bf16:
        runtime = runtime.replace("bfloat16", f"bfloat16 autocast, GEMM {tg.amp.get_gemm_backend()}")
    tg.manual_seed(123)
    model = tg.GPTModel(cfg)
    opt = tg.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg["vocab_size"], (args.batch, args.seq))
    y = rng.integers(0, cfg["vocab_size"], (args.batch, args.seq))

    def step():
        t0 = time.perf_counter()
        opt.zero_grad()
        with tg.autocast("bfloat16", enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    t = time.perf_counter()
    for _ in range(args.warmup):
        step()
    warmup = time.perf_counter() - t
    splits = [step() for _ in range(args.steps)]
    with profile() as prof:
        step()
    model.eval()
    evals = []
    for _ in range(max(2, args.steps)):
        t = time.perf_counter()
        with no_grad(), tg.autocast("bfloat16", enabled=bf16):
            F.cross_entropy(model(x), y)
        evals.append(time.perf_counter() - t)
    rss = peak_rss_gib()                       # before the floors' operands (up to 0.4 GiB) exist
    floor, gflop = gemm_floor(cfg, args.batch, args.seq)
    floor16 = gemm_floor_bf16(cfg, args.batch, args.seq) if bf16 else None
    return {"splits": splits, "eval": evals, "peak_rss_gib": rss, "gemm_floor": floor,
            "gemm_floor_bf16": floor16, "gemm_backend": tg.amp.get_gemm_backend(), "gflop": gflop, "profile": prof.table(), "runtime": runtime, "warmup": warmup}


def worker_torch(args, cfg):
    """The book's GPTModel; --torch-mode: "default" (the book's AdamW), "fused" (AdamW(fused=True)),
    "bf16" (torch.autocast("cpu", bfloat16) around forward + loss, fused AdamW)."""
    import torch
    from llms_from_scratch.ch04 import GPTModel
    torch.set_num_threads(args.threads or os.cpu_count())
    torch.manual_seed(123)
    model = GPTModel(cfg)
    fused = args.torch_mode in ("fused", "bf16", "compile")
    bf16 = args.torch_mode in ("bf16", "compile")
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1, fused=fused or None)
    if args.torch_mode == "compile":           # inductor; the first steps (warm-up) compile it
        model = torch.compile(model)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.integers(0, cfg["vocab_size"], (args.batch, args.seq)))
    y = torch.tensor(rng.integers(0, cfg["vocab_size"], (args.batch, args.seq)))

    def step():
        t0 = time.perf_counter()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    t = time.perf_counter()
    for _ in range(max(args.warmup, 2 if args.torch_mode == "compile" else 0)):
        step()                                 # compile: forward and backward graphs, then one more
    warmup = time.perf_counter() - t
    splits = [step() for _ in range(args.steps)]
    model.eval()
    evals = []
    for _ in range(max(2, args.steps)):
        t = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        evals.append(time.perf_counter() - t)
    return {"splits": splits, "eval": evals, "peak_rss_gib": peak_rss_gib(), "warmup": warmup,
            "runtime": f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.torch_mode}"}


TORCH_MODES = {"book": "torch book", "fused": "torch fused", "bf16": "torch bf16+fused"}   # --torch-modes


ENGINES = {   # column name -> (worker, its extra flags)
    "ours f32": ("ours", ["--precision", "float32"]),
    "ours bf16": ("ours", ["--precision", "bfloat16"]),
    "torch book": ("torch", ["--torch-mode", "default"]),
    "torch fused": ("torch", ["--torch-mode", "fused"]),
    "torch bf16+fused": ("torch", ["--torch-mode", "bf16"]),
    "torch compiled": ("torch", ["--torch-mode", "compile"]),
}


def run_worker(engine, args):
    worker, extra = ENGINES[engine]
    cmd = [sys.executable, __file__, "--worker", worker, "--model", args.model, "--batch", str(args.batch),
           "--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--kernels", args.kernels] + extra + (["--threads", str(args.threads)] if args.threads else []) \
        + (["--commands-setup"] if args.commands_setup else [])
    env = dict(os.environ)
    if args.no_memory_caching and worker == "ours":
        env["TINYGRAD_GPT_NO_MEMORY_CACHING"] = "1"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"the {engine} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the table
def summarize(results):
    steps = [sum(s) for r in results for s in r["splits"]]
    med = lambda i: statistics.median(s[i] for r in results for s in r["splits"])   # noqa: E731
    return {"step": statistics.median(steps), "fwd": med(0), "bwd": med(1), "opt": med(2),
            "eval": statistics.median(e for r in results for e in r["eval"]),
            "rss": max(r["peak_rss_gib"] for r in results)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="124M")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=4, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of each engine")
    p.add_argument("--kernels", choices=["numpy", "numba"], default="numba")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compare-torch", action="store_true",
                   help="also torch: the book's default AdamW, fused AdamW, bf16 autocast + fused AdamW")
    p.add_argument("--precision", choices=["float32", "bfloat16", "both"], default="float32",
                   help="ours: float32, bf16 autocast, or both side by side")
    p.add_argument("--commands-setup", action="store_true",
                   help="ours after cli.setup_threads, as examples/pretrain.py runs it (default: the plain "
                        "API, a user's own loop over GPTModel and AdamW)")
    p.add_argument("--no-memory-caching", action="store_true",
                   help="ours with TINYGRAD_GPT_NO_MEMORY_CACHING=1: glibc gives each step's freed pages "
                        "back and the next step faults them in again (memory.py)")
    p.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--torch-compile", action="store_true",
                   help="with --compare-torch: also torch.compile (inductor) of the bf16 + fused step; "
                        "its compile time is reported on its own")
    p.add_argument("--torch-modes", default="book,fused,bf16",
                   help="with --compare-torch: the torch settings to run, comma-separated, from book (the "
                        "book's default AdamW), fused (AdamW(fused=True)), bf16 (autocast + fused AdamW); "
                        "default all three")
    p.add_argument("--torch-mode", choices=["default", "fused", "bf16", "compile"], default="default",
                   help=argparse.SUPPRESS)
    args = p.parse_args()

    sys.path.insert(0, os.path.dirname(HERE))
    from tinygrad_gpt.model import get_config
    cfg = get_config(args.model)
    cfg["context_length"] = args.seq
    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_torch
        print(json.dumps(fn(args, cfg)))
        return

    # each of ours runs next to the torch settings it is compared with: the machine's speed
    # drifts over minutes, and a pair close in time is a fairer ratio (see "paired" below)
    engines = []
    if args.precision in ("float32", "both"):
        engines += ["ours f32"] + (["torch book", "torch fused"] if args.compare_torch else [])
    if args.precision in ("bfloat16", "both"):
        engines += ["ours bf16"]
    if args.compare_torch:
        engines += ["torch bf16+fused"] + (["torch compiled"] if args.torch_compile else [])
        if args.precision == "bfloat16":
            engines += ["torch book", "torch fused"]
    modes = set(args.torch_modes.split(","))
    unknown = modes - set(TORCH_MODES)
    if unknown:
        p.error(f"--torch-modes: unknown setting {sorted(unknown)[0]!r}; choose from {', '.join(TORCH_MODES)}")
    left_out = {TORCH_MODES[m] for m in set(TORCH_MODES) - modes}     # torch compiled: --torch-compile
    engines = [e for e in engines if e not in left_out]
    if "torch bf16+fused" in engines and not has_bf16_units():
        print("note: this CPU has neither AMX-BF16 nor AVX512-BF16; torch's bf16 autocast step took "
              "240 s (float32: 4.1 s) on such a CPU (RESULTS.md). --torch-modes book,fused leaves it out.",
              file=sys.stderr, flush=True)
    results = {e: [] for e in engines}
    for r in range(args.rounds):
        for e in engines:
            print(f"round {r + 1}/{args.rounds}: {e} ...", file=sys.stderr, flush=True)
            results[e].append(run_worker(e, args))
    tokens = args.batch * args.seq
    first = results[engines[0]]
    floor = statistics.median(r["gemm_floor"] for r in first)
    gflop = first[0]["gflop"]
    print(f"# {args.model}, batch {args.batch} x {args.seq}, kernels {args.kernels}, "
          f"{args.rounds} rounds x {args.steps} steps (median)")
    print(f"# {cpu_line()}")
    for e in engines:
        print(f"# {e}: {results[e][0]['runtime']}")
    print()
    # ratio: ours against the fastest eager torch setting of this run (compiled is reported
    # apart). On an AMX Xeon that was bf16 autocast + fused AdamW (1.26 s against fused
    # float32's 2.1 s); on an AVX2-only EPYC bf16 autocast took 240 s a step, and fused
    # float32 was the one to beat
    summaries = {e: summarize(results[e]) for e in engines}
    eager = [e for e in engines if e.startswith("torch") and e != "torch compiled"]
    target = min(eager, key=lambda e: summaries[e]["step"]) if eager else None
    if target:
        print(f"# the ratio columns: against {target}, the fastest eager torch setting in this run")
        print()
    ours_cols = [e for e in engines if e.startswith("ours")]
    ratio_cols = [f"{e} / {target}" for e in ours_cols] if target else []
    cols = engines + ratio_cols
    rows = [("step (s)", "step"), ("  forward + loss (s)", "fwd"), ("  backward (s)", "bwd"),
            ("  AdamW step (s)", "opt"), ("eval forward (s)", "eval"), ("peak RSS (GiB)", "rss")]
    print("| " + " | ".join(["measure"] + cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for label, key in rows:
        vals = [f"{summaries[e][key]:.3f}" for e in engines]
        vals += [f"{summaries[e][key] / summaries[target][key]:.2f}x" for e in ours_cols] if target else []
        print(f"| {label} | " + " | ".join(vals) + " |")
    tok = [f"{tokens / summaries[e]['step']:.0f}" for e in engines]
    print("| tokens/s | " + " | ".join(tok + [""] * len(ratio_cols)) + " |")
    print()
    if target:                                 # round r's ours / round r's torch: drift cancels
        for e in ours_cols:
            step = lambda r: statistics.median(sum(s) for s in r["splits"])   # noqa: E731
            per_round = [step(a) / step(b) for a, b in zip(results[e], results[target])]
            print(f"paired: {e} / {target}, round by round: " + ", ".join(f"{x:.2f}x" for x in per_round)
                  + f"; median {statistics.median(per_round):.2f}x")
        if "torch compiled" in results:
            compile_s = statistics.median(r["warmup"] for r in results["torch compiled"])
            print(f"torch compiled: {compile_s:.1f} s of compiling and warm-up steps before the timed steps "
                  f"(median over rounds)")
            for e in ours_cols:
                print(f"{e} / torch compiled = {summaries[e]['step'] / summaries['torch compiled']['step']:.2f}x")
        print()
    print(f"GEMM floor, float32 (the step's {gflop:.0f} GFLOP of matrix products alone, NumPy BLAS, same "
          f"process): {floor:.3f} s = {gflop / floor:.0f} GFLOP/s")
    if "ours bf16" in results and results["ours bf16"][0]["gemm_floor_bf16"] is not None:
        floor16 = statistics.median(r["gemm_floor_bf16"] for r in results["ours bf16"])
        print(f"GEMM floor, bf16 (the same products on {results['ours bf16'][0]['gemm_backend']}, inputs already "
              f"bf16): {floor16:.3f} s = "
              f"{gflop / floor16:.0f} GFLOP/s; ours bf16 step / bf16 floor = "
              f"{summaries['ours bf16']['step'] / floor16:.2f}")
    for e in ours_cols:
        print(f"{e}: {gflop / summaries[e]['step']:.0f} GFLOP/s achieved; step / float32 GEMM floor = "
              f"{summaries[e]['step'] / floor:.2f}; first-round warm-up {results[e][0]['warmup']:.1f} s")
    for e in ours_cols:
        print()
        print(f"per-op profile of one step ({e}):")
        print(results[e][-1]["profile"])


if __name__ == "__main__":
    main()
