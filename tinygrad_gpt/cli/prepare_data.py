"""`python examples/prepare_data.py INPUT... --out DIR`: tokenize text files into a corpus.

INPUT is a text file (any name), a directory (its files ending in --ext, recursively) or a
glob ("books/**/*.txt"). Every file is one document: GPT-2 BPE tokens, then <|endoftext|>.
Documents go to the training or the validation split whole (the first to training, then
whichever split is behind --val-fraction of the tokens so far); a single input file is split
by tokens instead, its last --val-fraction validating, as the book splits its one story.
The corpus format is documented in tinygrad_gpt/corpus.py.
"""
import argparse
import datetime
import fnmatch
import glob
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from .. import corpus as C
from .. import fileio
from ..fileio import fsync_dir, is_disk_full
from . import USAGE_ERROR, Formatter, Parser, UsageError

DEFAULT_EXT = ".txt"
BATCH_BYTES = 8 << 20          # text tokenized per encode_ordinary_batch call


class _Formatter(Formatter):
    def _get_help_string(self, action):        # --exclude's empty list too
        if action.default == []:
            return action.help
        return super()._get_help_string(action)


def build_parser():
    p = Parser(prog="prepare_data.py", description=__doc__, formatter_class=_Formatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="text files, directories or globs")
    p.add_argument("--out", required=True, metavar="DIR", help="the corpus directory")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of the tokens that validate")
    p.add_argument("--ext", default=DEFAULT_EXT,
                   help="comma-separated file endings taken from directories, e.g. .txt,.md,.py")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="leave out files under directories whose path or a part of it matches GLOB "
                        "(e.g. site-packages, 'test*'); repeatable")
    p.add_argument("--shard-tokens", type=int, default=C.DEFAULT_SHARD_TOKENS, help="tokens per shard")
    p.add_argument("--threads", type=int, default=None, help="tokenizer threads (default: all cores)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip files that are binary or not UTF-8 (default: stop with an error)")
    p.add_argument("--force", action="store_true", help="prepare again even if DIR is up to date")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    return p


# ----------------------------------------------------------------------------- inputs
def _excluded(rel, patterns):
    return any(fnmatch.fnmatch(str(rel), pat) or any(fnmatch.fnmatch(part, pat) for part in rel.parts)
               for pat in patterns)


def expand_inputs(inputs, exts, exclude=(), passed_over=None):
    """The input files, in a stable order, each once. passed_over (a dict, when given) counts
    the files of the input directories that were left out, by reason: "ext" (not ending in
    one of exts), "hidden" (under a dot-name), "exclude" (matching --exclude)."""
    files, seen = [], set()
    passed_over = {} if passed_over is None else passed_over

    def add(path):
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            files.append(Path(path))

    for arg in inputs:
        p = Path(arg).expanduser()
        if p.is_file():
            add(p)
        elif p.is_dir():
            found = []
            for f in sorted(f for f in p.rglob("*") if f.is_file()):
                rel = f.relative_to(p)
                why = ("hidden" if any(part.startswith(".") for part in rel.parts)
                       else "ext" if not f.name.endswith(exts)
                       else "exclude" if _excluded(rel, exclude) else None)
                if why is None:
                    found.append(f)
                else:
                    passed_over[why] = passed_over.get(why, 0) + 1
                    if why == "ext":                   # which endings, for the hint
                        endings = passed_over.setdefault("endings", {})
                        endings[f.suffix or f.name] = endings.get(f.suffix or f.name, 0) + 1
            if not found:
                raise C.CorpusError(f"directory {p} has no file ending in {', '.join(exts)}; fix: pass "
                                    "--ext with the endings its text files have")
            for f in found:
                add(f)
        elif glob.has_magic(arg):
            found = sorted(Path(f) for f in glob.glob(os.path.expanduser(arg), recursive=True) if Path(f).is_file())
            if not found:
                raise C.CorpusError(f"glob {arg!r} matches no file; fix: check the pattern (quote it so "
                                    "the shell does not expand it first)")
            for f in found:
                add(f)
        else:
            raise C.CorpusError(f"input {p} does not exist; fix: pass text files, directories or globs")
    if not files:
        raise C.CorpusError("no input files; fix: pass text files, directories or globs")
    return files


