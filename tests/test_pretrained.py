"""GPT-2 in the Hugging Face layout: from_pretrained, save_pretrained, the download path.

No weights can be downloaded here, so each test writes a small random GPT-2 in exactly the
layout transformers uses (config.json; model.safetensors with HF's names and Conv1D (in, out)
shapes), loads it, and compares the logits with `hf_gpt2_forward` below: an independent
float64 NumPy forward written from GPT-2's math against the HF layout (picoGPT's way), not
from this package's code. With transformers installed, GPT2LMHeadModel on the same files is
a second oracle, and save_pretrained -> transformers -> logits closes the round trip.
"""
import json
import math
import urllib.error

import numpy as np
import pytest

from helpers import require
from safetensors.numpy import load_file, save_file

from tinygrad_gpt import GPTModel, no_grad
from tinygrad_gpt import pretrained as P
from tinygrad_gpt.pretrained import WeightsError

V, NPOS, C, H, L = 61, 24, 32, 4, 2


# ----------------------------------------------------------------------------- a GPT-2 in HF's layout
def hf_config(eps=1e-5, tied=True, **extra):
    cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
           "n_embd": C, "n_layer": L, "n_head": H, "n_positions": NPOS, "n_ctx": NPOS, "vocab_size": V,
           "layer_norm_epsilon": eps, "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
           "tie_word_embeddings": tied, "bos_token_id": None, "eos_token_id": None}
    cfg.update(extra)
    return cfg


