"""generate (the book's chapter 5 loop), the KV cache, and examples/generate.py.

The cache's promise is exactness: the same greedy tokens as rerunning the cropped window,
token for token, also after the sequence outgrows the context window (when the book's
absolute positions shift under every cached key). Sampling: top-k keeps k candidates,
temperature draws follow softmax(logits / T), a seed reproduces them, eos_id stops.
"""
import importlib.util
import json
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tinygrad_gpt import GPTModel, KVCache, Tensor, generate, generate_stream, manual_seed, no_grad, save_pretrained
from tinygrad_gpt.generation import sample_next_token, top_k_filter

ROOT = Path(__file__).resolve().parents[1]


def forward_cached(model, idx, cache):
    """The cached step as generate runs it: the model's one forward with the cache, last logits."""
    with no_grad():
        return model(idx, last_only=True, kv_cache=cache).data[:, -1, :]    # (B, V)


def tiny_model(seed=0, qkv_bias=False, vocab=97, ctx=12, emb=32, heads=4, layers=2):
    manual_seed(seed)
    model = GPTModel({"vocab_size": vocab, "context_length": ctx, "emb_dim": emb, "n_heads": heads,
                      "n_layers": layers, "drop_rate": 0.1, "qkv_bias": qkv_bias})
    return model.eval()


def prompt(B=2, T=5, vocab=97, seed=1):
    return np.random.default_rng(seed).integers(0, vocab, size=(B, T))


# ----------------------------------------------------------------------------- the cache is exact
@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("T", [1, 5, 12, 20])      # 12: the prompt fills the window; 20: longer than it
def test_cached_and_uncached_greedy_agree_token_for_token_past_the_context(qkv_bias, T):
    model = tiny_model(seed=T, qkv_bias=qkv_bias)
    idx = prompt(T=T, seed=T)
    cached = generate(model, idx, 30, context_size=12, use_cache=True)
    uncached = generate(model, idx, 30, context_size=12, use_cache=False)
    assert cached.shape == (2, T + 30)
    differ = np.argwhere(cached != uncached)
    assert not len(differ), f"first difference at (row, position) {differ[0]}"


def test_cache_agrees_with_a_context_size_below_the_models():
    model = tiny_model(seed=4)
    idx = prompt(T=3, seed=4)
    np.testing.assert_array_equal(generate(model, idx, 25, context_size=7),
                                  generate(model, idx, 25, context_size=7, use_cache=False))


def test_context_size_beyond_the_model_is_capped_by_it():
    model = tiny_model(seed=5)
    idx = prompt(T=4, seed=5)
    np.testing.assert_array_equal(generate(model, idx, 20, context_size=1000),
                                  generate(model, idx, 20, context_size=12, use_cache=False))


def test_cached_logits_match_the_full_forward_at_every_position():
    model = tiny_model(seed=6, qkv_bias=True)
    idx = prompt(T=12, seed=6)
    cache = KVCache.for_model(model, batch_size=2)
    worst = 0.0
    logits = forward_cached(model, idx[:, :4], cache)                  # prefill 4 positions
    for t in range(4, 13):
        with no_grad():
            full = model(idx[:, :t]).data[:, -1, :]                    # (B, V)
        worst = max(worst, float(np.abs(logits - full).max()))
        if t < 12:
            logits = forward_cached(model, idx[:, t:t + 1], cache)     # one position
    print(f"cached vs full forward: max |diff| {worst:.2e}")
    assert worst < 1e-5
    assert cache.length == 12


def test_cache_is_preallocated_per_layer_and_never_reallocated():
    model = tiny_model(seed=7)
    cache = KVCache.for_model(model, batch_size=3)
    assert len(cache.keys) == len(cache.values) == 2
    assert all(a.shape == (3, 4, 12, 8) and a.dtype == np.float32 for a in cache.keys + cache.values)
    arrays = [id(a) for a in cache.keys + cache.values]
    idx = prompt(B=3, T=6, seed=7)
    forward_cached(model, idx, cache)
    forward_cached(model, idx[:, :1], cache)
    assert [id(a) for a in cache.keys + cache.values] == arrays
    with pytest.raises(ValueError, match="KV cache holds 12 positions; 13"):
        forward_cached(model, idx, cache)


