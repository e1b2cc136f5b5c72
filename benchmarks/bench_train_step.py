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
both alike). Every engine is timed at its steady state (benchmarks/common.py: warmed until two
consecutive steps agree within 5 %, at least 3 steps, at most --max-warmup), then --steps timed
steps; the table reports min / median / max over all rounds, the warm-up steps' times, and the
ratios of medians to the fastest torch setting of the run (the strongest peer, whichever it is
on this CPU).

The limit: a worker measures this CPU's peak GEMM rate on one large square product (float32
through NumPy's BLAS, bf16 through the fast bf16 GEMM) and its memory bandwidth with a streaming
copy; the step's lower bound is its GEMM FLOPs (common.step_flops, from the model config) at
that peak plus AdamW's and the activations' bytes at that bandwidth, and step / bound says how
far an engine is from it.

    python benchmarks/bench_train_step.py --smoke --precision both --compare-torch
                     # a tiny model, 2 timed steps, 1 round: checks the script, not the speed
"""
import argparse
import json
import os
import resource
import statistics
import sys

import numpy as np

import common as bench  # benchmarks/common.py: the machine line, the timer, the warm-up rule, the limit


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20     # Linux: KiB


# ----------------------------------------------------------------------------- workers
def worker_ours(args, cfg):
    import tinygrad_gpt as tg
    from tinygrad_gpt.kernels import set_backend
    set_backend(args.kernels)                  # tinygrad_gpt is already imported: switch explicitly
    from tinygrad_gpt import functional as F
    from tinygrad_gpt.cli import setup_threads
    from tinygrad_gpt.kernels import bf16_mkl
    from tinygrad_gpt.runtime import runtime as settings
    from tinygrad_gpt.tensor import no_grad, profile
    bf16 = args.precision == "bfloat16"
    if args.commands_setup:                    # what examples/pretrain.py does before its loop
        runtime = setup_threads(args.threads, precision=args.precision)    # MKL's pool too, for bf16
    else:                                      # a user's own loop over GPTModel and AdamW: the plain API,
        if bf16:                               # with the settings docs/speed.md tells it to say
            bf16_mkl.available()               # (MKL loaded first on AMX, so its count applies)
        settings.set(threads=args.threads, allocator="keep")
        if bf16 and bf16_mkl.pool_active():
            settings.set(float32_gemm="mkl")
        threads = settings.threads
        caching = "off" if tg.memory.caching_disabled() else "on"
        runtime = f"plain API (memory caching {caching}), " + bench.runtime_line(threads, args.precision)
    if bf16:
        runtime = runtime.replace("bfloat16", f"bfloat16 autocast, GEMM {bench.bf16_gemm()[1]}")
    tg.manual_seed(123)
    model = tg.GPTModel(cfg)
    opt = tg.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg["vocab_size"], (args.batch, args.seq))
    y = rng.integers(0, cfg["vocab_size"], (args.batch, args.seq))

    def step():
        t0 = bench.now()
        opt.zero_grad()
        with tg.autocast("bfloat16", enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        t1 = bench.now()
        loss.backward()
        t2 = bench.now()
        opt.step()
        t3 = bench.now()
        return t1 - t0, t2 - t1, t3 - t2

    def evaluate():
        with no_grad(), tg.autocast("bfloat16", enabled=bf16):
            F.cross_entropy(model(x), y)

    warm = bench.warm_up(step, max_steps=args.max_warmup)
    splits = [step() for _ in range(args.steps)]
    with profile() as prof:
        step()
    model.eval()
    eval_warm, evals = bench.steady_times(evaluate, max(2, args.steps), args.max_warmup)
    return {"splits": splits, "eval": evals, "peak_rss_gib": peak_rss_gib(), "warmup": warm.times,
            "warmup_note": warm.describe(), "eval_warmup": eval_warm.times, "profile": prof.table(),
            "runtime": runtime}


def worker_torch(args, cfg):
    """The book's GPTModel; --torch-mode: "default" (the book's AdamW), "fused" (AdamW(fused=True)),
    "bf16" (torch.autocast("cpu", bfloat16) around forward + loss, fused AdamW), "compile" (bf16 +
    fused, torch.compile: its warm-up steps compile)."""
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
        t0 = bench.now()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        t1 = bench.now()
        loss.backward()
        t2 = bench.now()
        opt.step()
        t3 = bench.now()
        return t1 - t0, t2 - t1, t3 - t2

    def evaluate():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())

    warm = bench.warm_up(step, max_steps=args.max_warmup)
    splits = [step() for _ in range(args.steps)]
    model.eval()
    eval_warm, evals = bench.steady_times(evaluate, max(2, args.steps), args.max_warmup)
    return {"splits": splits, "eval": evals, "peak_rss_gib": peak_rss_gib(), "warmup": warm.times,
            "warmup_note": warm.describe(), "eval_warmup": eval_warm.times,
            "runtime": f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.torch_mode}"}


def worker_limits(args, cfg):
    """This CPU's peak GEMM rates (float32 NumPy, bf16 fast path) and its copy bandwidth, with the
    engines' thread count, in a process of its own."""
    from tinygrad_gpt.kernels.threads import set_num_threads
    threads = set_num_threads(args.threads, load_mkl=True)
    n, mib = (256, 8) if args.smoke else (2048, 256)
    gemm, backend = bench.bf16_gemm()
    return {"f32": bench.peak_gemm_gflops(n), "bf16": bench.peak_gemm_gflops(n, bf16=True),
            "bf16_backend": backend, "bandwidth": bench.copy_bandwidth_gbs(mib), "n": n, "mib": mib,
            "threads": threads}


