"""NCCL for cuda arrays, through ctypes on the library of the ``nvidia-nccl-cu12`` /
``nvidia-nccl-cu13`` wheel (or a system ``libnccl.so.2``; ``NEEDLE_NCCL_LIBRARY``
names one explicitly).

The communicator is bootstrapped over MPI: rank 0 makes the NCCL unique id and MPI
broadcasts it. needle's CUDA kernels all run on the legacy default stream, so NCCL
is given that stream too: a collective starts after the kernels that produced its
input and finishes before the kernels that read its output, with no extra
synchronisation.
"""
import ctypes
import glob
import os
import sys

import numpy as np

from ..backend_ndarray import dtypes as _dt

# ncclDataType_t and ncclRedOp_t (nccl.h).
_NCCL_DTYPE = {"uint8": 1, "bool": 1, "int32": 2, "int64": 4, "float16": 6, "float32": 7,
               "float64": 8, "bfloat16": 9}
_NCCL_OP = {"sum": 0, "max": 2, "min": 3, "mean": 4}
_UNIQUE_ID_BYTES = 128


class _UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_char * _UNIQUE_ID_BYTES)]


def _candidates():
    explicit = os.environ.get("NEEDLE_NCCL_LIBRARY")
    if explicit:
        return [explicit]
    found = []
    for base in sys.path:
        found += sorted(glob.glob(os.path.join(base or ".", "nvidia", "nccl", "lib", "libnccl.so*")))
    return found + ["libnccl.so.2"]


_LIB = None
_LIB_ERROR = None


def _load():
    global _LIB, _LIB_ERROR
    if _LIB is not None or _LIB_ERROR is not None:
        return _LIB
    errors = []
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
            break
        except OSError as e:
            errors.append(str(e))
    else:
        _LIB_ERROR = ("NCCL not found (pip install nvidia-nccl-cu12 or nvidia-nccl-cu13, matching "
                      "the CUDA toolkit; or set NEEDLE_NCCL_LIBRARY): " + "; ".join(errors[-2:]))
        return None
    vp, sz, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
    lib.ncclGetErrorString.restype = ctypes.c_char_p
    lib.ncclGetErrorString.argtypes = [i]
    lib.ncclGetVersion.argtypes = [ctypes.POINTER(i)]
    lib.ncclGetUniqueId.argtypes = [ctypes.POINTER(_UniqueId)]
    lib.ncclCommInitRank.argtypes = [ctypes.POINTER(vp), i, _UniqueId, i]
    lib.ncclCommDestroy.argtypes = [vp]
    lib.ncclAllReduce.argtypes = [vp, vp, sz, i, i, vp, vp]
    lib.ncclBroadcast.argtypes = [vp, vp, sz, i, i, vp, vp]
    lib.ncclAllGather.argtypes = [vp, vp, sz, i, vp, vp]
    _LIB = lib
    return lib


def unavailable_reason():
    """None when this rank can use NCCL for cuda arrays, else why not."""
    from ..backend_ndarray.device import cuda
    if not cuda().enabled():
        return cuda().reason
    return None if _load() is not None else _LIB_ERROR


def version():
    lib = _load()
    if lib is None:
        raise RuntimeError(_LIB_ERROR)
    v = ctypes.c_int()
    _check(lib, lib.ncclGetVersion(ctypes.byref(v)), "ncclGetVersion")
    return v.value


def _check(lib, result, call):
    if result != 0:
        raise RuntimeError(f"{call} failed: NCCL error {result} "
                           f"({lib.ncclGetErrorString(result).decode(errors='replace')})")


class Communicator:
    """An NCCL communicator over the ranks of ``group`` (one GPU per rank: the launcher
    gives each local rank its own device)."""

    def __init__(self, group):
        self.lib = _load()
        self.group = group
        uid = _UniqueId()
        if group.rank == 0:
            _check(self.lib, self.lib.ncclGetUniqueId(ctypes.byref(uid)), "ncclGetUniqueId")
        raw = np.frombuffer(bytearray(uid), np.uint8).copy()
        group.comm.Bcast(raw, root=0)
        uid = _UniqueId.from_buffer_copy(raw.tobytes())
        self.comm = ctypes.c_void_p()
        _check(self.lib, self.lib.ncclCommInitRank(ctypes.byref(self.comm), group.size, uid,
                                                   group.rank),
               f"ncclCommInitRank (rank {group.rank} of {group.size}; each rank needs its own GPU)")

    def all_reduce(self, operand, op):
        dtype = operand.dtype
        nccl_op = _NCCL_OP[op]
        if dtype == "bool":  # bytes 0/1: or = max, and = min
            nccl_op = _NCCL_OP["min" if op == "min" else "max"]
        ptr = operand.device_ptr()
        _check(self.lib, self.lib.ncclAllReduce(ptr, ptr, operand.array.size, _NCCL_DTYPE[dtype],
                                                nccl_op, self.comm, None), "ncclAllReduce")

    def broadcast(self, operand, src):
        ptr = operand.device_ptr()
        _check(self.lib, self.lib.ncclBroadcast(ptr, ptr, operand.array.size,
                                                _NCCL_DTYPE[operand.dtype], src, self.comm, None),
               "ncclBroadcast")

    def all_gather(self, operand):
        from ..autograd import Tensor
        from ..backend_ndarray.ndarray import NDArray
        a = operand.array
        out = NDArray.make((self.group.size,) + operand.shape, device=a.device, dtype=operand.dtype)
        _check(self.lib, self.lib.ncclAllGather(operand.device_ptr(), out._handle.ptr(), a.size,
                                                _NCCL_DTYPE[operand.dtype], self.comm, None),
               "ncclAllGather")
        parts = [out[r].compact().reshape(operand.shape) for r in range(self.group.size)]
        if isinstance(operand.original, Tensor):
            return [Tensor.make_const(p) for p in parts]
        return parts
