"""What the process learns from its launcher before any MPI call: whether an MPI
launcher started it, its rank and world size as the launcher announced them, and
the per-rank settings (CPU threads, GPU) that must be fixed before needle's
backends load.

Launchers announce themselves through environment variables: MPICH's Hydra (and
Intel MPI, ``srun --mpi=pmi2``) set ``PMI_RANK``/``PMI_SIZE``, Open MPI sets
``OMPI_COMM_WORLD_*``, PMIx-based launchers ``PMIX_RANK``. A process without any
of them runs alone (world size 1) and never loads MPI.
"""
import os

_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK")
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")


def _first_int(names, default=None):
    for name in names:
        value = os.environ.get(name)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                raise RuntimeError(f"needle.distributed: the launcher set {name}={value!r}, "
                                   "which is not an integer") from None
    return default


def launched():
    """True when an MPI launcher (mpiexec, mpirun, srun with PMI) started this process."""
    return any(name in os.environ for name in _RANK_VARS)


def announced_size():
    """The world size the launcher announced (None when it announces none, as PMIx)."""
    return _first_int(_SIZE_VARS)


def announced_rank():
    return _first_int(_RANK_VARS, 0)


def announced_local():
    """(local rank, ranks on this host) as announced, else (0, 1)."""
    return _first_int(_LOCAL_RANK_VARS, 0), _first_int(_LOCAL_SIZE_VARS, 1)


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads_per_rank(local_size):
    """The cores of this host shared by its ranks: ranks that each start one thread per
    core oversubscribe the machine, and needle's kernels collapse when a core is taken."""
    return max(1, available_cores() // max(1, local_size))


def _visible_gpus():
    """GPU ids this process may use, read without initialising CUDA."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip() != ""]
    try:
        count = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return []
    return [str(i) for i in range(count)]


def configure_rank_process():
    """Per-rank settings for a launched process, applied before needle loads its backends:
    ``NEEDLE_NUM_THREADS`` (and OpenMP's) = this host's cores / its ranks unless set, and
    one GPU per local rank (``CUDA_VISIBLE_DEVICES``) when the host has several, so that
    each rank's ``cuda()`` is its own device. Returns the variables it set."""
    if not launched():
        return {}
    local_rank, local_size = announced_local()
    changes = {}
    if "NEEDLE_NUM_THREADS" not in os.environ:
        changes["NEEDLE_NUM_THREADS"] = str(default_threads_per_rank(local_size))
    if "OMP_NUM_THREADS" not in os.environ:
        changes["OMP_NUM_THREADS"] = os.environ.get("NEEDLE_NUM_THREADS",
                                                    changes.get("NEEDLE_NUM_THREADS"))
    gpus = _visible_gpus()
    if len(gpus) > 1 and local_size > 1:
        changes["CUDA_VISIBLE_DEVICES"] = gpus[local_rank % len(gpus)]
    os.environ.update(changes)
    return changes
