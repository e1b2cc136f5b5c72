"""Solutions to examples/backward_walkthrough.ipynb's exercises 1-6. Try them first: the notebook's
last section imports this file and checks each solution with the notebook's own checks.

    LayerNorm, at the end, is exercise 4's solution as a Function for the whole model:
    python examples/explain_backward.py --model micro --use-op examples/walkthrough_solutions.py:LayerNorm --train-steps 20
"""
import numpy as np

from tinygrad_gpt import Function


# ----------------------------------------------------------------------------- exercise 1: GELU
# With t = tanh u and d tanh(u)/du = 1 - t^2, the product rule gives
# dy/dx = 1/2 (1 + t) + 1/2 x (1 - t^2) du/dx, with du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
# (kernels/reference.py's gelu_backward is the same, in float32 discipline.)
def gelu_backward(dy, x):
    # y = 0.5 x (1 + t), t = tanh(u), u = c (x + 0.044715 x^3): the product rule, then the chain rule
    c = np.sqrt(2 / np.pi)
    t = np.tanh(c * (x + 0.044715 * x ** 3))
    dudx = c * (1.0 + 3 * 0.044715 * x ** 2)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dudx)


# ----------------------------------------------------------------------------- exercise 2: a broken Mul
# With `return grad * b, grad * b`, input 0's gradient is right and input 1's is grad * b instead
# of grad * a: wrong wherever a != b, i.e. every element here. Checked one input at a time,
# gradcheck passes a and names b (input 1) and its worst element; the analytic value it prints is
# R*b there, the numeric one R*a. A mistake that is right by coincidence (a = b, or a = 0 for a
# forgotten term) escapes at that element, which is why gradcheck uses random inputs and a random
# output direction R.
class BrokenMul(Function):
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    def backward(ctx, grad):
        a, b = ctx.saved
        return grad * b, grad * b                  # the second should be grad * a


# ----------------------------------------------------------------------------- exercise 3: embedding
# np.add.at adds for every occurrence of an index (an unbuffered scatter-add), which is what the
# chain rule asks: row 1 was read three times, so its gradient is the sum of three rows of dout.
# The engine's own embedding_backward (kernels/reference.py) does the same.
def embedding_backward(dout, ids, num_embeddings):
    dW = np.zeros((num_embeddings, dout.shape[1]), dtype=dout.dtype)
    np.add.at(dW, ids, dout)                       # scatter-add: right for repeated ids
    return dW


# ----------------------------------------------------------------------------- exercise 4: layer norm
def layer_norm_forward(x, w, b, eps=1e-5):         # x: (N, C)  w, b: (C,)
    mean = x.mean(axis=1, keepdims=True)           # (N, 1)
    xc = x - mean                                  # (N, C)
    var = (xc ** 2).mean(axis=1, keepdims=True)    # (N, 1)
    rstd = (var + eps) ** -0.5                     # (N, 1)
    xhat = xc * rstd                               # (N, C)
    return xhat * w + b, mean, rstd


# Bottom-up through the six lines. The two paths into xc (through xhat and through var) and the
# two into x (direct and through mean) add up. The closed form: dvar's path gives
# -xhat * mean(dxhat * xhat) * rstd, dmean's gives -mean(dxhat) * rstd (the var path contributes
# nothing to dmean, since sum(xc) = 0 on every row), which is reference.py's
# rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
def layer_norm_backward(dy, x, w, mean, rstd):
    g = {}
    C = x.shape[1]
    xc = x - mean
    xhat = xc * rstd
    g["db"] = dy.sum(axis=0)                                   # y = xhat * w + b
    g["dw"] = (dy * xhat).sum(axis=0)
    g["dxhat"] = dy * w
    g["drstd"] = (g["dxhat"] * xc).sum(axis=1, keepdims=True)  # xhat = xc * rstd
    dxc = g["dxhat"] * rstd
    g["dvar"] = -0.5 * rstd ** 3 * g["drstd"]                  # rstd = (var + eps) ** -0.5
    g["dxc"] = dxc + g["dvar"] * 2 * xc / C                    # var = mean(xc ** 2): the second path
    g["dmean"] = -g["dxc"].sum(axis=1, keepdims=True)          # xc = x - mean
    g["dx"] = g["dxc"] + g["dmean"] / C                        # mean = x.mean(axis=1): the second path
    return g


# ----------------------------------------------------------------------------- exercise 5: cross-entropy
# dlogp = -onehot / N; dp = -onehot / (N p), non-zero only at the targets; then sum(dp * p) over a
# row is -1/N, so dlogits = p * (dp + 1/N) = (p - onehot) / N: at the target
# p * (-1/(N p) + 1/N) = (p - 1)/N, elsewhere p/N.
def softmax_cross_entropy_backward(p, t):
    g = {}
    N = len(t)
    onehot = np.eye(p.shape[1])[t]
    g["dlogp"] = -onehot / N                                   # loss = -mean(logp[n, t_n])
    g["dp"] = g["dlogp"] / p                                   # logp = log(p)
    g["dlogits"] = p * (g["dp"] - (g["dp"] * p).sum(axis=1, keepdims=True))   # p = softmax(z)
    return g


# ----------------------------------------------------------------------------- exercise 6: attention
# Three lines up, the softmax step being exercise 5's; the scale 1/sqrt(D) multiplies both dq and
# dk (s is linear in each). Row 0 of dq is exactly zero: att[0, 0] = 1 whatever the score, so
# ds[0, 0] = 1 * (datt[0, 0] - datt[0, 0] * 1) = 0.
def attention_backward(dout, q, k, v, att):
    g = {}
    D = q.shape[1]
    g["dv"] = att.T @ dout                                     # out = att @ v
    g["datt"] = dout @ v.T
    g["ds"] = att * (g["datt"] - (g["datt"] * att).sum(axis=1, keepdims=True))   # att = softmax(s)
    g["dq"] = g["ds"] @ k / np.sqrt(D)                         # s = q k^T / sqrt(D)
    g["dk"] = g["ds"].T @ q / np.sqrt(D)
    return g


# ----------------------------------------------------------------------------- exercise 4, in the GPT
class LayerNorm(Function):
    """Exercise 4's forward and backward as the model's layer norm: named after the engine op it
    replaces, for explain --use-op. x: (..., C), handled as (N, C) rows."""
    def forward(ctx, x, w, b, eps=1e-5):
        x2 = x.reshape(-1, x.shape[-1])                        # (N, C)
        y2, mean, rstd = layer_norm_forward(x2, w, b, eps)
        ctx.save_for_backward(x2, w, mean, rstd)
        return y2.reshape(x.shape)

    def backward(ctx, dy):
        x2, w, mean, rstd = ctx.saved
        g = layer_norm_backward(dy.reshape(x2.shape), x2, w, mean, rstd)
        return g["dx"].reshape(dy.shape), g["dw"], g["db"]
