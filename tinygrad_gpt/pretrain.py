"""`python examples/pretrain.py`: the book's chapter-5 pretraining run, from the command line.

With no arguments it is the book's run: GPT-2 124M at context 256, dropout 0.1, no qkv
bias, AdamW lr 4e-4 weight decay 0.1, 10 epochs of batch 2 over the-verdict.txt, an
evaluation every 5 steps over 5 batches, a greedy sample after each epoch, seed 123.

Training never loses work: with --save-dir it saves checkpoints as it goes (the model,
AdamW, every random generator, the position in the epoch, the loss history); Ctrl-C or
SIGTERM saves one before exiting; --resume continues bit for bit where the run stopped.
"""
import argparse
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

USAGE_ERROR = 2
TRAINING_FAILED = 1
DEFAULT_SAVE_EVERY = 50

EPILOG = """\
checkpoints:
  --save-dir DIR keeps the last 2 checkpoints in DIR/step-NNNNNN/ (model.safetensors,
  optimizer.safetensors, state.json), saved every --save-every steps, at the end, and on
  Ctrl-C / SIGTERM (without --save-dir, interrupts save into OUT/checkpoints).
  --resume DIR continues from DIR's newest checkpoint with its hyperparameters (a
  conflicting flag is an error; --epochs may extend the run), its kernels and its
  --threads: the losses printed after resuming are those of an uninterrupted run, bit
  for bit. Ctrl-C twice stops at once, without saving the step in progress.

exit codes:
  0    training finished
  1    training stopped: the loss or a gradient became NaN or infinite (nothing was
       applied or overwritten; the message names the last good checkpoint)
  2    a usage error (bad flag, training text, checkpoint or directory; disk full while
       saving): one line on stderr, and nothing is written
  130  interrupted by Ctrl-C (SIGINT), after saving a checkpoint
  143  stopped by SIGTERM, after saving a checkpoint
"""

# the run's hyperparameters: stored in each checkpoint, taken from it on --resume
RUN_KEYS = ("model", "context_length", "drop_rate", "batch_size", "lr", "weight_decay", "eval_freq",
            "eval_iter", "start_context", "seed", "warmup_steps", "min_lr", "grad_clip", "accum_steps")
# flags that change no number, echoed into the printed resume command when given
ECHOED_FLAGS = ("kernels",)


class UsageError(ValueError):
    """A mistake in what the user asked for: one line, exit code 2, nothing written."""


class TrainingInterrupted(BaseException):
    """SIGINT/SIGTERM: raised at the first safe point after the signal (once its checkpoint is
    saved), or at once on a second signal. BaseException, like KeyboardInterrupt, so that no
    `except Exception` swallows it."""

    def __init__(self, signum, path=None, step=None, immediate=False):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.path, self.step, self.immediate = signum, path, step, immediate


class _Parser(argparse.ArgumentParser):
    def error(self, message):                  # one line, not argparse's usage block
        raise UsageError(f"{message} (see --help)")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):        # no "(default: None)" after a help that says it
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    p = _Parser(prog="pretrain.py", description=__doc__.split("\n\n")[0], epilog=EPILOG,
                formatter_class=_Formatter)
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
    p.add_argument("--out", default="runs/pretrain", help="directory for the loss plot")
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
    p.add_argument("--threads", type=int, default=None, help="threads for BLAS and numba (default: all cores)")
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="bfloat16: autocast's bf16 matrix products (float32 master weights); auto: "
                        "the measured faster one (float32 so far)")
    p.add_argument("--kernels", choices=["numpy", "numba"], default=None,
                   help="kernel backend (default: $TINYGRAD_GPT_KERNELS or numba; on --resume, the checkpoint's)")
    p.add_argument("--log-grad-norms", action="store_true",
                   help="print the global and per-block gradient norms at each evaluation")
    p.add_argument("--no-plot", action="store_true", help="do not save the loss plot")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="live progress line (default: when stderr is a terminal)")
    return p


