"""The book's whole chapter-5 run, end to end: examples/pretrain.py against the book's
PyTorch code (llms_from_scratch.ch05.train_model_simple) on the same machine, one after
the other.

    python benchmarks/bench_pretrain.py --data ../shared/data/the-verdict.txt
    python benchmarks/bench_pretrain.py --data ../shared/data/the-verdict.txt --compare-torch
    python benchmarks/bench_pretrain.py --data ../shared/data/the-verdict.txt --precision both

Prints each run's wall time (process start to exit: imports, model init, training,
evaluation and sampling), its final losses, and the ratio.
"""
import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def torch_worker(data_path, threads):
    """The book's chapter-5 script, with our offline tokenizer (tiktoken cannot download here)."""
    import torch
    from llms_from_scratch.ch02 import GPTDatasetV1
    from llms_from_scratch.ch04 import GPTModel
    from llms_from_scratch.ch05 import train_model_simple
    sys.path.insert(0, ROOT)
    from tinygrad_gpt.tokenizer import get_gpt2_tokenizer

    torch.set_num_threads(threads or os.cpu_count())
    cfg = {"vocab_size": 50257, "context_length": 256, "emb_dim": 768, "n_heads": 12,
           "n_layers": 12, "drop_rate": 0.1, "qkv_bias": False}
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
    start = time.perf_counter()
    train_losses, val_losses, tokens_seen = train_model_simple(
        model, train_loader, val_loader, optimizer, "cpu", num_epochs=10, eval_freq=5,
        eval_iter=5, start_context="Every effort moves you", tokenizer=tokenizer)
    print(f"Training completed in {(time.perf_counter() - start) / 60:.2f} minutes.")
    print(f"final train loss {train_losses[-1]:.3f}, final val loss {val_losses[-1]:.3f}, "
          f"tokens seen {tokens_seen[-1]}")


def run(cmd, log_path):
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    wall = time.perf_counter() - start
    text = open(log_path).read()
    if code != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit code {code}; see {log_path}")
    m = re.search(r"final train loss ([\d.]+), final val loss ([\d.]+)", text)
    return wall, (m.group(1), m.group(2)) if m else ("?", "?")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the-verdict.txt")
    p.add_argument("--compare-torch", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", choices=["float32", "bfloat16", "both"], default="float32",
                   help="ours: pretrain.py --precision (both: one run each)")
    p.add_argument("--logs", default="/tmp", help="where the two runs' logs go")
    p.add_argument("--worker", choices=["torch"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        torch_worker(args.data, args.threads)
        return

    try:
        os.makedirs(args.logs, exist_ok=True)
    except OSError as e:
        print(f"bench_pretrain: cannot use --logs {args.logs} ({e.strerror or e})", file=sys.stderr)
        sys.exit(2)
    threads = ["--threads", str(args.threads)] if args.threads else []
    precisions = ["float32", "bfloat16"] if args.precision == "both" else [args.precision]
    runs = [(f"tinygrad_gpt-{prec}", [sys.executable, "examples/pretrain.py", "--data", os.path.abspath(args.data),
                                      "--no-plot", "--out", os.path.join(args.logs, "bench-pretrain-out"),
                                      "--precision", prec] + threads) for prec in precisions]
    if args.compare_torch:
        runs.append(("book's PyTorch", [sys.executable, __file__, "--worker", "torch", "--data",
                                        os.path.abspath(args.data)] + threads))
    results = []
    for name, cmd in runs:
        log = os.path.join(args.logs, f"bench-pretrain-{name.split()[0].strip(chr(39)).lower()}.log")
        print(f"running {name} ... (log: {log})", file=sys.stderr, flush=True)
        wall, losses = run(cmd, log)
        results.append((name, wall, losses))
    print("| run | wall time | final train loss | final val loss |")
    print("|---|---|---|---|")
    for name, wall, (tl, vl) in results:
        print(f"| {name} | {wall / 60:.2f} min | {tl} | {vl} |")
    if args.compare_torch:
        for name, wall, _ in results[:-1]:
            print(f"ratio ({name} / PyTorch): {wall / results[-1][1]:.2f}x")


if __name__ == "__main__":
    main()
