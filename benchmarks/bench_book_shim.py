"""The book's own GPTModel on the engine (through tinygrad_gpt.torch) against the engine's own
GPTModel and against the book's code on PyTorch: seconds per training step.

    python benchmarks/bench_book_shim.py                    # 124M architecture, batch 2 x 128
    python benchmarks/bench_book_shim.py --model tiny --context-length 64 --rounds 5

One process; each is warmed to its steady state first (benchmarks/common.py: two consecutive
steps within 5 %, at least 3), then the three run in alternating rounds (so a busy machine slows
all alike); the table reports min / median / max and the ratio of medians. A step is
forward, cross-entropy, backward and one AdamW update, with the same weights in all three. The book composes layer norm, GELU and attention from small
ops; the engine's own model runs one fused op each: the ratio is what fusing buys.
"""
import argparse

import numpy as np

import common as bench  # benchmarks/common.py: paths, the machine line, the timer, the warm-up rule


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="124M")
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--kernels", choices=["numpy", "numba"], default="numba")
    args = p.parse_args()

    import torch
    from llms_from_scratch import ch04 as real_ch04
    import tinygrad_gpt.torch as shim
    from tinygrad_gpt import GPTModel, get_config
    from tinygrad_gpt import functional as F
    from tinygrad_gpt.kernels import set_backend
    from tinygrad_gpt.optim import AdamW
    from tinygrad_gpt.torch.binding import load_book_modules

    set_backend(args.kernels)
    cfg = {**get_config(args.model), "context_length": args.context_length, "drop_rate": 0.0}
    ch04, = load_book_modules("ch04")
    torch.manual_seed(123)
    book = real_ch04.GPTModel(cfg)
    state = book.state_dict()
    book_on_engine = ch04.GPTModel(cfg)
    book_on_engine.load_state_dict(state)
    ours = GPTModel(cfg)
    ours.load_state_dict({k: v.numpy() for k, v in state.items()})
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg["vocab_size"], (args.batch_size, args.context_length))
    y = rng.integers(0, cfg["vocab_size"], (args.batch_size, args.context_length))

    t_opt = torch.optim.AdamW(book.parameters(), lr=4e-4, weight_decay=0.1)
    s_opt = shim.optim.AdamW(book_on_engine.parameters(), lr=4e-4, weight_decay=0.1)
    o_opt = AdamW(ours.parameters(), lr=4e-4, weight_decay=0.1)
    tx, ty, sx, sy = torch.tensor(x), torch.tensor(y), shim.tensor(x), shim.tensor(y)

    def step_torch():
        t_opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(book(tx).flatten(0, 1), ty.flatten())
        loss.backward()
        t_opt.step()
        return loss.item()

    def step_shim():
        s_opt.zero_grad()
        loss = shim.nn.functional.cross_entropy(book_on_engine(sx).flatten(0, 1), sy.flatten())
        loss.backward()
        s_opt.step()
        return loss.item()

    def step_ours():
        o_opt.zero_grad()
        loss = F.cross_entropy(ours(x), y)
        loss.backward()
        o_opt.step()
        return loss.item()

    runs = {"book's GPTModel on PyTorch": step_torch, "book's GPTModel on the engine (shim)": step_shim,
            "engine's own GPTModel (fused ops)": step_ours}
    times = {k: [] for k in runs}
    losses = {k: [] for k in runs}
    warm = {name: bench.warm_up(lambda: losses[name].append(fn())) for name, fn in runs.items()}
    for name, fn in runs.items():                 # the same step count everywhere: comparable losses
        while len(losses[name]) < max(len(v) for v in losses.values()):
            losses[name].append(fn())
    for _ in range(args.rounds):                  # numba compiled, allocators settled: alternate
        for name, fn in runs.items():
            seconds, loss = bench.timed(fn)
            losses[name].append(loss)
            times[name].append(seconds)

    print(f"{bench.cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(bench.runtime_line())
    print(f"GPT-2 {args.model} architecture, context {args.context_length}, batch {args.batch_size}, "
          f"{args.rounds} rounds after each one's warm-up")
    for name in runs:
        print(f"  {name}: {warm[name].describe()}")
    base = bench.stats(times["book's GPTModel on PyTorch"])[1]
    print(f"| {'run':38s} | {'s/step min / median / max':>25s} | {'vs PyTorch':>10s} | {'last loss':>9s} |")
    print(f"|{'-' * 40}|{'-' * 27}|{'-' * 12}|{'-' * 11}|")
    for name in runs:
        med = bench.stats(times[name])[1]
        print(f"| {name:38s} | {bench.fmt_stats(times[name]):>25s} | {med / base:9.2f}x | {losses[name][-1]:9.5f} |")


if __name__ == "__main__":
    main()
