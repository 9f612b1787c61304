"""ReLU's adjoint as one kernel (``NDArray.relu_grad``, the ``ReLUGrad`` op): against numpy's
select, against PyTorch's relu backward (NaN, infinities, signed zeros), against the
composition ``g * (a > 0)`` it replaced, on strided layouts and through a second derivative."""
import numpy as np
import pytest
import torch

import needle as ndl
from needle.backend_ndarray import ndarray as nd
from needle.ops import ops_mathematic as om
from devices import ND_DEVICES

SPECIALS_X = [0.0, -0.0, np.nan, -np.inf, np.inf, 1e-30, -1e-30]
SPECIALS_G = [np.inf, np.nan, 1.0, -np.inf, np.nan, -2.0, np.inf]


def _select(g, x):
    return np.where(x <= 0, 0, g).astype(g.dtype)


def _pair(rng, n, dtype):
    x = np.concatenate([rng.uniform(-2, 2, n), SPECIALS_X]).astype(dtype)
    g = np.concatenate([rng.uniform(-3, 3, n), SPECIALS_G]).astype(dtype)
    return g, x


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_ndarray_relu_grad_matches_numpy(device, dtype):
    rng = np.random.default_rng(1)
    np_dtype = nd.NDArray(np.zeros(1), dtype=dtype).numpy().dtype
    g, x = _pair(rng, 1000, np_dtype)
    out = nd.array(g, device=device, dtype=dtype).relu_grad(nd.array(x, device=device, dtype=dtype))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.numpy(), _select(g, x))


@pytest.mark.parametrize("device", ND_DEVICES)
def test_ndarray_relu_grad_strided_broadcast_and_empty(device):
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (3, 4, 5)).astype(np.float32)
    g = rng.uniform(-1, 1, (5, 4, 3)).astype(np.float32)
    X = nd.array(x, device=device)
    G = nd.array(g, device=device).permute((2, 1, 0))  # a permuted view
    np.testing.assert_array_equal(G.relu_grad(X).numpy(), _select(g.transpose(2, 1, 0), x))
    np.testing.assert_array_equal(X.relu_grad(G).numpy(), _select(x, g.transpose(2, 1, 0)))
    # A stepped slice, and a gradient broadcast from one value (a sum's adjoint).
    np.testing.assert_array_equal(X[:, ::2, 1:4].relu_grad(X[:, 1::2, 1:4]).numpy(),
                                  _select(x[:, ::2, 1:4], x[:, 1::2, 1:4]))
    one = nd.array(np.array(2.5, np.float32), device=device).reshape((1, 1, 1)).broadcast_to((3, 4, 5))
    np.testing.assert_array_equal(one.relu_grad(X).numpy(), _select(np.full((3, 4, 5), 2.5, np.float32), x))
    row = nd.array(x[0, 0], device=device)  # a (5,) row broadcast over the leading axes
    np.testing.assert_array_equal(X.relu_grad(row).numpy(), _select(x, np.broadcast_to(x[0, 0], x.shape)))
    empty = nd.array(np.zeros((0, 3), np.float32), device=device)
    assert empty.relu_grad(empty).shape == (0, 3)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_ndarray_relu_grad_bad_input(device):
    x = nd.array(np.ones((2, 3), np.float32), device=device)
    with pytest.raises(TypeError, match="relu_grad"):
        x.relu_grad(1.0)
    with pytest.raises(ValueError, match=r"relu_grad.*\(2, 3\).*\(4,\)"):
        x.relu_grad(nd.array(np.ones(4, np.float32), device=device))
    # Integer operands compute in float32, like every floating-only elementwise function.
    i = nd.array(np.array([[-1, 0, 2]], np.int32), device=device)
    out = i.relu_grad(i)
    assert out.dtype == "float32"
    np.testing.assert_array_equal(out.numpy(), [[0, 0, 2]])


@pytest.mark.parametrize("device", ND_DEVICES)
def test_relu_backward_matches_torch(device):
    rng = np.random.default_rng(3)
    g, x = _pair(rng, 200, np.float32)
    a = ndl.Tensor(x, device=device, requires_grad=True)
    ndl.relu(a).backward(ndl.Tensor(g, device=device))
    ta = torch.tensor(x, requires_grad=True)
    torch.relu(ta).backward(torch.tensor(g))
    np.testing.assert_array_equal(a.grad.numpy(), ta.grad.numpy())


@pytest.mark.parametrize("device", ND_DEVICES)
def test_relu_grad_op_equals_the_composition_it_replaced(device):
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (6, 7)).astype(np.float32)
    g = rng.uniform(-1, 1, (6, 7)).astype(np.float32)
    G, X = ndl.Tensor(g, device=device), ndl.Tensor(x, device=device)
    oracle = G * ndl.Tensor((x > 0).astype(np.float32), device=device)
    np.testing.assert_array_equal(om.ReLUGrad()(G, X).numpy(), oracle.numpy())


@pytest.mark.parametrize("device", ND_DEVICES)
def test_relu_second_derivative_matches_torch(device):
    """d/dg of relu_grad is the step, d/da is zero: grad of grad as PyTorch computes it."""
    rng = np.random.default_rng(5)
    x = rng.uniform(-1, 1, (4, 5))
    w = rng.uniform(-1, 1, (4, 5))
    a = ndl.Tensor(x, device=device, dtype="float64", requires_grad=True)
    y = (ndl.relu(a) * ndl.relu(a)).sum()  # dy/da = 2 relu(a) step(a)
    y.backward()
    (a.grad * ndl.Tensor(w, device=device, dtype="float64")).sum().backward()
    ta = torch.tensor(x, requires_grad=True)
    (gx,) = torch.autograd.grad((torch.relu(ta) ** 2).sum(), ta, create_graph=True)
    (ggx,) = torch.autograd.grad((gx * torch.tensor(w)).sum(), ta)
    np.testing.assert_allclose(a.grad.numpy(), ggx.numpy(), rtol=1e-12, atol=1e-12)


def test_relu_grad_op_gradient_numerically():
    rng = np.random.default_rng(6)
    x = rng.uniform(0.1, 1, (3, 4)) * rng.choice([-1, 1], (3, 4))  # away from the kink
    g = rng.uniform(-1, 1, (3, 4))
    G = ndl.Tensor(g, dtype="float64", requires_grad=True)
    X = ndl.Tensor(x, dtype="float64", requires_grad=True)
    assert ndl.autograd.gradcheck(lambda u, v: om.ReLUGrad()(u, v), G, X)
