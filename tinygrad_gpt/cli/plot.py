"""`python examples/plot.py RUN_DIR...`: the losses of finished (or running) pretrain runs,
drawn from each run's OUT/metrics.jsonl (tinygrad_gpt/runlog.py).

    python examples/plot.py runs/pretrain                      # redraws runs/pretrain/loss-plot.png
    python examples/plot.py runs/f32 runs/bf16 --out cmp.png   # two runs overlaid, e.g. float32 against bf16

One run: the book's plot (training and validation loss against epochs, tokens seen on top),
into RUN_DIR/loss-plot.png unless --out. Several: one color per run, training loss solid,
validation dashed, against tokens seen; each labelled with its directory's name and precision.
"""
import sys
from pathlib import Path

import numpy as np

from .. import fileio
from . import USAGE_ERROR, Formatter, Parser, UsageError


def build_parser():
    p = Parser(prog="plot.py", description=__doc__.split("\n\n")[0], formatter_class=Formatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="pretrain --out directories (or metrics.jsonl files)")
    p.add_argument("--out", default=None, metavar="PNG",
                   help="the image (default: RUN_DIR/loss-plot.png for one run, loss-runs.png for several)")
    return p


def read_runs(paths):
    """[(label, records)] for each run; a missing or empty log is a UsageError."""
    from ..runlog import METRICS_FILE, read_metrics
    runs = []
    for given in paths:
        path = Path(given).expanduser()
        log = path / METRICS_FILE if path.is_dir() else path
        if not log.is_file():
            raise UsageError(f"{given}: no {METRICS_FILE} (a pretrain run writes one into its --out)")
        try:
            records = read_metrics(log)
        except (OSError, ValueError) as e:
            raise UsageError(str(e)) from None
        if not records:
            raise UsageError(f"{log} has no evaluation yet")
        name = log.parent.name or str(log.parent)
        precisions = sorted({r.get("precision") for r in records if r.get("precision")})
        runs.append((f"{name} ({', '.join(precisions)})" if precisions else name, records))
    return runs


def plot_runs(runs, path):
    """Several runs on one axis: loss against tokens seen."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, records) in enumerate(runs):
        color = f"C{i % 10}"
        tokens = [r["tokens_seen"] for r in records]
        ax.plot(tokens, [r["train_loss"] for r in records], color=color, label=f"{label} train")
        ax.plot(tokens, [r["val_loss"] for r in records], color=color, linestyle="--", label=f"{label} val")
    ax.set_xlabel("Tokens seen")
    ax.set_ylabel("Loss")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    try:
        fileio.save_figure(fig, path)
    finally:
        plt.close(fig)
    return path


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        runs = read_runs(args.runs)
        if len(runs) == 1:
            from ..train import plot_losses
            records = runs[0][1]
            out = args.out or str(Path(args.runs[0]).expanduser() / "loss-plot.png"
                                  if Path(args.runs[0]).expanduser().is_dir() else "loss-plot.png")
            epochs = records[-1]["epoch"]
            path = plot_losses(np.linspace(0, epochs, len(records)), [r["tokens_seen"] for r in records],
                               [r["train_loss"] for r in records], [r["val_loss"] for r in records], out)
        else:
            path = plot_runs(runs, args.out or "loss-runs.png")
    except UsageError as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as e:
        print(f"plot.py: error: cannot save the plot ({e.strerror or e}); fix: pass another --out", file=sys.stderr)
        return USAGE_ERROR
    print(f"Loss plot saved to {path}")
    return 0
