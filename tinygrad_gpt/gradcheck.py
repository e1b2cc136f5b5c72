"""Finite-difference gradient checks, like torch.autograd.gradcheck.

For an op f and a fixed random direction R of its output's shape, backward() gives
d<f(x), R>/dx for every element of every input at once; central differences give the
same number one element at a time:

    (<f(x + eps e_i), R> - <f(x - eps e_i), R>) / (2 eps)

In float64 the two agree to ~1e-9 for a correct backward; a wrong one is off by O(1).

The defaults, atol 1e-8 and rtol 1e-6, are stricter than torch.autograd.gradcheck's (1e-5,
1e-3) on purpose. Central differences with eps 1e-6 in float64 are off by about
eps^2 |third derivative| + 1e-16 |f| / eps, ~1e-10 for the ops here, so torch's tolerances
leave four orders of magnitude unused: with them a backward off by 1e-4 relative (a wrong
constant, a dropped small term) still passes. With these a correct backward passes and a
slip of 1e-5 relative fails, on every fused op (tests/test_gradcheck.py shows both).
Loosen them only for a function that is itself inaccurate (a large sum, say), and say why.
"""
import numpy as np

from .tensor import Tensor


class GradcheckError(AssertionError):
    pass


def compare_gradients(fn, inputs, eps=1e-6, seed=0):
    """[(input index, analytic gradient, numeric gradient)] for every input with requires_grad."""
    inputs = list(inputs)
    checked = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} is {inputs[i].dtype}; use float64, "
                            f"where finite differences are accurate")
    out = fn(*inputs)
    R = np.random.default_rng(seed).standard_normal(out.shape)   # the direction of the check
    for i in checked:
        inputs[i].grad = None
    out.backward(R)

    def projected():                           # <f(x), R>
        return float(np.sum(fn(*inputs).data * R))

    results = []
    for i in checked:
        t = inputs[i]
        analytic = np.zeros(t.shape) if t.grad is None else t.grad.copy()
        numeric = np.empty(t.shape)
        # Index the input's own array: reshape(-1) of a non-contiguous one (a transpose, say)
        # is a copy, and perturbing a copy leaves fn's input unchanged.
        for j in np.ndindex(t.shape):
            keep = t.data[j]
            t.data[j] = keep + eps
            up = projected()
            t.data[j] = keep - eps
            down = projected()
            t.data[j] = keep
            numeric[j] = (up - down) / (2 * eps)
        results.append((i, analytic, numeric))
    return results


def gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6, seed=0, raise_exception=True):
    """Check fn's analytic gradients against central differences, in float64.

    fn:      takes the input Tensors, returns a Tensor (any shape); it must be
             deterministic (reseed any dropout inside it).
    inputs:  Tensors; those with requires_grad=True are checked, every element of each.
    atol, rtol: an element fails when |analytic - numeric| > atol + rtol |numeric|; 1000
             times stricter than torch's defaults (see the module docstring for why).
    Returns True, or raises GradcheckError naming the input and element that disagree
    (returns False instead with raise_exception=False).
    """
    for i, analytic, numeric in compare_gradients(fn, inputs, eps, seed):
        err = np.abs(analytic - numeric)
        bad = err > atol + rtol * np.abs(numeric)
        if bad.any():
            j = np.unravel_index(int(np.argmax(np.where(bad, err, -1))), err.shape)
            msg = (f"gradcheck: input {i} {tuple(err.shape)}, element {tuple(int(k) for k in j)}: "
                   f"analytic {analytic[j]:.10g}, numeric {numeric[j]:.10g} (|diff| {err[j]:.3g}; "
                   f"{int(bad.sum())} of {err.size} elements disagree)")
            if raise_exception:
                raise GradcheckError(msg)
            return False
    return True


def max_gradcheck_error(fn, inputs, eps=1e-6, seed=0):
    """The worst |analytic - numeric| over all checked elements (for tests to print)."""
    return max(float(np.abs(a - n).max(initial=0.0)) for _, a, n in compare_gradients(fn, inputs, eps, seed))


def cmp(name, mine, engine, file=None):
    """Karpathy's cmp for the notebooks: one line `name | exact: . | approximate: . | maxdiff: .`
    (bit-for-bit equal; equal to float64 rounding, rtol 1e-9, atol 1e-12; the largest difference)
    and, when they differ, what the difference looks like: a constant multiple of the engine's
    array (the ratio printed: a forgotten 1/N or 1/sqrt(D) shows as 0.125 or 2), its transpose,
    or the engine's summed over axes your array kept (a missing unbroadcast). Returns whether
    they agree. `mine` None prints "not yet"."""
    import sys
    out = sys.stdout if file is None else file
    if mine is None:
        print(f"{name:8s} | not yet", file=out)
        return False
    mine, engine = np.asarray(mine, dtype=np.float64), np.asarray(engine, dtype=np.float64)
    if mine.shape != engine.shape:
        hint = ""
        if mine.ndim == 2 and mine.T.shape == engine.shape and np.allclose(mine.T, engine, rtol=1e-9, atol=1e-12):
            hint = ": it is the engine's transposed (mine.T matches)"
        elif mine.size > engine.size and _summed_to(mine, engine.shape) is not None \
                and np.allclose(_summed_to(mine, engine.shape), engine, rtol=1e-9, atol=1e-12):
            hint = ": summed over the broadcast axes it would match (the adjoint of broadcast is sum)"
        print(f"{name:8s} | shape {mine.shape}, the engine's is {engine.shape}{hint}", file=out)
        return False
    exact = bool(np.array_equal(mine, engine))
    approx = bool(np.allclose(mine, engine, rtol=1e-9, atol=1e-12))
    print(f"{name:8s} | exact: {str(exact):5s} | approximate: {str(approx):5s} | "
          f"maxdiff: {np.abs(mine - engine).max(initial=0.0):.1e}", file=out)
    if not approx:
        why = _how_it_differs(mine, engine)
        if why:
            print(f"{'':8s} | {why}", file=out)
    return approx


def _summed_to(a, shape):
    """a summed over leading axes and the axes where shape has 1, to shape; None if it cannot be."""
    extra = a.ndim - len(shape)
    if extra < 0:
        return None
    s = a.sum(axis=tuple(range(extra))) if extra else a
    if any(n != 1 and n != m for n, m in zip(shape, s.shape)):
        return None
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and s.shape[i] != 1)
    return s.sum(axis=axes, keepdims=True) if axes else s


def _how_it_differs(mine, engine):
    """'yours is 0.5 x the engine's' / 'the engine's transposed' / None."""
    scale = float(np.dot(engine.ravel(), engine.ravel()))
    if scale > 0 and np.any(mine):
        ratio = float(np.dot(mine.ravel(), engine.ravel())) / scale
        if ratio != 0 and np.allclose(mine, ratio * engine, rtol=1e-6, atol=1e-12):
            return f"yours is {ratio:.6g} x the engine's everywhere: a constant factor is off (1/ratio = {1 / ratio:.6g})"
    if mine.ndim == 2 and mine.shape[0] == mine.shape[1] and np.allclose(mine.T, engine, rtol=1e-9, atol=1e-12):
        return "yours is the engine's transposed"
    if np.allclose(mine, -engine, rtol=1e-9, atol=1e-12):
        return "yours is the engine's with the sign flipped"
    return None
