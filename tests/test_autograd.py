"""Graph, topological order, backward semantics, no_grad, gradcheck (nd mode)."""
import gc
import sys

import numpy as np
import pytest

import needle as ndl
from needle import autograd
from devices import BACKEND, ND_DEVICES, nd_only

pytestmark = nd_only


def T(x, device=None, **kw):
    return ndl.Tensor(np.asarray(x, dtype=np.float32), device=device or ndl.cpu_numpy(), **kw)


# ---- topological sort --------------------------------------------------------
def test_topo_sort_order():
    a1, b1 = T(np.ones((2, 2))), T(np.ones((2, 2)))
    c1 = 3 * a1 * a1 + 4 * b1 * a1 - a1
    names = [type(n.op).__name__ if n.op else "leaf" for n in autograd.find_topo_sort([c1])]
    # post-order DFS over inputs in order: each node right after its inputs
    assert names == [
        "leaf", "MulScalar", "EWiseMul", "leaf", "MulScalar", "EWiseMul", "EWiseAdd", "Negate", "EWiseAdd",
    ]
    topo = autograd.find_topo_sort([c1])
    assert topo[0] is a1 and topo[3] is b1 and topo[-1] is c1
    assert len({id(n) for n in topo}) == len(topo)


def test_topo_sort_multiple_outputs_visits_each_node_once():
    a = T([1.0])
    b = a * 2
    c, d = b + 1, b * 3
    topo = autograd.find_topo_sort([c, d])
    assert len(topo) == 4 and topo[0] is a and topo[1] is b


def test_deep_chain_needs_no_recursion():
    """A 10,000-op chain (deeper than the recursion limit) backwards fine."""
    depth = 10_000
    assert depth > sys.getrecursionlimit()
    x = T([1.0, 2.0])
    y = x
    for _ in range(depth):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0001**depth] * 2, rtol=1e-3)


# ---- backward semantics ------------------------------------------------------
def test_diamond_reuse_sums_adjoints():
    a = T([1.0, -2.0])
    b = a + a
    c = b + b
    c.backward()
    np.testing.assert_array_equal(a.grad.numpy(), [4.0, 4.0])
    np.testing.assert_array_equal(b.grad.numpy(), [2.0, 2.0])
    x = T([3.0])
    (x * x * x).backward()  # x used three times by two nodes
    np.testing.assert_allclose(x.grad.numpy(), [27.0])


def test_backward_twice_overwrites():
    """Documented semantics: each backward() sets .grad afresh (no accumulation across calls)."""
    a = T([1.0, 2.0])
    loss = (a * a).sum()
    loss.backward()
    loss.backward()
    np.testing.assert_allclose(a.grad.numpy(), [2.0, 4.0])
    other = (a * 3).sum()
    other.backward()
    np.testing.assert_allclose(a.grad.numpy(), [3.0, 3.0])


def test_backward_with_out_grad_and_checks():
    a = T(np.arange(6).reshape(2, 3))
    b = a * 2
    b.backward(T(np.full((2, 3), 0.5), requires_grad=False))
    np.testing.assert_allclose(a.grad.numpy(), np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"out_grad shape \(3,\) does not match tensor shape \(2, 3\)"):
        b.backward(T(np.ones(3)))
    with pytest.raises(TypeError, match="out_grad must be a Tensor"):
        b.backward(np.ones((2, 3)))


def test_grad_of_grad():
    x2 = T([6.0])
    x3 = T([0.0])
    y = x2 * x2 + x2 * x3
    y.backward()
    grad_x2, grad_x3 = x2.grad, x3.grad
    assert grad_x2.numpy() == 2 * 6 + 0 and grad_x3.numpy() == 6
    grad_x2.backward()  # d(2 x2 + x3)/dx2 = 2, /dx3 = 1; overwrites the first-order grads
    assert x2.grad.numpy() == 2 and x3.grad.numpy() == 1


def test_third_derivative_through_ops():
    x = T([0.7])
    y = ndl.tanh(x)
    y.backward()
    g1 = x.grad  # 1 - tanh^2
    g1.backward()
    g2 = x.grad  # -2 tanh (1 - tanh^2)
    g2.backward()
    t = np.tanh(0.7)
    np.testing.assert_allclose(g1.numpy(), [1 - t**2], rtol=1e-5)
    np.testing.assert_allclose(g2.numpy(), [-2 * t * (1 - t**2)], rtol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), [-2 * (1 - t**2) ** 2 + 4 * t**2 * (1 - t**2)], rtol=1e-4)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "broadcast", "sum", "matmul"])
