"""torch.testing: assert_close, as the book's tests call it."""
import numpy as np

from ..tensor import Tensor

# torch.testing.assert_close's default tolerances, by dtype (rtol, atol)
_TOLERANCES = {np.dtype("float32"): (1.3e-6, 1e-5), np.dtype("float64"): (1e-7, 1e-7)}


def assert_close(actual, expected, *, rtol=None, atol=None, equal_nan=False, check_dtype=True, msg=None):
    """Raise AssertionError unless |actual - expected| <= atol + rtol |expected| everywhere, with
    torch's default tolerances for the dtype (exact for integers and bools) and equal shapes."""
    a = np.asarray(actual.data if isinstance(actual, Tensor) else actual)
    e = np.asarray(expected.data if isinstance(expected, Tensor) else expected)
    if (rtol is None) != (atol is None):
        raise ValueError("assert_close: give both rtol and atol, or neither")
    if a.shape != e.shape:
        raise AssertionError(msg or f"The values for attribute 'shape' do not match: {a.shape} != {e.shape}.")
    if check_dtype and a.dtype != e.dtype:
        raise AssertionError(msg or f"The values for attribute 'dtype' do not match: {a.dtype} != {e.dtype}.")
    if rtol is None:
        rtol, atol = _TOLERANCES.get(a.dtype, (0.0, 0.0))
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    ok = np.abs(a64 - e64) <= atol + rtol * np.abs(e64)
    if equal_nan:
        ok |= np.isnan(a64) & np.isnan(e64)
    ok |= a64 == e64                                   # equal infinities
    if not ok.all():
        bad = int((~ok).sum())
        worst = float(np.nanmax(np.abs(a64 - e64)))
        raise AssertionError(msg or f"Tensor-likes are not close!\n\nMismatched elements: {bad} / {a.size}\n"
                                    f"Greatest absolute difference: {worst} (up to {atol} allowed, rtol {rtol})")
