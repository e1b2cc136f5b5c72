"""explain --values --worked OP: one row of an op's backward with its actual numbers substituted
into docs/backward.md's formula, each piece printed so that it can be checked on a calculator.

    LayerNorm      row 0: x, μ, σ², r, x̂, dy, w, dx̂, mean(dx̂), mean(dx̂ ⊙ x̂), dx
    CrossEntropy   row 0: the logits z, lse(z), the softmax p, the target, dlogits = (p − onehot) · dL/N
    Attention      head 0, row 1 (the first whose softmax has two elements): att, datt, datt ⊙ att, the
                   row sum, ds; then row 0, and why dq's row 0 is exactly zero
    GELU           row 0's first 8: x, u, t = tanh u, du/dx, the local derivative, dy, dx
    Linear         dx[0] = dy[0] W, dW[0, 0] = dy[:, 0] · x[:, 0], db[0] = Σ dy[:, 0]
    Embedding      the id read most often: the rows of dout at its positions and their sum, dW[id]
    Softmax        a Softmax op's row 0, or (micro) the last row of attention's weights: y, dy, dx
    Add            the first Add with a broadcast input: the copies of dout and their sum

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

WORKED = ("LayerNorm", "CrossEntropy", "Attention", "GELU", "Linear", "Embedding", "Softmax", "Add")
FROM = {"Softmax": ("Softmax", "Attention")}   # micro has no Softmax op: its softmax runs inside Attention
WIDE = 8                     # a longer row is worked on its first WIDE numbers
DIGITS = 6                   # significant digits: enough to redo each line on a calculator


@contextlib.contextmanager
def recording(op_name):
    """While inside, keeps a copy of the inputs of every op named op_name (or that --worked op_name
    reads, FROM): {id(output): [arrays]}."""
    kept, names = {}, FROM.get(op_name, (op_name,))

    def hook(ctx, inputs, out):
        if ctx.name in names and out._ctx is ctx:
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
    return {"LayerNorm": _layer_norm, "CrossEntropy": _cross_entropy, "Attention": _attention, "GELU": _gelu,
            "Linear": _linear, "Embedding": _embedding, "Add": _add}[op.name](op, inputs, eps)


def worked_softmax(op, inputs):
    """--worked Softmax: a Softmax op's row 0, or, in a model whose softmax runs inside the fused
    Attention (micro), the last row of head 0's attention weights (a softmax over every position)."""
    from ..kernels import reference
    if op.out_grad is None:
        return [f"(--worked: the arrays of step {op.step} were not kept)"]
    if op.name == "Softmax":
        x = np.asarray(inputs[0], dtype=np.float64)
        x0 = x.reshape(-1, x.shape[-1])[0]
        y = np.exp(x0 - x0.max())
        y /= y.sum()
        dy = np.asarray(op.out_grad, dtype=np.float64).reshape(-1, x.shape[-1])[0]
        engine = np.asarray(op.inputs[0].grad, dtype=np.float64).reshape(-1, x.shape[-1])[0]
        head = [f"worked numbers: row 0 of step {op.step} Softmax ({op.module}), docs/backward.md \"Softmax\":",
                f"  x (row 0 of the input) = {vec(x0)}"]
        what = "engine: dx row 0"
    else:
        q, k, v = (np.asarray(a, dtype=np.float64)[0, 0] for a in inputs[:3])      # batch 0, head 0: (T, D)
        T, D = q.shape
        s = q @ k.T / math.sqrt(D)
        s = np.where(np.triu(np.ones((T, T), dtype=bool), 1), -np.inf, s)
        att = np.exp(s - s.max(1, keepdims=True))
        att /= att.sum(1, keepdims=True)
        dout = np.asarray(op.out_grad, dtype=np.float64)[0, 0]
        y, dy = att[T - 1], (dout @ v.T)[T - 1]
        engine = reference.softmax_backward(dy[None].astype(np.float32), y[None].astype(np.float32))[0]
        head = [f"worked numbers: the softmax inside step {op.step} Attention ({op.module}), batch 0, head 0, row "
                f"{T - 1} (position {T - 1} sees all {T}), docs/backward.md \"Softmax\":",
                f"  y = att[{T - 1}] = softmax(q[{T - 1}] kᵀ / √{D}) = {vec(y)}",
                f"  dy = datt[{T - 1}] = dout[{T - 1}] vᵀ = {vec(dy)}  (dout, v: the attention's)"]
        what = "engine: reference.softmax_backward(dy, y) in float32, the Softmax op's kernel"
        y, dy = y, dy
    if op.name == "Softmax":
        head.append(f"  y = softmax(x) = exp(x − max) / Σ exp(x − max) = {vec(y)}")
        head.append(f"  dy (row 0 of what it received) = {vec(dy)}")
    prod = dy * y
    dx = y * (dy - prod.sum())
    return head + [
        "  dx_i = y_i (dy_i − Σ_j dy_j y_j)   (the Jacobian diag(y) − y yᵀ applied to dy)",
        f"  dy ⊙ y = {vec(prod)}",
        f"  Σ dy ⊙ y = {num(prod.sum())}",
        f"  dx = y ⊙ (dy − Σ dy ⊙ y) = {vec(dx)}   (sums to {num(dx.sum())}: a softmax's gradient sums to 0)",
        f"  {what} = {vec(engine)}  (largest difference {np.abs(np.asarray(engine, dtype=np.float64) - dx).max():.2g})",
    ]


