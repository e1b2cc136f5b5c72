"""Modules: the Module base (parameters, state dicts, modes) and the book's layers one by one.

Each layer is checked against its formula written out in float64 NumPy (the book's ch03/ch04
code, line for line), its parameter names against the book's, and its initialisation against
PyTorch's defaults. The whole-model checks are in test_model.py.
"""
import math

import numpy as np
import pytest

from tinygrad_gpt import Tensor, manual_seed, no_grad
from tinygrad_gpt.nn import (GELU, Dropout, Embedding, FeedForward, LayerNorm, Linear, Module,
                             MultiHeadAttention, Parameter, Sequential, TransformerBlock)

from helpers import MICRO as CFG


def randn(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def to_float64(module):
    """Every parameter as float64, in place: the formulas below are checked at 1e-12."""
    for p in module.parameters():
        p.data = p.data.astype(np.float64)
    return module


# ----------------------------------------------------------------------------- formulas (NumPy, float64)
def np_layer_norm(x, scale, shift, eps=1e-5):          # the book's LayerNorm.forward
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)                 # unbiased=False
    return scale * (x - mean) / np.sqrt(var + eps) + shift


def np_gelu(x):                                         # the book's GELU.forward
    return 0.5 * x * (1 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def np_linear(x, lin):
    y = x @ lin.weight.data.T
    return y if lin.bias is None else y + lin.bias.data


def np_softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_mha(x, mha):
    """The book's ch03 MultiHeadAttention.forward without dropout, in NumPy."""
    b, T, _ = x.shape
    H, D = mha.num_heads, mha.head_dim
    keys = np_linear(x, mha.W_key).reshape(b, T, H, D).transpose(0, 2, 1, 3)
    queries = np_linear(x, mha.W_query).reshape(b, T, H, D).transpose(0, 2, 1, 3)
    values = np_linear(x, mha.W_value).reshape(b, T, H, D).transpose(0, 2, 1, 3)
    attn_scores = queries @ keys.transpose(0, 1, 3, 2)                  # (b, H, T, T)
    mask = np.triu(np.ones((T, T)), k=1).astype(bool)
    attn_scores = np.where(mask, -np.inf, attn_scores)
    attn_weights = np_softmax(attn_scores / D ** 0.5)
    context = (attn_weights @ values).transpose(0, 2, 1, 3).reshape(b, T, H * D)
    return np_linear(context, mha.out_proj)


# ----------------------------------------------------------------------------- Module base
class Pair(Module):
    """A made-up module with an own parameter, a child and a nested Sequential."""

    def __init__(self):
        super().__init__()
        self.first = Linear(3, 4)
        self.gain = Parameter(np.ones(4, dtype=np.float32))
        self.inner = Sequential(Linear(4, 2, bias=False), GELU(), LayerNorm(2))

    def forward(self, x):
        return self.inner(self.first(x) * self.gain)


PAIR_NAMES = ["gain", "first.weight", "first.bias", "inner.0.weight", "inner.2.scale", "inner.2.shift"]


def test_named_parameters_are_dotted_names_in_pytorchs_order():
    m = Pair()
    # PyTorch's order: a module's own parameters, then each child's, depth first
    assert [n for n, _ in m.named_parameters()] == PAIR_NAMES
    assert [p.shape for _, p in m.named_parameters()] == [(4,), (4, 3), (4,), (2, 4), (2,), (2,)]
    assert all(isinstance(p, Parameter) and p.requires_grad for p in m.parameters())
    assert [n for n, _ in m.named_modules()] == ["", "first", "inner", "inner.0", "inner.1", "inner.2"]
    assert len(m.inner) == 3 and isinstance(m.inner[1], GELU)
    assert m.num_parameters() == 4 + 12 + 4 + 8 + 2 + 2


def test_a_parameter_shared_by_two_modules_is_listed_once():
    m = Pair()
    m.inner[2].shift = m.inner[2].scale                 # tie two parameters
    assert [n for n, _ in m.named_parameters()] == PAIR_NAMES[:-1]
    assert len(m.parameters()) == 5


def test_state_dict_has_every_parameter_and_shares_its_storage():
    m = Pair()
    sd = m.state_dict()
    assert list(sd) == PAIR_NAMES
    for name, p in m.named_parameters():
        assert sd[name] is p.data                       # as torch: no copy


def test_load_state_dict_copies_values_in_place():
    src, dst = Pair(), Pair()
    arrays_before = [p.data for p in dst.parameters()]
    sd = {k: v + 1.0 for k, v in src.state_dict().items()}
    assert dst.load_state_dict(sd) == ([], [])
    for (name, p), before in zip(dst.named_parameters(), arrays_before):
        assert p.data is before                         # optimizers hold these arrays
        np.testing.assert_array_equal(p.data, sd[name])
        assert sd[name] is not p.data


def test_load_state_dict_casts_float64_values_to_the_float32_parameters():
    m = Pair()
    sd = {k: np.full(v.shape, 0.25, dtype=np.float64) for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    for p in m.parameters():
        assert p.dtype == np.float32 and np.all(p.data == 0.25)


def test_load_state_dict_strict_raises_naming_missing_and_unexpected_keys():
    m = Pair()
    sd = dict(m.state_dict())
    del sd["first.bias"]
    sd["first.gamma"] = np.zeros(4, dtype=np.float32)
    with pytest.raises(KeyError) as err:
        m.load_state_dict(sd)
    assert "missing keys: first.bias" in str(err.value)
    assert "unexpected keys: first.gamma" in str(err.value)


def test_load_state_dict_non_strict_loads_what_matches_and_returns_the_rest():
    m = Pair()
    sd = {"gain": np.full(4, 3.0, dtype=np.float32), "extra.weight": np.zeros(2, dtype=np.float32)}
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert missing == PAIR_NAMES[1:] and unexpected == ["extra.weight"]
    assert np.all(m.gain.data == 3.0)


@pytest.mark.parametrize("strict", [True, False])
def test_load_state_dict_wrong_shape_raises_naming_both_shapes_and_changes_nothing(strict):
    m = Pair()
    before = {k: v.copy() for k, v in m.state_dict().items()}
    sd = {k: v + 1.0 for k, v in m.state_dict().items()}
    sd["first.weight"] = np.zeros((3, 4), dtype=np.float32)       # transposed
    with pytest.raises(ValueError, match=r"first\.weight has shape \(3, 4\).*expects \(4, 3\)"):
        m.load_state_dict(sd, strict=strict)
    for k, v in m.state_dict().items():                 # checked before anything is copied
        np.testing.assert_array_equal(v, before[k])


def test_load_state_dict_ignores_the_books_mask_buffers_at_every_level():
    mask = np.triu(np.ones((6, 6), dtype=np.float32), 1)    # the book's register_buffer("mask", ...)
    mha = MultiHeadAttention(8, 8, 6, 0.0, 2)
    assert mha.load_state_dict({**mha.state_dict(), "mask": mask}) == ([], [])
    blk = TransformerBlock(CFG)
    assert blk.load_state_dict({**blk.state_dict(), "att.mask": mask}) == ([], [])
    with pytest.raises(KeyError, match=r"unexpected keys: ff\.mask"):   # only where the book has one
        blk.load_state_dict({**blk.state_dict(), "ff.mask": mask})


def test_train_and_eval_set_every_submodule_and_return_the_module():
    m = Pair()
    assert all(sub.training for sub in m.modules())
    assert m.eval() is m
    assert not any(sub.training for sub in m.modules())
    assert m.train() is m
    assert all(sub.training for sub in m.modules())
    m.train(False)
    assert not any(sub.training for sub in m.modules())


def test_zero_grad_sets_grads_to_none_or_fills_zeros_in_place():
    m = Pair()
    m(Tensor(randn(5, 3, dtype=np.float32))).sum().backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None for g in grads)
    m.zero_grad(set_to_none=False)
    for p, g in zip(m.parameters(), grads):
        assert p.grad is g and not g.any()
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_parameter_is_a_tensor_that_requires_grad():
    p = Parameter(np.zeros(3, dtype=np.float32))
    assert isinstance(p, Tensor) and p.requires_grad and repr(p).startswith("Parameter(")
    assert not Parameter(np.zeros(3), requires_grad=False).requires_grad


def test_module_repr_shows_the_tree():
    text = repr(Pair())
    assert "(first): Linear(in_features=3, out_features=4, bias=True)" in text
    assert "(inner): Sequential" in text and "(1): GELU()" in text


# ----------------------------------------------------------------------------- Linear, Embedding
def test_linear_computes_x_times_weight_transposed_plus_bias():
    lin = to_float64(Linear(5, 3))
    assert lin.weight.shape == (3, 5) and lin.bias.shape == (3,)        # (out, in), as PyTorch
    x = randn(2, 4, 5)
    np.testing.assert_allclose(lin(Tensor(x)).data, x @ lin.weight.data.T + lin.bias.data, rtol=1e-13)


def test_linear_without_bias_has_no_bias_parameter():
    lin = Linear(5, 3, bias=False)
    assert lin.bias is None and [n for n, _ in lin.named_parameters()] == ["weight"]
    x = randn(4, 5, dtype=np.float32)
    np.testing.assert_allclose(lin(Tensor(x)).data, x @ lin.weight.data.T, rtol=1e-6)


def test_linear_init_is_pytorchs_uniform_within_one_over_sqrt_in_features():
    manual_seed(0)
    lin = Linear(256, 512)
    bound = 1 / math.sqrt(256)
    for p in (lin.weight, lin.bias):
        assert p.dtype == np.float32
        assert np.abs(p.data).max() <= bound
    w = lin.weight.data.ravel().astype(np.float64)
    # U(-b, b): mean 0, std b/sqrt(3), fills the whole interval, flat histogram
    print(f"Linear weight: min {w.min():.5f} max {w.max():.5f} (bound {bound:.5f}), std {w.std():.5f}")
    assert abs(w.mean()) < 0.01 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.01 * bound
    assert w.min() < -0.99 * bound and w.max() > 0.99 * bound
    counts, _ = np.histogram(w, bins=10, range=(-bound, bound))
    assert np.all(np.abs(counts / (w.size / 10) - 1) < 0.05), counts
    b = lin.bias.data
    assert b.min() < -0.8 * bound and b.max() > 0.8 * bound          # the bias too, not zeros


def test_embedding_looks_up_rows_of_its_weight():
    emb = Embedding(7, 3)
    assert emb.weight.shape == (7, 3) and emb.weight.dtype == np.float32
    ids = np.array([[1, 6, 1], [0, 2, 5]])
    np.testing.assert_array_equal(emb(ids).data, emb.weight.data[ids])


def test_embedding_init_is_standard_normal():
    manual_seed(0)
    w = Embedding(1000, 200).weight.data.astype(np.float64).ravel()
    print(f"Embedding weight: mean {w.mean():.4f} std {w.std():.4f}")
    assert abs(w.mean()) < 0.01 and abs(w.std() - 1) < 0.01
    assert abs(np.mean(np.abs(w) < 1) - 0.6827) < 0.01                # normal, not uniform
    assert abs(np.mean(np.abs(w) < 2) - 0.9545) < 0.005


def test_embedding_gradient_adds_up_repeated_ids():
    emb = Embedding(5, 2)
    out = emb(np.array([[1, 3, 1, 1]]))
    out.backward(np.arange(8, dtype=np.float32).reshape(1, 4, 2))
    expected = np.zeros((5, 2), dtype=np.float32)
    expected[1] = [0 + 4 + 6, 1 + 5 + 7]
    expected[3] = [2, 3]
    np.testing.assert_array_equal(emb.weight.grad, expected)


# ----------------------------------------------------------------------------- LayerNorm, GELU, Dropout
def test_layernorm_has_scale_ones_and_shift_zeros():
    ln = LayerNorm(6)
    assert [n for n, _ in ln.named_parameters()] == ["scale", "shift"]
    assert np.all(ln.scale.data == 1) and np.all(ln.shift.data == 0)
    assert ln.scale.dtype == ln.shift.dtype == np.float32 and ln.eps == 1e-5


def test_layernorm_matches_the_books_formula_with_biased_variance():
    ln = to_float64(LayerNorm(6))
    ln.scale.data[:] = randn(6, seed=1)
    ln.shift.data[:] = randn(6, seed=2)
    x = randn(3, 4, 6) * 3 + 1
    np.testing.assert_allclose(ln(Tensor(x)).data, np_layer_norm(x, ln.scale.data, ln.shift.data),
                               rtol=1e-12, atol=1e-12)


def test_gelu_module_is_the_tanh_approximation():
    x = np.linspace(-6, 6, 101)
    np.testing.assert_allclose(GELU()(Tensor(x)).data, np_gelu(x), rtol=1e-12, atol=1e-15)
    assert GELU()(Tensor(x.astype(np.float32))).dtype == np.float32


def test_dropout_zeroes_about_p_and_scales_the_rest_by_one_over_one_minus_p():
    manual_seed(0)
    drop = Dropout(0.25)
    x = Tensor(np.ones((200, 100), dtype=np.float32))
    y = drop(x).data
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs(np.mean(y == 0) - 0.25) < 0.01
    assert y.dtype == np.float32


def test_dropout_is_the_identity_in_eval_mode_and_at_p_zero():
    x = Tensor(randn(4, 5, dtype=np.float32))
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0)(x) is x


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_rejects_a_probability_outside_0_1_when_built(p):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Dropout(p)


