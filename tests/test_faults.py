"""The reliability suite: each fault a careless or hostile user can cause, reproduced.

Every case checks the same three things: exit code 2, one line on stderr (no traceback), and
nothing of the user's lost (what existed before is hashed, then compared). The full-disk
cases mount a 2 MB tmpfs, which needs root (CI runs as root); elsewhere they skip, saying so.
Micro and tiny models, small data: the whole file runs in well under two minutes.
"""
import contextlib
import importlib
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinygrad_gpt import checkpoint as C
from tinygrad_gpt import configcheck, corpus, fileio, load_model, rundir
from tinygrad_gpt.cli import pretrain

pretrain_run = importlib.import_module("tinygrad_gpt.cli.pretrain.run")   # the module (the package exports run())
from tinygrad_gpt.cli.generate import main as generate_main
from tinygrad_gpt.cli.prepare_data import main as prepare_main

from helpers import REPO, TINY, env, isolated, mounted_tmpfs, run_cli, small_text, story_corpus

MICRO = ["--model", "micro", "--epochs", "1", "--no-plot", "--threads", "1", "--kernels", "numpy",
         "--eval-freq", "5", "--eval-iter", "1"]


@pytest.fixture(autouse=True)
def isolated_runtime(monkeypatch, tmp_path):
    with isolated(monkeypatch, tmp_path):
        yield


def snapshot(root):
    """path -> sha256 of every file under root."""
    out = {}
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def assert_kept(before, root):
    """Every file that existed before is still there, byte for byte."""
    after = snapshot(root)
    lost = [p for p, h in before.items() if after.get(p) != h]
    assert not lost, f"lost or changed: {lost}"


