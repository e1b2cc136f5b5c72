"""bf16 autocast: the rounding, the bf16 GEMM against its twin, Linear/AdamW under autocast."""
import os
import platform
import resource
import time
import warnings

import numpy as np
import pytest

import tinygrad_gpt as tg
from tinygrad_gpt import amp
from tinygrad_gpt import functional as F
from tinygrad_gpt import workspace
from tinygrad_gpt.kernels import bf16_avx512, bf16_mkl, precision, reference as R

from helpers import TINY, env, ep_lines, isolated, require, run_cli, small_text

MKL_IS_A_DEPENDENCY = platform.system() == "Linux" and platform.machine() == "x86_64"   # setup.cfg


@pytest.fixture
def mkl():
    """The fast path's code: on an AMX-BF16 CPU as it runs; on any other x86_64 CPU through
    bf16_mkl.allow_without_amx() (MKL's bf16 GEMM is correct there, only slower than float32), so
    that CI tests it whichever CPU it lands on. Skipped only where setup.cfg installs no mkl (not
    x86_64 Linux); on x86_64 Linux a missing or unloadable MKL fails the test."""
    if bf16_mkl.available():
        yield bf16_mkl
        return
    if not MKL_IS_A_DEPENDENCY:
        pytest.skip(f"mkl is a dependency only on x86_64 Linux: {bf16_mkl.unavailable_reason()}")
    with bf16_mkl.allow_without_amx():
        if not bf16_mkl.available():
            pytest.fail(f"setup.cfg installs mkl on x86_64 Linux, but {bf16_mkl.unavailable_reason()}",
                        pytrace=False)
        yield bf16_mkl


MKL = pytest.mark.usefixtures("mkl")


def bits(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32)


def kernels_to_bf16():
    fns = [("numpy", R.to_bf16)]
    from tinygrad_gpt.kernels import numba_cpu
    fns.append(("numba", numba_cpu.to_bf16))
    return fns


# ----------------------------------------------------------------------------- rounding
@pytest.mark.parametrize("name,to_bf16", kernels_to_bf16())
def test_to_bf16_rounds_ties_to_even_and_keeps_nan_inf(name, to_bf16):
    one = 0x3F800000
    cases = {                                   # float32 bits -> expected bf16 bits
        one: 0x3F80,
        one | 0x8000: 0x3F80,                   # exactly halfway, last kept bit 0: stays (even)
        one | 0x8001: 0x3F81,                   # just above halfway: up
        one | 0x7FFF: 0x3F80,                   # just below: down
        one | 0x18000: 0x3F82,                  # halfway, last kept bit 1: up to even
        0x7F7FFFFF: 0x7F80,                     # float32 max rounds to +inf
        0x7F800000: 0x7F80, 0xFF800000: 0xFF80,  # +-inf stay
        0x80000000: 0x8000,                     # -0.0 keeps its sign
        0x00000001: 0x0000,                     # the smallest subnormal rounds to 0
        0x00018000: 0x0002,                     # subnormal tie, odd -> even
        0x7FC00000: 0x7FC0,                     # quiet NaN
        0x7F800001: 0x7FC0,                     # signalling NaN with a low payload: stays NaN, not inf
        0xFFFFFFFF: 0xFFFF,                     # negative NaN, all payload bits: no wrap-around
    }
    x = np.array(list(cases), dtype=np.uint32).view(np.float32)
    got = to_bf16(x)
    assert got.dtype == np.uint16
    want = np.array(list(cases.values()), dtype=np.uint16)
    bad = [(hex(k), hex(g), hex(w)) for k, g, w in zip(cases, got, want) if g != w]
    assert not bad, f"{name}: (float32 bits, got, expected): {bad}"
    assert np.isnan(R.from_bf16(got[-3:])).all()


