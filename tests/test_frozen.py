"""Frozen parameters cost nothing: a parameter with requires_grad=False gets no gradient, and
none is computed for it (Linear's dW GEMM is not called, a frozen embedding's backward does
not run); AdamW skips parameters without a gradient. Measured by behaviour, not by time:
the GEMMs the backward calls (a spy on the kernels' matmul) and the ops whose backward ran
(the engine's backward hook)."""
import numpy as np
import pytest

from tinygrad_gpt import GPTModel, kernels, manual_seed
from tinygrad_gpt import functional as F
from tinygrad_gpt.kernels import reference
from tinygrad_gpt.nn import Linear
from tinygrad_gpt.optim import AdamW
from tinygrad_gpt.tensor import Tensor, register_backward_hook

CFG = {"vocab_size": 50, "context_length": 16, "emb_dim": 32, "n_heads": 2, "n_layers": 4,
       "drop_rate": 0.0, "qkv_bias": True}
B, T = 2, 16


class GemmSpy:
    """Counts the kernels' matmul calls and their FLOPs (2 m n k each) while switched on."""

    def __init__(self, monkeypatch):
        self.on, self.calls, self.flops = False, [], 0
        plain = reference.matmul

        def spy(a, b, out=None):
            if self.on:
                self.calls.append((a.shape, b.shape))
                self.flops += 2 * int(np.prod(a.shape[:-1])) * a.shape[-1] * b.shape[-1]
            return plain(a, b, out=out)
        monkeypatch.setattr(reference, "matmul", spy)


@pytest.fixture
def spy(monkeypatch):
    with kernels.use("numpy"):                 # reference.matmul is then every GEMM of a Linear
        yield GemmSpy(monkeypatch)


def ops_run_backward(loss):
    """The names of the ops whose backward ran, and each op's returned gradients."""
    seen = []
    with register_backward_hook(lambda node, ctx, g, grads: seen.append((ctx.name, grads))):
        loss.backward()
    return seen


def test_a_frozen_linear_weight_gets_no_gradient_and_its_dW_gemm_is_not_called(spy):
    manual_seed(0)
    layer = Linear(8, 5)
    layer.weight.requires_grad = False
    x = Tensor(np.random.default_rng(0).standard_normal((3, 4, 8)).astype(np.float32), requires_grad=True)
    y = layer(x)
    spy.on = True
    seen = ops_run_backward((y * y).sum())
    assert layer.weight.grad is None and layer.bias.grad is not None and x.grad is not None
    assert spy.calls == [((12, 5), (5, 8))]                   # dx = dy W only; no dW = dy^T x
    (name, grads), = [s for s in seen if s[0] == "Linear"]
    assert grads[1] is None                                   # not computed, rather than dropped
    # nothing upstream needs a gradient either: no GEMM at all, only the bias's sum
    spy.on = False
    out = (layer(Tensor(x.data)) * 1.0).sum()
    spy.calls.clear()
    spy.on = True
    out.backward()
    assert spy.calls == [] and layer.weight.grad is None


def test_a_frozen_embedding_runs_no_backward():
    manual_seed(0)
    model = GPTModel(CFG)
    ids = np.random.default_rng(1).integers(0, CFG["vocab_size"], (B, T))
    model.tok_emb.weight.requires_grad = False
    seen = ops_run_backward(F.cross_entropy(model(ids), ids))
    assert [n for n, _ in seen].count("Embedding") == 1       # the position embedding only
    assert model.tok_emb.weight.grad is None and model.pos_emb.weight.grad is not None
    model.zero_grad()
    model.pos_emb.weight.requires_grad = False
    seen = ops_run_backward(F.cross_entropy(model(ids), ids))
    assert "Embedding" not in [n for n, _ in seen] and model.pos_emb.weight.grad is None


def freeze_all_but(model, *prefixes):
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(prefixes)


def backward_gemm_flops(spy, model, ids):
    loss = F.cross_entropy(model(ids), ids)
    spy.flops, spy.calls = 0, []
    spy.on = True
    try:
        seen = ops_run_backward(loss)
    finally:
        spy.on = False
    return spy.flops, len(seen)


def linear_flops(layers, rows, dx=True):
    """GEMM FLOPs of these Linears' backward: dW (2 N in out) and, if asked, dx (the same)."""
    return sum((2 if dx else 1) * 2 * rows * m.in_features * m.out_features for m in layers)


