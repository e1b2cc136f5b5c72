"""AdamW, gradient clipping and the learning-rate schedule, against PyTorch and the book.

AdamW runs on both kernel backends (the plain-NumPy reference and the numba twin); the
parity with torch.optim.AdamW is checked in float64, where the two must agree to rounding.
"""
import copy
import math

import numpy as np
import pytest

from helpers import require

from tinygrad_gpt import kernels
from tinygrad_gpt.nn import Parameter
from tinygrad_gpt.optim import AdamW, clip_grad_norm_, lr_at_step

SHAPES = [(7,), (4, 5), (2, 3, 4), (1,)]


def make_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def grads_for_step(step, dtype=np.float64, seed=100):
    """The same gradients for every optimizer under test: a function of the step alone."""
    rng = np.random.default_rng(seed + step)
    return [(rng.standard_normal(s) * (1 + step)).astype(dtype) for s in SHAPES]


def run_ours(params, steps, start=0, **hyper):
    opt = AdamW(params, **hyper) if not isinstance(params, AdamW) else params
    for t in range(start, start + steps):
        for p, g in zip(opt.params, grads_for_step(t, opt.params[0].dtype)):
            p.grad = g.copy()
        opt.step()
    return opt


def adamw_by_the_docs(p, grads, lr, betas, eps, weight_decay):
    """torch.optim.AdamW's algorithm box, one line each, in float64 (no torch needed)."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p - lr * weight_decay * p
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


HYPERS = [{}, {"lr": 4e-4, "weight_decay": 0.1}, {"lr": 3e-3, "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------- AdamW
@pytest.mark.parametrize("hyper", HYPERS, ids=["defaults", "book-ch5", "other"])
def test_adamw_matches_torch_adamw_for_10_steps_in_float64(backend, hyper):
    torch = require("torch")
    params = make_params()
    tparams = [torch.nn.Parameter(torch.tensor(p.data.copy())) for p in params]
    opt = AdamW(params, **hyper)
    topt = torch.optim.AdamW(tparams, **hyper)
    worst = 0.0
    for t in range(10):
        for p, tp, g in zip(params, tparams, grads_for_step(t)):
            p.grad = g.copy()
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
        for p, tp in zip(params, tparams):
            st, tst = opt.state[id(p)], topt.state[tp]
            for ours, theirs in ((p.data, tp), (st["exp_avg"], tst["exp_avg"]), (st["exp_avg_sq"], tst["exp_avg_sq"])):
                worst = max(worst, float(np.abs(ours - theirs.detach().numpy()).max()))
            assert st["step"] == int(tst["step"]) == t + 1
    print(f"AdamW vs torch.optim.AdamW ({backend}, {hyper}): worst |diff| over 10 steps {worst:.2e}")
    assert worst < 1e-13                                 # seen: 7e-15 (a few ulps of ~1)
    assert all(p.dtype == np.float64 for p in params)


def test_adamw_defaults_are_torchs():
    group = AdamW(make_params()).param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (1e-3, (0.9, 0.999), 1e-8, 0.01)


@pytest.mark.parametrize("hyper", HYPERS[:2], ids=["defaults", "book-ch5"])
def test_adamw_matches_the_algorithm_in_torchs_documentation(backend, hyper):
    params = make_params()
    start = [p.data.copy() for p in params]
    run_ours(params, 10, **hyper)
    full = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, **hyper}
    worst = 0.0
    for i, (p, p0) in enumerate(zip(params, start)):
        expected = adamw_by_the_docs(p0, [grads_for_step(t)[i] for t in range(10)], **full)
        worst = max(worst, float(np.abs(p.data - expected).max()))
    print(f"AdamW vs the documented algorithm ({backend}): worst |diff| {worst:.2e}")
    assert worst < 1e-12


def test_adamw_keeps_float32_params_and_moments_float32(backend):
    params = make_params(np.float32)
    opt = run_ours(params, 3)
    for p in params:
        st = opt.state[id(p)]
        assert p.dtype == st["exp_avg"].dtype == st["exp_avg_sq"].dtype == np.float32


def test_adamw_float32_agrees_with_float64_to_float32_precision(backend):
    p32, p64 = make_params(np.float32), make_params(np.float64)
    run_ours(p32, 10)
    run_ours(p64, 10)
    err = max(float(np.abs(a.data - b.data).max()) for a, b in zip(p32, p64))
    print(f"AdamW float32 vs float64 ({backend}): {err:.2e}")
    assert err < 1e-5


def test_adamw_updates_the_parameter_arrays_in_place(backend):
    params = make_params()
    arrays = [p.data for p in params]
    run_ours(params, 2)
    assert all(p.data is a for p, a in zip(params, arrays))


def test_adamw_step_skips_parameters_without_a_gradient(backend):
    params = make_params()
    before = [p.data.copy() for p in params]
    opt = AdamW(params)
    params[0].grad = np.ones(SHAPES[0])
    opt.step()
    assert list(opt.state) == [id(params[0])]
    assert not np.array_equal(params[0].data, before[0])
    for p, b in zip(params[1:], before[1:]):
        np.testing.assert_array_equal(p.data, b)        # no weight decay without a gradient either


def test_adamw_zero_grad_sets_to_none_or_fills_zeros():
    params = make_params()
    opt = run_ours(params, 1)
    grads = [p.grad for p in params]
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is g and not g.any() for p, g in zip(params, grads))
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def test_adamw_accepts_a_generator_of_parameters():
    params = make_params()
    opt = AdamW(p for p in params)
    assert opt.params == params


def test_adamw_rejects_bad_arguments():
    with pytest.raises(ValueError, match="empty"):
        AdamW([])
    for bad in ({"lr": -1.0}, {"betas": (1.0, 0.999)}, {"betas": (0.9, -0.1)}, {"eps": -1.0},
                {"weight_decay": -0.1}):
        with pytest.raises(ValueError, match="invalid"):
            AdamW(make_params(), **bad)


def test_adamw_rejects_a_single_tensor_as_torch_does():
    with pytest.raises(TypeError, match="iterable"):
        AdamW(make_params()[1])


def test_adamw_param_groups_match_torch(backend):
    """torch's per-group options: e.g. no weight decay on biases and norms."""
    torch = require("torch")
    params = make_params()
    tparams = [torch.nn.Parameter(torch.tensor(p.data.copy())) for p in params]
    opt = AdamW([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0, "lr": 1e-2}],
                lr=4e-4, weight_decay=0.1)
    topt = torch.optim.AdamW([{"params": tparams[:2]}, {"params": tparams[2:], "weight_decay": 0.0, "lr": 1e-2}],
                             lr=4e-4, weight_decay=0.1)
    for t in range(5):
        for p, tp, g in zip(params, tparams, grads_for_step(t)):
            p.grad, tp.grad = g.copy(), torch.tensor(g)
        opt.step()
        topt.step()
    worst = max(float(np.abs(p.data - tp.detach().numpy()).max()) for p, tp in zip(params, tparams))
    assert worst < 1e-12
    assert [g["params"] for g in opt.state_dict()["param_groups"]] == [[0, 1], [2, 3]]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


