"""examples/pretrain.py as a user meets it: bad input, Ctrl-C, SIGTERM and kill -9.

Every user error is one line on stderr, exit code 2, no traceback, and nothing written
(the directory tree is snapshotted before and after). Signals save a checkpoint and print
the command that resumes; kill -9 at random moments, then resuming, ends with the bytes
of an uninterrupted run. The subprocesses use the NumPy kernels and one thread.
"""
import contextlib
import hashlib
import io
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinygrad_gpt import checkpoint as C
from tinygrad_gpt.cli import pretrain
from tinygrad_gpt.runlog import read_metrics
from tinygrad_gpt.amp import resolve_precision
from tinygrad_gpt.fileio import write_checksums

from helpers import TINY, assert_same_run, by_step, cli, env, ep_lines, isolated, run_cli, small_text, start

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "pretrain.py"
RUN = [*TINY, "--epochs", "2"]


@pytest.fixture(autouse=True)
def isolated_runtime(monkeypatch, tmp_path):
    with isolated(monkeypatch, tmp_path):
        yield


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "story.txt"
    path.write_text(small_text(), encoding="utf-8")
    return path




def snapshot(root):
    """path -> sha256 of every file (and None for every directory) under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory, text_file):
    """A save directory after one epoch of the tiny run (steps 0-10, saved every 5)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    with pytest.MonkeyPatch.context() as mp, isolated(mp, tmp), contextlib.redirect_stdout(io.StringIO()):
        assert run_cli(*TINY, "--epochs", "1", "--data", text_file, "--save-dir", tmp / "ck",
                       "--save-every", "5") == 0
    return tmp / "ck"


@pytest.fixture
def ckpt_copy(tmp_path, checkpoint_dir):
    """A private copy of the newest checkpoint, in tmp_path/ck/step-000010."""
    newest = C.latest_checkpoint(checkpoint_dir)
    shutil.copytree(newest, tmp_path / "ck" / newest.name)
    return tmp_path / "ck" / newest.name


def refused(tmp_path, capsys, *argv, words=()):
    """main(argv) is a usage error: exit 2, one line on stderr, no traceback, nothing written."""
    before = snapshot(tmp_path)
    rc = run_cli(*argv)
    out, err = capsys.readouterr()
    print(err)
    assert rc == 2, (rc, out, err)
    assert len(err.splitlines()) == 1 and err.startswith("pretrain.py: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in err, (w, err)
    assert snapshot(tmp_path) == before, "something was written"
    return err


# ----------------------------------------------------------------------------- bad input
def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


BAD_DATA = {
    "missing": (lambda t: t / "nope.txt", ["does not exist"]),
    "directory": (lambda t: (t / "adir").mkdir() or t / "adir", ["is a directory"]),
    "empty": (lambda t: _write(t, "empty.txt", b""), ["is empty"]),
    "non-utf8": (lambda t: _write(t, "latin1.txt", "caf\xe9 ".encode("latin-1") * 50), ["not UTF-8", "iconv"]),
    "binary": (lambda t: _write(t, "bin.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00"), ["binary"]),
    "too-short": (lambda t: _write(t, "short.txt", b"Every effort moves you. " * 3), ["is too short", "tokens, one window needs 17"]),
}


@pytest.mark.parametrize("case", BAD_DATA)
def test_a_bad_training_text_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case):
    make, words = BAD_DATA[case]
    path = make(tmp_path)
    refused(tmp_path, capsys, *RUN, "--data", path, "--save-dir", tmp_path / "ck", words=[str(path), *words])


