"""Every op: forward against numpy, gradient against central differences (nd mode, every device).

The reference gradient is taken numerically (float64 central differences) of
the numpy reference function at the same float32 inputs, with a random output
weight w, i.e. of L = sum(f(x) * w); the analytic gradient is needle's
``backward(w)``. Both sides see the same random inputs (tinygrad's
``helper_test_op`` idea).
"""
import numpy as np
import pytest

import needle as ndl
from devices import ND_DEVICES, nd_only

pytestmark = nd_only


def _numeric_grads(np_fn, xs, w, eps=1e-6):
    grads = []
    for i, x in enumerate(xs):
        g = np.zeros_like(x)
        for j in range(x.size):
            hi = [a.copy() for a in xs]
            lo = [a.copy() for a in xs]
            hi[i].flat[j] += eps
            lo[i].flat[j] -= eps
            g.flat[j] = ((np_fn(*hi) * w).sum() - (np_fn(*lo) * w).sum()) / (2 * eps)
        grads.append(g)
    return grads


def check_op(fn, np_fn, inputs, device, rtol=1e-4, atol=1e-4, grad_rtol=2e-3, grad_atol=2e-3):
    """Forward of ``fn`` (needle) vs ``np_fn`` (numpy), then every input gradient vs numerical."""
    xs32 = [np.asarray(x, dtype=np.float32) for x in inputs]
    xs64 = [x.astype(np.float64) for x in xs32]
    tensors = [ndl.Tensor(x, device=device, requires_grad=True) for x in xs32]
    out = fn(*tensors)
    expected = np.asarray(np_fn(*xs64))
    assert out.shape == expected.shape, (out.shape, expected.shape)
    np.testing.assert_allclose(out.numpy(), expected, rtol=rtol, atol=atol)
    w = np.random.randn(*expected.shape)
    out.backward(ndl.Tensor(w, device=device, requires_grad=False))
    for t, g in zip(tensors, _numeric_grads(np_fn, xs64, w)):
        assert t.grad is not None and t.grad.shape == t.shape
        np.testing.assert_allclose(t.grad.numpy(), g, rtol=grad_rtol, atol=grad_atol)


def _pos(*shape):
    return np.random.rand(*shape) + 0.5


def _rn(*shape):
    return np.random.randn(*shape)


def _np_logsumexp(a, axes):
    m = np.max(a, axis=axes, keepdims=True)
    return np.log(np.sum(np.exp(a - m), axis=axes)) + np.squeeze(m, axis=axes)


def _np_unique(*shape):
    """Values spaced >= 0.01 apart, so maxima are never within eps of a tie."""
    n = int(np.prod(shape))
    return (np.random.permutation(n) * 0.05 - n * 0.025 + 0.013).reshape(shape)


def _np_dilate(a, d):
    out = np.zeros((a.shape[0] * (d + 1), a.shape[1] * (d + 1)))
    out[:: d + 1, :: d + 1] = a
    return out


