"""Every backend function, for every dtype, against plain numpy.

The modules under test implement the table of ``ndarray_backend_numpy`` (the
twin), which also states the dtype rules: operands of one call share one dtype;
comparisons write bool; float16/bfloat16 compute in float32 and round once;
integers wrap like C and reject negative powers; scalars are converted to the
array's dtype first (``np.array([v]).astype(dt)``); sums of floats keep their
dtype, sums of integers and bools are int64; a wrong dtype is a TypeError, and
the same bad input raises the same exception type in every module.

Modules: the twin (id ``twin``), the C++ CPU module (``cpu``) and the CUDA
module (``cuda``, when a GPU is visible). Expected values are computed here
with plain numpy, never by the twin: the twin is itself code under test.
Run one module with ``-k twin`` (or ``-k cpu``, ``-k cuda``).
"""
import contextlib
import importlib
import warnings
import zlib

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# ---- dtypes -------------------------------------------------------------------------
NP = {
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}
NAME = {npdt: name for name, npdt in NP.items()}
DTYPES = list(NP)
FLOATS = ["float32", "float64", "float16", "bfloat16"]
HALVES = ["float16", "bfloat16"]
INTS = ["int32", "int64", "uint8"]
NUMERIC = FLOATS + INTS
FUSED = ["float32", "float64"]

HYPO = settings(max_examples=25, deadline=None, database=None)


# ---- the modules under test ---------------------------------------------------------------
_LOADED = {}


def _try_load(name):
    """(module, None), or (None, why its cases skip)."""
    if name == "twin":
        return importlib.import_module("needle.backend_ndarray.ndarray_backend_numpy"), None
    if name == "cpu":
        try:
            mod = importlib.import_module("needle.backend_ndarray.ndarray_backend_cpu")
        except ImportError as e:
            return None, f"ndarray_backend_cpu is not built ({e})"
    else:
        from needle.backend_ndarray.device import cuda

        dev = cuda()
        if not dev.enabled():
            return None, str(dev.reason)
        mod = dev.mod
    try:
        mod.Array(1, "float64")
    except TypeError:
        return None, f"ndarray_backend_{name}.Array(size, dtype) takes no dtype yet (typed backend not landed)"
    return mod, None


def _load(name):
    if name not in _LOADED:
        _LOADED[name] = _try_load(name)
    return _LOADED[name]


def compact_strides(shape):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


class Mod:
    """A backend module plus helpers that make buffers from numpy arrays and read them back;
    attribute access falls through to the module's function table."""

    def __init__(self, name, mod):
        self.name, self.mod = name, mod

    def __getattr__(self, attr):
        return getattr(self.mod, attr)

    def __repr__(self):
        return self.name

    def buf(self, x):
        """A new buffer of x's dtype holding x's elements in C order."""
        flat = np.ascontiguousarray(x).reshape(-1)
        a = self.mod.Array(flat.size, NAME[flat.dtype])
        self.mod.from_numpy(flat, a)
        return a

    def out(self, size, dtype):
        """A new buffer pre-filled with 77 (True for bool), so unwritten elements show."""
        return self.buf(np.full(size, True if dtype == "bool" else 77, NP[dtype]))

    def get(self, a, shape=None):
        """a's elements as a new numpy array of ``shape`` (default: flat)."""
        shape = (a.size,) if shape is None else tuple(shape)
        return self.mod.to_numpy(a, shape, compact_strides(shape), 0)


@pytest.fixture(scope="module", params=["twin", "cpu", "cuda"])
def M(request):
    mod, why = _load(request.param)
    if mod is None:
        pytest.skip(why)
    return Mod(request.param, mod)


# ---- data ---------------------------------------------------------------------------
def rng(*key):
    """A generator seeded by the test's own parameters (independent of test order)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@contextlib.contextmanager
def quiet():
    """Silence numpy's cast/overflow warnings (the values are intended)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def conv(val, dt):
    """A Python scalar converted to dt the way numpy converts it (a 1-element array)."""
    with quiet():
        return np.array([val]).astype(NP[dt])


def values(dt, n, g, small=False):
    """n random elements of dt: 3*normal for floats, the whole range for integers
    (small: |x| <= 9), fair coins for bool."""
    if dt in FLOATS:
        return (g.standard_normal(n) * 3).astype(NP[dt])
    if dt == "bool":
        return g.random(n) < 0.5
    if small:
        lo, hi = (0, 9) if dt == "uint8" else (-9, 9)
    else:
        info = np.iinfo(NP[dt])
        lo, hi = info.min, info.max
    return g.integers(lo, hi, n, dtype=NP[dt], endpoint=True)


def nice(dt, n, g, k=16):
    """n multiples of 1/8 in [-k/8, k/8] (integers in [-k, k] for integer dtypes): sums and
    products of a few hundred are exact in float32, so no summation order changes them."""
    ints = g.integers(-k, k, n, endpoint=True)
    if dt in FLOATS:
        return (ints / 8).astype(NP[dt])
    return np.abs(ints).astype(NP[dt]) if dt == "uint8" else ints.astype(NP[dt])


def random_bits(dt, n, g):
    """n elements of dt with random bit patterns (NaN payloads, infinities, subnormals)."""
    if dt == "bool":
        return g.random(n) < 0.5
    u = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[NP[dt].itemsize]
    return g.integers(0, np.iinfo(u).max, n, dtype=u, endpoint=True).view(NP[dt])


def specials(dt):
    """The awkward values of dt: signed zeros, infinities, NaN, extremes, subnormals."""
    if dt in FLOATS:
        fi = ml_dtypes.finfo(NP[dt])
        v = [0.0, -0.0, np.inf, -np.inf, np.nan, float(fi.max), -float(fi.max), float(fi.tiny),
             float(fi.smallest_subnormal), -float(fi.smallest_subnormal), 1.0, -1.0, 0.5, -2.5, 3.0]
        with quiet():
            return np.array(v).astype(NP[dt])
    if dt == "bool":
        return np.array([False, True])
    info = np.iinfo(NP[dt])
    v = {info.min, info.min + 1, info.max, info.max - 1, 0, 1, 2, 3}
    if info.min < 0:
        v |= {-1, -2}
    return np.array(sorted(v), dtype=NP[dt])


def pairs(x):
    """Every ordered pair of x's elements, as two arrays."""
    i, j = np.meshgrid(np.arange(x.size), np.arange(x.size))
    return x[i.ravel()], x[j.ravel()]


# ---- comparisons --------------------------------------------------------------------------
def wide(x):
    """x with halves widened (exactly) to float32."""
    return x.astype(np.float32) if NAME.get(x.dtype) in HALVES else x


def bits(x):
    return np.ascontiguousarray(x).view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[x.itemsize])


def _meta(got, exp):
    assert got.dtype == exp.dtype, f"dtype {got.dtype}, expected {exp.dtype}"
    assert got.shape == exp.shape, f"shape {got.shape}, expected {exp.shape}"


def assert_bits(got, exp):
    """Bit for bit, NaN payloads included."""
    _meta(got, exp)
    np.testing.assert_array_equal(wide(got), wide(exp))
    np.testing.assert_array_equal(bits(got), bits(exp))


