"""mpi4py, loaded only when a launcher started the process, and the tables that map
needle dtypes and reduction names onto MPI's.

MPI has no 16-bit floating type in its standard: float16 and bfloat16 travel as raw
16-bit words when they are only moved (broadcast, gather), and are reduced through a
float32 copy (one rounding at the end, the way needle accumulates halves).
"""
import sys

INSTALL_HINT = ("needle.distributed needs mpi4py and an MPI library: `pip install mpi4py mpich` "
                "(the project's requirements.txt lists them), or mpi4py built against a system "
                "MPI (Open MPI, MPICH, Intel MPI)")

OPS = ("sum", "mean", "max", "min")


def load_mpi():
    """The ``mpi4py.MPI`` module, initialising MPI on first use (threads: funneled, as
    needle calls MPI from the main thread only)."""
    try:
        import mpi4py
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    if "mpi4py.MPI" not in sys.modules:
        mpi4py.rc.thread_level = "funneled"
    try:
        from mpi4py import MPI
    except ImportError as e:  # mpi4py present but its MPI library is not
        raise RuntimeError(f"mpi4py could not load its MPI library ({e}); {INSTALL_HINT}") from None
    return MPI


def move_type(MPI, dtype):
    """The MPI datatype that carries a needle dtype's bytes unchanged."""
    return {
        "float32": MPI.FLOAT, "float64": MPI.DOUBLE,
        "float16": MPI.UINT16_T, "bfloat16": MPI.UINT16_T,
        "int32": MPI.INT32_T, "int64": MPI.INT64_T, "uint8": MPI.UINT8_T, "bool": MPI.C_BOOL,
    }[dtype]


def reduce_op(MPI, op, dtype):
    """The MPI reduction for ``op`` on ``dtype`` ("mean" is a sum, divided afterwards).
    bool follows PyTorch: sum and max are a logical or, min a logical and."""
    if dtype == "bool":
        return MPI.LAND if op == "min" else MPI.LOR
    return {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
