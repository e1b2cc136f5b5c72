"""mpirun -n 2 on localhost: data parallel reproduces the single process.

With dropout 0, 2 ranks x 1 row of each batch print the same loss lines as 1 process with
batch 2 (the gradients are averaged in one Allreduce; the sums run in another order, so the
parameters agree to float32 rounding, not bit for bit). SIGTERM to mpirun ends every rank
with one checkpoint, and mpirun --resume continues the run.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from tinygrad_gpt import checkpoint as C

from helpers import STORY, cli, env, ep_lines, require, story_corpus

require("mpi4py")                      # CI's second run installs the mpi extra: pip install -e ".[mpi]"

RUN = ["--model", "tiny", "--context-length", "16", "--batch-size", "2", "--no-plot", "--threads", "1",
       "--kernels", "numpy", "--eval-freq", "3", "--eval-iter", "3", "--lr", "3e-3", "--drop-rate", "0",
       "--precision", "float32"]       # the float32 claim above (auto is bf16 on an AMX or Zen 4 CPU: its
                                       # rounding of a half batch's products differs from the whole's)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return story_corpus(tmp_path_factory.mktemp("corpus"))


def mpirun():
    """The mpirun beside this Python (the mpich wheel installs it into the venv's bin), else on PATH."""
    here = Path(sys.executable).parent / "mpirun"
    found = str(here) if here.exists() else require("mpirun", program=True)
    version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
    extra = ["--allow-run-as-root", "--oversubscribe"] if "Open MPI" in version else []
    return [found, *extra]


def mpi_env():
    e = env()
    e["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), e.get("PATH", "")])
    return e


def run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, env=mpi_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout


def params(ckpt):
    return safetensors.numpy.load_file(str(Path(ckpt) / C.MODEL_FILE))


def assert_close_models(a, b):
    pa, pb = params(a), params(b)
    worst = max(float(np.max(np.abs(pa[k] - pb[k]))) for k in pa)
    print("worst parameter difference", worst)
    assert worst < 1e-4


@pytest.mark.parametrize("data", ["corpus", "text"])
def test_two_ranks_with_one_row_each_print_the_lines_of_one_process_with_batch_2(tmp_path, corpus_dir, data):
    if data == "text":
        path = tmp_path / "story.txt"
        path.write_text(STORY[:6000], encoding="utf-8")
        extra = ["--data", path, "--epochs", "2"]
    else:
        extra = ["--data", corpus_dir, "--max-steps", "12"]
    one = run(cli(*RUN, *extra, "--save-dir", tmp_path / "one", "--out", tmp_path / "out1"), tmp_path)
    two = run([*mpirun(), "-n", "2", *cli(*RUN, *extra, "--save-dir", tmp_path / "two", "--out", tmp_path / "out2")],
              tmp_path)
    print(two)
    assert "Data parallel: 2 MPI ranks" in two and "Allreduce:" in two
    assert len(ep_lines(one)) >= 4
    assert ep_lines(two) == ep_lines(one)
    assert two.count("Training completed") == 1, "only rank 0 prints"
    assert_close_models(C.latest_checkpoint(tmp_path / "one"), C.latest_checkpoint(tmp_path / "two"))
    assert two.count("Model saved to") == 1, "only rank 0 saves the final model"
    assert_close_models(tmp_path / "out1", tmp_path / "out2")
    assert sorted(os.listdir(tmp_path / "out2")) == sorted(os.listdir(tmp_path / "out1"))


def test_sigterm_to_mpirun_saves_one_checkpoint_and_mpirun_resume_continues(tmp_path, corpus_dir):
    # a SIGTERM that landed during the ranks' per-step allreduce used to be lost (exit 0, no
    # checkpoint: the allreduce's answer overwrote the handler's flag); 1 run in 3 here
    steps = ["--data", corpus_dir, "--max-steps", "30"]
    one = run(cli(*RUN, *steps, "--save-dir", tmp_path / "one"), tmp_path)
    save = tmp_path / "ck"
    proc = subprocess.Popen([*mpirun(), "-n", "2", *cli(*RUN, *steps, "--save-dir", save, "--save-every", "1000")],
                            cwd=tmp_path, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Ep 1 (Step 000003)"):
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    print(err)
    assert proc.returncode == 143, err
    assert err.count("Interrupted by SIGTERM") == 1 and "Resume with: mpirun -n 2" in err
    saved = C.list_checkpoints(save)
    assert len(saved) == 1
    resumed = run([*mpirun(), "-n", "2", *cli("--resume", save, "--no-plot")], tmp_path)
    assert f"Resuming from {saved[0][1]}" in resumed
    before = {l[:19]: l for l in ep_lines("".join(lines) + out)}
    after = {l[:19]: l for l in ep_lines(resumed)}
    assert {**before, **after} == {l[:19]: l for l in ep_lines(one)}
    assert_close_models(C.latest_checkpoint(tmp_path / "one"), C.latest_checkpoint(save))


def test_a_batch_not_divisible_by_the_ranks_is_one_line_exit_2(tmp_path, corpus_dir):
    r = subprocess.run([*mpirun(), "-n", "2", *cli(*RUN, "--batch-size", "3", "--data", corpus_dir)],
                       cwd=tmp_path, env=mpi_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("pretrain.py: error: --batch-size 3 is not divisible by the 2 MPI ranks") == 1

