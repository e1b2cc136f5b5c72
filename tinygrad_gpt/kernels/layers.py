"""The machine under a layer: which dtype a Linear multiplies in, which GEMM, which output
buffer; the embedding's reused gradient; AdamW's pass that also writes the bf16 copy.

functional.py says the math (`y = K.linear(x, w, b, owner)`, `dx, dw = K.linear_backward(...)`);
this module decides the rest, and every buffer it reuses has an owner you can name:

- `WeightState`, owned by the weight's Tensor (`state_of(tensor)`): its bf16 copy under
  autocast (written by AdamW's fused pass once the optimizer owns it, stale once anything
  else writes the weight: `Tensor.copy_` bumps its version), its Linear output buffer, the
  buffer of its input's bf16 copy (saved for backward), its embedding gradient buffer.
- `SCRATCH`, this module's: one buffer per shape for what no single layer owns (dy's bf16 copy,
  dead once a Linear's backward returns).

A `Buffer` hands its memory out as a new array each time, and only while no array it handed
out before is alive: an array over our memory sits on an mmap (not on another array), so
every view of it keeps it alive and a weak reference to it says when the last one is gone.
A buffer in use gives a fresh array instead. No reference counting, no id()-keyed tables.

The plain-NumPy twins: reference.linear_forward / linear_backward (tests/test_kernels.py).
"""
import mmap
import weakref

import numpy as np

from . import precision, reference
from .backend import K


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


SCRATCH = Scratch()


class WeightState:
    """What the kernel layer keeps for one weight Tensor; the Tensor owns it (state_of)."""

    def __init__(self):
        self.y, self.x_bits, self.grad = Buffer(), Buffer(), Buffer()   # Linear's output, its input's bf16
        # bits: the weight's bf16 copy; on an activation's Tensor, its copy a Linear saved (input_bits)
        self.grad_rows = np.zeros(0, np.int64)    # the rows of grad's memory that are nonzero
        self.bits = None                          # the weight's bf16 copy (uint16), or None
        self.source, self.version = _dead, -1     # the array and version the copy was made from
        self.owned = False                        # AdamW keeps the copy up to date

    def __deepcopy__(self, memo):                 # a copied model starts with no buffers
        return WeightState()

    def copy_is_current(self, w):
        return self.bits is not None and self.source() is w.data and self.version == w._version

    def stamp(self, w):
        self.source, self.version = weakref.ref(w.data), w._version


_with_copies = weakref.WeakSet()                  # the states holding a bf16 copy (autocast's exit, invalidate)


def state_of(tensor):
    """The weight Tensor's kernel state, made on first use; it lives and dies with the Tensor."""
    st = tensor.__dict__.get("_kernel_state")
    if st is None:
        st = tensor.__dict__["_kernel_state"] = WeightState()
    return st


def weight_bits(w):
    """w's bf16 copy: the one AdamW wrote, or converted now (kept while autocast is on)."""
    st = state_of(w)
    if not st.copy_is_current(w):
        out = st.bits if st.bits is not None and st.bits.shape == w.shape else None
        st.bits = K.to_bf16(w.data, out=out)
        st.stamp(w)
        _with_copies.add(st)
    return st.bits


def drop_unowned_copies():
    """Leaving autocast: copies no optimizer keeps up to date are freed."""
    for st in list(_with_copies):
        if not st.owned:
            st.bits = None


def invalidate(tensors=None):
    """Forget the bf16 copies (of these Tensors or arrays, or all)."""
    for st in list(_with_copies):
        if tensors is None or any(st.source() is getattr(t, "data", t) for t in tensors):
            st.bits, st.owned = None, False


# ----------------------------------------------------------------------------- linear
def input_bits(x, owner, source):
    """x's bf16 copy (saved for backward), made once per input: `source` is x's Tensor, and
    the Linears that read it (attention's query, key and value) share the copy the first one
    made, kept on the source's state while its array and version are the ones converted."""
    src = None if source is None else state_of(source)
    if src is not None and src.copy_is_current(source) and src.bits.size == x.size:
        return src.bits.reshape(x.shape)
    xb = K.to_bf16(x, out=state_of(owner).x_bits.take_or_new(x.shape, np.uint16))
    if src is not None:                          # invalidate() and autocast's exit see it too
        src.bits = xb.reshape(source.shape)
        src.stamp(source)
        _with_copies.add(src)
    return xb


