"""The fused softmax cross-entropy (ops_loss) against its oracle, the composition
logsumexp - gathered logit, and against torch.nn.functional.cross_entropy:
forward, gradient (numerically checked too), second order, and the backend
kernels of every built module against the numpy twin."""
import numpy as np
import pytest

import needle as ndl
from needle import autograd
from needle.backend_ndarray import ndarray_backend_numpy as twin
from needle.ops.ops_loss import softmax_cross_entropy, softmax_cross_entropy_composition
from devices import DEVICES, nd_only

SHAPES = [(1, 1), (3, 5), (7, 13), (16, 100), (5, 1037)]


def _case(n, k, scale=3.0, seed=0):
    rs = np.random.RandomState(seed)
    return (rs.randn(n, k) * scale).astype(np.float32), rs.randint(0, k, n)


def _run(fn, z, y, device, upstream=1.0):
    Z = ndl.Tensor(z, device=device)
    loss = fn(Z, ndl.Tensor(y.astype(np.float32), device=device, requires_grad=False))
    loss.backward(ndl.Tensor(np.array(upstream, dtype=np.float32), device=device, requires_grad=False))
    return loss.numpy().reshape(()), Z.grad.numpy()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("device", DEVICES)
def test_fused_matches_composition_and_torch(device, shape):
    z, y = _case(*shape)
    fused, g_fused = _run(softmax_cross_entropy, z, y, device, 0.7)
    comp, g_comp = _run(softmax_cross_entropy_composition, z, y, device, 0.7)
    np.testing.assert_allclose(fused, comp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_fused, g_comp, rtol=1e-5, atol=1e-6)
    torch = pytest.importorskip("torch")
    zt = torch.tensor(z, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(zt, torch.tensor(y))
    (ref * 0.7).backward()
    np.testing.assert_allclose(fused, ref.item(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_fused, zt.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_stable_for_huge_logits(device):
    z = np.array([[1e4, -1e4, 0.0, 1e4 - 1.0], [-3e4, -3e4 + 2.0, -1e30, -3e4]], dtype=np.float32)
    y = np.array([3, 0])
    loss, grad = _run(softmax_cross_entropy, z, y, device)
    lse = np.array([1e4 + np.log1p(np.exp(-1.0)), -3e4 + 2.0 + np.log1p(2 * np.exp(-2.0))])
    expected = np.mean(lse - z[np.arange(2), y])
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-3)
    p = np.exp(z.astype(np.float64) - lse[:, None])
    p[np.arange(2), y] -= 1
    # lse is float32 (ulp ~1e-3 at 1e4), so exp(z - lse) carries ~1e-3 relative error, as in the composition
    np.testing.assert_allclose(grad, p / 2, atol=2e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_numerically(device):
    z, y = _case(4, 9, scale=1.0, seed=3)
    f = lambda a: softmax_cross_entropy(a, y)  # noqa: E731
    assert autograd.gradcheck(f, ndl.Tensor(z, device=device), eps=1e-2, atol=1e-3, rtol=1e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_second_order_matches_composition(device):
    z, y = _case(3, 6, scale=1.0, seed=5)
    w = np.random.RandomState(6).randn(3, 6).astype(np.float32)
    out = []
    for fn in (softmax_cross_entropy, softmax_cross_entropy_composition):
        Z = ndl.Tensor(z, device=device)
        fn(Z, y).backward()
        g = Z.grad
        (g * ndl.Tensor(w, device=device, requires_grad=False)).sum().backward()
        out.append(Z.grad.numpy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_loss_module_uses_fused_op_and_checks_labels(device):
    z, y = _case(4, 6)
    loss = ndl.nn.SoftmaxLoss()(ndl.Tensor(z, device=device), ndl.Tensor(y.astype(np.float32), device=device))
    assert type(loss.op).__name__ == "SoftmaxCrossEntropy"
    with pytest.raises(ValueError, match="labels"):
        ndl.nn.SoftmaxLoss()(ndl.Tensor(z, device=device), ndl.Tensor(np.array([0, 1, 2, 6.0]), device=device))
    with pytest.raises((IndexError, ValueError)):
        softmax_cross_entropy(ndl.Tensor(z, device=device), np.array([0, 1, 2, 6]))


# ---- the backend functions themselves, against the numpy twin -------------------------------
def _modules():
    from needle.backend_ndarray import ndarray_backend_cpu as cpu

    mods = [pytest.param(cpu, id="cpu")]
    try:
        from needle.backend_ndarray import ndarray_backend_cuda as cuda
    except ImportError:
        return mods
    mods.append(pytest.param(cuda, id="cuda", marks=pytest.mark.skipif(
        cuda.device_count() == 0, reason="no CUDA device visible")))
    return mods


def _arr(mod, x):
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    a = mod.Array(x.size)
    mod.from_numpy(x, a)
    return a


def _host(mod, a):
    return mod.to_numpy(a, [a.size], [1], 0)


@nd_only
@pytest.mark.parametrize("n,k", [(1, 1), (3, 7), (2, 8), (5, 33), (4, 1000), (0, 5)])
@pytest.mark.parametrize("mod", _modules())
def test_softmax_xent_kernels_match_twin(mod, n, k):
    z, y = _case(n, k, scale=5.0) if n else (np.zeros((0, k), np.float32), np.zeros(0))
    got = {}
    for m in (mod, twin):
        a, lab, lse, loss = _arr(m, z), _arr(m, y), m.Array(n), m.Array(1)
        m.softmax_xent(a, lab, lse, loss, n, k)
        out = m.Array(n * k)
        m.softmax_xent_grad(a, lab, lse, _arr(m, [0.5]), out, n, k, 0.25)
        got[m] = [_host(m, x) for x in (lse, out)] + ([_host(m, loss)] if n else [])
    for a, b in zip(got[mod], got[twin]):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    with pytest.raises((IndexError, ValueError)):
        bad = _arr(mod, np.full(max(n, 1), float(k)))
        mod.softmax_xent(_arr(mod, np.zeros((max(n, 1), k))), bad, mod.Array(max(n, 1)), mod.Array(1), max(n, 1), k)


@nd_only
@pytest.mark.parametrize("size", [1, 7, 8, 1000, 70001])
@pytest.mark.parametrize("mod", _modules())
def test_optimizer_step_kernels_match_twin(mod, size):
    rs = np.random.RandomState(size)
    w, g, m0 = (rs.randn(size).astype(np.float32) for _ in range(3))
    v0 = np.abs(rs.randn(size)).astype(np.float32)
    got = {}
    for m in (mod, twin):
        W, G, M, V, O = _arr(m, w), _arr(m, g), _arr(m, m0), _arr(m, v0), m.Array(size)
        m.adam_step(W, G, M, V, O, 0.01, 0.9, 0.999, 1e-8, 0.1, 0.99, 1 - 0.9 ** 3, 1 - 0.999 ** 3)
        U, O2, O3 = _arr(m, m0), m.Array(size), m.Array(size)
        m.sgd_step(W, G, U, O2, 0.1, 0.9, 0.01)
        m.sgd_step(W, G, W, O3, 0.1, 0.0, 0.01)  # no momentum: u is not touched
        got[m] = [_host(m, x) for x in (O, M, V, O2, U, O3, W)]
    for a, b in zip(got[mod], got[twin]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[mod][-1], w)
    with pytest.raises(ValueError):
        mod.adam_step(_arr(mod, w), _arr(mod, g[:-1] if size > 1 else []), mod.Array(size), mod.Array(size),
                      mod.Array(size), 0.1, 0.9, 0.999, 1e-8, 0.0, 1.0, 0.1, 0.001)
