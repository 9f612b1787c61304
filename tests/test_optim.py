"""Optimizers, clipping and schedulers against numpy formulas and torch.optim."""
import gc

import numpy as np
import pytest

import needle as ndl
import needle.nn as nn
from devices import DEVICES


def _params(device, shapes, seed=0):
    rs = np.random.RandomState(seed)
    return [nn.Parameter(ndl.Tensor(rs.randn(*s).astype(np.float32), device=device))
            for s in shapes]


def _set_grads(params, rs):
    grads = []
    for p in params:
        g = rs.randn(*p.shape).astype(np.float32)
        p.grad = ndl.Tensor(g, device=p.device, requires_grad=False)
        grads.append(g)
    return grads


SHAPES = [(3, 4), (4,), (2, 1, 3)]


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 0.0), (0.5, 0.1)])
@pytest.mark.parametrize("device", DEVICES)
def test_sgd_formula(device, momentum, wd):
    params = _params(device, SHAPES)
    ref = [p.numpy().astype(np.float64) for p in params]
    u = [np.zeros_like(r) for r in ref]
    opt = ndl.optim.SGD(params, lr=0.1, momentum=momentum, weight_decay=wd)
    rs = np.random.RandomState(1)
    for _ in range(3):
        grads = _set_grads(params, rs)
        before = [p.grad.numpy().copy() for p in params]
        opt.step()
        for i, g in enumerate(grads):
            gg = g + wd * ref[i]
            u[i] = momentum * u[i] + (1 - momentum) * gg
            ref[i] = ref[i] - 0.1 * u[i]
        for p, b in zip(params, before):
            np.testing.assert_array_equal(p.grad.numpy(), b)   # grads untouched
    for p, r in zip(params, ref):
        assert p.dtype == "float32"
        np.testing.assert_allclose(p.numpy(), r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("wd", [0.0, 0.01])
@pytest.mark.parametrize("device", DEVICES)
def test_adam_matches_torch(device, wd):
    torch = pytest.importorskip("torch")
    params = _params(device, SHAPES)
    tparams = [torch.tensor(p.numpy(), requires_grad=True) for p in params]
    opt = ndl.optim.Adam(params, lr=0.01, beta1=0.8, beta2=0.99, eps=1e-8, weight_decay=wd)
    topt = torch.optim.Adam(tparams, lr=0.01, betas=(0.8, 0.99), eps=1e-8, weight_decay=wd)
    rs = np.random.RandomState(2)
    for _ in range(4):
        grads = _set_grads(params, rs)
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    assert opt.t == 4
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_adamw_matches_torch(device):
    torch = pytest.importorskip("torch")
    params = _params(device, SHAPES)
    tparams = [torch.tensor(p.numpy(), requires_grad=True) for p in params]
    opt = ndl.optim.AdamW(params, lr=0.05, weight_decay=0.1)
    topt = torch.optim.AdamW(tparams, lr=0.05, weight_decay=0.1, eps=1e-8)
    rs = np.random.RandomState(3)
    for _ in range(3):
        grads = _set_grads(params, rs)
        for tp, g in zip(tparams, grads):
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_skips_params_without_grad(device):
    params = _params(device, SHAPES)
    before = [p.numpy().copy() for p in params]
    params[0].grad = ndl.Tensor(np.ones(SHAPES[0], dtype=np.float32), device=device)
    for opt in (ndl.optim.SGD(params, lr=0.1), ndl.optim.Adam(params, lr=0.1)):
        opt.step()
    assert not np.allclose(params[0].numpy(), before[0])
    for p, b in zip(params[1:], before[1:]):
        np.testing.assert_array_equal(p.numpy(), b)


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
@pytest.mark.parametrize("device", DEVICES)
def test_clip_grad_norm_matches_torch(device, max_norm):
    torch = pytest.importorskip("torch")
    params = _params(device, SHAPES)
    grads = _set_grads(params, np.random.RandomState(4))
    tparams = [torch.zeros(*s, requires_grad=True) for s in SHAPES]
    for tp, g in zip(tparams, grads):
        tp.grad = torch.tensor(g)
    opt = ndl.optim.SGD(params, lr=0.1)
    norm = opt.clip_grad_norm(max_norm)
    tnorm = torch.nn.utils.clip_grad_norm_(tparams, max_norm)
    np.testing.assert_allclose(norm, float(tnorm), rtol=1e-5)
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-5, atol=1e-7)
    n2 = ndl.optim.clip_grad_norm(params, max_norm)
    assert n2 <= max_norm * (1 + 1e-4) or max_norm == 100.0


