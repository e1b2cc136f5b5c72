"""A training run's directories (--out, --save-dir): who may write there, and whether it fits.

The pretrain command calls this room while it builds its RunConfig (cli/pretrain/config.py:
the default --out, a busy directory refused at once) and after it plans the directories
(claim). Nothing here reads the parsed flags: settle_out returns the chosen --out, the others
take a RunConfig or plain values. The checks that are about the flags themselves (an --out
holding another run's model, the model config, batches that fit, a resumed run's types) are
the command's, in cli/pretrain/config.py.

- a lock per directory: an advisory fcntl lock on DIR/.tinygrad_gpt.lock, held for the run's
  life, the holder's pid written in it; a second trainer on the same directory is refused at
  once with that pid (two trainers on one --save-dir pruned each other's checkpoints).
  Readers (generate, load_model) take no lock;
- without --out a run takes the next free runs/pretrain, runs/pretrain-2, ... (as
  ultralytics' runs/train/exp2);
- free space: --out must hold the final model, --save-dir a checkpoint, before training;
- stale temporary files (fileio.atomic_replace's, of a killed run) are removed once the lock
  is ours;
- when a save fails all the same, the trained weights are kept: in the run's checkpoint, or
  in a rescue directory that the one-line error names (rescue: the cache's rescued/, else the
  temporary directory's tinygrad_gpt-rescued/).

Its errors are RunDirError (a ValueError): one line each, naming a directory by the label its
caller gave it (acquire's flag) or by its role in a run (check_space: --out and --save-dir);
the command prints it. This room imports nothing from the command line (tinygrad_gpt.cli).
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

from . import configcheck, fileio

LOCK_FILE = ".tinygrad_gpt.lock"
DEFAULT_OUT = "runs/pretrain"
MODEL_FILES = ("model.safetensors", "config.json")
MARGIN = 1 << 20                    # config.json, state.json, the plot: well under a megabyte
_held: dict = {}                    # resolved directory -> (fd, created by us)


class RunDirError(ValueError):
    """What the run's directories cannot do (busy, too small, holding another run's model): one
    line with its facts and a fix."""


UsageError = RunDirError            # the name the earlier callers (and tests) catch


def resolved(directory) -> Path:
    return Path(directory).expanduser().resolve()


# ----------------------------------------------------------------------------- the default --out
def next_free(base=DEFAULT_OUT) -> str:
    """base, else base-2, base-3, ...: the first that does not exist or is an empty directory."""
    candidate, n = base, 1
    while True:
        p = Path(candidate)
        if not p.exists() or (p.is_dir() and not any(p.iterdir())):
            return candidate
        n += 1
        candidate = f"{base}-{n}"


def settle_out(out):
    """(--out, chosen): out as given, or, when None (no --out, no checkpoint naming one), the
    next free runs/pretrain-N and chosen=True (claim then says where the run writes)."""
    if out is None:
        return next_free(), True
    return out, False


# ----------------------------------------------------------------------------- locks
def holder(directory):
    """The pid (a string, "?" if unreadable) of the process that holds DIR's lock, or None."""
    d = resolved(directory)
    if d in _held:
        return None
    try:
        fd = os.open(d / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return (os.read(fd, 32).decode("ascii", "replace").strip() or "?")
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _busy(flag, directory, pid):
    return RunDirError(f"{flag} {directory} is in use by another training run (pid {pid}); fix: wait for it "
                      "to finish, or pick another directory")


def acquire(directory, flag) -> None:
    """Take DIR's lock for this process's run (DIR is created if missing); RunDirError naming
    the holder's pid when another process has it."""
    d = resolved(directory)
    if d in _held:
        return
    created = not d.exists()
    fileio.mkdir(d, parents=True, exist_ok=True)
    path = d / LOCK_FILE
    while True:
        fd = fileio.open_fd(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            if created:
                _remove_if_empty(d)
            raise _busy(flag, directory, pid) from None
        try:                             # its last holder may have unlinked it before our flock
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    fileio.set_mode(path)
    _held[d] = (fd, created)


def _remove_if_empty(d):
    try:
        d.rmdir()
    except OSError:
        pass


def release_all() -> None:
    """Give back every lock this process holds (the lock file is removed while still held,
    so that no one locks a file that is about to go); a directory the lock alone created and
    that stayed empty goes too."""
    for d, (fd, created) in list(_held.items()):
        try:
            (d / LOCK_FILE).unlink()
        except OSError:
            pass
        os.close(fd)
        if created:
            _remove_if_empty(d)
        del _held[d]


# ----------------------------------------------------------------------------- the run's checks
def refuse_if_busy(out, save_dir=None, ckpt_root=None, dp=None) -> None:
    """Before anything else looks at the directories: refuse at once if a live trainer holds
    --save-dir, the resumed run's directory or --out."""
    if dp is not None and dp.rank != 0:
        return
    for flag, d in (("--save-dir", save_dir), ("--resume", ckpt_root), ("--out", out)):
        if d is not None:
            pid = holder(d)
            if pid is not None:
                raise _busy(flag, d, pid)


def holds_model(out):
    return [n for n in MODEL_FILES if (Path(out) / n).exists()]


def _existing(path: Path) -> Path:
    p = path.expanduser().absolute()
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def check_space(out, save_dir, cfg, free=None) -> None:
    """--out must hold the final model (float32 parameters), --save-dir its checkpoints
    (parameters + AdamW's two moments each): the KEEP it keeps and the one being written,
    less those already there; the two summed when they share a filesystem."""
    from .checkpoint import KEEP, list_checkpoints
    n = configcheck.num_parameters(cfg)
    needs = [("--out", out, n * configcheck.FLOAT32_BYTES + MARGIN)]
    if save_dir is not None:
        count = max(1, KEEP + 1 - len(list_checkpoints(save_dir)))
        needs.append(("--save-dir", save_dir, count * 3 * n * configcheck.FLOAT32_BYTES + MARGIN))
    by_device = {}
    for flag, d, need in needs:
        where = _existing(Path(d))
        dev = where.stat().st_dev
        entry = by_device.setdefault(dev, [where, 0, []])
        entry[1] += need
        entry[2].append(f"{flag} {d}")
    for where, need, flags in by_device.values():
        have = shutil.disk_usage(where).free if free is None else free
        if have < need:
            raise RunDirError(f"{' and '.join(flags)}: {_mb(have)} free on its filesystem, the run needs "
                             f"{_mb(need)} (the final model{' and its checkpoints' if len(needs) > 1 else ''} of "
                             f"{n:,} parameters); fix: free some space or pass another directory")


def _mb(n):
    return f"{n / 1e6:,.1f} MB"


def clean_stale(directory) -> list:
    """Remove fileio.atomic_replace's leftovers of a killed process from DIR (ours: the lock
    is held). Returns the names removed."""
    removed = []
    d = Path(directory)
    if not d.is_dir():
        return removed
    for p in d.iterdir():
        if fileio.atomic_leftover(p.name) and p.is_file():
            try:
                p.unlink()
                removed.append(p.name)
            except OSError:
                pass
    return removed


def claim(config, save_dir, dp=None) -> None:
    """After the directories are planned, before anything is written: free space, then the
    locks on --out and --save-dir, then the stale temporary files. Prints where the run
    writes when --out was chosen for it. config: the RunConfig."""
    if dp is not None and dp.rank != 0:
        return
    check_space(config.out, save_dir, config.model_config)
    acquire(config.out, "--out")
    if save_dir is not None:
        acquire(save_dir, "--save-dir")
    for d in (config.out, save_dir):
        if d is not None:
            clean_stale(d)
    if config.out_chosen:
        print(f"Writing the run into {config.out} (no --out given: the next free runs/pretrain-N)", flush=True)


# ----------------------------------------------------------------------------- a failed final save
def keep_trained_model(model, out, error, checkpoint=None) -> str:
    """The final save into --out failed: keep the weights somewhere (the run's checkpoint if it
    has one, else a fallback directory) and return the one-line message that says where."""
    from .pretrained import save_pretrained
    head = f"{failure(error)} while saving the final model in {out}"
    if checkpoint is not None:
        return (f"{head}; the trained model is kept in checkpoint {checkpoint}; fix: free some space, then "
                f"python examples/generate.py --checkpoint {checkpoint}")
    target, tried = rescue(lambda d: save_pretrained(model, d), Path(out).name or "model")
    if target is not None:
        return (f"{head}; the trained model is kept in {target}; fix: free some space in {out} and move "
                f"it there (or generate from it: python examples/generate.py --checkpoint {target})")
    return f"{head}; it could not be kept anywhere either ({'; '.join(tried)}); fix: free some space"


def failure(error) -> str:
    """A write's error in a few words: "disk full", "disk quota exceeded", "cannot write (...)"."""
    if fileio.is_disk_full(error):
        return "disk full" if error.errno == errno.ENOSPC else "disk quota exceeded"
    return f"cannot write ({getattr(error, 'strerror', None) or error})"


def rescue_places(name):
    """Where a rescue goes, in order: the cache's rescued/NAME-STAMP, then the temporary
    directory's tinygrad_gpt-rescued/NAME-STAMP."""
    stamp = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    return [fileio.cache_root() / "rescued" / stamp, Path(tempfile.gettempdir()) / "tinygrad_gpt-rescued" / stamp]


def rescue(save, name):
    """save(directory) into the first of rescue_places(name) that takes it (what a failed try
    left is removed). Returns (the directory, []) or (None, [why each place failed])."""
    tried = []
    for target in rescue_places(name):
        try:
            save(target)
        except (OSError, ValueError) as e:
            tried.append(f"{target}: {getattr(e, 'strerror', None) or e}")
            shutil.rmtree(target, ignore_errors=True)
            continue
        return target, []
    return None, tried