def assert_same(got, exp):
    """Exact: the same bits (so -0 is not +0), except that any NaN matches any NaN."""
    _meta(got, exp)
    g, e = wide(got), wide(exp)
    np.testing.assert_array_equal(g, e)  # readable message first; NaN == NaN here
    if NAME[exp.dtype] in FLOATS:
        keep = ~np.isnan(e)
        got, exp = got[keep], exp[keep]
    np.testing.assert_array_equal(bits(got), bits(exp), err_msg="bit patterns differ (signed zero?)")


def assert_values(got, exp):
    """Exact values (-0 == +0, NaN == NaN)."""
    _meta(got, exp)
    np.testing.assert_array_equal(wide(got), wide(exp))


def _ordered(x):
    """Half-precision bit patterns mapped to integers that order like the values."""
    i = x.view(np.int16).astype(np.int64)
    return np.where(i < 0, -32768 - i, i)


def assert_ulps(got, exp, n=1):
    """Halves: NaN where expected, elsewhere at most n units in the last place apart."""
    _meta(got, exp)
    g, e = wide(got), wide(exp)
    np.testing.assert_array_equal(np.isnan(g), np.isnan(e), err_msg="NaN positions differ")
    keep = ~np.isnan(e)
    d = np.abs(_ordered(got[keep]) - _ordered(exp[keep]))
    bad = d > n
    assert not bad.any(), (f"{bad.sum()} of {bad.size} elements more than {n} ulp apart: got "
                           f"{g[keep][bad][:6]}, expected {e[keep][bad][:6]}")


TRANSCENDENTAL_TOL = {"float32": (1e-6, 1e-7), "float64": (1e-12, 1e-15)}


def assert_close(got, exp, dt):
    """exp/log/tanh/power: ~2 ulp of float32/float64, 1 ulp of the halves (after rounding)."""
    if dt in HALVES:
        assert_ulps(got, exp, 1)
        return
    _meta(got, exp)
    rtol, atol = TRANSCENDENTAL_TOL[dt]
    np.testing.assert_allclose(got, exp, rtol=rtol, atol=atol)


def assert_within(got, exp64, dt, bound, tol):
    """|got - exp64| <= tol * bound elementwise (bound: e.g. the sum of |terms|)."""
    assert got.dtype == NP[dt] and got.shape == exp64.shape, (got.dtype, got.shape, exp64.shape)
    err = np.abs(got.astype(np.float64) - exp64)
    lim = tol * bound + 1e-300
    bad = ~(err <= lim)
    assert not bad.any(), f"{bad.sum()} elements off: got {got[bad][:6]}, expected {exp64[bad][:6]}"


@contextlib.contextmanager
def case(what):
    """Prefix an assertion failure with the case (a scalar, a size, a shape) that failed."""
    try:
        yield
    except AssertionError as e:
        raise AssertionError(f"{what}: {e}") from None


def worst(got, exp, inputs, k=5):
    """The k worst elements (NaN mismatches first) with their inputs, for failure messages."""
    g, e = wide(got).ravel(), wide(exp).ravel()
    if g.dtype.kind == "f":
        g64, e64 = g.astype(np.float64), e.astype(np.float64)
        with quiet():
            err = np.abs(g64 - e64) / np.maximum(np.abs(e64), 1e-300)
        err[np.isnan(g64) & np.isnan(e64)] = 0
        err[(g64 == e64)] = 0
        err[np.isnan(err)] = np.inf
    else:
        err = (g != e).astype(np.float64)
    idx = [i for i in np.argsort(-err, kind="stable")[:k] if err[i] > 0]
    rows = [f"inputs ({', '.join(repr(wide(x).ravel()[i].item()) for x in inputs)}): got {g[i].item()!r}, "
            f"expected {e[i].item()!r}" for i in idx]
    return "\n".join(["worst elements:"] + rows)


# ---- references (plain numpy, one per op) ---------------------------------------------
BINARY = ["add", "mul", "div", "power", "maximum"]
COMPARE = ["eq", "ne", "lt", "le", "gt", "ge"]
UNARY = ["log", "exp", "tanh"]
NUMPY_OP = {
    "add": np.add, "mul": np.multiply, "div": np.divide, "power": np.power, "maximum": np.maximum,
    "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
    "ge": np.greater_equal, "log": np.log, "exp": np.exp, "tanh": np.tanh,
}
# The dtypes each function accepts (the others are a TypeError).
ACCEPTS = {
    "add": DTYPES, "mul": DTYPES, "maximum": DTYPES, "div": FLOATS, "power": NUMERIC,
    **{c: DTYPES for c in COMPARE}, "log": FLOATS, "exp": FLOATS, "tanh": FLOATS,
}


def ref_ewise(op, *xs):
    """op over same-dtype arrays: halves in float32 rounded once, integers wrapping in their
    own dtype (numpy's integer ops), comparisons bool."""
    dt = xs[0].dtype
    with quiet():
        r = NUMPY_OP[op](*(wide(x) for x in xs))
        return r if op in COMPARE else r.astype(dt)


def ref_astype(x, dst):
    """numpy's cast; bfloat16 to integers/bool goes through the float32 it widens to."""
    with quiet():
        if NAME[x.dtype] == "bfloat16" and dst not in FLOATS:
            return x.astype(np.float32).astype(NP[dst])
        return x.astype(NP[dst])


def ref_sum64(x, axis):
    """An exact-enough float64 (floats) or wrapping int64 (integers, bool) sum."""
    if x.dtype.kind in "biu":
        return x.astype(np.int64).sum(axis=axis)
    return wide(x).astype(np.float64).sum(axis=axis)


def ref_max(x, axis):
    """max propagating NaN; bool: any."""
    if x.dtype == np.bool_:
        return x.any(axis=axis)
    return wide(x).max(axis=axis).astype(x.dtype)


def ref_matmul(x, y):
    """Integers: in int64 then wrapped to the dtype; halves: float32 product rounded once;
    float32/float64: the float64 product (compared with a tolerance)."""
    dt = NAME[x.dtype]
    if dt in INTS:
        return np.matmul(x.astype(np.int64), y.astype(np.int64)).astype(x.dtype)
    if dt in HALVES:
        return np.matmul(x.astype(np.float32), y.astype(np.float32)).astype(x.dtype)
    return np.matmul(x.astype(np.float64), y.astype(np.float64))


def ref_scatter_add(table, idx, a):
    """table[idx[r]] += a[r] in order, in float64 (exact for nice values) or int64."""
    acc = table.astype(np.int64 if table.dtype.kind in "iu" else np.float64)
    np.add.at(acc, idx, a.astype(acc.dtype))
    return acc.astype(table.dtype)


def ref_softmax_xent(z, y):
    z = z.astype(np.float64)
    m = z.max(axis=1)
    lse = np.log(np.exp(z - m[:, None]).sum(axis=1)) + m
    return lse, np.mean(lse - z[np.arange(len(y)), y])


def ref_softmax_xent_grad(z, y, lse, g, scale):
    p = np.exp(z.astype(np.float64) - lse.astype(np.float64)[:, None])
    p[np.arange(len(y)), y] -= 1
    return p * float(g) * scale


def ref_bn_forward(x, w, b, eps):
    x = x.astype(np.float64)
    mean = x.mean(axis=0)
    var = ((x - mean) ** 2).mean(axis=0)
    return mean, var, (x - mean) / np.sqrt(var + eps) * w + b


