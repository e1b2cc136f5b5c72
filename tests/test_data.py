"""Sliding-window dataset, loader and training-text loading, against the book's ch02/ch05.

No test touches the network: an autouse fixture makes urllib fail, and the cache is a tmp dir.
"""
import hashlib
import urllib.error
import urllib.request

import numpy as np
import pytest

from tinygrad_gpt import data
from tinygrad_gpt.data import (SAMPLE_TEXT_PATH, DataError, DataLoader, GPTDatasetV1,
                               create_dataloader_v1, load_training_text, split_train_val)
from tinygrad_gpt.tokenizer import get_gpt2_tokenizer

from helpers import VERDICT, needs_verdict


@pytest.fixture(autouse=True)
def no_network_and_private_cache(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "env-cache"))


class CountingTokenizer:
    """Text "0 1 2 ..." -> [0, 1, 2, ...]: windows can be checked by eye."""
    def encode(self, txt, allowed_special=()):
        return [int(w) for w in txt.split()]


def book_windows(token_ids, max_length, stride):
    """The book's ch02 GPTDatasetV1 loop, verbatim apart from torch.tensor."""
    inputs, targets = [], []
    for i in range(0, len(token_ids) - max_length, stride):
        inputs.append(token_ids[i:i + max_length])
        targets.append(token_ids[i + 1:i + max_length + 1])
    return inputs, targets


def numbered_dataset(n_tokens, max_length=4, stride=4):
    return GPTDatasetV1(" ".join(map(str, range(n_tokens))), CountingTokenizer(), max_length, stride)


# ----------------------------------------------------------------------------- dataset
@pytest.mark.parametrize("n_tokens,max_length,stride", [
    (20, 4, 1), (20, 4, 4), (21, 4, 4), (20, 5, 3), (9, 4, 4), (5, 4, 1), (4, 4, 1), (3, 4, 2)])
def test_dataset_windows_match_the_books_loop(n_tokens, max_length, stride):
    ds = numbered_dataset(n_tokens, max_length, stride)
    inputs, targets = book_windows(list(range(n_tokens)), max_length, stride)
    assert ds.input_ids.dtype == np.int64 and ds.target_ids.dtype == np.int64
    assert ds.input_ids.shape == ds.target_ids.shape == (len(inputs), max_length)
    assert len(ds) == len(inputs)
    np.testing.assert_array_equal(ds.input_ids.reshape(-1, max_length), np.array(inputs).reshape(-1, max_length))
    np.testing.assert_array_equal(ds.target_ids.reshape(-1, max_length), np.array(targets).reshape(-1, max_length))


def test_dataset_getitem_returns_input_and_target_shifted_by_one():
    ds = numbered_dataset(20, max_length=4, stride=4)
    x, y = ds[1]
    np.testing.assert_array_equal(x, [4, 5, 6, 7])
    np.testing.assert_array_equal(y, [5, 6, 7, 8])


# ----------------------------------------------------------------------------- loader
def test_loader_batch_shapes_and_len_without_drop_last():
    ds = numbered_dataset(41)                                      # 10 samples of 4 tokens
    loader = DataLoader(ds, batch_size=3, shuffle=False, drop_last=False)
    shapes = [(x.shape, y.shape, x.dtype, y.dtype) for x, y in loader]
    assert len(loader) == 4 == len(shapes)                         # ceil(10 / 3)
    assert [s[0] for s in shapes] == [(3, 4), (3, 4), (3, 4), (1, 4)]
    assert all(s[2] == np.int64 and s[3] == np.int64 for s in shapes)


def test_loader_drop_last_drops_the_short_batch():
    ds = numbered_dataset(41)
    loader = DataLoader(ds, batch_size=3, drop_last=True)
    assert len(loader) == 3 == len(list(loader))                   # floor(10 / 3)
    assert all(x.shape == (3, 4) for x, _ in loader)
    assert len(DataLoader(ds, batch_size=20, drop_last=True)) == 0


def test_loader_without_shuffle_keeps_dataset_order():
    ds = numbered_dataset(41)
    x = np.concatenate([x for x, _ in DataLoader(ds, batch_size=3)])
    np.testing.assert_array_equal(x, ds.input_ids)


def test_seeded_shuffle_is_reproducible_and_changes_each_epoch():
    ds = numbered_dataset(41)
    a = DataLoader(ds, batch_size=3, shuffle=True, rng=np.random.default_rng(123))
    b = DataLoader(ds, batch_size=3, shuffle=True, rng=123)       # an int seed works too
    epochs_a = [np.concatenate([x for x, _ in a]) for _ in range(3)]
    epochs_b = [np.concatenate([x for x, _ in b]) for _ in range(3)]
    for ea, eb in zip(epochs_a, epochs_b):
        np.testing.assert_array_equal(ea, eb)
    assert not np.array_equal(epochs_a[0], epochs_a[1])            # a new permutation per epoch


def test_every_sample_once_per_epoch_with_shuffle():
    ds = numbered_dataset(41)
    loader = DataLoader(ds, batch_size=3, shuffle=True, rng=0)
    for _ in range(3):
        firsts = np.concatenate([x[:, 0] for x, _ in loader])      # window i starts at 4 i
        assert sorted(firsts.tolist()) == list(range(0, 40, 4))


