"""Resident memory of `pretrain.py --data DIR` does not grow with the corpus.

Writes two synthetic corpora of random GPT-2 token IDs in the corpus format (a small one
and one of --gb gigabytes; tokenizing gigabytes of text would take an hour here, and the
loader never looks at how the tokens were made), trains the same tiny model for --steps
steps from each with random windows, and prints each run's peak resident memory, sampled
from /proc/PID/status every 50 ms: VmRSS, and its two parts, RssAnon (the process's own
memory) and RssFile (pages of mapped files, the shards among them, which the kernel can
drop at any time). Not ru_maxrss: for a child it includes the parent's size at the fork.

    flock /tmp/bench.lock python benchmarks/bench_corpus_memory.py --gb 4
"""
import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import common as bench  # benchmarks/common.py: paths, the machine line, the timer

from tinygrad_gpt import corpus as C  # noqa: E402

REPO = bench.REPO


def cpu_line():
    return f"{bench.cpu_line()}; Python {platform.python_version()}, numpy {np.__version__}"


def synthetic_corpus(directory, train_tokens, val_tokens=100_000, shard_tokens=C.DEFAULT_SHARD_TOKENS, seed=0):
    """A corpus of random token IDs, written shard by shard in 16M-token chunks."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, total in (("train", train_tokens), ("val", val_tokens)):
        shards, left, i = [], total, 0
        while left:
            n = min(left, shard_tokens)
            w = C.ShardWriter(d, C.shard_name(split, i))
            done = 0
            while done < n:
                k = min(n - done, 1 << 24)
                w.write(rng.integers(0, 50257, size=k, dtype=np.uint16))    # (k,)
                done += k
            shards.append(w.close())
            left -= n
            i += 1
        splits[split] = {"tokens": total, "documents": 1, "shards": shards}
    C.write_manifest(d, {"format": C.FORMAT, "version": C.VERSION, "tool": "bench_corpus_memory.py (synthetic)",
                         "tokenizer": C.tokenizer_info(), "settings": {}, "tokens": train_tokens + val_tokens,
                         "splits": splits, "inputs": []})
    return d


def train(corpus, steps, out):
    cmd = [sys.executable, str(REPO / "examples" / "pretrain.py"), "--data", str(corpus), "--model", "tiny",
           "--context-length", "64", "--batch-size", "8", "--max-steps", str(steps), "--eval-freq", str(steps),
           "--eval-iter", "2", "--no-plot", "--threads", "2", "--out", str(out),
           "--precision", "float32"]            # as RESULTS.md's table was run (auto is bf16 on some CPUs)
    t0 = bench.now()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    while proc.poll() is None:                  # sample the child's own memory (kB), after its exec
        try:
            for line in open(f"/proc/{proc.pid}/status"):
                key = line.split(":")[0]
                if key in peak:
                    peak[key] = max(peak[key], int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    reader.join()
    output = "".join(lines)
    if proc.returncode != 0:
        raise SystemExit(output[-3000:])
    m = re.search(r"([\d,]+) tokens/s", output)
    return {k: v / 1024 for k, v in peak.items()}, bench.now() - t0, m.group(1) if m else "?"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=4.0, help="size of the large corpus's train split")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--dir", default=None, help="where to write the corpora (default: a temp dir, removed)")
    args = p.parse_args()
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-corpus-"))
    print(cpu_line())
    print(bench.runtime_line())
    try:
        rows = []
        for name, tokens in (("small", 1_000_000), ("large", int(args.gb * 1e9 / 2))):
            t0 = bench.now()
            d = synthetic_corpus(root / name, tokens)
            size = sum(f.stat().st_size for f in d.iterdir()) / 1e9
            made = bench.now() - t0
            rss, secs, tps = train(d, args.steps, root / f"run-{name}")
            rows.append((name, tokens, size, made, rss, secs, tps))
            shutil.rmtree(d)
        print(f"\ntiny model, context 64, batch 8, random windows, {args.steps} steps, 2 threads\n")
        print("| corpus | train tokens | on disk (GB) | written in (s) | peak VmRSS (MiB) | RssAnon | RssFile "
              "| run (s) | tokens/s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, tokens, size, made, rss, secs, tps in rows:
            print(f"| {name} | {tokens:,} | {size:.2f} | {made:.1f} | {rss['VmRSS']:.0f} | {rss['RssAnon']:.0f} | "
                  f"{rss['RssFile']:.0f} | {secs:.1f} | {tps} |")
        for key in ("VmRSS", "RssAnon", "RssFile"):
            print(f"peak {key} large / small: {rows[1][4][key] / rows[0][4][key]:.3f}")
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
