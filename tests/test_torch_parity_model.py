"""The whole model against the book's own PyTorch code (llms_from_scratch), as llm.c's test_gpt2:
the same weights give the same logits, loss and gradient of every parameter, then the same
losses over AdamW steps and through the book's training loop. Skipped without torch or the
book's package.

Errors are relative to the norm of the reference tensor: ||ours - torch|| / ||torch||.
"""
import re

import numpy as np
import pytest

from helpers import PairDataset, require

torch = require("torch")
ch03 = require("llms_from_scratch.ch03")
ch04 = require("llms_from_scratch.ch04")
ch05 = require("llms_from_scratch.ch05")

import tinygrad_gpt.functional as F                      # noqa: E402
from tinygrad_gpt import GPTModel, Tensor, manual_seed    # noqa: E402
from tinygrad_gpt.data import DataLoader                  # noqa: E402
from tinygrad_gpt.nn import MultiHeadAttention            # noqa: E402
from tinygrad_gpt.optim import AdamW                      # noqa: E402
from tinygrad_gpt.tokenizer import get_gpt2_tokenizer     # noqa: E402
from tinygrad_gpt.train import train_model_simple         # noqa: E402

CFG = {"vocab_size": 50257, "context_length": 32, "emb_dim": 64, "n_heads": 4, "n_layers": 2,
       "drop_rate": 0.0, "qkv_bias": False}
TOL = 1e-4


def rel(ours, theirs):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    ours = np.asarray(ours, dtype=np.float64)
    return float(np.linalg.norm(ours - theirs) / max(np.linalg.norm(theirs.astype(np.float64)), 1e-30))


def book_and_ours(cfg, seed=123):
    """The book's GPTModel with torch's initialisation, and ours loaded from its state dict."""
    torch.manual_seed(seed)
    book = ch04.GPTModel(cfg)
    ours = GPTModel(cfg)
    ours.load_state_dict({k: v.numpy() for k, v in book.state_dict().items()})   # with att.mask
    return book, ours


def token_batch(shape, seed):
    return np.random.default_rng(seed).integers(0, CFG["vocab_size"], shape)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_logits_loss_and_every_gradient_match_the_books_gpt(qkv_bias):
    cfg = {**CFG, "qkv_bias": qkv_bias}
    book, ours = book_and_ours(cfg)
    x, y = token_batch((2, 32), 1), token_batch((2, 32), 2)

    logits = ours(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    t_logits = book(torch.tensor(x))
    t_loss = torch.nn.functional.cross_entropy(t_logits.flatten(0, 1), torch.tensor(y).flatten())
    t_loss.backward()

    errors = {"logits": rel(logits.data, t_logits), "loss": rel(loss.data, t_loss)}
    book_params = dict(book.named_parameters())
    assert [n for n, _ in ours.named_parameters()] == list(book_params)
    for name, p in ours.named_parameters():
        assert p.grad.dtype == np.float32
        if name.endswith("att.W_key.bias"):
            # exactly zero in exact arithmetic: q.(k_j + b) shifts every score of a row by the
            # same q.b, and softmax ignores shifts; both engines give rounding noise, so check
            # that both are negligible next to the key weights' gradient instead
            scale = np.linalg.norm(book_params[name.replace(".bias", ".weight")].grad.numpy())
            for g in (p.grad, book_params[name].grad.numpy()):
                assert np.linalg.norm(g) < 1e-6 * scale, name
            continue
        errors[name + ".grad"] = rel(p.grad, book_params[name].grad)
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    print(f"\nvs the book's GPTModel (qkv_bias={qkv_bias}): loss {loss.item():.6f} / {t_loss.item():.6f}; "
          f"worst relative errors: " + ", ".join(f"{n} {e:.2e}" for n, e in worst))
    assert max(errors.values()) < TOL, worst


def test_five_adamw_steps_give_the_books_losses():
    # qkv_bias=False: with key biases, Adam would turn their rounding-noise gradients (see
    # above) into lr-sized steps of random sign, different in each engine
    book, ours = book_and_ours(CFG, seed=7)
    opt = AdamW(ours.parameters(), lr=4e-4, weight_decay=0.1)
    t_opt = torch.optim.AdamW(book.parameters(), lr=4e-4, weight_decay=0.1)
    losses, t_losses = [], []
    x, y = token_batch((2, 32), 10), token_batch((2, 32), 20)     # one batch: the loss must fall
    for step in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(ours(x), y)
        loss.backward()
        opt.step()
        t_opt.zero_grad()
        t_loss = torch.nn.functional.cross_entropy(book(torch.tensor(x)).flatten(0, 1), torch.tensor(y).flatten())
        t_loss.backward()
        t_opt.step()
        losses.append(loss.item())
        t_losses.append(t_loss.item())
    loss_err = max(abs(a - b) / abs(b) for a, b in zip(losses, t_losses))
    book_params = dict(book.named_parameters())
    param_err = max(rel(p.data, book_params[n]) for n, p in ours.named_parameters())
    print(f"\n5 AdamW steps: ours {[f'{v:.5f}' for v in losses]}\n"
          f"              book {[f'{v:.5f}' for v in t_losses]}\n"
          f"worst relative loss error {loss_err:.2e}, worst relative parameter error {param_err:.2e}")
    assert losses[-1] < losses[0]
    assert loss_err < TOL
    assert param_err < TOL


def test_state_dict_exported_from_the_books_model_loads_and_gives_the_same_logits():
    cfg = {**CFG, "drop_rate": 0.1, "qkv_bias": True}
    torch.manual_seed(3)
    book = ch04.GPTModel(cfg).eval()
    exported = {k: v.numpy() for k, v in book.state_dict().items()}
    assert sum(k.endswith("att.mask") for k in exported) == 2
    manual_seed(99)
    ours = GPTModel(cfg)
    assert ours.load_state_dict(exported) == ([], [])
    x = token_batch((3, 20), 5)
    err = rel(ours.eval()(x).data, book(torch.tensor(x)))
    print(f"\nlogits after loading the book's exported state dict: relative error {err:.2e}")
    assert err < TOL
    # torch tensors load too (no .numpy() by the caller)
    again = GPTModel(cfg)
    again.load_state_dict(book.state_dict())
    np.testing.assert_array_equal(again.eval()(x).data, ours(x).data)


def test_our_state_dict_loads_into_the_books_model_and_gives_the_same_logits():
    manual_seed(5)
    ours = GPTModel(CFG).eval()
    book = ch04.GPTModel(CFG).eval()
    result = book.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in ours.state_dict().items()},
                                  strict=False)
    assert sorted(result.missing_keys) == ["trf_blocks.0.att.mask", "trf_blocks.1.att.mask"]
    assert result.unexpected_keys == []
    x = token_batch((2, 32), 6)
    assert rel(ours(x).data, book(torch.tensor(x))) < TOL


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_multihead_attention_matches_the_books_ch03_with_d_in_not_d_out(qkv_bias):
    torch.manual_seed(0)
    book = ch03.MultiHeadAttention(d_in=12, d_out=18, context_length=8, dropout=0.0, num_heads=3,
                                   qkv_bias=qkv_bias)
    ours = MultiHeadAttention(12, 18, 8, 0.0, 3, qkv_bias=qkv_bias)
    ours.load_state_dict({k: v.numpy() for k, v in book.state_dict().items()})   # "mask" ignored
    xs = np.random.default_rng(0).standard_normal((2, 7, 12)).astype(np.float32)
    x = Tensor(xs, requires_grad=True)
    out = ours(x)
    out.backward(np.ones(out.shape, dtype=np.float32))
    tx = torch.tensor(xs, requires_grad=True)
    t_out = book(tx)
    t_out.backward(torch.ones_like(t_out))
    errors = {"out": rel(out.data, t_out), "x.grad": rel(x.grad, tx.grad)}
    book_params = dict(book.named_parameters())
    errors.update({n + ".grad": rel(p.grad, book_params[n].grad) for n, p in ours.named_parameters()
                   if n != "W_key.bias"})        # zero up to rounding: see the test above
    print(f"\nMHA vs the book's ch03 (qkv_bias={qkv_bias}): worst relative error {max(errors.values()):.2e}")
    assert max(errors.values()) < TOL


