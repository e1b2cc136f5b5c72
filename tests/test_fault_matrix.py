"""Every write can fail: SQLite's way, over the commands. Each write, fsync, rename and mkdir the
project makes passes through fileio's seam (fileio.intercept); a clean run is counted first,
then the k-th call is made to fail, for every k that run reached, so a write added later is
covered without editing this file.

Two kinds of fault at call k, the errno cycling over ENOSPC, EIO, EROFS, ENOENT with k:
- "full": the k-th call and every later one under the run's own directories fail (a disk that
  fills at that moment and stays full; the cache and the temporary directory still take writes),
  at every k;
- "once": the k-th call alone fails (an I/O error that passes), at every odd k for pretrain (every
  k for the faster commands, one of the two alternating for finetune_instruct), with the next errno.

The rule checked at each (docs/checkpoints.md, "When a write fails"): exit 0 with at most one
warning line (what only reports: the run log, the loss plot), or exit 2 with one error line; never
a traceback; and the trained weights of the step at the fault are on disk where the line says
(bit for bit those of the clean run at that step), or in --out when the run finished. Where a
checkpoint was kept, resuming from it finishes with the clean run's final model, byte for byte.

Micro model, 4 steps, a checkpoint every 2: the pretrain matrix is about 180 runs (a sample of them
resumed), well under a minute on an idle 2-core machine.
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

from helpers import isolated, mounted_tmpfs, run_cli

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
        for mode, err in (("once", ERRNOS[k % 4]), ("full", ERRNOS[(k + 1) % 4]))[1 - k % 2:]:   # once: odd k
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


def test_on_save_error_continue_trains_on_past_checkpoints_that_fail(tmp_path, monkeypatch):
    """--on-save-error continue: every checkpoint save fails (its directory refuses), the run
    warns once per failed save, trains to the end and saves the uninterrupted run's model; the
    checkpoint saved before the disk filled stays intact and loadable. The default stops (exit 2)."""
    calls, steps, final = clean_run(tmp_path, monkeypatch, CONFIGS["checkpoints"])
    save = tmp_path / "ck"

    class FailSaveDir(Faults):                     # every call under save/ once the first checkpoint is saved
        def __call__(self, kind, path):
            self.calls.append((kind, path))
            save = Path(self.roots[0])
            if path.startswith(f"{save}/") and (save / "latest").is_file():
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    argv = [*CONFIGS["checkpoints"], "--save-dir", save, "--on-save-error", "continue"]
    rc, out, err = run([*argv, "--out", tmp_path / "go-on"], FailSaveDir(roots=[save]))
    print(err)
    lines = err.splitlines()
    assert rc == 0 and lines and all(s.startswith("pretrain.py: warning: disk full while saving checkpoint ")
                                     for s in lines), err
    assert len(lines) == 1 and "(step 3)" in err and "step-000001 is intact" in err, err   # step 3; the end retries not
    assert "training goes on (--on-save-error continue)" in err
    assert (tmp_path / "go-on" / "model.safetensors").read_bytes() == final
    assert C.latest_checkpoint(save).name == "step-000001"
    assert same(weights(save / "step-000001"), steps[1])
    assert "step 1: the last that could be written" in out
    rc, out, err = run([*argv[:-4], "--out", tmp_path / "stop", "--save-dir", tmp_path / "ck2"],
                       FailSaveDir(roots=[tmp_path / "ck2"]))   # the default, stop: exit 2, step 3 kept elsewhere
    assert rc == 2 and len(err.splitlines()) == 1 and "step 3 is kept in checkpoint" in err, err
    assert same(weights(kept_path(err)), steps[3])


def test_a_signals_checkpoint_that_cannot_be_written_is_rescued_even_with_continue(tmp_path, monkeypatch):
    """SIGTERM asks for this step's checkpoint; the save directory refuses it: --on-save-error
    continue does not apply (the run is stopping), so the step is rescued and named, exit 2."""
    import signal
    calls, steps, final = clean_run(tmp_path, monkeypatch, CONFIGS["checkpoints"])
    real = saving.Checkpointer.on_step

    def on_step(self, state):
        if state.global_step == 2:
            self.pending = signal.SIGTERM
            hook.k = len(hook.calls) + 1                      # from now on the save directory refuses
        return real(self, state)
    monkeypatch.setattr(saving.Checkpointer, "on_step", on_step)
    save = tmp_path / "ck"
    hook = Faults(None, errno.EIO, "full", roots=[save])
    rc, out, err = run([*CONFIGS["checkpoints"], "--save-dir", save, "--on-save-error", "continue",
                        "--out", tmp_path / "sig"], hook)
    print(err)
    assert rc == 2 and len(err.splitlines()) == 1 and "step 2 is kept in checkpoint" in err, err
    assert same(weights(kept_path(err)), steps[2])


def kinds(calls):
    found = {}
    for kind, _ in calls:
        found[kind] = found.get(kind, 0) + 1
    return sorted(found.items())


# ----------------------------------------------------------------------------- the other commands
def other_matrix(tmp_path, name, main, argv, check, both=True):
    """The same enumeration for a command that trains nothing: every call of a clean run fails
    in turn (both modes); exit 0, or exit 2 with one line and no traceback; check(out_dir, rc,
    err) says what must hold of the output then (no half file, the kept model). both=False: one
    mode per site, alternating (a slower command: half the runs)."""
    def call(k=None, err=errno.ENOSPC, mode="once", tag="clean"):
        out_dir = tmp_path / f"{name}-{tag}"
        hook = Faults(k, err, mode, roots=[out_dir])
        so, se = io.StringIO(), io.StringIO()
        with fileio.intercept(hook), contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
            rc = main([str(a) for a in argv(out_dir)])
        return rc, se.getvalue(), out_dir, hook
    rc, err, _, hook = call()
    assert rc == 0, err
    n, tried = len(hook.calls), 0
    assert n > 0
    for k in range(1, n + 1):
        modes = (("once", ERRNOS[k % 4]), ("full", ERRNOS[(k + 1) % 4]))
        for mode, e in (modes if both else modes[k % 2:k % 2 + 1]):
            rc, err, out_dir, h = call(k, e, mode, f"{k}-{mode}")
            tried += 1
            where = f"{name}: fault {k} ({mode}, {errno.errorcode[e]}) at {h.hit}: rc {rc}, stderr {err!r}"
            assert h.hit is not None and "Traceback" not in err, where
            assert rc == 0 or (rc == 2 and len(err.splitlines()) == 1 and ": error: " in err), where
            check(out_dir, rc, err, where)
    print(f"\n{name}: {n} write sites ({', '.join(f'{c} {k}' for k, c in kinds(hook.calls))}), {tried} faults tried")


def no_half_file(out_dir, rc, err, where):
    """What failed left nothing behind but whole files: no temporary file, no file that a
    clean run would have written half of."""
    if out_dir.exists():
        left = [p.name for p in out_dir.rglob("*") if p.name.endswith(".tmp")]
        assert not left, (where, left)


def kept_model_is_clean(clean, model_file, also=None):
    """The check of a finetune matrix's case: no half-written file; the model kept (in --out,
    or where the error line says) is the clean run's, byte for byte; a case refused before
    training made nothing."""
    def check(out_dir, rc, err, where):
        no_half_file(out_dir, rc, err, where)
        kept = out_dir if rc == 0 else (kept_path(err) if "kept in" in err else None)
        if kept is None:                               # refused before training (--out not created)
            assert "while saving" not in err, where
            return
        assert (kept / model_file).read_bytes() == (clean / model_file).read_bytes(), where
        if also is not None:
            also(kept, where)
    return check


def test_every_write_of_prepare_data_fails_in_turn_and_leaves_no_half_corpus(tmp_path):
    from helpers import STORY
    from tinygrad_gpt import corpus
    from tinygrad_gpt.cli.prepare_data import main
    words = STORY.split()
    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text(" ".join(words[i * 200:(i + 1) * 200]), encoding="utf-8")

    def check(out_dir, rc, err, where):
        no_half_file(out_dir, rc, err, where)
        if rc == 0:
            corpus.read_manifest(out_dir)              # a whole corpus, its shards verified
        else:
            assert not (out_dir / corpus.MANIFEST).exists(), where     # no corpus, not half of one
    other_matrix(tmp_path, "prepare_data", main,
                 lambda out: [*(tmp_path / f"part{i}.txt" for i in range(3)), "--out", out, "--shard-tokens", "200",
                              "--threads", "1"], check)


def test_every_write_of_explain_html_and_plot_fails_in_turn(tmp_path):
    from tinygrad_gpt.cli.plot import main as plot_main
    from tinygrad_gpt.explain.cli import main as explain_main
    run_dir = tmp_path / "run"
    rc, _, err = run([*RUN, "--out", run_dir, "--no-plot"], Faults())
    assert rc == 0, err

    def whole(name):
        def check(out_dir, rc, err, where):
            no_half_file(out_dir, rc, err, where)
            if rc == 0:
                assert (out_dir / name).stat().st_size > 0, where
            else:
                assert not (out_dir / name).exists(), where
        return check
    other_matrix(tmp_path, "explain --html", explain_main,
                 lambda out: ["--model", "micro", "--kernels", "numpy", "--html", out / "b.html"], whole("b.html"))

    def png(out_dir, rc, err, where):
        path = Path(f"{out_dir}.png")
        assert (path.stat().st_size > 0) if rc == 0 else not path.exists(), where
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], where
    other_matrix(tmp_path, "plot.py", plot_main, lambda out: [run_dir, "--out", f"{out}.png"], png)


def test_generate_writes_nothing(tmp_path):
    from tinygrad_gpt.cli.generate import main
    rc, _, err = run([*RUN, "--out", tmp_path / "run", "--no-plot"], Faults())
    assert rc == 0, err
    hook = Faults()
    with fileio.intercept(hook), contextlib.redirect_stdout(io.StringIO()):
        assert main(["--checkpoint", str(tmp_path / "run"), "--prompt", "Every", "--max-new-tokens", "3",
                     "--kernels", "numpy", "--threads", "1"]) == 0
    assert hook.calls == []


def test_every_write_of_finetune_classifier_fails_in_turn_and_the_classifier_is_kept(tmp_path):
    import csv
    from tinygrad_gpt import GPTModel, manual_seed, save_pretrained
    from tinygrad_gpt.cli.finetune import classifier_main
    manual_seed(0)
    base = save_pretrained(GPTModel({"vocab_size": 50257, "context_length": 16, "emb_dim": 8, "n_heads": 2,
                                     "n_layers": 1, "drop_rate": 0.0, "qkv_bias": True}), tmp_path / "base")
    with open(tmp_path / "t.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Label", "Text"])
        for i in range(12):
            w.writerow(["spam" if i % 2 else "ham", f"message number {i} {'WIN now' if i % 2 else 'hello'}"])
    argv = lambda out: ["--init-from", base, "--data", tmp_path / "t.csv", "--out", out, "--epochs", "1",  # noqa: E731
                        "--batch-size", "2", "--eval-freq", "2", "--eval-iter", "1", "--kernels", "numpy",
                        "--threads", "1"]
    clean = tmp_path / "finetune-classifier-clean"

    other_matrix(tmp_path, "finetune-classifier", classifier_main, argv, kept_model_is_clean(clean, "model.safetensors"))


def test_every_write_of_finetune_instruct_fails_in_turn_and_the_model_is_kept(tmp_path):
    from tinygrad_gpt import GPTModel, manual_seed, save_pretrained
    from tinygrad_gpt.cli.finetune import instruct_main
    manual_seed(0)
    base = save_pretrained(GPTModel({"vocab_size": 50257, "context_length": 32, "emb_dim": 8, "n_heads": 2,
                                     "n_layers": 1, "drop_rate": 0.0, "qkv_bias": True}), tmp_path / "base")
    records = [{"instruction": "Repeat.", "input": f"word {i}", "output": f"word {i}"} for i in range(10)]
    (tmp_path / "d.json").write_text(json.dumps(records), encoding="utf-8")
    argv = lambda out: ["--init-from", base, "--data", tmp_path / "d.json", "--out", out, "--epochs", "1",  # noqa: E731
                        "--batch-size", "4", "--eval-freq", "2", "--eval-iter", "1", "--max-new-tokens", "1",
                        "--kernels", "numpy", "--threads", "1"]
    clean = tmp_path / "finetune-instruct-clean"

    def responses_are_clean(kept, where):
        assert json.loads((kept / "instruction-data-with-response.json").read_text()) == \
            json.loads((clean / "instruction-data-with-response.json").read_text()), where
    other_matrix(tmp_path, "finetune-instruct", instruct_main, argv,
                 kept_model_is_clean(clean, "model/model.safetensors", also=responses_are_clean), both=False)


# ----------------------------------------------------------------------------- real processes, real faults
LONG = ["--model", "micro", "--epochs", "30", "--threads", "1", "--kernels", "numpy", "--eval-freq", "5",
        "--eval-iter", "1", "--no-plot"]


def run_until_first_eval(tmp_path, argv, fault):
    """examples/pretrain.py in its own process; fault() runs when the first evaluation is
    printed (the run has 510 steps to go); returns (exit code, stdout, stderr)."""
    from helpers import cli, start
    p = start(cli(*argv), tmp_path)
    out = []
    for line in p.stdout:
        out.append(line)
        if line.startswith("Ep 1 (Step 000000)"):
            fault()
            break
    rest, err = p.communicate(timeout=600)
    return p.returncode, "".join(out) + rest, err


def one_line(err, prefix):
    assert "Traceback" not in err and all(s.startswith(prefix) for s in err.splitlines()), err


def test_a_run_log_replaced_by_a_directory_stops_the_log_not_the_run(tmp_path):
    out = tmp_path / "run"

    def replace_log():
        (out / "metrics.jsonl").unlink()
        (out / "metrics.jsonl").mkdir()
    rc, stdout, err = run_until_first_eval(tmp_path, [*LONG, "--out", out], replace_log)
    assert rc == 0, err
    one_line(err, "pretrain.py: warning: the run log ")
    assert len(err.splitlines()) == 1 and re.search(r"stopped at step (0|5) \(cannot write \(Is a directory\)\)", err)
    assert (out / "model.safetensors").is_file() and "Model saved to" in stdout


def test_the_output_directory_deleted_mid_run_is_made_again_for_the_final_save(tmp_path):
    import shutil
    out = tmp_path / "run"
    rc, stdout, err = run_until_first_eval(tmp_path, [*LONG, "--out", out, "--save-every", "100"],
                                           lambda: shutil.rmtree(out))
    print(err)
    assert "Traceback" not in err
    if rc == 0:                                # every checkpoint found its directory made again
        one_line(err, "pretrain.py: warning: ")
        assert (out / "model.safetensors").is_file()
    else:                                      # or a checkpoint was kept elsewhere: named, loadable
        assert rc == 2 and err.splitlines()[-1].startswith("pretrain.py: error: ")
        C.load_checkpoint(kept_path(err.splitlines()[-1]))
    from tinygrad_gpt import load_model
    model = load_model(out if rc == 0 else kept_path(err.splitlines()[-1]))      # loadable, checksums verified
    assert model.tok_emb.weight.shape == (17, 8)


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MB tmpfs at tmp_path/disk (root only: mount; unmounted afterwards)."""
    with mounted_tmpfs(tmp_path / "disk", "4M") as d:
        yield d


