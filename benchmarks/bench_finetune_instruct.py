"""Chapter 7's instruction finetuning of GPT-2 124M: the engine's own API against the book's
PyTorch code (llms_from_scratch 1.0.19), on the same machine, the same weights, the same batches.

    python benchmarks/bench_finetune_instruct.py                      # 124M, the book's settings
    python benchmarks/bench_finetune_instruct.py --steps 0            # every step of the book's 2 epochs
    python benchmarks/bench_finetune_instruct.py --model tiny --records 40 --steps 3   # a smoke run

The book's settings: context 1024 with qkv bias (GPT-2's), dropout 0, batch 8, AdamW lr 5e-5
weight decay 0.1, 2 epochs over 85% of its 1,100 records, each batch padded to its longest
record (+1) with the -100 targets. The data is made here, of the book's size and shape: 1,100
instruction / input / output records from the sample story, a third without an input.

Steady state: each engine first repeats the first batch until two consecutive steps agree
within 5 % (at least 3 steps: numba compiles, allocators settle), and the one that settled
first takes untimed steps on it until both have taken as many (the same model in both, so
the losses can be compared step by step); then both run the same
batches in the same order (shuffle off), alternating engine by engine for each batch so a
busy machine slows both alike. The table gives seconds per step (min / median / max) and the
whole run extrapolated from the median (or measured, with --steps 0). The warm-up rule, the
timer and the CPU line are benchmarks/common.py's.
"""
import argparse
import os
import statistics

import numpy as np

import common as bench  # noqa: E402  (benchmarks/common.py: paths, the CPU line, the timer, the warm-up rule)

INSTRUCTIONS = ["Rewrite the sentence in your own words.", "Repeat the sentence.",
                "Summarize the sentence.", "Continue the story after this sentence.",
                "What is the main idea of the sentence?", "Rewrite the sentence in the passive voice."]


