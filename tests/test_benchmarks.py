"""The benchmarks' shared helper (benchmarks/common.py) and the rules the scripts keep.

No benchmark imports another (they share through common.py only), only common.py touches
sys.path and the clock; the steady-state warm-up rule stops where it should on a fixed
sequence of durations; the step's GEMM FLOP count (the bound's numerator) agrees with a count
made independently from the model's own Linear and attention modules; and bench_train_step.py
runs end to end in its smoke mode.
"""
import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(BENCH.glob("*.py"))


def load_common():
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = load_common()


def imported_modules(path):
    """Every module name an import statement in the file names (top level or inside functions)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_no_benchmark_imports_another():
    assert len(SCRIPTS) >= 9, [p.name for p in SCRIPTS]
    found = [f"{p.name} imports {name}" for p in SCRIPTS for name in imported_modules(p)
             if name.split(".")[0].startswith("bench_") or name.split(".")[0] == "machine"]
    assert not found, "; ".join(found)


def test_the_rule_catches_an_import_of_another_benchmark(tmp_path):
    bad = tmp_path / "bench_x.py"
    bad.write_text("import os\n\ndef f():\n    from bench_train_step import step_gemms\n", encoding="utf-8")
    assert "bench_train_step" in imported_modules(bad)


def test_every_benchmark_shares_the_one_helper_and_only_it_sets_paths_and_clocks():
    """One way of setting sys.path and one timer: common.py's. Every bench_*.py imports it."""
    for p in SCRIPTS:
        if p.name == "common.py":
            continue
        text = p.read_text(encoding="utf-8")
        assert "common" in imported_modules(p), f"{p.name} does not import benchmarks/common.py"
        assert "sys.path" not in text, f"{p.name} sets sys.path itself (common.py does it, once)"
        assert "perf_counter" not in text and "time.time(" not in text, f"{p.name} has a timer of its own"
        assert "runtime_line" not in text or "bench.runtime_line" in text, f"{p.name} rebuilds the runtime line"


# ----------------------------------------------------------------------------- the steady state
def fake_clock(durations):
    it = iter(durations)
    return lambda: next(it)


def test_warm_up_stops_at_the_first_two_consecutive_steps_within_5_percent():
    """5, 3.4, 2.4, 1.9, 2.0, 1.95: 1.9 -> 2.0 differ by 5.3 % of the smaller, 2.0 -> 1.95 by 2.6 %:
    the warm-up is the first six steps."""
    durations = [5, 3.4, 2.4, 1.9, 2.0, 1.95, 1.96, 1.94]
    warm = common.warm_up(None, clock=fake_clock(durations))
    print(warm.describe())
    assert warm.steady and warm.times == [5, 3.4, 2.4, 1.9, 2.0, 1.95]


def test_warm_up_runs_at_least_three_steps():
    warm = common.warm_up(None, clock=fake_clock([2.0, 2.0, 2.0, 2.0]))
    assert warm.steady and len(warm.times) == 3
    warm = common.warm_up(None, clock=fake_clock([9.0, 2.0, 2.01, 2.0]))     # steady from the 3rd on
    assert warm.steady and len(warm.times) == 3


def test_warm_up_stops_at_the_cap_and_says_so(capsys):
    zigzag = [2.0, 3.0] * 10
    warm = common.warm_up(None, max_steps=12, clock=fake_clock(zigzag))
    assert not warm.steady and len(warm.times) == 12
    assert "cap of 12" in warm.describe() and "NOT steady" in warm.describe()
    assert "warm-up cap of 12 steps hit" in capsys.readouterr().err


def test_steady_times_warms_then_times_n_calls():
    calls = []
    warm, times = common.steady_times(lambda: calls.append(1), 4)
    assert len(calls) == len(warm.times) + 4 and len(times) == 4 and len(warm.times) >= 3
    assert common.stats([3.0, 1.0, 2.0]) == (1.0, 2.0, 3.0)


# ----------------------------------------------------------------------------- the step's work
def independent_flops(model, B, T):
    """The step's GEMM FLOPs counted from the model's own modules: every Linear's weight shape
    (2*N*in*out forward), every attention module's causal score and value products summed query
    by query (query t sees t + 1 keys), then forward + backward = 3 x forward."""
    from tinygrad_gpt.nn import Linear, MultiHeadAttention
    N = B * T
    forward = 0
    for m in model.modules():
        if isinstance(m, Linear):
            out_features, in_features = m.weight.shape
            forward += 2 * N * in_features * out_features
        elif isinstance(m, MultiHeadAttention):
            H, D = m.num_heads, m.head_dim
            for t in range(T):
                forward += 2 * (2 * B * H * D * (t + 1))         # q_t . k_s for s <= t, then a_ts v_s
    return 3 * forward


