"""The corpus on disk (tinygrad_gpt/corpus.py) and examples/prepare_data.py.

The shards are llm.c's format, read back token for token against the tokenizer; the
manifest counts what is in them; an interrupted run leaves no corpus and the next run
redoes it cleanly; bad input is one line and exit 2; the loader's windows are the stream's
tokens, its targets the inputs shifted by one, and its state resumes exactly.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygrad_gpt import corpus as C
from tinygrad_gpt.cli.prepare_data import main as prepare_main
from tinygrad_gpt.tokenizer import ENDOFTEXT_ID, get_gpt2_tokenizer

from helpers import REPO, STORY


def make_docs(root, n=6, words=120):
    """n small UTF-8 documents cut from the bundled story, in root/docs/ (one nested)."""
    w = STORY.split()
    paths = []
    for i in range(n):
        sub = root / "docs" / ("nested" if i % 3 == 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"doc{i}.txt"
        p.write_text(" ".join(w[i * words:(i + 1) * words]) + " \u00e9t\u00e9 \u2014 ok\n", encoding="utf-8")
        paths.append(p)
    return paths


def prepare(*argv):
    return prepare_main([str(a) for a in argv])


def all_tokens(directory, split):
    m = C.read_manifest(directory)
    return np.concatenate([np.asarray(C.read_shard(Path(directory) / s["name"])) for s in m["splits"][split]["shards"]])


def test_shards_hold_every_document_tokenized_with_endoftext_between(tmp_path, capsys):
    paths = make_docs(tmp_path)
    assert prepare(tmp_path / "docs", "--out", tmp_path / "c", "--shard-tokens", "100", "--threads", "2") == 0
    m = C.read_manifest(tmp_path / "c")
    enc = get_gpt2_tokenizer()
    by_split = {"train": [], "val": []}
    for entry in m["inputs"]:
        raw = Path(entry["path"]).read_bytes()
        assert entry["bytes"] == len(raw) and entry["sha256"] == hashlib.sha256(raw).hexdigest()
        ids = enc.encode_ordinary(raw.decode("utf-8")) + [ENDOFTEXT_ID]
        assert entry["tokens"] == len(ids)
        by_split[entry["split"]] += ids
    assert sorted(e["path"] for e in m["inputs"]) == sorted(str(p.resolve()) for p in paths)
    for split in C.SPLITS:
        got = all_tokens(tmp_path / "c", split)
        assert got.tolist() == by_split[split], split
        assert m["splits"][split]["tokens"] == len(got) > 0
        shards = m["splits"][split]["shards"]
        assert all(s["tokens"] == 100 for s in shards[:-1]) and 0 < shards[-1]["tokens"] <= 100
    frac = m["splits"]["val"]["tokens"] / m["tokens"]
    print("val fraction", frac)
    assert 0.05 < frac < 0.4
    assert m["tokenizer"]["vocab_size"] == 50257 and m["tokenizer"]["eot"] == ENDOFTEXT_ID


def test_a_shard_is_llm_c_format_header_then_uint16(tmp_path):
    tokens = np.array([1, 2, 50256, 65535, 0], dtype=np.uint16)
    entry = C.write_shard(tmp_path / "train_000000.bin", tokens)
    raw = (tmp_path / "train_000000.bin").read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[:3].tolist() == [20240520, 1, 5] and not header[3:].any()
    assert np.frombuffer(raw[1024:], dtype="<u2").tolist() == tokens.tolist()
    assert entry == {"name": "train_000000.bin", "tokens": 5, "bytes": 1034,
                     "sha256": hashlib.sha256(raw).hexdigest()}
    (tmp_path / "train_000000.bin").write_bytes(raw[:-2])             # truncated
    with pytest.raises(C.CorpusError, match="truncated"):
        C.read_shard(tmp_path / "train_000000.bin")


def test_one_input_file_is_split_by_tokens_like_the_book(tmp_path):
    p = tmp_path / "story.txt"
    p.write_text(STORY[:5000], encoding="utf-8")
    assert prepare(p, "--out", tmp_path / "c", "--val-fraction", "0.25") == 0
    train, val = all_tokens(tmp_path / "c", "train"), all_tokens(tmp_path / "c", "val")
    whole = get_gpt2_tokenizer().encode_ordinary(STORY[:5000]) + [ENDOFTEXT_ID]
    assert train.tolist() + val.tolist() == whole
    assert abs(len(val) / len(whole) - 0.25) < 0.01


def test_a_rerun_is_up_to_date_and_a_changed_input_redoes_it(tmp_path, capsys):
    paths = make_docs(tmp_path)
    assert prepare(tmp_path / "docs", "--out", tmp_path / "c") == 0
    before = (tmp_path / "c" / C.MANIFEST).read_bytes()
    capsys.readouterr()
    assert prepare(tmp_path / "docs", "--out", tmp_path / "c") == 0
    assert "up to date" in capsys.readouterr().out
    assert (tmp_path / "c" / C.MANIFEST).read_bytes() == before
    paths[0].write_text("a different first document, longer than before " * 20, encoding="utf-8")
    assert prepare(tmp_path / "docs", "--out", tmp_path / "c") == 0
    m = C.read_manifest(tmp_path / "c")
    assert m["inputs"][0]["sha256"] == hashlib.sha256(paths[0].read_bytes()).hexdigest()


def test_an_interrupted_run_leaves_no_corpus_and_the_next_run_redoes_it(tmp_path, monkeypatch):
    make_docs(tmp_path)
    assert prepare(tmp_path / "docs", "--out", tmp_path / "ref", "--shard-tokens", "50") == 0
    real_close, calls = C.ShardWriter.close, []

    def close_then_die(self):                  # the third shard dies before its rename
        calls.append(self.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_close(self)
    monkeypatch.setattr(C.ShardWriter, "close", close_then_die)
    assert prepare(tmp_path / "docs", "--out", tmp_path / "c", "--shard-tokens", "50") == 130
    left = sorted(os.listdir(tmp_path / "c"))
    print("left behind:", left)
    assert left == [], left                    # nothing that looks like a shard or a corpus
    with pytest.raises(C.CorpusError, match="no manifest.json"):
        C.open_corpus(tmp_path / "c")
    monkeypatch.setattr(C.ShardWriter, "close", real_close)
    assert prepare(tmp_path / "docs", "--out", tmp_path / "c", "--shard-tokens", "50") == 0
    for split in C.SPLITS:
        assert all_tokens(tmp_path / "c", split).tolist() == all_tokens(tmp_path / "ref", split).tolist()


def test_a_kill_9_mid_prepare_leaves_only_temp_files_that_the_rerun_removes(tmp_path):
    """What kill -9 leaves (a complete shard, fileio's temporary file of the next, no manifest) is no corpus; the
    rerun removes it and writes the same corpus as a clean run."""
    make_docs(tmp_path)
    assert prepare(tmp_path / "docs", "--out", tmp_path / "ref", "--shard-tokens", "50") == 0
    c = tmp_path / "c"
    c.mkdir()
    (c / ".prepare_data.journal").write_text("train_000000.bin\ntrain_000001.bin\n")   # noted before writing
    C.write_shard(c / "train_000000.bin", np.arange(50, dtype=np.uint16))
    (c / ".train_000001.bin.999.0badcafe.tmp").write_bytes(bytes(1024) + b"\x01\x00")
    (c / "notes.txt").write_text("mine")       # not the corpus's: kept
    assert not C.is_corpus_dir(c)
    assert prepare(tmp_path / "docs", "--out", c, "--shard-tokens", "50") == 0
    assert sorted(os.listdir(c)) == sorted(os.listdir(tmp_path / "ref") + ["notes.txt"])
    for split in C.SPLITS:
        assert all_tokens(c, split).tolist() == all_tokens(tmp_path / "ref", split).tolist()


def _write(p, data):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


BAD = {
    "no-such-file": (lambda t: [t / "nope.txt"], "does not exist"),
    "empty-dir": (lambda t: [(t / "empty").mkdir() or t / "empty"], "has no file ending in .txt"),
    "glob-matches-nothing": (lambda t: [str(t / "*.nothing")], "matches no file"),
    "binary": (lambda t: [_write(t / "x.txt", b"PK\x03\x04\x00\x00binary")], "looks binary"),
    "not-utf8": (lambda t: [_write(t / "y.txt", "caf\xe9".encode("latin-1") * 10)], "is not UTF-8"),
    "out-under-a-file": (lambda t: [_write(t / "ok.txt", b"fine text " * 50), "--out", t / "ok.txt" / "c"],
                         "not writable"),
    "val-fraction-1": (lambda t: [_write(t / "ok.txt", b"fine text " * 50), "--val-fraction", "1"],
                       "--val-fraction 1.0"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case):
    make, words = BAD[case]
    argv = make(tmp_path)
    if "--out" not in map(str, argv):
        argv = [*argv, "--out", tmp_path / "c"]
    rc = prepare(*argv)
    err = capsys.readouterr().err
    print(err)
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("prepare_data.py: error: "), err
    assert words in err
    assert not C.is_corpus_dir(tmp_path / "c")
    assert not (tmp_path / "c").exists() or not any(C._SHARD_NAME.match(f) for f in os.listdir(tmp_path / "c"))


def test_skip_bad_skips_binary_files_and_lists_them(tmp_path):
    make_docs(tmp_path)
    _write(tmp_path / "docs" / "zz.txt", b"\x00\x01\x02")
    assert prepare(tmp_path / "docs", "--out", tmp_path / "c", "--skip-bad") == 0
    m = C.read_manifest(tmp_path / "c")
    assert m["skipped"] == [str((tmp_path / "docs" / "zz.txt").resolve())]
    assert len(m["inputs"]) == 6


def test_exclude_leaves_out_matching_directories(tmp_path):
    make_docs(tmp_path)
    assert prepare(tmp_path / "docs", "--out", tmp_path / "c", "--exclude", "nested") == 0
    names = sorted(Path(e["path"]).name for e in C.read_manifest(tmp_path / "c")["inputs"])
    assert names == ["doc0.txt", "doc1.txt", "doc3.txt", "doc4.txt"]


def test_the_example_script_runs_as_a_subprocess(tmp_path):
    make_docs(tmp_path)
    r = subprocess.run([sys.executable, str(REPO / "examples" / "prepare_data.py"), str(tmp_path / "docs" / "*.txt"),
                        "--out", str(tmp_path / "c"), "--progress"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, r.stderr
    assert "tokens" in r.stdout and "MB/s" in r.stdout and "100%" in r.stderr
    assert len(C.read_manifest(tmp_path / "c")["inputs"]) == 4          # the glob is not recursive


# ----------------------------------------------------------------------------- the loader
@pytest.fixture
def stream(tmp_path):
    for i, n in enumerate((37, 5, 60)):              # windows cross shard boundaries
        C.write_shard(tmp_path / f"train_{i:06d}.bin", (np.arange(n) + 1000 * i).astype(np.uint16))
    return C.TokenStream([C.read_shard(tmp_path / f"train_{i:06d}.bin") for i in range(3)])


def test_windows_read_across_shards_and_targets_are_inputs_shifted(stream):
    flat = np.concatenate([np.asarray(s) for s in stream.shards]).astype(np.int64)
    assert len(stream) == 102
    for start in (0, 30, 36, 37, 40, 41, 90):
        assert stream.window(start, 12).tolist() == flat[start:start + 12].tolist()
    loader = C.CorpusLoader(stream, 4, 8, order="random", rng=5, num_batches=6)
    for x, y in loader.iter_batches():
        assert x.shape == y.shape == (4, 8) and x.dtype == np.int64
        assert (x[:, 1:] == y[:, :-1]).all()
        for row in x:                                  # each row is a window of the stream
            s = int(np.flatnonzero(flat == row[0])[0])
            assert row.tolist() == flat[s:s + 8].tolist()


def test_sequential_order_walks_the_windows_and_wraps(stream):
    loader = C.CorpusLoader(stream, 3, 10, order="sequential", num_batches=5)
    starts = [x[:, 0].tolist() for x, _ in loader.iter_batches()]
    flat = np.concatenate([np.asarray(s) for s in stream.shards]).tolist()
    n_windows = 101 // 10
    want = [[flat[((b * 3 + i) % n_windows) * 10] for i in range(3)] for b in range(5)]
    assert starts == want


def test_restoring_the_generator_and_the_batch_count_resumes_exactly(stream):
    a = C.CorpusLoader(stream, 4, 8, rng=11, num_batches=10)
    full = [x.tolist() for x, _ in a.iter_batches()]
    b = C.CorpusLoader(stream, 4, 8, rng=11, num_batches=10)
    it = b.iter_batches()
    first = [next(it)[0].tolist() for _ in range(4)]
    saved = json.loads(json.dumps(b.state_dict(4)))   # through JSON, as in state.json
    c = C.CorpusLoader(stream, 4, 8, rng=999, num_batches=10)
    k = c.load_state_dict(saved)
    assert first + [x.tolist() for x, _ in c.iter_batches(start=k)] == full
    evals = [[x.tolist() for x, _ in a] for _ in range(2)]
    assert evals[0] == evals[1], "every evaluation must see the same batches"


def test_each_rank_gets_its_rows_of_the_same_global_batch(stream):
    whole = [x for x, _ in C.CorpusLoader(stream, 4, 8, rng=3, num_batches=3).iter_batches()]
    parts = [[x for x, _ in C.CorpusLoader(stream, 4, 8, rng=3, num_batches=3, rank=r, world=2).iter_batches()]
             for r in range(2)]
    for b in range(3):
        assert np.concatenate([parts[0][b], parts[1][b]]).tolist() == whole[b].tolist()
