"""needle.amp: which ops autocast runs in half precision and which in float32, gradients
against PyTorch's CPU autocast, GradScaler's skip/backoff/growth rules, and mixed-precision
training of the apps reaching float32's accuracy."""
import os

import ml_dtypes
import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
import needle.nn.functional as F
from needle import amp, ops

torch = pytest.importorskip("torch")

NP_HALF = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def T(a, requires_grad=True, dtype="float32"):
    return ndl.Tensor(np.asarray(a, dtype=np.float32), dtype=dtype, requires_grad=requires_grad)


@pytest.mark.parametrize("half", ["bfloat16", "float16"])
def test_matmul_runs_on_half_copies(half):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((7, 3))
    with amp.autocast(dtype=half):
        out = T(a) @ T(b)
    assert out.dtype == half
    # the reference: the same product of the inputs rounded to the half type
    ah = a.astype(np.float32).astype(NP_HALF[half]).astype(np.float32)
    bh = b.astype(np.float32).astype(NP_HALF[half]).astype(np.float32)
    expected = (ah @ bh).astype(NP_HALF[half]).astype(np.float32)
    np.testing.assert_allclose(out.numpy().astype(np.float32), expected, rtol=1e-2, atol=1e-2)
    assert (T(a) @ T(b)).dtype == "float32"  # outside the region nothing changes


def test_conv_runs_in_half_and_precision_ops_in_float32():
    x = T(np.random.randn(2, 5, 5, 3))
    w = T(np.random.randn(3, 3, 3, 4))
    with amp.autocast(dtype="bfloat16"):
        y = ops.conv(x, w, padding=1)
        assert y.dtype == "bfloat16"
        assert y.sum().dtype == "float32"                    # reductions widen half inputs
        assert ops.exp(y).dtype == "float32"
        assert ops.logsumexp(y.reshape((2, 100)), axes=(1,)).dtype == "float32"
        assert F.log_softmax(y.reshape((2, 100)), dim=1).dtype == "float32"
        assert F.cross_entropy(y.reshape((2, 100)), ndl.Tensor(np.array([1, 2]))).dtype == "float32"
        assert (y + 1.0).dtype == "bfloat16"                 # others follow promotion
        assert (y + x[:, :, :, :1].broadcast_to(y.shape)).dtype == "float32"


def test_regions_nest_disable_and_decorate():
    a = T(np.ones((2, 2)))
    with amp.autocast(dtype="float16"):
        assert amp.is_autocast_enabled() and amp.get_autocast_dtype() == "float16"
        with amp.autocast(enabled=False):
            assert (a @ a).dtype == "float32" and not amp.is_autocast_enabled()
        assert (a @ a).dtype == "float16"
    assert not amp.is_autocast_enabled()

    @amp.autocast(dtype="bfloat16")
    def f(x):
        return x @ x
    assert f(a).dtype == "bfloat16" and (a @ a).dtype == "float32"
    with pytest.raises(ValueError, match="autocast.*float32"):
        amp.autocast(dtype="float32")


def test_a_parameter_is_cast_once_per_region():
    layer = nn.Linear(4, 4)
    x = T(np.random.randn(3, 4))
    with amp.autocast(dtype="bfloat16") as region:
        layer(x), layer(x)
        casts = [v for k, v in region._casts.items() if k[0] == id(layer.weight)]
    assert len(casts) == 1


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_linear_and_conv_with_bias_run_in_half_as_pytorch(dtype):
    """PyTorch's autocast runs linear and conv, bias included, in half: the output is half
    (not float32 by promotion with the float32 bias), and the bias gradient float32."""
    np.random.seed(4)
    lin, conv = nn.Linear(6, 5), nn.Conv(3, 4, 3)
    tlin, tconv = torch.nn.Linear(6, 5), torch.nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        tlin.weight.copy_(torch.from_numpy(lin.weight.numpy().T.copy()))
        tlin.bias.copy_(torch.from_numpy(lin.bias.numpy().reshape(-1)))
        tconv.weight.copy_(torch.from_numpy(conv.weight.numpy().transpose(3, 2, 0, 1).copy()))
        tconv.bias.copy_(torch.from_numpy(conv.bias.numpy().reshape(-1)))
    x = np.random.randn(7, 6).astype(np.float32)
    xi = np.random.randn(2, 3, 5, 5).astype(np.float32)
    with amp.autocast(dtype=dtype):
        y, z = lin(T(x, requires_grad=False)), conv(T(xi, requires_grad=False))
    tdtype = getattr(torch, dtype)
    with torch.autocast("cpu", dtype=tdtype):
        ty, tz = tlin(torch.from_numpy(x)), tconv(torch.from_numpy(xi))
    assert y.dtype == z.dtype == dtype and ty.dtype == tz.dtype == tdtype
    tol = 1e-2 if dtype == "bfloat16" else 2e-3
    np.testing.assert_allclose(y.numpy().astype(np.float32), ty.float().detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(z.numpy().astype(np.float32), tz.float().detach().numpy(), rtol=tol, atol=tol)
    (y.sum() + z.sum()).backward()
    (ty.float().sum() + tz.float().sum()).backward()
    assert lin.bias.grad.dtype == conv.bias.grad.dtype == "float32"
    np.testing.assert_allclose(lin.bias.grad.numpy().reshape(-1), tlin.bias.grad.numpy(), rtol=tol)
    np.testing.assert_allclose(conv.bias.grad.numpy().reshape(-1), tconv.bias.grad.numpy(), rtol=tol)
    # Outside a region nothing changes.
    assert lin(T(x, requires_grad=False)).dtype == "float32"


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 32), nn.Linear(32, 5)

    def forward(self, x):
        return self.fc2(ops.relu(self.fc1(x)))


