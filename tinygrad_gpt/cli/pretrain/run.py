"""`python examples/pretrain.py`: the book's chapter-5 pretraining run, from the command line.

With no arguments it is the book's run: GPT-2 124M at context 256, dropout 0.1, no qkv
bias, AdamW lr 4e-4 weight decay 0.1, 10 epochs of batch 2 over the-verdict.txt, an
evaluation every 5 steps over 5 batches, a greedy sample after each epoch, seed 123.

Training never loses work: with --save-dir it saves checkpoints as it goes (the model,
AdamW, every random generator, the position in the epoch, the loss history); Ctrl-C or
SIGTERM saves one before exiting; --resume continues bit for bit where the run stopped.
Every evaluation is also appended to OUT/metrics.jsonl (runlog.py), the loss plot's source.

`--data DIR` trains from a corpus prepared by examples/prepare_data.py (memory-mapped
shards, --max-steps instead of epochs); `mpirun -n N` runs it data-parallel over MPI. What
those two add is in corpus.py beside this file; the steps below call it where they differ.

This module is the run itself, read top to bottom as the book's loop. The flags are parsed
in flags.py and settled once, with the checkpoint's on --resume, into a frozen RunConfig
(config.py) that every step below reads; the saving is in saving.py.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from ... import rundir
from ... import fileio
from .. import USAGE_ERROR, UsageError, select_kernels, setup_threads
from . import corpus as pretrain_corpus
from .config import build_config, check_batches_fit, check_overwrite, precision_reason
from .corpus import is_root
from .flags import DEFAULT_SAVE_EVERY, RUN_KEYS, TRAINING_FAILED, build_parser, explicit_flags, open_checkpoint
from .saving import (CheckpointLost, Checkpointer, TrainingInterrupted, _SignalHandlers, open_metrics_log,
                     plan_directories, report_interrupt, save_final_model, warn)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    dp = None
    try:
        args = build_parser().parse_args(argv)
        dp = pretrain_corpus.init_data_parallel()                  # None unless mpirun -n N > 1
        if not is_root(dp):                                        # rank 0 prints
            import contextlib
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                return run(args, explicit_flags(argv), dp)
        return run(args, explicit_flags(argv), dp)
    except (UsageError, rundir.RunDirError) as e:
        if is_root(dp):
            print(f"pretrain.py: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:                    # outside training (set-up, the plot)
        print("pretrain.py: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        rundir.release_all()                     # the run directories' locks


# ----------------------------------------------------------------------------- the run, step by step
def run(args, explicit=frozenset(), dp=None):
    """The book's chapter-5 run: read the text, make the loaders, the model and AdamW, train
    with evaluations and samples, then keep the model and plot the losses. Every check of
    the input comes before anything is printed or written. A prepared corpus (--data DIR)
    replaces the text and its loaders; under mpirun every rank runs this, rank 0 writes.
    args: the parsed flags (read once, by build_config); explicit: the flags typed."""
    from ... import data
    ckpt, ckpt_root = open_checkpoint(args) if args.resume is not None else (None, None)
    config, corpus_run = build_config(args, explicit, ckpt, dp, ckpt_root)   # refuses a busy --out at once
    select_kernels(config.kernels)
    if corpus_run is None:
        text, description, text_sha = training_text(config, ckpt)
        tokenizer = text_tokenizer(config, text)
        train_text, val_text = data.split_train_val(text, 0.9)
        check_windows_fit(config, tokenizer, train_text, val_text)
    else:
        text, description, text_sha = None, corpus_run.description, None
        tokenizer = corpus_tokenizer(config, ckpt)
    save_dir, fallback = plan_directories(config, ckpt, ckpt_root)
    check_overwrite(config, ckpt, ckpt_root, save_dir)
    try:
        rundir.claim(config, save_dir, dp)                      # free space, the locks, stale .tmp files
    except OSError as e:
        raise UsageError(f"cannot write in --out {config.out}{f' or --save-dir {save_dir}' if save_dir else ''} "
                         f"({e.filename}: {e.strerror or e}); fix: check the directory, or pass another one") from None

    # ---- from here on the input is valid
    print(description, flush=True)
    print(setup_threads(config.threads, warm_up=True, precision=config.precision), flush=True)
    print(f"Precision: {precision_reason(config)}", flush=True)
    if config.precision == "bfloat16":
        from ...kernels import precision
        precision.fallback_reported()      # that line said it: autocast need not warn again at step 1
    if corpus_run is None:
        n_tokens = len(tokenizer.encode(text, allowed_special={"<|endoftext|>"}))
        print(f"Characters: {len(text)} Tokens: {n_tokens}", flush=True)
        train_loader, val_loader = make_loaders(config, tokenizer, train_text, val_text)
        config = settle_epochs(config, train_loader)
        if dp is not None:
            train_loader, val_loader = pretrain_corpus.slice_loaders(train_loader, val_loader, dp)
    else:
        train_loader, val_loader = corpus_loaders(config, corpus_run, dp)
    if dp is not None:
        print(f"Data parallel: {dp.world} MPI ranks ({dp.local_world} on this machine) x {config.threads} threads, "
              f"{config.batch_size // dp.world} of each batch's {config.batch_size} rows per rank", flush=True)
    model, optimizer, rngs, state = make_model_and_optimizer(config, ckpt, train_loader)
    if corpus_run is not None:
        state = pretrain_corpus.continue_finished_run(state, config)
    print(model.summary(), flush=True)
    checkpoint_config = run_config(config, text, text_sha, corpus_run)
    checkpointer = make_checkpointer(config, save_dir, fallback, model, optimizer, rngs, checkpoint_config,
                                     train_loader, ckpt, state, dp)
    metrics = open_metrics_log(config, state.global_step if ckpt is not None else None) if is_root(dp) else None

    start, start_tokens = time.perf_counter(), state.tokens_seen
    state, code = train(config, model, train_loader, val_loader, optimizer, tokenizer, state, checkpointer,
                        save_dir, metrics, dp)
    if code is not None:
        return code
    report_run(config, model, state, time.perf_counter() - start, start_tokens, checkpointer, save_dir, dp)
    if is_root(dp):                               # one model on disk, written by rank 0
        saved = checkpointer.last_step == state.global_step and (save_dir is not None or config.save_optimizer)
        save_final_model(model, config.out, checkpointer.last_path if saved else None)
        plot(config, state, metrics)
    return 0


def training_text(config, ckpt):
    """The training text (data.load_text), its description and sha256; a resumed run must get
    the same text, and its checkpoint's tensor files are verified here, before anything is
    written. The micro model (a character tokenizer) reads its own sentence unless --data is given."""
    from ... import checkpoint as ckpt_mod
    from ... import data
    try:
        text, description = data.load_text(config.data, config.model_config)
    except data.DataError as e:
        raise UsageError(str(e)) from None
    text_sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if ckpt is not None:
        saved = ckpt.config.get("data", {})
        if saved.get("sha256") != text_sha:
            was = saved.get("path") or "the default text"
            raise UsageError(f"the training text {config.data or '(the default)'} is not the one checkpoint "
                             f"{ckpt.path} was trained on ({was}); fix: pass --data with that text")
        try:
            ckpt_mod.load_tensors(ckpt)           # sizes and sha256 of the tensor files, then parse
        except ckpt_mod.CheckpointError as e:
            raise UsageError(str(e)) from None
    return text, description, text_sha


def corpus_tokenizer(config, ckpt):
    """A corpus holds GPT-2 BPE tokens: the model must read them. On --resume, the
    checkpoint's tensor files are verified here, before anything is written."""
    from ... import checkpoint as ckpt_mod
    from ...tokenizer import tokenizer_for
    if config.model_config.get("tokenizer") == "char":
        raise UsageError(f"--model {config.model} reads characters of its own sentence, a corpus holds GPT-2 "
                         f"tokens; fix: leave out --data, or pick a GPT-2 --model (tiny, 124M, ...)")
    if ckpt is not None:
        try:
            ckpt_mod.load_tensors(ckpt)
        except ckpt_mod.CheckpointError as e:
            raise UsageError(str(e)) from None
    return tokenizer_for(config.model_config)


