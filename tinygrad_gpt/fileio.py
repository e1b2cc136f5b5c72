"""Files on disk, the low-level part: writing a file atomically and where the cache lives.

This room owns two rules that every other room uses and none repeats:

- an atomic write: the bytes go to a temporary file beside the target, which is fsync'ed,
  renamed onto the target, and the directory fsync'ed, so a reader (or a crash) sees the
  old file or the new one, never half of one (data.py's cached text, pretrained.py's
  downloads and exports, checkpoint.py's state.json and `latest` pointer);
- the cache directory: $TINYGRAD_GPT_CACHE, else $XDG_CACHE_HOME/tinygrad_gpt, else
  ~/.cache/tinygrad_gpt.

Beside them, what every writer of a run's files shares: safetensors' errors as OSError with
their errno (a full disk told apart), one file mode for every file (0666 less the umask:
safetensors alone would make 0600), and SHA256SUMS files (sha256sum's format) that loading
verifies.

Every write the project makes passes through this room's few calls (open_write, fsync,
replace/rename, mkdir, save_safetensors, save_figure): the seam a test uses to make any one of
them fail (`with fileio.intercept(hook):` calls hook(kind, path) before each; tests/test_fault_matrix.py
counts them in a clean run, then fails each in turn).

It imports nothing from the package: any room may use it.
"""
import contextlib
import errno
import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


# ----------------------------------------------------------------------------- the seam
_hooks: list = []                   # intercept()'s hooks, innermost last; empty outside tests

KINDS = ("write", "fsync", "rename", "mkdir")


def _io(kind: str, path) -> None:
    """Called before each write, fsync, rename or mkdir the project makes: the hook may raise
    (an OSError, as the real call would)."""
    for hook in _hooks:
        hook(kind, str(path))


@contextlib.contextmanager
def intercept(hook):
    """Inside the block, hook(kind, path) runs before every write ("write": a file opened for
    writing, safetensors, a figure), fsync, rename and mkdir that passes through this room;
    kind is one of KINDS. A hook that raises OSError makes that call fail."""
    _hooks.append(hook)
    try:
        yield hook
    finally:
        _hooks.remove(hook)


def open_write(path: PathLike, mode: str = "wb", **kwargs):
    """open(path, mode) for writing ("w", "wb", "a", "xb", ...), through the seam."""
    _io("write", path)
    return open(path, mode, **kwargs)


def open_fd(path: PathLike, flags: int, mode: int = 0o666) -> int:
    """os.open with write flags (a lock file), through the seam."""
    _io("write", path)
    return os.open(path, flags, mode)


def fsync(f, path: PathLike = "") -> None:
    """os.fsync of an open file (or descriptor), through the seam."""
    _io("fsync", path)
    os.fsync(f if isinstance(f, int) else f.fileno())


def replace(src: PathLike, dst: PathLike) -> None:
    """os.replace, through the seam."""
    _io("rename", dst)
    os.replace(src, dst)


def rename(src: PathLike, dst: PathLike) -> None:
    """os.rename, through the seam."""
    _io("rename", dst)
    os.rename(src, dst)


def mkdir(path: PathLike, parents: bool = False, exist_ok: bool = False) -> Path:
    """Path(path).mkdir, through the seam (a directory that is already there is not a call:
    mkdir(exist_ok=True) never fails on one)."""
    path = Path(path)
    if not (exist_ok and path.is_dir()):
        _io("mkdir", path)
        path.mkdir(parents=parents, exist_ok=exist_ok)
    return path


def save_figure(fig, path: PathLike) -> Path:
    """A matplotlib figure saved atomically (PNG unless the name says otherwise)."""
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    with atomic_replace(path) as tmp:
        _io("write", tmp)
        fig.savefig(tmp, format=fmt)
    return path


