"""The pretrain command's flags: parsing them, checking them, and reconciling them with a
resumed checkpoint (a resumed run keeps its hyperparameters; --epochs may extend it).

What the flags mean is in `build_parser`; what happens with them is tinygrad_gpt/pretrain.py.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from . import USAGE_ERROR, Formatter, Parser, UsageError, add_runtime_flags  # noqa: F401
from . import pretrain_corpus

DESCRIPTION = "`python examples/pretrain.py`: the book's chapter-5 pretraining run, from the command line."

TRAINING_FAILED = 1
DEFAULT_SAVE_EVERY = 50

EPILOG = """\
the result:
  a finished run writes its model into OUT (model.safetensors + config.json, Hugging Face's
  layout, and SHA256SUMS, which loading checks; no optimizer state: --save-optimizer adds a
  resumable checkpoint) and prints the command that generates from it:
  python examples/generate.py --checkpoint OUT
  Without --out a run takes the next free runs/pretrain, runs/pretrain-2, ...; an OUT that
  holds another run's model is refused unless --overwrite. While a run trains, OUT and
  --save-dir are locked: a second trainer there is refused, naming the first one's pid.

checkpoints:
  --save-dir DIR keeps the last 2 checkpoints in DIR/step-NNNNNN/ (model.safetensors,
  optimizer.safetensors, state.json), saved every --save-every steps, at the end, and on
  Ctrl-C / SIGTERM (without --save-dir, interrupts save into OUT/checkpoints).
  --resume DIR continues from DIR's newest checkpoint with its hyperparameters (a
  conflicting flag is an error; --epochs may extend the run), its kernels, its --threads
  and its --precision: the losses printed after resuming are those of an uninterrupted
  run, bit for bit. Ctrl-C twice stops at once, without saving the step in progress.

exit codes:
  0    training finished
  1    training stopped: the loss or a gradient became NaN or infinite (nothing was
       applied or overwritten; the message names the last good checkpoint)
  2    a usage error (bad flag, training text, checkpoint, corpus or directory; a directory
       in use or too small): one line on stderr, and nothing is written; or a full disk
       while saving: the trained weights are kept (the line says where)
  130  interrupted by Ctrl-C (SIGINT), after saving a checkpoint
  143  stopped by SIGTERM, after saving a checkpoint
"""

# the run's hyperparameters: stored in each checkpoint, taken from it on --resume
RUN_KEYS = ("model", "context_length", "drop_rate", "batch_size", "lr", "weight_decay", "eval_freq",
            "eval_iter", "start_context", "seed", "warmup_steps", "min_lr", "grad_clip", "accum_steps")
# flags that change no number, echoed into the printed resume command when given
ECHOED_FLAGS = ("kernels",)


def build_parser():
    p = Parser(prog="pretrain.py", description=DESCRIPTION, epilog=EPILOG, formatter_class=Formatter)
    p.add_argument("--model", default="124M", help="micro, tiny, 124M, 355M, 774M or 1558M")
    p.add_argument("--data", default=None,
                   help="a UTF-8 text file (default: the-verdict.txt), or a corpus directory from prepare_data.py")
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
    p.add_argument("--out", default=None,
                   help="directory for the final model (model.safetensors + config.json) and the loss plot "
                        "(default: the next free runs/pretrain, runs/pretrain-2, ...)")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out replace the model another run left there")
    p.add_argument("--save-optimizer", action="store_true",
                   help="also keep AdamW's state at the end: a resumable checkpoint (into --save-dir, "
                        "or OUT/checkpoints)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup (appendix D)")
    p.add_argument("--min-lr", type=float, default=None, help="cosine decay to this lr (appendix D)")
    p.add_argument("--grad-clip", type=float, default=None, help="clip the global gradient norm")
    p.add_argument("--accum-steps", type=int, default=1, help="batches per optimizer step")
    p.add_argument("--save-dir", default=None,
                   help="save checkpoints here (default: none; with --resume, the resumed run's directory)")
    p.add_argument("--save-every", type=int, default=None,
                   help=f"checkpoint every N steps (default: {DEFAULT_SAVE_EVERY} with --save-dir; "
                        "given alone, saves into OUT/checkpoints)")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue from a checkpoint: a --save-dir (its newest checkpoint) or a "
                        "step-NNNNNN directory")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="bfloat16: autocast's bf16 matrix products (float32 master weights); auto: "
                        "the measured faster one (float32 so far); on --resume, the checkpoint's")
    add_runtime_flags(p, threads_help="threads for BLAS, numba and MKL (default: all cores)",
                      kernels_help="kernel backend (default: $TINYGRAD_GPT_KERNELS or numba; on --resume, "
                                   "the checkpoint's)")
    p.add_argument("--log-grad-norms", action="store_true",
                   help="print the global and per-block gradient norms at each evaluation")
    p.add_argument("--no-plot", action="store_true", help="do not save the loss plot")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="live progress line (default: when stderr is a terminal)")
    pretrain_corpus.add_arguments(p)             # --order, --max-steps, --max-tokens
    return p


def explicit_flags(argv):
    """The dests of the flags given on the command line (so --resume can tell a flag the
    user typed from a default)."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def check_args(args):
    from ..model import CONFIGS
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
              ("--warmup-steps", args.warmup_steps, args.warmup_steps >= 0, "at least 0"),
              ("--seed", args.seed, 0 <= args.seed < 2 ** 64, "in [0, 2**64)")]
    if args.drop_rate is not None:
        checks.append(("--drop-rate", args.drop_rate, 0 <= args.drop_rate < 1, "in [0, 1)"))
    if args.grad_clip is not None:
        checks.append(("--grad-clip", args.grad_clip, args.grad_clip > 0, "positive"))
    if args.min_lr is not None:
        checks.append(("--min-lr", args.min_lr, 0 <= args.min_lr <= args.lr, "in [0, --lr]"))
    if args.threads is not None:
        checks.append(("--threads", args.threads, args.threads >= 1, "at least 1"))
    if args.save_every is not None:
        checks.append(("--save-every", args.save_every, args.save_every >= 1, "at least 1"))
    for flag, value, ok, want in checks:
        if not ok:
            raise UsageError(f"{flag} {value} is out of range: it must be {want}")
    limit = CONFIGS[args.model]["context_length"]
    if args.context_length > limit:
        raise UsageError(f"--context-length {args.context_length} is above the {args.model} "
                         f"model's {limit}; use at most {limit}")