def hf_tensors(seed=0, lm_head=False, buffers=True):
    """Random GPT-2 weights named and shaped as GPT-2's model.safetensors (no prefix)."""
    rng = np.random.default_rng(seed)
    n = lambda *shape, s=0.2: (s * rng.standard_normal(shape)).astype(np.float32)   # noqa: E731
    t = {"wte.weight": n(V, C, s=0.5), "wpe.weight": n(NPOS, C, s=0.3)}
    for i in range(L):
        h = f"h.{i}."
        t.update({h + "ln_1.weight": 1 + n(C, s=0.1), h + "ln_1.bias": n(C, s=0.1),
                  h + "attn.c_attn.weight": n(C, 3 * C), h + "attn.c_attn.bias": n(3 * C, s=0.1),
                  h + "attn.c_proj.weight": n(C, C), h + "attn.c_proj.bias": n(C, s=0.1),
                  h + "ln_2.weight": 1 + n(C, s=0.1), h + "ln_2.bias": n(C, s=0.1),
                  h + "mlp.c_fc.weight": n(C, 4 * C), h + "mlp.c_fc.bias": n(4 * C, s=0.1),
                  h + "mlp.c_proj.weight": n(4 * C, C, s=0.1), h + "mlp.c_proj.bias": n(C, s=0.1)})
        if buffers:      # old GPT-2 files carry the causal-mask buffers; loaders ignore them
            t[h + "attn.bias"] = np.tril(np.ones((NPOS, NPOS), np.float32))[None, None]
            t[h + "attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    t.update({"ln_f.weight": 1 + n(C, s=0.1), "ln_f.bias": n(C, s=0.1)})
    if lm_head:
        t["lm_head.weight"] = n(V, C, s=0.5)
    return t


def write_hf(directory, tensors, config, prefix=""):
    directory.mkdir(parents=True, exist_ok=True)
    save_file({(k if k.startswith("lm_head") else prefix + k): v for k, v in tensors.items()},
              str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# ----------------------------------------------------------------------------- the independent oracle
def hf_gpt2_forward(t, config, ids):
    """GPT-2's forward from its definition, on the HF tensors, in float64. ids: (B, T) -> (B, T, V)."""
    g = {k: v.astype(np.float64) for k, v in t.items()}
    eps, nh = config["layer_norm_epsilon"], config["n_head"]

    def gelu_new(x):
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))

    def layer_norm(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * g[p + ".weight"] + g[p + ".bias"]

    def conv1d(x, p):                                      # HF's Conv1D: x @ W + b, W (in, out)
        return x @ g[p + ".weight"] + g[p + ".bias"]

    B, T = ids.shape
    x = g["wte.weight"][ids] + g["wpe.weight"][np.arange(T)]
    for i in range(config["n_layer"]):
        h = f"h.{i}."
        q, k, v = np.split(conv1d(layer_norm(x, h + "ln_1"), h + "attn.c_attn"), 3, axis=-1)
        q, k, v = (a.reshape(B, T, nh, -1).transpose(0, 2, 1, 3) for a in (q, k, v))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
        s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        y = (a @ v).transpose(0, 2, 1, 3).reshape(B, T, -1)
        x = x + conv1d(y, h + "attn.c_proj")
        x = x + conv1d(gelu_new(conv1d(layer_norm(x, h + "ln_2"), h + "mlp.c_fc")), h + "mlp.c_proj")
    x = layer_norm(x, "ln_f")
    return x @ g.get("lm_head.weight", g["wte.weight"]).T


def ours(model, ids):
    with no_grad():
        return model(ids).data


IDS = np.random.default_rng(7).integers(0, V, size=(2, 11))


def report(name, a, b, tol):
    err = float(np.abs(np.asarray(a, np.float64) - b).max())
    print(f"{name}: max |diff| {err:.2e} (tolerance {tol:.0e})")
    assert err < tol, f"{name}: max |diff| {err:.2e} >= {tol:.0e}"


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_from_pretrained_logits_match_numpy_gpt2_reference(tmp_path, prefix):
    t, cfg = hf_tensors(), hf_config(eps=1e-3)
    model = P.from_pretrained(write_hf(tmp_path / "m", t, cfg, prefix))
    ref = hf_gpt2_forward(t, cfg, IDS)
    report(f"logits vs NumPy GPT-2 (prefix {prefix!r})", ours(model, IDS), ref, 1e-4)
    # layer_norm_epsilon (1e-3 here) is really used: the book's default 1e-5 would miss
    assert np.abs(hf_gpt2_forward(t, {**cfg, "layer_norm_epsilon": 1e-5}, IDS) - ref).max() > 1e-3
    assert all(m.eps == 1e-3 for m in model.modules() if type(m).__name__ == "LayerNorm")
    assert model.cfg["qkv_bias"] is True and model.cfg["context_length"] == NPOS
    assert not model.training


def test_from_pretrained_splits_c_attn_and_transposes_conv1d_weights(tmp_path):
    t = hf_tensors()
    model = P.from_pretrained(write_hf(tmp_path / "m", t, hf_config()))
    blk, w = model.trf_blocks[1], t["h.1.attn.c_attn.weight"]                  # (C, 3C)
    np.testing.assert_array_equal(blk.att.W_query.weight.data, w[:, :C].T)
    np.testing.assert_array_equal(blk.att.W_key.weight.data, w[:, C:2 * C].T)
    np.testing.assert_array_equal(blk.att.W_value.weight.data, w[:, 2 * C:].T)
    np.testing.assert_array_equal(blk.att.W_value.bias.data, t["h.1.attn.c_attn.bias"][2 * C:])
    np.testing.assert_array_equal(blk.ff.layers[0].weight.data, t["h.1.mlp.c_fc.weight"].T)
    np.testing.assert_array_equal(model.out_head.weight.data, t["wte.weight"])   # tied: a copy of wte
    assert model.out_head.weight.data is not model.tok_emb.weight.data


def test_from_pretrained_uses_lm_head_when_the_file_has_one(tmp_path):
    t, cfg = hf_tensors(lm_head=True), hf_config(tied=False)
    model = P.from_pretrained(write_hf(tmp_path / "m", t, cfg))
    np.testing.assert_array_equal(model.out_head.weight.data, t["lm_head.weight"])
    report("untied logits vs NumPy GPT-2", ours(model, IDS), hf_gpt2_forward(t, cfg, IDS), 1e-4)


def test_n_ctx_is_read_when_n_positions_is_absent(tmp_path):
    cfg = hf_config()
    del cfg["n_positions"]
    model = P.from_pretrained(write_hf(tmp_path / "m", hf_tensors(), cfg))
    assert model.cfg["context_length"] == NPOS


# ----------------------------------------------------------------------------- errors that name things
def test_missing_tensor_is_named(tmp_path):
    t = hf_tensors()
    del t["h.1.mlp.c_fc.bias"], t["ln_f.weight"]
    with pytest.raises(WeightsError, match=r"missing tensors: h\.1\.mlp\.c_fc\.bias, ln_f\.weight") as e:
        P.from_pretrained(write_hf(tmp_path / "m", t, hf_config()))
    print(e.value)


def test_misshaped_tensor_is_named_with_both_shapes(tmp_path):
    t = hf_tensors()
    t["h.0.attn.c_attn.weight"] = np.ascontiguousarray(t["h.0.attn.c_attn.weight"].T)   # (3C, C): nn.Linear layout
    with pytest.raises(WeightsError,
                       match=r"transformer\.h\.0\.attn\.c_attn\.weight \(96, 32\) \(expected \(32, 96\)\)") as e:
        P.from_pretrained(write_hf(tmp_path / "m", t, hf_config(), prefix="transformer."))
    print(e.value)


def test_wrong_config_for_the_weights_is_reported(tmp_path):
    with pytest.raises(WeightsError, match=r"missing tensors: h\.2\.ln_1\.weight"):
        P.from_pretrained(write_hf(tmp_path / "m", hf_tensors(), hf_config(n_layer=3)))
    with pytest.raises(WeightsError, match=r"unexpected tensors: h\.1\.attn\.c_attn\.bias, .* and 4 more"):
        P.from_pretrained(write_hf(tmp_path / "n", hf_tensors(), hf_config(n_layer=1)))


def test_untied_config_without_lm_head_names_it(tmp_path):
    with pytest.raises(WeightsError, match="missing tensors: lm_head.weight"):
        P.from_pretrained(write_hf(tmp_path / "m", hf_tensors(), hf_config(tied=False)))


@pytest.mark.parametrize("bad, message", [
    ({"activation_function": "relu"}, "activation_function 'relu'"),
    ({"model_type": "llama"}, "model_type is 'llama'"),
    ({"n_inner": 7}, "n_inner 7"),
])
def test_configs_that_are_not_the_books_gpt2_are_refused(tmp_path, bad, message):
    with pytest.raises(WeightsError, match=message):
        P.from_pretrained(write_hf(tmp_path / "m", hf_tensors(), hf_config(**bad)))


def test_config_missing_fields_are_named(tmp_path):
    cfg = hf_config()
    del cfg["n_head"], cfg["n_positions"], cfg["n_ctx"]
    with pytest.raises(WeightsError, match=r"config.json is missing n_head, n_positions \(or n_ctx\)"):
        P.from_pretrained(write_hf(tmp_path / "m", hf_tensors(), cfg))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "lfs-pointer", "empty"])
