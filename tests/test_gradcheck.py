"""gradcheck itself: it must pass a right backward and fail a wrong one, saying which input
and which element disagree. A gradient check that cannot fail proves nothing."""
import numpy as np
import pytest

import tinygrad_gpt.functional as F
from tinygrad_gpt import ops
from tinygrad_gpt import Function, GradcheckError, Tensor, gradcheck
from tinygrad_gpt.gradcheck import max_gradcheck_error


def leaf(shape, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


# ----------------------------------------------------------------------------- wrong backwards
class Cube(Function):                                  # y = a^3; the right backward is 3 a^2 grad
    factor = 3.0

    def forward(ctx, a):
        ctx.save_for_backward(a)
        return a ** 3

    def backward(ctx, grad):
        a, = ctx.saved
        return grad * ctx.factor * a * a


class CubeOffByAFactor(Cube):
    factor = 3.3                                       # 10% too large


class MulWrongInSecondInput(Function):
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    def backward(ctx, grad):                           # d/db should be grad * a
        a, b = ctx.saved
        return grad * b, grad * b


class ExpWrongInOneElement(Function):
    def forward(ctx, a):
        y = np.exp(a)
        ctx.save_for_backward(y)
        return y

    def backward(ctx, grad):
        y, = ctx.saved
        g = grad * y
        g[1, 2] += 0.01                                # one element, slightly off
        return g


def test_gradcheck_passes_a_correct_backward_and_its_error_is_tiny():
    x = leaf((3, 4))
    assert gradcheck(Cube.apply, [x]) is True
    err = max_gradcheck_error(Cube.apply, [x])
    print(f"\ncorrect Cube: worst |analytic - numeric| = {err:.2e}")
    assert err < 1e-8


def test_gradcheck_fails_a_backward_off_by_a_factor_and_names_the_input_and_element():
    x = leaf((3, 4))
    with pytest.raises(GradcheckError, match=r"input 0 \(3, 4\), element \(\d, \d\): analytic .* numeric") as e:
        gradcheck(CubeOffByAFactor.apply, [x])
    print(f"\n{e.value}")
    assert "12 of 12 elements disagree" in str(e.value)
    assert max_gradcheck_error(CubeOffByAFactor.apply, [x]) > 1e-2


def test_gradcheck_names_the_second_input_when_only_its_gradient_is_wrong():
    x, y = leaf((2, 3), 0), leaf((2, 3), 1)
    with pytest.raises(GradcheckError, match=r"input 1 \(2, 3\)"):
        gradcheck(MulWrongInSecondInput.apply, [x, y])
    assert gradcheck(MulWrongInSecondInput.apply, [x, Tensor(y.data)])   # input 1 unchecked: passes


def test_gradcheck_names_the_one_wrong_element():
    with pytest.raises(GradcheckError, match=r"input 0 \(3, 4\), element \(1, 2\).*1 of 12 elements disagree"):
        gradcheck(ExpWrongInOneElement.apply, [leaf((3, 4))])


def test_gradcheck_catches_a_backward_that_returns_no_gradient():
    class Forgetful(Function):
        def forward(ctx, a, b):
            return a + b

        def backward(ctx, grad):
            return grad, None                          # b matters, but gets nothing

    with pytest.raises(GradcheckError, match="input 1"):
        gradcheck(Forgetful.apply, [leaf((3,), 0), leaf((3,), 1)])


def test_gradcheck_with_raise_exception_false_returns_false():
    assert gradcheck(CubeOffByAFactor.apply, [leaf((2, 2))], raise_exception=False) is False
    assert gradcheck(Cube.apply, [leaf((2, 2))], raise_exception=False) is True


# ----------------------------------------------------------------------------- wrong kernels
def test_gradcheck_fails_a_monkeypatched_wrong_gelu_backward(numpy_kernels, monkeypatch):
    x = leaf((2, 5))
    assert gradcheck(F.gelu, [x])
    right = numpy_kernels.gelu_backward
    monkeypatch.setattr(numpy_kernels, "gelu_backward", lambda dy, x: right(dy, x) * 0.9)
    with pytest.raises(GradcheckError, match=r"input 0 \(2, 5\)"):
        gradcheck(F.gelu, [x])


def test_gradcheck_fails_a_monkeypatched_softmax_backward_missing_the_jacobian_term(numpy_kernels, monkeypatch):
    x = leaf((3, 4))
    monkeypatch.setattr(numpy_kernels, "softmax_backward", lambda dy, y: dy * y)   # diag(y) only
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(lambda a: F.softmax(a), [x])


def test_gradcheck_fails_a_monkeypatched_layernorm_backward_that_forgets_the_mean_term(numpy_kernels, monkeypatch):
    x, w, b = leaf((2, 4), 0), leaf((4,), 1), leaf((4,), 2)

    right = numpy_kernels.layernorm_backward

    def wrong(dy, x, w, mean, rstd, params=True):      # dx without the - mean(dxhat) term
        _, dw, db = right(dy, x, w, mean, rstd, params)
        xhat = (x - mean[:, None]) * rstd[:, None]
        dxhat = dy * w
        return rstd[:, None] * (dxhat - xhat * (dxhat * xhat).mean(1, keepdims=True)), dw, db

    monkeypatch.setattr(numpy_kernels, "layernorm_backward", wrong)
    with pytest.raises(GradcheckError, match=r"input 0 \(2, 4\)"):
        gradcheck(lambda x, w, b: F.layer_norm(x, w, b), [x, w, b])
    # dw and db are still right: checking only them passes
    assert gradcheck(lambda w, b: F.layer_norm(Tensor(x.data), w, b), [w, b])


def test_gradcheck_fails_a_monkeypatched_cross_entropy_backward_that_ignores_the_count(numpy_kernels, monkeypatch):
    z = leaf((4, 3))
    t = np.array([0, 2, -100, 2])
    right = numpy_kernels.cross_entropy_backward
    monkeypatch.setattr(numpy_kernels, "cross_entropy_backward",
                        lambda logits, targets, lse, scale, ignore_index=-100:
                        right(logits, targets, lse, 1.0, ignore_index))          # sum, not mean
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(lambda a: F.cross_entropy(a, t), [z])


def test_gradcheck_fails_a_monkeypatched_attention_backward_with_dq_and_dk_swapped(numpy_kernels, monkeypatch):
    shape = (1, 1, 3, 2)
    q, k, v = leaf(shape, 0), leaf(shape, 1), leaf(shape, 2)
    right = numpy_kernels.attention_backward

    def swapped(*args):
        dq, dk, dv = right(*args)
        return dk, dq, dv

    monkeypatch.setattr(numpy_kernels, "attention_backward", swapped)
    with pytest.raises(GradcheckError, match=r"input [01] \(1, 1, 3, 2\)"):
        gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), [q, k, v])
    assert gradcheck(lambda v: F.scaled_dot_product_attention(Tensor(q.data), Tensor(k.data), v), [v])