# ----------------------------------------------------------------------------- resuming
def _flag(dest):
    return "--" + dest.replace("_", "-")


def adopt_checkpoint_config(args, ckpt):
    """A resumed run keeps its hyperparameters: take them from the checkpoint, and refuse a
    flag that contradicts them (except --epochs, which may extend the run)."""
    cfg = ckpt.config
    try:
        run_cfg, options = cfg["run"], cfg.get("options", {})
        stored = {key: run_cfg[key] for key in RUN_KEYS}
        stored_epochs = int(run_cfg["epochs"])
        done = int(ckpt.meta["train_state"]["epoch"])
        in_epoch = ckpt.meta["train_state"].get("order") is not None
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"checkpoint {ckpt.path} is corrupted: its {'state.json'} has no valid "
                         "run config; fix: resume from another checkpoint, or start a new run") from None
    for key, value in stored.items():
        if key in args.explicit and getattr(args, key) != value:
            raise UsageError(f"{_flag(key)} {getattr(args, key)} conflicts with the checkpoint {ckpt.path}, "
                             f"trained with {_flag(key)} {value}; a resumed run keeps its hyperparameters: "
                             f"drop {_flag(key)}, or start a new run without --resume")
        setattr(args, key, value)
    need = done + in_epoch
    if "epochs" in args.explicit:
        if args.epochs < need:
            raise UsageError(f"--epochs {args.epochs} is below the {need} epochs the checkpoint "
                             f"{ckpt.path} has started; pass --epochs {need} or more")
    else:
        args.epochs = stored_epochs
    if "data" not in args.explicit:
        args.data = cfg.get("data", {}).get("path")
    if "out" not in args.explicit and options.get("out"):
        args.out = options["out"]
    if "save_every" not in args.explicit and options.get("save_every"):
        args.save_every = options["save_every"]
    if "threads" not in args.explicit and options.get("threads"):
        args.threads = options["threads"]         # BLAS splits work by thread count: keep the bits
    args.log_grad_norms = args.log_grad_norms or bool(options.get("log_grad_norms"))
    args.no_plot = args.no_plot or bool(options.get("no_plot"))
    from ..kernels import environment_choice
    if "kernels" not in args.explicit and not environment_choice() \
            and cfg.get("kernels") in ("numpy", "numba"):
        args.kernels = cfg["kernels"]             # the same kernels give the same bits
    if "precision" not in args.explicit:          # the same products give the same bits
        stored_precision = cfg.get("precision", "float32")  # runs saved before --precision: float32
        if stored_precision not in ("float32", "bfloat16"):
            raise UsageError(f"checkpoint {ckpt.path} is corrupted: its state.json names precision "
                             f"{stored_precision!r}; fix: pass --precision float32 or bfloat16")
        args.precision = stored_precision


def resume_command(save_dir, args):
    """The exact command that resumes from save_dir's newest checkpoint."""
    prog = sys.argv[0] if sys.argv and sys.argv[0].endswith("pretrain.py") else "examples/pretrain.py"
    parts = ["python", prog, "--resume", str(save_dir)]
    if getattr(args, "dp", None) is not None:              # the same job size: same slices, same bits
        parts = ["mpirun", "-n", str(args.dp.world)] + parts
    for dest in ECHOED_FLAGS:
        if dest in args.explicit and getattr(args, dest) is not None:
            parts += [_flag(dest), str(getattr(args, dest))]
    return " ".join(shlex.quote(p) for p in parts)


def _same_dir(a, b):
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def open_checkpoint(args):
    """--resume: find the checkpoint, check its state.json, adopt its config (the tensors are
    verified later, still before anything is written). Returns (checkpoint, its save dir)."""
    from ..checkpoint import CheckpointError, read_checkpoint, resolve_checkpoint
    try:
        ckpt_dir, root = resolve_checkpoint(args.resume)
        ckpt = read_checkpoint(ckpt_dir)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    adopt_checkpoint_config(args, ckpt)
    return ckpt, root