def test_train_model_simple_matches_the_books_loop_line_for_line(capsys):
    """The same weights and batches through ours and the book's ch05.train_model_simple:
    the same evaluation points, losses (to 1e-4), tokens seen, and printed lines, the greedy
    sample included (one epoch: each sample is 50 forwards; test_train checks the epochs)."""
    book, ours = book_and_ours(CFG, seed=11)
    tokenizer = get_gpt2_tokenizer()
    rng = np.random.default_rng(8)
    train = PairDataset(rng.integers(0, 50257, (6, 32)), rng.integers(0, 50257, (6, 32)))
    val = PairDataset(rng.integers(0, 50257, (2, 32)), rng.integers(0, 50257, (2, 32)))
    train_loader, val_loader = DataLoader(train, batch_size=2), DataLoader(val, batch_size=2)
    as_torch = lambda dl: [(torch.tensor(x), torch.tensor(y)) for x, y in dl]   # noqa: E731
    args = dict(num_epochs=1, eval_freq=2, eval_iter=1, start_context="Every effort moves you",
                tokenizer=tokenizer)

    ours_result = train_model_simple(ours, train_loader, val_loader,
                                     AdamW(ours.parameters(), lr=4e-4, weight_decay=0.1), None, **args)
    ours_lines = capsys.readouterr().out.splitlines()
    book_result = ch05.train_model_simple(book, as_torch(train_loader), as_torch(val_loader),
                                          torch.optim.AdamW(book.parameters(), lr=4e-4, weight_decay=0.1),
                                          "cpu", **args)
    book_lines = capsys.readouterr().out.splitlines()

    assert ours_result[2] == book_result[2]             # tokens seen at each evaluation
    for mine, theirs in zip(ours_result[:2], book_result[:2]):
        assert len(mine) == len(theirs) == 2
        np.testing.assert_allclose(mine, theirs, rtol=TOL)
    numbers = re.compile(r"\d+\.\d{3}")
    assert [numbers.sub("#", line) for line in ours_lines] == [numbers.sub("#", line) for line in book_lines]
    print("\n" + "\n".join(f"ours: {a}\nbook: {b}" for a, b in zip(ours_lines, book_lines)))
