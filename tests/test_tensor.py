"""The engine's behaviours: dtypes, accumulation, aliasing, no_grad, graph freeing, deep graphs.

Op-by-op values and gradients are in test_ops.py and test_functional.py; this file checks
what backward() itself promises, whatever the ops.
"""
import gc
import sys
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_gpt.functional as F
from tinygrad_gpt import Function, Tensor, cat, concatenate, enable_grad, is_grad_enabled, no_grad


def leaf(shape, seed=0, dtype=np.float64):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype), requires_grad=True)


# ----------------------------------------------------------------------------- dtype rules
@pytest.mark.parametrize("data", [1.5, 3, [1.0, 2.0], [1, 2, 3], [[1, 2], [3, 4]], True])
def test_python_numbers_and_lists_become_float32(data):
    assert Tensor(data).dtype == np.float32
    np.testing.assert_array_equal(Tensor(data).data, np.asarray(data, dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numpy_float_arrays_keep_their_dtype(dtype):
    a = np.ones((2, 3), dtype=dtype)
    assert Tensor(a).dtype == dtype
    assert Tensor(a).data is a                        # no copy either
    assert Tensor(dtype(2.0)).dtype == dtype          # a NumPy scalar keeps its dtype too


def test_numpy_integer_arrays_stay_integer_for_ids():
    ids = np.array([[1, 2], [3, 4]], dtype=np.int64)
    assert Tensor(ids).dtype == np.int64


def test_explicit_dtype_argument_wins():
    assert Tensor([1, 2], dtype=np.float64).dtype == np.float64
    assert Tensor(np.ones(3, np.float32), dtype=np.float64).dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_python_scalar_operands_keep_the_tensor_dtype(dtype):
    x = Tensor(np.abs(leaf((2, 3), dtype=dtype).data) + 0.5, requires_grad=True)
    outs = [x + 1, 1 + x, x - 2.5, 2.5 - x, x * 3, 3 * x, x / 7, 7 / x, x ** 2, x ** 0.5, -x,
            x + np.float64(1.0), x * np.ones(3)]
    for y in outs:
        assert y.dtype == dtype, y
    (sum(y.sum() for y in outs[:8])).backward()
    assert x.grad.dtype == dtype


def test_float32_leaf_gets_float32_grad_from_a_float64_graph():
    x32, y64 = leaf((3,), 0, np.float32), leaf((3,), 1, np.float64)
    (x32 * y64).sum().backward()
    assert x32.grad.dtype == np.float32 and y64.grad.dtype == np.float64
    np.testing.assert_allclose(x32.grad, y64.data.astype(np.float32), rtol=1e-6)


def test_properties_data_shape_ndim_dtype_item_numpy():
    a = np.arange(6, dtype=np.float64).reshape(2, 3)
    x = Tensor(a, requires_grad=True)
    assert x.data is a and x.numpy() is a
    assert x.shape == (2, 3) and x.ndim == 2 and x.dtype == np.float64
    assert x.requires_grad is True and x.grad is None
    assert Tensor(np.array(2.5)).item() == 2.5 and isinstance(x.sum().item(), float)
    assert Tensor([1.0]).requires_grad is False


def test_ndarray_on_the_left_of_an_operator_gives_a_tensor():
    x = leaf((2, 3))
    a = np.full((2, 3), 2.0)
    for y in (a + x, a - x, a * x, a / x):
        assert isinstance(y, Tensor) and y.requires_grad
    (a - x).sum().backward()
    np.testing.assert_array_equal(x.grad, -np.ones((2, 3)))


def test_comparisons_give_plain_boolean_arrays():
    x = Tensor(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(x > 0, [False, False, True])
    assert isinstance(x <= 0, np.ndarray)


def test_pow_with_a_tensor_exponent_is_a_type_error():
    with pytest.raises(TypeError, match="exponent"):
        leaf((2,)) ** leaf((2,))


# ----------------------------------------------------------------------------- accumulation
def test_gradients_accumulate_across_two_backward_calls_until_zeroed():
    x = leaf((3, 2))
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, np.full((3, 2), 3.0))
    (x * x).sum().backward()                          # a second graph adds 2x
    np.testing.assert_allclose(x.grad, 3.0 + 2 * x.data)
    x.grad = None                                     # zeroed: starts over
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, np.full((3, 2), 3.0))


def test_tensor_used_twice_gets_the_sum_of_both_gradients():
    x = leaf((4,))
    (x + x).sum().backward()
    np.testing.assert_array_equal(x.grad, np.full(4, 2.0))
    x.grad = None
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * x.data)
    x.grad = None
    h = x.exp()                                       # a diamond: h feeds two branches
    (h * 2.0 + h.tanh()).sum().backward()
    e = np.exp(x.data)
    np.testing.assert_allclose(x.grad, 2 * e + (1 - np.tanh(e) ** 2) * e, rtol=1e-12)


