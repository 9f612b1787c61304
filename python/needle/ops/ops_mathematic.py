"""Elementwise, shape, reduction and matmul ops.

Each op is a short class: ``compute`` on backend arrays, ``gradient`` written
with needle ops (so adjoints are differentiable), and a lowercase helper.
Binary elementwise ops broadcast with numpy's rules; their gradients are summed
back to each input's shape. Shapes that do not broadcast are a ValueError
naming the op and both shapes.
"""
import math
from numbers import Number

import numpy

from ..autograd import Tensor, TensorOp, TensorTupleOp
from . import array_backend as B
from .ops_tuple import make_tuple


def _norm_axes(axes, ndim, op):
    """None / int / sequence -> sorted tuple of distinct axes in [0, ndim)."""
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, (int, numpy.integer)):
        axes = (axes,)
    out = []
    for ax in axes:
        if not -ndim <= ax < max(ndim, 1):
            raise ValueError(f"{op}: axis {ax} is out of range for a tensor of ndim {ndim}")
        out.append(int(ax) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {tuple(axes)}")
    return tuple(sorted(out))


def _check_same_shape(op, a, b):
    """For the internal adjoint ops, whose operands always share one shape."""
    if a.shape != b.shape and tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")


def _check_broadcast(op, a, b):
    """The broadcast shape of a and b (numpy's rules); a ValueError names both shapes."""
    sa, sb = tuple(a.shape), tuple(b.shape)
    if sa == sb:
        return sa
    out = []
    for i in range(-max(len(sa), len(sb)), 0):
        x = sa[i] if -i <= len(sa) else 1
        y = sb[i] if -i <= len(sb) else 1
        if x != y and x != 1 and y != 1:
            raise ValueError(f"{op}: shapes {sa} and {sb} cannot be broadcast together")
        out.append(y if x == 1 else x)
    return tuple(out)


def _unbroadcast(grad, node_input):
    """grad summed back to the shape of the input it flows to (identity when it already is)."""
    if tuple(grad.shape) == tuple(node_input.shape):
        return grad
    return _sum_to_shape(grad, node_input.shape)


def _check_scalar(op, scalar):
    """A number (or, as the course's np-mode tests pass, a 1-element numpy array); returns it."""
    ok = isinstance(scalar, (Number, numpy.generic)) or (isinstance(scalar, numpy.ndarray) and scalar.size == 1)
    if not ok or isinstance(scalar, bool):
        raise TypeError(f"{op}: expected a number, got {type(scalar).__name__}")
    return B.scalar_operand(scalar) if isinstance(scalar, numpy.ndarray) else scalar


def _const(array):
    """A constant Tensor (no gradient) wrapping a backend array."""
    return Tensor.make_const(array)


# ---- elementwise -------------------------------------------------------------
class EWiseAdd(TensorOp):
    def compute(self, a, b):
        if a.shape != b.shape:
            _check_broadcast("add", a, b)
        return a + b

    def gradient(self, out_grad, node):
        a, b = node.inputs
        return _unbroadcast(out_grad, a), _unbroadcast(out_grad, b)


# An op class without parameters is stateless: one shared instance serves every node
# (its gradient reads the node's inputs), so the operators build no op per call.
_ADD = EWiseAdd()


def add(a, b):
    return _ADD(a, b)


class AddScalar(TensorOp):
    def __init__(self, scalar):
        self.scalar = _check_scalar("add_scalar", scalar)

    def compute(self, a):
        return a + self.scalar

    def gradient(self, out_grad, node):
        return out_grad


def add_scalar(a, scalar):
    return AddScalar(scalar)(a)


class EWiseMul(TensorOp):
    def compute(self, a, b):
        if a.shape != b.shape:
            _check_broadcast("multiply", a, b)
        return a * b

    def gradient(self, out_grad, node):
        lhs, rhs = node.inputs
        # An input that needs no gradient (a mask, a constant) gets None: no wasted product.
        return (_unbroadcast(out_grad * rhs, lhs) if lhs.requires_grad else None,
                _unbroadcast(out_grad * lhs, rhs) if rhs.requires_grad else None)


_MUL = EWiseMul()


def multiply(a, b):
    return _MUL(a, b)


class MulScalar(TensorOp):
    def __init__(self, scalar):
        self.scalar = _check_scalar("mul_scalar", scalar)

    def compute(self, a):
        return a * self.scalar

    def gradient(self, out_grad, node):
        return out_grad * self.scalar


def mul_scalar(a, scalar):
    return MulScalar(scalar)(a)


class EWisePow(TensorOp):
    """a ** b elementwise; d/da = b a^(b-1), d/db = a^b log a."""

    def compute(self, a, b):
        if a.shape != b.shape:
            _check_broadcast("power", a, b)
        return a**b

    def gradient(self, out_grad, node):
        a, b = node.inputs
        return (_unbroadcast(out_grad * b * power(a, b - 1), a) if a.requires_grad else None,
                _unbroadcast(out_grad * node * log(a), b) if b.requires_grad else None)


_POW = EWisePow()


def power(a, b):
    return _POW(a, b)


class PowerScalar(TensorOp):
    """a ** scalar (scalar may be 0, negative or fractional); d/da = scalar a^(scalar-1)."""

    def __init__(self, scalar):
        self.scalar = _check_scalar("power_scalar", scalar)

    def compute(self, a):
        return a**self.scalar

    def gradient(self, out_grad, node):
        if self.scalar == 0:
            return out_grad * 0
        return out_grad * self.scalar * power_scalar(node.inputs[0], self.scalar - 1)


def power_scalar(a, scalar):
    return PowerScalar(scalar)(a)


class EWiseDiv(TensorOp):
    def compute(self, a, b):
        if a.shape != b.shape:
            _check_broadcast("divide", a, b)
        return a / b

    def gradient(self, out_grad, node):
        a, b = node.inputs
        return (_unbroadcast(out_grad / b, a) if a.requires_grad else None,
                _unbroadcast(-out_grad * a / (b * b), b) if b.requires_grad else None)


_DIV = EWiseDiv()


def divide(a, b):
    return _DIV(a, b)


class DivScalar(TensorOp):
    def __init__(self, scalar):
        self.scalar = _check_scalar("divide_scalar", scalar)

    def compute(self, a):
        return a / self.scalar

    def gradient(self, out_grad, node):
        return out_grad / self.scalar


def divide_scalar(a, scalar):
    return DivScalar(scalar)(a)


class Abs(TensorOp):
    """|a|; gradient out_grad * sign(a) (0 at 0, as in PyTorch)."""

    def compute(self, a):
        return B.maximum(a, -a)

    def gradient(self, out_grad, node):
        a, g = node.inputs[0].realize_cached_data(), out_grad.realize_cached_data()
        return out_grad * _const(B.as_float(a > 0, g) - B.as_float(a < 0, g))


def abs(a):
    return Abs()(a)


class Cast(TensorOp):
    """x converted to ``dtype`` (a name or numpy dtype). Gradient: the upstream gradient
    converted back to x's dtype, so every gradient has the dtype of its tensor."""

    def __init__(self, dtype):
        self.dtype = dtype

    def compute(self, a):
        return a.astype(self.dtype)

    def gradient(self, out_grad, node):
        return cast(out_grad, node.inputs[0].dtype)


def cast(a, dtype):
    return Cast(dtype)(a)


class Negate(TensorOp):
    def compute(self, a):
        return -a

    def gradient(self, out_grad, node):
        return -out_grad


_NEGATE = Negate()


def negate(a):
    return _NEGATE(a)


class Log(TensorOp):
    def compute(self, a):
        return B.log(a)

    def gradient(self, out_grad, node):
        return out_grad / node.inputs[0]


def log(a):
    return Log()(a)


class Exp(TensorOp):
    def compute(self, a):
        return B.exp(a)

    def gradient(self, out_grad, node):
        return out_grad * node


def exp(a):
    return Exp()(a)


class ReLU(TensorOp):
    """max(a, 0); gradient out_grad where a > 0, else 0 (ReLUGrad)."""

    def compute(self, a):
        return B.maximum(a, 0)

    def gradient(self, out_grad, node):
        return _RELU_GRAD(out_grad, node.inputs[0])


class ReLUGrad(TensorOp):
    """relu_grad(g, a) = g where a > 0, else 0: ReLU's adjoint as one node and one pass over
    memory (a 0/1 mask times g took three passes and two temporaries; the select also
    keeps an infinite g from making NaN where a <= 0). The composition
    ``g * (a > 0)`` is its test oracle.

    Differentiable like any op: d/dg = (a > 0), d/da = 0 (the step is flat).
    """

    def compute(self, g, a):
        if g.shape != a.shape:
            _check_broadcast("relu_grad", g, a)
        return B.relu_grad(g, a)

    def gradient(self, out_grad, node):
        g, a = node.inputs
        return (_unbroadcast(_RELU_GRAD(out_grad, a), g) if g.requires_grad else None,
                _const(B.full(a.shape, 0.0, a.realize_cached_data())) if a.requires_grad else None)


_RELU = ReLU()
_RELU_GRAD = ReLUGrad()


def relu(a):
    return _RELU(a)


class Tanh(TensorOp):
    def compute(self, a):
        return B.tanh(a)

    def gradient(self, out_grad, node):
        return TanhGrad()(out_grad, node)


def tanh(a):
    return Tanh()(a)


class TanhGrad(TensorOp):
    """g * (1 - y^2) for y = tanh(a): Tanh's adjoint as one node instead of four.

    Differentiable like any op: d/dg = 1 - y^2, d/dy = -2 g y.
    """

    def compute(self, g, y):
        _check_same_shape("tanh_grad", g, y)
        return g - g * y * y

    def gradient(self, out_grad, node):
        g, y = node.inputs
        return (TanhGrad()(out_grad, y) if g.requires_grad else None,
                out_grad * g * y * -2.0 if y.requires_grad else None)


class Sigmoid(TensorOp):
    """1 / (1 + e^-a), computed as (tanh(a/2) + 1) / 2 (no overflow); gradient s (1 - s)."""

    def compute(self, a):
        return B.tanh(a * 0.5) * 0.5 + 0.5

    def gradient(self, out_grad, node):
        return SigmoidGrad()(out_grad, node)


def sigmoid(a):
    return Sigmoid()(a)


class SigmoidGrad(TensorOp):
    """g * s * (1 - s) for s = sigmoid(a): Sigmoid's adjoint as one node instead of four.

    Differentiable like any op: d/dg = s (1 - s), d/ds = g (1 - 2 s).
    """

    def compute(self, g, s):
        _check_same_shape("sigmoid_grad", g, s)
        gs = g * s
        return gs - gs * s

    def gradient(self, out_grad, node):
        g, s = node.inputs
        return (SigmoidGrad()(out_grad, s) if g.requires_grad else None,
                out_grad * g * (1 - 2 * s) if s.requires_grad else None)


class Maximum(TensorOp):
    """Elementwise max of two tensors. Where a == b the gradient is split evenly (1/2 each)."""

    def compute(self, a, b):
        if a.shape != b.shape:
            _check_broadcast("maximum", a, b)
        return B.maximum(a, b)

    def gradient(self, out_grad, node):
        x, y = node.inputs
        a, b, g = x.realize_cached_data(), y.realize_cached_data(), out_grad.realize_cached_data()
        wa = B.as_float(a > b, g) + B.as_float(a == b, g) * 0.5
        return _unbroadcast(out_grad * _const(wa), x), _unbroadcast(out_grad * _const(1 - wa), y)


def maximum(a, b):
    return Maximum()(a, b)


# ---- shape -------------------------------------------------------------------
class Transpose(TensorOp):
    """Swap two axes (``axes`` is a PAIR; None swaps the last two)."""

    def __init__(self, axes=None):
        if axes is not None and len(axes) != 2:
            raise ValueError(f"transpose: axes must be a pair of axes to swap, got {axes}")
        self.axes = None if axes is None else tuple(axes)

    def _perm(self, ndim):
        if ndim < 2:
            raise ValueError(f"transpose: need at least 2 dims, got a tensor of ndim {ndim}")
        i, j = (ndim - 2, ndim - 1) if self.axes is None else _norm_axes(self.axes, ndim, "transpose")
        perm = list(range(ndim))
        perm[i], perm[j] = perm[j], perm[i]
        return perm

    def compute(self, a):
        return B.permute(a, self._perm(a.ndim))

    def gradient(self, out_grad, node):
        return Transpose(self.axes)(out_grad)


def transpose(a, axes=None):
    return Transpose(axes)(a)


class Permute(TensorOp):
    """Reorder all axes; gradient permutes back with the inverse permutation."""

    def __init__(self, axes):
        self.axes = tuple(int(x) for x in axes)

    def compute(self, a):
        if sorted(x % max(a.ndim, 1) for x in self.axes) != list(range(a.ndim)):
            raise ValueError(f"permute: {self.axes} is not a permutation of the axes of shape {tuple(a.shape)}")
        return B.permute(a, self.axes)

    def gradient(self, out_grad, node):
        inverse = [0] * len(self.axes)
        for i, ax in enumerate(self.axes):
            inverse[ax % len(self.axes)] = i
        return Permute(inverse)(out_grad)


def permute(a, axes):
    return Permute(axes)(a)


class Reshape(TensorOp):
    def __init__(self, shape):
        self.shape = (shape,) if isinstance(shape, (int, numpy.integer)) else tuple(shape)

    def compute(self, a):
        shape = self.shape
        size = math.prod(a.shape)
        if -1 in shape and shape.count(-1) == 1:
            known = math.prod(s for s in shape if s != -1)
            if known and size % known == 0:
                shape = tuple(size // known if s == -1 else s for s in shape)
        if math.prod(shape) != size or min(shape, default=0) < 0:
            raise ValueError(f"reshape: cannot reshape a tensor of shape {tuple(a.shape)} into {self.shape}")
        return a.reshape(shape)

    def gradient(self, out_grad, node):
        return Reshape(node.inputs[0].shape)(out_grad)


def reshape(a, shape):
    return Reshape(shape)(a)


def _sum_axes(shape, target):
    """Axes of ``shape`` that broadcasting ``target`` to it added or stretched."""
    lead = len(shape) - len(target)
    return tuple(range(lead)) + tuple(
        lead + i for i, (s, n) in enumerate(zip(target, shape[lead:])) if s == 1 and n != 1
    )


def _sum_to_shape(t, shape):
    """Sum ``t`` over the axes that broadcasting added or stretched to reach ``t.shape`` from ``shape``."""
    shape = tuple(shape)
    if t.shape == shape:
        return t
    return SumToShape(shape)(t)


class BroadcastTo(TensorOp):
    def __init__(self, shape):
        self.shape = tuple(shape)

    def compute(self, a):
        shape, ashape = self.shape, tuple(a.shape)
        lead = len(shape) - len(ashape)
        if lead < 0 or any(s != n and s != 1 for s, n in zip(ashape, shape[lead:])):
            raise ValueError(f"broadcast_to: cannot broadcast shape {ashape} to {shape}")
        return B.broadcast_to(a, shape)

    def gradient(self, out_grad, node):
        return _sum_to_shape(out_grad, node.inputs[0].shape)


def broadcast_to(a, shape):
    return BroadcastTo(shape)(a)


class SumToShape(TensorOp):
    """Sum a broadcast result back to the source ``shape`` (summation + reshape in one node):
    the adjoint of BroadcastTo, whose adjoint in turn is broadcast_to."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def compute(self, a):
        ashape = tuple(a.shape)
        lead = len(ashape) - len(self.shape)
        if lead < 0 or any(s != n and s != 1 for s, n in zip(self.shape, ashape[lead:])):
            raise ValueError(f"sum_to_shape: shape {ashape} is not a broadcast of {self.shape}")
        out = B.reduce_sum(a, _sum_axes(ashape, self.shape))
        return out if tuple(out.shape) == self.shape else out.reshape(self.shape)

    def gradient(self, out_grad, node):
        return BroadcastTo(node.inputs[0].shape)(out_grad)


class BroadcastAxes(TensorOp):
    """Re-insert the summed-out ``axes`` (size 1) and broadcast to ``shape`` (reshape +
    broadcast_to in one node): the adjoint of Summation, whose adjoint is summation."""

    def __init__(self, shape, axes):
        self.shape = tuple(shape)
        self.axes = tuple(axes)

    def compute(self, a):
        shape = self.shape
        if len(self.axes) == len(shape) and not a.shape:  # the adjoint of a full sum: one value everywhere
            keep = (1,) * len(shape)
        else:
            keep = tuple(1 if i in self.axes else n for i, n in enumerate(shape))
            if math.prod(a.shape) != math.prod(keep):
                raise ValueError(f"broadcast_axes: shape {tuple(a.shape)} does not fit {shape} without axes {self.axes}")
        return B.broadcast_to(a.reshape(keep), shape)

    def gradient(self, out_grad, node):
        return Summation(self.axes)(out_grad) if self.axes else Reshape(node.inputs[0].shape)(out_grad)


# ---- reductions --------------------------------------------------------------
class Summation(TensorOp):
    """Sum over ``axes`` (None = all, int or tuple); reduced axes are removed (all -> shape ())."""

    def __init__(self, axes=None):
        self.axes = axes

    def compute(self, a):
        return B.reduce_sum(a, _norm_axes(self.axes, a.ndim, "summation"))

    def gradient(self, out_grad, node):
        shape = node.inputs[0].shape
        return BroadcastAxes(shape, _norm_axes(self.axes, len(shape), "summation"))(out_grad)


def summation(a, axes=None):
    return Summation(axes)(a)


def mean(a, axes=None):
    """Mean over ``axes`` (a composition: summation / count)."""
    red = _norm_axes(axes, len(a.shape), "mean")
    count = int(numpy.prod([a.shape[i] for i in red]))
    return summation(a, axes) / count


class Max(TensorOp):
    """Max over ``axes``. Gradient goes to the maxima; TIES SPLIT it evenly (PyTorch picks one)."""

    def __init__(self, axes=None, keepdims=False):
        self.axes = axes
        self.keepdims = keepdims

    def compute(self, a):
        return B.reduce_max(a, _norm_axes(self.axes, a.ndim, "amax"), self.keepdims)

    def gradient(self, out_grad, node):
        a = node.inputs[0].realize_cached_data()
        axes = _norm_axes(self.axes, a.ndim, "amax")
        keep = tuple(1 if i in axes else n for i, n in enumerate(a.shape))
        m = B.broadcast_to(node.realize_cached_data().reshape(keep), a.shape)
        mask = B.as_float(a == m, a)
        weight = mask / B.broadcast_to(B.reduce_sum(mask, axes, keepdims=True), a.shape)
        return broadcast_to(reshape(out_grad, keep), a.shape) * _const(weight)


def amax(a, axes=None, keepdims=False):
    return Max(axes, keepdims)(a)


# ---- matmul ------------------------------------------------------------------
def _swapped_last(shape, swap):
    """``shape`` as a tuple, its last two entries swapped when ``swap``."""
    shape = tuple(shape)
    return shape[:-2] + (shape[-1], shape[-2]) if swap else shape


class MatMul(TensorOp):
    """Batched matmul with numpy broadcasting of the batch dims (both operands >= 2-D).

    ``MatMul(trans_a, trans_b)`` multiplies op(a) @ op(b), op = swap of the last two
    axes when the flag is set: a transposed operand is a strided view for the kernel,
    so the adjoints dA = out_grad @ B^T and dB = A^T @ out_grad are one node each,
    summed over the batch dims that broadcasting added to each input.
    """

    def __init__(self, trans_a=False, trans_b=False):
        self.trans_a = bool(trans_a)
        self.trans_b = bool(trans_b)

    def compute(self, a, b):
        sa, sb = a.shape, b.shape
        if len(sa) < 2 or len(sb) < 2:
            raise ValueError(f"matmul: shapes {tuple(sa)} and {tuple(sb)} are not aligned")
        ta, tb = self.trans_a, self.trans_b
        if (sa[-2] if ta else sa[-1]) != (sb[-1] if tb else sb[-2]) or len(sa) > 2 or len(sb) > 2:
            sa, sb = _swapped_last(sa, ta), _swapped_last(sb, tb)  # the shapes multiplied
            if sa[-1] != sb[-2]:
                raise ValueError(f"matmul: shapes {sa} and {sb} are not aligned")
            try:
                numpy.broadcast_shapes(sa[:-2], sb[:-2])
            except ValueError:
                raise ValueError(f"matmul: batch dims of {sa} and {sb} cannot be broadcast") from None
        return B.matmul(a, b, ta, tb)

    def gradient(self, out_grad, node):
        a, b = node.inputs
        ta, tb = self.trans_a, self.trans_b
        # An input that needs no gradient (e.g. the data batch) gets None: no wasted product.
        da = db = None
        if a.requires_grad:
            # op(a) = G op(b)^T; a = op(a) or its transpose.
            da = _MATMUL[tb, True](b, out_grad) if ta else _MATMUL[False, not tb](out_grad, b)
            da = _sum_to_shape(da, a.shape)
        if b.requires_grad:
            # op(b) = op(a)^T G
            db = _MATMUL[True, ta](out_grad, a) if tb else _MATMUL[not ta, False](a, out_grad)
            db = _sum_to_shape(db, b.shape)
        return da, db


# One shared (stateless) instance per pair of transpose flags.
_MATMUL = {(ta, tb): MatMul(ta, tb) for ta in (False, True) for tb in (False, True)}


def matmul(a, b):
    """numpy semantics: a 1-D operand is promoted to a matrix and its dim dropped afterwards."""
    sa, sb = a.shape, b.shape
    if len(sa) >= 2 and len(sb) >= 2:
        return _MATMUL[False, False](a, b)
    if len(sa) == 0 or len(sb) == 0:
        raise ValueError(f"matmul: 0-d operands are not allowed (shapes {sa} and {sb})")
    a2 = reshape(a, (1,) + sa) if len(sa) == 1 else a
    b2 = reshape(b, sb + (1,)) if len(sb) == 1 else b
    out = _MATMUL[False, False](a2, b2)
    if len(sa) == 1:
        out = reshape(out, out.shape[:-2] + out.shape[-1:])
    if len(sb) == 1:
        out = reshape(out, out.shape[:-1])
    return out


# ---- row gather / scatter-add ------------------------------------------------
def _row_index_array(indices, like):
    """Integer row numbers (a Tensor, array or list of integers, or the course's
    integer-valued floats) as the backend's (k,) index array on ``like``'s device."""
    if isinstance(indices, Tensor):
        indices = indices.realize_cached_data()
    return B.index_array(indices, like)


class GatherRows(TensorOp):
    """Rows of a 2-D ``a`` (n, d) picked by integer indices: out (k, d), out[r] = a[idx[r]].

    An embedding lookup in O(k d) instead of a (k, n) one-hot matmul.
    Gradient: scatter_add_rows(out_grad, idx, n) (repeated indices add up).
    """

    def __init__(self, indices):
        self.indices = indices

    def compute(self, a):
        if a.ndim != 2:
            raise ValueError(f"gather_rows: need a 2-D tensor, got shape {tuple(a.shape)}")
        idx = _row_index_array(self.indices, a)
        self.indices = idx
        return B.gather_rows(a, idx)

    def gradient(self, out_grad, node):
        return ScatterAddRows(self.indices, node.inputs[0].shape[0])(out_grad)


def gather_rows(a, indices):
    return GatherRows(indices)(a)


class ScatterAddRows(TensorOp):
    """(k, d) rows added into (num_rows, d) zeros at integer row indices; gradient: gather_rows."""

    def __init__(self, indices, num_rows):
        self.indices = indices
        self.num_rows = int(num_rows)

    def compute(self, a):
        if a.ndim != 2:
            raise ValueError(f"scatter_add_rows: need a 2-D tensor, got shape {tuple(a.shape)}")
        idx = _row_index_array(self.indices, a)
        self.indices = idx
        if idx.shape[0] != a.shape[0]:
            raise ValueError(f"scatter_add_rows: {idx.shape[0]} indices for {a.shape[0]} rows")
        return B.scatter_add_rows(a, idx, self.num_rows)

    def gradient(self, out_grad, node):
        return GatherRows(self.indices)(out_grad)


def scatter_add_rows(a, indices, num_rows):
    return ScatterAddRows(indices, num_rows)(a)


# ---- stack / split -----------------------------------------------------------
class Stack(TensorOp):
    """Stack a TensorTuple of same-shape tensors along a new axis; gradient = split."""

    def __init__(self, axis):
        self.axis = axis

    def compute(self, args):
        if len(args) == 0:
            raise ValueError("stack: need at least one tensor")
        for i, x in enumerate(args):
            if tuple(x.shape) != tuple(args[0].shape):
                raise ValueError(f"stack: tensor {i} has shape {tuple(x.shape)}, tensor 0 has {tuple(args[0].shape)}")
        if not -args[0].ndim - 1 <= self.axis <= args[0].ndim:
            raise ValueError(f"stack: axis {self.axis} out of range for a {args[0].ndim + 1}-d result")
        return B.stack(list(args), self.axis)

    def gradient(self, out_grad, node):
        return split(out_grad, self.axis)


def stack(args, axis):
    return Stack(axis)(make_tuple(*args))


class Split(TensorTupleOp):
    """Split along ``axis`` into a TensorTuple, removing that axis; gradient = stack."""

    def __init__(self, axis):
        self.axis = axis

    def compute(self, A):
        if not -A.ndim <= self.axis < A.ndim:
            raise ValueError(f"split: axis {self.axis} out of range for shape {tuple(A.shape)}")
        return B.split(A, self.axis % A.ndim)

    def gradient(self, out_grad, node):
        return stack(out_grad, self.axis)


def split(a, axis):
    return Split(axis)(a)


# ---- flip / dilate -----------------------------------------------------------
class Flip(TensorOp):
    def __init__(self, axes):
        self.axes = (axes,) if isinstance(axes, int) else tuple(axes)

    def compute(self, a):
        return B.flip(a, _norm_axes(self.axes, a.ndim, "flip"))

    def gradient(self, out_grad, node):
        return flip(out_grad, self.axes)


def flip(a, axes):
    return Flip(axes)(a)


def _dilate_slices(ndim, axes, dilation):
    return tuple(slice(None, None, dilation + 1) if i in axes else slice(None) for i in range(ndim))


class Dilate(TensorOp):
    """Insert ``dilation`` zeros after every element along ``axes`` (axes >= ndim ignored)."""

    def __init__(self, axes, dilation):
        self.axes = (axes,) if isinstance(axes, int) else tuple(axes)
        if dilation < 0:
            raise ValueError(f"dilate: dilation must be >= 0, got {dilation}")
        self.dilation = int(dilation)

    def compute(self, a):
        axes = {ax for ax in self.axes if ax < a.ndim}
        if self.dilation == 0 or not axes:
            return a
        shape = tuple(n * (self.dilation + 1) if i in axes else n for i, n in enumerate(a.shape))
        out = B.full(shape, 0.0, a)
        out[_dilate_slices(a.ndim, axes, self.dilation)] = a
        return out

    def gradient(self, out_grad, node):
        return undilate(out_grad, self.axes, self.dilation)


def dilate(a, axes, dilation):
    return Dilate(axes, dilation)(a)


class UnDilate(TensorOp):
    """Keep every (dilation+1)-th element along ``axes``: the inverse (and adjoint) of Dilate."""

    def __init__(self, axes, dilation):
        self.axes = (axes,) if isinstance(axes, int) else tuple(axes)
        self.dilation = int(dilation)

    def compute(self, a):
        axes = {ax for ax in self.axes if ax < a.ndim}
        if self.dilation == 0 or not axes:
            return a
        return B.compact(a[_dilate_slices(a.ndim, axes, self.dilation)])

    def gradient(self, out_grad, node):
        grad = dilate(out_grad, self.axes, self.dilation)
        shape = node.inputs[0].shape
        if grad.shape != shape:  # the input length was not a multiple of dilation + 1
            from .ops_indexing import get_item

            grad = get_item(grad, tuple(slice(0, n) for n in shape))
        return grad


def undilate(a, axes, dilation):
    return UnDilate(axes, dilation)(a)