BAD_FLAGS = {
    "context-above-model": (["--context-length", "65"], ["--context-length 65", "at most 64"]),
    "batch-size-0": (["--batch-size", "0"], ["--batch-size 0", "at least 1"]),
    "epochs-0": (["--epochs", "0"], ["--epochs 0"]),
    "lr-0": (["--lr", "0"], ["--lr 0.0", "(0, 1)"]),
    "lr-2": (["--lr", "2"], ["--lr 2.0"]),
    "lr-nan": (["--lr", "nan"], ["--lr nan"]),
    "eval-freq-0": (["--eval-freq", "0"], ["--eval-freq 0"]),
    "save-every-0": (["--save-every", "0"], ["--save-every 0"]),
    "epochs-not-a-number": (["--epochs", "two"], ["--epochs", "'two'"]),
    "unknown-model": (["--model", "huge"], ["unknown --model 'huge'", "tiny"]),
}


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_a_flag_out_of_range_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, text_file, case):
    extra, words = BAD_FLAGS[case]
    refused(tmp_path, capsys, *RUN, "--data", text_file, "--save-dir", tmp_path / "ck", *extra, words=words)


def test_a_save_dir_under_a_file_is_refused_before_training(tmp_path, capsys, text_file):
    _write(tmp_path, "afile", b"x")
    refused(tmp_path, capsys, *RUN, "--data", text_file, "--save-dir", tmp_path / "afile" / "ck",
            words=["--save-dir", "is a file"])


def test_a_save_dir_that_is_a_file_is_refused(tmp_path, capsys, text_file):
    _write(tmp_path, "afile", b"x")
    refused(tmp_path, capsys, *RUN, "--data", text_file, "--save-dir", tmp_path / "afile", words=["is a file"])


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_an_unwritable_save_dir_is_refused_before_training(tmp_path, capsys, text_file):
    """/proc refuses new entries even to root (where permission bits stop nothing)."""
    refused(tmp_path, capsys, *RUN, "--data", text_file, "--save-dir", "/proc/tinygrad_gpt_ck",
            words=["--save-dir /proc/tinygrad_gpt_ck is not writable"])


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes through permission bits")
def test_a_read_only_save_dir_is_refused_before_training(tmp_path, capsys, text_file):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        refused(tmp_path, capsys, *RUN, "--data", text_file, "--save-dir", ro / "ck", words=["not writable"])
    finally:
        ro.chmod(0o700)


def test_an_unwritable_out_dir_is_refused_before_training(tmp_path, capsys, text_file):
    _write(tmp_path, "afile", b"x")
    args = [a for a in RUN if a != "--no-plot"]
    refused(tmp_path, capsys, *args, "--data", text_file, "--out", tmp_path / "afile" / "out", words=["--out"])


def test_a_save_dir_holding_another_runs_checkpoints_is_refused(tmp_path, capsys, text_file, ckpt_copy):
    refused(tmp_path, capsys, *RUN, "--data", text_file, "--save-dir", ckpt_copy.parent,
            words=["already holds checkpoints", f"--resume {ckpt_copy.parent}"])


# ----------------------------------------------------------------------------- bad checkpoints
def test_resume_from_a_missing_path_is_refused(tmp_path, capsys):
    refused(tmp_path, capsys, "--resume", tmp_path / "nope", words=["does not exist"])


def test_resume_from_a_directory_without_checkpoints_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    refused(tmp_path, capsys, "--resume", tmp_path / "empty", words=["no checkpoint in"])


def test_resume_from_a_truncated_checkpoint_is_refused(tmp_path, capsys, ckpt_copy):
    f = ckpt_copy / C.OPTIMIZER_FILE
    f.write_bytes(f.read_bytes()[:-1000])
    refused(tmp_path, capsys, "--resume", ckpt_copy.parent, words=["truncated", C.OPTIMIZER_FILE, str(ckpt_copy)])


def test_resume_from_a_corrupted_checkpoint_is_refused(tmp_path, capsys, text_file, ckpt_copy):
    f = ckpt_copy / C.MODEL_FILE
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01
    f.write_bytes(bytes(data))
    refused(tmp_path, capsys, "--resume", ckpt_copy, "--data", text_file, words=["sha256", C.MODEL_FILE])


def test_resume_from_a_checkpoint_with_a_damaged_state_json_is_refused(tmp_path, capsys, ckpt_copy):
    f = ckpt_copy / C.STATE_FILE
    f.write_bytes(f.read_bytes()[:-10])
    refused(tmp_path, capsys, "--resume", ckpt_copy, words=["not valid JSON"])


