"""Checkpoints: ``needle.save(obj, path)`` / ``needle.load(path)``.

Tensors and NDArrays are stored as numpy arrays inside a pickle, so a file
written on one device loads on any other. Writes go to a temporary file in
the same folder and are renamed over the target, so a crash mid-save never
corrupts the previous checkpoint.
"""
import os
import pickle
import tempfile

import numpy as np


class _Array:
    """Picklable stand-in for a Tensor or NDArray (its numpy data)."""

    def __init__(self, data, is_tensor):
        self.data = data
        self.is_tensor = is_tensor


def _to_storable(obj):
    from .autograd import Tensor
    from .backend_selection import NDArray

    if isinstance(obj, Tensor):
        return _Array(np.asarray(obj.numpy()), True)
    if NDArray is not np.ndarray and isinstance(obj, NDArray):
        return _Array(obj.numpy(), False)
    if isinstance(obj, dict):
        return {k: _to_storable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_storable(v) for v in obj)
    return obj


def _from_storable(obj, device):
    from .autograd import Tensor
    from .backend_selection import NDArray, default_device

    if isinstance(obj, _Array):
        if obj.is_tensor:
            return Tensor(obj.data, device=device, requires_grad=False)
        if NDArray is np.ndarray:
            return obj.data
        return NDArray(obj.data, device=device or default_device())
    if isinstance(obj, dict):
        return {k: _from_storable(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_storable(v, device) for v in obj)
    return obj


def save(obj, path):
    """Write ``obj`` (Tensors, NDArrays, dicts/lists of them, plain values) to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".needle", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(_to_storable(obj), f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path, device=None):
    """Read a file written by :func:`save`; tensors land on ``device`` (default device if None).

    Like any pickle, only load checkpoints you trust.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"needle.load: no such checkpoint {path!r}")
    with open(path, "rb") as f:
        try:
            obj = pickle.load(f)
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
                TypeError, ValueError) as e:
            raise ValueError(f"needle.load: {path!r} is not a needle checkpoint ({e})") from None
    return _from_storable(obj, device)
