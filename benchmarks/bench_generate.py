"""Generation speed with and without the KV cache, GPT-2 124M architecture.

    python benchmarks/bench_generate.py [--new-tokens 200] [--prompt-tokens 20] [--kernels numpy|numba]

Random weights (GPT_CONFIG_124M: context 1024, 12 layers, 768 wide, 50257 tokens), a random
20-token prompt, 200 greedy new tokens, batch 1. Without the cache each step reruns the whole
sequence so far (20..219 positions); with it, each step is one position's forward (the output
head, 768 x 50257, is then the largest single cost). Both paths are warmed up first (numba
compiles, BLAS spins up), then timed once each; the table also says whether they produced the
same tokens. The cached path is also timed on one thread (generation.cpu_threads): its
one-position ops are too small to gain from a second thread, and lose badly when the
cores are busy with other work.
"""
import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tinygrad_gpt import GPTModel, generate, manual_seed   # noqa: E402
from tinygrad_gpt.generation import cpu_threads            # noqa: E402
from tinygrad_gpt.kernels import get_backend, set_backend  # noqa: E402
from tinygrad_gpt.model import get_config                  # noqa: E402
from machine import cpu_line                               # noqa: E402  (benchmarks/machine.py)


def blas_name():
    try:
        from threadpoolctl import threadpool_info
        blas = next((i for i in threadpool_info() if i.get("user_api") == "blas"), {})
        return f"{blas.get('internal_api', '?')} {blas.get('version', '')}, {blas.get('num_threads', '?')} threads"
    except ImportError:
        return "?"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--prompt-tokens", type=int, default=20)
    p.add_argument("--kernels", choices=["numpy", "numba"], default=None)
    args = p.parse_args(argv)
    if args.kernels:
        set_backend(args.kernels)

    cfg = get_config("124M")                                   # context 1024
    manual_seed(123)
    model = GPTModel(cfg).eval()
    idx = np.random.default_rng(123).integers(0, cfg["vocab_size"], size=(1, args.prompt_tokens))
    ctx = cfg["context_length"]

    print(f"python {platform.python_version()}  numpy {np.__version__} ({blas_name()})  kernels {get_backend()}")
    print(cpu_line())
    print(f"model: GPT-2 124M architecture, random weights, {model.num_parameters():,} parameters, "
          f"context {ctx}; prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, greedy, batch 1")

    for use_cache in (True, False):                            # warm-up: compile, allocate
        generate(model, idx, 2, ctx, use_cache=use_cache)

    cores = os.cpu_count() or 1
    runs = [("no cache (book)", False, cores), ("KV cache", True, cores)]
    if cores > 1:                   # one-position steps are tiny: see generation.cpu_threads
        runs.append(("KV cache", True, 1))
    rows, outputs = [], []
    for name, use_cache, threads in runs:
        with cpu_threads(threads):
            t0 = time.perf_counter()
            outputs.append(generate(model, idx, args.new_tokens, ctx, use_cache=use_cache))
            seconds = time.perf_counter() - t0
        rows.append((name, threads, seconds, args.new_tokens / seconds))
    same = all(np.array_equal(outputs[0], o) for o in outputs[1:])
    base = rows[0][3]
    print()
    print(f"| {'path':16s} | threads | {'new tokens':>10s} | {'seconds':>8s} | {'tokens/s':>8s} | {'speedup':>7s} |")
    print(f"|{'-' * 18}|--------:|{'-' * 11}:|{'-' * 9}:|{'-' * 9}:|{'-' * 8}:|")
    for name, threads, seconds, rate in rows:
        print(f"| {name:16s} | {threads:7d} | {args.new_tokens:10d} | {seconds:8.2f} | {rate:8.2f} "
              f"| {rate / base:6.1f}x |")
    print(f"\nsame tokens with and without the cache: {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
