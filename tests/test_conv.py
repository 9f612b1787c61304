"""Convolution and pooling against PyTorch: forward and both gradients (nd mode, every device).

Every convolution test runs with both algorithms (``set_conv_algorithm``): the implicit GEMM
(the backend's conv2d) and the explicit im2col reference. The full option grid stride {1,2,3} x padding {0,1,2} x dilation {1,2} x
groups {1,2} x kernel {1, 3, 5, (3, 2)} runs on tiny tensors with odd shapes
(H = 7, W = 6: H != W and neither a multiple of every stride), so trailing
rows that the forward never reads are covered.
"""
import itertools

import numpy as np
import pytest

import needle as ndl
from devices import ND_DEVICES, nd_only

torch = pytest.importorskip("torch")
F = torch.nn.functional

pytestmark = nd_only

GRID = [
    (s, p, d, g, k)
    for s, p, d, g, k in itertools.product([1, 2, 3], [0, 1, 2], [1, 2], [1, 2], [1, 3, 5, (3, 2)])
    # the dilated kernel must fit into the padded 7 x 6 input
    if 7 + 2 * p >= d * ((k if isinstance(k, int) else k[0]) - 1) + 1
    and 6 + 2 * p >= d * ((k if isinstance(k, int) else k[1]) - 1) + 1
]


@pytest.fixture(params=["implicit", "im2col"])
def algorithm(request):
    previous = ndl.ops.set_conv_algorithm(request.param)
    yield request.param
    ndl.ops.set_conv_algorithm(previous)


def _nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


