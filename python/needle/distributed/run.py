"""Start N ranks of a script or module: ``python -m needle.distributed.run``.

    python -m needle.distributed.run -n 4 train.py --epochs 5
    python -m needle.distributed.run -n 2 -m apps.train mnist --epochs 1
    python -m needle.distributed.run -n 16 --hostfile hosts train.py     # several hosts

It runs the ``mpiexec`` of the MPI that mpi4py uses (the ``mpich`` wheel's, beside
this Python, else the first on PATH; ``--mpiexec`` or ``NEEDLE_MPIEXEC`` choose
another) on ``python -m needle.distributed.rank_main``. Each rank gets this host's
cores divided among its ranks as ``NEEDLE_NUM_THREADS`` (unless set) and its own GPU
on hosts with several. A rank that raises ends the job with that rank's traceback
and a non-zero exit status; ``--timeout`` ends a job that runs too long.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys

from .mpi import INSTALL_HINT

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def find_mpiexec(explicit=None):
    """The mpiexec to use, or SystemExit saying what to install."""
    explicit = explicit or os.environ.get("NEEDLE_MPIEXEC")
    if explicit:
        path = shutil.which(explicit)
        if path is None:
            raise SystemExit(f"needle.distributed.run: mpiexec {explicit!r} not found")
        return path
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(beside, os.X_OK):
        return beside
    path = shutil.which("mpiexec") or shutil.which("mpirun")
    if path is None:
        raise SystemExit(f"needle.distributed.run: no mpiexec found. {INSTALL_HINT}")
    return path


def _flavour(mpiexec):
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return "openmpi" if "Open MPI" in out or "OpenRTE" in out else "mpich"


def build_command(mpiexec, nprocs, target, hostfile=None, flavour="mpich"):
    """The mpiexec command line for ``nprocs`` ranks of ``target`` (["script.py", args...]
    or ["-m", "module", args...])."""
    cmd = [mpiexec, "-n", str(nprocs)]
    if hostfile:
        cmd += ["--hostfile" if flavour == "openmpi" else "-f", hostfile]
    if flavour == "openmpi":
        cmd += ["--oversubscribe", "-x", "PYTHONPATH"]
    return cmd + [sys.executable, "-m", "needle.distributed.rank_main"] + list(target)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m needle.distributed.run",
                                description="Start N ranks of a needle script or module over MPI.")
    p.add_argument("-n", "--nprocs", type=int, required=True, help="number of ranks")
    p.add_argument("--hostfile", default=None, help="hosts to spread the ranks over (MPI's format)")
    p.add_argument("--mpiexec", default=None, help="the mpiexec to run (default: mpi4py's MPI's)")
    p.add_argument("--timeout", type=float, default=None, help="end the job after this many seconds")
    p.add_argument("-m", dest="module", default=None, help="run a module, as python -m")
    p.add_argument("target", nargs=argparse.REMAINDER, help="script.py and its arguments")
    args = p.parse_args(argv)
    if args.nprocs < 1:
        p.error(f"-n must be >= 1, got {args.nprocs}")
    if args.module is None and not args.target:
        p.error("give a script (script.py args...) or a module (-m module args...)")
    if args.hostfile is not None and not os.path.isfile(args.hostfile):
        p.error(f"--hostfile {args.hostfile!r} does not exist")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import mpi4py  # noqa: F401  (the ranks need it; say so before starting them)
    except ImportError:
        raise SystemExit(f"needle.distributed.run: {INSTALL_HINT}") from None
    mpiexec = find_mpiexec(args.mpiexec)
    target = (["-m", args.module] if args.module else []) + args.target
    cmd = build_command(mpiexec, args.nprocs, target, args.hostfile, _flavour(mpiexec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    # mpiexec and its ranks get a process group of their own, so that ending them spares
    # this process; they end with it when it is killed (a signal handler, and on Linux
    # the parent-death signal for a SIGKILL).
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: (_end(proc), os._exit(128 + signum)))
    try:
        return proc.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        sys.stderr.write(f"needle.distributed.run: the job ran past --timeout {args.timeout:g} s; "
                         "ending it\n")
        _end(proc)
        return 124
    except KeyboardInterrupt:
        _end(proc)
        return 130


def _die_with_parent():
    """In the child before exec: receive SIGTERM when the launcher dies (Linux)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _end(proc):
    """Stop mpiexec and every rank it started (they share its process group)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


if __name__ == "__main__":
    sys.exit(main())
