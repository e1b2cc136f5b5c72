"""numba_cpu.py against reference.py: every kernel, float32 and float64, odd sizes.

Sizes are deliberately odd (N=7, C=13, V=37, T=5, D=3) so that no loop length is a multiple
of a SIMD width or a chunk size. float64 must agree to 1e-12 and float32 to 1e-5, relative
to the largest magnitude of the expected output (so 1e4-sized logits are judged fairly).
"""
import inspect

import numpy as np
import pytest

from helpers import require

require("numba")

from tinygrad_gpt.kernels import numba_cpu as NB      # noqa: E402
from tinygrad_gpt.kernels import reference as R       # noqa: E402

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-12}
N, C, V, B, H, T, D = 7, 13, 37, 2, 3, 5, 3


def rng_for(dt):
    return np.random.default_rng(1234 if dt == np.float32 else 4321)


def randn(rng, dt, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dt)


def assert_same(name, got, want, dt):
    """got (numba) == want (reference): same types, shapes, dtype, values to TOL[dt]."""
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want), f"{name}: {len(got)} outputs, reference has {len(want)}"
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want)):
        assert isinstance(g, np.ndarray), f"{name}[{i}]: got {type(g).__name__}"
        assert g.shape == w.shape, f"{name}[{i}]: shape {g.shape}, reference {w.shape}"
        assert g.dtype == dt, f"{name}[{i}]: dtype {g.dtype}, expected {np.dtype(dt)}"
        assert np.array_equal(np.isnan(g), np.isnan(w)), f"{name}[{i}]: NaNs differ"
        ok = ~np.isnan(w)
        scale = max(1.0, float(np.abs(w[ok]).max(initial=0.0)))
        err = float(np.abs(g[ok].astype(np.float64) - w[ok]).max(initial=0.0)) / scale
        worst = max(worst, err)
    print(f"{name} {np.dtype(dt).name}: worst error {worst:.2e} (tol {TOL[dt]:.0e})")
    assert worst <= TOL[dt], f"{name} {np.dtype(dt).name}: error {worst:.2e} > {TOL[dt]:.0e}"


def both(name, args, dt, **kw):
    """Run NB.name and R.name on copies of args; check outputs and that inputs are untouched."""
    before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    want = getattr(R, name)(*[a.copy() if isinstance(a, np.ndarray) else a for a in args], **kw)
    got = getattr(NB, name)(*args, **kw)
    for a, b in zip(args, before):
        if isinstance(a, np.ndarray):
            assert np.array_equal(a, b, equal_nan=True), f"{name} modified one of its inputs"
    assert_same(name, got, want, dt)
    return got, want


# ----------------------------------------------------------------------------- the API itself
def test_numba_cpu_has_every_reference_function_with_the_same_signature():
    ref = {n: f for n, f in vars(R).items() if inspect.isfunction(f) and not n.startswith("_")}
    assert ref, "reference.py defines no kernels?"
    for name, f in ref.items():
        assert hasattr(NB, name), f"numba_cpu.py is missing {name}"
        assert inspect.signature(getattr(NB, name)) == inspect.signature(f), name


def test_default_backend_is_numba_and_switch_works(monkeypatch):
    from tinygrad_gpt import kernels
    monkeypatch.delenv("TINYGRAD_GPT_KERNELS", raising=False)
    assert kernels._default_backend() == "numba"
    old = kernels.get_backend()
    with kernels.use():
        kernels.set_backend("numba")                     # the plain setter
        assert kernels.K.layernorm_forward is NB.layernorm_forward
        kernels.set_backend("numpy")
        assert kernels.K.layernorm_forward is R.layernorm_forward
    assert kernels.get_backend() == old


def test_use_switches_for_a_block_and_restores_even_on_an_error():
    from tinygrad_gpt import kernels
    old = kernels.get_backend()
    with kernels.use("numpy") as K:
        assert K.layernorm_forward is R.layernorm_forward and kernels.get_backend() == "numpy"
        with kernels.use("numba"):
            assert kernels.K.layernorm_forward is NB.layernorm_forward
        assert kernels.get_backend() == "numpy"
    assert kernels.get_backend() == old
    with pytest.raises(ZeroDivisionError), kernels.use("numba" if old == "numpy" else "numpy"):
        1 / 0
    assert kernels.get_backend() == old
    with pytest.raises(ValueError, match="unknown kernel backend 'cuda'"), kernels.use("cuda"):
        pass
    assert kernels.get_backend() == old


# ----------------------------------------------------------------------------- layer norm
@pytest.mark.parametrize("dt", DTYPES)
def test_layernorm_forward_and_backward_match_reference(dt):
    rng = rng_for(dt)
    x = randn(rng, dt, N, C, scale=3.0) + dt(2.0)
    w, b = randn(rng, dt, C), randn(rng, dt, C)
    (y, mean, rstd), _ = both("layernorm_forward", (x, w, b), dt)
    both("layernorm_forward", (x, w, b, 1e-3), dt)
    dy = randn(rng, dt, N, C)
    both("layernorm_backward", (dy, x, w, mean, rstd), dt)