def _conv_case(device, shape, kernel, stride, padding, dilation, groups, cin_g=2, cout_g=3):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    N, H, W = shape
    x = np.random.randn(N, H, W, cin_g * groups).astype(np.float32)
    w = np.random.randn(kh, kw, cin_g, cout_g * groups).astype(np.float32)
    X, Wt = ndl.Tensor(x, device=device), ndl.Tensor(w, device=device)
    out = ndl.conv(X, Wt, stride=stride, padding=padding, dilation=dilation, groups=groups)
    tx = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    tw = torch.tensor(w).permute(3, 2, 0, 1).requires_grad_()
    tout = F.conv2d(tx, tw, stride=stride, padding=padding, dilation=dilation, groups=groups)
    np.testing.assert_allclose(out.numpy(), _nhwc(tout), rtol=1e-4, atol=1e-4)
    gout = np.random.randn(*out.shape).astype(np.float32)
    out.backward(ndl.Tensor(gout, device=device))
    tout.backward(torch.tensor(gout).permute(0, 3, 1, 2))
    np.testing.assert_allclose(X.grad.numpy(), _nhwc(tx.grad), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(Wt.grad.numpy(), tw.grad.permute(2, 3, 1, 0).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_conv_full_grid_matches_torch(device, algorithm):
    """All 132 fitting combinations of the grid, forward + dX + dW."""
    np.random.seed(0)
    assert len(GRID) == 132
    for s, p, d, g, k in GRID:
        _conv_case(device, (2, 7, 6), k, s, p, d, g)


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize(
    "shape, kernel, stride, padding, dilation, groups",
    [
        ((1, 1, 1), 1, 1, 0, 1, 1),  # 1x1 image
        ((1, 1, 1), 3, 1, 1, 1, 1),  # only padding around one pixel
        ((3, 9, 4), 3, 3, 0, 1, 3),  # groups = 3, stride == kernel
        ((2, 5, 11), (1, 3), 2, 1, 2, 1),  # 1 x k kernel, wide image
        ((1, 8, 8), 3, 2, 2, 3, 2),  # dilation 3
        ((2, 6, 6), 2, 2, 0, 1, 1),  # even kernel
        ((2, 13, 10), 7, 4, 3, 1, 1),  # polyphase dX, 16 phases, H and W not multiples of the stride
        ((2, 9, 9), (5, 2), (3, 2), (2, 1), 1, 2),  # polyphase dX with groups and per-axis stride
        ((2, 1, 2), 3, 1, 2, 1, 2),  # taps and output rows that read only padding are skipped
        ((1, 2, 3), 3, 3, 3, 1, 1),  # stride > input: a dead tap between live ones
        ((2, 3, 3), 3, 2, (4, 3), 2, 1),  # dilated kernel, padding wider than the input
        ((2, 1, 1), (3, 5), 1, (1, 2), 1, 1),  # ResNet9's last 3x3 convs on a 1x1 map
    ],
)
def test_conv_odd_cases_match_torch(device, algorithm, shape, kernel, stride, padding, dilation, groups):
    np.random.seed(1)
    _conv_case(device, shape, kernel, stride, padding, dilation, groups)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_conv_pair_arguments_match_torch(device, algorithm):
    np.random.seed(2)
    x = np.random.randn(2, 7, 8, 4).astype(np.float32)
    w = np.random.randn(3, 2, 2, 4).astype(np.float32)
    X, Wt = ndl.Tensor(x, device=device), ndl.Tensor(w, device=device)
    out = ndl.conv(X, Wt, stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    tx = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    tw = torch.tensor(w).permute(3, 2, 0, 1).requires_grad_()
    tout = F.conv2d(tx, tw, stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    np.testing.assert_allclose(out.numpy(), _nhwc(tout), rtol=1e-4, atol=1e-4)
    out.sum().backward()
    tout.sum().backward()
    np.testing.assert_allclose(X.grad.numpy(), _nhwc(tx.grad), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(Wt.grad.numpy(), tw.grad.permute(2, 3, 1, 0).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_conv_helper_default_padding_is_one(device, algorithm):
    x = ndl.Tensor(np.random.randn(1, 5, 5, 2), device=device)
    w = ndl.Tensor(np.random.randn(3, 3, 2, 1), device=device)
    assert ndl.conv(x, w).shape == (1, 5, 5, 1)
    assert ndl.ops.Conv()(x, w).shape == (1, 3, 3, 1)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_conv_of_non_compact_input(device, algorithm):
    """A transposed (strided) input tensor is handled like its compact copy."""
    np.random.seed(3)
    x = np.random.randn(1, 6, 5, 2).astype(np.float32)
    w = np.random.randn(3, 3, 2, 2).astype(np.float32)
    X = ndl.transpose(ndl.Tensor(x.transpose(0, 2, 1, 3), device=device), (1, 2))
    out = ndl.conv(X, ndl.Tensor(w, device=device), stride=2)
    ref = F.conv2d(torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(w).permute(3, 2, 0, 1), stride=2, padding=1)
    np.testing.assert_allclose(out.numpy(), _nhwc(ref), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 1, 1, 1), (2, 0, 2, 2), (3, 2, 1, 1), (1, 3, 1, 2)])
def test_conv_grad_of_grad_matches_torch(device, algorithm, stride, padding, dilation, groups):
    """Second derivatives: the adjoints are convs, so they differentiate again."""
    np.random.seed(4)
    x = np.random.randn(2, 7, 6, 2 * groups).astype(np.float32)
    w = np.random.randn(3, 3, 2, 2 * groups).astype(np.float32)
    X, Wt = ndl.Tensor(x, device=device), ndl.Tensor(w, device=device)
    out = ndl.conv(X, Wt, stride=stride, padding=padding, dilation=dilation, groups=groups)
    gout = np.random.randn(*out.shape).astype(np.float32)
    v = np.random.randn(*x.shape).astype(np.float32)
    out.backward(ndl.Tensor(gout, device=device))
    (X.grad * ndl.Tensor(v, device=device)).sum().backward()  # d/dW <dL/dX, v>

    tx = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    tw = torch.tensor(w).permute(3, 2, 0, 1).requires_grad_()
    tout = F.conv2d(tx, tw, stride=stride, padding=padding, dilation=dilation, groups=groups)
    (gx,) = torch.autograd.grad(tout, tx, torch.tensor(gout).permute(0, 3, 1, 2), create_graph=True)
    (gx * torch.tensor(v).permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_allclose(Wt.grad.numpy(), tw.grad.permute(2, 3, 1, 0).numpy(), rtol=1e-3, atol=1e-3)



@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("stride, padding, dilation, groups", [(1, 1, 1, 1), (2, 0, 2, 2), (3, 2, 1, 1)])
def test_conv_weight_grad_differentiates_again(device, algorithm, stride, padding, dilation, groups):
    """d/dX and d/dG of <dL/dW, U>: the filter gradient's own adjoints (and, through them, the
    input gradient's filter adjoint) against torch."""
    np.random.seed(6)
    x = np.random.randn(2, 7, 6, 2 * groups).astype(np.float32)
    w = np.random.randn(3, 3, 2, 2 * groups).astype(np.float32)
    X, Wt = ndl.Tensor(x, device=device), ndl.Tensor(w, device=device)
    out = ndl.conv(X, Wt, stride=stride, padding=padding, dilation=dilation, groups=groups)
    gout = np.random.randn(*out.shape).astype(np.float32)
    u = np.random.randn(*w.shape).astype(np.float32)
    G = ndl.Tensor(gout, device=device, requires_grad=True)
    out.backward(G)
    (Wt.grad * ndl.Tensor(u, device=device)).sum().backward()  # d/dX, d/dG of <dL/dW, u>

    tx = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    tw = torch.tensor(w).permute(3, 2, 0, 1).requires_grad_()
    tg = torch.tensor(gout).permute(0, 3, 1, 2).requires_grad_()
    tout = F.conv2d(tx, tw, stride=stride, padding=padding, dilation=dilation, groups=groups)
    (gw,) = torch.autograd.grad(tout, tw, tg, create_graph=True)
    (gw * torch.tensor(u).permute(3, 2, 0, 1)).sum().backward()
    np.testing.assert_allclose(X.grad.numpy(), _nhwc(tx.grad), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(G.grad.numpy(), _nhwc(tg.grad), rtol=1e-3, atol=1e-3)

# ---- pooling -----------------------------------------------------------------
POOL_GRID = list(itertools.product([2, 3, (3, 2)], [None, 1, 2], [0, 1]))


def _pool_case(device, which, kernel, stride, padding):
    x = np.random.randn(2, 7, 6, 3).astype(np.float32)
    X = ndl.Tensor(x, device=device)
    fn = ndl.max_pool2d if which == "max" else ndl.avg_pool2d
    out = fn(X, kernel, stride=stride, padding=padding)
    tx = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    tfn = F.max_pool2d if which == "max" else F.avg_pool2d
    tout = tfn(tx, kernel, stride=stride, padding=padding)
    np.testing.assert_allclose(out.numpy(), _nhwc(tout), rtol=1e-5, atol=1e-5)
    gout = np.random.randn(*out.shape).astype(np.float32)
    out.backward(ndl.Tensor(gout, device=device))
    tout.backward(torch.tensor(gout).permute(0, 3, 1, 2))
    np.testing.assert_allclose(X.grad.numpy(), _nhwc(tx.grad), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("which", ["max", "avg"])
def test_pooling_grid_matches_torch(device, which):
    np.random.seed(5)
    for kernel, stride, padding in POOL_GRID:
        _pool_case(device, which, kernel, stride, padding)


@pytest.mark.parametrize("device", ND_DEVICES)
def test_max_pool_ties_split_gradient(device):
    x = ndl.Tensor(np.ones((1, 2, 2, 1)), device=device)
    ndl.max_pool2d(x, 2).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full((1, 2, 2, 1), 0.25))


@pytest.mark.parametrize("device", ND_DEVICES)
@pytest.mark.parametrize("x_needs_grad", [False, True])
def test_conv_skips_adjoint_of_input_without_grad(device, algorithm, x_needs_grad):
    """A data batch (requires_grad=False) gets no dX; dW is unchanged."""
    np.random.seed(1)
    x = np.random.randn(2, 9, 9, 3).astype(np.float32)
    w = np.random.randn(3, 3, 3, 4).astype(np.float32)
    X = ndl.Tensor(x, device=device, requires_grad=x_needs_grad)
    W = ndl.Tensor(w, device=device)
    ndl.conv(X, W, stride=2, padding=1).sum().backward()
    tx = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    tw = torch.tensor(w).permute(3, 2, 0, 1).requires_grad_()
    F.conv2d(tx, tw, stride=2, padding=1).sum().backward()
    np.testing.assert_allclose(W.grad.numpy(), tw.grad.permute(2, 3, 1, 0).numpy(), rtol=1e-4, atol=1e-4)
    if x_needs_grad:
        np.testing.assert_allclose(X.grad.numpy(), _nhwc(tx.grad), rtol=1e-4, atol=1e-4)
    else:
        assert X.grad is None
