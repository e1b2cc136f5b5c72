"""The book's chapter-5 training loop: losses, evaluation, printing, and float32 discipline.

The training run uses the bundled sample story, and the shared copy of the book's text
(the-verdict.txt, skipped when absent);
the rest uses a micro GPT and hand-made batches so that every printed line can be predicted.
"""
import math
import re

import numpy as np
import pytest

import tinygrad_gpt.functional as F
from tinygrad_gpt import GPTModel, Tensor, get_config, is_grad_enabled, kernels, manual_seed
from tinygrad_gpt.data import SAMPLE_TEXT_PATH, DataLoader, create_dataloader_v1, split_train_val
from tinygrad_gpt.optim import AdamW
from tinygrad_gpt.tensor import register_backward_hook, register_forward_hook
from tinygrad_gpt.tokenizer import get_gpt2_tokenizer
from tinygrad_gpt.train import (calc_loss_batch, calc_loss_loader, evaluate_model,
                                generate_and_print_sample, train_model_simple)

from helpers import VERDICT, PairDataset, micro_model, needs_verdict



EVAL_LINE = re.compile(r"^Ep \d+ \(Step \d{6}\): Train loss \d+\.\d{3}, Val loss \d+\.\d{3}$")


def batches(n, B=2, T=6, vocab=11, seed=0):
    """A loader for the book's loop: a list of (inputs, targets) int64 pairs, (B, T) each."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, vocab, (B, T)), rng.integers(0, vocab, (B, T))) for _ in range(n)]


def loader(n, B=2, T=6, vocab=11, seed=0):
    """The package's DataLoader over n batches of random ids, in order."""
    rng = np.random.default_rng(seed)
    data = PairDataset(rng.integers(0, vocab, (n * B, T)), rng.integers(0, vocab, (n * B, T)))
    return DataLoader(data, batch_size=B, shuffle=False)


class DigitTokenizer:
    """Text of digits <-> ids 0..9: a tokenizer for the micro model's 11-token vocabulary."""

    def encode(self, text, allowed_special=()):
        return [int(c) for c in text if c.isdigit()]

    def decode(self, ids):
        return "".join(str(i % 10) for i in ids)




# ----------------------------------------------------------------------------- losses
def test_calc_loss_batch_is_the_mean_cross_entropy_over_all_positions():
    model = micro_model().eval()
    x, y = batches(1)[0]
    logits = model(x).data.astype(np.float64)                     # (B, T, V)
    lse = np.log(np.exp(logits).sum(-1))
    picked = np.take_along_axis(logits, y[..., None], -1)[..., 0]
    loss = calc_loss_batch(x, y, model, None)
    assert loss.shape == () and loss.requires_grad
    assert loss.item() == pytest.approx(float((lse - picked).mean()), rel=1e-5)


def test_calc_loss_loader_averages_the_first_num_batches():
    model = micro_model().eval()
    loader = batches(4)
    each = [calc_loss_batch(x, y, model).item() for x, y in loader]
    assert calc_loss_loader(loader, model) == pytest.approx(np.mean(each), rel=1e-6)
    assert calc_loss_loader(loader, model, num_batches=2) == pytest.approx(np.mean(each[:2]), rel=1e-6)
    assert calc_loss_loader(loader, model, num_batches=99) == pytest.approx(np.mean(each), rel=1e-6)
    assert math.isnan(calc_loss_loader([], model))


def test_evaluate_model_runs_under_no_grad_in_eval_mode_then_returns_to_train_mode():
    model = micro_model(drop_rate=0.5)
    calls = []

    def spy(module, args):
        calls.append((is_grad_enabled(), [m.training for m in model.modules()]))

    handle = model.register_forward_pre_hook(spy)
    train_loader, val_loader = batches(3, seed=1), batches(2, seed=2)
    train_loss, val_loss = evaluate_model(model, train_loader, val_loader, None, eval_iter=2)
    handle.remove()
    assert len(calls) == 4                               # eval_iter batches of each loader
    assert all(not grad and not any(modes) for grad, modes in calls)
    assert all(m.training for m in model.modules())       # back in train mode
    assert is_grad_enabled()
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    assert train_loss == pytest.approx(calc_loss_loader(train_loader, model, num_batches=2), rel=1e-6)
    assert val_loss == pytest.approx(calc_loss_loader(val_loader, model, num_batches=2), rel=1e-6)
    # dropout is off during evaluation: the same numbers twice
    assert evaluate_model(model, train_loader, val_loader, None, 2) == (train_loss, val_loss)


