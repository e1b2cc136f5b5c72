"""The pretrain command's saving: where checkpoints go (planned before anything is written),
the checkpointer that saves at its cadence and after Ctrl-C/SIGTERM, the signal handlers,
the final model a finished run leaves in --out, and the run log (OUT/metrics.jsonl).

A write that fails is one of two kinds (docs/checkpoints.md, "When a write fails"):
- what the user asked for (a checkpoint, the final model) is kept: this step's weights go
  where the one-line error says (the run's checkpoint, else the cache's rescued/, else the
  temporary directory's), exit 2; --on-save-error continue trains on past a checkpoint that
  failed (the previous one stays intact), with a one-line warning;
- what only reports on the run (the run log, the loss plot) never stops it: one line says
  the log stopped and why, and the run trains on to its final save.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from ... import rundir
from .. import UsageError
from .flags import _same_dir, resume_command


def warn(message):
    print(f"pretrain.py: warning: {message}", file=sys.stderr, flush=True)


class CheckpointLost(Exception):
    """A checkpoint could not be written and the run stops (--on-save-error stop, or a signal's
    save): message is the one line, naming where this step's weights are kept."""


class TrainingInterrupted(BaseException):
    """SIGINT/SIGTERM: raised at the first safe point after the signal (once its checkpoint is
    saved), or at once on a second signal. BaseException, like KeyboardInterrupt, so that no
    `except Exception` swallows it."""

    def __init__(self, signum, path=None, step=None, immediate=False):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.path, self.step, self.immediate = signum, path, step, immediate


class Checkpointer:
    """The on_step hook: saves at the cadence, at the end, and at the first safe point after
    SIGINT/SIGTERM (the state then is a completed step, its evaluation included)."""

    def __init__(self, save_dir, every, fallback_dir, model, optimizer, rngs, config, n_batches,
                 accum_steps, num_epochs, last_path=None, last_step=None, dp=None, on_save_error="stop",
                 run_config=None, clear=None):
        self.save_dir, self.every, self.fallback_dir = save_dir, every, fallback_dir
        self.model, self.optimizer, self.rngs, self.config = model, optimizer, rngs, config
        self.n_batches, self.accum_steps, self.num_epochs = n_batches, accum_steps, num_epochs
        self.last_path, self.last_step = last_path, last_step
        self.pending = None                      # set by the signal handler
        self.signum = None                       # the signal every rank acts on at this step
        self.dp = dp                             # MPI: only rank 0 writes; all stop at the same step
        self.on_save_error = on_save_error       # "stop" or "continue" (docs/checkpoints.md)
        self.failed_step = None                  # the step whose save failed (continue: not tried twice)
        self.run_config = run_config             # the RunConfig, for the resume command a message prints
        self.clear = clear or (lambda: None)     # clears the progress line before a message

    def save(self, state, may_continue=True):
        """Save `state`'s checkpoint. When the disk refuses: with --on-save-error continue (and
        may_continue: not a signal's save), warn and go on; else keep this step's checkpoint in a
        rescue directory and raise CheckpointLost with the line that names it."""
        from ...checkpoint import CheckpointSaveError, save_checkpoint, step_dir_name
        if state.global_step < 0 or state.global_step == self.last_step:
            return self.last_path                # nothing new since the last save
        if may_continue and state.global_step == self.failed_step:
            return self.last_path                # this step failed once already (and was warned about)
        target = self.save_dir if self.save_dir is not None else self.fallback_dir
        if self.dp is not None and self.dp.rank != 0:      # rank 0 writes it
            self.last_path, self.last_step = Path(target) / step_dir_name(state.global_step), state.global_step
            return self.last_path
        try:
            self.last_path = save_checkpoint(target, self.model, self.optimizer, state, self.rngs, self.config)
        except CheckpointSaveError as e:
            self.clear()
            if self.on_save_error == "continue" and may_continue:
                kept = (f"the previous checkpoint {e.previous} is intact" if e.previous is not None
                        else "no earlier checkpoint exists")
                warn(f"{e.reason} while saving checkpoint {e.path} (step {state.global_step}); {kept}; "
                     "training goes on (--on-save-error continue)")
                self.failed_step = state.global_step
                return self.last_path
            raise CheckpointLost(self.rescue(e, state)) from None
        self.last_step = state.global_step
        return self.last_path

    def rescue(self, e, state):
        """Keep this step's checkpoint elsewhere after `e` (a CheckpointSaveError); the line to print."""
        from ...checkpoint import save_checkpoint, step_dir_name
        name = Path(self.run_config.out if self.run_config is not None else "run").name or "run"
        where, tried = rundir.rescue(lambda d: save_checkpoint(d, self.model, self.optimizer, state, self.rngs,
                                                               self.config), name)
        head = f"{e.reason} while saving checkpoint {e.path}"
        previous = f"; the previous checkpoint {e.previous} is intact" if e.previous is not None else ""
        fix = "free some space there" if e.disk_full else "check the directory"
        if where is None:
            resume = (f", then resume with: {resume_command(Path(e.previous).parent, self.run_config, self.dp)}"
                      if e.previous is not None and self.run_config is not None else "")
            return (f"{head}; step {state.global_step} could not be kept anywhere either ({'; '.join(tried)})"
                    f"{previous}; fix: {fix}{resume}")
        self.last_path, self.last_step = where / step_dir_name(state.global_step), state.global_step
        resume = (f", then resume with: {resume_command(where, self.run_config, self.dp)}"
                  if self.run_config is not None else "")
        if e.previous is not None and self.run_config is not None:
            resume += (f"; or from the previous one: "
                       f"{resume_command(Path(e.previous).parent, self.run_config, self.dp)}")
        return (f"{head}; step {state.global_step} is kept in checkpoint {self.last_path}{previous}; "
                f"fix: {fix}{resume}")

    def on_step(self, state):
        if self.dp is not None:                  # a signal to any rank stops every rank at this step
            # the handler writes `pending`, never `signum`: a signal that lands while the ranks
            # agree here is not lost (it was, when the answer of this allreduce overwrote it:
            # SIGTERM to mpirun then went unheeded), it counts at the next step, on every rank
            self.signum = self.dp.any_signal(self.pending)
        else:
            self.signum = self.pending
        if state.order is not None and state.batch + self.accum_steps > self.n_batches:
            return        # the epoch's last step: the epoch-end call comes right after the sample
        final = state.order is None and state.epoch >= self.num_epochs
        due = self.save_dir is not None and (final or (state.global_step + 1) % self.every == 0)
        if due or self.signum is not None:
            self.save(state, may_continue=self.signum is None)
        if self.signum is not None:
            raise TrainingInterrupted(self.signum, self.last_path, state.global_step)