def cache_root() -> Path:
    """$TINYGRAD_GPT_CACHE, else $XDG_CACHE_HOME/tinygrad_gpt, else ~/.cache/tinygrad_gpt."""
    if os.environ.get("TINYGRAD_GPT_CACHE"):
        return Path(os.environ["TINYGRAD_GPT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tinygrad_gpt"


def fsync_file(path: PathLike) -> None:
    """Flush a written file's bytes to the disk (whoever wrote it: us, safetensors, ...)."""
    with open(path, "rb") as f:
        fsync(f, path)


def fsync_dir(path: PathLike) -> None:
    """Make a rename or a new entry in directory `path` durable (a no-op where directories
    cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fsync(fd, path)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_synced(path: PathLike, data: bytes) -> None:
    """Write bytes to a new file (it must not exist) and fsync it."""
    with open_write(path, "xb") as f:
        f.write(data)
        f.flush()
        fsync(f, path)


@contextlib.contextmanager
def atomic_replace(path: PathLike) -> Iterator[Path]:
    """The one atomic write. Yields a temporary path beside `path` (not yet created: write
    it with anything, e.g. safetensors' save_file); when the block ends without an error,
    the file is fsync'ed, renamed onto `path` and the directory fsync'ed. On an error (or a
    missing file) the temporary file is removed and `path` is untouched.

    The temporary name is .<name>.<pid>.<random>.tmp, so leftovers of a killed process are
    recognisable (checkpoint.prune removes its own)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        yield tmp
        fsync_file(tmp)
        set_mode(tmp)
        replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write(path: PathLike, data: bytes) -> Path:
    """Write bytes to `path` atomically (see atomic_replace); the directory must exist."""
    path = Path(path)
    with atomic_replace(path) as tmp:
        write_synced(tmp, data)
    return path


# fileio.atomic_replace's temporary names: .<name>.<pid>.<random hex>.tmp
_ATOMIC_TMP = re.compile(r"^\.(.+)\.(\d+)\.[0-9a-f]{8}\.tmp$")


def atomic_leftover(name: str) -> bool:
    """A temporary file that atomic_replace left when its process was killed mid-write."""
    return bool(_ATOMIC_TMP.match(name))


def umask() -> int:
    """The process's umask, read without changing it (Linux /proc; else set and restore)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def set_mode(path: PathLike) -> None:
    """0666 less the umask, as open() gives a new file: every file of a run gets one mode
    (safetensors' writer creates 0600 files)."""
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~umask())


def save_safetensors(tensors: dict, path: PathLike, metadata: dict = None) -> None:
    """safetensors.numpy.save_file (it streams the arrays from their memory), its errors as
    OSError with their errno (SafetensorError says "... (os error 28)" for a full disk), the
    file in set_mode's mode. Not fsync'ed: atomic_replace or the caller does that."""
    import numpy as np
    import safetensors.numpy
    from safetensors import SafetensorError
    _io("write", path)
    try:
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                                    str(path), metadata=metadata)
    except SafetensorError as e:
        m = re.search(r"os error (\d+)", str(e))
        code = int(m.group(1)) if m else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from None
    set_mode(path)


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


# ----------------------------------------------------------------------------- checksums
CHECKSUMS = "SHA256SUMS"


class ChecksumError(ValueError):
    """A file that does not match the SHA256SUMS beside it: one line naming it."""


def sha256_file(path: PathLike, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(directory: PathLike, names) -> Path:
    """directory/SHA256SUMS for the files `names` (sha256sum's format: `sha256sum -c` checks
    it), written atomically."""
    directory = Path(directory)
    lines = "".join(f"{sha256_file(directory / n)}  {n}\n" for n in names)
    return atomic_write(directory / CHECKSUMS, lines.encode("utf-8"))


def verify_checksums(directory: PathLike, only=None) -> bool:
    """Check the files directory/SHA256SUMS lists (those in `only`, if given); False when
    there is no SHA256SUMS. Raises ChecksumError naming the first file that differs."""
    directory = Path(directory)
    sums = directory / CHECKSUMS
    if not sums.is_file():
        return False
    try:
        text = sums.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ChecksumError(f"{sums} is unreadable ({e})") from None
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if not name or "/" in name or name.startswith("."):
            raise ChecksumError(f"{sums} is corrupted (line {line[:60]!r})")
        if only is not None and name not in only:
            continue
        try:
            actual = sha256_file(directory / name)
        except OSError as e:
            raise ChecksumError(f"{directory / name} is listed in {sums} but unreadable ({e.strerror})") from None
        if actual != digest:
            raise ChecksumError(f"{directory / name} does not match its sha256 in {sums} (changed or "
                                "corrupted since it was saved)")
    return True
