"""PyTorch's Tensor method names and results, checked against PyTorch on the same data
(forward values, and gradients where the method is differentiable)."""
import numpy as np
import pytest

import needle as ndl
from devices import ND_DEVICES, nd_only

torch = pytest.importorskip("torch")

pytestmark = nd_only
RNG = np.random.default_rng(11)

# name -> (needle call, torch call); each is applied to x of shape (2, 3, 4)
DIFFERENTIABLE = {
    "T": (lambda t: t.T, lambda t: t.permute(2, 1, 0)),
    "mT": (lambda t: t.mT, lambda t: t.mT),
    "exp": (lambda t: t.exp(), lambda t: t.exp()),
    "log": (lambda t: t.abs().log(), lambda t: t.abs().log()),
    "tanh": (lambda t: t.tanh(), lambda t: t.tanh()),
    "sigmoid": (lambda t: t.sigmoid(), lambda t: t.sigmoid()),
    "relu": (lambda t: t.relu(), lambda t: t.relu()),
    "abs": (lambda t: t.abs(), lambda t: t.abs()),
    "sqrt": (lambda t: t.abs().sqrt(), lambda t: t.abs().sqrt()),
    "clamp": (lambda t: t.clamp(-0.5, 0.7), lambda t: t.clamp(-0.5, 0.7)),
    "clamp_min": (lambda t: t.clamp(min=0.1), lambda t: t.clamp(min=0.1)),
    "sum_dim": (lambda t: t.sum(dim=1), lambda t: t.sum(dim=1)),
    "sum_keepdim": (lambda t: t.sum((0, 2), keepdim=True), lambda t: t.sum((0, 2), keepdim=True)),
    "sum_all": (lambda t: t.sum(), lambda t: t.sum()),
    "sum_axes": (lambda t: t.sum(axes=(1,)), lambda t: t.sum(dim=1)),
    "mean": (lambda t: t.mean(-1, keepdim=True), lambda t: t.mean(-1, keepdim=True)),
    "max_dim": (lambda t: t.max(dim=2).values, lambda t: t.max(dim=2).values),
    "min_dim": (lambda t: t.min(1)[0], lambda t: t.min(1)[0]),
    "max_all": (lambda t: t.max(), lambda t: t.max()),
    "reshape_varargs": (lambda t: t.reshape(4, -1), lambda t: t.reshape(4, -1)),
    "reshape_tuple": (lambda t: t.reshape((6, 4)), lambda t: t.reshape((6, 4))),
    "view": (lambda t: t.view(-1), lambda t: t.view(-1)),
    "flatten": (lambda t: t.flatten(1), lambda t: t.flatten(1)),
    "flatten_range": (lambda t: t.flatten(0, 1), lambda t: t.flatten(0, 1)),
    "unsqueeze": (lambda t: t.unsqueeze(1), lambda t: t.unsqueeze(1)),
    "squeeze": (lambda t: t.unsqueeze(0).unsqueeze(-1).squeeze(), lambda t: t.unsqueeze(0).unsqueeze(-1).squeeze()),
    "squeeze_dim": (lambda t: t.unsqueeze(2).squeeze(2), lambda t: t.unsqueeze(2).squeeze(2)),
    "permute_varargs": (lambda t: t.permute(2, 0, 1), lambda t: t.permute(2, 0, 1)),
    "permute_tuple": (lambda t: t.permute((1, 2, 0)), lambda t: t.permute((1, 2, 0))),
    "transpose_pair": (lambda t: t.transpose(0, 2), lambda t: t.transpose(0, 2)),
    "transpose_course": (lambda t: t.transpose((0, 1)), lambda t: t.transpose(0, 1)),
    "to_double": (lambda t: t.double() * 2, lambda t: t.double() * 2),
    "float_roundtrip": (lambda t: t.half().float(), lambda t: t.half().float()),
}


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("name", sorted(DIFFERENTIABLE))
def test_differentiable_methods_match_torch(device, name):
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    f, g = DIFFERENTIABLE[name]
    a = ndl.Tensor(x, device=device)
    ta = torch.tensor(x, requires_grad=True)
    out, ref = f(a), g(ta)
    assert tuple(out.shape) == tuple(ref.shape), name
    assert out.dtype == str(ref.dtype).replace("torch.", "")
    np.testing.assert_allclose(out.numpy().astype(np.float64), ref.detach().double().numpy(), rtol=1e-5, atol=1e-6)
    w = RNG.standard_normal(tuple(ref.shape))
    (out * ndl.Tensor(w, device=device, dtype=out.dtype)).sum().backward()
    (ref * torch.tensor(w, dtype=ref.dtype)).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), ta.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_argmax_argmin_and_max_indices(device):
    x = RNG.integers(0, 4, (3, 5)).astype(np.float32)  # ties: the first index wins, as in PyTorch
    a, t = ndl.Tensor(x, device=device), torch.tensor(x)
    for dim in (0, 1, -1):
        np.testing.assert_array_equal(a.argmax(dim).numpy(), t.argmax(dim).numpy())
        np.testing.assert_array_equal(a.argmin(dim, keepdim=True).numpy(), t.argmin(dim, keepdim=True).numpy())
        values, indices = a.max(dim=dim)
        np.testing.assert_array_equal(indices.numpy(), t.max(dim=dim).indices.numpy())
        assert indices.dtype == "int64" and values.dtype == "float32"
    assert int(a.argmax()) == int(t.argmax())