def test_shuffled_batches_keep_inputs_and_targets_paired():
    loader = DataLoader(numbered_dataset(41), batch_size=3, shuffle=True, rng=1)
    for x, y in loader:
        np.testing.assert_array_equal(y, x + 1)


def test_resume_mid_epoch_gives_the_remaining_batches_exactly():
    ds = numbered_dataset(41)
    loader = DataLoader(ds, batch_size=3, shuffle=True, rng=7)
    next(iter(loader))                                             # some earlier epoch
    saved = loader.rng.bit_generator.state                         # saved before the epoch
    full = [x for x, _ in loader.iter_batches(loader.epoch_order())]
    after = [x for x, _ in loader]                                 # the epoch after that

    resumed = DataLoader(ds, batch_size=3, shuffle=True, rng=999)
    resumed.rng.bit_generator.state = saved
    rest = [x for x, _ in resumed.iter_batches(resumed.epoch_order(), start=2)]
    assert len(rest) == len(full) - 2
    for r, f in zip(rest, full[2:]):
        np.testing.assert_array_equal(r, f)
    for r, f in zip(resumed, after):                               # and the following epoch too
        np.testing.assert_array_equal(r[0], f)


def test_create_dataloader_v1_uses_gpt2_by_default():
    loader = create_dataloader_v1("Every effort moves you " * 20, batch_size=2, max_length=4,
                                  stride=4, shuffle=False)
    x, y = next(iter(loader))
    np.testing.assert_array_equal(x[0], [6109, 3626, 6100, 345])
    assert x.shape == y.shape == (2, 4)


def test_split_train_val_splits_characters_as_the_book():
    text = "abcdefghij" * 7                                           # 70 characters
    train, val = split_train_val(text)
    assert train + val == text and len(train) == int(0.9 * 70) == 63
    assert split_train_val(text, train_ratio=0.5) == (text[:35], text[35:])


def book_loaders(text):
    """The book's ch05 train/val loaders (context 256, stride 256, batch 2)."""
    train, val = split_train_val(text, train_ratio=0.9)
    kw = dict(batch_size=2, max_length=256, stride=256)
    return (create_dataloader_v1(train, drop_last=True, shuffle=True, rng=123, **kw),
            create_dataloader_v1(val, drop_last=False, shuffle=False, **kw))


@needs_verdict
def test_the_verdict_gives_the_books_9_train_and_1_val_batches():
    train_loader, val_loader = book_loaders(VERDICT.read_text(encoding="utf-8"))
    assert len(train_loader) == 9 and len(val_loader) == 1
    assert all(x.shape == y.shape == (2, 256) for x, y in train_loader)
    assert [x.shape for x, _ in val_loader] == [(2, 256)]
    assert sum(x.size for x, _ in train_loader) == 4608            # the book's 4608 training tokens


def test_sample_text_is_long_enough_for_the_books_setup():
    text = SAMPLE_TEXT_PATH.read_text(encoding="utf-8")
    n_tokens = len(get_gpt2_tokenizer().encode(text))
    print(f"sample text: {len(text)} characters, {n_tokens} tokens")
    assert 18_000 <= len(text) <= 22_000 and n_tokens > 4000
    train_loader, val_loader = book_loaders(text)
    assert len(train_loader) >= 4 and len(val_loader) >= 1


