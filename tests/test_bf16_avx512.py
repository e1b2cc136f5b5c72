"""Our own bf16 GEMM (kernels/bf16_avx512.py) against its twin, reference.gemm_bf16.

The loops and the packing run on every CPU through the portable micro-kernel (the same LLVM IR
with the instruction spelled out as float multiplies and adds); the VDPBF16PS micro-kernel runs
where the CPU has AVX512-BF16 (AMD Zen 4 and 5, Intel Cooper Lake and Sapphire Rapids on)."""
import numpy as np
import pytest

import tinygrad_gpt as tg
from tinygrad_gpt import amp
from tinygrad_gpt import functional as F
from tinygrad_gpt.kernels import bf16_avx512 as G, bf16_mkl, reference as R, threads

KERNELS = ["portable", pytest.param("auto", marks=pytest.mark.skipif(
    not G.available(), reason=f"VDPBF16PS needs the instruction: {G.unavailable_reason()}"))]

SHAPES = [(1, 1, 1), (8, 2, 32), (9, 3, 8), (37, 5, 70), (16, 64, 64),     # tiny, one full tile
          (100, 1031, 33), (513, 769, 65),                                  # odd K, edge rows and columns
          (600, 1601, 4200),                                                # K and N over a block (KC, NC)
          (40, 1536, 96)]                                                   # K two blocks exactly


def operands(m, k, n, ta, tb, seed=0):
    rng = np.random.default_rng(seed)
    a = R.to_bf16(rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32))
    b = R.to_bf16(rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32))
    return a, b


def relative_error(got, want):
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (False, True), (True, False), (True, True)])
def test_gemm_matches_its_twin(kernel, m, k, n, ta, tb):
    a, b = operands(m, k, n, ta, tb)
    want = R.gemm_bf16(a, b, ta, tb)                    # float32 matmul of the same bf16 numbers
    got = G.gemm_bf16(a, b, ta, tb, kernel=kernel)
    assert got.dtype == np.float32 and got.shape == (m, n)
    # every product is exact in float32: only the order of the float32 sums differs
    assert relative_error(got, want) < 2e-6, relative_error(got, want)


@pytest.mark.parametrize("kernel", KERNELS)
def test_gemm_is_exact_on_small_integers(kernel):
    """Small integers are exact in bf16 and their sums exact in float32: any misplaced pair,
    column or row changes the result, whatever the summation order."""
    rng = np.random.default_rng(1)
    for m, k, n in [(13, 7, 45), (64, 770, 96)]:
        a32 = rng.integers(-4, 5, (m, k)).astype(np.float32)
        b32 = rng.integers(-4, 5, (k, n)).astype(np.float32)
        want = a32 @ b32
        a, b = R.to_bf16(a32), R.to_bf16(b32)
        for ta, tb in [(False, False), (False, True), (True, False), (True, True)]:
            x = np.ascontiguousarray(a.T) if ta else a
            y = np.ascontiguousarray(b.T) if tb else b
            assert np.array_equal(G.gemm_bf16(x, y, ta, tb, kernel=kernel), want), (m, k, n, ta, tb)


@pytest.mark.skipif(not G.available(), reason=f"needs AVX512-BF16: {G.unavailable_reason()}")
def test_the_instruction_and_the_portable_kernel_agree():
    a, b = operands(256, 768, 300, False, True, seed=2)
    fast = G.gemm_bf16(a, b, False, True)
    slow = G.gemm_bf16(a, b, False, True, kernel="portable")
    assert relative_error(fast, slow) < 1e-6


