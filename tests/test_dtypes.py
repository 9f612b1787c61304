"""Dtypes at the NDArray and Tensor levels: names, creation, casts, promotion (against
PyTorch's own rules), comparisons, sums, matmul, gradients and float64 gradient checks.

The backend functions themselves are checked per dtype in test_backend_dtypes.py.
"""
import warnings

import numpy as np
import pytest

import needle as ndl
from needle import backend_ndarray as nd
from needle.backend_ndarray import dtypes as D
from devices import ND_DEVICES, nd_only

ml_dtypes = pytest.importorskip("ml_dtypes")
torch = pytest.importorskip("torch")

pytestmark = nd_only

ALL = list(D.DTYPES)
NP = {name: D.to_numpy_dtype(name) for name in ALL}
TORCH = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
         "bfloat16": torch.bfloat16, "int32": torch.int32, "int64": torch.int64, "uint8": torch.uint8,
         "bool": torch.bool}
RNG = np.random.default_rng(3)


def _values(dtype, shape, lo=-4, hi=4):
    """Random values exactly representable in dtype, as a numpy array of that dtype."""
    if dtype == "bool":
        return RNG.random(shape) < 0.5
    if dtype == "uint8":
        return RNG.integers(0, 200, shape).astype(np.uint8)
    if dtype in ("int32", "int64"):
        return RNG.integers(lo * 10, hi * 10, shape).astype(NP[dtype])
    return RNG.uniform(lo, hi, shape).astype(NP[dtype])