def test_gradients_match_pytorch_cpu_autocast():
    np.random.seed(3)
    model = _MLP()
    tm = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
    with torch.no_grad():
        for tl, nl in ((tm[0], model.fc1), (tm[2], model.fc2)):
            tl.weight.copy_(torch.from_numpy(nl.weight.numpy().T.copy()))
            tl.bias.copy_(torch.from_numpy(nl.bias.numpy().reshape(-1)))
    x = np.random.randn(16, 12).astype(np.float32)
    y = np.random.randint(0, 5, 16)
    with amp.autocast(dtype="bfloat16"):
        loss = F.cross_entropy(model(T(x, requires_grad=False)), ndl.Tensor(y))
    loss.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tloss = torch.nn.functional.cross_entropy(tm(torch.from_numpy(x)), torch.from_numpy(y))
    tloss.backward()
    assert loss.dtype == "float32" and model.fc1.weight.grad.dtype == "float32"
    np.testing.assert_allclose(loss.item(), tloss.item(), rtol=2e-2)
    for ours, theirs in ((model.fc1.weight, tm[0].weight), (model.fc2.weight, tm[2].weight)):
        g, tg = ours.grad.numpy(), theirs.grad.numpy().T
        assert np.abs(g - tg).max() <= 3e-2 * np.abs(tg).max()


# ---- GradScaler ----------------------------------------------------------------------------
def _step_with_grads(scaler, opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = ndl.Tensor(np.asarray(g, dtype=np.float32), requires_grad=False)
    stepped = scaler.step(opt)
    scaler.update()
    return stepped


def test_scaler_skips_overflow_backs_off_and_grows():
    p = nn.Parameter(T(np.ones(3)))
    opt = ndl.optim.SGD([p], lr=1.0)
    scaler = amp.GradScaler(init_scale=8.0, growth_interval=2)
    # a clean step: gradients are divided by the scale before the update
    assert _step_with_grads(scaler, opt, [p], [[8.0, 16.0, -8.0]])
    np.testing.assert_array_equal(p.numpy(), [0.0, -1.0, 2.0])
    assert scaler.get_scale() == 8.0
    # an overflow: no step, scale halves
    before = p.numpy().copy()
    assert not _step_with_grads(scaler, opt, [p], [[np.inf, 1.0, 1.0]])
    assert not _step_with_grads(scaler, opt, [p], [[np.nan, 1.0, 1.0]])
    np.testing.assert_array_equal(p.numpy(), before)
    assert scaler.get_scale() == 2.0
    # growth_interval clean steps double it
    _step_with_grads(scaler, opt, [p], [[0.0, 0.0, 0.0]])
    assert scaler.get_scale() == 2.0
    _step_with_grads(scaler, opt, [p], [[0.0, 0.0, 0.0]])
    assert scaler.get_scale() == 4.0
    state = scaler.state_dict()
    other = amp.GradScaler()
    other.load_state_dict(state)
    assert other.get_scale() == 4.0


def test_scaled_loss_gives_the_unscaled_gradients():
    np.random.seed(0)
    model = _MLP()
    x, y = T(np.random.randn(8, 12), requires_grad=False), ndl.Tensor(np.random.randint(0, 5, 8))
    F.cross_entropy(model(x), y).backward()
    plain = [p.grad.numpy().copy() for p in model.parameters()]
    opt = ndl.optim.SGD(model.parameters(), lr=0.0)
    scaler = amp.GradScaler(init_scale=2.0 ** 10)
    opt.zero_grad()
    scaler.scale(F.cross_entropy(model(x), y)).backward()
    scaler.unscale_(opt)
    for p, g in zip(model.parameters(), plain):
        np.testing.assert_allclose(p.grad.numpy(), g, rtol=1e-6, atol=1e-9)
    with pytest.raises(RuntimeError, match="already called"):
        scaler.unscale_(opt)
    disabled = amp.GradScaler(enabled=False)
    loss = F.cross_entropy(model(x), y)
    assert disabled.scale(loss) is loss and disabled.get_scale() == 1.0


def test_scaler_rejects_bad_settings():
    with pytest.raises(ValueError, match="growth_factor"):
        amp.GradScaler(growth_factor=1.0)
    with pytest.raises(ValueError, match="backoff_factor"):
        amp.GradScaler(backoff_factor=1.5)


# ---- the apps, trained in mixed precision --------------------------------------------------
@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_digits_convnet_reaches_float32_accuracy(mode, monkeypatch):
    from apps import train

    monkeypatch.setenv("NEEDLE_NUM_THREADS", os.environ.get("NEEDLE_NUM_THREADS", "1"))
    args = ["digits", "--epochs", "3", "--no-progress", "--seed", "0"]
    _, ref = train.main(args)
    _, mixed = train.main(args + ["--amp", mode])
    assert mixed["test_acc"][-1] >= ref["test_acc"][-1] - 0.03
    assert mixed["test_acc"][-1] > 0.9


@pytest.mark.skipif(not os.path.isfile(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                    "mnist", "t10k-images-idx3-ubyte.gz")),
                    reason="the MNIST test files are not present")
def test_mnist_mlp_reaches_float32_accuracy():
    from apps import train

    data = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")
    args = ["mnist", "--data", data, "--split", "2000", "--limit", "2000", "--epochs", "2", "--no-progress"]
    _, ref = train.main(args)
    _, mixed = train.main(args + ["--amp", "fp16"])
    assert mixed["test_acc"][-1] >= ref["test_acc"][-1] - 0.03