def test_corrupted_safetensors_gives_a_clear_error(tmp_path, damage):
    d = write_hf(tmp_path / "m", hf_tensors(), hf_config())
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"garbage": b"\x13\x07not a safetensors file at all" * 10,
                   "truncated": data[: len(data) // 2],
                   "lfs-pointer": b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 548105171\n",
                   "empty": b""}[damage])
    with pytest.raises(WeightsError) as e:
        P.from_pretrained(d)
    print(e.value)
    assert str(f) in str(e.value)
    assert ("Git LFS pointer" if damage == "lfs-pointer" else "not a readable safetensors file") in str(e.value)


def test_missing_files_are_named_and_pickles_are_not_loaded(tmp_path):
    d = write_hf(tmp_path / "m", hf_tensors(), hf_config())
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing \(there is a pytorch_model\.bin: a pickle"):
        P.from_pretrained(d)
    with pytest.raises(FileNotFoundError, match="no such directory"):
        P.from_pretrained(tmp_path / "nowhere")


def test_a_gpt2_name_not_in_the_cache_says_which_files_to_put_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as e:
        P.from_pretrained("gpt2-medium")
    msg = str(e.value)
    print(msg)
    assert f"put config.json and model.safetensors in {tmp_path / 'cache' / 'gpt2-medium'}/" in msg
    assert "https://huggingface.co/gpt2-medium/resolve/main/model.safetensors" in msg


def test_a_cached_gpt2_name_loads_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "cache"))
    t = hf_tensors()
    write_hf(tmp_path / "cache" / "gpt2", t, hf_config())
    model = P.from_pretrained("gpt2")
    report("cached 'gpt2'", ours(model, IDS), hf_gpt2_forward(t, hf_config(), IDS), 1e-4)


def test_download_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    calls = []

    def offline(url, timeout=None):
        calls.append((url, timeout))
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(P.urllib.request, "urlopen", offline)
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(P.DownloadError) as e:
        P.from_pretrained("gpt2", download_missing=True)
    print(e.value)
    assert calls == [("https://huggingface.co/gpt2/resolve/main/config.json", 20.0)]
    assert f"put config.json and model.safetensors in {tmp_path / 'cache' / 'gpt2'}/" in str(e.value)
    assert not list((tmp_path / "cache" / "gpt2").iterdir())            # no partial file left behind