def test_second_derivative_through_fused_adjoints(name):
    """The one-node adjoints (SigmoidGrad, TanhGrad, SumToShape, BroadcastAxes, transposed
    MatMul) are differentiable: d/dx of sum(d/dx f(x) * v) matches a numerical difference."""
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((3, 4)).astype(np.float64)
    w = T(rng.standard_normal((4, 2)))
    f = {
        "sigmoid": lambda x: ndl.sigmoid(x) * ndl.sigmoid(x),
        "tanh": lambda x: ndl.tanh(x) * x,
        "broadcast": lambda x: ndl.broadcast_to(ndl.summation(x * x, (0,)).reshape((1, 4)), (3, 4)) * x,
        "sum": lambda x: ndl.summation(x * x * x, (1,)),
        "matmul": lambda x: (x @ w) * (x @ w),
    }[name]

    def first_grad_sum(x_np, create_graph=True):
        x = T(x_np)
        f(x).sum().backward(create_graph=create_graph)
        return x, x.grad

    x, g = first_grad_sum(x0)
    g.sum().backward()
    eps = 1e-2
    num = np.zeros_like(x0)
    for j in range(x0.size):
        hi, lo = x0.copy(), x0.copy()
        hi.flat[j] += eps
        lo.flat[j] -= eps
        num.flat[j] = (first_grad_sum(hi, False)[1].numpy().sum() - first_grad_sum(lo, False)[1].numpy().sum()) / (2 * eps)
    np.testing.assert_allclose(x.grad.numpy(), num, rtol=2e-2, atol=2e-2)


def test_create_graph_false_gives_plain_grads():
    x = T([1.0, 2.0])
    (x * x).sum().backward(create_graph=False)
    assert x.grad.is_leaf() and not x.grad.requires_grad
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0])


def test_intermediate_grads_are_detached_leaf_grads_have_graph():
    x = T([1.0, 2.0])
    h = x * x
    h.sum().backward()
    assert h.grad.is_leaf()
    assert not x.grad.is_leaf() and x.grad.requires_grad


def test_constants_get_no_grad():
    x = T([1.0])
    c = T([2.0], requires_grad=False)
    (x * c).backward()
    assert c.grad is None
    np.testing.assert_allclose(x.grad.numpy(), [2.0])


# ---- eager mode, detach, no_grad --------------------------------------------
def test_ops_on_constants_are_detached():
    a = T([1.0], requires_grad=False)
    b = ndl.exp(a) + 1
    assert b.op is None and b.inputs == [] and not b.requires_grad
    c = a + T([1.0])
    assert c.op is not None and c.requires_grad


def test_detach_and_data():
    a = T([1.0, 2.0])
    b = a * 2
    d = b.detach()
    assert d.is_leaf() and not d.requires_grad
    np.testing.assert_array_equal(d.numpy(), [2.0, 4.0])
    assert b.data.is_leaf()
    a.data = T([5.0, 6.0])
    np.testing.assert_array_equal(a.numpy(), [5.0, 6.0])
    with pytest.raises(TypeError, match="must be set to a Tensor"):
        a.data = np.zeros(2)


def test_no_grad():
    a = T([1.0, 2.0])
    with autograd.no_grad():
        assert not autograd.is_grad_enabled()
        b = a * a + 1
        with autograd.no_grad():
            pass
        assert not autograd.is_grad_enabled()
        c = ndl.exp(b)
    assert autograd.is_grad_enabled()
    for t in (b, c):
        assert t.op is None and not t.requires_grad
    assert (a * a).requires_grad

    @autograd.no_grad()
    def f(x):
        return x * 3

    assert not f(a).requires_grad
    assert autograd.is_grad_enabled()
    with pytest.raises(RuntimeError):
        with autograd.no_grad():
            raise RuntimeError("boom")
    assert autograd.is_grad_enabled()


def test_tensor_counter_tracks_live_tensors():
    gc.collect()
    start = autograd.TENSOR_COUNTER
    a = T(np.ones(3))
    b = (a * 2).sum()
    assert autograd.TENSOR_COUNTER > start
    del a, b
    gc.collect()
    assert autograd.TENSOR_COUNTER == start


def test_training_loop_does_not_leak_tensors():
    w = T(np.ones((4, 2)))
    x = T(np.ones((3, 4)), requires_grad=False)
    counts = []
    for _ in range(5):
        loss = ndl.relu(x @ w).sum()
        loss.backward()
        w = T(w.numpy() - 0.1 * w.grad.numpy())
        del loss
        gc.collect()
        counts.append(autograd.TENSOR_COUNTER)
    assert counts[-1] == counts[1]