def one_line_error(rc, err, prog="pretrain.py", words=()):
    print(err)
    assert rc == 2, (rc, err)
    assert len(err.splitlines()) == 1 and err.startswith(f"{prog}: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert str(w) in err, (w, err)


def refused(tmp_path, capsys, *argv, words=(), main=run_cli, prog="pretrain.py"):
    before = snapshot(tmp_path)
    rc = main(*argv)
    out, err = capsys.readouterr()
    one_line_error(rc, err, prog, words)
    assert_kept(before, tmp_path)
    return err


def quiet_run(*argv):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        rc = run_cli(*argv)
    assert rc == 0
    return out.getvalue()


# ----------------------------------------------------------------------------- a small disk
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs at tmp_path/disk."""
    with mounted_tmpfs(tmp_path / "disk", "2M") as d:
        yield d


def fill(d, leave=0):
    """Fill d's filesystem, leaving about `leave` bytes."""
    with open(d / "filler", "wb") as f:
        while True:
            free = os.statvfs(d).f_bavail * os.statvfs(d).f_frsize
            if free <= leave:
                return
            try:
                f.write(bytes(min(1 << 16, max(free - leave, 1))))
                f.flush()
            except OSError:
                return


def test_safetensors_on_a_full_disk_raises_oserror_enospc(small_disk):
    import errno
    fill(small_disk)
    with pytest.raises(OSError) as e:
        fileio.save_safetensors({"w": np.zeros(100_000, np.float32)}, small_disk / "x.safetensors")
    assert e.value.errno == errno.ENOSPC


def _kept_path(err):
    return Path(err.split("kept in ")[1].split(";")[0].removeprefix("checkpoint "))


def test_a_full_disk_at_the_final_save_keeps_the_trained_model_elsewhere(tmp_path, capsys, small_disk, monkeypatch):
    quiet_run(*MICRO, "--out", tmp_path / "ref")                  # the same run on a roomy disk
    capsys.readouterr()
    real = pretrain_run.report_run

    def report_then_fill(*a, **k):                                # the disk fills up during training
        real(*a, **k)
        fill(small_disk)
    monkeypatch.setattr(pretrain_run, "report_run", report_then_fill)
    before = snapshot(tmp_path)
    rc = run_cli(*MICRO, "--out", small_disk / "run")
    err = capsys.readouterr().err
    one_line_error(rc, err, words=["disk full", str(small_disk / "run"), "kept in"])
    assert_kept({k: v for k, v in before.items() if not k.startswith("disk")}, tmp_path)
    kept = _kept_path(err)
    assert (kept / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()
    fileio.verify_checksums(kept)
    run = small_disk / "run"
    assert not run.exists() or not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_a_full_disk_at_the_final_save_names_the_runs_checkpoint(tmp_path, capsys, small_disk, monkeypatch):
    real = pretrain_run.report_run
    monkeypatch.setattr(pretrain_run, "report_run", lambda *a, **k: (real(*a, **k), fill(small_disk)))
    rc = run_cli(*MICRO, "--out", small_disk / "run", "--save-dir", tmp_path / "ck")
    err = capsys.readouterr().err
    one_line_error(rc, err, words=["disk full", "kept in checkpoint", str(tmp_path / "ck")])
    model = load_model(_kept_path(err))                       # the trained weights, loadable
    assert model.num_parameters() == 1200


def test_an_out_too_small_for_the_model_is_refused_before_training(tmp_path, capsys, small_disk):
    err = refused(tmp_path, capsys, *TINY, "--epochs", "1", "--data", _text(tmp_path), "--out", small_disk / "run",
                  words=["--out", "MB free", "6,533,632 parameters"])
    assert not (small_disk / "run").exists(), err


def test_check_space_sums_out_and_save_dir_on_one_filesystem(tmp_path):
    cfg = {"vocab_size": 100, "context_length": 8, "emb_dim": 8, "n_heads": 2, "n_layers": 1, "qkv_bias": False}
    n = configcheck.num_parameters(cfg)
    need = 4 * n + rundir.MARGIN + 3 * 12 * n + rundir.MARGIN     # the model; 2 kept checkpoints + 1 in flight
    rundir.check_space(tmp_path / "o", tmp_path / "s", cfg, free=need)
    with pytest.raises(rundir.UsageError, match="--out .* and --save-dir"):
        rundir.check_space(tmp_path / "o", tmp_path / "s", cfg, free=need - 1)


def test_prepare_data_onto_a_full_disk_is_one_line_and_leaves_no_half_corpus(tmp_path, capsys, small_disk):
    (tmp_path / "big.txt").write_text(small_text(400) * 200, encoding="utf-8")
    (small_disk / "mine.txt").write_text("the user's")
    fill(small_disk, leave=40_000)
    before = snapshot(tmp_path)
    rc = prepare_main([str(tmp_path / "big.txt"), "--out", str(small_disk), "--shard-tokens", "5000"])
    one_line_error(rc, capsys.readouterr().err, "prepare_data.py", words=["disk full"])
    assert_kept(before, tmp_path)
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "mine.txt"]


def _text(tmp_path):
    p = tmp_path / "story.txt"
    if not p.exists():
        p.write_text(small_text(400), encoding="utf-8")
    return p


# ----------------------------------------------------------------------------- locks
def test_a_second_trainer_on_a_save_dir_in_use_is_refused_naming_the_pid(tmp_path, capsys):
    save = tmp_path / "ck"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom tinygrad_gpt import rundir\n"
                               "rundir.acquire(sys.argv[1], '--save-dir'); print('held', flush=True); "
                               "time.sleep(120)", str(save)], env=env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused(tmp_path, capsys, *MICRO, "--save-dir", save, "--out", tmp_path / "o",
                words=["--save-dir", "in use by another training run", f"pid {holder.pid}"])
        refused(tmp_path, capsys, *MICRO, "--out", save, words=["--out", f"pid {holder.pid}"])
    finally:
        holder.kill()
        holder.wait()
    quiet_run(*MICRO, "--save-dir", save, "--out", tmp_path / "o")    # a dead holder holds nothing
    assert not (save / rundir.LOCK_FILE).exists() and not (tmp_path / "o" / rundir.LOCK_FILE).exists()


def test_a_lock_is_refused_to_a_second_process_and_given_back(tmp_path):
    rundir.acquire(tmp_path / "d", "--out")
    try:
        probe = ("import sys\nfrom tinygrad_gpt import rundir\ntry:\n rundir.acquire(sys.argv[1], '--out')\n"
                 "except rundir.UsageError as e:\n print(e)")
        r = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "d")], env=env(), capture_output=True,
                           text=True, timeout=60)
        assert f"pid {os.getpid()}" in r.stdout, r
    finally:
        rundir.release_all()
    assert not (tmp_path / "d").exists()                  # the lock alone made it: it goes too


