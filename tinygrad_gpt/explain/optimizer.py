"""explain --optimizer: the other half of the book's loop, `optimizer.step()`, one parameter at a time.

After the traced backward, one AdamW step (optim.AdamW, the engine's own, with the book's chapter-5
settings by default: lr 4e-4, weight decay 0.1) runs on the model. Before it, each parameter's
weight and gradient are copied; after it, the step is redone here in float64 from those copies,
one named quantity at a time (docs/backward.md "The optimizer step"):

    p  <- p (1 - lr wd)                          decoupled weight decay
    m  =  beta1 m + (1 - beta1) g                the first moment (zero before step 1)
    v  =  beta2 v + (1 - beta2) g^2              the second moment
    m̂  =  m / (1 - beta1^t),  v̂ = v / (1 - beta2^t)   bias correction
    p  <- p - lr m̂ / (sqrt(v̂) + eps)

and once more with `reference.adamw_step` on float32 copies (the readable kernel the fast one is
tested against). Each parameter's line ends with the largest difference between the engine's new
weight and reference.adamw_step's, and between the engine's moments and the float64 ones.
`--worked AdamW` substitutes one weight's numbers into the formula (worked_adamw).
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import numpy as np

from ..kernels import reference


@dataclass
class ParamStep:
    """One parameter's step, every quantity as an array of its shape (float64, but p_engine, m_engine,
    v_engine: the engine's own float32 results, and p_reference: reference.adamw_step's)."""
    name: str
    p: np.ndarray             # the weight before the step
    g: np.ndarray
    m: np.ndarray
    v: np.ndarray
    m_hat: np.ndarray
    v_hat: np.ndarray
    update: np.ndarray        # the new weight minus the old one, as the formula gives it
    p_engine: np.ndarray      # the engine's new weight (optim.AdamW.step)
    m_engine: np.ndarray
    v_engine: np.ndarray
    p_reference: np.ndarray   # reference.adamw_step on float32 copies of p, g and the old moments

    def reference_diff(self):
        return float(np.abs(self.p_engine.astype(np.float64) - self.p_reference).max(initial=0.0))

    def formula_diff(self):
        """The engine's new weight and moments against the float64 formula: float32 rounding."""
        return max(float(np.abs(self.p_engine - (self.p + self.update)).max(initial=0.0)),
                   float(np.abs(self.m_engine - self.m).max(initial=0.0)),
                   float(np.abs(self.v_engine - self.v).max(initial=0.0)))


def optimizer_step(model, opt):
    """Run opt.step() (an optim.AdamW over the model's parameters, after a backward) and return
    [ParamStep], one per parameter that had a gradient, in the model's order."""
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    before = {}
    for name, p in model.named_parameters():
        if p.grad is None or id(p) not in group_of:
            continue
        st = opt.state.get(id(p))
        m0 = np.zeros_like(p.data) if st is None else st["exp_avg"].copy()
        v0 = np.zeros_like(p.data) if st is None else st["exp_avg_sq"].copy()
        t = 1 if st is None else st["step"] + 1
        before[name] = (p, p.data.copy(), p.grad.copy(), m0, v0, t)
    opt.step()
    steps = []
    for name, (p, p0, g0, m0, v0, t) in before.items():
        group = group_of[id(p)]
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        P, G, M0, V0 = (a.astype(np.float64) for a in (p0, g0, m0, v0))
        m = b1 * M0 + (1 - b1) * G
        v = b2 * V0 + (1 - b2) * G * G
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        new = P * (1 - lr * wd) - lr * m_hat / (np.sqrt(v_hat) + eps)
        pr, mr, vr = p0.copy(), m0.copy(), v0.copy()
        reference.adamw_step(pr, g0, mr, vr, lr, b1, b2, eps, wd, t)
        st = opt.state[id(p)]
        steps.append(ParamStep(name, P, G, m, v, m_hat, v_hat, new - P, p.data.copy(),
                               st["exp_avg"].copy(), st["exp_avg_sq"].copy(), pr))
    return steps


def _n(x):
    return f"{float(x):.4g}"


