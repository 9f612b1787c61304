"""NEEDLE_BACKEND=np: the fused softmax cross-entropy equals its composition oracle and its
float64 gradient passes gradcheck; optimizers fall back to the composition (numpy)."""
import numpy as np

import needle as ndl
from needle import autograd
from needle.ops.ops_loss import softmax_cross_entropy, softmax_cross_entropy_composition
from devices import np_only

pytestmark = np_only


def test_fused_loss_matches_composition_and_gradcheck():
    rs = np.random.RandomState(0)
    z, y = rs.randn(5, 7), rs.randint(0, 7, 5)
    a, b = ndl.Tensor(z), ndl.Tensor(z)
    fused = softmax_cross_entropy(a, y)
    comp = softmax_cross_entropy_composition(b, y)
    np.testing.assert_allclose(fused.numpy(), comp.numpy(), rtol=1e-12)
    fused.backward()
    comp.backward()
    np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert autograd.gradcheck(lambda t: softmax_cross_entropy(t, y), ndl.Tensor(z))
    loss = ndl.nn.SoftmaxLoss()(ndl.Tensor(z.astype(np.float32)), ndl.Tensor(y.astype(np.uint8)))
    assert loss.dtype == np.float32
    np.testing.assert_allclose(loss.numpy(), comp.numpy(), rtol=1e-5)


def test_adam_and_sgd_keep_float64_in_np_mode():
    p = ndl.nn.Parameter(ndl.Tensor(np.ones((3, 2))))
    for opt in (ndl.optim.Adam([p], lr=0.1, weight_decay=0.1), ndl.optim.SGD([p], lr=0.1, momentum=0.5)):
        p.grad = ndl.Tensor(np.full((3, 2), 0.5))
        opt.step()
        assert p.dtype == np.float64 and isinstance(p.cached_data, np.ndarray)