def test_generate_and_print_sample_prints_one_greedy_line_and_restores_train_mode(capsys):
    model = micro_model()
    generate_and_print_sample(model, DigitTokenizer(), None, "123")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and re.fullmatch(r"123\d{50}\n", out)
    assert all(m.training for m in model.modules())


# ----------------------------------------------------------------------------- the loop, by hand-made batches
def test_train_model_simple_prints_the_books_lines_and_a_sample_after_each_epoch(capsys):
    model = micro_model()
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    train_loader, val_loader = loader(3, seed=3), loader(1, seed=4)
    train_losses, val_losses, tokens_seen = train_model_simple(
        model, train_loader, val_loader, optimizer, None, num_epochs=2, eval_freq=2, eval_iter=1,
        start_context="42", tokenizer=DigitTokenizer())
    lines = capsys.readouterr().out.splitlines()
    # 6 steps (0..5), evaluated at 0, 2, 4; a sample closes each epoch, as the book's loop
    assert len(lines) == 5
    assert [lines[i][:20] for i in (0, 1, 3)] == ["Ep 1 (Step 000000): ", "Ep 1 (Step 000002): ",
                                                  "Ep 2 (Step 000004): "]
    for i in (0, 1, 3):
        assert EVAL_LINE.match(lines[i]), lines[i]
    for i in (2, 4):
        assert re.fullmatch(r"42\d{50}", lines[i]), lines[i]
    assert len(train_losses) == len(val_losses) == len(tokens_seen) == 3
    assert tokens_seen == [12, 36, 60]                  # (step + 1) * B * T
    printed = [tuple(float(v) for v in re.findall(r"\d+\.\d{3}", lines[i])) for i in (0, 1, 3)]
    assert printed == [(round(t, 3), round(v, 3)) for t, v in zip(train_losses, val_losses)]
    assert all(m.training for m in model.modules())


def test_train_model_simple_takes_one_adamw_step_per_batch():
    model, reference = micro_model(), micro_model()
    train_loader = loader(3, seed=5)
    opt, ref_opt = AdamW(model.parameters(), lr=1e-2), AdamW(reference.parameters(), lr=1e-2)
    train_model_simple(model, train_loader, loader(1), opt, None, 1, 100, 1, "1", DigitTokenizer())
    for x, y in train_loader:                          # the book's loop body, by hand
        ref_opt.zero_grad()
        calc_loss_batch(x, y, reference).backward()
        ref_opt.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


@pytest.mark.parametrize("warmup", [0, 2, 3])
def test_train_model_clips_the_gradient_from_the_step_the_warmup_ends_as_appendix_d(warmup):
    """Appendix D clips with `if global_step >= warmup_steps` (global_step counts from 0): with a
    warmup of 2 the first two steps are not clipped, the third is. The last step's gradients
    are still on the parameters when train_model returns (zero_grad runs at a step's start)."""
    from tinygrad_gpt.train import TrainConfig, global_grad_norm, train_model
    model = micro_model()
    config = TrainConfig(num_epochs=1, eval_freq=100, eval_iter=1, start_context="1", peak_lr=1e-3,
                         warmup_steps=warmup, grad_clip=1e-3)
    train_model(model, loader(3, seed=5), loader(1), AdamW(model.parameters(), lr=1e-3), DigitTokenizer(), config)
    norm = global_grad_norm(list(model.parameters()))    # after step index 2, the third
    if warmup <= 2:
        assert norm == pytest.approx(1e-3, rel=1e-4)
    else:
        assert norm > 1e-2


# ----------------------------------------------------------------------------- the-verdict.txt
@pytest.mark.parametrize("source", ["sample_story", pytest.param("the-verdict", marks=needs_verdict)])
def test_training_the_tiny_gpt_on_real_text_lowers_the_loss_and_prints_the_books_lines(capsys, source):
    """Runs everywhere on the package's bundled story; on the book's text too where shared/ is."""
    tokenizer = get_gpt2_tokenizer()
    path = SAMPLE_TEXT_PATH if source == "sample_story" else VERDICT
    train_text, val_text = split_train_val(path.read_text(encoding="utf-8"))
    # context 32; a stride of 128 keeps one epoch to a few steps
    train_loader = create_dataloader_v1(train_text, batch_size=4, max_length=32, stride=128,
                                        shuffle=True, drop_last=True, tokenizer=tokenizer, rng=123)
    val_loader = create_dataloader_v1(val_text, batch_size=4, max_length=32, stride=128,
                                      shuffle=False, drop_last=False, tokenizer=tokenizer)
    cfg = get_config("tiny")
    cfg["context_length"] = 32
    manual_seed(123)
    model = GPTModel(cfg)
    optimizer = AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
    steps = len(train_loader)
    train_losses, val_losses, tokens_seen = train_model_simple(
        model, train_loader, val_loader, optimizer, None, num_epochs=1, eval_freq=3, eval_iter=1,
        start_context="Every effort moves you", tokenizer=tokenizer)
    out = capsys.readouterr().out
    print(out)
    lines = [line for line in out.splitlines() if not line.startswith("numba_cpu:")]   # compile notices
    n_evals = math.ceil(steps / 3)
    assert len(lines) == n_evals + 1
    for i, line in enumerate(lines[:-1]):
        assert EVAL_LINE.match(line), line
        assert line.startswith(f"Ep 1 (Step {3 * i:06d}): ")
    assert lines[-1].startswith("Every effort moves you") and len(lines[-1]) > len("Every effort moves you")
    assert len(train_losses) == len(val_losses) == len(tokens_seen) == n_evals
    assert tokens_seen == [(3 * i + 1) * 4 * 32 for i in range(n_evals)]
    assert train_losses[0] > 10.5                       # ln 50257 = 10.8 at init
    assert train_losses[-1] < train_losses[0] - 0.3, train_losses
    assert val_losses[-1] < val_losses[0], val_losses


