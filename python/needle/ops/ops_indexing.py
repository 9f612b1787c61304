"""Indexing: the course's basic ``get_item`` and PyTorch-style ``tensor_getitem`` /
``tensor_setitem`` (ints, slices, None, ..., integer lists / arrays / Tensors, bool masks),
plus constant padding.

``t[idx]`` has numpy/PyTorch semantics: an int removes its axis. NDArray slicing keeps
every axis (ints become length-1 slices), so GetItem slices with keep-dims slices and
then reshapes the int-indexed axes away. The adjoint of slicing scatters the gradient
into zeros (``Scatter``) and vice versa.

How ``tensor_getitem`` works (derivation note)
- Basic index (ints, slices with steps > 0, None, ...): a view. NDArray slicing gives
  the keep-dims view; dropping an int's size-1 axis and inserting None's size-1 axis
  (stride 0) are pure stride edits (``as_strided``), so no element is copied.
  Adjoint: zeros of the input's shape with the gradient written through the same view.
- Advanced index (any integer array or bool mask): a gather. The input is read as a
  compact (N, d) table whose d columns are the trailing dims the index leaves whole
  (``x[idx]`` on (V, D): N = V, d = D; ``x[:, [0, 2]]``: N = numel, d = 1); numpy
  computes on the host the flat row number of every selected row by indexing per-dim
  coordinate grids (stride-0 views, so host memory is O(result), not O(numel)), and
  ``gather_rows`` picks them on any device. Adjoint: ``scatter_add_rows`` into zeros
  (repeated indices add up), whose adjoint is the gather again, so grad of grad works.
- ``tensor_setitem`` writes in place into x's data: a basic index through NDArray's view
  setitem; an advanced one by one ``gather_rows`` that picks, for every row of the (N, d)
  table, the old row or the new one (exact for every dtype, no arithmetic), written back
  (``array_backend.set_rows``).
- Placement follows PyTorch: ints select first (they never count as advanced indices),
  then numpy's rules place the broadcast index dims (in place when the index arrays are
  adjacent, first otherwise). numpy differs only when an int and an array are separated
  by a slice: ``x[0, :, [1, 2]]`` is (3, 2, 5) in PyTorch and (2, 3, 5) in numpy for
  x of shape (2, 3, 4, 5).
"""
import math
from operator import index as _as_index

import numpy

from ..autograd import NDArray, Tensor, TensorOp, is_grad_enabled
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


# ---- PyTorch-style indexing: tensor_getitem / tensor_setitem --------------------
class IndexTypeError(TypeError, IndexError):
    """An index of an unsupported type (a float, a float array, an object). Both a
    TypeError and the IndexError that numpy and PyTorch raise for it."""


_NONE, _SLICE, _INT, _ARRAY, _MASK, _ELLIPSIS = "none", "slice", "int", "array", "mask", "ellipsis"


def _show(obj):
    """A short description of an index entry for error messages."""
    if isinstance(obj, (Tensor, numpy.ndarray)) or (hasattr(obj, "numpy") and hasattr(obj, "shape")):
        return f"{type(obj).__name__} of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    text = repr(obj)
    return text if len(text) <= 60 else text[:57] + "..."


def _slice_ints(sl, pos, shape, what):
    """A slice whose entries are ints or None; step must be > 0 (PyTorch's rule)."""
    vals = []
    for v in (sl.start, sl.stop, sl.step):
        if v is None or isinstance(v, (int, numpy.integer)) and not isinstance(v, (bool, numpy.bool_)):
            vals.append(None if v is None else int(v))
            continue
        try:
            vals.append(_as_index(v))
        except TypeError:
            raise IndexTypeError(
                f"{what}: slice entries must be integers or None; index {pos} is {sl!r} "
                f"(tensor shape {tuple(shape)})"
            ) from None
    if vals[2] is not None and vals[2] <= 0:
        raise ValueError(
            f"{what}: slice steps must be > 0; index {pos} is {sl!r} (tensor shape {tuple(shape)}); "
            f"use needle.flip to reverse"
        )
    return slice(*vals)


