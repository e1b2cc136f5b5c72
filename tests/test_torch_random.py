"""PyTorch's CPU random stream in the shim (tinygrad_gpt/torch/random.py): after the same
torch.manual_seed, the same numbers as real PyTorch, compared as arrays for equality (not
closeness). A reference test: it needs torch (skipped without it, a failure under
TINYGRAD_GPT_REQUIRE_REFERENCE=1)."""
import math

import numpy as np
import pytest
from helpers import require

import tinygrad_gpt.torch as shim
from tinygrad_gpt.torch import random as R
from tinygrad_gpt.torch.binding import load_book_module

torch = require("torch")


def equal(ours, theirs, what):
    ours = ours.data if hasattr(ours, "data") and not isinstance(ours, np.ndarray) else ours
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs torch's {theirs.shape}"
    bad = int((ours != theirs).sum())
    print(f"{what}: {theirs.size} values, {bad} differ")
    assert bad == 0, f"{what}: {bad} of {theirs.size} values differ from torch's"


def both(seed):
    torch.manual_seed(seed)
    shim.manual_seed(seed)


def test_the_starting_fact_uniform_is_the_low_24_bits_of_numpys_legacy_mersenne_twister():
    both(123)
    words = np.random.RandomState(123).randint(0, 2 ** 32, size=8, dtype=np.uint64)
    expected = (words & 0xFFFFFF).astype(np.float64) / 2 ** 24
    equal(shim.empty(8).uniform_(), torch.empty(8).uniform_(), "empty(8).uniform_()")
    assert np.array_equal(torch.empty(0).numpy(), np.empty(0))
    torch.manual_seed(123)
    np.testing.assert_array_equal(torch.empty(8).uniform_().numpy(), expected.astype(np.float32))


@pytest.mark.parametrize("seed", [0, 123, 2 ** 40 + 7])
def test_uniform_rand_and_kaiming_bounds_are_torchs(seed):
    both(seed)
    equal(shim.rand(3, 5), torch.rand(3, 5), "rand")
    equal(shim.empty(1000).uniform_(-0.036, 0.036), torch.empty(1000).uniform_(-0.036, 0.036), "uniform_(-b, b)")
    equal(shim.empty(7, dtype=shim.float64).uniform_(), torch.empty(7, dtype=torch.float64).uniform_(), "float64")
    equal(shim.rand(2), torch.rand(2), "the stream after them")


@pytest.mark.parametrize("n", [1, 5, 15, 16, 17, 37, 64, 1000, 1 << 20])
def test_normal_is_torchs_for_every_size_the_16_wide_path_its_tail_and_the_cached_scalar_path(n):
    """n >= 16: every element drawn, then 16-wide Box-Muller with avx_mathfun's log and
    sincos (the AVX2 kernel x86 builds run), an unaligned tail redrawn; n < 16: the double
    Box-Muller whose second half waits in the generator."""
    both(n)
    equal(shim.randn(n), torch.randn(n), f"randn({n})")
    equal(shim.empty(n).normal_(0.5, 2.0), torch.empty(n).normal_(0.5, 2.0), f"normal_(0.5, 2) of {n}")
    equal(shim.randn(3), torch.randn(3), "the stream after them (a cached half included)")


def test_normal_float64_is_torchs():
    both(5)
    equal(shim.empty(40, dtype=shim.float64).normal_(), torch.empty(40, dtype=torch.float64).normal_(), "float64")
    equal(shim.randn(2), torch.randn(2), "after")


def test_integers_randint_random_and_randperm_are_torchs():
    both(7)
    equal(shim.randint(0, 50257, (100,)), torch.randint(0, 50257, (100,)), "randint")
    equal(shim.randint(10, (3, 4)), torch.randint(10, (3, 4)), "randint(high, size)")
    equal(shim.randint(0, 2 ** 40, (5,)), torch.randint(0, 2 ** 40, (5,)), "randint with a range >= 2^32")
    equal(shim.empty(5, dtype=shim.int64).random_(), torch.empty(5, dtype=torch.int64).random_(), "random_()")
    for n in (1, 2, 10, 333):
        equal(shim.randperm(n), torch.randperm(n), f"randperm({n})")
    g, tg = shim.Generator().manual_seed(99), torch.Generator().manual_seed(99)
    equal(shim.randperm(50, generator=g), torch.randperm(50, generator=tg), "randperm(generator=)")