@pytest.mark.parametrize("name,to_bf16", kernels_to_bf16())
def test_to_bf16_is_the_nearest_bf16_on_random_bits(name, to_bf16):
    u = np.random.default_rng(0).integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    x = u.view(np.float32)
    np.seterr(invalid="ignore")                 # NaN bits widen to NaN; only finite x are checked
    finite = np.isfinite(x) & (np.abs(x) < 3.38e38)
    got = R.from_bf16(to_bf16(x)).astype(np.float64)
    lo = (u & 0xFFFF0000).view(np.float32).astype(np.float64)    # truncation: one neighbour
    hi = ((u & 0xFFFF0000) + 0x10000).view(np.float32).astype(np.float64)
    xd = x.astype(np.float64)
    err = np.abs(got - xd)
    best = np.minimum(np.abs(lo - xd), np.abs(hi - xd))
    assert np.all(err[finite] <= best[finite]), f"{name}: not the nearest bf16"
    assert np.isnan(got[np.isnan(x)]).all()
    np.seterr(invalid="warn")
    print(f"{name}: worst relative rounding error {np.max(err[finite] / np.maximum(np.abs(xd[finite]), 1e-38)):.2e}")


def test_numba_to_bf16_equals_reference_bit_for_bit():
    from tinygrad_gpt.kernels import numba_cpu
    u = np.random.default_rng(1).integers(0, 2**32, 1_000_003, dtype=np.uint64).astype(np.uint32)
    x = u.view(np.float32).reshape(1000003)
    assert np.array_equal(numba_cpu.to_bf16(x), R.to_bf16(x))


def test_from_bf16_is_exact():
    b = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    f = R.from_bf16(b)
    ok = ~np.isnan(f)
    assert np.array_equal(R.to_bf16(f)[ok], b[ok])


# ----------------------------------------------------------------------------- the GEMM
def rounded(shape, seed):
    return R.to_bf16(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


@MKL
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 33, 5), (64, 300, 129), (512, 64, 768)])
def test_mkl_gemm_bf16_matches_its_twin(m, k, n, ta, tb):
    a = rounded((k, m) if ta else (m, k), 0)
    b = rounded((n, k) if tb else (k, n), 1)
    got = bf16_mkl.gemm_bf16(a, b, ta, tb)
    want = R.gemm_bf16(a, b, ta, tb)
    # same bf16 inputs, exact products: only float32 summation order differs
    A, B = R.from_bf16(a).astype(np.float64), R.from_bf16(b).astype(np.float64)
    scale = np.abs(A.T if ta else A) @ np.abs(B.T if tb else B)          # sum |a||b| per entry
    err = np.max(np.abs(got - want) / (scale + 1e-30))
    print(f"{m}x{k}x{n} ta={ta} tb={tb}: worst error / sum|ab| = {err:.1e}")
    assert got.dtype == np.float32 and got.shape == (m, n)
    assert err < 4 * k * 2.0**-24 + 1e-6


@MKL
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("m,k,n", [(7, 33, 100), (100, 20, 9), (16, 16, 16)])
def test_mkl_gemm_bf16_long_outputs_in_transposed_chunks_match_the_twin(m, k, n, ta, tb, monkeypatch):
    """An output with one long side (the output head's) is computed as C^T in chunks and
    transposed into place. Small thresholds here (ragged last chunks, both orientations); the
    square case is the ordinary path. Equal to one MKL call of the whole product, and close
    to the twin as in the test above."""
    monkeypatch.setattr(bf16_mkl, "WIDE", 40)
    monkeypatch.setattr(bf16_mkl, "CHUNK", 16)
    a = rounded((k, m) if ta else (m, k), 2)
    b = rounded((n, k) if tb else (k, n), 3)
    out = np.full((m, n), np.nan, np.float32)
    got = bf16_mkl.gemm_bf16(a, b, ta, tb, out=out)
    assert got is out and not np.isnan(out).any()
    A, B = R.from_bf16(a).astype(np.float64), R.from_bf16(b).astype(np.float64)
    A, B = (A.T if ta else A), (B.T if tb else B)
    err = np.max(np.abs(got - A @ B) / (np.abs(A) @ np.abs(B) + 1e-30))
    assert err < 4 * k * 2.0**-24 + 1e-6
    monkeypatch.setattr(bf16_mkl, "WIDE", 10**9)                    # one call, no chunks
    np.testing.assert_allclose(got, bf16_mkl.gemm_bf16(a, b, ta, tb), rtol=1e-6, atol=1e-6)


@MKL
def test_mkl_gemm_bf16_takes_the_chunked_path_at_the_output_heads_size():
    a, b = rounded((8, 16), 4), rounded((bf16_mkl.WIDE + 5, 16), 5)     # (8, WIDE+5) output
    calls = []
    real = bf16_mkl._gemm_long
    bf16_mkl._gemm_long = lambda *args: calls.append(args[5:8]) or real(*args)
    try:
        got = bf16_mkl.gemm_bf16(a, b, trans_b=True)
    finally:
        bf16_mkl._gemm_long = real
    assert calls == [(8, bf16_mkl.WIDE + 5, 16)]
    np.testing.assert_allclose(got, R.gemm_bf16(a, b, trans_b=True), rtol=1e-5, atol=1e-5)


