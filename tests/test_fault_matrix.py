"""Every write can fail: SQLite's way, over the commands. Each write, fsync, rename and mkdir the
project makes passes through fileio's seam (fileio.intercept); a clean run is counted first,
then the k-th call is made to fail, for every k that run reached, so a write added later is
covered without editing this file.

Two faults per call site k, each with its own errno (the four cycle over the sites, so every site
gets two of them and every errno a quarter of the sites twice over):
- "once": the k-th call alone fails (an I/O error that passes);
- "full": the k-th call and every later one under the run's own directories fail (a disk that
  fills at that moment and stays full; the cache and the temporary directory still take writes).

The rule checked at each (docs/checkpoints.md, "When a write fails"): exit 0 with at most one
warning line (what only reports: the run log, the loss plot), or exit 2 with one error line; never
a traceback; and the trained weights of the step at the fault are on disk where the line says
(bit for bit those of the clean run at that step), or in --out when the run finished. Where a
checkpoint was kept, resuming from it finishes with the clean run's final model, byte for byte.

Micro model, 4 steps, a checkpoint every 2: the pretrain matrix runs in well under a minute.
"""
import contextlib
import errno
import io
import json
import os
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygrad_gpt import checkpoint as C
from tinygrad_gpt import fileio
from tinygrad_gpt.cli.pretrain import saving

from helpers import isolated, run_cli

ERRNOS = (errno.ENOSPC, errno.EIO, errno.EROFS, errno.ENOENT)
RUN = ["--model", "micro", "--epochs", "1", "--batch-size", "8", "--threads", "1", "--kernels", "numpy",
       "--eval-freq", "2", "--eval-iter", "1"]
CONFIGS = {"checkpoints": RUN + ["--save-every", "2"],          # checkpoints at steps 1, 3 and the end
           "final model only": RUN}                             # no checkpoints: the rescue keeps the model


@pytest.fixture(autouse=True)
def isolated_runtime(monkeypatch, tmp_path):
    with isolated(monkeypatch, tmp_path):
        monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))      # the last rescue place
        (tmp_path / "tmp").mkdir()
        yield


class Faults:
    """fileio.intercept's hook: records every call; fails the k-th (mode "once"), or the k-th
    and every later call under `roots` (mode "full")."""

    def __init__(self, k=None, err=errno.ENOSPC, mode="once", roots=()):
        self.k, self.err, self.mode, self.roots = k, err, mode, [str(r) for r in roots]
        self.calls, self.hit = [], None

    def __call__(self, kind, path):
        self.calls.append((kind, path))
        n = len(self.calls)
        if self.k is None or n < self.k:
            return
        if n == self.k or (self.mode == "full" and any(path.startswith(r) for r in self.roots)):
            self.hit = self.hit or (kind, path)
            raise OSError(self.err, os.strerror(self.err), path)


def run(argv, hook):
    out, err = io.StringIO(), io.StringIO()
    with fileio.intercept(hook), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run_cli(*argv)
    return rc, out.getvalue(), err.getvalue()


def weights(directory):
    """The parameters a checkpoint or a final model holds, by their state_dict names."""
    from tinygrad_gpt import load_model
    return {k: v.copy() for k, v in load_model(directory).state_dict().items()}


def same(loaded, trained):
    """Every trained parameter is in the loaded model, bit for bit (a final model in GPT-2's
    layout also holds zero qkv biases that micro does not have)."""
    return all(k in loaded and np.array_equal(loaded[k], v) for k, v in trained.items())


def kept_path(err):
    return Path(err.split("kept in ")[1].split(";")[0].removeprefix("checkpoint ").strip())