# ---- Tensor API --------------------------------------------------------------
def test_tensor_construction_and_properties():
    a = ndl.Tensor([[1.0, 2], [3, 4]], device=ndl.cpu_numpy())
    assert a.shape == (2, 2) and a.dtype == "float32" and a.device == ndl.cpu_numpy()
    ints = ndl.Tensor([[1, 2], [3, 4]], device=ndl.cpu_numpy())
    assert ints.dtype == ("int64" if BACKEND == "nd" else np.array([1]).dtype)
    b = ndl.Tensor(a)
    assert b.realize_cached_data() is a.realize_cached_data()
    c = ndl.Tensor(a.realize_cached_data(), device=ndl.cpu_numpy())
    np.testing.assert_array_equal(c.numpy(), a.numpy())
    assert repr(a).startswith("needle.Tensor(")
    assert ndl.Tensor(3.0, device=ndl.cpu_numpy()).shape == ()


def test_subtraction_and_scalar_node_types():
    a, b = T([1.0]), T([2.0])
    assert isinstance((a - b).op, ndl.ops.EWiseAdd) and isinstance((a - b).inputs[1].op, ndl.ops.Negate)
    assert isinstance((a - 2).op, ndl.ops.AddScalar) and (a - 2).op.scalar == -2
    assert isinstance((3 * a).op, ndl.ops.MulScalar)
    assert isinstance((a / 2).op, ndl.ops.DivScalar)
    assert isinstance((a**2).op, ndl.ops.PowerScalar)


def test_tensor_tuple():
    a, b = T([1.0]), T([2.0, 3.0])
    tup = ndl.make_tuple(a, b)
    assert len(tup) == 2 and tup[0] is a and tup[-1] is b  # constant folding
    assert [t.shape for t in tup] == [(1,), (2,)]
    with pytest.raises(IndexError):
        tup[2]
    s = ndl.split(T(np.arange(6).reshape(3, 2)), 0)
    assert len(s.tuple()) == 3 and repr(s).startswith("needle.TensorTuple(")
    summed = tup + tup
    np.testing.assert_array_equal(summed[1].numpy(), [4.0, 6.0])
    assert s.detach().is_leaf()


def test_gradient_as_tuple():
    a, b = T([1.0]), T([2.0])
    out = a * b
    grads = out.op.gradient_as_tuple(T([1.0]), out)
    assert isinstance(grads, tuple) and len(grads) == 2
    assert isinstance(ndl.exp(a).op.gradient_as_tuple(T([1.0]), ndl.exp(a)), tuple)


def test_getitem_int_drops_axis_like_numpy():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    t = T(x)
    for idx in [0, (1, 2), (slice(None), 1), (0, slice(1, None, 2), -1), (Ellipsis, 2)]:
        np.testing.assert_array_equal(t[idx].numpy(), x[idx])


# ---- gradcheck ---------------------------------------------------------------
class _WrongSquare(autograd.TensorOp):
    """x^2 with a deliberately wrong gradient at element 2."""

    def compute(self, a):
        return a * a

    def gradient(self, out_grad, node):
        x = node.inputs[0]
        bump = np.zeros(x.shape, dtype=np.float32)
        bump.flat[2] = 1.0
        return out_grad * (x * 2 + T(bump, device=x.device, requires_grad=False))


@pytest.mark.parametrize("device", ND_DEVICES)
def test_gradcheck_passes_on_correct_ops(device):
    x = T(np.random.randn(3, 4), device=device)
    y = T(np.random.randn(4, 2), device=device)
    assert autograd.gradcheck(lambda a, b: ndl.tanh(a @ b), x, y, eps=1e-2, atol=1e-2, rtol=1e-2)
    assert autograd.gradcheck(
        lambda a, b: ndl.tanh(a @ b), x, y, eps=1e-2, atol=1e-2, rtol=1e-2, random_directions=3
    )


def test_gradcheck_reports_input_element_and_values():
    x = T(np.random.rand(2, 3) + 0.5)
    y = T(np.random.rand(2, 3))
    with pytest.raises(autograd.GradcheckError) as err:
        autograd.gradcheck(lambda a, b: _WrongSquare()(a) + b, y, x, eps=1e-2, atol=1e-2, rtol=1e-2)
    msg = str(err.value)
    assert "input 0" in msg and "worst element (0, 2)" in msg and "analytic" in msg and "numeric" in msg
    with pytest.raises(autograd.GradcheckError, match=r"input 1 .* random direction 0"):
        autograd.gradcheck(
            lambda a, b: a + _WrongSquare()(b), y, x, eps=1e-2, atol=1e-2, rtol=1e-2, random_directions=2
        )