def _classify(obj, pos, shape, what):
    """One user index entry -> (kind, value): value is a slice, an int, or a numpy array."""
    if obj is None:
        return _NONE, None
    if obj is Ellipsis:
        return _ELLIPSIS, None
    if isinstance(obj, slice):
        return _SLICE, _slice_ints(obj, pos, shape, what)
    if isinstance(obj, (bool, numpy.bool_)):
        return _MASK, numpy.array(bool(obj))
    if isinstance(obj, (int, numpy.integer)):
        return _INT, int(obj)
    if isinstance(obj, Tensor) or (hasattr(obj, "numpy") and hasattr(obj, "shape")):
        arr = obj.numpy()
    elif isinstance(obj, (numpy.ndarray, list, tuple)):
        try:
            arr = numpy.asarray(obj)
        except (ValueError, TypeError):
            raise IndexTypeError(f"{what}: index {pos} ({_show(obj)}) is not a rectangular list of integers "
                                 f"(tensor shape {tuple(shape)})") from None
        if arr.size == 0 and not isinstance(obj, numpy.ndarray):
            arr = arr.astype(numpy.int64)  # [] is an empty integer index, as in numpy and PyTorch
    else:
        raise IndexTypeError(
            f"{what}: only integers, slices (':'), None, '...', integer lists / arrays / Tensors and bool masks "
            f"are valid indices; index {pos} is {_show(obj)} ({type(obj).__name__}) for a tensor of shape "
            f"{tuple(shape)}"
        )
    if arr.dtype == numpy.bool_:
        return _MASK, arr
    if arr.dtype.kind in "iu":
        return (_INT, int(arr)) if arr.ndim == 0 else (_ARRAY, arr.astype(numpy.int64))
    raise IndexTypeError(
        f"{what}: index {pos} ({_show(obj)}) must have an integer or bool dtype (tensor shape {tuple(shape)})"
    )


def _parse(index, shape, what):
    """User index -> list of (kind, value, pos, dim): one entry per index position with
    Ellipsis expanded and missing trailing dims filled by full slices. ``dim`` is the
    first tensor dim the entry consumes (None for None and 0-d masks); ints and index
    arrays are bounds-checked and made non-negative, slices made explicit."""
    shape = tuple(shape)
    if not isinstance(index, tuple):
        index = (index,)
    items = [_classify(obj, pos, shape, what) + (pos,) for pos, obj in enumerate(index)]
    ellipses = [i for i, (kind, _, _) in enumerate(items) if kind == _ELLIPSIS]
    if len(ellipses) > 1:
        raise IndexError(f"{what}: an index can only have a single ellipsis ('...'), got {len(ellipses)}")
    used = sum(v.ndim if kind == _MASK else 1 for kind, v, _ in items if kind in (_SLICE, _INT, _ARRAY, _MASK))
    if used > len(shape):
        raise IndexError(
            f"{what}: too many indices for a tensor of dimension {len(shape)} (shape {shape}): "
            f"the index uses {used} dims"
        )
    fill = [(_SLICE, slice(None), None)] * (len(shape) - used)
    if ellipses:
        k = ellipses[0]
        items = items[:k] + fill + items[k + 1:]
    else:
        items = items + fill
    out, dim = [], 0
    for kind, v, pos in items:
        where = f"index {pos}" if pos is not None else "an implicit ':'"
        if kind == _NONE or (kind == _MASK and v.ndim == 0):
            out.append((kind, v, pos, None))
            continue
        if kind == _MASK:
            k = v.ndim
            if v.shape != shape[dim:dim + k]:
                raise IndexError(
                    f"{what}: the shape of the mask {v.shape} at {where} does not match the shape "
                    f"{shape[dim:dim + k]} of dims {dim}..{dim + k - 1} of the tensor of shape {shape}"
                )
            out.append((kind, v, pos, dim))
            dim += k
            continue
        n = shape[dim]
        if kind == _SLICE:
            start, stop, step = v.indices(n)
            v = slice(start, max(stop, start), step)
        elif kind == _INT:
            if not -n <= v < n:
                raise IndexError(
                    f"{what}: index {v} is out of bounds for axis {dim} with size {n} "
                    f"({where}, tensor shape {shape})"
                )
            v %= n
        else:  # _ARRAY
            if v.size and (v.min() < -n or v.max() >= n):
                bad = v.max() if v.max() >= n else v.min()
                raise IndexError(
                    f"{what}: index {bad} is out of bounds for axis {dim} with size {n} "
                    f"(index array at {where}, tensor shape {shape})"
                )
            v = numpy.where(v < 0, v + n, v)
        out.append((kind, v, pos, dim))
        dim += 1
    return out


