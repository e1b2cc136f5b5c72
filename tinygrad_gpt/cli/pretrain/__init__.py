"""The pretrain command (`python examples/pretrain.py`), one module per part:

    flags.py    parsing, checking, and reconciling the flags with a resumed checkpoint
    config.py   RunConfig: the frozen run configuration, built once from the flags and the checkpoint
    corpus.py   what --data DIR (a prepared corpus) and `mpirun -n N` add
    saving.py   directories, checkpoints, signals, the final model, the run log (metrics.jsonl)
    run.py      the run itself, read top to bottom as the book's chapter-5 loop
"""
from .run import main, run  # noqa: F401
