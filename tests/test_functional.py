"""needle.nn.functional and needle.ops.ops_functions against PyTorch (CPU).

One helper in the spirit of tinygrad's helper_test_op: the same random inputs go to
the needle function and to the torch one, the forward values and the gradient of
every input (for one random upstream gradient) are compared, float32 at rtol ~1e-5
and float64 much tighter, on every device of the current mode (cuda skipped when
absent). Then the options of each function, and bad input.
"""
import math

import numpy as np
import pytest

import needle as ndl
import needle.nn.functional as F
from needle import init, nn
from needle.ops import ops_functions as OF
from devices import DEVICES, nd_only

torch = pytest.importorskip("torch")
TF = torch.nn.functional

TOL = {"float32": (1e-5, 1e-5), "float64": (1e-10, 1e-11)}
DTYPES = ["float32", "float64"]


def _np(x):
    return x.numpy() if isinstance(x, ndl.Tensor) else x.detach().numpy()


def close(a, b, rtol, atol, what=""):
    np.testing.assert_allclose(_np(a), _np(b), rtol=rtol, atol=atol, err_msg=what)


def check(fn, tfn, arrays, device, dtype, tol=None, grads=True, seed=1):
    """fn(*needle tensors) vs tfn(*torch tensors): forward and every input's gradient."""
    rtol, atol = tol or TOL[dtype]
    arrays = [np.asarray(a, dtype=dtype) for a in arrays]
    xs = [ndl.Tensor(a, device=device, dtype=dtype, requires_grad=grads) for a in arrays]
    ts = [torch.tensor(a, requires_grad=grads) for a in arrays]
    out, ref = fn(*xs), tfn(*ts)
    assert tuple(out.shape) == tuple(ref.shape), (out.shape, ref.shape)
    assert out.dtype == dtype, out.dtype
    close(out, ref, rtol, atol, "forward")
    if not grads:
        return out
    g = np.asarray(np.random.RandomState(seed).randn(*ref.shape), dtype=dtype)
    out.backward(ndl.Tensor(g, device=device, dtype=dtype, requires_grad=False))
    ref.backward(torch.tensor(g))
    for i, (x, t) in enumerate(zip(xs, ts)):
        if t.grad is None:
            continue
        assert x.grad is not None, f"input {i} got no gradient"
        close(x.grad, t.grad, rtol, atol, f"gradient of input {i}")
    return out


def randn(*shape, seed=0, scale=1.0):
    return np.random.RandomState(seed).randn(*shape) * scale


device_dtype = pytest.mark.parametrize("dtype", DTYPES)
on_devices = pytest.mark.parametrize("device", DEVICES)


# ---- where / cat / erf ---------------------------------------------------------
@on_devices
@device_dtype
def test_where_forward_and_grads(device, dtype):
    cond = randn(3, 4, seed=5) > 0
    c_n = ndl.Tensor(cond, device=device)
    c_t = torch.tensor(cond)
    check(lambda x, y: OF.where(c_n, x, y), lambda x, y: torch.where(c_t, x, y),
          [randn(3, 4), randn(3, 4, seed=1)], device, dtype)
    # broadcast x (3, 1) and a scalar y; cond as a numpy array
    check(lambda x: OF.where(cond, x, -2.5), lambda x: torch.where(c_t, x, -2.5),
          [randn(3, 1)], device, dtype)
    check(lambda y: OF.where(cond, 1.0, y), lambda y: torch.where(c_t, 1.0, y), [randn(4)], device, dtype)


@on_devices
def test_where_gradient_is_differentiable(device):
    cond = np.array([True, False, True, True])
    x = ndl.Tensor(randn(4), device=device, dtype="float64")
    OF.where(cond, x * x * x, 0.0).sum().backward()
    g = x.grad  # 3 x^2 where cond, 0 elsewhere; it has a graph of its own
    np.testing.assert_allclose(g.numpy(), 3 * x.numpy() ** 2 * cond, rtol=1e-12)
    g.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 6 * x.numpy() * cond, rtol=1e-12)