def explicit_flags(argv):
    """The dests of the flags given on the command line (so --resume can tell a flag the
    user typed from a default)."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


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
    if args.save_every is not None:
        checks.append(("--save-every", args.save_every, args.save_every >= 1, "at least 1"))
    for flag, value, ok, want in checks:
        if not ok:
            raise UsageError(f"{flag} {value} is out of range: it must be {want}")
    limit = CONFIGS[args.model]["context_length"]
    if args.context_length > limit:
        raise UsageError(f"--context-length {args.context_length} is above the {args.model} "
                         f"model's {limit}; use at most {limit}")


def keep_freed_memory():
    """Ask glibc to reuse freed memory instead of returning it to the OS.

    A training step allocates and frees arrays of 100-150 MB (logits, the embedding and
    output-head gradients). Above its mmap threshold (32 MB at most) glibc maps each one
    fresh and unmaps it on free, so every step pays the kernel for zeroing new pages:
    ~0.2 s of a 2.1 s step here. From the heap, the same memory is simply reused.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 32))
    except (OSError, AttributeError):       # not glibc: nothing to tune
        return False


def setup_threads(threads=None, warm_up=False):
    """One thread count for BLAS and numba, the allocator tuned, the kernels compiled (when
    warm_up); returns a line describing the runtime."""
    import numba
    from threadpoolctl import threadpool_info, threadpool_limits
    from .kernels import K, get_backend
    threads = threads or os.cpu_count() or 1
    threadpool_limits(threads)
    try:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ValueError:
        pass
    keep_freed_memory()
    layer = ""
    if warm_up and get_backend() == "numba":
        K.warmup(verbose=True)
        layer = f" ({numba.threading_layer()} threading layer)"
    blases = [i for i in threadpool_info() if i.get("user_api") == "blas"]   # numba may load scipy's too
    blas = next((i for i in blases if "numpy" in i.get("filepath", "")), blases[0] if blases else {})
    return (f"Runtime: numpy {np.__version__} ({blas.get('internal_api', '?')} {blas.get('version', '')} "
            f"{blas.get('architecture', '')}), numba {numba.__version__}{layer}, kernels {get_backend()}, "
            f"{threads} threads, float32")


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
    if "kernels" not in args.explicit and not os.environ.get("TINYGRAD_GPT_KERNELS") \
            and cfg.get("kernels") in ("numpy", "numba"):
        args.kernels = cfg["kernels"]             # the same kernels give the same bits


def resume_command(save_dir, args):
    """The exact command that resumes from save_dir's newest checkpoint."""
    prog = sys.argv[0] if sys.argv and sys.argv[0].endswith("pretrain.py") else "examples/pretrain.py"
    parts = ["python", prog, "--resume", str(save_dir)]
    for dest in ECHOED_FLAGS:
        if dest in args.explicit and getattr(args, dest) is not None:
            parts += [_flag(dest), str(getattr(args, dest))]
    return " ".join(shlex.quote(p) for p in parts)


def _same_dir(a, b):
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


class Checkpointer:
    """The on_step hook: saves at the cadence, at the end, and at the first safe point after
    SIGINT/SIGTERM (the state then is a completed step, its evaluation included)."""

    def __init__(self, save_dir, every, fallback_dir, model, optimizer, rngs, config, n_batches,
                 accum_steps, num_epochs, last_path=None, last_step=None):
        self.save_dir, self.every, self.fallback_dir = save_dir, every, fallback_dir
        self.model, self.optimizer, self.rngs, self.config = model, optimizer, rngs, config
        self.n_batches, self.accum_steps, self.num_epochs = n_batches, accum_steps, num_epochs
        self.last_path, self.last_step = last_path, last_step
        self.signum = None                       # set by the signal handler

    def save(self, state):
        from .checkpoint import save_checkpoint
        if state.global_step < 0 or state.global_step == self.last_step:
            return self.last_path                # nothing new since the last save
        target = self.save_dir if self.save_dir is not None else self.fallback_dir
        self.last_path = save_checkpoint(target, self.model, self.optimizer, state, self.rngs, self.config)
        self.last_step = state.global_step
        return self.last_path

    def on_step(self, state):
        if state.order is not None and state.batch + self.accum_steps > self.n_batches:
            return        # the epoch's last step: the epoch-end call comes right after the sample
        final = state.order is None and state.epoch >= self.num_epochs
        due = self.save_dir is not None and (final or (state.global_step + 1) % self.every == 0)
        if due or self.signum is not None:
            self.save(state)
        if self.signum is not None:
            raise TrainingInterrupted(self.signum, self.last_path, state.global_step)


