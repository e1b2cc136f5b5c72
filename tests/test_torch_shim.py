"""The book's own PyTorch code (llms_from_scratch 1.0.19) run on the engine through
tinygrad_gpt.torch, against the same code on real PyTorch, in one process: the book's modules
are imported twice, once as installed (real torch) and once with `import torch` bound to the
shim (binding.load_book_module). Weights go from the PyTorch model to the shim's by state_dict.

Errors are relative to the norm of the reference: ||ours - torch|| / ||torch||.
"""
import re

import numpy as np
import pytest
from helpers import require

torch = require("torch")
real_ch02 = require("llms_from_scratch.ch02")
real_ch03 = require("llms_from_scratch.ch03")
real_ch04 = require("llms_from_scratch.ch04")
real_ch05 = require("llms_from_scratch.ch05")

import tinygrad_gpt.torch as shim                               # noqa: E402
from tinygrad_gpt.tensor import Tensor                          # noqa: E402
from tinygrad_gpt.data import SAMPLE_TEXT_PATH                  # noqa: E402
from tinygrad_gpt.tokenizer import get_gpt2_tokenizer           # noqa: E402
from tinygrad_gpt.torch.binding import load_book_modules        # noqa: E402

ch02, ch03, ch04, ch05 = load_book_modules("ch02", "ch03", "ch04", "ch05")   # on the shim

CFG = {"vocab_size": 50257, "context_length": 32, "emb_dim": 64, "n_heads": 4, "n_layers": 2,
       "drop_rate": 0.0, "qkv_bias": False}


def rel(ours, theirs):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    ours = np.asarray(ours.data if isinstance(ours, Tensor) else ours, dtype=np.float64)
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs.astype(np.float64)), 1e-30))


def copied(real_module, shim_module):
    """shim_module with real_module's weights (and buffers), by state_dict."""
    state = real_module.state_dict()
    assert list(shim_module.state_dict()) == list(state)          # the same names, in torch's order
    result = shim_module.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    return shim_module


def token_batch(shape, seed):
    return np.random.default_rng(seed).integers(0, CFG["vocab_size"], shape)