@nd_only  # torch dtype rules; np mode keeps numpy's
@on_devices
def test_where_is_an_exact_select_with_promotion(device):
    x = ndl.Tensor(np.array([1.0, -2.0, 3.0], dtype=np.float32), device=device)
    out = OF.where(x.realize_cached_data() > 0, x, -math.inf)  # masked_fill idiom: no NaN
    np.testing.assert_array_equal(out.numpy(), [1.0, -np.inf, 3.0])
    i = ndl.Tensor(np.array([1, 2, 3]), device=device)
    assert OF.where(np.array([True, False, True]), i, 0.5).dtype == "float32"
    assert OF.where(np.array([True, False, True]), i, 0).dtype == "int64"
    assert OF.where(np.array([True, False, True]), i, x).dtype == "float32"
    with pytest.raises(ValueError, match=r"where.*\(2,\).*\(3,\)"):
        OF.where(np.array([True, False]), x, 0.0)


@on_devices
@device_dtype
def test_cat_forward_and_grads(device, dtype):
    for dim in (0, 1, -1):
        shapes = [[2, 3, 4]] * 3
        for k, n in enumerate((1, 2, 3)):
            shapes[k] = list(shapes[k])
            shapes[k][dim] = n
        arrays = [randn(*s, seed=k) for k, s in enumerate(shapes)]
        check(lambda *xs: OF.cat(list(xs), dim), lambda *ts: torch.cat(ts, dim), arrays, device, dtype)
    check(lambda a, b: OF.concatenate((a, b), axis=1), lambda a, b: torch.cat((a, b), 1),
          [randn(2, 2), randn(2, 0)], device, dtype)


@nd_only  # torch dtype rules; np mode keeps numpy's
@on_devices
def test_cat_promotes_and_checks(device):
    a = ndl.Tensor(np.array([[1, 2]], dtype=np.int32), device=device)
    b = ndl.Tensor(np.array([[0.5, 1.5]], dtype=np.float32), device=device)
    out = OF.cat([a, b], 0)
    assert out.dtype == "float32"
    np.testing.assert_array_equal(out.numpy(), [[1, 2], [0.5, 1.5]])
    with pytest.raises(ValueError, match=r"cat: tensor 1 has shape \(1, 3\) but tensor 0 has \(1, 2\)"):
        OF.cat([a, ndl.Tensor(np.zeros((1, 3)), device=device)], 0)
    with pytest.raises(ValueError, match="non-empty"):
        OF.cat([], 0)
    with pytest.raises(TypeError, match="list or tuple"):
        OF.cat(a, 0)
    with pytest.raises(IndexError, match="dim 2"):
        OF.cat([a, a], 2)


@on_devices
@device_dtype
def test_erf_and_gelu(device, dtype):
    x = np.concatenate([randn(40, scale=2.0), [0.0, 0.3, -0.46875, 0.5, 3.9, -4.1, 6.0, -27.0]])
    check(OF.erf, torch.erf, [x], device, dtype)
    check(F.gelu, TF.gelu, [x], device, dtype)
    check(lambda t: F.gelu(t, approximate="tanh"), lambda t: TF.gelu(t, approximate="tanh"), [x], device, dtype)


@on_devices
@device_dtype
def test_activations(device, dtype):
    x = randn(5, 6, scale=3.0)
    check(F.relu, TF.relu, [x], device, dtype)
    check(F.sigmoid, torch.sigmoid, [x], device, dtype)
    check(F.tanh, torch.tanh, [x], device, dtype)


