"""GPTModel, its configs and generate_text_simple, against the book's chapter 4.

The 124M model is built for real once (context 256, ~3 s, 650 MB); every other check of the
big configs uses `shapes_only`, which makes parameters zero-stride views so that names,
shapes and counts of 124M..1558M cost no memory. The comparison with the book's PyTorch
GPTModel builds it on torch's "meta" device, for the same reason.
"""
import importlib
import re

import numpy as np
import pytest

import tinygrad_gpt.functional as F
from tinygrad_gpt import GPTModel, Tensor, generate_text_simple, get_config, manual_seed, nn, no_grad
from tinygrad_gpt.gradcheck import GradcheckError, compare_gradients, gradcheck
from tinygrad_gpt.model import CONFIGS

from helpers import MICRO, micro_model, require

gradcheck_module = importlib.import_module("tinygrad_gpt.gradcheck")   # the package's
# attribute `tinygrad_gpt.gradcheck` is the function, which shadows the module of that name


# the book's names and shapes for GPT_CONFIG_124M (ch04), a few of each kind
BOOK_124M_SHAPES = {
    "tok_emb.weight": (50257, 768),
    "pos_emb.weight": (1024, 768),
    "trf_blocks.0.att.W_query.weight": (768, 768),
    "trf_blocks.0.att.W_key.weight": (768, 768),
    "trf_blocks.0.att.W_value.weight": (768, 768),
    "trf_blocks.0.att.out_proj.weight": (768, 768),
    "trf_blocks.0.att.out_proj.bias": (768,),
    "trf_blocks.0.ff.layers.0.weight": (3072, 768),
    "trf_blocks.0.ff.layers.0.bias": (3072,),
    "trf_blocks.0.ff.layers.2.weight": (768, 3072),
    "trf_blocks.0.ff.layers.2.bias": (768,),
    "trf_blocks.0.norm1.scale": (768,),
    "trf_blocks.11.norm2.shift": (768,),
    "final_norm.scale": (768,),
    "final_norm.shift": (768,),
    "out_head.weight": (50257, 768),
}
BLOCK_NAMES = ["att.W_query.weight", "att.W_key.weight", "att.W_value.weight", "att.out_proj.weight",
               "att.out_proj.bias", "ff.layers.0.weight", "ff.layers.0.bias", "ff.layers.2.weight",
               "ff.layers.2.bias", "norm1.scale", "norm1.shift", "norm2.scale", "norm2.shift"]


def ids(shape, vocab=11, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, shape)


@pytest.fixture
def shapes_only(monkeypatch):
    """Build models whose parameters are zero-stride views: names, shapes and counts only."""
    class NoRandom:
        def standard_normal(self, shape, dtype=np.float64):
            return np.broadcast_to(np.zeros((), dtype=dtype), shape)

    monkeypatch.setattr(nn, "_uniform", lambda shape, bound, rng=None: np.broadcast_to(np.float32(0), shape))
    monkeypatch.setattr(nn, "default_rng", lambda: NoRandom())


@pytest.fixture(scope="module")
def gpt124m_256():
    """The 124M architecture at the book's chapter-5 context of 256, built once for this module."""
    cfg = get_config("124M")
    cfg["context_length"] = 256
    manual_seed(123)
    model = GPTModel(cfg)
    yield model
    model.zero_grad()


def book_meta_model(cfg):
    torch = require("torch")
    ch04 = require("llms_from_scratch.ch04")
    with torch.device("meta"):                           # shapes without memory
        return ch04.GPTModel(cfg)


# ----------------------------------------------------------------------------- configs
def test_get_config_returns_a_fresh_copy_each_time():
    cfg = get_config("124M")
    cfg["emb_dim"] = 1
    assert get_config("124M")["emb_dim"] == 768
    assert CONFIGS["124M"]["emb_dim"] == 768
    assert get_config("tiny") is not get_config("tiny")


@pytest.mark.parametrize("name, emb_dim, n_layers, n_heads", [
    ("124M", 768, 12, 12), ("355M", 1024, 24, 16), ("774M", 1280, 36, 20), ("1558M", 1600, 48, 25)])