# ----------------------------------------------------------------------------- its own contract
def test_gradcheck_rejects_float32_inputs_and_calls_without_requires_grad():
    with pytest.raises(TypeError, match="float64"):
        gradcheck(Cube.apply, [Tensor(np.ones(3, np.float32), requires_grad=True)])
    with pytest.raises(ValueError, match="requires_grad"):
        gradcheck(Cube.apply, [Tensor(np.ones(3))])


def test_gradcheck_leaves_the_input_values_unchanged():
    x = leaf((3, 4))
    before = x.data.copy()
    gradcheck(Cube.apply, [x])
    np.testing.assert_array_equal(x.data, before)


def test_gradcheck_perturbs_a_non_contiguous_input_itself_not_a_copy():
    x = Tensor(np.random.default_rng(0).standard_normal((4, 3)).T, requires_grad=True)   # (3, 4), F-order
    assert not x.data.flags.c_contiguous
    assert gradcheck(lambda a: a.exp() * np.arange(12.0).reshape(3, 4), [x])


def test_gradcheck_handles_scalar_outputs_and_scalar_inputs():
    x = Tensor(np.array(0.7), requires_grad=True)
    assert gradcheck(lambda a: (a * a).tanh(), [x])
    assert gradcheck(lambda a: (a * a).sum(), [leaf((2, 3))])