def _gelu(op, inputs, eps):
    x = np.asarray(inputs[0], dtype=np.float64)
    C = x.shape[-1]
    n = min(C, WIDE)
    x0 = x.reshape(-1, C)[0, :n]
    dy = np.asarray(op.out_grad, dtype=np.float64).reshape(-1, C)[0, :n]
    c = math.sqrt(2 / math.pi)
    u = c * (x0 + 0.044715 * x0 ** 3)
    t = np.tanh(u)
    dudx = c * (1 + 3 * 0.044715 * x0 ** 2)
    local = 0.5 * (1 + t) + 0.5 * x0 * (1 - t * t) * dudx
    dx = dy * local
    engine = np.asarray(op.inputs[0].grad, dtype=np.float64).reshape(-1, C)[0, :n]
    cut = f"[0, :{n}]" if n < C else "[0]"
    return [
        f"worked numbers: row 0{f' (its first {n} of {C})' if n < C else ''} of step {op.step} GELU ({op.module}), "
        "docs/backward.md \"GELU (tanh approximation)\":",
        "  y = ½ x (1 + t), t = tanh u, u = √(2/π) (x + 0.044715 x³);  dx = dy (½ (1 + t) + ½ x (1 − t²) du/dx)",
        f"  x{cut} = {vec(x0)}",
        f"  u = √(2/π) (x + 0.044715 x³) = {vec(u)}",
        f"  t = tanh u = {vec(t)}",
        f"  du/dx = √(2/π) (1 + 3 · 0.044715 x²) = {vec(dudx)}",
        f"  dy/dx = ½ (1 + t) + ½ x (1 − t²) du/dx = {vec(local)}",
        f"  dy{cut} (what it received) = {vec(dy)}",
        f"  dx = dy ⊙ dy/dx = {vec(dx)}",
        f"  engine: dx{cut} = {vec(engine)}  (largest difference {np.abs(engine - dx).max():.2g})",
    ]


def _linear(op, inputs, eps):
    x = np.asarray(inputs[0], dtype=np.float64)
    w = np.asarray(inputs[1], dtype=np.float64)                                 # (out, in)
    x2 = x.reshape(-1, x.shape[-1])                                             # (N, in)
    dy = np.asarray(op.out_grad, dtype=np.float64).reshape(-1, w.shape[0])      # (N, out)
    N, n_out = dy.shape
    dx00 = float(dy[0] @ w[:, 0])
    dw00 = float(dy[:, 0] @ x2[:, 0])
    dx_row = dy[0] @ w
    lines = [f"worked numbers: step {op.step} Linear ({op.module}), y = x Wᵀ + b, docs/backward.md "
             "\"Matrix multiplication\" (x: {0}, W: {1}):".format("x".join(map(str, x2.shape)),
                                                                 "x".join(map(str, w.shape))),
             "  dx = dy W,  dW = dyᵀ x,  db = Σ over rows of dy",
             f"  dy[0] (row 0 of what it received, {n_out} wide) = {vec(dy[0])}",
             f"  W[:, 0] (column 0 of the weight) = {vec(w[:, 0])}",
             f"  dx[0, 0] = dy[0] · W[:, 0] = {num(dx00)}",
             f"  dx[0] = dy[0] W = {vec(dx_row)}",
             f"  dy[:, 0] (column 0 of what it received, {N} rows) = {vec(dy[:, 0])}",
             f"  x[:, 0] (column 0 of the input, saved by forward) = {vec(x2[:, 0])}",
             f"  dW[0, 0] = dy[:, 0] · x[:, 0] = {num(dw00)}"]
    engine_dx = np.asarray(op.inputs[0].grad, dtype=np.float64).reshape(-1, x.shape[-1])[0]
    diffs = [np.abs(engine_dx - dx_row).max()]
    lines.append(f"  engine: dx[0] = {vec(engine_dx)}")
    if op.inputs[1].grad is not None:
        engine_dw = float(np.asarray(op.inputs[1].grad, dtype=np.float64)[0, 0])
        diffs.append(abs(engine_dw - dw00))
        lines.append(f"  engine: dW[0, 0] = {num(engine_dw)}")
    if len(op.inputs) > 2 and op.inputs[2].grad is not None:
        db0 = float(dy[:, 0].sum())
        engine_db = float(np.asarray(op.inputs[2].grad, dtype=np.float64)[0])
        diffs.append(abs(engine_db - db0))
        lines.insert(-1 - (op.inputs[1].grad is not None), f"  db[0] = Σ_n dy[n, 0] = {num(db0)}")
        lines.append(f"  engine: db[0] = {num(engine_db)}")
    lines.append(f"  largest difference from the engine: {max(diffs):.2g}")
    return lines