def test_download_writes_both_files_into_the_cache(tmp_path, monkeypatch):
    src = write_hf(tmp_path / "hub", hf_tensors(), hf_config())
    fetched = []

    def fake_urlopen(url, timeout=None):
        fetched.append(url)
        return open(src / url.rsplit("/", 1)[1], "rb")

    monkeypatch.setattr(P.urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "cache"))
    model = P.from_pretrained("gpt2", download_missing=True)
    assert fetched == [f"https://huggingface.co/gpt2/resolve/main/{f}"
                       for f in ("config.json", "model.safetensors")]
    assert sorted(p.name for p in (tmp_path / "cache" / "gpt2").iterdir()) == ["config.json", "model.safetensors"]
    assert model.cfg["n_layers"] == L
    P.from_pretrained("gpt2", download_missing=True)                      # cached: no second fetch
    assert len(fetched) == 2


# ----------------------------------------------------------------------------- saving
def trained_here(qkv_bias=False, seed=3):
    from tinygrad_gpt import manual_seed
    manual_seed(seed)
    model = GPTModel({"vocab_size": V, "context_length": NPOS, "emb_dim": C, "n_heads": H,
                      "n_layers": L, "drop_rate": 0.0, "qkv_bias": qkv_bias})
    for p in model.parameters():                          # keep the logits in a sane range
        p.data *= 0.3
    return model.eval()