@on_devices
@device_dtype
def test_softmax_log_softmax_any_dim(device, dtype):
    x = randn(3, 4, 5, scale=4.0)
    for dim in (0, 1, 2, -1):
        check(lambda t: F.softmax(t, dim), lambda t: TF.softmax(t, dim), [x], device, dtype)
        check(lambda t: F.log_softmax(t, dim=dim), lambda t: TF.log_softmax(t, dim=dim), [x], device, dtype)
    big = np.array([[1e4, -1e4, 0.0], [3e4, 3e4 - 1, -5.0]])
    out = check(lambda t: F.log_softmax(t, 1), lambda t: TF.log_softmax(t, 1), [big], device, dtype,
                tol=(1e-5, 1e-3))
    assert np.all(np.isfinite(out.numpy()))


# ---- factories -----------------------------------------------------------------
@nd_only  # torch dtype rules; np mode keeps numpy's
def test_factory_dtypes_follow_torch():
    for args in [(5,), (2, 7), (1, 10, 3), (0.5,), (0, 1, 0.1), (1, 2.5, 0.5), (5, 0, -1), (3.0,)]:
        out, ref = OF.arange(*args), torch.arange(*args)
        assert out.dtype == str(ref.dtype).replace("torch.", ""), args
        np.testing.assert_array_equal(out.numpy(), ref.numpy())
    assert OF.arange(4, dtype="float64").dtype == "float64"
    assert OF.full((2, 3), 7).dtype == "int64" and OF.full((2,), 1.5).dtype == "float32"
    assert OF.full([2], True).dtype == "bool" and OF.full(3, 2.0, dtype="float64").dtype == "float64"
    np.testing.assert_array_equal(OF.full((2, 2), 7).numpy(), np.full((2, 2), 7))
    assert OF.zeros(2, 3).shape == (2, 3) and OF.zeros((2, 3)).shape == (2, 3) and OF.ones([4]).shape == (4,)
    assert OF.zeros(2, dtype="int64").dtype == "int64" and OF.ones(()).shape == ()
    with pytest.raises(ValueError, match="step"):
        OF.arange(0, 3, 0)
    with pytest.raises(TypeError, match="floating"):
        OF.rand(3, dtype="int64")
    with pytest.raises(ValueError, match="zeros"):
        OF.zeros(2, -1)


@nd_only  # torch dtype rules; np mode keeps numpy's
@on_devices
def test_factories_accept_the_course_calls(device):
    """ops_functions' zeros/ones/zeros_like/ones_like take every call needle.init's do."""
    for mine, course in ((OF.zeros, init.zeros), (OF.ones, init.ones)):
        for shape in ((2, 3), (4,), ()):
            for kw in ({}, {"device": device}, {"dtype": "float64", "device": device, "requires_grad": True}):
                a, b = mine(*shape, **kw), course(*shape, **kw)
                assert (a.shape, a.dtype, a.device, a.requires_grad) == (b.shape, b.dtype, b.device, b.requires_grad)
                np.testing.assert_array_equal(a.numpy(), b.numpy())
    t = ndl.Tensor(randn(2, 3), device=device, dtype="float64")
    for mine, course in ((OF.zeros_like, init.zeros_like), (OF.ones_like, init.ones_like)):
        for kw in ({}, {"device": device, "requires_grad": True}):
            a, b = mine(t, **kw), course(t, **kw)
            assert (a.shape, a.dtype, a.device, a.requires_grad) == (b.shape, b.dtype, b.device, b.requires_grad)
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert OF.full_like(t, 3).dtype == "float64" and OF.zeros_like(t, dtype="int32").dtype == "int32"
    np.testing.assert_array_equal(OF.full_like(t, 3).numpy(), np.full((2, 3), 3.0))
    i = OF.arange(3, device=device)
    assert i.device == device and not i.requires_grad
    assert not OF.zeros(2, dtype="int64", requires_grad=True).requires_grad