def test_the_cached_step_is_the_models_one_forward_with_positions_offset():
    # prefill 5, then 3 positions at once: logits of all 3 equal the full forward's last 3
    model = tiny_model(seed=8, qkv_bias=True)
    idx = prompt(T=8, seed=8)
    cache = KVCache.for_model(model, batch_size=2)
    with no_grad():
        model(idx[:, :5], kv_cache=cache)
        part = model(idx[:, 5:], kv_cache=cache).data                  # (B, 3, V)
        full = model(idx).data[:, 5:]                                  # (B, 3, V)
    worst = float(np.abs(part - full).max())
    print(f"3 cached positions after 5 vs the full forward: max |diff| {worst:.2e}")
    assert worst < 1e-5 and cache.length == 8


def test_a_kv_cache_is_refused_while_gradients_are_recorded():
    model = tiny_model(seed=9)
    cache = KVCache.for_model(model, batch_size=1)
    with pytest.raises(RuntimeError, match="no_grad"):
        model(prompt(B=1, T=3, seed=9), kv_cache=cache)


# ----------------------------------------------------------------------------- top-k and temperature
@pytest.mark.parametrize("k", [1, 3, 49, 50, 80])
def test_top_k_filter_keeps_exactly_k_candidates(k):
    logits = np.random.default_rng(k).standard_normal((4, 50)).astype(np.float32)
    kept = np.isfinite(top_k_filter(logits, k))
    assert (kept.sum(axis=1) == min(k, 50)).all()
    top = np.argsort(-logits, axis=1)[:, :min(k, 50)]                   # and they are the k largest
    assert all(set(np.flatnonzero(kept[b])) == set(top[b]) for b in range(4))


def test_top_k_ties_at_the_kth_value_keep_all_tied_as_the_book():
    # the book sets logits < (k-th largest) to -inf, so equal values at the boundary all survive
    kept = np.isfinite(top_k_filter(np.array([[1.0, 3.0, 2.0, 2.0, 0.0]], np.float32), 2))
    assert kept.tolist() == [[False, True, True, True, False]]


def test_top_k_sampling_draws_only_from_the_top_k():
    logits = np.tile(np.random.default_rng(0).standard_normal(30).astype(np.float32), (5000, 1))
    draws = sample_next_token(logits, temperature=5.0, top_k=4, rng=0)
    assert set(draws) == set(np.argsort(-logits[0])[:4])


def test_temperature_sampling_follows_softmax_of_scaled_logits():
    z = np.array([2.0, 1.0, 0.0, -1.0, 0.5], np.float32)
    T = 2.0
    draws = sample_next_token(np.tile(z, (40000, 1)), temperature=T, rng=1)
    freq = np.bincount(draws, minlength=5) / len(draws)
    p = np.exp(z / T) / np.exp(z / T).sum()
    print(f"sampled {np.round(freq, 3)} vs softmax {np.round(p, 3)}")
    np.testing.assert_allclose(freq, p, atol=0.01)


def test_temperature_sampling_is_reproducible_with_a_seed():
    model = tiny_model(seed=8)
    idx = prompt(T=4, seed=8)
    a = generate(model, idx, 25, 12, temperature=1.5, top_k=20, rng=123)
    np.testing.assert_array_equal(a, generate(model, idx, 25, 12, temperature=1.5, top_k=20, rng=123))
    np.testing.assert_array_equal(a, generate(model, idx, 25, 12, temperature=1.5, top_k=20,
                                              rng=np.random.default_rng(123)))
    np.testing.assert_array_equal(a, generate(model, idx, 25, 12, temperature=1.5, top_k=20, rng=123,
                                              use_cache=False))
    assert (a != generate(model, idx, 25, 12, temperature=1.5, top_k=20, rng=124)).any()
    manual_seed(5)                                                        # rng=None: the global generator
    b = generate(model, idx, 10, 12, temperature=1.0)
    manual_seed(5)
    np.testing.assert_array_equal(b, generate(model, idx, 10, 12, temperature=1.0))


