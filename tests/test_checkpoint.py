"""Checkpoints (tinygrad_gpt/checkpoint.py) and exact resume, in-process.

The tiny model (context 16, batch 2) trains on ~400 tokens of the bundled sample story:
11 batches an epoch, 22 steps in two epochs. A run stopped after N steps and resumed
must end with the very bytes of an uninterrupted run: parameters, AdamW's moments, the
random generators and the loss history. Corrupted checkpoints are refused with one line;
a full disk mid-save leaves the previous checkpoint loadable.
"""
import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinygrad_gpt import checkpoint as C
from tinygrad_gpt.cli import pretrain
from tinygrad_gpt.fileio import write_checksums

from helpers import MICRO, TINY, assert_same_run, ep_lines, isolated, run_cli, small_text


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "story.txt"
    path.write_text(small_text(), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def isolated_runtime(monkeypatch, tmp_path):
    with isolated(monkeypatch, tmp_path):
        yield


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, text_file):
    """The uninterrupted 2-epoch run: its final checkpoint and its printed lines."""
    tmp = tmp_path_factory.mktemp("baseline")
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, isolated(mp, tmp), contextlib.redirect_stdout(buf):
        rc = run_cli(*TINY, "--epochs", "2", "--data", text_file, "--save-dir", tmp / "ck",
                     "--save-every", "1000")
    assert rc == 0, buf.getvalue()
    return C.latest_checkpoint(tmp / "ck"), buf.getvalue()


# ----------------------------------------------------------------------------- exact resume
def test_stop_after_n_steps_then_resume_equals_the_uninterrupted_run_bitwise(tmp_path, text_file,
                                                                           baseline, capsys, monkeypatch):
    """SIGINT during step 6 (mid-epoch 1): saved after step 6, exit 130; --resume runs the
    other 15 steps; the result is the 22-step run's, to the last bit."""
    base_dir, base_out = baseline
    original = pretrain.saving.Checkpointer.on_step

    def interrupt_at_step_6(self, state):
        if state.global_step == 6 and self.signum is None:
            os.kill(os.getpid(), signal.SIGINT)          # the real handler runs, sets the flag
        return original(self, state)

    monkeypatch.setattr(pretrain.saving.Checkpointer, "on_step", interrupt_at_step_6)
    save = tmp_path / "ck"
    assert run_cli(*TINY, "--epochs", "2", "--data", text_file, "--save-dir", save, "--save-every", "4") == 130
    first = capsys.readouterr()
    assert C.latest_checkpoint(save).name == "step-000006"
    assert f"--resume {save}" in first.err
    monkeypatch.setattr(pretrain.saving.Checkpointer, "on_step", original)

    assert run_cli("--resume", save, "--threads", "1") == 0
    second = capsys.readouterr()
    assert "Resuming from" in second.out
    assert_same_run(C.latest_checkpoint(save), base_dir)
    # every loss printed, before and after the stop, is the uninterrupted run's, digit for digit
    assert ep_lines(first.out) + ep_lines(second.out) == ep_lines(base_out)
    print(f"{len(ep_lines(base_out))} Ep lines and all tensors identical")


def test_one_epoch_then_resume_with_more_epochs_equals_the_two_epoch_run(tmp_path, text_file, baseline, capsys):
    """--epochs may extend a finished run: 1 epoch, then --resume --epochs 2 == 2 epochs
    (the epoch boundary: the sample is printed once, the next order is drawn after it)."""
    base_dir, base_out = baseline
    save = tmp_path / "ck"
    assert run_cli(*TINY, "--epochs", "1", "--data", text_file, "--save-dir", save, "--save-every", "1000") == 0
    first = capsys.readouterr().out
    assert run_cli("--resume", save, "--epochs", "2") == 0
    second = capsys.readouterr().out
    assert_same_run(C.latest_checkpoint(save), base_dir)
    assert ep_lines(first) + ep_lines(second) == ep_lines(base_out)
    samples = [line for line in (first + second).splitlines() if line.startswith("Every effort")]
    assert samples == [line for line in base_out.splitlines() if line.startswith("Every effort")]