def test_configs_have_the_books_gpt2_sizes(name, emb_dim, n_layers, n_heads):
    cfg = get_config(name)
    assert cfg == {"vocab_size": 50257, "context_length": 1024, "emb_dim": emb_dim, "n_heads": n_heads,
                   "n_layers": n_layers, "drop_rate": 0.1, "qkv_bias": False}


def test_tiny_config_is_small_and_complete():
    cfg = get_config("tiny")
    assert set(cfg) == set(get_config("124M"))
    assert cfg["emb_dim"] % cfg["n_heads"] == 0 and cfg["emb_dim"] < 768 and cfg["n_layers"] < 12


def test_get_config_unknown_name_lists_the_choices():
    with pytest.raises(KeyError, match="tiny, 124M, 355M, 774M, 1558M"):
        get_config("gpt5")


def test_gpt_model_rejects_an_incomplete_or_inconsistent_config():
    cfg = dict(MICRO)
    del cfg["qkv_bias"]
    with pytest.raises(KeyError, match="qkv_bias"):
        GPTModel(cfg)
    with pytest.raises(ValueError, match="not divisible"):
        GPTModel({**MICRO, "n_heads": 3})


# ----------------------------------------------------------------------------- seeds
def test_manual_seed_makes_initialisation_reproducible():
    a, b, c = micro_model(seed=5), micro_model(seed=5), micro_model(seed=6)
    for (name, p), (_, q), (_, r) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    assert not np.array_equal(a.tok_emb.weight.data, c.tok_emb.weight.data)
    assert not np.array_equal(a.trf_blocks[1].ff.layers[0].weight.data, c.trf_blocks[1].ff.layers[0].weight.data)


def test_manual_seed_makes_dropout_reproducible_and_eval_turns_it_off():
    model = micro_model(drop_rate=0.3)
    x = ids((2, 6))
    manual_seed(11)
    a = model(x).data
    b = model(x).data
    manual_seed(11)
    c = model(x).data
    np.testing.assert_array_equal(a, c)
    assert not np.allclose(a, b)
    model.eval()
    no_drop = micro_model(drop_rate=0.0)
    no_drop.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(model(x).data, model(x).data)
    np.testing.assert_array_equal(model(x).data, no_drop(x).data)


# ----------------------------------------------------------------------------- forward
def test_forward_maps_integer_ids_b_t_to_float32_logits_b_t_v():
    model = micro_model()
    x = ids((3, 5))
    logits = model(x)
    assert logits.shape == (3, 5, 11) and logits.dtype == np.float32
    for same in (x.tolist(), x.astype(np.int32), Tensor(x)):
        np.testing.assert_array_equal(model(same).data, logits.data)


def test_forward_rejects_wrong_rank_and_too_many_tokens():
    model = micro_model()
    with pytest.raises(ValueError, match=r"\(batch, tokens\)"):
        model(np.arange(4))
    with pytest.raises(ValueError, match="7 tokens exceed the model's context length 6"):
        model(ids((1, 7)))
    with pytest.raises(IndexError):
        model(np.array([[0, 11]]))
    with pytest.raises(TypeError):
        model(np.zeros((1, 2)))                         # float ids


def test_each_position_sees_only_the_tokens_before_it():
    model = micro_model().eval()
    x = ids((1, 6))
    y = x.copy()
    y[0, 3:] = (y[0, 3:] + 1) % 11
    a, b = model(x).data, model(y).data
    np.testing.assert_array_equal(a[:, :3], b[:, :3])
    assert not np.allclose(a[:, 3:], b[:, 3:])
    np.testing.assert_allclose(model(x[:, :4]).data, a[:, :4], rtol=1e-5, atol=1e-6)