def test_resume_from_a_checkpoint_of_another_config_names_the_tensor(tmp_path, capsys, ckpt_copy):
    """state.json says context 32 while the tensors were saved at 16 (e.g. files mixed
    from two runs): the first tensor that does not fit is named."""
    f = ckpt_copy / C.STATE_FILE
    meta = json.loads(f.read_text())
    meta["config"]["model_config"]["context_length"] = 32
    f.write_text(json.dumps(meta))
    write_checksums(ckpt_copy, (C.STATE_FILE,))   # mixed files: that state.json came with its SHA256SUMS
    refused(tmp_path, capsys, "--resume", ckpt_copy, words=["pos_emb.weight", "(16, 64)", "(32, 64)"])


@pytest.mark.parametrize("flag,value", [("--model", "124M"), ("--context-length", "32"), ("--lr", "0.001"),
                                        ("--batch-size", "4")])
def test_resume_with_a_conflicting_flag_names_the_mismatch(tmp_path, capsys, ckpt_copy, flag, value):
    refused(tmp_path, capsys, "--resume", ckpt_copy.parent, flag, value,
            words=[f"{flag} {value}", "conflicts with the checkpoint", f"drop {flag}"])


def test_resume_with_fewer_epochs_than_done_is_refused(tmp_path, capsys, ckpt_copy):
    # the checkpoint finished epoch 1 of 1: --epochs 0 is out of range, --epochs 1 just ends
    refused(tmp_path, capsys, "--resume", ckpt_copy.parent, "--epochs", "0", words=["--epochs 0"])


def test_resume_with_another_text_is_refused(tmp_path, capsys, ckpt_copy):
    other = _write(tmp_path, "other.txt", small_text(300).encode())
    refused(tmp_path, capsys, "--resume", ckpt_copy.parent, "--data", other, words=["is not the one", "--data"])