def test_leaf_grads_are_not_aliased_between_two_leaves():
    x, y = leaf((2, 3), 0), leaf((2, 3), 1)
    (x + y).sum().backward()                          # Add hands the same array to both
    x.grad += 1.0
    np.testing.assert_array_equal(y.grad, np.ones((2, 3)))
    assert not np.shares_memory(x.grad, y.grad)


def test_leaf_grads_are_not_aliased_through_split_views_or_reshape():
    x, y = leaf((2, 3), 0), leaf((2, 2), 1)
    out = concatenate([x, y], axis=1)                 # backward: two views of one array
    g = np.ones((2, 5))
    out.backward(g)
    x.grad *= 10.0
    np.testing.assert_array_equal(y.grad, np.ones((2, 2)))
    np.testing.assert_array_equal(g, np.ones((2, 5)))  # the caller's array is untouched
    z = leaf((6,), 2)
    g2 = np.ones((2, 3))
    z.reshape(2, 3).backward(g2)                      # Reshape's backward is a view of g2
    z.grad += 1.0
    np.testing.assert_array_equal(g2, np.ones((2, 3)))


def test_backward_on_a_leaf_does_not_keep_the_callers_grad_array():
    x = leaf((3,))
    g = np.ones(3)
    x.backward(g)
    x.backward(g)                                     # accumulates into x.grad, not into g
    np.testing.assert_array_equal(g, np.ones(3))
    np.testing.assert_array_equal(x.grad, np.full(3, 2.0))


def test_input_without_requires_grad_gets_no_grad():
    x, c = leaf((3,)), Tensor(np.ones(3))
    (x * c).sum().backward()
    assert c.grad is None and x.grad is not None


def test_intermediate_tensors_keep_no_grad_after_backward():
    x = leaf((3,))
    h = x * 2.0
    out = h.sum()
    out.backward()
    assert h.grad is None and out.grad is None


# ----------------------------------------------------------------------------- no_grad
def test_no_grad_records_no_graph_and_backward_raises_a_clear_error():
    x = leaf((2, 3))
    with no_grad():
        assert not is_grad_enabled()
        y = (x * 2.0).exp().sum()
        z = F.softmax(x, axis=-1)
    assert is_grad_enabled()
    for t in (y, z):
        assert t.requires_grad is False and t._ctx is None
    with pytest.raises(RuntimeError, match="does not require grad.*no_grad"):
        y.backward()
    assert x.grad is None


def test_no_grad_restores_grad_mode_after_an_exception_and_nests_with_enable_grad():
    with pytest.raises(ValueError):
        with no_grad():
            raise ValueError("inside")
    assert is_grad_enabled()
    x = leaf((2,))
    with no_grad():
        with enable_grad():
            y = x * 2.0
        z = x * 2.0
    assert y.requires_grad and not z.requires_grad


def test_backward_of_a_tensor_that_never_required_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        (Tensor([1.0, 2.0]) * 2.0).sum().backward()


# ----------------------------------------------------------------------------- graph freeing
def test_graph_is_freed_after_backward_saved_arrays_die():
    x = leaf((50,))
    h = x.exp()                                       # Exp saves its output, only h holds it
    out = (h * h).sum()
    saved = weakref.ref(h.data)
    mul_ctx = out._ctx.parents[0]._ctx
    assert any(a is h.data for a in mul_ctx.saved)
    del h, mul_ctx
    gc.collect()
    assert saved() is not None                        # the graph keeps it alive...
    out.backward()
    assert out._ctx is None
    assert saved() is None                            # ...and backward let go of it (no gc needed)
    np.testing.assert_allclose(x.grad, 2 * np.exp(2 * x.data))


