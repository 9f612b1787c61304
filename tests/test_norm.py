"""Fused batch / layer norm (ops_norm) against their compositions and PyTorch: forward,
the gradients of x, weight and bias, the batch statistics, second order, odd shapes
and non-compact inputs; the BatchNorm1d/2d and LayerNorm1d modules use them."""
import numpy as np
import pytest

import needle as ndl
from needle import nn, ops
from devices import ND_DEVICES

pytestmark = pytest.mark.skipif(not ND_DEVICES, reason="needs NEEDLE_BACKEND=nd")

RTOL, ATOL = 1e-4, 1e-5


def T(a, device, requires_grad=True):
    return ndl.Tensor(np.asarray(a, dtype=np.float32), device=device, requires_grad=requires_grad)


def _fused(kind):
    return ops.batch_norm if kind == "bn" else ops.layer_norm


def _comp(kind):
    if kind == "bn":
        return lambda x, w, b, eps=1e-5: ops.batch_norm_composition(x, w, b, eps)[0]
    return ops.layer_norm_composition


def _inputs(shape, kind, seed):
    rs = np.random.RandomState(seed)
    c = shape[1] if kind == "bn" else shape[-1]
    x = (rs.randn(*shape) * 2 + 0.5).astype(np.float32)
    w = (rs.rand(c) + 0.5).astype(np.float32)
    b = rs.randn(c).astype(np.float32)
    g = rs.randn(*shape).astype(np.float32)
    return x, w, b, g


def _run(fn, x, w, b, g, device):
    X, W, Bv = T(x, device), T(w, device), T(b, device)
    y = fn(X, W, Bv)
    y.backward(T(g, device, False))
    return [a.numpy() for a in (y, X.grad, W.grad, Bv.grad)]