def test_dropout_masks_repeat_after_manual_seed():
    x = Tensor(np.ones((10, 10), dtype=np.float32))
    manual_seed(7)
    a = Dropout(0.5)(x).data
    b = Dropout(0.5)(x).data                            # the generator moved on: a new mask
    manual_seed(7)
    c = Dropout(0.5)(x).data
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a, b)


def test_dropout_backward_uses_the_forward_mask():
    manual_seed(3)
    x = Tensor(randn(6, 7), requires_grad=True)
    y = Dropout(0.5)(x)
    y.backward(np.ones(y.shape))
    np.testing.assert_array_equal(x.grad, y.data / x.data)           # the same zeros and scale


# ----------------------------------------------------------------------------- FeedForward
def test_feedforward_is_linear_gelu_linear_with_a_4x_expansion():
    ff = to_float64(FeedForward(CFG))
    assert [(n, p.shape) for n, p in ff.named_parameters()] == [
        ("layers.0.weight", (32, 8)), ("layers.0.bias", (32,)),
        ("layers.2.weight", (8, 32)), ("layers.2.bias", (8,))]
    assert isinstance(ff.layers[1], GELU)
    x = randn(2, 3, 8)
    expected = np_linear(np_gelu(np_linear(x, ff.layers[0])), ff.layers[2])
    np.testing.assert_allclose(ff(Tensor(x)).data, expected, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- MultiHeadAttention
def test_multihead_attention_has_the_books_parameter_names():
    with_bias = MultiHeadAttention(8, 8, 6, 0.0, 2, qkv_bias=True)
    assert [(n, p.shape) for n, p in with_bias.named_parameters()] == [
        ("W_query.weight", (8, 8)), ("W_query.bias", (8,)), ("W_key.weight", (8, 8)), ("W_key.bias", (8,)),
        ("W_value.weight", (8, 8)), ("W_value.bias", (8,)), ("out_proj.weight", (8, 8)), ("out_proj.bias", (8,))]
    without = MultiHeadAttention(8, 8, 6, 0.0, 2)                      # qkv_bias=False, the default
    assert [n for n, _ in without.named_parameters()] == [
        "W_query.weight", "W_key.weight", "W_value.weight", "out_proj.weight", "out_proj.bias"]
    assert isinstance(without.dropout, Dropout) and without.head_dim == 4


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_multihead_attention_matches_the_books_causal_formula(qkv_bias):
    manual_seed(1)
    mha = to_float64(MultiHeadAttention(8, 12, 6, 0.0, 3, qkv_bias=qkv_bias))
    x = randn(2, 5, 8)
    out = mha(Tensor(x)).data
    assert out.shape == (2, 5, 12)
    err = np.abs(out - np_mha(x, mha)).max()
    print(f"MHA vs the book's formula (qkv_bias={qkv_bias}): max |diff| {err:.2e}")
    assert err < 1e-12


def test_multihead_attention_is_causal_future_tokens_change_no_earlier_output():
    mha = to_float64(MultiHeadAttention(8, 8, 6, 0.0, 2)).eval()
    x = randn(1, 6, 8)
    x2 = x.copy()
    x2[:, 4:] = randn(1, 2, 8, seed=9)                  # change tokens 4 and 5 only
    a, b = mha(Tensor(x)).data, mha(Tensor(x2)).data
    np.testing.assert_array_equal(a[:, :4], b[:, :4])
    assert np.abs(a[:, 4:] - b[:, 4:]).min() > 0


def test_multihead_attention_dropout_masks_attention_weights_not_channels():
    # v = 1 for every token (zero W_value, bias 1) and out_proj = identity: the output is then
    # sum_j dropout(att)_ij per head. Without dropout that is exactly 1. With dropout on the
    # attention weights it is one number per (row, head), the same in all D channels of the
    # head; token 0 attends only to itself, so it is 0 or 1/(1-p).
    p = 0.5
    mha = MultiHeadAttention(8, 8, 6, p, 2, qkv_bias=True)
    mha.W_value.weight.data[:] = 0
    mha.W_value.bias.data[:] = 1
    mha.out_proj.weight.data[:] = np.eye(8, dtype=np.float32)
    mha.out_proj.bias.data[:] = 0
    x = Tensor(randn(64, 6, 8, dtype=np.float32))
    np.testing.assert_allclose(mha.eval()(x).data, 1.0, rtol=1e-6)
    manual_seed(0)
    heads = mha.train()(x).data.reshape(64, 6, 2, 4)    # (B, T, H, D)
    np.testing.assert_allclose(heads, heads[..., :1].repeat(4, axis=-1), rtol=1e-6)
    first = heads[:, 0, :, 0]                           # (B, H)
    assert set(np.round(np.unique(first), 5)) == {0.0, 2.0}
    assert 0.3 < np.mean(first == 0) < 0.7
    assert not np.allclose(heads, 1.0)


def test_multihead_attention_dropout_is_reproducible_and_off_in_eval():
    mha = MultiHeadAttention(8, 8, 6, 0.3, 2)
    x = Tensor(randn(2, 6, 8, dtype=np.float32))
    manual_seed(4)
    a = mha(x).data
    manual_seed(4)
    b = mha(x).data
    np.testing.assert_array_equal(a, b)
    c, d = mha.eval()(x).data, mha(x).data
    np.testing.assert_array_equal(c, d)
    assert not np.allclose(a, c)


def test_multihead_attention_rejects_d_out_not_divisible_by_num_heads():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(8, 10, 6, 0.0, 4)


# ----------------------------------------------------------------------------- TransformerBlock
def test_transformer_block_has_the_books_parameter_names():
    names = [n for n, _ in TransformerBlock(CFG).named_parameters()]
    assert names == [
        "att.W_query.weight", "att.W_query.bias", "att.W_key.weight", "att.W_key.bias",
        "att.W_value.weight", "att.W_value.bias", "att.out_proj.weight", "att.out_proj.bias",
        "ff.layers.0.weight", "ff.layers.0.bias", "ff.layers.2.weight", "ff.layers.2.bias",
        "norm1.scale", "norm1.shift", "norm2.scale", "norm2.shift"]


def test_transformer_block_is_pre_norm_with_two_shortcuts():
    manual_seed(2)
    blk = to_float64(TransformerBlock(CFG))
    for ln in (blk.norm1, blk.norm2):                   # non-trivial norms
        ln.scale.data[:] = 1 + 0.1 * randn(8, seed=3)
        ln.shift.data[:] = 0.1 * randn(8, seed=4)
    x = randn(2, 6, 8)
    h = x + np_mha(np_layer_norm(x, blk.norm1.scale.data, blk.norm1.shift.data), blk.att)
    ff = blk.ff.layers
    n2 = np_layer_norm(h, blk.norm2.scale.data, blk.norm2.shift.data)
    expected = h + np_linear(np_gelu(np_linear(n2, ff[0])), ff[2])
    err = np.abs(blk(Tensor(x)).data - expected).max()
    print(f"TransformerBlock vs the book's formula: max |diff| {err:.2e}")
    assert err < 1e-12


def test_transformer_block_backward_reaches_every_parameter_and_the_input():
    blk = TransformerBlock({**CFG, "drop_rate": 0.1})
    x = Tensor(randn(2, 6, 8, dtype=np.float32), requires_grad=True)
    manual_seed(0)
    blk(x).sum().backward()
    assert x.grad.shape == x.shape
    for name, p in blk.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape and p.grad.dtype == np.float32, name
        assert np.isfinite(p.grad).all() and np.abs(p.grad).max() > 0, name


def test_no_grad_forward_records_no_graph():
    blk = TransformerBlock(CFG)
    with no_grad():
        y = blk(Tensor(randn(1, 6, 8, dtype=np.float32)))
    assert not y.requires_grad and y._ctx is None


# ----------------------------------------------------------------------------- module scope and hooks
def test_module_stack_names_the_running_modules_as_named_modules_does():
    from tinygrad_gpt import nn as nn_module
    from tinygrad_gpt.model import GPTModel, get_config
    from tinygrad_gpt.tensor import register_forward_hook
    cfg = get_config("tiny")
    cfg["context_length"] = 8
    model = GPTModel(cfg)
    seen = []                                              # (op, innermost module name, stack names)

    def hook(ctx, inputs, out):
        stack = nn_module.module_stack()
        seen.append((ctx.name, stack[-1][0] if stack else None, [n for n, _ in stack]))

    with register_forward_hook(hook):
        model(np.zeros((1, 8), dtype=np.int64))
    ops = {(op, name) for op, name, _ in seen}
    names = {n for n, _ in model.named_modules()}
    assert ("Linear", "trf_blocks.0.att.W_query") in ops
    assert ("LayerNorm", "trf_blocks.1.norm2") in ops
    assert ("GELU", "trf_blocks.0.ff.layers.1") in ops
    assert ("Linear", "out_head") in ops
    assert all(name in names for _, name, _ in seen)
    # GPTModel.forward walks its blocks itself (each takes its layer of the KV cache), so the
    # Sequential trf_blocks is not running; its child is still named as named_modules names it
    assert ["", "trf_blocks.0", "trf_blocks.0.att", "trf_blocks.0.att.W_query"] in \
        [stack for op, name, stack in seen if name == "trf_blocks.0.att.W_query"]
    assert nn_module.module_stack() == [] and nn_module.current_module() == (None, None)


def test_module_hooks_see_args_and_output_and_are_removed_by_their_handles():
    from tinygrad_gpt.nn import Linear, Sequential, register_module_forward_hook
    seq = Sequential(Linear(3, 2), Linear(2, 1))
    x = Tensor(np.ones((4, 3), dtype=np.float32))
    calls = []
    pre = seq.register_forward_pre_hook(lambda m, args: calls.append(("pre", type(m).__name__, args[0].shape)))
    post = seq[1].register_forward_hook(lambda m, args, out: calls.append(("post", args[0].shape, out.shape)))
    every = register_module_forward_hook(lambda m, args, out: calls.append(("any", type(m).__name__)))
    seq(x)
    assert calls == [("pre", "Sequential", (4, 3)), ("any", "Linear"), ("any", "Linear"),
                     ("post", (4, 2), (4, 1)), ("any", "Sequential")]   # global hooks first, as torch
    for h in (pre, post, every):
        h.remove()
    calls.clear()
    seq(x)
    assert calls == []
    assert "_hooks" not in dict(seq.named_parameters())   # the hook lists are not parameters


def test_module_scope_is_unwound_when_a_forward_raises():
    from tinygrad_gpt import nn as nn_module
    lin = nn_module.Linear(3, 2)
    with pytest.raises(Exception):
        lin(Tensor(np.ones((4, 5), dtype=np.float32)))
    assert nn_module.module_stack() == []
