"""Files on disk, the low-level part: writing a file atomically and where the cache lives.

This room owns two rules that every other room uses and none repeats:

- an atomic write: the bytes go to a temporary file beside the target, which is fsync'ed,
  renamed onto the target, and the directory fsync'ed, so a reader (or a crash) sees the
  old file or the new one, never half of one (data.py's cached text, pretrained.py's
  downloads and exports, checkpoint.py's state.json and `latest` pointer);
- the cache directory: $TINYGRAD_GPT_CACHE, else $XDG_CACHE_HOME/tinygrad_gpt, else
  ~/.cache/tinygrad_gpt.

It imports nothing from the package: any room may use it.
"""
import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]


def cache_root() -> Path:
    """$TINYGRAD_GPT_CACHE, else $XDG_CACHE_HOME/tinygrad_gpt, else ~/.cache/tinygrad_gpt."""
    if os.environ.get("TINYGRAD_GPT_CACHE"):
        return Path(os.environ["TINYGRAD_GPT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tinygrad_gpt"


def fsync_file(path: PathLike) -> None:
    """Flush a written file's bytes to the disk (whoever wrote it: us, safetensors, ...)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: PathLike) -> None:
    """Make a rename or a new entry in directory `path` durable (a no-op where directories
    cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_synced(path: PathLike, data: bytes) -> None:
    """Write bytes to a new file (it must not exist) and fsync it."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


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
        os.replace(tmp, path)
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