def _np_unfold(a, kernel, stride):
    """(N, H, W, C) -> (N, Ho, Wo, kh, kw, C) by explicit loops."""
    (kh, kw), (sh, sw) = kernel, stride
    N, H, W, C = a.shape
    Ho, Wo = (H - kh) // sh + 1, (W - kw) // sw + 1
    out = np.zeros((N, Ho, Wo, kh, kw, C))
    for i in range(Ho):
        for j in range(Wo):
            out[:, i, j] = a[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
    return out


# name: (needle fn, numpy fn, input factory)
OPS = {
    "add": (ndl.add, np.add, lambda: [_rn(3, 4), _rn(3, 4)]),
    "add_scalar": (lambda a: ndl.add_scalar(a, 1.5), lambda a: a + 1.5, lambda: [_rn(3, 4)]),
    "sub_rsub": (lambda a, b: (a - b) - 2.0 + (3.0 - a), lambda a, b: (a - b) - 2 + (3 - a), lambda: [_rn(3), _rn(3)]),
    "multiply": (ndl.multiply, np.multiply, lambda: [_rn(3, 4), _rn(3, 4)]),
    "mul_scalar": (lambda a: ndl.mul_scalar(a, -2.5), lambda a: a * -2.5, lambda: [_rn(5)]),
    "power": (ndl.power, np.power, lambda: [_pos(3, 4), _rn(3, 4)]),
    "power_scalar_int": (lambda a: ndl.power_scalar(a, 3), lambda a: a**3, lambda: [_rn(3, 4)]),
    "power_scalar_zero": (lambda a: ndl.power_scalar(a, 0), lambda a: a**0, lambda: [_rn(3, 4)]),
    "power_scalar_frac": (lambda a: a**0.5, np.sqrt, lambda: [_pos(3, 4)]),
    "power_scalar_neg": (lambda a: a**-2, lambda a: a**-2.0, lambda: [_pos(3, 4)]),
    "divide": (ndl.divide, np.divide, lambda: [_rn(3, 4), _pos(3, 4)]),
    "divide_scalar": (lambda a: ndl.divide_scalar(a, 4.0), lambda a: a / 4.0, lambda: [_rn(3, 4)]),
    "divide_scalar_array": (lambda a: ndl.divide_scalar(a, np.array([4.0])), lambda a: a / 4.0, lambda: [_rn(3)]),
    "rtruediv": (lambda a: 2.0 / a, lambda a: 2.0 / a, lambda: [_pos(4)]),
    "negate": (ndl.negate, np.negative, lambda: [_rn(3, 4)]),
    "log": (ndl.log, np.log, lambda: [_pos(3, 4)]),
    "exp": (ndl.exp, np.exp, lambda: [_rn(3, 4)]),
    "relu": (ndl.relu, lambda a: np.maximum(a, 0), lambda: [_np_unique(3, 4)]),
    "tanh": (ndl.tanh, np.tanh, lambda: [_rn(3, 4)]),
    "sigmoid": (ndl.sigmoid, lambda a: 1 / (1 + np.exp(-a)), lambda: [_rn(3, 4) * 3]),
    "maximum": (ndl.maximum, np.maximum, lambda: [_np_unique(3, 4), _np_unique(3, 4) + 0.01]),
    "transpose_default": (ndl.transpose, lambda a: np.swapaxes(a, -1, -2), lambda: [_rn(2, 3, 4)]),
    "transpose_pair": (lambda a: ndl.transpose(a, (0, 2)), lambda a: np.swapaxes(a, 0, 2), lambda: [_rn(2, 3, 4)]),
    "permute": (lambda a: ndl.permute(a, (2, 0, 1)), lambda a: np.transpose(a, (2, 0, 1)), lambda: [_rn(2, 3, 4)]),
    "reshape": (lambda a: ndl.reshape(a, (4, 6)), lambda a: a.reshape(4, 6), lambda: [_rn(2, 3, 4)]),
    "reshape_infer": (lambda a: ndl.reshape(a, (-1, 2)), lambda a: a.reshape(-1, 2), lambda: [_rn(2, 3, 4)]),
    "reshape_of_transpose": (
        lambda a: ndl.reshape(ndl.transpose(a), (12,)),
        lambda a: a.T.reshape(12),
        lambda: [_rn(3, 4)],
    ),
    "broadcast_to": (lambda a: ndl.broadcast_to(a, (2, 3, 4)), lambda a: np.broadcast_to(a, (2, 3, 4)), lambda: [_rn(3, 1)]),
    "broadcast_to_1": (lambda a: ndl.broadcast_to(a, (3, 2)), lambda a: np.broadcast_to(a, (3, 2)), lambda: [_rn(1)]),
    "summation_all": (ndl.summation, np.sum, lambda: [_rn(3, 4)]),
    "summation_axis": (lambda a: ndl.summation(a, 1), lambda a: a.sum(1), lambda: [_rn(3, 4, 2)]),
    "summation_axes": (lambda a: ndl.summation(a, (0, 2)), lambda a: a.sum((0, 2)), lambda: [_rn(3, 4, 2)]),
    "summation_negative_axis": (lambda a: a.sum(-1), lambda a: a.sum(-1), lambda: [_rn(3, 4)]),
    "mean": (lambda a: ndl.mean(a, (1,)), lambda a: a.mean(1), lambda: [_rn(3, 4)]),
    "amax": (lambda a: ndl.amax(a, (0, 2)), lambda a: a.max((0, 2)), lambda: [_np_unique(3, 4, 2)]),
    "amax_keepdims": (lambda a: ndl.amax(a, 1, keepdims=True), lambda a: a.max(1, keepdims=True), lambda: [_np_unique(3, 4)]),
    "matmul": (ndl.matmul, np.matmul, lambda: [_rn(5, 4), _rn(4, 3)]),
    "matmul_batched": (ndl.matmul, np.matmul, lambda: [_rn(2, 5, 4), _rn(2, 4, 3)]),
    "matmul_4d_2d": (ndl.matmul, np.matmul, lambda: [_rn(2, 3, 5, 4), _rn(4, 3)]),
    "matmul_2d_4d": (ndl.matmul, np.matmul, lambda: [_rn(5, 4), _rn(2, 3, 4, 3)]),
    "matmul_broadcast_batch": (ndl.matmul, np.matmul, lambda: [_rn(2, 1, 3, 4), _rn(5, 4, 2)]),
    "matmul_vector": (ndl.matmul, np.matmul, lambda: [_rn(4), _rn(4, 3)]),
    "matmul_transposed": (lambda a, b: ndl.transpose(a) @ b, lambda a, b: a.T @ b, lambda: [_rn(4, 5), _rn(4, 3)]),
    "matmul_trans_b": (lambda a, b: ndl.ops.MatMul(False, True)(a, b), lambda a, b: a @ b.T, lambda: [_rn(5, 4), _rn(3, 4)]),
    "matmul_trans_a": (lambda a, b: ndl.ops.MatMul(True, False)(a, b), lambda a, b: a.T @ b, lambda: [_rn(4, 5), _rn(4, 3)]),
    "matmul_trans_both_batched": (
        lambda a, b: ndl.ops.MatMul(True, True)(a, b),
        lambda a, b: np.swapaxes(a, -1, -2) @ np.swapaxes(b, -1, -2),
        lambda: [_rn(2, 4, 5), _rn(3, 4)],
    ),
    # Fused adjoints and the one-node broadcast/sum adjoints: their own gradients are the
    # second derivatives of tanh, sigmoid, broadcast_to and summation.
    "tanh_grad": (lambda g, y: ndl.ops.TanhGrad()(g, y), lambda g, y: g * (1 - y * y), lambda: [_rn(3, 4), _rn(3, 4) * 0.5]),
    "sigmoid_grad": (
        lambda g, s: ndl.ops.SigmoidGrad()(g, s), lambda g, s: g * s * (1 - s), lambda: [_rn(3, 4), _pos(3, 4) - 0.5]
    ),
    "sum_to_shape": (lambda a: ndl.ops.SumToShape((3, 1))(a), lambda a: a.sum(0).sum(-1, keepdims=True), lambda: [_rn(2, 3, 4)]),
    "broadcast_axes": (
        lambda a: ndl.ops.BroadcastAxes((3, 2, 4), (1,))(a), lambda a: np.broadcast_to(a[:, None], (3, 2, 4)), lambda: [_rn(3, 4)]
    ),
    "logsumexp_axes": (lambda a: ndl.logsumexp(a, (1,)), lambda a: _np_logsumexp(a, (1,)), lambda: [_rn(3, 4)]),
    "logsumexp_all": (ndl.logsumexp, lambda a: _np_logsumexp(a, None), lambda: [_rn(3, 4)]),
    "logsumexp_two_axes": (lambda a: ndl.logsumexp(a, (0, 2)), lambda a: _np_logsumexp(a, (0, 2)), lambda: [_rn(2, 3, 4)]),
    "logsoftmax": (ndl.logsoftmax, lambda a: a - _np_logsumexp(a, (1,))[:, None], lambda: [_rn(3, 5)]),
    "stack": (lambda a, b: ndl.stack([a, b], 1), lambda a, b: np.stack([a, b], 1), lambda: [_rn(3, 4), _rn(3, 4)]),
    "split": (
        lambda a: ndl.split(a, 1)[0] * ndl.split(a, 1)[2],
        lambda a: a[:, 0] * a[:, 2],
        lambda: [_rn(3, 4, 2)],
    ),
    "fused_add_scalars": (
        lambda a: ndl.fused_add_scalars(a, 1.0, 2.0)[0] * ndl.fused_add_scalars(a, 1.0, 2.0)[1],
        lambda a: (a + 1) * (a + 2),
        lambda: [_rn(3)],
    ),
    "flip": (lambda a: ndl.flip(a, (0, 2)), lambda a: np.flip(a, (0, 2)), lambda: [_rn(2, 3, 4)]),
    "gather_rows": (
        lambda a: ndl.gather_rows(a, [3, 0, 3, 1]),
        lambda a: a[[3, 0, 3, 1]],
        lambda: [_rn(5, 3)],
    ),
    "scatter_add_rows": (
        lambda a: ndl.scatter_add_rows(a, [2, 0, 2], 4),
        lambda a: np.stack([a[1], np.zeros(a.shape[1]), a[0] + a[2], np.zeros(a.shape[1])]),
        lambda: [_rn(3, 2)],
    ),
    "split_partly_used": (
        lambda a: ndl.split(a, 0)[1] * 2.0 + ndl.split(a, 0)[1],
        lambda a: a[1] * 3.0,
        lambda: [_rn(3, 4)],
    ),
    "dilate": (lambda a: ndl.dilate(a, (0, 1), 2), lambda a: _np_dilate(a, 2), lambda: [_rn(2, 3)]),
    "undilate": (lambda a: ndl.undilate(a, (1,), 1), lambda a: a[:, ::2], lambda: [_rn(3, 5)]),
    "getitem": (lambda a: a[1, 1:4:2], lambda a: a[1, 1:4:2], lambda: [_rn(3, 5, 2)]),
    "getitem_ellipsis": (lambda a: a[..., -1], lambda a: a[..., -1], lambda: [_rn(3, 5, 2)]),
    "getitem_negative_slice": (lambda a: a[-2:, :-1], lambda a: a[-2:, :-1], lambda: [_rn(4, 3)]),
    "pad": (
        lambda a: ndl.pad(a, ((1, 0), (0, 2))),
        lambda a: np.pad(a, ((1, 0), (0, 2))),
        lambda: [_rn(2, 3)],
    ),
    "unfold": (lambda a: ndl.unfold(a, (2, 3), (2, 1)), lambda a: _np_unfold(a, (2, 3), (2, 1)), lambda: [_rn(2, 5, 4, 3)]),
}


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("name", sorted(OPS))
def test_op_forward_and_gradient(name, device):
    np.random.seed(0)
    fn, np_fn, make = OPS[name]
    check_op(fn, np_fn, make(), device)


def test_public_op_helpers_are_exported():
    """Every lowercase helper (all exercised above or in test_conv.py) is reachable as ndl.ops.X and ndl.X."""
    helpers = {
        "add", "add_scalar", "multiply", "mul_scalar", "power", "power_scalar", "divide", "divide_scalar",
        "negate", "log", "exp", "relu", "tanh", "sigmoid", "maximum", "transpose", "permute", "reshape",
        "broadcast_to", "summation", "mean", "amax", "matmul", "logsumexp", "logsoftmax", "stack", "split",
        "fused_add_scalars", "flip", "dilate", "undilate", "get_item", "pad", "unfold", "make_tuple",
        "tuple_get_item", "conv", "max_pool2d", "avg_pool2d", "gather_rows", "scatter_add_rows",
    }
    for h in helpers:
        assert callable(getattr(ndl.ops, h)), h
        assert callable(getattr(ndl, h)), h


# ---- numerics ----------------------------------------------------------------
@pytest.mark.parametrize("device", ND_DEVICES)
def test_logsumexp_huge_values(device):
    a = np.array([[1e10, 1e10, -1e10], [-1e10, 3.0, 1e-10]], dtype=np.float32)
    out = ndl.logsumexp(ndl.Tensor(a, device=device), axes=(1,)).numpy()
    np.testing.assert_allclose(out, [1e10, np.log(np.exp(3.0) + 1.0)], rtol=1e-6)
    out0 = ndl.logsumexp(ndl.Tensor(a, device=device), axes=(0,)).numpy()
    np.testing.assert_allclose(out0, [1e10, 1e10, 1e-10], rtol=1e-6, atol=1e-6)
    assert np.isfinite(out).all() and np.isfinite(out0).all()


@pytest.mark.parametrize("device", ND_DEVICES)
def test_logsoftmax_large_inputs(device):
    a = np.random.randn(3, 4).astype(np.float32) * 1e5
    out = ndl.logsoftmax(ndl.Tensor(a, device=device)).numpy()
    ref = a - _np_logsumexp(a.astype(np.float64), (1,))[:, None]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-2)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("device", ND_DEVICES)
