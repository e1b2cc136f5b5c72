"""fileio.py: the one atomic write and the one cache-directory rule, and that the rooms use them."""
import os
from pathlib import Path

import pytest

from tinygrad_gpt import fileio


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "f.txt"
    target.write_bytes(b"old")
    fileio.atomic_write(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_a_failed_atomic_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "f.txt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk gone"):
        with fileio.atomic_replace(target) as tmp:
            tmp.write_bytes(b"half")                   # a writer that dies halfway
            raise RuntimeError("disk gone")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_atomic_replace_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("rename") or real_replace(a, b))
    with fileio.atomic_replace(tmp_path / "g") as tmp:
        with open(tmp, "wb") as f:                     # written by someone else, never fsync'ed
            f.write(b"x")
    assert events == ["fsync", "rename", "fsync"], events


def test_cache_root_honours_tinygrad_gpt_cache_then_xdg_cache_home_then_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert fileio.cache_root() == tmp_path / "mine"
    monkeypatch.delenv("TINYGRAD_GPT_CACHE")
    assert fileio.cache_root() == tmp_path / "xdg" / "tinygrad_gpt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fileio.cache_root() == tmp_path / "home" / ".cache" / "tinygrad_gpt"


def test_the_training_text_and_gpt2_downloads_share_the_cache_rule(tmp_path, monkeypatch):
    from tinygrad_gpt import data, pretrained
    monkeypatch.delenv("TINYGRAD_GPT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    payload = b"the verdict"
    monkeypatch.setattr(data, "VERDICT_SHA256", __import__("hashlib").sha256(payload).hexdigest())
    monkeypatch.setattr(data, "_download", lambda url, timeout=10: payload)
    text, description = data.load_training_text()
    assert text == "the verdict"
    assert (tmp_path / "xdg" / "tinygrad_gpt" / data.VERDICT_NAME).read_bytes() == payload
    assert pretrained.cache_dir("gpt2") == tmp_path / "xdg" / "tinygrad_gpt" / "gpt2"


def test_save_safetensors_gives_the_mode_open_gives_not_0600(tmp_path):
    import numpy as np
    fileio.save_safetensors({"w": np.zeros(3, np.float32)}, tmp_path / "w.safetensors")
    (tmp_path / "c.json").write_text("{}")
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes["w.safetensors"] == modes["c.json"] == 0o666 & ~fileio.umask(), modes


def test_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert fileio.umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


def test_checksums_verify_and_name_the_file_that_changed(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "b.json").write_text("{}")
    assert not fileio.verify_checksums(tmp_path)                 # none written yet: nothing to check
    fileio.write_checksums(tmp_path, ["a.bin", "b.json"])
    assert fileio.verify_checksums(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"abd")
    assert fileio.verify_checksums(tmp_path, only=["b.json"])
    with pytest.raises(fileio.ChecksumError, match=r"a\.bin does not match its sha256"):
        fileio.verify_checksums(tmp_path)


def test_atomic_leftovers_are_recognised_by_atomic_replaces_names_only(tmp_path):
    with pytest.raises(RuntimeError):
        with fileio.atomic_replace(tmp_path / "model.safetensors") as tmp:
            name = tmp.name
            raise RuntimeError
    assert fileio.atomic_leftover(name)
    assert not fileio.atomic_leftover("model.safetensors") and not fileio.atomic_leftover(".bashrc")
    assert not fileio.atomic_leftover(".notes.tmp")