def clean_run(tmp_path, monkeypatch, argv):
    """The clean run: its seam calls, and the weights after every step."""
    steps = {}
    real = saving.Checkpointer.on_step

    def on_step(self, state):
        steps[state.global_step] = {k: v.copy() for k, v in self.model.state_dict().items()}
        return real(self, state)
    monkeypatch.setattr(saving.Checkpointer, "on_step", on_step)
    hook = Faults()
    rc, out, err = run([*argv, "--out", tmp_path / "clean"], hook)
    assert rc == 0 and err == "", err
    monkeypatch.setattr(saving.Checkpointer, "on_step", real)
    return hook.calls, steps, (tmp_path / "clean" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("config", CONFIGS)
def test_every_write_of_a_pretrain_run_fails_in_turn_and_nothing_trained_is_lost(tmp_path, monkeypatch, config):
    argv = CONFIGS[config]
    calls, steps, final = clean_run(tmp_path, monkeypatch, argv)
    final_step = max(steps)
    assert len(calls) > 20 and {k for k, _ in calls} == set(fileio.KINDS), calls   # every kind is reached
    tried, outcomes, resumed = 0, {}, 0
    for k in range(1, len(calls) + 1):
        for mode, err in (("once", ERRNOS[k % 4]), ("full", ERRNOS[(k + 1) % 4])):
            run_dir = tmp_path / f"r{k}-{mode}"
            hook = Faults(k, err, mode, roots=[run_dir])
            rc, out, stderr = run([*argv, "--out", run_dir], hook)
            tried += 1
            where = f"fault {k} ({mode}, {errno.errorcode[err]}) at {hook.hit}: rc {rc}, stderr {stderr!r}"
            assert hook.hit is not None, where
            lines = stderr.splitlines()
            warnings = [s for s in lines if s.startswith("pretrain.py: warning: ")]
            errors = [s for s in lines if s.startswith("pretrain.py: error: ")]
            assert "Traceback" not in stderr and len(warnings) + len(errors) == len(lines), where
            assert len({s.split(" (")[0] for s in warnings}) == len(warnings) <= 2, where    # each said once
            if rc == 0:                               # a report-only write, or one whose failure is harmless
                assert not errors, where
                assert (run_dir / "model.safetensors").read_bytes() == final, where
                outcomes["finished"] = outcomes.get("finished", 0) + 1
                continue
            assert rc == 2 and len(errors) == 1 and lines[-1] == errors[0], where
            stderr = errors[0]
            if "kept in" not in stderr:               # stopped before anything was trained
                assert "Ep 1" not in out, where
                outcomes["refused at start"] = outcomes.get("refused at start", 0) + 1
                continue
            kept = kept_path(stderr)
            if (kept / C.STATE_FILE).is_file():       # a checkpoint: this step's weights, and resume is exact
                step = json.loads((kept / C.STATE_FILE).read_text())["step"]
                assert same(weights(kept), steps[step]), where
                if (step < final_step or k % 4 == 0) and (mode == "once" or k % 3 == 0):   # a sample of them
                    resumed += 1
                    cmd = (shlex.split(stderr.split("resume with: ")[1].split(";")[0]) if "resume with: " in stderr
                           else ["--resume", str(kept), "--kernels", "numpy"])    # the final model's checkpoint
                    resume = cmd[cmd.index("--resume"):] + ["--out", tmp_path / f"resumed-{k}-{mode}"]
                    rc2, _, err2 = run(resume, Faults())
                    assert rc2 == 0, (where, err2)
                    assert (tmp_path / f"resumed-{k}-{mode}" / "model.safetensors").read_bytes() == final, where
                outcomes["checkpoint kept"] = outcomes.get("checkpoint kept", 0) + 1
            else:                                     # the final model, kept in the run's checkpoint or rescued
                assert same(weights(kept), steps[final_step]), where
                outcomes["final model kept"] = outcomes.get("final model kept", 0) + 1
    print(f"\npretrain, {config}: {len(calls)} write sites ({', '.join(f'{n} {k}' for k, n in kinds(calls))}), "
          f"{tried} faults tried, {resumed} resumed exactly; outcomes {outcomes}")
    assert outcomes.get("finished") and outcomes.get("refused at start")
    assert outcomes.get("checkpoint kept" if config == "checkpoints" else "final model kept")


def kinds(calls):
    found = {}
    for kind, _ in calls:
        found[kind] = found.get(kind, 0) + 1
    return sorted(found.items())