def test_sigmoid_saturates_without_nan(device):
    out = ndl.sigmoid(ndl.Tensor([-1000.0, 0.0, 1000.0], device=device)).numpy()
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0], atol=1e-7)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_maximum_and_amax_split_ties(device):
    a = ndl.Tensor([1.0, 2.0], device=device)
    b = ndl.Tensor([1.0, 3.0], device=device)
    ndl.maximum(a, b).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), [0.5, 0.0])
    np.testing.assert_allclose(b.grad.numpy(), [0.5, 1.0])
    c = ndl.Tensor([[2.0, 2.0, 1.0]], device=device)
    ndl.amax(c, 1).sum().backward()
    np.testing.assert_allclose(c.grad.numpy(), [[0.5, 0.5, 0.0]])


@pytest.mark.parametrize("device", ND_DEVICES)
def test_full_reduction_is_0d(device):
    t = ndl.Tensor(np.ones((2, 3)), device=device)
    assert t.sum().shape == ()
    assert ndl.logsumexp(t).shape == ()
    assert float(t.sum().numpy()) == 6.0


@pytest.mark.parametrize("device", ND_DEVICES)
def test_ops_keep_device(device):
    t = ndl.Tensor(np.ones((2, 3)), device=device)
    for out in (t + t, t @ ndl.transpose(t), ndl.exp(t), t.sum(), t[0], ndl.stack([t, t], 0)):
        assert out.device == device