class _SignalHandlers:
    """SIGINT/SIGTERM set a flag that the next on_step honours; a second one stops at once."""

    def __init__(self, checkpointer):
        self.ckpt, self.previous = checkpointer, {}

    def _handle(self, signum, frame):
        if self.ckpt.pending is None:
            self.ckpt.pending = signum
            if self.ckpt.dp is not None and self.ckpt.dp.rank != 0:
                return                           # mpirun signals every rank; rank 0 says it
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


def report_interrupt(e, checkpointer, config):
    if checkpointer.dp is not None and checkpointer.dp.rank != 0:
        return                                   # rank 0 says it
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
    print(f"Resume with: {resume_command(Path(e.path).parent, config, checkpointer.dp)}", file=sys.stderr,
          flush=True)


def plan_directories(config, ckpt, ckpt_root):
    """Where checkpoints go, checked before anything is written. Returns (save_dir, fallback)."""
    from ...checkpoint import CheckpointError, check_writable, latest_checkpoint, list_checkpoints
    save_dir = config.save_dir
    if save_dir is None and ckpt is not None:
        save_dir = str(ckpt_root)                 # a resumed run goes on saving where it was
    if save_dir is None and config.save_every is not None:
        save_dir = os.path.join(config.out, "checkpoints")
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
            base = os.path.join(config.out, "checkpoints")
            fallback, n = base, 1
            while Path(fallback).exists() and (not Path(fallback).is_dir() or list_checkpoints(fallback)):
                n += 1
                fallback = f"{base}-{n}"
            check_writable(fallback, "--out")
        check_writable(config.out, "--out")          # the final model goes there
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    return save_dir, fallback


def generate_command(directory):
    """The command that generates from the model a finished run left in `directory`."""
    prog = "examples/generate.py"
    return " ".join(shlex.quote(p) for p in ["python", prog, "--checkpoint", str(directory)])


def save_final_model(model, out, checkpoint=None):
    """The book saves model.pth right after training: here model.safetensors + config.json in
    OUT (Hugging Face's layout, through pretrained.save_pretrained), which generate.py
    --checkpoint OUT loads. No optimizer state (that is --save-optimizer's checkpoint).
    If OUT refuses (a full disk), the weights are kept (in `checkpoint`, the run's last, or a
    fallback directory: rundir.keep_trained_model) and the one-line error says where."""
    from ...pretrained import save_pretrained
    from ...rundir import keep_trained_model
    try:
        directory = save_pretrained(model, out)
    except OSError as e:
        raise UsageError(keep_trained_model(model, out, e, checkpoint)) from None
    print(f"Model saved to {directory} (model.safetensors, config.json)")
    print(f"Generate with: {generate_command(directory)}", flush=True)
    return directory


class RunLog:
    """The run log as the run writes it: runlog.MetricsLog at OUT/metrics.jsonl, which only
    reports, so a write that fails stops the log, never the run: one line on stderr says that
    it stopped and why (once), and the run trains on (the loss plot then draws from the run's
    own loss history)."""

    def __init__(self, path, resume_step=None, extra=None):
        from ...runlog import MetricsLog
        self.path, self.log, self.stopped = Path(path), None, None
        self.clear = lambda: None                # set by the run: clears the progress line first
        try:
            self.log = MetricsLog(path, resume_step, extra=extra)
        except OSError as e:
            self.stop(e, "before the first step")

    def append(self, record):
        if self.log is None:
            return
        try:
            self.log.append(record)
        except OSError as e:
            self.stop(e, f"at step {record.get('step')}")

    def stop(self, e, when):
        self.log, self.stopped = None, e
        self.clear()
        warn(f"the run log {self.path} stopped {when} ({rundir.failure(e)}); training goes on")


def open_metrics_log(config, resume_step=None):
    """The run log OUT/metrics.jsonl (runlog.py), opened before training: a new run starts it
    empty, a resumed one (resume_step: its checkpoint's step) keeps the records up to that step.
    A damaged log on --resume is a usage error; a log that cannot be written is a warning (RunLog)."""
    from ...runlog import METRICS_FILE
    try:
        return RunLog(os.path.join(config.out, METRICS_FILE), resume_step, extra={"precision": config.precision})
    except ValueError as e:
        raise UsageError(f"{e}; fix: move the damaged log away, or pass another --out") from None
