"""CUDA backend module, tested function by function against the numpy twin.

Calls ``needle.backend_ndarray.ndarray_backend_cuda`` directly (no NDArray), so a
failure points at one kernel. Every table function runs on every dtype it accepts,
with the same inputs in the twin (``ndarray_backend_numpy``, the specification) and
in the CUDA module, and every buffer is compared afterwards. The whole file is
skipped when the module is not built; the checks that need no device memory (exports,
dtype and size errors on empty buffers) run without a GPU, everything else is
skipped when no GPU is visible.
"""
import inspect

import numpy as np
import pytest

M = pytest.importorskip("needle.backend_ndarray.ndarray_backend_cuda")
from needle.backend_ndarray import ndarray_backend_numpy as R  # noqa: E402
from needle.backend_ndarray.dtypes import DTYPES, FLOATING, HALF, INTEGRAL, _BFLOAT16, to_numpy_dtype  # noqa: E402

needs_gpu = pytest.mark.skipif(M.device_count() == 0, reason="no CUDA device visible")

RNG = np.random.default_rng(0)

ALL = list(DTYPES)
NUMERIC = [d for d in DTYPES if d != "bool"]
FLOATS = [d for d in DTYPES if d in FLOATING]
FUSED = ["float32", "float64"]
INDEX_DTYPES = ["int64", "int32", "uint8", "float32", "float64", "float16"]


NO_BF16 = pytest.mark.skipif(_BFLOAT16 is None, reason="bfloat16 needs ml_dtypes")


def dts(names):
    """pytest params for dtypes; bfloat16 is skipped without ml_dtypes (numpy has no bfloat16)."""
    return [pytest.param(d, id=d, marks=NO_BF16 if d == "bfloat16" else ()) for d in names]


def op_dts(table):
    """pytest params (op, dtype) for {op: dtypes it takes}."""
    return [pytest.param(op, d, id=f"{op}-{d}", marks=NO_BF16 if d == "bfloat16" else ())
            for op, names in table.items() for d in names]


TABLE = sorted(
    name for name, obj in vars(R).items()
    if inspect.isfunction(obj) and not name.startswith("_") and obj.__module__ == R.__name__
)

# (rtol, atol) for results computed in floating point; integers and bools compare exactly.
TOL = {"float32": (2e-5, 1e-6), "float64": (1e-12, 1e-12), "float16": (2e-3, 1e-3), "bfloat16": (1.6e-2, 1e-2)}


def npdt(dt):
    return to_numpy_dtype(dt)


def data(dt, n, lo=-3.0, hi=3.0):
    """n random values of dtype dt (integers in [lo, hi], uint8 in [max(lo, 0), hi])."""
    if dt == "bool":
        return RNG.random(n) < 0.5
    if dt in INTEGRAL:
        lo = max(lo, 0) if dt == "uint8" else lo
        return RNG.integers(int(lo), int(hi) + 1, size=n).astype(npdt(dt))
    return RNG.uniform(lo, hi, size=n).astype(np.float32).astype(npdt(dt))


def compact_strides(shape):
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return list(reversed(strides))


def to_dev(x, dt="float32"):
    x = np.ascontiguousarray(np.asarray(x).astype(npdt(dt))).reshape(-1)
    a = M.Array(x.size, dt)
    M.from_numpy(x, a)
    return a


def to_host(a, shape):
    return M.to_numpy(a, list(shape), compact_strides(shape), 0)


def assert_same(got, want, dt, rtol=None, atol=None):
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    if dt in FLOATING:
        r, a = TOL[dt]
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=r if rtol is None else rtol,
                                   atol=a if atol is None else atol, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)


class Buf:
    """One buffer in the twin (t) and in the CUDA module (c)."""

    def __init__(self, t, c):
        self.t, self.c = t, c


class Pair:
    """The same buffers in the twin and on the device; calls go to both."""

    def __init__(self):
        self.bufs = []

    def buf(self, values, dt):
        x = np.ascontiguousarray(np.asarray(values).astype(npdt(dt))).reshape(-1)
        t, c = R.Array(x.size, dt), M.Array(x.size, dt)
        R.from_numpy(x, t)
        M.from_numpy(x, c)
        self.bufs.append(Buf(t, c))
        return self.bufs[-1]

    def zeros(self, n, dt):
        return self.buf(np.zeros(n), dt)

    def call(self, name, *args):
        getattr(R, name)(*[a.t if isinstance(a, Buf) else a for a in args])
        getattr(M, name)(*[a.c if isinstance(a, Buf) else a for a in args])

    def raises(self, exc, name, *args):
        for side in ("t", "c"):
            with pytest.raises(exc):
                getattr(R if side == "t" else M, name)(*[getattr(a, side) if isinstance(a, Buf) else a for a in args])

    def check(self, rtol=None, atol=None):
        for b in self.bufs:
            assert_same(M.to_numpy(b.c, [b.c.size], [1], 0), b.t.array, b.c.dtype, rtol, atol)


# ---------------------------------------------------------------------------
# module surface (no GPU needed)
# ---------------------------------------------------------------------------


def test_exports_match_numpy_backend():
    missing = [n for n in TABLE if not hasattr(M, n)]
    assert not missing, f"cuda module lacks {missing}"
    assert not hasattr(M, "matmul_tiled")
    assert M.__device_name__ == "cuda"
    assert M.__tile_size__ == 4
    for extra in ("memory_stats", "empty_cache", "device_count", "device_name",
                  "set_matmul_kernel", "get_matmul_kernel", "matmul_kernel_names", "matmul_kernel_used",
                  "device_capability"):
        assert callable(getattr(M, extra))
    for name in ["astype", "ewise_ne", "ewise_lt", "ewise_le", "ewise_gt", "scalar_ne", "scalar_lt", "scalar_le",
                 "scalar_gt"]:
        assert name in TABLE