# ----------------------------------------------------------------------------- no silent overwrite
def test_an_out_holding_another_runs_model_is_refused_unless_overwrite(tmp_path, capsys):
    quiet_run(*MICRO, "--out", tmp_path / "o")
    refused(tmp_path, capsys, *MICRO, "--seed", "7", "--out", tmp_path / "o",
            words=["--out", "holds another run's model", "--overwrite"])
    before = (tmp_path / "o" / "model.safetensors").read_bytes()
    quiet_run(*MICRO, "--seed", "7", "--out", tmp_path / "o", "--overwrite")
    assert (tmp_path / "o" / "model.safetensors").read_bytes() != before


def test_without_out_each_run_takes_the_next_free_runs_pretrain(tmp_path):
    first = quiet_run(*MICRO)
    kept = snapshot(tmp_path / "runs" / "pretrain")
    second = quiet_run(*MICRO)
    assert "Writing the run into runs/pretrain " in first and "Writing the run into runs/pretrain-2 " in second
    assert_kept(kept, tmp_path / "runs" / "pretrain")
    assert (tmp_path / "runs" / "pretrain-2" / "model.safetensors").is_file()


def test_resuming_the_same_run_may_write_its_out_but_a_branch_may_not(tmp_path, capsys):
    quiet_run(*MICRO, "--out", tmp_path / "o", "--save-dir", tmp_path / "ck")
    before = snapshot(tmp_path / "o")
    refused(tmp_path, capsys, "--resume", tmp_path / "ck", "--save-dir", tmp_path / "branch", "--epochs", "2",
            words=["branch", "--out NEW_DIR"])
    quiet_run("--resume", tmp_path / "ck", "--save-dir", tmp_path / "branch", "--epochs", "2",
              "--out", tmp_path / "o2")
    assert_kept(before, tmp_path / "o")
    quiet_run("--resume", tmp_path / "ck", "--epochs", "2")        # the run itself: its own --out
    assert (tmp_path / "o" / "model.safetensors").read_bytes() == (tmp_path / "o2" / "model.safetensors").read_bytes()


def test_leftovers_of_a_kill_9_during_the_final_save_are_removed_at_the_next_start(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".model.safetensors.4242.deadbeef.tmp").write_bytes(b"half a model")
    (out / ".config.json.4242.0badcafe.tmp").write_bytes(b"{")
    (out / "notes.txt").write_text("mine")
    quiet_run(*MICRO, "--out", out)
    assert sorted(p.name for p in out.iterdir()) == ["SHA256SUMS", "config.json", "metrics.jsonl", "model.safetensors",
                                                     "notes.txt"]   # metrics.jsonl: the run log


def test_a_runs_files_share_one_mode(tmp_path):
    quiet_run(*MICRO, "--out", tmp_path / "o", "--save-dir", tmp_path / "ck")
    want = 0o666 & ~fileio.umask()
    files = list((tmp_path / "o").iterdir()) + list(C.latest_checkpoint(tmp_path / "ck").iterdir())
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(want)}, modes


# ----------------------------------------------------------------------------- bounded configs
HF = {"model_type": "gpt2", "vocab_size": 50, "n_positions": 8, "n_embd": 8, "n_head": 2, "n_layer": 1}
BAD_HF = {"n_head-0": ({"n_head": 0}, "n_head: 0 is out of range"),
          "n_embd-null": ({"n_embd": None}, "n_embd: null is not an integer"),
          "n_layer-list": ({"n_layer": [1, 2]}, "n_layer: [1, 2] is not an integer"),
          "absurd": ({"n_embd": 60000, "n_layer": 4000, "n_head": 1}, "more than this machine's")}


@pytest.mark.parametrize("case", BAD_HF)
def test_a_bad_hf_config_is_one_line_naming_the_field_before_anything_is_built(tmp_path, capsys, case):
    d = tmp_path / "m"
    d.mkdir()
    fields, words = BAD_HF[case]
    (d / "config.json").write_text(json.dumps({**HF, **fields}))
    fileio.save_safetensors({"wte.weight": np.zeros((50, 8), np.float32)}, d / "model.safetensors")
    t = time.perf_counter()
    refused(tmp_path, capsys, "--pretrained", d, "--max-new-tokens", "1", words=[words, "config.json"],
            main=lambda *a: generate_main([str(x) for x in a]), prog="generate.py")
    assert time.perf_counter() - t < 10