# ---- bad input ---------------------------------------------------------------
def _t(*shape):
    return ndl.Tensor(np.zeros(shape), device=ndl.cpu_numpy())


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: _t(2, 3) + _t(3, 2), r"add: shapes \(2, 3\) and \(3, 2\)"),
        (lambda: ndl.multiply(_t(2), _t(3)), r"multiply: shapes \(2,\) and \(3,\)"),
        (lambda: ndl.divide(_t(2), _t(3)), r"divide: shapes"),
        (lambda: ndl.power(_t(2), _t(3)), r"power: shapes \(2,\) and \(3,\) cannot be broadcast"),
        (lambda: ndl.maximum(_t(2), _t(3)), r"maximum: shapes"),
        (lambda: _t(2, 3) @ _t(2, 3), r"matmul: shapes \(2, 3\) and \(2, 3\) are not aligned"),
        (lambda: _t(2, 2, 3) @ _t(3, 3, 1), r"matmul: batch dims of \(2, 2, 3\) and \(3, 3, 1\)"),
        (lambda: ndl.reshape(_t(2, 3), (4,)), r"reshape: cannot reshape a tensor of shape \(2, 3\) into \(4,\)"),
        (lambda: ndl.broadcast_to(_t(2, 3), (4, 3)), r"broadcast_to: cannot broadcast shape \(2, 3\) to \(4, 3\)"),
        (lambda: ndl.summation(_t(2, 3), (2,)), r"summation: axis 2 is out of range"),
        (lambda: ndl.stack([_t(2), _t(3)], 0), r"stack: tensor 1 has shape \(3,\)"),
        (lambda: ndl.permute(_t(2, 3), (0, 0)), r"permute: \(0, 0\) is not a permutation"),
        (lambda: ndl.transpose(_t(3)), r"transpose: need at least 2 dims"),
        (lambda: ndl.conv(_t(1, 4, 4, 3), _t(3, 3, 2, 4)), r"conv: X \(1, 4, 4, 3\) and W \(3, 3, 2, 4\)"),
        (lambda: ndl.conv(_t(1, 2, 2, 1), _t(5, 5, 1, 1), padding=0), r"conv: kernel \(5, 5\)"),
        (lambda: ndl.conv(_t(4, 4, 3), _t(3, 3, 3, 4)), r"conv: X must be NHWC"),
        (lambda: ndl.max_pool2d(_t(1, 4, 4, 1), 2, padding=2), r"max_pool2d: padding \(2, 2\)"),
        (lambda: _t(2, 3)[2], r"index 2 is out of bounds for axis 0 with size 2"),
        (lambda: _t(2, 3)[:, ::-1], r"slice steps must be > 0"),
        (lambda: _t(2, 3)[0, 0, 0], r"too many indices"),
    ],
)
def test_bad_input_raises_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError, IndexError), match=match):
        call()


