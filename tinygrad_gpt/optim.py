"""AdamW written out by hand, with torch.optim.AdamW's semantics, plus the book's
appendix-D helpers: warmup + cosine schedule and global-norm gradient clipping.

This room owns parameter updates: it reads `.grad` and writes `.data` of the Tensors it is
given (the fused update is kernels' adamw_step), and knows nothing of models or training. A weight
that a product under autocast has copied to low precision has that copy written in the same pass
(adamw_step's `copy`, workspace.copy_for_step), and AdamW owns it from then on.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from . import kernels, workspace
from .tensor import Tensor


class AdamW:
    """torch.optim.AdamW: decoupled weight decay (p -= lr * wd * p) before the Adam update,
    bias-corrected moments. The update itself is one fused pass (kernels: adamw_step)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        if isinstance(params, Tensor):         # iterating a Tensor would give its rows, not it
            raise TypeError("AdamW: params must be an iterable of Parameters (e.g. model.parameters()) "
                            "or of param-group dicts, not a single Tensor; wrap it in a list")
        params = list(params)
        if not params:
            raise ValueError("AdamW got an empty parameter list")
        # torch's param groups: [{"params": [...], "weight_decay": 0.0}, ...], the rest defaulted
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        self.param_groups = []
        for group in groups:
            g = {**defaults, **group}
            lr_, (b1, b2), eps_, wd = g["lr"], g["betas"], g["eps"], g["weight_decay"]
            if lr_ < 0 or eps_ < 0 or wd < 0 or not (0 <= b1 < 1 and 0 <= b2 < 1):
                raise ValueError(f"AdamW: invalid hyperparameters lr={lr_}, betas={g['betas']}, eps={eps_}, "
                                 f"weight_decay={wd}")
            self.param_groups.append({"params": list(g["params"]), "lr": float(lr_),
                                      "betas": (float(b1), float(b2)), "eps": float(eps_),
                                      "weight_decay": float(wd)})
        self.state = {}                        # id(param) -> {"step", "exp_avg", "exp_avg_sq"}

    @property
    def params(self) -> list:
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.fill(0)

    def step(self) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state.get(id(p))
                if st is None:                 # moments start at zero, as torch
                    st = self.state[id(p)] = {"step": 0, "exp_avg": np.zeros_like(p.data),
                                              "exp_avg_sq": np.zeros_like(p.data)}
                st["step"] += 1
                # p -= lr * wd * p;  m, v = moving averages of g, g^2;  p -= lr * m_hat / (sqrt(v_hat) + eps)
                args = (group["lr"], beta1, beta2, group["eps"], group["weight_decay"], st["step"])
                copy = workspace.copy_for_step(p)   # the weight's copy for autocast's products, or None
                kernels.K.adamw_step(p.data, p.grad, st["exp_avg"], st["exp_avg_sq"], *args, copy=copy)

    # ---- state, in torch's layout: parameters are numbered in order
    def state_dict(self) -> dict:
        index = {id(p): i for i, p in enumerate(self.params)}
        state = {index[pid]: dict(st) for pid, st in self.state.items() if pid in index}
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(start, start + n))})
            start += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the moments and hyperparameters of state_dict(), copied. Checked first, so
        an error leaves this optimizer as it was."""
        params = self.params
        groups = state_dict["param_groups"]
        if sum(len(g["params"]) for g in groups) != len(params):
            raise ValueError(f"optimizer state has {sum(len(g['params']) for g in groups)} parameters, "
                             f"this optimizer has {len(params)}")
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError(f"optimizer state has param groups of sizes {[len(g['params']) for g in groups]}, "
                             f"this optimizer has {[len(g['params']) for g in self.param_groups]}")
        state = {}
        for i, st in state_dict["state"].items():
            p = params[int(i)]
            m, v = np.asarray(st["exp_avg"]), np.asarray(st["exp_avg_sq"])
            if m.shape != p.shape or v.shape != p.shape:
                raise ValueError(f"optimizer state for parameter {i} has shape {m.shape} (exp_avg) and "
                                 f"{v.shape} (exp_avg_sq), the parameter has {p.shape}")
            state[id(p)] = {"step": int(st["step"]), "exp_avg": m.astype(p.dtype, copy=True),
                            "exp_avg_sq": v.astype(p.dtype, copy=True)}
        for group, saved in zip(self.param_groups, groups):
            group.update({k: (tuple(v) if k == "betas" else v) for k, v in saved.items() if k != "params"})
        self.state = state


def clip_grad_norm_(params: Iterable[Tensor], max_norm: float) -> float:
    """Scale all gradients so their global L2 norm is at most max_norm (torch.nn.utils
    .clip_grad_norm_). Returns the norm before clipping."""
    params = [params] if isinstance(params, Tensor) else params   # torch takes one tensor too
    grads = [p.grad for p in params if p.grad is not None]
    total = math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g *= np.float32(coef) if g.dtype == np.float32 else coef
    return total


def lr_at_step(step: int, peak_lr: float, total_steps: int, warmup_steps: int = 0,
               min_lr: float | None = None, initial_lr: float = 3e-5) -> float:
    """The book's appendix D schedule: linear warmup from initial_lr (the book's 3e-5) to
    peak_lr, then cosine decay to min_lr. Without warmup and min_lr, a constant peak_lr
    (the chapter-5 run)."""
    if warmup_steps and step < warmup_steps:
        return initial_lr + step * (peak_lr - initial_lr) / warmup_steps
    if min_lr is None:
        return peak_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