def text_tokenizer(config, text):
    """The tokenizer the config was built for (GPT-2's BPE, or micro's characters), checked
    against the training text: a character micro cannot read is a usage error."""
    from ...tokenizer import tokenizer_for
    try:
        tokenizer = tokenizer_for(config.model_config)
        tokenizer.encode(text, allowed_special={"<|endoftext|>"})
    except ValueError as e:
        fix = ("; fix: leave out --data (micro learns its own sentence) or use a text of those characters"
               if config.model_config.get("tokenizer") == "char" else "")
        raise UsageError(f"training text {config.data or '(the default)'}: {e}{fix}") from None
    return tokenizer


def check_windows_fit(config, tokenizer, train_text, val_text):
    for name, part in (("training", train_text), ("validation", val_text)):
        have = len(tokenizer.encode(part, allowed_special={"<|endoftext|>"}))
        if have <= config.context_length:
            raise UsageError(f"training text {config.data or '(the default)'} is too short: its {name} part "
                             f"(the {'first 90' if name == 'training' else 'last 10'}%) has {have} tokens, "
                             f"one window needs {config.context_length + 1}; fix: use a longer text or a "
                             "smaller --context-length")
        if name == "training":
            check_batches_fit(config, have)   # --batch-size x --accum-steps, before start-up


