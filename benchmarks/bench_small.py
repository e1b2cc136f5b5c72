"""A small model's training step, the learner's everyday run: this engine against PyTorch eager.

    python benchmarks/bench_small.py                  # both rows, 3 alternating rounds
    python benchmarks/bench_small.py --torch-compile  # + torch.compile (its compile time apart)
    python benchmarks/bench_small.py --quick          # 1 round, 3 timed steps, small row only: checks the script

Row "small": nanoGPT's "I only have a macbook" recipe: 4 layers, 4 heads, 128 wide, context 64,
batch 12, a character vocabulary of 65. Row "scaled": nanoGPT's Shakespeare-char GPU config
scaled to a CPU: 6 layers, 6 heads, 384 wide, context 256, batch 12. Both with the same recipe
in every engine: AdamW lr 1e-3, betas (0.9, 0.99), weight decay 0.1, the global gradient norm
clipped to 1.0, dropout 0 (so both engines do the same arithmetic), random token batches.

Engines: ours (the plain API, as a reader's own loop runs it), torch (the book's GPTModel,
llms_from_scratch.ch04, eager, torch.optim.AdamW's default foreach path), torch fused
(fused=True AdamW), with --torch-bf16 torch's bf16 autocast with fused AdamW (its strongest CPU
setting at 124M on an AMX CPU; ours stays float32) and, with --torch-compile, torch.compile of
the model (eager AdamW). Each
runs in its own process (peak RSS is its own), in alternating rounds (a busy machine slows all
alike), timed at its steady state (common.warm_up), then --steps steps: min / median / max of
ms per step over every round, and the ratio of medians to torch eager's.

The fixed cost of one op: each engine times a tiny op (an add of two 1-element tensors that
need gradients, then its backward), microseconds a call: what every one of the step's ~140 ops
pays before its arithmetic.
"""
import argparse
import json
import resource
import statistics
import sys

import numpy as np

import common as bench  # benchmarks/common.py: the machine line, the timer, the warm-up rule

ROWS = {
    "small": {"n_layers": 4, "n_heads": 4, "emb_dim": 128, "context_length": 64, "batch": 12},
    "scaled": {"n_layers": 6, "n_heads": 6, "emb_dim": 384, "context_length": 256, "batch": 12},
}
VOCAB = 65                                     # a character vocabulary (nanoGPT's Shakespeare: 65)
LR, BETAS, WEIGHT_DECAY, CLIP = 1e-3, (0.9, 0.99), 0.1, 1.0
ENGINES = {"ours": "tinygrad_gpt", "torch": "torch eager", "torch-fused": "torch eager, fused AdamW",
           "torch-bf16": "torch bf16 autocast, fused", "torch-compile": "torch.compile"}


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # Linux: KiB


def config(row):
    r = ROWS[row]
    return {"vocab_size": VOCAB, "context_length": r["context_length"], "emb_dim": r["emb_dim"],
            "n_heads": r["n_heads"], "n_layers": r["n_layers"], "drop_rate": 0.0, "qkv_bias": False}


def batch(row):
    rng = np.random.default_rng(0)
    B, T = ROWS[row]["batch"], ROWS[row]["context_length"]
    return rng.integers(0, VOCAB, (B, T)), rng.integers(0, VOCAB, (B, T))


def op_cost_us(call, n=2000):
    """Microseconds one call of `call` takes, the best of 5 runs of n calls (after a warm-up)."""
    for _ in range(n // 10):
        call()
    best = float("inf")
    for _ in range(5):
        t = bench.now()
        for _ in range(n):
            call()
        best = min(best, (bench.now() - t) / n)
    return best * 1e6


# ----------------------------------------------------------------------------- workers
def worker_ours(args, cfg, x, y):
    import tinygrad_gpt as tg
    from tinygrad_gpt import functional as F
    from tinygrad_gpt.kernels.threads import set_num_threads
    from tinygrad_gpt.optim import clip_grad_norm_
    threads = set_num_threads(args.threads, load_mkl=False)
    runtime = bench.runtime_line(threads, "float32")
    tg.manual_seed(123)
    model = tg.GPTModel(cfg)
    opt = tg.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    params = model.parameters()

    def step():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        clip_grad_norm_(params, CLIP)
        opt.step()
        return loss.item()

    a, b = tg.Tensor(np.ones(1, np.float32), requires_grad=True), tg.Tensor(np.ones(1, np.float32), requires_grad=True)
    forward = op_cost_us(lambda: a + b)
    both = op_cost_us(lambda: (a + b).backward())
    return step, runtime, {"op_forward_us": forward, "op_forward_backward_us": both}


def worker_torch(args, cfg, x, y):
    import torch
    from llms_from_scratch import ch04 as book_ch04
    if args.threads:
        torch.set_num_threads(args.threads)
    runtime = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    torch.manual_seed(123)
    model = book_ch04.GPTModel(cfg)
    fused = args.worker in ("torch-fused", "torch-bf16")
    bf16 = args.worker == "torch-bf16"
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY,
                            **({"fused": True} if fused else {}))
    forward_model = torch.compile(model) if args.worker == "torch-compile" else model
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    params = list(model.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = forward_model(xt)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), yt.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        return loss.item()

    compile_s = None
    if args.worker == "torch-compile":
        compile_s, _ = bench.timed(step)       # the first call compiles
    a, b = torch.ones(1, requires_grad=True), torch.ones(1, requires_grad=True)
    forward = op_cost_us(lambda: a + b)
    both = op_cost_us(lambda: (a + b).backward())
    extra = {"op_forward_us": forward, "op_forward_backward_us": both}
    if compile_s is not None:
        extra["compile_s"] = compile_s
    return step, runtime, extra