@nd_only  # torch dtype rules; np mode keeps numpy's
@on_devices
def test_random_factories_draw_once_from_numpy(device):
    for fn, draw in ((OF.rand, np.random.rand), (OF.randn, np.random.randn)):
        np.random.seed(3)
        a = fn(2, 3, device=device, dtype="float64")
        after = np.random.rand()
        np.random.seed(3)
        np.testing.assert_array_equal(a.numpy(), draw(2, 3))
        assert np.random.rand() == after  # exactly one draw: the stream is where it would be
        np.random.seed(3)
        b = fn((2, 3), device=device)
        np.random.seed(3)
        np.testing.assert_array_equal(b.numpy(), draw(2, 3).astype(np.float32))
    t = ndl.Tensor(randn(4), device=device)
    np.random.seed(1)
    r = OF.randn_like(t)
    np.random.seed(1)
    np.testing.assert_array_equal(r.numpy(), np.random.randn(4).astype(np.float32))
    assert OF.rand_like(t).shape == (4,) and OF.rand_like(t).device == device


# ---- losses --------------------------------------------------------------------
CE_OPTIONS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"weight": True},
    {"weight": True, "reduction": "sum"},
    {"ignore_index": 2},
    {"ignore_index": 2, "reduction": "none"},
    {"label_smoothing": 0.2},
    {"label_smoothing": 0.1, "weight": True, "ignore_index": 1},
    {"label_smoothing": 0.3, "weight": True, "reduction": "sum"},
    {"label_smoothing": 0.3, "reduction": "none", "ignore_index": 0},
]


def _ce_case(shape, seed=0):
    rs = np.random.RandomState(seed)
    C = shape[1] if len(shape) > 1 else shape[0]
    tshape = (shape[0],) + shape[2:] if len(shape) > 1 else ()
    return rs.randn(*shape) * 2, rs.randint(0, C, tshape), rs.rand(C) + 0.5


def _loss_kwargs(opts, w, device, dtype):
    kw = {k: v for k, v in opts.items() if k != "weight"}
    nkw, tkw = dict(kw), dict(kw)
    if opts.get("weight"):
        nkw["weight"] = ndl.Tensor(w, device=device, dtype=dtype, requires_grad=False)
        tkw["weight"] = torch.tensor(w.astype(dtype))
    return nkw, tkw


@on_devices
@device_dtype
@pytest.mark.parametrize("opts", CE_OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "plain")
@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 2, 3)], ids=["NC", "NCd1d2"])
def test_cross_entropy_and_nll_loss(device, dtype, opts, shape):
    z, y, w = _ce_case(shape)
    y.flat[0] = opts.get("ignore_index", 0)  # an ignored target when ignore_index is set
    nkw, tkw = _loss_kwargs(opts, w, device, dtype)
    yn, yt = ndl.Tensor(y, device=device), torch.tensor(y)
    check(lambda t: F.cross_entropy(t, yn, **nkw), lambda t: TF.cross_entropy(t, yt, **tkw), [z], device, dtype)
    if "label_smoothing" not in opts:
        check(lambda t: F.nll_loss(F.log_softmax(t, 1), yn, **nkw),
              lambda t: TF.nll_loss(TF.log_softmax(t, 1), yt, **tkw), [z], device, dtype)


@on_devices
def test_cross_entropy_fused_path_and_course_labels(device):
    z, y, _ = _ce_case((8, 7), seed=3)
    Z = ndl.Tensor(z, device=device, dtype="float32")
    labels = ndl.Tensor(y.astype(np.float32), device=device, requires_grad=False)  # the course's labels
    loss = F.cross_entropy(Z, labels)
    assert isinstance(loss.op, ndl.ops.SoftmaxCrossEntropy)  # one fused node
    ref = TF.cross_entropy(torch.tensor(z, dtype=torch.float32), torch.tensor(y))
    close(loss, ref, 1e-5, 1e-6)
    # unbatched (C,) input with a 0-d target, and probability targets
    check(lambda t: F.cross_entropy(t, ndl.Tensor(np.array(2), device=device)),
          lambda t: TF.cross_entropy(t, torch.tensor(2)), [z[0]], device, "float32")
    probs = np.random.RandomState(0).dirichlet(np.ones(7), size=8)
    for red in ("mean", "sum", "none"):
        for eps in (0.0, 0.2):
            check(lambda t, p: F.cross_entropy(t, p, reduction=red, label_smoothing=eps),
                  lambda t, p: TF.cross_entropy(t, p, reduction=red, label_smoothing=eps),
                  [z, probs], device, "float64")


