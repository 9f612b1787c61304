"""NEEDLE_BACKEND=np: fused batch / layer norm equal their compositions in float64, and
their first and second derivatives pass gradcheck."""
import numpy as np
import pytest

import needle as ndl
from needle import autograd, nn, ops
from devices import np_only

pytestmark = np_only

CASES = [("bn", (5, 3)), ("bn", (2, 3, 2, 2)), ("ln", (4, 5)), ("ln", (2, 2, 3))]


def _op(kind):
    return ops.BatchNorm(1e-5) if kind == "bn" else ops.LayerNorm(1e-5)


def _comp(kind, x, w, b):
    if kind == "bn":
        return ops.batch_norm_composition(x, w, b, 1e-5)[0]
    return ops.layer_norm_composition(x, w, b, 1e-5)


def _inputs(kind, shape, seed=0):
    rs = np.random.RandomState(seed)
    c = shape[1] if kind == "bn" else shape[-1]
    return rs.randn(*shape) * 2 + 0.5, rs.rand(c) + 0.5, rs.randn(c), rs.randn(*shape)


@pytest.mark.parametrize("kind,shape", CASES)
def test_matches_composition(kind, shape):
    x, w, b, g = _inputs(kind, shape)
    out = []
    for fn in (lambda *a: _op(kind)(*a), lambda *a: _comp(kind, *a)):
        X, W, B = ndl.Tensor(x), ndl.Tensor(w), ndl.Tensor(b)
        y = fn(X, W, B)
        y.backward(ndl.Tensor(g))
        out.append([y.numpy(), X.grad.numpy(), W.grad.numpy(), B.grad.numpy()])
    for a, r in zip(*out):
        assert a.dtype == np.float64
        np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind,shape", CASES)
def test_gradcheck(kind, shape):
    x, w, b, _ = _inputs(kind, shape, 1)
    assert autograd.gradcheck(lambda *a: _op(kind)(*a), ndl.Tensor(x), ndl.Tensor(w), ndl.Tensor(b))


@pytest.mark.parametrize("kind,shape", CASES)
@pytest.mark.parametrize("index", [0, 1, 2])
def test_gradcheck_second_order(kind, shape, index):
    """The adjoint op (dx, dw, db) as a function of (x, w, g): its needle-op gradient vs differences."""
    x, w, b, g = _inputs(kind, shape, 2)
    bias = ndl.Tensor(b, requires_grad=False)

    def adjoint(x, w, g):
        op = _op(kind)
        op(x, w, bias)  # the forward saves the centred input and 1/sigma for its adjoint
        return ops.tuple_get_item(op.grad_op(bias.shape)(x, w, g), index)

    assert autograd.gradcheck(adjoint, ndl.Tensor(x), ndl.Tensor(w), ndl.Tensor(g))


def test_single_row_batch_norm():
    x, w, b, g = _inputs("bn", (1, 3))
    X = ndl.Tensor(x)
    y = ops.batch_norm(X, ndl.Tensor(w), ndl.Tensor(b))
    y.backward(ndl.Tensor(g))
    np.testing.assert_allclose(y.numpy(), b[None, :])
    np.testing.assert_allclose(X.grad.numpy(), 0)


def test_modules_running_stats():
    rs = np.random.RandomState(3)
    bn = nn.BatchNorm2d(3, momentum=0.25)
    x = rs.randn(4, 3, 2, 2)
    bn(ndl.Tensor(x))
    np.testing.assert_allclose(bn.running_mean.numpy(), 0.25 * x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), 0.75 + 0.25 * x.var(axis=(0, 2, 3)), rtol=1e-6)
    bn.eval()
    expect = (x - bn.running_mean.numpy()[:, None, None]) / np.sqrt(bn.running_var.numpy()[:, None, None] + 1e-5)
    np.testing.assert_allclose(bn(ndl.Tensor(x)).numpy(), expect, rtol=1e-5, atol=1e-6)
    ln = nn.LayerNorm1d(2)
    z = rs.randn(3, 4, 2)
    expect = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(ln(ndl.Tensor(z)).numpy(), expect, rtol=1e-5, atol=1e-6)