# ----------------------------------------------------------------------------- training text
def test_load_training_text_reads_a_given_file(tmp_path):
    f = tmp_path / "story.txt"
    f.write_text("Once upon a time, naïvely.", encoding="utf-8")
    text, description = load_training_text(f)
    assert text == "Once upon a time, naïvely."
    assert "story.txt" in description and "26 characters" in description


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "whitespace", "binary", "latin-1"])
def test_bad_training_text_raises_data_error_naming_the_file(tmp_path, kind):
    f = tmp_path / f"bad-{kind}.txt"
    if kind == "directory":
        f.mkdir()
    elif kind == "empty":
        f.write_bytes(b"")
    elif kind == "whitespace":
        f.write_bytes(b" \n\t\n")
    elif kind == "binary":
        f.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    elif kind == "latin-1":
        f.write_bytes("café crème".encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_training_text(f)
    message = str(err.value)
    print(message)
    assert f"bad-{kind}.txt" in message and "fix:" in message and "\n" not in message
    assert isinstance(err.value, ValueError)


def test_offline_falls_back_to_the_bundled_sample_text(tmp_path):
    text, description = load_training_text(cache_dir=tmp_path)    # urlopen fails (fixture)
    assert text == SAMPLE_TEXT_PATH.read_text(encoding="utf-8")
    assert description.startswith("Offline: using the bundled sample text "
                                  "tinygrad_gpt/data/sample_story.txt (")
    assert f"({len(text):,} characters)" in description and "\n" not in description
    assert not (tmp_path / "the-verdict.txt").exists()


def test_sha256_mismatch_is_not_cached_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_download", lambda url, timeout=10: b"<html>captive portal</html>")
    text, description = load_training_text(cache_dir=tmp_path)
    assert text == SAMPLE_TEXT_PATH.read_text(encoding="utf-8")
    assert "SHA-256" in description and "sample_story.txt" in description
    assert list(tmp_path.iterdir()) == []                          # nothing cached, no temp files


def fake_verdict(monkeypatch):
    """Make some bytes pass as the-verdict.txt, so no test needs the real file or network."""
    payload = "I had always thought Jack Gisburn rather a cheap genius.\n".encode()
    monkeypatch.setattr(data, "VERDICT_SHA256", hashlib.sha256(payload).hexdigest())
    return payload


def test_verified_download_is_cached_atomically_then_reused(tmp_path, monkeypatch):
    payload = fake_verdict(monkeypatch)
    calls = []
    monkeypatch.setattr(data, "_download", lambda url, timeout=10: calls.append(url) or payload)
    text, description = load_training_text(cache_dir=tmp_path)
    assert text == payload.decode() and calls == [data.VERDICT_URL]
    assert "downloaded to" in description
    assert [p.name for p in tmp_path.iterdir()] == ["the-verdict.txt"]   # no leftover temp file

    text2, description2 = load_training_text(cache_dir=tmp_path)
    assert text2 == text and len(calls) == 1                       # served from the cache
    assert description2.startswith("Using the-verdict.txt from ")


def test_unwritable_cache_still_uses_the_download(tmp_path, monkeypatch):
    payload = fake_verdict(monkeypatch)
    monkeypatch.setattr(data, "_download", lambda url, timeout=10: payload)

    def read_only(path, data_):
        raise PermissionError("read-only file system")
    monkeypatch.setattr(data, "atomic_write", read_only)
    text, description = load_training_text(cache_dir=tmp_path)
    assert text == payload.decode() and "could not be cached" in description


def test_damaged_cache_is_ignored(tmp_path):
    (tmp_path / "the-verdict.txt").write_text("half a fi")
    text, description = load_training_text(cache_dir=tmp_path)
    assert description.startswith("Offline:")


def test_cache_dir_comes_from_the_environment(tmp_path, monkeypatch):
    payload = fake_verdict(monkeypatch)
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path))
    (tmp_path / "the-verdict.txt").write_bytes(payload)
    text, description = load_training_text()
    assert text == payload.decode() and str(tmp_path) in description


def test_download_false_never_downloads(tmp_path, monkeypatch):
    def no(*args, **kwargs):
        raise AssertionError("download=False must not download")
    monkeypatch.setattr(data, "_download", no)
    text, description = load_training_text(cache_dir=tmp_path, download=False)
    assert description.startswith("Download disabled: using the bundled sample text")


# ----------------------------------------------------------------------------- one text resolution for every command
def test_load_text_gives_micro_its_sentence_and_a_file_its_text(tmp_path):
    from tinygrad_gpt.char_tokenizer import micro_text
    from tinygrad_gpt.model import get_config
    text, description = data.load_text(None, get_config("micro"))
    assert text == micro_text()
    assert description == "Using the micro model's sentence 'Every effort moves you onward.', 10 times (309 characters)"
    (tmp_path / "t.txt").write_text("a short story", encoding="utf-8")
    for cfg in (get_config("micro"), get_config("tiny")):          # --data wins over micro's sentence
        assert data.load_text(str(tmp_path / "t.txt"), cfg)[0] == "a short story"
    with pytest.raises(DataError):
        data.load_text(str(tmp_path / "missing.txt"), get_config("tiny"))


def test_one_batch_is_the_first_windows_and_their_next_tokens():
    class Chars:
        def encode(self, text, allowed_special=()):
            return [ord(c) - 97 for c in text]
    x, y = data.one_batch("abcdefghij", Chars(), 2, 4)
    assert x.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]] and y.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    with pytest.raises(DataError, match="the text has 10 tokens; 3 x 4 needs 13"):
        data.one_batch("abcdefghij", Chars(), 3, 4)


# ----------------------------------------------------------------------------- prepare_data: what it passed over
def test_prepare_data_says_how_many_files_it_skipped_and_why(tmp_path, capsys):
    from tinygrad_gpt.cli.prepare_data import main
    src = tmp_path / "src"
    (src / ".git").mkdir(parents=True)
    (src / "story.txt").write_text("Every effort moves you onward. " * 20, encoding="utf-8")
    for i in range(3):
        (src / f"code{i}.py").write_text("x = 1\n", encoding="utf-8")
    (src / "notes.md").write_text("# notes\n", encoding="utf-8")
    (src / ".git" / "config").write_text("[core]\n", encoding="utf-8")
    assert main([str(src), "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert ("5 files skipped: 4 not .txt (3 .py, 1 .md), 1 under a hidden (dot) name; "
            "use --ext .txt,.py to take the .py files too") in out
    assert "from 1 files" in out
    assert main([str(src), "--out", str(tmp_path / "d"), "--ext", ".txt,.py,.md"]) == 0
    assert "1 file skipped: under a hidden (dot) name\n" in capsys.readouterr().out