def _embedding(op, inputs, eps):
    ids = np.asarray(inputs[1]).reshape(-1)
    dout = np.asarray(op.out_grad, dtype=np.float64).reshape(len(ids), -1)      # (N, C)
    values, counts = np.unique(ids, return_counts=True)
    row = int(values[np.argmax(counts)])                                        # the id read most often
    where = np.flatnonzero(ids == row)
    dW = dout[where].sum(0)
    engine = np.asarray(op.inputs[0].grad, dtype=np.float64)[row]
    V = np.shape(inputs[0])[0]
    lines = [f"worked numbers: step {op.step} Embedding ({op.module}), docs/backward.md \"Embedding: a gather "
             "forward, a scatter-add backward\":",
             "  forward out[n] = W[ids[n]];  backward dW[v] = Σ over the positions n with ids[n] = v of dout[n]",
             f"  ids = {' '.join(map(str, ids.tolist()))}: id {row} is read at position"
             f"{'s' if len(where) > 1 else ''} {', '.join(map(str, where.tolist()))}"]
    lines += [f"  dout[{n}] = {vec(dout[n])}" for n in where]
    lines += [f"  dW[{row}] = {' + '.join(f'dout[{n}]' for n in where)} = {vec(dW)}",
              f"  rows never read get zero: {V - len(values)} of {V} rows of dW are 0",
              f"  engine: dW[{row}] = {vec(engine)}  (largest difference {np.abs(engine - dW).max():.2g})"]
    return lines


def _add(op, inputs, eps):
    k = next((j for j, i in enumerate(op.inputs) if i.grad_shape is not None and i.grad_shape != tuple(i.shape)), 1)
    i = op.inputs[k]
    dout = np.asarray(op.out_grad, dtype=np.float64)
    shape = tuple(i.shape)
    extra = dout.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(a + extra for a, n in enumerate(shape) if n == 1 and dout.shape[a + extra] != 1)
    db = dout.sum(axis=axes).reshape(shape)
    first = (0,) * (len(shape) - 1)
    lead = dout.reshape((-1,) + dout.shape[extra:])                               # the broadcast copies
    name = i.arg or f"input {k}"
    lines = [f"worked numbers: step {op.step} Add ({op.module or '-'}), docs/backward.md \"Broadcasting: the adjoint "
             "of broadcast is sum\":",
             f"  out = a + b with {name} of shape {_shape(shape)} broadcast to {_shape(dout.shape)}: each {name} "
             "was read once per copy, so d" + name + " is dout summed over the broadcast axes "
             f"{', '.join(map(str, axes))}",
             "  the other input's gradient is dout itself (d(a + b)/da = 1)"]
    for c in range(lead.shape[0]):
        lines.append(f"  dout[{c}][{', '.join(map(str, first))}] (copy {c}, row 0) = {vec(lead[c][first])}")
    lines.append(f"  d{name}[{', '.join(map(str, first))}] = " + " + ".join(f"dout[{c}]" for c in range(lead.shape[0]))
                 + f" = {vec(db[first])}")
    if lead.shape[0] == 1:
        lines.append("  (one copy: a batch of 1; with --batch-size 2 the sum has two terms)")
    engine = np.asarray(i.grad, dtype=np.float64)[first]
    lines.append(f"  engine: d{name}[{', '.join(map(str, first))}] = {vec(engine)}  "
                 f"(largest difference {np.abs(engine - db[first]).max():.2g})")
    return lines


def _shape(shape):
    return "x".join(map(str, shape))


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
        if self.step is not None or op.name not in FROM.get(self.op_name, (self.op_name,)) \
                or op.node not in self.kept or not self.shown(op):
            return None
        if self.op_name == "Add" and all(i.grad_shape in (None, tuple(i.shape)) for i in op.inputs):
            return None                              # --worked Add: a broadcast one
        if self.op_name == "Softmax":
            self.step, self.lines = op.step, worked_softmax(op, self.kept[op.node])
        else:
            self.step, self.lines = op.step, worked_lines(op, self.kept[op.node])
        return [""] + self.lines + [""]

    def lines_for(self, trace):
        if self.step is None:
            for op in trace.ops:
                if self(op) is not None:
                    break
        return self.step, self.lines
