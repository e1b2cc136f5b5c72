"""Persistent per-step buffers: the embedding gradient touches only the rows a batch used."""
import numpy as np

import tinygrad_gpt as tg
from tinygrad_gpt import functional as F
from tinygrad_gpt.kernels import K, reference as R


def test_embedding_backward_into_zeroes_the_stale_rows_and_matches_the_dense_kernel(backend):
    rng = np.random.default_rng(0)
    V, C = 50, 70                              # C > one column block of the numba kernel
    dW = np.zeros((V, C), np.float32)
    stale = np.zeros(0, np.int64)
    for step in range(3):
        ids = rng.integers(0, V // 2 if step % 2 else V, 40)
        dout = rng.standard_normal((40, C)).astype(np.float32)
        stale = K.embedding_backward_into(dout, ids, dW, stale)
        want = R.embedding_backward(dout, ids, V)
        np.testing.assert_allclose(dW, want, rtol=1e-6, atol=1e-6)
        assert np.array_equal(stale, np.unique(ids))


def emb_grads(layer_w, ids_list, zero_between=True):
    w = tg.nn.Parameter(layer_w)
    grads = []
    for ids in ids_list:
        if zero_between:
            w.grad = None
        F.embedding(w, ids).sum().backward()
        grads.append(w.grad)
    return w, grads


def test_the_embedding_gradient_buffer_is_reused_and_stays_right():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((30, 8)).astype(np.float32)
    ids = [rng.integers(0, 30, (2, 5)) for _ in range(3)]
    w = tg.nn.Parameter(W.copy())
    for i in ids:
        w.grad = None
        F.embedding(w, i).sum().backward()
        np.testing.assert_array_equal(w.grad, R.embedding_backward(np.ones((10, 8), np.float32), i.ravel(), 30))
        assert w.grad is F._embedding_grads[(id(w.data), "<f4")][1]   # one kept buffer, not fresh ones


def test_the_buffer_is_not_reused_while_someone_holds_it():
    rng = np.random.default_rng(2)
    w = tg.nn.Parameter(rng.standard_normal((30, 8)).astype(np.float32))
    a, b = rng.integers(0, 30, 7), rng.integers(0, 30, 7)
    F.embedding(w, a).sum().backward()
    kept = w.grad                              # a user keeps the first gradient
    want_a = R.embedding_backward(np.ones((7, 8), np.float32), a, 30)
    w.grad = None
    F.embedding(w, b).sum().backward()
    np.testing.assert_array_equal(kept, want_a)            # untouched
    # micro-batches: without zeroing, the gradients add up
    F.embedding(w, a).sum().backward()
    want_b = R.embedding_backward(np.ones((7, 8), np.float32), b, 30)
    np.testing.assert_array_equal(w.grad, want_a + want_b)


def test_linear_dw_goes_into_a_kept_buffer_only_while_nobody_holds_it():
    rng = np.random.default_rng(3)
    w = tg.nn.Parameter(rng.standard_normal((6, 4)).astype(np.float32))
    xs = [rng.standard_normal((5, 4)).astype(np.float32) for _ in range(3)]
    for x in xs:
        w.grad = None
        F.linear(tg.Tensor(x), w).sum().backward()
        np.testing.assert_allclose(w.grad, np.ones((5, 6), np.float32).T @ x, rtol=1e-6)
        assert w.grad is F._kept[(id(w.data), "dW")][1]    # the same buffer each step
    held = w.grad
    w.grad = None
    F.linear(tg.Tensor(xs[0]), w).sum().backward()
    np.testing.assert_allclose(held, np.ones((5, 6), np.float32).T @ xs[2], rtol=1e-6)   # untouched
    F.linear(tg.Tensor(xs[1]), w).sum().backward()                                         # accumulates
    np.testing.assert_allclose(w.grad, np.ones((5, 6), np.float32).T @ (xs[0] + xs[1]), rtol=1e-5)


def test_linear_outputs_alive_at_once_never_share_a_buffer():
    rng = np.random.default_rng(4)
    w = tg.nn.Parameter(rng.standard_normal((6, 4)).astype(np.float32))
    x1, x2 = (rng.standard_normal((5, 4)).astype(np.float32) for _ in range(2))
    a = F.linear(tg.Tensor(x1), w)
    b = F.linear(tg.Tensor(x2), w)             # the same weight while a is alive
    np.testing.assert_allclose(a.data, x1 @ w.data.T, rtol=1e-6)
    np.testing.assert_allclose(b.data, x2 @ w.data.T, rtol=1e-6)
    del a, b
    for _ in range(3):                         # dropped outputs: the kept buffer is reused
        assert np.shares_memory(F.linear(tg.Tensor(x1), w).data, F._kept[(id(w.data), "y")][1])