def test_exponential_and_multinomial_draw_torchs_tokens():
    both(11)
    equal(shim.empty(2000, dtype=shim.float64).exponential_(), torch.empty(2000, dtype=torch.float64).exponential_(),
          "exponential_ (float64)")
    probs = np.random.default_rng(0).dirichlet(np.ones(50257) * 0.05, size=4).astype(np.float32)
    for k in range(5):
        equal(shim.multinomial(shim.tensor(probs), 1), torch.multinomial(torch.tensor(probs), 1), f"multinomial {k}")
    equal(shim.multinomial(shim.tensor(probs[:, :30]), 5), torch.multinomial(torch.tensor(probs[:, :30]), 5),
          "multinomial without replacement, 5 samples")


def test_bernoulli_and_dropout_masks_are_torchs():
    both(21)
    equal(shim.empty(100000).bernoulli_(0.9), torch.empty(100000).bernoulli_(0.9), "bernoulli_(0.9)")
    x = np.random.default_rng(1).standard_normal((4, 8, 64)).astype(np.float32)
    drop, tdrop = shim.nn.Dropout(0.1), torch.nn.Dropout(0.1)
    equal(drop(shim.tensor(x)), tdrop(torch.tensor(x)), "nn.Dropout(0.1) in training: mask and scale")
    equal(shim.nn.functional.dropout(shim.tensor(x), 0.5), torch.nn.functional.dropout(torch.tensor(x), 0.5),
          "F.dropout(0.5)")
    equal(shim.rand(4), torch.rand(4), "the stream after them")


def test_linear_and_embedding_initialise_as_torch():
    both(123)
    for make in (lambda nn: nn.Linear(768, 3072), lambda nn: nn.Linear(5, 3), lambda nn: nn.Linear(4, 2, bias=False),
                 lambda nn: nn.Embedding(1000, 64), lambda nn: nn.Embedding(3, 5)):
        ours, theirs = make(shim.nn), make(torch.nn)
        for (name, p), (_, tp) in zip(ours.named_parameters(), theirs.named_parameters()):
            equal(p, tp, f"{type(ours).__name__} {tuple(p.shape)} {name}")
    ours, theirs = shim.empty(3, 7), torch.empty(3, 7)
    equal(shim.nn.init.kaiming_uniform_(ours, a=math.sqrt(5)), torch.nn.init.kaiming_uniform_(theirs, a=math.sqrt(5)),
          "init.kaiming_uniform_")


def test_the_books_gpt_model_124m_has_torchs_initial_weights_bit_for_bit():
    import importlib
    book = importlib.import_module("llms_from_scratch.ch04")       # on real torch
    ch04 = load_book_module("ch04")                                 # on the shim
    assert book.torch is torch and ch04.torch is shim
    cfg = {"vocab_size": 50257, "context_length": 1024, "emb_dim": 768, "n_heads": 12, "n_layers": 12,
           "drop_rate": 0.1, "qkv_bias": False}
    both(123)
    ours, theirs = ch04.GPTModel(cfg), book.GPTModel(cfg)
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state)
    bad = [name for name in theirs_state if not np.array_equal(ours_state[name].data, theirs_state[name].numpy())]
    print(f"{len(theirs_state)} tensors, {sum(t.numel() for t in theirs_state.values()):,} numbers, {len(bad)} differ")
    assert not bad, f"tensors that differ from torch's: {bad[:5]}"


