"""One GPT-2 training step on the CPU: this engine against the book's PyTorch code.

    python benchmarks/bench_train_step.py                       # 124M, batch 2 x 256
    python benchmarks/bench_train_step.py --compare-torch       # + the book's GPTModel, alternating
    python benchmarks/bench_train_step.py --kernels numpy       # the plain-NumPy kernels
    python benchmarks/bench_train_step.py --model tiny --steps 3

Each engine runs in its own process (so peak memory is its own), in alternating rounds
(so a busy machine slows both alike); the table reports medians and the ratio. The
"GEMM floor" is the time the step's matrix products alone take with NumPy's BLAS, in
the same process: a step can't be faster, and the ratio to it says how much the rest costs.
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


def gemm_floor(cfg, B, T, repeats=3):
    """Seconds the step's GEMMs take in NumPy (float32, preallocated outputs), and GFLOP."""
    total, flops = 0.0, 0.0
    cache = {}
    for count, m, k, n in step_gemms(cfg, B, T):
        key = (m, k, n)
        if key not in cache:
            a = np.random.rand(m, k).astype(np.float32)
            b = np.random.rand(k, n).astype(np.float32)
            out = np.empty((m, n), np.float32)
            np.matmul(a, b, out=out)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                np.matmul(a, b, out=out)
                times.append(time.perf_counter() - t)
            cache[key] = min(times)
        total += count * cache[key]
        flops += count * 2.0 * m * k * n
    return total, flops / 1e9


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20     # Linux: KiB


# ----------------------------------------------------------------------------- workers
def worker_ours(args, cfg):
    import tinygrad_gpt as tg
    from tinygrad_gpt.kernels import set_backend
    set_backend(args.kernels)                  # tinygrad_gpt is already imported: switch explicitly
    from tinygrad_gpt import functional as F
    from tinygrad_gpt.cli import setup_threads
    from tinygrad_gpt.tensor import no_grad, profile
    runtime = setup_threads(args.threads)
    tg.manual_seed(123)
    model = tg.GPTModel(cfg)
    opt = tg.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg["vocab_size"], (args.batch, args.seq))
    y = rng.integers(0, cfg["vocab_size"], (args.batch, args.seq))

    def step():
        t0 = time.perf_counter()
        opt.zero_grad()
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
        with no_grad():
            F.cross_entropy(model(x), y)
        evals.append(time.perf_counter() - t)
    floor, gflop = gemm_floor(cfg, args.batch, args.seq)
    return {"splits": splits, "eval": evals, "peak_rss_gib": peak_rss_gib(), "gemm_floor": floor,
            "gflop": gflop, "profile": prof.table(), "runtime": runtime, "warmup": warmup}


def worker_torch(args, cfg):
    import torch
    from llms_from_scratch.ch04 import GPTModel
    torch.set_num_threads(args.threads or os.cpu_count())
    torch.manual_seed(123)
    model = GPTModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.integers(0, cfg["vocab_size"], (args.batch, args.seq)))
    y = torch.tensor(rng.integers(0, cfg["vocab_size"], (args.batch, args.seq)))

    def step():
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    for _ in range(args.warmup):
        step()
    splits = [step() for _ in range(args.steps)]
    model.eval()
    evals = []
    for _ in range(max(2, args.steps)):
        t = time.perf_counter()
        with torch.no_grad():
            torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        evals.append(time.perf_counter() - t)
    return {"splits": splits, "eval": evals, "peak_rss_gib": peak_rss_gib(),
            "runtime": f"torch {torch.__version__}, {torch.get_num_threads()} threads"}


def run_worker(engine, args):
    cmd = [sys.executable, __file__, "--worker", engine, "--model", args.model, "--batch", str(args.batch),
           "--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--kernels", args.kernels] + (["--threads", str(args.threads)] if args.threads else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
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
    p.add_argument("--compare-torch", action="store_true")
    p.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args()

    sys.path.insert(0, os.path.dirname(HERE))
    from tinygrad_gpt.model import get_config
    cfg = get_config(args.model)
    cfg["context_length"] = args.seq
    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_torch
        print(json.dumps(fn(args, cfg)))
        return

    engines = ["ours"] + (["torch"] if args.compare_torch else [])
    results = {e: [] for e in engines}
    for r in range(args.rounds):
        for e in engines:
            print(f"round {r + 1}/{args.rounds}: {e} ...", file=sys.stderr, flush=True)
            results[e].append(run_worker(e, args))
    ours = summarize(results["ours"])
    tokens = args.batch * args.seq
    floor = statistics.median(r["gemm_floor"] for r in results["ours"])
    gflop = results["ours"][0]["gflop"]
    print(f"# {args.model}, batch {args.batch} x {args.seq}, kernels {args.kernels}, "
          f"{args.rounds} rounds x {args.steps} steps (median)")
    print(f"# {results['ours'][0]['runtime']}")
    if args.compare_torch:
        print(f"# {results['torch'][0]['runtime']}")
    print()
    cols = engines + (["ratio"] if args.compare_torch else [])
    rows = [("step (s)", "step"), ("  forward + loss (s)", "fwd"), ("  backward (s)", "bwd"),
            ("  AdamW step (s)", "opt"), ("eval forward (s)", "eval"), ("peak RSS (GiB)", "rss")]
    summaries = {e: summarize(results[e]) for e in engines}
    print("| " + " | ".join(["measure"] + cols) + " |")
    print("|" + "---|" * (len(cols) + 1))
    for label, key in rows:
        vals = [f"{summaries[e][key]:.3f}" for e in engines]
        if args.compare_torch:
            vals.append(f"{summaries['ours'][key] / summaries['torch'][key]:.2f}x")
        print(f"| {label} | " + " | ".join(vals) + " |")
    tok = [f"{tokens / summaries[e]['step']:.0f}" for e in engines]
    print("| tokens/s | " + " | ".join(tok) + (" | |" if args.compare_torch else " |"))
    print()
    print(f"GEMM floor (the step's {gflop:.0f} GFLOP of matrix products alone, NumPy BLAS, same process): "
          f"{floor:.3f} s = {gflop / floor:.0f} GFLOP/s")
    print(f"achieved: {gflop / ours['step']:.0f} GFLOP/s = {floor / ours['step']:.0%} of the GEMM rate; "
          f"step / GEMM floor = {ours['step'] / floor:.2f}")
    print(f"first-round warm-up (includes numba compile or cache load): {results['ours'][0]['warmup']:.1f} s")
    print()
    print("per-op profile of one step (ours):")
    print(results["ours"][-1]["profile"])


if __name__ == "__main__":
    main()