@pytest.mark.parametrize("dt", DTYPES)
def test_layernorm_backward_sums_dw_db_over_many_row_chunks(dt):
    rng = rng_for(dt)
    n = 3 * NB.LN_ROWS_PER_CHUNK + 5                       # several partial-sum chunks, one ragged
    x, dy = randn(rng, dt, n, C), randn(rng, dt, n, C)
    w, b = randn(rng, dt, C), randn(rng, dt, C)
    _, mean, rstd = R.layernorm_forward(x, w, b)
    both("layernorm_backward", (dy, x, w, mean, rstd), dt)


@pytest.mark.parametrize("dt", DTYPES)
def test_layernorm_backward_without_params_gives_the_same_dx_and_no_dw_db(dt):
    """params=False (w and b frozen): dx as with them, no dw or db computed, in both twins."""
    rng = rng_for(dt)
    x, dy = randn(rng, dt, N, C), randn(rng, dt, N, C)
    w, b = randn(rng, dt, C), randn(rng, dt, C)
    _, mean, rstd = R.layernorm_forward(x, w, b)
    for twin in (R, NB):
        dx_all, _, _ = twin.layernorm_backward(dy, x, w, mean, rstd)
        dx, dw, db = twin.layernorm_backward(dy, x, w, mean, rstd, params=False)
        assert dw is None and db is None
        np.testing.assert_array_equal(dx, dx_all)


def test_layernorm_accepts_non_contiguous_input():
    rng = rng_for(np.float64)
    x = randn(rng, np.float64, N, 2 * C)[:, ::2]           # strided view
    w, b = randn(rng, np.float64, C), randn(rng, np.float64, C)
    both("layernorm_forward", (x, w, b), np.float64)


def test_nan_propagates_because_fastmath_has_no_nnan():
    x = np.ones((3, C), dtype=np.float32)
    x[1, 4] = np.nan
    y, _, _ = NB.layernorm_forward(x, np.ones(C, np.float32), np.zeros(C, np.float32))
    assert np.isnan(y[1]).all() and not np.isnan(y[[0, 2]]).any()
    assert np.isnan(NB.softmax_forward(x)[1]).all()


# ----------------------------------------------------------------------------- GELU
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape", [(N, C), (2, 3, 5), (V,)])
def test_gelu_forward_and_backward_match_reference(dt, shape):
    rng = rng_for(dt)
    x = randn(rng, dt, *shape, scale=3.0)
    x.flat[:4] = [12.0, -12.0, 1e-5, 0.0]                   # saturated tanh, the linear regime
    both("gelu_forward", (x,), dt)
    both("gelu_backward", (randn(rng, dt, *shape), x), dt)


# ----------------------------------------------------------------------------- softmax, log-softmax
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_softmax_and_log_softmax_match_reference(dt, scale):
    rng = rng_for(dt)
    x = randn(rng, dt, N, V, scale=scale)
    y, _ = both("softmax_forward", (x,), dt)
    ly, _ = both("log_softmax_forward", (x,), dt)
    dy = randn(rng, dt, N, V)
    both("softmax_backward", (dy, y), dt)
    both("log_softmax_backward", (dy, ly), dt)
    assert np.isfinite(y).all() and np.isfinite(ly).all()


