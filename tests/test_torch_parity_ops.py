"""Every op against PyTorch: forward values and the gradients of every input, on random
inputs, in float64 (relative error < 1e-10) and float32 (< 1e-5). Skipped without torch.

Relative error of an array = max |ours - torch| / max |torch| (norm-wise, so that entries
near zero do not blow it up). `pytest -s` prints the worst one per op and dtype.
"""
import math

import numpy as np
import pytest

from helpers import require

import tinygrad_gpt.functional as F
from tinygrad_gpt import Tensor, concatenate

torch = require("torch")
TF = torch.nn.functional

TOL = {"float64": 1e-10, "float32": 1e-5}
WORST = {}                                             # (op, dtype) -> worst relative error seen


@pytest.fixture(scope="module", autouse=True)
def print_worst_errors():
    yield
    if WORST:
        print("\nworst relative error vs PyTorch (forward and every gradient):")
        for (op, dtype), err in sorted(WORST.items()):
            print(f"  {op:36s} {dtype:8s} {err:.2e}")


def rel_err(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    scale = np.abs(theirs).max(initial=0.0)
    return float(np.abs(ours - theirs).max(initial=0.0) / (scale if scale > 0 else 1.0))


def compare(name, dtype, ours_fn, torch_fn, arrays, seed=0):
    """Run both on copies of `arrays`, backpropagate the same random upstream gradient,
    and assert forward and every input gradient agree to TOL[dtype]."""
    arrays = [np.asarray(a).astype(dtype) for a in arrays]
    ours = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, tout = ours_fn(*ours), torch_fn(*theirs)
    assert out.dtype == np.dtype(dtype), f"{name}: output dtype {out.dtype}, input {dtype}"
    G = np.random.default_rng(seed + 100).standard_normal(out.shape).astype(dtype)
    out.backward(G)
    tout.backward(torch.from_numpy(G))
    errs = {"forward": rel_err(out.data, tout.detach().numpy())}
    for i, (o, t) in enumerate(zip(ours, theirs)):
        assert o.grad is not None and o.grad.dtype == np.dtype(dtype), f"{name}: grad {i}"
        errs[f"grad {i}"] = rel_err(o.grad, t.grad.numpy())
    worst = max(errs.values())
    key = (name, dtype)
    WORST[key] = max(WORST.get(key, 0.0), worst)
    print(f"\n{name} {dtype}: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    assert worst < TOL[dtype], f"{name} {dtype}: relative errors {errs}"


def rand(*shape, seed=0, low=None, high=None):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) if low is None else rng.uniform(low, high, shape)


# ----------------------------------------------------------------------------- the small ops
CAUSAL_4 = np.triu(np.ones((4, 4), dtype=bool), 1)
BOOL_MASK = rand(3, 5, seed=7) > 0
SMALL_OPS = {
    # name: (ours, torch, input arrays)
    "add (broadcast)": (lambda a, b: a + b, lambda a, b: a + b, [rand(2, 1, 3), rand(4, 1, seed=1)]),
    "sub (broadcast)": (lambda a, b: a - b, lambda a, b: a - b, [rand(3, 4), rand(4, seed=1)]),
    "mul (broadcast)": (lambda a, b: a * b, lambda a, b: a * b, [rand(2, 3, 4), rand(3, 1, seed=1)]),
    "div (broadcast)": (lambda a, b: a / b, lambda a, b: a / b, [rand(2, 3), rand(2, 1, seed=1, low=0.5, high=2)]),
    "scalar ops": (lambda a: (2.0 - a) * 3.0 / 4.0 + 1.0 - 5.0 / (a * a + 1.0),
                   lambda a: (2.0 - a) * 3.0 / 4.0 + 1.0 - 5.0 / (a * a + 1.0), [rand(3, 4)]),
    "pow 2": (lambda a: a ** 2, lambda a: a ** 2, [rand(3, 4)]),
    "pow 3": (lambda a: a ** 3, lambda a: a ** 3, [rand(3, 4)]),
    "pow 0.5": (lambda a: a ** 0.5, lambda a: a ** 0.5, [rand(3, 4, low=0.2, high=3)]),
    "pow -1.5": (lambda a: a ** -1.5, lambda a: a ** -1.5, [rand(3, 4, low=0.2, high=3)]),
    "neg": (lambda a: -a, lambda a: -a, [rand(2, 3)]),
    "matmul 2d": (lambda a, b: a @ b, lambda a, b: a @ b, [rand(3, 4), rand(4, 5, seed=1)]),
    "matmul batch broadcast": (lambda a, b: a @ b, lambda a, b: a @ b, [rand(2, 1, 3, 4), rand(3, 4, 5, seed=1)]),
    "matmul vector": (lambda a, b: a @ b, lambda a, b: a @ b, [rand(4), rand(2, 4, 3, seed=1)]),
    "sum all": (lambda a: a.sum(), lambda a: a.sum(), [rand(2, 3, 4)]),
    "sum axis keepdims": (lambda a: a.sum(1, keepdims=True), lambda a: a.sum(1, keepdim=True), [rand(2, 3, 4)]),
    "sum axes": (lambda a: a.sum(axis=(0, 2)), lambda a: a.sum(dim=(0, 2)), [rand(2, 3, 4)]),
    "mean all": (lambda a: a.mean(), lambda a: a.mean(), [rand(2, 3, 4)]),
    "mean axis": (lambda a: a.mean(-1), lambda a: a.mean(-1), [rand(2, 3, 4)]),
    "mean axis keepdims": (lambda a: a.mean(0, keepdims=True), lambda a: a.mean(0, keepdim=True), [rand(2, 3, 4)]),
    "max all": (lambda a: a.max(), lambda a: a.max(), [rand(2, 3, 4)]),
    "max axis": (lambda a: a.max(1), lambda a: torch.amax(a, 1), [rand(2, 3, 4)]),
    "max axis keepdims": (lambda a: a.max(-1, keepdims=True), lambda a: torch.amax(a, -1, keepdim=True), [rand(2, 3, 4)]),
    "reshape -1": (lambda a: a.reshape(3, -1) * 1.5, lambda a: a.reshape(3, -1) * 1.5, [rand(2, 3, 4)]),
    "transpose": (lambda a: a.transpose(0, 2), lambda a: a.transpose(0, 2), [rand(2, 3, 4)]),
    "permute": (lambda a: a.permute(2, 0, 1), lambda a: a.permute(2, 0, 1), [rand(2, 3, 4)]),
    "permute negative": (lambda a: a.permute(0, -1, 1), lambda a: a.permute(0, -1, 1), [rand(2, 3, 4)]),
    "getitem slices": (lambda a: a[1:, ::2], lambda a: a[1:, ::2], [rand(3, 5)]),
    "getitem int": (lambda a: a[-1, 2:], lambda a: a[-1, 2:], [rand(3, 5)]),
    "getitem repeated ids": (lambda a: a[[0, 2, 0, 0]], lambda a: a[[0, 2, 0, 0]], [rand(3, 5)]),
    "getitem columns": (lambda a: a[:, [4, 1, 4]], lambda a: a[:, [4, 1, 4]], [rand(3, 5)]),
    "getitem bool mask": (lambda a: a[BOOL_MASK], lambda a: a[torch.from_numpy(BOOL_MASK)], [rand(3, 5)]),
    "exp": (lambda a: a.exp(), lambda a: a.exp(), [rand(3, 4)]),
    "log": (lambda a: a.log(), lambda a: a.log(), [rand(3, 4, low=0.1, high=4)]),
    "tanh": (lambda a: a.tanh(), lambda a: a.tanh(), [rand(3, 4)]),
    "sqrt": (lambda a: a.sqrt(), lambda a: a.sqrt(), [rand(3, 4, low=0.1, high=4)]),
    "masked_fill": (lambda a: a.masked_fill(CAUSAL_4, -1e4),
                    lambda a: a.masked_fill(torch.from_numpy(CAUSAL_4), -1e4), [rand(2, 2, 4, 4)]),
    "split": (lambda a: concatenate([p * (i + 1.0) for i, p in enumerate(a.split([1, 3, 1], 1))][::-1], 1),
              lambda a: torch.cat([p * (i + 1.0) for i, p in enumerate(a.split([1, 3, 1], 1))][::-1], 1),
              [rand(2, 5, 3)]),
    "split equal": (lambda a: a.split(2, -1)[1] * 2.0, lambda a: a.split(2, -1)[1] * 2.0, [rand(2, 5)]),
    "concatenate": (lambda a, b, c: concatenate([a, b, c], axis=1), lambda a, b, c: torch.cat([a, b, c], 1),
                    [rand(2, 1, 3), rand(2, 4, 3, seed=1), rand(2, 2, 3, seed=2)]),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(SMALL_OPS))
def test_small_op_forward_and_grads_match_pytorch(name, dtype):
    ours, theirs, arrays = SMALL_OPS[name]
    compare(name, dtype, ours, theirs, arrays)


# ----------------------------------------------------------------------------- the fused ops
IDS = np.array([[1, 6, 6, 0], [6, 2, 1, 1]])                     # repeated ids
TARGETS = np.array([[3, -100, 3, 0], [9, 9, -100, 2]])           # repeated and ignored


def _keep(shape, p, seed):                                        # the mask F draws from rng
    return (np.random.default_rng(seed).random(shape, dtype=np.float32) >= p)


def _torch_attention(q, k, v, causal, keep=None, p=0.0):
    T, D = q.shape[-2], q.shape[-1]
    s = q @ k.transpose(-1, -2) / math.sqrt(D)
    if causal:
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    a = torch.softmax(s, -1)
    if keep is not None:
        a = a * torch.from_numpy(keep.astype(np.float64)).to(q.dtype) / (1.0 - p)
    return a @ v


DROP_KEEP = _keep((3, 5), 0.3, 4)
ATT_KEEP = _keep((2, 2, 5, 5), 0.2, 6)
QKV = [rand(2, 2, 5, 4, seed=s) for s in (0, 1, 2)]
FUSED_OPS = {
    "softmax": (lambda a: F.softmax(a), lambda a: torch.softmax(a, -1), [rand(2, 3, 6)]),
    "softmax axis 1": (lambda a: F.softmax(a, 1), lambda a: torch.softmax(a, 1), [rand(2, 3, 6)]),
    "log_softmax": (lambda a: F.log_softmax(a), lambda a: torch.log_softmax(a, -1), [rand(2, 3, 6)]),
    "log_softmax axis 0": (lambda a: F.log_softmax(a, dim=0), lambda a: torch.log_softmax(a, 0), [rand(2, 3, 6)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, w, b),
                   lambda x, w, b: TF.layer_norm(x, (8,), w, b, eps=1e-5),
                   [rand(2, 3, 8, seed=0) * 3 + 1, rand(8, seed=1), rand(8, seed=2)]),
    "gelu": (F.gelu, lambda a: TF.gelu(a, approximate="tanh"), [rand(4, 7) * 3]),
    "cross_entropy": (lambda z: F.cross_entropy(z, TARGETS),
                      lambda z: TF.cross_entropy(z.reshape(-1, 10), torch.from_numpy(TARGETS.reshape(-1))),
                      [rand(2, 4, 10) * 2]),
    "cross_entropy logits 1e4": (lambda z: F.cross_entropy(z, TARGETS),
                                 lambda z: TF.cross_entropy(z.reshape(-1, 10), torch.from_numpy(TARGETS.reshape(-1))),
                                 [rand(2, 4, 10, seed=3) * 1e4]),
    "embedding": (lambda W: F.embedding(W, IDS), lambda W: TF.embedding(torch.from_numpy(IDS), W), [rand(7, 5)]),
    "linear": (F.linear, TF.linear, [rand(2, 3, 4), rand(6, 4, seed=1), rand(6, seed=2)]),
    "linear no bias": (F.linear, TF.linear, [rand(3, 4), rand(6, 4, seed=1)]),
    "dropout": (lambda x: F.dropout(x, 0.3, rng=np.random.default_rng(4)),
                lambda x: x * torch.from_numpy(DROP_KEEP).to(x.dtype) / 0.7, [rand(3, 5)]),
    "attention causal": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
                         lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=True), QKV),
    "attention non-causal": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=False),
                             lambda q, k, v: TF.scaled_dot_product_attention(q, k, v, is_causal=False), QKV),
    "attention causal (manual)": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
                                  lambda q, k, v: _torch_attention(q, k, v, True), QKV),
    "attention dropout": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.2,
                                                                         rng=np.random.default_rng(6)),
                          lambda q, k, v: _torch_attention(q, k, v, True, ATT_KEEP, 0.2), QKV),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(FUSED_OPS))
def test_fused_op_forward_and_grads_match_pytorch(name, dtype, backend):
    ours, theirs, arrays = FUSED_OPS[name]
    compare(f"F.{name} [{backend}]", dtype, ours, theirs, arrays)