# ----------------------------------------------------------------------------- AdamW state
def test_adamw_state_dict_has_torchs_layout():
    params = make_params()
    opt = run_ours(params, 2, lr=4e-4, weight_decay=0.1)
    sd = opt.state_dict()
    assert sd["param_groups"] == [{"lr": 4e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1,
                                   "params": [0, 1, 2, 3]}]
    assert sorted(sd["state"]) == [0, 1, 2, 3]
    for i, p in enumerate(params):
        st = sd["state"][i]
        assert st["step"] == 2 and st["exp_avg"].shape == st["exp_avg_sq"].shape == p.shape


@pytest.mark.parametrize("how", ["deepcopy"])
def test_adamw_state_dict_round_trip_continues_identically(backend, how):
    params = make_params()
    opt = run_ours(params, 3, lr=4e-4, weight_decay=0.1)
    saved_params = [p.data.copy() for p in params]
    sd = opt.state_dict()
    sd = copy.deepcopy(sd)

    clones = [Parameter(a.copy()) for a in saved_params]
    resumed = AdamW(clones)                              # default hyperparameters: the state brings them
    resumed.load_state_dict(sd)
    assert resumed.param_groups[0]["lr"] == 4e-4 and resumed.param_groups[0]["weight_decay"] == 0.1
    run_ours(opt, 4, start=3)
    run_ours(resumed, 4, start=3)
    for p, q in zip(params, clones):
        np.testing.assert_array_equal(p.data, q.data)   # bit for bit
    for p, q in zip(params, clones):
        a, b = opt.state[id(p)], resumed.state[id(q)]
        assert a["step"] == b["step"] == 7
        np.testing.assert_array_equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_adamw_load_state_dict_copies_the_moments():
    params = make_params()
    sd = run_ours(params, 1).state_dict()
    other = AdamW(make_params())
    other.load_state_dict(sd)
    for i, p in enumerate(other.params):
        assert other.state[id(p)]["exp_avg"] is not sd["state"][i]["exp_avg"]