# ----------------------------------------------------------------------------- cross-entropy
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_cross_entropy_with_ignored_targets_matches_reference(dt, scale):
    rng = rng_for(dt)
    logits = randn(rng, dt, N, V, scale=scale)
    targets = rng.integers(0, V, N)
    targets[[1, 4]] = -100                                 # ignored rows
    targets[2] = V - 1                                     # the last class
    (losses, lse), (_, lse_ref) = both("cross_entropy_forward", (logits, targets), dt)
    assert losses[1] == 0 and losses[4] == 0 and np.isfinite(losses).all()
    valid = int((targets != -100).sum())
    dlogits, _ = both("cross_entropy_backward", (logits, targets, lse_ref, 1.0 / valid), dt)
    assert not dlogits[[1, 4]].any(), "ignored rows must get zero gradient"


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("width", [1, 31, 32, 33, 70])
def test_cross_entropy_max_in_lanes_finds_the_max_anywhere_and_keeps_nan(dt, width):
    # the numba forward takes each row's max in 32 lanes plus a tail: the max in any lane or
    # in the tail must shift the row (1e4-sized logits overflow exp otherwise); NaN -> NaN
    logits = np.full((width + 2, width), -1e4, dt)
    for n in range(width):
        logits[n, n] = 1e4                                   # the max at every column once
    logits[width, :] = -np.inf
    logits[width, width // 2] = 0.0                          # -inf everywhere but one
    logits[width + 1, width - 1] = np.nan
    targets = np.arange(width + 2) % width
    targets[width] = width // 2                              # the one finite logit: loss 0
    (losses, lse), _ = both("cross_entropy_forward", (logits, targets), dt)
    assert np.isnan(losses[-1]) and np.isfinite(losses[:-1]).all()
    np.testing.assert_allclose(lse[:width], 1e4, rtol=1e-6)


@pytest.mark.parametrize("dt", DTYPES)
def test_cross_entropy_custom_ignore_index_and_all_ignored(dt):
    rng = rng_for(dt)
    logits = randn(rng, dt, N, V)
    targets = rng.integers(0, V, N)
    targets[::2] = -1
    (_, lse), _ = both("cross_entropy_forward", (logits, targets), dt, ignore_index=-1)
    both("cross_entropy_backward", (logits, targets, lse, 0.5), dt, ignore_index=-1)
    none = np.full(N, -100)
    (losses, lse), _ = both("cross_entropy_forward", (logits, none), dt)
    assert not losses.any()
    assert not NB.cross_entropy_backward(logits, none, lse, 1.0).any()


def test_cross_entropy_rejects_out_of_range_targets():
    logits = np.zeros((N, V), dtype=np.float32)
    with pytest.raises(IndexError, match="targets contains 37"):
        NB.cross_entropy_forward(logits, np.full(N, V))
    with pytest.raises(IndexError, match="targets"):
        NB.cross_entropy_backward(logits, np.full(N, -5), np.zeros(N, np.float32), 1.0)


# ----------------------------------------------------------------------------- attention
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dropout", [False, True])
def test_attention_forward_and_backward_match_reference(dt, causal, dropout):
    rng = rng_for(dt)
    q, k, v, dout = (randn(rng, dt, B, H, T, D) for _ in range(4))
    p = 0.25 if dropout else 0.0
    keep = (rng.random((B, H, T, T)) >= p).astype(dt) if dropout else None
    (out, att), _ = both("attention_forward", (q, k, v, causal, keep, p), dt)
    if causal:
        assert not att[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]].any()
    both("attention_backward", (dout, q, k, v, att, keep, p), dt)


@pytest.mark.parametrize("dt", DTYPES)
def test_attention_non_causal_with_fewer_keys_than_queries(dt):
    rng = rng_for(dt)
    q, dout = randn(rng, dt, B, H, T, D), randn(rng, dt, B, H, T, D)
    k, v = randn(rng, dt, B, H, T - 1, D), randn(rng, dt, B, H, T - 1, D)
    (out, att), _ = both("attention_forward", (q, k, v, False), dt)
    both("attention_backward", (dout, q, k, v, att), dt)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("Tq", [1, 2, T - 1])
@pytest.mark.parametrize("dropout", [False, True])
def test_causal_attention_with_queries_shorter_than_keys_matches_reference(dt, Tq, dropout):
    # the KV cache's case: the queries are the last Tq of the T key positions
    rng = rng_for(dt)
    q, dout = randn(rng, dt, B, H, Tq, D), randn(rng, dt, B, H, Tq, D)
    k, v = randn(rng, dt, B, H, T, D), randn(rng, dt, B, H, T, D)
    p = 0.25 if dropout else 0.0
    keep = (rng.random((B, H, Tq, T)) >= p).astype(dt) if dropout else None
    (out, att), _ = both("attention_forward", (q, k, v, True, keep, p), dt)
    future = np.arange(T)[None, :] > (T - Tq + np.arange(Tq))[:, None]      # (Tq, T)
    assert future.any() == (Tq > 1) and not att[..., future].any()       # the future gets exact zeros
    assert np.allclose(att.sum(-1), 1.0, atol=1e-6)
    both("attention_backward", (dout, q, k, v, att, keep, p), dt)


@pytest.mark.parametrize("dt", DTYPES)
def test_attention_reads_strided_keys_and_values_in_place(dt):
    # a KV cache hands over views of its first positions: (B, H, capacity, D)[:, :, :Tk]
    rng = rng_for(dt)
    cache_k, cache_v = randn(rng, dt, B, H, 11, D), randn(rng, dt, B, H, 11, D)
    q = randn(rng, dt, B, H, 1, D)
    k, v = cache_k[:, :, :T], cache_v[:, :, :T]
    assert not k.flags.c_contiguous
    both("attention_forward", (q, k, v, True), dt)


@pytest.mark.parametrize("impl", [NB, R], ids=["numba", "reference"])
def test_causal_attention_refuses_more_queries_than_keys(impl):
    q = np.zeros((1, 1, 3, 2), np.float32)
    with pytest.raises(ValueError, match="at least as many keys as queries"):
        impl.attention_forward(q, q[:, :, :2], q[:, :, :2])


def test_attention_large_scores_stay_finite():
    rng = rng_for(np.float32)
    q, k, v = (randn(rng, np.float32, B, H, T, D, scale=100.0) for _ in range(3))
    (out, att), _ = both("attention_forward", (q, k, v), np.float32)
    assert np.isfinite(out).all()


