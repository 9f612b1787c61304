"""Tensors, NDArrays and numpy arrays as the flat buffers collectives read and write.

A contiguous array on a host device (``cpu``, ``cpu_numpy``) is handed over as a
numpy array built over its own memory (the buffer address, no copy), so MPI reads and
writes needle's buffer directly. A strided view is compacted into a temporary and
written back afterwards; a cuda array exposes its device address for NCCL, or is
copied through host memory when MPI has to move it.
"""
import ctypes

import numpy as np

from ..autograd import Tensor
from ..backend_ndarray import dtypes as _dt

HOST_DEVICES = frozenset({"cpu", "cpu_numpy"})

try:
    from ..backend_ndarray.ndarray import NDArray
except ImportError:  # numpy-only installs: no NDArray class to accept
    NDArray = None


def _contiguous(nd):
    return nd.size <= 1 or nd.strides == NDArray.compact_strides(nd.shape)


def host_view(nd, np_dtype=None):
    """numpy array sharing the memory of the contiguous host NDArray ``nd`` (no copy). It
    does not keep ``nd`` alive: the caller holds ``nd`` while the view is in use."""
    np_dtype = _dt.to_numpy_dtype(nd.dtype) if np_dtype is None else np.dtype(np_dtype)
    if nd.size == 0:
        return np.empty(nd.shape, np_dtype)
    nbytes = nd.size * nd.itemsize
    raw = (ctypes.c_ubyte * nbytes).from_address(nd._handle.ptr() + nd._offset * nd.itemsize)
    return np.frombuffer(raw, dtype=np_dtype).reshape(nd.shape)


def _in_dtype(values, dtype):
    """numpy ``values`` seen as needle ``dtype``: raw 16-bit words of a half dtype (as MPI
    moved them) are reinterpreted, not converted."""
    np_dtype = _dt.to_numpy_dtype(dtype)
    return values if values.dtype == np_dtype else values.view(np_dtype)


def _everything(a):
    """The index that selects a whole array, for an in-place write through ``a[...] =``."""
    return Ellipsis if isinstance(a, np.ndarray) else (slice(None),) * a.ndim


class Operand:
    """One array taking part in a collective.

    ``dtype``/``shape``: needle's names; ``device``: the device name ("cpu", "cuda", ...,
    "numpy" for numpy arrays); ``array``: a contiguous NDArray (or numpy array) holding the
    values, the caller's own memory whenever it was contiguous; ``commit()`` copies
    ``array`` back into the caller's strided view when it is a temporary.
    """

    def __init__(self, x, what):
        self.original = x
        data = x.realize_cached_data() if isinstance(x, Tensor) else x
        self.data = data
        if isinstance(data, np.ndarray):
            self.dtype = _dt.of_numpy(data)
            self.device = "numpy"
            self.array = data if data.flags.c_contiguous else np.ascontiguousarray(data)
        elif NDArray is not None and isinstance(data, NDArray):
            self.dtype = data.dtype
            self.device = data.device.name
            self.array = data if _contiguous(data) else data.compact()
        else:
            raise TypeError(f"{what}: expected a needle Tensor, NDArray or numpy array, "
                            f"got {type(x).__name__}")
        self.shape = tuple(data.shape)
        self.is_host = self.device == "numpy" or self.device in HOST_DEVICES

    def host(self, np_dtype=None):
        """A numpy array of the values: the operand's own memory on host devices, a copy of
        a cuda array. ``np_dtype`` reinterprets the bytes (e.g. uint16 for halves)."""
        a = self.array
        if isinstance(a, np.ndarray):
            return a if np_dtype is None else a.view(np_dtype)
        if self.is_host:
            return host_view(a, np_dtype)
        out = a.numpy()
        return out if np_dtype is None else out.view(np_dtype)

    def device_ptr(self):
        """The address of the first element of a contiguous cuda array."""
        a = self.array
        return a._handle.ptr() + a._offset * a.itemsize

    def store_host(self, values):
        """Write numpy ``values`` (reshapeable to the operand) into the operand's array when
        ``host()`` gave a copy (cuda); host memory was written in place already."""
        if not self.is_host:
            values = _in_dtype(np.ascontiguousarray(values).reshape(self.shape), self.dtype)
            self.array[_everything(self.array)] = NDArray(values, device=self.array.device,
                                                          dtype=self.dtype)

    def commit(self):
        """Copy a compacted temporary back into the caller's strided array."""
        if self.array is not self.data:
            self.data[_everything(self.data)] = self.array

    def like(self, values):
        """A new array of the caller's kind (Tensor, NDArray, numpy) and device holding the
        numpy ``values`` (whose bytes are in this operand's dtype)."""
        if isinstance(self.data, np.ndarray):
            result = _in_dtype(values, self.dtype).copy()
        else:
            result = NDArray(_in_dtype(values, self.dtype), device=self.data.device, dtype=self.dtype)
        if isinstance(self.original, Tensor):
            return Tensor.make_const(result)
        return result