def worker(args):
    cfg = config(args.row)
    x, y = batch(args.row)
    make = worker_ours if args.worker == "ours" else worker_torch
    step, runtime, extra = make(args, cfg, x, y)
    warm, times = bench.steady_times(step, args.steps, max_warmup=args.max_warmup)
    print(json.dumps({"times": times, "warmup": warm.describe(), "runtime": runtime, "loss": step(),
                      "peak_rss_mib": peak_rss_mib(), **extra}))


def run_worker(engine, row, args):
    cmd = [sys.executable, __file__, "--worker", engine, "--row", row, "--steps", str(args.steps),
           "--max-warmup", str(args.max_warmup)] + (["--threads", str(args.threads)] if args.threads else [])
    return bench.run_worker(cmd, ENGINES[engine])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default="small,scaled", help="comma-separated: small, scaled")
    p.add_argument("--steps", type=int, default=20, help="steps timed a round, after the warm-up")
    p.add_argument("--rounds", type=int, default=3, help="alternating processes per engine and row")
    p.add_argument("--max-warmup", type=int, default=bench.WARMUP_MAX)
    p.add_argument("--threads", type=int, default=None, help="every engine (default: all cores)")
    p.add_argument("--torch-compile", action="store_true", help="add torch.compile of the model")
    p.add_argument("--no-fused", action="store_true", help="leave out torch's fused AdamW")
    p.add_argument("--torch-bf16", action="store_true",
                   help="add torch's bf16 autocast with fused AdamW (its strongest CPU setting at 124M on AMX)")
    p.add_argument("--quick", action="store_true", help="1 round, 3 steps, the small row: checks the script")
    p.add_argument("--worker", choices=list(ENGINES), help=argparse.SUPPRESS)
    p.add_argument("--row", choices=list(ROWS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.rounds, args.steps, args.rows, args.max_warmup = 1, 3, "small", 4
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown row {unknown[0]!r}; choose from {', '.join(ROWS)}")
    engines = ["ours", "torch"] + ([] if args.no_fused else ["torch-fused"]) + \
        (["torch-bf16"] if args.torch_bf16 else []) + (["torch-compile"] if args.torch_compile else [])
    results = {(row, e): [] for row in rows for e in engines}
    for row in rows:
        for r in range(args.rounds):
            for e in engines:
                print(f"{row}, round {r + 1}/{args.rounds}: {ENGINES[e]} ...", file=sys.stderr, flush=True)
                results[row, e].append(run_worker(e, row, args))

    print(bench.cpu_line())
    print(f"ours: {results[rows[0], 'ours'][0]['runtime']}; torch: {results[rows[0], 'torch'][0]['runtime']}")
    print(f"recipe: AdamW lr {LR} betas {BETAS} weight decay {WEIGHT_DECAY}, clip {CLIP}, dropout 0, vocabulary "
          f"{VOCAB}; one process per engine and round, {args.rounds} rounds alternating, {args.steps} steps each")
    for (row, e), rs in results.items():
        for r, res in enumerate(rs):
            compiled = f"; compile {res['compile_s']:.1f} s" if "compile_s" in res else ""
            print(f"{row}, {ENGINES[e]}, round {r + 1}: {res['warmup']}{compiled}")
    print()
    print(f"| {'row':6s} | {'engine':26s} | {'min ms':>7s} | {'median ms':>9s} | {'max ms':>7s} | {'vs torch':>8s} "
          f"| {'op us':>6s} | {'op+bwd us':>9s} | {'peak RSS MiB':>12s} |")
    print(f"|{'-' * 8}|{'-' * 28}|{'-' * 9}|{'-' * 11}|{'-' * 9}|{'-' * 10}|{'-' * 8}|{'-' * 11}|{'-' * 14}|")
    for row in rows:
        r = ROWS[row]
        shape = f"{r['n_layers']}L {r['n_heads']}H {r['emb_dim']}C T{r['context_length']} B{r['batch']}"
        base = statistics.median([t for res in results[row, "torch"] for t in res["times"]])
        for e in engines:
            rs = results[row, e]
            t = [s for res in rs for s in res["times"]]
            print(f"| {row:6s} | {ENGINES[e]:26s} | {min(t) * 1e3:7.1f} | {statistics.median(t) * 1e3:9.1f} | "
                  f"{max(t) * 1e3:7.1f} | {statistics.median(t) / base:7.2f}x | "
                  f"{statistics.median(res['op_forward_us'] for res in rs):6.1f} | "
                  f"{statistics.median(res['op_forward_backward_us'] for res in rs):9.1f} | "
                  f"{max(res['peak_rss_mib'] for res in rs):12.0f} |")
        print(f"  {row} = {shape}; paired rounds, ours / torch eager: " + ", ".join(
            f"{statistics.median(o['times']) / statistics.median(b['times']):.2f}x"
            for o, b in zip(results[row, "ours"], results[row, "torch"])))


if __name__ == "__main__":
    main()
