"""Memory reused step after step, handed out as arrays: a `Buffer` for one array, a `Scratch` for
arrays that live only inside one kernel call.

The buffers have owners you can name: each Parameter's `workspace` (workspace.py: its Linear output, its
input's bf16 copy, its embedding gradient, its own bf16 copy), and SCRATCH below (dy's bf16
copy inside one linear_backward). Kernels take the arrays a buffer hands out; no kernel keeps one.

A `Buffer` hands its memory out as a new array each time, and only while no array it handed
out before is alive: an array over our memory sits on an mmap (not on another array), so
every view of it keeps it alive and a weak reference to it says when the last one is gone.
A buffer in use gives a fresh array instead. No reference counting, no id()-keyed tables.
"""
import mmap
import weakref

import numpy as np


def _dead():
    return None


class Buffer:
    """Memory reused step after step: `take(shape, dtype)` is an array over it, or None while an
    array it handed out before (or any view of one) is still alive. The memory only grows: a
    smaller request (a shorter batch) is the front of it, so batches of varying length reuse
    the pages the longest one faulted in instead of mapping (and zeroing) new ones each time."""

    __slots__ = ("memory", "capacity", "nbytes", "layout", "handed", "fresh", "relaid")

    def __init__(self):
        self.memory, self.capacity, self.nbytes, self.layout = None, -1, -1, None
        self.handed, self.fresh, self.relaid = _dead, False, False

    def take(self, shape, dtype):
        if self.handed() is not None:
            return None
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        self.fresh = nbytes > self.capacity     # new memory: zeros
        if self.fresh:                          # private anonymous pages: zero, resident only once written
            # (an embedding's dW: the rows a batch used), copied on write after a fork
            self.memory = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self.capacity = nbytes
        layout = (tuple(shape), dtype)
        self.relaid = not self.fresh and layout != self.layout   # old memory, another shape: stale bytes
        self.nbytes, self.layout = nbytes, layout
        a = np.ndarray(shape, dtype, buffer=self.memory)   # a.base: the mmap, not an array
        self.handed = weakref.ref(a)
        return a

    def view(self):
        """The memory as uint8 (for tests and inspection), or None before the first take."""
        return None if self.memory is None else np.frombuffer(self.memory, np.uint8)[:self.nbytes]

    def take_or_new(self, shape, dtype):
        a = self.take(shape, dtype)
        return np.empty(shape, dtype) if a is None else a


class Scratch:
    """Buffers by (tag, shape): for arrays that live only inside one kernel call."""

    def __init__(self):
        self.buffers = {}

    def take_or_new(self, tag, shape, dtype):
        return self.buffers.setdefault((tag, tuple(shape)), Buffer()).take_or_new(shape, dtype)


SCRATCH = Scratch()     # the kernels' own: dy's bf16 copy inside one linear_backward (both twins)