def test_device_count_never_raises():
    assert isinstance(M.device_count(), int) and M.device_count() >= 0


@pytest.mark.parametrize("dt", ALL)
def test_empty_array_of_every_dtype_needs_no_device(dt):
    a = M.Array(0, dt)
    assert (a.size, a.dtype, a.itemsize, a.ptr()) == (0, dt, R.Array(0, dt).itemsize, 0)
    if dt != "bfloat16" or _BFLOAT16 is not None:
        got = M.to_numpy(a, [0, 3], [3, 1], 0)
        assert got.shape == (0, 3) and got.dtype == npdt(dt)
    assert M.Array(0).dtype == "float32"


def test_array_rejects_bad_dtype_and_size():
    for bad in ["float128", "int8", "complex64", ""]:
        with pytest.raises(TypeError, match="supported"):
            M.Array(4, bad)
    with pytest.raises(ValueError):
        M.Array(-1)
    with pytest.raises(ValueError):
        M.Array(2**62, "float64")  # bytes leave int64


def test_index_overflow_is_rejected_before_any_device_work():
    # prod(shape) = 2**64 would wrap to 0 and slip past the size checks.
    with pytest.raises(ValueError):
        M.compact(M.Array(0), M.Array(0), [2**32, 2**32], [0, 0], 0)
    with pytest.raises(ValueError):
        M.scalar_setitem(0, 1.0, M.Array(0), [2**32, 2**32], [0, 0], 0)
    with pytest.raises(ValueError):  # span 4 * 2**62 wraps to 0: must not pass as in bounds
        M.compact(M.Array(0), M.Array(0), [5], [2**62], 0)
    # broadcast operands over one element: (2**62 + 1) * 4 outputs wraps to 4 in int64
    with pytest.raises(ValueError):
        M.bmm(M.Array(0), M.Array(0), M.Array(0), 1, 2**62 + 1, 1, 4, [0, 0, 0], 0, [0, 0, 0], 0)
    with pytest.raises(ValueError):
        M.matmul(M.Array(0), M.Array(0), M.Array(0), 2**32, 2**32, 1)
    # a zero dimension empties the view whatever the other dimensions are
    M.compact(M.Array(0), M.Array(0), [0, 2**40, 2**40], [1, 1, 1], 0)


def E(dt):
    return ("@", dt)  # an empty buffer of dtype dt, made for each side


# Calls every backend must reject with TypeError before touching memory (on empty buffers).
BAD_DTYPE_CALLS = [
    ("ewise_add", E("int32"), E("float32"), E("float32")),
    ("scalar_add", E("int64"), 1.0, E("uint8")),
    ("ewise_mul", E("bool"), E("uint8"), E("bool")),
    ("scalar_mul", E("int64"), 1.0, E("int32")),
    ("scalar_maximum", E("float64"), 1.0, E("float32")),
    ("ewise_div", E("int32"), E("int32"), E("int32")),
    ("scalar_div", E("bool"), 1.0, E("bool")),
    ("ewise_power", E("bool"), E("bool"), E("bool")),
    ("scalar_power", E("bool"), 2.0, E("bool")),
    ("ewise_maximum", E("float16"), E("bfloat16"), E("float16")),
    ("ewise_relu_grad", E("int32"), E("int32"), E("int32")),
    ("ewise_relu_grad", E("float32"), E("float64"), E("float32")),
    ("ewise_log", E("int64"), E("int64")),
    ("ewise_exp", E("uint8"), E("uint8")),
    ("ewise_tanh", E("float32"), E("float64")),
    ("ewise_eq", E("int64"), E("int64"), E("int64")),
    ("ewise_ne", E("int64"), E("int32"), E("bool")),
    ("ewise_lt", E("float32"), E("float32"), E("float32")),
    ("ewise_le", E("float32"), E("float64"), E("bool")),
    ("ewise_gt", E("bool"), E("bool"), E("uint8")),
    ("ewise_ge", E("int32"), E("int32"), E("int32")),
    ("scalar_eq", E("float32"), 1.0, E("float32")),
    ("scalar_ne", E("int32"), 1.0, E("int32")),
    ("scalar_lt", E("int64"), 2.0, E("float32")),
    ("scalar_le", E("uint8"), 2.0, E("uint8")),
    ("scalar_gt", E("float16"), 2.0, E("float16")),
    ("scalar_ge", E("bool"), 2.0, E("int64")),
    ("reduce_sum", E("int32"), E("int32"), 3),
    ("reduce_sum", E("float16"), E("float32"), 3),
    ("reduce_max", E("uint8"), E("int64"), 3),
    ("reduce_sum_middle", E("bool"), E("bool"), 1, 1, 1),
    ("matmul", E("bool"), E("bool"), E("bool"), 0, 0, 0),
    ("matmul", E("float32"), E("float16"), E("float32"), 0, 0, 0),
    ("bmm", E("bool"), E("bool"), E("bool"), 0, 0, 0, 0, [0, 0, 0], 0, [0, 0, 0], 0),
    ("bmm_naive", E("int32"), E("int64"), E("int32"), 0, 0, 0, 0, [0, 0, 0], 0, [0, 0, 0], 0),
    ("compact", E("int32"), E("float32"), [0], [1], 0),
    ("ewise_setitem", E("int32"), E("float32"), [0], [1], 0),
    ("ewise_rows", "div", E("int32"), E("int32"), 0, E("int32"), 1, False),
    ("ewise_rows", "add", E("int32"), E("int64"), 0, E("int32"), 1, False),
    ("gather_rows", E("float32"), E("bool"), E("float32"), 0, 0),
    ("gather_rows", E("float32"), E("int32"), E("int32"), 0, 0),
    ("scatter_add_rows", E("bool"), E("int32"), E("bool"), 0, 0),
    ("softmax_xent", E("float16"), E("int64"), E("float16"), E("float16"), 0, 0),
    ("softmax_xent", E("float32"), E("int64"), E("float64"), E("float32"), 0, 0),
    ("softmax_xent_grad", E("int32"), E("int64"), E("int32"), E("int32"), E("int32"), 0, 0, 1.0),
    ("bn_forward", E("float32"), E("float32"), E("float64"), E("float32"), E("float32"), E("float32"), 0, 0, 1e-5),
    ("bn_backward", *[E("bfloat16")] * 8, 0, 0, 1e-5),
    ("conv2d", E("float16"), E("float16"), E("float16"), [0, 1, 1, 1], [1, 1, 1, 1], 0, [1, 1, 1, 1], [1, 1, 1, 1], 0,
     [0, 1, 1, 1], [1, 1, 1, 1], [1, 1], [0, 0], [1, 1], 1),
    ("conv2d", E("float32"), E("float64"), E("float32"), [0, 1, 1, 1], [1, 1, 1, 1], 0, [1, 1, 1, 1], [1, 1, 1, 1],
     0, [0, 1, 1, 1], [1, 1, 1, 1], [1, 1], [0, 0], [1, 1], 1),
    ("adam_step", *[E("float16")] * 5, 0.1, 0.9, 0.99, 1e-8, 0.0, 1.0, 0.1, 0.1),
    ("sgd_step", E("float32"), E("float32"), E("int32"), E("float32"), 0.1, 0.9, 0.0),
    ("sgd_step", E("float32"), E("float64"), E("float32"), E("float32"), 0.1, 0.0, 0.0),
]


