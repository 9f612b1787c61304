"""CIFAR-10 from its python pickle batches (``data_batch_1..5``, ``test_batch``)."""
import os
import pickle
import tarfile
from typing import List, Optional

import numpy as np

from ._image_dataset import ImageDataset
from ._download import _fetch, ensure_files

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)


def _fetch_archive(folder, missing):
    """Download the official tarball next to ``folder`` and extract the batches into it."""
    archive = os.path.join(os.path.dirname(os.path.abspath(folder)), "cifar-10-python.tar.gz")
    if not os.path.isfile(archive):
        _fetch(CIFAR10_URL, archive)
    os.makedirs(folder, exist_ok=True)
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            name = os.path.basename(member.name)
            if member.isfile() and name in missing:
                with tar.extractfile(member) as src, open(os.path.join(folder, name), "wb") as dst:
                    dst.write(src.read())


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only.

    The batches are pickles by their format, and a pickle can call any function it
    names. Here a name resolves only if it rebuilds an array or a numpy scalar (numpy's
    reconstruction helpers, ``ndarray``, ``dtype``) or the bytes of a protocol-2 pickle written by
    Python 3 (``_codecs.encode``); anything else is an UnpicklingError, so a tampered
    batch fails before any of its code runs.
    """

    ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds "
                                         f"only dicts, lists, bytes, numbers and numpy arrays")
        return super().find_class(module, name)


def read_cifar_batch(path):
    """-> (data uint8 (N, 3072), labels int (N,)); ValueError on anything else."""
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError) as e:
        raise ValueError(f"CIFAR-10: {path!r} is not a CIFAR-10 pickle batch ({e})") from None
    if not isinstance(batch, dict):
        raise ValueError(f"CIFAR-10: {path!r} holds a {type(batch).__name__}, expected a dict")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"CIFAR-10: {path!r} lacks 'data'/'labels' (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR-10: {path!r} data has shape {data.shape}, expected (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"CIFAR-10: {path!r} has {data.shape[0]} images but labels of shape "
                         f"{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"CIFAR-10: {path!r} labels outside 0..9 "
                         f"(range {labels.min()}..{labels.max()})")
    return data, labels


class CIFAR10Dataset(ImageDataset):
    """X float32 (N, 3, 32, 32) in [0, 1], y labels; ``dataset[i]`` -> (X[i], y[i]).

    Transforms see each image as 32 x 32 x 3 (H, W, C) and the result goes back to CHW.
    """

    def __init__(self, base_folder: str, train: bool, p: Optional[float] = 0.5,
                 transforms: Optional[List] = None):
        super().__init__(transforms)
        self.p = p
        names = TRAIN_FILES if train else TEST_FILES
        ensure_files("CIFAR-10", base_folder, names,
                     {n: CIFAR10_URL for n in names}, fetch=_fetch_archive,
                     hint="they are the files of the archive's cifar-10-batches-py folder")
        datas, labels = [], []
        for n in names:
            d, l = read_cifar_batch(os.path.join(base_folder, n))
            datas.append(d)
            labels.append(l)
        self.X = (np.concatenate(datas).reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
        self.y = np.concatenate(labels).astype(np.uint8)

    def _transform(self, img):
        return self.apply_transforms(img.transpose(1, 2, 0)).transpose(2, 0, 1)
