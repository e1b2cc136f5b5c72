"""The small ops (ops.py): each forward against a direct NumPy formula, each backward
against central finite differences (gradcheck, float64), on odd sizes, broadcasting and
batch dims. Inputs are kept to tens of elements: gradcheck runs fn twice per element."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinygrad_gpt import Tensor, concatenate, gradcheck


def leaf(shape, seed=0, low=None, high=None):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape) if low is None else rng.uniform(low, high, shape)
    return Tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


def away_from_zero(shape, seed=1):
    """Values in +-[0.5, 2]: safe denominators, kinks (max) well separated."""
    rng = np.random.default_rng(seed)
    return Tensor(rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape), requires_grad=True)


BROADCAST_PAIRS = [((5,), (5,)), ((2, 3), (3,)), ((2, 1, 3), (4, 1)), ((), (2, 3)), ((3, 1), (1, 5)),
                   ((1, 3), (2, 1, 1))]


# ----------------------------------------------------------------------------- arithmetic
@pytest.mark.parametrize("sa,sb", BROADCAST_PAIRS)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_binary_op_forward_matches_numpy_and_gradcheck_with_broadcasting(op, sa, sb):
    x, y = leaf(sa, 0), away_from_zero(sb, 1)
    fn = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b,
          "mul": lambda a, b: a * b, "div": lambda a, b: a / b}[op]
    np.testing.assert_allclose(fn(x, y).data, fn(x.data, y.data), rtol=1e-15)
    assert gradcheck(fn, [x, y])


@pytest.mark.parametrize("op", ["radd", "rsub", "rmul", "rdiv"])
def test_python_number_on_the_left_forward_and_gradcheck(op):
    x = away_from_zero((2, 3))
    fn = {"radd": lambda a: 2.5 + a, "rsub": lambda a: 2.5 - a,
          "rmul": lambda a: 2.5 * a, "rdiv": lambda a: 2.5 / a}[op]
    np.testing.assert_allclose(fn(x).data, fn(x.data), rtol=1e-15)
    assert gradcheck(fn, [x])


@pytest.mark.parametrize("n", [2, 3, 0.5, -1, -1.5, 1])
def test_pow_scalar_exponent_forward_and_gradcheck(n):
    x = leaf((3, 4), 0, 0.5, 2.0)                      # positive: fractional powers are real
    np.testing.assert_allclose((x ** n).data, x.data ** n, rtol=1e-14)
    assert gradcheck(lambda a: a ** n, [x])


def test_pow_integer_exponent_of_negative_numbers():
    x = away_from_zero((5,))
    np.testing.assert_allclose((x ** 3).data, x.data ** 3)
    assert gradcheck(lambda a: a ** 3, [x])


def test_unary_minus_forward_and_gradcheck():
    x = leaf((2, 3))
    np.testing.assert_array_equal((-x).data, -x.data)
    assert gradcheck(lambda a: -a, [x])


# ----------------------------------------------------------------------------- matmul
MATMUL_SHAPES = [((3, 4), (4, 5)),                     # plain
                 ((2, 3, 4), (4, 5)),                  # batch on the left only
                 ((3, 4), (2, 4, 5)),                  # batch on the right only
                 ((2, 1, 3, 2), (3, 2, 3)),            # batch dims broadcast both ways
                 ((2, 2, 3), (1, 3, 2)),               # a size-1 batch dim stretched
                 ((4,), (4, 3)),                       # vector @ matrix
                 ((2, 3, 4), (4,)),                    # batched matrix @ vector
                 ((4,), (2, 4, 3)),                    # vector @ batched matrix
                 ((5,), (5,))]                         # dot product


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_forward_matches_numpy_and_gradcheck_with_batch_broadcast(sa, sb):
    x, y = leaf(sa, 0), leaf(sb, 1)
    out = x @ y
    np.testing.assert_allclose(out.data, np.matmul(x.data, y.data), rtol=1e-13)
    assert out.shape == np.matmul(x.data, y.data).shape
    assert gradcheck(lambda a, b: a @ b, [x, y])


def test_matmul_with_an_ndarray_operand_on_either_side():
    x, w = leaf((2, 3)), np.random.default_rng(1).standard_normal((3, 4))
    np.testing.assert_allclose((x @ w).data, x.data @ w)
    assert gradcheck(lambda a: a @ w, [x])
    assert gradcheck(lambda a: w.T @ a.T, [x])


@settings(max_examples=30, deadline=None)
@given(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3),
       st.integers(1, 3), st.integers(1, 3), st.integers(1, 3))
def test_matmul_batch_dims_broadcast_as_numpy_and_grads_sum_over_them(batch, n, k, m):
    (ba, bb), out_batch = batch.input_shapes, batch.result_shape
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(ba + (n, k)), rng.standard_normal(bb + (k, m))
    x, y = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    out = x @ y
    assert out.shape == out_batch + (n, m)
    np.testing.assert_allclose(out.data, np.matmul(a, b), rtol=1e-13)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    # da = g b^T summed over the batch dims a was broadcast along; likewise db = a^T g
    da = np.matmul(g, np.swapaxes(np.broadcast_to(b, out_batch + (k, m)), -1, -2))
    db = np.matmul(np.swapaxes(np.broadcast_to(a, out_batch + (n, k)), -1, -2), g)

    def reduce_to(grad, shape):
        grad = grad.sum(axis=tuple(range(grad.ndim - len(shape))))
        return grad.sum(axis=tuple(i for i, s in enumerate(shape) if s == 1), keepdims=True)

    np.testing.assert_allclose(x.grad, reduce_to(da, x.shape), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y.grad, reduce_to(db, y.shape), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- reductions
REDUCE_AXES = [None, 0, 1, -1, (0, 2), (-1, 0)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", REDUCE_AXES)
@pytest.mark.parametrize("op", ["sum", "mean", "max"])
def test_reduction_forward_matches_numpy_and_gradcheck(op, axis, keepdims):
    x = leaf((2, 3, 5), 3)                             # continuous values: max has no ties
    out = getattr(x, op)(axis=axis, keepdims=keepdims)
    want = getattr(np, op)(x.data, axis=axis, keepdims=keepdims)
    assert out.shape == np.shape(want)
    np.testing.assert_allclose(out.data, want, rtol=1e-14)
    assert gradcheck(lambda a: getattr(a, op)(axis=axis, keepdims=keepdims), [x])


@settings(max_examples=30, deadline=None)
@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=4), st.data(), st.booleans())
def test_sum_and_mean_over_any_axes_have_gradient_one_and_one_over_count(shape, data, keepdims):
    axes = tuple(data.draw(st.sets(st.integers(0, len(shape) - 1), min_size=1)))
    a = np.random.default_rng(0).standard_normal(shape)
    x = Tensor(a, requires_grad=True)
    s, m = x.sum(axis=axes, keepdims=keepdims), x.mean(axis=axes, keepdims=keepdims)
    np.testing.assert_allclose(s.data, a.sum(axis=axes, keepdims=keepdims), rtol=1e-13)
    np.testing.assert_allclose(m.data, a.mean(axis=axes, keepdims=keepdims), rtol=1e-13)
    s.backward(np.ones(s.shape))
    np.testing.assert_array_equal(x.grad, np.ones(shape))
    x.grad = None
    m.backward(np.ones(m.shape))
    count = int(np.prod([shape[i] for i in axes]))
    np.testing.assert_allclose(x.grad, np.full(shape, 1.0 / count), rtol=1e-15)


def test_max_sends_the_gradient_to_the_maximum_and_ties_share_it():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [5.0, 0.0, -1.0]]), requires_grad=True)
    x.max(axis=1).backward(np.array([1.0, 2.0]))
    np.testing.assert_array_equal(x.grad, [[0.0, 0.5, 0.5], [2.0, 0.0, 0.0]])


def test_mean_of_everything_has_gradient_one_over_count():
    x = leaf((3, 7))
    x.mean().backward()
    np.testing.assert_allclose(x.grad, np.full((3, 7), 1 / 21))


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("shape", [(6, 2), (-1,), (3, -1), (-1, 2, 2), (1, 12), (2, 1, 3, 2)])
def test_reshape_with_minus_one_forward_and_gradcheck(shape):
    x = leaf((3, 4))
    np.testing.assert_array_equal(x.reshape(shape).data, x.data.reshape(shape))
    np.testing.assert_array_equal(x.reshape(*shape).data, x.data.reshape(shape))
    assert gradcheck(lambda a: a.reshape(shape) * np.arange(12.0).reshape(x.data.reshape(shape).shape), [x])


def test_view_flatten_unsqueeze_are_reshapes():
    x = leaf((2, 3, 4))
    assert x.view(6, 4).shape == (6, 4)
    assert x.flatten().shape == (24,) and x.flatten(1).shape == (2, 12)
    assert x.unsqueeze(1).shape == (2, 1, 3, 4) and x.unsqueeze(-1).shape == (2, 3, 4, 1)
    assert gradcheck(lambda a: a.flatten(1).unsqueeze(0) * np.arange(24.0).reshape(1, 2, 12), [x])


@pytest.mark.parametrize("axes", [(0, 1, 2), (2, 0, 1), (1, 2, 0), (0, -1, 1), (-1, -3, -2)])
def test_permute_forward_and_gradcheck_including_negative_axes(axes):
    x = leaf((2, 3, 4))
    w = np.random.default_rng(5).standard_normal(np.transpose(x.data, axes).shape)
    np.testing.assert_array_equal(x.permute(axes).data, np.transpose(x.data, axes))
    np.testing.assert_array_equal(x.permute(*axes).data, np.transpose(x.data, axes))
    assert gradcheck(lambda a: a.permute(axes) * w, [x])


@pytest.mark.parametrize("a0,a1", [(-2, -1), (0, 2), (1, 0), (0, -1)])
def test_transpose_forward_and_gradcheck(a0, a1):
    x = leaf((2, 3, 4))
    want = np.swapaxes(x.data, a0, a1)
    w = np.random.default_rng(5).standard_normal(want.shape)
    np.testing.assert_array_equal(x.transpose(a0, a1).data, want)
    assert gradcheck(lambda a: a.transpose(a0, a1) * w, [x])
    np.testing.assert_array_equal(leaf((3, 5)).T.data, leaf((3, 5)).data.T)


@settings(max_examples=30, deadline=None)
@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=3), st.data())
def test_permute_then_inverse_permute_is_identity_and_grad_is_permuted_back(shape, data):
    axes = tuple(data.draw(st.permutations(range(len(shape)))))
    x = Tensor(np.random.default_rng(0).standard_normal(shape), requires_grad=True)
    y = x.permute(axes)
    assert y.shape == tuple(shape[a] for a in axes)
    np.testing.assert_array_equal(y.permute(tuple(np.argsort(axes))).data, x.data)
    g = np.random.default_rng(1).standard_normal(y.shape)
    y.backward(g)
    np.testing.assert_array_equal(x.grad, np.transpose(g, np.argsort(axes)))


@settings(max_examples=30, deadline=None)
@given(hnp.array_shapes(min_dims=0, max_dims=4, max_side=4), st.data())
def test_reshape_to_any_compatible_shape_round_trips_values_and_grads(shape, data):
    n = int(np.prod(shape))
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    d = data.draw(st.sampled_from(divisors))
    x = Tensor(np.arange(float(n)).reshape(shape), requires_grad=True)
    y = x.reshape(d, -1)
    assert y.shape == (d, n // d)
    g = np.arange(float(n)).reshape(y.shape) * 2.0
    y.backward(g)
    np.testing.assert_array_equal(x.grad, g.reshape(shape))


# ----------------------------------------------------------------------------- indexing
INDICES = [
    ("int", 1),
    ("negative int", -1),
    ("slice", slice(1, 3)),
    ("slice with step", (slice(None), slice(None, None, 2))),
    ("negative step", (slice(None, None, -1), 2)),
    ("ellipsis", (Ellipsis, 1)),
    ("newaxis", (None, slice(0, 2))),
    ("int and slice", (2, slice(1, None))),
    ("repeated fancy", [0, 2, 0, 0]),
    ("fancy pair", ([0, 1, 1], [2, 3, 3])),
    ("slice and fancy", (slice(None), [4, 0, 4])),
    ("bool mask", np.array([True, False, True])),
]


@pytest.mark.parametrize("name,index", INDICES, ids=[n for n, _ in INDICES])
def test_indexing_forward_matches_numpy_and_gradcheck(name, index):
    x = leaf((3, 5))
    want = x.data[index]
    out = x[index]
    assert out.shape == np.shape(want)
    np.testing.assert_array_equal(out.data, want)
    w = np.random.default_rng(2).standard_normal(np.shape(want))
    assert gradcheck(lambda a: a[index] * w, [x])


def test_indexing_with_a_repeated_fancy_index_adds_the_gradients():
    x = leaf((4,))
    x[np.array([1, 1, 3, 1])].sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 3.0, 0.0, 1.0])


def test_indexing_with_an_integer_tensor():
    x = leaf((4, 2))
    ids = Tensor(np.array([3, 0, 3]))
    np.testing.assert_array_equal(x[ids].data, x.data[[3, 0, 3]])
    assert gradcheck(lambda a: a[ids], [x])


def test_boolean_mask_of_the_full_shape():
    x = leaf((3, 4))
    mask = x.data > 0
    np.testing.assert_array_equal(x[mask].data, x.data[mask])
    assert gradcheck(lambda a: a[mask], [x])


# ----------------------------------------------------------------------------- elementwise
UNARY = {
    "exp": (lambda a: a.exp(), np.exp, None),
    "log": (lambda a: a.log(), np.log, (0.2, 3.0)),
    "tanh": (lambda a: a.tanh(), np.tanh, None),
    "sqrt": (lambda a: a.sqrt(), np.sqrt, (0.2, 3.0)),
}


@pytest.mark.parametrize("shape", [(7,), (2, 3, 3)])
@pytest.mark.parametrize("op", list(UNARY))
def test_unary_elementwise_forward_matches_numpy_and_gradcheck(op, shape):
    fn, npfn, domain = UNARY[op]
    x = leaf(shape, 4) if domain is None else leaf(shape, 4, *domain)
    np.testing.assert_allclose(fn(x).data, npfn(x.data), rtol=1e-15)
    assert gradcheck(fn, [x])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unary_elementwise_keep_dtype(dtype):
    x = Tensor(np.linspace(0.1, 2.0, 6).astype(dtype), requires_grad=True)
    for fn, _, _ in UNARY.values():
        y = fn(x)
        assert y.dtype == dtype
        y.backward(np.ones(6, dtype))
        assert x.grad.dtype == dtype


# ----------------------------------------------------------------------------- masked_fill
def test_masked_fill_forward_and_gradcheck_with_a_broadcast_causal_mask():
    x = leaf((2, 2, 4, 4))                             # (B, H, T, T) scores
    mask = np.triu(np.ones((4, 4), dtype=bool), 1)     # (T, T), broadcast over B, H
    out = x.masked_fill(mask, -1e9)
    np.testing.assert_array_equal(out.data, np.where(mask, -1e9, x.data))
    # a small fill value: with -1e9 the finite differences cancel catastrophically
    assert gradcheck(lambda a: a.masked_fill(mask, -3.0), [x])
    x.grad = None
    x.masked_fill(mask, 0.0).sum().backward()
    np.testing.assert_array_equal(x.grad, np.broadcast_to(~mask, x.shape).astype(float))


def test_masked_fill_with_minus_infinity_and_a_tensor_mask_keeps_dtype():
    x = Tensor(np.ones((3, 3), np.float32), requires_grad=True)
    mask = Tensor(np.eye(3))                           # 0/1 floats mean False/True
    y = x.masked_fill(mask, float("-inf"))
    assert y.dtype == np.float32
    assert np.isneginf(np.diag(y.data)).all() and (y.data[~np.eye(3, dtype=bool)] == 1).all()
    y.masked_fill(mask, 0.0).sum().backward()
    np.testing.assert_array_equal(x.grad, 1 - np.eye(3, dtype=np.float32))


# ----------------------------------------------------------------------------- split / concatenate
@pytest.mark.parametrize("size,axis,want", [(2, -1, [2, 2, 1]), (3, 0, [3]), ([1, 4], 1, [1, 4]),
                                            (1, 0, [1, 1, 1]), ([5], -1, [5])])
def test_split_forward_and_gradcheck(size, axis, want):
    x = leaf((3, 5))
    pieces = x.split(size, axis)
    assert [p.shape[axis] for p in pieces] == want
    np.testing.assert_array_equal(np.concatenate([p.data for p in pieces], axis=axis), x.data)
    weights = [float(i + 1) for i in range(len(pieces))]   # each piece's gradient differs

    def fn(a):
        return concatenate([p * w for p, w in zip(a.split(size, axis), weights)][::-1], axis=axis)

    assert gradcheck(fn, [x])


def test_split_sizes_that_do_not_add_up_raise():
    with pytest.raises(ValueError, match="add up"):
        leaf((3, 5)).split([2, 2], axis=1)


def test_chunk_splits_into_that_many_pieces():
    x = leaf((2, 9))
    assert [p.shape for p in x.chunk(3)] == [(2, 3)] * 3
    assert [p.shape for p in x.chunk(3, dim=0)] == [(1, 9), (1, 9)]


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concatenate_forward_and_gradcheck_three_inputs_of_different_sizes(axis):
    shapes = {0: [(1, 3, 2), (2, 3, 2), (3, 3, 2)], 1: [(2, 1, 2), (2, 3, 2), (2, 2, 2)],
              -1: [(2, 3, 1), (2, 3, 3), (2, 3, 1)]}[axis]
    xs = [leaf(s, i) for i, s in enumerate(shapes)]
    out = concatenate(xs, axis=axis)
    np.testing.assert_array_equal(out.data, np.concatenate([x.data for x in xs], axis=axis))
    w = np.random.default_rng(9).standard_normal(out.shape)
    assert gradcheck(lambda *ts: concatenate(ts, axis=axis) * w, xs)


def test_concatenate_with_an_input_that_needs_no_grad():
    x, c = leaf((2, 2)), Tensor(np.ones((2, 3)))
    concatenate([c, x], axis=1).backward(np.arange(10.0).reshape(2, 5))
    np.testing.assert_array_equal(x.grad, [[3.0, 4.0], [8.0, 9.0]])
    assert c.grad is None


# ----------------------------------------------------------------------------- a composite
def test_a_composite_of_small_ops_gradchecks():
    """A hand-written attention-and-layer-norm-like expression, every op at once."""
    x, w = leaf((2, 3, 4), 0), leaf((4, 4), 1)
    mask = np.triu(np.ones((3, 3), dtype=bool), 1)

    def fn(a, b):
        s = (a @ b) @ a.transpose(-2, -1) / 2.0                  # (2, 3, 3)
        s = s.masked_fill(mask, -1e9)
        e = (s - s.max(axis=-1, keepdims=True)).exp()
        p = e / e.sum(axis=-1, keepdims=True)
        h = p @ a                                                 # (2, 3, 4)
        c = h - h.mean(axis=-1, keepdims=True)
        return (c / ((c * c).mean(axis=-1, keepdims=True) + 1e-5).sqrt()).tanh()

    assert gradcheck(fn, [x, w])
