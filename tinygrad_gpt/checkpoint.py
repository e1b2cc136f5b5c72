"""Checkpoints: save, load and resume a training run, bit for bit. Tensors go to
safetensors, everything else to JSON; nothing is ever pickled, so loading runs no code.

A save directory holds the last `keep` checkpoints (2 by default), one directory each,
named after the last step they include (the step the "Ep 1 (Step 000042)" lines print):

    DIR/
      latest                      "step-000042", replaced atomically after each save (for
                                  people and scripts; --resume DIR takes the highest step)
      step-000041/                the previous one, kept until the next save is complete
      step-000042/
        model.safetensors         the parameters, under their state_dict names
        optimizer.safetensors     AdamW's moments, "<parameter name>.exp_avg" / ".exp_avg_sq"
        state.json                format and version; size and sha256 of both tensor files;
                                  the config; the TrainState (epoch, batch, the epoch's
                                  batch order, tokens seen, loss history); every random
                                  generator's state; AdamW's step counts and groups
        SHA256SUMS                state.json's sha256 (sha256sum's format), checked on reading

A checkpoint is written into a temporary directory beside the others (each file
fsync'ed), then renamed into place: a kill at any instant leaves the previous checkpoints
complete, and a half-written one is never mistaken for a checkpoint (leftovers, named
.tmp-*, are removed by the next save). Loading checks the format, the sizes and the
sha256 of the tensor files before parsing them.

This room owns this project's own runs on disk: the TrainState (a run's progress), saving,
finding, verifying and restoring checkpoints. A model for inference from any of them is
loading.load_model's. It builds on model.py and imports nothing from train.py: train.py
imports TrainState from here.
"""
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from . import fileio
from .fileio import (ChecksumError, atomic_replace, fsync_dir, fsync_file, save_safetensors, verify_checksums,
                     write_checksums, write_synced)
from .model import GPTModel

PathLike = Union[str, Path]

FORMAT = "tinygrad_gpt checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST = "latest"
KEEP = 2
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded or saved: a one-line message naming it and the fix."""


class CheckpointSaveError(CheckpointError):
    """Saving failed (disk full, I/O error); the previous checkpoint, `previous`, is intact."""

    def __init__(self, message, path=None, previous=None, disk_full=False, reason=None):
        super().__init__(message)
        self.path, self.previous, self.disk_full = path, previous, disk_full
        self.reason = reason or message          # "disk full", "cannot write (...)": the failure in a few words


def step_dir_name(global_step: int) -> str:
    return f"step-{global_step:06d}"


@dataclass
class TrainState:
    """Everything about a run's progress that is not in the model or the optimizer."""
    epoch: int = 0                 # the epoch in progress (0-based)
    batch: int = 0                 # the next batch of that epoch
    global_step: int = -1          # optimizer steps taken - 1 (the book counts from -1)
    tokens_seen: int = 0
    order: list = None             # this epoch's batch order (the shuffled sample indices)
    train_losses: list = field(default_factory=list)
    val_losses: list = field(default_factory=list)
    track_tokens_seen: list = field(default_factory=list)
    grad_norms: list = field(default_factory=list)    # (step, global norm, per-block norms)


# ----------------------------------------------------------------------------- writing
def _write_file(path, data):
    """Write bytes to a new file and fsync it (state.json, the latest pointer's temporary file)."""
    write_synced(path, data)


def _write_pointer(root, name):
    """root/latest <- name, atomically (fileio.atomic_replace: a temporary file, fsync, rename)."""
    with atomic_replace(root / LATEST) as tmp:
        _write_file(tmp, (name + "\n").encode())


def _write_tensors(path, tensors):
    """Write tensors as safetensors, fsync, and return (size, sha256) of what is on disk.

    safetensors.numpy.save_file streams the arrays from their memory (save() would build
    the whole file in memory, twice: 2.6 GB for the 124M model's AdamW moments); its I/O
    errors come back as OSError with their errno, so a full disk is told apart.
    """
    save_safetensors(tensors, path, metadata={"format": "np"})     # OSError with its errno
    fsync_file(path)
    with open(path, "rb") as f:
        return _size_and_sha256(f)


def _size_and_sha256(f, chunk=1 << 24):
    h, n = hashlib.sha256(), 0
    while True:
        block = f.read(chunk)
        if not block:
            return n, h.hexdigest()
        h.update(block)
        n += len(block)