@MKL
def test_mkl_gemm_bf16_writes_out_and_checks_shapes():
    a, b = rounded((8, 16), 0), rounded((16, 4), 1)
    out = np.full((8, 4), np.nan, np.float32)
    assert bf16_mkl.gemm_bf16(a, b, out=out) is out
    np.testing.assert_allclose(out, R.gemm_bf16(a, b), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="op\\(a\\) is 8x16"):
        bf16_mkl.gemm_bf16(a, a)
    with pytest.raises(TypeError, match="uint16"):
        bf16_mkl.gemm_bf16(a.astype(np.float32), b)


def _views():
    """(a, b) pairs of float32 stacks the attention passes to a matmul: transposed views,
    (B, T, H, D) permuted to (B, H, T, D), a KV cache's first Tk positions, a copy-needing slice."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 40, 3, 16)).astype(np.float32).transpose(0, 2, 1, 3)   # (B, H, T, D)
    y = rng.standard_normal((2, 40, 3, 16)).astype(np.float32).transpose(0, 2, 1, 3)
    cache = rng.standard_normal((2, 3, 64, 16)).astype(np.float32)[:, :, :40]          # strided keys
    s = rng.standard_normal((2, 3, 40, 40)).astype(np.float32)
    return [("q k^T", x, y.swapaxes(-1, -2)), ("a v", s, y), ("a^T dout", s.swapaxes(-1, -2), x),
            ("ds^T q", s.swapaxes(-1, -2), x), ("q cache^T", x, cache.swapaxes(-1, -2)),
            ("a cache", s, cache), ("every other column", x[..., ::2], y[..., ::2].swapaxes(-1, -2)),
            ("5-D", rng.standard_normal((2, 2, 3, 5, 7)).astype(np.float32),
             rng.standard_normal((2, 2, 3, 7, 4)).astype(np.float32))]


@MKL
@pytest.mark.parametrize("case", range(len(_views())))
def test_mkl_batched_matmul_matches_numpy(case):
    """bf16_mkl.matmul (attention's products while MKL's pool is in the process) against its
    twin np.matmul, on the strided views attention hands it, in float64's light."""
    name, a, b = _views()[case]
    got = bf16_mkl.matmul(a, b)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    scale = np.matmul(np.abs(a.astype(np.float64)), np.abs(b.astype(np.float64)))
    err = np.max(np.abs(got - want) / scale)
    print(f"{name}: {a.shape} @ {b.shape}, worst error / sum|ab| = {err:.1e}")
    assert got.dtype == np.float32 and got.shape == want.shape
    assert err < 2 * a.shape[-1] * 2.0**-24


@MKL
def test_mkl_batched_matmul_falls_back_to_numpy():
    """float64, broadcast stacks and 2-D operands go to np.matmul unchanged."""
    a = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    b = np.ones((2, 3, 5, 2), np.float32)
    np.testing.assert_array_equal(bf16_mkl.matmul(a, b), np.matmul(a, b))    # small integers: exact
    assert bf16_mkl.matmul(a.astype(np.float64), b).dtype == np.float64
    np.testing.assert_array_equal(bf16_mkl.matmul(a, b[:1]), np.matmul(a, b[:1]))   # broadcast
    np.testing.assert_array_equal(bf16_mkl.matmul(a[0, 0], b[0, 0]), np.matmul(a[0, 0], b[0, 0]))