class _SignalHandlers:
    """SIGINT/SIGTERM set a flag that the next on_step honours; a second one stops at once."""

    def __init__(self, checkpointer):
        self.ckpt, self.previous = checkpointer, {}

    def _handle(self, signum, frame):
        if self.ckpt.signum is None:
            self.ckpt.signum = signum
            # os.write, not print: a handler may run in the middle of a print to the same stream
            os.write(2, f"\n{signal.Signals(signum).name} received: saving a checkpoint after the current "
                        "step (send it again to stop without saving)\n".encode())
        else:
            raise TrainingInterrupted(signum, self.ckpt.last_path, self.ckpt.last_step, immediate=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False


# ----------------------------------------------------------------------------- the run
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        args.explicit = explicit_flags(argv)
        return run(args)
    except UsageError as e:
        print(f"pretrain.py: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:                    # outside training (set-up, the plot)
        print("pretrain.py: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


def _open_checkpoint(args):
    """--resume: find the checkpoint, check its state.json, adopt its config (the tensors are
    verified later, still before anything is written). Returns (checkpoint, its save dir)."""
    from .checkpoint import CheckpointError, read_checkpoint, resolve_checkpoint
    try:
        ckpt_dir, root = resolve_checkpoint(args.resume)
        ckpt = read_checkpoint(ckpt_dir)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    adopt_checkpoint_config(args, ckpt)
    return ckpt, root


def _report_interrupt(e, checkpointer, args):
    name = signal.Signals(e.signum).name
    if e.path is None:
        print(f"Interrupted by {name} before any checkpoint was saved", file=sys.stderr, flush=True)
        return
    if e.immediate:
        print(f"{name} again: stopped without saving the step in progress; the last checkpoint "
              f"(after step {checkpointer.last_step}) is {e.path}", file=sys.stderr)
    else:
        print(f"Interrupted by {name}: checkpoint after step {checkpointer.last_step} saved to {e.path}",
              file=sys.stderr)
    print(f"Resume with: {resume_command(Path(e.path).parent, args)}", file=sys.stderr, flush=True)


def _plan_directories(args, ckpt, ckpt_root):
    """Where checkpoints go, checked before anything is written. Returns (save_dir, fallback)."""
    from .checkpoint import CheckpointError, check_writable, latest_checkpoint, list_checkpoints
    save_dir = args.save_dir
    if save_dir is None and ckpt is not None:
        save_dir = str(ckpt_root)                 # a resumed run goes on saving where it was
    if save_dir is None and args.save_every is not None:
        save_dir = os.path.join(args.out, "checkpoints")
    try:
        if save_dir is not None:
            check_writable(save_dir, "--save-dir")
            newest = latest_checkpoint(save_dir) if Path(save_dir).is_dir() else None
            if ckpt is None and newest is not None:
                raise UsageError(f"--save-dir {save_dir} already holds checkpoints (newest {newest}); "
                                 f"fix: resume with --resume {save_dir}, or pick a new directory")
            if ckpt is not None and newest is not None:
                if not _same_dir(save_dir, ckpt_root):
                    raise UsageError(f"--save-dir {save_dir} already holds checkpoints of another run "
                                     f"(newest {newest}); fix: pick a new directory")
                if not _same_dir(newest, ckpt.path):
                    raise UsageError(f"checkpoint {ckpt.path} is not the newest in {ckpt_root} ({newest.name}); "
                                     "continuing there would discard the newer ones: "
                                     "fix: add --save-dir NEW_DIR to continue it in a new directory")
        fallback = None
        if save_dir is None:                      # interrupts still save: into OUT/checkpoints
            base = os.path.join(args.out, "checkpoints")
            fallback, n = base, 1
            while Path(fallback).exists() and (not Path(fallback).is_dir() or list_checkpoints(fallback)):
                n += 1
                fallback = f"{base}-{n}"
            check_writable(fallback, "--out")
        if not args.no_plot:
            check_writable(args.out, "--out")
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    return save_dir, fallback


def run(args):
    from . import checkpoint as ckpt_mod
    if not hasattr(args, "explicit"):
        args.explicit = set()
    ckpt, ckpt_root = _open_checkpoint(args) if args.resume is not None else (None, None)
    check_args(args)
    if args.kernels:
        os.environ["TINYGRAD_GPT_KERNELS"] = args.kernels
    import hashlib

    from . import data
    from .kernels import get_backend, set_backend
    if args.kernels:
        set_backend(args.kernels)
    from .model import GPTModel, get_config
    from .optim import AdamW
    from .tensor import default_rng, manual_seed
    from .tokenizer import get_gpt2_tokenizer
    from .train import NonFiniteLossError, Progress, TrainState, plot_losses, train_model

    try:
        text, description = data.load_training_text(args.data)
    except data.DataError as e:
        raise UsageError(str(e)) from None
    text_sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if ckpt is not None:
        saved = ckpt.config.get("data", {})
        if saved.get("sha256") != text_sha:
            was = saved.get("path") or "the default text"
            raise UsageError(f"the training text {args.data or '(the default)'} is not the one checkpoint "
                             f"{ckpt.path} was trained on ({was}); fix: pass --data with that text")
        try:
            ckpt_mod.load_tensors(ckpt)           # sizes and sha256 of the tensor files, then parse
        except ckpt_mod.CheckpointError as e:
            raise UsageError(str(e)) from None

    tokenizer = get_gpt2_tokenizer()
    if ckpt is not None:
        cfg = dict(ckpt.config.get("model_config") or {})
    else:
        cfg = get_config(args.model)
        cfg["context_length"] = args.context_length
        if args.drop_rate is not None:
            cfg["drop_rate"] = args.drop_rate
        args.drop_rate = cfg["drop_rate"]
    train_text, val_text = data.split_train_val(text, 0.9)
    for name, part in (("training", train_text), ("validation", val_text)):
        have = len(tokenizer.encode(part, allowed_special={"<|endoftext|>"}))
        if have <= args.context_length:
            raise UsageError(f"training text {args.data or '(the default)'} is too short: its {name} part "
                             f"(the {'first 90' if name == 'training' else 'last 10'}%) has {have} tokens, "
                             f"one window needs {args.context_length + 1}; fix: use a longer text or a "
                             "smaller --context-length")
    save_dir, fallback = _plan_directories(args, ckpt, ckpt_root)

    # ---- from here on the input is valid
    print(description, flush=True)
    print(setup_threads(args.threads, warm_up=True), flush=True)
    from .amp import autocast, choose_precision
    from .kernels.threads import set_num_threads
    precision, why = choose_precision(args.precision)
    set_num_threads(args.threads, load_mkl=precision == "bfloat16")   # MKL's pool too
    print(f"Precision: {why}", flush=True)
    n_tokens = len(tokenizer.encode(text, allowed_special={"<|endoftext|>"}))
    print(f"Characters: {len(text)} Tokens: {n_tokens}", flush=True)

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

    try:
        model = GPTModel(cfg)
    except (KeyError, ValueError, TypeError) as e:
        raise UsageError(f"checkpoint {ckpt.path} has an invalid model config ({e}); "
                         "fix: resume from another checkpoint, or start a new run") from None
    optimizer = AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    rngs = {"default": default_rng(), "train_loader": train_loader.rng}
    state = TrainState()
    if ckpt is not None:
        try:
            state = ckpt_mod.restore_checkpoint(ckpt, model, optimizer, rngs)
        except ckpt_mod.CheckpointError as e:
            raise UsageError(str(e)) from None
        saved_kernels = ckpt.config.get("kernels")
        note = (f"; note: it was trained with the {saved_kernels} kernels, these are {get_backend()}, "
                "so the last bits may differ" if saved_kernels and saved_kernels != get_backend() else "")
        print(f"Resuming from {ckpt.path}: step {state.global_step}, epoch {state.epoch + 1}, "
              f"batch {state.batch} of {len(train_loader)}, {state.tokens_seen:,} tokens seen{note}", flush=True)
        ckpt.model = ckpt.optimizer = None        # the arrays are in the model now
    print(model.summary(), flush=True)

    every = args.save_every or DEFAULT_SAVE_EVERY
    config = {"model": args.model, "model_config": cfg,
              "run": {**{k: getattr(args, k) for k in RUN_KEYS}, "epochs": args.epochs},
              "data": {"path": os.path.abspath(os.path.expanduser(args.data)) if args.data else None,
                       "sha256": text_sha, "characters": len(text)},
              "kernels": get_backend(),
              "options": {"out": os.path.abspath(args.out), "save_every": every, "threads": args.threads,
                          "log_grad_norms": args.log_grad_norms, "no_plot": args.no_plot}}
    checkpointer = Checkpointer(save_dir, every, fallback, model, optimizer, rngs, config,
                                len(train_loader), args.accum_steps, args.epochs,
                                last_path=ckpt.path if ckpt is not None else None,
                                last_step=state.global_step if ckpt is not None else None)
    if save_dir is not None:
        if Path(save_dir).is_dir():
            ckpt_mod.prune(save_dir)              # what a kill -9 mid-save or mid-prune left behind
        print(f"Checkpoints: every {every} steps, at the end and on Ctrl-C/SIGTERM, into {save_dir}", flush=True)
    else:
        print(f"Checkpoints: only on Ctrl-C/SIGTERM, into {fallback} "
              "(--save-dir DIR saves as training goes)", flush=True)

    total_steps = args.epochs * (len(train_loader) // args.accum_steps)
    progress = Progress(total_steps, enabled=args.progress)
    start, start_tokens = time.perf_counter(), state.tokens_seen
    try:
        with _SignalHandlers(checkpointer), autocast("bfloat16", enabled=precision == "bfloat16"):
            state = train_model(model, train_loader, val_loader, optimizer, args.epochs, args.eval_freq,
                                args.eval_iter, args.start_context, tokenizer, state=state, peak_lr=args.lr,
                                warmup_steps=args.warmup_steps, min_lr=args.min_lr, grad_clip=args.grad_clip,
                                accum_steps=args.accum_steps, log_grad_norms=args.log_grad_norms,
                                progress=progress, on_step=checkpointer.on_step)
            if save_dir is not None or checkpointer.signum is not None:
                checkpointer.save(state)          # at the end (on_step has usually done it)
            if checkpointer.signum is not None:
                raise TrainingInterrupted(checkpointer.signum, checkpointer.last_path, state.global_step)
    except TrainingInterrupted as e:
        progress.clear()
        _report_interrupt(e, checkpointer, args)
        return 128 + e.signum
    except NonFiniteLossError as e:
        progress.clear()
        if checkpointer.last_path is not None:
            last = f"the last good checkpoint is {checkpointer.last_path} (step {checkpointer.last_step})"
        else:
            last = "no checkpoint was saved (--save-dir DIR --save-every N keeps one)"
        print(f"pretrain.py: error: training stopped: {e}, before its update; {last}; resuming would "
              "repeat the same steps, so start a new run with a lower --lr or a --grad-clip",
              file=sys.stderr, flush=True)
        return TRAINING_FAILED
    except ckpt_mod.CheckpointSaveError as e:
        progress.clear()
        fix = (f"; then resume with: {resume_command(Path(e.path).parent, args)}"
               if e.previous is not None else "")
        raise UsageError(f"{e}{fix}") from None

    minutes = (time.perf_counter() - start) / 60
    print(f"Training completed in {minutes:.2f} minutes.")
    if state.train_losses:
        print(f"final train loss {state.train_losses[-1]:.3f}, final val loss {state.val_losses[-1]:.3f}, "
              f"tokens seen {state.track_tokens_seen[-1]}")    # at the last evaluation, as the book tracks
    steps = state.global_step + 1
    session_tokens = state.tokens_seen - start_tokens
    print(f"Summary: {model.num_parameters():,} parameters, {steps} steps, {state.tokens_seen:,} tokens, "
          f"{minutes * 60:.1f} s, {session_tokens / max(minutes * 60, 1e-9):,.0f} tokens/s")
    if checkpointer.last_path is not None and save_dir is not None:
        print(f"Checkpoint saved to {checkpointer.last_path}")
    if not args.no_plot and state.train_losses:
        try:
            os.makedirs(args.out, exist_ok=True)
            epochs_seen = np.linspace(0, args.epochs, len(state.train_losses))
            path = plot_losses(epochs_seen, state.track_tokens_seen, state.train_losses, state.val_losses,
                               os.path.join(args.out, "loss-plot.png"), grad_norms=state.grad_norms)
        except OSError as e:
            raise UsageError(f"cannot save the loss plot in {args.out} ({e.strerror or e}); "
                             "fix: free some space or pass another --out (training is saved)") from None
        print(f"Loss plot saved to {path}")
    return 0