def test_the_book_modules_really_run_on_the_shim_and_real_torch_is_untouched():
    import sys
    assert ch04.torch is shim and ch04.nn is shim.nn and ch02.tiktoken.get_encoding("gpt2") is get_gpt2_tokenizer()
    assert real_ch04.torch is torch and sys.modules["torch"] is torch
    assert issubclass(ch04.GPTModel, shim.nn.Module) and not issubclass(real_ch04.GPTModel, shim.nn.Module)
    assert ch05.generate_text_simple is ch04.generate_text_simple and ch04.MultiHeadAttention is ch03.MultiHeadAttention


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_book_gpt_model_gives_pytorchs_logits_loss_and_every_gradient(qkv_bias):
    cfg = {**CFG, "qkv_bias": qkv_bias}
    torch.manual_seed(123)
    book = real_ch04.GPTModel(cfg)
    ours = copied(book, ch04.GPTModel(cfg))
    x, y = token_batch((2, 32), 1), token_batch((2, 32), 2)

    logits = ours(shim.tensor(x))
    loss = shim.nn.functional.cross_entropy(logits.flatten(0, 1), shim.tensor(y).flatten())
    loss.backward()
    t_logits = book(torch.tensor(x))
    t_loss = torch.nn.functional.cross_entropy(t_logits.flatten(0, 1), torch.tensor(y).flatten())
    t_loss.backward()

    assert logits.dtype == np.float32 and loss.dtype == np.float32
    forward = {"logits": rel(logits, t_logits), "loss": rel(loss, t_loss)}
    grads = {}
    book_params = dict(book.named_parameters())
    assert [n for n, _ in ours.named_parameters()] == list(book_params)
    for name, p in ours.named_parameters():
        assert p.grad is not None and p.grad.dtype == np.float32, name
        if name.endswith("att.W_key.bias"):
            # zero in exact arithmetic (softmax ignores the shift q.b_k): both are rounding noise
            scale = np.linalg.norm(book_params[name.replace(".bias", ".weight")].grad.numpy())
            assert np.linalg.norm(p.grad) < 1e-6 * scale and np.linalg.norm(book_params[name].grad) < 1e-6 * scale
            continue
        grads[name] = rel(p.grad, book_params[name].grad)
    worst = max(grads, key=grads.get)
    print(f"\nbook GPTModel on the shim (qkv_bias={qkv_bias}): loss {loss.item():.6f} vs {t_loss.item():.6f}; "
          f"logits {forward['logits']:.2e}, loss {forward['loss']:.2e}, worst gradient {worst} {grads[worst]:.2e}")
    assert max(forward.values()) < 1e-5, forward
    assert grads[worst] < 1e-4, (worst, grads[worst])
    assert len(grads) + qkv_bias * 2 == len(book_params)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_book_multihead_attention_gives_pytorchs_output_and_gradients(qkv_bias):
    torch.manual_seed(0)
    book = real_ch03.MultiHeadAttention(d_in=12, d_out=18, context_length=8, dropout=0.0, num_heads=3,
                                        qkv_bias=qkv_bias)
    ours = copied(book, ch03.MultiHeadAttention(d_in=12, d_out=18, context_length=8, dropout=0.0,
                                                num_heads=3, qkv_bias=qkv_bias))
    assert "mask" in ours.state_dict() and "mask" not in dict(ours.named_parameters())
    xs = np.random.default_rng(0).standard_normal((2, 7, 12)).astype(np.float32)   # 7 < context 8
    x = shim.tensor(xs, requires_grad=True)
    out = ours(x)
    out.backward(np.ones(out.shape, dtype=np.float32))
    tx = torch.tensor(xs, requires_grad=True)
    t_out = book(tx)
    t_out.backward(torch.ones_like(t_out))
    errors = {"out": rel(out, t_out), "x.grad": rel(x.grad, tx.grad)}
    book_params = dict(book.named_parameters())
    errors.update({n: rel(p.grad, book_params[n].grad) for n, p in ours.named_parameters()
                   if n != "W_key.bias"})                        # rounding noise: see above
    print(f"\nbook MHA on the shim (qkv_bias={qkv_bias}): output {errors['out']:.2e}, "
          f"worst gradient {max(errors.values()):.2e}")
    assert errors["out"] < 1e-5
    assert max(errors.values()) < 1e-4, errors


def _book_loaders(chapter2, text):
    """The book's create_dataloader_v1, shuffle off, as its ch05 splits the text (90/10)."""
    split = int(0.9 * len(text))
    train = chapter2.create_dataloader_v1(text[:split], batch_size=2, max_length=32, stride=32,
                                          shuffle=False, drop_last=True, num_workers=0)
    val = chapter2.create_dataloader_v1(text[split:], batch_size=2, max_length=32, stride=32,
                                        shuffle=False, drop_last=False, num_workers=0)
    return train, val