def test_a_checkpoint_round_trips_every_piece_of_state(tmp_path, baseline):
    from tinygrad_gpt.model import GPTModel
    from tinygrad_gpt.optim import AdamW
    base_dir, _ = baseline
    ckpt = C.load_checkpoint(base_dir)
    model = GPTModel(ckpt.config["model_config"])
    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    rngs = {"default": np.random.default_rng(0), "train_loader": np.random.default_rng(1)}
    state = C.restore_checkpoint(ckpt, model, opt, rngs)
    assert state.global_step == ckpt.step == 21 and state.epoch == 2 and state.order is None
    for name, p in model.named_parameters():
        assert np.array_equal(p.data, ckpt.model[name]), name
    assert opt.param_groups[0]["lr"] == 4e-4
    assert rngs["default"].bit_generator.state == ckpt.meta["rng"]["default"]
    # saving what was loaded gives the same bytes again
    again = C.save_checkpoint(tmp_path / "again", model, opt, state, rngs, ckpt.config)
    assert_same_run(again, base_dir)
    assert (tmp_path / "again" / C.LATEST).read_text() == "step-000021\n"


# ----------------------------------------------------------------------------- layout and atomicity
def _toy(tmp_path):
    """A very small model + AdamW + state, for the layout and failure tests."""
    from tinygrad_gpt.model import GPTModel
    from tinygrad_gpt.optim import AdamW
    from tinygrad_gpt.train import TrainState
    cfg = {**MICRO, "context_length": 4, "n_layers": 1, "qkv_bias": False}
    model = GPTModel(cfg)
    opt = AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    opt.step()
    return model, opt, TrainState(global_step=0, order=[1, 0]), {"default": np.random.default_rng(3)}, {"model_config": cfg}


def test_keeps_the_last_two_checkpoints_and_a_latest_pointer(tmp_path):
    model, opt, state, rngs, cfg = _toy(tmp_path)
    for step in range(4):
        state.global_step = step
        C.save_checkpoint(tmp_path / "ck", model, opt, state, rngs, cfg)
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["latest", "step-000002", "step-000003"]
    assert sorted(p.name for p in (tmp_path / "ck" / "step-000003").iterdir()) == \
        ["SHA256SUMS", "model.safetensors", "optimizer.safetensors", "state.json"]   # SHA256SUMS: state.json's
    meta = json.loads((tmp_path / "ck" / "step-000003" / "state.json").read_text())
    assert meta["format"] == C.FORMAT and meta["version"] == C.VERSION
    data = (tmp_path / "ck" / "step-000003" / "model.safetensors").read_bytes()
    assert meta["files"]["model"]["sha256"] == hashlib.sha256(data).hexdigest()
    for arg in ("ck", "ck/latest", "ck/step-000003", "ck/step-000003/state.json"):
        assert C.resolve_checkpoint(tmp_path / arg)[0] == tmp_path / "ck" / "step-000003"


def test_a_save_killed_midway_leaves_a_tmp_dir_that_is_ignored_then_cleaned(tmp_path):
    """kill -9 during a save leaves .tmp-step-... with partial files (no finally runs): it is
    never taken for a checkpoint, and the next save removes it."""
    model, opt, state, rngs, cfg = _toy(tmp_path)
    C.save_checkpoint(tmp_path / "ck", model, opt, state, rngs, cfg)
    stale = tmp_path / "ck" / ".tmp-step-000001-4242-deadbeef"
    stale.mkdir()
    (stale / C.MODEL_FILE).write_bytes(b"half a file")
    assert C.latest_checkpoint(tmp_path / "ck").name == "step-000000"
    assert C.load_checkpoint(tmp_path / "ck").step == 0
    state.global_step = 1
    C.save_checkpoint(tmp_path / "ck", model, opt, state, rngs, cfg)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["latest", "step-000000", "step-000001"]


def test_an_exception_mid_save_removes_its_partial_files(tmp_path, monkeypatch):
    model, opt, state, rngs, cfg = _toy(tmp_path)
    C.save_checkpoint(tmp_path / "ck", model, opt, state, rngs, cfg)
    fail_on_write(monkeypatch, 2, KeyboardInterrupt())
    state.global_step = 1
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint(tmp_path / "ck", model, opt, state, rngs, cfg)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["latest", "step-000000"]
    C.load_checkpoint(tmp_path / "ck")