def test_greedy_with_top_k_is_still_greedy():
    model = tiny_model(seed=9)
    idx = prompt(T=3, seed=9)
    np.testing.assert_array_equal(generate(model, idx, 10, 12, top_k=5), generate(model, idx, 10, 12))


# ----------------------------------------------------------------------------- eos, shapes, modes
@pytest.mark.parametrize("use_cache", [True, False])
def test_eos_stops_without_appending_it(use_cache):
    model = tiny_model(seed=10)
    idx = prompt(B=1, T=4, seed=10)
    full = generate(model, idx, 20, 12)
    eos = int(full[0, 4 + 3])                                             # the 4th new token
    first = int(np.flatnonzero(full[0, 4:] == eos)[0])                    # its first appearance
    out = generate(model, idx, 20, 12, eos_id=eos, use_cache=use_cache)
    np.testing.assert_array_equal(out, full[:, :4 + first])


def test_eos_in_a_batch_pads_finished_rows_and_stops_when_all_are_done():
    model = tiny_model(seed=11)
    idx = prompt(B=2, T=4, seed=11)
    free = generate(model, idx, 20, 12)                                   # greedy: deterministic
    # eos: a token both rows draw, first at different steps (so one row is padded while the other runs)
    first = {t: [int(np.flatnonzero(free[b, 4:] == t)[0]) for b in range(2)]
             for t in set(free[0, 4:].tolist()) & set(free[1, 4:].tolist())}
    eos = min((t for t, f in first.items() if f[0] != f[1]), key=lambda t: max(first[t]))
    f = first[eos]
    out = generate(model, idx, 20, 12, eos_id=eos)
    # stops at the step where the last row draws eos, without appending it (as the book)
    assert out.shape == (2, 4 + max(f)) and max(f) < 20
    for b in range(2):
        np.testing.assert_array_equal(out[b, :4 + f[b]], free[b, :4 + f[b]])   # the same tokens up to eos
        assert (out[b, 4 + f[b]:] == eos).all()                               # then only eos (padding)
    assert (out[int(np.argmin(f)), 4 + min(f):] == eos).sum() == max(f) - min(f) > 0


def test_output_is_an_integer_array_of_the_prompts_dtype():
    model = tiny_model(seed=12)
    idx = prompt(T=3, seed=12).astype(np.int32)
    out = generate(model, idx, 4, 12)
    assert out.dtype == np.int32 and out.shape == (2, 7)
    np.testing.assert_array_equal(out[:, :3], idx)
    np.testing.assert_array_equal(generate(model, Tensor(idx), 4, 12), out)
    np.testing.assert_array_equal(generate(model, idx.tolist(), 4, 12), out)
    same = generate(model, idx, 0, 12)
    np.testing.assert_array_equal(same, idx)
    assert same is not idx


def test_generate_runs_in_eval_mode_and_restores_training_mode():
    model = tiny_model(seed=13)
    idx = prompt(T=3, seed=13)
    expected = generate(model, idx, 8, 12)
    model.train()                                                         # dropout 0.1 would change tokens
    np.testing.assert_array_equal(generate(model, idx, 8, 12), expected)
    np.testing.assert_array_equal(generate(model, idx, 8, 12, use_cache=False), expected)
    assert model.training and model.trf_blocks[0].drop_resid.training


def test_generate_stream_yields_one_column_per_new_token():
    model = tiny_model(seed=14)
    idx = prompt(T=3, seed=14)
    cols = list(generate_stream(model, idx, 5, 12))
    assert len(cols) == 5 and all(c.shape == (2,) for c in cols)
    np.testing.assert_array_equal(np.stack(cols, 1), generate(model, idx, 5, 12)[:, 3:])