def test_a_usage_error_in_a_real_process_has_no_traceback(tmp_path):
    before = snapshot(tmp_path)
    r = subprocess.run(cli("--model", "tiny", "--data", tmp_path / "nope.txt"), cwd=tmp_path, env=env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert snapshot(tmp_path) == before


def test_help_documents_checkpoints_and_exit_codes(capsys):
    with pytest.raises(SystemExit):
        pretrain.main(["--help"])
    out = capsys.readouterr().out
    for word in ("--save-dir", "--save-every", "--resume", "exit codes", "130", "143", "NaN"):
        assert word in out


# ----------------------------------------------------------------------------- signals and kill -9
@pytest.fixture(scope="module")
def baseline(tmp_path_factory, text_file):
    """The uninterrupted run, as a process: its final checkpoint and its Ep lines."""
    tmp = tmp_path_factory.mktemp("cli-baseline")
    r = subprocess.run(cli(*RUN, "--data", text_file, "--save-dir", tmp / "ck", "--save-every", "1000"),
                       cwd=tmp, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return C.latest_checkpoint(tmp / "ck"), ep_lines(r.stdout), read_metrics(tmp / "runs" / "pretrain")



def read_until(proc, prefix):
    """Lines of stdout up to and including the first that starts with prefix."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            break
    return lines



@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_prints_the_resume_command_and_exits_128_plus_n(
        tmp_path, text_file, baseline, signum, code):
    save = tmp_path / "ck"
    proc = start(cli(*RUN, "--data", text_file, "--save-dir", save, "--save-every", "1000"), tmp_path)
    lines = read_until(proc, "Ep 1 (Step 000002)")
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    print(err)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    newest = C.latest_checkpoint(save)
    assert newest is not None and f"saved to {save.name}/{newest.name}" in err.replace(str(tmp_path) + "/", "")
    command = next(line for line in err.splitlines() if line.startswith("Resume with: "))[len("Resume with: "):]
    words = shlex.split(command)
    assert words[words.index("--resume") + 1] == str(save) and words[1] == str(SCRIPT)
    C.load_checkpoint(newest)
    if signum == signal.SIGINT:                  # the printed command finishes the run exactly
        argv = shlex.split(command)
        r = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=env(), capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert_same_run(C.latest_checkpoint(save), baseline[0])
        table = by_step(ep_lines("".join(lines) + out), {})
        assert by_step(ep_lines(r.stdout), table) == by_step(baseline[1], {})


def test_a_signal_without_save_dir_saves_into_out_checkpoints(tmp_path, text_file):
    proc = start(cli(*RUN, "--data", text_file, "--out", tmp_path / "out"), tmp_path)
    read_until(proc, "Ep 1 (Step 000000)")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    print(err)
    assert proc.returncode == 143
    where = tmp_path / "out" / "checkpoints"
    assert f"saved to {where}/step-" in err and f"--resume {where}" in err
    C.load_checkpoint(where)


def test_kill_9_at_random_moments_then_resume_ends_with_the_uninterrupted_runs_bytes(tmp_path, text_file, baseline):
    """kill -9 three times, each at a seeded random moment after a new checkpoint appears
    (mid-step, mid-evaluation, mid-save alike), so every round makes progress; each time the newest checkpoint loads and --resume goes
    on from it. Final parameters, AdamW state, generators and loss history, and every
    printed Ep line, equal the uninterrupted run's."""
    rng = random.Random(int(os.environ.get("KILL_TEST_SEED", "5")))
    save = tmp_path / "ck"
    fresh = cli(*RUN, "--data", text_file, "--save-dir", save, "--save-every", "2")
    resume = cli("--resume", save)
    table, kills = {}, 0
    for delay in [rng.uniform(0.0, 0.5) for _ in range(3)]:
        before = C.latest_checkpoint(save)
        proc = start(resume if before else fresh, tmp_path)
        lines = read_until(proc, "Checkpoints:")       # training is about to start
        # Wait for an event, not a clock (a loaded machine may be slow to start): a checkpoint
        # newer than the one this run began from. Then kill at a seeded random moment after it.
        deadline = time.monotonic() + 300
        while C.latest_checkpoint(save) == before and proc.poll() is None:
            assert time.monotonic() < deadline, "no new checkpoint within 300 s"
            time.sleep(0.01)
        time.sleep(delay)
        proc.kill()
        out, err = proc.communicate(timeout=60)
        by_step(ep_lines("".join(lines) + out), table)
        if proc.returncode == 0:
            break                                      # finished before the kill
        assert proc.returncode == -signal.SIGKILL, err
        kills += 1
        newest = C.latest_checkpoint(save)
        print(f"killed after {delay:.2f} s; newest checkpoint {newest and newest.name}; "
              f"left: {sorted(p.name for p in save.iterdir()) if save.exists() else []}")
        assert newest is not None and newest != before     # this round made progress
        C.load_checkpoint(newest)
        assert len(C.list_checkpoints(save)) <= 3          # 3 if killed between a save and its prune
    r = subprocess.run(resume if C.latest_checkpoint(save) else fresh, cwd=tmp_path, env=env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    by_step(ep_lines(r.stdout), table)
    assert kills >= 1
    assert sorted(p.name for p in save.iterdir()) == ["latest", "step-000019", "step-000021"]
    assert_same_run(C.latest_checkpoint(save), baseline[0])
    assert table == by_step(baseline[1], {})
    # the run log went on across the kills: every evaluation once, with the uninterrupted run's numbers
    records = read_metrics(tmp_path / "runs" / "pretrain")
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"a step logged twice or out of order: {steps}"
    numbers = ("step", "epoch", "tokens_seen", "train_loss", "val_loss", "lr")
    assert [[r[k] for k in numbers] for r in records] == [[r[k] for k in numbers] for r in baseline[2]]
    elapsed = [r["elapsed"] for r in records]
    assert elapsed == sorted(elapsed), "elapsed goes on from the kept records after a resume"


def test_the_run_log_has_one_record_per_printed_evaluation_with_its_numbers(baseline):
    """metrics.jsonl: what each "Ep N (Step S): Train loss ..., Val loss ..." line printed, unrounded."""
    _, lines, records = baseline
    ran_in = resolve_precision("auto")          # the baseline gives no --precision: bfloat16 on a bf16 CPU
    assert len(records) == len(lines) > 5
    for line, r in zip(lines, records):
        assert line == f"Ep {r['epoch']} (Step {r['step']:06d}): Train loss {r['train_loss']:.3f}, Val loss {r['val_loss']:.3f}"
        assert r["lr"] == 4e-4 and r["precision"] == ran_in and r["tokens_per_s"] > 0 and r["elapsed"] > 0
        assert isinstance(r["train_loss"], float) and r["train_loss"] != round(r["train_loss"], 3)
    tokens = [r["tokens_seen"] for r in records]
    assert tokens == sorted(tokens) and tokens[0] == 2 * 16     # batch 2 x context 16 after step 0


def test_plot_redraws_one_run_and_overlays_several(tmp_path, baseline, capsys):
    """examples/plot.py RUN_DIR...: one run redrawn into its own loss-plot.png; two overlaid."""
    from tinygrad_gpt.cli import plot
    run = Path(baseline[0]).parent.parent / "runs" / "pretrain"
    other = tmp_path / "bf16"
    other.mkdir()
    shutil.copy(run / "metrics.jsonl", other / "metrics.jsonl")
    assert plot.main([str(run), "--out", str(tmp_path / "one.png")]) == 0
    assert plot.main([str(run), str(other), "--out", str(tmp_path / "two.png")]) == 0
    assert (tmp_path / "one.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "two.png").stat().st_size > 1000
    assert plot.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plot.py: error: ") and "no metrics.jsonl" in err and len(err.splitlines()) == 1


def test_a_second_signal_stops_at_once_and_names_the_last_checkpoint(tmp_path, text_file, monkeypatch, capsys):
    original = pretrain.saving.Checkpointer.on_step

    def two_sigints_at_step_4(self, state):
        if state.global_step == 4:
            os.kill(os.getpid(), signal.SIGINT)            # flag: save at the next safe point
            os.kill(os.getpid(), signal.SIGINT)            # again: stop now, no save
        return original(self, state)

    monkeypatch.setattr(pretrain.saving.Checkpointer, "on_step", two_sigints_at_step_4)
    save = tmp_path / "ck"
    assert run_cli(*RUN, "--data", text_file, "--save-dir", save, "--save-every", "2") == 130
    err = capsys.readouterr().err
    print(err)
    assert "SIGINT again: stopped without saving" in err and str(save / "step-000003") in err
    assert f"--resume {save}" in err and "Traceback" not in err
    assert C.latest_checkpoint(save).name == "step-000003"


def test_resume_from_an_older_checkpoint_into_its_own_directory_is_refused(tmp_path, capsys, checkpoint_dir):
    shutil.copytree(checkpoint_dir, tmp_path / "ck")
    older = C.list_checkpoints(tmp_path / "ck")[0][1]
    refused(tmp_path, capsys, "--resume", older, words=["is not the newest", "--save-dir NEW_DIR"])


# ----------------------------------------------------------------------------- the run keeps its result
def test_a_finished_run_saves_its_model_and_generate_checkpoint_out_generates_from_it(tmp_path, text_file):
    """`examples/pretrain.py --model tiny --epochs 1`, then the printed `examples/generate.py
    --checkpoint OUT`: the text comes from the trained weights, not random ones."""
    out = tmp_path / "run"
    p = subprocess.run(cli(*TINY, "--epochs", "1", "--data", text_file, "--out", out),
                       capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=600)
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in out.iterdir()) == ["SHA256SUMS", "config.json", "metrics.jsonl",
                                                     "model.safetensors"]   # no optimizer
    command = [line for line in p.stdout.splitlines() if line.startswith("Generate with: ")]
    assert command == [f"Generate with: python examples/generate.py --checkpoint {out}"], p.stdout[-500:]

    from tinygrad_gpt.loading import load_model
    from tinygrad_gpt.tokenizer import get_gpt2_tokenizer, text_to_token_ids
    model = load_model(out)
    assert model.cfg["n_layers"] == 2 and model.cfg["context_length"] == 16
    generate_script = REPO / "examples" / "generate.py"
    g = subprocess.run([sys.executable, str(generate_script), "--checkpoint", str(out), "--max-new-tokens", "8",
                        "--prompt", "Every effort moves you", "--kernels", "numpy"],
                       capture_output=True, text=True, env=env(), cwd=tmp_path, timeout=600)
    assert g.returncode == 0, g.stderr
    assert "random" not in g.stderr and f"model: {out}" in g.stderr, g.stderr
    text = g.stdout.splitlines()[0]
    # the same greedy tokens as the saved weights give in this process
    from tinygrad_gpt import generate
    from tinygrad_gpt.kernels import use
    tok = get_gpt2_tokenizer()
    with use("numpy"):
        ids = generate(model, text_to_token_ids("Every effort moves you", tok), 8, 16)
    expected = tok.decode(ids[0].tolist())
    print(f"generated: {text!r}")
    assert text == expected and len(text) > len("Every effort moves you")


def test_save_optimizer_also_keeps_a_resumable_checkpoint(tmp_path, text_file):
    out = tmp_path / "run"
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert run_cli(*TINY, "--epochs", "1", "--data", text_file, "--out", out, "--save-optimizer") == 0
    step = C.latest_checkpoint(out / "checkpoints")
    assert sorted(f.name for f in step.iterdir()) == ["SHA256SUMS", "model.safetensors", "optimizer.safetensors",
                                                      "state.json"]
    assert f"Checkpoint saved to {step}" in stdout.getvalue()
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


# ----------------------------------------------------------------------------- the BLAS kernel
@pytest.mark.parametrize("environ, arch, flags, expected", [
    ({}, "Haswell", {"avx2", "avx512f"}, ""),                       # OpenBLAS chose: nothing to say
    ({"OPENBLAS_CORETYPE": ""}, "Haswell", {"avx512f"}, ""),
    ({"OPENBLAS_CORETYPE": "Haswell"}, "Haswell", {"avx2"}, ", forced by OPENBLAS_CORETYPE=Haswell"),
    ({"OPENBLAS_CORETYPE": "SkylakeX"}, "SkylakeX", {"avx2", "avx512f"}, ", forced by OPENBLAS_CORETYPE=SkylakeX"),
    ({"OPENBLAS_CORETYPE": "Haswell"}, "Haswell", {"avx2", "avx512f"},
     ", forced by OPENBLAS_CORETYPE=Haswell on a CPU with AVX-512: unset it for faster float32 GEMMs"),
    ({"OPENBLAS_CORETYPE": "zen"}, "Zen", {"avx512f"},
     ", forced by OPENBLAS_CORETYPE=zen on a CPU with AVX-512: unset it for faster float32 GEMMs"),
    ({"OPENBLAS_CORETYPE": "NoSuchCore"}, "SkylakeX", {"avx512f"}, ", OPENBLAS_CORETYPE=NoSuchCore is set"),
])
def test_the_runtime_line_says_when_openblas_coretype_chose_the_blas_kernel(environ, arch, flags, expected):
    """OPENBLAS_CORETYPE=Haswell on an AVX-512 AMD EPYC ran float32 GEMMs at 206 GFLOP/s, OpenBLAS's
    own choice (SkylakeX) at 399 (benchmarks/RESULTS.md): the line names the variable, and the
    remedy where the CPU has AVX-512 and the forced kernel has none; "forced" only when OpenBLAS
    reports the kernel the variable names."""
    from tinygrad_gpt.cli import blas_kernel_note
    assert blas_kernel_note(arch, environ=environ, flags=flags) == expected


def test_setup_threads_reports_the_blas_kernel_variable(monkeypatch, tmp_path):
    from threadpoolctl import threadpool_info
    from tinygrad_gpt.cli import setup_threads
    arch = next(i for i in threadpool_info() if i.get("user_api") == "blas" and "numpy" in i["filepath"])["architecture"]
    with isolated(monkeypatch, tmp_path):                    # setup_threads sets the thread counts
        monkeypatch.setenv("OPENBLAS_CORETYPE", arch)        # read when the line is made, not at load
        assert f"{arch}, forced by OPENBLAS_CORETYPE={arch}" in setup_threads(1)
        monkeypatch.setenv("OPENBLAS_CORETYPE", "NoSuchCore")
        assert f"{arch}, OPENBLAS_CORETYPE=NoSuchCore is set" in setup_threads(1)
        monkeypatch.delenv("OPENBLAS_CORETYPE")
        assert "OPENBLAS_CORETYPE" not in setup_threads(1)


# ----------------------------------------------------------------------------- the run configuration
def test_the_run_config_is_settled_once_from_flags_and_checkpoint_and_the_flags_are_not_written(ckpt_copy):
    import dataclasses
    from tinygrad_gpt.cli.pretrain import config as run_config, flags
    argv = ["--resume", str(ckpt_copy), "--epochs", "3"]
    args = flags.build_parser().parse_args(argv)
    parsed = dict(vars(args))
    ckpt, _ = flags.open_checkpoint(args)
    config, corpus_run = run_config.build_config(args, flags.explicit_flags(argv), ckpt)
    assert vars(args) == parsed                                  # read, never written
    assert corpus_run is None
    assert (config.model, config.context_length, config.batch_size, config.epochs) == ("tiny", 16, 2, 3)
    stored = ckpt.config.get("precision", "float32")            # what the checkpoint trained in
    assert stored == resolve_precision("auto")                   # the fixture's run asked for auto
    assert config.precision == config.precision_requested == stored     # the checkpoint's
    assert config.model_config["context_length"] == 16 and config.drop_rate == config.model_config["drop_rate"]
    assert config.explicit == {"resume", "epochs"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0


def test_without_out_the_run_config_settles_the_next_free_runs_pretrain(tmp_path, monkeypatch):
    """No --out: the RunConfig's `out` is the next free runs/pretrain-N and `out_chosen` says so;
    the parsed flags keep their None (rundir.settle_out returns the choice, writes nothing)."""
    from tinygrad_gpt.cli.pretrain import config as run_config, flags
    monkeypatch.chdir(tmp_path)
    argv = ["--model", "micro", "--epochs", "1"]
    args = flags.build_parser().parse_args(argv)
    config, _ = run_config.build_config(args, flags.explicit_flags(argv))
    assert (config.out, config.out_chosen, config.overwrite, args.out) == ("runs/pretrain", True, False, None)
    (tmp_path / "runs" / "pretrain").mkdir(parents=True)
    (tmp_path / "runs" / "pretrain" / "model.safetensors").write_bytes(b"a model")
    (tmp_path / "runs" / "pretrain-2").mkdir()                  # empty: free
    config, _ = run_config.build_config(args, flags.explicit_flags(argv))
    assert (config.out, config.out_chosen) == ("runs/pretrain-2", True)
    argv = ["--model", "micro", "--out", "runs/pretrain", "--overwrite"]
    args = flags.build_parser().parse_args(argv)
    config, _ = run_config.build_config(args, flags.explicit_flags(argv))
    assert (config.out, config.out_chosen, config.overwrite) == ("runs/pretrain", False, True)


def test_nothing_in_the_package_assigns_into_parsed_flags():
    """No `args.x = ...`, `args.x += ...` or `setattr(args, ...)` anywhere in tinygrad_gpt/:
    a command settles its flags into a config of its own (cli/pretrain/config.py)."""
    import ast
    writes = []
    for path in sorted((REPO / "tinygrad_gpt").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else []
            writes += [f"{path.relative_to(REPO)}:{node.lineno}" for t in targets
                       if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "args"]
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and node.args \
                    and getattr(node.args[0], "id", None) == "args":
                writes.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not writes, f"assignments into parsed flags: {writes}"