# ----------------------------------------------------------------------------- transpose
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("rows,cols", [(1, 1), (37, 70), (70, 37), (33, 64)])
def test_transpose_into_a_block_of_columns_matches_reference(dt, rows, cols):
    # the long bf16 GEMMs' chunk (rows, cols) goes into columns 3.. of a wider array
    src = randn(rng_for(dt), dt, rows, cols)
    got, want = np.full((cols, rows + 5), np.nan, dt), np.full((cols, rows + 5), np.nan, dt)
    NB.transpose_into(src, got[:, 3:3 + rows])
    R.transpose_into(src, want[:, 3:3 + rows])
    assert np.array_equal(got, want, equal_nan=True) and np.array_equal(got[:, 3:3 + rows], src.T)
    assert np.isnan(got[:, :3]).all() and np.isnan(got[:, 3 + rows:]).all()   # nothing outside
    with pytest.raises(ValueError, match="transpose_into"):
        NB.transpose_into(src, got)


# ----------------------------------------------------------------------------- embedding
@pytest.mark.parametrize("dt", DTYPES)
def test_embedding_backward_sums_repeated_ids(dt):
    rng = rng_for(dt)
    dout = randn(rng, dt, N, C)
    ids = np.array([3, 0, 3, 10, 3, 0, 7])                 # 3 three times, 0 twice
    dW, _ = both("embedding_backward", (dout, ids, 11), dt)
    np.testing.assert_allclose(dW[3], dout[[0, 2, 4]].sum(0), rtol=TOL[dt])
    assert not dW[[1, 2, 4, 5, 6, 8, 9]].any()
    wide = randn(rng, dt, N, 2 * NB.EMB_COLS_PER_BLOCK + 3)   # several column blocks, one ragged
    both("embedding_backward", (wide, ids.astype(np.int32), 11), dt)


def test_embedding_backward_rejects_out_of_range_ids():
    with pytest.raises(IndexError, match="ids contains 11"):
        NB.embedding_backward(np.zeros((2, C), np.float32), np.array([0, 11]), 11)


# ----------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape", [(N, C), (B, T, C)])
def test_dropout_forward_and_backward_match_reference(dt, shape):
    rng = rng_for(dt)
    x = randn(rng, dt, *shape)
    keep = (rng.random(shape) >= 0.3).astype(dt)
    both("dropout_forward", (x, keep, 0.3), dt)
    both("dropout_backward", (x, keep, 0.3), dt)
    both("dropout_forward", (x, keep.astype(bool), 0.3), dt)   # a bool mask works too


@pytest.mark.parametrize("shape", [(B, H, T, T), (N, C), (1,), (0,), (3, 300_001)])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_mask_matches_reference_bit_for_bit(shape, p):
    """numba_cpu.keep_mask makes PCG64's words itself; the twin is rng.random(...) >= p. Same
    mask, same generator state after (the next draws agree)."""
    a, b = np.random.default_rng(21), np.random.default_rng(21)
    got, want = NB.keep_mask(a, shape, p), R.keep_mask(b, shape, p)
    assert got.dtype == want.dtype == np.bool_ and got.shape == want.shape == shape
    assert np.array_equal(got, want)
    assert a.random(dtype=np.float32) == b.random(dtype=np.float32) and a.random() == b.random()


# ----------------------------------------------------------------------------- AdamW
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("shape", [(N, C), (V,)])
def test_adamw_several_steps_in_place_match_reference(dt, shape):
    rng = rng_for(dt)
    p0 = randn(rng, dt, *shape)
    ours = [p0.copy(), np.zeros_like(p0), np.zeros_like(p0)]
    ref = [p0.copy(), np.zeros_like(p0), np.zeros_like(p0)]
    ids = [id(a) for a in ours]
    for step in range(1, 6):
        g = randn(rng, dt, *shape)
        hyper = (3e-3, 0.9, 0.95, 1e-8, 0.1, step)
        assert NB.adamw_step(ours[0], g, ours[1], ours[2], *hyper) is None
        R.adamw_step(ref[0], g, ref[1], ref[2], *hyper)
        assert_same(f"adamw_step {step}", tuple(ours), tuple(ref), dt)
    assert [id(a) for a in ours] == ids
    assert not np.array_equal(ours[0], p0)