def make_records(n, seed=123):
    """n records of the book's shape, from the repository's sample story."""
    from tinygrad_gpt.data import SAMPLE_TEXT_PATH
    text = SAMPLE_TEXT_PATH.read_text(encoding="utf-8")
    sentences = [s.strip().replace("\n", " ") for s in text.split(".") if 15 < len(s.strip()) < 200]
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        a, b = rng.integers(0, len(sentences), 2)
        records.append({"instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)],
                        "input": sentences[a] + "." if i % 3 else "",
                        "output": sentences[b] + "."})
    return records


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="124M")
    p.add_argument("--records", type=int, default=1100, help="the book's instruction-data.json has 1,100")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="batches timed after warm-up; 0: every step of the run")
    p.add_argument("--kernels", choices=["numpy", "numba"], default="numba")
    p.add_argument("--threads", type=int, default=None, help="both engines (default: all cores)")
    args = p.parse_args()

    import torch
    from llms_from_scratch import ch04 as book_ch04, ch05 as book_ch05, ch07 as book_ch07
    from tinygrad_gpt import GPTModel, get_config
    from tinygrad_gpt import finetune as ft
    from tinygrad_gpt.cli import setup_threads
    from tinygrad_gpt.kernels import set_backend
    from tinygrad_gpt.optim import AdamW
    from tinygrad_gpt.tokenizer import get_gpt2_tokenizer

    set_backend(args.kernels)
    setup_threads(args.threads, warm_up=True)
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    cfg = {**get_config(args.model), "drop_rate": 0.0, "qkv_bias": True}
    if args.model == "124M":
        cfg["context_length"] = 1024                      # GPT-2's, as the book's BASE_CONFIG
    tokenizer = get_gpt2_tokenizer()
    data = make_records(args.records)
    train_data, _, _ = ft.split_instruction_data(data)
    allowed = cfg["context_length"]

    # the same weights in both
    torch.manual_seed(123)
    book = book_ch04.GPTModel(cfg)
    ours = GPTModel(cfg)
    ours.load_state_dict({k: v.numpy() for k, v in book.state_dict().items()})
    book_opt = torch.optim.AdamW(book.parameters(), lr=5e-5, weight_decay=0.1)
    our_opt = AdamW(ours.parameters(), lr=5e-5, weight_decay=0.1)

    # the same batches: the book's dataset and collate for PyTorch, ours for the engine
    book_ds = book_ch07.InstructionDataset(train_data, tokenizer)
    our_ds = ft.InstructionDataset(train_data, tokenizer, allowed_max_length=allowed)
    n_batches = len(train_data) // args.batch_size                     # drop_last, as the book
    batches = []
    for b in range(n_batches):
        idx = np.arange(b * args.batch_size, (b + 1) * args.batch_size)
        x, y = our_ds[idx]
        bx, by = book_ch07.custom_collate_fn([book_ds[i] for i in idx], allowed_max_length=allowed)
        assert x.tolist() == bx.tolist() and y.tolist() == by.tolist()
        batches.append(((x, y), (bx, by)))
    total_steps = args.epochs * n_batches

    def step_book(x, y):
        book_opt.zero_grad()
        loss = book_ch05.calc_loss_batch(x, y, book, "cpu")
        loss.backward()
        book_opt.step()
        return loss.item()

    def step_ours(x, y):
        our_opt.zero_grad()
        loss = ft.F.cross_entropy(ours(x), y)
        loss.backward()
        our_opt.step()
        return loss.item()

    warm = {"book's PyTorch code": bench.warm_up(lambda: step_book(*batches[0][1])),
            "engine (tinygrad_gpt)": bench.warm_up(lambda: step_ours(*batches[0][0]))}
    # the same number of optimizer steps on the first batch in both, so the two models stay the
    # same model and the timed steps' losses can be compared (untimed top-up steps)
    warm_steps = max(len(w.times) for w in warm.values())
    for _ in range(warm_steps - len(warm["book's PyTorch code"].times)):
        step_book(*batches[0][1])
    for _ in range(warm_steps - len(warm["engine (tinygrad_gpt)"].times)):
        step_ours(*batches[0][0])
    steps = total_steps if args.steps == 0 else min(args.steps, total_steps)
    times = {name: [] for name in warm}
    losses = {name: [] for name in warm}
    for s in range(steps):
        ours_batch, book_batch = batches[s % n_batches]
        for name, fn, batch in (("book's PyTorch code", step_book, book_batch),
                                ("engine (tinygrad_gpt)", step_ours, ours_batch)):
            seconds, loss = bench.timed(fn, *batch)
            losses[name].append(loss)
            times[name].append(seconds)

    print(bench.cpu_line())
    print(bench.runtime_line(threads, "float32") + f"; torch {torch.__version__}, {torch.get_num_threads()} threads")
    lengths = [b[0][0].shape[1] for b in batches]
    print(f"GPT-2 {args.model} (context {cfg['context_length']}), {len(train_data)} training records of "
          f"{args.records}, batch {args.batch_size}, {n_batches} steps per epoch, {args.epochs} epochs = "
          f"{total_steps} steps; batch lengths {min(lengths)}-{max(lengths)} tokens (median "
          f"{statistics.median(lengths):.0f})")
    for name, w in warm.items():
        print(f"{name}: {w.describe()}")
    print(f"timed: {steps} steps each, alternating" + (" (the whole run)" if steps == total_steps else ""))
    base = statistics.median(times["book's PyTorch code"])
    print(f"| {'run':24s} | {'min s':>7s} | {'median s':>8s} | {'max s':>7s} | {'run, min':>8s} | "
          f"{'vs book':>7s} | {'last loss':>9s} |")
    print(f"|{'-' * 26}|{'-' * 9}|{'-' * 10}|{'-' * 9}|{'-' * 10}|{'-' * 9}|{'-' * 11}|")
    for name, t in times.items():
        med = statistics.median(t)
        run = sum(t) if steps == total_steps else med * total_steps
        print(f"| {name:24s} | {min(t):7.3f} | {med:8.3f} | {max(t):7.3f} | {run / 60:8.2f} | "
              f"{med / base:6.2f}x | {losses[name][-1]:9.5f} |")
    worst = max(abs(a - b) / abs(b) for a, b in zip(losses["engine (tinygrad_gpt)"], losses["book's PyTorch code"]))
    print(f"losses agree step by step (both after {warm_steps} warm-up steps on the first batch): worst "
          f"relative difference {worst:.1e}")


if __name__ == "__main__":
    main()