def test_gemm_writes_out_and_checks_its_arguments():
    a, b = operands(20, 10, 40, False, False)
    out = np.full((20, 40), np.nan, np.float32)
    assert G.gemm_bf16(a, b, out=out, kernel="portable") is out
    assert relative_error(out, R.gemm_bf16(a, b)) < 2e-6
    z = G.gemm_bf16(np.zeros((3, 0), np.uint16), np.zeros((0, 4), np.uint16), kernel="portable")
    assert np.array_equal(z, np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="must be a C-contiguous 2-D uint16"):
        G.gemm_bf16(a.astype(np.float32), b, kernel="portable")
    with pytest.raises(TypeError, match="must be a C-contiguous 2-D uint16"):
        G.gemm_bf16(a.T, b, kernel="portable")
    with pytest.raises(ValueError, match="op\\(a\\) is 20x10 but op\\(b\\) is 40x10"):
        G.gemm_bf16(a, b, trans_b=True, kernel="portable")
    with pytest.raises(ValueError, match="out must be a C-contiguous float32 \\(20, 40\\)"):
        G.gemm_bf16(a, b, out=np.empty((40, 20), np.float32), kernel="portable")
    with pytest.raises(ValueError, match="kernel must be"):
        G.gemm_bf16(a, b, kernel="fast")


def test_micro_kernel_ir_names_the_instruction_only_when_not_portable():
    assert "llvm.x86.avx512bf16.dpbf16ps.512" in G.micro_kernel_ir()
    assert "dpbf16ps" not in G.micro_kernel_ir(portable=True)
    assert G.micro_kernel_ir(portable=True).count("fpext") == 2 + G.MR   # b's two halves, each row of a


def test_unavailable_without_the_flag(monkeypatch):
    monkeypatch.setattr(G._cpu, "why", None)
    monkeypatch.setattr(bf16_mkl, "cpu_flags", lambda: {"avx2", "avx512f"})
    assert not G.available()
    assert "neither AMX-BF16 nor AVX512-BF16" in G.unavailable_reason()
    with pytest.raises(RuntimeError, match="AVX512-BF16"):
        G.gemm_bf16(np.zeros((2, 2), np.uint16), np.zeros((2, 2), np.uint16))


def test_autocast_runs_on_this_backend_and_matches_the_twin(monkeypatch):
    """amp picks bf16_avx512 where MKL is not available; forced here through the portable kernel
    on any CPU, a GPT step under autocast matches the twin's (the MKL test's tolerance)."""
    monkeypatch.setattr(bf16_mkl, "available", lambda: False)
    monkeypatch.setattr(bf16_mkl, "pool_active", lambda: False)   # MKL loaded by earlier tests on AMX
    monkeypatch.setattr(G, "available", lambda: True)
    monkeypatch.setattr(bf16_mkl, "cpu_vendor", lambda: "AuthenticAMD")
    portable = G.gemm_bf16
    monkeypatch.setattr(G, "gemm_bf16", lambda a, b, ta=False, tb=False, out=None:
                        portable(a, b, ta, tb, out, kernel="portable"))
    split = []                                      # the attention's products: to threads.matmul
    matmul = threads.matmul
    monkeypatch.setattr(threads, "matmul", lambda a, b, out=None: split.append(a.shape) or matmul(a, b, out=out))
    # (too small to be cut here, T = 32: they run whole, np.matmul's own way)
    assert amp.get_gemm_backend() == "avx512_bf16"
    assert amp.choose_precision("bfloat16")[1] == "bfloat16 autocast on our AVX512-BF16 GEMM (kernels/bf16_avx512.py)"

    def loss_and_grads(gemm):
        tg.manual_seed(0)
        cfg = {**tg.get_config("tiny"), "drop_rate": 0.0}
        model = tg.GPTModel(cfg)
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, cfg["vocab_size"], (2, 32)), rng.integers(0, cfg["vocab_size"], (2, 32))
        with amp.gemm_backend(gemm), amp.autocast("bfloat16"):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        return float(loss.data), {n: p.grad.copy() for n, p in model.named_parameters()}

    l_ours, g_ours = loss_and_grads("auto")
    assert len(split) == 2 * 3 * 2                  # tiny: 2 layers, 2 products forward, 4 backward
    l_ref, g_ref = loss_and_grads("reference")
    assert abs(l_ours - l_ref) < 1e-5 * abs(l_ref)
    for n in g_ref:
        rel = np.linalg.norm(g_ours[n] - g_ref[n]) / (np.linalg.norm(g_ref[n]) + 1e-12)
        assert rel < 5e-3, (n, rel)