def fill(d):
    with open(d / "filler", "wb") as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(bytes(1 << 16))
                f.flush()


def test_a_disk_that_fills_after_the_first_evaluation_keeps_the_trained_step_and_resumes_exactly(tmp_path, tmpfs):
    """The issue's run: a tmpfs holding --out and --save-dir fills after the first evaluation.
    The run log stops (one warning), the next checkpoint is rescued into the cache, exit 2 with
    one line naming it; resumed from it, the run ends with the uninterrupted run's model."""
    from helpers import cli, start
    argv = [*LONG, "--epochs", "3", "--save-every", "10"]
    clean = start(cli(*argv, "--out", tmp_path / "clean"), tmp_path)
    assert clean.wait(timeout=600) == 0, clean.stderr.read()
    rc, stdout, err = run_until_first_eval(tmp_path, [*argv, "--out", tmpfs / "run", "--save-dir", tmpfs / "ck"],
                                           lambda: fill(tmpfs))
    print(err)
    lines = err.splitlines()
    assert rc == 2 and "Traceback" not in err and lines[-1].startswith("pretrain.py: error: disk full"), err
    assert all(s.startswith("pretrain.py: warning: the run log ") for s in lines[:-1]) and len(lines) <= 2
    kept = kept_path(lines[-1])
    assert str(kept).startswith(os.environ["TINYGRAD_GPT_CACHE"])
    C.load_checkpoint(kept)
    os.unlink(tmpfs / "filler")                # the space is back: resume where the line says
    cmd = shlex.split(lines[-1].split("resume with: ")[1].split(";")[0])
    resumed = start(cli(*cmd[cmd.index("--resume"):], "--out", tmp_path / "resumed"), tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert (tmp_path / "resumed" / "model.safetensors").read_bytes() == \
        (tmp_path / "clean" / "model.safetensors").read_bytes()


# ----------------------------------------------------------------------------- flags checked before start-up
@pytest.mark.parametrize("flags,words", [
    (["--seed", "-1"], "--seed -1 is out of range"),
    (["--lr", "inf"], "--lr inf is out of range"),
    (["--weight-decay", "inf"], "--weight-decay inf is out of range"),
    (["--min-lr", "1"], "--min-lr 1.0 is out of range: it must be in [0, --lr]"),
    (["--clip-grad", "inf"], "--clip-grad inf is out of range"),
    (["--lora", "2", "--lora-alpha", "nan"], "--lora-alpha nan is out of range"),
    (["--threads", "0"], "--threads 0 is out of range"),
])
def test_a_finetune_flag_out_of_range_is_one_line_before_anything_is_read(tmp_path, capsys, flags, words):
    from tinygrad_gpt.cli.finetune import classifier_main, instruct_main
    for main, prog in ((classifier_main, "finetune_classifier.py"), (instruct_main, "finetune_instruct.py")):
        rc = main(["--init-from", str(tmp_path), "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                   *flags])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith(f"{prog}: error: ") and len(err.splitlines()) == 1, err
        assert words in err, err
        assert not (tmp_path / "o").exists()
