"""explain --values --worked OP: one row of an op's backward with its actual numbers substituted
into docs/backward.md's formula, each piece printed so that it can be checked on a calculator.

    LayerNorm      row 0: x, μ, σ², r, x̂, dy, w, dx̂, mean(dx̂), mean(dx̂ ⊙ x̂), dx
    CrossEntropy   row 0: the logits z, lse(z), the softmax p, the target, dlogits = (p − onehot) · dL/N
    Attention      head 0, row 1 (the first whose softmax has two elements): att, datt, datt ⊙ att, the
                   row sum, ds; then row 0, and why dq's row 0 is exactly zero

The op's inputs are kept by a forward hook (tensor.register_forward_hook, `recording`) while
the trace runs; the gradients are the trace's own (Op.out_grad, Input.grad). The numbers are
recomputed here in float64 from those, and the line `engine:` prints what the engine's backward
returned for the same row, with the largest difference.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from ..tensor import register_forward_hook

WORKED = ("LayerNorm", "CrossEntropy", "Attention")
DIGITS = 6                   # significant digits: enough to redo each line on a calculator


@contextlib.contextmanager
def recording(op_name):
    """While inside, keeps a copy of the inputs of every op named op_name: {id(output): [arrays]}."""
    kept = {}

    def hook(ctx, inputs, out):
        if ctx.name == op_name and out._ctx is ctx:
            kept[id(out)] = [np.array(t.data, copy=True) for t in inputs]

    with register_forward_hook(hook):
        yield kept


def num(v):
    return f"{float(v):.{DIGITS}g}"


def vec(a):
    return "[" + " ".join(num(v) for v in np.ravel(a)) + "]"


def worked_lines(op, inputs, eps=1e-5):
    """The worked lines for one traced op (an explain Op with its arrays kept) whose forward
    inputs were `inputs` (a list of arrays)."""
    if op.out_grad is None:
        return [f"(--worked: the arrays of step {op.step} were not kept)"]
    return {"LayerNorm": _layer_norm, "CrossEntropy": _cross_entropy, "Attention": _attention}[op.name](op, inputs, eps)


def _layer_norm(op, inputs, eps):
    x = np.asarray(inputs[0], dtype=np.float64).reshape(-1, inputs[0].shape[-1])[0]      # row 0, (C,)
    w = np.asarray(inputs[1], dtype=np.float64)
    dy = np.asarray(op.out_grad, dtype=np.float64).reshape(-1, x.size)[0]
    C = x.size
    mu = x.mean()
    var = ((x - mu) ** 2).mean()
    r = 1.0 / math.sqrt(var + eps)
    xhat = (x - mu) * r
    dxhat = dy * w
    m1, m2 = dxhat.mean(), (dxhat * xhat).mean()
    dx = r * (dxhat - m1 - xhat * m2)
    engine = np.asarray(op.inputs[0].grad, dtype=np.float64).reshape(-1, C)[0]
    return [
        f"worked numbers: row 0 of step {op.step} LayerNorm ({op.module}), docs/backward.md \"Layer norm\":",
        "  dx_i = r (dx̂_i − mean(dx̂) − x̂_i · mean(dx̂ ⊙ x̂)),  x̂ = (x − μ) r,  dx̂ = dy ⊙ w",
        f"  x (row 0 of the input, {C} wide) = {vec(x)}",
        f"  μ = mean(x) = {num(mu)}",
        f"  σ² = mean((x − μ)²) = {num(var)}",
        f"  r = 1/√(σ² + ε) = 1/√({num(var)} + {eps:g}) = {num(r)}",
        f"  x̂ = (x − μ) r = {vec(xhat)}",
        f"  dy (row 0 of what it received) = {vec(dy)}",
        f"  w = {vec(w)}",
        f"  dx̂ = dy ⊙ w = {vec(dxhat)}",
        f"  mean(dx̂) = {num(m1)}",
        f"  mean(dx̂ ⊙ x̂) = {num(m2)}",
        f"  dx = r (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ⊙ x̂)) = {vec(dx)}",
        f"  engine: dx row 0 = {vec(engine)}  (largest difference {np.abs(engine - dx).max():.2g}: "
        f"float32 against float64)",
    ]


def _cross_entropy(op, inputs, eps):
    logits = np.asarray(inputs[0], dtype=np.float64)
    V = logits.shape[-1]
    z = logits.reshape(-1, V)
    targets = np.asarray(inputs[1]).reshape(-1)
    N = z.shape[0]
    dL = float(np.asarray(op.out_grad))
    z0, t = z[0], int(targets[0])
    m = z0.max()
    lse = m + math.log(np.exp(z0 - m).sum())
    p = np.exp(z0 - lse)
    onehot = np.eye(V)[t]
    d = (p - onehot) * dL / N
    engine = np.asarray(op.inputs[0].grad, dtype=np.float64).reshape(-1, V)[0]
    return [
        f"worked numbers: row 0 of step {op.step} CrossEntropy, docs/backward.md \"Cross-entropy: softmax minus one-hot\":",
        "  loss_n = lse(z_n) − z_n[t_n];  dlogits_n = (softmax(z_n) − onehot(t_n)) · dL / N",
        f"  z (row 0 of the logits, {V} wide) = {vec(z0)}",
        f"  lse(z) = max + log Σ exp(z − max) = {num(m)} + {num(lse - m)} = {num(lse)}",
        f"  p = exp(z − lse) = {vec(p)}   (sums to {num(p.sum())})",
        f"  t = {t}: p[t] = {num(p[t])}, the row's loss −log p[t] = {num(-math.log(p[t]))}",
        f"  dL = {num(dL)} (what it received), N = {N} rows (the mean)",
        f"  dlogits = (p − onehot(t)) · dL / N = {vec(d)}",
        f"  engine: dlogits row 0 = {vec(engine)}  (largest difference {np.abs(engine - d).max():.2g})",
    ]


def _attention(op, inputs, eps):
    q, k, v = (np.asarray(a, dtype=np.float64)[0, 0] for a in inputs[:3])      # batch 0, head 0: (T, D)
    T, D = q.shape
    dout = np.asarray(op.out_grad, dtype=np.float64)[0, 0]
    s = q @ k.T / math.sqrt(D)
    s = np.where(np.triu(np.ones((T, T), dtype=bool), 1), -np.inf, s)
    att = np.exp(s - s.max(1, keepdims=True))
    att /= att.sum(1, keepdims=True)
    datt = dout @ v.T
    lines = [f"worked numbers: batch 0, head 0 of step {op.step} Attention ({op.module}), "
             "docs/backward.md \"Causal self-attention\" (T = {T}, D = {D}):".replace("{T}", str(T)).replace("{D}", str(D)),
             "  datt = dout vᵀ;  ds = att ⊙ (datt − rowsum(datt ⊙ att)) (the softmax rule, y = att, dy = datt);"
             "  dq = ds k / √D"]
    if len(inputs) > 3 and inputs[3] is not None and np.ndim(inputs[3]):
        lines.append("  (dropout on: datt is da ⊙ drop; the numbers below leave the mask out)")
    dq_engine = np.asarray(op.inputs[0].grad, dtype=np.float64)[0, 0]
    for i in ([1] if T > 1 else []) + [0]:
        y, dy = att[i, :i + 1], datt[i, :i + 1]
        prod = dy * y
        total = prod.sum()
        ds = y * (dy - total)
        dq = ds @ k[:i + 1] / math.sqrt(D)
        lines += [f"  row {i} (position {i} sees keys 0..{i}: its softmax has {i + 1} element{'s' if i else ''}):",
                  f"    y = att[{i}, :{i + 1}] = {vec(y)}",
                  f"    dy = datt[{i}, :{i + 1}] = (dout vᵀ)[{i}, :{i + 1}] = {vec(dy)}",
                  f"    dy ⊙ y = {vec(prod)}",
                  f"    rowsum(dy ⊙ y) = {num(total)}",
                  f"    ds = y ⊙ (dy − rowsum) = {vec(ds)}",
                  f"    dq[{i}] = ds k[:{i + 1}] / √{D} = {vec(dq)}",
                  f"    engine: dq[{i}] = {vec(dq_engine[i])}  (largest difference {np.abs(dq_engine[i] - dq).max():.2g})"]
    lines.append("  why dq's row 0 is zero: position 0 attends to itself alone, so att[0, 0] = 1 and "
                 "ds[0, 0] = 1 · (datt[0, 0] − datt[0, 0] · 1) = 0. A one-element softmax is 1 whatever its "
                 "score, so position 0's query cannot change the output: no gradient reaches it, in every head.")
    return lines


class Worked:
    """--worked OP for one run: `with worked.recording():` around the trace keeps the inputs;
    worked(op), the Listing's hook, gives the lines for the first OP the listing shows (and
    None for every other op); after the trace, lines_for(trace) gives them where the listing
    printed no values (the HTML page's side panel). .step: the op worked (None: none yet)."""

    def __init__(self, op_name, shown=lambda op: True):
        self.op_name, self.shown, self.kept, self.step, self.lines = op_name, shown, {}, None, None

    @contextlib.contextmanager
    def recording(self):
        with recording(self.op_name) as kept:
            self.kept = kept
            yield self

    def __call__(self, op):
        if self.step is not None or op.name != self.op_name or op.node not in self.kept or not self.shown(op):
            return None
        self.step, self.lines = op.step, worked_lines(op, self.kept[op.node])
        return [""] + self.lines + [""]

    def lines_for(self, trace):
        if self.step is None:
            for op in trace.ops:
                if self(op) is not None:
                    break
        return self.step, self.lines