def _make(mod, args):
    return [mod.Array(0, a[1]) if isinstance(a, tuple) and a and a[0] == "@" else a for a in args]


@pytest.mark.parametrize("call", BAD_DTYPE_CALLS, ids=lambda c: f"{c[0]}-" + "-".join(
    a[1] for a in c[1:] if isinstance(a, tuple) and a and a[0] == "@"))
def test_bad_dtypes_are_type_errors(call):
    name, *args = call
    for mod in (R, M):
        with pytest.raises(TypeError):
            getattr(mod, name)(*_make(mod, args))


def test_bad_dtype_calls_cover_the_table():
    named = {c[0] for c in BAD_DTYPE_CALLS}
    exempt = {"to_numpy", "from_numpy", "fill", "astype", "scalar_setitem", "wrap_external"}  # take every dtype
    assert not [n for n in TABLE if n not in named and n not in exempt]


def test_checks_on_empty_buffers_match_twin():
    # ValueErrors, and calls that must pass (sgd without momentum ignores u's dtype),
    # need no device memory either.
    for mod in (R, M):
        with pytest.raises(ValueError):
            mod.ewise_rows("pow", mod.Array(0), mod.Array(0), 0, mod.Array(0), 1, False)
        with pytest.raises(TypeError):
            mod.from_numpy(np.zeros(0, np.float64), mod.Array(0))
        with pytest.raises(ValueError):
            mod.from_numpy(np.zeros(1, np.float32), mod.Array(0))
        mod.sgd_step(mod.Array(0), mod.Array(0), mod.Array(0, "int32"), mod.Array(0), 0.1, 0.0, 0.0)
        mod.scalar_power(mod.Array(0, "uint8"), -1.0, mod.Array(0, "uint8"))  # -1 is 255 as uint8
        mod.astype(mod.Array(0, "bool"), mod.Array(0, "bfloat16"))
        mod.fill(mod.Array(0, "int64"), 3.0)


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------


@needs_gpu
def test_memory_stats_track_live_arrays_and_cache():
    M.empty_cache()
    base = M.memory_stats()
    assert base["cached"] == 0
    n = 1 << 20
    x = M.Array(n)
    s1 = M.memory_stats()
    assert s1["allocated"] >= base["allocated"] + 4 * n
    assert s1["peak"] >= s1["allocated"]
    ptr = x.ptr()
    del x
    s2 = M.memory_stats()
    assert s2["allocated"] == base["allocated"]
    assert s2["cached"] >= 4 * n
    assert s2["peak"] == s1["peak"]
    y = M.Array(n)  # same size class: the cached block comes back
    assert y.ptr() == ptr
    assert M.memory_stats()["cached"] == s2["cached"] - (s1["allocated"] - base["allocated"])
    del y
    z = M.Array(n, "float64")  # bytes follow the dtype
    assert M.memory_stats()["allocated"] >= base["allocated"] + 8 * n
    del z
    M.empty_cache()
    assert M.memory_stats()["cached"] == 0


@needs_gpu
@pytest.mark.parametrize("dt", dts(ALL))
def test_roundtrip_and_array_properties(dt):
    x = data(dt, 15).reshape(3, 5)
    a = to_dev(x, dt)
    assert (a.size, a.dtype, a.itemsize) == (15, dt, npdt(dt).itemsize)
    assert a.ptr() % 256 == 0
    got = to_host(a, x.shape)
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got, x)
    with pytest.raises(ValueError):
        M.from_numpy(np.zeros(4, dtype=npdt(dt)), M.Array(5, dt))
    with pytest.raises(TypeError):
        M.from_numpy(np.zeros(5, dtype=np.float64 if dt != "float64" else np.float32), M.Array(5, dt))


@needs_gpu
def test_device_name():
    assert isinstance(M.device_name(), str) and M.device_name()