def test_the_dataloaders_shuffled_order_and_its_draws_are_torchs():
    """iter(loader) draws the workers' base seed, the first batch the sampler's seed, then
    randperm under it: the batches come in torch's order and the stream after them agrees."""
    data = [(np.float32(i), np.int64(i)) for i in range(37)]

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return torch.tensor(data[i][0]), torch.tensor(data[i][1])

    class OurRows(shim.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return shim.tensor(data[i][0]), shim.tensor(data[i][1])

    both(123)
    for epoch in range(2):
        ours = [y.data.tolist() for _, y in shim.utils.data.DataLoader(OurRows(), batch_size=4, shuffle=True)]
        theirs = [y.tolist() for _, y in torch.utils.data.DataLoader(Rows(), batch_size=4, shuffle=True)]
        assert ours == theirs, f"epoch {epoch}: {ours[:2]} vs torch's {theirs[:2]}"
    list(shim.utils.data.DataLoader(OurRows(), batch_size=4))           # unshuffled: still one draw
    list(torch.utils.data.DataLoader(Rows(), batch_size=4))
    g, tg = shim.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    ours = [y.data.tolist() for _, y in shim.utils.data.DataLoader(OurRows(), batch_size=5, shuffle=True, generator=g)]
    theirs = [y.tolist() for _, y in torch.utils.data.DataLoader(Rows(), batch_size=5, shuffle=True, generator=tg)]
    assert ours == theirs
    equal(shim.rand(3), torch.rand(3), "the stream after the loaders")


def test_a_broken_transformation_is_caught():
    """The checks can fail: the sine and cosine halves swapped give other numbers."""
    both(3)
    u = R.default_generator.uniform_float32(32).reshape(2, 16)
    good = R._normal_fill_16(u, 0.0, 1.0)
    swapped = np.concatenate([good[:, 8:], good[:, :8]], axis=1)
    with pytest.raises(AssertionError, match="differ from torch's"):
        equal(swapped.reshape(-1), torch.randn(32), "swapped halves")


def test_the_books_chapter5_loop_seeded_alike_prints_pytorchs_lines_without_copying_weights(capsys, monkeypatch):
    """Seeded alike, nothing copied across: the book's ch04.GPTModel with dropout 0.1, its
    create_dataloader_v1 with shuffle=True, torch.optim.AdamW and ch05.train_model_simple print
    the same lines on the engine as on PyTorch for the first 10 evaluations (initial weights,
    batch order and dropout masks all come from the one stream)."""
    import importlib

    import tiktoken
    from tinygrad_gpt.data import SAMPLE_TEXT_PATH
    from tinygrad_gpt.tokenizer import get_gpt2_tokenizer
    from tinygrad_gpt.torch.binding import load_book_modules
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: get_gpt2_tokenizer())   # offline, real side
    real = [importlib.import_module(f"llms_from_scratch.{m}") for m in ("ch02", "ch04", "ch05")]
    ours = load_book_modules("ch02", "ch04", "ch05")
    cfg = {"vocab_size": 50257, "context_length": 32, "emb_dim": 64, "n_heads": 4, "n_layers": 2,
           "drop_rate": 0.1, "qkv_bias": False}
    text = SAMPLE_TEXT_PATH.read_text(encoding="utf-8")[:9000]
    split = int(0.9 * len(text))
    lines = []
    for (ch02, ch04, ch05), t in ((ours, shim), (real, torch)):
        t.manual_seed(123)
        model = ch04.GPTModel(cfg)
        train = ch02.create_dataloader_v1(text[:split], batch_size=2, max_length=32, stride=32, shuffle=True,
                                          drop_last=True, num_workers=0)
        val = ch02.create_dataloader_v1(text[split:], batch_size=2, max_length=32, stride=32, shuffle=False,
                                        drop_last=False, num_workers=0)
        optimizer = t.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
        ch05.train_model_simple(model, train, val, optimizer, t.device("cpu"), num_epochs=1, eval_freq=1,
                                eval_iter=2, start_context="Every effort moves you", tokenizer=get_gpt2_tokenizer())
        lines.append(capsys.readouterr().out.splitlines())
    print("\n" + "\n".join(f"engine:  {a}\npytorch: {b}" for a, b in zip(*lines)))
    evaluations = [i for i, line in enumerate(lines[1]) if line.startswith("Ep ")]
    assert len(evaluations) >= 10
    assert lines[0][:evaluations[9] + 1] == lines[1][:evaluations[9] + 1]


def test_scaled_dot_product_attentions_dropout_drops_torchs_weights():
    """PyTorch's CPU attention with dropout runs its math path: softmax, then dropout's
    bernoulli over (B, H, Tq, Tk); the shim draws the same mask for the engine's fused op."""
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 4)).astype(np.float32)
    both(5)
    theirs = torch.nn.functional.scaled_dot_product_attention(*[torch.tensor(x)] * 3, dropout_p=0.1, is_causal=True)
    ours = shim.nn.functional.scaled_dot_product_attention(*[shim.tensor(x)] * 3, dropout_p=0.1, is_causal=True)
    np.testing.assert_allclose(ours.data, theirs.numpy(), rtol=1e-5, atol=1e-6)   # one fused op vs three
    assert ((ours.data == 0) == (theirs.numpy() == 0)).all()                     # the same weights dropped
    equal(shim.rand(3), torch.rand(3), "the stream after attention")