@on_devices
def test_cross_entropy_all_ignored_is_nan_like_torch(device):
    z, y, _ = _ce_case((3, 4))
    y[:] = -100
    loss = F.cross_entropy(ndl.Tensor(z, device=device), ndl.Tensor(y, device=device))
    assert np.isnan(loss.numpy()) and np.isnan(TF.cross_entropy(torch.tensor(z), torch.tensor(y)).item())


@on_devices
def test_loss_bad_input(device):
    z = ndl.Tensor(randn(4, 3), device=device)
    with pytest.raises(IndexError, match="cross_entropy: target 3 is out of bounds for 3 classes"):
        F.cross_entropy(z, ndl.Tensor(np.array([0, 1, 3, 2]), device=device))
    with pytest.raises(IndexError, match="nll_loss: target -1"):
        F.nll_loss(z, ndl.Tensor(np.array([0, -1, 1, 2]), device=device))
    with pytest.raises(ValueError, match=r"cross_entropy: target shape \(3,\) does not match input shape \(4, 3\)"):
        F.cross_entropy(z, ndl.Tensor(np.array([0, 1, 2]), device=device))
    with pytest.raises(ValueError, match=r"weight of shape \(4,\)"):
        F.cross_entropy(z, ndl.Tensor(np.array([0, 1, 2, 0]), device=device),
                        weight=ndl.Tensor(np.ones(4), device=device))
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(z, ndl.Tensor(np.array([0, 1, 2, 0]), device=device), reduction="avg")
    with pytest.raises(ValueError, match=r"mse_loss: input shape \(4, 3\) and target shape \(2,\)"):
        F.mse_loss(z, ndl.Tensor(np.zeros(2), device=device))


@on_devices
@device_dtype
def test_mse_loss(device, dtype):
    for red in ("mean", "sum", "none"):
        check(lambda a, b: F.mse_loss(a, b, reduction=red), lambda a, b: TF.mse_loss(a, b, reduction=red),
              [randn(3, 4), randn(3, 4, seed=1)], device, dtype)


# ---- linear / conv / pooling ---------------------------------------------------
@on_devices
@device_dtype
def test_linear(device, dtype):
    check(F.linear, TF.linear, [randn(5, 3), randn(4, 3, seed=1)], device, dtype)
    check(F.linear, TF.linear, [randn(2, 5, 3), randn(4, 3, seed=1), randn(4, seed=2)], device, dtype)
    with pytest.raises(ValueError, match=r"linear: input \(5, 3\) and weight \(3, 4\)"):
        F.linear(ndl.Tensor(randn(5, 3), device=device), ndl.Tensor(randn(3, 4), device=device))


CONV_CASES = [  # (N, Cin, H, W), Cout, k, stride, padding, dilation, groups, bias
    ((2, 3, 7, 6), 4, 3, 1, 0, 1, 1, True),
    ((2, 3, 7, 6), 4, 3, 2, 1, 1, 1, False),
    ((1, 2, 8, 8), 3, (3, 2), (2, 1), (1, 0), 1, 1, True),
    ((2, 4, 9, 9), 6, 3, 1, 2, 2, 2, True),
    ((1, 4, 6, 7), 4, 3, 1, "same", 1, 4, True),
    ((1, 2, 6, 6), 2, 2, 1, "same", 2, 1, False),
    ((1, 3, 5, 5), 2, 3, 1, "valid", 1, 1, True),
    ((3, 5, 4), 2, 3, 1, 1, 1, 1, True),  # unbatched (C, H, W)
]