# ---------------------------------------------------------------------------
# compact / setitem / fill / astype
# ---------------------------------------------------------------------------

VIEWS = [
    # (buffer size, shape, strides, offset)
    (24, (4, 6), (1, 4), 0),  # transpose
    (60, (3, 4, 5), (20, 5, 1), 0),  # already compact
    (60, (3, 2, 5), (20, 10, 2), 1),  # stepped slice, odd offset
    (60, (3, 4, 5), (-20, 5, -1), 44),  # flipped axes
    (5, (3, 4, 5), (0, 0, 1), 0),  # broadcast
    (4 * 3 * 2 * 2 * 3 * 2 * 2, (2, 2, 3, 2, 2, 3, 4), (1, 2, 4, 12, 24, 48, 144), 0),  # 7-D
    (10, (1, 1, 7), (5, 3, 1), 3),  # size-1 dims with odd strides
]


@needs_gpu
@pytest.mark.parametrize("dt", dts(ALL))
@pytest.mark.parametrize("size,shape,strides,offset", VIEWS)
def test_compact_and_to_numpy(size, shape, strides, offset, dt):
    p = Pair()
    a = p.buf(data(dt, size), dt)
    expect = R.to_numpy(a.t, list(shape), list(strides), offset)
    got = M.to_numpy(a.c, list(shape), list(strides), offset)
    assert got.dtype == expect.dtype
    np.testing.assert_array_equal(got, expect)
    p.call("compact", a, p.zeros(int(np.prod(shape)), dt), list(shape), list(strides), offset)
    p.check()


@needs_gpu
@pytest.mark.parametrize("dt", dts(ALL))
@pytest.mark.parametrize("size,shape,strides,offset", [v for v in VIEWS if 0 not in v[2]])
def test_setitem(size, shape, strides, offset, dt):
    n = int(np.prod(shape))
    p = Pair()
    out = p.buf(data(dt, size), dt)
    p.call("ewise_setitem", p.buf(data(dt, n), dt), out, list(shape), list(strides), offset)
    p.call("scalar_setitem", n, 2.5, out, list(shape), list(strides), offset)
    p.call("scalar_setitem", n, -7.75, p.buf(data(dt, size), dt), list(shape), list(strides), offset)
    p.check()


@needs_gpu
def test_strided_bounds_are_checked():
    a = to_dev(np.zeros(10, dtype=np.float32))
    with pytest.raises(IndexError):
        M.compact(a, M.Array(4), [2, 2], [5, 3], 3)  # reaches element 11
    with pytest.raises(IndexError):
        M.compact(a, M.Array(4), [2, 2], [-5, 1], 0)  # reaches element -5
    with pytest.raises(ValueError):
        M.compact(a, M.Array(5), [2, 2], [2, 1], 0)  # out size mismatch
    with pytest.raises(ValueError):
        M.ewise_setitem(M.Array(3), a, [2, 2], [2, 1], 0)  # source too small
    with pytest.raises(ValueError):
        M.scalar_setitem(5, 1.0, a, [2, 2], [2, 1], 0)  # size is not prod(shape)
    with pytest.raises(ValueError):  # span 4 * 2**62 wraps to 0: must not pass as in bounds
        M.scalar_setitem(5, 1.0, a, [5], [2**62], 0)
    # more than 8 dims that do not merge: the kernels take 8 at most
    big = M.Array(2**9)
    with pytest.raises(ValueError):
        M.compact(big, M.Array(2**9), [2] * 9, [2**i for i in range(9)], 0)
    M.compact(big, M.Array(2**9), [2] * 9, [2**i for i in reversed(range(9))], 0)  # merges to 1 dim


@needs_gpu
@pytest.mark.parametrize("dt", dts(ALL))
def test_fill(dt):
    p = Pair()
    for n in (1, 7, 33, 1000):
        for val in (3.25, -1.0, 300.7, 0.0, 1e10):
            p.call("fill", p.zeros(n, dt), val)
    p.check()


SPECIAL = np.array([0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -3.7, 127.9, 255.0, 256.0, 300.5, -129.0, 65504.0, 7e4,
                    1e10, -1e10, 3e38, np.inf, -np.inf, np.nan, 1.0 / 3.0, 1e-8, 6e-8])


@needs_gpu
@pytest.mark.parametrize("src", dts(ALL))
@pytest.mark.parametrize("dst", dts(ALL))
def test_astype(src, dst):
    p = Pair()
    if src in FLOATING:
        with np.errstate(all="ignore"):
            x = np.concatenate([SPECIAL, RNG.standard_normal(40) * 100]).astype(npdt(src))
    elif src == "bool":
        x = data(src, 50)
    else:
        info = np.iinfo(npdt(src))
        x = np.concatenate([np.array([info.min, info.max, 0, 1, 255, 256, -1 if info.min < 0 else 2]),
                            RNG.integers(info.min, info.max, size=40, endpoint=True)]).astype(npdt(src))
    a = p.buf(x, src)
    p.call("astype", a, p.zeros(x.size, dst))
    p.check(rtol=0, atol=0)  # numpy's casts, bit for bit


# ---------------------------------------------------------------------------
# elementwise
# ---------------------------------------------------------------------------

BINARY = {"add": ALL, "mul": ALL, "maximum": ALL, "div": FLOATS, "power": NUMERIC}
COMPARE = ["eq", "ne", "lt", "le", "gt", "ge"]
UNARY = ["log", "exp", "tanh"]
N = 1029  # odd: the vector bodies leave a tail


