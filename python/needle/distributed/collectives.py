"""Collectives on Tensors, NDArrays and numpy arrays: in-place ``all_reduce`` and
``broadcast``, ``all_gather`` returning a list, and ``barrier``.

Each call first checks that every rank passed the same op, dtype and shape (one small
allgather), so a mismatch is a ValueError on every rank instead of a hang or a
truncated message; the DDP buckets, whose layout is checked once, use the unchecked
``reduce_host``/``reduce_operand``. In a world of size 1 every call is a no-op after
the same argument checks.
"""
import numpy as np

from ..backend_ndarray import dtypes as _dt
from .buffers import Operand
from .group import group
from .mpi import OPS, move_type, reduce_op


def _check_op(what, op, dtype):
    if op not in OPS:
        raise ValueError(f"{what}: op must be one of {', '.join(map(repr, OPS))}, got {op!r}")
    if op == "mean" and dtype not in _dt.FLOATING:
        raise TypeError(f"{what}: op='mean' needs a floating dtype, got {dtype} "
                        "(use op='sum' and divide)")


def _path(g, operand):
    """How the operand travels: "mpi" (host memory), "nccl", or "mpi-copy" (a cuda array
    copied through host memory)."""
    if operand.is_host:
        return "mpi"
    return "nccl" if g.nccl() is not None else "mpi-copy"


def _describe(signature):
    return ", ".join(str(s) for s in signature)


def reduce_host(g, values, op, dtype):
    """Reduce the contiguous numpy array ``values`` (needle ``dtype``) over the ranks, in
    place. Halves are reduced through a float32 copy; "mean" divides the sum."""
    MPI = g.MPI
    if dtype in _dt.HALF:
        wide = values.astype(np.float32)
        g.comm.Allreduce(MPI.IN_PLACE, [wide, MPI.FLOAT], reduce_op(MPI, op, "float32"))
        if op == "mean":
            wide /= g.size
        values[...] = wide.astype(values.dtype)
        return
    g.comm.Allreduce(MPI.IN_PLACE, [values, move_type(MPI, dtype)], reduce_op(MPI, op, dtype))
    if op == "mean":
        np.divide(values, g.size, out=values)


def reduce_operand(g, operand, op, path):
    if path == "nccl":
        g.nccl().all_reduce(operand, op)
    else:
        values = operand.host()
        reduce_host(g, values, op, operand.dtype)
        operand.store_host(values)
    operand.commit()


def all_reduce(x, op="sum"):
    """Reduce ``x`` over all ranks in place (``op``: "sum", "mean", "max" or "min") and
    return it. ``x`` is a Tensor, NDArray or numpy array of any dtype; "mean" needs a
    floating one; on bool, "sum"/"max" are a logical or and "min" a logical and.

        >>> t = ndl.Tensor([float(rank())]); all_reduce(t, "mean")   # every rank: (N-1)/2
    """
    operand = Operand(x, "all_reduce")
    _check_op("all_reduce", op, operand.dtype)
    g = group()
    if g.size == 1:
        return x
    path = _path(g, operand)
    g.agree("all_reduce", (op, operand.dtype, operand.shape, path), _describe)
    reduce_operand(g, operand, op, path)
    return x


def _check_src(what, src, size):
    if isinstance(src, bool) or not isinstance(src, (int, np.integer)) or not 0 <= src < size:
        raise ValueError(f"{what}: src must be a rank in [0, {size}), got {src!r}")


def broadcast_operand(g, operand, src, path):
    if path == "nccl":
        g.nccl().broadcast(operand, src)
    else:
        raw = operand.host(np.uint16) if operand.dtype in _dt.HALF else operand.host()
        g.comm.Bcast([raw, move_type(g.MPI, operand.dtype)], root=src)
        operand.store_host(raw)
    operand.commit()


def broadcast(x, src=0):
    """Overwrite ``x`` on every rank with rank ``src``'s values, in place; returns ``x``.
    Every rank passes an array of the same dtype and shape."""
    operand = Operand(x, "broadcast")
    g = group()
    _check_src("broadcast", src, g.size)
    if g.size == 1:
        return x
    path = _path(g, operand)
    g.agree("broadcast", (int(src), operand.dtype, operand.shape, path), _describe)
    broadcast_operand(g, operand, int(src), path)
    return x


def all_gather(x):
    """Every rank's ``x``, as a list indexed by rank of new arrays of ``x``'s kind (Tensor,
    NDArray or numpy) on ``x``'s device. Every rank passes the same dtype and shape."""
    operand = Operand(x, "all_gather")
    g = group()
    if g.size == 1:
        return [operand.like(np.array(operand.host(), copy=True))]
    path = _path(g, operand)
    g.agree("all_gather", (operand.dtype, operand.shape, path), _describe)
    if path == "nccl":
        return g.nccl().all_gather(operand)
    raw = operand.host(np.uint16) if operand.dtype in _dt.HALF else operand.host()
    gathered = np.empty((g.size,) + raw.shape, raw.dtype)
    mpi_type = move_type(g.MPI, operand.dtype)
    g.comm.Allgather([np.ascontiguousarray(raw), mpi_type], [gathered, mpi_type])
    return [operand.like(gathered[r]) for r in range(g.size)]


def barrier():
    """Wait until every rank has reached this call."""
    g = group()
    if g.size > 1:
        g.comm.Barrier()