def test_last_only_gives_the_last_row_of_the_full_forward():
    model = micro_model().eval()
    x = ids((2, 6))
    last = model(x, last_only=True)
    assert last.shape == (2, 1, 11)
    np.testing.assert_allclose(last.data, model(x).data[:, -1:], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- gradient check
def micro_float64_loss():
    """The micro GPT in float64 and a function of its parameters: the cross-entropy loss."""
    model = micro_model(seed=0)
    for p in model.parameters():
        p.data = p.data.astype(np.float64)
    x, y = ids((2, 6), seed=1), ids((2, 6), seed=2)
    return model, (lambda *params: F.cross_entropy(model(x), y))


def test_whole_micro_gpt_passes_the_float64_gradient_check_on_every_parameter(monkeypatch, numpy_kernels):
    model, loss = micro_float64_loss()
    params = model.parameters()
    assert sum(p.size for p in params) == 1984 and all(p.dtype == np.float64 for p in params)
    seen = []                                            # gradcheck's own comparisons, to print

    def recording(*args, **kwargs):
        seen.extend(compare_gradients(*args, **kwargs))
        return seen

    monkeypatch.setattr(gradcheck_module, "compare_gradients", recording)
    assert gradcheck(loss, params)
    assert [i for i, _, _ in seen] == list(range(len(params)))
    worst_abs = worst_rel = 0.0
    names = [n for n, _ in model.named_parameters()]
    worst_name = None
    for i, analytic, numeric in seen:
        # floor 1e-6: the key biases' gradient is exactly zero (softmax ignores a shift q.b)
        rel = float(np.abs(analytic - numeric).max() / max(np.abs(numeric).max(), 1e-6))
        worst_abs = max(worst_abs, float(np.abs(analytic - numeric).max()))
        if rel > worst_rel:
            worst_rel, worst_name = rel, names[i]
    print(f"micro GPT gradcheck: worst |analytic - numeric| {worst_abs:.2e}, "
          f"worst relative to the tensor's max {worst_rel:.2e} ({worst_name})")
    assert worst_rel < 1e-6


def test_gradient_check_of_the_whole_gpt_fails_when_gelu_backward_is_wrong(monkeypatch, numpy_kernels):
    model, loss = micro_float64_loss()
    inputs = [model.trf_blocks[0].ff.layers[0].bias, model.trf_blocks[1].att.W_query.weight]
    assert gradcheck(loss, inputs)

    def gelu_backward_without_the_tanh_derivative(ctx, grad):   # a plausible slip
        x, = ctx.saved
        return grad * 0.5 * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))

    monkeypatch.setattr(F.GELU, "backward", gelu_backward_without_the_tanh_derivative)
    with pytest.raises(GradcheckError, match="analytic .* numeric"):
        gradcheck(loss, inputs)


# ----------------------------------------------------------------------------- the book's layout
def test_124m_has_the_books_parameter_names_and_shapes(shapes_only):
    model = GPTModel(get_config("124M"))
    shapes = {n: p.shape for n, p in model.named_parameters()}
    for name, shape in BOOK_124M_SHAPES.items():
        assert shapes[name] == shape, name
    expected = (["tok_emb.weight", "pos_emb.weight"]
                + [f"trf_blocks.{i}.{n}" for i in range(12) for n in BLOCK_NAMES]
                + ["final_norm.scale", "final_norm.shift", "out_head.weight"])
    assert list(shapes) == expected
    assert all(p.dtype == np.float32 for p in model.parameters())


def test_124m_names_and_shapes_equal_the_book_torch_state_dict_without_masks(shapes_only):
    book = book_meta_model(get_config("124M"))
    book_shapes = [(k, tuple(v.shape)) for k, v in book.state_dict().items() if not k.endswith("att.mask")]
    ours = [(k, v.shape) for k, v in GPTModel(get_config("124M")).state_dict().items()]
    assert ours == book_shapes                          # same names, shapes and order
    masks = [k for k in book.state_dict() if k.endswith("att.mask")]
    assert len(masks) == 12


@pytest.mark.parametrize("name", ["124M", "355M", "774M", "1558M"])
def test_parameter_count_of_each_config_equals_the_book_torch_model(name, shapes_only):
    book = book_meta_model(get_config(name))
    assert GPTModel(get_config(name)).num_parameters() == sum(p.numel() for p in book.parameters())


