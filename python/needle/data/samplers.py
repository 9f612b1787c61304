"""DistributedSampler: each rank's share of a dataset, for ``DataLoader(sampler=...)``."""
import math

import numpy as np


class DistributedSampler:
    """The indices of rank ``rank``'s shard of ``dataset``, as PyTorch's sampler gives them.

    With ``shuffle`` every epoch's order is a permutation drawn from
    ``RandomState(seed + epoch)`` (the same on every rank, independent of the global numpy
    RNG); call ``set_epoch(epoch)`` before each epoch to draw a new one. The order is
    padded with its own first indices to a multiple of ``num_replicas`` (or, with
    ``drop_last``, cut to one), and rank r takes every ``num_replicas``-th index from
    position r: shards are disjoint apart from the padding, cover the dataset, and have
    equal lengths, so every rank runs the same number of steps.
    ``num_replicas``/``rank`` default to ``needle.distributed.world_size()``/``rank()``.
    """

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0,
                 drop_last=False):
        if num_replicas is None or rank is None:
            from .. import distributed
            num_replicas = distributed.world_size() if num_replicas is None else num_replicas
            rank = distributed.rank() if rank is None else rank
        for name, value in (("num_replicas", num_replicas), ("rank", rank), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"DistributedSampler: {name} must be an int, got {value!r}")
        if num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"DistributedSampler: rank must be in [0, {num_replicas}), got {rank}")
        self.dataset = dataset
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        n = len(dataset)
        # drop_last cuts the tail that does not fill a round; otherwise the tail is padded.
        self.num_samples = n // self.num_replicas if self.drop_last else math.ceil(n / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch):
        """Choose the epoch whose permutation ``__iter__`` gives (every rank alike)."""
        self.epoch = int(epoch)

    def indices(self):
        """This rank's indices for the current epoch, an int64 array."""
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.RandomState(self.seed + self.epoch).permutation(n)
        else:
            order = np.arange(n)
        if self.total_size > n:  # pad by repeating the order (PyTorch's rule)
            order = np.resize(order, self.total_size) if n else order
        order = order[:self.total_size]
        return order[self.rank:self.total_size:self.num_replicas].astype(np.int64)

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return self.num_samples
