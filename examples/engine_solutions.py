"""Solutions to examples/engine_walkthrough.ipynb's exercises. Try them first: the notebook's last
section imports this file, reruns every check with an assert, and trains the model again.

The functions work on the notebook's Tensor: `.data` (an array), `.grad` (None until backward
reaches it), `.parents` (the tensors it was made from; () for a leaf) and `.backward_fn` (its
op's chain rule: dL/d(output) -> one gradient per parent; None for a leaf).
"""
import math

import numpy as np


# ----------------------------------------------------------------------------- 1. unbroadcast
def unbroadcast(grad, shape):
    # broadcasting read the operand once per copy: its gradient is the sum over the copies
    extra = grad.ndim - len(shape)
    if extra:                                          # axes broadcasting added in front
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:                                      # axes of size 1 that were stretched
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


# ----------------------------------------------------------------------------- 2. the ops' local derivatives
def mul_backward(grad, a, b):          # y = a * b: dy/da = b, dy/db = a
    return grad * b, grad * a


def matmul_backward(grad, a, b):       # y = a @ b, (N, K) @ (K, M): da = grad b^T (N, K), db = a^T grad (K, M)
    return grad @ b.T, a.T @ grad


def tanh_backward(grad, y):            # y = tanh(x): dy/dx = 1 - y^2, written with the output
    return grad * (1.0 - y * y)


# ----------------------------------------------------------------------------- 3. the topological order
def topological_order(root):
    """Every tensor root depends on, each after its parents: a depth-first post-order with an
    explicit stack (no recursion, so no depth limit), each tensor once (visited by id)."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        node, parents_done = stack.pop()
        if parents_done:
            order.append(node)                         # after all its parents
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node.parents:
            if id(parent) not in visited:
                stack.append((parent, False))
    return order


# ----------------------------------------------------------------------------- 4. backward
def backward(root):
    """dL/dL = 1, then each op from the output back: its chain rule, each gradient summed back to
    its parent's shape and *added* to the parent's .grad (a tensor read twice gets both)."""
    root.grad = np.ones_like(root.data)
    for node in reversed(topological_order(root)):
        if node.backward_fn is None:                   # a leaf: its .grad is final
            continue
        for parent, g in zip(node.parents, node.backward_fn(node.grad)):
            g = unbroadcast(g, parent.data.shape)
            parent.grad = g if parent.grad is None else parent.grad + g


# ----------------------------------------------------------------------------- 5. AdamW's step
def adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    p *= 1.0 - lr * weight_decay                       # decoupled weight decay: on p, not through m
    m *= beta1
    m += (1.0 - beta1) * g                             # the first moment
    v *= beta2
    v += (1.0 - beta2) * g * g                         # the second moment
    m_hat = m / (1.0 - beta1 ** step)                  # bias correction: m and v started at zero
    v_hat = v / (1.0 - beta2 ** step)
    p -= lr * m_hat / (np.sqrt(v_hat) + eps)           # eps outside the square root
    assert math.isfinite(float(p.ravel()[0]))