def test_124m_parameter_counts_untied_and_tied_at_context_1024(shapes_only):
    model = GPTModel(get_config("124M"))
    total = model.num_parameters()
    assert total == 163_009_536
    assert total - model.out_head.weight.size == 124_412_160     # the book's "124M": head tied to tok_emb


def summary_numbers(text):
    """{row name: parameter count} from model.summary()."""
    rows = {}
    for line in text.splitlines()[1:]:
        m = re.match(r"^(.*?)\s{2,}.*?([\d,]+)$", line.strip())
        rows[m.group(1).strip()] = int(m.group(2).replace(",", ""))
    return rows


@pytest.mark.parametrize("name", ["124M", "1558M"])
def test_summary_rows_add_up_to_the_total(name, shapes_only):
    model = GPTModel(get_config(name))
    text = model.summary()
    print(text)
    rows = summary_numbers(text)
    L = get_config(name)["n_layers"]
    per_block = [v for k, v in rows.items() if k.startswith(("attention", "feed-forward", "two layer"))]
    assert len(per_block) == 5
    assert sum(per_block) == rows[f"transformer block (x {L})"]
    assert rows[f"all {L} blocks"] == L * rows[f"transformer block (x {L})"]
    parts = ["token embedding", "positional embedding", f"all {L} blocks", "final layer norm",
             "output head (untied)"]
    assert sum(rows[k] for k in parts) == rows["total"] == model.num_parameters()
    assert rows["total with the head tied to tok_emb"] == rows["total"] - rows["output head (untied)"]
    if name == "124M":
        assert rows["total"] == 163_009_536 and rows["total with the head tied to tok_emb"] == 124_412_160


def test_summary_counts_qkv_biases():
    rows = summary_numbers(micro_model().summary())
    assert rows["attention query/key/value"] == 3 * (8 * 8 + 8)
    assert rows["total"] == micro_model().num_parameters()


def test_124m_at_context_256_has_162419712_parameters(gpt124m_256):
    assert gpt124m_256.num_parameters() == 162_419_712
    assert summary_numbers(gpt124m_256.summary())["total"] == 162_419_712
    assert gpt124m_256.pos_emb.weight.shape == (256, 768)


def test_124m_forward_backward_at_context_256_gives_every_parameter_a_gradient(gpt124m_256):
    model = gpt124m_256.train()
    x = ids((1, 16), vocab=50257, seed=1)
    y = ids((1, 16), vocab=50257, seed=2)
    manual_seed(0)
    logits = model(x)
    assert logits.shape == (1, 16, 50257) and logits.dtype == np.float32
    loss = F.cross_entropy(logits, y)
    print(f"124M loss at init: {loss.item():.4f} (ln 50257 = {np.log(50257):.4f})")
    assert 10.0 < loss.item() < 12.0                    # near-uniform predictions at init
    model.zero_grad()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.shape == p.shape and p.grad.dtype == np.float32, name
        assert np.isfinite(p.grad.sum(dtype=np.float64)) and p.grad.any(), name   # one pass each
    # rows of tokens and positions never used get nothing
    np.testing.assert_array_equal(np.flatnonzero(model.tok_emb.weight.grad.any(axis=1)), np.unique(x))
    np.testing.assert_array_equal(np.flatnonzero(model.pos_emb.weight.grad.any(axis=1)), np.arange(16))
    model.zero_grad()


# ----------------------------------------------------------------------------- loading state dicts
def with_book_masks(state_dict, n_layers, context_length):
    """What the book's PyTorch model exports: our keys plus a causal-mask buffer per block."""
    sd = dict(state_dict)
    mask = np.triu(np.ones((context_length, context_length), dtype=np.float32), 1)
    for i in range(n_layers):
        sd[f"trf_blocks.{i}.att.mask"] = mask
    return sd


