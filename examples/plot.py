"""Redraw a pretrain run's loss plot from its metrics.jsonl, or overlay several runs.

    python examples/plot.py runs/pretrain
    python examples/plot.py runs/f32 runs/bf16 --out compare.png
"""
import sys

try:
    from tinygrad_gpt.cli.plot import main
except KeyboardInterrupt:                # Ctrl-C while the libraries load: quietly, 130
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
