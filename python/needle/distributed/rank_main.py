"""The entry point of each rank started by ``python -m needle.distributed.run``:
per-rank settings, then the user's script or module as ``__main__``; an exception
(or a non-zero exit) prints this rank's traceback and aborts the whole job, so the
other ranks never wait forever in a collective.

    python -m needle.distributed.rank_main script.py args...
    python -m needle.distributed.rank_main -m package.module args...
"""
import os
import runpy
import sys


def _run(argv):
    if argv[:1] == ["-m"] and len(argv) >= 2:
        sys.argv = [argv[1]] + argv[2:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif argv:
        sys.argv = list(argv)
        sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))  # as `python script.py`
        runpy.run_path(argv[0], run_name="__main__")
    else:
        raise SystemExit("usage: python -m needle.distributed.rank_main (script.py | -m module) [args...]")


def main():
    from .launch_env import configure_rank_process
    configure_rank_process()  # before the user's code imports needle's backends
    from .mpi import load_mpi
    comm = load_mpi().COMM_WORLD
    from .group import abort_job
    try:
        _run(sys.argv[1:])
    except SystemExit as e:
        if e.code not in (None, 0):
            if comm.Get_size() == 1:
                raise
            abort_job(sys.exc_info(), comm)
    except BaseException:
        if comm.Get_size() == 1:
            raise
        abort_job(sys.exc_info(), comm)


if __name__ == "__main__":
    main()
