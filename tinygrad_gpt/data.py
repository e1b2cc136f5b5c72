"""Training text, the sliding-window dataset and the data loader (the book's ch02 and ch05).

The book samples input-target pairs with a sliding window over the token IDs: the target
is the input shifted by one token, so every position predicts the next word. `DataLoader`
stands in for PyTorch's: batches of (B, T) int64 arrays, an optional seeded shuffle, and
enough exposed state (`rng`, `epoch_order`, `iter_batches`) to resume mid-epoch exactly.
"""
import hashlib
import http.client
import math
import urllib.request
from pathlib import Path

import numpy as np

from . import fileio
from .fileio import atomic_write, cache_root
from .tokenizer import ENDOFTEXT, get_gpt2_tokenizer

VERDICT_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/"
               "ch02/01_main-chapter-code/the-verdict.txt")
VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
VERDICT_NAME = "the-verdict.txt"
DOWNLOAD_TIMEOUT = 10.0                     # seconds; offline machines should not hang
SAMPLE_TEXT_PATH = Path(__file__).resolve().parent / "data" / "sample_story.txt"


class DataError(ValueError):
    """A training text that cannot be used; the message names the file and the fix."""


# ----------------------------------------------------------------------------- dataset
class GPTDatasetV1:
    """Input-target pairs from a sliding window over the tokenized text (the book's ch02).

    Window i covers token_ids[i*stride : i*stride + max_length]; its target is the same
    window shifted right by one token. Stored as two (n, max_length) int64 arrays.
    """

    def __init__(self, txt, tokenizer, max_length, stride):
        token_ids = np.array(tokenizer.encode(txt, allowed_special={ENDOFTEXT}), dtype=np.int64)
        # the book's loop: for i in range(0, len(token_ids) - max_length, stride)
        starts = np.arange(0, len(token_ids) - max_length, stride, dtype=np.int64)   # (n,)
        window = starts[:, None] + np.arange(max_length, dtype=np.int64)             # (n, T)
        self.input_ids = token_ids[window]                                           # (n, T)
        self.target_ids = token_ids[window + 1]                                      # (n, T)
        self.max_length = max_length

    def __len__(self):
        return len(self.input_ids)

    def __getitem__(self, idx):             # an int gives (T,) rows, an index array (B, T)
        return self.input_ids[idx], self.target_ids[idx]


# ----------------------------------------------------------------------------- loader
class DataLoader:
    """Batches of (inputs, targets), each (B, T) int64, like torch.utils.data.DataLoader.

    `for x, y in loader` runs one epoch; with shuffle=True each epoch draws a fresh
    permutation from `loader.rng` (an np.random.Generator, or an int seed for one).

    Exact resume: an epoch is `order = loader.epoch_order()` then
    `loader.iter_batches(order, start=k)`. Save `loader.rng.bit_generator.state` before
    `epoch_order()` (or save `order` itself); to resume at batch k, restore that state,
    call `epoch_order()` again to get the same permutation, and pass start=k.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, rng=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        # an unseeded generator when none is given, as PyTorch shuffles differently each run
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def __len__(self):                      # number of batches per epoch, as PyTorch counts
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def epoch_order(self):
        """Sample indices for the next epoch (advances `rng` only when shuffling)."""
        n = len(self.dataset)
        return self.rng.permutation(n) if self.shuffle else np.arange(n)

    def iter_batches(self, order, start=0):
        """Yield batches start, start+1, ... of the epoch whose sample order is `order`."""
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]   # (B,), last may be short
            yield self.dataset[idx]                                       # (B, T), (B, T)

    def __iter__(self):
        return self.iter_batches(self.epoch_order())


def create_dataloader_v1(txt, batch_size=4, max_length=256, stride=128, shuffle=True,
                         drop_last=True, tokenizer=None, rng=None, num_workers=0):
    """The book's create_dataloader_v1; `num_workers` is accepted for its signature and ignored."""
    tokenizer = tokenizer if tokenizer is not None else get_gpt2_tokenizer()
    dataset = GPTDatasetV1(txt, tokenizer, max_length, stride)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, rng=rng)


def split_train_val(text, train_ratio=0.9):
    """Split the text by characters, as the book: the first 90% trains, the rest validates."""
    split_idx = int(train_ratio * len(text))
    return text[:split_idx], text[split_idx:]


