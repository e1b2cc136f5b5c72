"""Data parallel on one machine: 1 rank x 2 threads against 2 ranks x 1 thread.

Prepares a corpus from the bundled sample story, then trains the same model for --steps
steps both ways (same global batch, dropout 0), alternating, --rounds times, and prints
the medians of the training tokens/s (the Summary line: the steps, the one evaluation at
step 0 and the final sample) and of the seconds per step spent in the Allreduce (the
gradient buffer's, timed on rank 0; with two ranks it includes waiting for the slower one).

    flock /tmp/bench.lock python benchmarks/bench_data_parallel.py --model tiny
    flock /tmp/bench.lock python benchmarks/bench_data_parallel.py --model 124M --steps 6 --batch-size 2
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common as bench  # benchmarks/common.py: paths, the machine line

REPO = bench.REPO


def mpirun():
    here = Path(sys.executable).parent / "mpirun"
    found = str(here) if here.exists() else shutil.which("mpirun")
    if not found:
        raise SystemExit("no mpirun: pip install -e '.[mpi]'")
    version = subprocess.run([found, "--version"], capture_output=True, text=True).stdout
    return [found, *(["--allow-run-as-root", "--oversubscribe"] if "Open MPI" in version else [])]


def run(cmd, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO), PATH=os.pathsep.join([str(Path(sys.executable).parent),
                                                                         os.environ.get("PATH", "")]))
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stdout[-2000:] + r.stderr[-2000:])
    tps = float(re.search(r"([\d,]+) tokens/s", r.stdout).group(1).replace(",", ""))
    m = re.search(r"Allreduce: ([\d.]+) s per step .*\(([\d.]+) MB", r.stdout)
    steps = re.search(r"(\d+) steps, ([\d,]+) tokens, ([\d.]+) s", r.stdout)
    return tps, float(m.group(1)) if m else 0.0, float(m.group(2)) if m else 0.0, float(steps.group(3))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--context-length", type=int, default=None, help="default: 64 (tiny) or 256")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    T = args.context_length or (64 if args.model == "tiny" else 256)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dp-"))
    print(bench.cpu_line())
    print(bench.runtime_line())
    try:
        story = (REPO / "tinygrad_gpt" / "data" / "sample_story.txt").read_text(encoding="utf-8")
        words = story.split()
        for i in range(8):
            (tmp / f"part{i}.txt").write_text(" ".join(words[i * len(words) // 8:(i + 1) * len(words) // 8]))
        subprocess.run([sys.executable, str(REPO / "examples" / "prepare_data.py"), str(tmp), "--out",
                        str(tmp / "corpus"), "--val-fraction", "0.3"], check=True, capture_output=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
        common = ["--data", str(tmp / "corpus"), "--model", args.model, "--context-length", str(T),
                  "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--eval-freq",
                  str(10 ** 6), "--eval-iter", "1", "--drop-rate", "0", "--no-plot", "--out", str(tmp / "out"),
                  "--precision", "float32"]       # as RESULTS.md's table was run (auto is bf16 on some CPUs)
        script = [sys.executable, str(REPO / "examples" / "pretrain.py")]
        results = {"1 rank x 2 threads": [], "2 ranks x 1 thread": []}
        for _ in range(args.rounds):
            results["1 rank x 2 threads"].append(run([*script, *common, "--threads", "2"], tmp))
            results["2 ranks x 1 thread"].append(run([*mpirun(), "-n", "2", *script, *common, "--threads", "1"], tmp))
        print(f"\n{args.model}, context {T}, global batch {args.batch_size}, {args.steps} steps, "
              f"{args.rounds} rounds alternating, medians\n")
        print("| layout | tokens/s | Allreduce s/step | gradient buffer (MB) | run (s) |")
        print("|---|---|---|---|---|")
        med = {}
        for name, rs in results.items():
            med[name] = [statistics.median(r[i] for r in rs) for i in range(4)]
            tps, ar, mb, secs = med[name]
            print(f"| {name} | {tps:,.0f} | {ar:.4f} | {mb:.1f} | {secs:.1f} |")
        a, b = med["1 rank x 2 threads"][0], med["2 ranks x 1 thread"][0]
        print(f"\n2 ranks / 1 rank tokens/s: {b / a:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