def _optimizer_tensors(model, optimizer):
    """AdamW's state under the parameters' names: (tensors, json part)."""
    names = {id(p): name for name, p in model.named_parameters()}
    order = []
    for p in optimizer.params:
        if id(p) not in names:
            raise ValueError("the optimizer holds a parameter that is not in the model")
        order.append(names[id(p)])
    sd = optimizer.state_dict()
    tensors, steps = {}, {}
    for i, st in sd["state"].items():
        name = order[int(i)]
        tensors[f"{name}.exp_avg"] = st["exp_avg"]
        tensors[f"{name}.exp_avg_sq"] = st["exp_avg_sq"]
        steps[name] = int(st["step"])
    groups = [{**{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"},
               "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "steps": steps}


def _jsonable(obj):
    """Plain JSON types (NumPy scalars and tuples are converted)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


def save_checkpoint(save_dir: PathLike, model: GPTModel, optimizer, state: TrainState,
                    rngs: Dict[str, np.random.Generator], config: dict, keep: int = KEEP) -> Path:
    """Save the run as of `state` (after a completed step) into save_dir/step-NNNNNN.

    rngs: {name: np.random.Generator}, e.g. {"default": tensor.default_rng(),
    "train_loader": train_loader.rng}; config: any JSON-able dict (the model config and the
    run's hyperparameters). Returns the checkpoint's path. Raises CheckpointSaveError (with
    .disk_full) when the disk refuses; the previous checkpoints are then untouched.
    """
    root = Path(save_dir)
    name = step_dir_name(state.global_step)
    final = root / name
    previous = latest_checkpoint(root) if root.is_dir() else None
    tmp = None
    try:
        fileio.mkdir(root, parents=True, exist_ok=True)
        tmp = root / f".tmp-{name}-{os.getpid()}-{secrets.token_hex(4)}"
        fileio.mkdir(tmp)                        # not mkdtemp: the checkpoint keeps the umask's permissions
        opt_tensors, opt_json = _optimizer_tensors(model, optimizer)
        files = {}
        for key, fname, tensors in (("model", MODEL_FILE, model.state_dict()),
                                    ("optimizer", OPTIMIZER_FILE, opt_tensors)):
            size, sha = _write_tensors(tmp / fname, tensors)
            files[key] = {"name": fname, "bytes": size, "sha256": sha}
        meta = {"format": FORMAT, "version": VERSION, "step": state.global_step, "files": files,
                "config": _jsonable(config),
                "train_state": _jsonable(asdict(state)),
                "rng": {k: _jsonable(g.bit_generator.state) for k, g in rngs.items()},
                "optimizer": _jsonable(opt_json)}
        _write_file(tmp / STATE_FILE, json.dumps(meta, indent=1).encode("utf-8"))
        write_checksums(tmp, (STATE_FILE,))  # state.json is covered too (read_checkpoint checks it)
        fsync_dir(tmp)
        old = None
        if final.exists():                   # the same step saved again: swap, then drop the old one
            old = root / f".old-{name}-{os.getpid()}"
            fileio.rename(final, old)
        try:
            fileio.rename(tmp, final)
        except BaseException:
            if old is not None and not final.exists():
                fileio.rename(old, final)
            raise
        tmp = None
        fsync_dir(root)
        _write_pointer(root, name)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        disk_full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        what = "disk full" if e.errno == errno.ENOSPC else ("disk quota exceeded" if disk_full
                                                            else f"cannot write ({e.strerror or e})")
        kept = (f"the previous checkpoint {previous} is intact" if previous is not None
                else "no earlier checkpoint exists")
        fix = "free some space there" if disk_full else "check the directory"
        raise CheckpointSaveError(f"{what} while saving checkpoint {final}; {kept}; fix: {fix}",
                                  path=final, previous=previous, disk_full=disk_full, reason=what) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    prune(root, keep, name)
    return final


def prune(save_dir: PathLike, keep: int = KEEP, current: Optional[str] = None) -> None:
    """Keep the newest `keep` checkpoints; drop older ones and leftovers of killed saves.
    A checkpoint is renamed away before it is deleted, so a kill mid-delete never leaves a
    half-deleted step- directory behind."""
    root = Path(save_dir)
    for _, path in list_checkpoints(root)[:-keep or None]:
        if path.name != current:
            gone = root / f".del-{path.name}-{os.getpid()}"
            try:
                fileio.rename(path, gone)
            except OSError:
                continue
            shutil.rmtree(gone, ignore_errors=True)
    for path in root.iterdir():
        if path.name.startswith((".tmp-step-", ".old-step-", ".del-step-")) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(f".{LATEST}.") and path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- finding
def list_checkpoints(save_dir: PathLike) -> List[Tuple[int, Path]]:
    """[(step, path)] of the complete checkpoints in save_dir, oldest first."""
    root = Path(save_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = _STEP_DIR.match(path.name)
        if m and (path / STATE_FILE).is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(save_dir: PathLike) -> Optional[Path]:
    """The newest complete checkpoint in save_dir, or None."""
    found = list_checkpoints(save_dir)
    return found[-1][1] if found else None


def resolve_checkpoint(path: PathLike) -> Tuple[Path, Path]:
    """A --resume argument -> (checkpoint directory, its save directory).

    Accepts a save directory (its newest checkpoint), a checkpoint directory, a file inside
    one (state.json, ...), or a save directory's `latest` pointer.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist; fix: pass the save directory of an earlier "
                              "run, or one of its step-NNNNNN directories")
    if p.is_file():
        if p.name == LATEST:
            root = p.parent
            try:
                name = p.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                name = ""
            if not _STEP_DIR.match(name) or not (root / name).is_dir():
                raise CheckpointError(f"checkpoint pointer {p} does not name a checkpoint in {root}; "
                                      f"fix: pass {root} to take its newest checkpoint")
            return root / name, root
        if p.name in (STATE_FILE, MODEL_FILE, OPTIMIZER_FILE):
            return p.parent, p.parent.parent
        raise CheckpointError(f"{p} is not a checkpoint (expected a directory holding {STATE_FILE}, "
                              f"or {STATE_FILE} itself); fix: pass the save directory of an earlier run")
    if (p / STATE_FILE).exists():
        return p, p.parent
    newest = latest_checkpoint(p)
    if newest is None:
        raise CheckpointError(f"no checkpoint in {p} (no step-NNNNNN directory with a {STATE_FILE}); "
                              "fix: pass the save directory of an earlier run, or a checkpoint directory")
    return newest, p


# ----------------------------------------------------------------------------- reading
@dataclass
class Checkpoint:
    path: Path
    meta: dict                      # state.json
    model: dict = None              # name -> array, after load_tensors()
    optimizer: dict = None

    @property
    def config(self):
        return self.meta["config"]

    @property
    def step(self):
        return self.meta["step"]


def _bad(path, what, fix="fix: resume from another checkpoint (the save directory keeps the "
                          "previous one), or start a new run"):
    return CheckpointError(f"checkpoint {path} is {what}; {fix}")


def read_checkpoint(path: PathLike) -> "Checkpoint":
    """Read and check a checkpoint's state.json and the presence and size of its tensor
    files (cheap: the tensors are not read). Returns a Checkpoint without tensors."""
    ckpt_dir, _ = resolve_checkpoint(path)
    state_path = ckpt_dir / STATE_FILE
    try:
        raw = state_path.read_bytes()
    except OSError as e:
        raise _bad(ckpt_dir, f"unreadable ({STATE_FILE}: {e.strerror})") from None
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _bad(ckpt_dir, f"corrupted: {STATE_FILE} is not valid JSON (truncated or damaged)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad(ckpt_dir, f"not a tinygrad_gpt checkpoint ({STATE_FILE} has no format "
                             f"{FORMAT!r})")
    version = meta.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise _bad(ckpt_dir, f"of format version {version!r}, newer than this tinygrad_gpt reads ({VERSION})",
                   "fix: upgrade tinygrad_gpt")
    for key, kind in (("step", int), ("files", dict), ("config", dict), ("train_state", dict),
                      ("rng", dict), ("optimizer", dict)):
        if not isinstance(meta.get(key), kind):
            raise _bad(ckpt_dir, f"corrupted: {STATE_FILE} lacks a valid {key!r} entry")
    for key in ("model", "optimizer"):
        entry = meta["files"].get(key)
        if not (isinstance(entry, dict) and entry.get("name") in (MODEL_FILE, OPTIMIZER_FILE)
                and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)):
            raise _bad(ckpt_dir, f"corrupted: {STATE_FILE} lacks a valid files.{key} entry")
        f = ckpt_dir / entry["name"]
        if not f.is_file():
            raise _bad(ckpt_dir, f"incomplete: {entry['name']} is missing")
        size = f.stat().st_size
        if size != entry["bytes"]:
            raise _bad(ckpt_dir, f"{'truncated' if size < entry['bytes'] else 'corrupted'}: "
                                 f"{entry['name']} has {size} bytes, {entry['bytes']} were saved")
    try:                                   # a changed digit that still parses (checkpoints before SHA256SUMS: none)
        verify_checksums(ckpt_dir, only=(STATE_FILE,))
    except ChecksumError as e:
        raise _bad(ckpt_dir, f"corrupted: {e}") from None
    return Checkpoint(ckpt_dir, meta)


def load_tensors(ckpt: "Checkpoint") -> "Checkpoint":
    """Check both tensor files' sha256, then parse them (safetensors: no code runs)."""
    import safetensors.numpy
    from safetensors import SafetensorError
    for key in ("model", "optimizer"):
        entry = ckpt.meta["files"][key]
        path = ckpt.path / entry["name"]
        try:
            with open(path, "rb") as f:
                size, sha = _size_and_sha256(f)
        except OSError as e:
            raise _bad(ckpt.path, f"unreadable ({entry['name']}: {e.strerror})") from None
        if sha != entry["sha256"] or size != entry["bytes"]:
            raise _bad(ckpt.path, f"corrupted: {entry['name']} does not match its sha256 in {STATE_FILE}")
        try:
            tensors = safetensors.numpy.load_file(str(path))
        except (SafetensorError, ValueError, TypeError, OSError) as e:
            raise _bad(ckpt.path, f"corrupted: {entry['name']} is not a valid safetensors file "
                                  f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        setattr(ckpt, key, tensors)
    return ckpt


def load_checkpoint(path: PathLike) -> "Checkpoint":
    """read_checkpoint + load_tensors: a verified Checkpoint, tensors included."""
    return load_tensors(read_checkpoint(path))


# ----------------------------------------------------------------------------- restoring
def _check_tensors(ckpt, tensors, expected, what):
    """Every expected tensor present with its shape and dtype, and nothing else."""
    for name, ref in expected.items():
        if name not in tensors:
            raise _bad(ckpt.path, f"from a different config: {what} tensor {name} is missing",
                       "fix: resume with the model config it was saved with")
        got = tensors[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise _bad(ckpt.path, f"from a different config: {what} tensor {name} is {got.dtype} "
                                  f"{tuple(got.shape)}, the model needs {ref.dtype} {tuple(ref.shape)}",
                       "fix: resume with the model config it was saved with")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise _bad(ckpt.path, f"from a different config: it has a {what} tensor {extra[0]} that the "
                              "model does not", "fix: resume with the model config it was saved with")


def restore_checkpoint(ckpt: "Checkpoint", model: GPTModel, optimizer,
                       rngs: Dict[str, np.random.Generator]) -> TrainState:
    """Load a verified checkpoint into model, optimizer and generators; returns its TrainState."""
    if ckpt.model is None:
        load_tensors(ckpt)
    params = dict(model.named_parameters())
    _check_tensors(ckpt, ckpt.model, {k: p.data for k, p in params.items()}, "model")
    opt = ckpt.meta["optimizer"]
    try:
        steps = opt["steps"]
        expected = {}
        for name in steps:
            if name not in params:
                raise _bad(ckpt.path, f"from a different config: its optimizer state names {name}, "
                                      "which the model does not have")
            for suffix in (".exp_avg", ".exp_avg_sq"):
                expected[name + suffix] = params[name].data
        _check_tensors(ckpt, ckpt.optimizer, expected, "optimizer")
        index = {id(p): i for i, p in enumerate(optimizer.params)}
        names = {name: index[id(p)] for name, p in params.items() if id(p) in index}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[n] for n in g["params"]]}
                  for g in opt["param_groups"]]
        state = {names[n]: {"step": int(s), "exp_avg": ckpt.optimizer[n + ".exp_avg"],
                            "exp_avg_sq": ckpt.optimizer[n + ".exp_avg_sq"]} for n, s in steps.items()}
        ts = dict(ckpt.meta["train_state"])
        ts["grad_norms"] = [tuple(g) for g in ts.get("grad_norms", [])]
        train_state = TrainState(**ts)
        saved_rngs = ckpt.meta["rng"]
        missing = [k for k in rngs if k not in saved_rngs]
        if missing:
            raise _bad(ckpt.path, f"corrupted: it has no state for the random generator {missing[0]!r}")
        model.load_state_dict({name: ckpt.model[name] for name in params})
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        for k, g in rngs.items():
            g.bit_generator.state = saved_rngs[k]
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise _bad(ckpt.path, f"corrupted: {STATE_FILE} is inconsistent ({type(e).__name__}: {e})") from None
    return train_state


# ----------------------------------------------------------------------------- directories
def check_writable(directory: PathLike, flag: str) -> None:
    """Raise CheckpointError unless `directory` exists as a writable directory or can be
    created (the error names it after `flag`, the caller's name for it, e.g. the command's flag); creates nothing (a probe directory is made and removed in the nearest existing
    ancestor, which works for root too, where permission bits do not stop writes)."""
    d = Path(directory).expanduser()
    if d.exists() and not d.is_dir():
        raise CheckpointError(f"{flag} {d} is a file, not a directory; fix: pass a directory path")
    existing = d
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise CheckpointError(f"{flag} {d} cannot be created: {existing} is a file, not a directory; "
                              "fix: pass a path under a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".tinygrad_gpt-probe-", dir=existing)
        os.rmdir(probe)
    except OSError as e:
        raise CheckpointError(f"{flag} {d} is not writable ({existing}: {e.strerror}); "
                              f"fix: choose a directory you can write to") from None