# ----------------------------------------------------------------------------- training text
def _shown(path):
    """A path for messages, with the home directory written as ~."""
    path = Path(path)
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def read_text_file(path):
    """Read a UTF-8 training text, raising DataError with a one-line message on a bad file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"training text {path} does not exist; fix: pass the path of a "
                        "UTF-8 text file, or no path to use the-verdict.txt")
    if path.is_dir():
        raise DataError(f"training text {path} is a directory; fix: pass a text file, "
                        "e.g. a .txt file inside it")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"training text {path} cannot be read ({e.strerror}); "
                        "fix: check its permissions") from None
    if b"\x00" in raw:
        raise DataError(f"training text {path} looks binary (it contains NUL bytes); "
                        "fix: pass a plain UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"training text {path} is not UTF-8 (byte 0x{raw[e.start]:02x} at "
                        f"offset {e.start}); fix: convert it, e.g. iconv -f LATIN1 -t UTF-8") from None
    if not text.strip():
        what = "empty" if not text else "blank (only whitespace)"
        raise DataError(f"training text {path} is {what}; fix: pass a file with some text in it")
    return text


def _download(url, timeout=DOWNLOAD_TIMEOUT):
    """The raw bytes at url (the one place that touches the network; tests replace it)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _is_verdict(data):
    return hashlib.sha256(data).hexdigest() == VERDICT_SHA256


def load_training_text(path=None, cache_dir=None, download=True):
    """The text to pretrain on, and one line saying which text it is.

    With `path`, that file (a bad file raises DataError). Without, the book's
    the-verdict.txt: from the cache, else downloaded (SHA-256 checked, then cached),
    else the bundled sample story, so training also runs offline.
    Returns (text, description).
    """
    if path is not None:
        text = read_text_file(path)
        return text, f"Using {_shown(Path(path).expanduser())} ({len(text):,} characters)"

    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    cached = cache_dir / VERDICT_NAME
    raw = cached.read_bytes() if cached.is_file() else b""
    if _is_verdict(raw):                                        # a damaged copy is ignored
        text = raw.decode("utf-8")
        return text, f"Using {VERDICT_NAME} from {_shown(cached)} ({len(text):,} characters)"

    if not download:
        reason = "Download disabled"
    else:
        try:
            data = _download(VERDICT_URL)
        except (OSError, http.client.HTTPException, ValueError):   # URLError, timeouts are OSErrors
            reason = "Offline"
        else:
            if _is_verdict(data):
                text = data.decode("utf-8")
                try:
                    fileio.mkdir(cached.parent, parents=True, exist_ok=True)
                    atomic_write(cached, data)
                    where = f"downloaded to {_shown(cached)}"
                except OSError:          # a read-only cache should not stop training
                    where = "downloaded (could not be cached)"
                return text, f"Using {VERDICT_NAME}, {where} ({len(text):,} characters)"
            reason = f"Downloaded {VERDICT_NAME} failed its SHA-256 check (not cached)"

    text = read_text_file(SAMPLE_TEXT_PATH)
    return text, (f"{reason}: using the bundled sample text tinygrad_gpt/data/{SAMPLE_TEXT_PATH.name} "
                  f"({len(text):,} characters) instead of {VERDICT_NAME}")


def load_text(path=None, model_cfg=None, download=True):
    """The text a command trains or traces on, and one line saying which: the micro model's
    own sentence for a character model without `path` (and without an alphabet of its own: a
    --tokenizer char model's comes from its text), else load_training_text (the file at `path`,
    or the book's the-verdict.txt). A bad file raises DataError."""
    model_cfg = model_cfg or {}
    if path is None and model_cfg.get("tokenizer") == "char" and "alphabet" not in model_cfg:
        from .char_tokenizer import MICRO_REPEATS, MICRO_SENTENCE, micro_text
        text = micro_text()
        return text, (f"Using the micro model's sentence {MICRO_SENTENCE!r}, {MICRO_REPEATS} times "
                      f"({len(text)} characters)")
    return load_training_text(path, download=download)


def one_batch(text, tokenizer, batch_size, context_length):
    """The first batch_size windows of the text: inputs (B, T) and targets shifted by one.
    A text too short for them raises DataError."""
    ids = np.array(tokenizer.encode(text, allowed_special={ENDOFTEXT}), dtype=np.int64)
    need = batch_size * context_length + 1
    if len(ids) < need:
        raise DataError(f"the text has {len(ids)} tokens; {batch_size} x {context_length} needs {need}: "
                        f"use a longer --data or a smaller --context-length")
    x = ids[:need - 1].reshape(batch_size, context_length)               # (B, T)
    y = ids[1:need].reshape(batch_size, context_length)                  # (B, T)
    return x, y