def linear(x, w, b, owner, source=None):
    """y = x w^T + b for x: (N, in), w: (out, in), b: (out,) or None; `owner` is w's Tensor,
    `source` x's (or None). Returns (y, x_used, w_used), the operands backward multiplies:
    under autocast (float32 operands) the bf16 bits of x and w, the product in bf16 with
    float32 accumulation."""
    y = state_of(owner).y.take_or_new((x.shape[0], w.shape[0]), np.result_type(x, w))   # (N, out)
    if precision.active is not None and x.dtype == np.float32 and w.dtype == np.float32:
        x, w = input_bits(x, owner, source), weight_bits(owner)
        precision.gemm(x, w, trans_b=True, out=y)
    else:
        K.matmul(x, w.T, out=y)                  # np.matmul, OpenBLAS in one thread per piece (threads.py)
    if b is not None:
        y += b
    return y, x, w


def linear_backward(dy, x, w, need_dx=True, need_dw=True):
    """dx = dy w, dW = dy^T x for the operands linear returned (bf16 bits if it ran in bf16).
    dW is a fresh array: the parameter's .grad until zero_grad() drops it (a kept dW would hold
    GPT-2's 0.6 GiB of gradients through the next forward, the step's peak)."""
    dx = dw = None
    dw = np.empty(w.shape, dy.dtype) if need_dw else None
    if x.dtype == np.uint16:                     # the same two products, bf16 in, float32 out
        gb = K.to_bf16(dy, out=SCRATCH.take_or_new("dy bf16", dy.shape, np.uint16))
        dx = precision.gemm(gb, w) if need_dx else None
        if need_dw:
            precision.gemm(gb, x, trans_a=True, out=dw)
    else:
        dx = K.matmul(dy, w) if need_dx else None
        if need_dw:
            K.matmul(dy.T, x, out=dw)
    return dx, dw


# ----------------------------------------------------------------------------- embedding
def embedding_backward(dy, ids, owner):
    """dW (V, C) = scatter-add of dy (N, C) at ids (N,). Into the weight's own gradient buffer
    when no one holds it any more: a fresh (V, C) array every step (154 MB for GPT-2) costs
    the kernel's page zeroing, the reused one only zeroes the rows the previous step wrote.
    Held (micro-batches: the .grad still there), a fresh dense array."""
    st = state_of(owner)
    dw = st.grad.take(owner.shape, dy.dtype)
    if dw is None:                              # held: the engine may add this dense dW into it,
        st.grad_rows = None                     # so which rows are nonzero is no longer known
        return K.embedding_backward(dy, ids, owner.shape[0])
    if st.grad.fresh:                           # new memory: all zeros, no stale rows
        st.grad_rows = np.zeros(0, np.int64)
    elif st.grad_rows is None or st.grad.relaid:   # written into while held (micro-batches), or
        dw[...] = 0                                # laid out for another shape before: zero it all
        st.grad_rows = np.zeros(0, np.int64)
    st.grad_rows = K.embedding_backward_into(dy, ids, dw, st.grad_rows)
    return dw


# ----------------------------------------------------------------------------- AdamW
def adamw_update(p, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW step on Parameter p (kernels: adamw_step). A weight used under autocast has its
    bf16 copy written in the same pass (adamw_step_bf16); the optimizer owns it from then on."""
    st = p.__dict__.get("_kernel_state")
    if st is None or st.source() is not p.data:
        return K.adamw_step(p.data, p.grad, m, v, lr, beta1, beta2, eps, weight_decay, step)
    if st.bits is None or st.bits.shape != p.shape:
        st.bits = np.empty(p.shape, np.uint16)
    K.adamw_step_bf16(p.data, p.grad, m, v, st.bits, lr, beta1, beta2, eps, weight_decay, step)
    st.stamp(p)
    st.owned = True
    _with_copies.add(st)


__all__ = ["Buffer", "SCRATCH", "WeightState", "state_of", "linear", "linear_backward", "embedding_backward",
           "adamw_update", "weight_bits", "drop_unowned_copies", "invalidate", "reference"]