def test_adamw_numpy_scalar_hyperparameters_keep_float32():
    p = np.ones(V, np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    NB.adamw_step(p, np.ones_like(p), m, v, np.float64(1e-3), np.float64(0.9),
                  np.float64(0.999), np.float64(1e-8), np.float64(0.0), np.int64(1))
    assert p.dtype == m.dtype == v.dtype == np.float32
    np.testing.assert_allclose(p, 1.0 - 1e-3, rtol=1e-5)


def test_adamw_updates_non_contiguous_parameters_in_place():
    rng = rng_for(np.float64)
    base = [randn(rng, np.float64, C, N), randn(rng, np.float64, C, N), rng.random((C, N))]   # p, m, v >= 0
    ours = [a.copy().T for a in base]                      # (N, C) transposed views
    ref = [a.copy().T for a in base]
    g = randn(rng, np.float64, N, C)
    NB.adamw_step(ours[0], g, ours[1], ours[2], 1e-2, 0.9, 0.95, 1e-8, 0.1, 1)
    R.adamw_step(ref[0], g, ref[1], ref[2], 1e-2, 0.9, 0.95, 1e-8, 0.1, 1)
    assert_same("adamw_step strided", tuple(ours), tuple(ref), np.float64)


# ----------------------------------------------------------------------------- errors users can act on
def test_mixed_dtypes_and_wrong_shapes_raise_clear_errors():
    x = np.zeros((N, C), np.float32)
    with pytest.raises(TypeError, match="w is float64 but x is float32"):
        NB.layernorm_forward(x, np.ones(C), np.zeros(C, np.float32))
    with pytest.raises(ValueError, match=r"w must have shape \(13,\)"):
        NB.layernorm_forward(x, np.ones(C + 1, np.float32), np.zeros(C, np.float32))
    with pytest.raises(ValueError, match=r"must be 2-D \(N, C\)"):
        NB.softmax_forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="keep must have shape"):
        NB.dropout_forward(x, np.ones((N, C + 1), np.float32), 0.1)


# ----------------------------------------------------------------------------- the vectorized exp and tanh
def _sweep(kernel, x):
    y = np.empty_like(x)
    kernel(x, y)
    return y


def test_float32_exp_and_tanh_are_accurate_and_handle_special_values():
    import numba

    @numba.njit(fastmath=NB.SAFE)
    def exp_all(x, y):                     # compiled with the kernels' flags, as used there
        for i in range(x.size):
            y[i] = NB._exp(x[i])

    @numba.njit(fastmath=NB.SAFE)
    def tanh_all(x, y):
        for i in range(x.size):
            y[i] = NB._tanh(x[i])

    x = np.linspace(-86.5, 88.7, 400_001, dtype=np.float32)
    want = np.exp(x.astype(np.float64))
    rel = np.abs(_sweep(exp_all, x) - want) / want
    print(f"exp float32: worst relative error {rel.max():.2e}")
    assert rel.max() < 5e-7
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 89.0, -90.0, -200.0], np.float32)
    got = _sweep(exp_all, special)
    np.testing.assert_array_equal(got, [np.nan, np.inf, 0.0, 1.0, 1.0, np.inf, 0.0, 0.0])

    x = np.linspace(-12.0, 12.0, 400_001, dtype=np.float32)
    want = np.tanh(x.astype(np.float64))
    err = np.abs(_sweep(tanh_all, x) - want) / np.maximum(np.abs(want), 1e-30)
    print(f"tanh float32: worst relative error {err.max():.2e}")
    assert err.max() < 5e-7
    special = np.array([np.nan, np.inf, -np.inf, 0.0, 1e-5, -3e-4, 20.0], np.float32)
    got = _sweep(tanh_all, special)
    np.testing.assert_array_equal(got, [np.nan, 1.0, -1.0, 0.0, np.float32(1e-5), np.float32(-3e-4), 1.0])
    y64 = np.empty(3)
    exp_all(np.array([-1.0, 0.5, 700.0]), y64)             # float64 goes to math.exp
    np.testing.assert_allclose(y64, np.exp([-1.0, 0.5, 700.0]), rtol=1e-15)


def test_float32_kernels_do_no_float64_arithmetic():
    """A float32 kernel whose LLVM IR widens a float to double (fpext) computes in float64."""
    import numba
    from numba.core.registry import CPUDispatcher
    NB.warmup(verbose=False)               # every kernel gets its float32 signature
    checked = []
    for name, k in vars(NB).items():
        if not isinstance(k, CPUDispatcher) or name in ("_exp_f32", "_tanh_f32"):
            continue
        for sig in k.signatures:
            if getattr(sig[0], "dtype", None) != numba.float32:
                continue
            fresh = numba.njit(k.py_func, parallel=True, fastmath=NB.SAFE)   # uncached: inspectable
            fresh.compile(sig)
            assert "fpext" not in fresh.inspect_llvm(sig), f"{name} float32 widens to double"
            checked.append(name)
    print(f"no fpext in the float32 LLVM IR of {len(checked)} kernels")
    assert len(checked) >= 14


# ----------------------------------------------------------------------------- float32 products
def one_thread_matmul(a, b):
    """np.matmul with OpenBLAS in one thread: the numbers threads.matmul promises."""
    from tinygrad_gpt.kernels import threads
    with threads.one_blas_thread():
        return np.matmul(a, b)