def test_adamw_load_state_dict_rejects_the_wrong_parameter_count_or_shape():
    sd = run_ours(make_params(), 1).state_dict()
    with pytest.raises(ValueError, match="4 parameters, this optimizer has 3"):
        AdamW(make_params()[:3]).load_state_dict(sd)
    sd["state"][1]["exp_avg"] = np.zeros((5, 4))
    with pytest.raises(ValueError, match=r"parameter 1 has shape \(5, 4\) \(exp_avg\).*the parameter has \(4, 5\)"):
        AdamW(make_params()).load_state_dict(sd)


def test_adamw_load_state_dict_that_fails_leaves_the_optimizer_unchanged():
    opt = run_ours(make_params(), 2, lr=1e-3)
    before = copy.deepcopy(opt.state_dict())
    bad = run_ours(make_params(), 1, lr=0.5).state_dict()
    bad["state"][3]["exp_avg_sq"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match="parameter 3"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]                # lr still 1e-3
    for i in range(4):
        assert after["state"][i]["step"] == 2
        np.testing.assert_array_equal(after["state"][i]["exp_avg"], before["state"][i]["exp_avg"])


def test_adamw_load_state_dict_rejects_different_param_groups():
    params = make_params()
    sd = AdamW([{"params": params[:1]}, {"params": params[1:]}]).state_dict()
    with pytest.raises(ValueError, match=r"param groups of sizes \[1, 3\].*\[4\]"):
        AdamW(make_params()).load_state_dict(sd)