def fail_on_write(monkeypatch, n, exc):
    """Make the n-th checkpoint write (model, optimizer, state.json, latest, then the next
    save's) write half its bytes, then raise exc: a disk that fills up mid-file."""
    calls = []
    real_tensors, real_file = C._write_tensors, C._write_file

    def tensors(path, arrays):
        calls.append(path)
        result = real_tensors(path, arrays)
        if len(calls) == n:
            with open(path, "r+b") as f:
                f.truncate(result[0] // 2)
            raise exc
        return result

    def file(path, data):
        calls.append(path)
        if len(calls) == n:
            with open(path, "xb") as f:
                f.write(data[:len(data) // 2])
            raise exc
        return real_file(path, data)

    monkeypatch.setattr(C, "_write_tensors", tensors)
    monkeypatch.setattr(C, "_write_file", file)
    return calls


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("fail_at", [1, 2, 3, 4], ids=["model", "optimizer", "state.json", "latest"])
def test_disk_full_mid_save_keeps_the_previous_checkpoint_loadable(tmp_path, monkeypatch, fail_at):
    model, opt, state, rngs, cfg = _toy(tmp_path)
    C.save_checkpoint(tmp_path / "ck", model, opt, state, rngs, cfg)
    before = {p.name for p in (tmp_path / "ck").iterdir()}
    fail_on_write(monkeypatch, fail_at, ENOSPC)
    state.global_step = 1
    with pytest.raises(C.CheckpointSaveError) as e:
        C.save_checkpoint(tmp_path / "ck", model, opt, state, rngs, cfg)
    msg = str(e.value)
    print(msg)
    assert e.value.disk_full and "disk full" in msg and str(tmp_path / "ck") in msg
    assert "step-000000 is intact" in msg
    left = {p.name for p in (tmp_path / "ck").iterdir()}
    assert not any(n.startswith(".tmp") for n in left), left
    if fail_at < 4:
        assert left == before
    newest = C.latest_checkpoint(tmp_path / "ck") if fail_at < 4 else tmp_path / "ck" / "step-000000"
    assert newest.name == "step-000000"
    C.load_checkpoint(newest)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MB file system (root only: mount -t tmpfs), unmounted afterwards."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_really_full_disk_is_reported_as_disk_full_and_keeps_the_previous_checkpoint(small_tmpfs):
    """No simulation: a model of ~0.37 MB a checkpoint on a 1 MB tmpfs. The first save fits,
    the next ones (two checkpoints, then a third during the save) do not."""
    from tinygrad_gpt.model import GPTModel
    from tinygrad_gpt.optim import AdamW
    from tinygrad_gpt.train import TrainState
    cfg = {"vocab_size": 200, "context_length": 8, "emb_dim": 64, "n_heads": 2, "n_layers": 1,
           "drop_rate": 0.0, "qkv_bias": False}
    model = GPTModel(cfg)
    opt = AdamW(model.parameters())
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    opt.step()
    state, rngs = TrainState(global_step=0), {"default": np.random.default_rng(0)}
    saved = [C.save_checkpoint(small_tmpfs, model, opt, state, rngs, {"model_config": cfg})]
    with pytest.raises(C.CheckpointSaveError) as e:
        for step in range(1, 4):
            state.global_step = step
            saved.append(C.save_checkpoint(small_tmpfs, model, opt, state, rngs, {"model_config": cfg}))
    print(e.value)
    assert e.value.disk_full and str(e.value).startswith("disk full while saving checkpoint")
    assert f"the previous checkpoint {saved[-1]} is intact" in str(e.value)
    assert C.latest_checkpoint(small_tmpfs) == saved[-1]
    C.load_checkpoint(small_tmpfs)
    assert not [p for p in small_tmpfs.iterdir() if p.name.startswith(".tmp")]


def test_disk_full_during_training_exits_2_with_one_line_and_keeps_the_last_checkpoint(
        tmp_path, text_file, monkeypatch, capsys):
    fail_on_write(monkeypatch, 10, ENOSPC)           # save 3's optimizer file (4 writes a save)
    save = tmp_path / "ck"
    assert run_cli(*TINY, "--epochs", "1", "--data", text_file, "--save-dir", save, "--save-every", "2") == 2
    err = capsys.readouterr().err
    print(err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "disk full" in err and str(save / "step-000005") in err
    assert f"--resume {save}" in err
    assert C.latest_checkpoint(save).name == "step-000003"
    C.load_checkpoint(save)


# ----------------------------------------------------------------------------- corruption
@pytest.fixture
def saved(tmp_path):
    model, opt, state, rngs, cfg = _toy(tmp_path)
    return C.save_checkpoint(tmp_path / "ck", model, opt, state, rngs, cfg)


def _rewrite(ckpt_dir, name, data):
    """Replace a tensor file and make state.json vouch for it (size and sha256): what is
    left to catch it is the parser."""
    (ckpt_dir / name).write_bytes(data)
    meta = json.loads((ckpt_dir / C.STATE_FILE).read_text())
    key = "model" if name == C.MODEL_FILE else "optimizer"
    meta["files"][key].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (ckpt_dir / C.STATE_FILE).write_text(json.dumps(meta))
    write_checksums(ckpt_dir, (C.STATE_FILE,))


def _refused(path, *words):
    with pytest.raises(C.CheckpointError) as e:
        C.load_checkpoint(path)
    msg = str(e.value)
    print(msg)
    assert "\n" not in msg and str(path) in msg
    for w in words:
        assert w in msg
    return msg


def test_a_truncated_tensor_file_is_refused(saved):
    f = saved / C.MODEL_FILE
    f.write_bytes(f.read_bytes()[:-100])
    _refused(saved, "truncated", C.MODEL_FILE)


def test_flipped_bytes_are_caught_by_the_sha256(saved):
    f = saved / C.OPTIMIZER_FILE
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    _refused(saved, "corrupted", C.OPTIMIZER_FILE, "sha256")


def test_a_header_claiming_more_bytes_than_the_file_has_is_refused(saved):
    data = (saved / C.MODEL_FILE).read_bytes()
    _rewrite(saved, C.MODEL_FILE, struct.pack("<Q", 10 ** 12) + data[8:])
    _refused(saved, "not a valid safetensors file")


def test_a_tensor_past_the_end_of_the_file_is_refused(saved):
    data = (saved / C.MODEL_FILE).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    first = next(k for k in header if k != "__metadata__")
    header[first]["data_offsets"][1] += 4096
    h = json.dumps(header).encode()
    _rewrite(saved, C.MODEL_FILE, struct.pack("<Q", len(h)) + h + data[8 + n:])
    _refused(saved, "not a valid safetensors file")


def test_a_truncated_state_json_is_refused(saved):
    f = saved / C.STATE_FILE
    f.write_bytes(f.read_bytes()[:200])
    _refused(saved, "not valid JSON")


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("victim", [C.MODEL_FILE, C.OPTIMIZER_FILE])
def test_loading_never_runs_code_from_the_checkpoint(saved, tmp_path, victim):
    """A pickle (that would create a file when unpickled) in place of a tensor file, with a
    matching sha256 in state.json: refused, and the file is never created."""
    marker = tmp_path / "pwned"
    _rewrite(saved, victim, pickle.dumps(_Boom(marker)))
    _refused(saved, "not a valid safetensors file")
    assert not marker.exists()
    # and nothing in the loader could unpickle: no pickle import, no np.load with pickles
    source = Path(C.__file__).read_text()
    assert "import pickle" not in source and "np.load(" not in source


def test_a_checkpoint_from_another_config_names_the_tensor(saved):
    from tinygrad_gpt.model import GPTModel
    from tinygrad_gpt.optim import AdamW
    cfg = dict(json.loads((saved / C.STATE_FILE).read_text())["config"]["model_config"], emb_dim=12)
    model = GPTModel(cfg)
    with pytest.raises(C.CheckpointError) as e:
        C.restore_checkpoint(C.load_checkpoint(saved), model, AdamW(model.parameters()), {})
    print(e.value)
    assert "tok_emb.weight" in str(e.value) and "(11, 8)" in str(e.value) and "(11, 12)" in str(e.value)


def test_a_missing_or_empty_path_is_refused(tmp_path):
    with pytest.raises(C.CheckpointError, match="does not exist"):
        C.resolve_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(C.CheckpointError, match="no checkpoint in"):
        C.resolve_checkpoint(tmp_path / "empty")


# ----------------------------------------------------------------------------- non-finite guard
def test_a_nan_loss_stops_training_with_exit_1_and_keeps_the_last_checkpoint(tmp_path, text_file,
                                                                              monkeypatch, capsys):
    from tinygrad_gpt import train
    from tinygrad_gpt.tensor import is_grad_enabled
    real, calls = train.calc_loss_batch, []

    def nan_on_step_5(*args, **kwargs):
        loss = real(*args, **kwargs)
        if is_grad_enabled():                          # a training batch, not an evaluation
            calls.append(1)
            if len(calls) == 6:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(train, "calc_loss_batch", nan_on_step_5)
    save = tmp_path / "ck"
    assert run_cli(*TINY, "--epochs", "1", "--data", text_file, "--save-dir", save, "--save-every", "2") == 1
    err = capsys.readouterr().err
    print(err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "not finite at step 5" in err and str(save / "step-000003") in err
    assert sorted(p.name for p in save.iterdir()) == ["latest", "step-000001", "step-000003"]
    C.load_checkpoint(save)


def test_a_non_finite_gradient_raises_before_the_optimizer_step(monkeypatch):
    from tinygrad_gpt import train
    from tinygrad_gpt.data import DataLoader
    from tinygrad_gpt.model import GPTModel
    from tinygrad_gpt.optim import AdamW
    cfg = {**MICRO, "context_length": 4, "n_layers": 1, "qkv_bias": False}
    model = GPTModel(cfg)
    before = [p.data.copy() for p in model.parameters()]

    class Data:
        input_ids = np.arange(16).reshape(4, 4) % 11
        def __len__(self): return 4
        def __getitem__(self, idx): return self.input_ids[idx], self.input_ids[idx]

    loader = DataLoader(Data(), batch_size=2, shuffle=False)
    monkeypatch.setattr(train, "global_grad_norm", lambda params: float("inf"))
    with pytest.raises(train.NonFiniteLossError, match="gradient norm is not finite at step 0"):
        train.train_model(model, loader, loader, AdamW(model.parameters()), None, train.TrainConfig(1, 1, 1, "a"))
    assert all(np.array_equal(a, p.data) for a, p in zip(before, model.parameters()))


# ----------------------------------------------------------------------------- the run log
def test_the_run_log_resumed_drops_the_steps_after_the_checkpoint_and_continues_elapsed(tmp_path):
    from tinygrad_gpt.runlog import MetricsLog, read_metrics
    path = tmp_path / "out" / "metrics.jsonl"
    log = MetricsLog(path, extra={"precision": "float32"})
    for step in (0, 5, 10, 15):
        log.append({"step": step, "train_loss": 10.0 - step / 10, "elapsed": 1.0 + step})
    with open(path, "a") as f:
        f.write('{"step": 20, "train_lo')                 # a kill in the middle of a record
    assert [r["step"] for r in read_metrics(path)] == [0, 5, 10, 15]
    log = MetricsLog(path, resume_step=11)                 # the checkpoint was saved after step 11
    assert [r["step"] for r in read_metrics(path)] == [0, 5, 10]
    log.append({"step": 15, "train_loss": 8.5, "elapsed": 2.0})
    records = read_metrics(tmp_path / "out")
    assert [r["step"] for r in records] == [0, 5, 10, 15]
    assert records[-1]["elapsed"] == 11.0 + 2.0 and records[-1]["train_loss"] == 8.5
    MetricsLog(path)                                       # a new run starts an empty log
    assert read_metrics(path) == []
    path.write_text('{"step": 0}\nnot json\n{"step": 5}\n')
    with pytest.raises(ValueError, match="line 2: not a JSON record"):
        read_metrics(path)