def binary_inputs(op, dt, n=N):
    if op == "power":
        if dt in FLOATING:
            x, y = data(dt, n, -2, 2), data(dt, n, -2, 2)  # half negative bases: NaN for fractional y
        else:
            x, y = data(dt, n, -6, 6), data(dt, n, 0, 5)
    else:
        x, y = data(dt, n, -100, 100), data(dt, n, -100, 100)
        y[::3] = x[::3]
    if dt in FLOATING:
        x[-1] = np.nan
    return x, y


def scalars(op, dt):
    if op == "power":
        return [0.0, 1.0, 2.0, 3.0] if dt not in FLOATING else [2.0, 0.5, -1.0, 3.0, 1.7, -0.5]
    return [0.5, -1.5, 2.0, 300.0]


@needs_gpu
@pytest.mark.parametrize("op,dt", op_dts(BINARY))
def test_binary(op, dt):
    p = Pair()
    x, y = binary_inputs(op, dt)
    a, b = p.buf(x, dt), p.buf(y, dt)
    p.call("ewise_" + op, a, b, p.zeros(N, dt))
    for val in scalars(op, dt):
        p.call("scalar_" + op, a, val, p.zeros(N, dt))
    p.check()


@needs_gpu
@pytest.mark.parametrize("dt", ["int32", "int64"])
def test_integer_power_rejects_negative_exponents(dt):
    p = Pair()
    x, y = data(dt, 40), data(dt, 40, 0, 3)
    y[17] = -1
    p.raises(ValueError, "ewise_power", p.buf(x, dt), p.buf(y, dt), p.zeros(40, dt))
    p.raises(ValueError, "scalar_power", p.buf(x, dt), -2.0, p.zeros(40, dt))


@needs_gpu
@pytest.mark.parametrize("op", COMPARE)
@pytest.mark.parametrize("dt", dts(ALL))
def test_compare(op, dt):
    p = Pair()
    x, y = data(dt, N, -4, 4), data(dt, N, -4, 4)
    y[::3] = x[::3]
    if dt in FLOATING:
        x[5], y[6], x[7], y[7] = np.nan, np.nan, np.nan, np.nan
    a, b = p.buf(x, dt), p.buf(y, dt)
    p.call("ewise_" + op, a, b, p.zeros(N, "bool"))
    for val in (0.0, 1.0, -2.5, 2.5, 300.0):
        p.call("scalar_" + op, a, val, p.zeros(N, "bool"))
    p.check()


@needs_gpu
@pytest.mark.parametrize("op", UNARY)
@pytest.mark.parametrize("dt", dts(FLOATS))
def test_unary(op, dt):
    p = Pair()
    x = data(dt, N, 0.01, 5) if op == "log" else data(dt, N, -9, 9)
    x[:4] = [0.0, -1.0, np.inf, np.nan]
    p.call("ewise_" + op, p.buf(x, dt), p.zeros(N, dt))
    p.check()


def misaligned(x, shift):
    """float32 device copy of x made by compacting from an offset that breaks 16-byte alignment."""
    buf = np.zeros(x.size + shift, dtype=np.float32)
    buf[shift:] = x
    out = M.Array(x.size)
    M.compact(to_dev(buf), out, [x.size], [1], shift)
    strided = M.Array(x.size)  # and once through the strided gather path
    M.compact(to_dev(np.repeat(buf, 2)), strided, [x.size], [2], 2 * shift)
    np.testing.assert_array_equal(to_host(strided, x.shape), x)
    return out


@needs_gpu
@pytest.mark.parametrize("n", [1, 3, 5, 1023, 4097])
@pytest.mark.parametrize("name", ["add", "mul", "div", "power", "maximum"])
def test_float32_fast_path_on_unaligned_buffers(name, n):
    # a view starting 4 bytes in: the float4 body is off, the scalar loop does everything
    x = RNG.standard_normal(n).astype(np.float32)
    y = RNG.standard_normal(n).astype(np.float32)
    if name == "power":
        x[1::2] = np.abs(x[1::2])
    a, b, out = misaligned(x, 1 + n % 3), misaligned(y, 3), M.Array(n)
    getattr(M, "ewise_" + name)(a, b, out)
    ref = R.Array(n)
    getattr(R, "ewise_" + name)(_twin(x), _twin(y), ref)
    assert_same(to_host(out, (n,)), ref.array, "float32")


@needs_gpu
@pytest.mark.parametrize("op,dt", op_dts({"add": ALL, "mul": ALL, "div": FLOATS}))
def test_ewise_rows(op, dt):
    p = Pair()
    full, row = p.buf(data(dt, 6 * 7), dt), p.buf(data(dt, 20, 0.5, 2) if dt in FLOATING else data(dt, 20), dt)
    for swap in (False, True):
        p.call("ewise_rows", op, full, row, 3, p.zeros(42, dt), 7, swap)
    p.raises(ValueError, "ewise_rows", op, full, row, 14, p.zeros(42, dt), 7, False)
    p.check()


# ---------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------

REDUCE_SHAPES = [(1, 1), (5, 1), (3, 7), (1000, 16), (64, 17), (33, 2048), (7, 2049), (3, 5000), (2, 100003)]


def sum_dtype(dt):
    return dt if dt in FLOATING else "int64"


