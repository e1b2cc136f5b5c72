"""Data-parallel training over MPI: `mpirun -n N python examples/pretrain.py ...`.

Every rank holds the whole model and draws the same global batch of B rows; it keeps rows
rank*B/N ... (rank+1)*B/N - 1, computes its loss and gradients on them, and one Allreduce
per step sums the gradients of all ranks in a single flat float32 buffer (then * 1/N: the
mean of N slice means is the mean over the global batch, as one process computes it).
Every rank then takes the same AdamW step, so the models stay identical without ever
being sent. Evaluation losses are averaged the same way (one small Allreduce).

mpi4py is imported only when the process was started by mpirun with more than one rank
(`pip install -e ".[mpi]"` installs mpi4py and MPICH's wheel); a plain `python` run never
touches MPI.
"""
import os
import time

import numpy as np

# set by every MPI launcher we know: MPICH/hydra (PMI_*), Open MPI (OMPI_*), Slurm (PMIX_*)
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_SIZE")


def launched_world_size():
    """The number of ranks the launcher started (1 when not under mpirun), without MPI."""
    for var in _SIZE_VARS:
        try:
            return max(1, int(os.environ[var]))
        except (KeyError, ValueError):
            continue
    return 1


class MPIUnavailable(RuntimeError):
    pass


class DataParallel:
    """The ranks of one job, and the collectives a training step needs."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, comm
        self.rank, self.world = comm.Get_rank(), comm.Get_size()
        self.local = comm.Split_type(MPI.COMM_TYPE_SHARED)    # the ranks on this machine
        self.local_world = self.local.Get_size()
        self.buffer = None                                   # the flat gradient buffer
        self.views = None
        self.allreduce_seconds, self.steps = 0.0, 0
        self.val_sliced = True         # False when the validation batches are whole on every rank

    # ---- one step
    def _layout(self, params):
        """One preallocated float32 buffer, and each parameter's gradient as a view into it."""
        n = sum(p.data.size for p in params)
        self.buffer = np.zeros(n, dtype=np.float32)                       # (P,)
        self.views, off = [], 0
        for p in params:
            self.views.append(self.buffer[off:off + p.data.size].reshape(p.data.shape))
            off += p.data.size
        self.params_id = [id(p) for p in params]

    def reduce_step(self, params, loss, tokens):
        """Average the gradients over the ranks (one Allreduce); return the mean loss and the
        total tokens of the step. A rank whose loss is NaN makes every rank see NaN."""
        if self.buffer is None or self.params_id != [id(p) for p in params]:
            self._layout(params)
        for p, view in zip(params, self.views):    # pack (a parameter without a gradient adds 0)
            if p.grad is None:
                view.fill(0)
            else:
                np.copyto(view, p.grad)
        t0 = time.perf_counter()
        self.comm.Allreduce(self.MPI.IN_PLACE, self.buffer, op=self.MPI.SUM)
        pair = np.array([loss, tokens], dtype=np.float64)             # (2,)
        self.comm.Allreduce(self.MPI.IN_PLACE, pair, op=self.MPI.SUM)
        self.allreduce_seconds += time.perf_counter() - t0
        self.steps += 1
        self.buffer *= np.float32(1.0 / self.world)
        for p, view in zip(params, self.views):    # the optimizer reads the reduced views
            p.grad = view
        return float(pair[0]) / self.world, int(pair[1])

    def average(self, *values):
        """The mean of each float over the ranks."""
        out = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, out, op=self.MPI.SUM)
        return tuple(float(v) / self.world for v in out)

    def average_eval(self, train_loss, val_loss):
        """An evaluation's losses over the ranks' slices (val_loss as it is when unsliced)."""
        train_loss, mean_val = self.average(train_loss, val_loss)
        return train_loss, (mean_val if self.val_sliced else val_loss)

    def any_signal(self, signum):
        """The signal number if any rank received one (every rank then stops at the same step)."""
        got = self.comm.allreduce(int(signum or 0), op=self.MPI.MAX)
        return got or None

    def reseed_dropout(self, rng, seed, step):
        """Each rank's dropout masks for `step` from (seed, rank, step): different on every
        rank, and the same after a resume without saving N generator states."""
        rng.bit_generator.state = np.random.default_rng([seed, self.rank, step]).bit_generator.state

    def barrier(self):
        self.comm.Barrier()


def init():
    """A DataParallel when started by mpirun with N > 1 ranks, else None."""
    if launched_world_size() <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise MPIUnavailable("started by mpirun with several ranks, but mpi4py is not installed; "
                             "fix: pip install -e \".[mpi]\" (mpi4py and MPICH)") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() <= 1:
        return None
    return DataParallel(comm)


class RankSlice:
    """A DataLoader seen by one rank: every batch's rows rank*B/N ... (rank+1)*B/N - 1.

    The same interface (len, rng, epoch_order, iter_batches, iteration), so the training
    loop runs it unchanged. `even` says whether every batch splits evenly; when it does
    not (a short last batch), the whole batch is kept on every rank (evaluation only).
    """

    def __init__(self, loader, rank, world):
        self.loader, self.rank, self.world = loader, rank, world
        n = len(loader.dataset)
        full = loader.batch_size * (n // loader.batch_size)
        self.even = loader.batch_size % world == 0 and (loader.drop_last or full == n)

    def __len__(self):
        return len(self.loader)

    @property
    def rng(self):
        return self.loader.rng

    def _slice(self, batches):
        for x, y in batches:
            if self.even:
                b = len(x) // self.world
                x, y = x[self.rank * b:(self.rank + 1) * b], y[self.rank * b:(self.rank + 1) * b]
            yield x, y

    def epoch_order(self):
        return self.loader.epoch_order()

    def iter_batches(self, order, start=0):
        return self._slice(self.loader.iter_batches(order, start=start))

    def __iter__(self):
        return self._slice(iter(self.loader))
