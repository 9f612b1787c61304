"""DLPack both ways with numpy and PyTorch: values, zero-copy (a write through one side
is seen by the other), strided views, lifetimes, capsule versions and bad input."""
import ctypes
import gc

import numpy as np
import pytest

import needle as ndl
from devices import nd_only

torch = pytest.importorskip("torch")

pytestmark = nd_only  # NDArray devices; np mode hands numpy arrays through numpy's own DLPack

if ndl.backend_selection.BACKEND == "nd":
    from needle.backend_ndarray import NDArray, dlpack
    from needle.backend_ndarray import from_dlpack as nd_from_dlpack

HOST_DEVICES = [pytest.param(ndl.cpu(), id="cpu"), pytest.param(ndl.cpu_numpy(), id="cpu_numpy")]


def _capsule_name_is(capsule, name):
    is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
        ("PyCapsule_IsValid", ctypes.pythonapi))
    return bool(is_valid(capsule, name))


def _exports():
    gc.collect()
    return len(dlpack._EXPORTS)


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_to_numpy_and_torch_share_memory(device):
    base = _exports()
    a = NDArray(np.arange(12, dtype=np.float32).reshape(3, 4), device=device)
    n = np.from_dlpack(a)
    t = torch.from_dlpack(a)
    np.testing.assert_array_equal(n, a.numpy())
    n[0, 0] = 100.0  # a write through numpy ...
    assert a.numpy()[0, 0] == 100.0 and t[0, 0].item() == 100.0  # ... is seen by needle and torch
    t[2, 3] = -1.0
    assert a.numpy()[2, 3] == -1.0
    del a
    gc.collect()
    # the consumers keep the buffer alive after the producer's last reference is gone
    assert n[2, 3] == -1.0 and t.sum().item() == pytest.approx(100 + sum(range(1, 11)) - 1)
    del n, t
    assert _exports() == base  # every deleter ran


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_strided_views_export_without_copy(device):
    a = NDArray(np.arange(24, dtype=np.float64).reshape(2, 3, 4), device=device, dtype="float64")
    ref = a.numpy()
    views = {
        "permuted": (a.permute((2, 0, 1)), ref.transpose(2, 0, 1)),
        "sliced": (a[:, 1:3, ::2], ref[:, 1:3, ::2]),
        "broadcast": (a[0:1, 0:1, :].broadcast_to((3, 2, 4)), np.broadcast_to(ref[0:1, 0:1, :], (3, 2, 4))),
    }
    for name, (view, expected) in views.items():
        t = torch.from_dlpack(view)
        np.testing.assert_array_equal(t.numpy(), expected, err_msg=name)
        assert t.data_ptr() == view._handle.ptr() + 8 * view._offset, name
        np.testing.assert_array_equal(np.from_dlpack(view), expected, err_msg=name)
    t = torch.from_dlpack(a[:, 1:3, ::2])
    t.fill_(7.0)
    expected = ref.copy()
    expected[:, 1:3, ::2] = 7.0
    np.testing.assert_array_equal(a.numpy(), expected)


@pytest.mark.parametrize("device", HOST_DEVICES)
def test_from_numpy_and_torch_share_memory(device):
    x = np.arange(10, dtype=np.float32)
    a = nd_from_dlpack(x)
    assert a._handle.ptr() == x.ctypes.data
    x[3] = 42.0
    assert a.numpy()[3] == 42.0
    tt = torch.arange(20, dtype=torch.float64).reshape(4, 5)[1:, ::2]
    b = nd_from_dlpack(tt)
    assert b.shape == (3, 3) and b.strides == (5, 2)
    np.testing.assert_array_equal(b.numpy(), tt.numpy())
    tt[0, 0] = -3.0
    assert b.numpy()[0, 0] == -3.0
    (b + 1).numpy()  # kernels run on imported strided memory
    np.testing.assert_array_equal((b * 2).numpy(), tt.numpy() * 2)
    # torch's storage outlives the torch tensor while needle holds it
    del tt
    gc.collect()
    assert b.numpy()[0, 0] == -3.0
    if device.name == "cpu_numpy":
        c = nd_from_dlpack(np.ones(3, np.float32), device=device)
        assert c.device == device


@pytest.mark.parametrize("dtype,torch_dtype", [("float32", torch.float32), ("float64", torch.float64),
                                               ("float16", torch.float16), ("bfloat16", torch.bfloat16),
                                               ("int32", torch.int32), ("int64", torch.int64),
                                               ("uint8", torch.uint8), ("bool", torch.bool)])