def test_every_node_of_the_graph_has_its_ctx_dropped():
    x = leaf((3,))
    a = x * 2.0
    b = a.exp()
    c = (b + a).sum()
    c.backward()
    assert a._ctx is None and b._ctx is None and c._ctx is None


def test_second_backward_through_a_freed_graph_raises_instead_of_doing_nothing():
    x = leaf((3,))
    out = (x * 2.0).sum()
    out.backward()
    with pytest.raises(RuntimeError, match="freed.*retain_graph"):
        out.backward()
    np.testing.assert_array_equal(x.grad, np.full(3, 2.0))   # unchanged by the failed call


def test_reusing_an_intermediate_whose_graph_was_freed_raises_instead_of_dropping_grads():
    x = leaf((3,))
    h = x * 2.0                                       # an intermediate used in two losses
    (h * 1.0).sum().backward()
    with pytest.raises(RuntimeError, match="freed"):
        (h * 3.0).sum().backward()                    # would silently give x nothing from it


def test_retain_graph_allows_a_second_backward_that_accumulates():
    x = leaf((3,))
    out = (x * x).sum()
    out.backward(retain_graph=True)
    out.backward()
    np.testing.assert_allclose(x.grad, 4 * x.data)


# ----------------------------------------------------------------------------- deep graphs
def test_chain_of_20000_ops_backprops_without_recursion_error():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = x
    for _ in range(20000):
        h = h * 1.0001
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)                       # no hidden reliance on a raised limit
    try:
        h.sum().backward()
    finally:
        sys.setrecursionlimit(limit)
    np.testing.assert_allclose(x.grad, np.full(2, 1.0001 ** 20000), rtol=1e-9)


def test_deleting_a_20000_op_graph_without_backward_does_not_crash():
    h = Tensor(np.ones(2), requires_grad=True)
    for _ in range(20000):
        h = h + 1.0
    ref = weakref.ref(h)
    del h                                             # a chain of 20000 ctx -> parent references
    assert ref() is None


# ----------------------------------------------------------------------------- backward arguments
def test_non_scalar_backward_needs_grad():
    x = leaf((2, 3))
    y = x * 2.0
    with pytest.raises(RuntimeError, match=r"scalar.*\(2, 3\)"):
        y.backward()
    g = np.arange(6.0).reshape(2, 3)
    y.backward(g)
    np.testing.assert_array_equal(x.grad, 2 * g)


def test_backward_with_a_grad_of_the_wrong_shape_raises():
    y = leaf((2, 3)) * 2.0
    with pytest.raises(ValueError, match=r"\(3, 2\).*expected \(2, 3\)"):
        y.backward(np.ones((3, 2)))


def test_size_one_non_scalar_output_backward_without_grad():
    x = leaf((1, 1))
    (x * 3.0).backward()
    np.testing.assert_array_equal(x.grad, [[3.0]])


def test_a_backward_returning_a_wrongly_shaped_gradient_is_an_error_not_a_silent_reshape():
    class Flip(Function):                              # backward forgets to transpose back
        def forward(ctx, a):
            return a.T.copy()

        def backward(ctx, grad):
            return grad

    x = leaf((2, 3))
    with pytest.raises(RuntimeError, match=r"Flip.*\(3, 2\).*\(2, 3\)"):
        Flip.apply(x).backward(np.ones((3, 2)))


def test_a_scalar_gradient_for_a_size_one_input_is_reshaped():
    class SumAll(Function):                            # returns () for a (1,) input
        def forward(ctx, a):
            return np.asarray(a.sum())

        def backward(ctx, grad):
            return np.asarray(grad * 2.0)

    x = leaf((1,))
    SumAll.apply(x).backward()
    assert x.grad.shape == (1,) and x.grad[0] == 2.0


# ----------------------------------------------------------------------------- detach
def test_detach_shares_data_and_cuts_the_graph():
    x = leaf((3,))
    d = x.detach()
    assert d.data is x.data and d.requires_grad is False and d._ctx is None
    (d * x).sum().backward()                          # d is a constant here
    np.testing.assert_array_equal(x.grad, x.data)
    y = (x * 2.0).detach()
    assert y._ctx is None and not y.requires_grad


