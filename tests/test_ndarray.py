"""NDArray against numpy on every present device: views, copies, math, errors."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from needle.backend_ndarray import ndarray as nd

ALL = [
    pytest.param(nd.cpu(), id="cpu", marks=pytest.mark.skipif(not nd.cpu().enabled(), reason=str(nd.cpu().reason))),
    pytest.param(nd.cuda(), id="cuda", marks=pytest.mark.skipif(not nd.cuda().enabled(), reason=str(nd.cuda().reason))),
    pytest.param(nd.cpu_numpy(), id="cpu_numpy"),
]
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def make(x, device):
    return nd.NDArray(np.asarray(x, dtype=np.float32), device=device)


def check(a, ref, atol=1e-5, rtol=1e-5):
    got = a.numpy()
    assert got.shape == np.shape(ref), (got.shape, np.shape(ref))
    np.testing.assert_allclose(got, ref, atol=atol, rtol=rtol)


# ---- random views -------------------------------------------------------------
@st.composite
def views(draw):
    """A random array and a random chain of view ops applied to it (as callables on both)."""
    ndim = draw(st.integers(0, 6))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim)))
    ops = []
    cur = shape
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["permute", "slice", "broadcast", "flip", "int"]))
        if kind == "permute" and cur:
            perm = tuple(draw(st.permutations(range(len(cur)))))
            ops.append(("permute", perm))
            cur = tuple(cur[p] for p in perm)
        elif kind == "slice" and cur:
            sl = []
            for n in cur:
                start = draw(st.integers(-n - 1, n + 1)) if n else 0
                stop = draw(st.integers(-n - 1, n + 1)) if n else 0
                step = draw(st.integers(1, 3))
                sl.append(slice(start, stop, step))
            ops.append(("slice", tuple(sl)))
            cur = np.empty(cur)[tuple(sl)].shape
        elif kind == "broadcast":
            new = tuple(draw(st.integers(1, 3)) if n == 1 else n for n in cur)
            lead = tuple(draw(st.lists(st.integers(1, 3), max_size=6 - len(cur) if len(cur) < 6 else 0)))
            ops.append(("broadcast", lead + new))
            cur = lead + new
        elif kind == "flip" and cur:
            axes = tuple(sorted(set(draw(st.lists(st.integers(0, len(cur) - 1), min_size=1, max_size=len(cur))))))
            ops.append(("flip", axes))
        elif kind == "int" and cur and all(cur):
            idx = tuple(draw(st.integers(-n, n - 1)) for n in cur)
            ops.append(("int", idx))
            cur = tuple(1 for _ in cur)
    return shape, ops


def apply_np(x, ops):
    for kind, arg in ops:
        if kind == "permute":
            x = x.transpose(arg)
        elif kind == "slice":
            x = x[arg]
        elif kind == "broadcast":
            x = np.broadcast_to(x, arg)
        elif kind == "flip":
            x = np.flip(x, arg)
        elif kind == "int":
            x = x[tuple(slice(i, i + 1 if i != -1 else None) for i in arg)]
    return x


def apply_nd(x, ops):
    for kind, arg in ops:
        if kind == "permute":
            x = x.permute(arg)
        elif kind == "slice":
            x = x[arg]
        elif kind == "broadcast":
            x = x.broadcast_to(arg)
        elif kind == "flip":
            x = x.flip(arg)
        elif kind == "int":
            x = x[arg]
    return x


@pytest.mark.parametrize("device", ALL)
@HYP
@given(views())
def test_random_views_compact(device, case):
    shape, ops = case
    x = np.asarray(np.random.randn(*shape), dtype=np.float32)
    ref = apply_np(x, ops)
    a = apply_nd(make(x, device), ops)
    assert a.shape == ref.shape
    check(a, ref)
    c = a.compact()
    assert c.is_compact()
    check(c, ref)


@pytest.mark.parametrize("device", ALL)
@HYP
@given(views(), st.sampled_from(["add", "mul", "sum", "max", "exp"]))
def test_random_views_math(device, case, op):
    shape, ops = case
    x = np.asarray(np.random.randn(*shape), dtype=np.float32)
    ref = apply_np(x, ops)
    a = apply_nd(make(x, device), ops)
    if op == "add":
        check(a + a, ref + ref)
    elif op == "mul":
        check(a * 2.5, ref * np.float32(2.5))
    elif op == "exp":
        check(a.exp(), np.exp(ref))
    elif ref.ndim:
        axis = ref.ndim - 1
        if op == "sum":
            check(a.sum(axis=axis), ref.sum(axis=axis), atol=1e-4)
        elif ref.shape[axis]:
            check(a.max(axis=axis), ref.max(axis=axis))


@pytest.mark.parametrize("device", ALL)
@HYP
@given(views(), st.booleans())
def test_random_views_setitem(device, case, scalar):
    """Writes through a (non-broadcast) view land where numpy's do."""
    shape, ops = case
    cut = next((i for i, o in enumerate(ops) if o[0] in ("broadcast", "flip")), len(ops))
    ops = ops[:cut]
    x = np.asarray(np.random.randn(*shape), dtype=np.float32)
    a = make(x, device)
    ptr = a._handle.ptr() if hasattr(a._handle, "ptr") else None
    view = apply_np(x, ops)
    if scalar:
        view[...] = 3.0
        apply_nd_set(a, ops, 3.0)
    else:
        val = np.asarray(np.random.randn(*view.shape), dtype=np.float32)
        view[...] = val
        apply_nd_set(a, ops, make(val, device))
    check(a, x)
    if ptr is not None:
        assert a._handle.ptr() == ptr


