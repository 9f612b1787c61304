"""A dataset over in-memory arrays."""
from ..data_basic import Dataset


class NDArrayDataset(Dataset):
    """``dataset[i]`` is ``tuple(a[i] for a in arrays)``; all arrays share their first dim."""

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("NDArrayDataset: need at least one array")
        n = len(arrays[0])
        for k, a in enumerate(arrays):
            if len(a) != n:
                raise ValueError(f"NDArrayDataset: array {k} has length {len(a)}, array 0 has {n}")
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, i) -> object:
        return tuple(a[i] for a in self.arrays)