# ----------------------------------------------------------------------------- axis / dim
def test_second_positional_argument_is_the_axis():
    a = np.random.default_rng(0).standard_normal((2, 3, 4))
    x = Tensor(a)
    np.testing.assert_allclose(x.sum(1).data, a.sum(1))
    np.testing.assert_allclose(x.mean(2, True).data, a.mean(2, keepdims=True))
    np.testing.assert_allclose(x.max(0).data, a.max(0))
    np.testing.assert_allclose(F.softmax(x, 1).data.sum(1), np.ones((2, 4)))
    assert [p.shape for p in x.split(2, 1)] == [(2, 2, 4), (2, 1, 4)]
    assert concatenate([x, x], 2).shape == (2, 3, 8)


def test_dim_is_an_alias_for_axis_everywhere():
    a = np.random.default_rng(0).standard_normal((2, 3, 4))
    x = Tensor(a)
    np.testing.assert_allclose(x.sum(dim=1).data, a.sum(1))
    np.testing.assert_allclose(x.sum(dim=(0, 2)).data, a.sum((0, 2)))
    np.testing.assert_allclose(x.mean(dim=-1, keepdims=True).data, a.mean(-1, keepdims=True))
    np.testing.assert_allclose(x.max(dim=0).data, a.max(0))
    np.testing.assert_allclose(F.softmax(x, dim=0).data, x.softmax(dim=0).data)
    np.testing.assert_allclose(F.softmax(x, dim=0).data.sum(0), np.ones((3, 4)))
    np.testing.assert_allclose(F.log_softmax(x, dim=1).data, x.log_softmax(dim=1).data)
    assert [p.shape for p in x.split(1, dim=0)] == [(1, 3, 4), (1, 3, 4)]
    assert concatenate([x, x], dim=1).shape == (2, 6, 4)
    assert cat([x, x], dim=-1).shape == (2, 3, 8)
    assert concatenate([x, x]).shape == (4, 3, 4)     # axis 0 by default


def test_axis_and_dim_that_disagree_are_rejected():
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(TypeError, match="axis= or dim="):
        x.sum(axis=0, dim=1)


# ----------------------------------------------------------------------------- broadcasting
@settings(max_examples=40, deadline=None)
@given(hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=3),
       st.sampled_from(["add", "sub", "mul", "div"]))