ATTENTION_ON_MKL = """
import sys
import numpy as np
if sys.argv[1] == "torch":
    import torch                                  # GNU OpenMP global: MKL sequential
from tinygrad_gpt.kernels import bf16_mkl, numba_cpu as N, reference as R
bf16_mkl.allow_without_amx()                      # on a CPU without AMX too: the same code, slower
assert bf16_mkl.available()
from tinygrad_gpt.runtime import runtime
if bf16_mkl.pool_active():                        # as cli.setup_threads does for a bf16 run on MKL
    runtime.set(float32_gemm="mkl")
calls = []
real = bf16_mkl.matmul
bf16_mkl.matmul = lambda a, b, **out: calls.append(1) or real(a, b, **out)
rng = np.random.default_rng(1)
q, k, v = (rng.standard_normal((2, 3, 32, 8)).astype(np.float32) for _ in range(3))
keep = (rng.random((2, 3, 32, 32)) >= 0.1).astype(np.float32)
out, att = N.attention_forward(q, k, v, True, keep, 0.1)
r_out, r_att = R.attention_forward(q, k, v, True, keep, 0.1)
np.testing.assert_allclose(out, r_out, rtol=1e-5, atol=1e-5)
np.testing.assert_allclose(att, r_att, rtol=1e-5, atol=1e-6)
dout = rng.standard_normal(out.shape).astype(np.float32)
for got, want in zip(N.attention_backward(dout, q, k, v, att, keep, 0.1),
                     R.attention_backward(dout, q, k, v, r_att, keep, 0.1)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
print(bf16_mkl.pool_active(), len(calls))
"""


@MKL
@pytest.mark.parametrize("first", ["nothing", "torch"])
def test_numba_attention_runs_on_mkl_while_its_pool_is_in_the_process(first):
    """With MKL's threads in the process the numba attention's six products go to MKL (OpenBLAS's
    spinning workers slowed MKL's GEMMs 2-4x), with the twin's numbers; with torch imported
    first (MKL on one thread) they stay on NumPy. A fresh process: the suite imports torch."""
    import subprocess
    import sys
    if first == "torch":
        require("torch")
    out = subprocess.run([sys.executable, "-c", ATTENTION_ON_MKL, first], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    active, calls = out.stdout.split()
    assert (active, calls) == (("True", "6") if first == "nothing" else ("False", "0"))


def test_gemm_twin_rounds_its_inputs():
    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    y = R.gemm_bf16(R.to_bf16(x), R.to_bf16(x))
    rel = np.abs(y - x @ x).max() / np.abs(x @ x).max()
    assert 1e-4 < rel < 2e-2, rel                 # bf16 has 8 bits of mantissa: visibly not float32


@MKL
def test_mkl_threads_sleep_when_idle():
    """After a bf16 GEMM, MKL's OpenMP threads must not spin (KMP_BLOCKTIME 0): spinning threads
    would take the cores from NumPy's BLAS and numba. CPU time used while the caller sleeps.
    OpenBLAS's own workers spin for up to ~0.1 s after a NumPy matmul (an earlier test's): the
    first sleep lets them settle, so that what is measured is MKL's pool alone."""
    a, b = rounded((512, 768), 0), rounded((768, 768), 1)
    time.sleep(0.3)
    for _ in range(3):
        bf16_mkl.gemm_bf16(a, b)
    before = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(0.3)
    after = resource.getrusage(resource.RUSAGE_SELF)
    busy = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"CPU seconds used during a 0.3 s sleep after MKL: {busy:.3f}")
    assert busy < 0.05


# ----------------------------------------------------------------------------- autocast
def tiny_model(seed=123):
    tg.manual_seed(seed)
    cfg = tg.get_config("tiny")
    cfg["drop_rate"] = 0.0
    return tg.GPTModel(cfg), cfg


def loss_and_grads(model, x, y, precision):
    model.zero_grad()
    with amp.autocast("bfloat16", enabled=(precision == "bfloat16")):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return float(loss.data), {n: p.grad.copy() for n, p in model.named_parameters()}


def batch(cfg, B=2, T=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg["vocab_size"], (B, T)), rng.integers(0, cfg["vocab_size"], (B, T))