def test_every_dtype_both_ways(dtype, torch_dtype):
    src = torch.tensor([[0, 1, 2], [3, 4, 5]]).to(torch_dtype)
    a = nd_from_dlpack(src)
    assert a.dtype == dtype and a.shape == (2, 3)
    np.testing.assert_array_equal(a.numpy().astype(np.float32), src.float().numpy())
    back = torch.from_dlpack(a)
    assert back.dtype == torch_dtype and torch.equal(back, src)
    assert back.data_ptr() == src.data_ptr()


def test_tensor_level():
    w = ndl.Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    t = torch.from_dlpack(w)
    t += 1  # in place through torch
    np.testing.assert_array_equal(w.numpy(), np.full((2, 3), 2.0))
    (w * w).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), np.full((2, 3), 4.0))
    x = ndl.from_dlpack(torch.arange(6, dtype=torch.float32))
    assert isinstance(x, ndl.Tensor) and not x.requires_grad and x.dtype == "float32"
    y = ndl.from_dlpack(np.arange(4, dtype=np.int64), copy=True)
    assert y.dtype == "int64" and y.tolist() == [0, 1, 2, 3]
    assert w.__dlpack_device__() == (1, 0)
    z = ndl.from_dlpack(w)  # needle to needle shares too
    z.realize_cached_data()[0:1, 0:1] = 9.0
    assert w.numpy()[0, 0] == 9.0


def test_capsule_versions_and_unconsumed_capsules():
    base = _exports()
    a = NDArray(np.arange(4, dtype=np.float32))
    legacy = a.__dlpack__()
    assert _capsule_name_is(legacy, b"dltensor")
    versioned = a.__dlpack__(max_version=(1, 2))
    assert _capsule_name_is(versioned, b"dltensor_versioned")
    old = a.__dlpack__(max_version=(0, 8))
    assert _capsule_name_is(old, b"dltensor")
    b = nd_from_dlpack(legacy)  # a capsule itself is accepted, and is consumed
    assert _capsule_name_is(legacy, b"used_dltensor")
    np.testing.assert_array_equal(b.numpy(), a.numpy())
    with pytest.raises(BufferError, match="unconsumed"):
        nd_from_dlpack(legacy)
    del versioned, old  # never consumed: their destructors free the exports
    del b, legacy
    assert _exports() == base


def test_copy_and_device_requests():
    a = NDArray(np.arange(3, dtype=np.float32))
    c = np.from_dlpack(a, copy=True)
    c[0] = 50
    assert a.numpy()[0] == 0
    with pytest.raises(BufferError, match="cuda|device"):
        a.__dlpack__(dl_device=(2, 0))
    ro = np.arange(3.0)
    ro.flags.writeable = False
    got = nd_from_dlpack(ro)  # read-only memory is copied (needle arrays are writable)
    assert got._handle.ptr() != ro.ctypes.data
    np.testing.assert_array_equal(got.numpy(), ro)
    with pytest.raises(BufferError, match="read-only"):
        nd_from_dlpack(ro, copy=False)
    fresh = nd_from_dlpack(np.arange(3.0), copy=True)
    assert fresh.numpy().tolist() == [0.0, 1.0, 2.0]


def test_bad_input():
    base = _exports()
    with pytest.raises(TypeError, match="not a DLPack producer"):
        nd_from_dlpack(42)
    with pytest.raises(BufferError, match="unsupported DLPack dtype.*complex|code 5"):
        nd_from_dlpack(np.zeros(3, dtype=np.complex64))
    with pytest.raises(BufferError, match="int8|code 0, bits 8"):
        nd_from_dlpack(torch.zeros(3, dtype=torch.int8))
    assert _exports() == base
    empty = nd_from_dlpack(np.zeros((0, 4), np.float32))
    assert empty.shape == (0, 4)
    assert tuple(torch.from_dlpack(NDArray(np.zeros((2, 0), np.float32))).shape) == (2, 0)


@pytest.mark.skipif(not (ndl.cuda().enabled() and torch.cuda.is_available()), reason="needs a GPU")
def test_cuda_both_ways():
    a = NDArray(np.arange(12, dtype=np.float32).reshape(3, 4), device=ndl.cuda())
    t = torch.from_dlpack(a)
    assert t.is_cuda and torch.equal(t.cpu(), torch.arange(12, dtype=torch.float32).reshape(3, 4))
    t.mul_(2)
    torch.cuda.synchronize()
    np.testing.assert_array_equal(a.numpy(), np.arange(12).reshape(3, 4) * 2)
    src = torch.arange(10, device="cuda", dtype=torch.float32)[::2]
    b = nd_from_dlpack(src)
    assert b.device == ndl.cuda()
    np.testing.assert_array_equal(b.numpy(), np.arange(0, 10, 2))
    np.testing.assert_array_equal((b + 1).numpy(), np.arange(0, 10, 2) + 1)
    host = nd_from_dlpack(src, device=ndl.cpu())
    assert host.device == ndl.cpu()
