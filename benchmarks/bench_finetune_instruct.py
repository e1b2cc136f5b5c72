"""Chapter 7's instruction finetuning of GPT-2 124M: the engine's own API against the book's
PyTorch code (llms_from_scratch 1.0.19), on the same machine, the same weights, the same batches.

    python benchmarks/bench_finetune_instruct.py                      # 124M, the book's settings
    python benchmarks/bench_finetune_instruct.py --steps 0            # every step of the book's 2 epochs
    python benchmarks/bench_finetune_instruct.py --model tiny --records 40 --steps 3   # a smoke run

The book's settings: context 1024 with qkv bias (GPT-2's), dropout 0, batch 8, AdamW lr 5e-5
weight decay 0.1, 2 epochs over 85% of its 1,100 records, each batch padded to its longest
record (+1) with the -100 targets. The data is made here, of the book's size and shape: 1,100
instruction / input / output records from the sample story, a third without an input.

One process per engine (a worker, as bench_train_step.py): in one process, each engine
stepping between the other's steps, ours ran 3.5-3.7 s a step against 2.1-2.7 s alone
(benchmarks/RESULTS.md, "Chapter 7 in one process or two"). The weights are made once (the
book's GPTModel under torch.manual_seed(123)) and handed to both workers in a safetensors
file. Each worker repeats the first batch until two consecutive steps agree within 5 % (at
least 3 steps: numba compiles, allocators settle), then puts the initial weights back and
starts a new AdamW, so both engines time the same run from the same state: the same batches
in the same order (shuffle off), their losses compared step by step. The processes
alternate, engine by engine, for --rounds rounds. The table gives seconds per step (min /
median / max over every round's steps) and the whole run extrapolated from the median (or
measured, with --steps 0). The warm-up rule, the timer and the CPU line are
benchmarks/common.py's.
"""
import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile

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


ENGINES = {"book": "book's PyTorch code", "ours": "engine (tinygrad_gpt)"}


def setting(args):
    """The model config, the training records and the batches' count, the same in both workers."""
    from tinygrad_gpt import finetune as ft
    from tinygrad_gpt import get_config
    cfg = {**get_config(args.model), "drop_rate": 0.0, "qkv_bias": True}
    if args.model == "124M":
        cfg["context_length"] = 1024                      # GPT-2's, as the book's BASE_CONFIG
    train_data, _, _ = ft.split_instruction_data(make_records(args.records))
    return cfg, train_data, len(train_data) // args.batch_size            # drop_last, as the book


def worker(args):
    """One engine: its batches, its warm-up, the timed steps; one JSON line on stdout."""
    from safetensors.numpy import load_file
    from tinygrad_gpt import finetune as ft
    from tinygrad_gpt.tokenizer import get_gpt2_tokenizer
    cfg, train_data, n_batches = setting(args)
    weights = load_file(args.weights)
    tokenizer = get_gpt2_tokenizer()
    allowed = cfg["context_length"]
    total_steps = args.epochs * n_batches
    steps = total_steps if args.steps == 0 else min(args.steps, total_steps)
    if args.worker == "book":
        import torch
        from llms_from_scratch import ch04 as book_ch04, ch05 as book_ch05, ch07 as book_ch07
        torch.set_num_threads(args.threads or os.cpu_count())
        model = book_ch04.GPTModel(cfg)
        initial = {k: torch.from_numpy(v) for k, v in weights.items()}
        model.load_state_dict(initial)
        dataset = book_ch07.InstructionDataset(train_data, tokenizer)

        def batch(b):
            return book_ch07.custom_collate_fn([dataset[i] for i in range(b * args.batch_size, (b + 1) * args.batch_size)],
                                               allowed_max_length=allowed)

        def new_optimizer():
            return torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)

        def step(x, y):
            opt.zero_grad()
            loss = book_ch05.calc_loss_batch(x, y, model, "cpu")
            loss.backward()
            opt.step()
            return loss.item()
        runtime = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    else:
        from tinygrad_gpt import GPTModel
        from tinygrad_gpt.cli import setup_threads
        from tinygrad_gpt.kernels import set_backend
        from tinygrad_gpt.optim import AdamW
        set_backend(args.kernels)
        runtime = setup_threads(args.threads, warm_up=True)
        model = GPTModel(cfg)
        initial = weights
        model.load_state_dict(initial)
        dataset = ft.InstructionDataset(train_data, tokenizer, allowed_max_length=allowed)

        def batch(b):
            return dataset[np.arange(b * args.batch_size, (b + 1) * args.batch_size)]

        def new_optimizer():
            return AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)

        def step(x, y):
            opt.zero_grad()
            loss = ft.F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss.item()
    batches = [batch(b) for b in range(n_batches)]
    digest = hashlib.sha256()
    for x, y in batches:
        digest.update(np.asarray(x, np.int64).tobytes() + np.asarray(y, np.int64).tobytes())
    opt = new_optimizer()
    warm = bench.warm_up(lambda: step(*batches[0]))
    model.load_state_dict(initial)                         # the same state in both engines' timed run
    opt = new_optimizer()
    times, losses = [], []
    for s in range(steps):
        seconds, loss = bench.timed(step, *batches[s % n_batches])
        times.append(seconds)
        losses.append(loss)
    lengths = [int(np.asarray(x).shape[1]) for x, _ in batches]
    print(json.dumps({"times": times, "losses": losses, "warmup": warm.describe(), "runtime": runtime,
                      "batches": digest.hexdigest(), "lengths": lengths, "records": len(train_data),
                      "context": cfg["context_length"], "n_batches": n_batches, "total_steps": total_steps}))


