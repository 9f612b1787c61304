"""Dataset and DataLoader (course semantics: numpy global RNG, one permutation per epoch)."""
from typing import List, Optional

import numpy as np

from ..autograd import Tensor


class Dataset:
    """Abstract dataset: subclasses implement ``__getitem__`` and ``__len__``."""

    def __init__(self, transforms: Optional[List] = None):
        self.transforms = transforms

    def __getitem__(self, index) -> object:
        raise NotImplementedError(f"{type(self).__name__} does not implement __getitem__")

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} does not implement __len__")

    def apply_transforms(self, x):
        if self.transforms is not None:
            for tform in self.transforms:
                x = tform(x)
        return x


class DataLoader:
    """Iterates over a dataset in mini-batches of Tensors (one per dataset field).

    Without shuffle the batches are ``np.array_split(np.arange(N), range(bs, N, bs))``.
    With shuffle, each ``iter()`` draws exactly one ``np.random.permutation(N)``.
    With a ``sampler`` (e.g. ``DistributedSampler``), each ``iter()`` batches the indices
    the sampler yields, in its order (PyTorch's rule: not together with shuffle).
    """

    def __init__(self, dataset: Dataset, batch_size: Optional[int] = 1, shuffle: bool = False,
                 device=None, dtype=None, sampler=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size <= 0:
            raise ValueError(f"DataLoader: batch_size must be a positive int, got {batch_size!r}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler and shuffle=True exclude each other "
                             "(the sampler decides the order; DistributedSampler shuffles itself)")
        self.dataset = dataset
        self.sampler = sampler
        self.shuffle = shuffle
        self.batch_size = int(batch_size)
        self.device = device
        self.dtype = dtype
        self.ordering = self._split(self._sampled() if sampler is not None else np.arange(len(dataset)))

    def _split(self, order):
        # An empty dataset has no batches (array_split would give one empty batch).
        n = len(order)
        return np.array_split(order, range(self.batch_size, n, self.batch_size)) if n else []

    def _sampled(self):
        return np.fromiter(iter(self.sampler), dtype=np.int64)

    def __len__(self):
        return len(self.ordering)

    def __iter__(self):
        n = len(self.dataset)
        if self.sampler is not None:
            self.ordering = self._split(self._sampled())
        else:
            self.ordering = self._split(np.random.permutation(n) if self.shuffle else np.arange(n))
        self._batch = 0
        return self

    def __next__(self):
        if self._batch >= len(self.ordering):
            raise StopIteration
        idx = self.ordering[self._batch]
        self._batch += 1
        fields = self.dataset[idx]
        if not isinstance(fields, tuple):
            fields = (fields,)
        kwargs = {"device": self.device}
        if self.dtype is not None:
            kwargs["dtype"] = self.dtype
        return tuple(Tensor(np.asarray(f), requires_grad=False, **kwargs) for f in fields)