@on_devices
@device_dtype
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(map(str, c)).replace(" ", ""))
def test_conv2d(device, dtype, case):
    xs, cout, k, s, p, d, g, bias = case
    kh, kw = (k, k) if isinstance(k, int) else k
    cin = xs[-3]
    arrays = [randn(*xs), randn(cout, cin // g, kh, kw, seed=1)] + ([randn(cout, seed=2)] if bias else [])
    tol = (1e-5, 1e-4) if dtype == "float32" else None
    check(lambda x, w, *b: F.conv2d(x, w, b[0] if b else None, stride=s, padding=p, dilation=d, groups=g),
          lambda x, w, *b: TF.conv2d(x, w, b[0] if b else None, stride=s, padding=p, dilation=d, groups=g),
          arrays, device, dtype, tol=tol)


@on_devices
def test_conv2d_bad_input(device):
    x = ndl.Tensor(randn(1, 3, 5, 5), device=device)
    with pytest.raises(ValueError, match=r"conv2d: input \(1, 3, 5, 5\) and weight \(4, 2, 3, 3\) with groups=1"):
        F.conv2d(x, ndl.Tensor(randn(4, 2, 3, 3), device=device))
    with pytest.raises(ValueError, match="same.*stride"):
        F.conv2d(x, ndl.Tensor(randn(4, 3, 3, 3), device=device), stride=2, padding="same")
    with pytest.raises(ValueError, match=r"conv2d: input must be .* got shape \(3, 5\)"):
        F.conv2d(ndl.Tensor(randn(3, 5), device=device), ndl.Tensor(randn(4, 3, 3, 3), device=device))
    with pytest.raises(ValueError, match="larger than the padded input"):
        F.conv2d(x, ndl.Tensor(randn(4, 3, 7, 7), device=device))


POOL_CASES = [  # kernel, stride, padding, extra max kwargs / avg kwargs
    (2, None, 0, {}, {}),
    (3, 2, 1, {}, {}),
    (3, 2, 1, {}, {"count_include_pad": False}),
    ((3, 2), (2, 1), (1, 0), {"dilation": (1, 2)}, {"divisor_override": 5}),
    (3, 2, 1, {"ceil_mode": True}, {"ceil_mode": True}),
    (2, 3, 1, {"ceil_mode": True}, {"ceil_mode": True, "count_include_pad": False}),
]


@on_devices
@device_dtype
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "-".join(map(str, c)).replace(" ", ""))
def test_pooling(device, dtype, case):
    k, s, p, mkw, akw = case
    x = [randn(2, 3, 7, 8)]
    check(lambda t: F.max_pool2d(t, k, s, p, **mkw), lambda t: TF.max_pool2d(t, k, s, p, **mkw), x, device, dtype)
    check(lambda t: F.avg_pool2d(t, k, s, p, **akw), lambda t: TF.avg_pool2d(t, k, s, p, **akw), x, device, dtype)


@on_devices
def test_pooling_bad_input(device):
    x = ndl.Tensor(randn(1, 1, 4, 4), device=device)
    with pytest.raises(ValueError, match="max_pool2d: padding"):
        F.max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match=r"avg_pool2d: input must be .* got shape \(4, 4\)"):
        F.avg_pool2d(ndl.Tensor(randn(4, 4), device=device), 2)


