"""A run's log: OUT/metrics.jsonl, one JSON record per evaluation, for people and plots.

    {"step": 5, "epoch": 1, "tokens_seen": 3072, "train_loss": 10.90..., "val_loss": 10.92...,
     "lr": 0.0004, "tokens_per_s": 461.2..., "elapsed": 6.65..., "precision": "float32"}

The numbers are the ones the "Ep 1 (Step 000005): Train loss 10.902, Val loss 10.921" line
prints, unrounded; elapsed counts training seconds since the run began (across resumes),
tokens_per_s is this session's. Each record is appended, flushed and fsync'ed as it is made,
so a killed run keeps every evaluation it printed. A resumed run first drops the records
after its checkpoint's step (the steps it will repeat), then appends: no step twice.

`python examples/plot.py RUN_DIR...` redraws the losses of one run or overlays several.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import fileio
from .fileio import atomic_write

METRICS_FILE = "metrics.jsonl"


def read_metrics(path) -> list:
    """The records of a metrics.jsonl (a run directory or the file itself), in order. A last
    line cut short by a kill is ignored; any other bad line raises ValueError naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if i == len(lines):                  # a record being written when the run was killed
                break
            raise ValueError(f"{path}, line {i}: not a JSON record") from None
    return records


class MetricsLog:
    """Appends records to path (metrics.jsonl). resume_step: the step of the checkpoint a
    resumed run starts from (records after it are dropped, elapsed continues from the last
    kept one); None for a new run, which starts an empty log. extra: fields every record gets
    (the run's precision)."""

    def __init__(self, path, resume_step=None, extra=None):
        self.path, self.extra, self.offset = Path(path), dict(extra or {}), 0.0
        kept = []
        if resume_step is not None and self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            if kept:
                self.offset = float(kept[-1].get("elapsed", 0.0))
        fileio.mkdir(self.path.parent, parents=True, exist_ok=True)
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode("utf-8"))   # kept, or empty

    def append(self, record: dict) -> None:
        record = {**record, "elapsed": record.get("elapsed", 0.0) + self.offset, **self.extra}
        with fileio.open_write(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            fileio.fsync(f, self.path)