def apply_nd_set(a, ops, value):
    """Set through a chain of views: rebuild the final view and write into it."""
    view = apply_nd(a, ops)
    full_index = tuple(slice(None) for _ in view.shape)
    view[full_index] = value


# ---- construction and conversion ---------------------------------------------------
@pytest.mark.parametrize("device", ALL)
def test_construction(device):
    check(nd.NDArray([[1, 2], [3, 4]], device=device), [[1, 2], [3, 4]])
    check(nd.NDArray(np.arange(6, dtype=np.int64).reshape(2, 3), device=device), np.arange(6).reshape(2, 3))
    check(nd.NDArray(np.array([True, False]), device=device), [1, 0])
    check(nd.NDArray(3.5, device=device), np.float32(3.5))
    a = make(np.ones((2, 2)), device)
    b = nd.NDArray(a)
    b[0, 0] = 5.0
    check(a, np.ones((2, 2)))  # NDArray(other) copies
    assert a.dtype == "float32" and a.size == 4 and a.ndim == 2
    check(nd.array([1, 2], dtype="float64", device=device), [1, 2])
    check(nd.full((2, 3), 1.5, device=device), np.full((2, 3), 1.5))
    assert nd.empty((0, 3), device=device).shape == (0, 3)
    np.testing.assert_array_equal(np.asarray(a), np.ones((2, 2)))


def test_subclass_construction():
    class Sub(nd.NDArray):
        pass

    s = Sub(np.arange(3.0), device=nd.cpu_numpy())
    check(s, np.arange(3.0))


@pytest.mark.parametrize("device", ALL)
def test_to_other_device(device):
    x = np.random.randn(3, 4).astype(np.float32)
    a = make(x, device)
    b = a.to(nd.cpu_numpy())
    assert b.device == nd.cpu_numpy()
    check(b, x)
    assert a.to(device) is a


@pytest.mark.parametrize("device", ALL)
def test_flat_aliases(device):
    a = make(np.zeros((2, 3)), device)
    f = a.flat
    f[4] = f[4] + 1.0
    check(a, [[0, 0, 0], [0, 1, 0]])
    assert f._handle is a._handle