# ---- dropout / layer norm / embedding ------------------------------------------
@on_devices
def test_dropout(device):
    x = ndl.Tensor(randn(4, 5), device=device)
    assert F.dropout(x, 0.5, training=False) is x and F.dropout(x, 0.0) is x
    np.random.seed(2)
    out = F.dropout(x, 0.3)
    np.random.seed(2)
    mask = np.random.rand(4, 5) <= 0.7  # one draw, as nn.Dropout
    np.testing.assert_allclose(out.numpy(), x.numpy() * mask / 0.7, rtol=1e-6)
    out.backward(ndl.Tensor(np.ones((4, 5)), device=device, requires_grad=False))
    np.testing.assert_allclose(x.grad.numpy(), mask / 0.7, rtol=1e-6)
    np.random.seed(2)
    nn.Dropout(0.3)(x)  # same stream position as the functional form
    np.testing.assert_array_equal(F.dropout(x, 1.0).numpy(), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="dropout: p"):
        F.dropout(x, 1.5)


@on_devices
@device_dtype
def test_layer_norm(device, dtype):
    x = randn(2, 3, 4, scale=3.0)
    check(lambda t, w, b: F.layer_norm(t, 4, w, b), lambda t, w, b: TF.layer_norm(t, (4,), w, b),
          [x, randn(4, seed=1), randn(4, seed=2)], device, dtype, tol=(1e-5, 1e-5) if dtype == "float32" else None)
    check(lambda t, w: F.layer_norm(t, (3, 4), w, eps=1e-3), lambda t, w: TF.layer_norm(t, (3, 4), w, eps=1e-3),
          [x, randn(3, 4, seed=1)], device, dtype)
    check(lambda t: F.layer_norm(t, [3, 4]), lambda t: TF.layer_norm(t, [3, 4]), [x], device, dtype)
    with pytest.raises(ValueError, match=r"layer_norm: input of shape \(2, 3, 4\) does not end with"):
        F.layer_norm(ndl.Tensor(x, device=device), (3,))


@on_devices
@device_dtype
def test_embedding(device, dtype):
    idx = np.array([[1, 4, 0], [4, 4, 2]])
    i_n, i_t = ndl.Tensor(idx, device=device), torch.tensor(idx)
    check(lambda w: F.embedding(i_n, w), lambda w: TF.embedding(i_t, w), [randn(5, 3)], device, dtype)
    check(lambda w: F.embedding(i_n, w, padding_idx=4), lambda w: TF.embedding(i_t, w, padding_idx=4),
          [randn(5, 3)], device, dtype)
    with pytest.raises(IndexError, match=r"embedding: index 5 is out of range for weight of shape \(5, 3\)"):
        F.embedding(ndl.Tensor(np.array([0, 5]), device=device), ndl.Tensor(randn(5, 3), device=device))


# ---- pad -----------------------------------------------------------------------
PAD_CASES = [  # shape, pad, modes
    ((2, 3, 5), (2, 1), ("constant", "reflect", "replicate", "circular")),
    ((2, 2, 5, 6), (1, 2, 3, 0), ("constant", "reflect", "replicate", "circular")),
    ((1, 2, 3, 4, 5), (1, 1, 2, 0, 0, 2), ("constant", "reflect", "replicate", "circular")),
    ((2, 3, 4), (0, 4), ("replicate", "circular")),
    ((2, 3, 4), (1, 2, 2, 1, 1, 0), ("constant",)),
    ((3, 6), (-1, 2, 0, -2), ("constant",)),
]


@on_devices
@device_dtype
@pytest.mark.parametrize("case", PAD_CASES, ids=lambda c: f"{c[0]}-{c[1]}".replace(" ", ""))
def test_pad_every_mode(device, dtype, case):
    shape, p, modes = case
    for mode in modes:
        kw = {"value": 1.5} if mode == "constant" else {}
        check(lambda t: F.pad(t, p, mode=mode, **kw), lambda t: TF.pad(t, p, mode=mode, **kw),
              [randn(*shape)], device, dtype)


