"""The process group: who this process is among the ranks of the job, and the
communicators that connect them.

A process not started by an MPI launcher is rank 0 of a world of size 1 and never
loads MPI. A launched process joins ``MPI.COMM_WORLD`` through mpi4py (needle works
on a duplicate of it, so a script's own MPI traffic cannot mix with needle's), and
its cuda arrays go through NCCL once both are present on every rank.
"""
import sys
import time
import traceback
import zlib

import numpy as np

from . import launch_env
from .mpi import load_mpi

BACKENDS = (None, "mpi", "nccl")


class Group:
    """Rank, world size and local rank, plus ``comm`` (an mpi4py communicator, None when
    alone) and the NCCL communicator, made on first use by a cuda array."""

    def __init__(self, backend, comm=None, MPI=None):
        self.backend = backend
        self.comm = comm
        self.MPI = MPI
        if comm is None:
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
        else:
            self.rank, self.size = comm.Get_rank(), comm.Get_size()
            local = comm.Split_type(MPI.COMM_TYPE_SHARED)
            self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
            local.Free()
        self._nccl = None
        self._nccl_checked = False

    # ---- agreement: the check that turns a mismatch into an error, never a hang ----
    def agree(self, what, signature, describe=repr):
        """Raise ValueError on every rank unless every rank passed an equal ``signature``
        (a small hashable tuple such as (op, dtype, shape)). One 8-byte allgather."""
        if self.size == 1:
            return
        code = np.array([zlib.crc32(repr(signature).encode())], np.int64)
        codes = np.empty(self.size, np.int64)
        self.comm.Allgather(code, codes)
        if (codes != code[0]).any():
            signatures = self.comm.allgather(signature)
            listing = "; ".join(f"rank {r}: {describe(s)}" for r, s in enumerate(signatures))
            raise ValueError(f"{what}: the ranks disagree ({listing})")

    def all_true(self, flag):
        """Whether ``flag`` holds on every rank (a logical-and allreduce)."""
        if self.size == 1:
            return bool(flag)
        return bool(self.comm.allreduce(bool(flag), op=self.MPI.LAND))

    # ---- NCCL, for cuda arrays ----
    def nccl(self):
        """The NCCL communicator, or None when cuda arrays go through MPI (backend "mpi",
        or NCCL missing on some rank). Collective: every rank calls it at the same point."""
        if not self._nccl_checked:
            self._nccl_checked = True
            if self.backend != "mpi" and self.size > 1:
                from . import nccl
                reason = nccl.unavailable_reason()
                if self.all_true(reason is None):
                    self._nccl = nccl.Communicator(self)
                elif self.backend == "nccl":
                    reasons = self.comm.allgather(reason)
                    raise RuntimeError("needle.distributed: backend 'nccl' was asked for, but "
                                       + "; ".join(f"rank {r}: {m}" for r, m in enumerate(reasons) if m))
        return self._nccl


_GROUP = None


def init(backend=None):
    """Join the job's process group (idempotent). ``backend``: None (MPI for host arrays,
    NCCL for cuda arrays when every rank has it, else MPI through host memory), "mpi"
    (MPI for everything) or "nccl" (cuda arrays must use NCCL). A process that no MPI
    launcher started is rank 0 of 1 and loads nothing."""
    global _GROUP
    if backend not in BACKENDS:
        raise ValueError(f"needle.distributed.init: backend must be None, 'mpi' or 'nccl', got {backend!r}")
    if _GROUP is not None:
        if backend is not None and backend != _GROUP.backend:
            raise RuntimeError(f"needle.distributed.init: already initialised with backend "
                               f"{_GROUP.backend!r}, cannot switch to {backend!r}")
        return _GROUP
    if not launch_env.launched():
        _GROUP = Group(backend)
        return _GROUP
    MPI = load_mpi()
    world = MPI.COMM_WORLD
    announced = launch_env.announced_size()
    if announced is not None and announced != world.Get_size():
        raise RuntimeError(
            f"needle.distributed: the launcher started {announced} ranks, but MPI sees a world "
            f"of {world.Get_size()}: mpi4py is linked to another MPI than the mpiexec that "
            f"started this job (mpi4py's: {MPI.Get_library_version().splitlines()[0].strip()}). "
            "Start it with that MPI's mpiexec; `python -m needle.distributed.run` finds it")
    if world.Get_size() > 1:
        install_abort_hook(world)
    _GROUP = Group(backend, world.Dup(), MPI)
    return _GROUP


def group():
    """The current group, joining it with the default backend on first use."""
    return _GROUP if _GROUP is not None else init()


def is_initialized():
    return _GROUP is not None


# ---- failures: one rank's exception ends the whole job ----
def abort_job(exc_info, comm=None):
    """Print this rank's traceback and end every rank of the job (MPI_Abort): the other
    ranks may be waiting in a collective that this one will never join."""
    etype, value, tb = exc_info
    rank = comm.Get_rank() if comm is not None else launch_env.announced_rank()
    sys.stderr.write(f"needle.distributed: rank {rank} failed, ending the job\n")
    traceback.print_exception(etype, value, tb, file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    # MPI_Abort tears the job down at once; give mpiexec a moment to forward the output.
    time.sleep(0.5)
    if comm is None:
        comm = load_mpi().COMM_WORLD
    comm.Abort(1)


def install_abort_hook(comm):
    """An uncaught exception on this rank aborts the job (for scripts started by a bare
    mpiexec; the launcher's rank entry point does the same)."""
    if getattr(sys.excepthook, "_needle_aborts", False):
        return

    def hook(etype, value, tb):
        abort_job((etype, value, tb), comm)

    hook._needle_aborts = True
    sys.excepthook = hook
