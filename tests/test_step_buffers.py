"""Persistent per-step buffers: the embedding gradient touches only the rows a batch used."""
import weakref

import numpy as np

import tinygrad_gpt as tg
from tinygrad_gpt import functional as F
from tinygrad_gpt import kernels
from tinygrad_gpt.kernels import buffers, reference as R


def test_embedding_backward_into_zeroes_the_stale_rows_and_matches_the_dense_kernel(backend):
    rng = np.random.default_rng(0)
    V, C = 50, 70                              # C > one column block of the numba kernel
    dW = np.zeros((V, C), np.float32)
    stale = np.zeros(0, np.int64)
    for step in range(3):
        ids = rng.integers(0, V // 2 if step % 2 else V, 40)
        dout = rng.standard_normal((40, C)).astype(np.float32)
        stale = kernels.K.embedding_backward_into(dout, ids, dW, stale)
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
        assert np.shares_memory(w.grad, w.workspace.grad.view())   # one kept buffer, not fresh ones


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


def test_linear_dw_is_not_kept_after_zero_grad_and_a_held_one_stays_right():
    """dW is a fresh array that only the parameter's .grad holds: once zero_grad() drops it,
    nothing keeps it until the next step (a kept dW held all of GPT-2's 0.6 GiB of gradients
    through the next forward, the step's peak). Held, it is not overwritten; not dropped, the
    next backward adds into it (micro-batches)."""
    rng = np.random.default_rng(3)
    w = tg.nn.Parameter(rng.standard_normal((6, 4)).astype(np.float32))
    opt = tg.AdamW([w], lr=0.0)
    xs = [rng.standard_normal((5, 4)).astype(np.float32) for _ in range(3)]
    for x in xs:
        opt.zero_grad()
        F.linear(tg.Tensor(x), w).sum().backward()
        np.testing.assert_allclose(w.grad, np.ones((5, 6), np.float32).T @ x, rtol=1e-6)
        grad = weakref.ref(w.grad)
        opt.step()
        opt.zero_grad()
        assert grad() is None                              # no buffer outlives the step
    F.linear(tg.Tensor(xs[2]), w).sum().backward()
    held = w.grad
    w.grad = None
    F.linear(tg.Tensor(xs[0]), w).sum().backward()
    np.testing.assert_allclose(held, np.ones((5, 6), np.float32).T @ xs[2], rtol=1e-6)   # untouched
    F.linear(tg.Tensor(xs[1]), w).sum().backward()                                         # accumulates
    np.testing.assert_allclose(w.grad, np.ones((5, 6), np.float32).T @ (xs[0] + xs[1]), rtol=1e-5)


def test_backward_frees_each_intermediate_once_its_backward_has_run():
    """The sweep does not hold the graph's tensors to its end: an output no one else holds is
    freed (with its array) as soon as its op's backward has run, so activations go while the
    gradients come (the step's peak memory). The tensors the caller holds stay."""
    x = tg.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    made = []
    with tg.tensor.register_forward_hook(lambda ctx, inputs, out: made.append(
            (type(ctx).__name__, weakref.ref(out), weakref.ref(out.data)))):
        loss = ((x * 2.0) * 3.0).exp().sum()
    alive = []

    def after_op(node, ctx, g, input_grads):
        tensors = [name for name, t, _ in made if t() is not None]
        arrays = [name for name, _, a in made if a() is not None]
        assert arrays == tensors                   # each output's array goes with its tensor
        alive.append((type(ctx).__name__, tensors))

    with tg.tensor.register_backward_hook(after_op):
        loss.backward()
    assert alive == [                          # forward order: x * 2, * 3, exp, sum
        ("Sum", ["Mul", "Mul", "Exp", "Sum"]),
        ("Exp", ["Mul", "Mul", "Exp", "Sum"]),     # Exp's output: the node in hand
        ("Mul", ["Mul", "Mul", "Sum"]),            # Exp's output gone; the loss is the caller's
        ("Mul", ["Mul", "Sum"]),                   # (x * 2) * 3 gone
    ]
    np.testing.assert_allclose(x.grad, 6 * np.exp(6 * x.data), rtol=1e-5)


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
        assert np.shares_memory(F.linear(tg.Tensor(x1), w).data, w.workspace.y.view())


def head_step(w, h, targets, precision):
    """One output head + cross-entropy step; returns (the head's dW, the loss)."""
    w.grad = None
    with tg.autocast("bfloat16", enabled=precision == "bfloat16"):
        loss = F.cross_entropy(F.linear(h, w), targets)
    loss.backward()
    return w.grad.copy(), float(loss.item())


def test_the_bf16_copies_go_into_kept_buffers_and_stay_right(backend):
    """The head's output (the logits), and under autocast the bf16 copies of x (saved for
    backward) and of dy, are written into kept buffers, the same ones step after step, and the numbers stay those
    of fresh arrays (a kept buffer read after it is overwritten would show as a wrong dW)."""
    rng = np.random.default_rng(3)
    w = tg.nn.Parameter((rng.standard_normal((50, 16)) * 0.1).astype(np.float32))
    for precision in ("float32", "bfloat16"):
        got = []
        for step in range(3):
            h = tg.Tensor(rng.standard_normal((2, 6, 16)).astype(np.float32), requires_grad=True)
            t = rng.integers(0, 50, (2, 6))
            dw, loss = head_step(w, h, t, precision)
            # the same step with nothing kept: a fresh weight array has no buffers yet
            w2 = tg.nn.Parameter(w.data.copy())
            dw2, loss2 = head_step(w2, tg.Tensor(h.data.copy(), requires_grad=True), t, precision)
            np.testing.assert_array_equal(dw, dw2)
            assert loss == loss2
            state = w.workspace                      # the weight owns its buffers
            kept = {tag: buf.view() for tag, buf in (("y", state.y), ("x bf16", state.x_bits))
                    if buf.memory is not None}
            if precision == "bfloat16":                     # one scratch per shape for all layers
                kept["dy bf16"] = buffers.SCRATCH.buffers[("dy bf16", (12, 50))].view()
            got.append({tag: a.ctypes.data for tag, a in kept.items()})
        tags = {"y", "x bf16", "dy bf16"} if precision == "bfloat16" else {"y"}   # y: the logits
        assert got[0].keys() == tags and got[0] == got[1] == got[2]


def test_a_held_cross_entropy_gradient_is_not_overwritten():
    """A user holding last step's dlogits (through a backward hook) keeps its values: the next
    backward writes a fresh array (dlogits was once a kept buffer, reused only while nobody
    held it; this guards any buffer that comes back)."""
    rng = np.random.default_rng(4)
    logits = tg.Tensor(rng.standard_normal((4, 9)).astype(np.float32), requires_grad=True)
    held = []
    with tg.tensor.register_backward_hook(lambda node, ctx, g, ig: held.append(ig[0])
                                          if type(ctx).__name__ == "CrossEntropy" else None):
        F.cross_entropy(logits, rng.integers(0, 9, 4)).backward()
        first = held[0].copy()
        F.cross_entropy(logits, rng.integers(0, 9, 4)).backward()
    np.testing.assert_array_equal(held[0], first)
    assert held[1] is not held[0]


def test_one_weight_used_twice_under_autocast_keeps_both_saved_inputs():
    """Under autocast a Linear saves its input's bf16 copy in a kept buffer: a weight used on
    two inputs before backward must give the second call its own copy (a shared one would
    make dW = 2 dy^T x2 instead of dy^T x1 + dy^T x2)."""
    rng = np.random.default_rng(5)
    w = tg.nn.Parameter((rng.standard_normal((7, 5)) * 0.3).astype(np.float32))
    x1, x2 = (tg.Tensor(rng.standard_normal((3, 5)).astype(np.float32)) for _ in range(2))
    with tg.autocast("bfloat16"):
        (F.linear(x1, w).sum() + F.linear(x2, w).sum()).backward()
    xs = R.from_bf16(R.to_bf16(x1.data)) + R.from_bf16(R.to_bf16(x2.data))   # what bf16 multiplies
    want = np.tile(xs.sum(axis=0), (7, 1))          # dy = 1: every row of dW is the column sums
    np.testing.assert_allclose(w.grad, want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- the kernel layer's owners and twins
def test_k_linear_and_its_backward_match_the_reference_twin_in_float32_and_under_autocast(backend):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((9, 5)).astype(np.float32)
    w = tg.nn.Parameter(rng.standard_normal((4, 5)).astype(np.float32))
    b = rng.standard_normal(4).astype(np.float32)
    dy = rng.standard_normal((9, 4)).astype(np.float32)
    rounded = lambda a: R.from_bf16(R.to_bf16(a))               # noqa: E731  what bf16 multiplies
    for precision, op in (("float32", lambda a: a), ("bfloat16", rounded)):
        with tg.autocast("bfloat16", enabled=precision == "bfloat16"):
            out = F.linear(tg.Tensor(x), w, tg.Tensor(b))   # the operands as functional.Linear chose them
            y, (xu, wu) = out.data, out._ctx.saved
            dx, dw = kernels.K.linear_backward(dy, xu, wu)
        assert (xu.dtype == np.uint16) == (precision == "bfloat16")
        np.testing.assert_allclose(y, R.linear_forward(op(x), op(w.data), b), rtol=1e-5, atol=1e-5)
        want_dx, want_dw = R.linear_backward(op(dy), op(x), op(w.data))
        np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-5)


def test_a_buffer_is_handed_out_again_only_when_no_array_over_it_is_alive():
    buf = buffers.Buffer()
    a = buf.take((3, 4), np.float32)
    view = a.reshape(-1)[2:]                   # a view of a view keeps the memory in use
    del a
    assert buf.take((3, 4), np.float32) is None
    del view
    again = buf.take((3, 4), np.float32)
    assert again is not None and np.shares_memory(again, buf.view())
    assert again.base is buf.memory            # on the mmap: no other array shares it


def test_a_shorter_request_is_the_front_of_the_buffer_and_only_a_longer_one_maps_new_memory():
    buf = buffers.Buffer()
    long = buf.take((4, 8), np.float32)
    assert buf.fresh and not buf.relaid
    memory = buf.memory
    del long
    short = buf.take((2, 8), np.float32)       # a shorter batch: the same pages, not new ones
    assert buf.memory is memory and short.base is memory
    assert not buf.fresh and buf.relaid        # old bytes under another shape
    del short
    again = buf.take((2, 8), np.float32)
    assert not buf.fresh and not buf.relaid
    del again
    longer = buf.take((6, 8), np.float32)      # longer than any before: new (zeroed) memory
    assert buf.fresh and buf.memory is not memory and not longer.any()


def test_linear_outputs_of_varying_batch_lengths_reuse_the_longest_ones_memory():
    """Chapter 7's batches vary in length (74-127 tokens); each Linear's output buffer mapped
    new pages at every change of length (~130,000 page faults a 124M step, 10-15 % of its
    time) until a shorter request reused the front of the longest one's memory."""
    rng = np.random.default_rng(0)
    w = tg.nn.Parameter(rng.standard_normal((6, 5)).astype(np.float32))
    state = w.workspace
    F.linear(tg.Tensor(rng.standard_normal((2, 9, 5)).astype(np.float32)), w)
    memory = state.y.memory
    for T in (4, 9, 7, 1, 9):
        x = rng.standard_normal((2, T, 5)).astype(np.float32)
        y = F.linear(tg.Tensor(x), w)
        np.testing.assert_allclose(y.data, x @ w.data.T, rtol=1e-5, atol=1e-6)
        assert state.y.memory is memory and np.shares_memory(y.data, state.y.view())
        del y


def test_an_embedding_gradient_buffer_laid_out_for_another_shape_is_zeroed_whole():
    """The gradient buffer zeroes only the rows the last step wrote; if the weight was replaced
    by one of another shape but the same size, those row numbers mean other bytes, so the
    whole buffer is zeroed (without it the old step's values stayed in the new gradient)."""
    w = tg.nn.Parameter(np.ones((30, 4), np.float32))
    F.embedding(w, np.array([1, 2, 29])).sum().backward()
    w.grad = None
    w.data = np.ones((60, 2), np.float32)      # the same 480 bytes, another layout
    ids = np.array([0])
    F.embedding(w, ids).sum().backward()
    np.testing.assert_array_equal(w.grad, R.embedding_backward(np.ones((1, 2), np.float32), ids, 60))


def test_load_state_dict_bumps_the_version_and_the_next_product_converts_the_new_weight():
    w = tg.nn.Parameter(np.ones((3, 2), np.float32))
    x = tg.Tensor(np.ones((1, 2), np.float32))
    with tg.autocast("bfloat16"):
        F.linear(x, w)
        stale = w.workspace.bits.copy()
        lin = tg.nn.Linear(2, 3, bias=False)
        lin.weight = w
        lin.load_state_dict({"weight": np.full((3, 2), 2.0, np.float32)})
        assert w._version == 1
        np.testing.assert_array_equal(F.linear(x, w).data, np.full((1, 3), 4.0, np.float32))
    assert not np.array_equal(stale, R.to_bf16(w.data))


def test_after_micro_batches_added_into_the_held_buffer_the_next_step_starts_from_zero():
    """Micro-batches: the second backward's dense dW is added into the held buffer, in rows the
    buffer's record does not name; the next step, once the buffer is free again, must not
    find them there (before issue 26 it did: a wrong gradient in those rows)."""
    w = tg.nn.Parameter(np.ones((30, 4), np.float32))
    a, b, c = np.array([1, 2]), np.array([5, 6]), np.array([9])
    F.embedding(w, a).sum().backward()
    F.embedding(w, b).sum().backward()         # accumulates into the held buffer
    w.grad = None
    F.embedding(w, c).sum().backward()
    np.testing.assert_array_equal(w.grad, R.embedding_backward(np.ones((1, 4), np.float32), c, 30))
    assert np.shares_memory(w.grad, w.workspace.grad.view())   # still the one buffer


# ----------------------------------------------------------------------------- what backward keeps (issue 29, item 4)
def saved_of(t):
    return t._ctx.saved


def test_linears_reading_one_input_under_autocast_save_one_bf16_copy_of_it():
    """Attention's query, key and value read the same normed x: under autocast the three
    Linears save the one bf16 copy the first made (three copies were 3x the memory), and the
    gradients are those of separate copies; an input changed in place gets a new copy."""
    rng = np.random.default_rng(7)
    ws = [tg.nn.Parameter((rng.standard_normal((6, 5)) * 0.3).astype(np.float32)) for _ in range(3)]
    x = tg.Tensor(rng.standard_normal((2, 4, 5)).astype(np.float32), requires_grad=True)
    with tg.autocast("bfloat16"):
        h = x * 1.0                                  # an activation, as layer norm's output
        ys = [F.linear(h, w) for w in ws]
    bits = [saved_of(y)[0] for y in ys]
    assert all(b.dtype == np.uint16 for b in bits)
    assert np.shares_memory(bits[0], bits[1]) and np.shares_memory(bits[0], bits[2])
    sum(y.sum() for y in ys).backward()
    xr = R.from_bf16(R.to_bf16(h.data.reshape(-1, 5)))
    for w in ws:                                     # dy = 1: dW's rows are the column sums of x
        np.testing.assert_allclose(w.grad, np.tile(xr.sum(axis=0), (6, 1)), rtol=1e-6, atol=1e-6)
    h2 = tg.Tensor(np.ones((2, 5), np.float32))
    with tg.autocast("bfloat16"):
        first = saved_of(F.linear(h2, ws[0]))[0]
        h2.data[...] = 2.0                           # written in place without an op: invalidate()
        tg.amp.invalidate([h2])
        second = saved_of(F.linear(h2, ws[1]))[0]
        h2.copy_(np.full((2, 5), 3.0, np.float32))  # an in-place op bumps the version
        third = saved_of(F.linear(h2, ws[2]))[0]
    assert not np.shares_memory(first, second) and not np.shares_memory(second, third)
    np.testing.assert_array_equal(R.from_bf16(third), np.full((2, 5), 3.0, np.float32))


def test_attention_saves_views_of_its_inputs_not_copies():
    """q, k, v, as the heads split them (transposed views of the projections' outputs), are
    saved as they are: a contiguous copy of each was 54 MiB for GPT-2 124M at 2 x 256."""
    rng = np.random.default_rng(8)
    qkv = [tg.Tensor(rng.standard_normal((2, 5, 2, 3)).astype(np.float32), requires_grad=True)
           for _ in range(3)]
    q, k, v = (t.transpose(1, 2) for t in qkv)      # (B, H, T, D) views
    out = F.scaled_dot_product_attention(q, k, v, causal=True)
    for t, s in zip(qkv, saved_of(out)[:3]):
        assert np.shares_memory(s, t.data)
    out.sum().backward()
    assert all(t.grad is not None and np.isfinite(t.grad).all() for t in qkv)


def test_merging_the_heads_after_attention_is_a_view_of_its_output():
    """The compiled attention lays its (B, H, T, D) output out as (B, T, H, D): the heads'
    merge, transpose(1, 2).reshape(B, T, C), is a view, not a second float32 copy held by the
    graph until backward (18 MiB for GPT-2 124M at 2 x 256); MKL's batched GEMM (under
    autocast) and NumPy's write the strided output in place, with np.matmul's numbers."""
    from tinygrad_gpt import kernels
    rng = np.random.default_rng(9)
    q, k, v = (rng.standard_normal((2, 3, 5, 4)).astype(np.float32) for _ in range(3))
    for precision in ("float32", "bfloat16"):
        with kernels.use("numba"), tg.autocast("bfloat16", enabled=precision == "bfloat16"):
            out = F.scaled_dot_product_attention(tg.Tensor(q), tg.Tensor(k), tg.Tensor(v))
            merged = out.transpose(1, 2).reshape(2, 5, 12)
        assert np.shares_memory(merged.data, out.data)
        want, _ = R.attention_forward(q, k, v, True)
        np.testing.assert_allclose(out.data, want, rtol=1e-5, atol=1e-6)


def test_mkl_batched_matmul_writes_a_strided_output_in_place_with_numpys_numbers():
    """bf16_mkl.matmul(out=) for attention's (B, T, H, D)-laid output, whose matrices interleave
    (MKL's batched call refuses those: one matrix a call), and strided operands read in place.
    Without MKL it is np.matmul(out=): the same check holds."""
    from tinygrad_gpt.kernels import bf16_mkl
    rng = np.random.default_rng(10)
    q, k, v = (rng.standard_normal((2, 7, 3, 4)).astype(np.float32).transpose(0, 2, 1, 3) for _ in range(3))
    s = bf16_mkl.matmul(q, k.swapaxes(-1, -2))
    np.testing.assert_allclose(s, np.matmul(q, k.swapaxes(-1, -2)), rtol=1e-5, atol=1e-6)
    out = np.empty((2, 7, 3, 4), np.float32).transpose(0, 2, 1, 3)
    assert bf16_mkl.matmul(s, v, out=out) is out
    np.testing.assert_allclose(out, np.matmul(s, v), rtol=1e-5, atol=1e-6)
