"""The book's whole chapter-5 run, end to end: examples/pretrain.py against the book's
PyTorch code (llms_from_scratch.ch05.train_model_simple) on the same machine, alternating.

    python benchmarks/bench_pretrain.py --compare-torch                  # the-verdict.txt from shared/data
    python benchmarks/bench_pretrain.py --data ../shared/data/the-verdict.txt --compare-torch --rounds 3
    python benchmarks/bench_pretrain.py --data ../shared/data/the-verdict.txt --precision both
    python benchmarks/bench_pretrain.py --smoke --compare-torch --precision both   # checks the script

Prints each run's wall time (process start to exit: imports, model init, training,
evaluation and sampling: what a reader waits for), its final losses, and the ratio. A run
is a whole process, so its warm-up (numba's cache, BLAS's threads, torch's first steps) is
part of what it costs; before the timed rounds, one untimed short run of ours fills numba's
on-disk cache (a first run ever compiles for ~1 minute, every later one reads the cache).
With --rounds N the runs alternate (so a busy machine slows all alike): min / median / max
per run, and the ratio of medians.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

import common as bench  # benchmarks/common.py: paths, shared data, the machine line, the timer

ROOT = str(bench.REPO)


def torch_worker(data_path, threads, smoke=False):
    """The book's chapter-5 script, with our offline tokenizer (tiktoken cannot download here)."""
    import torch
    from llms_from_scratch.ch02 import GPTDatasetV1
    from llms_from_scratch.ch04 import GPTModel
    from llms_from_scratch.ch05 import train_model_simple
    from tinygrad_gpt.model import get_config
    from tinygrad_gpt.tokenizer import get_gpt2_tokenizer

    torch.set_num_threads(threads or os.cpu_count())
    cfg = {"vocab_size": 50257, "context_length": 256, "emb_dim": 768, "n_heads": 12,
           "n_layers": 12, "drop_rate": 0.1, "qkv_bias": False}
    if smoke:                                  # the tiny model, context 32, one epoch: the script works
        cfg = {**get_config("tiny"), "context_length": 32}
    tokenizer = get_gpt2_tokenizer()
    text = open(data_path, encoding="utf-8").read()
    split = int(0.9 * len(text))

    def loader(txt, shuffle, drop_last):
        ds = GPTDatasetV1(txt, tokenizer, cfg["context_length"], cfg["context_length"])
        return torch.utils.data.DataLoader(ds, batch_size=2, shuffle=shuffle, drop_last=drop_last)

    torch.manual_seed(123)
    train_loader = loader(text[:split], True, True)
    val_loader = loader(text[split:], False, False)
    torch.manual_seed(123)
    model = GPTModel(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0004, weight_decay=0.1)
    start = bench.now()
    train_losses, val_losses, tokens_seen = train_model_simple(
        model, train_loader, val_loader, optimizer, "cpu", num_epochs=1 if smoke else 10, eval_freq=5,
        eval_iter=5, start_context="Every effort moves you", tokenizer=tokenizer)
    print(f"Training completed in {(bench.now() - start) / 60:.2f} minutes.")
    print(f"final train loss {train_losses[-1]:.3f}, final val loss {val_losses[-1]:.3f}, "
          f"tokens seen {tokens_seen[-1]}")


def run(cmd, log_path):
    with open(log_path, "w") as log:
        wall, code = bench.timed(lambda: subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                        cwd=ROOT).returncode)
    text = open(log_path).read()
    if code != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit code {code}; see {log_path}")
    m = re.search(r"final train loss ([\d.]+), final val loss ([\d.]+)", text)
    return wall, (m.group(1), m.group(2)) if m else ("?", "?")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="the-verdict.txt (default: shared/data/the-verdict.txt, found "
                   "as the tests find it)")
    p.add_argument("--compare-torch", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", choices=["float32", "bfloat16", "both"], default="float32",
                   help="ours: pretrain.py --precision (both: one run each); float32 is the book's run")
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds of every run")
    p.add_argument("--smoke", action="store_true",
                   help="check the script, not the speed: the tiny model, context 32, 1 epoch")
    p.add_argument("--logs", default="/tmp", help="where the runs' logs go")
    p.add_argument("--worker", choices=["torch"], help=argparse.SUPPRESS)
    args = p.parse_args()
    data = args.data or bench.shared_data("the-verdict.txt")
    if data is None or not os.path.isfile(data):
        print(f"bench_pretrain: no such file: {args.data or 'shared/data/the-verdict.txt'} (pass --data)",
              file=sys.stderr)
        sys.exit(2)
    if args.worker:
        torch_worker(data, args.threads, args.smoke)
        return

    try:
        os.makedirs(args.logs, exist_ok=True)
    except OSError as e:
        print(f"bench_pretrain: cannot use --logs {args.logs} ({e.strerror or e})", file=sys.stderr)
        sys.exit(2)
    threads = ["--threads", str(args.threads)] if args.threads else []
    small = ["--model", "tiny", "--context-length", "32", "--epochs", "1"] if args.smoke else []
    precisions = ["float32", "bfloat16"] if args.precision == "both" else [args.precision]
    pretrain = [sys.executable, "examples/pretrain.py", "--data", os.path.abspath(data), "--no-plot",
                "--out", os.path.join(args.logs, "bench-pretrain-out")]
    runs = [(f"tinygrad_gpt-{prec}", pretrain + ["--precision", prec] + threads + small) for prec in precisions]
    if args.compare_torch:
        runs.append(("book's PyTorch", [sys.executable, __file__, "--worker", "torch", "--data",
                                        os.path.abspath(data)] + threads + (["--smoke"] if args.smoke else [])))
    # numba's on-disk cache, once: a reader's second run onwards never compiles
    print("filling numba's cache (an untimed short run) ...", file=sys.stderr, flush=True)
    run(pretrain + ["--model", "tiny", "--context-length", "32", "--epochs", "1", "--precision", precisions[-1]]
        + threads, os.path.join(args.logs, "bench-pretrain-cache.log"))
    results = {name: [] for name, _ in runs}
    for r in range(args.rounds):
        for name, cmd in runs:
            log = os.path.join(args.logs, f"bench-pretrain-{name.split()[0].strip(chr(39)).lower()}.log")
            print(f"round {r + 1}/{args.rounds}: {name} ... (log: {log})", file=sys.stderr, flush=True)
            results[name].append(run(cmd, log))
    print(f"# {bench.cpu_line()}")
    print(f"# {bench.runtime_line()}")
    print(f"# {args.rounds} round(s), alternating; wall time min / median / max over the rounds")
    print("| run | wall time, min / median / max (min) | final train loss | final val loss |")
    print("|---|---|---|---|")
    for name, rs in results.items():
        tl, vl = rs[-1][1]
        print(f"| {name} | {bench.fmt_stats([w / 60 for w, _ in rs], 2)} | {tl} | {vl} |")
    if args.compare_torch:
        torch_wall = statistics.median(w for w, _ in results["book's PyTorch"])
        for name in list(results)[:-1]:
            print(f"ratio ({name} / PyTorch, medians): {statistics.median(w for w, _ in results[name]) / torch_wall:.2f}x")


if __name__ == "__main__":
    main()