def optimizer_lines(steps, opt, values=False, width=120):
    """One block per parameter: its element 0's g, m, v, m̂, v̂ and update (every element with
    values=True, as arrays), and the two checks."""
    from .render_text import _dims, array_lines
    group = opt.param_groups[0]
    lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    t = opt.state[next(iter(opt.state))]["step"] if opt.state else 1
    lines = [f"optimizer.step(): AdamW, lr {lr:g}, betas ({b1:g}, {b2:g}), eps {eps:g}, weight decay {wd:g}, "
             f"step t = {t} (docs/backward.md \"The optimizer step\")",
             "  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g²;  m̂ = m/(1-b1^t);  v̂ = v/(1-b2^t);  "
             "p <- p (1 - lr wd) - lr m̂ / (√v̂ + eps)"]
    if t == 1:
        lines.append("  step 1: the moments start at zero, so m̂ = g and v̂ = g² exactly (that is what the bias "
                     "correction is for), and each update is about -lr sign(g): every weight moves by ~lr")
    lines.append(f"  {'parameter (element 0)':34s} {'g':>10s} {'m':>10s} {'v':>10s} {'m̂':>10s} {'v̂':>10s} "
                 f"{'update':>10s}")
    worst_ref = worst_formula = 0.0
    for s in steps:
        first = tuple(0 for _ in s.p.shape)
        lines.append(f"  {s.name:34s} " + " ".join(f"{_n(a[first]):>10s}" for a in
                                                     (s.g, s.m, s.v, s.m_hat, s.v_hat, s.update)))
        worst_ref, worst_formula = max(worst_ref, s.reference_diff()), max(worst_formula, s.formula_diff())
        lines.append(f"    {_dims(s.p.shape)}, largest |update| {np.abs(s.update).max():.4g}; the engine's "
                     f"new weight - reference.adamw_step's: {s.reference_diff():.2g}")
        if values:
            for label, a in (("g", s.g), ("m", s.m), ("v", s.v), ("m̂", s.m_hat), ("v̂", s.v_hat),
                             ("update", s.update)):
                lines.append(f"    {label} {_dims(a.shape)}:")
                lines += array_lines(a, float(np.linalg.norm(a)), a.shape, "      ", width)
    lines.append(f"every parameter: the engine's AdamW against reference.adamw_step, largest difference "
                 f"{worst_ref:.2g}; against the float64 formula above (weights and moments) {worst_formula:.2g}")
    wrapped = []
    for line in lines:                               # prose lines cut at the width, under their indent
        indent = " " * (len(line) - len(line.lstrip()))
        wrapped += textwrap.wrap(line, width=max(60, width), subsequent_indent=indent + "  ",
                                 break_on_hyphens=False) if len(line) > width else [line]
    return wrapped


def worked_adamw(steps, opt, name=None, index=None):
    """One weight's step with its numbers substituted, each piece on its own line. Default: the
    element of the first parameter with the largest |g| (a weight that moves)."""
    s = steps[0] if name is None else next(s for s in steps if s.name == name)
    if index is None:
        index = np.unravel_index(int(np.argmax(np.abs(s.g))), s.g.shape)
    index = tuple(int(i) for i in index)
    group = opt.param_groups[0]
    lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    t = opt.state[next(iter(opt.state))]["step"]
    p, g, m, v, mh, vh = (float(a[index]) for a in (s.p, s.g, s.m, s.v, s.m_hat, s.v_hat))
    m0 = (m - (1 - b1) * g) / b1 if b1 else 0.0
    v0 = (v - (1 - b2) * g * g) / b2 if b2 else 0.0
    decayed = p * (1 - lr * wd)
    new = decayed - lr * mh / (math.sqrt(vh) + eps)
    engine = float(s.p_engine[index])
    where = f"{s.name}[{', '.join(map(str, index))}]"
    d = lambda x: f"{x:.8g}"   # noqa: E731
    return [
        f"worked numbers: AdamW step {t} on {where}, docs/backward.md \"The optimizer step\":",
        f"  p = {d(p)}, g = {d(g)}, m before = {d(m0)}, v before = {d(v0)}",
        f"  lr = {lr:g}, b1 = {b1:g}, b2 = {b2:g}, eps = {eps:g}, wd = {wd:g}, t = {t}",
        f"  m = b1 m + (1 - b1) g = {b1:g} · {d(m0)} + {1 - b1:.4g} · {d(g)} = {d(m)}",
        f"  v = b2 v + (1 - b2) g² = {b2:g} · {d(v0)} + {1 - b2:.4g} · {d(g * g)} = {d(v)}",
        f"  m̂ = m / (1 - b1^t) = {d(m)} / {d(1 - b1 ** t)} = {d(mh)}",
        f"  v̂ = v / (1 - b2^t) = {d(v)} / {d(1 - b2 ** t)} = {d(vh)}",
        f"  √v̂ + eps = {d(math.sqrt(vh))} + {eps:g} = {d(math.sqrt(vh) + eps)}   (eps outside the root)",
        f"  decay first: p (1 - lr wd) = {d(p)} · {d(1 - lr * wd)} = {d(decayed)}",
        f"  p - lr m̂ / (√v̂ + eps) = {d(decayed)} - {lr:g} · {d(mh)} / {d(math.sqrt(vh) + eps)} = {d(new)}",
        f"  engine: {where} = {d(engine)}  (largest difference {abs(engine - new):.2g}: float32 against float64)",
    ]