# ----------------------------------------------------------------------------- clipping
@pytest.mark.parametrize("max_norm", [0.5, 1.0, 1e3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_matches_torch(max_norm, dtype):
    torch = require("torch")
    params = make_params(dtype)
    grads = grads_for_step(0, dtype)
    for p, g in zip(params, grads):
        p.grad = g.copy()
    tparams = [torch.nn.Parameter(torch.tensor(p.data)) for p in params]
    for tp, g in zip(tparams, grads):
        tp.grad = torch.tensor(g.copy())
    norm = clip_grad_norm_(params, max_norm)
    tnorm = torch.nn.utils.clip_grad_norm_(tparams, max_norm)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert norm == pytest.approx(float(tnorm), rel=tol)
    worst = 0.0
    for p, tp in zip(params, tparams):
        assert p.grad.dtype == dtype
        worst = max(worst, float(np.abs(p.grad - tp.grad.numpy()).max()))
    print(f"clip_grad_norm_ vs torch (max_norm {max_norm}, {np.dtype(dtype).name}): norm {norm:.4f}, "
          f"worst grad |diff| {worst:.2e}")
    assert worst < tol


def test_clip_grad_norm_scales_to_max_norm_and_returns_the_norm_before():
    params = make_params()
    for p, g in zip(params, grads_for_step(0)):
        p.grad = g
    before = math.sqrt(sum(float((g ** 2).sum()) for g in grads_for_step(0)))
    assert clip_grad_norm_(params, 1.0) == pytest.approx(before, rel=1e-12)
    after = math.sqrt(sum(float((p.grad ** 2).sum()) for p in params))
    assert after == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_leaves_small_gradients_alone_and_skips_missing_ones():
    params = make_params()
    params[0].grad = np.full(SHAPES[0], 0.01)
    grad = params[0].grad.copy()
    assert clip_grad_norm_(params, 1.0) == pytest.approx(0.01 * math.sqrt(7))
    np.testing.assert_array_equal(params[0].grad, grad)


def test_clip_grad_norm_accepts_a_single_tensor_as_torch_does():
    p = make_params()[1]
    p.grad = np.full(p.shape, 3.0)
    assert clip_grad_norm_(p, 1.0) == pytest.approx(3.0 * math.sqrt(20))
    assert math.sqrt(float((p.grad ** 2).sum())) == pytest.approx(1.0, rel=1e-5)


# ----------------------------------------------------------------------------- learning-rate schedule
def book_appendix_d_lr(global_step, peak_lr, total_training_steps, warmup_steps, initial_lr, min_lr):
    """The schedule inside llms_from_scratch/appendix_d.py train_model, transcribed."""
    lr_increment = (peak_lr - initial_lr) / warmup_steps
    if global_step < warmup_steps:
        return initial_lr + global_step * lr_increment
    progress = (global_step - warmup_steps) / (total_training_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("peak_lr, total, warmup, initial_lr, min_lr", [
    (5e-4, 150, 30, 3e-5, 1e-6),        # appendix_d.train_model's defaults
    (1e-3, 40, 6, 1e-4, 1e-5),
    (4e-4, 9, 1, 0.0, 0.0)])
def test_lr_at_step_matches_the_books_appendix_d_schedule(peak_lr, total, warmup, initial_lr, min_lr):
    lrs = [lr_at_step(s, peak_lr, total, warmup, min_lr, initial_lr) for s in range(total)]
    book = [book_appendix_d_lr(s, peak_lr, total, warmup, initial_lr, min_lr) for s in range(total)]
    np.testing.assert_allclose(lrs, book, rtol=1e-12, atol=0)
    assert lrs[0] == initial_lr and max(lrs) == pytest.approx(peak_lr)
    assert lrs[warmup] == pytest.approx(peak_lr)
    assert all(a <= b for a, b in zip(lrs[:warmup], lrs[1:warmup + 1]))            # warmup rises
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))              # cosine falls
    assert lrs[-1] > min_lr or min_lr == 0


def test_lr_at_step_equals_the_lrs_the_books_train_model_sets(monkeypatch):
    """Run llms_from_scratch.appendix_d.train_model itself (loss, evaluation and sampling
    stubbed) and compare the learning rates it records with lr_at_step."""
    torch = require("torch")
    appendix_d = require("llms_from_scratch.appendix_d")
    w = torch.nn.Parameter(torch.ones(2))
    monkeypatch.setattr(appendix_d, "calc_loss_batch", lambda x, y, model, device: (w * w).sum())
    monkeypatch.setattr(appendix_d, "evaluate_model", lambda *a, **k: (0.0, 0.0))
    monkeypatch.setattr(appendix_d, "generate_and_print_sample", lambda *a, **k: None)
    loader = [(torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))] * 7
    optimizer = torch.optim.AdamW([w], lr=5e-4, weight_decay=0.1)
    *_, book_lrs = appendix_d.train_model(torch.nn.Linear(1, 1), loader, loader, optimizer, "cpu",
                                          n_epochs=3, eval_freq=1000, eval_iter=1, start_context="",
                                          tokenizer=None, warmup_steps=4, initial_lr=3e-5, min_lr=1e-6)
    ours = [lr_at_step(s, 5e-4, 21, warmup_steps=4, min_lr=1e-6, initial_lr=3e-5) for s in range(21)]
    assert len(book_lrs) == 21
    np.testing.assert_allclose(ours, book_lrs, rtol=1e-12)


def test_lr_at_step_without_warmup_and_min_lr_is_constant():
    assert [lr_at_step(s, 4e-4, 10) for s in range(10)] == [4e-4] * 10
    # a run that goes past total_steps stays at min_lr instead of rising again
    assert lr_at_step(25, 1e-3, 20, warmup_steps=2, min_lr=1e-5, initial_lr=0.0) == pytest.approx(1e-5)