# ----------------------------------------------------------------------------- float32 discipline
class RecordingKernels:
    """Stands in for the kernel module and records the dtype of every array a kernel returns."""

    def __init__(self, module, log):
        self._module, self._log = module, log

    def __getattr__(self, name):
        fn = getattr(self._module, name)
        if not callable(fn):
            return fn

        def recorded(*args, **kwargs):
            out = fn(*args, **kwargs)
            for a in out if isinstance(out, tuple) else (out,):
                if isinstance(a, np.ndarray):
                    self._log.append((f"kernel {name}", a.dtype))
            for a in args:                               # and what it updated in place (adamw_step)
                if isinstance(a, np.ndarray) and a.dtype.kind == "f":
                    self._log.append((f"kernel {name} argument", a.dtype))
            return out
        return recorded


def test_a_float32_training_step_creates_no_float64_array(backend, monkeypatch):
    cfg = get_config("tiny")                             # dropout 0.1 on: its paths run too
    cfg["context_length"] = 16
    manual_seed(0)
    model = GPTModel(cfg)
    optimizer = AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)
    x = np.random.default_rng(0).integers(0, cfg["vocab_size"], (2, 16))
    y = np.random.default_rng(1).integers(0, cfg["vocab_size"], (2, 16))

    seen = []                                            # (where, dtype) of every array made

    def forward_hook(ctx, inputs, out):
        seen.append((f"{ctx.name}.forward", out.dtype))

    def backward_hook(node, ctx, grad, input_grads):
        seen.append((f"{ctx.name} grad in", grad.dtype))
        seen.extend((f"{ctx.name}.backward", g.dtype) for g in input_grads if g is not None)

    monkeypatch.setattr(kernels, "K", RecordingKernels(kernels.K, seen))

    with register_forward_hook(forward_hook), register_backward_hook(backward_hook):
        for _ in range(2):                               # the second step has non-zero moments
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()

    names = {where.split(" ")[0].split(".")[0] for where, _ in seen}
    assert {"Linear", "LayerNorm", "GELU", "Attention", "CrossEntropy", "Embedding", "Dropout"} <= names
    assert any(where.endswith(".backward") for where, _ in seen)
    assert ("kernel adamw_step argument", np.float32) in seen
    assert any(where.startswith("kernel layernorm") for where, _ in seen)
    float64 = sorted({where for where, dt in seen if dt == np.float64})
    print(f"{len(seen)} arrays recorded ({backend}); float64: {float64 or 'none'}")
    assert not float64, f"float64 arrays made by: {', '.join(float64)}"
    assert loss.dtype == np.float32
    for name, p in model.named_parameters():
        st = optimizer.state[id(p)]
        assert p.dtype == p.grad.dtype == st["exp_avg"].dtype == st["exp_avg_sq"].dtype == np.float32, name


class _StrayGELU(F.GELU):
    """A GELU whose constant is a NumPy float64 scalar: it upcasts (named GELU, as the real one)."""

    def forward(ctx, x):
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2 / np.pi) * x))

    @property
    def name(self):
        return "GELU"


def test_the_dtype_recorder_catches_a_stray_float64():
    """The check above can fail: a GELU whose constant is a NumPy float64 scalar upcasts."""
    seen = []
    with register_forward_hook(lambda ctx, inputs, out: seen.append((ctx.name, out.dtype))):
        _StrayGELU.apply(Tensor(np.ones(3, dtype=np.float32)))
    assert seen == [("GELU", np.float64)]
