"""The few array functions whose spelling differs between numpy and NDArray.

Op ``compute`` methods receive numpy arrays (``NEEDLE_BACKEND=np``) or
NDArrays (``nd``); everything both spell alike (``+ - * / **``, ``@``,
``reshape``, ``sum``, ``max``, slicing) is used directly, the rest goes
through here. Strides are in ELEMENTS for both.
"""
import numpy as np

from ..backend_selection import BACKEND

NP = BACKEND == "np"


def permute(a, axes):
    return np.transpose(a, axes) if NP else a.permute(tuple(axes))


def broadcast_to(a, shape):
    return np.broadcast_to(a, shape) if NP else a.broadcast_to(tuple(shape))


def compact(a):
    return np.ascontiguousarray(a) if NP else a.compact()


def strides(a):
    return tuple(s // a.itemsize for s in a.strides) if NP else a.strides


def as_strided(a, shape, elem_strides):
    """A view of ``a``'s memory (starting at its first element) with element strides."""
    if NP:
        return np.lib.stride_tricks.as_strided(
            a, tuple(shape), tuple(int(s) * a.itemsize for s in elem_strides), writeable=False
        )
    return a.as_strided(tuple(shape), tuple(elem_strides))


def reduce_sum(a, axes, keepdims=False):
    if not axes:
        return a
    out = a.sum(axis=tuple(axes), keepdims=keepdims)
    return np.asarray(out) if NP else out


def reduce_max(a, axes, keepdims=False):
    if not axes:
        return a
    out = a.max(axis=tuple(axes), keepdims=keepdims)
    return np.asarray(out) if NP else out


def full(shape, value, like):
    """An array of ``shape`` filled with ``value``, with ``like``'s dtype and device."""
    if NP:
        return np.full(tuple(shape), value, dtype=like.dtype)
    return like.device.full(tuple(shape), value, like.dtype)


def pad(a, pads, value=0.0):
    """Constant padding; ``pads`` has a (left, right) pair (>= 0) per dim."""
    pads = tuple((int(l), int(r)) for l, r in pads)
    if NP:
        return np.pad(a, pads, constant_values=value)
    if value == 0:
        return a.pad(pads)
    out = full(tuple(n + l + r for n, (l, r) in zip(a.shape, pads)), value, a)
    out[tuple(slice(l, l + n) for n, (l, _) in zip(a.shape, pads))] = a
    return out


def flip(a, axes):
    return np.flip(a, axes).copy() if NP else a.flip(tuple(axes))


def maximum(a, b):
    return np.maximum(a, b) if NP else a.maximum(b)


def log(a):
    return np.log(a) if NP else a.log()


def exp(a):
    return np.exp(a) if NP else a.exp()


def tanh(a):
    return np.tanh(a) if NP else a.tanh()


def fused_dtype(*arrays):
    """True when the backend's fused kernels take these NDArrays: one dtype, float32 or
    float64 (np mode and half precision run the compositions)."""
    if NP:
        return False
    dtype = arrays[0].dtype
    return dtype in arrays[0].FUSED_DTYPES and all(a.dtype == dtype for a in arrays)


def argmax(a, axis=None, keepdims=False):
    """int64 indices of the first maximum (numpy's argmax)."""
    if NP:
        return np.asarray(np.argmax(a, axis=axis, keepdims=keepdims))
    return a.argmax(axis, keepdims)


def argmin(a, axis=None, keepdims=False):
    if NP:
        return np.asarray(np.argmin(a, axis=axis, keepdims=keepdims))
    return a.argmin(axis, keepdims)


def as_float(mask, like):
    """A comparison's bool result as an array of ``like``'s dtype."""
    return mask.astype(like.dtype)


def stack(arrays, axis):
    if NP:
        return np.stack(arrays, axis)
    from ..backend_ndarray import stack as nd_stack

    return nd_stack(arrays, axis)


def copy(a):
    return np.array(a) if NP else a.copy()
