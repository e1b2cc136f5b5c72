"""What `pretrain.py` adds for a prepared corpus (`--data DIR`) and for `mpirun -n N`.

The training loop is train.train_model, unchanged: a corpus is one long "epoch" of
--max-steps steps whose batches come from corpus.CorpusLoader; under MPI each process's
loaders yield its slice of every global batch, and distributed.DataParallel averages the
gradients. This module holds the flags, the checks and the loaders; run.py calls it.
"""
import math
import os
import sys
from pathlib import Path

from ... import corpus as C
from ... import distributed
from .. import UsageError

DEFAULT_MAX_STEPS = 1000


def add_arguments(p):
    g = p.add_argument_group("a prepared corpus (--data DIR, see examples/prepare_data.py)")
    g.add_argument("--order", choices=C.ORDERS, default=None,
                   help="random windows from a seeded generator, or the shards in order (default: random)")
    g.add_argument("--max-steps", type=int, default=None,
                   help=f"optimizer steps (default: {DEFAULT_MAX_STEPS}); with a text file: stop after this many "
                        "(the epochs it takes, unless --epochs is given; the lr schedule's length)")
    g.add_argument("--max-tokens", type=int, default=None,
                   help="train on this many tokens instead (rounded up to whole steps)")


def is_corpus(data):
    """--data names a directory (a prepared corpus, or a mistake open_run explains)."""
    return data is not None and Path(data).expanduser().is_dir()


class CorpusRun:
    def __init__(self, directory, manifest, streams):
        self.directory, self.manifest, self.streams = directory, manifest, streams

    @property
    def data_config(self):
        return {"path": str(self.directory), "corpus": True, "sha256": self.manifest["sha256"],
                "train_tokens": len(self.streams["train"]), "val_tokens": len(self.streams["val"])}

    @property
    def description(self):
        m = self.manifest
        return (f"Using the corpus {self.directory}: {len(self.streams['train']):,} train tokens in "
                f"{len(m['splits']['train']['shards'])} shards, {len(self.streams['val']):,} val tokens, "
                f"from {len(m.get('inputs', []))} files (memory-mapped)")

    def loaders(self, config, rank=0, world=1):
        """The training loader (config.max_steps steps) and the validation loader, each yielding
        this rank's rows. Each evaluation takes the same random windows from across its
        split (not the split's first windows, which would measure one document)."""
        train = C.CorpusLoader(self.streams["train"], config.batch_size, config.context_length, order=config.order,
                               rng=config.seed, num_batches=config.max_steps * config.accum_steps,
                               eval_seed=config.seed + 1, rank=rank, world=world)
        val = C.CorpusLoader(self.streams["val"], config.batch_size, config.context_length, order="random",
                             eval_seed=config.seed + 2, rank=rank, world=world)
        return train, val


