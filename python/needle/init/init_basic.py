"""Basic tensor constructors. All randomness is ONE draw from the global numpy RNG (API.md section 12)."""
import numpy as np

import needle as ndl
from ..backend_selection import NDArray, default_device
from ..ops import array_backend as B


def _make(array, device, dtype, requires_grad):
    """Wrap a freshly drawn array without an extra copy when it already is in the right form."""
    if isinstance(array, NDArray) and B.device(array) == device:
        return ndl.Tensor.make_const(array.astype(dtype, copy=False), requires_grad=requires_grad)
    return ndl.Tensor(array, device=device, dtype=dtype, requires_grad=requires_grad)


def rand(*shape, low=0.0, high=1.0, device=None, dtype="float32", requires_grad=False):
    """Uniform in [low, high): one ``np.random.rand(*shape)``."""
    device = default_device() if device is None else device
    array = B.draw(device, "rand", shape, dtype) * (high - low) + low
    return _make(array, device, dtype, requires_grad)


def randn(*shape, mean=0.0, std=1.0, device=None, dtype="float32", requires_grad=False):
    """Normal(mean, std^2): one ``np.random.randn(*shape)``."""
    device = default_device() if device is None else device
    array = B.draw(device, "randn", shape, dtype) * std + mean
    return _make(array, device, dtype, requires_grad)


def constant(*shape, c=1.0, device=None, dtype="float32", requires_grad=False):
    """All elements equal to ``c``."""
    device = default_device() if device is None else device
    array = device.full(shape, c, dtype=dtype)
    return _make(array, device, dtype, requires_grad)


def ones(*shape, device=None, dtype="float32", requires_grad=False):
    return constant(*shape, c=1.0, device=device, dtype=dtype, requires_grad=requires_grad)


def zeros(*shape, device=None, dtype="float32", requires_grad=False):
    return constant(*shape, c=0.0, device=device, dtype=dtype, requires_grad=requires_grad)


def randb(*shape, p=0.5, device=None, dtype="bool", requires_grad=False):
    """Bernoulli(p) mask: ``rand(*shape) <= p`` (one draw). float32 0/1 in nd mode."""
    device = default_device() if device is None else device
    array = device.rand(*shape) <= p
    return _make(array, device, dtype, requires_grad)


def one_hot(n, i, device=None, dtype="float32", requires_grad=False):
    """One-hot rows of ``eye(n)`` for the (possibly float-encoded) indices ``i``: shape i.shape + (n,)."""
    device = default_device() if device is None else device
    idx = i.numpy() if isinstance(i, ndl.Tensor) else np.asarray(i)
    return _make(device.one_hot(n, idx.astype("int32"), dtype=dtype), device, dtype, requires_grad)


def zeros_like(array, *, device=None, requires_grad=False):
    device = device if device else array.device
    return zeros(*array.shape, dtype=array.dtype, device=device, requires_grad=requires_grad)


def ones_like(array, *, device=None, requires_grad=False):
    device = device if device else array.device
    return ones(*array.shape, dtype=array.dtype, device=device, requires_grad=requires_grad)
