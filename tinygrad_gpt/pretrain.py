"""`python examples/pretrain.py`: the book's chapter-5 pretraining run, from the command line.

With no arguments it is the book's run: GPT-2 124M at context 256, dropout 0.1, no qkv
bias, AdamW lr 4e-4 weight decay 0.1, 10 epochs of batch 2 over the-verdict.txt, an
evaluation every 5 steps over 5 batches, a greedy sample after each epoch, seed 123.
"""
import argparse
import os
import sys
import time

import numpy as np

USAGE_ERROR = 2


class UsageError(ValueError):
    """A mistake in what the user asked for: one line, exit code 2, nothing written."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):                  # one line, not argparse's usage block
        raise UsageError(f"{message} (see --help)")


def build_parser():
    p = _Parser(prog="pretrain.py", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="124M", help="tiny, 124M, 355M, 774M or 1558M")
    p.add_argument("--data", default=None, help="a UTF-8 text file (default: the-verdict.txt)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--context-length", type=int, default=None,
                   help="default: 256, or the model's context length if smaller")
    p.add_argument("--drop-rate", type=float, default=None, help="default: the model config's (0.1)")
    p.add_argument("--eval-freq", type=int, default=5, help="evaluate every N steps")
    p.add_argument("--eval-iter", type=int, default=5, help="batches per evaluation")
    p.add_argument("--start-context", default="Every effort moves you")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out", default="runs/pretrain", help="directory for the loss plot and the model")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup (appendix D)")
    p.add_argument("--min-lr", type=float, default=None, help="cosine decay to this lr (appendix D)")
    p.add_argument("--grad-clip", type=float, default=None, help="clip the global gradient norm")
    p.add_argument("--accum-steps", type=int, default=1, help="batches per optimizer step")
    p.add_argument("--threads", type=int, default=None, help="threads for BLAS and numba (default: all cores)")
    p.add_argument("--kernels", choices=["numpy", "numba"], default=None,
                   help="kernel backend (default: $TINYGRAD_GPT_KERNELS or numba)")
    p.add_argument("--log-grad-norms", action="store_true",
                   help="print the global and per-block gradient norms at each evaluation")
    p.add_argument("--no-plot", action="store_true", help="do not save the loss plot")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="live progress line (default: when stderr is a terminal)")
    return p


def check_args(args):
    from .model import CONFIGS
    if args.model not in CONFIGS:
        raise UsageError(f"unknown --model {args.model!r}; choose one of {', '.join(CONFIGS)}")
    if args.context_length is None:
        args.context_length = min(256, CONFIGS[args.model]["context_length"])
    checks = [("--epochs", args.epochs, args.epochs >= 1, "at least 1"),
              ("--batch-size", args.batch_size, args.batch_size >= 1, "at least 1"),
              ("--lr", args.lr, 0 < args.lr < 1 and np.isfinite(args.lr), "in (0, 1)"),
              ("--weight-decay", args.weight_decay, 0 <= args.weight_decay < 10, "in [0, 10)"),
              ("--eval-freq", args.eval_freq, args.eval_freq >= 1, "at least 1"),
              ("--eval-iter", args.eval_iter, args.eval_iter >= 1, "at least 1"),
              ("--context-length", args.context_length, args.context_length >= 2, "at least 2"),
              ("--accum-steps", args.accum_steps, args.accum_steps >= 1, "at least 1"),
              ("--warmup-steps", args.warmup_steps, args.warmup_steps >= 0, "at least 0")]
    if args.drop_rate is not None:
        checks.append(("--drop-rate", args.drop_rate, 0 <= args.drop_rate < 1, "in [0, 1)"))
    if args.grad_clip is not None:
        checks.append(("--grad-clip", args.grad_clip, args.grad_clip > 0, "positive"))
    if args.min_lr is not None:
        checks.append(("--min-lr", args.min_lr, 0 <= args.min_lr <= args.lr, "in [0, --lr]"))
    if args.threads is not None:
        checks.append(("--threads", args.threads, args.threads >= 1, "at least 1"))
    for flag, value, ok, want in checks:
        if not ok:
            raise UsageError(f"{flag} {value} is out of range: it must be {want}")
    limit = CONFIGS[args.model]["context_length"]
    if args.context_length > limit:
        raise UsageError(f"--context-length {args.context_length} is above the {args.model} "
                         f"model's {limit}; use at most {limit}")


def setup_threads(threads=None):
    """One thread count for BLAS and numba; returns a line describing the runtime."""
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits
    from .kernels import get_backend
    threads = threads or os.cpu_count() or 1
    threadpool_limits(threads)
    try:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ValueError:
        pass
    blas = next((i for i in threadpool_info() if i.get("user_api") == "blas"), {})
    return (f"Runtime: numpy {np.__version__} ({blas.get('internal_api', '?')} {blas.get('version', '')} "
            f"{blas.get('architecture', '')}), numba {numba.__version__}, kernels {get_backend()}, "
            f"{threads} threads, float32")


def main(argv=None):
    try:
        return run(build_parser().parse_args(argv))
    except UsageError as e:
        print(f"pretrain.py: error: {e}", file=sys.stderr)
        return USAGE_ERROR


def run(args):
    check_args(args)
    if args.kernels:
        os.environ["TINYGRAD_GPT_KERNELS"] = args.kernels
    from . import data
    from .kernels import set_backend
    if args.kernels:
        set_backend(args.kernels)
    from .model import GPTModel, get_config
    from .optim import AdamW
    from .tensor import manual_seed
    from .tokenizer import get_gpt2_tokenizer
    from .train import Progress, TrainState, plot_losses, train_model

    try:
        text, description = data.load_training_text(args.data)
    except data.DataError as e:
        raise UsageError(str(e)) from None
    print(description, flush=True)
    print(setup_threads(args.threads), flush=True)

    tokenizer = get_gpt2_tokenizer()
    cfg = get_config(args.model)
    cfg["context_length"] = args.context_length
    if args.drop_rate is not None:
        cfg["drop_rate"] = args.drop_rate
    train_text, val_text = data.split_train_val(text, 0.9)
    n_tokens = len(tokenizer.encode(text, allowed_special={"<|endoftext|>"}))
    print(f"Characters: {len(text)} Tokens: {n_tokens}", flush=True)
    for name, part in (("training", train_text), ("validation", val_text)):
        have = len(tokenizer.encode(part, allowed_special={"<|endoftext|>"}))
        if have <= args.context_length:
            raise UsageError(f"the {name} part of the text has {have} tokens; one window needs "
                             f"{args.context_length + 1}: use a longer text or a smaller --context-length")

    manual_seed(args.seed)
    loader_rng = np.random.default_rng(args.seed)
    train_loader = data.create_dataloader_v1(train_text, batch_size=args.batch_size,
                                             max_length=args.context_length, stride=args.context_length,
                                             shuffle=True, drop_last=True, tokenizer=tokenizer, rng=loader_rng)
    val_loader = data.create_dataloader_v1(val_text, batch_size=args.batch_size,
                                           max_length=args.context_length, stride=args.context_length,
                                           shuffle=False, drop_last=False, tokenizer=tokenizer)
    if len(train_loader) < args.accum_steps:
        raise UsageError(f"the training text gives {len(train_loader)} batches of {args.batch_size}, "
                         f"fewer than --accum-steps {args.accum_steps}; lower --batch-size or --accum-steps")
    print(f"train batches {len(train_loader)} val batches {len(val_loader)}", flush=True)

    model = GPTModel(cfg)
    print(model.summary(), flush=True)
    optimizer = AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    state = TrainState()

    total_steps = args.epochs * (len(train_loader) // args.accum_steps)
    progress = Progress(total_steps, enabled=args.progress)
    start = time.perf_counter()
    state = train_model(model, train_loader, val_loader, optimizer, args.epochs, args.eval_freq,
                        args.eval_iter, args.start_context, tokenizer, state=state, peak_lr=args.lr,
                        warmup_steps=args.warmup_steps, min_lr=args.min_lr, grad_clip=args.grad_clip,
                        accum_steps=args.accum_steps, log_grad_norms=args.log_grad_norms,
                        progress=progress)
    minutes = (time.perf_counter() - start) / 60
    print(f"Training completed in {minutes:.2f} minutes.")
    if state.train_losses:
        print(f"final train loss {state.train_losses[-1]:.3f}, final val loss {state.val_losses[-1]:.3f}, "
              f"tokens seen {state.tokens_seen}")
    steps = state.global_step + 1
    print(f"Summary: {model.num_parameters():,} parameters, {steps} steps, {state.tokens_seen:,} tokens, "
          f"{minutes * 60:.1f} s, {state.tokens_seen / max(minutes * 60, 1e-9):,.0f} tokens/s")
    if not args.no_plot and state.train_losses:
        os.makedirs(args.out, exist_ok=True)
        epochs_seen = np.linspace(0, args.epochs, len(state.train_losses))
        path = plot_losses(epochs_seen, state.track_tokens_seen, state.train_losses, state.val_losses,
                           os.path.join(args.out, "loss-plot.png"), grad_norms=state.grad_norms)
        print(f"Loss plot saved to {path}")
    return 0