@needs_gpu
@pytest.mark.parametrize("rows,r", REDUCE_SHAPES)
@pytest.mark.parametrize("dt", dts(ALL))
def test_reductions(rows, r, dt):
    p = Pair()
    x = data(dt, rows * r, 0, 1) if dt in FLOATING else data(dt, rows * r, -50, 50)
    if dt in FLOATING and r > 2:
        x[r // 2] = np.nan  # row 0 of the max is NaN
    a = p.buf(x, dt)
    p.call("reduce_max", a, p.zeros(rows, dt), r)
    if dt in FLOATING:
        x[r // 2] = 0.5
        a = p.buf(x, dt)
    sums = p.zeros(rows, sum_dtype(dt))
    p.call("reduce_sum", a, sums, r)
    # the device sums in a tree, the twin pairwise: float sums differ in the last bits
    p.check(rtol={"float32": 2e-5, "float64": 1e-12, "float16": 2e-3, "bfloat16": 1.6e-2}.get(dt))


@needs_gpu
@pytest.mark.parametrize("r", [3, 100, 9000])
def test_reduce_max_propagates_nan_and_handles_negative(r):
    x = -RNG.random((4, r), dtype=np.float32) - 1.0
    x[2, r // 2] = np.nan
    out = M.Array(4)
    M.reduce_max(to_dev(x), out, r)
    np.testing.assert_array_equal(to_host(out, (4,)), x.max(axis=1))


@needs_gpu
def test_reduce_long_row():
    x = RNG.random((1, 1 << 24), dtype=np.float32)
    out = M.Array(1)
    M.reduce_sum(to_dev(x), out, 1 << 24)
    np.testing.assert_allclose(to_host(out, (1,)), x.sum(axis=1, dtype=np.float64), rtol=2e-5)


SUM_MIDDLE = [(1, 1, 1), (3, 5, 7), (2, 130, 3), (1, 5000, 3), (1, 300, 257), (4, 64, 1)]


# the long middle axis (chunked, two passes) once per accumulator kind
@needs_gpu
@pytest.mark.parametrize("outer,reduce,inner,dt", [pytest.param(*s, d, marks=NO_BF16 if d == "bfloat16" else ())
                                                   for s in SUM_MIDDLE for d in ALL]
                         + [(1, 1 << 17, 32, "float32"), (1, 1 << 17, 32, "float16"), (1, 1 << 17, 32, "int32")])
def test_reduce_sum_middle(outer, reduce, inner, dt):
    p = Pair()
    x = data(dt, outer * reduce * inner, -1, 1) if dt in FLOATING else data(dt, outer * reduce * inner, -50, 50)
    p.call("reduce_sum_middle", p.buf(x, dt), p.zeros(outer * inner, sum_dtype(dt)), outer, reduce, inner)
    # The GPU splits long middle axes into chunks, so the order of additions differs.
    if dt in ("float32", "float64"):
        p.check(rtol=1e-4, atol=1e-5 * np.sqrt(reduce))
    else:
        p.check(atol=TOL[dt][1] * np.sqrt(reduce) if dt in HALF else None)


# ---------------------------------------------------------------------------
# matmul ladder
# ---------------------------------------------------------------------------

KERNELS = list(range(len(M.matmul_kernel_names())))
MATMUL_SHAPES = [(1, 1, 1), (7, 7, 7), (13, 7, 65), (1, 13, 257), (65, 257, 13),
                 (257, 65, 257), (129, 200, 131), (1000, 3, 2048)]


@pytest.fixture
def kernel_selector():
    saved = M.get_matmul_kernel()
    yield M.set_matmul_kernel
    M.set_matmul_kernel(saved)


def check_close(got, expect, n):
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-5 * max(n, 1) ** 0.5 * 4)


@needs_gpu
@pytest.mark.parametrize("m,n,p", MATMUL_SHAPES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_matmul_kernels(kernel_selector, kernel, m, n, p):
    kernel_selector(kernel)
    x = RNG.standard_normal((m, n)).astype(np.float32)
    y = RNG.standard_normal((n, p)).astype(np.float32)
    out = M.Array(m * p)
    M.matmul(to_dev(x), to_dev(y), out, m, n, p)
    check_close(to_host(out, (m, p)), x.astype(np.float64) @ y, n)


def matmul_tol(dt, n):
    """(rtol, atol) of an n-term dot product in dt against the twin."""
    return {"float32": (1e-4, 2e-5 * n ** 0.5), "float64": (1e-10, 1e-12 * n), "float16": (4e-3, 4e-3 * n ** 0.5),
            "bfloat16": (2e-2, 2e-2 * n ** 0.5)}.get(dt, (0, 0))


@needs_gpu
@pytest.mark.parametrize("m,n,p", [(1, 1, 1), (13, 7, 65), (65, 257, 13), (129, 40, 131)])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dt", dts(NUMERIC))
def test_matmul_dtypes(kernel_selector, kernel, m, n, p, dt):
    kernel_selector(kernel)
    pr = Pair()
    lo, hi = (-1, 1) if dt in FLOATING else (-60, 60)  # int32 and uint8 products wrap like the twin's
    a, b = pr.buf(data(dt, m * n, lo, hi), dt), pr.buf(data(dt, n * p, lo, hi), dt)
    pr.call("matmul", a, b, pr.zeros(m * p, dt), m, n, p)
    # b transposed and broadcast over a batch of 2, a with an offset
    big = pr.buf(data(dt, 2 * m * n + 3, lo, hi), dt)
    for name in ("bmm", "bmm_naive"):
        pr.call(name, big, b, pr.zeros(2 * m * p, dt), 2, m, n, p, [m * n, n, 1], 3, [0, 1, n], 0)
    rtol, atol = matmul_tol(dt, n)
    pr.check(rtol=rtol, atol=atol)


def bmm_case(kind, batch, m, n, p):
    """(a buffer, a strides, a offset, b buffer, b strides, b offset) for one layout."""
    def rand(size):
        return RNG.standard_normal(size).astype(np.float32)

    a_st, a_off, b_st, b_off = [m * n, n, 1], 0, [n * p, p, 1], 0
    a_size, b_size = batch * m * n, batch * n * p
    if kind == "a_transposed":
        a_st = [m * n, 1, m]
    elif kind == "b_transposed":
        b_st = [n * p, 1, n]
    elif kind == "both_transposed":
        a_st, b_st = [m * n, 1, m], [n * p, 1, n]
    elif kind == "broadcast_a":
        a_st, a_size = [0, n, 1], m * n
    elif kind == "broadcast_b":
        b_st, b_size = [0, p, 1], n * p
    elif kind == "padded_misaligned":  # row pitch n + 5, start 3 elements in
        a_st, a_off, a_size = [m * (n + 5), n + 5, 1], 3, 3 + batch * m * (n + 5)
        b_st, b_off, b_size = [n * (p + 1), p + 1, 1], 1, 1 + batch * n * (p + 1)
    elif kind == "flipped":
        a_st, a_off = [m * n, -n, 1], (m - 1) * n
        b_st, b_off = [n * p, p, -1], p - 1
    elif kind == "every_other":  # no unit stride in either operand
        a_st, a_size = [2 * m * 3 * n, 3 * n * 2, 3], batch * 2 * m * 3 * n
        b_st, b_size = [2 * n * 2 * p, 2, 2 * n], batch * 2 * n * 2 * p
    return rand(a_size), a_st, a_off, rand(b_size), b_st, b_off


BMM_KINDS = ["compact", "a_transposed", "b_transposed", "both_transposed", "broadcast_a",
             "broadcast_b", "padded_misaligned", "flipped", "every_other"]


def _twin(x, dt="float32"):
    a = R.Array(x.size, dt)
    R.from_numpy(np.ascontiguousarray(x, npdt(dt)).reshape(-1), a)
    return a


@needs_gpu
@pytest.mark.parametrize("batch,m,n,p", [(3, 67, 45, 131), (2, 130, 9, 5), (1, 1, 300, 1)])
@pytest.mark.parametrize("kind", BMM_KINDS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_bmm_strided(kernel_selector, kernel, kind, batch, m, n, p):
    kernel_selector(kernel)
    a, a_st, a_off, b, b_st, b_off = bmm_case(kind, batch, m, n, p)
    av = R.to_numpy(_twin(a), [batch, m, n], a_st, a_off).astype(np.float64)
    bv = R.to_numpy(_twin(b), [batch, n, p], b_st, b_off).astype(np.float64)
    expect = av @ bv
    out = M.Array(batch * m * p)
    M.bmm(to_dev(a), to_dev(b), out, batch, m, n, p, a_st, a_off, b_st, b_off)
    check_close(to_host(out, (batch, m, p)), expect, n)
    naive = M.Array(batch * m * p)
    M.bmm_naive(to_dev(a), to_dev(b), naive, batch, m, n, p, a_st, a_off, b_st, b_off)
    check_close(to_host(naive, (batch, m, p)), expect, n)


@needs_gpu
@pytest.mark.parametrize("dt", dts(NUMERIC))
def test_matmul_edge_cases_and_selection(dt):
    with pytest.raises(ValueError):
        M.set_matmul_kernel(len(KERNELS))
    out = M.Array(6, dt)
    M.fill(out, 5.0)
    M.matmul(M.Array(0, dt), M.Array(0, dt), out, 2, 0, 3)  # empty inner dim: zeros
    np.testing.assert_array_equal(to_host(out, (6,)), np.zeros(6, npdt(dt)))
    with pytest.raises(ValueError):  # b too small for (n, p)
        M.matmul(M.Array(6, dt), M.Array(5, dt), out, 2, 3, 2)
    with pytest.raises(ValueError):
        M.bmm(M.Array(6, dt), M.Array(6, dt), out, 1, 2, 3, 2, [6, 3], 0, [6, 2, 1], 0)
    with pytest.raises(ValueError):
        M.bmm(M.Array(1, dt), M.Array(1, dt), M.Array(4, dt), 1, 2**62 + 1, 1, 4, [0, 0, 0], 0, [0, 0, 0], 0)


@needs_gpu
@pytest.mark.parametrize("kernel", KERNELS)
def test_bmm_grid_limits(kernel_selector, kernel):
    # batch and row tiles beyond 65535 exceed grid y/z: the kernels loop over them.
    kernel_selector(kernel)
    batch, m, n, p = 70000, 2, 3, 2
    x = RNG.standard_normal((batch, m, n)).astype(np.float32)
    y = RNG.standard_normal((n, p)).astype(np.float32)
    out = M.Array(batch * m * p)
    M.bmm(to_dev(x), to_dev(y), out, batch, m, n, p, [m * n, n, 1], 0, [0, p, 1], 0)
    check_close(to_host(out, (batch, m, p)), x.astype(np.float64) @ y, n)
    m2 = 65536 * 8 + 3  # more than 65535 row blocks for the naive kernel (8 rows a block)
    x2 = RNG.standard_normal((m2, n)).astype(np.float32)
    out2 = M.Array(m2 * p)
    M.matmul(to_dev(x2), to_dev(y), out2, m2, n, p)
    check_close(to_host(out2, (m2, p)), x2.astype(np.float64) @ y, n)


# ---------------------------------------------------------------------------
# rows, losses, batch norm, optimizers
# ---------------------------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize("idx_dt", INDEX_DTYPES)
@pytest.mark.parametrize("dt", dts(ALL))
def test_gather_scatter_rows(dt, idx_dt):
    p = Pair()
    table = p.buf(data(dt, 9 * 5), dt)
    idx = p.buf(np.array([3, 0, 8, 3, 3, 1]), idx_dt)
    p.call("gather_rows", table, idx, p.zeros(6 * 5, dt), 9, 5)
    if dt != "bool":
        p.call("scatter_add_rows", p.buf(data(dt, 6 * 5), dt), idx, p.buf(data(dt, 9 * 5), dt), 9, 5)
    p.check()


@needs_gpu
def test_row_indices_are_checked():
    p = Pair()
    table = p.buf(data("float32", 9 * 5), "float32")
    for bad, dt in [([3, 9], "int64"), ([-1, 0], "int32"), ([1.5, 0], "float32"), ([np.nan, 0], "float64")]:
        p.raises(IndexError, "gather_rows", table, p.buf(np.array(bad), dt), p.zeros(2 * 5, "float32"), 9, 5)
        p.raises(IndexError, "scatter_add_rows", p.buf(data("float32", 10), "float32"), p.buf(np.array(bad), dt),
                 table, 9, 5)


@needs_gpu
@pytest.mark.parametrize("label_dt", ["int64", "int32", "uint8", "float32"])
@pytest.mark.parametrize("dt", FUSED)
def test_softmax_xent(dt, label_dt):
    p = Pair()
    for n, k in [(11, 19), (3, 1000), (1, 1)]:
        a = p.buf(data(dt, n * k, -30, 30), dt)
        labels = p.buf(RNG.integers(0, k, size=n), label_dt)
        lse, loss = p.zeros(n, dt), p.zeros(1, dt)
        p.call("softmax_xent", a, labels, lse, loss, n, k)
        p.call("softmax_xent_grad", a, labels, lse, p.buf([0.7], dt), p.zeros(n * k, dt), n, k, 1.0 / n)
    p.raises(IndexError, "softmax_xent", a, p.buf([5], label_dt), p.zeros(1, dt), p.zeros(1, dt), 1, 1)
    p.check(**({"rtol": 1e-5, "atol": 1e-6} if dt == "float32" else {"rtol": 1e-12, "atol": 1e-13}))


@needs_gpu
@pytest.mark.parametrize("dt", FUSED)
def test_batch_norm(dt):
    # (1, 4): zero variance; 33+ columns: more than one column tile; a far-off mean: the
    # centred second pass; (0, 3): no rows.
    rng = np.random.default_rng(11)
    p = Pair()
    for rows, cols, shift in [(1, 4, 0.0), (7, 5, 0.0), (130, 3, 50.0), (65, 257, 0.0), (2100, 40, 0.0), (0, 3, 0.0)]:
        x, g = p.buf(rng.uniform(-2, 2, (rows, cols)) + shift, dt), p.buf(rng.uniform(-2, 2, (rows, cols)), dt)
        w, b = p.buf(rng.uniform(0.5, 2, cols), dt), p.buf(rng.uniform(-2, 2, cols), dt)
        out, mean, var = p.zeros(rows * cols, dt), p.zeros(cols, dt), p.zeros(cols, dt)
        p.call("bn_forward", x, w, b, out, mean, var, rows, cols, 1e-5)
        dx, dw, db = p.zeros(rows * cols, dt), p.zeros(cols, dt), p.zeros(cols, dt)
        p.call("bn_backward", x, g, w, mean, var, dx, dw, db, rows, cols, 1e-5)
    # column sums of thousands of terms: float partial sums on the device, float64 in the twin
    p.check(**({"rtol": 2e-5, "atol": 1e-4} if dt == "float32" else {"rtol": 1e-10, "atol": 1e-10}))


@needs_gpu
@pytest.mark.parametrize("dt", FUSED)
def test_optimizers(dt):
    p = Pair()
    n = 1029
    w, g = p.buf(data(dt, n, -2, 2), dt), p.buf(data(dt, n, -2, 2), dt)
    m, v = p.buf(data(dt, n, -2, 2), dt), p.buf(data(dt, n, 0, 1), dt)
    p.call("adam_step", w, g, m, v, p.zeros(n, dt), 0.01, 0.9, 0.999, 1e-8, 0.1, 1.0, 0.1, 0.001)
    p.call("adam_step", w, g, m, v, p.zeros(n, dt), 0.01, 0.9, 0.999, 1e-8, 0.0, 0.999, 0.19, 0.002)
    u = p.buf(data(dt, n, -2, 2), dt)
    p.call("sgd_step", w, g, u, p.zeros(n, dt), 0.1, 0.9, 0.01)
    p.call("sgd_step", w, g, p.zeros(n, dt), p.zeros(n, dt), 0.1, 0.0, 0.01)
    p.check(**({"rtol": 1e-5, "atol": 1e-6} if dt == "float32" else {"rtol": 1e-12, "atol": 1e-13}))


# ---------------------------------------------------------------------------
# big buffers (slow)
# ---------------------------------------------------------------------------


@needs_gpu
@pytest.mark.slow
def test_fill_view_near_32_bit_element_count():
    # n just under 2**32: the grid-stride index must not wrap around (4 GiB of uint8).
    n = 2**32 - 1
    try:
        out = M.Array(n, "uint8")
    except MemoryError:
        pytest.skip("not enough device memory for a 2**32-element buffer")
    M.fill(out, 0.0)
    M.scalar_setitem(n, 1.0, out, [n], [1], 0)
    tail = 1 << 21
    np.testing.assert_array_equal(M.to_numpy(out, [tail], [1], n - tail), np.ones(tail, np.uint8))
    np.testing.assert_array_equal(M.to_numpy(out, [tail], [1], 0), np.ones(tail, np.uint8))
    M.scalar_setitem(n // 2, 2.0, out, [n // 2], [2], 0)  # strided: the general kernel
    np.testing.assert_array_equal(M.to_numpy(out, [4], [1], n - 5), np.array([2, 1, 2, 1], np.uint8))
    del out
    M.empty_cache()