def test_non_tensor_inputs_raise_type_error():
    with pytest.raises(TypeError, match=r"EWiseAdd: input 1 must be a Tensor, got ndarray"):
        ndl.add(_t(2), np.zeros(2))
    with pytest.raises(TypeError, match=r"add_scalar: expected a number, got str"):
        _t(2) + "x"


@pytest.mark.skipif(not ndl.cpu().enabled(), reason="needs the compiled cpu module")
def test_mismatched_devices_raise_value_error():
    cpu_t = ndl.Tensor(np.zeros((2, 3)), device=ndl.cpu())
    with pytest.raises(ValueError, match=r"EWiseAdd: inputs are on different devices \(\(2, 3\) on cpu\(\), \(2, 3\) on cpu_numpy\(\)\)"):
        cpu_t + _t(2, 3)
    with pytest.raises(ValueError, match="different devices"):
        ndl.stack([cpu_t, _t(2, 3)], 0)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_gather_rows_rejects_bad_indices(device):
    a = ndl.Tensor(np.ones((4, 2), np.float32), device=device)
    for bad in ([4], [-1], [1.5]):
        with pytest.raises(IndexError, match="gather_rows"):
            ndl.gather_rows(a, bad)
    with pytest.raises(IndexError, match="scatter_add_rows"):
        ndl.scatter_add_rows(a, [0, 1, 2, 9], 5)


