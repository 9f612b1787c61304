"""MNIST in the original idx format (gzip), with header validation."""
import gzip
import os
import struct
from typing import List, Optional

import numpy as np

from ._image_dataset import ImageDataset
from ._download import ensure_files

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049


def _ensure(*paths):
    """Fetch (or report) every missing file at once, grouped by folder."""
    by_folder = {}
    for path in paths:
        if not os.path.isfile(path):
            by_folder.setdefault(os.path.dirname(path) or ".", []).append(os.path.basename(path))
    for folder, names in by_folder.items():
        ensure_files("MNIST", folder, names,
                     {n: MNIST_URL + n for n in names if n in MNIST_FILES})


def _read_gz(path):
    _ensure(path)
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"MNIST: {path!r} is not a readable gzip file ({e})") from None


def _check_magic(raw, path, expected, what):
    if len(raw) < 4:
        raise ValueError(f"MNIST: {path!r} is too short ({len(raw)} bytes) for an idx header")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expected:
        raise ValueError(f"MNIST: {path!r} has magic number {magic}, expected {expected} ({what})")


def read_idx_images(path) -> np.ndarray:
    """(N, rows*cols) uint8 from an idx3 image file; raises ValueError on a bad header/size."""
    raw = _read_gz(path)
    _check_magic(raw, path, _IMAGES_MAGIC, "idx3 images")
    if len(raw) < 16:
        raise ValueError(f"MNIST: {path!r} is too short ({len(raw)} bytes) for an idx3 header")
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    expected = 16 + n * rows * cols
    if len(raw) != expected:
        raise ValueError(f"MNIST: {path!r} header says {n} images of {rows}x{cols} "
                         f"({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows * cols)


def read_idx_labels(path) -> np.ndarray:
    """(N,) uint8 from an idx1 label file; raises ValueError on a bad header/size."""
    raw = _read_gz(path)
    _check_magic(raw, path, _LABELS_MAGIC, "idx1 labels")
    if len(raw) < 8:
        raise ValueError(f"MNIST: {path!r} is too short ({len(raw)} bytes) for an idx1 header")
    magic, n = struct.unpack(">II", raw[:8])
    if len(raw) != 8 + n:
        raise ValueError(f"MNIST: {path!r} header says {n} labels but the file has "
                         f"{len(raw) - 8} label bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=8).copy()


def parse_mnist(image_filename, label_filename):
    """-> (X float32 (N, 784) in [0, 1], y uint8 (N,))."""
    _ensure(image_filename, label_filename)
    X = read_idx_images(image_filename).astype(np.float32) / 255.0
    y = read_idx_labels(label_filename)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"MNIST: {image_filename!r} has {X.shape[0]} images but "
                         f"{label_filename!r} has {y.shape[0]} labels")
    return X, y


class MNISTDataset(ImageDataset):
    """``dataset[i]`` -> (x (784,), y); ``dataset[array]`` -> (X (k, 784), y (k,)).

    Transforms see each image as (28, 28, 1); the result is flattened back.
    """

    def __init__(self, image_filename: str, label_filename: str,
                 transforms: Optional[List] = None):
        super().__init__(transforms)
        self.X, self.y = parse_mnist(image_filename, label_filename)
        side = int(round(np.sqrt(self.X.shape[1])))
        self._side = side if side * side == self.X.shape[1] else None

    def _transform(self, x):
        if self._side is None:
            raise ValueError(f"MNIST: transforms need square images, got {self.X.shape[1]} pixels")
        return self.apply_transforms(x.reshape(self._side, self._side, 1)).reshape(-1)
