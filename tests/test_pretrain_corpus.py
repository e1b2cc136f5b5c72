"""pretrain.py --data DIR: training from a prepared corpus, as a user runs it.

A tiny corpus is prepared in tmp; a tiny model trains a few dozen steps and its loss on the
held-out val shard falls; a run killed with -9 (as soon as its first checkpoint is on
disk) and resumed prints the same loss lines and ends with the same bytes as an
uninterrupted run; flags that make no sense for a corpus are one line and exit 2.
"""
import contextlib
import io
import subprocess
import time

import pytest

from tinygrad_gpt import checkpoint as C
from tinygrad_gpt.corpus import read_manifest

from helpers import STORY, assert_same_run, by_step, cli, env, ep_lines, isolated, run_cli, start, story_corpus

TINY = ["--model", "tiny", "--context-length", "16", "--batch-size", "2", "--no-plot", "--threads", "1",
        "--kernels", "numpy", "--eval-freq", "4", "--eval-iter", "4", "--lr", "3e-3"]
STEPS = 24


@pytest.fixture(autouse=True)
def isolated_runtime(monkeypatch, tmp_path):
    with isolated(monkeypatch, tmp_path):
        yield


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """The bundled story as 12 documents, 10 % of the tokens held out."""
    return story_corpus(tmp_path_factory.mktemp("corpus"))


def losses(lines):
    return [(float(l.split("Train loss ")[1].split(",")[0]), float(l.split("Val loss ")[1])) for l in lines]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, corpus_dir):
    """The uninterrupted run, as a process: its final checkpoint and its Ep lines."""
    tmp = tmp_path_factory.mktemp("corpus-baseline")
    r = subprocess.run(cli(*TINY, "--data", corpus_dir, "--max-steps", STEPS, "--save-dir", tmp / "ck",
                           "--save-every", "1000"), cwd=tmp, env=env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return C.latest_checkpoint(tmp / "ck"), ep_lines(r.stdout), r.stdout


def test_training_from_a_corpus_lowers_the_held_out_val_loss(baseline, corpus_dir):
    _, lines, out = baseline
    m = read_manifest(corpus_dir)
    assert m["splits"]["train"]["shards"] and m["splits"]["val"]["tokens"] > 100
    assert f"Using the corpus {corpus_dir}" in out
    got = losses(lines)
    print("\n".join(lines))
    assert len(got) == STEPS // 4
    first, last = got[0][1], got[-1][1]
    assert last < first - 0.5, (first, last)
    assert all(b[1] < a[1] for a, b in zip(got, got[1:])), "the val loss must fall at every evaluation"
    assert f"{STEPS} steps, {STEPS * 2 * 16:,} tokens" in out


def test_kill_9_after_the_first_checkpoint_then_resume_is_bit_identical(tmp_path, corpus_dir, baseline):
    save = tmp_path / "ck"
    argv = [*TINY, "--data", corpus_dir, "--max-steps", STEPS, "--save-dir", save, "--save-every", "5"]
    proc = start(cli(*argv), tmp_path)
    deadline = time.time() + 300
    while C.latest_checkpoint(save) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)                       # wait for a checkpoint to appear, then kill at once
    proc.kill()
    out, _ = proc.communicate(timeout=60)
    newest = C.latest_checkpoint(save)
    assert proc.returncode == -9 and newest is not None, "the run ended before its first checkpoint"
    print("killed after", newest.name)
    r = subprocess.run(cli("--resume", save, "--no-plot"), cwd=tmp_path, env=env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Resuming from" in r.stdout
    table = by_step(ep_lines(out), {})
    assert by_step(ep_lines(r.stdout), table) == by_step(baseline[1], {})
    assert_same_run(C.latest_checkpoint(save), baseline[0])


def test_a_finished_run_extends_with_a_larger_max_steps(tmp_path, corpus_dir, capsys):
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_cli(*TINY, "--data", corpus_dir, "--max-steps", 8, "--save-dir", tmp_path / "ck") == 0
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_cli("--resume", tmp_path / "ck", "--max-steps", 12, "--no-plot") == 0
    assert [l[:19] for l in ep_lines(buf.getvalue())] == ["Ep 1 (Step 000008):"]
    assert C.latest_checkpoint(tmp_path / "ck").name == "step-000011"


def test_sequential_order_and_max_tokens(tmp_path, corpus_dir):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_cli(*TINY, "--data", corpus_dir, "--order", "sequential", "--max-tokens", 200) == 0
    assert "7 steps, 224 tokens" in buf.getvalue()          # 200 tokens round up to 7 steps of 32


@pytest.mark.parametrize("extra,words", [
    (["--epochs", "3"], "--epochs has no meaning for a corpus"),
    (["--max-steps", "0"], "--max-steps 0"),
    (["--max-steps", "3", "--max-tokens", "99"], "both given"),
    (["--batch-size", "999"], "fewer than one batch of 999"),
], ids=["epochs", "max-steps-0", "both", "val-too-small"])
def test_flags_that_make_no_sense_for_a_corpus_are_one_line_exit_2(tmp_path, capsys, corpus_dir, extra, words):
    rc = run_cli(*TINY, "--data", corpus_dir, *extra)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1 and words in err, err


@pytest.mark.parametrize("flag,value", [("--max-tokens", 5), ("--order", "sequential")])
def test_corpus_flags_without_a_corpus_are_refused(tmp_path, capsys, flag, value):
    # (--max-steps is not one of them any more: on a text it stops the run, issue 37,
    # tests/test_small_model_cli.py)
    (tmp_path / "t.txt").write_text(STORY, encoding="utf-8")
    assert run_cli(*TINY, "--data", tmp_path / "t.txt", flag, value) == 2
    assert f"{flag} needs --data DIR" in capsys.readouterr().err


def test_a_directory_without_a_manifest_is_refused(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    assert run_cli(*TINY, "--data", tmp_path / "d") == 2
    err = capsys.readouterr().err
    assert "is a directory, not a corpus (no manifest.json)" in err and "prepare_data.py" in err


def test_the_micro_model_with_its_character_tokenizer_refuses_a_corpus_of_gpt2_tokens(tmp_path, capsys, corpus_dir):
    """micro reads 17 characters; a corpus holds GPT-2 BPE ids up to 50256: one line, exit 2,
    nothing written."""
    assert run_cli("--model", "micro", "--data", corpus_dir, "--max-steps", 2, "--no-plot",
                   "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model micro reads characters" in err and "GPT-2 tokens" in err
    assert not (tmp_path / "out").exists()