def blas_threads():
    from threadpoolctl import threadpool_info
    return [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"]


@pytest.fixture
def two_threads(monkeypatch):
    """Two threads for the engine and for OpenBLAS (the split takes the smaller count), whatever
    an earlier test or the machine left."""
    from threadpoolctl import threadpool_limits
    from tinygrad_gpt.kernels import threads
    if not threads._openblas_controllers():
        pytest.skip("NumPy is not on OpenBLAS here: threads.matmul leaves its products alone")
    monkeypatch.setattr(threads, "get_num_threads", lambda: 2)
    with threadpool_limits(limits=2, user_api="blas"):
        yield


MATMUL_CASES = ["qk", "av", "strided", "odd", "3-d", "rows", "columns", "a^T", "b^T", "row vector",
                "empty", "one", "broadcast", "float64", "small"]


def matmul_case(case):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 12, 64, 16), dtype=np.float32)
    y = rng.standard_normal((2, 12, 64, 16), dtype=np.float32)
    m = rng.standard_normal((70, 33), dtype=np.float32)
    w = rng.standard_normal((45, 33), dtype=np.float32)
    return {"qk": (x, y.swapaxes(-1, -2)), "av": (x @ y.swapaxes(-1, -2), y),
            "strided": (x[:, ::2], y[:, ::2].swapaxes(-1, -2)), "odd": (x[:1, :3], y[:1, :3].swapaxes(-1, -2)),
            "3-d": (x[0], y[0].swapaxes(-1, -2)),
            "rows": (m, w.T), "columns": (w, m.T), "a^T": (m.T, m), "b^T": (m, w[:, :33].T),
            "row vector": (m[:1], m.T),
            "empty": (x[:0], y[:0].swapaxes(-1, -2)), "one": (x[:1, :1], y[:1, :1].swapaxes(-1, -2)),
            "broadcast": (x, y[0, 0].T), "float64": (m.astype(np.float64), w.T.astype(np.float64)),
            "small": (m, w.T)}[case]


@pytest.mark.parametrize("case", MATMUL_CASES)
@pytest.mark.parametrize("with_out", [False, True])
def test_threads_matmul_is_np_matmul_in_one_thread(case, with_out, monkeypatch, two_threads):
    """threads.matmul (numba_cpu.matmul's: the engine's float32 products, the Linears, the
    attention, `@`, unless MKL's pool is in the process for the attention's stacks) splits
    the work between two Python threads, each calling OpenBLAS in one thread: the numbers of
    np.matmul in one thread, bit for bit (each output element is one such call's; a vector
    times a matrix to float32 rounding, as OpenBLAS's own threads split it), OpenBLAS in
    one thread during every call, and its count restored after. Broadcasting goes to np.matmul
    untouched, and so is a product below SPLIT_ROWS or SPLIT_FLOPS (only "small" keeps the real
    thresholds here: generation's products, on OpenBLAS's own threads)."""
    from tinygrad_gpt.kernels import threads
    a, b = matmul_case(case)
    want = one_thread_matmul(a, b)
    before, during = blas_threads(), []
    real = np.matmul
    monkeypatch.setattr(threads.np, "matmul", lambda *args, **kw: during.append(blas_threads()) or real(*args, **kw))
    if case != "small":
        monkeypatch.setattr(threads, "SPLIT_FLOPS", 0)
        monkeypatch.setattr(threads, "SPLIT_ROWS", 0)
    out = np.full(want.shape, np.nan, want.dtype) if with_out else None
    got = threads.matmul(a, b, out=out)
    monkeypatch.undo()
    assert got.shape == want.shape and got.dtype == want.dtype
    if case == "row vector":       # OpenBLAS's vector kernel ends a slice of columns its own way
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    else:
        assert np.array_equal(got, want)
    if with_out:
        assert got is out
    assert R.matmul(a, b).shape == want.shape              # the twin: np.matmul itself
    assert blas_threads() == before
    if case in ("empty", "broadcast", "small"):            # np.matmul as it is
        assert during == [before], during
    elif case == "one":                                    # nothing to cut: whole, in one thread
        assert len(during) == 1 and set(during[0]) == {1}, during
    else:                                                  # two pieces, OpenBLAS in one thread each
        assert len(during) == 2 and all(set(d) == {1} for d in during), during