@pytest.mark.parametrize("device", ALL)
def test_reshape_views_and_copies(device):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    a = make(x, device)
    r = a.reshape((4, -1))
    assert r._handle is a._handle
    check(r, x.reshape(4, 6))
    p = a.permute((2, 1, 0)).reshape((24,))
    check(p, x.transpose(2, 1, 0).reshape(24))
    check(a.reshape(24), x.reshape(24))


@pytest.mark.parametrize("device", ALL)
def test_as_strided_sliding_window(device):
    x = np.arange(10, dtype=np.float32)
    a = make(x, device)
    w = a.as_strided((8, 3), (1, 1))
    check(w, np.lib.stride_tricks.sliding_window_view(x, 3))
    assert w._handle is a._handle


# ---- elementwise math ------------------------------------------------------------
BINARY = [
    ("add", lambda a, b: a + b, lambda a, b: a + b),
    ("sub", lambda a, b: a - b, lambda a, b: a - b),
    ("mul", lambda a, b: a * b, lambda a, b: a * b),
    ("div", lambda a, b: a / b, lambda a, b: a / b),
    ("maximum", lambda a, b: a.maximum(b), np.maximum),
    ("eq", lambda a, b: a == b, lambda a, b: (a == b).astype(np.float32)),
    ("ne", lambda a, b: a != b, lambda a, b: (a != b).astype(np.float32)),
    ("ge", lambda a, b: a >= b, lambda a, b: (a >= b).astype(np.float32)),
    ("gt", lambda a, b: a > b, lambda a, b: (a > b).astype(np.float32)),
    ("lt", lambda a, b: a < b, lambda a, b: (a < b).astype(np.float32)),
    ("le", lambda a, b: a <= b, lambda a, b: (a <= b).astype(np.float32)),
]


@pytest.mark.parametrize("device", ALL)
@pytest.mark.parametrize("name,f,ref", BINARY, ids=[b[0] for b in BINARY])
@pytest.mark.parametrize("shape", [(1,), (7, 13), (3, 1, 5), (100003,)])
def test_ewise_and_scalar(device, name, f, ref, shape):
    x = np.asarray(np.random.randn(*shape), dtype=np.float32)
    y = np.random.randn(*shape).astype(np.float32)
    y[::3] = x[::3]  # exercise equality
    a, b = make(x, device), make(y, device)
    check(f(a, b), ref(x, y))
    check(f(a, 0.5), ref(x, np.float32(0.5)))


@pytest.mark.parametrize("device", ALL)
def test_unary_power_and_reflected(device):
    x = np.random.rand(5, 6).astype(np.float32) + 0.1
    a = make(x, device)
    check(a.log(), np.log(x))
    check(a.exp(), np.exp(x))
    check(a.tanh(), np.tanh(x))
    check(nd.log(a), np.log(x))
    check(-a, -x)
    check(a**2, x**2)
    check(a**0.5, x**0.5)
    check(a ** make(x, device), x**x)
    check(2 - a, 2 - x)
    check(2 * a, 2 * x)
    check(1 + a, 1 + x)
    check(2 / a, 2 / x)
    neg = make(-x, device) ** 0.5
    assert np.isnan(neg.numpy()).all()


@pytest.mark.parametrize("device", ALL)
def test_ops_on_views_do_not_alias(device):
    x = np.random.randn(4, 5).astype(np.float32)
    a = make(x, device)
    t = a.permute((1, 0))
    check(t + 1, x.T + 1)
    check(a, x)


# ---- reductions ---------------------------------------------------------------
@pytest.mark.parametrize("device", ALL)
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1, (0, 2), (1, 2), (0, 1, 2)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(device, axis, keepdims):
    x = np.random.randn(3, 4, 5).astype(np.float32)
    a = make(x, device)
    s = a.sum(axis=axis, keepdims=keepdims)
    m = a.max(axis=axis, keepdims=keepdims)
    rs = x.sum(axis=axis, keepdims=keepdims)
    rm = x.max(axis=axis, keepdims=keepdims)
    if axis is None and not keepdims:
        rs, rm = rs.reshape(1), rm.reshape(1)
    check(s, rs, atol=1e-4)
    check(m, rm)