def _slice_len(sl):
    return max(0, (sl.stop - sl.start + sl.step - 1) // sl.step)


class _ViewPlan:
    """A basic index as a view: ``keep`` (one explicit slice per dim, ints as length-1
    slices) and ``layout`` (per output dim, the kept input dim, or None for a new axis)."""

    def __init__(self, items, in_shape):
        self.in_shape = tuple(in_shape)
        self.keep = tuple(slice(v, v + 1, 1) if kind == _INT else v for kind, v, _, _ in items if kind != _NONE)
        self.np_index = tuple(v for _, v, _, _ in items)  # numpy spells the same index alike
        layout, d = [], 0
        for kind, _, _, _ in items:
            if kind == _NONE:
                layout.append(None)
            else:
                if kind == _SLICE:
                    layout.append(d)
                d += 1
        self.layout = tuple(layout)
        self.out_shape = tuple(1 if i is None else _slice_len(self.keep[i]) for i in self.layout)

    def view(self, a):
        return B.view(a, self)


class _GatherPlan:
    """An advanced index as a row gather: the input read as a compact (nk, d) table,
    ``rows`` (int64, one per output row) and the output shape ``rows.shape + suffix``."""

    def __init__(self, items, in_shape, what):
        self.in_shape = shape = tuple(in_shape)
        # Trailing dims the index keeps whole become the gathered rows' columns.
        k, n_items = len(shape), len(items)
        while n_items and items[n_items - 1][0] == _SLICE:
            kind, v, _, dim = items[n_items - 1]
            if (v.start, v.stop, v.step) != (0, shape[dim], 1):
                break
            n_items, k = n_items - 1, dim
        prefix = items[:n_items]
        self.nk, self.d = math.prod(shape[:k]), math.prod(shape[k:])
        # PyTorch's order: ints select first; numpy places the rest (arrays, masks, slices,
        # None). A k-d mask covers k adjacent dims, whose row-major offsets are those of one
        # merged dim indexed by flatnonzero(mask): same placement, and no slow k-d nonzero.
        grid, first, rest = [], [], []
        for kind, v, _, dim in prefix:
            if kind == _NONE or (kind == _MASK and v.ndim == 0):
                rest.append(v)
                continue
            if kind == _MASK:
                grid.append(math.prod(v.shape))
                v = numpy.flatnonzero(v)
            else:
                grid.append(shape[dim])
            first.append(v if kind == _INT else slice(None))
            if kind != _INT:
                rest.append(v)
        first, rest = tuple(first), tuple(rest)
        if len(grid) == 1 and len(rest) == 1 and isinstance(rest[0], numpy.ndarray) and rest[0].ndim:
            rows = rest[0].astype(numpy.int64, copy=False)  # x[idx] and x[mask]: the rows are the index
        else:
            rows = None
            try:
                for j in range(len(grid)):
                    if grid[j] > 1:
                        part = self._grid(grid, j)[first][rest]
                        rows = part if rows is None else rows + part
                if rows is None:  # every indexed dim has size 1: all offsets are 0
                    rows = numpy.array(self._grid(grid, None)[first][rest])
            except IndexError as e:  # index arrays that do not broadcast together
                raise IndexError(f"{what}: {e} (tensor shape {shape})") from None
        self.rows = rows.reshape(-1)
        self.out_shape = tuple(rows.shape) + shape[k:]
        self._device_rows = None

    @staticmethod
    def _grid(shape, j):
        """An int64 view of ``shape`` holding the flat row-major offset contributed by dim j
        (zeros for j None), with stride 0 on every other dim: O(shape[j]) memory."""
        if j is None:
            return numpy.lib.stride_tricks.as_strided(numpy.zeros(1, numpy.int64), shape, (0,) * len(shape))
        coord = numpy.arange(shape[j], dtype=numpy.int64) * math.prod(shape[j + 1:])
        strides = tuple(coord.itemsize if i == j else 0 for i in range(len(shape)))
        return numpy.lib.stride_tricks.as_strided(coord, shape, strides, writeable=False)

    def rows_like(self, like):
        """The row numbers as the backend's index array on ``like``'s device (kept for the next call)."""
        cached = self._device_rows
        if cached is None or B.device(cached) != B.device(like):
            cached = self._device_rows = B.index_array(self.rows, like)
        return cached

    def gather(self, a):
        """(in_shape) -> (out_shape): out row r = table row rows[r]."""
        if self.rows.size * self.d == 0:
            return B.full(self.out_shape, 0, a)
        return B.gather_rows(a.reshape((self.nk, self.d)), self.rows_like(a)).reshape(self.out_shape)

    def scatter_add(self, g):
        """(out_shape) -> (in_shape) zeros with row r of g added at table row rows[r]."""
        k = self.rows.size
        if k * self.d == 0:
            return B.full(self.in_shape, 0, g)
        return B.scatter_add_rows(g.reshape((k, self.d)), self.rows_like(g), self.nk).reshape(self.in_shape)


def _plan(index, shape, what):
    items = _parse(index, shape, what)
    if any(kind in (_ARRAY, _MASK) for kind, _, _, _ in items):
        return _GatherPlan(items, shape, what)
    return _ViewPlan(items, shape)


class IndexView(TensorOp):
    """``x[index]`` for a basic index (ints, slices with steps > 0, None, ...): a view.

    Shapes: x (in_shape) -> (out_shape), ints removing their dim, None adding a size-1 dim.
    Gradient: ``IndexViewAdjoint``, zeros of in_shape with out_grad written at the view.
    Example: x of shape (2, 3, 4); ``x[None, ..., 1]`` is (1, 2, 3), a view of x.
    """

    def __init__(self, plan):
        self.plan = plan

    def compute(self, a):
        return self.plan.view(a)

    def gradient(self, out_grad, node):
        return IndexViewAdjoint(self.plan)(out_grad)


class IndexViewAdjoint(TensorOp):
    """Zeros of the plan's in_shape with ``a`` (out_shape) written through the view; its
    gradient is the view again (IndexView)."""

    def __init__(self, plan):
        self.plan = plan

    def compute(self, a):
        out = B.full(self.plan.in_shape, 0, a)
        B.write_view(out, self.plan, a)
        return out

    def gradient(self, out_grad, node):
        return IndexView(self.plan)(out_grad)


class IndexGather(TensorOp):
    """``x[index]`` for an advanced index (integer arrays / Tensors / lists, bool masks,
    mixed with ints, slices, None, ...): a row gather, a new compact array.

    Shapes: x (in_shape) read as a compact (N, d) table (d: the trailing dims the index
    keeps whole) -> (K, d) rows -> out_shape (PyTorch's placement of the index dims).
    Gradient: ``IndexScatterAdd`` (scatter_add_rows into zeros: repeated indices add up).
    Example: x (4, 5); ``x[[0, 0, 3]]`` gathers rows 0, 0, 3 -> (3, 5); the gradient of
    row 0 is the sum of the first two rows of out_grad.
    """

    def __init__(self, plan):
        self.plan = plan

    def compute(self, a):
        return self.plan.gather(a)

    def gradient(self, out_grad, node):
        return IndexScatterAdd(self.plan)(out_grad)


class IndexScatterAdd(TensorOp):
    """(out_shape) -> zeros of in_shape with each gathered row added back where it came
    from (the adjoint of IndexGather); its gradient is the gather (IndexGather)."""

    def __init__(self, plan):
        self.plan = plan

    def compute(self, a):
        return self.plan.scatter_add(a)

    def gradient(self, out_grad, node):
        return IndexGather(self.plan)(out_grad)


def tensor_getitem(x, index):
    """``x[index]`` with PyTorch's semantics, differentiable.

    index: an int (negative counts from the end; removes the dim), a slice (steps > 0;
    ValueError otherwise), None, ..., an integer list / numpy array / Tensor (a gather;
    several broadcast together), a bool mask (numpy array, list or Tensor; selects the
    True elements in row-major order), or a tuple of these.
    Basic indexes return a view (IndexView); advanced ones a gather (IndexGather) whose
    gradient scatter-adds. Errors: IndexError for out-of-range indices, a mask of the
    wrong shape or too many indices; IndexTypeError (a TypeError and an IndexError) for
    a float or other unsupported index; each message names the index and the shape.
    Example: ``tensor_getitem(x, (slice(None), [0, 2]))`` is ``x[:, [0, 2]]``.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"tensor_getitem: x must be a Tensor, got {type(x).__name__}")
    plan = _plan(index, x.shape, "tensor_getitem")
    return (IndexGather if isinstance(plan, _GatherPlan) else IndexView)(plan)(x)


def _value_array(value, data, shape, what):
    """``value`` as a backend array of ``data``'s dtype and device, broadcast to ``shape``
    (a Python number stays a number)."""
    if isinstance(value, Tensor):
        value = value.realize_cached_data()
    if isinstance(value, (bool, int, float, numpy.generic)) and not isinstance(value, numpy.ndarray):
        return value
    if isinstance(value, NDArray):  # a backend array (numpy's own in np mode)
        arr = B.to_device(value, B.device(data))
        arr = arr if arr.dtype == data.dtype else arr.astype(data.dtype)
    else:
        try:
            host = numpy.asarray(value)
        except (ValueError, TypeError):
            host = None
        if host is None or host.dtype == object:
            raise TypeError(
                f"{what}: value must be a Tensor, NDArray, numpy array or number, got {type(value).__name__}"
            )
        arr = B.array(host, B.device(data), data.dtype)
    vshape = tuple(arr.shape)
    trimmed = vshape
    while len(trimmed) > len(shape) and trimmed[0] == 1:  # leading 1s go, as in numpy and PyTorch
        trimmed = trimmed[1:]
    ok = len(trimmed) <= len(shape) and all(v in (1, n) for v, n in zip(trimmed[::-1], shape[::-1]))
    if not ok:
        raise ValueError(
            f"{what}: shape mismatch: value of shape {vshape} cannot be broadcast to the indexing result "
            f"of shape {tuple(shape)} (tensor shape {tuple(data.shape)})"
        )
    if trimmed != vshape:
        arr = arr.reshape(trimmed)
    return arr if tuple(arr.shape) == tuple(shape) else B.broadcast_to(arr, shape)


def tensor_setitem(x, index, value):
    """``x[index] = value`` in place on x's data, for a Tensor that requires no gradient.

    index: anything ``tensor_getitem`` takes. value: a Tensor, NDArray, numpy array or
    number, converted to x's dtype and broadcast to the shape of ``x[index]``. A basic
    index writes through the NDArray view; an advanced one selects, for every row of x
    read as an (N, d) table, either its old value or the new one with one gather_rows
    (exact for any dtype; of repeated indices the last value wins, as in numpy).
    Raises RuntimeError when x requires grad (allowed on a leaf inside ``no_grad()``,
    as in PyTorch) or when value requires grad (no graph is recorded for the write).
    """
    what = "tensor_setitem"
    if not isinstance(x, Tensor):
        raise TypeError(f"{what}: x must be a Tensor, got {type(x).__name__}")
    if x.requires_grad and (is_grad_enabled() or not x.is_leaf()):
        kind = "a leaf Tensor" if x.is_leaf() else "a Tensor"
        hint = "use x.detach() or needle.no_grad()" if x.is_leaf() else "index it out of place (needle.where / cat)"
        raise RuntimeError(
            f"{what}: {kind} that requires grad is being used in an in-place operation "
            f"(x[index] = value on shape {tuple(x.shape)}); {hint}"
        )
    if isinstance(value, Tensor) and value.requires_grad and is_grad_enabled():
        raise RuntimeError(
            f"{what}: value requires grad, but x[index] = value records no graph; pass value.detach(), "
            f"or build the result out of place (needle.where / needle.cat)"
        )
    data = x.realize_cached_data()
    plan = _plan(index, data.shape, what)
    val = _value_array(value, data, plan.out_shape, what)
    if isinstance(plan, _ViewPlan):
        B.write_view(data, plan, val)
        return x
    k, d = plan.rows.size, plan.d
    if k * d == 0:
        return x
    B.set_rows(data, plan.rows, d, val.reshape((k, d)) if isinstance(val, NDArray) else val)
    return x
