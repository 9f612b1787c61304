"""NDArray: a strided view (shape, strides, offset) over a flat device buffer.

Movement ops (reshape of compact arrays, permute, broadcast_to, slicing,
as_strided) only change metadata; ``compact()`` is the one copy. Every
argument is checked here, before it reaches a kernel, so bad input is a
Python exception and never an out-of-bounds access.
"""
import builtins
import math
import numbers
from functools import lru_cache

_sum = builtins.sum

import numpy as np

from . import dtypes as _dt
from .conv_layout import NHWC, conv_layout
from .device import (
    BackendDevice,
    _shape_tuple,
    all_devices,
    cpu,
    cpu_numpy,
    cuda,
    cuda_memory_stats,
    default_device,
)


def prod(x):
    return math.prod(x)


@lru_cache(maxsize=4096)
def _compact_strides(shape):
    stride = 1
    res = []
    for dim in reversed(shape):
        res.append(stride)
        stride *= dim
    return tuple(reversed(res))


_copy_hook = None


def set_copy_hook(hook):
    """``hook(nbytes)`` on every copy ``compact()`` makes (the profiler), or None."""
    global _copy_hook
    _copy_hook = hook


_new_header = object.__new__


def _new(shape, strides, device, handle, offset, dtype=None):
    """Unchecked header constructor for the internal hot paths (arguments already valid;
    ``dtype`` is the handle's, read from it when not given)."""
    array = object.__new__(NDArray)
    array._shape = shape
    array._strides = strides
    array._offset = offset
    array._device = device
    array._handle = handle
    array._dtype = handle.dtype if dtype is None else dtype
    return array


def _alloc(shape, device, dtype="float32"):
    """A new compact array of a validated shape and a canonical dtype name."""
    array = object.__new__(NDArray)
    size = math.prod(shape)
    array._shape = shape
    array._strides = _compact_strides(shape)
    array._offset = 0
    array._device = device
    array._handle = device.new_array(size, dtype)
    array._dtype = dtype
    if size:
        array._flat = size
    return array


def _flat_like(a, handle, dtype):
    """A new array with flat ``a``'s shape and strides over the fresh buffer ``handle``."""
    array = object.__new__(NDArray)
    array._shape = a._shape
    array._strides = a._strides
    array._offset = 0
    array._device = a._device
    array._handle = handle
    array._dtype = dtype
    array._flat = a._flat
    return array


def _fresh(shape, strides, device, handle, dtype, size):
    """A new array over the fresh buffer ``handle`` of ``size`` elements laid out with the
    dense ``strides`` (flat when they are the compact ones)."""
    array = _new(shape, strides, device, handle, 0, dtype)
    if size and strides == _compact_strides(shape):
        array._flat = size
    return array


@lru_cache(maxsize=4096)
def _dense_order(shape, strides):
    """The axis order in which a view with these strides is a compact array, or None.

    A view whose strides are a permutation of compact strides (an NCHW view of an
    NHWC buffer) covers its buffer exactly, so elementwise kernels can run over the
    flat buffer and return the same strides. Size-1 axes may carry any stride.
    """
    order = tuple(sorted(range(len(shape)), key=lambda i: -strides[i]))
    expected = 1
    for i in reversed(order):
        if shape[i] != 1:
            if strides[i] != expected:
                return None
            expected *= shape[i]
    return order


def _dense_strides(a, size):
    """a's strides if a covers its whole buffer in some axis order (offset 0), else None."""
    if a._offset or a._handle.size != size:
        return None
    if a._strides == _compact_strides(a._shape) or _dense_order(a._shape, a._strides) is not None:
        return a._strides
    return None


_ROW_OPS = {"add": "add", "multiply": "mul", "divide": "div"}


@lru_cache(maxsize=4096)
def _row_cols(shape, strides):
    """Row length if (shape, strides) is a compact row over trailing axes broadcast
    (stride 0) over at least one leading axis of size > 1, else None."""
    k = 0
    while k < len(shape) and (strides[k] == 0 or shape[k] == 1):
        k += 1
    if not any(strides[i] == 0 and shape[i] > 1 for i in range(k)):
        return None
    tail = shape[k:]
    cols = math.prod(tail)
    if cols < 1 or strides[k:] != _compact_strides(tail):
        return None
    return cols


@lru_cache(maxsize=4096)
def _sum_middle_plan(shape, strides, axes, keepdims):
    """(outer, reduce, inner, out_shape, out_strides) of a sum over ``axes`` of a dense
    view that are one block in memory order, not the innermost; else None."""
    order = [ax for ax in _dense_order(shape, strides) if shape[ax] != 1]
    flags = [ax in axes for ax in order]
    if True not in flags:
        return None
    first = flags.index(True)
    last = len(flags) - 1 - flags[::-1].index(True)
    if not all(flags[first : last + 1]) or last == len(flags) - 1:
        return None  # not one block, or the innermost axis is reduced (reduce_sum's case)
    outer = math.prod(shape[ax] for ax in order[:first])
    reduce = math.prod(shape[ax] for ax in order[first : last + 1])
    inner = math.prod(shape[ax] for ax in order[last + 1 :])
    # Kept axes lie in memory order in the buffer; give each its stride there.
    kept_mem = order[:first] + order[last + 1 :]
    stride_of, stride = {}, 1
    for ax in reversed(kept_mem):
        stride_of[ax] = stride
        stride *= shape[ax]
    if keepdims:
        out_shape = tuple(1 if i in axes else n for i, n in enumerate(shape))
    else:
        out_shape = tuple(n for i, n in enumerate(shape) if i not in axes)
    kept = [i for i in range(len(shape)) if (keepdims or i not in axes)]
    out_strides = tuple(stride_of.get(i, 0) for i in kept)
    if all(shape[i] == 1 or i in axes for i in kept if i not in stride_of) and [
        i for i in kept if i in stride_of
    ] == kept_mem:
        out_strides = _compact_strides(out_shape)  # kept axes already in logical order
    return outer, reduce, inner, out_shape, out_strides


@lru_cache(maxsize=4096)
def _perm_axes(axes, ndim):
    """``axes`` as non-negative ints if they permute range(ndim), else None."""
    if not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) and -ndim <= a < ndim for a in axes):
        return None
    out = tuple(int(a) % ndim for a in axes)
    return out if sorted(out) == list(range(ndim)) else None


def _in_layout(a, strides):
    """The handle of a dense copy of ``a`` laid out with the dense ``strides`` (a itself if it is)."""
    shape = a._shape
    size = math.prod(shape)
    if a._strides == strides and not a._offset and a._handle.size == size:
        return a._handle
    if _copy_hook is not None:
        _copy_hook(size * a._handle.itemsize)
    # The copy walks a's elements in the memory order of ``strides``: a permuted view of
    # a, copied compact, lands in that layout (no view when the order is row-major).
    order = _dense_order(shape, strides)
    src_strides = a._strides
    if order != tuple(range(len(shape))):
        shape, src_strides = tuple([shape[i] for i in order]), tuple([src_strides[i] for i in order])
    handle = a._device.new_array(size, a._dtype)
    a._device.compact(a._handle, handle, list(shape), list(src_strides), a._offset)
    return handle


