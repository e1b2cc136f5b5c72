"""Freed memory kept for the next training step, as PyTorch's caching allocator keeps it on a GPU.

A training step allocates and frees the same arrays every time: the forward's activations
(saved for backward, freed by it), the logits and their gradient (100 MB each for GPT-2 124M
at 2 x 256), the layers' temporaries. glibc, left alone, gives that memory back to the OS:
an array above its mmap threshold (at most 32 MB) is mapped fresh and unmapped on free, and
the free top of the heap is trimmed once it is larger than the trim threshold. The next step
then faults every page in again, and the kernel zeroes each one: ~71,000 pages (~277 MiB) a
124M step, 0.1-0.2 s of it (benchmarks/RESULTS.md, "The plain API's page faults").

`keep_freed_memory()` asks glibc (mallopt) to take every array from the heap and never trim
it, so the next step reuses the same pages: none are faulted in after the first step. It is the
runtime's allocator policy: `runtime.set(allocator="keep")`, which the commands set once where
they set the threads (cli.setup_threads); a training loop of your own over GPTModel and AdamW
says the same line before its loop (nothing in the engine sets it behind your back). The price
is PyTorch's on a GPU: the process keeps its peak heap (the training step's peak RSS is
unchanged) until `empty_cache()` hands the free part back. `TINYGRAD_GPT_NO_MEMORY_CACHING=1`
keeps the policy "system" (as PyTorch's PYTORCH_NO_CUDA_MEMORY_CACHING=1 turns off its GPU
cache). On a C library other than glibc both functions do nothing and return False.
"""
import ctypes
import types

from .runtime import APPLY, runtime

OPT_OUT = "TINYGRAD_GPT_NO_MEMORY_CACHING"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4     # glibc's malloc.h

_glibc_found = types.SimpleNamespace(libc=None)     # glibc through ctypes, found once (False: none)


def _glibc():
    """glibc through ctypes, or None (musl, macOS, Windows: nothing to tune)."""
    if _glibc_found.libc is None:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.mallopt.restype = ctypes.c_int
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            libc.malloc_trim.restype = ctypes.c_int
            _glibc_found.libc = libc
        except (OSError, AttributeError):
            _glibc_found.libc = False
    return _glibc_found.libc or None


def caching_disabled() -> bool:
    """True when TINYGRAD_GPT_NO_MEMORY_CACHING was set to anything but "" or "0" (read once)."""
    return runtime.keep_refused


def _apply_allocator(policy, old=None):       # runtime.set(allocator=...) calls it
    if policy == "keep" and old != "keep":
        keep_freed_memory()


APPLY["allocator"] = _apply_allocator


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed memory instead of returning it to the OS; True if it took it.

    Both thresholds must be set: setting either one freezes glibc's dynamic adjustment of
    both, and the other keeps the value it had (128 KiB at start; with only the trim threshold
    every array above the mmap threshold is still mapped fresh, with only the mmap threshold the
    heap is still trimmed at every free: benchmarks/RESULTS.md, "The library keeps freed
    memory"). Arrays up to 1 GiB come from the heap; an older glibc that refuses an mmap
    threshold above 32 MiB (half its heap size) gets mmap turned off instead (M_MMAP_MAX = 0).
    The trim threshold is the largest C int (2 GiB - 1): mallopt takes a C int, and 1 << 32
    reached it as 0, "trim at once" (benchmarks/RESULTS.md, "bf16 autocast, second session").
    `runtime.set(allocator="keep")` calls it (once; not under the opt-out variable)."""
    libc = _glibc()
    if libc is None:
        return False
    from_heap = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) or libc.mallopt(M_MMAP_MAX, 0)
    return bool(from_heap and libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1))


def empty_cache() -> bool:
    """Hand the heap's free memory back to the OS (glibc's malloc_trim), as
    torch.cuda.empty_cache() does for PyTorch's GPU cache: after training, before other work.
    True if any memory was released."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
