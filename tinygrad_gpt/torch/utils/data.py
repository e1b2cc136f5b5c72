"""torch.utils.data: Dataset, Subset and DataLoader over the engine's loader (data.py).

The book's datasets return one sample per index (a pair of (T,) tensors); the loader gathers
a batch of them and stacks each field, as torch's default collate does, then lets the
engine's DataLoader decide the order, the batches and drop_last.
"""
import numbers

import numpy as np

from ... import data as _engine
from ...tensor import Tensor
from .. import random as _random
from ..semantics import MissingFeature


class Dataset:
    """Subclass it and define __len__ and __getitem__(i), as in torch."""

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__")


class Subset(Dataset):
    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __getitem__(self, idx):
        return self.dataset[self.indices[idx]]

    def __len__(self):
        return len(self.indices)


def default_collate(samples):
    """Stack a list of samples field by field: tensors and arrays into one tensor with a new
    leading axis, numbers into a tensor, tuples and lists into lists, dicts by key."""
    first = samples[0]
    if isinstance(first, Tensor):
        return Tensor(np.stack([s.data for s in samples]))
    if isinstance(first, np.ndarray):
        return Tensor(np.stack(samples))
    if isinstance(first, bool):
        return Tensor(np.array(samples, dtype=bool))
    if isinstance(first, numbers.Integral):
        return Tensor(np.array(samples, dtype=np.int64))
    if isinstance(first, numbers.Real):
        return Tensor(np.array(samples, dtype=np.float64))      # torch collates floats as float64
    if isinstance(first, dict):
        return {k: default_collate([s[k] for s in samples]) for k in first}
    if isinstance(first, (tuple, list)):
        return [default_collate(list(field)) for field in zip(*samples)]
    raise MissingFeature(f"DataLoader: collating samples of type {type(first).__name__} is not implemented")


class DataLoader(_engine.DataLoader):
    """torch.utils.data.DataLoader(dataset, batch_size, shuffle, drop_last, num_workers, generator).

    The random numbers are PyTorch's and drawn when PyTorch draws them (torch/random.py): every
    iter(loader) takes one int64 (the workers' base seed) from `generator` or the default
    generator; with shuffle, the first batch takes one more from the default generator (when
    no generator is given), seeds a fresh generator with it and orders the epoch by its
    randperm; with a generator, the randperm is the generator's. So after the same
    torch.manual_seed the batches come in PyTorch's order. num_workers is accepted and the
    batches are made in this process: the same batches, without the worker processes."""

    def __init__(self, dataset, batch_size=1, shuffle=False, num_workers=0, collate_fn=None,
                 drop_last=False, generator=None, pin_memory=False, persistent_workers=False,
                 prefetch_factor=None, sampler=None, batch_sampler=None, worker_init_fn=None):
        if sampler is not None or batch_sampler is not None:
            raise MissingFeature("DataLoader(sampler=..., batch_sampler=...) is not implemented")
        if batch_size is None:
            raise MissingFeature("DataLoader(batch_size=None) is not implemented")
        super().__init__(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)
        self.generator, self.num_workers = generator, num_workers
        self.collate_fn = collate_fn or default_collate

    def epoch_order(self):
        """RandomSampler's order: the given generator's randperm, or a fresh generator's seeded
        by one int64 from the default generator."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        if self.generator is not None:
            return self.generator.randperm(n)
        seed = int(_random.default_generator.random_int64(1)[0])
        return _random.Generator(seed).randperm(n)

    def __iter__(self):
        (self.generator or _random.default_generator).random_int64(1)   # _BaseDataLoaderIter's base seed
        return self._epoch()

    def _epoch(self):                                  # the sampler draws at the first batch, as torch's
        yield from self.iter_batches(self.epoch_order())

    def iter_batches(self, order, start=0):
        """The engine's batching, with each batch gathered one sample at a time and collated."""
        for b in range(start, len(self)):
            ids = order[b * self.batch_size:(b + 1) * self.batch_size]     # (B,), the last may be short
            yield self.collate_fn([self.dataset[int(i)] for i in ids])


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingFeature(f"torch.utils.data.{name} is not implemented by tinygrad_gpt.torch "
                         f"(Dataset, Subset, DataLoader are)")
