"""Generation speed with and without the KV cache, GPT-2 124M architecture.

    python benchmarks/bench_generate.py [--new-tokens 200] [--prompt-tokens 20] [--kernels numpy|numba]
    python benchmarks/bench_generate.py --smoke          # 8 new tokens, 1 timed run: checks the script

Random weights (GPT_CONFIG_124M: context 1024, 12 layers, 768 wide, 50257 tokens), a random
20-token prompt, 200 greedy new tokens, batch 1. Without the cache each step reruns the whole
sequence so far (20..219 positions); with it, each step is one position's forward (the output
head, 768 x 50257, is then the largest single cost). Each path is warmed to its steady state
first (benchmarks/common.py: a short generation of --warmup-tokens, repeated until two
consecutive runs agree within 5 %, at least 3 runs: numba compiles, BLAS spins up), then the
full generation is timed --repeats times: the table gives min / median / max seconds and
tokens/s from the median, and whether the paths produced the same tokens. The cached path is
also timed on one thread (generation.cpu_threads): its one-position ops are too small to gain
from a second thread, and lose badly when the cores are busy with other work.
"""
import argparse
import os
import sys

import numpy as np

import common as bench  # benchmarks/common.py: paths, the machine line, the timer, the warm-up rule

from tinygrad_gpt import GPTModel, generate, manual_seed   # noqa: E402
from tinygrad_gpt.generation import cpu_threads            # noqa: E402
from tinygrad_gpt.kernels import set_backend               # noqa: E402
from tinygrad_gpt.model import get_config                  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--prompt-tokens", type=int, default=20)
    p.add_argument("--warmup-tokens", type=int, default=20, help="new tokens of each warm-up run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each path, after its warm-up")
    p.add_argument("--kernels", choices=["numpy", "numba"], default=None)
    p.add_argument("--smoke", action="store_true", help="check the script, not the speed: 8 new tokens, "
                   "2 per warm-up run, 1 timed run, a warm-up of 3 runs")
    args = p.parse_args(argv)
    max_warmup = bench.WARMUP_MAX
    if args.smoke:
        args.new_tokens, args.warmup_tokens, args.repeats, max_warmup = 8, 2, 1, bench.WARMUP_MIN
    if args.kernels:
        set_backend(args.kernels)

    cfg = get_config("124M")                                   # context 1024
    manual_seed(123)
    model = GPTModel(cfg).eval()
    idx = np.random.default_rng(123).integers(0, cfg["vocab_size"], size=(1, args.prompt_tokens))
    ctx = cfg["context_length"]

    cores = os.cpu_count() or 1
    runs = [("no cache (book)", False, cores), ("KV cache", True, cores)]
    if cores > 1:                   # one-position steps are tiny: see generation.cpu_threads
        runs.append(("KV cache", True, 1))
    rows, outputs, notes = [], [], []
    for name, use_cache, threads in runs:
        with cpu_threads(threads):
            warm = bench.warm_up(lambda: generate(model, idx, args.warmup_tokens, ctx, use_cache=use_cache),
                                 max_steps=max_warmup)
            times = []
            for _ in range(args.repeats):
                seconds, out = bench.timed(lambda: generate(model, idx, args.new_tokens, ctx, use_cache=use_cache))
                times.append(seconds)
            outputs.append(out)
        rows.append((name, threads, times))
        notes.append(f"{name}, {threads} thread(s): {warm.describe('runs')} of {args.warmup_tokens} new tokens")

    print(bench.cpu_line())
    print(bench.runtime_line())
    print(f"model: GPT-2 124M architecture, random weights, {model.num_parameters():,} parameters, "
          f"context {ctx}; prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, greedy, batch 1; "
          f"{args.repeats} timed run(s) per path after its warm-up")
    for note in notes:
        print(f"  {note}")
    same = all(np.array_equal(outputs[0], o) for o in outputs[1:])
    rate = lambda times: args.new_tokens / bench.stats(times)[1]      # noqa: E731  (from the median)
    base = rate(rows[0][2])
    print()
    print(f"| {'path':16s} | threads | {'new tokens':>10s} | {'seconds min / median / max':>26s} | "
          f"{'tokens/s':>8s} | {'speedup':>7s} |")
    print(f"|{'-' * 18}|--------:|{'-' * 11}:|{'-' * 27}:|{'-' * 9}:|{'-' * 8}:|")
    for name, threads, times in rows:
        print(f"| {name:16s} | {threads:7d} | {args.new_tokens:10d} | {bench.fmt_stats(times, 2):>26s} | "
              f"{rate(times):8.2f} | {rate(times) / base:6.1f}x |")
    print(f"\nsame tokens with and without the cache: {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
