"""The pretrain command's flags: parsing them, checking them, and reconciling them with a
resumed checkpoint (a resumed run keeps its hyperparameters; --epochs may extend it).

What the flags mean is in `build_parser`; config.build_config settles them into the run's
RunConfig (with check_args and adopt_checkpoint_config below); run.py is what happens with them.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from .. import Formatter, Parser, UsageError, add_runtime_flags
from . import corpus as pretrain_corpus

DESCRIPTION = "`python examples/pretrain.py`: the book's chapter-5 pretraining run, from the command line."

TRAINING_FAILED = 1
DEFAULT_SAVE_EVERY = 50

EPILOG = """\
the result:
  a finished run writes its model into OUT (model.safetensors + config.json, Hugging Face's
  layout, and SHA256SUMS, which loading checks; no optimizer state: --save-optimizer adds a
  resumable checkpoint) and prints the command that generates from it:
  python examples/generate.py --checkpoint OUT
  every run appends each evaluation to OUT/metrics.jsonl (step, losses, lr, tokens/s;
  --resume continues it) and draws OUT/loss-plot.png from it: python examples/plot.py OUT
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
RUN_KEY_TYPES = {"model": str, "context_length": int, "drop_rate": float, "batch_size": int, "lr": float,
                 "weight_decay": float, "eval_freq": int, "eval_iter": int, "start_context": str, "seed": int,
                 "warmup_steps": int, "min_lr": float, "grad_clip": float, "accum_steps": int}   # their flags' types
# the model's shape: stored in the checkpoint's model config; on --resume a typed one must agree
SHAPE_KEYS = ("n_layers", "n_heads", "emb_dim", "qkv_bias")
# flags that change no number, echoed into the printed resume command when given
ECHOED_FLAGS = ("kernels",)


def build_parser():
    p = Parser(prog="pretrain.py", description=DESCRIPTION, epilog=EPILOG, formatter_class=Formatter)
    p.add_argument("--model", default="124M",
                   help="micro, tiny, 124M, 355M, 774M or 1558M: the starting shape, which the shape flags "
                        "below change (as nanoGPT's config files)")
    p.add_argument("--n-layers", type=int, default=None, help="transformer blocks (default: the model's)")
    p.add_argument("--n-heads", type=int, default=None,
                   help="attention heads; they must divide --emb-dim (default: the model's)")
    p.add_argument("--emb-dim", type=int, default=None, help="the model's width (default: the model's)")
    p.add_argument("--qkv-bias", action=argparse.BooleanOptionalAction, default=None,
                   help="a bias on the query, key and value projections (default: the model's, none)")
    p.add_argument("--tokenizer", choices=["char", "gpt2"], default=None,
                   help="char: one token per distinct character of the training text (its vocabulary is "
                        "saved with the model); gpt2: GPT-2's 50,257 BPE tokens (default: the model's; "
                        "micro's is the characters of its sentence)")
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
                   help="directory for the final model (model.safetensors + config.json), the run log "
                        "(metrics.jsonl) and the loss plot (default: the next free runs/pretrain, "
                        "runs/pretrain-2, ...)")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out replace the model another run left there")
    p.add_argument("--save-optimizer", action="store_true",
                   help="also keep AdamW's state at the end: a resumable checkpoint (into --save-dir, "
                        "or OUT/checkpoints)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup (appendix D)")
    p.add_argument("--min-lr", type=float, default=None, help="cosine decay to this lr (appendix D)")
    p.add_argument("--grad-clip", type=float, default=None,
                   help="clip the global gradient norm (after --warmup-steps, as the book's appendix D)")
    p.add_argument("--accum-steps", type=int, default=1, help="batches per optimizer step")
    p.add_argument("--save-dir", default=None,
                   help="save checkpoints here (default: none; with --resume, the resumed run's directory)")
    p.add_argument("--save-every", type=int, default=None,
                   help=f"checkpoint every N steps (default: {DEFAULT_SAVE_EVERY} with --save-dir; "
                        "given alone, saves into OUT/checkpoints)")
    p.add_argument("--on-save-error", choices=["stop", "continue"], default="stop",
                   help="a checkpoint that cannot be written (disk full): stop, keeping this step's checkpoint "
                        "in the cache's rescued/ (or the temporary directory), or continue training with a "
                        "warning (the previous checkpoint stays intact; docs/checkpoints.md)")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="continue from a checkpoint: a --save-dir (its newest checkpoint) or a "
                        "step-NNNNNN directory")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="bfloat16: autocast's bf16 matrix products (float32 master weights); float32: the "
                        "book's exact run; auto: bfloat16 where this CPU has a fast bf16 GEMM (AMX-BF16 with "
                        "oneMKL, AVX512-BF16 on AMD), else float32; on --resume, the checkpoint's")
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