def test_save_pretrained_writes_hf_layout_and_reloads_to_the_same_logits(tmp_path):
    model = trained_here(qkv_bias=False)
    P.save_pretrained(model, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"]
    assert cfg["activation_function"] == "gelu_new" and cfg["layer_norm_epsilon"] == 1e-5
    assert (cfg["n_embd"], cfg["n_layer"], cfg["n_head"], cfg["n_positions"], cfg["n_ctx"], cfg["vocab_size"]) \
        == (C, L, H, NPOS, NPOS, V)
    assert cfg["tie_word_embeddings"] is False                          # the book's head is its own
    t = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert t["transformer.h.0.attn.c_attn.weight"].shape == (C, 3 * C)
    assert not t["transformer.h.0.attn.c_attn.bias"].any()             # qkv_bias=False: zero biases
    np.testing.assert_array_equal(t["lm_head.weight"], model.out_head.weight.data)
    back = P.from_pretrained(tmp_path / "out")
    report("save -> load", ours(back, IDS), ours(model, IDS).astype(np.float64), 1e-5)
    stripped = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in t.items()}
    report("saved file vs NumPy GPT-2", ours(model, IDS), hf_gpt2_forward(stripped, cfg, IDS), 1e-4)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_a_saved_model_reloads_with_its_own_parameters_qkv_bias_or_not(tmp_path, qkv_bias):
    """config.json says qkv_bias false for a model without one (its c_attn.bias is written as
    zeros for transformers): from_pretrained and load_model build it back without the three
    biases, the same parameter names, count and logits (it once came back with zero biases,
    3 x C more parameters a block)."""
    from tinygrad_gpt.loading import load_model
    model = trained_here(qkv_bias=qkv_bias)
    P.save_pretrained(model, tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg.get("qkv_bias", True) is qkv_bias                        # absent: GPT-2's own, with a bias
    for back in (P.from_pretrained(tmp_path / "out"), load_model(tmp_path / "out")):
        assert back.cfg["qkv_bias"] is qkv_bias
        assert [n for n, _ in back.named_parameters()] == [n for n, _ in model.named_parameters()]
        assert back.num_parameters() == model.num_parameters()
        np.testing.assert_array_equal(ours(back, IDS), ours(model, IDS))


def test_a_nonzero_qkv_bias_under_qkv_bias_false_is_refused(tmp_path):
    """qkv_bias false with a c_attn.bias that is not zero: dropping it would change the model's
    outputs, so the load names the tensor instead."""
    P.save_pretrained(trained_here(qkv_bias=False), tmp_path / "out")
    t = load_file(str(tmp_path / "out" / "model.safetensors"))
    t["transformer.h.1.attn.c_attn.bias"][5] = 0.25
    (tmp_path / "out" / "SHA256SUMS").unlink()
    save_file(t, str(tmp_path / "out" / "model.safetensors"))
    with pytest.raises(P.WeightsError, match=r"h\.1\.attn\.c_attn\.bias is not zero.*qkv_bias false"):
        P.from_pretrained(tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    (tmp_path / "out" / "config.json").write_text(json.dumps({**cfg, "qkv_bias": "no"}))
    with pytest.raises(P.WeightsError, match="qkv_bias: 'no' is not true or false"):
        P.from_pretrained(tmp_path / "out")


def test_save_pretrained_leaves_a_tied_head_out(tmp_path):
    model = P.from_pretrained(write_hf(tmp_path / "m", hf_tensors(), hf_config()))
    P.save_pretrained(model, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True
    assert "lm_head.weight" not in load_file(str(tmp_path / "out" / "model.safetensors"))


# ----------------------------------------------------------------------------- transformers as a second oracle
def hf_logits(directory, ids):
    torch = require("torch")
    transformers = require("transformers")
    model, info = transformers.GPT2LMHeadModel.from_pretrained(str(directory), output_loading_info=True)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits.double().numpy()
    return logits, info


@pytest.mark.parametrize("tied", [True, False])
def test_transformers_gpt2_agrees_on_the_same_files(tmp_path, tied):
    t, cfg = hf_tensors(lm_head=not tied, buffers=False), hf_config(eps=1e-3, tied=tied)
    d = write_hf(tmp_path / "m", t, cfg, prefix="transformer.")
    logits, _ = hf_logits(d, IDS)
    report("transformers vs NumPy GPT-2", logits, hf_gpt2_forward(t, cfg, IDS), 1e-4)
    report("ours vs transformers", ours(P.from_pretrained(d), IDS), logits, 1e-4)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_save_pretrained_loads_in_transformers_with_nothing_missing(tmp_path, qkv_bias):
    model = trained_here(qkv_bias=qkv_bias)
    P.save_pretrained(model, tmp_path / "out")
    logits, info = hf_logits(tmp_path / "out", IDS)
    print({k: v for k, v in info.items() if v})
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(kind), f"{kind}: {info[kind]}"
    report("ours -> save_pretrained -> transformers", logits, ours(model, IDS).astype(np.float64), 1e-4)


def test_tied_round_trip_through_transformers(tmp_path):
    model = P.from_pretrained(write_hf(tmp_path / "m", hf_tensors(), hf_config()))
    P.save_pretrained(model, tmp_path / "out")
    logits, info = hf_logits(tmp_path / "out", IDS)
    assert not info.get("missing_keys") and not info.get("unexpected_keys")
    report("tied round trip", logits, ours(model, IDS).astype(np.float64), 1e-4)


# ----------------------------------------------------------------------------- the one mapping table
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_the_mapping_table_names_every_book_parameter_once_with_its_shape(qkv_bias):
    cfg = {"vocab_size": V, "context_length": NPOS, "emb_dim": C, "n_heads": H, "n_layers": L,
           "drop_rate": 0.0, "qkv_bias": qkv_bias}
    params = {n: p.shape for n, p in GPTModel(cfg).named_parameters()}
    table = P.hf_to_book(L) + [P.LM_HEAD]
    named = [b for row in table for b in row.book]
    assert len(named) == len(set(named))                               # nothing mapped twice
    assert set(params) <= set(named)                                   # every parameter mapped
    assert set(named) - set(params) == (set() if qkv_bias else        # only the absent qkv biases
                                        {f"trf_blocks.{i}.att.W_{w}.bias" for i in range(L)
                                         for w in ("query", "key", "value")})
    shapes = P.book_shapes(cfg)
    assert all(shapes[n] == s for n, s in params.items())
    hf = P.hf_shapes(cfg)
    assert hf["h.0.attn.c_attn.weight"] == (C, 3 * C) and hf["h.1.mlp.c_fc.weight"] == (C, 4 * C)
    assert len(hf) == 2 + 12 * L + 2


def test_to_hf_inverts_to_book_for_every_row():
    rng = np.random.default_rng(0)
    cfg = {"vocab_size": V, "context_length": NPOS, "emb_dim": C, "n_layers": L}
    hf = P.hf_shapes(cfg)
    for row in P.hf_to_book(L):
        a = rng.standard_normal(hf[row.hf]).astype(np.float32)
        back = P.to_hf(row, P.to_book(row, a))
        assert back.shape == a.shape and np.array_equal(back, a), row.hf