def ref_bn_backward(x, g, w, mean, var, eps):
    x, g, w, mean, var = (v.astype(np.float64) for v in (x, g, w, mean, var))
    rows = x.shape[0]
    inv = 1 / np.sqrt(var + eps)
    db = g.sum(axis=0)
    dw = (g * (x - mean)).sum(axis=0) * inv
    dx = w * inv * ((g - db / rows) - (x - mean) * inv * dw / rows)
    return dx, dw, db


def ref_adam(w, g, m, v, lr, beta1, beta2, eps, weight_decay, decay, bias_c1, bias_c2):
    w, g, m, v = (a.astype(np.float64) for a in (w, g, m, v))
    g = g + weight_decay * w
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    return decay * w - lr * (m / bias_c1) / (np.sqrt(v / bias_c2) + eps), m, v


def ref_sgd(w, g, u, lr, momentum, weight_decay):
    w, g, u = (a.astype(np.float64) for a in (w, g, u))
    g = g + weight_decay * w
    if momentum:
        u = momentum * u + (1 - momentum) * g
        g = u
    return w - lr * g, u


# ---- Array, to_numpy / from_numpy ---------------------------------------------------------
@pytest.mark.parametrize("dt", DTYPES)
def test_array_dtype_size_itemsize(M, dt):
    for size in (0, 1, 1031):
        a = M.Array(size, dt)
        assert a.dtype == dt and a.size == size and a.itemsize == NP[dt].itemsize


@pytest.mark.parametrize("name", ["float8", "complex64", "int16", "uint16", "Float32", ""])
def test_array_rejects_unsupported_dtype(M, name):
    with pytest.raises(TypeError) as e:
        M.Array(4, name)
    missing = [dt for dt in DTYPES if dt not in str(e.value)]
    assert not missing, f"message {str(e.value)!r} does not list {missing}"


@pytest.mark.parametrize("dt", DTYPES)
def test_roundtrip_bit_exact(M, dt):
    g = rng("roundtrip", dt)
    x = np.concatenate([specials(dt), random_bits(dt, 1100, g)])
    for shape in [(0,), (1,), (1031,), (3, 5, 7)]:
        with case(f"shape {shape}"):
            n = int(np.prod(shape))
            assert_bits(M.get(M.buf(x[:n]), shape), x[:n].reshape(shape))
    # to_numpy of strided views: transposed with an offset, and flipped (negative stride)
    a = M.buf(x[:1000])
    base = x[:1000]
    view = base[5:5 + 6 * 7].reshape(6, 7).T
    assert_bits(M.to_numpy(a, (7, 6), (1, 7), 5), view)
    i, j = np.arange(2)[:, None], np.arange(50)[None, :]
    assert_bits(M.to_numpy(a, (2, 50), (-100, -3), 999), base[999 - 100 * i - 3 * j])


# ---- fill, scalar_setitem, compact, ewise_setitem ----------------------------------------
FILL_VALUES = [0, 1, -1, 2.7, -2.7, 300, 0.1, -0.0, 1e10, -1e10, float("nan"), float("inf"),
               -float("inf"), True, False, 2**31 + 5, 2**53 + 1, 65520.0, 255.5]


@pytest.mark.parametrize("dt", DTYPES)
def test_fill(M, dt):
    for size in (0, 1, 1031):
        for v in FILL_VALUES:
            with case(f"fill({v!r}) size {size}"):
                out = M.out(size, dt)
                M.fill(out, v)
                assert_same(M.get(out), np.repeat(conv(v, dt), size))


@st.composite
def views(draw, broadcast=True):
    """A recipe for a strided view of a flat buffer: a 0-5-D base shape (size 0 and 1 dims
    included), a permutation, a slice per axis (steps may be negative), and optionally one
    broadcast axis (stride 0)."""
    ndim = draw(st.integers(0, 5))
    shape = tuple(draw(st.lists(st.sampled_from([2, 3, 1, 4, 5, 0]), min_size=ndim, max_size=ndim)))
    perm = tuple(draw(st.permutations(range(ndim))))
    bound = st.none() | st.integers(0, 5)
    slices = tuple(slice(draw(bound), draw(bound), draw(st.sampled_from([1, 2, -1, 3, -2])))
                   if draw(st.booleans()) else slice(None) for _ in range(ndim))
    bcast = None
    if broadcast and ndim <= 4 and draw(st.booleans()):
        bcast = (draw(st.integers(0, ndim)), draw(st.sampled_from([2, 3, 1, 0])))
    return shape, perm, slices, bcast


