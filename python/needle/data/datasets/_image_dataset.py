"""Shared indexing of the in-memory image datasets (MNIST, CIFAR-10)."""
import numpy as np

from ..data_basic import Dataset


class ImageDataset(Dataset):
    """Images ``self.X`` (N, ...) and labels ``self.y`` (N,), set by the subclass.

    ``dataset[i]`` -> (X[i], y[i]); ``dataset[slice or index array]`` -> (X (k, ...), y (k,)).
    With transforms, every image goes through ``_transform`` (the subclass's conversion to
    H x W x C and back), one image at a time in index order.
    """

    def _transform(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not implement _transform")

    def __getitem__(self, index) -> object:
        X, y = self.X[index], self.y[index]
        if self.transforms:
            if X.ndim == self.X.ndim - 1:          # a single image
                X = self._transform(X)
            else:
                X = np.stack([self._transform(x) for x in X]) if len(X) else X
        return X, y

    def __len__(self) -> int:
        return self.X.shape[0]