def _normalize_axes(axis, ndim, what):
    """axis (None, int or sequence) -> sorted tuple of distinct non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (axis,)
    axis = tuple(axis)
    if len(axis) == 0:
        raise ValueError(f"{what}: empty axis tuple")
    out = []
    for ax in axis:
        if not isinstance(ax, (int, np.integer)):
            raise TypeError(f"{what}: axes must be integers, got {axis!r}")
        if not -ndim <= ax < max(ndim, 1):
            raise ValueError(f"{what}: axis {ax} is out of range for an array of ndim {ndim}")
        out.append(int(ax) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{what}: repeated axis in {axis!r}")
    return tuple(sorted(out))


def _broadcast_shapes(*shapes):
    ndim = max(len(s) for s in shapes)
    result = []
    for i in range(-ndim, 0):
        dims = {s[i] for s in shapes if len(s) >= -i and s[i] != 1}
        if len(dims) > 1:
            raise ValueError("shapes " + " and ".join(str(s) for s in shapes) + " cannot be broadcast together")
        result.append(dims.pop() if dims else 1)
    return tuple(result)


def _is_scalar(x):
    return isinstance(x, (numbers.Number, np.generic)) and not isinstance(x, (complex, np.complexfloating))


def _default_dtype(data):
    """The dtype an NDArray of numpy ``data`` gets when none is asked for, as PyTorch
    does for Python data: float64 (numpy's default float) becomes float32, the course's
    default; other supported dtypes are kept; other integer widths become int64."""
    kind = data.dtype.kind
    if data.dtype == np.float64:
        return _dt.DEFAULT_FLOAT
    if kind in "iu" and data.dtype.itemsize <= 8:
        try:
            return _dt.of_numpy(data)
        except TypeError:
            return "int64"
    return _dt.of_numpy(data)  # TypeError for complex, object, strings, ...


def _from_numpy(data, device, dtype):
    """A new NDArray holding numpy ``data`` converted to ``dtype`` (None: inferred)."""
    dtype = _default_dtype(data) if dtype is None else _dt.canonical(dtype)
    np_dtype = _dt.to_numpy_dtype(dtype)
    if data.dtype != np_dtype:
        with np.errstate(all="ignore"):
            if data.dtype.name == "bfloat16" and dtype not in _dt.FLOATING:
                data = data.astype(np.float32)  # ml_dtypes' own int casts differ from numpy's
            data = data.astype(np_dtype)
    device.require()
    array = _alloc(_shape_tuple(data.shape), device, dtype)
    if array._handle.size:
        device.from_numpy(np.ascontiguousarray(data), array._handle)
    return array


def _elementwise(ewise, scalar, what, out_dtype=None, float_only=False):
    """The NDArray method ``self <op> other`` over the backend kernels named ``ewise`` (an
    array operand) and ``scalar`` (a number); ``what`` names the op in errors.

    The common case runs here, in one frame: two flat arrays of one shape, dtype and
    device, or a flat floating array and a Python number (which never widens it). Every
    other case (promotion, broadcasting, strided or permuted layouts, size 0) goes
    through ``ewise_or_scalar``, which checks everything.
    """
    def method(self, other):
        n = self._flat
        if n:
            device, dtype = self._device, self._dtype
            if type(other) is NDArray:
                if (other._flat and other._shape == self._shape and other._dtype is dtype
                        and other._device is device and (not float_only or dtype in _dt.FLOATING)):
                    handle = device.new_array(n, out_dtype or dtype)
                    getattr(device, ewise)(self._handle, other._handle, handle)
                else:
                    handle = None
            elif (type(other) is float or type(other) is int) and dtype in _dt.FLOATING:
                handle = device.new_array(n, out_dtype or dtype)
                getattr(device, scalar)(self._handle, other, handle)
            else:
                handle = None
            if handle is not None:  # the result: self's shape and strides over the new buffer
                out = _new_header(NDArray)
                out._shape = self._shape
                out._strides = self._strides
                out._offset = 0
                out._device = device
                out._handle = handle
                out._dtype = out_dtype or dtype
                out._flat = n
                return out
        device = self._device
        return self.ewise_or_scalar(other, getattr(device, ewise), getattr(device, scalar), what, out_dtype,
                                    float_only)

    return method


class NDArray:
    """An N-d array of one dtype (``dtypes.DTYPES``, float32 by default) on a device.

    Fields: ``_shape``, ``_strides`` (in elements), ``_offset`` (in elements), ``_dtype``,
    ``_device`` and ``_handle`` (the typed device buffer, shared by views; its
    ``dtype`` is the array's), and ``_flat``: the element count when the array is all of
    its buffer in row-major order (compact strides, offset 0, as many elements as the
    buffer; never for size 0), else 0. Headers made for fresh compact buffers set it; a
    header that does not is merely slower: the fast paths below test ``_flat`` alone
    where they would otherwise compare strides and ask the buffer for its size.
    """

    _flat = 0

    def __init__(self, other, device=None, dtype=None):
        if isinstance(other, NDArray):
            dtype = other.dtype if dtype is None else _dt.canonical(dtype)
            if device is None or device == other.device:
                self._init(other.astype(dtype) if dtype != other.dtype else other.copy())
            else:
                self._init(_from_numpy(other.numpy(), device, dtype))
            return
        if not isinstance(other, np.ndarray):
            try:
                other = np.array(other)
            except (ValueError, TypeError) as e:
                raise TypeError(f"cannot build an NDArray from {type(other).__name__}: {e}") from None
        device = default_device() if device is None else device
        self._init(_from_numpy(other, device, dtype))

    def _init(self, other):
        self._shape = other._shape
        self._strides = other._strides
        self._offset = other._offset
        self._device = other._device
        self._handle = other._handle
        self._dtype = other._dtype
        self._flat = other._flat

    @staticmethod
    def compact_strides(shape):
        return _compact_strides(tuple(shape))

    @staticmethod
    def make(shape, strides=None, device=None, handle=None, offset=0, dtype="float32"):
        """A new array header; allocates a compact buffer of ``dtype`` when ``handle`` is None
        (a given handle brings its own dtype)."""
        array = NDArray.__new__(NDArray)
        array._shape = _shape_tuple(shape)
        array._strides = NDArray.compact_strides(array._shape) if strides is None else tuple(int(s) for s in strides)
        array._offset = int(offset)
        array._device = default_device() if device is None else device
        if not isinstance(array._device, BackendDevice):
            raise TypeError(f"device must be a BackendDevice, got {array._device!r}")
        if handle is None:
            array._device.require()
            size = prod(array._shape)
            array._handle = array._device.new_array(size, _dt.canonical(dtype))
            if size and strides is None and not array._offset:
                array._flat = size
        else:
            array._handle = handle
        array._dtype = array._handle.dtype
        return array

    # ---- properties -------------------------------------------------------
    @property
    def shape(self):
        return self._shape

    @property
    def strides(self):
        return self._strides

    @property
    def device(self):
        return self._device

    @property
    def dtype(self):
        return self._dtype

    @property
    def itemsize(self):
        return _dt.ITEMSIZE[self._dtype]

    def astype(self, dtype, copy=True):
        """A compact copy converted to ``dtype`` (numpy's casts; ``copy=False`` returns
        self when the dtype already matches)."""
        dtype = _dt.canonical(dtype)
        if dtype == self._dtype:
            return self.copy() if copy else self
        src = self.compact()
        out = _alloc(self._shape, self._device, dtype)
        if out._handle.size:
            self._device.astype(src._handle, out._handle)
        return out

    @property
    def ndim(self):
        return len(self._shape)

    @property
    def size(self):
        return prod(self._shape)

    def __len__(self):
        if not self._shape:
            raise TypeError("len() of a 0-d NDArray")
        return self._shape[0]

    def __repr__(self):
        return "NDArray(" + self.numpy().__str__() + f", device={self.device}, dtype={self.dtype})"

    def __str__(self):
        return self.numpy().__str__()

    # ---- basic array manipulation ----------------------------------------
    def fill(self, value):
        """Set every element of the underlying buffer to ``value`` (in place), converted to
        the array's dtype."""
        self._device.fill(self._handle, value)

    def to(self, device):
        if device == self.device:
            return self
        return NDArray(self.numpy(), device=device, dtype=self.dtype)

    def numpy(self):
        return self.device.to_numpy(self._handle, list(self.shape), list(self.strides), self._offset)

    # ---- DLPack (backend_ndarray/dlpack.py): zero-copy exchange with other libraries ----
    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        from . import dlpack

        return dlpack.to_dlpack(self, stream, max_version, dl_device, copy)

    def __dlpack_device__(self):
        from . import dlpack

        return dlpack.device_of(self)

    def __array__(self, dtype=None, copy=None):
        out = self.numpy()
        return out if dtype is None else out.astype(dtype)

    def is_compact(self):
        if self._flat:
            return True
        return self._strides == _compact_strides(self._shape) and math.prod(self._shape) == self._handle.size

    def compact(self):
        """Self if compact, else a compact copy."""
        if self._flat or self.is_compact():
            return self
        if _copy_hook is not None:  # needle.profiler counts the copies ops force
            _copy_hook(prod(self._shape) * self._handle.itemsize)
        return self.copy()

    def __deepcopy__(self, memo):
        """A compact copy of the data on the same device (copy.deepcopy of a model)."""
        return self.copy()

    def copy(self):
        out = _alloc(self._shape, self._device, self._dtype)
        if out._handle.size:
            self._device.compact(self._handle, out._handle, list(self._shape), list(self._strides), self._offset)
        return out

    def as_strided(self, shape, strides):
        """A view with the given shape and element strides over the same buffer."""
        shape = _shape_tuple(shape)
        strides = tuple(int(s) for s in strides)
        if len(shape) != len(strides):
            raise ValueError(f"as_strided: shape {shape} and strides {strides} differ in length")
        if prod(shape) > 0:
            lo = self._offset + _sum(min(0, (n - 1) * s) for n, s in zip(shape, strides))
            hi = self._offset + _sum(max(0, (n - 1) * s) for n, s in zip(shape, strides))
            if lo < 0 or hi >= self._handle.size:
                raise ValueError(
                    f"as_strided: shape {shape}, strides {strides}, offset {self._offset} reach elements "
                    f"[{lo}, {hi}] outside the buffer of {self._handle.size}"
                )
        return NDArray.make(shape, strides=strides, device=self.device, handle=self._handle, offset=self._offset)

    @property
    def flat(self):
        return self.reshape((self.size,))

    def reshape(self, new_shape):
        """A view when compact; a non-compact array is compacted first (like numpy)."""
        if type(new_shape) is not tuple:
            new_shape = (new_shape,) if isinstance(new_shape, (int, np.integer)) else tuple(new_shape)
        size = math.prod(self._shape)
        if -1 in new_shape:
            if _sum(1 for s in new_shape if s == -1) > 1:
                raise ValueError(f"reshape: can only infer one dimension, got {new_shape}")
            known = prod(s for s in new_shape if s != -1)
            if known == 0 or size % known:
                raise ValueError(f"reshape: cannot reshape array of shape {self.shape} into {new_shape}")
            new_shape = tuple(size // known if s == -1 else s for s in new_shape)
        new_shape = _shape_tuple(new_shape)
        if math.prod(new_shape) != size:
            raise ValueError(f"reshape: cannot reshape array of shape {self.shape} (size {size}) into {new_shape}")
        if self._flat or (self._strides == _compact_strides(self._shape) and self._handle.size == size):
            base = self  # compact (any offset): a view
        else:
            base = self.compact()
        out = _new(new_shape, _compact_strides(new_shape), self._device, base._handle, base._offset, self._dtype)
        out._flat = base._flat
        return out

    def permute(self, new_axes):
        new_axes = tuple(new_axes)
        try:
            axes = _perm_axes(new_axes, len(self._shape))
        except TypeError:  # unhashable entries
            axes = None
        if axes is None:
            raise ValueError(f"permute: {new_axes} is not a permutation of the axes of an array of shape {self.shape}")
        shape, strides = self._shape, self._strides
        return _new(tuple([shape[a] for a in axes]), tuple([strides[a] for a in axes]), self._device, self._handle,
                    self._offset, self._dtype)

    def broadcast_to(self, new_shape):
        """View with stride 0 on broadcast dims (numpy rules, new leading dims allowed)."""
        new_shape = _shape_tuple(new_shape)
        lead = len(new_shape) - len(self._shape)
        if lead < 0:
            raise ValueError(f"broadcast_to: cannot broadcast {self.shape} to fewer dims {new_shape}")
        strides = [0] * lead
        for old, new, stride in zip(self._shape, new_shape[lead:], self._strides):
            if old == new:
                strides.append(stride)
            elif old == 1:
                strides.append(0)
            else:
                raise ValueError(f"broadcast_to: cannot broadcast {self.shape} to {new_shape}")
        return _new(new_shape, tuple(strides), self._device, self._handle, self._offset, self._dtype)

    # ---- get and set elements --------------------------------------------
    def process_slice(self, sl, dim):
        """Slice with None/negative entries -> slice of explicit ints (numpy clamping)."""
        n = self.shape[dim]
        step = 1 if sl.step is None else sl.step
        for v in (sl.start, sl.stop, step):
            if v is not None and not isinstance(v, (int, np.integer)):
                raise IndexError(f"slice entries must be integers or None, got {sl!r}")
        if step <= 0:
            raise ValueError(f"slice step must be > 0, got {step} in {sl!r} (use flip to reverse)")
        start = 0 if sl.start is None else sl.start
        stop = n if sl.stop is None else sl.stop
        if start < 0:
            start += n
        if stop < 0:
            stop += n
        start = min(max(start, 0), n)
        stop = min(max(stop, start), n)
        return slice(int(start), int(stop), int(step))

    def _expand_index(self, idxs):
        if not isinstance(idxs, tuple):
            idxs = (idxs,)
        if any(i is Ellipsis for i in idxs):
            if _sum(1 for i in idxs if i is Ellipsis) > 1:
                raise IndexError("an index can only have a single ellipsis")
            k = idxs.index(Ellipsis)
            fill = self.ndim - (len(idxs) - 1)
            idxs = idxs[:k] + (slice(None),) * max(fill, 0) + idxs[k + 1 :]
        if len(idxs) > self.ndim:
            raise IndexError(f"too many indices ({len(idxs)}) for an array of shape {self.shape}")
        idxs = idxs + (slice(None),) * (self.ndim - len(idxs))
        out = []
        for dim, idx in enumerate(idxs):
            if isinstance(idx, slice):
                out.append(self.process_slice(idx, dim))
            elif isinstance(idx, (int, np.integer)) and not isinstance(idx, bool):
                n = self.shape[dim]
                if not -n <= idx < n:
                    raise IndexError(f"index {idx} is out of bounds for axis {dim} with size {n}")
                idx = int(idx) % n
                out.append(slice(idx, idx + 1, 1))
            else:
                raise IndexError(f"only integers, slices and ... are valid NDArray indices, got {idx!r}")
        return tuple(out)

    def __getitem__(self, idxs):
        """Ints and slices (steps > 0); ints keep their dim with size 1."""
        idxs = self._expand_index(idxs)
        shape = tuple(max(0, (s.stop - s.start + s.step - 1) // s.step) for s in idxs)
        strides = tuple(st * s.step for st, s in zip(self.strides, idxs))
        offset = self._offset + _sum(st * s.start for st, s in zip(self.strides, idxs))
        return _new(shape, strides, self._device, self._handle, offset, self._dtype)

    def split_copies(self, axis):
        """Compact copies of ``self[..., i, ...]`` along ``axis`` with that axis removed."""
        shape, strides = self._shape, self._strides
        if not 0 <= axis < len(shape):
            raise ValueError(f"split: axis {axis} out of range for shape {shape}")
        part_shape = shape[:axis] + shape[axis + 1:]
        part_strides = strides[:axis] + strides[axis + 1:]
        step = strides[axis]
        return [
            _new(part_shape, part_strides, self._device, self._handle, self._offset + i * step, self._dtype).copy()
            for i in range(shape[axis])
        ]

    def __setitem__(self, idxs, other):
        """In-place write through the view ``self[idxs]``: an array or a scalar."""
        view = self[idxs]
        if isinstance(other, np.ndarray):
            other = NDArray(other, device=self.device, dtype=self.dtype)
        if isinstance(other, NDArray):
            if other.device != self.device:
                raise ValueError(f"setitem: value is on {other.device}, array is on {self.device}")
            if other.shape != view.shape and other.size != view.size:
                try:
                    other = other.broadcast_to(view.shape)
                except ValueError:
                    raise ValueError(
                        f"setitem: cannot assign shape {other.shape} to a view of shape {view.shape}"
                    ) from None
            if view.size:
                src = other.compact() if other.dtype == self.dtype else other.astype(self.dtype)
                if src._handle is self._handle:
                    src = other.copy()
                self._device.ewise_setitem(src._handle, view._handle, list(view.shape), list(view.strides), view._offset)
        elif _is_scalar(other):
            if view.size:
                self._device.scalar_setitem(
                    view.size, other, view._handle, list(view.shape), list(view.strides), view._offset
                )
        else:
            raise TypeError(f"setitem: value must be an NDArray, numpy array or number, got {type(other).__name__}")

    # ---- elementwise and scalar functions ---------------------------------
    def _broadcast_pair(self, other, what):
        """(self, other) as views of their common broadcast shape (numpy's rules)."""
        if other._device != self._device:
            raise ValueError(f"{what}: arrays on different devices ({self.device} and {other.device})")
        try:
            shape = _broadcast_shapes(self._shape, other._shape)
        except ValueError:
            raise ValueError(f"{what}: shapes {self.shape} and {other.shape} cannot be broadcast together") from None
        return (self if self._shape == shape else self.broadcast_to(shape),
                other if other._shape == shape else other.broadcast_to(shape))

    def _operands(self, other, what):
        """(self, other) converted to their common dtype (PyTorch's promotion)."""
        is_array = isinstance(other, NDArray)
        if not is_array and not _is_scalar(other):
            raise TypeError(f"{what}: operand must be an NDArray or a number, got {type(other).__name__}")
        dtype = _dt.result_type(self, other)
        a = self if self._dtype == dtype else self.astype(dtype)
        if is_array and other._dtype != dtype:
            other = other.astype(dtype)
        return a, other

    def ewise_or_scalar(self, other, ewise_func, scalar_func, what="elementwise op", out_dtype=None,
                        float_only=False):
        """Elementwise op over the flat buffers, after promotion to a common dtype; the
        result has that dtype (or ``out_dtype``: bool for comparisons). A dense but permuted
        operand (every element once, e.g. an NCHW view of an NHWC buffer) is not compacted:
        the result gets its strides, and the other operand is copied into that layout."""
        dtype = self._dtype
        if type(other) is NDArray and other._dtype is dtype:
            is_array = True  # no promotion
        elif (type(other) is float or type(other) is int) and dtype in _dt.FLOATING:
            is_array = False  # a Python number never widens a float array
        else:
            self, other = self._operands(other, what)
            dtype = self._dtype
            is_array = isinstance(other, NDArray)
        if float_only and dtype not in _dt.FLOATING:
            self = self.astype(_dt.DEFAULT_FLOAT)
            other = other.astype(_dt.DEFAULT_FLOAT) if is_array else other
            dtype = _dt.DEFAULT_FLOAT
        if is_array and (other._shape != self._shape or other._device is not self._device):
            self, other = self._broadcast_pair(other, what)
        shape = self._shape
        device = self._device
        dtype = out_dtype or dtype
        size = math.prod(shape)
        if is_array:
            if size:
                compact = _compact_strides(shape)
                if (self._strides == compact and other._strides == compact and not self._offset
                        and not other._offset and self._handle.size == size and other._handle.size == size):
                    # Both operands compact: no layout work.
                    handle = device.new_array(size, dtype)
                    ewise_func(self._handle, other._handle, handle)
                    return _fresh(shape, compact, device, handle, dtype, size)
        elif size and not self._offset and self._handle.size == size and self._strides == _compact_strides(shape):
            handle = device.new_array(size, dtype)
            scalar_func(self._handle, other, handle)
            return _fresh(shape, self._strides, device, handle, dtype, size)
        if size == 0:
            return _alloc(shape, device, dtype)
        if is_array and what in _ROW_OPS and out_dtype is None:
            out = self._ewise_rows(other, _ROW_OPS[what], size)
            if out is not None:
                return out
        strides = _dense_strides(self, size)
        if strides is None and is_array:
            strides = _dense_strides(other, size)
        if strides is None:
            strides = _compact_strides(shape)
        handle = device.new_array(size, dtype)
        if is_array:
            ewise_func(_in_layout(self, strides), _in_layout(other, strides), handle)
        else:
            scalar_func(_in_layout(self, strides), other, handle)
        return _fresh(shape, strides, device, handle, dtype, size)

    def _ewise_rows(self, other, op, size):
        """f(full, row) when one operand is compact and the other is a row of its trailing
        axes broadcast over the leading ones (a bias); None when the operands are not so."""
        for full, row, swap in ((self, other, False), (other, self, True)):
            if not full._flat and not (full._strides == _compact_strides(full._shape) and not full._offset
                                       and full._handle.size == size):
                continue
            cols = _row_cols(row._shape, row._strides)
            if cols is None:
                continue
            handle = self._device.new_array(size, self._dtype)
            self._device.ewise_rows(op, full._handle, row._handle, row._offset, handle, cols, swap)
            return _fresh(self._shape, _compact_strides(self._shape), self._device, handle, self._dtype, size)
        return None

    __add__ = _elementwise("ewise_add", "scalar_add", "add")
    __radd__ = __add__

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return other + (-self)

    __mul__ = _elementwise("ewise_mul", "scalar_mul", "multiply")
    __rmul__ = __mul__

    # True division: integer operands give float32 (PyTorch's rule).
    __truediv__ = _elementwise("ewise_div", "scalar_div", "divide", float_only=True)

    def __rtruediv__(self, other):
        if not _is_scalar(other):
            raise TypeError(f"divide: operand must be an NDArray or a number, got {type(other).__name__}")
        dtype = _dt.result_type(self, other)
        dtype = dtype if dtype in _dt.FLOATING else _dt.DEFAULT_FLOAT
        return full(self.shape, other, dtype=dtype, device=self.device) / self

    def __neg__(self):
        if self._dtype == "bool":
            raise TypeError("negate: not defined for bool arrays (use logical not)")
        return self * (-1)

    __pow__ = _elementwise("ewise_power", "scalar_power", "power")
    maximum = _elementwise("ewise_maximum", "scalar_maximum", "maximum")
    # The kernel has no scalar form: relu_grad passes arrays only, so the second name is never called.
    _relu_grad = _elementwise("ewise_relu_grad", "ewise_relu_grad", "relu_grad", float_only=True)

    def relu_grad(self, x):
        """ReLU's adjoint in one pass: ``self`` (the gradient of relu(x)) where ``x`` > 0, else 0,
        even for an infinite or NaN gradient. ``x`` is an NDArray; the two broadcast and promote
        like ``*`` (integers compute in float32)."""
        if type(x) is not NDArray:
            raise TypeError(f"relu_grad: operand must be an NDArray, got {type(x).__name__}")
        return self._relu_grad(x)

    # Comparisons return bool arrays (numpy's semantics: NaN compares unequal to everything).
    __eq__ = _elementwise("ewise_eq", "scalar_eq", "eq", out_dtype="bool")
    __ne__ = _elementwise("ewise_ne", "scalar_ne", "ne", out_dtype="bool")
    __lt__ = _elementwise("ewise_lt", "scalar_lt", "lt", out_dtype="bool")
    __le__ = _elementwise("ewise_le", "scalar_le", "le", out_dtype="bool")
    __gt__ = _elementwise("ewise_gt", "scalar_gt", "gt", out_dtype="bool")
    __ge__ = _elementwise("ewise_ge", "scalar_ge", "ge", out_dtype="bool")

    __hash__ = None

    def _unary(self, func):
        """func on a floating dtype (integer and bool input is computed in float32)."""
        if self._flat and self._dtype in _dt.FLOATING:
            handle = self._device.new_array(self._flat, self._dtype)
            func(self._handle, handle)
            return _flat_like(self, handle, self._dtype)
        if self._dtype not in _dt.FLOATING:
            self = self.astype(_dt.DEFAULT_FLOAT)
        size = math.prod(self._shape)
        if size == 0:
            return _alloc(self._shape, self._device, self._dtype)
        strides = _dense_strides(self, size) or _compact_strides(self._shape)
        handle = self._device.new_array(size, self._dtype)
        func(_in_layout(self, strides), handle)
        return _fresh(self._shape, strides, self._device, handle, self._dtype, size)

    def log(self):
        return self._unary(self._device.ewise_log)

    def exp(self):
        return self._unary(self._device.ewise_exp)

    def tanh(self):
        return self._unary(self._device.ewise_tanh)

    # ---- matrix multiplication -------------------------------------------
    def matmul(self, other, trans_a=False, trans_b=False):
        """``op(self) @ op(other)`` with numpy's matmul semantics (1-D promoted, batch dims
        broadcast), op swapping the last two axes of an operand whose flag is set.

        The backend's ``bmm`` reads both operands through their strides, so
        transposed and broadcast views are multiplied without a copy.
        """
        if not isinstance(other, NDArray):
            raise TypeError(f"matmul: operand must be an NDArray, got {type(other).__name__}")
        if self._dtype != other._dtype or self._dtype == "bool":
            dtype = _dt.promote_types(self._dtype, other._dtype)
            if dtype == "bool":
                raise TypeError(f"matmul: not defined for bool arrays (shapes {self.shape} and {other.shape})")
            self, other = self.astype(dtype, copy=False), other.astype(dtype, copy=False)
        if len(self._shape) == 2 and len(other._shape) == 2 and other._device is self._device:
            # The common 2-D case without the batch bookkeeping; a transpose is a swap of strides.
            (m, n), (sa0, sa1) = self._shape, self._strides
            if trans_a:
                m, n, sa0, sa1 = n, m, sa1, sa0
            (n2, p), (sb0, sb1) = other._shape, other._strides
            if trans_b:
                n2, p, sb0, sb1 = p, n2, sb1, sb0
            if n != n2:
                raise ValueError(f"matmul: shapes {(m, n)} and {(n2, p)} are not aligned ({n} != {n2})")
            out = _alloc((m, p), self._device, self._dtype)
            if m and p:
                if n == 0:
                    out.fill(0.0)
                else:
                    self._device.bmm(self._handle, other._handle, out._handle, 1, m, n, p,
                                     [0, sa0, sa1], self._offset, [0, sb0, sb1], other._offset)
            return out
        if trans_a:
            self = self._swap_last("matmul")
        if trans_b:
            other = other._swap_last("matmul")
        if other.device != self.device:
            raise ValueError(f"matmul: arrays on different devices ({self.device} and {other.device})")
        if self.ndim == 0 or other.ndim == 0:
            raise ValueError(f"matmul: 0-d operands are not allowed (shapes {self.shape} and {other.shape})")
        a = self.reshape((1,) + self.shape) if self.ndim == 1 else self
        b = other.reshape(other.shape + (1,)) if other.ndim == 1 else other
        m, n = a.shape[-2:]
        n2, p = b.shape[-2:]
        if n != n2:
            raise ValueError(f"matmul: shapes {self.shape} and {other.shape} are not aligned ({n} != {n2})")
        batch_shape = _broadcast_shapes(a.shape[:-2], b.shape[:-2])
        a = a.broadcast_to(batch_shape + (m, n))
        b = b.broadcast_to(batch_shape + (n, p))
        a_batch = _merge_batch(a)
        b_batch = _merge_batch(b)
        if a_batch is None:
            a = a.compact()
            a_batch = _merge_batch(a)
        if b_batch is None:
            b = b.compact()
            b_batch = _merge_batch(b)
        batch = prod(batch_shape)
        out = NDArray.make(batch_shape + (m, p), device=self.device, dtype=self.dtype)
        if out.size:
            if n == 0:
                out.fill(0.0)
            else:
                self.device.bmm(
                    a._handle, b._handle, out._handle, batch, m, n, p,
                    [a_batch, a.strides[-2], a.strides[-1]], a._offset,
                    [b_batch, b.strides[-2], b.strides[-1]], b._offset,
                )
        if self.ndim == 1:
            out = out.reshape(out.shape[:-2] + (p,))
        if other.ndim == 1:
            out = out.reshape(out.shape[:-1])
        return out

    __matmul__ = matmul

    def _swap_last(self, what):
        """A view with the last two axes swapped (ValueError naming ``what`` below 2-D)."""
        if len(self._shape) < 2:
            raise ValueError(f"{what}: need at least 2 dims to swap the last two, got shape {self.shape}")
        shape, strides = self._shape, self._strides
        return _new(shape[:-2] + (shape[-1], shape[-2]), strides[:-2] + (strides[-1], strides[-2]), self._device,
                    self._handle, self._offset, self._dtype)

    # ---- convolution ----------------------------------------------------------
    def conv2d(self, weight, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1):
        """Cross-correlation of this NHWC image (n, h, w, c) with ``weight`` (kh, kw, c/groups, cout)
        in one backend call (on the CPU an implicit GEMM: no im2col matrix is built).

        ``padding`` is ((top, bottom), (left, right)) of zeros (negative widths crop); output
        (n, ho, wo, cout) with ho = (h + top + bottom - dh (kh - 1) - 1) // sh + 1. Both operands
        are read through their strides; the output is NHWC or, for an image whose batch axis has
        unit stride, a permuted view of a (ho, wo, n, cout) array (see conv_layout).
        """
        if not isinstance(weight, NDArray) or weight._device != self._device:
            raise TypeError(f"conv2d: weight must be an NDArray on {self.device}")
        if self._dtype != weight._dtype:
            raise TypeError(f"conv2d: image and weight dtypes differ ({self.dtype} and {weight.dtype})")
        if self.ndim != 4 or weight.ndim != 4:
            raise ValueError(f"conv2d: need an NHWC image and a (kh, kw, c/groups, cout) weight, got shapes "
                             f"{self.shape} and {weight.shape}")
        (sh, sw), (dh, dw) = stride, dilation
        (pt, pb), (pl, pr) = padding
        n, h, w, _ = self._shape
        kh, kw, _, cout = weight._shape
        ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1 if sh > 0 and dh > 0 else -1
        wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1 if sw > 0 and dw > 0 else -1
        if ho < 0 or wo < 0:
            raise ValueError(f"conv2d: kernel {weight.shape[:2]} (dilation {tuple(dilation)}, stride "
                             f"{tuple(stride)}) does not fit the image {self.shape} padded by {tuple(padding)}")
        compact_first, order = conv_layout(self._shape, self._strides)
        x = self.compact() if compact_first else self
        shape = (n, ho, wo, cout)
        stored = _alloc(tuple(shape[a] for a in order), self._device, self._dtype)
        inverse = tuple(order.index(a) for a in range(4))
        out = stored.permute(inverse) if order != NHWC else stored
        self._device.conv2d(x._handle, weight._handle, out._handle, list(x._shape), list(x._strides), x._offset,
                            list(weight._shape), list(weight._strides), weight._offset, list(shape),
                            list(out._strides), [sh, sw], [pt, pl], [dh, dw], int(groups))
        return out

    # ---- row gather / scatter-add -----------------------------------------
    def _row_args(self, idx, what):
        if not isinstance(idx, NDArray) or idx.device != self.device:
            raise TypeError(f"{what}: indices must be an NDArray on {self.device}")
        if self.ndim != 2 or idx.ndim != 1:
            raise ValueError(f"{what}: need a 2-D array and 1-D indices, got {self.shape} and {idx.shape}")
        return idx.compact()

    def gather_rows(self, idx):
        """(n, d) array, (k,) integer-valued indices -> (k, d) with row r = self[idx[r]]."""
        idx = self._row_args(idx, "gather_rows")
        n, d = self._shape
        out = _alloc((idx._shape[0], d), self._device, self._dtype)
        self._device.gather_rows(self.compact()._handle, idx._handle, out._handle, n, d)
        return out

    def scatter_add_rows(self, idx, num_rows):
        """(k, d) array, (k,) indices -> (num_rows, d) zeros with row r added at idx[r]."""
        idx = self._row_args(idx, "scatter_add_rows")
        if idx._shape[0] != self._shape[0]:
            raise ValueError(f"scatter_add_rows: {idx._shape[0]} indices for {self._shape[0]} rows")
        out = _alloc((int(num_rows), self._shape[1]), self._device, self._dtype)
        self._device.fill(out._handle, 0.0)
        self._device.scatter_add_rows(self.compact()._handle, idx._handle, out._handle, int(num_rows),
                                      self._shape[1])
        return out

    # ---- reductions -------------------------------------------------------
    def _reduce(self, axis, keepdims, func, what):
        # A sum of integers or bools is int64; a max keeps the dtype.
        dtype = self._dtype
        if func is self._device.reduce_sum and dtype not in _dt.FLOATING:
            dtype = "int64"
        ndim = len(self._shape)
        n = self._flat
        if n and (axis is None or (ndim and axis == tuple(range(ndim)))):
            # Every axis of a flat array: one run over the whole buffer.
            out = _alloc((1,) * ndim if keepdims else (1,) if axis is None else (), self._device, dtype)
            func(self._handle, out._handle, n)
            return out
        if not keepdims and ndim and (axis == ndim - 1 or axis == (ndim - 1,) or axis == -1 or axis == (-1,)) and (
            type(axis) is int or type(axis) is tuple
        ):
            # Reduce over the last axis: contiguous runs already, no permutation.
            r = self._shape[-1]
            out = _alloc(self._shape[:-1], self._device, dtype)
            if out._handle.size:
                if r == 0:
                    if func is self.device.reduce_max:
                        raise ValueError(f"{what}: zero-size reduction over axes {(ndim - 1,)} of shape {self.shape}")
                    out.fill(0.0)
                else:
                    func(self.compact()._handle, out._handle, r)
            return out
        axes = _normalize_axes(axis, self.ndim, what)
        if self.ndim == 0:
            axes = ()
        elif func is self._device.reduce_sum and axis is not None:
            out = self._sum_middle(axes, keepdims)
            if out is not None:
                return out
        keep = [i for i in range(self.ndim) if i not in axes]
        view = self.permute(tuple(keep) + axes)
        reduce_size = prod(self.shape[i] for i in axes)
        out_shape = tuple(self.shape[i] for i in keep)
        if keepdims:
            out_shape = tuple(1 if i in axes else self.shape[i] for i in range(self.ndim))
        elif axis is None:
            out_shape = (1,)
        out = NDArray.make(out_shape, device=self.device, dtype=dtype)
        if out.size:
            if reduce_size == 0:
                if func is self.device.reduce_max:
                    raise ValueError(f"{what}: zero-size reduction over axes {axes} of shape {self.shape}")
                out.fill(0.0)
            else:
                func(view.compact()._handle, out._handle, reduce_size)
        return out

    def _sum_middle(self, axes, keepdims):
        """Sum over axes that are one contiguous block in memory order (leading axes of a
        compact array, N, H, W of an NCHW view of NHWC, ...) without a transposed copy.
        None when the axes are not such a block or the array does not cover its buffer."""
        size = math.prod(self._shape)
        if not size or _dense_strides(self, size) is None:
            return None
        plan = _sum_middle_plan(self._shape, self._strides, axes, keepdims)
        if plan is None:
            return None
        outer, reduce, inner, out_shape, strides = plan
        handle = self._device.new_array(outer * inner, self._dtype if self._dtype in _dt.FLOATING else "int64")
        self._device.reduce_sum_middle(self._handle, handle, outer, reduce, inner)
        return _new(out_shape, strides, self._device, handle, 0)

    def sum(self, axis=None, keepdims=False):
        return self._reduce(axis, keepdims, self.device.reduce_sum, "sum")

    def max(self, axis=None, keepdims=False):
        return self._reduce(axis, keepdims, self.device.reduce_max, "max")

    def argmax(self, axis=None, keepdims=False):
        """int64 index of the first maximum along ``axis`` (None: of the flattened array),
        with backend ops only: the smallest index whose element equals the maximum."""
        if axis is None:
            return self.reshape((self.size,)).argmax(0, keepdims=False)
        axis = _normalize_axes(axis, self.ndim, "argmax")[0]
        n = self._shape[axis]
        if n == 0:
            raise ValueError(f"argmax: zero-size axis {axis} of shape {self.shape}")
        shape = [1] * self.ndim
        shape[axis] = n
        index = NDArray(np.arange(n, dtype=np.int64).reshape(shape), device=self._device)
        hit = self == self.max(axis=axis, keepdims=True)
        # n where there is no hit, the index where there is; the smallest wins.
        candidates = index * hit + (hit == False) * n  # noqa: E712 (elementwise on arrays)
        return -((-candidates).max(axis=axis, keepdims=keepdims))

    def argmin(self, axis=None, keepdims=False):
        """int64 index of the first minimum along ``axis`` (None: of the flattened array)."""
        if self._dtype == "bool":
            return (self == False).argmax(axis, keepdims)  # noqa: E712
        return (-self if self._dtype != "uint8" else -self.astype("int32")).argmax(axis, keepdims)

    # ---- batch norm ---------------------------------------------------------
    def _bn_args(self, what, vecs):
        """(self, vecs...) compact on one device, self 2-D (rows, cols), each vec (cols,)."""
        if self.ndim != 2:
            raise ValueError(f"{what}: need a 2-D (rows, cols) array, got shape {self.shape}")
        cols = self._shape[1]
        for v in vecs:
            if not isinstance(v, NDArray) or v._device != self._device:
                raise TypeError(f"{what}: per-column arrays must be NDArrays on {self.device}")
            if v._shape != (cols,):
                raise ValueError(f"{what}: per-column array of shape {v.shape} for {cols} columns")
        return [self.compact()] + [v.compact() for v in vecs]

    def batch_norm(self, weight, bias, eps):
        """Training-mode batch norm over the rows of self (rows, cols) with weight, bias (cols,):
        (out (rows, cols), mean (cols,), biased var (cols,)) in one backend call."""
        x, w, b = self._bn_args("batch_norm", (weight, bias))
        rows, cols = x._shape
        dt = x._dtype
        out, mean, var = _alloc(x._shape, x._device, dt), _alloc((cols,), x._device, dt), _alloc((cols,), x._device, dt)
        x._device.bn_forward(x._handle, w._handle, b._handle, out._handle, mean._handle, var._handle, rows, cols,
                             float(eps))
        return out, mean, var

    def batch_norm_grad(self, x, weight, mean, var, eps):
        """(dx, dweight, dbias) of ``batch_norm`` for the upstream gradient self (rows, cols),
        given its input x and the forward's batch mean and var (cols,)."""
        if not isinstance(x, NDArray) or x._device != self._device:
            raise TypeError(f"batch_norm_grad: the input must be an NDArray on {self.device}")
        if x._shape != self._shape:
            raise ValueError(f"batch_norm_grad: input of shape {x.shape} for gradient of shape {self.shape}")
        g, w, m, v = self._bn_args("batch_norm_grad", (weight, mean, var))
        (x,) = x._bn_args("batch_norm_grad", ())
        rows, cols = g._shape
        dev = g._device
        dt = g._dtype
        dx, dw, db = _alloc(g._shape, dev, dt), _alloc((cols,), dev, dt), _alloc((cols,), dev, dt)
        dev.bn_backward(x._handle, g._handle, w._handle, m._handle, v._handle, dx._handle, dw._handle, db._handle,
                        rows, cols, float(eps))
        return dx, dw, db

    # ---- fused loss and optimizer steps -----------------------------------
    FUSED_DTYPES = ("float32", "float64")

    def _fused_operands(self, what, arrays):
        for a in arrays:
            if not isinstance(a, NDArray) or a._device != self._device:
                raise TypeError(f"{what}: operands must be NDArrays on {self.device}")
            if a._dtype != self._dtype:
                raise TypeError(f"{what}: dtypes {self.dtype} and {a.dtype} differ")
        return [a.compact() for a in arrays]

    def softmax_xent(self, labels):
        """Mean softmax cross-entropy of logits self (n, k) against class numbers ``labels``
        (n,) (any integer dtype, or float-encoded): (loss (), row log-sum-exps (n,))."""
        if self.ndim != 2 or not isinstance(labels, NDArray) or labels.shape != self._shape[:1]:
            raise ValueError(f"softmax_xent: need logits (n, k) and labels (n,), got {self.shape} and "
                             f"{getattr(labels, 'shape', labels)}")
        z = self.compact()
        n, k = z._shape
        lse, loss = _alloc((n,), z._device, z.dtype), _alloc((1,), z._device, z.dtype)
        z._device.softmax_xent(z._handle, labels.compact()._handle, lse._handle, loss._handle, n, k)
        return loss.reshape(()), lse

    def softmax_xent_grad(self, labels, lse, g, scale):
        """(softmax(self) - onehot(labels)) * g * scale for logits self (n, k), the forward's
        ``lse`` (n,) and the upstream scalar ``g`` (1 element)."""
        (z, lse, g) = self._fused_operands("softmax_xent_grad", (self, lse, g))
        n, k = z._shape
        out = _alloc((n, k), z._device, z.dtype)
        z._device.softmax_xent_grad(z._handle, labels.compact()._handle, lse._handle, g._handle, out._handle, n, k,
                                    float(scale))
        return out

    def adam_step(self, g, m, v, lr, beta1, beta2, eps, weight_decay, decay, bias_c1, bias_c2):
        """The parameter self after one Adam step with gradient g; the compact state arrays
        m and v are updated in place (see the backend's adam_step)."""
        w, g = self._fused_operands("adam_step", (self, g))
        self._fused_operands("adam_step", (m, v))
        out = _alloc(w._shape, w._device, w.dtype)
        w._device.adam_step(w._handle, g._handle, m._handle, v._handle, out._handle, lr, beta1, beta2, eps,
                            weight_decay, decay, bias_c1, bias_c2)
        return out

    def sgd_step(self, g, u, lr, momentum, weight_decay):
        """The parameter self after one SGD step with gradient g; the compact momentum u is
        updated in place (not read when momentum is 0)."""
        w, g = self._fused_operands("sgd_step", (self, g))
        out = _alloc(w._shape, w._device, w.dtype)
        u = w if not momentum else u
        w._device.sgd_step(w._handle, g._handle, u._handle, out._handle, lr, momentum, weight_decay)
        return out

    # ---- flip and pad -----------------------------------------------------
    def flip(self, axes=None):
        """A compact copy reversed along ``axes`` (negative strides, then compact)."""
        axes = _normalize_axes(axes, self.ndim, "flip") if self.ndim else ()
        strides = list(self.strides)
        offset = self._offset
        for ax in axes:
            if self.shape[ax]:
                offset += (self.shape[ax] - 1) * strides[ax]
            strides[ax] = -strides[ax]
        return _new(self._shape, tuple(strides), self._device, self._handle, offset, self._dtype).copy()

    def pad(self, axes):
        """Zero padding: ``axes`` holds a (left, right) pair for every dim, like np.pad."""
        axes = tuple(tuple(p) for p in axes)
        if len(axes) != self.ndim or any(len(p) != 2 for p in axes):
            raise ValueError(f"pad: need one (left, right) pair per dim of shape {self.shape}, got {axes}")
        if any(int(l) < 0 or int(r) < 0 for l, r in axes):
            raise ValueError(f"pad: widths must be >= 0, got {axes}")
        new_shape = tuple(n + l + r for n, (l, r) in zip(self.shape, axes))
        out = _alloc(new_shape, self._device, self._dtype)
        if not out.size:
            return out
        if not self.size:
            out.fill(0.0)
            return out
        # Write the interior once, then zero only the border slabs (not the whole array).
        dev, strides = self._device, list(out._strides)
        src = self.compact()
        offset = _sum(l * st for (l, _), st in zip(axes, strides))
        dev.ewise_setitem(src._handle, out._handle, list(self._shape), strides, offset)
        for ax, (l, r) in enumerate(axes):
            for lo, width in ((0, l), (new_shape[ax] - r, r)):
                if width:
                    shape = list(new_shape)
                    shape[ax] = width
                    dev.scalar_setitem(math.prod(shape), 0.0, out._handle, shape, strides, lo * strides[ax])
        return out


def _merge_batch(a):
    """The single stride of a's leading (batch) dims, or None if they do not merge."""
    dims = [(n, s) for n, s in zip(a.shape[:-2], a.strides[:-2]) if n != 1]
    if not dims:
        return 0
    stride = dims[-1][1]
    expected = stride
    for n, s in reversed(dims):
        if s != expected:
            return None
        expected = s * n
    return stride


# ---- module-level API ------------------------------------------------------
def array(a, dtype=None, device=None):
    """An NDArray copy of ``a`` in ``dtype``; None infers it as PyTorch does for Python
    data: floating data float32, integers int64 (numpy int32/uint8 kept), bool bool."""
    return NDArray(a, device=device, dtype=dtype)


def empty(shape, dtype="float32", device=None):
    device = default_device() if device is None else device
    return device.empty(shape, dtype)


def full(shape, fill_value, dtype="float32", device=None):
    device = default_device() if device is None else device
    return device.full(shape, fill_value, dtype)


def broadcast_to(array, new_shape):
    return array.broadcast_to(new_shape)


def reshape(array, new_shape):
    return array.reshape(new_shape)


def maximum(a, b):
    return a.maximum(b)


def log(a):
    return a.log()


def exp(a):
    return a.exp()


def tanh(a):
    return a.tanh()


def sum(a, axis=None, keepdims=False):
    return a.sum(axis=axis, keepdims=keepdims)


def flip(a, axes):
    return a.flip(axes)


def stack(arrays, axis=0):
    """Join same-shape arrays along a new axis."""
    arrays = list(arrays)
    if not arrays:
        raise ValueError("stack: need at least one array")
    shape, device = arrays[0].shape, arrays[0].device
    dtype = arrays[0].dtype
    for a in arrays[1:]:
        dtype = _dt.promote_types(dtype, a.dtype)
    for i, a in enumerate(arrays):
        if a.shape != shape:
            raise ValueError(f"stack: array {i} has shape {a.shape}, expected {shape}")
        if a.device != device:
            raise ValueError(f"stack: array {i} is on {a.device}, expected {device}")
    if not -len(shape) - 1 <= axis <= len(shape):
        raise ValueError(f"stack: axis {axis} out of range for {len(shape) + 1}-d result")
    axis %= len(shape) + 1
    out = empty(shape[:axis] + (len(arrays),) + shape[axis:], dtype=dtype, device=device)
    if not out.size:
        return out
    # Write each array straight into its slab (the view out[..., i, ...] without index parsing).
    strides = out._strides
    part_strides = list(strides[:axis] + strides[axis + 1:])
    for i, a in enumerate(arrays):
        a = a.compact() if a.dtype == dtype else a.astype(dtype)
        device.ewise_setitem(a._handle, out._handle, list(shape), part_strides, i * strides[axis])
    return out
