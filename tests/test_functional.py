"""The fused ops (functional.py, imported as F): each forward against a direct NumPy formula
written here (not the kernels' code), each backward against finite differences, for BOTH
kernel backends. The autouse `backend` fixture runs every test once per backend and skips
"numba" while kernels/numba_cpu.py does not import."""
import math

import numpy as np
import pytest

import tinygrad_gpt.functional as F
from tinygrad_gpt import Tensor, gradcheck, manual_seed


@pytest.fixture(autouse=True)
def each_backend(backend):        # conftest.backend: every test, both backends
    yield backend


def leaf(shape, seed=0, scale=1.0, dtype=np.float64):
    a = np.random.default_rng(seed).standard_normal(shape) * scale
    return Tensor(a.astype(dtype), requires_grad=True)


# ----------------------------------------------------------------------------- NumPy formulas
def np_softmax(a, axis=-1):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_logsumexp(a, axis=-1, keepdims=False):
    return np.logaddexp.reduce(a, axis=axis, keepdims=keepdims)    # pairwise, never overflows


def np_gelu(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def np_cross_entropy(z, t, ignore_index=-100):
    z2, t2 = z.reshape(-1, z.shape[-1]), t.reshape(-1)
    valid = t2 != ignore_index
    losses = np_logsumexp(z2[valid], axis=-1) - z2[valid, t2[valid]]
    return losses.mean()


def np_attention(q, k, v, causal):
    T, D = q.shape[-2], q.shape[-1]
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(D)
    if causal:
        s = np.where(np.tril(np.ones((T, T), dtype=bool)), s, -np.inf)
    return np_softmax(s) @ v


# ----------------------------------------------------------------------------- softmax / log_softmax
@pytest.mark.parametrize("shape,axis", [((7,), -1), ((3, 5), -1), ((2, 3, 5), 0), ((2, 3, 5), 1), ((2, 3, 5), -1)])
def test_softmax_forward_matches_numpy_formula_on_any_axis(shape, axis):
    x = leaf(shape)
    e = np.exp(x.data)
    np.testing.assert_allclose(F.softmax(x, axis).data, e / e.sum(axis=axis, keepdims=True), rtol=1e-13)
    np.testing.assert_allclose(F.softmax(x, dim=axis).data, F.softmax(x, axis=axis).data)


@pytest.mark.parametrize("shape,axis", [((2, 3, 4), -1), ((2, 3, 4), 1), ((5,), 0)])
def test_softmax_gradcheck(shape, axis):
    assert gradcheck(lambda a: F.softmax(a, axis=axis), [leaf(shape, 1)])


@pytest.mark.parametrize("shape,axis", [((7,), -1), ((3, 5), -1), ((2, 3, 5), 0), ((2, 3, 5), 1)])
def test_log_softmax_forward_matches_numpy_formula_on_any_axis(shape, axis):
    x = leaf(shape)
    want = x.data - np.log(np.exp(x.data).sum(axis=axis, keepdims=True))
    np.testing.assert_allclose(F.log_softmax(x, axis).data, want, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("shape,axis", [((2, 3, 4), -1), ((2, 3, 4), 0)])
def test_log_softmax_gradcheck(shape, axis):
    assert gradcheck(lambda a: F.log_softmax(a, axis=axis), [leaf(shape, 2)])


def test_softmax_of_minus_infinity_masked_scores_gives_zero_weight_and_gradchecks():
    mask = np.triu(np.ones((4, 4), dtype=bool), 1)     # causal: row 0 keeps only one entry
    x = leaf((2, 4, 4))
    p = F.softmax(x.masked_fill(mask, float("-inf")))
    assert (p.data[:, mask] == 0).all() and np.isfinite(p.data).all()
    np.testing.assert_allclose(p.data[:, 0, 0], 1.0)
    np.testing.assert_allclose(p.data.sum(-1), 1.0)
    assert gradcheck(lambda a: F.softmax(a.masked_fill(mask, float("-inf"))), [x])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_and_log_softmax_are_stable_for_logits_of_magnitude_1e4(dtype):
    x = Tensor((np.random.default_rng(0).standard_normal((3, 6)) * 1e4).astype(dtype))
    p, lp = F.softmax(x).data, F.log_softmax(x).data
    assert np.isfinite(p).all() and np.isfinite(lp).all()
    x64 = x.data.astype(np.float64)
    ulp = np.finfo(dtype).eps                           # float64 2.2e-16, float32 1.2e-7
    np.testing.assert_allclose(p, np_softmax(x64), rtol=0, atol=8 * ulp)        # p <= 1
    # log p is as large as the logits (~1e4): a few ulps of 1e4
    np.testing.assert_allclose(lp, x64 - np_logsumexp(x64, keepdims=True), rtol=0, atol=8 * ulp * 3e4)


# ----------------------------------------------------------------------------- layer norm
@pytest.mark.parametrize("shape", [(5,), (3, 7), (2, 3, 6)])
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_layer_norm_forward_matches_numpy_with_biased_variance(shape, eps):
    x, w, b = leaf(shape, 0, 3.0), leaf(shape[-1:], 1), leaf(shape[-1:], 2)
    mean = x.data.mean(-1, keepdims=True)
    var = ((x.data - mean) ** 2).mean(-1, keepdims=True)             # biased: / C, not / (C - 1)
    want = (x.data - mean) / np.sqrt(var + eps) * w.data + b.data
    np.testing.assert_allclose(F.layer_norm(x, w, b, eps=eps).data, want, rtol=1e-12, atol=1e-13)
    if eps == 1e-5:
        np.testing.assert_allclose(F.layer_norm(x, w, b).data, want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("shape", [(4,), (2, 3, 5)])
def test_layer_norm_gradcheck_x_weight_bias(shape):
    x, w, b = leaf(shape, 0), leaf(shape[-1:], 1), leaf(shape[-1:], 2)
    assert gradcheck(lambda x, w, b: F.layer_norm(x, w, b), [x, w, b])


def test_layer_norm_of_a_constant_row_is_the_bias_and_its_gradient_is_finite():
    x = Tensor(np.full((2, 4), 3.0), requires_grad=True)
    w, b = leaf((4,), 1), leaf((4,), 2)
    y = F.layer_norm(x, w, b)
    np.testing.assert_allclose(y.data, np.broadcast_to(b.data, (2, 4)))
    y.backward(np.random.default_rng(0).standard_normal((2, 4)))
    assert np.isfinite(x.grad).all() and np.isfinite(w.grad).all()


# ----------------------------------------------------------------------------- GELU
def test_gelu_forward_matches_the_tanh_approximation():
    x = leaf((4, 9), 0, 3.0)
    np.testing.assert_allclose(F.gelu(x).data, np_gelu(x.data), rtol=1e-13, atol=1e-15)
    big = Tensor(np.array([-20.0, -8.0, 0.0, 8.0, 20.0]))
    np.testing.assert_allclose(F.gelu(big).data, [0.0, 0.0, 0.0, 8.0, 20.0], atol=1e-12)


@pytest.mark.parametrize("shape", [(11,), (2, 3, 4)])
def test_gelu_gradcheck(shape):
    assert gradcheck(F.gelu, [leaf(shape, 3, 2.0)])


# ----------------------------------------------------------------------------- cross-entropy
def test_cross_entropy_forward_is_the_mean_negative_log_likelihood():
    z = leaf((6, 5))
    t = np.array([0, 4, 2, 2, 1, 4])                  # repeated targets
    want = -np.mean(np.log(np_softmax(z.data))[np.arange(6), t])
    np.testing.assert_allclose(F.cross_entropy(z, t).item(), want, rtol=1e-13)


def test_cross_entropy_with_batch_dims_averages_only_over_targets_not_ignored():
    z = leaf((2, 3, 7))                                # (B, T, V)
    t = np.array([[1, -100, 1], [6, 6, -100]])         # repeats, and two ignored positions
    loss = F.cross_entropy(z, t)
    np.testing.assert_allclose(loss.item(), np_cross_entropy(z.data, t), rtol=1e-13)
    lp = np.log(np_softmax(z.data))
    by_hand = -(lp[0, 0, 1] + lp[0, 2, 1] + lp[1, 0, 6] + lp[1, 1, 6]) / 4   # 4 positions count
    np.testing.assert_allclose(loss.item(), by_hand, rtol=1e-13)


def test_cross_entropy_custom_ignore_index():
    z = leaf((5, 4))
    t = np.array([3, 0, 3, 1, 2])
    np.testing.assert_allclose(F.cross_entropy(z, t, ignore_index=3).item(),
                               np_cross_entropy(z.data, t, ignore_index=3), rtol=1e-13)


@pytest.mark.parametrize("shape,targets", [((4, 5), [2, -100, 2, 0]),
                                           ((2, 3, 4), [[0, 3, -100], [3, 3, 1]])])
def test_cross_entropy_gradcheck_with_repeated_and_ignored_targets(shape, targets):
    t = np.array(targets)
    assert gradcheck(lambda z: F.cross_entropy(z, t), [leaf(shape, 4, 2.0)])


def test_cross_entropy_gradient_is_softmax_minus_onehot_over_count_and_zero_where_ignored():
    z = leaf((4, 3))
    t = np.array([2, -100, 0, 2])
    F.cross_entropy(z, t).backward()
    want = np_softmax(z.data)
    want[[0, 2, 3], [2, 0, 2]] -= 1.0
    want[1] = 0.0
    np.testing.assert_allclose(z.grad, want / 3, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_stable_for_logits_of_magnitude_1e4(dtype):
    z64 = np.random.default_rng(0).standard_normal((2, 4, 9)) * 1e4
    t = np.array([[0, 8, 8, -100], [3, 1, 1, 5]])
    z = Tensor(z64.astype(dtype), requires_grad=True)
    loss = F.cross_entropy(z, t)
    assert loss.dtype == dtype and np.isfinite(loss.item())
    want = np_cross_entropy(z.data.astype(np.float64), t)          # exact for the same inputs
    np.testing.assert_allclose(loss.item(), want, rtol=1e-6 if dtype == np.float32 else 1e-12)
    loss.backward()
    assert np.isfinite(z.grad).all()
    np.testing.assert_allclose(z.grad.sum(-1), 0.0, atol=1e-6 if dtype == np.float32 else 1e-14)  # softmax - onehot: 0
    assert (z.grad[0, 3] == 0).all()


def test_cross_entropy_of_all_ignored_targets_is_nan_as_pytorch():
    loss = F.cross_entropy(leaf((2, 3)), np.array([-100, -100]))
    assert np.isnan(loss.item())


def test_cross_entropy_accepts_targets_as_list_array_or_tensor():
    z = leaf((3, 4))
    values = [F.cross_entropy(z, t).item() for t in ([1, 2, 3], np.array([1, 2, 3]), Tensor(np.array([1, 2, 3])))]
    assert values[0] == values[1] == values[2]


def test_cross_entropy_rejects_bad_targets_with_clear_errors():
    z = leaf((3, 4))
    with pytest.raises(ValueError, match=r"\(2,\).*expected \(3,\)"):
        F.cross_entropy(z, np.array([1, 2]))
    with pytest.raises(TypeError, match="integer"):
        F.cross_entropy(z, np.array([1.0, 2.0, 0.0]))
    with pytest.raises(IndexError, match="4 .*out of range for 4 classes"):
        F.cross_entropy(z, np.array([1, 4, 0]))


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_cross_entropy_other_reductions_forward_and_gradcheck(reduction):
    z = leaf((2, 3, 4))
    t = np.array([[0, 3, -100], [3, 3, 1]])
    out = F.cross_entropy(z, t, reduction=reduction)
    lp = np.log(np_softmax(z.data))
    losses = np.where(t != -100, -np.take_along_axis(lp, np.maximum(t, 0)[..., None], -1)[..., 0], 0.0)
    np.testing.assert_allclose(out.data, losses.sum() if reduction == "sum" else losses, rtol=1e-12)
    assert gradcheck(lambda a: F.cross_entropy(a, t, reduction=reduction), [z])


# ----------------------------------------------------------------------------- embedding
def test_embedding_forward_is_a_gather():
    W = leaf((7, 3))
    ids = np.array([[0, 6, 6], [2, 0, 6]])
    np.testing.assert_array_equal(F.embedding(W, ids).data, W.data[ids])
    np.testing.assert_array_equal(F.embedding(W, Tensor(ids)).data, W.data[ids])


def test_embedding_backward_scatter_adds_when_an_id_repeats():
    W = leaf((5, 2))
    ids = np.array([[1, 3, 1], [1, 0, 3]])             # id 1 three times, id 3 twice
    g = np.arange(12.0).reshape(2, 3, 2)
    F.embedding(W, ids).backward(g)
    want = np.zeros((5, 2))
    for (b, t), i in np.ndenumerate(ids):
        want[i] += g[b, t]
    np.testing.assert_array_equal(W.grad, want)
    assert (W.grad[[2, 4]] == 0).all()                 # ids never used get nothing


def test_embedding_gradcheck_with_repeated_ids():
    ids = np.array([[0, 2, 2, 4], [4, 4, 1, 0]])
    assert gradcheck(lambda W: F.embedding(W, ids), [leaf((5, 3))])


def test_embedding_rejects_out_of_range_and_float_ids():
    W = leaf((4, 2))
    with pytest.raises(IndexError, match="4 is out of range for 4"):
        F.embedding(W, np.array([0, 4]))
    with pytest.raises(IndexError, match="-1"):
        F.embedding(W, np.array([-1, 0]))
    with pytest.raises(TypeError, match="integers"):
        F.embedding(W, np.array([0.0, 1.0]))


# ----------------------------------------------------------------------------- linear
@pytest.mark.parametrize("x_shape", [(4,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_is_x_times_weight_transposed_plus_bias(x_shape, bias):
    x, W, b = leaf(x_shape, 0), leaf((5, 4), 1), leaf((5,), 2)   # W: (out, in) as PyTorch
    y = F.linear(x, W, b if bias else None)
    assert y.shape == x_shape[:-1] + (5,)
    np.testing.assert_allclose(y.data, x.data @ W.data.T + (b.data if bias else 0.0), rtol=1e-13)


@pytest.mark.parametrize("x_shape", [(3,), (2, 2, 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck_x_weight_bias(x_shape, bias):
    x, W, b = leaf(x_shape, 0), leaf((4, 3), 1), leaf((4,), 2)
    if bias:
        assert gradcheck(lambda x, W, b: F.linear(x, W, b), [x, W, b])
    else:
        assert gradcheck(lambda x, W: F.linear(x, W), [x, W])


def test_linear_with_a_constant_input_gives_only_weight_grads():
    x, W = Tensor(np.ones((2, 3))), leaf((4, 3))
    F.linear(x, W).sum().backward()
    np.testing.assert_allclose(W.grad, np.full((4, 3), 2.0))
    assert x.grad is None


# ----------------------------------------------------------------------------- dropout
def test_dropout_is_the_identity_when_not_training_or_p_is_zero():
    x = leaf((3, 4))
    assert F.dropout(x, 0.5, training=False) is x
    np.testing.assert_array_equal(F.dropout(x, 0.0).data, x.data)


def test_dropout_zeroes_a_fraction_p_and_scales_the_rest_by_one_over_one_minus_p():
    x = Tensor(np.ones((100, 100)), requires_grad=True)
    y = F.dropout(x, 0.3, rng=np.random.default_rng(0))
    kept = y.data != 0
    np.testing.assert_allclose(y.data[kept], 1 / 0.7)
    assert abs((~kept).mean() - 0.3) < 0.02
    assert abs(y.data.mean() - 1.0) < 0.03             # inverted dropout keeps the expectation


def test_dropout_backward_uses_the_same_mask_as_forward():
    x = Tensor(np.random.default_rng(1).uniform(1, 2, (6, 7)), requires_grad=True)
    y = F.dropout(x, 0.4, rng=np.random.default_rng(3))
    y.backward(np.ones((6, 7)))
    np.testing.assert_allclose(x.grad, y.data / x.data)       # keep / (1 - p), where y is kept
    assert ((x.grad == 0) == (y.data == 0)).all()


def test_dropout_is_reproducible_from_rng_or_manual_seed():
    x = leaf((5, 5))
    a = F.dropout(x, 0.5, rng=np.random.default_rng(7)).data
    b = F.dropout(x, 0.5, rng=np.random.default_rng(7)).data
    np.testing.assert_array_equal(a, b)
    manual_seed(11)
    c = F.dropout(x, 0.5).data
    manual_seed(11)
    np.testing.assert_array_equal(F.dropout(x, 0.5).data, c)


def test_dropout_gradcheck_with_a_reseeded_mask():
    assert gradcheck(lambda a: F.dropout(a, 0.3, rng=np.random.default_rng(5)), [leaf((4, 6))])


def test_dropout_p_one_gives_zeros_and_bad_p_raises():
    x = leaf((3,))
    y = F.dropout(x, 1.0)
    np.testing.assert_array_equal(y.data, 0.0)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, 0.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        F.dropout(x, 1.5)


# ----------------------------------------------------------------------------- attention
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 1, 1, 3), (1, 2, 6, 1)])
def test_attention_forward_matches_numpy_softmax_formula(shape, causal):
    q, k, v = leaf(shape, 0), leaf(shape, 1), leaf(shape, 2)
    out = F.scaled_dot_product_attention(q, k, v, causal=causal)
    assert out.shape == shape
    np.testing.assert_allclose(out.data, np_attention(q.data, k.data, v.data, causal), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_gradcheck_q_k_v(causal):
    shape = (1, 2, 3, 2)                               # (B, H, T, D): 12 elements each
    q, k, v = leaf(shape, 0), leaf(shape, 1), leaf(shape, 2)
    assert gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=causal), [q, k, v])


def test_causal_attention_ignores_the_future_masked_positions_get_zero_gradient():
    shape = (1, 2, 5, 3)
    q, k, v = leaf(shape, 0), leaf(shape, 1), leaf(shape, 2)
    t = 2
    g = np.zeros(shape)
    g[:, :, t] = 1.0                                   # only output position t
    F.scaled_dot_product_attention(q, k, v).backward(g)
    assert (k.grad[:, :, t + 1:] == 0).all() and (v.grad[:, :, t + 1:] == 0).all()
    assert (np.abs(k.grad[:, :, :t + 1]).sum() > 0) and (np.abs(v.grad[:, :, :t + 1]).sum() > 0)
    k2 = Tensor(k.data.copy())
    k2.data[:, :, t + 1:] += 100.0                     # change the future: position t is unmoved
    a = F.scaled_dot_product_attention(q, k, v).data[:, :, :t + 1]
    b = F.scaled_dot_product_attention(q, k2, v).data[:, :, :t + 1]
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_attention_with_one_position_returns_v():
    q, k, v = leaf((2, 2, 1, 3), 0), leaf((2, 2, 1, 3), 1), leaf((2, 2, 1, 3), 2)
    np.testing.assert_allclose(F.scaled_dot_product_attention(q, k, v).data, v.data, rtol=1e-14)


def test_attention_dropout_drops_attention_weights_with_the_rng_mask():
    shape = (2, 2, 4, 3)
    q, k, v = leaf(shape, 0), leaf(shape, 1), leaf(shape, 2)
    p = 0.25
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, rng=np.random.default_rng(9))
    keep = np.random.default_rng(9).random((2, 2, 4, 4), dtype=np.float32) >= p   # F._keep_mask
    s = q.data @ np.swapaxes(k.data, -1, -2) / math.sqrt(3)
    s = np.where(np.tril(np.ones((4, 4), dtype=bool)), s, -np.inf)
    want = (np_softmax(s) * keep / (1 - p)) @ v.data
    np.testing.assert_allclose(out.data, want, rtol=1e-12, atol=1e-14)
    no_drop = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, rng=np.random.default_rng(9))
    np.testing.assert_allclose(no_drop.data, np_attention(q.data, k.data, v.data, True), rtol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_with_dropout_gradcheck_reseeded(causal):
    shape = (1, 2, 3, 2)
    q, k, v = leaf(shape, 0), leaf(shape, 1), leaf(shape, 2)

    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, causal=causal, dropout_p=0.3,
                                              rng=np.random.default_rng(4))

    assert gradcheck(fn, [q, k, v])


# causal with queries shorter than keys: the KV cache's case (q positions are the last Tq of Tk)
def np_attention_offset(q, k, v):
    """Causal attention of the last Tq positions over Tk keys, written directly: query i sits
    at position Tk - Tq + i and sees keys j <= Tk - Tq + i."""
    Tq, Tk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(D)                      # (B, H, Tq, Tk)
    pos = Tk - Tq + np.arange(Tq)[:, None]                              # (Tq, 1) query positions
    s = np.where(np.arange(Tk)[None, :] <= pos, s, -np.inf)
    return np_softmax(s) @ v


@pytest.mark.parametrize("Tq,Tk", [(1, 1), (1, 6), (2, 6), (5, 6), (3, 3)])
def test_causal_attention_with_queries_shorter_than_keys_matches_the_formula(Tq, Tk):
    q, k, v = leaf((2, 3, Tq, 4), 0), leaf((2, 3, Tk, 4), 1), leaf((2, 3, Tk, 4), 2)
    out = F.scaled_dot_product_attention(q, k, v, causal=True)
    assert out.shape == (2, 3, Tq, 4)
    np.testing.assert_allclose(out.data, np_attention_offset(q.data, k.data, v.data), rtol=1e-12, atol=1e-14)


def test_causal_attention_of_the_last_queries_equals_the_last_rows_of_the_full_one():
    # what makes a KV cache exact: attending the last Tq queries over all Tk keys gives the
    # last Tq rows of the square causal attention, in both directions of the chain rule
    Tk, Tq = 7, 3
    q_full, k, v = leaf((2, 2, Tk, 3), 0), leaf((2, 2, Tk, 3), 1), leaf((2, 2, Tk, 3), 2)
    full = F.scaled_dot_product_attention(q_full, k, v).data[:, :, -Tq:]
    q = Tensor(q_full.data[:, :, -Tq:].copy())
    part = F.scaled_dot_product_attention(q, k, v)
    worst = float(np.abs(part.data - full).max())
    print(f"last {Tq} of {Tk} queries vs the full causal attention: max |diff| {worst:.1e}")
    assert worst < 1e-13


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("Tq,Tk", [(1, 4), (2, 4)])
def test_causal_attention_with_queries_shorter_than_keys_gradcheck(Tq, Tk, dropout_p):
    q, k, v = leaf((1, 2, Tq, 2), 0), leaf((1, 2, Tk, 2), 1), leaf((1, 2, Tk, 2), 2)

    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, causal=True, dropout_p=dropout_p,
                                              rng=np.random.default_rng(5))

    assert gradcheck(fn, [q, k, v])


def test_causal_attention_refuses_more_queries_than_keys():
    with pytest.raises(ValueError, match="at least as many keys as queries"):
        F.scaled_dot_product_attention(leaf((1, 1, 4, 2)), leaf((1, 1, 3, 2)), leaf((1, 1, 3, 2)))


def test_attention_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(B, H, T, D\)"):
        F.scaled_dot_product_attention(leaf((1, 1, 3, 2)), leaf((1, 1, 3, 4)), leaf((1, 1, 3, 4)))


# ----------------------------------------------------------------------------- float32 discipline
def _float32_cases():
    rng = np.random.default_rng(0)

    def f32(*shape, scale=1.0):
        return Tensor((rng.standard_normal(shape) * scale).astype(np.float32), requires_grad=True)

    qkv = [f32(2, 2, 5, 4) for _ in range(3)]
    return {
        "softmax": (lambda x: F.softmax(x, axis=1), [f32(2, 3, 4)]),
        "log_softmax": (lambda x: F.log_softmax(x), [f32(2, 3, 4)]),
        "layer_norm": (F.layer_norm, [f32(2, 3, 8), f32(8), f32(8)]),
        "gelu": (F.gelu, [f32(3, 7, scale=3.0)]),
        "cross_entropy": (lambda z: F.cross_entropy(z, np.array([[1, -100, 4], [4, 0, 2]])), [f32(2, 3, 5)]),
        "embedding": (lambda W: F.embedding(W, np.array([[1, 1, 3], [0, 2, 3]])), [f32(4, 6)]),
        "linear": (F.linear, [f32(2, 3, 4), f32(5, 4), f32(5)]),
        "dropout": (lambda x: F.dropout(x, 0.2, rng=np.random.default_rng(0)), [f32(4, 5)]),
        "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), qkv),
        "attention_dropout": (lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, dropout_p=0.1, rng=np.random.default_rng(0)), qkv),
    }


FLOAT32_CASES = list(_float32_cases())


@pytest.mark.parametrize("name", FLOAT32_CASES)
def test_float32_forward_and_backward_make_no_float64_arrays(name):
    fn, inputs = _float32_cases()[name]
    out = fn(*inputs)
    assert out.dtype == np.float32, f"{name}: output is {out.dtype}"
    saved = [a for a in out._ctx.saved if isinstance(a, np.ndarray)]
    saved += [a for a in vars(out._ctx).values() if isinstance(a, np.ndarray)]
    for a in saved:                                    # what backward keeps (ids may be ints)
        assert a.dtype != np.float64, f"{name}: saves a float64 array of shape {a.shape}"
    out.sum().backward()                               # a broadcast, read-only upstream gradient
    for i, t in enumerate(inputs):
        assert t.grad is not None and t.grad.dtype == np.float32, f"{name}: grad of input {i} is {t.grad.dtype}"
        assert np.isfinite(t.grad).all()
    # and float32 agrees with the same op in float64
    inputs64 = [Tensor(t.data.astype(np.float64), requires_grad=True) for t in inputs]
    out64 = fn(*inputs64)
    np.testing.assert_allclose(out.data, out64.data, rtol=2e-5, atol=2e-5)
    out64.sum().backward()
    for t, t64 in zip(inputs, inputs64):
        np.testing.assert_allclose(t.grad, t64.grad, rtol=2e-4, atol=2e-4)


# ----------------------------------------------------------------------------- non-contiguous inputs
def _transposed(shape, seed):
    """A (..., a, b) view of a (..., b, a) array, as multi-head attention makes with transpose."""
    a = np.random.default_rng(seed).standard_normal(shape[:-2] + (shape[-1], shape[-2]))
    return Tensor(np.swapaxes(a, -1, -2), requires_grad=True)


NONCONTIGUOUS_CASES = {
    "softmax": (lambda x: F.softmax(x), lambda x: np_softmax(x), [(2, 3, 4)]),
    "log_softmax": (lambda x: F.log_softmax(x, 1), lambda x: np.log(np_softmax(x, 1)), [(2, 3, 4)]),
    "layer_norm": (lambda x: F.layer_norm(x, Tensor(np.arange(1.0, 5.0)), Tensor(np.zeros(4))),
                   lambda x: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
                   * np.arange(1.0, 5.0), [(2, 3, 4)]),
    "gelu": (F.gelu, np_gelu, [(3, 4)]),
    "linear": (lambda x: F.linear(x, Tensor(np.eye(4)[:3] * 2.0)), lambda x: x @ (np.eye(4)[:3] * 2.0).T, [(2, 3, 4)]),
    "cross_entropy": (lambda z: F.cross_entropy(z, np.array([[0, 3, 1], [2, 2, -100]])),
                      lambda z: np_cross_entropy(z, np.array([[0, 3, 1], [2, 2, -100]])), [(2, 3, 4)]),
    "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
                  lambda q, k, v: np_attention(q, k, v, True), [(1, 2, 3, 2)] * 3),
}


@pytest.mark.parametrize("name", list(NONCONTIGUOUS_CASES))
def test_fused_ops_accept_non_contiguous_inputs_forward_and_gradcheck(name):
    fn, np_fn, shapes = NONCONTIGUOUS_CASES[name]
    inputs = [_transposed(s, i) for i, s in enumerate(shapes)]
    assert not inputs[0].data.flags.c_contiguous
    np.testing.assert_allclose(fn(*inputs).data, np_fn(*[t.data for t in inputs]), rtol=1e-12, atol=1e-14)
    assert gradcheck(fn, inputs)
    # and a non-contiguous upstream gradient (a transposed view) on the way back
    out = fn(*[Tensor(t.data.copy(), requires_grad=True) for t in inputs])
    if out.ndim >= 2:
        g = np.swapaxes(np.random.default_rng(9).standard_normal(out.shape[:-2] + out.shape[:-3:-1]), -1, -2)
        ins = [Tensor(t.data.copy(), requires_grad=True) for t in inputs]
        fn(*ins).backward(g)
        ref = [Tensor(t.data.copy(), requires_grad=True) for t in inputs]
        fn(*ref).backward(np.ascontiguousarray(g))
        for a, b in zip(ins, ref):
            np.testing.assert_allclose(a.grad, b.grad, rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------------------- dropout masks, drawn in pieces
@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("odd", [False, True])
@pytest.mark.parametrize("shape", [(2, 12, 256, 256), (2, 256, 768), (3, 7, 11), (1,), (0,), (5, 52429)])
def test_keep_mask_draws_the_serial_bits_in_pieces(shape, odd, parts, monkeypatch):
    """The dropout mask is rng.random(shape, float32) >= p exactly (every element, in pieces
    made by several threads with the numba kernels), and leaves the generator where the serial
    call would: the next draws of every kind agree too. `odd`: an odd number of float32 draws
    before (numpy keeps the high half of a word for the next one)."""
    from tinygrad_gpt.runtime import runtime
    monkeypatch.setattr(runtime, "threads", parts)          # the count, without setting the pools
    serial, pieces = np.random.default_rng(7), np.random.default_rng(7)
    if odd:
        serial.random(dtype=np.float32), pieces.random(dtype=np.float32)
    want = serial.random(shape, dtype=np.float32) >= np.float32(0.1)
    keep = F._keep_mask(shape, 0.1, pieces)
    assert keep.shape == want.shape and keep.dtype == np.bool_
    assert np.array_equal(keep, want)
    assert pieces.bit_generator.state == serial.bit_generator.state   # uinteger too (checkpoints)
    assert serial.random(dtype=np.float32) == pieces.random(dtype=np.float32)
    assert serial.random() == pieces.random()
    keep = F._keep_mask(shape, 0.1, pieces)                 # once more, from a mid-word state
    assert np.array_equal(keep, serial.random(shape, dtype=np.float32) >= np.float32(0.1))
    assert serial.integers(1 << 30) == pieces.integers(1 << 30)


@pytest.mark.parametrize("kernels", ["numpy", "numba"])
def test_keep_mask_keeps_a_draw_equal_to_p_and_takes_any_p(kernels):
    """U >= p at the boundary: with p set to one of the draws themselves, that draw is kept and
    the draws just below it are dropped (the numba kernel compares integers against
    ceil(p 2^24) with p rounded to float32 first, as numpy compares; an off-by-one there, or
    a float64 p not rounded, fails here). p = 0 keeps all, p = 1 drops all; p outside [0, 1]
    or NaN gives what numpy's comparison gives (dropout itself refuses such a p)."""
    from tinygrad_gpt import kernels as kernel_switch
    n = 1 << 16
    u = np.random.default_rng(11).random(n, dtype=np.float32)
    big = float(u[u >= 0.5][0])                 # p = big + 1e-12 rounds to big as a float32: kept
    with kernel_switch.use(kernels) as K:
        for p in [float(u[5]), float(u[n - 2]), float(np.nextafter(u[7], np.float32(2))), 0.0,
                  1.0, 1 / 3, 0.1, big + 1e-12, big - 1e-12, -0.1, 300.0, float("nan")]:
            keep = K.keep_mask(np.random.default_rng(11), (n,), p)
            assert np.array_equal(keep, u >= np.float32(p)), p
        assert K.keep_mask(np.random.default_rng(11), (n,), float(u[5]))[5]
        assert not K.keep_mask(np.random.default_rng(11), (n,), float(np.nextafter(u[5], np.float32(2))))[5]
        assert K.keep_mask(np.random.default_rng(0), (9,), 0.0).all()
        assert not K.keep_mask(np.random.default_rng(0), (9,), 1.0).any()


def test_keep_mask_with_another_bit_generator_uses_numpys_draws():
    """Only PCG64's words are made by the kernel; an MT19937 generator gets numpy's own call."""
    want = np.random.Generator(np.random.MT19937(4)).random((3, 100_001), dtype=np.float32) >= 0.2
    got = F._keep_mask((3, 100_001), 0.2, np.random.Generator(np.random.MT19937(4)))
    assert np.array_equal(got, want)


def test_keep_mask_is_really_in_pieces(monkeypatch):
    """The threaded path is the one taken for a big mask: its pieces start from advanced copies
    (a piece started one word off would differ from the serial numbers; shown here)."""
    from tinygrad_gpt.kernels import numba_cpu, threads
    from tinygrad_gpt.runtime import runtime
    monkeypatch.setattr(runtime, "threads", 2)
    used = []
    real = threads.pool

    def counting_pool():
        used.append(1)
        return real()
    monkeypatch.setattr(threads, "pool", counting_pool)
    n = 2 * numba_cpu.KEEP_MASK_ONE_THREAD
    got = numba_cpu.keep_mask(np.random.default_rng(3), (n,), 0.5)
    assert used == [1]
    want = np.random.default_rng(3).random(n, dtype=np.float32) >= 0.5
    assert np.array_equal(got, want)
    g = np.random.PCG64(3)
    g.advance(n // 4 + 1)                                  # one word too far: the second half is wrong
    assert not np.array_equal(np.random.Generator(g).random(n // 2, dtype=np.float32) >= 0.5, want[n // 2:])


def test_dropout_masks_still_draw_in_a_forked_child(monkeypatch):
    """A forked child has none of the parent's pool threads: it makes its own (a stale pool
    would hang the child's first big mask). The child's mask equals the parent's."""
    import os
    from tinygrad_gpt.runtime import runtime
    monkeypatch.setattr(runtime, "threads", 2)
    from tinygrad_gpt.kernels import numba_cpu
    shape = (2 * numba_cpu.KEEP_MASK_ONE_THREAD,)
    numba_cpu.keep_mask(np.random.default_rng(0), shape, 0.1)   # the parent's pool exists now
    want = np.random.default_rng(5).random(shape, dtype=np.float32) >= np.float32(0.1)
    pid = os.fork()
    if pid == 0:                                            # the child: exit 0 only if right
        ok = np.array_equal(numba_cpu.keep_mask(np.random.default_rng(5), shape, 0.1), want)
        os._exit(0 if ok else 1)
    for _ in range(600):                                    # up to 60 s, then the test fails
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        import time
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung drawing a dropout mask")
    assert os.waitstatus_to_exitcode(status) == 0


def test_an_op_given_an_array_is_a_type_error_naming_the_op_and_the_argument():
    """As torch: `gelu(): argument 'input' must be Tensor, not numpy.ndarray`, not an
    AttributeError from deep inside the engine. Ids and targets may stay arrays."""
    with pytest.raises(TypeError, match=r"^gelu\(\): argument 'input' must be Tensor, not numpy\.ndarray$"):
        F.gelu(np.ones(3))
    x = Tensor(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match=r"^linear\(\): argument 'weight' must be Tensor, not numpy\.ndarray$"):
        F.linear(x, np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match=r"^layer_norm\(\): argument 'input' must be Tensor, not list$"):
        F.layer_norm([1.0, 2.0], Tensor(np.ones(2)), Tensor(np.zeros(2)))
    logits = Tensor(np.zeros((2, 5), np.float32))
    assert F.cross_entropy(logits, np.array([1, 2])).shape == ()      # targets: an array is fine
    assert F.embedding(Tensor(np.ones((5, 3), np.float32)), np.array([0, 4])).shape == (2, 3)