def test_a_mostly_frozen_gpt_backward_does_measurably_less_work(spy):
    """Chapter 6's set-up (the last block, the final norm and the head trainable) against the
    full backward: exactly the GEMMs of the trainable suffix, a fraction of the full ones."""
    manual_seed(0)
    model = GPTModel(CFG)
    ids = np.random.default_rng(2).integers(0, CFG["vocab_size"], (B, T))
    full, full_ops = backward_gemm_flops(spy, model, ids)
    last = [m for m in model.trf_blocks[-1].modules() if isinstance(m, Linear)]
    every = [m for m in model.modules() if isinstance(m, Linear)]
    assert full == linear_flops(every, B * T)                 # every Linear: dx and dW

    model.zero_grad()
    freeze_all_but(model, f"trf_blocks.{CFG['n_layers'] - 1}.", "final_norm.", "out_head.")
    partial, partial_ops = backward_gemm_flops(spy, model, ids)
    assert partial == linear_flops(last + [model.out_head], B * T)   # the suffix only, nothing dropped
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)

    model.zero_grad()
    freeze_all_but(model, "out_head.")
    head_only, head_ops = backward_gemm_flops(spy, model, ids)
    assert head_only == linear_flops([model.out_head], B * T, dx=False)   # dW only: no dx is needed
    print(f"\nbackward GEMM FLOPs: full {full:,} ({full_ops} ops), last block + head {partial:,} "
          f"({partial / full:.0%}, {partial_ops} ops), head only {head_only:,} ({head_only / full:.1%}, "
          f"{head_ops} ops)")
    assert partial < 0.35 * full and head_only < 0.05 * full and head_ops == 2   # CrossEntropy, Linear


def test_adamw_skips_frozen_parameters_and_leaves_them_unmoved():
    manual_seed(0)
    model = GPTModel(CFG)
    freeze_all_but(model, "out_head.", "final_norm.")
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)      # all of them, as the book passes
    ids = np.random.default_rng(3).integers(0, CFG["vocab_size"], (B, T))
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(ids), ids).backward()
        opt.step()
    params = dict(model.named_parameters())
    moved = {n for n in params if not np.array_equal(before[n], params[n].data)}
    assert moved == {"out_head.weight", "final_norm.scale", "final_norm.shift"}
    assert {id(params[n]) for n in moved} == set(opt.state)         # no moments for frozen ones


def test_the_backward_trace_of_a_lora_classifier_reaches_only_the_adapters():
    """explain's trace (through the same hooks) on appendix E's model: gradients reach the A
    and B matrices only; every frozen weight is absent from what backward fed."""
    from tinygrad_gpt.explain import trace_backward
    from tinygrad_gpt.finetune import add_lora, as_classifier
    manual_seed(0)
    model = add_lora(as_classifier(GPTModel(CFG), 2), rank=2, alpha=2.0)
    rng = np.random.default_rng(4)
    trace = trace_backward(model, rng.integers(0, CFG["vocab_size"], (1, 8)), rng.integers(0, 2, (1, 8)))
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert sorted(trace.received) == trainable and all(n.endswith((".A", ".B")) for n in trainable)
    assert len(trainable) == 2 * (6 * CFG["n_layers"] + 1)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert "Embedding" not in {op.name for op in trace.ops}          # frozen: its backward never ran


def test_a_frozen_layer_norm_computes_dx_but_no_scale_or_shift_gradient(monkeypatch):
    """w and b frozen: the kernel is told params=False and returns no dw, db (nothing computed
    and dropped); dx is what it is with them trainable."""
    from tinygrad_gpt.nn import LayerNorm
    calls = []
    plain = reference.layernorm_backward

    def spy(*args, **kw):
        calls.append(kw.get("params", True))
        return plain(*args, **kw)
    monkeypatch.setattr(reference, "layernorm_backward", spy)
    x0 = np.random.default_rng(1).standard_normal((3, 4, 8)).astype(np.float32)
    dx = {}
    with kernels.use("numpy"):
        for frozen in (False, True):
            norm = LayerNorm(8)
            for p in norm.parameters():
                p.requires_grad = not frozen
            x = Tensor(x0.copy(), requires_grad=True)
            seen = ops_run_backward((norm(x) * Tensor(x0)).sum())
            (_, grads), = [s for s in seen if s[0] == "LayerNorm"]
            dx[frozen] = x.grad
            if frozen:
                assert grads[1] is None and grads[2] is None
                assert all(p.grad is None for p in norm.parameters())
    assert calls == [True, False]
    np.testing.assert_array_equal(dx[True], dx[False])