def test_load_state_dict_accepts_and_ignores_the_books_att_mask_buffers():
    src, dst = micro_model(seed=1), micro_model(seed=2)
    sd = with_book_masks({k: v.copy() for k, v in src.state_dict().items()}, 2, 6)
    assert dst.load_state_dict(sd) == ([], [])
    assert not any("mask" in n for n, _ in dst.named_parameters())
    with pytest.raises(KeyError, match=r"unexpected keys: trf_blocks\.2\.att\.mask"):   # no block 2
        dst.load_state_dict({**sd, "trf_blocks.2.att.mask": sd["trf_blocks.0.att.mask"]})
    x = ids((2, 6))
    np.testing.assert_array_equal(dst.eval()(x).data, src.eval()(x).data)


def test_load_state_dict_names_missing_unexpected_and_misshaped_entries():
    model = micro_model()
    sd = with_book_masks(model.state_dict(), 2, 6)
    missing = {k: v for k, v in sd.items() if k != "trf_blocks.1.ff.layers.2.bias"}
    with pytest.raises(KeyError, match=r"missing keys: trf_blocks\.1\.ff\.layers\.2\.bias"):
        model.load_state_dict(missing)
    unexpected = {**sd, "trf_blocks.0.att.W_query.bias_extra": np.zeros(8, np.float32)}
    with pytest.raises(KeyError, match=r"unexpected keys: trf_blocks\.0\.att\.W_query\.bias_extra"):
        model.load_state_dict(unexpected)
    misshaped = {**sd, "out_head.weight": np.zeros((8, 11), np.float32)}
    with pytest.raises(ValueError, match=r"out_head\.weight has shape \(8, 11\).*expects \(11, 8\)"):
        model.load_state_dict(misshaped)
    assert model.load_state_dict(missing, strict=False) == (["trf_blocks.1.ff.layers.2.bias"], [])


def test_load_state_dict_into_a_smaller_context_names_pos_emb():
    big = GPTModel({**MICRO, "context_length": 8})
    with pytest.raises(ValueError, match=r"pos_emb\.weight has shape \(8, 8\).*expects \(6, 8\)"):
        micro_model().load_state_dict(big.state_dict())


# ----------------------------------------------------------------------------- generate_text_simple
def greedy_by_full_forward(model, idx, max_new_tokens, context_size):
    """The book's loop: full forward of the cropped context, argmax of the last row."""
    idx = np.array(idx)
    for _ in range(max_new_tokens):
        with no_grad():
            logits = model(idx[:, -context_size:]).data
        idx = np.concatenate([idx, logits[:, -1].argmax(-1)[:, None]], axis=1)
    return idx


def test_generate_text_simple_appends_max_new_tokens_and_keeps_the_prompt():
    model = micro_model().eval()
    prompt = ids((2, 3), seed=4)
    out = generate_text_simple(model, prompt, max_new_tokens=5, context_size=6)
    assert out.shape == (2, 8) and np.issubdtype(out.dtype, np.integer)
    np.testing.assert_array_equal(out[:, :3], prompt)
    assert generate_text_simple(model, prompt, 0, 6).shape == (2, 3)


def test_generate_text_simple_is_greedy_the_argmax_of_the_full_forward_at_each_step():
    model = micro_model(seed=3).eval()
    prompt = ids((2, 4), seed=5)
    out = generate_text_simple(model, prompt, max_new_tokens=9, context_size=6)
    np.testing.assert_array_equal(out, greedy_by_full_forward(model, prompt, 9, 6))


def test_generate_text_simple_crops_the_input_to_context_size():
    model = micro_model().eval()
    seen = []

    def spy(idx, **kwargs):
        seen.append(idx.shape[1])
        return model(idx, **kwargs)

    prompt = ids((1, 4))
    out = generate_text_simple(spy, prompt, max_new_tokens=6, context_size=5)
    assert seen == [4, 5, 5, 5, 5, 5]
    np.testing.assert_array_equal(out, greedy_by_full_forward(model, prompt, 6, 5))


def test_generate_text_simple_records_no_graph():
    model = micro_model().eval()
    seen = []

    def spy(idx, **kwargs):
        out = model(idx, **kwargs)
        seen.append(out.requires_grad)
        return out

    generate_text_simple(spy, ids((1, 2)), 3, 6)
    assert seen == [False, False, False]
    assert all(p.grad is None for p in model.parameters())