def run_worker(engine, args, weights):
    cmd = [sys.executable, __file__, "--worker", engine, "--weights", weights, "--model", args.model,
           "--records", str(args.records), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
           "--steps", str(args.steps), "--kernels", args.kernels] + (["--threads", str(args.threads)] if args.threads else [])
    return bench.run_worker(cmd, ENGINES[engine])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="124M")
    p.add_argument("--records", type=int, default=1100, help="the book's instruction-data.json has 1,100")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="batches timed after warm-up; 0: every step of the run")
    p.add_argument("--rounds", type=int, default=2, help="alternating processes per engine")
    p.add_argument("--kernels", choices=["numpy", "numba"], default="numba")
    p.add_argument("--threads", type=int, default=None, help="both engines (default: all cores)")
    p.add_argument("--worker", choices=list(ENGINES), help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    import torch
    from llms_from_scratch import ch04 as book_ch04
    from safetensors.numpy import save_file
    cfg, _, _ = setting(args)
    torch.manual_seed(123)                                 # the same weights in both: the book's init
    state = {k: v.detach().numpy().copy() for k, v in book_ch04.GPTModel(cfg).state_dict().items()}
    results = {e: [] for e in ENGINES}
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.safetensors")
        save_file(state, weights)
        del state
        for r in range(args.rounds):
            for e in ENGINES:
                print(f"round {r + 1}/{args.rounds}: {ENGINES[e]} ...", file=sys.stderr, flush=True)
                results[e].append(run_worker(e, args, weights))
    first = results["ours"][0]
    if any(res["batches"] != first["batches"] for rs in results.values() for res in rs):
        sys.exit("the two engines' batches differ: the comparison is void")

    print(bench.cpu_line())
    print(f"ours: {first['runtime']}; book: {results['book'][0]['runtime']}; one process per engine and round")
    lengths = first["lengths"]
    print(f"GPT-2 {args.model} (context {first['context']}), {first['records']} training records of "
          f"{args.records}, batch {args.batch_size}, {first['n_batches']} steps per epoch, {args.epochs} epochs = "
          f"{first['total_steps']} steps; batch lengths {min(lengths)}-{max(lengths)} tokens (median "
          f"{statistics.median(lengths):.0f})")
    for e, rs in results.items():
        for r, res in enumerate(rs):
            print(f"{ENGINES[e]}, round {r + 1}: {res['warmup']}")
    steps = len(first["times"])
    print(f"timed: {steps} steps a round, {args.rounds} rounds, the processes alternating"
          + (" (the whole run)" if steps == first["total_steps"] else ""))
    times = {e: [t for res in rs for t in res["times"]] for e, rs in results.items()}
    base = statistics.median(times["book"])
    print(f"| {'run':24s} | {'min s':>7s} | {'median s':>8s} | {'max s':>7s} | {'run, min':>8s} | "
          f"{'vs book':>7s} | {'last loss':>9s} |")
    print(f"|{'-' * 26}|{'-' * 9}|{'-' * 10}|{'-' * 9}|{'-' * 10}|{'-' * 9}|{'-' * 11}|")
    for e, t in times.items():
        med = statistics.median(t)
        run = sum(results[e][0]["times"]) if steps == first["total_steps"] else med * first["total_steps"]
        print(f"| {ENGINES[e]:24s} | {min(t):7.3f} | {med:8.3f} | {max(t):7.3f} | {run / 60:8.2f} | "
              f"{med / base:6.2f}x | {results[e][0]['losses'][-1]:9.5f} |")
    rounds = [statistics.median(o["times"]) / statistics.median(b["times"]) for o, b in zip(results["ours"], results["book"])]
    print("paired rounds, ours / book: " + ", ".join(f"{x:.2f}x" for x in rounds))
    worst = max(abs(a - b) / abs(b) for a, b in zip(results["ours"][0]["losses"], results["book"][0]["losses"]))
    print(f"losses agree step by step (both from the same weights and a new AdamW after the warm-up): worst "
          f"relative difference {worst:.1e}")


if __name__ == "__main__":
    main()