@pytest.fixture
def micro_ckpt(tmp_path):
    quiet_run(*MICRO, "--out", tmp_path / "o", "--save-dir", tmp_path / "ck")
    return C.latest_checkpoint(tmp_path / "ck")


def _edit_state(ckpt, edit, vouch=True):
    meta = json.loads((ckpt / C.STATE_FILE).read_text())
    edit(meta)
    (ckpt / C.STATE_FILE).write_text(json.dumps(meta, indent=1))
    if vouch:                                  # files mixed from elsewhere: their own SHA256SUMS
        fileio.write_checksums(ckpt, (C.STATE_FILE,))


@pytest.mark.parametrize("field,value,words", [("n_heads", 0, "n_heads: 0"), ("emb_dim", None, "emb_dim: null"),
                                               ("n_layers", 4000, "more than this machine's")])
def test_a_resumed_checkpoints_bad_model_config_is_one_line(tmp_path, capsys, micro_ckpt, field, value, words):
    def edit(meta):
        meta["config"]["model_config"][field] = value
        if field == "n_layers":
            meta["config"]["model_config"]["emb_dim"] = 8192
    _edit_state(micro_ckpt, edit)
    t = time.perf_counter()
    refused(tmp_path, capsys, "--resume", micro_ckpt, "--epochs", "2", words=[words, str(micro_ckpt)])
    assert time.perf_counter() - t < 10


# ----------------------------------------------------------------------------- integrity
def test_a_changed_digit_in_state_json_is_caught_by_its_sha256(tmp_path, capsys, micro_ckpt):
    _edit_state(micro_ckpt, lambda m: m["train_state"].update(tokens_seen=m["train_state"]["tokens_seen"] + 1),
                vouch=False)
    refused(tmp_path, capsys, "--resume", micro_ckpt, "--epochs", "2", words=["state.json", "sha256", "SHA256SUMS"])


def test_a_flipped_bit_in_the_final_model_is_caught_when_loading(tmp_path, capsys):
    quiet_run(*MICRO, "--out", tmp_path / "o")
    f = tmp_path / "o" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x40                                            # an exponent bit
    f.write_bytes(bytes(data))
    refused(tmp_path, capsys, "--checkpoint", tmp_path / "o", "--max-new-tokens", "1",
            words=["model.safetensors", "sha256"], main=lambda *a: generate_main([str(x) for x in a]),
            prog="generate.py")


def test_loading_nan_weights_warns_in_one_line(tmp_path):
    from tinygrad_gpt.pretrained import from_pretrained, save_pretrained
    from helpers import micro_model
    model = micro_model()
    model.tok_emb.weight.data[0, 0] = np.nan
    save_pretrained(model, tmp_path / "m")
    with pytest.warns(RuntimeWarning, match=r"NaN or infinite values \(") as w:
        from_pretrained(tmp_path / "m")
    import warnings
    shown = warnings.formatwarning(w[0].message, w[0].category, w[0].filename, w[0].lineno, None)
    assert len(shown.splitlines()) == 1 and "model.safetensors" in shown, shown


# ----------------------------------------------------------------------------- corpora
@pytest.fixture
def story(tmp_path):
    return story_corpus(tmp_path)


def test_a_flipped_token_in_a_shard_is_caught_by_its_sha256(tmp_path, capsys, story):
    shard = story / "train_000000.bin"
    data = bytearray(shard.read_bytes())
    data[2000] ^= 0x01
    shard.write_bytes(bytes(data))
    refused(tmp_path, capsys, *TINY, "--data", story, "--max-steps", "2", words=[str(shard), "sha256"])


def test_a_shard_name_outside_the_corpus_is_refused(tmp_path, capsys, story):
    (tmp_path / "elsewhere.bin").write_bytes((story / "train_000000.bin").read_bytes())
    m = json.loads((story / corpus.MANIFEST).read_text())
    m["splits"]["train"]["shards"][0]["name"] = "../elsewhere.bin"
    (story / corpus.MANIFEST).write_text(json.dumps(m))
    refused(tmp_path, capsys, *TINY, "--data", story, "--max-steps", "2", words=["'../elsewhere.bin'", "train_NNNNNN.bin"])