# ----------------------------------------------------------------------------- the defaults' resolution
def scaled_backward(op, factor):
    """A subclass of the Function `op` whose backward returns every gradient times `factor`:
    a backward with a relative slip. Installed by monkeypatching the module attribute the op's
    wrapper looks up at call time (F.Softmax, ops.MatMul), so Function.apply is untouched."""
    class Scaled(op):
        def backward(ctx, grad):
            out = op.backward(ctx, grad)
            if not isinstance(out, tuple):
                return out * factor
            return tuple(None if g is None else g * factor for g in out)
    Scaled.__name__ = Scaled.__qualname__ = op.__name__
    return Scaled


FIXED_TARGETS = np.array([0, 4, -100, 2, 2, 1])
# (name, module, Function class, fn, input shapes); each fn deterministic (dropout masks reseeded)
FUSED = [
    ("layer_norm", F, "LayerNorm", lambda x, w, b: F.layer_norm(x, w, b), [(3, 5), (5,), (5,)]),
    ("softmax", F, "Softmax", lambda x: F.softmax(x), [(3, 5)]),
    ("softmax_axis0", F, "Softmax", lambda x: F.softmax(x, axis=0), [(4, 3)]),
    ("log_softmax", F, "LogSoftmax", lambda x: F.log_softmax(x), [(3, 5)]),
    ("gelu", F, "GELU", F.gelu, [(3, 5)]),
    ("cross_entropy_mean", F, "CrossEntropy", lambda z: F.cross_entropy(z, FIXED_TARGETS), [(6, 5)]),
    ("cross_entropy_sum", F, "CrossEntropy",
     lambda z: F.cross_entropy(z, FIXED_TARGETS, reduction="sum"), [(6, 5)]),
    ("cross_entropy_none", F, "CrossEntropy",
     lambda z: F.cross_entropy(z.reshape(2, 3, 5), FIXED_TARGETS.reshape(2, 3), reduction="none"), [(6, 5)]),
    ("attention_causal", F, "Attention", lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
     [(1, 2, 4, 3)] * 3),
    ("attention_full", F, "Attention",
     lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=False), [(2, 1, 3, 2)] * 3),
    ("attention_dropout", F, "Attention",
     lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, rng=np.random.default_rng(7)),
     [(1, 2, 4, 3)] * 3),
    ("linear", F, "Linear", lambda x, w, b: F.linear(x, w, b), [(2, 3, 4), (5, 4), (5,)]),
    ("linear_no_bias", F, "Linear", lambda x, w: F.linear(x, w), [(3, 4), (5, 4)]),
    ("embedding", F, "Embedding", lambda w: F.embedding(w, np.array([[1, 3, 1], [6, 0, 1]])), [(7, 4)]),
    ("dropout_fixed_mask", F, "Dropout", lambda x: F.dropout(x, 0.4, rng=np.random.default_rng(3)), [(4, 5)]),
    ("matmul", ops, "MatMul", lambda a, b: a @ b, [(3, 4), (4, 2)]),
    ("matmul_batched", ops, "MatMul", lambda a, b: a @ b, [(2, 1, 3, 4), (3, 4, 2)]),
]


@pytest.mark.parametrize("name, module, op, fn, shapes", FUSED, ids=[c[0] for c in FUSED])
def test_gradcheck_defaults_pass_each_fused_op_and_fail_its_backward_off_by_1e_5(
        backend, monkeypatch, name, module, op, fn, shapes):
    inputs = [leaf(shape, seed) for seed, shape in enumerate(shapes)]
    called = []
    right = getattr(module, op)

    class Counted(right):                              # proves the fn really goes through `op`
        def backward(ctx, grad):
            called.append(op)
            return right.backward(ctx, grad)

    monkeypatch.setattr(module, op, Counted)
    assert gradcheck(fn, inputs)                       # the right backward passes the defaults
    assert called, f"{name} never called {op}.backward"
    err = max_gradcheck_error(fn, inputs)
    monkeypatch.setattr(module, op, scaled_backward(right, 1 + 1e-5))
    with pytest.raises(GradcheckError, match="analytic .* numeric"):
        gradcheck(fn, inputs)
    # torch's tolerances (atol 1e-5, rtol 1e-3) would have let the slip through:
    assert gradcheck(fn, inputs, atol=1e-5, rtol=1e-3)
    print(f"\n{name:20s} {backend}: correct backward's worst |analytic - numeric| {err:.1e}")
    assert err < 1e-8                                  # ~1e-9: the defaults have a 10x margin
