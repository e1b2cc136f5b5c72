"""The book's Llama 3.2 and Qwen3 (llms_from_scratch.llama3 / qwen3) train on the engine as on
PyTorch: the same module source, built twice (real torch; the shim's `import torch`), the same
weights (PyTorch's, copied over), one training step: forward, cross-entropy, backward. The
logits, the loss and every parameter's gradient are compared with PyTorch's. (An AdamW step
after it is not compared: its first step is lr * g / (|g| + eps), about lr * sign(g), so it
would check signs only, and a gradient within a few eps of zero turns float32 noise of 1e-9 into
a step 1e-5 apart; AdamW itself is compared with torch's in tests/test_optim.py.)

Tolerance: rtol 1e-4 on values, atol 1e-6 * (the largest |value| of that tensor): both sides
compute in float32 and sum in different orders (BLAS, softmax, RMSNorm's mean), which moves
each float32 result by a few ulps (~1e-7 relative) and, through two layers and the loss,
gradients by ~1e-6 relative; a wrong backward (a dropped term, a swapped half of RoPE) is off
by 1e-2 or more. A reference test: it needs torch and llms_from_scratch.
"""
import numpy as np
import pytest
from helpers import require

torch = require("torch")
require("llms_from_scratch")

from llms_from_scratch import llama3 as torch_llama3, qwen3 as torch_qwen3   # noqa: E402

from tinygrad_gpt.torch.binding import load_book_modules   # noqa: E402

shim_llama3, shim_qwen3 = load_book_modules("llama3", "qwen3")
import tinygrad_gpt.torch as shim   # noqa: E402

LLAMA = {"vocab_size": 97, "context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "hidden_dim": 64,
         "n_kv_groups": 2, "rope_base": 500_000.0,
         "rope_freq": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_context_length": 8}}     # 8 < 16: RoPE's frequency scaling takes part
QWEN = {"vocab_size": 97, "context_length": 16, "emb_dim": 32, "n_heads": 4, "head_dim": 8, "n_layers": 2,
        "hidden_dim": 64, "n_kv_groups": 2, "qk_norm": True, "rope_base": 1_000_000.0, "num_experts": 0}
RTOL, ATOL = 1e-4, 1e-6


def one_step(lib, model, x, y):
    """The book's training step: logits, cross-entropy over every position, backward."""
    logits = model(lib.tensor(x))                                          # (B, T, V)
    loss = lib.nn.functional.cross_entropy(logits.flatten(0, 1), lib.tensor(y).flatten())
    loss.backward()
    return logits, loss, {n: np.asarray(p.grad.numpy() if hasattr(p.grad, "numpy") else p.grad)
                          for n, p in model.named_parameters()}


def close(name, ours, theirs, worst):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    scale = max(float(np.abs(theirs).max()), 1e-30)
    worst[name] = float(np.abs(ours - theirs).max()) / scale
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL * scale, err_msg=name)


@pytest.mark.parametrize("which", ["llama3", "qwen3"])
def test_one_training_step_matches_pytorch_logits_loss_and_every_gradient(which):
    theirs_lib, ours_lib = (torch_llama3, shim_llama3) if which == "llama3" else (torch_qwen3, shim_qwen3)
    Model = "Llama3Model" if which == "llama3" else "Qwen3Model"
    cfg = LLAMA if which == "llama3" else QWEN
    torch.manual_seed(123)
    theirs = getattr(theirs_lib, Model)({**cfg, "dtype": torch.float32})
    ours = getattr(ours_lib, Model)({**cfg, "dtype": shim.float32})
    state = theirs.state_dict()
    assert list(ours.state_dict()) == list(state)                          # the same names, the same order
    ours.load_state_dict({k: v.numpy() for k, v in state.items()})
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, cfg["vocab_size"], (2, 12)), rng.integers(0, cfg["vocab_size"], (2, 12))

    t_logits, t_loss, t_grads = one_step(torch, theirs, x, y)
    o_logits, o_loss, o_grads = one_step(shim, ours, x, y)

    worst = {}
    close("logits", o_logits.data, t_logits.detach().numpy(), worst)
    assert o_loss.item() == pytest.approx(t_loss.item(), rel=1e-6)
    assert sorted(o_grads) == sorted(t_grads) and len(o_grads) == len(state)
    for name in t_grads:
        assert np.abs(t_grads[name]).max() > 0, name                      # every parameter takes part
        close("grad " + name, o_grads[name], t_grads[name], worst)
    print(f"\n{which}: loss {o_loss.item():.6f} (PyTorch {t_loss.item():.6f}); worst |diff| / max|value|:")
    for name in sorted(worst, key=worst.get, reverse=True)[:6]:
        print(f"  {worst[name]:.2e}  {name}")