def make_loaders(config, tokenizer, train_text, val_text):
    """The book's create_dataloader_v1 twice: shuffled training windows, ordered validation ones."""
    from ... import data
    from ...tensor import manual_seed
    manual_seed(config.seed)
    loader_rng = np.random.default_rng(config.seed)
    train_loader = data.create_dataloader_v1(train_text, batch_size=config.batch_size,
                                             max_length=config.context_length, stride=config.context_length,
                                             shuffle=True, drop_last=True, tokenizer=tokenizer, rng=loader_rng)
    val_loader = data.create_dataloader_v1(val_text, batch_size=config.batch_size,
                                           max_length=config.context_length, stride=config.context_length,
                                           shuffle=False, drop_last=False, tokenizer=tokenizer)
    if len(train_loader) < config.accum_steps:
        raise UsageError(f"the training text gives {len(train_loader)} batches of {config.batch_size}, "
                         f"fewer than --accum-steps {config.accum_steps}; lower --batch-size or --accum-steps")
    print(f"train batches {len(train_loader)} val batches {len(val_loader)}", flush=True)
    return train_loader, val_loader


def settle_epochs(config, train_loader):
    """A text with --max-steps and no --epochs: as many epochs as the steps take (the last one
    stopped part-way). Settled here, once the batches are counted, before anything reads it."""
    import dataclasses
    import math
    if config.max_steps is None or "epochs" in config.explicit or config.resume is not None:
        return config
    epochs = math.ceil(config.max_steps / max(len(train_loader) // config.accum_steps, 1))
    return dataclasses.replace(config, epochs=epochs)


def corpus_loaders(config, corpus_run, dp):
    """A corpus's loaders (this rank's rows of every batch): --max-steps steps of random or
    sequential windows from the memory-mapped shards."""
    from ...tensor import manual_seed
    manual_seed(config.seed)
    train_loader, val_loader = corpus_run.loaders(config, *((dp.rank, dp.world) if dp else (0, 1)))
    print(f"train batches {len(train_loader)} val batches {len(val_loader)}", flush=True)
    return train_loader, val_loader


def make_model_and_optimizer(config, ckpt, train_loader):
    """GPTModel and AdamW, restored from the checkpoint on --resume (with every generator)."""
    from ... import checkpoint as ckpt_mod
    from ...kernels import get_backend
    from ...model import GPTModel
    from ...optim import AdamW
    from ...tensor import default_rng
    from ...train import TrainState
    try:
        model = GPTModel(config.model_config)
    except (KeyError, ValueError, TypeError) as e:
        raise UsageError(f"checkpoint {ckpt.path} has an invalid model config ({e}); "
                         "fix: resume from another checkpoint, or start a new run") from None
    optimizer = AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
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
        saved_precision = ckpt.config.get("precision", "float32")
        if saved_precision != config.precision:
            note += (f"; note: it was trained in {saved_precision}, this run continues in {config.precision}, "
                     "so the losses differ from an uninterrupted run's")
        print(f"Resuming from {ckpt.path}: step {state.global_step}, epoch {state.epoch + 1}, "
              f"batch {state.batch} of {len(train_loader)}, {state.tokens_seen:,} tokens seen{note}", flush=True)
        ckpt.model = ckpt.optimizer = None        # the arrays are in the model now
    return model, optimizer, rngs, state


def run_config(config, text, text_sha, corpus_run=None):
    """What each checkpoint stores about the run, so that --resume can continue it."""
    from ...kernels import get_backend
    every = config.save_every or DEFAULT_SAVE_EVERY
    if corpus_run is None:
        data = {"path": os.path.abspath(os.path.expanduser(config.data)) if config.data else None,
                "sha256": text_sha, "characters": len(text)}
    else:
        data = corpus_run.data_config
    return {"model": config.model, "model_config": config.model_config,
            "run": {**{k: getattr(config, k) for k in RUN_KEYS}, "epochs": config.epochs,
                    **({"max_steps": config.max_steps} if corpus_run is None and config.max_steps else {})},
            "data": data,
            **({"corpus": pretrain_corpus.corpus_config(config)} if corpus_run is not None else {}),
            "kernels": get_backend(), "precision": config.precision,
            "options": {"out": os.path.abspath(config.out), "save_every": every, "threads": config.threads,
                        "log_grad_norms": config.log_grad_norms, "no_plot": config.no_plot}}


def make_checkpointer(config, save_dir, fallback, model, optimizer, rngs, checkpoint_config, train_loader,
                      ckpt, state, dp):
    from ... import checkpoint as ckpt_mod
    every = checkpoint_config["options"]["save_every"]
    checkpointer = Checkpointer(save_dir, every, fallback, model, optimizer, rngs, checkpoint_config,
                                len(train_loader), config.accum_steps, config.epochs,
                                last_path=ckpt.path if ckpt is not None else None,
                                last_step=state.global_step if ckpt is not None else None,
                                dp=dp, on_save_error=config.on_save_error, run_config=config)
    if save_dir is not None:
        if Path(save_dir).is_dir():
            ckpt_mod.prune(save_dir)              # what a kill -9 mid-save or mid-prune left behind
        print(f"Checkpoints: every {every} steps, at the end and on Ctrl-C/SIGTERM, into {save_dir}", flush=True)
    else:
        print(f"Checkpoints: only on Ctrl-C/SIGTERM, into {fallback} "
              "(--save-dir DIR saves as training goes)", flush=True)
    return checkpointer


def train(config, model, train_loader, val_loader, optimizer, tokenizer, state, checkpointer, save_dir, metrics, dp):
    """train.train_model under the signal handlers (and autocast for bfloat16), each evaluation
    appended to the run log `metrics` (None: another rank's). Returns (state, None) when training
    finished, (state, exit code) when it stopped: interrupted, or a non-finite loss."""
    from ...corpus import CorpusError
    from ...amp import autocast
    from ...tensor import default_rng
    from ...train import NonFiniteLossError, Progress, TrainConfig, train_model
    total_steps = config.epochs * (len(train_loader) // config.accum_steps)
    total_steps = min(total_steps, config.max_steps or total_steps)
    progress = Progress(total_steps, enabled=config.progress if is_root(dp) else False)
    checkpointer.clear = progress.clear           # a warning or an error starts on a clean line
    if metrics is not None:
        metrics.clear = progress.clear
    on_step = checkpointer.on_step
    if dp is not None and model.cfg.get("drop_rate", 0) > 0:      # each rank its own dropout masks
        dp.reseed_dropout(default_rng(), config.seed, state.global_step + 1)

        def on_step(state):
            dp.reseed_dropout(default_rng(), config.seed, state.global_step + 1)
            checkpointer.on_step(state)
    loop = TrainConfig(config.epochs, config.eval_freq, config.eval_iter, config.start_context, peak_lr=config.lr,
                       warmup_steps=config.warmup_steps, min_lr=config.min_lr, grad_clip=config.grad_clip,
                       accum_steps=config.accum_steps, log_grad_norms=config.log_grad_norms,
                       max_steps=config.max_steps)
    try:
        with _SignalHandlers(checkpointer), autocast("bfloat16", enabled=config.precision == "bfloat16"):
            state = train_model(model, train_loader, val_loader, optimizer, tokenizer, loop, state=state,
                                on_step=on_step, on_eval=metrics.append if metrics is not None else None,
                                progress=progress, data_parallel=dp)
            signum = checkpointer.signum or checkpointer.pending    # pending: after the last step
            if save_dir is not None or signum is not None or config.save_optimizer:
                checkpointer.save(state, may_continue=signum is None)   # at the end (on_step has usually done it)
            if signum is not None:
                raise TrainingInterrupted(signum, checkpointer.last_path, state.global_step)
    except TrainingInterrupted as e:
        progress.clear()
        report_interrupt(e, checkpointer, config)
        return state, 128 + e.signum
    except NonFiniteLossError as e:
        progress.clear()
        if checkpointer.last_path is not None:
            last = f"the last good checkpoint is {checkpointer.last_path} (step {checkpointer.last_step})"
        else:
            last = "no checkpoint was saved (--save-dir DIR --save-every N keeps one)"
        print(f"pretrain.py: error: training stopped: {e}, before its update; {last}; resuming would "
              "repeat the same steps, so start a new run with a lower --lr or a --grad-clip",
              file=sys.stderr, flush=True)
        return state, TRAINING_FAILED
    except CorpusError as e:                      # a shard changed under the run (it was verified at the start)
        progress.clear()
        last = (f"the last checkpoint is {checkpointer.last_path}" if checkpointer.last_path is not None
                else "no checkpoint was saved")
        raise UsageError(f"training stopped: {e}; {last}") from None
    except CheckpointLost as e:                   # this step's checkpoint is kept where the line says
        progress.clear()
        print(f"pretrain.py: error: {e}", file=sys.stderr, flush=True)
        return state, USAGE_ERROR
    return state, None


def report_run(config, model, state, seconds, start_tokens, checkpointer, save_dir, dp):
    minutes = seconds / 60
    print(f"Training completed in {minutes:.2f} minutes.")
    if state.train_losses:
        # the book tracks tokens at each evaluation; the run may go on for steps after the last one
        after = (f"; training went on to {state.tokens_seen:,}" if state.tokens_seen != state.track_tokens_seen[-1]
                 else "")
        print(f"final train loss {state.train_losses[-1]:.3f}, final val loss {state.val_losses[-1]:.3f} "
              f"(at the last evaluation, {state.track_tokens_seen[-1]:,} tokens seen{after})")
    steps = state.global_step + 1
    session_tokens = state.tokens_seen - start_tokens
    print(f"Summary: {model.num_parameters():,} parameters, {steps} steps, {state.tokens_seen:,} tokens, "
          f"{minutes * 60:.1f} s, {session_tokens / max(minutes * 60, 1e-9):,.0f} tokens/s")
    if dp is not None:
        print(f"Allreduce: {dp.allreduce_seconds / max(dp.steps, 1):.4f} s per step over {dp.steps} steps "
              f"({dp.buffer.nbytes / 1e6 if dp.buffer is not None else 0:.1f} MB of float32 gradients)")
    if checkpointer.last_path is not None and (save_dir is not None or config.save_optimizer):
        step = "" if checkpointer.last_step == state.global_step else f" (step {checkpointer.last_step}: the last that could be written)"
        print(f"Checkpoint saved to {checkpointer.last_path}{step}")


def plot(config, state, metrics):
    """The book's plot_losses, into OUT/loss-plot.png (unless --no-plot), drawn from the run
    log OUT/metrics.jsonl (from the state's loss history when the log does not cover the run:
    a resumed run that started before there were logs). examples/plot.py redraws it."""
    from ...runlog import read_metrics
    from ...train import plot_losses
    if config.no_plot or not state.train_losses:
        return None
    try:
        try:
            records = read_metrics(metrics.path) if metrics is not None and metrics.stopped is None else []
        except (OSError, ValueError):             # changed under the run: the state's history draws it
            records = []
        if [r["step"] for r in records] and len(records) == len(state.train_losses):
            train_losses, val_losses = [r["train_loss"] for r in records], [r["val_loss"] for r in records]
            tokens_seen = [r["tokens_seen"] for r in records]
        else:
            train_losses, val_losses, tokens_seen = state.train_losses, state.val_losses, state.track_tokens_seen
        fileio.mkdir(config.out, parents=True, exist_ok=True)
        epochs_seen = np.linspace(0, config.epochs, len(train_losses))
        path = plot_losses(epochs_seen, tokens_seen, train_losses, val_losses,
                           os.path.join(config.out, "loss-plot.png"), grad_norms=state.grad_norms)
    except OSError as e:                          # the plot only reports: the model is saved
        warn(f"cannot save the loss plot in {config.out} ({rundir.failure(e)}); the model is saved; "
             f"fix: free some space, then python examples/plot.py {config.out}")
        return None
    print(f"Loss plot saved to {path}")
    return path
