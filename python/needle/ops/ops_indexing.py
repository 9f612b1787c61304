"""Basic indexing (ints, slices with positive steps, ...) and constant padding.

``t[idx]`` has numpy semantics: an int removes its axis. NDArray slicing keeps
every axis (ints become length-1 slices), so GetItem slices with keep-dims
slices and then reshapes the int-indexed axes away. The adjoint of slicing
scatters the gradient into zeros (``Scatter``) and vice versa.
"""
import numpy

from ..autograd import TensorOp
from . import array_backend as B


def normalize_index(index, shape):
    """User index -> (tuple of explicit slices, one per dim, tuple of int-indexed dims to drop)."""
    if not isinstance(index, tuple):
        index = (index,)
    if sum(1 for i in index if i is Ellipsis) > 1:
        raise IndexError("get_item: an index can only have a single ellipsis ('...')")
    if Ellipsis in index:
        k = index.index(Ellipsis)
        index = index[:k] + (slice(None),) * (len(shape) - len(index) + 1) + index[k + 1 :]
    if len(index) > len(shape):
        raise IndexError(f"get_item: too many indices ({len(index)}) for a tensor of shape {tuple(shape)}")
    index = index + (slice(None),) * (len(shape) - len(index))
    slices, drop = [], []
    for dim, (idx, n) in enumerate(zip(index, shape)):
        if isinstance(idx, slice):
            start, stop, step = idx.indices(n)
            if step <= 0:
                raise ValueError(f"get_item: slice steps must be > 0 (use flip to reverse), got {idx}")
            stop = max(stop, start)
            slices.append(slice(start, stop, step))
        elif isinstance(idx, (int, numpy.integer)) and not isinstance(idx, bool):
            if not -n <= idx < n:
                raise IndexError(f"get_item: index {idx} is out of bounds for axis {dim} with size {n}")
            idx = int(idx) % n
            slices.append(slice(idx, idx + 1, 1))
            drop.append(dim)
        else:
            raise TypeError(f"get_item: only ints, slices and '...' are supported, got {idx!r}")
    return tuple(slices), tuple(drop)


def _sliced_shape(slices):
    return tuple(max(0, (s.stop - s.start + s.step - 1) // s.step) for s in slices)


class GetItem(TensorOp):
    """``a[slices]`` with the ``drop`` axes (int-indexed) removed; gradient scatters into zeros."""

    def __init__(self, slices, drop=()):
        self.slices = tuple(slices)
        self.drop = tuple(drop)

    def compute(self, a):
        if len(self.slices) != a.ndim:
            raise ValueError(f"get_item: {len(self.slices)} slices for a tensor of shape {tuple(a.shape)}")
        kept = _sliced_shape(self.slices)
        shape = tuple(n for i, n in enumerate(kept) if i not in self.drop)
        return B.compact(a[self.slices]).reshape(shape)

    def gradient(self, out_grad, node):
        return Scatter(self.slices, self.drop, node.inputs[0].shape)(out_grad)


def get_item(a, index):
    slices, drop = normalize_index(index, a.shape)
    return GetItem(slices, drop)(a)


class Scatter(TensorOp):
    """Zeros of ``shape`` with ``a`` written at ``slices`` (the adjoint of GetItem)."""

    def __init__(self, slices, drop, shape):
        self.slices = tuple(slices)
        self.drop = tuple(drop)
        self.shape = tuple(shape)

    def compute(self, a):
        kept = _sliced_shape(self.slices)
        out = B.full(self.shape, 0.0, a)
        out[self.slices] = B.compact(a).reshape(kept)
        return out

    def gradient(self, out_grad, node):
        return GetItem(self.slices, self.drop)(out_grad)


class Pad(TensorOp):
    """Constant padding: ``pads`` holds a (before, after) pair (>= 0) for every dim.

    The gradient crops the padded border away.
    """

    def __init__(self, pads, value=0.0):
        self.pads = tuple((int(l), int(r)) for l, r in pads)
        if any(l < 0 or r < 0 for l, r in self.pads):
            raise ValueError(f"pad: widths must be >= 0, got {self.pads}")
        self.value = value

    def compute(self, a):
        if len(self.pads) != a.ndim:
            raise ValueError(f"pad: need one (before, after) pair per dim of shape {tuple(a.shape)}, got {self.pads}")
        return B.pad(a, self.pads, self.value)

    def gradient(self, out_grad, node):
        shape = node.inputs[0].shape
        return GetItem(tuple(slice(l, l + n, 1) for (l, _), n in zip(self.pads, shape)))(out_grad)


def pad(a, pads, value=0.0):
    return Pad(pads, value)(a)