def test_threads_matmul_cuts_a_stack_of_short_matrices_as_chapter_7s_attention(monkeypatch, two_threads):
    """The real thresholds: a stack of 8 x 12 matrices of 96 rows (chapter 7's attention, batch
    8 at ~100 tokens) is above SPLIT_FLOPS, so it is cut along its stack, OpenBLAS in one thread
    per piece. It once went whole to OpenBLAS because each matrix has fewer than SPLIT_ROWS
    rows; OpenBLAS's threads woke for it and spun into the next products (the float32 step 2x
    slower at 96 tokens than at 88)."""
    from tinygrad_gpt.kernels import threads
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 12, 96, 64)).astype(np.float32)
    b = rng.standard_normal((8, 12, 64, 96)).astype(np.float32)
    assert 2.0 * 8 * 12 * 96 * 96 * 64 > threads.SPLIT_FLOPS and 96 < threads.SPLIT_ROWS
    want = one_thread_matmul(a, b)
    during, real = [], np.matmul
    monkeypatch.setattr(threads.np, "matmul", lambda *args, **kw: during.append(blas_threads()) or real(*args, **kw))
    got = threads.matmul(a, b)
    monkeypatch.undo()
    assert np.array_equal(got, want)
    assert len(during) == 2 and all(set(d) == {1} for d in during), during


SMALL_MODEL_PRODUCTS = {       # 4 layers of 128 at batch 12 x 64 (the learner's small model), and generation's
    "x @ W^T (768 x 128 x 128)": ((768, 128), (128, 128), "one thread"),
    "dW, 128 rows (128 x 768 x 128)": ((128, 768), (768, 128), "one thread"),
    "q @ k^T stack (12 x 4 x 64 x 32 x 64)": ((12, 4, 64, 32), (12, 4, 32, 64), "one thread"),
    "dW, 128 rows, above SPLIT_FLOPS (128 x 768 x 512)": ((128, 768), (768, 512), "cut"),
    "generation's 1 row (1 x 768 x 3072)": ((1, 768), (768, 3072), "as it is"),
    "a prompt's 20 rows (20 x 768 x 3072)": ((20, 768), (768, 3072), "as it is"),
    "tiny (40 x 32 x 40)": ((40, 32), (32, 40), "as it is"),
}


@pytest.mark.parametrize("case", SMALL_MODEL_PRODUCTS)
def test_threads_matmul_runs_a_small_models_products_whole_in_this_thread(case, monkeypatch, two_threads):
    """The real thresholds, by the product's size: below SPLIT_FLOPS a product of at least
    FEW_ROWS rows runs whole in the calling thread with OpenBLAS in one thread (no Python thread,
    no OpenBLAS worker woken; OpenBLAS's own two threads took 5-13 ms for 768 x 128 x 128 on a
    busy machine); a 2-D one of at least SPLIT_ROWS rows above SPLIT_FLOPS is cut; generation's
    few rows, and a product OpenBLAS keeps in one thread itself, go to np.matmul as they are.
    The numbers are np.matmul's in one thread either way."""
    from tinygrad_gpt.kernels import threads
    shape_a, shape_b, route = SMALL_MODEL_PRODUCTS[case]
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(shape_a, dtype=np.float32), rng.standard_normal(shape_b, dtype=np.float32)
    want = one_thread_matmul(a, b)
    before, during, real = blas_threads(), [], np.matmul
    monkeypatch.setattr(threads.np, "matmul", lambda *args, **kw: during.append(blas_threads()) or real(*args, **kw))
    pool = threads.pool
    started = []
    monkeypatch.setattr(threads, "pool", lambda: started.append(1) or pool())
    got = threads.matmul(a, b)
    monkeypatch.undo()
    if route == "as it is":
        assert during == [before] and not started, (during, started)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
        return
    assert np.array_equal(got, want)
    if route == "one thread":
        assert len(during) == 1 and set(during[0]) == {1} and not started, (during, started)
    else:
        assert len(during) == 2 and all(set(d) == {1} for d in during) and started, (during, started)
    assert blas_threads() == before


def test_threads_get_num_threads_asks_the_os_once(monkeypatch):
    """get_num_threads() runs for every product: it answers runtime.threads, the core count read
    on the runtime's first use, not a new os.cpu_count() call (7,600 of them in 150 small steps)."""
    import os
    from tinygrad_gpt.kernels import threads
    first = threads.get_num_threads()          # the runtime's first use, if nothing came before
    monkeypatch.setattr(os, "cpu_count", lambda: pytest.fail("os.cpu_count() called per product"))
    assert threads.get_num_threads() == first >= 1


def test_threads_matmul_pieces_cover_the_output(monkeypatch, two_threads):
    """Each piece writes its own rows or columns, and all of them are written: a split that
    dropped or doubled a piece would leave NaN in `out` or fail the comparison above."""
    from tinygrad_gpt.kernels import threads
    from threadpoolctl import threadpool_limits
    monkeypatch.setattr(threads, "get_num_threads", lambda: 3)
    monkeypatch.setattr(threads, "SPLIT_FLOPS", 0)
    monkeypatch.setattr(threads, "SPLIT_ROWS", 0)
    pieces = []
    real = np.matmul
    monkeypatch.setattr(threads.np, "matmul", lambda a, b, out=None: pieces.append(out.shape) or real(a, b, out=out))
    rng = np.random.default_rng(5)
    for shape_a, shape_b in [((7, 5), (5, 3)), ((3, 5), (5, 8)), ((2, 5, 4, 3), (2, 5, 3, 6))]:
        a = rng.standard_normal(shape_a, dtype=np.float32)
        b = rng.standard_normal(shape_b, dtype=np.float32)
        out = np.full(real(a, b).shape, np.nan, np.float32)
        with threadpool_limits(limits=3, user_api="blas"):
            threads.matmul(a, b, out=out)
        assert not np.isnan(out).any()
        np.testing.assert_allclose(out, real(a.astype(np.float64), b.astype(np.float64)), rtol=1e-5, atol=1e-5)
    assert sorted(pieces) == sorted([(3, 3), (2, 3), (2, 3),                 # 7 rows: 3 + 2 + 2
                                     (3, 3), (3, 3), (3, 2),                 # 8 columns: 3 + 3 + 2
                                     (2, 1, 4, 6), (2, 2, 4, 6), (2, 2, 4, 6)])   # axis of 5: 1 + 2 + 2