def open_run(draft, explicit, ckpt):
    """--data DIR: open and check the corpus, settle --order/--max-steps (from the checkpoint
    on --resume) in `draft`, config.build_config's copy of the flags (`explicit`: the flags
    typed); returns a CorpusRun, or None when --data is not a directory."""
    if not is_corpus(draft.data):               # a text: --max-steps ends the run early (run.settle_epochs)
        if ckpt is not None and "max_steps" not in explicit:
            draft.max_steps = ckpt.config.get("run", {}).get("max_steps")
        if draft.max_steps is not None and (isinstance(draft.max_steps, bool) or not isinstance(draft.max_steps, int)
                                            or draft.max_steps < 1):
            raise UsageError(f"--max-steps {draft.max_steps} is out of range: it must be at least 1")
        for flag in ("order", "max_tokens"):
            if getattr(draft, flag) is not None:
                raise UsageError(f"--{flag.replace('_', '-')} needs --data DIR, a corpus prepared by "
                                  "examples/prepare_data.py")
        return None
    directory = Path(draft.data).expanduser().resolve()
    if not (directory / C.MANIFEST).is_file():
        raise UsageError(f"training text {directory} is a directory, not a corpus (no {C.MANIFEST}); fix: pass "
                          "a UTF-8 text file, or prepare a corpus there with examples/prepare_data.py INPUT... "
                          f"--out {directory}")
    try:
        manifest, streams = C.open_corpus(directory)
    except C.CorpusError as e:
        raise UsageError(str(e)) from None
    if ckpt is not None:
        saved = ckpt.config.get("data", {})
        if saved.get("sha256") not in (manifest["sha256"], manifest.get("manifest_sha256")):  # content; older: bytes
            raise UsageError(f"the corpus {directory} is not the one checkpoint {ckpt.path} was trained on "
                              f"({saved.get('path')}); fix: pass --data with that corpus")
        stored = ckpt.config.get("corpus", {})
        if draft.order is not None and draft.order != stored.get("order"):
            raise UsageError(f"--order {draft.order} conflicts with the checkpoint {ckpt.path}, trained with "
                              f"--order {stored.get('order')}; drop --order")
        draft.order = stored.get("order", "random")
        if draft.max_steps is None and draft.max_tokens is None:
            draft.max_steps = int(stored.get("max_steps", DEFAULT_MAX_STEPS))
    draft.order = draft.order or "random"
    if draft.max_steps is not None and draft.max_tokens is not None:
        raise UsageError("--max-steps and --max-tokens both given; pass one")
    if draft.max_tokens is not None:
        if draft.max_tokens < 1:
            raise UsageError(f"--max-tokens {draft.max_tokens} is out of range: it must be at least 1")
        draft.max_steps = math.ceil(draft.max_tokens / (draft.batch_size * draft.accum_steps * draft.context_length))
    draft.max_steps = DEFAULT_MAX_STEPS if draft.max_steps is None else draft.max_steps
    if draft.max_steps < 1:
        raise UsageError(f"--max-steps {draft.max_steps} is out of range: it must be at least 1")
    if ckpt is not None:
        done = int(ckpt.meta["train_state"]["global_step"]) + 1
        if draft.max_steps < done:
            raise UsageError(f"--max-steps {draft.max_steps} is below the {done} steps the checkpoint "
                              f"{ckpt.path} has taken; pass --max-steps {done} or more")
    if "epochs" in explicit and draft.epochs != 1:
        raise UsageError("--epochs has no meaning for a corpus (it has no epoch); use --max-steps or --max-tokens")
    draft.epochs = 1
    for split in C.SPLITS:
        if len(streams[split]) <= draft.context_length:
            raise UsageError(f"the corpus {directory} has {len(streams[split])} {split} tokens, one window "
                              f"needs {draft.context_length + 1}; fix: prepare more text or lower --context-length")
    val_windows = (len(streams["val"]) - 1) // draft.context_length
    if val_windows < draft.batch_size:
        raise UsageError(f"the corpus {directory}'s val split has {val_windows} windows of {draft.context_length} "
                          f"tokens, fewer than one batch of {draft.batch_size}; fix: prepare it with a larger "
                          "--val-fraction, or lower --batch-size")
    return CorpusRun(directory, manifest, streams)


def corpus_config(config):
    return {"order": config.order, "max_steps": config.max_steps}


def continue_finished_run(state, config):
    """A finished corpus run resumed with a larger --max-steps: back into its one "epoch"."""
    if state.epoch >= 1 and state.global_step + 1 < config.max_steps:
        state.epoch, state.order, state.batch = 0, [], (state.global_step + 1) * config.accum_steps
    return state


# ----------------------------------------------------------------------------- data parallel
def init_data_parallel():
    try:
        return distributed.init()
    except distributed.MPIUnavailable as e:
        raise UsageError(str(e)) from None


def check_data_parallel(draft, dp):
    """Batch divisible by the ranks; --threads per rank (default: this machine's cores
    shared out, settled in `draft`); a warning when ranks x threads exceed the cores."""
    if dp is None:
        return
    if draft.batch_size % dp.world:
        raise UsageError(f"--batch-size {draft.batch_size} is not divisible by the {dp.world} MPI ranks; "
                          f"fix: pass a multiple of {dp.world}")
    cores = os.cpu_count() or 1
    if draft.threads is None:
        draft.threads = max(1, cores // dp.local_world)
    elif draft.threads * dp.local_world > cores and dp.rank == 0:
        print(f"pretrain.py: warning: {dp.local_world} ranks x {draft.threads} threads on this machine exceed its "
              f"{cores} cores; the threads will compete (pass --threads {max(1, cores // dp.local_world)})",
              file=sys.stderr, flush=True)


def slice_loaders(train_loader, val_loader, dp):
    """The book's loaders under MPI: each rank its rows of every batch."""
    train = distributed.RankSlice(train_loader, dp.rank, dp.world)
    val = distributed.RankSlice(val_loader, dp.rank, dp.world)
    dp.val_sliced = val.even
    return train, val


def is_root(dp):
    """Rank 0 of an MPI job, or a plain process: the one that prints and writes."""
    return dp is None or dp.rank == 0
