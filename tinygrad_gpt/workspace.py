"""What the engine keeps from one step to the next, and who owns it (llm.c plans its buffers in
ParameterTensors / ActivationTensors; here each Parameter carries its own):

- `Workspace`, a Parameter's (`p.workspace`, made by nn.Parameter; None on any other Tensor):
    y        its Linear output buffer                    (functional.Linear.forward)
    x_bits   its Linear input's bf16 copy, saved for backward, under autocast
    grad     its embedding gradient buffer, and grad_rows: the rows of it the last step wrote
    bits     its own bf16 copy under autocast: made by the first product, written by AdamW's fused
             pass from then on (optim.py, `owned`); stale once the weight's array or version changes
- the last input converted to bf16 (`input_bits`): attention's query, key and value Linears read
  one normed x, and share the one copy the first of them made (kept by weak reference: it lives
  while a saved graph holds it).

Kernels get the arrays these hand out (`out=` buffers, bf16 bits); no kernel sees a Tensor, reads
a version or keeps a buffer. The memory itself is kernels/buffers.py's `Buffer`.
"""
import types
import weakref

import numpy as np

from . import kernels
from .kernels.buffers import Buffer
from .runtime import APPLY, runtime


def _dead():
    return None


class Workspace:
    """What one Parameter keeps across steps (the module docstring lists it)."""

    def __init__(self):
        self.y, self.x_bits, self.grad = Buffer(), Buffer(), Buffer()
        self.grad_rows = np.zeros(0, np.int64)    # the rows of grad's memory that are nonzero, None: unknown
        self.bits = None                          # the weight's bf16 copy (uint16), or None
        self.source, self.version = _dead, -1     # the array and version the copy was made from
        self.owned = False                        # AdamW keeps the copy up to date

    def __deepcopy__(self, memo):                 # a copied model starts with nothing kept
        return Workspace()

    def copy_is_current(self, w):
        return self.bits is not None and self.source() is w.data and self.version == w._version

    def stamp(self, w, owned=None):
        self.source, self.version = weakref.ref(w.data), w._version
        if owned is not None:
            self.owned = owned
        _with_copies.add(self)

    # ---- the embedding's gradient buffer
    def embedding_grad(self, shape, dtype):
        """(dW, stale rows) for a scatter-add into the kept gradient buffer: only the rows the last
        step wrote need zeroing (a fresh (V, C) array every step is 154 MB of page zeroing for
        GPT-2). (None, None) while someone holds the last one (micro-batches: the .grad still there,
        to which the engine may add a dense dW, so which rows are nonzero is no longer known)."""
        dw = self.grad.take(shape, dtype)
        if dw is None:
            self.grad_rows = None
            return None, None
        if self.grad.fresh:                       # new memory: all zeros, no stale rows
            self.grad_rows = np.zeros(0, np.int64)
        elif self.grad_rows is None or self.grad.relaid:   # written into while held, or laid out
            dw[...] = 0                                    # for another shape before: zero it all
            self.grad_rows = np.zeros(0, np.int64)
        return dw, self.grad_rows


_with_copies = weakref.WeakSet()                  # the Workspaces holding a bf16 copy (autocast's exit, invalidate)
_last_input = types.SimpleNamespace(data=_dead, version=-1, bits=_dead)   # input_bits' one shared copy


def linear_operands(x, x2, w, w_data):
    """(x, w, out) for functional.Linear's product of x2 (x's array as rows) and w_data (the
    weight Tensor w's array): under autocast, float32 operands become their bf16 copies
    (input_bits, weight_bits), float32 out; `out` is w's kept output buffer, or None (a fresh
    array) for a weight that is no Parameter or whose buffer is still in use."""
    kept = w.workspace
    if runtime.autocast is not None and x2.dtype == w_data.dtype == np.float32:
        x2, w_data = input_bits(x, x2, kept), weight_bits(w)
    dtype = np.float32 if w_data.dtype == np.uint16 else np.result_type(x2, w_data)
    out = None if kept is None else kept.y.take((x2.shape[0], w_data.shape[0]), dtype)
    return x2, w_data, out


def weight_bits(w):
    """The weight Tensor w's bf16 copy: AdamW's (current), or converted now and kept while
    autocast is on. A weight that is no Parameter is converted at each product."""
    kept = w.workspace
    if kept is None:
        return kernels.K.to_bf16(w.data)
    if not kept.copy_is_current(w):
        out = kept.bits if kept.bits is not None and kept.bits.shape == w.shape else None
        kept.bits = kernels.K.to_bf16(w.data, out=out)
        kept.stamp(w)
    return kept.bits


def input_bits(x, x2, kept):
    """The bf16 copy of x2 (x's array as rows), saved for backward: the one the previous Linear
    made when it read the same array at the same version (query, key, value), else converted
    now into the weight's kept buffer (`kept`, or a fresh array)."""
    bits = _last_input.bits()
    if bits is not None and _last_input.data() is x.data and _last_input.version == x._version \
            and bits.size == x2.size:
        return bits.reshape(x2.shape)
    xb = kernels.K.to_bf16(x2, out=None if kept is None else kept.x_bits.take(x2.shape, np.uint16))
    _last_input.data, _last_input.version, _last_input.bits = weakref.ref(x.data), x._version, weakref.ref(xb)
    return xb


def copy_for_step(p):
    """The bf16 copy AdamW writes in its pass over Parameter p (K.adamw_step's `copy`), or None
    when no product under autocast has copied p's array. AdamW owns it from then on: it stays
    current across steps, and leaving autocast does not free it."""
    kept = p.workspace
    if kept is None or kept.source() is not p.data:
        return None
    if kept.bits is None or kept.bits.shape != p.shape:   # freed when autocast ended
        kept.bits = np.empty(p.shape, np.uint16)
    kept.stamp(p, owned=True)                 # AdamW writes p.data in place: its version stays
    return kept.bits


def drop_unowned_copies():
    """Leaving autocast: copies no optimizer keeps up to date are freed."""
    _last_input.bits = _dead
    for kept in list(_with_copies):
        if not kept.owned:
            kept.bits = None


def invalidate(tensors=None):
    """Forget the bf16 copies (of these Tensors or arrays, or all): after changing weights in place
    other than through AdamW or Tensor.copy_ (which bumps the version)."""
    arrays = None if tensors is None else [getattr(t, "data", t) for t in tensors]
    if arrays is None or any(_last_input.data() is a for a in arrays):
        _last_input.bits = _dead
    for kept in list(_with_copies):
        if arrays is None or any(kept.source() is a for a in arrays):
            kept.bits, kept.owned = None, False


def _leaving_autocast(dtype, old=None):      # runtime.set(autocast=...) calls it
    if dtype is None:
        drop_unowned_copies()


APPLY["autocast"] = _leaving_autocast
