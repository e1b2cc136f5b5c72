"""Mixed precision: `with autocast("bfloat16"):` runs the matrix products in bf16.

    with tinygrad_gpt.autocast("bfloat16"):     # around forward + loss, as torch.autocast
        loss = F.cross_entropy(model(x), y)
    loss.backward()                             # the products recorded in bf16 stay bf16
    opt.step()                                  # float32 master weights, and their bf16 copies

Inside the block every Linear (the attention projections, the feed-forward, the output head)
multiplies bf16 inputs with float32 accumulation and a float32 result, forward and backward
(y = x W^T, dx = dy W, dW = dy^T x). Everything else (layer norm, softmax, GELU, attention,
cross-entropy, the loss) stays float32, as in torch's autocast lists; parameters, gradients
and AdamW's moments are float32 throughout. `enabled=False` makes the block a no-op.

The bf16 copy of a weight is made once per optimizer step: the first product under autocast
converts it, and from then on AdamW's fused kernel writes the copy as it writes the weight
(kernels: adamw_step_bf16). A weight changed any other way in place must be announced with
`invalidate()`; `Module.load_state_dict` does it, and a new array (`p.data = ...`) is noticed.

The GEMM: oneMKL's cblas_gemm_bf16bf16f32 on a CPU with AMX-BF16 (kernels/bf16_mkl.py); our
own VDPBF16PS kernel on an AMD CPU with AVX512-BF16 (kernels/bf16_avx512.py: Zen 4 and 5);
on any other machine the readable twin (kernels/reference.gemm_bf16) computes the same
numbers slowly, and a warning says so once. `gemm_backend("reference")` forces the twin.
"""
import warnings
import weakref

import numpy as np

from .kernels import K, bf16_avx512, bf16_mkl, reference

_DTYPES = ("bfloat16",)
_active = None              # the dtype name while an autocast block is enabled, else None
_gemm_choice = "auto"       # "auto" (the fast one this CPU has), "mkl", "avx512_bf16", "reference"
_BACKENDS = ("auto", "mkl", "avx512_bf16", "reference")
_warned = False


class autocast:
    """Context manager (and its state): bf16 matrix products inside the block."""

    def __init__(self, dtype="bfloat16", enabled=True):
        if dtype in ("bf16", "torch.bfloat16"):
            dtype = "bfloat16"
        if dtype not in _DTYPES:
            raise ValueError(f"autocast: dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.dtype, self.enabled = dtype, bool(enabled)

    def __enter__(self):
        global _active
        self._prev = _active
        _active = self.dtype if self.enabled else None
        return self

    def __exit__(self, *exc):
        global _active
        _active = self._prev
        if _active is None:
            _drop_unowned()
        return False


def set_autocast(dtype):
    """The setter beside the context manager: "bfloat16" turns it on, None turns it off."""
    global _active
    if dtype is not None:
        dtype = autocast(dtype).dtype
    _active = dtype
    if dtype is None:
        _drop_unowned()


def get_autocast():
    """The active autocast dtype ("bfloat16") or None."""
    return _active


def is_autocast_enabled():
    return _active is not None


# ----------------------------------------------------------------------------- the GEMM backend
class gemm_backend:
    """`with gemm_backend("reference"):` forces the NumPy twin (as on a CPU with neither AMX nor
    AVX512-BF16); "mkl" and "avx512_bf16" require that fast path, "auto" picks the one this
    CPU has (MKL on AMX). Also a plain setter call."""

    def __init__(self, name):
        global _gemm_choice
        if name not in _BACKENDS:
            raise ValueError(f"gemm_backend: expected one of {', '.join(map(repr, _BACKENDS))}, got {name!r}")
        if name == "mkl" and not bf16_mkl.available():
            raise RuntimeError(f"gemm_backend('mkl'): {bf16_mkl.unavailable_reason()}")
        if name == "avx512_bf16" and not bf16_avx512.available():
            raise RuntimeError(f"gemm_backend('avx512_bf16'): {bf16_avx512.unavailable_reason()}")
        self._prev, _gemm_choice = _gemm_choice, name

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _gemm_choice
        _gemm_choice = self._prev
        return False


def get_gemm_backend():
    """"mkl", "avx512_bf16" or "reference": what a bf16 product runs on now."""
    if _gemm_choice in ("mkl", "avx512_bf16", "reference"):
        return _gemm_choice
    if bf16_mkl.available():
        return "mkl"
    return "avx512_bf16" if bf16_avx512.faster_than_float32() else "reference"


def unavailable_reason():
    """Why a bf16 product runs through the twin here: no AVX512-BF16 either, or (Intel without
    a usable AMX: MKL not loaded, or Cooper Lake) our VDPBF16PS GEMM is slower than the twin."""
    if bf16_mkl.available() or bf16_avx512.faster_than_float32():
        return ""
    if not bf16_avx512.available():
        return bf16_avx512.unavailable_reason()
    return (f"{bf16_mkl.unavailable_reason()}, and our AVX512-BF16 GEMM is slower than NumPy's "
            f"float32 on this {bf16_mkl.cpu_vendor() or 'non-AMD'} CPU (benchmarks/RESULTS.md)")


def gemm(a, b, trans_a=False, trans_b=False, out=None):
    """float32 (M, N) = op(a) @ op(b) for bf16 bits (uint16) a, b, on the chosen backend."""
    global _warned
    backend = get_gemm_backend()
    if backend == "mkl":
        return bf16_mkl.gemm_bf16(a, b, trans_a, trans_b, out)
    if backend == "avx512_bf16":
        return bf16_avx512.gemm_bf16(a, b, trans_a, trans_b, out)
    if _gemm_choice == "auto" and not _warned:
        _warned = True
        warnings.warn(f"autocast('bfloat16'): {unavailable_reason()}; the bf16 products run "
                      f"through the NumPy twin (same numbers, not faster than float32)", RuntimeWarning,
                      stacklevel=3)
    return reference.gemm_bf16(a, b, trans_a, trans_b, out)


def to_bf16(x, out=None):
    """float32 -> bf16 bits, round to nearest even, on the active kernel backend (into `out`)."""
    return K.to_bf16(x, out=out)


# ----------------------------------------------------------------------------- weight copies
# id(weight array) -> [weakref to it, its bf16 bits or None, owned]; owned = AdamW keeps it
# up to date. Unowned copies live only as long as the autocast block that made them.
_weights = {}


def _forget(key, weights=_weights):             # bound here: the callback may run at interpreter exit
    return lambda _ref: weights.pop(key, None)


def weight_bf16(w):
    """The bf16 copy of weight array w: AdamW's, or converted now (and kept for the block)."""
    key = id(w)
    entry = _weights.get(key)
    if entry is not None and entry[0]() is w and entry[1] is not None:
        return entry[1]
    bits = to_bf16(w)
    if entry is not None and entry[0]() is w:
        entry[1] = bits
    else:
        _weights[key] = [weakref.ref(w, _forget(key)), bits, False]
    return bits


def optimizer_copy(w):
    """For AdamW: the uint16 array to write w's bf16 copy into, or None if w has never been
    used under autocast. The copy becomes owned: it stays valid across steps and blocks."""
    entry = _weights.get(id(w))
    if entry is None or entry[0]() is not w:
        return None
    if entry[1] is None or entry[1].shape != w.shape:
        entry[1] = np.empty(w.shape, dtype=np.uint16)
    entry[2] = True
    return entry[1]


def invalidate(arrays=None):
    """Forget the bf16 copies (of these arrays, or all): call after changing weights in place
    other than through AdamW. The next product under autocast converts them again."""
    if arrays is None:
        for entry in _weights.values():
            entry[1], entry[2] = None, False
        return
    for a in arrays:
        a = getattr(a, "data", a)
        entry = _weights.get(id(a))
        if entry is not None and entry[0]() is a:
            entry[1], entry[2] = None, False


def _drop_unowned():
    for entry in _weights.values():
        if not entry[2]:
            entry[1] = None


# ----------------------------------------------------------------------------- precision choice
def resolve_precision(requested="auto"):
    """"float32" or "bfloat16": what a run with --precision `requested` trains in, decided
    without loading MKL (so that a float32 run keeps MKL's pool out of the process)."""
    if requested not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"precision must be auto, float32 or bfloat16, got {requested!r}")
    return choose_precision(requested)[0] if requested == "auto" else requested