def test_step_flops_of_gpt2_124m_match_a_count_over_the_models_modules():
    from tinygrad_gpt import GPTModel, get_config
    cfg = {**get_config("124M"), "context_length": 256}
    B, T = 2, 256                                          # bench_train_step.py's settings
    model = GPTModel(cfg)
    want = independent_flops(model, B, T)
    got = common.step_flops(cfg, B, T)
    print(f"GPT-2 124M, B={B}, T={T}: {got / 1e9:.3f} GFLOP (formula), {want / 1e9:.3f} (modules)")
    assert got == want
    assert common.count_params(cfg) == model.num_parameters() == 163_009_536 - (1024 - 256) * 768
    # the full T x T products step_gemms lists for timing: the same but attention's upper triangle
    full = sum(c * 2 * m * k * n for c, m, k, n in common.step_gemms(cfg, B, T))
    assert full - got == 3 * cfg["n_layers"] * 2 * 2 * B * cfg["emb_dim"] * (T * T - T * (T + 1) // 2)


@pytest.mark.parametrize("name", ["micro", "tiny"])
def test_step_flops_and_params_of_small_configs(name):
    from tinygrad_gpt import GPTModel, get_config
    cfg = get_config(name)
    model = GPTModel(cfg)
    B, T = 3, cfg["context_length"]
    assert common.step_flops(cfg, B, T) == independent_flops(model, B, T)
    assert common.count_params(cfg) == model.num_parameters()


def test_the_bound_is_flops_at_the_peak_plus_bytes_at_the_bandwidth():
    from tinygrad_gpt import get_config
    cfg = get_config("tiny")
    bound, parts = common.step_bound(cfg, 2, 32, gemm_gflops=100.0, bandwidth_gbs=10.0)
    flops = common.step_flops(cfg, 2, 32)
    moved = common.adamw_bytes(common.count_params(cfg)) + common.activation_bytes(cfg, 2, 32)
    assert bound == pytest.approx(flops / 100e9 + moved / 10e9)
    assert parts["gemm_s"] == pytest.approx(flops / 100e9) and parts["bytes_s"] == pytest.approx(moved / 10e9)
    bf16_bound, _ = common.step_bound(cfg, 2, 32, gemm_gflops=100.0, bandwidth_gbs=10.0, bf16=True)
    assert bf16_bound - bound == pytest.approx(2 * common.count_params(cfg) / 10e9)   # the bf16 copies
    assert common.adamw_bytes(10) == 280                  # p, g, m, v read; p, m, v written; float32


def test_bf16_gemm_is_the_fast_path_or_says_why_not():
    from tinygrad_gpt.kernels import reference as R
    gemm, name = common.bf16_gemm()
    if gemm is None:
        assert isinstance(name, str) and name, name       # the reason, e.g. no AMX-BF16 nor AVX512-BF16
        return
    rng = np.random.default_rng(0)
    a = R.to_bf16(rng.standard_normal((37, 64)).astype(np.float32))
    b = R.to_bf16(rng.standard_normal((64, 29)).astype(np.float32))
    out = np.empty((37, 29), np.float32)
    gemm(a, b, False, False, out)
    np.testing.assert_allclose(out, R.gemm_bf16(a, b), rtol=1e-5, atol=1e-4)
    assert name in ("mkl", "avx512_bf16")


def test_shared_data_is_found_as_the_tests_find_it():
    from helpers import shared_data
    assert common.shared_data("the-verdict.txt") == shared_data("the-verdict.txt")
    assert common.shared_data("no-such-file.txt") is None


# ----------------------------------------------------------------------------- smoke
def test_bench_train_step_smoke_prints_the_table_the_warm_up_and_the_bound():
    """The tiny model, 2 timed steps, 1 round, float32: the script runs, not a speed test."""
    from helpers import env
    out = subprocess.run([sys.executable, str(BENCH / "bench_train_step.py"), "--smoke", "--threads", "1",
                          "--kernels", "numpy"], capture_output=True, text=True, timeout=600, env=env(), cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    print(text[:3000])
    assert "| step, median (s) |" in text and "| step, min (s) |" in text and "| step, max (s) |" in text
    assert "ours f32, round 1: warm-up 3 steps (" in text
    assert "lower bound of a float32 step:" in text and "x its float32 bound" in text
    assert "CPU: " in text and "Runtime: " in text