@pytest.mark.parametrize("gemm", ["auto", "reference"])
def test_autocast_forward_backward_close_to_float32_and_not_identical(gemm):
    model, cfg = tiny_model()
    x, y = batch(cfg)
    l32, g32 = loss_and_grads(model, x, y, "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with amp.gemm_backend(gemm):
            l16, g16 = loss_and_grads(model, x, y, "bfloat16")
    print(f"loss float32 {l32:.6f} bf16 {l16:.6f}")
    assert l16 != l32                            # a no-op autocast fails here
    assert abs(l16 - l32) / l32 < 1e-2
    worst = 0.0
    for name in g32:
        assert g16[name].dtype == np.float32, name
        rel = np.linalg.norm(g16[name] - g32[name]) / (np.linalg.norm(g32[name]) + 1e-12)
        worst = max(worst, rel)
    print(f"worst relative gradient error (L2): {worst:.2e}")
    assert worst < 5e-2
    assert any(not np.array_equal(g16[n], g32[n]) for n in g32 if "W_query" in n)
    assert all(p.data.dtype == np.float32 for p in model.parameters())


@MKL
def test_autocast_mkl_and_twin_agree():
    model, cfg = tiny_model()
    x, y = batch(cfg)
    l_mkl, g_mkl = loss_and_grads(model, x, y, "bfloat16")
    with amp.gemm_backend("reference"):
        l_ref, g_ref = loss_and_grads(model, x, y, "bfloat16")
    assert abs(l_mkl - l_ref) < 1e-5 * abs(l_ref)
    for n in g_ref:                               # summation order, compounded through the layers
        rel = np.linalg.norm(g_mkl[n] - g_ref[n]) / (np.linalg.norm(g_ref[n]) + 1e-12)
        assert rel < 5e-3, (n, rel)


def test_autocast_is_off_outside_the_block_and_when_disabled():
    model, cfg = tiny_model()
    x, y = batch(cfg)
    l0, g0 = loss_and_grads(model, x, y, "float32")
    with amp.autocast("bfloat16"):
        assert amp.is_autocast_enabled()
        with amp.autocast("bfloat16", enabled=False):
            assert not amp.is_autocast_enabled()
        assert amp.get_autocast() == "bfloat16"
    assert not amp.is_autocast_enabled()
    l1, g1 = loss_and_grads(model, x, y, "float32")
    assert l1 == l0 and all(np.array_equal(g0[n], g1[n]) for n in g0)
    amp.set_autocast("bfloat16")
    try:
        assert amp.is_autocast_enabled()
    finally:
        amp.set_autocast(None)
    assert not amp.is_autocast_enabled()
    with pytest.raises(ValueError, match="dtype"):
        amp.autocast("float16")


def test_autocast_leaves_float64_alone():
    x = tg.Tensor(np.random.default_rng(0).standard_normal((3, 4)), requires_grad=True)
    w = tg.Tensor(np.random.default_rng(1).standard_normal((5, 4)), requires_grad=True)
    with amp.autocast("bfloat16"):
        y = F.linear(x, w)
    assert y.data.dtype == np.float64
    np.testing.assert_allclose(y.data, x.data @ w.data.T, rtol=1e-12)


def test_fallback_warns_once_and_matches_rounded_float32():
    x = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    prev = precision._warning.given
    precision._warning.given = False
    saved_lib, saved_why, saved_avx = bf16_mkl._mkl.lib, bf16_mkl._mkl.why, bf16_avx512._cpu.why
    saved_amx = bf16_mkl.cpu_has_amx_bf16
    bf16_mkl._mkl.lib, bf16_mkl._mkl.why = False, "forced off by the test"   # as on a CPU without AMX
    bf16_mkl.cpu_has_amx_bf16 = lambda: False                         # (auto reads the flag, not _lib)
    bf16_avx512._cpu.why = "forced off by the test"                   # and without AVX512-BF16
    try:
        assert amp.get_gemm_backend() == "reference"
        with pytest.warns(RuntimeWarning, match="forced off by the test"):
            with amp.autocast("bfloat16"):
                y = F.linear(tg.Tensor(x), tg.Tensor(w))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with amp.autocast("bfloat16"):
                F.linear(tg.Tensor(x), tg.Tensor(w))   # said once only
        assert amp.choose_precision("auto")[0] == "float32"
    finally:
        bf16_mkl._mkl.lib, bf16_mkl._mkl.why, bf16_avx512._cpu.why = saved_lib, saved_why, saved_avx
        bf16_mkl.cpu_has_amx_bf16 = saved_amx
        precision._warning.given = prev
    want = R.from_bf16(R.to_bf16(x)) @ R.from_bf16(R.to_bf16(w)).T
    np.testing.assert_allclose(y.data, want, rtol=1e-6, atol=1e-6)


def test_adamw_writes_the_bf16_copy_in_its_pass(backend):
    model, cfg = tiny_model()
    x, y = batch(cfg)
    opt = tg.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    loss_and_grads(model, x, y, "bfloat16")            # the weights are now used under autocast
    opt.step()
    w = model.trf_blocks[0].att.W_query.weight        # the weight's Tensor owns its copy
    copy = w.workspace.bits
    assert copy is not None and w.workspace.owned
    assert np.array_equal(copy, R.to_bf16(w.data))   # the copy is of the updated weight
    assert workspace.weight_bits(w) is copy           # the next product uses it, no conversion
    emb = model.tok_emb.weight                        # not a GEMM operand: no copy kept
    assert emb.workspace.bits is None


def test_adamw_bf16_step_equals_plain_step(backend):
    from tinygrad_gpt.kernels import K                # (bound inside the backend fixture's block)
    rng = np.random.default_rng(0)
    p = rng.standard_normal(1000).astype(np.float32)
    g, m, v = (rng.standard_normal(1000).astype(np.float32) for _ in range(3))
    v = np.abs(v)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    pb = np.empty(1000, np.uint16)
    K.adamw_step_bf16(p, g, m, v, pb, 1e-2, 0.9, 0.95, 1e-8, 0.1, 3)
    K.adamw_step(p2, g, m2, v2, 1e-2, 0.9, 0.95, 1e-8, 0.1, 3)
    np.testing.assert_allclose(p, p2, rtol=1e-6, atol=1e-7)
    assert np.array_equal(pb, R.to_bf16(p))


def test_load_state_dict_invalidates_the_bf16_copies():
    model, cfg = tiny_model(seed=1)
    other, _ = tiny_model(seed=2)
    x, y = batch(cfg)
    opt = tg.AdamW(model.parameters(), lr=1e-3)
    loss_and_grads(model, x, y, "bfloat16")
    opt.step()                                          # owned copies now exist
    model.load_state_dict(other.state_dict())
    l_model, _ = loss_and_grads(model, x, y, "bfloat16")
    l_other, _ = loss_and_grads(other, x, y, "bfloat16")
    assert l_model == l_other


def test_choose_precision():
    assert amp.choose_precision("float32")[0] == "float32"
    assert amp.choose_precision("bfloat16")[0] == "bfloat16"
    with pytest.raises(ValueError):
        amp.choose_precision("fp16")
    with pytest.raises(ValueError):
        amp.resolve_precision("fp16")


def test_auto_precision_is_bf16_exactly_where_a_fast_bf16_gemm_exists():
    """auto: bfloat16 on an AMX-BF16 CPU with oneMKL installed, or where our AVX512-BF16 GEMM beats
    float32 (AMD); float32 elsewhere. Read from this CPU's flags, not from a hard-coded answer,
    and resolve_precision (what the run trains in) agrees with the sentence's choice."""
    fast = (bf16_mkl.cpu_has_amx_bf16() and bf16_mkl.installed()) or bf16_avx512.faster_than_float32()
    precision, sentence = amp.choose_precision("auto")
    print(f"this CPU: {sentence}")
    assert precision == ("bfloat16" if fast else "float32")
    assert amp.resolve_precision("auto") == precision
    assert sentence.startswith(f"auto: {precision}")
    if fast:
        assert "--precision float32 is the book's exact run" in sentence
    assert amp.resolve_precision("float32") == "float32" and amp.resolve_precision("bfloat16") == "bfloat16"


def test_30_steps_under_autocast_stay_within_2_percent_of_float32():
    """From the same weights, dropout 0: the bf16 loss trajectory follows the float32 one."""
    curves = {}
    for precision in ("float32", "bfloat16"):
        model, cfg = tiny_model()
        x, y = batch(cfg, B=4, T=64, seed=3)
        opt = tg.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
        curve = []
        for _ in range(30):
            loss, _ = loss_and_grads(model, x, y, precision)
            opt.step()
            curve.append(loss)
        curves[precision] = np.array(curve)
    rel = np.abs(curves["bfloat16"] - curves["float32"]) / curves["float32"]
    print(f"loss {curves['float32'][0]:.3f} -> {curves['float32'][-1]:.3f} (float32), "
          f"{curves['bfloat16'][-1]:.3f} (bf16); worst relative gap {rel.max():.2e}")
    assert curves["float32"][-1] < 0.7 * curves["float32"][0]      # it does train
    assert rel.max() < 0.02
    assert not np.array_equal(curves["bfloat16"], curves["float32"])


def test_pretrain_precision_flag_prints_the_choice_and_trains(tmp_path, monkeypatch, capsys):
    text = tmp_path / "story.txt"
    text.write_text(small_text(), encoding="utf-8")
    out = {}
    with isolated(monkeypatch, tmp_path), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # the twin's note, on a CPU without AMX
        for precision in ("float32", "bfloat16"):
            assert run_cli(*TINY, "--epochs", "1", "--data", text, "--out", tmp_path / precision,
                           "--precision", precision) == 0
            out[precision] = capsys.readouterr().out
    assert "Precision: float32 as requested" in out["float32"]
    assert "Precision: bfloat16 autocast" in out["bfloat16"]
    assert ep_lines(out["float32"]) and ep_lines(out["bfloat16"]) != ep_lines(out["float32"])
    assert not amp.is_autocast_enabled()


def test_resume_keeps_the_checkpoint_precision_and_the_bits(tmp_path, monkeypatch, capsys):
    """A bf16 run resumed without --precision continues in bf16 (the checkpoint's), bit for bit:
    1 epoch + --resume --epochs 2 equals the 2-epoch run; --precision float32 on resume is
    allowed and says that the losses will differ."""
    from helpers import assert_same_run
    from tinygrad_gpt import checkpoint as C
    text = tmp_path / "story.txt"
    text.write_text(small_text(), encoding="utf-8")
    with isolated(monkeypatch, tmp_path), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # the twin's note, on a CPU without AMX
        assert run_cli(*TINY, "--epochs", "2", "--data", text, "--save-dir", tmp_path / "whole",
                       "--precision", "bfloat16") == 0
        whole = capsys.readouterr().out
        assert run_cli(*TINY, "--epochs", "1", "--data", text, "--save-dir", tmp_path / "part",
                       "--precision", "bfloat16") == 0
        first = capsys.readouterr().out
        assert run_cli("--resume", tmp_path / "part", "--epochs", "2") == 0
        second = capsys.readouterr().out
        assert_same_run(C.latest_checkpoint(tmp_path / "part"), C.latest_checkpoint(tmp_path / "whole"))
        assert run_cli("--resume", tmp_path / "part", "--epochs", "3", "--precision", "float32") == 0
        third = capsys.readouterr().out
    assert "Precision: bfloat16 autocast" in second and "trained in" not in second
    assert ep_lines(first) + ep_lines(second) == ep_lines(whole)
    assert "Precision: float32 as requested" in third
    assert "it was trained in bfloat16, this run continues in float32" in third
    state = C.read_checkpoint(C.latest_checkpoint(tmp_path / "part"))
    assert state.config["precision"] == "float32"


def test_default_precision_is_autos_choice_says_why_and_the_checkpoint_keeps_it(tmp_path, monkeypatch, capsys):
    """No --precision: the run trains in what auto picks on this CPU (bf16 on AMX-BF16 with MKL or
    on Zen 4/5, float32 elsewhere), its start-up line says which and why, its checkpoint stores
    it, and --resume without the flag continues in it; --precision float32 is the book's run."""
    from tinygrad_gpt import checkpoint as C
    text = tmp_path / "story.txt"
    text.write_text(small_text(), encoding="utf-8")
    auto, why = amp.choose_precision("auto")
    with isolated(monkeypatch, tmp_path), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # the twin's note, on a CPU without AMX
        assert run_cli(*TINY, "--epochs", "1", "--data", text, "--save-dir", tmp_path / "auto") == 0
        first = capsys.readouterr().out
        assert run_cli("--resume", tmp_path / "auto", "--epochs", "2") == 0
        resumed = capsys.readouterr().out
        assert run_cli(*TINY, "--epochs", "1", "--data", text, "--save-dir", tmp_path / "f32",
                       "--precision", "float32") == 0
        book = capsys.readouterr().out
    print(f"auto here: {why}")
    assert f"Precision: {why}" in first and why.startswith(f"auto: {auto}")
    assert C.read_checkpoint(C.latest_checkpoint(tmp_path / "auto")).config["precision"] == auto
    assert "trained in" not in resumed
    assert C.read_checkpoint(C.latest_checkpoint(tmp_path / "auto")).config["precision"] == auto
    assert "Precision: float32 as requested" in book
    assert C.read_checkpoint(C.latest_checkpoint(tmp_path / "f32")).config["precision"] == "float32"
    assert (ep_lines(first) == ep_lines(book)) == (auto == "float32")     # bf16's losses are its own


GEMMS_AFTER = """
import sys
if sys.argv[1] == "torch":
    import torch  # noqa: F401  (puts GNU OpenMP into the global scope)
import numpy as np
from tinygrad_gpt.kernels import bf16_avx512, bf16_mkl, reference as R
from tinygrad_gpt.kernels.threads import set_num_threads
bf16_mkl.allow_without_amx()                      # on a CPU without AMX too: the same code, slower
assert bf16_mkl.available(), bf16_mkl.unavailable_reason()
set_num_threads(2)
rng = np.random.default_rng(0)
worst = 0.0
for _ in range(60):
    for ta, tb in ((False, False), (False, True), (True, False)):
        m, k, n = (int(v) for v in rng.integers(8, 400, 3))
        a = R.to_bf16(rng.standard_normal((k, m) if ta else (m, k)).astype(np.float32))
        b = R.to_bf16(rng.standard_normal((n, k) if tb else (k, n)).astype(np.float32))
        want = R.gemm_bf16(a, b, ta, tb)
        worst = max(worst, float(np.abs(bf16_mkl.gemm_bf16(a, b, ta, tb) - want).max() / np.abs(want).max()))
print(worst, bf16_mkl.get_num_threads(), bf16_mkl.single_thread_reason())
"""


@MKL
@pytest.mark.parametrize("first", ["nothing", "torch"])
def test_mkl_gemms_stay_right_with_torch_imported_first(first):
    """torch puts GNU OpenMP into the global symbol scope; MKL's Intel-OpenMP threads then split
    the work wrongly (1 in 90 GEMMs was off by 70%). bf16_mkl falls back to one thread there;
    without torch it keeps both cores. 180 GEMMs of random shapes against the twin."""
    import subprocess
    import sys
    if first == "torch":
        require("torch")
    out = subprocess.run([sys.executable, "-c", GEMMS_AFTER, first], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    worst, threads, why = out.stdout.split(" ", 2)
    print(f"after {first}: worst relative error {worst}, MKL threads {threads}, {why.strip()}")
    assert float(worst) < 1e-4
    if first == "torch":
        assert threads == "1" and "GNU OpenMP" in why
    else:
        assert int(threads) == min(2, os.cpu_count()) and why.strip() == "None"


@pytest.mark.parametrize("name,to_bf16", kernels_to_bf16())
def test_to_bf16_writes_into_out_and_checks_it(name, to_bf16):
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    out = np.zeros((4, 6), np.uint16)
    assert to_bf16(x, out=out) is out
    assert np.array_equal(out, R.to_bf16(x))
    for bad in (np.zeros((4, 5), np.uint16), np.zeros((4, 6), np.float32), np.zeros((6, 4), np.uint16).T):
        with pytest.raises(ValueError, match="to_bf16: out must be"):
            to_bf16(x, out=bad)


TWIN_CLI = """
import sys
from tinygrad_gpt.kernels import bf16_avx512, bf16_mkl
bf16_mkl._mkl.lib, bf16_mkl._mkl.why = False, "forced off by the test"   # as on a CPU without AMX
bf16_avx512._cpu.why = "forced off by the test"                     # and without AVX512-BF16
from tinygrad_gpt.cli import pretrain
sys.exit(pretrain.main(sys.argv[1:]))
"""


def test_pretrain_on_the_twin_says_so_once_on_its_precision_line(tmp_path):
    """--precision bfloat16 without the fast path: the start-up line names the twin and why;
    autocast's own warning (two lines on stderr, one of them a source line) is not printed too."""
    import subprocess
    import sys
    text = tmp_path / "story.txt"
    text.write_text(small_text(), encoding="utf-8")
    out = subprocess.run([sys.executable, "-c", TWIN_CLI, *TINY, "--epochs", "1", "--data", str(text),
                          "--out", str(tmp_path / "out"), "--precision", "bfloat16"],
                         capture_output=True, text=True, timeout=300, env=env(), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    precision = [line for line in out.stdout.splitlines() if line.startswith("Precision:")]
    assert precision == ["Precision: bfloat16 autocast through the NumPy twin, same numbers, not faster "
                         "than float32: forced off by the test"]
    assert out.stdout.count("NumPy twin") == 1
    assert "Warning" not in out.stderr, out.stderr
    assert ep_lines(out.stdout)