def check_args(draft):
    """Each flag in its range; --context-length's default (256, or the model's if smaller).
    `draft`: config.build_config's copy of the flags, settled here."""
    from ...model import CONFIGS
    if draft.model not in CONFIGS:
        raise UsageError(f"unknown --model {draft.model!r}; choose one of {', '.join(CONFIGS)}")
    if draft.context_length is None:
        draft.context_length = min(256, CONFIGS[draft.model]["context_length"])
    checks = [("--epochs", draft.epochs, draft.epochs >= 1, "at least 1"),
              ("--batch-size", draft.batch_size, draft.batch_size >= 1, "at least 1"),
              ("--lr", draft.lr, 0 < draft.lr < 1 and np.isfinite(draft.lr), "in (0, 1)"),
              ("--weight-decay", draft.weight_decay, 0 <= draft.weight_decay < 10, "in [0, 10)"),
              ("--eval-freq", draft.eval_freq, draft.eval_freq >= 1, "at least 1"),
              ("--eval-iter", draft.eval_iter, draft.eval_iter >= 1, "at least 1"),
              ("--context-length", draft.context_length, draft.context_length >= 2, "at least 2"),
              ("--accum-steps", draft.accum_steps, draft.accum_steps >= 1, "at least 1"),
              ("--warmup-steps", draft.warmup_steps, draft.warmup_steps >= 0, "at least 0"),
              ("--seed", draft.seed, 0 <= draft.seed < 2 ** 64, "in [0, 2**64)")]
    for key in ("n_layers", "n_heads", "emb_dim"):
        value = getattr(draft, key)
        if value is not None:
            checks.append((_flag(key), value, value >= 1, "at least 1"))
    if draft.drop_rate is not None:
        checks.append(("--drop-rate", draft.drop_rate, 0 <= draft.drop_rate < 1, "in [0, 1)"))
    if draft.grad_clip is not None:
        checks.append(("--grad-clip", draft.grad_clip, draft.grad_clip > 0, "positive"))
    if draft.min_lr is not None:
        checks.append(("--min-lr", draft.min_lr, 0 <= draft.min_lr <= draft.lr, "in [0, --lr]"))
    if draft.threads is not None:
        checks.append(("--threads", draft.threads, draft.threads >= 1, "at least 1"))
    if draft.save_every is not None:
        checks.append(("--save-every", draft.save_every, draft.save_every >= 1, "at least 1"))
    for flag, value, ok, want in checks:
        if not ok:
            raise UsageError(f"{flag} {value} is out of range: it must be {want}")
    if draft.resume is None:      # a resumed run's shape is its checkpoint's (rundir.check_model_config)
        check_shape(draft, CONFIGS[draft.model])


def check_shape(draft, preset):
    """The shape flags over the --model preset: heads divide the width. Without a shape flag
    the preset's context length is the limit (its positional table); with one, it is a new
    model, whose table is as long as --context-length asks."""
    from ...configcheck import MAX_CONTEXT, MAX_LAYERS, MAX_WIDTH
    shaped = any(getattr(draft, key, None) is not None for key in SHAPE_KEYS + ("tokenizer",))
    emb_dim = draft.emb_dim if draft.emb_dim is not None else preset["emb_dim"]
    n_heads = draft.n_heads if draft.n_heads is not None else preset["n_heads"]
    for flag, value, limit in (("--emb-dim", emb_dim, MAX_WIDTH), ("--n-heads", n_heads, MAX_WIDTH),
                               ("--n-layers", draft.n_layers, MAX_LAYERS)):
        if value is not None and value > limit:
            raise UsageError(f"{flag} {value} is out of range: it must be at most {limit}")
    if emb_dim % n_heads:
        given = [f for f, v in (("--emb-dim", draft.emb_dim), ("--n-heads", draft.n_heads)) if v is not None]
        raise UsageError(f"--n-heads {n_heads} does not divide --emb-dim {emb_dim} "
                         f"({' and '.join(given)} over --model {draft.model}); fix: pick heads that divide "
                         "the width, e.g. --emb-dim 128 --n-heads 4")
    limit = MAX_CONTEXT if shaped else preset["context_length"]
    if draft.context_length > limit:
        hint = " (a shape flag such as --n-layers makes a new model, which may be longer)" if not shaped else ""
        raise UsageError(f"--context-length {draft.context_length} is above the {draft.model} "
                         f"model's {limit}; use at most {limit}{hint}")