def test_book_train_model_simple_prints_pytorchs_losses_for_an_epoch(capsys, monkeypatch):
    """ch05.train_model_simple + ch02.create_dataloader_v1 + torch.optim.AdamW, the book's code
    on both sides: the same evaluation losses (1e-4), tokens seen, and printed lines."""
    import tiktoken
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: get_gpt2_tokenizer())   # offline, real side
    text = SAMPLE_TEXT_PATH.read_text(encoding="utf-8")[:6000]
    tokenizer = get_gpt2_tokenizer()
    args = dict(num_epochs=1, eval_freq=3, eval_iter=2, start_context="Every effort moves you",
                tokenizer=tokenizer)

    torch.manual_seed(11)
    book = real_ch04.GPTModel(CFG)
    ours = copied(book, ch04.GPTModel(CFG))
    train, val = _book_loaders(ch02, text)
    t_train, t_val = _book_loaders(real_ch02, text)
    assert len(train) == len(t_train) >= 6 and len(val) == len(t_val) >= 1
    for (x, y), (tx, ty) in zip(train, t_train):                 # the same batches, as int64
        assert x.dtype == np.int64
        np.testing.assert_array_equal(x.numpy(), tx.numpy())
        np.testing.assert_array_equal(y.numpy(), ty.numpy())

    ours_result = ch05.train_model_simple(ours, train, val, shim.optim.AdamW(ours.parameters(), lr=4e-4,
                                          weight_decay=0.1), shim.device("cpu"), **args)
    ours_lines = capsys.readouterr().out.splitlines()
    book_result = real_ch05.train_model_simple(book, t_train, t_val, torch.optim.AdamW(book.parameters(),
                                               lr=4e-4, weight_decay=0.1), torch.device("cpu"), **args)
    book_lines = capsys.readouterr().out.splitlines()
    print("\n" + "\n".join(f"shim:    {a}\npytorch: {b}" for a, b in zip(ours_lines, book_lines)))

    assert ours_result[2] == book_result[2]                      # tokens seen at each evaluation
    for mine, theirs in zip(ours_result[:2], book_result[:2]):   # train losses, val losses
        assert len(mine) == len(theirs) >= 2
        np.testing.assert_allclose(mine, theirs, rtol=1e-4)
    assert ours_result[0][-1] < ours_result[0][0]                # it learned
    numbers = re.compile(r"\d+\.\d{3}")
    assert len(ours_lines) == len(book_lines) == len(ours_result[0]) + 1
    assert [numbers.sub("#", s) for s in ours_lines] == [numbers.sub("#", s) for s in book_lines]
    for a, b in zip(ours_lines[:-1], book_lines[:-1]):            # printed to 3 decimals
        for u, v in zip(numbers.findall(a), numbers.findall(b)):
            assert abs(float(u) - float(v)) <= 0.0011, (a, b)


def test_book_generate_text_simple_and_generate_top_k_give_pytorchs_greedy_tokens():
    torch.manual_seed(5)
    book = real_ch04.GPTModel(CFG).eval()
    ours = copied(book, ch04.GPTModel(CFG)).eval()
    start = token_batch((1, 6), 9)
    simple = ch04.generate_text_simple(ours, shim.tensor(start), max_new_tokens=12, context_size=8)
    t_simple = real_ch04.generate_text_simple(book, torch.tensor(start), max_new_tokens=12, context_size=8)
    assert simple.dtype == np.int64 and simple.shape == (1, 18)
    assert simple.tolist() == t_simple.tolist()
    top = ch05.generate(ours, shim.tensor(start), max_new_tokens=12, context_size=8, top_k=5)
    t_top = real_ch05.generate(book, torch.tensor(start), max_new_tokens=12, context_size=8, top_k=5)
    assert top.tolist() == t_top.tolist()
    # eos_id: both stop at the same place when the greedy path meets it
    eos = int(t_top[0, 9])
    stop = ch05.generate(ours, shim.tensor(start), max_new_tokens=12, context_size=8, top_k=5, eos_id=eos)
    t_stop = real_ch05.generate(book, torch.tensor(start), max_new_tokens=12, context_size=8, top_k=5, eos_id=eos)
    assert stop.tolist() == t_stop.tolist() and stop.shape[1] <= 9     # eos sits at index 9: never appended
    print(f"\ngreedy tokens (shim = pytorch): {simple.tolist()[0][6:]}; top_k=5: {top.tolist()[0][6:]}")


def test_book_generate_with_temperature_samples_from_the_top_k_and_repeats_with_the_seed():
    shim.manual_seed(2)
    model = ch04.GPTModel(CFG).eval()
    start = shim.tensor(token_batch((1, 4), 3))

    def sample():
        shim.manual_seed(9)
        return ch05.generate(model, start, max_new_tokens=6, context_size=8, temperature=1.5, top_k=3)

    out = sample()
    assert out.shape == (1, 10) and out.tolist() == sample().tolist()
    with shim.no_grad():
        for t in range(4, 10):                                   # each token is one of the 3 likeliest
            logits = model(out[:, max(0, t - 8):t])[:, -1, :].numpy()[0]
            assert out.tolist()[0][t] in np.argsort(-logits)[:3]