def test_conversions_and_python_numbers():
    t = ndl.Tensor([[1.5, -2.0], [3.0, 4.25]])
    assert t.sum().item() == pytest.approx(6.75) and float(t.sum()) == pytest.approx(6.75)
    assert int(ndl.Tensor([7])) == 7 and len(t) == 2 and t.tolist() == [[1.5, -2.0], [3.0, 4.25]]
    assert t.long().dtype == "int64" and t.long().tolist() == [[1, -2], [3, 4]]
    assert t.int().dtype == "int32" and t.bool().dtype == "bool" and t.bfloat16().dtype == "bfloat16"
    assert t.to("float64").dtype == "float64" and t.to(ndl.cpu_numpy()).device == ndl.cpu_numpy()
    assert t.to(ndl.cpu()) is t
    with pytest.raises(ValueError, match="one element"):
        t.item()
    with pytest.raises(TypeError, match="0-d"):
        len(t.sum())


@pytest.mark.parametrize("device", ND_DEVICES)
def test_comparisons_give_bool_tensors_and_logic(device):
    x, y = RNG.standard_normal((3, 4)), RNG.standard_normal((4,))
    a, b = ndl.Tensor(x, device=device), ndl.Tensor(y, device=device)
    xs, ys = x.astype(np.float32), y.astype(np.float32)
    for op in ("__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"):
        out = getattr(a, op)(b)
        assert out.dtype == "bool" and not out.requires_grad
        np.testing.assert_array_equal(out.numpy(), getattr(xs, op)(ys))
    m, n = a > 0, a < 0.5
    np.testing.assert_array_equal((m & n).numpy(), (xs > 0) & (xs < 0.5))
    np.testing.assert_array_equal((m | n).numpy(), (xs > 0) | (xs < 0.5))
    np.testing.assert_array_equal((m ^ n).numpy(), (xs > 0) ^ (xs < 0.5))
    np.testing.assert_array_equal((~m).numpy(), ~(xs > 0))
    with pytest.raises(TypeError, match="bool"):
        a & m


def test_tensors_still_hash_by_identity():
    a, b = ndl.Tensor([1.0]), ndl.Tensor([1.0])
    seen = {a: 1, b: 2}
    assert seen[a] == 1 and seen[b] == 2 and len({a, b, a}) == 2
    assert (a == b).numpy().tolist() == [True]


def test_bad_dims_name_the_method():
    t = ndl.Tensor(np.ones((2, 3)))
    with pytest.raises(IndexError, match="unsqueeze"):
        t.unsqueeze(4)
    with pytest.raises(ValueError, match="reshape"):
        t.reshape(4, -1)
    with pytest.raises(TypeError, match="permute"):
        t.permute(0.5, 1)