TORCH_MODES = {"book": "torch book", "fused": "torch fused", "bf16": "torch bf16+fused"}   # --torch-modes


ENGINES = {   # column name -> (worker, its extra flags)
    "ours f32": ("ours", ["--precision", "float32"]),
    "ours bf16": ("ours", ["--precision", "bfloat16"]),
    "torch book": ("torch", ["--torch-mode", "default"]),
    "torch fused": ("torch", ["--torch-mode", "fused"]),
    "torch bf16+fused": ("torch", ["--torch-mode", "bf16"]),
    "torch compiled": ("torch", ["--torch-mode", "compile"]),
    "limits": ("limits", []),
}
BF16_ENGINES = {"ours bf16", "torch bf16+fused", "torch compiled"}      # bounded by the bf16 peak


def run_worker(engine, args):
    worker, extra = ENGINES[engine]
    cmd = [sys.executable, __file__, "--worker", worker, "--model", args.model, "--batch", str(args.batch),
           "--seq", str(args.seq), "--steps", str(args.steps), "--max-warmup", str(args.max_warmup),
           "--kernels", args.kernels] + extra + (["--threads", str(args.threads)] if args.threads else []) \
        + (["--commands-setup"] if args.commands_setup else []) + (["--smoke"] if args.smoke else [])
    env = dict(os.environ)
    if args.no_memory_caching and worker == "ours":
        env["TINYGRAD_GPT_NO_MEMORY_CACHING"] = "1"
    return bench.run_worker(cmd, engine, env)