@pytest.mark.parametrize("device", ALL)
def test_large_sum(device):
    x = np.random.rand(1 << 20).astype(np.float32)
    check(make(x, device).sum(), x.astype(np.float64).sum().reshape(1).astype(np.float32), rtol=1e-4)


@pytest.mark.parametrize("device", ALL)
def test_reduce_empty(device):
    a = make(np.zeros((0, 3)), device)
    check(a.sum(axis=0), np.zeros(3))
    with pytest.raises(ValueError, match="zero-size"):
        a.max(axis=0)


# ---- matmul ----------------------------------------------------------------------
@pytest.mark.parametrize("device", ALL)
@pytest.mark.parametrize(
    "ashape,bshape",
    [
        ((1, 1), (1, 1)),
        ((7, 13), (13, 5)),
        ((65, 257), (257, 33)),
        ((16, 16), (16, 16)),
        ((4, 7, 3), (4, 3, 9)),
        ((2, 3, 4, 5), (5, 6)),
        ((5, 6), (2, 3, 6, 4)),
        ((4, 1, 3, 5), (1, 2, 5, 2)),
        ((7,), (7, 3)),
        ((3, 7), (7,)),
        ((3, 0), (0, 4)),
    ],
)
def test_matmul(device, ashape, bshape):
    x = np.random.randn(*ashape).astype(np.float32)
    y = np.random.randn(*bshape).astype(np.float32)
    check(make(x, device) @ make(y, device), x @ y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", ALL)
def test_matmul_transposed_views(device):
    x = np.random.randn(33, 17).astype(np.float32)
    y = np.random.randn(40, 33).astype(np.float32)
    a, b = make(x, device), make(y, device)
    check(a.permute((1, 0)) @ b.permute((1, 0)), x.T @ y.T, atol=1e-4, rtol=1e-4)
    check(a[::2, 1:] @ make(np.ones((16, 3)), device), x[::2, 1:] @ np.ones((16, 3)), atol=1e-4)


@pytest.mark.parametrize("device", ALL)
def test_bmm_naive_matches(device):
    if not hasattr(device, "bmm_naive"):
        pytest.skip("no bmm_naive")
    x = np.random.randn(3, 13, 7).astype(np.float32)
    y = np.random.randn(7, 5).astype(np.float32)
    a, b = make(x, device), make(y, device)
    out = nd.NDArray.make((3, 13, 5), device=device)
    device.bmm_naive(a._handle, b._handle, out._handle, 3, 13, 7, 5, [91, 7, 1], 0, [0, 5, 1], 0)
    check(out, x @ y, atol=1e-4)


@pytest.mark.parametrize("device", ALL)
def test_matmul_tiled_kernel(device):
    if not hasattr(device, "matmul_tiled"):
        pytest.skip("device has no matmul_tiled")
    t = device.__tile_size__
    m, n, p = 2 * t, 3 * t, t
    x = np.random.randn(m, n).astype(np.float32)
    y = np.random.randn(n, p).astype(np.float32)
    a = make(x, device).as_strided((m // t, n // t, t, t), (n * t, t, n, 1)).compact()
    b = make(y, device).as_strided((n // t, p // t, t, t), (p * t, t, p, 1)).compact()
    out = nd.NDArray.make((m // t, p // t, t, t), device=device)
    device.matmul_tiled(a._handle, b._handle, out._handle, m, n, p)
    check(out.permute((0, 2, 1, 3)).compact().reshape((m, p)), x @ y, atol=1e-4)


# ---- flip, pad, stack --------------------------------------------------------------
@pytest.mark.parametrize("device", ALL)
@pytest.mark.parametrize("axes", [(0,), (1,), (0, 2), (0, 1, 2)])
def test_flip(device, axes):
    x = np.random.randn(3, 4, 5).astype(np.float32)
    a = make(x, device)
    check(a.flip(axes), np.flip(x, axes))
    check(nd.flip(a[:, 1:, ::2], axes), np.flip(x[:, 1:, ::2], axes))


@pytest.mark.parametrize("device", ALL)
def test_pad_and_stack(device):
    x = np.random.randn(2, 3).astype(np.float32)
    a = make(x, device)
    check(a.pad(((1, 2), (0, 3))), np.pad(x, ((1, 2), (0, 3))))
    check(nd.stack([a, a * 2], axis=1), np.stack([x, x * 2], axis=1))
    check(nd.stack([a, a], axis=-1), np.stack([x, x], axis=-1))


@pytest.mark.parametrize("device", ALL)
def test_setitem_with_broadcast_and_overlap(device):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = make(x, device)
    a[1:, :] = make(np.array([9.0, 8.0, 7.0, 6.0]), device)
    x[1:, :] = [9, 8, 7, 6]
    check(a, x)
    b = make(np.arange(6.0), device)
    b[1:] = b[:5]
    check(b, [0, 0, 1, 2, 3, 4])


# ---- devices ---------------------------------------------------------------------------
def test_device_repr_and_equality():
    assert repr(nd.cpu()) == "cpu()" and str(nd.cuda()) == "cuda()" and repr(nd.cpu_numpy()) == "cpu_numpy()"
    assert nd.cpu() == nd.cpu() and nd.cpu() != nd.cpu_numpy()
    assert [d.name for d in nd.all_devices()] == ["cpu", "cuda", "cpu_numpy"]
    assert nd.default_device() == nd.cpu()


def test_disabled_cuda_explains_itself():
    dev = nd.cuda()
    if dev.enabled():
        pytest.skip("a GPU is present")
    assert "cuda" in dev.reason
    with pytest.raises(RuntimeError, match="cuda"):
        nd.NDArray([1.0], device=dev)
    assert not hasattr(dev, "matmul_tiled")


@pytest.mark.parametrize("device", ALL)
def test_device_constructors(device):
    np.random.seed(0)
    r = device.rand(2, 3)
    np.random.seed(0)
    check(r, np.random.rand(2, 3))
    check(device.one_hot(4, np.array([1, 3])), np.eye(4)[[1, 3]])
    check(device.full((2,), 7.0), [7, 7])
    # Every spelling of a dtype gives the canonical name (numpy dtypes compare equal to names).
    for spelling, name in [(np.dtype("float64"), "float64"), (np.float16, "float16"), ("int32", "int32"),
                           (np.dtype("float32"), "float32")]:
        a = device.full((3,), 2.0, spelling)
        assert a.dtype == name and type(a.dtype) is str, (spelling, a.dtype)
        np.testing.assert_array_equal(a.numpy(), np.full(3, 2.0, name))
        assert device.empty((2, 2), spelling).dtype == name


# ---- bad input ------------------------------------------------------------------------
@pytest.mark.parametrize("device", ALL)
def test_bad_input_raises_clearly(device):
    a = make(np.zeros((3, 4)), device)
    b = make(np.zeros((4, 3)), device)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        a + b
    with pytest.raises(ValueError, match="not aligned"):
        a @ a
    with pytest.raises(IndexError, match="out of bounds"):
        a[3, 0]
    with pytest.raises(IndexError, match="too many indices"):
        a[0, 0, 0]
    with pytest.raises(IndexError):
        a[1.5]
    with pytest.raises(ValueError, match="step"):
        a[::0]
    with pytest.raises(ValueError, match="step"):
        a[::-1]
    with pytest.raises(ValueError, match="permutation"):
        a.permute((0, 0))
    with pytest.raises(ValueError, match="permutation"):
        a.permute((0, 2))
    with pytest.raises(ValueError, match="reshape"):
        a.reshape((5, 3))
    with pytest.raises(ValueError, match="broadcast"):
        a.broadcast_to((3, 5))
    with pytest.raises(ValueError, match="broadcast"):
        a.broadcast_to((4,))
    with pytest.raises(ValueError, match="outside the buffer"):
        a.as_strided((4, 4), (4, 1))
    with pytest.raises(ValueError, match="assign"):
        a[0, :] = make(np.zeros(5), device)
    with pytest.raises(ValueError, match="axis"):
        a.sum(axis=2)
    with pytest.raises(ValueError, match="empty axis"):
        a.sum(axis=())
    with pytest.raises(ValueError, match="pad"):
        a.pad(((1, 1),))
    with pytest.raises(TypeError, match="unsupported dtype"):
        nd.NDArray(np.array([1 + 2j]), device=device)
    with pytest.raises(TypeError):
        nd.NDArray(np.array(["a"]), device=device)
    with pytest.raises(TypeError):
        a + "x"
    with pytest.raises(ValueError, match="shape"):
        nd.NDArray.make((-1, 2), device=device)


@pytest.mark.parametrize("device", ALL)
def test_mixed_devices_raise(device):
    other = nd.cpu_numpy() if device != nd.cpu_numpy() else nd.cpu()
    if not other.enabled():
        pytest.skip("only one device available")
    a = make(np.zeros(3), device)
    b = make(np.zeros(3), other)
    with pytest.raises(ValueError, match="different devices"):
        a + b
    with pytest.raises(ValueError, match="different devices"):
        a.reshape((1, 3)) @ b.reshape((3, 1))


def test_backend_checks_at_boundary():
    """The compiled module rejects inconsistent calls itself (never reads out of bounds)."""
    dev = nd.cpu()
    if not dev.enabled():
        pytest.skip(dev.reason)
    a = dev.Array(4)
    out = dev.Array(8)
    with pytest.raises((ValueError, IndexError)):
        dev.compact(a, out, [2, 4], [4, 1], 0)
    with pytest.raises((ValueError, IndexError)):
        dev.compact(a, dev.Array(4), [2, 2], [2, 1], 1)
    with pytest.raises((ValueError, IndexError)):
        dev.ewise_add(a, out, dev.Array(4))
    with pytest.raises((ValueError, IndexError)):
        dev.matmul(a, a, out, 4, 4, 4)
    with pytest.raises((ValueError, IndexError)):
        dev.bmm(a, a, out, 2, 2, 2, 2, [4, 2, 1], 1, [4, 2, 1], 0)
    with pytest.raises((ValueError, IndexError)):
        dev.Array(-1)
    with pytest.raises(ValueError, match="overflow"):
        dev.compact(dev.Array(1), dev.Array(5), [5], [2**62], 0)
    with pytest.raises(ValueError, match="overflow"):
        dev.scalar_setitem(4, 1.0, dev.Array(4), [2**40, 2**40], [1, 1], 0)


# ---- fast paths: dense permuted operands, row broadcasts, middle-axis sums, gt, pad ----
def _permuted(shape, perm, device, rng):
    """An NDArray view of ``shape`` whose buffer is laid out in axis order ``perm``."""
    base = rng.standard_normal([shape[p] for p in perm]).astype(np.float32)
    inv = tuple(int(i) for i in np.argsort(perm))
    return nd.array(base, device=device).permute(inv), base.transpose(inv)


@pytest.mark.parametrize("device", ALL)
@pytest.mark.parametrize("shape", [(3, 5, 7, 2), (1, 4, 1, 3), (6, 1, 5), (2, 3)])
def test_dense_permuted_elementwise_and_sums(device, shape):
    import itertools

    rng = np.random.default_rng(3)
    for perm in itertools.permutations(range(len(shape))):
        a, an = _permuted(shape, perm, device, rng)
        b, bn = _permuted(shape, perm[::-1], device, rng)
        c, cn = _permuted(shape, perm, device, rng)
        for got, want in [(a + b, an + bn), (a * c, an * cn), (a / (c * c + 1), an / (cn * cn + 1)),
                          (a.exp(), np.exp(an)), (-a, -an), (a > 0.3, an > np.float32(0.3)),
                          (a.maximum(0), np.maximum(an, 0))]:
            assert got.shape == want.shape
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got.reshape((-1,)).numpy(), want.reshape(-1), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got.compact().numpy(), want, rtol=1e-5, atol=1e-6)
        for k in range(1, len(shape) + 1):
            for axes in itertools.combinations(range(len(shape)), k):
                for keepdims in (False, True):
                    want = an.sum(axis=axes, keepdims=keepdims).reshape(
                        an.sum(axis=axes, keepdims=keepdims).shape or (1,))
                    np.testing.assert_allclose(a.sum(axis=axes, keepdims=keepdims).numpy(), want,
                                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", ALL)
def test_row_broadcast_elementwise(device):
    rng = np.random.default_rng(4)
    for shape in [(5, 3), (2, 3, 4), (7, 1, 6), (1, 5)]:
        full_np = rng.standard_normal(shape).astype(np.float32)
        full = nd.array(full_np, device=device)
        for k in range(len(shape)):
            row_np = rng.standard_normal(shape[k:]).astype(np.float32) + 3
            rb = nd.array(row_np, device=device).broadcast_to(shape)
            rbn = np.broadcast_to(row_np, shape)
            for got, want in [(full + rb, full_np + rbn), (rb + full, rbn + full_np), (rb * full, rbn * full_np),
                              (full / rb, full_np / rbn), (rb / (full * full + 1), rbn / (full_np ** 2 + 1))]:
                np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
        # a sliced row (non-zero offset)
        wide = nd.array(rng.standard_normal((2, shape[-1] + 2)).astype(np.float32), device=device)
        row = wide[1:2, 1 : shape[-1] + 1]
        rb = row.broadcast_to(shape)
        np.testing.assert_allclose((full - rb).numpy(), full_np - rb.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", ALL)
def test_sum_over_leading_axes_accuracy(device):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((131072, 16)) + 3).astype(np.float32)
    want = x.astype(np.float64).sum(axis=0)
    got = nd.array(x, device=device).sum(axis=0).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("device", ALL)
def test_gt_scalar_edge_cases(device):
    x = np.array([np.nan, np.inf, -np.inf, 0, -0.0, 1, 1.0000001, 3.4e38, -1e-45, 1e-45, 0.1], np.float32)
    a = nd.array(x, device=device)
    for c in [0.0, -0.0, 1.0, 1e-45, -1e-45, np.inf, -np.inf, np.nan, 0.1, 3.4e38, -3.4e38]:
        np.testing.assert_array_equal((a > c).numpy(), (x > np.float32(c)).astype(np.float32), err_msg=str(c))


@pytest.mark.parametrize("device", ALL)
def test_pad_border_only(device):
    rng = np.random.default_rng(6)
    for shape, pads in [((2, 3, 4, 5), ((0, 0), (1, 2), (3, 0), (0, 0))), ((3,), ((2, 1),)),
                        ((2, 0, 3), ((1, 1), (1, 1), (0, 2))), ((2, 3), ((0, 0), (0, 0)))]:
        x = rng.standard_normal(shape).astype(np.float32)
        a = nd.array(x, device=device)
        np.testing.assert_array_equal(a.pad(pads).numpy(), np.pad(x, pads))
        if len(shape) == 4:  # a permuted (non-compact) source
            np.testing.assert_array_equal(a.permute((0, 2, 1, 3)).pad(pads).numpy(),
                                          np.pad(x.transpose(0, 2, 1, 3), pads))