def _reference(x, dtype):
    """numpy's cast of x to dtype (bfloat16 widens to float32 first for integer targets)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        if x.dtype == NP["bfloat16"] and dtype not in D.FLOATING:
            x = x.astype(np.float32)
        return x.astype(NP[dtype])


# ---- names -------------------------------------------------------------------
def test_names_numpy_dtypes_and_constants_are_accepted():
    assert ndl.float32 == "float32" and ndl.bfloat16 == "bfloat16" and ndl.bool == "bool"
    for name in ALL:
        assert D.canonical(name) == name
        assert D.canonical(NP[name]) == name
        assert nd.array([1, 0], dtype=NP[name]).dtype == name
    assert D.canonical(np.float64) == "float64" and D.canonical(np.dtype("int32")) == "int32"


@pytest.mark.parametrize("bad", ["complex64", np.complex128, "object", np.str_, "int8x", "float128"])
def test_unsupported_dtype_is_a_type_error_listing_the_supported(bad):
    with pytest.raises(TypeError, match="float32, float64, float16, bfloat16, int32, int64, uint8, bool"):
        nd.array([1.0, 2.0], dtype=bad)
    with pytest.raises(TypeError, match="supports"):
        ndl.Tensor([1.0], dtype=bad)


def test_unsupported_numpy_data_is_a_type_error():
    for data in [np.array([1 + 2j]), np.array(["a"]), np.array([object()])]:
        with pytest.raises(TypeError):
            nd.array(data)


# ---- creation ----------------------------------------------------------------
@pytest.mark.parametrize("device", ND_DEVICES)
def test_creation_infers_like_pytorch(device):
    assert nd.array([1.5, 2], device=device).dtype == "float32"
    assert nd.array(np.zeros(3), device=device).dtype == "float32"  # numpy's float64 default
    assert nd.array([1, 2], device=device).dtype == "int64"
    assert nd.array(np.arange(3, dtype=np.int16), device=device).dtype == "int64"
    assert nd.array([True, False], device=device).dtype == "bool"
    for name in ("float16", "bfloat16", "int32", "uint8"):
        assert nd.array(np.zeros(2, NP[name]), device=device).dtype == name
    assert ndl.Tensor([1, 2], device=device).dtype == "int64"
    assert ndl.Tensor([1.0, 2], device=device).dtype == "float32"
    assert ndl.Tensor([True], device=device).dtype == "bool"
    assert ndl.Tensor([1, 2], device=device, dtype="float64").dtype == "float64"
    hw3 = np.random.randint(0, 10, (3, 4))
    np.testing.assert_array_equal(nd.array(hw3, device=device).numpy(), hw3)


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("dtype", ALL)
def test_numpy_round_trip_and_factories(device, dtype):
    x = _values(dtype, (3, 5))
    a = nd.array(x, dtype=dtype, device=device)
    assert a.dtype == dtype and a.numpy().dtype == NP[dtype]
    np.testing.assert_array_equal(a.numpy(), x)
    for make in (device.empty, device.rand, device.randn):
        assert make((2, 3), dtype=dtype).dtype == dtype if make is device.empty else True
    assert device.rand(2, 3, dtype=dtype).dtype == dtype
    f = nd.full((2, 2), 1, dtype=dtype, device=device)
    assert f.dtype == dtype and (f.numpy() == np.ones((2, 2), NP[dtype])).all()


def test_big_int64_values_are_exact():
    big = 2**60 + 3
    a = nd.full((3,), big, dtype="int64")
    assert a.numpy().tolist() == [big] * 3
    assert (a + 1).numpy().tolist() == [big + 1] * 3
    a[1] = -big
    assert a.numpy().tolist() == [big, -big, big]


# ---- casts -------------------------------------------------------------------
SPECIAL = np.array([np.nan, np.inf, -np.inf, 300.0, -1.0, 2.5, -2.5, 1e10, -1e10, 0.0, -0.0, 65504.0, 1e-8])


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("src", ALL)
@pytest.mark.parametrize("dst", ALL)
def test_astype_every_pair_follows_numpy(device, src, dst):
    x = _reference(SPECIAL, src) if src in D.FLOATING else _values(src, (13,))
    a = nd.array(x, dtype=src, device=device)
    got = a[::2].astype(dst)  # a strided view
    assert got.dtype == dst
    expected = _reference(x[::2], dst)
    np.testing.assert_array_equal(got.numpy().view(np.uint8), expected.view(np.uint8))


def test_double_rounds_once_to_the_halves():
    d = np.array([1 + 2**-11 + 2**-40, 1 + 2**-8 + 2**-30, -(1 + 2**-11 + 2**-40)])
    for name in ("float16", "bfloat16"):
        got = nd.array(d, dtype="float64").astype(name).numpy()
        np.testing.assert_array_equal(got.view(np.uint16), d.astype(NP[name]).view(np.uint16))


# ---- layout ops keep the dtype -------------------------------------------------
@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("dtype", ALL)
def test_views_setitem_fill_pad_flip_stack(device, dtype):
    x = _values(dtype, (4, 5, 6))
    a = nd.array(x, dtype=dtype, device=device)
    np.testing.assert_array_equal(a.permute((2, 0, 1))[1:5:2, ::3].numpy(), x.transpose(2, 0, 1)[1:5:2, ::3])
    np.testing.assert_array_equal(a.broadcast_to((2, 4, 5, 6)).compact().numpy(), np.broadcast_to(x, (2, 4, 5, 6)))
    np.testing.assert_array_equal(a.flip((0, 2)).numpy(), np.flip(x, (0, 2)))
    np.testing.assert_array_equal(a.pad(((1, 0), (0, 2), (1, 1))).numpy(), np.pad(x, ((1, 0), (0, 2), (1, 1))))
    np.testing.assert_array_equal(nd.stack([a, a], axis=1).numpy(), np.stack([x, x], axis=1))
    b = a.copy()
    b[1:3, ::2] = nd.array(x[:2, :3], dtype=dtype, device=device)
    b[0] = 1
    y = x.copy()
    y[1:3, ::2] = x[:2, :3]
    y[0] = 1
    np.testing.assert_array_equal(b.numpy(), y)
    b.fill(0)
    assert not b.numpy().any() and b.dtype == dtype


# ---- promotion -----------------------------------------------------------------
@pytest.mark.parametrize("left", ALL)
@pytest.mark.parametrize("right", ALL)
def test_promotion_of_two_arrays_matches_torch(left, right):
    expected = str(torch.promote_types(TORCH[left], TORCH[right])).replace("torch.", "")
    assert D.promote_types(left, right) == expected
    a, b = nd.array(_values(left, (3,)), dtype=left), nd.array(_values(right, (3,)), dtype=right)
    assert (a * b).dtype == expected


SCALARS = [True, 3, -2, 2.5]


@pytest.mark.parametrize("dtype", ALL)
@pytest.mark.parametrize("scalar", SCALARS)
def test_scalar_does_not_widen_within_its_category(dtype, scalar):
    t = torch.zeros(3, dtype=TORCH[dtype])
    expected = str(torch.result_type(t, scalar)).replace("torch.", "")
    a = nd.array(_values(dtype, (3,)), dtype=dtype)
    assert D.result_type(a, scalar) == expected
    assert (a * scalar).dtype == expected
    if not isinstance(scalar, bool):
        assert (ndl.Tensor(a, requires_grad=False) * scalar).dtype == expected


def test_zero_dim_arrays_rank_below_arrays_with_dims():
    cases = [("int32", "int64"), ("float16", "float64"), ("int64", "float64"), ("uint8", "int32"),
             ("bool", "float16")]
    for dims, zero in cases:
        expected = torch.result_type(torch.zeros(2, dtype=TORCH[dims]), torch.tensor(1, dtype=TORCH[zero]))
        a, z = nd.array(_values(dims, (2,)), dtype=dims), nd.array(_values(zero, ()), dtype=zero)
        assert D.result_type(a, z) == str(expected).replace("torch.", "")


def test_true_division_and_unary_math_of_integers_give_float32():
    i = nd.array([1, 2, 3])
    assert (i / i).dtype == "float32" and (i / 2).dtype == "float32" and (1 / i).dtype == "float32"
    np.testing.assert_allclose((i / 2).numpy(), [0.5, 1, 1.5])
    for f in ("exp", "log", "tanh"):
        out = getattr(i, f)()
        assert out.dtype == "float32"
        np.testing.assert_allclose(out.numpy(), getattr(np, f)(np.array([1, 2, 3], np.float32)), rtol=1e-6)
    assert (ndl.Tensor([1, 2]) / ndl.Tensor([2, 4])).dtype == "float32"


def test_integer_arithmetic_wraps_and_rejects_negative_powers():
    u = nd.array(np.array([250, 3], np.uint8))
    np.testing.assert_array_equal((u + 10).numpy(), np.array([4, 13], np.uint8))
    np.testing.assert_array_equal((u - 5).numpy(), np.array([245, 254], np.uint8))
    i = nd.array(np.array([2**31 - 1], np.int32))
    np.testing.assert_array_equal((i + i).numpy(), np.array([-2], np.int32))
    np.testing.assert_array_equal((nd.array([2, 3]) ** 3).numpy(), [8, 27])
    with pytest.raises(ValueError, match="negative"):
        nd.array([2, 3]) ** -1
    with pytest.raises(TypeError, match="bool"):
        -nd.array([True])


# ---- comparisons, reductions, matmul -------------------------------------------
@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("dtype", ALL)
def test_comparisons_give_bool(device, dtype):
    x, y = _values(dtype, (7,)), _values(dtype, (7,))
    y[:3] = x[:3]
    a, b = nd.array(x, dtype=dtype, device=device), nd.array(y, dtype=dtype, device=device)
    for op in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"):
        got = getattr(a, op)(b)
        assert got.dtype == "bool"
        np.testing.assert_array_equal(got.numpy(), getattr(x, op)(y))
        got = getattr(a, op)(1)
        np.testing.assert_array_equal(got.numpy(), getattr(x, op)(_reference(np.array([1]), dtype)[0]))


def test_comparisons_with_nan_follow_numpy():
    x = np.array([np.nan, 1.0, 2.0], np.float32)
    a = nd.array(x)
    for op in ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"):
        np.testing.assert_array_equal(getattr(a, op)(1.0).numpy(), getattr(x, op)(np.float32(1.0)))
        np.testing.assert_array_equal(getattr(a, op)(a).numpy(), getattr(x, op)(x))


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("dtype", ALL)
def test_sum_and_max_dtypes(device, dtype):
    x = _values(dtype, (6, 9))
    a = nd.array(x, dtype=dtype, device=device)
    s = a.sum(axis=1)
    expected_dtype = dtype if dtype in D.FLOATING else "int64"
    assert s.dtype == expected_dtype
    ref = x.astype(np.float64).sum(axis=1)
    tol = {"float16": 1e-2, "bfloat16": 2e-2}.get(dtype, 1e-6)
    np.testing.assert_allclose(s.numpy().astype(np.float64), ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(a.sum(axis=0).numpy().astype(np.float64), x.astype(np.float64).sum(0), rtol=tol,
                               atol=tol)
    m = a.max(axis=1)
    assert m.dtype == dtype
    np.testing.assert_array_equal(m.numpy(), x.max(axis=1))


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_sums_accumulate_in_float32(device, dtype):
    # A half accumulator would stall at 2048 (float16) or 256 (bfloat16); float32 adds exactly
    # and rounds once (bfloat16 cannot hold 10000 itself: 9984 is its nearest value).
    exact = float(np.float32(10000).astype(NP[dtype]))
    ones = nd.array(np.ones(10000), dtype=dtype, device=device)
    assert float(ones.sum().numpy()[0]) == exact
    cols = nd.array(np.ones((10000, 3)), dtype=dtype, device=device)
    np.testing.assert_array_equal(cols.sum(axis=0).numpy().astype(np.float32), [exact] * 3)
    if dtype == "float16":
        assert exact == 10000.0


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16", "int32", "int64", "uint8"])
def test_matmul_every_numeric_dtype(device, dtype):
    x, y = _values(dtype, (2, 13, 7), 0, 3), _values(dtype, (7, 5), 0, 3)
    a, b = nd.array(x, dtype=dtype, device=device), nd.array(y, dtype=dtype, device=device)
    got = a @ b
    assert got.dtype == dtype
    if dtype in D.INTEGRAL:
        np.testing.assert_array_equal(got.numpy(), (x.astype(np.int64) @ y.astype(np.int64)).astype(NP[dtype]))
    else:
        wide = np.float64 if dtype == "float64" else np.float32
        ref = (x.astype(wide) @ y.astype(wide)).astype(NP[dtype])
        tol = {"float64": 1e-12, "float32": 1e-5}.get(dtype, 1e-2)
        np.testing.assert_allclose(got.numpy().astype(np.float64), ref.astype(np.float64), rtol=tol, atol=tol)


def test_matmul_of_bools_is_a_type_error_and_mixed_dtypes_promote():
    with pytest.raises(TypeError, match="bool"):
        nd.array([[True]]) @ nd.array([[True]])
    out = nd.array([[1, 2]]) @ nd.array([[0.5], [0.25]])
    assert out.dtype == "float32" and out.numpy().tolist() == [[1.0]]


# ---- Tensors -------------------------------------------------------------------
def test_integer_and_bool_tensors_never_require_grad():
    assert not ndl.Tensor([1, 2]).requires_grad
    assert not ndl.Tensor([True]).requires_grad
    assert ndl.Tensor([1.0]).requires_grad
    assert ndl.Tensor([1], dtype="float16").requires_grad


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
def test_gradients_have_their_tensor_dtype(dtype):
    x = ndl.Tensor(_values(dtype, (3, 4)), dtype=dtype)
    w = ndl.Tensor(_values("float32", (4, 2)))
    y = (ndl.ops.cast(x, "float32") @ w).sum()
    y.backward()
    assert x.grad.dtype == dtype and w.grad.dtype == "float32"
    z = ((x * 2.0) * ndl.Tensor(np.ones((3, 4)), dtype="float32")).sum()  # promoted to float32 inside
    z.backward()
    assert x.grad.dtype == dtype
    np.testing.assert_allclose(x.grad.numpy().astype(np.float32), 2 * np.ones((3, 4)))


def test_half_tensor_times_python_float_stays_half():
    x = ndl.Tensor([1.0, 2.0], dtype="float16")
    assert (x * 2.0).dtype == "float16" and (x + 1).dtype == "float16"
    assert (ndl.Tensor([1, 2]) * 2.5).dtype == "float32"


def test_course_float32_labels_and_int64_labels_give_the_same_loss():
    logits = ndl.Tensor(_values("float32", (5, 4)))
    y = np.array([0, 3, 1, 1, 2])
    a = ndl.ops.softmax_cross_entropy(logits, ndl.Tensor(y.astype(np.float32)))
    b = ndl.ops.softmax_cross_entropy(logits, ndl.Tensor(y))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert ndl.Tensor(y).dtype == "int64"


GRADCHECK = dict(eps=1e-6, atol=1e-8, rtol=1e-7)


def _f64(*shape, lo=-1.0, hi=1.0):
    return ndl.Tensor(RNG.uniform(lo, hi, shape), dtype="float64")


@pytest.mark.parametrize("name,f,inputs", [
    ("matmul", lambda a, b: a @ b, lambda: (_f64(3, 4), _f64(4, 5))),
    ("tanh_exp_log", lambda a: ndl.ops.log(ndl.ops.exp(ndl.ops.tanh(a)) + 1.0), lambda: (_f64(4, 3),)),
    ("divide_power", lambda a, b: (a / b) ** 2.0, lambda: (_f64(3, 3), _f64(3, 3, lo=1.0, hi=2.0))),
    ("logsumexp", lambda a: ndl.ops.logsumexp(a, (1,)), lambda: (_f64(4, 6, lo=-5, hi=5),)),
    ("softmax_loss", lambda a: ndl.ops.softmax_cross_entropy(a, np.array([1, 0, 3])), lambda: (_f64(3, 4),)),
    ("conv", lambda x, w: ndl.ops.conv(x, w, stride=2, padding=1), lambda: (_f64(2, 5, 5, 3), _f64(3, 3, 3, 2))),
    ("batch_norm", lambda x: ndl.nn.BatchNorm1d(4, dtype="float64")(x), lambda: (_f64(6, 4),)),
    ("summation_broadcast", lambda a: ndl.ops.broadcast_to(ndl.ops.summation(a, (0,)), (2, 3)),
     lambda: (_f64(4, 3),)),
])
def test_float64_gradcheck_in_nd_mode(name, f, inputs):
    args = inputs()
    assert all(a.dtype == "float64" for a in args)
    assert f(*args).dtype == "float64"
    ndl.autograd.gradcheck(f, *args, **GRADCHECK)


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_a_model_of_any_float_dtype_trains_in_that_dtype(dtype, opt):
    """Parameters, activations and gradients stay in the requested dtype; half-precision
    parameters are updated in float32 by the optimizers (so float16 Adam does not divide by
    an eps that rounds to 0) and written back in their dtype."""
    np.random.seed(0)
    nn = ndl.nn
    model = nn.Sequential(nn.Conv(3, 4, 3, dtype=dtype), nn.BatchNorm2d(4, dtype=dtype), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 3, dtype=dtype), nn.LayerNorm1d(3, dtype=dtype))
    make = {"adam": lambda ps: ndl.optim.Adam(ps, lr=1e-2), "sgd": lambda ps: ndl.optim.SGD(ps, lr=0.1, momentum=0.9)}
    optimizer = make[opt](model.parameters())
    x = ndl.Tensor(np.random.randn(6, 3, 8, 8), dtype=dtype)
    y = ndl.Tensor(np.array([0, 1, 2, 0, 1, 2]))
    losses = []
    for _ in range(8):
        optimizer.reset_grad()
        loss = nn.SoftmaxLoss()(model(x), y)
        loss.backward()
        assert loss.dtype == dtype
        assert {p.grad.dtype for p in model.parameters()} == {dtype}
        optimizer.step()
        assert {p.dtype for p in model.parameters()} == {dtype}
        losses.append(float(loss.numpy()))
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