def test_schedulers_match_torch():
    torch = pytest.importorskip("torch")
    p = _params(None, [(2,)])
    tp = [torch.zeros(2, requires_grad=True)]
    for make, tmake in (
            (lambda o: ndl.optim.StepLR(o, step_size=2, gamma=0.5),
             lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5)),
            (lambda o: ndl.optim.CosineAnnealingLR(o, T_max=5, eta_min=0.01),
             lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5, eta_min=0.01))):
        opt = ndl.optim.SGD(p, lr=0.2)
        topt = torch.optim.SGD(tp, lr=0.2)
        s, ts = make(opt), tmake(topt)
        lrs, tlrs = [opt.lr], [topt.param_groups[0]["lr"]]
        for _ in range(6):
            topt.step()
            s.step()
            ts.step()
            lrs.append(opt.lr)
            tlrs.append(topt.param_groups[0]["lr"])
        np.testing.assert_allclose(lrs, tlrs, rtol=1e-9, atol=1e-12)
        assert s.get_last_lr() == opt.lr


def test_bad_arguments():
    p = _params(None, [(2,)])
    with pytest.raises(ValueError, match="lr"):
        ndl.optim.SGD(p, lr=-1)
    with pytest.raises(ValueError, match="empty"):
        ndl.optim.Adam([])
    with pytest.raises(ValueError, match="max_norm"):
        ndl.optim.clip_grad_norm(p, 0)
    with pytest.raises(ValueError, match="T_max"):
        ndl.optim.CosineAnnealingLR(ndl.optim.SGD(p), T_max=0)


@pytest.mark.parametrize("cls", [ndl.optim.SGD, ndl.optim.Adam])
def test_optimizer_state_dict_round_trip(cls, tmp_path):
    kw = {"momentum": 0.9} if cls is ndl.optim.SGD else {}
    a = _params(None, SHAPES)
    b = _params(None, SHAPES, seed=5)
    oa, ob = cls(a, lr=0.1, **kw), cls(b, lr=0.3, **kw)
    rs = np.random.RandomState(6)
    for _ in range(2):
        _set_grads(a, rs)
        oa.step()
    ndl.save(oa.state_dict(), tmp_path / "opt.needle")
    for pb, pa in zip(b, a):
        pb.data = ndl.Tensor(pa.numpy(), device=pa.device, requires_grad=False)
    ob.load_state_dict(ndl.load(tmp_path / "opt.needle"))
    assert ob.lr == 0.1
    g = np.random.RandomState(7)
    ga = _set_grads(a, g)
    for pb, gg in zip(b, ga):
        pb.grad = ndl.Tensor(gg, device=pb.device, requires_grad=False)
    oa.step()
    ob.step()
    for pa, pb in zip(a, b):
        np.testing.assert_allclose(pa.numpy(), pb.numpy(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="parameters"):
        cls(a[:1], lr=0.1).load_state_dict(oa.state_dict())


@pytest.mark.parametrize("cls", [ndl.optim.SGD, ndl.optim.Adam, ndl.optim.AdamW])
@pytest.mark.parametrize("device", DEVICES)
def test_no_graph_growth(device, cls):
    """Live tensors stay flat across training steps: optimizers keep no graph alive."""
    np.random.seed(0)
    model = nn.Sequential(nn.Linear(5, 8, device=device), nn.ReLU(),
                          nn.Linear(8, 3, device=device))
    kw = {"momentum": 0.9} if cls is ndl.optim.SGD else {}
    opt = cls(model.parameters(), lr=0.01, **kw)
    x = ndl.Tensor(np.random.randn(4, 5).astype(np.float32), device=device, requires_grad=False)
    y = ndl.Tensor(np.array([0, 1, 2, 1]), device=device, requires_grad=False)
    counts = []
    for step in range(12):
        opt.reset_grad()
        loss = nn.SoftmaxLoss()(model(x), y)
        loss.backward()
        opt.clip_grad_norm(1.0)
        opt.step()
        del loss
        gc.collect()
        counts.append(ndl.autograd.TENSOR_COUNTER)
    assert counts[-1] == counts[3], counts


@pytest.mark.parametrize("make", [
    lambda ps: ndl.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda ps: ndl.optim.SGD(ps, lr=0.1),
    lambda ps: ndl.optim.Adam(ps, lr=0.01, weight_decay=0.01),
    lambda ps: ndl.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
], ids=["sgd_momentum_wd", "sgd", "adam_wd", "adamw"])
@pytest.mark.parametrize("device", DEVICES)
def test_fused_step_matches_composition(device, make, monkeypatch):
    """The one-pass backend update (adam_step / sgd_step) against the composition it replaced,
    on sizes that are not multiples of the SIMD width and on a non-compact (transposed) grad."""
    shapes = [(37, 29), (1001,), (1,)]
    runs = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(ndl.optim, "_fused_operands", lambda w, g: None)
        params = _params(device, shapes, seed=4)
        opt = make(params)
        rs = np.random.RandomState(5)
        for _ in range(3):
            _set_grads(params, rs)
            g = rs.randn(29, 37).astype(np.float32)
            params[0].grad = ndl.Tensor(g, device=device, requires_grad=False).transpose()
            before = params[0].grad.numpy().copy()
            opt.step()
            np.testing.assert_array_equal(params[0].grad.numpy(), before)
        assert all(p.dtype == "float32" for p in params)
        runs.append([p.numpy() for p in params])
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
