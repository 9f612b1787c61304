"""copy.deepcopy of models, tensors and arrays, as PyTorch users copy a model (an EMA or
target network): equal values, independent storage, the same device, dtypes kept, and
the tensor counter balanced."""
import copy
import gc

import numpy as np
import pytest
import torch

import needle as ndl
from needle import autograd, nn
from needle.backend_ndarray import ndarray as nd
from devices import DEVICES


def _model(device, dtype="float32"):
    np.random.seed(0)
    return nn.Sequential(nn.Linear(3, 5, device=device, dtype=dtype), nn.BatchNorm1d(5, device=device, dtype=dtype),
                         nn.ReLU(), nn.Linear(5, 2, device=device, dtype=dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_deepcopy_of_a_model_is_equal_and_independent(device, dtype):
    model = _model(device, dtype)
    x = ndl.Tensor(np.random.randn(4, 3), device=device, dtype=dtype, requires_grad=False)
    model(x)  # running statistics exist
    twin = copy.deepcopy(model)
    model.eval(), twin.eval()
    np.testing.assert_array_equal(model(x).numpy(), twin(x).numpy())
    for (name, p), (name2, q) in zip(model.named_parameters(), twin.named_parameters()):
        assert name == name2 and p is not q and type(p) is type(q)
        assert q.device == p.device and q.dtype == p.dtype == dtype and q.requires_grad
    # Training the copy leaves the original as it was (and the other way round).
    before = [p.numpy().copy() for p in model.parameters()]
    twin.train()
    opt = ndl.optim.SGD(twin.parameters(), lr=0.5)
    opt.reset_grad()
    y = twin(x)
    (y * y).sum().backward()
    opt.step()
    changed = 0
    for p, b, q in zip(model.parameters(), before, twin.parameters()):
        np.testing.assert_array_equal(p.numpy(), b)
        changed += not np.array_equal(q.numpy(), b)
    assert changed == len(before)


def test_deepcopy_matches_pytorch_semantics_for_state():
    """Running statistics are copied (not shared), as torch.nn.Module deepcopy does."""
    model = _model(ndl.cpu())
    tmodel = torch.nn.BatchNorm1d(5)
    x = ndl.Tensor(np.random.randn(8, 3), requires_grad=False)
    model(x)
    twin = copy.deepcopy(model)
    tx = torch.randn(8, 5)
    tmodel(tx)
    ttwin = copy.deepcopy(tmodel)
    model(x), tmodel(tx)  # only the originals move on
    assert not np.array_equal(list(model.children())[1].running_mean.numpy(), list(twin.children())[1].running_mean.numpy())
    assert not torch.equal(tmodel.running_mean, ttwin.running_mean)


def test_deepcopy_keeps_the_tensor_counter_balanced():
    model = _model(ndl.cpu())
    gc.collect()
    start = autograd.TENSOR_COUNTER
    twin = copy.deepcopy(model)
    assert autograd.TENSOR_COUNTER == start + len(list(twin.parameters())) + 2  # + running mean, var
    del twin
    gc.collect()
    assert autograd.TENSOR_COUNTER == start


@pytest.mark.parametrize("device", DEVICES)
def test_deepcopy_of_arrays_and_views(device):
    if autograd.B.NP:
        pytest.skip("numpy mode: numpy arrays copy themselves")
    base = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    a = nd.array(base, device=device)
    view = a.permute((2, 0, 1))[1:, :, ::2]
    c = copy.deepcopy(view)
    np.testing.assert_array_equal(c.numpy(), base.transpose(2, 0, 1)[1:, :, ::2])
    assert c.device is a.device and c.is_compact()
    a[0, 0, 0] = 100.0  # the copy has its own memory
    assert c.numpy()[0, 0, 0] == base.transpose(2, 0, 1)[1, 0, 0]
    assert copy.deepcopy(device) is device
