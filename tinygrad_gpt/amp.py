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

This file is the user's switch and the command line's precision choice; the switch's state is
`runtime.autocast`. The machine is one floor down: kernels/precision.py (the bf16 GEMM backend:
MKL, our AVX512-BF16 kernel or the NumPy twin; `gemm_backend`, `get_gemm_backend` are re-exported
here), the kernels' linear_forward / linear_backward on bf16 operands, and workspace.py (each
weight's bf16 copy, owned by the Parameter: made by the first product under autocast, then
written by AdamW's fused pass; `Tensor.copy_` (load_state_dict) or a new array (`p.data = ...`)
makes it stale. A weight written any other way in place: `invalidate()`).
"""

from . import kernels, workspace
from .kernels import bf16_avx512, bf16_mkl, precision
from .kernels.precision import gemm, gemm_backend, get_gemm_backend, unavailable_reason  # noqa: F401
from .runtime import runtime

_DTYPES = precision.DTYPES


class autocast:
    """Context manager (and its state): bf16 matrix products inside the block."""

    def __init__(self, dtype="bfloat16", enabled=True):
        if dtype in ("bf16", "torch.bfloat16"):
            dtype = "bfloat16"
        if dtype not in _DTYPES:
            raise ValueError(f"autocast: dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.dtype, self.enabled = dtype, bool(enabled)

    def __enter__(self):
        self._prev = runtime.set(autocast=self.dtype if self.enabled else None)
        return self

    def __exit__(self, *exc):
        runtime.set(**self._prev)              # leaving: workspace frees the unowned bf16 copies
        return False


def set_autocast(dtype):
    """The setter beside the context manager: "bfloat16" turns it on, None turns it off."""
    runtime.set(autocast=None if dtype is None else autocast(dtype).dtype)


def get_autocast():
    """The active autocast dtype ("bfloat16") or None."""
    return runtime.autocast


def is_autocast_enabled():
    return runtime.autocast is not None


def to_bf16(x, out=None):
    """float32 -> bf16 bits, round to nearest even, on the active kernel backend (into `out`)."""
    return kernels.K.to_bf16(x, out=out)


def invalidate(tensors=None):
    """Forget the weights' bf16 copies (of these Tensors or arrays, or all): after changing
    weights in place other than through AdamW or Tensor.copy_."""
    workspace.invalidate(tensors)


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
