"""needle.distributed: data-parallel training over MPI (mpi4py), NCCL for cuda arrays.

    python -m needle.distributed.run -n 4 train.py        # 4 ranks of train.py

    import needle.distributed as dist
    dist.init()                                           # optional: first use joins
    model = dist.DistributedDataParallel(model)
    loader = ndl.data.DataLoader(ds, 64, sampler=ndl.data.DistributedSampler(ds))

A script that no MPI launcher started is rank 0 of a world of size 1: every
collective is a no-op and mpi4py is never imported, so the same script runs alone.
See docs/distributed.md.
"""
from .collectives import all_gather, all_reduce, barrier, broadcast
from .ddp import DistributedDataParallel
from .group import init, is_initialized


def rank():
    """This process's rank in [0, world_size())."""
    from .group import group
    return group().rank


def world_size():
    """The number of ranks in the job (1 when no MPI launcher started this process)."""
    from .group import group
    return group().size


def local_rank():
    """This process's rank among the ranks on its host (selects its GPU)."""
    from .group import group
    return group().local_rank