def test_float32_step_makes_no_multithreaded_openblas_call(monkeypatch, two_threads):
    """A float32 forward + backward of a small GPT runs every product with OpenBLAS in one thread
    (its own workers never wake, so they never spin beside the numba kernels). With MKL's pool
    in the process the attention's stacks go to MKL instead (test_amp); not here."""
    import tinygrad_gpt as tg
    from tinygrad_gpt import functional as F
    from tinygrad_gpt.kernels import bf16_mkl, threads, use
    monkeypatch.setattr(bf16_mkl, "pool_active", lambda: False)
    seen = []
    real = np.matmul
    monkeypatch.setattr(threads.np, "matmul", lambda *args, **kw: seen.append(blas_threads()) or real(*args, **kw))
    monkeypatch.setattr(threads, "SPLIT_FLOPS", 0)           # 124M's products at context 256 are all
    monkeypatch.setattr(threads, "SPLIT_ROWS", 0)            # above both; this tiny model's are not
    tg.manual_seed(0)
    cfg = {**tg.get_config("tiny"), "drop_rate": 0.0}
    model = tg.GPTModel(cfg)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, cfg["vocab_size"], (2, 16)), rng.integers(0, cfg["vocab_size"], (2, 16))
    with use("numba"):
        F.cross_entropy(model(x), y).backward()
    layers = cfg["n_layers"]
    linears = 4 * layers + 2 * layers + 1                  # q, k, v, out; ff1, ff2; the head
    assert len(seen) == 2 * (3 * linears + 6 * layers)     # each product in two pieces
    assert all(set(d) <= {1} for d in seen), seen


def test_threads_matmul_leaves_another_blas_alone(monkeypatch, two_threads):
    """Where threadpoolctl finds no OpenBLAS (a NumPy on MKL or Accelerate), the product is
    np.matmul as it is: cut in two, each half would run on that BLAS's own threads."""
    from tinygrad_gpt.kernels import threads
    monkeypatch.setattr(threads, "_openblas_controllers", lambda: [])
    monkeypatch.setattr(threads, "SPLIT_FLOPS", 0)
    monkeypatch.setattr(threads, "SPLIT_ROWS", 0)
    calls = []
    real = np.matmul
    monkeypatch.setattr(threads.np, "matmul", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    a, b = matmul_case("rows")
    got = threads.matmul(a, b)
    monkeypatch.undo()
    assert calls == [1] and np.array_equal(got, real(a, b))


def test_one_blas_thread_blocks_nest_across_threads(two_threads):
    """A block opened by another thread inside this thread's block: OpenBLAS stays at one thread
    until the outer block closes, and its own count comes back then."""
    import threading
    from tinygrad_gpt.kernels import threads
    before, seen = blas_threads(), {}

    def inner():
        with threads.one_blas_thread():
            seen["inner"] = blas_threads()

    with threads.one_blas_thread():
        t = threading.Thread(target=inner)
        t.start()
        t.join(10)
        seen["outer, after inner"] = blas_threads()
    assert set(seen["inner"]) == {1} and set(seen["outer, after inner"]) == {1}, seen
    assert blas_threads() == before


def test_threads_matmul_out_like_np_matmul(two_threads, monkeypatch):
    """`out` overlapping an operand, of a wrong shape, or operands not in native byte order:
    the answer (or the error) np.matmul gives."""
    from tinygrad_gpt.kernels import threads
    monkeypatch.setattr(threads, "SPLIT_FLOPS", 0)
    monkeypatch.setattr(threads, "SPLIT_ROWS", 0)
    rng = np.random.default_rng(7)
    a = rng.standard_normal((300, 300), dtype=np.float32)
    b = rng.standard_normal((300, 300), dtype=np.float32)
    want = a @ b
    threads.matmul(a, b, out=a)                            # out is a: every piece would read it
    np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError):
        threads.matmul(b, b, out=np.empty((301, 300), np.float32))
    big = b.astype(">f4")
    assert threads.matmul(big, big).dtype == np.matmul(big, big).dtype