# ----------------------------------------------------------------------------- resuming
def _flag(dest):
    return "--" + dest.replace("_", "-")


def adopt_checkpoint_config(draft, explicit, ckpt):
    """A resumed run keeps its hyperparameters: take them from the checkpoint into `draft`
    (config.build_config's copy of the flags), and refuse a flag in `explicit` (the ones typed)
    that contradicts them (except --epochs, which may extend the run)."""
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
        if key in explicit and getattr(draft, key) != value:
            raise UsageError(f"{_flag(key)} {getattr(draft, key)} conflicts with the checkpoint {ckpt.path}, "
                             f"trained with {_flag(key)} {value}; a resumed run keeps its hyperparameters: "
                             f"drop {_flag(key)}, or start a new run without --resume")
        setattr(draft, key, value)
    model_cfg = cfg.get("model_config") or {}
    for key in SHAPE_KEYS + ("tokenizer",):
        have = model_cfg.get(key, "gpt2" if key == "tokenizer" else None)
        if key in explicit and getattr(draft, key) != have:
            raise UsageError(f"{_flag(key)} {getattr(draft, key)} conflicts with the checkpoint {ckpt.path}, "
                             f"whose model has {_flag(key)} {have}; a resumed run keeps its model: "
                             f"drop {_flag(key)}, or start a new run without --resume")
    window, positions = draft.context_length, model_cfg.get("context_length")
    if isinstance(window, int) and isinstance(positions, int) and window > positions:
        raise UsageError(f"checkpoint {ckpt.path} is corrupted: its run's context length {window} is above its "
                         f"model's {positions}; fix: resume from another checkpoint, or start a new run")
    need = done + in_epoch
    if "epochs" in explicit:
        if draft.epochs < need:
            raise UsageError(f"--epochs {draft.epochs} is below the {need} epochs the checkpoint "
                             f"{ckpt.path} has started; pass --epochs {need} or more")
    else:
        draft.epochs = stored_epochs
    if "data" not in explicit:
        draft.data = cfg.get("data", {}).get("path")
    if "out" not in explicit and options.get("out"):
        draft.out = options["out"]
    if "save_every" not in explicit and options.get("save_every"):
        draft.save_every = options["save_every"]
    if "threads" not in explicit and options.get("threads"):
        draft.threads = options["threads"]         # BLAS splits work by thread count: keep the bits
    draft.log_grad_norms = draft.log_grad_norms or bool(options.get("log_grad_norms"))
    draft.no_plot = draft.no_plot or bool(options.get("no_plot"))
    from ...kernels import environment_choice
    if "kernels" not in explicit and not environment_choice() \
            and cfg.get("kernels") in ("numpy", "numba"):
        draft.kernels = cfg["kernels"]             # the same kernels give the same bits
    if "precision" not in explicit:          # the same products give the same bits
        stored_precision = cfg.get("precision", "float32")  # runs saved before --precision: float32
        if stored_precision not in ("float32", "bfloat16"):
            raise UsageError(f"checkpoint {ckpt.path} is corrupted: its state.json names precision "
                             f"{stored_precision!r}; fix: pass --precision float32 or bfloat16")
        draft.precision = stored_precision


def resume_command(save_dir, config, dp=None):
    """The exact command that resumes from save_dir's newest checkpoint (config: a RunConfig)."""
    prog = sys.argv[0] if sys.argv and sys.argv[0].endswith("pretrain.py") else "examples/pretrain.py"
    parts = ["python", prog, "--resume", str(save_dir)]
    if dp is not None:                                     # the same job size: same slices, same bits
        parts = ["mpirun", "-n", str(dp.world)] + parts
    for dest in ECHOED_FLAGS:
        if dest in config.explicit and getattr(config, dest) is not None:
            parts += [_flag(dest), str(getattr(config, dest))]
    return " ".join(shlex.quote(p) for p in parts)


def _same_dir(a, b):
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def open_checkpoint(args):
    """--resume: find the checkpoint and check its state.json (config.build_config adopts its
    config; the tensors are verified later, still before anything is written). Returns
    (checkpoint, its save dir)."""
    from ...checkpoint import CheckpointError, read_checkpoint, resolve_checkpoint
    try:
        ckpt_dir, root = resolve_checkpoint(args.resume)
        ckpt = read_checkpoint(ckpt_dir)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    return ckpt, root