# ----------------------------------------------------------------------------- the table
def summarize(results):
    steps = [sum(s) for r in results for s in r["splits"]]
    med = lambda i: statistics.median(s[i] for r in results for s in r["splits"])   # noqa: E731
    lo, median, hi = bench.stats(steps)
    return {"step": median, "step min": lo, "step max": hi, "fwd": med(0), "bwd": med(1), "opt": med(2),
            "eval": statistics.median(e for r in results for e in r["eval"]),
            "rss": max(r["peak_rss_gib"] for r in results)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="124M")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=6, help="timed steps per round, after the warm-up")
    p.add_argument("--max-warmup", type=int, default=bench.WARMUP_MAX,
                   help=f"the warm-up's cap: steps run until two consecutive ones agree within "
                        f"{bench.WARMUP_TOLERANCE:.0%}% (at least {bench.WARMUP_MIN}, at most this many)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of each engine")
    p.add_argument("--smoke", action="store_true",
                   help="check the script, not the speed: the tiny model, batch 2 x 32, 2 timed steps, "
                        "1 round, a warm-up of 3 steps, small limit probes")
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
    p.add_argument("--worker", choices=["ours", "torch", "limits"], help=argparse.SUPPRESS)
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
    if args.smoke and not args.worker:
        args.model, args.batch, args.seq, args.steps, args.rounds = "tiny", 2, 32, 2, 1
        args.max_warmup = bench.WARMUP_MIN
    if args.max_warmup < bench.WARMUP_MIN:
        p.error(f"--max-warmup must be at least {bench.WARMUP_MIN}")

    from tinygrad_gpt.model import get_config
    cfg = get_config(args.model)
    cfg["context_length"] = args.seq
    if args.worker:
        fn = {"ours": worker_ours, "torch": worker_torch, "limits": worker_limits}[args.worker]
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
    if "torch bf16+fused" in engines and not bench.has_bf16_units():
        print("note: this CPU has neither AMX-BF16 nor AVX512-BF16; torch's bf16 autocast step took "
              "240 s (float32: 4.1 s) on such a CPU (RESULTS.md). --torch-modes book,fused leaves it out.",
              file=sys.stderr, flush=True)
    results = {e: [] for e in engines + ["limits"]}
    for r in range(args.rounds):
        for e in engines + ["limits"]:
            print(f"round {r + 1}/{args.rounds}: {e} ...", file=sys.stderr, flush=True)
            results[e].append(run_worker(e, args))
    limits = results.pop("limits")
    tokens = args.batch * args.seq
    print(f"# {args.model}, batch {args.batch} x {args.seq}, kernels {args.kernels}, {args.rounds} rounds x "
          f"{args.steps} timed steps after each engine's warm-up (steady: two consecutive steps within "
          f"{bench.WARMUP_TOLERANCE:.0%}, {bench.WARMUP_MIN} to {args.max_warmup} steps)")
    print(f"# {bench.cpu_line()}")
    for e in engines:
        print(f"# {e}: {results[e][0]['runtime']}")
    print()
    # ratio: ours against the fastest eager torch setting of this run (compiled is reported
    # apart), medians of both at their steady state. On an AMX Xeon that was bf16 autocast + fused
    # AdamW; on an AVX2-only EPYC bf16 autocast took 240 s a step, and fused float32 was the one to beat
    summaries = {e: summarize(results[e]) for e in engines}
    eager = [e for e in engines if e.startswith("torch") and e != "torch compiled"]
    target = min(eager, key=lambda e: summaries[e]["step"]) if eager else None
    if target:
        print(f"# the ratio columns: medians against {target}, the fastest eager torch setting in this run")
        print()
    ours_cols = [e for e in engines if e.startswith("ours")]
    ratio_cols = [f"{e} / {target}" for e in ours_cols] if target else []
    cols = engines + ratio_cols
    rows = [("step, median (s)", "step"), ("step, min (s)", "step min"), ("step, max (s)", "step max"),
            ("  forward + loss (s)", "fwd"), ("  backward (s)", "bwd"), ("  AdamW step (s)", "opt"),
            ("eval forward (s)", "eval"), ("peak RSS (GiB)", "rss")]
    print("| " + " | ".join(["measure"] + cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for label, key in rows:
        vals = [f"{summaries[e][key]:.3f}" for e in engines]
        vals += [f"{summaries[e][key] / summaries[target][key]:.2f}x" for e in ours_cols] if target else []
        print(f"| {label} | " + " | ".join(vals) + " |")
    tok = [f"{tokens / summaries[e]['step']:.0f}" for e in engines]
    print("| tokens/s | " + " | ".join(tok + [""] * len(ratio_cols)) + " |")
    print()
    print("warm-up (each round's steps before the timed ones; the timed steps are min / median / max):")
    for e in engines:
        for i, r in enumerate(results[e]):
            timed_steps = [sum(s) for s in r["splits"]]
            print(f"  {e}, round {i + 1}: {r['warmup_note']}; timed {bench.fmt_stats(timed_steps)} s")
    print()
    if target:                                 # round r's ours / round r's torch: drift cancels
        for e in ours_cols:
            step = lambda r: statistics.median(sum(s) for s in r["splits"])   # noqa: E731
            per_round = [step(a) / step(b) for a, b in zip(results[e], results[target])]
            print(f"paired: {e} / {target}, round by round: " + ", ".join(f"{x:.2f}x" for x in per_round)
                  + f"; median {statistics.median(per_round):.2f}x")
        if "torch compiled" in results:
            compile_s = statistics.median(sum(r["warmup"]) for r in results["torch compiled"])
            print(f"torch compiled: {compile_s:.1f} s of compiling and warm-up steps before the timed steps "
                  f"(median over rounds)")
            for e in ours_cols:
                print(f"{e} / torch compiled = {summaries[e]['step'] / summaries['torch compiled']['step']:.2f}x")
        print()
    # the limit: the best of each probe over the rounds (a peak), and each engine's step against it
    f32 = max(r["f32"] for r in limits)
    bf16 = max((r["bf16"] for r in limits if r["bf16"] is not None), default=None)
    bandwidth = max(r["bandwidth"] for r in limits)
    n, mib = limits[0]["n"], limits[0]["mib"]
    print(f"the limit on this CPU ({limits[0]['threads']} threads, best of {args.rounds} probe(s)): GEMM peak "
          f"{f32:.0f} GFLOP/s float32 (NumPy BLAS, {n}x{n}x{n})" +
          (f", {bf16:.0f} GFLOP/s bf16 ({limits[0]['bf16_backend']})" if bf16 else
           f", no fast bf16 GEMM ({limits[0]['bf16_backend']})") +
          f"; copy bandwidth {bandwidth:.1f} GB/s (a {mib} MiB streaming copy, read + write)")
    bounds = {}
    for name, peak, is_bf16 in (("float32", f32, False), ("bf16", bf16, True)):
        if peak is None:
            continue
        bound, parts = bench.step_bound(cfg, args.batch, args.seq, peak, bandwidth, bf16=is_bf16)
        bounds[name] = bound
        print(f"lower bound of a {name} step: {parts['gflop']:.1f} GFLOP of GEMMs at {peak:.0f} GFLOP/s = "
              f"{parts['gemm_s']:.3f} s, + AdamW's and the activations' {parts['gbytes']:.2f} GB at "
              f"{bandwidth:.1f} GB/s = {parts['bytes_s']:.3f} s: {bound:.3f} s")
    for e in engines:
        which = "bf16" if e in BF16_ENGINES and "bf16" in bounds else "float32"
        step = summaries[e]["step"]
        print(f"{e}: step {step:.3f} s (median) = {step / bounds[which]:.2f}x its {which} bound; "
              f"{bench.step_flops(cfg, args.batch, args.seq) / 1e9 / step:.0f} GFLOP/s of GEMM work achieved")
    for e in ours_cols:
        print()
        print(f"per-op profile of one step ({e}):")
        print(results[e][-1]["profile"])


if __name__ == "__main__":
    main()