def apply_view(flat, recipe):
    """The numpy view of ``flat`` that the recipe describes, plus its (shape, strides, offset)
    in elements of the flat buffer."""
    shape, perm, slices, bcast = recipe
    v = flat.reshape(shape).transpose(perm)[slices + (Ellipsis,)]
    if bcast is not None:
        pos, n = bcast
        v = np.expand_dims(v, pos)
        v = np.broadcast_to(v, v.shape[:pos] + (n,) + v.shape[pos + 1:])
    item = flat.itemsize
    offset = (v.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) // item
    if v.size == 0:
        offset = 0
    return v, (v.shape, tuple(s // item for s in v.strides), offset)


@pytest.mark.parametrize("dt", DTYPES)
@HYPO
@given(recipe=views(), seed=st.integers(0, 2**32 - 1))
def test_compact(M, dt, recipe, seed):
    g = np.random.default_rng(seed)
    base = random_bits(dt, int(np.prod(recipe[0])), g)
    view, (shape, strides, offset) = apply_view(base, recipe)
    out = M.out(view.size, dt)
    M.compact(M.buf(base), out, shape, strides, offset)
    assert_bits(M.get(out), view.reshape(-1))


@pytest.mark.parametrize("dt", DTYPES)
@HYPO
@given(recipe=views(broadcast=False), seed=st.integers(0, 2**32 - 1))
def test_ewise_setitem(M, dt, recipe, seed):
    g = np.random.default_rng(seed)
    base = random_bits(dt, int(np.prod(recipe[0])), g)
    expected = base.copy()
    view, (shape, strides, offset) = apply_view(expected, recipe)
    src = random_bits(dt, view.size, g)
    view[...] = src.reshape(view.shape)
    out = M.buf(base)
    M.ewise_setitem(M.buf(src), out, shape, strides, offset)
    assert_bits(M.get(out), expected)


@pytest.mark.parametrize("dt", DTYPES)
@HYPO
@given(recipe=views(), seed=st.integers(0, 2**32 - 1))
def test_scalar_setitem(M, dt, recipe, seed):
    g = np.random.default_rng(seed)
    base = values(dt, int(np.prod(recipe[0])), g)
    _, (shape, strides, offset) = apply_view(base, recipe)
    for val in FILL_VALUES:
        expected = base.copy()
        if int(np.prod(shape)):  # (a broadcast axis only repeats elements: write through the view before it)
            base_shape, perm, slices, _ = recipe
            expected.reshape(base_shape).transpose(perm)[slices + (Ellipsis,)][...] = conv(val, dt)[0]
        out = M.buf(base)
        M.scalar_setitem(int(np.prod(shape)), val, out, shape, strides, offset)
        with case(f"value {val!r}"):
            assert_same(M.get(out), expected)


# ---- astype -------------------------------------------------------------------------------
CAST_FLOATS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 0.1, 0.5, -0.5, 2.5, -2.5, -1.5, -3.7, 127.5, 255.9,
               256.5, 300.0, -129.5, 65504.0, 65520.0, 70000.0, 1e10, -1e10, 2.0**31, -(2.0**31), 2147483647.0,
               -2147483649.0, 2.0**63, -(2.0**63), 3e38, 3.4e38, 1e300, 1e-42, 1e-5,
               1 + 2.0**-11 + 2.0**-40, 1 + 2.0**-8 + 2.0**-40]  # (the last two: no double rounding)
CAST_INTS = [0, 1, -1, 2, 127, 128, 255, 256, -128, -129, 2049, 65504, 65519, 65520, 16777217,
             2**24 + 2**16 + 1, 2**31 - 1, -(2**31), 2**53 + 1, 2**63 - 1, -(2**63)]


def cast_inputs(dt):
    g = rng("astype", dt)
    if dt in FLOATS:
        with quiet():
            return np.concatenate([np.array(CAST_FLOATS), g.standard_normal(200) * 100]).astype(NP[dt])
    if dt == "bool":
        return np.array([False, True, True, False])
    info = np.iinfo(NP[dt])
    fits = [v for v in CAST_INTS if info.min <= v <= info.max]
    return np.concatenate([np.array(fits, dtype=NP[dt]), values(dt, 200, g)])


@pytest.mark.parametrize("dst", DTYPES)
@pytest.mark.parametrize("src", DTYPES)
def test_astype(M, src, dst):
    x = cast_inputs(src)
    out = M.out(x.size, dst)
    M.astype(M.buf(x), out)
    assert_same(M.get(out), ref_astype(x, dst))


# ---- elementwise and scalar functions ----------------------------------------------------
def operands(op, dt, n=1000):
    """Two same-dtype arrays for op: random values, then every pair of dt's special values
    (and, for floats, some equal pairs)."""
    g = rng("operands", op, dt)
    if op == "power" and dt in INTS:
        x = values(dt, n, g, small=True)
        y = g.integers(0, 40, n, endpoint=True).astype(NP[dt])
        y[: n // 2] = g.integers(0, 6, n // 2)
        return x, y
    x, y = values(dt, n, g), values(dt, n, g)
    if op == "power":
        x = np.abs(x) + NP[dt].type(0.1)
    if dt in FLOATS:
        y[:50] = x[:50]
    sx, sy = pairs(specials(dt))
    return np.concatenate([x, sx]), np.concatenate([y, sy])


def check_op(op, dt, got, exp, *inputs):
    """Exact for integers, bool, comparisons and add/mul/div/maximum; ~2 ulp for the rest.
    A failure lists the worst elements with their ``inputs``."""
    try:
        _check_op(op, dt, got, exp)
    except AssertionError as e:
        if got.shape != exp.shape or got.dtype != exp.dtype:
            raise
        raise AssertionError(f"{op} {dt}: {e}\n{worst(got, exp, inputs)}") from None


def _check_op(op, dt, got, exp):
    if op in COMPARE:
        assert_same(got, exp)
    elif dt not in FLOATS or op in ("add", "mul", "div"):
        assert_same(got, exp)
    elif op == "maximum":
        assert_values(got, exp)  # the sign of a zero max(-0, +0) is not specified
    else:
        assert_close(got, exp, dt)


def _cases(ops):
    return [pytest.param(op, dt, id=f"{op}-{dt}") for op in ops for dt in ACCEPTS[op]]


@pytest.mark.parametrize("op,dt", _cases(BINARY + COMPARE))
def test_ewise_binary(M, op, dt):
    x, y = operands(op, dt)
    for n in (0, 1, x.size):
        with case(f"size {n}"):
            out = M.out(n, "bool" if op in COMPARE else dt)
            getattr(M, "ewise_" + op)(M.buf(x[:n]), M.buf(y[:n]), out)
            check_op(op, dt, M.get(out), ref_ewise(op, x[:n], y[:n]), x[:n], y[:n])


def scalar_values(op, dt):
    """Python scalars for scalar_<op>; each is converted to dt before the op."""
    if dt == "bool":
        return [True, False, 2, 0.5]
    if dt in INTS:
        return {"add": [7, -3, 2.7, 2**31 + 5, 2**53 + 1], "mul": [3, -2, 2.9], "maximum": [5, -1, 2.5],
                "power": [0, 1, 3, 2.5]}.get(op, [5, 2.7, -1, 0, 300])
    return {"add": [2.5, -0.3, 0.1], "mul": [-0.3, 3.0, 0.0], "div": [0.3, -2.0, 0.0],
            "power": [2.0, 0.5, -1.5, 3.0], "maximum": [0.25, -1.0, float("nan")]}.get(op, [0.1, 0.0, -1.0, 1e10])


@pytest.mark.parametrize("op,dt", _cases(BINARY + COMPARE))
def test_scalar(M, op, dt):
    x = np.concatenate([operands(op, dt)[0][:1000], specials(dt)])
    for val in scalar_values(op, dt):
        out = M.out(x.size, "bool" if op in COMPARE else dt)
        getattr(M, "scalar_" + op)(M.buf(x), val, out)
        # a full array, not a stride-0 one: numpy's pow takes a sqrt shortcut for a scalar-like
        # exponent 0.5 that gives NaN for (-inf) ** 0.5 instead of C's +inf
        s = np.repeat(conv(val, dt), x.size)
        with case(f"scalar {val!r}"):
            check_op(op, dt, M.get(out), ref_ewise(op, x, s), x)


@pytest.mark.parametrize("op,dt", _cases(UNARY))
def test_ewise_unary(M, op, dt):
    g = rng("unary", op, dt)
    x = values(dt, 1000, g)
    if op == "log":
        x = np.abs(x)
    x = np.concatenate([x, specials(dt)])
    for n in (0, 1, x.size):
        with case(f"size {n}"):
            out = M.out(n, dt)
            getattr(M, "ewise_" + op)(M.buf(x[:n]), out)
            check_op(op, dt, M.get(out), ref_ewise(op, x[:n]), x[:n])


@pytest.mark.parametrize("dt", NUMERIC)
def test_ewise_rows(M, dt):
    g = rng("rows", dt)
    rows, cols, off = 5, 7, 3
    full = values(dt, rows * cols, g, small=dt in INTS).reshape(rows, cols)
    row = values(dt, cols + 6, g, small=dt in INTS)
    if dt in INTS:  # the whole range too, so add/mul wrap
        full[0] = values(dt, cols, g)
    r = row[off: off + cols][None, :]
    for op in ("add", "mul", "div") if dt in FLOATS else ("add", "mul"):
        for swap in (False, True):
            out = M.out(rows * cols, dt)
            M.ewise_rows(op, M.buf(full), M.buf(row), off, out, cols, swap)
            operands_ = (np.broadcast_to(r, full.shape), full) if swap else (full, np.broadcast_to(r, full.shape))
            with case(f"swap={swap}"):
                check_op(op, dt, M.get(out, (rows, cols)), ref_ewise(op, *operands_), *operands_)


# ---- reductions ---------------------------------------------------------------------------
def sum_dtype(dt):
    return dt if dt in FLOATS else "int64"


REDUCE_SHAPES = [(7, 1), (3, 13), (4, 130), (1, 1031)]


@pytest.mark.parametrize("dt", DTYPES)
def test_reduce_sum(M, dt):
    g = rng("reduce_sum", dt)
    for n, r in REDUCE_SHAPES:
        with case(f"{n} runs of {r}"):
            out_dt = sum_dtype(dt)
            if dt in FLOATS:  # exact inputs: any summation order gives the rounded exact sum
                x = nice(dt, n * r, g, k=40)
                out = M.out(n, out_dt)
                M.reduce_sum(M.buf(x), out, r)
                exp = ref_sum64(x.reshape(n, r), 1).astype(NP[dt])
                (assert_ulps if dt in HALVES else assert_same)(M.get(out), exp)
            if dt in HALVES:
                continue
            x = values(dt, n * r, g)
            out = M.out(n, out_dt)
            M.reduce_sum(M.buf(x), out, r)
            exp = ref_sum64(x.reshape(n, r), 1)
            if dt in FLOATS:  # float32 within 1e-5, float64 within 1e-12 of the sum of |x|
                bound = np.abs(x.astype(np.float64)).reshape(n, r).sum(axis=1)
                assert_within(M.get(out), exp, dt, bound, 1e-5 if dt == "float32" else 1e-12)
            else:
                assert_same(M.get(out), exp)  # int64, wrapping


@pytest.mark.parametrize("dt,n", [("float16", 10000), ("bfloat16", 1000), ("bfloat16", 3000)])
def test_reduce_sum_half_accumulates_in_float32(M, dt, n):
    out = M.out(1, dt)
    M.reduce_sum(M.buf(np.ones(n, NP[dt])), out, n)
    assert_same(M.get(out), np.array([n]).astype(NP[dt]))


@pytest.mark.parametrize("dt", FLOATS)
def test_reduce_special_values(M, dt):
    x = np.array([1, np.nan, 2, np.inf, 1, 2, np.inf, -np.inf, 0, -np.inf, -1, -2]).astype(NP[dt])
    out = M.out(4, dt)
    M.reduce_sum(M.buf(x), out, 3)
    assert_same(M.get(out), np.array([np.nan, np.inf, np.nan, -np.inf]).astype(NP[dt]))
    out = M.out(4, dt)
    M.reduce_max(M.buf(x), out, 3)
    assert_same(M.get(out), np.array([np.nan, np.inf, np.inf, -1]).astype(NP[dt]))


@pytest.mark.parametrize("dt", DTYPES)
def test_reduce_max(M, dt):
    g = rng("reduce_max", dt)
    for n, r in REDUCE_SHAPES:
        with case(f"{n} runs of {r}"):
            x = values(dt, n * r, g)
            if dt in FLOATS and r > 1:
                x[(r + 1) % x.size] = np.nan  # row 1 (row 0 when n == 1) has a NaN
            out = M.out(n, dt)
            M.reduce_max(M.buf(x), out, r)
            assert_values(M.get(out), ref_max(x.reshape(n, r), 1))


# The widths 16-128 take the compiled-width column sums (cpu/column_sums.h).
SUM_MIDDLE_SHAPES = [(1, 1, 1), (3, 70, 5), (2, 130, 1), (1, 7, 33), (0, 3, 2), (2, 301, 16), (1, 130, 32),
                     (3, 67, 64), (1, 70, 128)]


@pytest.mark.parametrize("dt", DTYPES)
def test_reduce_sum_middle(M, dt):
    g = rng("reduce_sum_middle", dt)
    for o, r, i in SUM_MIDDLE_SHAPES:
        with case(f"(outer, reduce, inner) ({o}, {r}, {i})"):
            out_dt = sum_dtype(dt)
            x = nice(dt, o * r * i, g, k=40) if dt in HALVES else values(dt, o * r * i, g)
            out = M.out(o * i, out_dt)
            M.reduce_sum_middle(M.buf(x), out, o, r, i)
            got = M.get(out, (o, i))
            exp = ref_sum64(x.reshape(o, r, i), 1)
            if dt in HALVES:
                assert_ulps(got, exp.astype(NP[dt]))
            elif dt in FLOATS:
                bound = np.abs(x.astype(np.float64)).reshape(o, r, i).sum(axis=1)
                assert_within(got, exp, dt, bound, 1e-5 if dt == "float32" else 1e-12)
            else:
                assert_same(got, exp)


# ---- matmul, bmm, bmm_naive -------------------------------------------------------------
MM_DTYPES = FLOATS + INTS
MM_SHAPES = [(1, 1, 1), (7, 13, 65), (65, 7, 13), (13, 65, 1), (1, 65, 7), (3, 0, 4)]
BMM_SHAPES = [(1, 1, 1, 1), (3, 7, 13, 65), (2, 65, 7, 13), (4, 1, 65, 7), (2, 3, 0, 4)]


def mm_values(dt, shape, g):
    """Halves: multiples of 1/8 (their float32 products are exact); float32/float64: normal;
    integers: the whole range (products wrap)."""
    n = int(np.prod(shape))
    if dt in HALVES:
        return nice(dt, n, g).reshape(shape)
    return values(dt, n, g).reshape(shape)


def check_matmul(dt, got, x, y):
    exp = ref_matmul(x, y)
    if dt in INTS:
        assert_same(got, exp)
    elif dt in HALVES:
        assert_ulps(got, exp, 1)
    else:
        bound = np.matmul(np.abs(x.astype(np.float64)), np.abs(y.astype(np.float64)))
        assert_within(got, exp, dt, bound, 1e-5 if dt == "float32" else 1e-12)


@pytest.mark.parametrize("dt", MM_DTYPES)
def test_matmul(M, dt):
    g = rng("matmul", dt)
    for m, n, p in MM_SHAPES:
        with case(f"(m, n, p) ({m}, {n}, {p})"):
            x, y = mm_values(dt, (m, n), g), mm_values(dt, (n, p), g)
            out = M.out(m * p, dt)
            M.matmul(M.buf(x), M.buf(y), out, m, n, p)
            check_matmul(dt, M.get(out, (m, p)), x, y)


def strided_operand(x, layout, g):
    """A flat storage and the (strides, offset) of a view of it equal to x (batch, r, c).
    layout: compact | T (stored transposed) | bcast (one matrix, batch stride 0; x must be
    the same in every batch) | offset (inside a padded, offset block) | flip (rows reversed:
    negative stride)."""
    b, r, c = x.shape
    if layout == "compact":
        store = np.ascontiguousarray(x)
        view = store
    elif layout == "T":
        store = np.ascontiguousarray(x.transpose(0, 2, 1))
        view = store.transpose(0, 2, 1)
    elif layout == "bcast":
        store = np.ascontiguousarray(x[0])
        view = np.broadcast_to(store[None], x.shape)
    elif layout == "offset":
        store = mm_values(NAME[x.dtype], (b, r + 2, c + 3), g)
        store[:, 1: r + 1, 2: c + 2] = x
        view = store[:, 1: r + 1, 2: c + 2]
    else:
        store = np.ascontiguousarray(x[:, ::-1, :])
        view = store[:, ::-1, :]
    flat = store.reshape(-1)
    item = x.itemsize
    offset = (view.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) // item
    if view.size == 0:
        offset = 0
    assert np.array_equal(wide(view), wide(x))
    return flat, tuple(s // item for s in view.strides), offset


LAYOUTS = [("compact", "compact"), ("T", "compact"), ("compact", "T"), ("T", "T"), ("bcast", "compact"),
           ("compact", "bcast"), ("offset", "flip"), ("flip", "offset")]


@pytest.mark.parametrize("la,lb", LAYOUTS, ids=[f"{a}-{b}" for a, b in LAYOUTS])
@pytest.mark.parametrize("fn", ["bmm", "bmm_naive"])
@pytest.mark.parametrize("dt", MM_DTYPES)
def test_bmm(M, dt, fn, la, lb):
    g = rng("bmm", dt, fn, la, lb)
    for batch, m, n, p in BMM_SHAPES:
        with case(f"(batch, m, n, p) ({batch}, {m}, {n}, {p})"):
            x, y = mm_values(dt, (batch, m, n), g), mm_values(dt, (batch, n, p), g)
            if la == "bcast":
                x = np.broadcast_to(x[:1], x.shape).copy()
            if lb == "bcast":
                y = np.broadcast_to(y[:1], y.shape).copy()
            xa, xs, xo = strided_operand(x, la, g)
            ya, ys, yo = strided_operand(y, lb, g)
            out = M.out(batch * m * p, dt)
            getattr(M, fn)(M.buf(xa), M.buf(ya), out, batch, m, n, p, xs, xo, ys, yo)
            check_matmul(dt, M.get(out, (batch, m, p)), x, y)


# ---- gather_rows / scatter_add_rows ---------------------------------------------------------
TABLE_DTYPES = ["float32", "float64", "float16", "int64"]
INDEX_DTYPES = ["int32", "int64", "uint8", "float32"]


@pytest.mark.parametrize("idt", INDEX_DTYPES)
@pytest.mark.parametrize("tdt", TABLE_DTYPES)
def test_gather_rows(M, tdt, idt):
    g = rng("gather", tdt, idt)
    num_rows, dim = 11, 5
    table = values(tdt, num_rows * dim, g).reshape(num_rows, dim)
    for k in (0, 1, 17):
        with case(f"{k} indices"):
            idx = g.integers(0, num_rows, k)
            idx[:2] = [0, num_rows - 1][:k]
            out = M.out(k * dim, tdt)
            M.gather_rows(M.buf(table), M.buf(idx.astype(NP[idt])), out, num_rows, dim)
            assert_same(M.get(out, (k, dim)), table[idx])


@pytest.mark.parametrize("idt", INDEX_DTYPES)
@pytest.mark.parametrize("tdt", TABLE_DTYPES)
def test_scatter_add_rows(M, tdt, idt):
    g = rng("scatter", tdt, idt)
    num_rows, dim = 11, 5
    for k in (0, 1, 17):
        with case(f"{k} indices"):
            table = nice(tdt, num_rows * dim, g, k=80).reshape(num_rows, dim)
            a = nice(tdt, k * dim, g, k=80).reshape(k, dim)
            idx = g.integers(0, num_rows, k)
            idx[:3] = [num_rows - 1, 3, 3][:k]  # repeated rows accumulate
            out = M.buf(table)
            M.scatter_add_rows(M.buf(a), M.buf(idx.astype(NP[idt])), out, num_rows, dim)
            assert_same(M.get(out, (num_rows, dim)), ref_scatter_add(table, idx, a))


@pytest.mark.parametrize("dt,start,step", [("float16", 1000.0, 0.125), ("bfloat16", 256.0, 0.5)])
def test_scatter_add_rows_half_rounds_once(M, dt, start, step):
    """Four adds of a quarter ulp: rounded once they move the row by one ulp; rounded at
    each add they would vanish."""
    table = np.full((3, 2), start, NP[dt])
    out = M.buf(table)
    M.scatter_add_rows(M.buf(np.full((4, 2), step, NP[dt])), M.buf(np.array([1, 1, 1, 1])), out, 3, 2)
    exp = np.array([[start] * 2, [start + 4 * step] * 2, [start] * 2]).astype(NP[dt])
    assert_same(M.get(out, (3, 2)), exp)


# ---- fused kernels: softmax cross-entropy, batch norm, optimizer steps --------------------
FUSED_TOL = {"float32": 1e-5, "float64": 1e-12}


def assert_fused(got, exp, dt, scale=1.0):
    """float32 within 1e-5, float64 within 1e-12 (relative, with an absolute floor of that
    size times the values' scale)."""
    tol = FUSED_TOL[dt]
    assert got.dtype == NP[dt], got.dtype
    np.testing.assert_allclose(got, exp, rtol=tol, atol=tol * scale)


LABEL_DTYPES = ["int64", "float32"]


@pytest.mark.parametrize("ldt", LABEL_DTYPES)
@pytest.mark.parametrize("dt", FUSED)
def test_softmax_xent(M, dt, ldt):
    g = rng("softmax_xent", dt, ldt)
    n, k = 13, 7
    z = (g.standard_normal((n, k)) * 3).astype(NP[dt])
    z[0] += 100  # exp(100) overflows float32: the max must be subtracted
    y = g.integers(0, k, n)
    lse, loss = M.out(n, dt), M.out(1, dt)
    M.softmax_xent(M.buf(z), M.buf(y.astype(NP[ldt])), lse, loss, n, k)
    lse_ref, loss_ref = ref_softmax_xent(z, y)
    assert_fused(M.get(lse), lse_ref, dt, scale=100)
    assert_fused(M.get(loss), np.array([loss_ref]), dt, scale=100)


@pytest.mark.parametrize("ldt", LABEL_DTYPES)
@pytest.mark.parametrize("dt", FUSED)
def test_softmax_xent_grad(M, dt, ldt):
    g = rng("softmax_xent_grad", dt, ldt)
    n, k = 13, 7
    z = (g.standard_normal((n, k)) * 3).astype(NP[dt])
    y = g.integers(0, k, n)
    lse = ref_softmax_xent(z, y)[0].astype(NP[dt])
    up = np.array([0.7], NP[dt])
    out = M.out(n * k, dt)
    M.softmax_xent_grad(M.buf(z), M.buf(y.astype(NP[ldt])), M.buf(lse), M.buf(up), out, n, k, 1 / n)
    assert_fused(M.get(out, (n, k)), ref_softmax_xent_grad(z, y, lse, up[0], 1 / n), dt, scale=0.1)


@pytest.mark.parametrize("dt", FUSED)
def test_bn_forward(M, dt):
    g = rng("bn_forward", dt)
    rows, cols, eps = 17, 6, 1e-5
    x = (g.standard_normal((rows, cols)) * 2 + 3).astype(NP[dt])
    x[:, 0] = 1.5  # a constant column: var 0, out = b
    w, b = (g.standard_normal(cols).astype(NP[dt]) for _ in range(2))
    out, mean, var = M.out(rows * cols, dt), M.out(cols, dt), M.out(cols, dt)
    M.bn_forward(M.buf(x), M.buf(w), M.buf(b), out, mean, var, rows, cols, eps)
    mean_ref, var_ref, out_ref = ref_bn_forward(x, w, b, eps)
    assert_fused(M.get(mean), mean_ref, dt, scale=3)
    assert_fused(M.get(var), var_ref, dt, scale=4)
    assert_fused(M.get(out, (rows, cols)), out_ref, dt, scale=3)


@pytest.mark.parametrize("dt", FUSED)
def test_bn_backward(M, dt):
    g = rng("bn_backward", dt)
    rows, cols, eps = 17, 6, 1e-5
    x = (g.standard_normal((rows, cols)) * 2 + 3).astype(NP[dt])
    up = g.standard_normal((rows, cols)).astype(NP[dt])
    w = g.standard_normal(cols).astype(NP[dt])
    mean, var, _ = ref_bn_forward(x, w, w, eps)
    mean, var = mean.astype(NP[dt]), var.astype(NP[dt])
    dx, dw, db = M.out(rows * cols, dt), M.out(cols, dt), M.out(cols, dt)
    M.bn_backward(M.buf(x), M.buf(up), M.buf(w), M.buf(mean), M.buf(var), dx, dw, db, rows, cols, eps)
    dx_ref, dw_ref, db_ref = ref_bn_backward(x, up, w, mean, var, eps)
    assert_fused(M.get(dx, (rows, cols)), dx_ref, dt, scale=3)
    assert_fused(M.get(dw), dw_ref, dt, scale=10)
    assert_fused(M.get(db), db_ref, dt, scale=10)


ADAM_CONFIGS = [  # lr, beta1, beta2, eps, weight_decay, decay, bias_c1, bias_c2
    (1e-3, 0.9, 0.999, 1e-8, 0.01, 1.0, 1 - 0.9**3, 1 - 0.999**3),  # Adam, L2 decay, step 3
    (1e-2, 0.8, 0.99, 1e-6, 0.0, 1 - 1e-2 * 0.1, 1.0, 1.0),  # AdamW, no bias correction
]


@pytest.mark.parametrize("cfg", range(len(ADAM_CONFIGS)))
@pytest.mark.parametrize("dt", FUSED)
def test_adam_step(M, dt, cfg):
    g = rng("adam", dt, cfg)
    n = 1031
    w, grad = (g.standard_normal(n).astype(NP[dt]) for _ in range(2))
    m = (g.standard_normal(n) * 0.1).astype(NP[dt])
    v = (np.abs(g.standard_normal(n)) * 0.01).astype(NP[dt])
    bm, bv, out = M.buf(m), M.buf(v), M.out(n, dt)
    M.adam_step(M.buf(w), M.buf(grad), bm, bv, out, *ADAM_CONFIGS[cfg])
    out_ref, m_ref, v_ref = ref_adam(w, grad, m, v, *ADAM_CONFIGS[cfg])
    assert_fused(M.get(out), out_ref, dt)
    assert_fused(M.get(bm), m_ref, dt, scale=0.1)
    assert_fused(M.get(bv), v_ref, dt, scale=0.01)


SGD_CONFIGS = [(0.1, 0.9, 0.01), (0.1, 0.0, 0.0), (0.05, 0.0, 0.01), (0.1, 0.5, 0.0)]  # lr, momentum, wd


@pytest.mark.parametrize("cfg", range(len(SGD_CONFIGS)))
@pytest.mark.parametrize("dt", FUSED)
def test_sgd_step(M, dt, cfg):
    g = rng("sgd", dt, cfg)
    n = 1031
    w, grad, u = (g.standard_normal(n).astype(NP[dt]) for _ in range(3))
    bu, out = M.buf(u), M.out(n, dt)
    M.sgd_step(M.buf(w), M.buf(grad), bu, out, *SGD_CONFIGS[cfg])
    out_ref, u_ref = ref_sgd(w, grad, u, *SGD_CONFIGS[cfg])
    assert_fused(M.get(out), out_ref, dt)
    if SGD_CONFIGS[cfg][1]:
        assert_fused(M.get(bu), u_ref, dt)
    else:
        assert_bits(M.get(bu), u)  # without momentum u is not touched


# ---- bad inputs: the same exception type in every module ---------------------------------------
def _z(M, dt, n=4):
    return M.out(n, dt)


def _ints(M, dt, v):
    return M.buf(np.array(v).astype(NP[dt]))


def _ewise(op, da, db, do):
    return lambda M: getattr(M, "ewise_" + op)(_z(M, da), _z(M, db), _z(M, do))


def _scalar(op, da, do, val=2):
    return lambda M: getattr(M, "scalar_" + op)(_z(M, da), val, _z(M, do))


def _unary(op, da, do):
    return lambda M: getattr(M, "ewise_" + op)(_z(M, da), _z(M, do))


def _rows(op, full, row, out, row_offset=0, cols=3):
    return lambda M: M.ewise_rows(op, _z(M, full, 6), _z(M, row, 3), row_offset, _z(M, out, 6), cols, False)


def _mm(fn, da, db, do):
    def call(M):
        a, b, out = _z(M, da), _z(M, db), _z(M, do)
        if fn == "matmul":
            return M.matmul(a, b, out, 2, 2, 2)
        return getattr(M, fn)(a, b, out, 1, 2, 2, 2, (4, 2, 1), 0, (4, 2, 1), 0)
    return call


def _index(fn, idt, v, table="float32", out="float32"):
    """gather_rows / scatter_add_rows over 3 rows of 2 with indices [0, v, 1]."""
    return lambda M: getattr(M, fn)(_z(M, table, 6), _ints(M, idt, [0, v, 1]), _z(M, out, 6), 3, 2)


# the fused kernels with buffers of dtype d, except one of dtype d2
_FUSED_CALLS = {
    "softmax_xent": lambda M, d, d2: M.softmax_xent(_z(M, d, 6), _ints(M, "int64", [0, 1]), _z(M, d2, 2),
                                                    _z(M, d, 1), 2, 3),
    "softmax_xent_grad": lambda M, d, d2: M.softmax_xent_grad(_z(M, d, 6), _ints(M, "int64", [0, 1]), _z(M, d, 2),
                                                              _z(M, d, 1), _z(M, d2, 6), 2, 3, 1.0),
    "bn_forward": lambda M, d, d2: M.bn_forward(_z(M, d, 6), _z(M, d, 3), _z(M, d, 3), _z(M, d2, 6), _z(M, d, 3),
                                                _z(M, d, 3), 2, 3, 1e-5),
    "bn_backward": lambda M, d, d2: M.bn_backward(_z(M, d, 6), _z(M, d, 6), _z(M, d, 3), _z(M, d, 3), _z(M, d, 3),
                                                  _z(M, d2, 6), _z(M, d, 3), _z(M, d, 3), 2, 3, 1e-5),
    "adam_step": lambda M, d, d2: M.adam_step(_z(M, d), _z(M, d2), _z(M, d), _z(M, d), _z(M, d), 1e-3, 0.9, 0.999,
                                              1e-8, 0.0, 1.0, 1.0, 1.0),
    "sgd_step": lambda M, d, d2: M.sgd_step(_z(M, d), _z(M, d2), _z(M, d), _z(M, d), 0.1, 0.9, 0.0),
}


def _xent(fn, ldt, v):
    """softmax_xent(_grad) over 2 rows of 3 classes with labels [0, v]."""
    if fn == "softmax_xent":
        return lambda M: M.softmax_xent(_z(M, "float32", 6), _ints(M, ldt, [0, v]), _z(M, "float32", 2),
                                        _z(M, "float32", 1), 2, 3)
    return lambda M: M.softmax_xent_grad(_z(M, "float32", 6), _ints(M, ldt, [0, v]), _z(M, "float32", 2),
                                         _z(M, "float32", 1), _z(M, "float32", 6), 2, 3, 1.0)


def _bad_cases():
    """(id, call(M), exception type) for every bad input."""
    cases = []

    def bad(case_id, exc, fn):
        cases.append(pytest.param(fn, exc, id=case_id))

    # dtypes a function does not accept
    for op in BINARY + UNARY:
        for dt in (d for d in DTYPES if d not in ACCEPTS[op]):
            if op in UNARY:
                bad(f"ewise_{op}-{dt}", TypeError, _unary(op, dt, dt))
            else:
                bad(f"ewise_{op}-{dt}", TypeError, _ewise(op, dt, dt, dt))
                bad(f"scalar_{op}-{dt}", TypeError, _scalar(op, dt, dt))
    # mixed dtypes and wrong out dtypes
    for op in BINARY + COMPARE:
        cmp = op in COMPARE
        bad(f"ewise_{op}-f32+f64", TypeError, _ewise(op, "float32", "float64", "bool" if cmp else "float32"))
        bad(f"ewise_{op}-i32+i64", TypeError, _ewise(op, "int32", "int64", "bool" if cmp else "int32"))
        wrong = "float32" if cmp else "float64"
        bad(f"ewise_{op}-out-{wrong}", TypeError, _ewise(op, "float32", "float32", wrong))
        bad(f"scalar_{op}-out-{wrong}", TypeError, _scalar(op, "float32", wrong, 1.0))
    for op in UNARY:
        bad(f"ewise_{op}-out-f64", TypeError, _unary(op, "float32", "float64"))
    # integer powers with negative exponents
    for dt in ("int32", "int64"):
        bad(f"ewise_power-negative-{dt}", ValueError,
            lambda M, dt=dt: M.ewise_power(_ints(M, dt, [2, 2, 2]), _ints(M, dt, [1, -1, 2]), _z(M, dt, 3)))
        bad(f"scalar_power-negative-{dt}", ValueError,
            lambda M, dt=dt: M.scalar_power(_ints(M, dt, [2, 3]), -1, _z(M, dt, 2)))
    # buffers and copies
    bad("Array-negative-size", ValueError, lambda M: M.Array(-1, "float32"))
    for src, dst in [("float64", "float32"), ("float32", "bfloat16"), ("float16", "bfloat16"),
                     ("bfloat16", "float16"), ("int64", "int32"), ("uint8", "bool"), ("bool", "uint8"),
                     ("float32", "int32")]:
        bad(f"from_numpy-{src}-into-{dst}", TypeError,
            lambda M, s=src, d=dst: M.from_numpy(np.zeros(4, NP[s]), _z(M, d)))
    bad("from_numpy-int16", TypeError, lambda M: M.from_numpy(np.zeros(4, np.int16), _z(M, "int32")))
    bad("from_numpy-size", ValueError, lambda M: M.from_numpy(np.zeros(5, np.float32), _z(M, "float32")))
    bad("astype-size", ValueError, lambda M: M.astype(_z(M, "float32", 4), _z(M, "int32", 5)))
    bad("compact-mixed", TypeError, lambda M: M.compact(_z(M, "float32"), _z(M, "float64"), (4,), (1,), 0))
    bad("ewise_setitem-mixed", TypeError, lambda M: M.ewise_setitem(_z(M, "int32"), _z(M, "int64"), (4,), (1,), 0))
    # ewise_rows
    bad("ewise_rows-div-int32", TypeError, _rows("div", "int32", "int32", "int32"))
    bad("ewise_rows-mixed", TypeError, _rows("add", "float32", "float64", "float32"))
    bad("ewise_rows-op", ValueError, _rows("sub", "float32", "float32", "float32"))
    bad("ewise_rows-row-offset", ValueError, _rows("add", "float32", "float32", "float32", row_offset=1))
    # reductions
    for dt, wrong in [("float32", "float64"), ("float16", "float32"), ("bfloat16", "float32"), ("int32", "int32"),
                      ("uint8", "uint8"), ("bool", "bool"), ("int64", "float64")]:
        bad(f"reduce_sum-{dt}-into-{wrong}", TypeError,
            lambda M, dt=dt, w=wrong: M.reduce_sum(_z(M, dt, 6), _z(M, w, 2), 3))
        bad(f"reduce_sum_middle-{dt}-into-{wrong}", TypeError,
            lambda M, dt=dt, w=wrong: M.reduce_sum_middle(_z(M, dt, 6), _z(M, w, 2), 1, 3, 2))
    for dt, wrong in [("float32", "float64"), ("bool", "int64"), ("int32", "int64")]:
        bad(f"reduce_max-{dt}-into-{wrong}", TypeError,
            lambda M, dt=dt, w=wrong: M.reduce_max(_z(M, dt, 6), _z(M, w, 2), 3))
    bad("reduce_sum-size-0", ValueError, lambda M: M.reduce_sum(_z(M, "float32", 6), _z(M, "float32", 2), 0))
    bad("reduce_max-size-0", ValueError, lambda M: M.reduce_max(_z(M, "float32", 6), _z(M, "float32", 2), 0))
    # matmul
    for fn in ("matmul", "bmm", "bmm_naive"):
        bad(f"{fn}-bool", TypeError, _mm(fn, "bool", "bool", "bool"))
        bad(f"{fn}-mixed", TypeError, _mm(fn, "float32", "float64", "float32"))
        bad(f"{fn}-out", TypeError, _mm(fn, "float32", "float32", "float64"))
    # gather_rows / scatter_add_rows
    for fn in ("gather_rows", "scatter_add_rows"):
        for idt, v in [("int64", 3), ("int32", -1), ("uint8", 255), ("float32", 1.5), ("float32", -1.0),
                       ("float32", np.nan), ("float32", 3.0)]:
            bad(f"{fn}-index-{idt}-{v}", IndexError, _index(fn, idt, v))
        bad(f"{fn}-index-bool", TypeError, _index(fn, "bool", True))
        bad(f"{fn}-mixed", TypeError, _index(fn, "int64", 2, out="float64"))
    bad("scatter_add_rows-bool-table", TypeError, _index("scatter_add_rows", "int64", 2, "bool", "bool"))
    # fused kernels: float32/float64 only, one dtype per call
    for name, call in _FUSED_CALLS.items():
        for d, d2, kind in [("float16", "float16", "float16"), ("bfloat16", "bfloat16", "bfloat16"),
                            ("int32", "int32", "int32"), ("float32", "float64", "mixed")]:
            bad(f"{name}-{kind}", TypeError, lambda M, c=call, d=d, d2=d2: c(M, d, d2))
    for fn in ("softmax_xent", "softmax_xent_grad"):
        for ldt, v in [("int64", 3), ("float32", 1.5), ("int32", -1)]:
            bad(f"{fn}-label-{ldt}-{v}", IndexError, _xent(fn, ldt, v))
    bad("softmax_xent-label-count", ValueError, lambda M: M.softmax_xent(
        _z(M, "float64", 6), _ints(M, "int64", [0, 1, 2]), _z(M, "float64", 2), _z(M, "float64", 1), 2, 3))
    return cases


@pytest.mark.parametrize("call,exc", _bad_cases())
def test_bad_input(M, call, exc):
    with pytest.raises(exc):
        call(M)
