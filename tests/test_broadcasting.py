"""Implicit broadcasting in every binary elementwise op, at the NDArray and the Tensor
level, with gradients summed back to each input's shape; checked against PyTorch."""
import numpy as np
import pytest

import needle as ndl
from needle import backend_ndarray as nd
from devices import ND_DEVICES, nd_only

torch = pytest.importorskip("torch")

pytestmark = nd_only

PAIRS = [((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)), ((4,), (2, 3, 4)), ((1,), (5, 2)), ((), (2, 3)),
         ((2, 1, 3), (1, 4, 1))]
OPS = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / b, lambda a, b: a / b),
    "pow": (lambda a, b: ndl.power(a, b), lambda a, b: a ** b),
    "maximum": (lambda a, b: ndl.maximum(a, b), lambda a, b: torch.maximum(a, b)),
}
RNG = np.random.default_rng(5)


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("sa,sb", PAIRS)
def test_tensor_binary_ops_broadcast_with_gradients(device, op, sa, sb):
    x, y = RNG.uniform(0.5, 2.0, sa), RNG.uniform(0.5, 2.0, sb)
    f, g = OPS[op]
    a = ndl.Tensor(x, device=device, dtype="float64")
    b = ndl.Tensor(y, device=device, dtype="float64")
    ta, tb = torch.tensor(x, requires_grad=True), torch.tensor(y, requires_grad=True)
    out, ref = f(a, b), g(ta, tb)
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-12)
    w = RNG.standard_normal(ref.shape)
    (out * ndl.Tensor(w, device=device, dtype="float64")).sum().backward()
    (ref * torch.tensor(w)).sum().backward()
    assert a.grad.shape == sa and b.grad.shape == sb
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), tb.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("sa,sb", PAIRS)
def test_ndarray_arithmetic_and_comparisons_broadcast(device, sa, sb):
    x, y = RNG.standard_normal(sa).astype(np.float32), RNG.standard_normal(sb).astype(np.float32)
    a, b = nd.array(x, device=device), nd.array(y, device=device)
    for name in ("__add__", "__sub__", "__mul__", "__truediv__", "__lt__", "__ge__", "__eq__"):
        np.testing.assert_allclose(getattr(a, name)(b).numpy(), getattr(x, name)(y), rtol=1e-6)
    np.testing.assert_array_equal(a.maximum(b).numpy(), np.maximum(x, y))


def test_shapes_that_do_not_broadcast_name_both():
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\) and \(4,\) cannot be broadcast"):
        ndl.Tensor(np.ones((2, 3))) + ndl.Tensor(np.ones(4))
    with pytest.raises(ValueError, match=r"multiply: shapes \(2, 3\) and \(3, 2\)"):
        nd.array(np.ones((2, 3))) * nd.array(np.ones((3, 2)))


def test_gradcheck_through_a_bias_broadcast():
    x = ndl.Tensor(RNG.standard_normal((4, 3)), dtype="float64")
    bias = ndl.Tensor(RNG.standard_normal(3), dtype="float64")
    ndl.autograd.gradcheck(lambda a, b: ndl.ops.tanh(a * b + b), x, bias, atol=1e-8, rtol=1e-7)
