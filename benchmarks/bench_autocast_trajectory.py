"""30 AdamW steps of GPT-2 124M on The Verdict, float32 against bf16 autocast, from the same
weights with dropout 0: does the bf16 loss trajectory follow the float32 one?

    python benchmarks/bench_autocast_trajectory.py --data ../shared/data/the-verdict.txt
    python benchmarks/bench_autocast_trajectory.py --data ../shared/data/the-verdict.txt --compare-torch

The weights are the book's: llms_from_scratch.ch04.GPTModel after torch.manual_seed(123),
written once to an .npz and loaded by every run (without torch: our own initialisation after
tinygrad_gpt.manual_seed(123), said in the header). The batches are the book's train split
(the first 90% of the text, windows of 256 with stride 256, batch 2) in order, cycled.
AdamW lr 4e-4, weight decay 0.1, as in chapter 5. --compare-torch adds torch float32 and
torch.autocast("cpu", bfloat16) from the same weights: the gap PyTorch's own autocast opens
is the yardstick for ours. Each run is its own process (MKL, torch and numba pools apart).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import common as bench  # benchmarks/common.py: paths, the machine line

ROOT = str(bench.REPO)

CFG = {"vocab_size": 50257, "context_length": 256, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
       "drop_rate": 0.0, "qkv_bias": False}


def batches(data_path, n_steps, batch=2, T=256):
    """The book's train windows in order (GPTDatasetV1: stride = context), cycled to n_steps."""
    from tinygrad_gpt.tokenizer import get_gpt2_tokenizer
    text = open(data_path, encoding="utf-8").read()
    ids = np.array(get_gpt2_tokenizer().encode(text[:int(0.9 * len(text))]), dtype=np.int64)
    starts = range(0, len(ids) - T, T)
    xs = np.stack([ids[s:s + T] for s in starts])
    ys = np.stack([ids[s + 1:s + T + 1] for s in starts])
    n = len(xs) // batch
    return [(xs[(i % n) * batch:(i % n + 1) * batch], ys[(i % n) * batch:(i % n + 1) * batch])
            for i in range(n_steps)]


def write_weights(path):
    """The book's initial weights to an npz (no pickle); returns where they came from."""
    try:
        import torch
        from llms_from_scratch.ch04 import GPTModel
    except ImportError:
        import tinygrad_gpt as tg
        tg.manual_seed(123)
        model = tg.GPTModel(CFG)
        np.savez(path, **{k: v for k, v in model.state_dict().items()})
        return "tinygrad_gpt.manual_seed(123) (torch or llms_from_scratch not installed)"
    torch.manual_seed(123)
    book = GPTModel(CFG)
    np.savez(path, **{k: v.numpy() for k, v in book.state_dict().items()})
    return "the book's GPTModel after torch.manual_seed(123)"


def worker_ours(args):
    import tinygrad_gpt as tg
    from tinygrad_gpt import functional as F
    from tinygrad_gpt.cli import setup_threads
    bf16 = args.precision == "bfloat16"
    runtime = setup_threads(args.threads, precision=args.precision)
    if bf16:
        runtime += f", GEMM {tg.amp.get_gemm_backend()}"
    model = tg.GPTModel(CFG)
    with np.load(args.weights, allow_pickle=False) as w:
        model.load_state_dict({k: w[k] for k in w.files})
    opt = tg.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    losses = []
    for x, y in batches(args.data, args.steps):
        opt.zero_grad()
        with tg.autocast("bfloat16", enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
    return {"losses": losses, "runtime": runtime}


def worker_torch(args):
    import torch
    from llms_from_scratch.ch04 import GPTModel
    torch.set_num_threads(args.threads or os.cpu_count())
    bf16 = args.precision == "bfloat16"
    model = GPTModel(CFG)
    with np.load(args.weights, allow_pickle=False) as w:
        model.load_state_dict({k: torch.from_numpy(w[k]) for k in w.files})
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    losses = []
    for x, y in batches(args.data, args.steps):
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
    return {"losses": losses, "runtime": f"torch {torch.__version__}, {torch.get_num_threads()} threads"}


def run_worker(engine, precision, args, weights):
    cmd = [sys.executable, __file__, "--worker", engine, "--precision", precision, "--weights", weights,
           "--data", os.path.abspath(args.data), "--steps", str(args.steps)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"the {engine} {precision} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the-verdict.txt")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compare-torch", action="store_true", help="also torch float32 and torch bf16 autocast")
    p.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--precision", choices=["float32", "bfloat16"], default="float32", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not os.path.isfile(args.data):
        sys.exit(f"error: --data {args.data}: no such file")
    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_torch
        print(json.dumps(fn(args)))
        return

    runs = [("ours f32", "ours", "float32"), ("ours bf16", "ours", "bfloat16")]
    if args.compare_torch:
        runs += [("torch f32", "torch", "float32"), ("torch bf16", "torch", "bfloat16")]
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "weights.npz")
        source = write_weights(weights)
        results = {}
        for name, engine, precision in runs:
            print(f"{name} ...", file=sys.stderr, flush=True)
            results[name] = run_worker(engine, precision, args, weights)
    curves = {name: np.array(r["losses"]) for name, r in results.items()}
    gaps = {"ours bf16 vs ours f32": ("ours bf16", "ours f32")}
    if args.compare_torch:
        gaps["torch bf16 vs torch f32"] = ("torch bf16", "torch f32")
        gaps["ours f32 vs torch f32"] = ("ours f32", "torch f32")
    rel = {g: np.abs(curves[a] - curves[b]) / curves[b] for g, (a, b) in gaps.items()}

    print(f"# GPT-2 124M, context 256, batch 2, dropout 0, {args.steps} AdamW steps (lr 4e-4, wd 0.1) on "
          f"{os.path.basename(args.data)}; weights: {source}")
    print(f"# {bench.cpu_line()}")
    for name, r in results.items():
        print(f"# {name}: {r['runtime']}")
    print()
    print("| step | " + " | ".join(curves) + " | " + " | ".join(f"gap {g}" for g in gaps) + " |")
    print("|---" * (1 + len(curves) + len(gaps)) + "|")
    for i in range(args.steps):
        print(f"| {i + 1} | " + " | ".join(f"{c[i]:.4f}" for c in curves.values()) + " | "
              + " | ".join(f"{rel[g][i]:.3%}" for g in gaps) + " |")
    print()
    for g in gaps:
        worst = int(np.argmax(rel[g]))
        print(f"{g}: worst relative gap {rel[g][worst]:.3%} (step {worst + 1}), median {np.median(rel[g]):.3%}, "
              f"last step {rel[g][-1]:.3%}")


if __name__ == "__main__":
    main()