def test_a_token_past_the_vocabulary_is_named_with_its_shard(tmp_path, capsys, story):
    shard = story / "train_000000.bin"
    tokens = np.asarray(corpus.read_shard(shard)).copy()
    tokens[10] = 60000
    entry = corpus.write_shard(shard, tokens)
    m = json.loads((story / corpus.MANIFEST).read_text())
    m["splits"]["train"]["shards"][0].update(sha256=entry["sha256"])    # a manifest that vouches for it
    (story / corpus.MANIFEST).write_text(json.dumps(m))
    refused(tmp_path, capsys, *TINY, "--data", story, "--max-steps", "2", words=[str(shard), "token 60000", "vocabulary"])
    stream = corpus.TokenStream([corpus.read_shard(shard)], [str(shard)], vocab_size=50257)
    with pytest.raises(corpus.CorpusError, match=r"train_000000.bin holds token 60000 at token offset 10"):
        stream.window(5, 10)


def test_shards_are_hashed_once_then_remembered_by_size_and_mtime(story, monkeypatch):
    calls = []
    real = corpus._scan
    monkeypatch.setattr(corpus, "_scan", lambda p: calls.append(p) or real(p))
    corpus.open_corpus(story)
    first = len(calls)
    corpus.open_corpus(story)
    assert first >= 2 and len(calls) == first


