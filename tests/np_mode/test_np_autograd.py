"""NEEDLE_BACKEND=np: float64 gradients of every op via ``autograd.gradcheck`` (exact to 1e-6)."""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import needle as ndl
from needle import autograd
from devices import np_only

pytestmark = np_only


def T(x, dtype="float64"):
    return ndl.Tensor(np.asarray(x, dtype=dtype))


def rn(*shape):
    return T(np.random.randn(*shape))


def pos(*shape):
    return T(np.random.rand(*shape) + 0.5)


def distinct(*shape):
    n = int(np.prod(shape))
    return T((np.random.permutation(n) * 0.05 - n * 0.025 + 0.013).reshape(shape))


# name: (function of Tensors, input factory)
OPS = {
    "add": (ndl.add, lambda: [rn(3, 4), rn(3, 4)]),
    "add_scalar": (lambda a: ndl.add_scalar(a, 2.0), lambda: [rn(3)]),
    "sub": (lambda a, b: a - b - 1.0 + (2.0 - b), lambda: [rn(3), rn(3)]),
    "multiply": (ndl.multiply, lambda: [rn(3, 4), rn(3, 4)]),
    "mul_scalar": (lambda a: ndl.mul_scalar(a, 3.0), lambda: [rn(3)]),
    "power": (ndl.power, lambda: [pos(3, 4), rn(3, 4)]),
    "power_scalar": (lambda a: ndl.power_scalar(a, 3), lambda: [rn(3, 4)]),
    "power_scalar_frac_neg": (lambda a: a**-1.5, lambda: [pos(3, 4)]),
    "divide": (ndl.divide, lambda: [rn(3, 4), pos(3, 4)]),
    "divide_scalar": (lambda a: ndl.divide_scalar(a, 3.0), lambda: [rn(3, 4)]),
    "divide_scalar_array": (lambda a: ndl.divide_scalar(a, np.array([4.0])), lambda: [rn(3, 4)]),
    "negate": (ndl.negate, lambda: [rn(3)]),
    "log": (ndl.log, lambda: [pos(3, 4)]),
    "exp": (ndl.exp, lambda: [rn(3, 4)]),
    "relu": (ndl.relu, lambda: [distinct(3, 4)]),
    "tanh": (ndl.tanh, lambda: [rn(3, 4)]),
    "sigmoid": (ndl.sigmoid, lambda: [rn(3, 4)]),
    "maximum": (ndl.maximum, lambda: [distinct(3, 4), distinct(3, 4) + 0.01]),
    "transpose": (ndl.transpose, lambda: [rn(2, 3, 4)]),
    "transpose_pair": (lambda a: ndl.transpose(a, (0, 1)), lambda: [rn(2, 3, 4)]),
    "permute": (lambda a: ndl.permute(a, (1, 2, 0)), lambda: [rn(2, 3, 4)]),
    "reshape": (lambda a: ndl.reshape(a, (6, 4)), lambda: [rn(2, 3, 4)]),
    "broadcast_to": (lambda a: ndl.broadcast_to(a, (2, 3, 4)), lambda: [rn(3, 1)]),
    "broadcast_to_0d": (lambda a: ndl.broadcast_to(a, (2, 3)), lambda: [T(1.5)]),
    "summation_all": (ndl.summation, lambda: [rn(3, 4)]),
    "summation_axes": (lambda a: ndl.summation(a, (0, 2)), lambda: [rn(2, 3, 4)]),
    "mean": (lambda a: ndl.mean(a, 1), lambda: [rn(2, 3, 4)]),
    "amax": (lambda a: ndl.amax(a, (1,)), lambda: [distinct(3, 4)]),
    "matmul": (ndl.matmul, lambda: [rn(3, 4), rn(4, 2)]),
    "matmul_3d_3d": (ndl.matmul, lambda: [rn(2, 3, 4), rn(2, 4, 2)]),
    "matmul_4d_2d": (ndl.matmul, lambda: [rn(2, 2, 3, 4), rn(4, 2)]),
    "matmul_2d_4d": (ndl.matmul, lambda: [rn(3, 4), rn(2, 2, 4, 2)]),
    "matmul_vector": (ndl.matmul, lambda: [rn(3, 4), rn(4)]),
    "logsumexp": (lambda a: ndl.logsumexp(a, (1,)), lambda: [rn(3, 4)]),
    "logsumexp_all": (ndl.logsumexp, lambda: [rn(3, 4)]),
    "logsoftmax": (ndl.logsoftmax, lambda: [rn(3, 4)]),
    "stack": (lambda a, b: ndl.stack([a, b], 2), lambda: [rn(3, 4), rn(3, 4)]),
    "split": (lambda a: ndl.split(a, 0)[1] * ndl.split(a, 0)[0], lambda: [rn(2, 3)]),
    "fused_add_scalars": (lambda a: ndl.fused_add_scalars(a, 1.0, -1.0)[0] * ndl.fused_add_scalars(a, 1.0, -1.0)[1], lambda: [rn(3)]),
    "flip": (lambda a: ndl.flip(a, (1,)), lambda: [rn(3, 4)]),
    "dilate": (lambda a: ndl.dilate(a, (0, 1), 1), lambda: [rn(2, 3)]),
    "undilate": (lambda a: ndl.undilate(a, (0,), 1), lambda: [rn(5, 3)]),
    "getitem": (lambda a: a[1:, 0, ::2], lambda: [rn(3, 2, 5)]),
    "pad": (lambda a: ndl.pad(a, ((0, 1), (2, 0))), lambda: [rn(2, 3)]),
    "conv": (lambda a, b: ndl.conv(a, b, stride=2, padding=1, dilation=1, groups=2), lambda: [rn(1, 5, 4, 4), rn(3, 2, 2, 4)]),
    "max_pool2d": (lambda a: ndl.max_pool2d(a, 2, stride=1, padding=1), lambda: [distinct(1, 4, 3, 2)]),
    "avg_pool2d": (lambda a: ndl.avg_pool2d(a, (3, 2), stride=2, padding=1), lambda: [rn(1, 5, 4, 2)]),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_gradcheck_float64(name):
    np.random.seed(0)
    fn, make = OPS[name]
    assert autograd.gradcheck(fn, *make(), eps=1e-6, atol=1e-6, rtol=1e-6)


def _grad_of(fn, seed=1):
    """x -> d/dx sum(fn(x, ...) * w): a function whose own gradient is a second derivative."""

    def f(*xs):
        xs = [x if x.requires_grad else ndl.Tensor(x, requires_grad=True) for x in xs]
        out = fn(*xs)
        w = np.random.default_rng(seed).standard_normal(out.shape)
        (out * ndl.Tensor(w, requires_grad=False)).sum().backward()
        return xs[0].grad

    return f


@pytest.mark.parametrize(
    "name", ["multiply", "power", "divide", "log", "exp", "tanh", "sigmoid", "logsumexp", "logsoftmax", "matmul_3d_3d",
             "broadcast_to", "summation_axes", "getitem", "stack", "dilate", "conv", "avg_pool2d"]
)
def test_grad_of_grad_float64(name):
    np.random.seed(0)
    fn, make = OPS[name]
    assert autograd.gradcheck(_grad_of(fn), *make(), eps=1e-6, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("stride, padding, dilation, groups", list(itertools.product([1, 3], [0, 2], [1, 2], [1, 2])))
def test_conv_gradcheck_random_directions(stride, padding, dilation, groups):
    np.random.seed(0)
    x, w = rn(2, 7, 6, 2 * groups), rn(3, 2, 2, 3 * groups)
    fn = lambda a, b: ndl.conv(a, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    assert autograd.gradcheck(fn, x, w, eps=1e-6, atol=1e-6, rtol=1e-6, random_directions=4)


def test_gradcheck_catches_wrong_gradient():
    class Bad(autograd.TensorOp):
        def compute(self, a):
            return np.sin(a)

        def gradient(self, out_grad, node):
            return out_grad * node  # should be cos(a)

    with pytest.raises(autograd.GradcheckError, match=r"input 0 \(shape \(2, 2\)\).*worst element"):
        autograd.gradcheck(lambda a: Bad()(a), rn(2, 2))


def test_dtype_is_kept():
    a = ndl.Tensor(np.arange(4, dtype=np.float64))
    assert a.dtype == np.float64 and (a * 2 + 1).dtype == np.float64
    assert ndl.Tensor(np.arange(3)).dtype == np.int64
    assert ndl.Tensor([1.0, 2.0], dtype="float32").dtype == np.float32
    b = ndl.Tensor(np.ones(3, dtype=np.float32))
    assert (b / 2).dtype == np.float32 and ndl.exp(b).dtype == np.float32
    assert isinstance(a.realize_cached_data(), np.ndarray)
    assert isinstance(a.sum().realize_cached_data(), np.ndarray) and a.sum().shape == ()
    assert a.device == ndl.cpu() and repr(a.device) == "needle.cpu()"


def test_course_style_gradient_check_mutates_flat_data():
    """hw1's checker perturbs ``realize_cached_data().flat[j]`` in place and expects 1e-6 accuracy."""
    np.random.seed(0)
    A, B = rn(5, 4), rn(4, 3)
    f = lambda a, b: ndl.summation(ndl.tanh(a @ b) * (a @ b))
    eps = 1e-4
    numeric = np.zeros(A.shape)
    for j in range(A.realize_cached_data().size):
        A.realize_cached_data().flat[j] += eps
        f1 = float(f(A, B).numpy().sum())
        A.realize_cached_data().flat[j] -= 2 * eps
        f2 = float(f(A, B).numpy().sum())
        A.realize_cached_data().flat[j] += eps
        numeric.flat[j] = (f1 - f2) / (2 * eps)
    f(A, B).backward()
    assert np.linalg.norm(A.grad.numpy() - numeric) < 1e-6


def test_init_rng_calls_and_shapes():
    np.random.seed(3)
    a = ndl.init.rand(2, 3, low=-1.0, high=2.0)
    np.random.seed(3)
    np.testing.assert_allclose(a.numpy(), (np.random.rand(2, 3) * 3 - 1).astype(np.float32))
    np.random.seed(3)
    b = ndl.init.kaiming_uniform(4, 5, shape=(3, 3, 4, 5))
    np.random.seed(3)
    bound = np.sqrt(2) * np.sqrt(3 / 4)
    np.testing.assert_allclose(b.numpy(), (np.random.rand(3, 3, 4, 5) * 2 * bound - bound).astype(np.float32), rtol=1e-6)
    np.random.seed(3)
    c = ndl.init.xavier_normal(4, 6, gain=2.0)
    np.random.seed(3)
    np.testing.assert_allclose(c.numpy(), (np.random.randn(4, 6) * 2 * np.sqrt(2 / 10)).astype(np.float32), rtol=1e-6)
    np.random.seed(3)
    m = ndl.init.randb(5, p=0.3)
    np.random.seed(3)
    np.testing.assert_array_equal(m.numpy(), np.random.rand(5) <= 0.3)
    assert m.dtype == bool
    oh = ndl.init.one_hot(4, ndl.Tensor([1.0, 3.0]))
    np.testing.assert_array_equal(oh.numpy(), np.eye(4)[[1, 3]])
    z = ndl.init.zeros_like(rn(2, 2))
    assert z.dtype == np.float64 and not z.requires_grad and (z.numpy() == 0).all()
    with pytest.raises(ValueError, match="only nonlinearity='relu'"):
        ndl.init.kaiming_normal(3, 3, nonlinearity="tanh")


def test_np_mode_imports_without_compiled_modules():
    """np mode never needs the C++/CUDA modules: import with them blocked."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if 'ndarray_backend_cpu' in name or 'ndarray_backend_cuda' in name:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import needle as ndl, numpy as np\n"
        "x = ndl.Tensor(np.ones((2, 2)))\n"
        "(x @ x).sum().backward()\n"
        "assert 'needle.backend_ndarray.ndarray_backend_cpu' not in sys.modules\n"
        "print(x.grad.numpy().sum())\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, NEEDLE_BACKEND="np", PYTHONPATH=os.path.join(root, "python"))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "16.0"  # d sum(X @ X) / dX = 1 X^T + X^T 1 = 4 everywhere
