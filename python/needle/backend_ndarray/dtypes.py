"""The dtypes of needle arrays: names, numpy equivalents and PyTorch's promotion rules.

A dtype is named by its string (``"float32"``), as the course does; numpy dtypes,
numpy scalar types and the ``needle.float32``-style constants (which are those
strings) are accepted wherever a dtype is. bfloat16 maps to ``ml_dtypes.bfloat16``.
"""
import numpy as np

try:
    import ml_dtypes as _ml_dtypes

    _BFLOAT16 = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # bfloat16 arrays still compute; only their numpy() needs ml_dtypes
    _ml_dtypes = None
    _BFLOAT16 = None

# Order matters: it is the order of the C++ enum (src/common/dtypes.h).
DTYPES = ("float32", "float64", "float16", "bfloat16", "int32", "int64", "uint8", "bool")
FLOATING = frozenset({"float32", "float64", "float16", "bfloat16"})
INTEGRAL = frozenset({"int32", "int64", "uint8"})
HALF = frozenset({"float16", "bfloat16"})
DEFAULT_FLOAT = "float32"

ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int32": 4, "int64": 8, "uint8": 1, "bool": 1}

_NUMPY = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "float16": np.dtype(np.float16),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}
if _BFLOAT16 is not None:
    _NUMPY["bfloat16"] = _BFLOAT16

_BY_NUMPY = {dt: name for name, dt in _NUMPY.items()}
_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32"}


def _unsupported(dtype):
    return TypeError(f"unsupported dtype {dtype!r}; needle supports {', '.join(DTYPES)}")


def canonical(dtype):
    """The name of ``dtype`` (a name, numpy dtype or scalar type); TypeError for others."""
    if type(dtype) is str:
        if dtype in ITEMSIZE:
            return dtype
        if dtype in _ALIASES:
            return _ALIASES[dtype]
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise _unsupported(dtype) from None
    name = _BY_NUMPY.get(dt)
    if name is None:
        raise _unsupported(dtype)
    return name


def to_numpy_dtype(dtype):
    """The numpy dtype of a needle dtype name (bfloat16 needs the ml_dtypes package)."""
    dt = _NUMPY.get(dtype)
    if dt is None:
        if dtype == "bfloat16":
            raise RuntimeError("bfloat16 arrays need the ml_dtypes package to convert to numpy (pip install ml_dtypes)")
        raise _unsupported(dtype)
    return dt


def of_numpy(array):
    """The needle dtype of a numpy array's data (TypeError if needle has none for it)."""
    name = _BY_NUMPY.get(array.dtype)
    if name is None:
        raise _unsupported(array.dtype)
    return name


def is_floating(dtype):
    return dtype in FLOATING


def category(dtype):
    """0 for bool, 1 for integers, 2 for floating types (PyTorch's ordering)."""
    return 2 if dtype in FLOATING else 0 if dtype == "bool" else 1


_INT_RANK = {"bool": 0, "uint8": 1, "int32": 2, "int64": 3}
_FLOAT_RANK = {"float16": 0, "bfloat16": 0, "float32": 1, "float64": 2}


def promote_types(a, b):
    """The smallest dtype both ``a`` and ``b`` convert to (torch.promote_types)."""
    if a == b:
        return a
    fa, fb = a in FLOATING, b in FLOATING
    if fa and fb:
        if {a, b} == HALF:
            return "float32"
        return a if _FLOAT_RANK[a] > _FLOAT_RANK[b] else b
    if fa or fb:
        return a if fa else b
    return a if _INT_RANK[a] > _INT_RANK[b] else b


def scalar_dtype(value):
    """The dtype a Python scalar stands for when it meets an array: bool, int64 or the
    default float (PyTorch's wrapped numbers)."""
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int64"
    return DEFAULT_FLOAT


def _combine(higher, lower):
    """PyTorch's combine_categories: the higher-priority group's dtype wins unless the
    lower one brings a higher category (bool, or integer meeting a float)."""
    if higher is None:
        return lower
    if lower is None or higher in FLOATING:
        return higher
    if higher == "bool" or lower in FLOATING:
        return promote_types(higher, lower)
    return higher


def result_type(*operands):
    """Result dtype of an elementwise op over ``operands``, each an array (anything with
    ``dtype`` and ``shape``) or a Python/numpy scalar. Arrays with dims take priority over
    0-d arrays, which take priority over scalars, within a category (PyTorch's rules:
    ``float16_tensor * 2.0`` is float16, ``int64_tensor * 2.5`` is float32)."""
    dims = zero = wrapped = None
    for x in operands:
        if hasattr(x, "dtype") and hasattr(x, "shape") and not isinstance(x, np.generic):
            dt = canonical(x.dtype)
            if len(x.shape):
                dims = dt if dims is None else promote_types(dims, dt)
            else:
                zero = dt if zero is None else promote_types(zero, dt)
        else:
            dt = scalar_dtype(x)
            wrapped = dt if wrapped is None else promote_types(wrapped, dt)
    return _combine(dims, _combine(zero, wrapped))
