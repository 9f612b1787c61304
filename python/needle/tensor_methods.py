"""The methods a PyTorch user expects on a Tensor, beside the course's.

A mixin of ``Tensor`` (autograd.py keeps the graph; this file keeps the API).
Every method is a composition of needle ops, so gradients flow through it;
comparisons, ``argmax`` and the logical operators give constant (bool or int64)
tensors. The course's spellings keep working: ``sum(axes=...)``,
``transpose(axes)`` with a pair, ``permute(axes)`` with a tuple,
``reshape(shape)`` with a tuple.
"""
import builtins
import collections

import numpy

import needle

MaxResult = collections.namedtuple("MaxResult", ["values", "indices"])


def _ops():
    return needle.ops


def _dims(args, what):
    """A shape or axis list given as varargs (1, 2) or as one sequence ((1, 2))."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    for a in args:
        if not isinstance(a, (int, numpy.integer)) or isinstance(a, bool):
            raise TypeError(f"{what}: expected integers, got {args!r}")
    return tuple(int(a) for a in args)


def _axis(dim, ndim, what):
    if not -ndim <= dim < builtins.max(ndim, 1):
        raise IndexError(f"{what}: dimension {dim} is out of range for a tensor of {ndim} dims")
    return dim % builtins.max(ndim, 1)


def _reduce_axes(dim, axes):
    """The course's ``axes=`` wins when given; else PyTorch's ``dim``."""
    return axes if axes is not None else dim


def _keep(t, out, axes, keepdim):
    """out (reduced over ``axes`` of t) with the reduced axes kept as size 1 when asked."""
    if not keepdim:
        return out
    ndim = len(t.shape)
    axes = range(ndim) if axes is None else (axes if isinstance(axes, (tuple, list)) else (axes,))
    axes = {_axis(a, ndim, "keepdim") for a in axes}
    return _ops().reshape(out, tuple(1 if i in axes else n for i, n in enumerate(t.shape)))


def _data(x):
    return x.realize_cached_data() if isinstance(x, needle.Tensor) else x


class TensorMethods:
    """PyTorch's method names and results (mixed into ``needle.Tensor``)."""

    # ---- shape -------------------------------------------------------------
    @property
    def T(self):
        """The dims reversed (a 2-D tensor's transpose)."""
        return self.permute(tuple(reversed(range(len(self.shape)))))

    @property
    def mT(self):
        """The last two dims swapped."""
        if len(self.shape) < 2:
            raise ValueError(f"mT: needs at least 2 dims, got shape {self.shape}")
        return _ops().Transpose()(self)

    def reshape(self, *shape):
        """``reshape(2, 3)``, ``reshape((2, 3))``; one dim may be -1."""
        shape = _dims(shape, "reshape")
        if -1 in shape:
            known = numpy.prod([s for s in shape if s != -1], dtype=numpy.int64)
            size = int(numpy.prod(self.shape, dtype=numpy.int64))
            if shape.count(-1) > 1 or known == 0 or size % known:
                raise ValueError(f"reshape: cannot reshape a tensor of shape {self.shape} into {shape}")
            shape = tuple(size // int(known) if s == -1 else s for s in shape)
        return _ops().Reshape(shape)(self)

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        shape = tuple(self.shape)
        if not shape:
            return self.reshape(1)
        start, end = _axis(start_dim, len(shape), "flatten"), _axis(end_dim, len(shape), "flatten")
        if start > end:
            raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim}")
        merged = int(numpy.prod(shape[start:end + 1], dtype=numpy.int64))
        return self.reshape(shape[:start] + (merged,) + shape[end + 1:])

    def squeeze(self, dim=None):
        shape = tuple(self.shape)
        if dim is None:
            return self.reshape(tuple(n for n in shape if n != 1))
        dims = {_axis(d, len(shape), "squeeze") for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
        return self.reshape(tuple(n for i, n in enumerate(shape) if not (i in dims and n == 1)))

    def unsqueeze(self, dim):
        shape = tuple(self.shape)
        dim = _axis(dim, len(shape) + 1, "unsqueeze")
        return self.reshape(shape[:dim] + (1,) + shape[dim:])

    def permute(self, *dims):
        """``permute(2, 0, 1)`` or the course's ``permute((2, 0, 1))``."""
        return _ops().permute(self, _dims(dims, "permute"))

    def transpose(self, *axes):
        """PyTorch's ``transpose(dim0, dim1)``, or the course's ``transpose(axes)`` with a pair
        (None: the last two)."""
        if len(axes) == 2 and all(isinstance(a, (int, numpy.integer)) for a in axes):
            ndim = len(self.shape)
            axes = (tuple(_axis(int(a), ndim, "transpose") for a in axes),)
        return _ops().Transpose(axes[0] if axes else None)(self)

    def broadcast_to(self, *shape):
        return _ops().BroadcastTo(_dims(shape, "broadcast_to"))(self)

    def expand(self, *shape):
        shape = _dims(shape, "expand")
        lead = len(shape) - len(self.shape)
        return self.broadcast_to(tuple(n if n != -1 else self.shape[i - lead] for i, n in enumerate(shape)))

    # ---- elementwise ---------------------------------------------------------
    def exp(self):
        return _ops().exp(self)

    def log(self):
        return _ops().log(self)

    def tanh(self):
        return _ops().tanh(self)

    def sigmoid(self):
        return _ops().sigmoid(self)

    def relu(self):
        return _ops().relu(self)

    def abs(self):
        return _ops().abs(self)

    def sqrt(self):
        return _ops().power_scalar(self, 0.5)

    def clamp(self, min=None, max=None):
        """x limited to [min, max]: x + relu(min - x) - relu(x - max) (gradient 1 inside and
        at the bounds, 0 outside, as in PyTorch)."""
        ops, out = _ops(), self
        if min is not None:
            out = out + ops.relu(-out + min)
        if max is not None:
            out = out - ops.relu(out - max)
        return out

    clip = clamp

    # ---- reductions ------------------------------------------------------------
    def sum(self, dim=None, keepdim=False, *, axes=None):
        axes = _reduce_axes(dim, axes)
        return _keep(self, _ops().Summation(axes)(self), axes, keepdim)

    def mean(self, dim=None, keepdim=False, *, axes=None):
        axes = _reduce_axes(dim, axes)
        return _keep(self, _ops().mean(self, axes), axes, keepdim)

    def max(self, dim=None, keepdim=False):
        """The maximum; with ``dim``, (values, indices) like PyTorch."""
        values = _ops().amax(self, dim, keepdims=keepdim)
        if dim is None:
            return values
        return MaxResult(values, self.argmax(dim, keepdim))

    def min(self, dim=None, keepdim=False):
        values = -_ops().amax(-self, dim, keepdims=keepdim)
        if dim is None:
            return values
        return MaxResult(values, self.argmin(dim, keepdim))

    def argmax(self, dim=None, keepdim=False):
        return needle.Tensor.make_const(_ops().array_backend.argmax(self.realize_cached_data(), dim, keepdim))

    def argmin(self, dim=None, keepdim=False):
        return needle.Tensor.make_const(_ops().array_backend.argmin(self.realize_cached_data(), dim, keepdim))

    # ---- conversion --------------------------------------------------------------
    def item(self):
        data = self.numpy()
        if data.size != 1:
            raise ValueError(f"item: only a tensor of one element converts to a Python number, got shape "
                             f"{tuple(self.shape)}")
        return data.reshape(-1)[0].item()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __bool__(self):
        return bool(self.item())

    def __index__(self):
        if self.dtype not in ("int32", "int64", "uint8", "bool"):
            raise TypeError(f"only integer tensors of one element can be used as an index, got {self.dtype}")
        return int(self.item())

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def tolist(self):
        return self.numpy().tolist()

    def to(self, *args, dtype=None, device=None):
        """``to(device)``, ``to(dtype)``, ``to(device, dtype)`` or keywords; self when nothing
        changes. A dtype change is differentiable (``ops.cast``)."""
        for a in args:
            if isinstance(a, (str, numpy.dtype, type)) and not hasattr(a, "enabled"):
                dtype = a
            else:
                device = a
        out = self
        if dtype is not None:
            dtype = needle.backend_ndarray.dtypes.canonical(dtype)
            if dtype != out.dtype:
                out = _ops().cast(out, dtype)
        if device is not None and device != out.device:
            out = needle.Tensor(out.numpy(), device=device, dtype=out.dtype, requires_grad=out.requires_grad)
        return out

    def float(self):
        return self.to("float32")

    def double(self):
        return self.to("float64")

    def half(self):
        return self.to("float16")

    def bfloat16(self):
        return self.to("bfloat16")

    def long(self):
        return self.to("int64")

    def int(self):
        return self.to("int32")

    def bool(self):
        return self.to("bool")

    # ---- comparisons and logic (constant results: no gradient) ------------------
    def _compare(self, other, op):
        out = getattr(self.realize_cached_data(), op)(_data(other))
        return needle.Tensor.make_const(out)

    def __eq__(self, other):
        return self._compare(other, "__eq__")

    def __ne__(self, other):
        return self._compare(other, "__ne__")

    def __lt__(self, other):
        return self._compare(other, "__lt__")

    def __le__(self, other):
        return self._compare(other, "__le__")

    def __gt__(self, other):
        return self._compare(other, "__gt__")

    def __ge__(self, other):
        return self._compare(other, "__ge__")

    # Tensors compare elementwise yet hash by identity, so they still key dicts and sets.
    __hash__ = object.__hash__

    def _logical(self, other, what):
        others = [] if other is None else [other]
        for t in [self] + others:
            dt = t.dtype if isinstance(t, needle.Tensor) else None
            if dt is not None and dt != "bool":
                raise TypeError(f"{what}: needs bool tensors, got {dt}")
            if dt is None and not isinstance(t, (bool, numpy.bool_)):
                raise TypeError(f"{what}: needs bool tensors or bools, got {type(t).__name__}")
        return self.realize_cached_data()

    def __and__(self, other):
        return needle.Tensor.make_const(self._logical(other, "and") * _data(other))

    def __or__(self, other):
        return needle.Tensor.make_const((self._logical(other, "or") + _data(other)) != 0)

    def __xor__(self, other):
        return needle.Tensor.make_const(self._logical(other, "xor") != _data(other))

    def __invert__(self):
        return needle.Tensor.make_const(self._logical(None, "not") == False)  # noqa: E712

    __rand__, __ror__, __rxor__ = __and__, __or__, __xor__


    # ---- DLPack: the array handed to numpy, PyTorch, CuPy, JAX without a copy ----------
    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """The protocol's export: ``numpy.from_dlpack(t)`` / ``torch.from_dlpack(t)`` share
        ``t``'s memory (the graph is not part of it, as with ``detach()``)."""
        kwargs = {"stream": stream}
        if max_version is not None:
            kwargs["max_version"] = max_version
        if dl_device is not None:
            kwargs["dl_device"] = dl_device
        if copy is not None:
            kwargs["copy"] = copy
        return self.realize_cached_data().__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.realize_cached_data().__dlpack_device__()
