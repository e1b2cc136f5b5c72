"""Redraw a pretrain run's loss plot from its metrics.jsonl, or overlay several runs.

    python examples/plot.py runs/pretrain
    python examples/plot.py runs/f32 runs/bf16 --out compare.png
"""
import sys

from tinygrad_gpt.cli.plot import main

if __name__ == "__main__":
    sys.exit(main())