CASES = [("bn", (8, 5)), ("bn", (3, 4, 5, 6)), ("bn", (2, 3, 1, 1)), ("bn", (7, 1)),
         ("ln", (6, 5)), ("ln", (2, 3, 7)), ("ln", (4, 1)), ("ln", (5,))]


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("kind,shape", CASES)
def test_matches_composition(device, kind, shape):
    x, w, b, g = _inputs(shape, kind, 0)
    got = _run(_fused(kind), x, w, b, g, device)
    ref = _run(_comp(kind), x, w, b, g, device)
    for a, r, name in zip(got, ref, ("y", "dx", "dw", "db")):
        assert a.shape == r.shape, name
        np.testing.assert_allclose(a, r, rtol=RTOL, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("kind,shape", [c for c in CASES if c[1] != (5,)])
def test_matches_torch(device, kind, shape):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, b, g = _inputs(shape, kind, 1)
    got = _run(_fused(kind), x, w, b, g, device)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    if kind == "bn":
        if np.prod(shape) // shape[1] == 1:
            pytest.skip("torch refuses training-mode batch norm over one value per channel")
        yt = F.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5)
    else:
        yt = F.layer_norm(xt, (shape[-1],), wt, bt, eps=1e-5)
    yt.backward(torch.tensor(g))
    for a, r, name in zip(got, (yt, xt.grad, wt.grad, bt.grad), ("y", "dx", "dw", "db")):
        np.testing.assert_allclose(a, r.detach().numpy(), rtol=RTOL, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_batch_statistics_exposed(device):
    x, w, b, _ = _inputs((6, 3, 2, 4), "bn", 2)
    op = ops.BatchNorm(1e-5)
    op(T(x, device), T(w, device), T(b, device))
    np.testing.assert_allclose(op.mean.numpy(), x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(op.var.numpy(), x.var(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_single_row_matches_composition(device):
    """N = 1: zero variance, so y = bias and dx = 0 (PyTorch refuses; the composition does not)."""
    x, w, b, g = _inputs((1, 4), "bn", 3)
    got = _run(ops.batch_norm, x, w, b, g, device)
    ref = _run(_comp("bn"), x, w, b, g, device)
    np.testing.assert_allclose(got[0], np.broadcast_to(b, (1, 4)), atol=1e-6)
    np.testing.assert_allclose(got[1], 0, atol=1e-6)
    for a, r in zip(got, ref):
        np.testing.assert_allclose(a, r, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_nchw_view_of_nhwc_and_noncompact_grad(device):
    """The layout nn.Conv produces (an NCHW view of an NHWC buffer), and a broadcast upstream gradient."""
    x, w, b, _ = _inputs((2, 3, 4, 5), "bn", 4)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    results = []
    for fn in (ops.batch_norm, _comp("bn")):
        X = T(nhwc, device)
        W, Bv = T(w, device), T(b, device)
        y = fn(ops.permute(X, (0, 3, 1, 2)), W, Bv)
        (y * y).sum().backward()
        results.append([a.numpy() for a in (y, X.grad, W.grad, Bv.grad)])
    for a, r in zip(*results):
        np.testing.assert_allclose(a, r, rtol=RTOL, atol=1e-4)
    X, W, Bv = T(x, device), T(w, device), T(b, device)
    ops.batch_norm(X, W, Bv).sum().backward()  # dx of a sum is ~0, db = count
    np.testing.assert_allclose(X.grad.numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(Bv.grad.numpy(), np.full(3, 2 * 4 * 5), rtol=1e-6)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_shape_errors(device):
    x = T(np.ones((4, 3)), device)
    with pytest.raises(ValueError, match="batch_norm"):
        ops.batch_norm(x, T(np.ones(2), device), T(np.ones(3), device))
    with pytest.raises(ValueError, match="layer_norm"):
        ops.layer_norm(x, T(np.ones(3), device), T(np.ones(4), device))


def _second_order(fn, x, w, b, g, h, device):
    """Leaf gradients of L2 = sum over (dx, dw, db) of <d., h.> for the first-order grads."""
    X, W, Bv, G = T(x, device), T(w, device), T(b, device), T(g, device)
    fn(X, W, Bv).backward(G)
    dx, dw, db = X.grad, W.grad, Bv.grad
    l2 = (dx * T(h[0], device, False)).sum() + (dw * T(h[1], device, False)).sum() \
        + (db * T(h[2], device, False)).sum()
    l2.backward()
    return [a.numpy() for a in (X.grad, W.grad, G.grad)]


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("kind,shape", [("bn", (6, 4)), ("bn", (2, 3, 2, 3)), ("ln", (5, 6)), ("ln", (2, 3, 4))])
def test_grad_of_grad_matches_composition(device, kind, shape):
    x, w, b, g = _inputs(shape, kind, 5)
    rs = np.random.RandomState(6)
    h = [rs.randn(*shape).astype(np.float32), rs.randn(*w.shape).astype(np.float32),
         rs.randn(*b.shape).astype(np.float32)]
    got = _second_order(_fused(kind), x, w, b, g, h, device)
    ref = _second_order(_comp(kind), x, w, b, g, h, device)
    for a, r, name in zip(got, ref, ("x", "w", "g")):
        np.testing.assert_allclose(a, r, rtol=1e-3, atol=1e-3, err_msg=name)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_modules_train_eval_and_running_stats(device):
    torch = pytest.importorskip("torch")
    rs = np.random.RandomState(7)
    for dims, mod, ref in (((5, 3), nn.BatchNorm1d, torch.nn.BatchNorm1d),
                           ((4, 3, 2, 5), nn.BatchNorm2d, torch.nn.BatchNorm2d)):
        bn = mod(3, momentum=0.3, device=device)
        tref = ref(3, momentum=0.3)
        bn.weight.data = T(rs.rand(3) + 0.5, device, False)
        bn.bias.data = T(rs.randn(3), device, False)
        with torch.no_grad():
            tref.weight.copy_(torch.tensor(bn.weight.numpy()))
            tref.bias.copy_(torch.tensor(bn.bias.numpy()))
        biased = np.ones(3)
        for _ in range(3):
            x = (rs.randn(*dims) * 2 + 1).astype(np.float32)
            np.testing.assert_allclose(bn(T(x, device)).numpy(), tref(torch.tensor(x)).detach().numpy(),
                                       rtol=RTOL, atol=1e-4)
            axes = (0,) if len(dims) == 2 else (0, 2, 3)
            biased = 0.7 * biased + 0.3 * x.var(axis=axes)
        np.testing.assert_allclose(bn.running_mean.numpy(), tref.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        # needle's running variance averages the BIASED batch variance (course contract)
        np.testing.assert_allclose(bn.running_var.numpy(), biased, rtol=1e-5, atol=1e-6)
        assert not bn.running_mean.requires_grad and bn.running_mean.op is None
        bn.eval()
        tref.running_var.copy_(torch.tensor(biased, dtype=torch.float32))
        tref.eval()
        x = rs.randn(*dims).astype(np.float32)
        np.testing.assert_allclose(bn(T(x, device)).numpy(), tref(torch.tensor(x)).detach().numpy(),
                                   rtol=RTOL, atol=1e-4)
        before = bn.running_mean.numpy().copy()
        bn(T(x, device))
        np.testing.assert_array_equal(bn.running_mean.numpy(), before)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_modules_use_one_fused_node(device):
    x = T(np.random.RandomState(8).randn(4, 3, 2, 2), device)
    assert isinstance(nn.BatchNorm2d(3, device=device)(x).op, ops.BatchNorm)
    assert isinstance(nn.BatchNorm1d(3, device=device)(ops.reshape(x, (16, 3))).op, ops.BatchNorm)
    assert isinstance(nn.LayerNorm1d(2, device=device)(x).op, ops.LayerNorm)