@pytest.mark.parametrize("kwargs, error", [
    ({"temperature": -0.5}, "temperature must be"),
    ({"top_k": 0}, "top_k must be a positive integer"),
    ({"max_new_tokens": -1}, "max_new_tokens must be >= 0"),
    ({"idx": np.array([1, 2, 3])}, r"shape \(batch, tokens\)"),
    ({"idx": np.zeros((1, 0), np.int64)}, r"shape \(batch, tokens\)"),
])
def test_bad_arguments_are_refused(kwargs, error):
    model = tiny_model(seed=15)
    args = {"idx": prompt(T=2), "max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=error):
        generate(model, args.pop("idx"), args.pop("max_new_tokens"), 12, **args)


# ----------------------------------------------------------------------------- examples/generate.py
def load_cli():
    spec = importlib.util.spec_from_file_location("generate_cli", ROOT / "examples" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpt2_vocab_model():
    """A tiny model over GPT-2's 50257 tokens, so the CLI can tokenize real text."""
    return tiny_model(seed=16, vocab=50257, ctx=16, emb=16, heads=2, layers=1)


def run_cli(capsys, *argv):
    code = load_cli().main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def expected_text(model, text, n, **kw):
    from tinygrad_gpt.tokenizer import get_gpt2_tokenizer, text_to_token_ids, token_ids_to_text
    tok = get_gpt2_tokenizer()
    return token_ids_to_text(generate(model, text_to_token_ids(text, tok), n, 16, **kw), tok)


def test_cli_streams_the_same_text_as_generate_and_reports_speed(tmp_path, capsys, gpt2_vocab_model):
    save_pretrained(gpt2_vocab_model, tmp_path / "hf")
    want = expected_text(gpt2_vocab_model, "Every effort moves you", 25)
    for extra in ([], ["--no-cache"]):
        code, out, err = run_cli(capsys, "--pretrained", str(tmp_path / "hf"), "--max-new-tokens", "25", *extra)
        assert code == 0, err
        text, report = out.rstrip("\n").rsplit("\n\n", 1)
        assert text == want
        assert report.startswith("25 tokens in ") and "tokens/s" in report


def test_cli_sampling_with_a_seed_matches_generate(tmp_path, capsys, gpt2_vocab_model):
    save_pretrained(gpt2_vocab_model, tmp_path / "hf")
    want = expected_text(gpt2_vocab_model, "Hello", 12, temperature=1.3, top_k=50, rng=np.random.default_rng(7))
    code, out, err = run_cli(capsys, "--pretrained", str(tmp_path / "hf"), "--prompt", "Hello",
                             "--max-new-tokens", "12", "--temperature", "1.3", "--top-k", "50", "--seed", "7")
    assert code == 0, err
    assert out.rstrip("\n").rsplit("\n\n", 1)[0] == want


def test_cli_loads_a_checkpoint_of_book_names_and_config(tmp_path, capsys, gpt2_vocab_model):
    d = tmp_path / "ckpt"
    d.mkdir()
    save_file(dict(gpt2_vocab_model.state_dict()), str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(gpt2_vocab_model.cfg))
    code, out, err = run_cli(capsys, "--checkpoint", str(d), "--max-new-tokens", "10")
    assert code == 0, err
    assert out.rstrip("\n").rsplit("\n\n", 1)[0] == expected_text(gpt2_vocab_model, "Every effort moves you", 10)


def test_cli_loads_a_training_checkpoint_written_by_checkpoint_py(tmp_path, capsys, gpt2_vocab_model):
    from tinygrad_gpt.checkpoint import save_checkpoint
    from tinygrad_gpt.optim import AdamW
    from tinygrad_gpt.train import TrainState
    opt = AdamW(gpt2_vocab_model.parameters(), lr=1e-3)
    save_checkpoint(tmp_path / "run", gpt2_vocab_model, opt, TrainState(global_step=5, order=[0]),
                    {"default": np.random.default_rng(0)}, {"model": "tiny", "model_config": gpt2_vocab_model.cfg})
    want = expected_text(gpt2_vocab_model, "Every effort moves you", 8)
    for path in (tmp_path / "run", tmp_path / "run" / "step-000005", tmp_path / "run" / "latest"):
        code, out, err = run_cli(capsys, "--checkpoint", str(path), "--max-new-tokens", "8")
        assert code == 0, err
        assert out.rstrip("\n").rsplit("\n\n", 1)[0] == want
    (tmp_path / "run" / "step-000005" / "model.safetensors").write_bytes(b"damaged")
    code, _, err = run_cli(capsys, "--checkpoint", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1 and "step-000005" in err, err


def test_cli_checkpoint_with_missing_tensor_names_it(tmp_path, capsys, gpt2_vocab_model):
    d = tmp_path / "ckpt"
    d.mkdir()
    sd = dict(gpt2_vocab_model.state_dict())
    del sd["trf_blocks.0.ff.layers.2.bias"]
    save_file(sd, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_config": gpt2_vocab_model.cfg}))
    code, _, err = run_cli(capsys, "--checkpoint", str(d))
    assert code == 2 and "missing tensors: trf_blocks.0.ff.layers.2.bias" in err, err


def test_cli_threads_option_gives_the_same_text(tmp_path, capsys, gpt2_vocab_model):
    save_pretrained(gpt2_vocab_model, tmp_path / "hf")
    code, out, err = run_cli(capsys, "--pretrained", str(tmp_path / "hf"), "--max-new-tokens", "6", "--threads", "1")
    assert code == 0, err
    assert out.rstrip("\n").rsplit("\n\n", 1)[0] == expected_text(gpt2_vocab_model, "Every effort moves you", 6)


def test_cli_random_weights_print_a_warning(capsys):
    code, out, err = run_cli(capsys, "--model", "tiny", "--max-new-tokens", "3")
    assert code == 0
    assert "warning: no weights given" in err and "tiny with random weights" in err
    assert "3 tokens in" in out


@pytest.mark.parametrize("argv, message", [
    (["--pretrained", "/no/such/dir"], "no such directory"),
    (["--temperature", "-1"], "--temperature -1.0 is out of range"),
    (["--top-k", "0"], "--top-k 0 is out of range"),
    (["--max-new-tokens", "-2"], "--max-new-tokens -2 is out of range"),
    (["--model", "huge"], "invalid choice: 'huge'"),
    (["--model", "tiny", "--pretrained", "x"], "not allowed with argument"),
    (["--prompt", ""], "--prompt is empty"),
    (["--checkpoint", "/no/such/ckpt"], "no such checkpoint directory"),
    (["--max-new-tokens", "many"], "invalid int value"),
    (["--threads", "0"], "--threads 0 is out of range"),
])
def test_cli_bad_input_is_one_line_on_stderr_and_exit_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("generate.py: error: ") and message in err, err


def test_cli_damaged_weights_and_offline_download_exit_2(tmp_path, capsys, monkeypatch, gpt2_vocab_model):
    save_pretrained(gpt2_vocab_model, tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"\x00" * 40)
    code, _, err = run_cli(capsys, "--pretrained", str(tmp_path / "hf"))
    assert code == 2 and "not a readable safetensors file" in err and err.count("\n") == 1

    import urllib.request

    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli(capsys, "--download", "gpt2")
    lines = [l for l in err.splitlines() if l.startswith("generate.py: error")]
    assert code == 2 and len(lines) == 1
    assert "could not download https://huggingface.co/gpt2/resolve/main/config.json" in lines[0]
    assert f"put config.json and model.safetensors in {tmp_path / 'cache' / 'gpt2'}/" in lines[0]


def test_cli_as_a_process_exits_2_without_a_traceback():
    p = subprocess.run([sys.executable, str(ROOT / "examples" / "generate.py"), "--pretrained", "/no/such/dir"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr


def test_a_whole_number_float_top_k_works_like_the_int():
    model = tiny_model(seed=3)
    idx = prompt(B=1, T=4, seed=3)
    a = generate(model, idx, 5, 12, temperature=1.0, top_k=2.0, rng=7)
    b = generate(model, idx, 5, 12, temperature=1.0, top_k=2, rng=7)
    np.testing.assert_array_equal(a, b)
