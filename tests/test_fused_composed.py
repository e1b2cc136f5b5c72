"""Fused = composed: layer norm and softmax built from ops.py's small ops give the same values and
the same gradients as the fused Functions (functional.py + kernels/), through both kernel
backends. This is the proof behind docs/backward.md section 4, which quotes the two functions
below; both also pass gradcheck on their own, so each side is checked against finite differences
as well as against the other.
"""
import numpy as np
import pytest

from tinygrad_gpt import Tensor, gradcheck
from tinygrad_gpt import functional as F
from tinygrad_gpt.gradcheck import max_gradcheck_error
from tinygrad_gpt.tensor import topological_order


def layer_norm_composed(x, w, b, eps=1e-5):           # x: (N, C)  w, b: (C,)
    mean = x.mean(axis=-1, keepdims=True)              # (N, 1)
    xc = x - mean                                      # (N, C)
    var = (xc * xc).mean(axis=-1, keepdims=True)       # (N, 1) biased, as PyTorch
    xhat = xc / (var + eps).sqrt()                     # (N, C)
    return xhat * w + b                                # (N, C)


def softmax_composed(x):                              # x: (N, C)
    e = (x - x.max(axis=-1, keepdims=True)).exp()      # shifted by the row max: exp never overflows
    return e / e.sum(axis=-1, keepdims=True)           # (N, C)


def leaves(*arrays):
    return [Tensor(a.copy(), requires_grad=True) for a in arrays]


def values_and_grads(fn, arrays, R):
    inputs = leaves(*arrays)
    out = fn(*inputs)
    out.backward(R)
    return out.data, [t.grad for t in inputs]


@pytest.fixture
def rows():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 16)) * 3 + 1            # (N, C), not already normalised
    w, b = rng.standard_normal(16), rng.standard_normal(16)
    R = rng.standard_normal((6, 16))                   # dL/d(output), random
    return x, w, b, R


def test_layer_norm_composed_equals_fused_in_values_and_gradients(rows, backend):
    x, w, b, R = rows
    y_fused, g_fused = values_and_grads(F.layer_norm, (x, w, b), R)
    y_comp, g_comp = values_and_grads(layer_norm_composed, (x, w, b), R)
    worst = max(np.abs(y_fused - y_comp).max(), *(np.abs(a - c).max() for a, c in zip(g_fused, g_comp)))
    print(f"layer norm, {backend}: worst |fused - composed| over y, dx, dw, db = {worst:.2e}")
    np.testing.assert_allclose(y_comp, y_fused, rtol=0, atol=1e-12)
    for name, a, c in zip(("dx", "dw", "db"), g_fused, g_comp):
        np.testing.assert_allclose(c, a, rtol=0, atol=1e-11, err_msg=name)


def test_softmax_composed_equals_fused_in_values_and_gradients(rows, backend):
    x, _, _, R = rows
    y_fused, (dx_fused,) = values_and_grads(F.softmax, (x,), R)
    y_comp, (dx_comp,) = values_and_grads(softmax_composed, (x,), R)
    print(f"softmax, {backend}: worst |fused - composed| = {max(np.abs(y_fused - y_comp).max(), np.abs(dx_fused - dx_comp).max()):.2e}")
    np.testing.assert_allclose(y_comp, y_fused, rtol=0, atol=1e-15)
    np.testing.assert_allclose(dx_comp, dx_fused, rtol=0, atol=1e-13)


def test_both_sides_pass_gradcheck(rows, backend):
    x, w, b, _ = rows
    for fn, arrays in ((F.layer_norm, (x, w, b)), (layer_norm_composed, (x, w, b)),
                       (F.softmax, (x,)), (softmax_composed, (x,))):
        inputs = leaves(*arrays)
        assert gradcheck(fn, inputs)
        assert max_gradcheck_error(fn, inputs) < 1e-7


def test_the_comparison_can_fail():
    """A composed layer norm with the unbiased variance (divide by C - 1) is a different
    function: its values and gradients no longer match the fused one."""
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((4, 8)), np.ones(8), np.zeros(8)

    def unbiased(x, w, b, eps=1e-5):
        xc = x - x.mean(axis=-1, keepdims=True)
        return xc / ((xc * xc).sum(axis=-1, keepdims=True) / 7 + eps).sqrt() * w + b

    R = rng.standard_normal((4, 8))
    y_fused, g_fused = values_and_grads(F.layer_norm, (x, w, b), R)
    y_bad, g_bad = values_and_grads(unbiased, (x, w, b), R)
    assert np.abs(y_fused - y_bad).max() > 1e-2 and np.abs(g_fused[0] - g_bad[0]).max() > 1e-3


def test_composed_records_many_ops_where_fused_records_one(rows):
    """Why fuse: the composed graph keeps every intermediate array alive until backward."""
    x, w, b, _ = rows
    count = lambda out: sum(1 for node in topological_order(out) if node._ctx is not None)   # noqa: E731
    assert count(F.layer_norm(*leaves(x, w, b))) == 1
    assert count(layer_norm_composed(*leaves(x, w, b))) == 9
    assert count(F.softmax(*leaves(x))) == 1
    assert count(softmax_composed(*leaves(x))) == 5