def choose_precision(requested="auto"):
    """"float32" or "bfloat16" for a training run, and a sentence why.

    "auto" is bfloat16 autocast where this CPU has a fast bf16 GEMM (AMX-BF16 with oneMKL
    installed, or AVX512-BF16 on AMD through kernels/bf16_avx512.py), float32 elsewhere, as
    nanoGPT picks bf16 where the hardware has it. The measurements (benchmarks/RESULTS.md, "bf16
    autocast"): the 124M step 1.8-2.1x faster than our float32 step on AMX, ~1.5x on Zen 4; the
    chapter-5 run ended at 0.546 / 6.451 in bf16 against float32's 0.545 / 6.451 on both.
    `--precision float32` is the book's exact run and its printed lines. The choice is made
    without loading MKL (a float32 run keeps MKL's pool out of the process); only "bfloat16"
    asked by name loads it here, to say which GEMM it runs on."""
    if requested != "auto":
        resolve_precision(requested)            # a clear error for any other name
    if requested == "float32":
        return "float32", "float32 as requested"
    if requested == "bfloat16":
        if bf16_mkl.available():
            single = bf16_mkl.single_thread_reason()
            return "bfloat16", "bfloat16 autocast on oneMKL's AMX-BF16 GEMM" + (f" ({single})" if single else "")
        if get_gemm_backend() == "avx512_bf16":
            return "bfloat16", "bfloat16 autocast on our AVX512-BF16 GEMM (kernels/bf16_avx512.py)"
        return "bfloat16", (f"bfloat16 autocast through the NumPy twin, same numbers, not faster than float32: "
                            f"{unavailable_reason()}")
    book = "; --precision float32 is the book's exact run"
    if bf16_mkl.cpu_has_amx_bf16() and bf16_mkl.installed():
        return "bfloat16", ("auto: bfloat16 autocast, this CPU has AMX-BF16 and oneMKL is installed (the step "
                            "~2x faster than float32 here, benchmarks/RESULTS.md)" + book)
    if bf16_avx512.faster_than_float32():
        return "bfloat16", ("auto: bfloat16 autocast, this CPU has AVX512-BF16 (our GEMM, kernels/bf16_avx512.py: "
                            "the step ~1.5x faster than float32 here, benchmarks/RESULTS.md)" + book)
    why = ("this CPU has AMX-BF16 but no MKL is installed (pip's mkl package)" if bf16_mkl.cpu_has_amx_bf16()
           else unavailable_reason())       # without AMX, asking loads nothing
    return "float32", f"auto: float32 (bf16 would run through the NumPy twin here: {why})"