@pytest.mark.parametrize("vendor", ["AuthenticAMD", "GenuineIntel", ""])
def test_auto_picks_this_gemm_only_where_it_beats_float32(vendor, monkeypatch):
    """On AMD, VDPBF16PS does twice a float32 FMA's work and this GEMM ran the step's products at
    1.4x NumPy's float32; on an AMX Xeon's AVX512-BF16 it ran them at 0.3-0.7x, slower than the
    twin. So without MKL, autocast's auto takes it on AMD only, and says why not elsewhere;
    asked for by name it runs anywhere it can."""
    monkeypatch.setattr(bf16_mkl, "available", lambda: False)
    monkeypatch.setattr(bf16_mkl, "unavailable_reason", lambda: "this CPU has no AMX-BF16 (forced)")
    monkeypatch.setattr(G, "available", lambda: True)
    monkeypatch.setattr(bf16_mkl, "cpu_vendor", lambda: vendor)
    amd = vendor == "AuthenticAMD"
    assert G.faster_than_float32() == amd
    assert amp.get_gemm_backend() == ("avx512_bf16" if amd else "reference")
    reason = amp.unavailable_reason()
    assert reason == "" if amd else ("no AMX-BF16 (forced), and our AVX512-BF16 GEMM is slower" in reason), reason
    sentence = amp.choose_precision("bfloat16")[1]
    assert ("our AVX512-BF16 GEMM (kernels/bf16_avx512.py)" in sentence) == amd, sentence
    assert ("through the NumPy twin" in sentence) != amd, sentence
    monkeypatch.setattr(bf16_mkl, "cpu_has_amx_bf16", lambda: False)
    auto = amp.choose_precision("auto")
    assert auto[0] == ("bfloat16" if amd else "float32") and ("~1.5x faster than float32 here" in auto[1]) == amd, auto
    with amp.gemm_backend("avx512_bf16"):
        assert amp.get_gemm_backend() == "avx512_bf16"


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
flags\t\t: fpu avx2 avx512f avx512_bf16
flags_extra\t: not these
processor\t: 1
vendor_id\t: AuthenticAMD
"""


def test_cpu_vendor_and_flags_from_cpuinfo(monkeypatch, tmp_path):
    """The first vendor_id and flags lines, whatever the tabs before the colon; a longer field
    that starts with the same name is not the field; no file: empty."""
    import builtins
    fake = tmp_path / "cpuinfo"
    fake.write_text(CPUINFO)
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(fake if path == "/proc/cpuinfo" else path, *a, **k))
    assert bf16_mkl.cpu_vendor() == "AuthenticAMD"
    assert bf16_mkl.cpu_flags() == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    fake.write_text("processor\t: 0\nflags_extra\t: amx_bf16\n")
    assert bf16_mkl.cpu_vendor() == "" and bf16_mkl.cpu_flags() == set()
    fake.unlink()
    assert bf16_mkl.cpu_vendor() == "" and bf16_mkl.cpu_flags() == set()


@pytest.mark.parametrize("mkl_installed", [True, False])
def test_auto_sentence_on_amx_says_2x_only_with_mkl_installed(mkl_installed, monkeypatch):
    """An AMX CPU without the mkl wheel runs bf16 through the twin (or our GEMM on AMD): auto's
    sentence must not promise MKL's speed there. Decided without loading MKL."""
    monkeypatch.setattr(bf16_mkl, "cpu_has_amx_bf16", lambda: True)
    monkeypatch.setattr(bf16_mkl, "installed", lambda: mkl_installed)
    monkeypatch.setattr(bf16_mkl, "available", lambda: pytest.fail("auto loaded MKL"))
    monkeypatch.setattr(G, "available", lambda: False)
    monkeypatch.setattr(G._cpu, "why", "forced off by the test")
    monkeypatch.setattr(bf16_mkl, "unavailable_reason", lambda: "MKL not installed (forced)")
    precision, sentence = amp.choose_precision("auto")
    assert precision == ("bfloat16" if mkl_installed else "float32")
    assert ("~2x faster than float32 here" in sentence) == mkl_installed, sentence
    assert mkl_installed or "no MKL is installed" in sentence, sentence