def passed_over_line(passed_over, exts):
    """"120 files skipped: not .txt (97 .py, 23 .md); use --ext .txt,.py to take the .py files
    too" (from the counts expand_inputs made)."""
    reasons = [k for k in ("ext", "hidden", "exclude") if k in passed_over]
    n = sum(passed_over[k] for k in reasons)
    endings = sorted(passed_over.get("endings", {}).items(), key=lambda kv: (-kv[1], kv[0]))
    why = {"ext": f"not {' or '.join(exts)}" + (f" ({', '.join(f'{c} {e}' for e, c in endings[:3])}"
                                                 f"{', ...' if len(endings) > 3 else ''})" if endings else ""),
           "hidden": "under a hidden (dot) name", "exclude": "matched --exclude"}
    parts = [why[k] if len(reasons) == 1 else f"{passed_over[k]} {why[k]}" for k in reasons]
    top = next((e for e, _ in endings if e.startswith(".")), None)
    hint = f"; use --ext {','.join(exts)},{top} to take the {top} files too" if top else ""
    return f"{n} file{'s' if n != 1 else ''} skipped: {', '.join(parts)}{hint}"


def decode_document(path, raw):
    """The text of one input, or a CorpusError naming why it is not text."""
    if b"\x00" in raw:
        raise C.CorpusError(f"input {path} looks binary (it contains NUL bytes); fix: remove it from the "
                            "inputs, or pass --skip-bad")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise C.CorpusError(f"input {path} is not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                            "fix: convert it (iconv -f LATIN1 -t UTF-8), or pass --skip-bad") from None


def check_out_dir(out):
    """DIR must be a directory we can write in (created if missing)."""
    d = Path(out).expanduser()
    if d.exists() and not d.is_dir():
        raise C.CorpusError(f"--out {d} is a file, not a directory; fix: pass a directory path")
    try:
        fileio.mkdir(d, parents=True, exist_ok=True)
        probe = d / f".probe.{os.getpid()}.tmp"
        fileio.open_write(probe, "wb").close()
        probe.unlink()
    except OSError as e:
        raise C.CorpusError(f"--out {d} is not writable ({e.strerror}); fix: choose a directory you can "
                            "write to") from None
    return d


JOURNAL = ".prepare_data.journal"               # the shard names an unfinished run has started


def ours(d):
    """The shard names a previous run of ours wrote in d: its manifest's and its journal's."""
    names = set()
    try:
        m = C.read_manifest(d)
        names.update(s["name"] for split in C.SPLITS for s in m["splits"][split]["shards"])
    except C.CorpusError:
        pass
    try:
        names.update(n for n in (d / JOURNAL).read_text(encoding="utf-8").split() if C._SHARD_NAME.match(n))
    except (OSError, UnicodeDecodeError):
        pass
    return names


def check_nothing_foreign(d):
    """Refuse, before anything is written, a DIR holding shard-named files that no manifest or
    journal of ours lists: they are someone else's, and this run would replace them."""
    listed = ours(d)
    foreign = sorted(f.name for f in d.iterdir() if C._SHARD_NAME.match(f.name) and f.name not in listed)
    if foreign:
        raise C.CorpusError(f"--out {d} holds {foreign[0]}{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}, "
                            "which no manifest of prepare_data lists; fix: pick an empty --out, or move those files")


def clean_out_dir(d):
    """Remove a previous or interrupted run's files: the shards its manifest or journal lists,
    fileio's temporary files of ours; nothing else."""
    listed = ours(d)
    (d / C.MANIFEST).unlink(missing_ok=True)     # first: from here on, d is no corpus
    for f in d.iterdir():
        if f.name in listed or (C.is_leftover(f.name) and f.is_file()):
            f.unlink(missing_ok=True)
    (d / JOURNAL).unlink(missing_ok=True)
    fsync_dir(d)


def journal(d, name):
    """Note a shard's name before any file gets it: a killed run's shards are ours to remove."""
    with fileio.open_write(d / JOURNAL, "a", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        fileio.fsync(f, d / JOURNAL)


def _settings(args):
    return {"val_fraction": args.val_fraction, "shard_tokens": args.shard_tokens}


def up_to_date(d, files, args):
    """A complete corpus in d made from these very files (sizes and mtimes) and settings."""
    try:
        m = C.read_manifest(d)
        C.open_corpus(d)
    except C.CorpusError:
        return None
    if m.get("settings") != _settings(args):
        return None
    listed = [(i["path"], i["bytes"], i.get("mtime_ns")) for i in m.get("inputs", [])]
    here = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return m if listed == here else None


# ----------------------------------------------------------------------------- progress
class _Progress:
    """tqdm over the input bytes (MB/s), with files and tokens in its postfix."""

    def __init__(self, total_bytes, n_files, enabled):
        self.bar = None
        self.n_files = n_files
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000,
                            desc="tokenizing", file=sys.stderr, dynamic_ncols=True)

    def update(self, n_bytes, files_done, tokens):
        if self.bar is not None:
            self.bar.update(n_bytes)
            self.bar.set_postfix_str(f"files {files_done}/{self.n_files}, tokens {tokens:,}", refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- the run
class _SplitWriter:
    """The shards of one split: a new one every shard_tokens tokens."""

    def __init__(self, d, split, shard_tokens):
        self.d, self.split, self.shard_tokens = d, split, shard_tokens
        self.shards, self.tokens, self.documents, self.w = [], 0, 0, None

    def write(self, tokens):                    # tokens: (n,) uint16
        while len(tokens):
            if self.w is None:
                journal(self.d, C.shard_name(self.split, len(self.shards)))
                self.w = C.ShardWriter(self.d, C.shard_name(self.split, len(self.shards)))
            take = min(len(tokens), self.shard_tokens - self.w.tokens)
            self.w.write(tokens[:take])
            tokens = tokens[take:]
            self.tokens += take
            if self.w.tokens == self.shard_tokens:
                self.shards.append(self.w.close())
                self.w = None

    def close(self):
        if self.w is not None and self.w.tokens:
            self.shards.append(self.w.close())
        elif self.w is not None:
            self.w.abort()
        self.w = None

    def abort(self):
        if self.w is not None:
            self.w.abort()


def prepare(args):
    exts = tuple(e if e.startswith(".") else "." + e for e in args.ext.split(",") if e)
    if not 0 < args.val_fraction < 1:
        raise C.CorpusError(f"--val-fraction {args.val_fraction} is out of range: it must be in (0, 1)")
    if not 1 <= args.shard_tokens < 2 ** 31:        # the shard header counts tokens in an int32
        raise C.CorpusError(f"--shard-tokens {args.shard_tokens} is out of range: it must be in [1, 2**31)")
    if args.threads is not None and args.threads < 1:
        raise C.CorpusError(f"--threads {args.threads} is out of range: it must be at least 1")
    passed_over = {}
    files = expand_inputs(args.inputs, exts, args.exclude, passed_over)
    if passed_over:
        print(passed_over_line(passed_over, exts), flush=True)
    d = check_out_dir(args.out)
    if not args.force:
        m = up_to_date(d, files, args)
        if m is not None:
            print(f"{d} is up to date ({m['splits']['train']['tokens']:,} train and "
                  f"{m['splits']['val']['tokens']:,} val tokens from {len(files)} files); --force prepares it again")
            return 0
    check_nothing_foreign(d)
    clean_out_dir(d)
    from ..tokenizer import get_gpt2_tokenizer
    enc = get_gpt2_tokenizer()
    threads = args.threads or os.cpu_count() or 1
    sizes = [f.stat().st_size for f in files]
    progress = _Progress(sum(sizes), len(files), sys.stderr.isatty() if args.progress is None else args.progress)
    writers = {s: _SplitWriter(d, s, args.shard_tokens) for s in C.SPLITS}
    inputs, skipped, done_files = [], [], 0
    single = len(files) == 1
    start = time.perf_counter()
    eot = np.array([C.ENDOFTEXT_ID], dtype=np.uint16)
    try:
        i = 0
        while i < len(files):
            batch, texts, n_bytes = [], [], 0      # read about BATCH_BYTES of text
            while i < len(files) and (not batch or n_bytes + sizes[i] <= BATCH_BYTES):
                raw = files[i].read_bytes()
                try:
                    text = decode_document(files[i], raw)
                except C.CorpusError:
                    if not args.skip_bad:
                        raise
                    skipped.append(str(files[i].resolve()))
                    text = None
                if text is not None:
                    batch.append((files[i], raw))
                    texts.append(text)
                n_bytes += sizes[i]
                i += 1
            encoded = enc.encode_ordinary_batch(texts, num_threads=threads)
            n_tokens = 0
            for (path, raw), ids in zip(batch, encoded):
                toks = np.empty(len(ids) + 1, dtype=np.uint16)                     # (n + 1,)
                toks[:-1] = ids
                toks[-1:] = eot
                entry = {"path": str(path.resolve()), "bytes": len(raw), "mtime_ns": path.stat().st_mtime_ns,
                         "sha256": hashlib.sha256(raw).hexdigest(), "tokens": len(toks)}
                if single:                       # the book's split of one text, by tokens
                    cut = len(toks) - int(round(args.val_fraction * len(toks)))
                    writers["train"].write(toks[:cut])
                    writers["val"].write(toks[cut:])
                    entry["split"] = "train+val"
                    writers["train"].documents += 1
                else:
                    tr, va = writers["train"].tokens, writers["val"].tokens
                    split = "val" if tr and va < args.val_fraction * (tr + va) else "train"
                    writers[split].write(toks)
                    writers[split].documents += 1
                    entry["split"] = split
                inputs.append(entry)
                n_tokens += len(toks)
            done_files = i
            progress.update(n_bytes, done_files, writers["train"].tokens + writers["val"].tokens)
        for w in writers.values():
            w.close()
    except BaseException:
        progress.close()
        for w in writers.values():
            w.abort()
        clean_out_dir(d)                          # no half corpus: the next run starts clean
        raise
    progress.close()
    seconds = time.perf_counter() - start
    for split in C.SPLITS:
        if writers[split].tokens == 0:
            clean_out_dir(d)
            raise C.CorpusError(f"the {split} split is empty (inputs too few or too small); fix: pass more "
                                "text, or another --val-fraction")
    total_bytes = sum(e["bytes"] for e in inputs)
    manifest = {"format": C.FORMAT, "version": C.VERSION,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "tool": "tinygrad_gpt prepare_data.py", "tokenizer": C.tokenizer_info(),
                "shard_format": "llm.c: 256 int32 header (magic 20240520, version 1, token count), "
                                "then uint16 little-endian tokens",
                "settings": _settings(args),
                "tokens": writers["train"].tokens + writers["val"].tokens,
                "splits": {s: {"tokens": w.tokens, "documents": w.documents, "shards": w.shards}
                           for s, w in writers.items()},
                "inputs": inputs, "skipped": skipped,
                "prepare_seconds": round(seconds, 3)}
    C.write_manifest(d, manifest)
    (d / JOURNAL).unlink(missing_ok=True)       # the manifest lists them now
    mb = total_bytes / 1e6
    print(f"{d}: {manifest['tokens']:,} tokens ({writers['train'].tokens:,} train in "
          f"{len(writers['train'].shards)} shards, {writers['val'].tokens:,} val) from "
          f"{len(manifest['inputs'])} files, {mb:.1f} MB in {seconds:.1f} s ({mb / max(seconds, 1e-9):.2f} MB/s, "
          f"{threads} threads)" + (f"; skipped {len(skipped)} binary or non-UTF-8 files" if skipped else ""))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return prepare(build_parser().parse_args(argv))
    except (C.CorpusError, UsageError) as e:
        print(f"prepare_data.py: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as e:                         # a full disk, an I/O error: the half corpus is gone
        if is_disk_full(e):
            msg = (f"disk full while writing {e.filename or 'the corpus'}; nothing was kept (no manifest); "
                   "fix: free some space, or pass another --out")
        else:
            msg = f"{e.filename or 'a file'}: {e.strerror or e}; nothing was kept (no manifest)"
        print(f"prepare_data.py: error: {msg}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("prepare_data.py: interrupted (nothing kept; run it again)", file=sys.stderr)
        return 130