def test_row_kernels_match_numpy_twin():
    from needle.backend_ndarray import ndarray_backend_cpu as cpu
    from needle.backend_ndarray import ndarray_backend_numpy as twin

    rng = np.random.default_rng(0)
    table = rng.standard_normal((6, 5)).astype(np.float32)
    rows = rng.standard_normal((4, 5)).astype(np.float32)
    idx = np.array([5, 0, 5, 2], np.float32)
    outs = []
    for mod in (cpu, twin):
        def buf(x):
            b = mod.Array(x.size)
            mod.from_numpy(x, b)
            return b
        g = mod.Array(20)
        mod.gather_rows(buf(table), buf(idx), g, 6, 5)
        s = buf(np.ones((6, 5), np.float32))
        mod.scatter_add_rows(buf(rows), buf(idx), s, 6, 5)
        outs.append((mod.to_numpy(g, [4, 5], [5, 1], 0), mod.to_numpy(s, [6, 5], [5, 1], 0)))
    np.testing.assert_array_equal(outs[0][0], table[[5, 0, 5, 2]])
    expected = np.ones((6, 5), np.float32)
    np.add.at(expected, [5, 0, 5, 2], rows)
    for g, s in outs:
        np.testing.assert_array_equal(g, outs[0][0])
        np.testing.assert_allclose(s, expected, rtol=1e-6)