def test_broadcasting_follows_numpy_and_grads_reduce_to_each_operand(shapes, op):
    (sa, sb), out_shape = shapes.input_shapes, shapes.result_shape
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa), rng.uniform(0.5, 2.0, sb)
    x, y = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    npop = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}[op]
    out = {"add": x + y, "sub": x - y, "mul": x * y, "div": x / y}[op]
    assert out.shape == out_shape
    np.testing.assert_allclose(out.data, npop(a, b), rtol=1e-14)
    g = rng.standard_normal(out_shape)
    out.backward(g)
    # the adjoint of broadcasting is a sum over the stretched axes: compare with NumPy's own
    da = {"add": g, "sub": g, "mul": g * b, "div": g / b}[op]
    db = {"add": g, "sub": -g, "mul": g * a, "div": -g * a / b ** 2}[op]

    def reduce_to(grad, shape):
        grad = np.broadcast_to(grad, out_shape)
        grad = grad.sum(axis=tuple(range(len(out_shape) - len(shape))))
        return grad.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1), keepdims=True).reshape(shape)

    assert x.grad.shape == sa and y.grad.shape == sb
    np.testing.assert_allclose(x.grad, reduce_to(da, sa), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y.grad, reduce_to(db, sb), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- visiting order
def test_backward_visits_each_node_once_after_every_node_that_consumes_it():
    engine = sys.modules["tinygrad_gpt.tensor"]      # the module (the package exports a tensor())
    x = leaf((3,))
    h = x.exp()                                       # consumed early (by a) and late (by out)
    a = h * 2.0
    deep = a
    for _ in range(5):
        deep = deep.tanh()
    out = (deep + h + a).sum()
    consumers = {}                                    # id(node) -> ids of the nodes using it
    stack, seen = [out], set()
    while stack:
        node = stack.pop()
        if id(node) in seen or node._ctx is None:
            continue
        seen.add(id(node))
        for p in node._ctx.parents:
            consumers.setdefault(id(p), set()).add(id(node))
            stack.append(p)
    visited = []
    hook = lambda node, ctx, grad, input_grads: visited.append(id(node))   # noqa: E731
    with engine.register_backward_hook(hook):
        out.backward()
    assert len(visited) == len(set(visited)) == len(seen)        # every op node, once
    position = {n: i for i, n in enumerate(visited)}
    for node, users in consumers.items():
        if node in position:
            assert all(position[u] < position[node] for u in users)
    e = np.exp(x.data)
    t = 2 * e
    dt = np.ones(3)
    for _ in range(5):
        dt = dt * (1 - np.tanh(t) ** 2)
        t = np.tanh(t)
    np.testing.assert_allclose(x.grad, e * (2 * dt + 1 + 2), rtol=1e-12)


# ----------------------------------------------------------------------------- casts
def test_astype_float_double_stay_in_the_graph_and_grads_come_back_in_the_input_dtype():
    x = leaf((3,), 0, np.float32)
    y = x.double()
    assert y.dtype == np.float64 and y.requires_grad and y._ctx is not None
    (y * y).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, 2 * x.data, rtol=1e-6)
    z = leaf((3,), 1)
    (z.float() * 3.0).sum().backward()                # float64 -> float32 -> grad in float64
    assert z.grad.dtype == np.float64
    np.testing.assert_array_equal(z.grad, np.full(3, 3.0))
    assert x.float() is x and z.astype(np.float64) is z   # same dtype: no new node
    assert not Tensor(np.ones(2)).float().requires_grad


def test_integer_tensor_times_a_float_number_is_not_truncated():
    # as PyTorch: int tensor * 0.5 is a float result, not [0, 0]
    out = Tensor(np.array([1, 2])) * 0.5
    np.testing.assert_array_equal(out.data, [0.5, 1.0])
    half = Tensor(np.ones(2, np.float32)) * 0.5        # a float tensor keeps its dtype
    assert half.dtype == np.float32
    np.testing.assert_array_equal(half.data, np.float32([0.5, 0.5]))


# ----------------------------------------------------------------------------- hooks
def test_forward_hook_sees_every_op_with_its_inputs_and_output_and_remove_stops_it():
    from tinygrad_gpt.tensor import register_forward_hook
    seen = []
    handle = register_forward_hook(lambda ctx, inputs, out: seen.append((ctx.name, [i.shape for i in inputs],
                                                                         out.shape, out._ctx is ctx)))
    a = Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    b = Tensor(np.ones(3, dtype=np.float32))
    (a * b).sum()
    handle.remove()
    a + b
    assert seen == [("Mul", [(2, 3), (3,)], (2, 3), True), ("Sum", [(2, 3)], (), True)]
    handle.remove()                                       # twice is harmless, as torch's


def test_forward_hook_is_called_under_no_grad_and_a_context_manager_removes_it():
    from tinygrad_gpt.tensor import _forward_hooks, no_grad, register_forward_hook
    seen = []
    with register_forward_hook(lambda ctx, inputs, out: seen.append((ctx.name, out._ctx))):
        with no_grad():
            Tensor(np.ones(2, dtype=np.float32), requires_grad=True).exp()
    assert seen == [("Exp", None)]
    assert _forward_hooks == []


def test_backward_hook_handle_gets_the_output_grad_and_the_input_grads():
    from tinygrad_gpt.tensor import _backward_hooks, register_backward_hook
    seen = []
    a = Tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    out = (a * 3.0).sum()
    with register_backward_hook(lambda node, ctx, grad, gs: seen.append((ctx.name, grad.tolist(),
                                                                         [g.tolist() for g in gs if g is not None]))):
        out.backward()
    assert seen == [("Sum", 1.0, [[1.0, 1.0]]), ("Mul", [1.0, 1.0], [[3.0, 3.0]])]   # none for the constant 3
    assert _backward_hooks == []