@on_devices
def test_pad_bad_input(device):
    x = ndl.Tensor(randn(1, 2, 3), device=device)
    with pytest.raises(ValueError, match=r"pad: reflect padding \(3, 0\) must be smaller than dim 2 \(size 3\)"):
        F.pad(x, (3, 0), mode="reflect")
    with pytest.raises(ValueError, match="even length"):
        F.pad(x, (1, 2, 3))
    with pytest.raises(ValueError, match="covers 4 dims"):
        F.pad(x, (1,) * 8)
    with pytest.raises(ValueError, match="circular padding"):
        F.pad(x, (4, 0), mode="circular")
    with pytest.raises(ValueError, match="mode"):
        F.pad(x, (1, 1), mode="mirror")


@on_devices
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv_module_padding_modes(device, mode):
    np.random.seed(4)
    conv = nn.Conv(3, 4, 3, stride=2, padding_mode=mode, device=device)
    ref = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode=mode)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(conv.weight.numpy().transpose(3, 2, 0, 1)))
        ref.bias.copy_(torch.tensor(conv.bias.numpy()))
    x = randn(2, 3, 7, 6).astype(np.float32)
    X, Xt = ndl.Tensor(x, device=device), torch.tensor(x, requires_grad=True)
    out, r = conv(X), ref(Xt)
    close(out, r, 1e-5, 1e-5)
    g = randn(*r.shape, seed=3).astype(np.float32)
    out.backward(ndl.Tensor(g, device=device, requires_grad=False))
    r.backward(torch.tensor(g))
    close(X.grad, Xt.grad, 1e-5, 1e-5)
    close(conv.weight.grad, ref.weight.grad.permute(2, 3, 1, 0), 1e-5, 1e-4)
    with pytest.raises(ValueError, match="padding_mode"):
        nn.Conv(2, 2, 3, padding_mode="mirror")


# ---- max_pool2d indices, embedding options ----------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=(3, 2), stride=1, dilation=2), dict(kernel_size=3, ceil_mode=True)])
def test_max_pool2d_return_indices_match_torch(device, kw):
    tt = torch
    x = np.random.default_rng(3).integers(0, 5, (2, 3, 7, 8)).astype(np.float32)  # ties: the first max wins
    out, idx = F.max_pool2d(ndl.Tensor(x, device=device), return_indices=True, **kw)
    t_out, t_idx = tt.nn.functional.max_pool2d(tt.tensor(x), return_indices=True, **kw)
    np.testing.assert_array_equal(out.numpy(), t_out.numpy())
    np.testing.assert_array_equal(idx.numpy(), t_idx.numpy())
    assert str(idx.dtype) == "int64" and not idx.requires_grad


@pytest.mark.parametrize("device", DEVICES)
def test_embedding_scale_grad_by_freq_max_norm_and_sparse_match_torch(device):
    tt = torch
    rng = np.random.default_rng(4)
    w, idx, g = rng.standard_normal((10, 4)) * 2, np.array([[1, 2, 1], [3, 1, 7]]), rng.standard_normal((2, 3, 4))
    for opts in [dict(scale_grad_by_freq=True), dict(max_norm=1.0), dict(max_norm=1.5, norm_type=1.0),
                 dict(sparse=True)]:
        a, ta = ndl.Tensor(w, device=device, dtype="float64"), tt.tensor(w, requires_grad=True)
        out = F.embedding(ndl.Tensor(idx, device=device), a, **opts)
        with tt.no_grad():
            tw = ta.detach().clone()
        t_out = tt.nn.functional.embedding(tt.tensor(idx), tw.requires_grad_(), **opts)
        np.testing.assert_allclose(out.numpy(), t_out.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(a.numpy(), tw.detach().numpy(), rtol=1e-12)  # max_norm renormalises in place
        (out * ndl.Tensor(g, device=device, dtype="float64")).sum().backward()
        (t_out * tt.tensor(g)).sum().backward()
        t_grad = tw.grad.to_dense() if tw.grad.is_sparse else tw.grad
        np.testing.assert_allclose(a.grad.numpy(), t_grad.numpy(), rtol=1e-12, atol=1e-14)