def test_re_preparing_identical_inputs_keeps_the_corpus_identity(tmp_path, story):
    before = corpus.read_manifest(story)["sha256"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert prepare_main([str(tmp_path), "--out", str(story), "--shard-tokens", "1000", "--force"]) == 0
    m = corpus.read_manifest(story)
    assert m["sha256"] == before
    m2 = json.loads((story / corpus.MANIFEST).read_text())
    m2["created"] = "another time"
    (story / corpus.MANIFEST).write_text(json.dumps(m2))
    assert corpus.read_manifest(story)["sha256"] == before      # the bytes changed, the content did not


def test_prepare_data_refuses_to_replace_shards_it_did_not_write(tmp_path, capsys):
    (tmp_path / "in.txt").write_text(small_text(300), encoding="utf-8")
    out = tmp_path / "c"
    out.mkdir()
    corpus.write_shard(out / "train_000000.bin", np.arange(50, dtype=np.uint16))     # someone else's
    refused(tmp_path, capsys, tmp_path / "in.txt", "--out", out, words=["train_000000.bin", "no manifest"],
            main=lambda *a: prepare_main([str(x) for x in a]), prog="prepare_data.py")


# ----------------------------------------------------------------------------- flags
@pytest.mark.parametrize("flag", ["--batch-size", "--accum-steps"])
def test_a_batch_larger_than_the_data_is_refused_before_start_up(tmp_path, capsys, flag):
    t = time.perf_counter()
    refused(tmp_path, capsys, *MICRO, flag, "1000", words=[f"{flag} 1000"])
    assert time.perf_counter() - t < 10


# ----------------------------------------------------------------------------- the torch runner
def test_the_torch_runner_in_process_restores_argv_and_path(tmp_path, monkeypatch):
    from tinygrad_gpt.torch.__main__ import main
    monkeypatch.delitem(sys.modules, "torch", raising=False)     # real torch, if another test imported it
    script = tmp_path / "s.py"
    script.write_text("import sys, torch\nassert sys.argv == [sys.argv[0], 'x']\n")
    argv, path = list(sys.argv), list(sys.path)
    assert main([str(script), "x"]) == 0
    assert sys.argv == argv and sys.path == path


def test_the_torch_runner_keeps_torch_bound_for_threads_and_atexit(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import atexit, sys, threading, time\nimport torch\n"
                      "def late():\n    time.sleep(0.3)\n    import torch as t\n    print('thread', t.__name__)\n"
                      "threading.Thread(target=late).start()\n"
                      "atexit.register(lambda: print('atexit', sys.modules['torch'].__name__))\n")
    r = subprocess.run([sys.executable, "-m", "tinygrad_gpt.torch", str(script)], env=env(), capture_output=True,
                       text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["thread tinygrad_gpt.torch", "atexit tinygrad_gpt.torch"], r.stdout


@pytest.mark.parametrize("argv,words", [(["--seed", "-1"], "--seed -1"), (["--seed", str(2 ** 64)], "--seed"),
                                        (["--threads", "0"], "--threads 0"), (["--eval-iter", "0"], "--eval-iter 0")])
def test_a_numeric_flag_out_of_range_is_one_line(tmp_path, capsys, argv, words):
    refused(tmp_path, capsys, *MICRO, *argv, words=[words, "out of range"])


@pytest.mark.parametrize("argv,words", [(["--shard-tokens", str(2 ** 31)], "--shard-tokens"),
                                        (["--threads", "-1"], "--threads -1")])
def test_a_prepare_data_flag_out_of_range_is_one_line(tmp_path, capsys, argv, words):
    (tmp_path / "in.txt").write_text(small_text(100), encoding="utf-8")
    refused(tmp_path, capsys, tmp_path / "in.txt", "--out", tmp_path / "c", *argv, words=[words, "out of range"],
            main=lambda *a: prepare_main([str(x) for x in a]), prog="prepare_data.py")


@pytest.mark.parametrize("script", ["pretrain.py", "generate.py", "prepare_data.py", "plot.py",
                                    "finetune_classifier.py", "finetune_instruct.py", "explain_backward.py"])
def test_ctrl_c_while_the_libraries_load_exits_130_quietly(tmp_path, script):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "numpy.py").write_text("raise KeyboardInterrupt\n")     # Ctrl-C lands during `import numpy`
    e = env()
    e["PYTHONPATH"] = os.pathsep.join([str(fake), e["PYTHONPATH"]])
    r = subprocess.run([sys.executable, str(REPO / "examples" / script), "--help"], env=e, capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 130 and r.stderr == "" and r.stdout == "", r


@pytest.mark.parametrize("key,value", [("batch_size", [2]), ("lr", "fast"), ("seed", None)])
def test_a_resumed_checkpoints_run_config_of_the_wrong_type_is_one_line(tmp_path, capsys, micro_ckpt, key, value):
    _edit_state(micro_ckpt, lambda m: m["config"]["run"].update({key: value}))
    refused(tmp_path, capsys, "--resume", micro_ckpt, "--epochs", "2", words=[f"run.{key}", str(micro_ckpt)])


def test_resuming_on_an_identical_re_prepared_corpus_continues(tmp_path, story):
    quiet_run(*TINY, "--data", story, "--max-steps", "2", "--save-dir", tmp_path / "ck", "--out", tmp_path / "o")
    with contextlib.redirect_stdout(io.StringIO()):
        assert prepare_main([str(tmp_path), "--out", str(story), "--shard-tokens", "1000", "--force"]) == 0
    out = quiet_run("--resume", tmp_path / "ck", "--max-steps", "3")
    assert "Resuming from" in out and (tmp_path / "ck" / "step-000002").is_dir()


def test_a_shard_changed_under_a_running_job_stops_with_one_line(tmp_path, capsys, story, monkeypatch):
    real = pretrain_run.corpus_loaders

    def loaders_then_damage(*a, **k):             # verified at the start, overwritten since
        loaders = real(*a, **k)
        shard = story / "train_000000.bin"
        data = bytearray(shard.read_bytes())
        data[corpus.HEADER_BYTES:] = np.full((len(data) - corpus.HEADER_BYTES) // 2, 60000, "<u2").tobytes()
        with open(shard, "r+b") as f:             # in place: the memory map sees it
            f.write(bytes(data))
        return loaders
    monkeypatch.setattr(pretrain_run, "corpus_loaders", loaders_then_damage)
    rc = run_cli(*TINY, "--data", story, "--max-steps", "2", "--order", "sequential", "--out", tmp_path / "o")
    one_line_error(rc, capsys.readouterr().err, words=["training stopped", "train_000000.bin", "token 60000",
                                                      "at token offset 0", "no checkpoint was saved"])


def test_the_torch_runner_lets_a_scripts_thread_pool_finish(tmp_path):
    script = tmp_path / "p.py"
    script.write_text("from concurrent.futures import ThreadPoolExecutor\nimport torch\n"
                      "print(ThreadPoolExecutor(2).submit(lambda: 1 + 1).result())\n")
    r = subprocess.run([sys.executable, "-m", "tinygrad_gpt.torch", str(script)], env=env(), capture_output=True,
                       text=True, timeout=60, cwd=REPO)                 # its idle workers once hung the join
    assert r.returncode == 0 and r.stdout == "2\n", r
